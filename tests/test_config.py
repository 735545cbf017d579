from pathlib import Path

import pytest
import yaml

from middo.config import ConfigError, Params, deep_merge, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_and_presets_load():
    assert isinstance(load_params(ROOT / "params.yaml"), Params)
    for preset in sorted((ROOT / "presets").glob("*.yaml")):
        raw = yaml.safe_load((ROOT / "params.yaml").read_text())
        load_params(ROOT / "params.yaml", overrides=yaml.safe_load(preset.read_text()) or {})
        assert raw  # the preset merged onto real params, not onto nothing


def test_defaults_fill_missing_sections():
    p = params_from_dict({"base": {"seed": 7}})
    assert p.base.seed == 7
    assert p.base.device == "auto"
    assert p.model.base.startswith("embedded:")


def test_all_errors_reported_with_key_paths():
    raw = {
        "base": {"seed": -1, "device": "tpu", "colour": "red"},
        "data": {"limit": "ten"},
        "nonsense": {},
    }
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw, "params.yaml")
    msg = str(err.value)
    assert "params.yaml" in msg
    assert "base.seed: must be >= 0, got -1" in msg
    assert "base.device: must be one of 'auto', 'cpu', 'cuda', got 'tpu'" in msg
    assert "base.colour: unknown key" in msg
    assert "data.limit: must be int, got str 'ten'" in msg
    assert "nonsense: unknown key" in msg
    assert len(err.value.problems) == 5


def test_bool_is_not_an_int():
    with pytest.raises(ConfigError, match="base.seed: must be int, got bool"):
        params_from_dict({"base": {"seed": True}})


def test_params_are_frozen():
    p = params_from_dict({})
    with pytest.raises(AttributeError):
        p.base.seed = 3  # type: ignore[misc]


def test_bad_yaml_names_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("base: [unclosed\n")
    with pytest.raises(ConfigError, match=r"(?s)params.yaml.*not valid YAML.*line 1"):
        load_params(f)


def test_deep_merge_keeps_siblings():
    assert deep_merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}, "b": 1}
