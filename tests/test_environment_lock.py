"""The environment is pinned: every declared dependency has an exact version in requirements-cpu.lock, and the
environment running the tests is the locked one (CI installs it with `make setup`)."""

import re
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def _lock() -> dict[str, str]:
    pins = {}
    for n, line in enumerate((ROOT / "requirements-cpu.lock").read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s;]+)", line.strip())
        assert m, f"requirements-cpu.lock:{n}: expected 'name==version', got {line!r}"
        pins[canonicalize_name(m.group(1))] = m.group(2)
    return pins


def test_every_declared_dependency_is_pinned_exactly():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = list(project["dependencies"])
    for extra in ("serve", "dev", "eval"):
        declared += project["optional-dependencies"][extra]
    pins = _lock()
    missing = [r for r in declared if canonicalize_name(Requirement(r).name) not in pins | {"torch": "2.13.0"}]
    assert not missing, f"not pinned in requirements-cpu.lock: {missing}"
    bad = [
        f"{r}: locked {pins[canonicalize_name(Requirement(r).name)]}"
        for r in declared
        if canonicalize_name(Requirement(r).name) in pins
        and not Requirement(r).specifier.contains(pins[canonicalize_name(Requirement(r).name)], prereleases=True)
    ]
    assert not bad, f"the lock violates pyproject.toml's ranges: {bad}"


def test_the_running_environment_is_the_locked_one():
    pins = _lock()
    drift = []
    for name in ("transformers", "trl", "dvc", "datasets", "polars", "accelerate", "numpy", "openai"):
        installed = metadata.version(name)
        if pins[canonicalize_name(name)] != installed:
            drift.append(f"{name}: installed {installed}, locked {pins[canonicalize_name(name)]}")
    assert metadata.version("torch").split("+")[0] == "2.13.0"
    assert not drift, "\n".join(drift)
