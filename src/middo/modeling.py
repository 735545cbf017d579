"""Loading a causal LM for scoring, and the two tensors every diagnoser needs from it.

Scoring never needs logits over the full vocabulary at every position: we run the decoder body once and apply the
LM head only where a loss is wanted. ``decoder_hidden`` returns the last hidden state (after the final norm, which is
what ``hidden_states[-1]`` means in transformers) so complexity and diversity share one code path.

A round trained with ``train.lora.merge: false`` is an *adapter folder* (``adapter_config.json``, the adapter weights
and the tokenizer). Its base is recorded relative to the folder (``../base`` for ``models/round_1``), so the pair
resolves wherever the repository is cloned and ``dvc pull``-ed; :func:`load_model` loads the base, applies the
adapter and merges it in memory, so every consumer sees one plain model, as fast as a full checkpoint.
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from middo.dataio.atomic import atomic_write_text
from middo.device import resolve_device, resolve_dtype
from middo.errors import MiddoError


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    path: str


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """The tokenizer of a local model folder, with a pad token (EOS when the model defines none) for batching."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


ADAPTER_CONFIG = "adapter_config.json"
_BASE_KEY = "base_model_name_or_path"


def adapter_base(path: str | Path) -> Path | None:
    """The base model folder a LoRA adapter folder applies to; None when ``path`` is not an adapter folder.

    For tools that take the pair themselves (lm-eval's ``pretrained=<base>,peft=<adapter>``). A relative recorded
    base is relative to the adapter folder (what :func:`record_adapter_base` writes); an absolute one is taken as is.

    Raises:
        MiddoError: ``adapter_config.json`` is unreadable, or the base it names is not a local model folder.
    """
    path = Path(path)
    config = path / ADAPTER_CONFIG
    if not config.is_file():
        return None
    try:
        recorded = json.loads(config.read_text(encoding="utf-8"))[_BASE_KEY]
    except (ValueError, KeyError, TypeError) as exc:
        raise MiddoError(f"{config}: expected a JSON object with {_BASE_KEY!r} ({exc!r})") from exc
    base = Path(os.path.normpath(path / recorded))  # an absolute `recorded` replaces `path`
    if not (base / "config.json").is_file():
        raise MiddoError(
            f"{config}: {_BASE_KEY} {recorded!r} (here {base}) is not a model folder; the adapter needs its base: "
            "`dvc pull models/base` (or `dvc repro base_model`)"
        )
    return base


def adapter_rank(path: str | Path) -> int:
    """The largest LoRA rank in an adapter folder: its ``r``, or a per-module ``rank_pattern`` entry above it.

    For servers that size their LoRA buffers up front (vLLM's ``max_lora_rank``, default 16).

    Raises:
        MiddoError: ``adapter_config.json`` is missing or has no positive integer ``r``.
    """
    config = Path(path) / ADAPTER_CONFIG
    try:
        raw = json.loads(config.read_text(encoding="utf-8"))
        ranks = [raw["r"], *(raw.get("rank_pattern") or {}).values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise MiddoError(f"{config}: expected a LoRA adapter config with an integer 'r' ({exc!r})") from exc
    if not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in ranks):
        raise MiddoError(f"{config}: LoRA ranks must be positive integers, got r={raw['r']!r} and rank_pattern")
    return max(ranks)


# vLLM's LoRAConfig.max_lora_rank: a Literal of these (vllm/config/lora.py); lm-eval passes 16 unless told.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def vllm_lora_rank(path: str | Path) -> int:
    """The ``max_lora_rank`` vLLM needs for the adapter in ``path``: vLLM sizes its LoRA buffers for it (default 16)
    and rejects a larger adapter, and it accepts only :data:`VLLM_LORA_RANKS`, so the rank is rounded up to the
    next of those.

    Raises:
        MiddoError: the adapter's rank is above the largest rank vLLM accepts.
    """
    rank = adapter_rank(path)
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise MiddoError(
            f"{path}: LoRA rank {rank} is above vLLM's largest max_lora_rank ({VLLM_LORA_RANKS[-1]}); "
            "train with train.lora.merge: true (a plain checkpoint) or use the hf backend"
        )
    return fitting[0]


def record_adapter_base(folder: str | Path, base: str | Path, final: str | Path | None = None) -> None:
    """Point ``folder``'s adapter at ``base`` by a path relative to ``final`` (where the folder will live once
    renamed; ``folder`` itself by default), so the pair survives a clone and ``dvc pull`` to another path; and make
    the file the same on every identical run, so DVC's hash of the folder is too.

    Raises:
        MiddoError: ``folder`` holds no ``adapter_config.json``.
    """
    folder = Path(folder)
    config = folder / ADAPTER_CONFIG
    if not config.is_file():
        raise MiddoError(f"{folder}: no {ADAPTER_CONFIG}; not a LoRA adapter folder")
    raw = json.loads(config.read_text(encoding="utf-8"))
    raw[_BASE_KEY] = Path(os.path.relpath(os.path.abspath(base), os.path.abspath(final or folder))).as_posix()
    if isinstance(raw.get("target_modules"), list):  # peft writes a set in hash order: sorted, identical runs match
        raw["target_modules"] = sorted(raw["target_modules"])
    atomic_write_text(config, json.dumps(raw, indent=2, sort_keys=True) + "\n")


def merged_adapter_model(adapter: str | Path, base: str | Path, dtype, trust_remote_code: bool = False):
    """``base``'s weights with the LoRA adapter in ``adapter`` merged in: one plain model, no peft wrapper left.

    Raises:
        MiddoError: peft is not installed.
    """
    from transformers import AutoModelForCausalLM

    from middo.optional import require

    require("peft")
    from peft import PeftModel

    model = AutoModelForCausalLM.from_pretrained(
        base, dtype=dtype, local_files_only=True, trust_remote_code=trust_remote_code
    )
    return PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()


def load_model(
    path: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a local HF folder for inference (eval mode, no hub access); an adapter folder comes merged into its base.

    Raises:
        MiddoError: the folder does not exist or is not a model folder, or an adapter's base is missing.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    base = adapter_base(path)
    if base is None and not (path / "config.json").is_file():
        raise MiddoError(f"{path}: not a model folder (no config.json); run `dvc repro` for the stage that makes it")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(path, trust_remote_code)  # adapter folders carry the tokenizer too
    if base is None:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dt, local_files_only=True, trust_remote_code=trust_remote_code
        )
    else:
        model = merged_adapter_model(path, base, dt, trust_remote_code)
    model.to(dev).eval()
    return LoadedModel(model, tokenizer, dev, dt, str(path))


def decoder_body(model: torch.nn.Module) -> torch.nn.Module:
    """The transformer without its LM head (``model.model`` for Llama/Qwen/Mistral...)."""
    body = getattr(model, getattr(model, "base_model_prefix", "model"), None)
    if body is None:
        raise MiddoError(f"{type(model).__name__}: cannot find the decoder body to score without full logits")
    return body


def decoder_hidden(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, past_key_values=None
) -> torch.Tensor:
    """Last hidden state ``[B, T, H]`` of ``input_ids``.

    Positions come from the attention mask (which spans the cached tokens too when ``past_key_values`` is given),
    so left and right padding, and a left-padded cached prefix, all give the same results as unpadded inputs.
    """
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
    body = decoder_body(model)
    kwargs = {}
    if past_key_values is not None:  # transformers >= 5.2x calls it `cache`; older releases `past_key_values`
        name = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
        kwargs[name] = past_key_values
    out = body(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=past_key_values is not None,
        **kwargs,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
