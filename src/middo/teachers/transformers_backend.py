"""A local Hugging Face model as the teacher: no server, no network, works on CPU.

This is the default backend, so that the whole pipeline runs offline with the converted default model. Greedy prompts
are sorted by length and generated in left-padded batches under a token budget, which keeps padding (and memory) low;
with greedy decoding the replies do not depend on how prompts were batched.

Sampled prompts (temperature > 0) are generated one at a time, each under its own seed derived from
``Sampling.seed`` and the prompt: a batch would draw every row's tokens from one random stream, so a reply would
depend on which other prompts shared its call, and a rerun whose cache already holds some replies (so sends fewer
prompts) would get different ones. Per prompt, a rerun without the cache reproduces every reply. The seeding runs in
a forked RNG, so the caller's random state is left as it was.

A reply that used all ``max_new_tokens`` without an end-of-sequence token is marked cut (finish reason ``length``,
as the OpenAI API and vLLM say it), so refine rejects it rather than keep a reply stopped mid-sentence. Its usage is
counted as a server would: the prompt's tokens through the chat template, and the tokens generated up to and including
the end-of-sequence token.

``Sampling.response_schema`` (structured output) is ignored: ``generate`` has no constrained decoding, so replies are
free text, which the refine parser reads as tagged text just the same.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from middo.diagnose.batching import pad_batch, token_budget_batches
from middo.modeling import load_model
from middo.teachers.base import CUT, Reply, Sampling, warn_unused_extra_body
from middo.teachers.cache import local_identity, request_identity
from middo.teachers.usage import Usage

log = logging.getLogger(__name__)


def prompt_seed(seed: int, prompt: str) -> int:
    """A seed for one prompt's sampling: the run's seed and the prompt's text, hashed into torch's seed range."""
    digest = hashlib.sha256(f"{seed}\x1f{prompt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def encode_prompts(tokenizer, prompts: list[str], system_prompt: str = "") -> list[list[int]]:
    """Token ids of each prompt as one user turn after the system message (if any), plus the assistant header: what
    the local teacher generates from, and what a plan counts as a request's prompt tokens."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    texts = [
        tokenizer.apply_chat_template(
            [*system, {"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []


class TransformersTeacher:
    """Generate with ``model.generate`` from a local HF folder, one user turn through the chat template."""

    backend = "transformers"
    served = False  # the weights are a folder here: its tokenizer counts what a prompt costs

    @classmethod
    def config_kwargs(cls, cfg, device: str, dtype: str) -> dict:
        """The constructor arguments from ``refine.teacher`` (a :class:`~middo.config.TeacherConfig`)."""
        warn_unused_extra_body(cfg)
        return {"model_path": cfg.model, "device": device, "dtype": dtype, "system_prompt": cfg.system_prompt}

    @classmethod
    def cache_identity(cls, cfg, device: str, dtype: str) -> dict[str, str]:
        """The weights' content, the system prompt, and where and how the weights run: a CPU's and a GPU's kernels,
        and bfloat16 and float32, give different greedy replies."""
        from middo.device import resolve_device, resolve_dtype

        identity = local_identity(cls.backend, cfg.model, cfg.cache_dir, cfg.revision)
        identity.update(request_identity(cfg.system_prompt))
        where = resolve_device(device)
        identity.update(device=where.type, dtype=str(resolve_dtype(dtype, where)).removeprefix("torch."))
        return identity

    def __init__(
        self,
        model_path: str | Path,
        device: str = "auto",
        dtype: str = "auto",
        max_tokens: int = 8192,
        system_prompt: str = "",
    ):
        """
        Args:
            model_path: a local HF model folder with a chat template.
            device: ``auto``, ``cpu``, ``cuda``...
            dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
            max_tokens: budget per batch, counted as rows x (longest prompt + max_new_tokens).
            system_prompt: a system message before every prompt, through the chat template; empty sends none.

        Raises:
            MiddoError: the folder is not a model folder, or the device is not available.
        """
        self.model = str(model_path)
        self.max_tokens = max_tokens
        self.system_prompt = system_prompt
        self.loaded = load_model(model_path, device, dtype)
        self.tokenizer = self.loaded.tokenizer

    def encode(self, prompt: str) -> list[int]:
        """Token ids of the system message (if any) and one user turn, plus the assistant header the model continues
        from."""
        return encode_prompts(self.tokenizer, [prompt], self.system_prompt)[0]

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer every prompt; an empty reply, or one batch item that cannot fit in memory alone, is ``None``; each
        reply is a :class:`~middo.teachers.base.Reply` that says whether it was cut at ``max_new_tokens``."""
        if not prompts:
            return []
        encoded = [self.encode(p) for p in prompts]
        results: list[str | None] = [None] * len(prompts)
        with tqdm(total=len(prompts), desc="teacher (transformers)", unit="prompt") as bar:
            if not sampling.greedy:
                for i, (prompt, ids) in enumerate(zip(prompts, encoded)):
                    results[i] = self._sample(prompt, ids, sampling)
                    bar.update(1)
                return results
            lengths = [len(ids) + sampling.max_new_tokens for ids in encoded]
            for batch in token_budget_batches(lengths, self.max_tokens):
                for i, text in zip(batch, self._generate_split([encoded[i] for i in batch], sampling)):
                    results[i] = text
                bar.update(len(batch))
        return results

    def _sample(self, prompt: str, ids: list[int], sampling: Sampling) -> str | None:
        """One sampled reply under the prompt's own seed, in a forked RNG (see the module docstring)."""
        devices = [self.loaded.device] if self.loaded.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(prompt_seed(sampling.seed, prompt))
            return self._generate_split([ids], sampling)[0]

    def _generate_split(self, seqs: list[list[int]], sampling: Sampling) -> list[str | None]:
        """Generate one batch; on out-of-memory halve it, since the budget was only an estimate."""
        try:
            return self._generate(seqs, sampling)
        except torch.cuda.OutOfMemoryError:
            if self.loaded.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(seqs) == 1:
                log.warning(
                    "transformers teacher: one prompt (%d tokens) does not fit in memory; reply is None", len(seqs[0])
                )
                return [None]
            half = len(seqs) // 2
            return self._generate_split(seqs[:half], sampling) + self._generate_split(seqs[half:], sampling)

    @torch.inference_mode()
    def _generate(self, seqs: list[list[int]], sampling: Sampling) -> list[str | None]:
        tok = self.tokenizer
        ids, mask = pad_batch(seqs, tok.pad_token_id, side="left")
        kwargs = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        if not sampling.greedy:
            # top_k 0: no top-k cut (a model's generation config may set one), as behind the OpenAI API
            kwargs = {"do_sample": True, "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0}
        out = self.loaded.model.generate(
            input_ids=ids.to(self.loaded.device),
            attention_mask=mask.to(self.loaded.device),
            max_new_tokens=sampling.max_new_tokens,
            pad_token_id=tok.pad_token_id,
            **kwargs,
        )
        new = out[:, ids.shape[1] :]
        texts = tok.batch_decode(new, skip_special_tokens=True)
        stops = self._eos_ids()
        # a row is cut when it used every new token and none of them ended it (a finished row holds its EOS, then pad)
        rows = new.tolist()
        cut = [len(row) >= sampling.max_new_tokens and not stops & set(row) for row in rows]
        spent = [next((i + 1 for i, t in enumerate(row) if t in stops), len(row)) for row in rows]  # up to its EOS
        return [
            Reply(t, CUT if c else "stop", Usage(len(seq), n)) if t.strip() else None
            for t, c, seq, n in zip(texts, cut, seqs, spent)
        ]

    def _eos_ids(self) -> set[int]:
        """The tokens that end a reply: the generation config's EOS ids (one or a list) and the tokenizer's."""
        eos = self.loaded.model.generation_config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) | {self.tokenizer.eos_token_id}
        return {i for i in ids if i is not None}
