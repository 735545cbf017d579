"""The two ways a benchmark asks the model something: greedy generation, and log-likelihood of given choices.

Both go through the chat template, because every round's model is an SFT'd chat model and that is how it will be
used. Batches are filled up to a token budget (longest first) so that a few long prompts never run the machine out of
memory and short ones are not padded to the longest. Choice scoring runs the decoder once per (context, choice) pair
and applies the LM head only to the choice's positions, so the full-vocabulary logits never exist for the context.
A question whose choices are each one token (MMLU's letters) is one pass: the choices are alternatives for the same
next token, read off one log-softmax after the context.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from middo.diagnose.batching import pad_batch, token_budget_batches
from middo.modeling import LoadedModel, decoder_hidden


def chat_ids(tokenizer, user: str) -> list[int]:
    """Token ids of a one-turn chat ending with the assistant header (plain text when there is no template).

    A model without a chat template (a base model) still gets evaluated: it sees the raw prompt.
    """
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False
        )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(user)["input_ids"])


def _truncate_left(ids: list[int], limit: int) -> list[int]:
    """Keep the end of a prompt: the question and the assistant header matter more than a long preamble."""
    return ids if len(ids) <= limit else ids[-limit:]


def _context_limit(lm: LoadedModel, reserve: int) -> int:
    window = getattr(lm.model.config, "max_position_embeddings", None) or 2048
    return max(16, int(window) - reserve)


def _eos_ids(lm: LoadedModel) -> list[int]:
    """Stop on the tokenizer's EOS and on the generation config's (chat models often end turns with another id)."""
    found = [lm.tokenizer.eos_token_id, getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)]
    flat = [e for t in found if t is not None for e in (t if isinstance(t, list) else [t])]
    return sorted(set(flat))


@torch.inference_mode()
def greedy_generate(
    lm: LoadedModel,
    prompts: Sequence[str],
    max_new_tokens: int = 256,
    max_tokens: int = 16384,
    max_batch: int = 64,
    desc: str = "generate",
) -> list[str]:
    """Greedy (deterministic) answers to one-turn chat prompts, in the order given.

    Args:
        lm: a model from :func:`middo.modeling.load_model`.
        prompts: user messages.
        max_new_tokens: generation cap per answer.
        max_tokens: padded tokens (prompt + new) per batch; bounds the KV cache.
        max_batch: most prompts per batch.
        desc: progress bar label.

    Returns:
        The decoded continuations without special tokens.
    """
    tok = lm.tokenizer
    limit = _context_limit(lm, max_new_tokens)
    seqs = [_truncate_left(chat_ids(tok, p), limit) for p in prompts]
    answers = [""] * len(seqs)
    eos_ids = _eos_ids(lm)
    with tqdm(total=len(seqs), desc=desc, unit="prompt") as bar:
        for batch in token_budget_batches([len(s) + max_new_tokens for s in seqs], max_tokens, max_batch):
            ids, mask = pad_batch([seqs[i] for i in batch], tok.pad_token_id, "left")
            out = lm.model.generate(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=tok.pad_token_id,
                eos_token_id=eos_ids or None,
            )
            for row, i in enumerate(batch):
                answers[i] = tok.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
            bar.update(len(batch))
    return answers


def greedy_generate_pooled(
    lm: LoadedModel, groups: Mapping[str, Sequence[str]], max_new_tokens: int, desc: str = "generate"
) -> dict[str, list[str]]:
    """Answer several groups of prompts (one per suite) in one :func:`greedy_generate` call, split back by group.

    Decoding is memory-bound: a step for 20 prompts costs about 1.5x a step for 4, so one call over every suite's
    prompts is far cheaper than one call per suite. Settings are the same for all, so each prompt gets a greedy
    answer of the same kind it would get alone (batch composition can flip a rare float tie, as any batching can).

    Args:
        lm: a model from :func:`middo.modeling.load_model`.
        groups: name -> prompts, in the order each group wants its answers.
        max_new_tokens: generation cap per answer.
        desc: progress bar label.

    Returns:
        name -> answers, ``answers[i]`` for ``groups[name][i]``.
    """
    names = list(groups)
    flat = [p for name in names for p in groups[name]]
    answers = greedy_generate(lm, flat, max_new_tokens, desc=desc) if flat else []
    out: dict[str, list[str]] = {}
    start = 0
    for name in names:
        out[name] = answers[start : start + len(groups[name])]
        start += len(groups[name])
    return out


@dataclass(frozen=True)
class ChoiceScores:
    """Log-likelihood of each choice of one question, with the lengths needed to normalise it."""

    logprob: list[float]  # sum of log p(choice token | context, earlier choice tokens)
    n_tokens: list[int]
    n_bytes: list[int]

    @property
    def per_byte(self) -> list[float]:
        """Sum divided by UTF-8 length (lm-eval's ``acc_norm``): long choices are not penalised for being long."""
        return [lp / max(1, n) for lp, n in zip(self.logprob, self.n_bytes, strict=True)]

    @property
    def per_token(self) -> list[float]:
        return [lp / max(1, n) for lp, n in zip(self.logprob, self.n_tokens, strict=True)]


@torch.inference_mode()
def batch_choice_loglik(
    lm: LoadedModel,
    questions: Sequence[tuple[str, Sequence[str]]],
    max_tokens: int = 8192,
    max_batch: int = 64,
    desc: str = "choices",
    one_pass: bool = True,
) -> list[ChoiceScores]:
    """Score every choice of many multiple-choice questions as the assistant's reply to the context.

    Args:
        lm: a model from :func:`middo.modeling.load_model`.
        questions: ``(user message, choices)`` pairs; each choice is scored as the start of the assistant turn.
        max_tokens: padded tokens per forward batch.
        max_batch: most sequences per batch.
        desc: progress bar label.
        one_pass: a question whose choices are each a single token runs the context once and reads every choice's
            log-probability at its last position (the same numbers as one pass per choice, a quarter of the work
            for four letters); False runs one pass per choice for every question (the reference, for tests and
            benchmarks).

    Returns:
        One :class:`ChoiceScores` per question, choices in the given order.
    """
    tok = lm.tokenizer
    window = _context_limit(lm, 0)
    seqs: list[list[int]] = []
    starts: list[int] = []  # index of the first scored token in each sequence (len(seq) for a one-pass question)
    owners: list[list[tuple[int, int, int]]] = []  # per sequence: (question, choice, next-token id or -1)
    for q, (context, choices) in enumerate(questions):
        ctx = chat_ids(tok, context)
        conts = [list(tok(choice, add_special_tokens=False)["input_ids"]) or [tok.eos_token_id] for choice in choices]
        if one_pass and conts and all(len(cont) == 1 for cont in conts):
            head = _truncate_left(ctx, window - 1)  # as each one-token choice would cut it
            seqs.append(head)
            starts.append(len(head))
            owners.append([(q, c, cont[0]) for c, cont in enumerate(conts)])
            continue
        for c, cont in enumerate(conts):
            cont = cont[: window - 1]
            head = _truncate_left(ctx, window - len(cont))
            seqs.append(head + cont)
            starts.append(len(head))
            owners.append([(q, c, -1)])
    sums: dict[tuple[int, int], float] = {}
    lengths: dict[tuple[int, int], int] = {}
    head_layer = lm.model.get_output_embeddings()
    with tqdm(total=len(seqs), desc=desc, unit="sequence") as bar:
        for batch in token_budget_batches([len(s) for s in seqs], max_tokens, max_batch):
            ids, mask = pad_batch([seqs[i] for i in batch], tok.pad_token_id, "right")
            ids, mask = ids.to(lm.device), mask.to(lm.device)
            hidden = decoder_hidden(lm.model, ids, mask)
            for row, i in enumerate(batch):
                if owners[i][0][2] >= 0:  # one pass: the last context position predicts each one-token choice
                    logprobs = torch.log_softmax(head_layer(hidden[row, len(seqs[i]) - 1]).float(), -1)
                    for q, c, token in owners[i]:
                        sums[q, c], lengths[q, c] = float(logprobs[token]), 1
                    continue
                # position t predicts token t+1: choice tokens start..end-1 are predicted by start-1..end-2
                pos = torch.arange(starts[i] - 1, len(seqs[i]) - 1, device=lm.device)
                logits = head_layer(hidden[row, pos]).float()
                targets = ids[row, pos + 1]
                ((q, c, _),) = owners[i]
                sums[q, c] = float(torch.log_softmax(logits, -1).gather(1, targets[:, None]).sum())
                lengths[q, c] = len(seqs[i]) - starts[i]
            bar.update(len(batch))
    return [
        ChoiceScores(
            logprob=[sums[q, c] for c in range(len(choices))],
            n_tokens=[lengths[q, c] for c in range(len(choices))],
            n_bytes=[len(choice.encode("utf-8")) for choice in choices],
        )
        for q, (_, choices) in enumerate(questions)
    ]


def choice_loglik(lm: LoadedModel, context: str, choices: Sequence[str]) -> list[float]:
    """Summed log-probability of each choice as the assistant's reply to ``context`` (one question).

    Use :func:`batch_choice_loglik` for many questions (batched) or for the length-normalised scores.
    """
    return batch_choice_loglik(lm, [(context, choices)])[0].logprob
