"""The environment is pinned: every declared dependency has an exact version in requirements-cpu.lock, and the
environment running the tests is the locked one (CI installs it with `make setup`)."""

import re
import tomllib
from importlib import metadata
from pathlib import Path

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
    missing = [r for r in declared if canonicalize_name(Requirement(r).name) not in pins | {"torch": _torch_pin()}]
    assert not missing, f"not pinned in requirements-cpu.lock: {missing}"
    bad = [
        f"{r}: locked {pins[canonicalize_name(Requirement(r).name)]}"
        for r in declared
        if canonicalize_name(Requirement(r).name) in pins
        and not Requirement(r).specifier.contains(pins[canonicalize_name(Requirement(r).name)], prereleases=True)
    ]
    assert not bad, f"the lock violates pyproject.toml's ranges: {bad}"


# Lock lines `make setup` does not install, each with the reason (none today: every pin is installed, deepspeed in
# a second step without build isolation). A name listed here is skipped by the check below.
NOT_INSTALLED: dict[str, str] = {}


def _torch_pin() -> str:
    """torch is pinned in the Makefile (the CPU wheel is installed before the lock), not in the lock."""
    (version,) = re.findall(r"^TORCH_VERSION := ([\w.]+)$", (ROOT / "Makefile").read_text(), re.M)
    return version


def test_the_running_environment_is_the_locked_one():
    """Every pin of requirements-cpu.lock against what is installed in the environment running the tests."""
    pins = _lock()
    assert len(pins) > 250  # the whole lock was read, not a handful of names
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    missing = [f"{name}=={v}" for name, v in pins.items() if name not in installed and name not in NOT_INSTALLED]
    drift = [
        f"{name}: installed {installed[name]}, locked {v}"
        for name, v in pins.items()
        if name in installed and installed[name] != v
    ]
    assert not missing, f"locked but not installed (run `make setup`): {missing}"
    assert not drift, "\n".join(drift)
    assert installed["torch"].split("+")[0] == _torch_pin()


def test_requires_python_is_the_locked_python_and_the_readme_says_so():
    """The lock is resolved for one Python (its header says which); its numpy, pandas and scipy need 3.11, and the
    tests import ``tomllib``. pyproject.toml, ruff and the README must not promise an older one."""
    (locked,) = re.findall(r"python (3\.\d+)", (ROOT / "requirements-cpu.lock").read_text().splitlines()[0])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["requires-python"] == f">={locked}"
    assert pyproject["tool"]["ruff"]["target-version"] == "py" + locked.replace(".", "")
    readme = (ROOT / "README.md").read_text()
    assert set(re.findall(r"Python (3\.\d+)\+", readme)) == {locked}
