from pathlib import Path

import pytest
import yaml

from middo.config import ConfigError, Params, deep_merge, load_params, params_from_dict

ROOT = Path(__file__).resolve().parents[1]


def _plain(value):
    """Lists and tuples alike, so a YAML list compares equal to the dataclass's tuple."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def test_shipped_params_and_presets_load():
    """Each preset loaded over params.yaml: every value it sets is the value of the validated config."""
    import dataclasses

    assert isinstance(load_params(ROOT / "params.yaml"), Params)
    for preset in sorted((ROOT / "presets").glob("*.yaml")):
        overrides = yaml.safe_load(preset.read_text()) or {}
        loaded = _plain(dataclasses.asdict(load_params(ROOT / "params.yaml", overrides=overrides)))
        leaves = dict(_leaves(overrides))
        assert len(leaves) >= 5, f"{preset.name} sets almost nothing"
        for key, value in leaves.items():
            node = loaded
            for part in key.split("."):
                node = node[part]
            assert node == _plain(value), f"{preset.name}: {key} is {node!r} after loading, the preset says {value!r}"


def test_processes_is_a_count_or_auto():
    assert params_from_dict({"base": {"processes": "auto"}}).base.processes == "auto"
    assert params_from_dict({"base": {"processes": 4}}).base.processes == 4
    for value, problem in (("all", "must be int or one of 'auto', got 'all'"), (0, "must be >= 1, got 0")):
        with pytest.raises(ConfigError) as err:
            params_from_dict({"base": {"processes": value}})
        assert err.value.problems == [f"base.processes: {problem}"]
    for preset in ("paper.yaml", "paper-mistral.yaml"):  # one process per GPU, as DeepSpeed runs are launched
        assert yaml.safe_load((ROOT / "presets" / preset).read_text())["base"]["processes"] == "auto"


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


def _leaves(tree, path=""):
    for key, value in tree.items():
        dotted = f"{path}{key}"
        if isinstance(value, dict) and dotted != "rounds":
            yield from _leaves(value, dotted + ".")
        else:
            yield dotted, value


def _demo_comments(path):
    """Dotted key -> its end-of-line comment in a YAML file (ruamel keeps comments)."""
    from ruamel.yaml import YAML

    out = {}

    def walk(node, prefix):
        for key in node:
            dotted = f"{prefix}{key}"
            token = node.ca.items.get(key, [None, None, None])[2]
            out[dotted] = token.value.strip() if token is not None else ""
            if hasattr(node[key], "ca") and isinstance(node[key], dict):
                walk(node[key], dotted + ".")

    with open(path) as fh:
        walk(YAML().load(fh), "")
    return out


def test_params_yaml_lists_every_knob_with_the_dataclass_default_unless_marked_demo():
    # One home per default: the dataclass. params.yaml shows every knob; where the CPU demo needs another value,
    # the line says so with a "# demo:" comment, so no default can drift silently.
    from middo.config import to_dict

    defaults = dict(_leaves(to_dict(Params())))
    shipped = dict(_leaves(yaml.safe_load((ROOT / "params.yaml").read_text())))
    comments = _demo_comments(ROOT / "params.yaml")
    assert sorted(shipped) == sorted(defaults), "params.yaml and the config dataclasses list different knobs"
    drift = [
        f"{key}: params.yaml {shipped[key]!r} vs default {defaults[key]!r}"
        for key in defaults
        if key != "rounds"
        and (list(defaults[key]) if isinstance(defaults[key], tuple) else defaults[key]) != shipped[key]
        and not comments.get(key, "").startswith("# demo:")
    ]
    assert not drift, "\n".join(drift)


def test_cross_field_errors_are_reported_together():
    raw = {"rounds": {"1": 0, "3": 2, "5": 4}, "eval": {"suites": []}, "data": {"limit": 2}}
    with pytest.raises(ConfigError) as err:
        params_from_dict(raw, "params.yaml")
    problems = err.value.problems
    assert "rounds.3: refines round 2, which does not exist (rounds: 0, 1, 3, 5)" in problems
    assert "rounds.5: refines round 4, which does not exist (rounds: 0, 1, 3, 5)" in problems
    assert "eval.suites: must name at least one suite" in problems
    assert any(p.startswith("data.limit: 2 samples cannot have diagnose.diversity.k=2") for p in problems)
    assert len(problems) == 4


def test_each_eval_backend_needs_what_it_runs():
    with pytest.raises(ConfigError) as err:
        params_from_dict({"eval": {"backend": "lm-eval"}}, "params.yaml")
    assert err.value.problems == ["eval.tasks: must name at least one lm-eval task (eval.backend: lm-eval)"]
    with pytest.raises(ConfigError) as err:
        params_from_dict({"eval": {"backend": "opencompass", "suites": []}}, "params.yaml")
    assert err.value.problems == [
        "eval.opencompass.python: must name the python of your OpenCompass env (eval.backend: opencompass)"
    ]
    with pytest.raises(ConfigError, match="eval.backend: must be one of 'builtin', 'lm-eval', 'opencompass'"):
        params_from_dict({"eval": {"backend": "helm"}}, "params.yaml")
    ok = params_from_dict({"eval": {"backend": "lm-eval", "tasks": ["middo_gsm8k_local"], "suites": []}})
    assert ok.eval.tasks == ("middo_gsm8k_local",)


def test_every_preset_applies_and_its_values_land(tmp_path):
    from middo.presets import apply_preset

    for preset in sorted((ROOT / "presets").glob("*.yaml")):
        target = tmp_path / f"{preset.stem}.yaml"
        target.write_text((ROOT / "params.yaml").read_text())
        changed = apply_preset(target, preset)
        assert changed, f"{preset.name} changed nothing"
        merged = dict(_leaves(yaml.safe_load(target.read_text())))
        for key, value in _leaves(yaml.safe_load(preset.read_text())):
            assert merged[key] == value, f"{preset.name}: {key} did not land"
        assert "# Every knob of the pipeline" in target.read_text()  # comments survive
        assert "middo params apply presets/" in preset.read_text()  # the header says how to use it


def test_a_preset_that_does_not_validate_writes_nothing(tmp_path):
    from middo.presets import apply_preset

    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  learning_rate: -1\neval:\n  suites: []\n")
    with pytest.raises(ConfigError) as err:
        apply_preset(target, bad)
    assert "train.learning_rate: must be > 0, got -1" in str(err.value)
    assert target.read_text() == (ROOT / "params.yaml").read_text()


def test_the_readme_states_the_demo_teachers_failure_threshold_from_params_yaml():
    import re

    value = yaml.safe_load((ROOT / "params.yaml").read_text())["refine"]["max_failed_fraction"]
    readme = " ".join((ROOT / "README.md").read_text().split())
    stated = re.findall(r"demo's 135M teacher runs with ([\d.]+) in `params.yaml`", readme)
    assert stated and all(float(s) == value for s in stated), f"README says {stated}, params.yaml {value}"
    assert f"`refine.max_failed_fraction: {value}`" in readme  # the walkthrough's note
