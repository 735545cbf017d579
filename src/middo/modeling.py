"""Loading a causal LM for scoring, and the two tensors every diagnoser needs from it.

Scoring never needs logits over the full vocabulary at every position: we run the decoder body once and apply the
LM head only where a loss is wanted. ``decoder_hidden`` returns the last hidden state (after the final norm, which is
what ``hidden_states[-1]`` means in transformers) so complexity and diversity share one code path.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path

import torch

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


def load_model(
    path: str | Path, device: str = "auto", dtype: str = "auto", trust_remote_code: bool = False
) -> LoadedModel:
    """Load a local HF folder for inference (eval mode, no hub access).

    Raises:
        MiddoError: the folder does not exist or is not a model folder.
    """
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not (path / "config.json").is_file():
        raise MiddoError(f"{path}: not a model folder (no config.json); run `dvc repro` for the stage that makes it")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(path, trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=dt, local_files_only=True, trust_remote_code=trust_remote_code
    )
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
