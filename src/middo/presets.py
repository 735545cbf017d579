"""Apply a preset (``presets/*.yaml``) onto ``params.yaml``: merged, validated, written atomically, comments kept.

A shell redirect of a merge back onto ``params.yaml`` truncates the file before Python reads it, and a plain YAML
dump loses every comment; this round-trips the file with ruamel.yaml (which DVC itself uses), so the help text
beside each knob survives and nothing is written unless the merged result validates.
"""

from __future__ import annotations

import io
from pathlib import Path

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap

from middo.config import ConfigError, params_from_dict
from middo.dataio.atomic import atomic_write_text


def _float(representer, value: float):
    """Floats as YAML 1.1 readers (PyYAML, so load_params) parse them: ``2e-05`` would read back as a string."""
    text = repr(value)
    if "e" in text and "." not in text.split("e")[0]:
        mantissa, exp = text.split("e")
        text = f"{mantissa}.0e{exp}"
    return representer.represent_scalar("tag:yaml.org,2002:float", text)


def _yaml() -> YAML:
    y = YAML()
    y.preserve_quotes = True
    y.width = 4096
    y.indent(mapping=2, sequence=4, offset=2)
    y.representer.add_representer(float, _float)
    return y


def _merge_into(target: CommentedMap, over: dict, path: str, changed: list[str]) -> None:
    for key, value in over.items():
        dotted = f"{path}.{key}" if path else str(key)
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_into(target[key], value, dotted, changed)
        elif target.get(key, object()) != value:
            target[key] = value
            changed.append(dotted)


def apply_preset(params_path: str | Path, preset_path: str | Path) -> list[str]:
    """Merge ``preset_path`` into ``params_path`` in place; returns the dotted keys whose value changed.

    Raises:
        ConfigError: either file is unreadable, or the merged params do not validate (nothing is written).
    """
    y = _yaml()
    params_path, preset_path = Path(params_path), Path(preset_path)
    try:
        with params_path.open(encoding="utf-8") as fh:
            doc = y.load(fh) or CommentedMap()
        with preset_path.open(encoding="utf-8") as fh:
            preset = YAML(typ="safe").load(fh) or {}
    except FileNotFoundError as exc:
        raise ConfigError(str(exc.filename), ["file not found"]) from None
    except Exception as exc:  # ruamel's parser errors carry the file name and line
        raise ConfigError(str(preset_path), [f"not valid YAML: {exc}"]) from None
    if not isinstance(preset, dict):
        raise ConfigError(str(preset_path), [f"<root>: must be a mapping, got {type(preset).__name__}"])
    changed: list[str] = []
    _merge_into(doc, preset, "", changed)
    buf = io.StringIO()
    y.dump(doc, buf)
    text = buf.getvalue()
    params_from_dict(yaml.safe_load(text) or {}, f"{params_path} + {preset_path}")  # read as load_params will
    atomic_write_text(params_path, text)
    return changed
