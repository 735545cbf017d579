"""A checkpoint's ``config.json`` that transformers 4 reads with the same RoPE as transformers 5.

transformers 5 saves a model's rotary embedding only as ``rope_parameters``. transformers 4 (the OpenCompass env,
LLaMA-Factory, vLLM builds that pin it) never reads that key: its ``LlamaConfig`` / ``MistralConfig`` /
``Qwen2Config`` take ``rope_theta`` (default 10000) and ``rope_scaling`` (default none; ``"type"`` is copied to
``"rope_type"``), so a SmolLM2 (1e5), Mistral v0.3 (1e6) or Llama-3.1 (5e5 with llama3 scaling) checkpoint would be
evaluated with the wrong positions and no error. Every checkpoint and converted base model the project writes goes
through :func:`make_config_portable`, which writes those keys beside ``rope_parameters`` (transformers 5 reads both
and gets the same values); :func:`misread_rope_keys` is what the OpenCompass bridge checks before a run.

Run ``python -m middo.checkpoint_config FOLDER...`` to fix checkpoints written before this (then ``dvc commit``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError

CONFIG = "config.json"
# What a transformers 4 reader uses when a key is absent: the config classes' __init__ defaults (rope_theta=10000.0,
# rope_scaling=None) and the rotary init's getattr(config, "partial_rotary_factor", 1.0).
V4_DEFAULTS: dict[str, Any] = {"rope_theta": 10000.0, "rope_scaling": None, "partial_rotary_factor": 1.0}
_NOT_SCALING = ("rope_theta", "partial_rotary_factor", "type", "rope_type")


def legacy_rope_keys(config: dict[str, Any]) -> dict[str, Any]:
    """``rope_theta``, ``rope_scaling`` (and ``partial_rotary_factor`` when set) as transformers 4 expects them,
    from a transformers 5 ``rope_parameters``; empty when there is none or it is per layer type (no single form).

    ``rope_scaling`` is null for plain RoPE (as Hugging Face's own SmolLM2 and Mistral configs have it; some readers
    index ``rope_scaling["factor"]`` whenever it is set) and otherwise holds ``rope_type`` and the type's fields
    without ``rope_theta``, the shape of Meta's Llama-3.1 ``config.json``.
    """
    params = config.get("rope_parameters")
    if not isinstance(params, dict) or not isinstance(params.get("rope_theta"), (int, float)):
        return {}
    rope_type = params.get("rope_type", params.get("type", "default"))
    scaling = None
    if rope_type != "default":
        scaling = {"rope_type": rope_type, **{k: v for k, v in params.items() if k not in _NOT_SCALING}}
    keys = {"rope_theta": params["rope_theta"], "rope_scaling": scaling}
    if "partial_rotary_factor" in params:
        keys["partial_rotary_factor"] = params["partial_rotary_factor"]
    return keys


def _as_v4(key: str, value: Any) -> Any:
    """A value as transformers 4 uses it: a ``rope_scaling`` with only the old ``type`` key gets ``rope_type``."""
    if key == "rope_scaling" and isinstance(value, dict):
        value = {"rope_type": value.get("rope_type", value.get("type")), **value}
        value.pop("type", None)
    return value


def misread_rope_keys(config: dict[str, Any]) -> list[str]:
    """One line per key a transformers 4 reader would take differently from ``rope_parameters``; empty when none.

    A config without ``rope_parameters`` (saved by transformers 4, or by a model without RoPE) has nothing to misread.
    """
    params = config.get("rope_parameters")
    if params is None:
        return []
    want = legacy_rope_keys(config)
    if not want:
        return [
            f"rope_parameters: {json.dumps(params)} has no single rope_theta (RoPE per layer type?), which "
            "transformers 4's rope_theta / rope_scaling cannot express"
        ]
    problems = []
    for key, value in want.items():
        seen = config.get(key, V4_DEFAULTS[key])
        if _as_v4(key, seen) != _as_v4(key, value):
            absent = "" if key in config else " (absent, so its default)"
            said = f"rope_parameters say {json.dumps(value)}"
            problems.append(f"{key}: transformers 4 reads {json.dumps(seen)}{absent}, {said}")
    return problems


def make_config_portable(folder: str | Path) -> bool:
    """Write ``rope_theta`` / ``rope_scaling`` beside ``rope_parameters`` in ``folder/config.json`` (atomically, in
    transformers' own layout: sorted keys, indent 2); True when the file changed. A folder without ``config.json``
    (a LoRA adapter: its base carries the config) is left alone.

    Raises:
        MiddoError: ``config.json`` is not a JSON object.
    """
    path = Path(folder) / CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MiddoError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc
    if not isinstance(config, dict):
        raise MiddoError(f"{path}: expected a JSON object, got {type(config).__name__}")
    want = legacy_rope_keys(config)
    if all(key in config and config[key] == value for key, value in want.items()):
        return False
    config.update(want)
    atomic_write_text(path, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return True


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m middo.checkpoint_config FOLDER...``: make each model folder's config portable."""
    folders = sys.argv[1:] if argv is None else argv
    if not folders:
        raise SystemExit("usage: python -m middo.checkpoint_config MODEL_FOLDER...")
    for folder in folders:
        changed = make_config_portable(folder)
        print(f"{folder}/{CONFIG}: {'rope_theta/rope_scaling written' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
