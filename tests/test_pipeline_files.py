"""The DVC pipeline definition stays consistent with params.yaml and the scripts it runs."""

import re
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _stages():
    """Stage name -> definition, with ``foreach`` stages unwrapped to their ``do`` body."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def _has_key(tree: dict, dotted: str) -> bool:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_stage_param_exists_in_params_yaml():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            keys = key if isinstance(key, str) else next(iter(key.values()))
            for k in [keys] if isinstance(keys, str) else keys:
                assert _has_key(params, k), f"stage {name}: param {k} missing from params.yaml"


def test_every_stage_script_is_a_dep():
    for name, stage in _stages().items():
        cmd = stage["cmd"]
        script = re.search(r"python (stages/\S+\.py)", cmd)
        assert script, f"stage {name}: cmd should run a stages/ script: {cmd}"
        assert script.group(1) in stage["deps"], f"stage {name}: {script.group(1)} not in deps"
        assert (ROOT / script.group(1)).is_file()


def test_round_stages_do_not_depend_on_the_whole_rounds_map():
    # listing `rounds` would re-run every round whenever one is added
    for name, stage in _stages().items():
        if name != "summarize":  # the one stage that must see every round
            assert "rounds" not in stage.get("params", []), name


def test_stage_scripts_are_thin():
    for script in (ROOT / "stages").glob("*.py"):
        lines = [ln for ln in script.read_text().splitlines() if ln.strip()]
        assert len(lines) <= 30, f"{script.name} has {len(lines)} lines; logic belongs in src/middo"
        assert lines[0].startswith('"""'), f"{script.name} needs a docstring with its dvc repro line"


def test_cli_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "middo.cli", "--help"], capture_output=True, text=True, check=True)
    for sub in ("check-params", "params", "verify-lock", "diff"):
        assert sub in out.stdout


def _check_params(path):
    return subprocess.run(
        [sys.executable, "-m", "middo.cli", "check-params", "--params", str(path)], capture_output=True, text=True
    )


def test_cli_check_params_reports_key_path(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("base:\n  seed: -3\n")
    out = _check_params(bad)
    assert out.returncode == 2
    assert "base.seed: must be >= 0, got -3" in out.stderr
    assert "Traceback" not in out.stderr


# ---- dvc.yaml deps tell the truth: code (static import graph) and params (keys read from load_params' result) ----

SRC = ROOT / "src"
_BACKEND_REF = re.compile(r"^(middo(?:\.\w+)+):\w+$")  # "middo.teachers.openai_backend:OpenAITeacher" registries


def _module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts if rel.name == "__init__" else parts[:-1])


def _imported_modules(path: Path) -> set[str]:
    """Every middo module ``path`` imports, at top level or inside functions (lazy imports run too)."""
    import ast

    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import: resolve against this file's package
                pkg = _package_of(path).split(".")
                module = ".".join([*pkg[: len(pkg) - node.level + 1], *([module] if module else [])])
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names)  # `from middo.x import y` where y is a module
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _BACKEND_REF.match(node.value):
            found.add(_BACKEND_REF.match(node.value).group(1))
    return {m for m in found if m == "middo" or m.startswith("middo.")}


def _stage_code(script: Path) -> set[Path]:
    """The files a stage script runs: itself plus every middo module reachable through imports, with the
    ``__init__`` of each package on the way (importing ``middo.a.b`` runs ``middo/__init__``, ``middo/a/__init__``)."""
    seen: set[Path] = {script}
    todo = [script]
    while todo:
        for name in _imported_modules(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                path = _module_path(".".join(parts[:i]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return seen


def _param_reads(path: Path) -> set[str]:
    """Dotted params keys read in ``path``: attribute chains on a name bound to ``load_params(...)``."""
    import ast

    tree = ast.parse(path.read_text())
    roots = {
        t.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and getattr(node.value.func, "id", getattr(node.value.func, "attr", None)) == "load_params"
        for t in node.targets
        if isinstance(t, ast.Name)
    }
    chains: set[str] = set()
    inner: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, cur = [], node
            while isinstance(cur, ast.Attribute):
                parts.append(cur.attr)
                inner.add(id(cur.value))
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id in roots:
                chains.add(".".join(reversed(parts)))
    return chains


def _covers(declared: str, key: str) -> bool:
    return key == declared or key.startswith(declared + ".")


def _declared_params(stage: dict) -> list[str]:
    out = []
    for entry in stage.get("params", []):
        out += [entry] if isinstance(entry, str) else [k for keys in entry.values() for k in keys]
    return out


def test_every_stage_lists_the_code_it_runs():
    problems = []
    for name, stage in _stages().items():
        script = ROOT / re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        deps = [ROOT / d for d in stage["deps"] if "${" not in d]
        for path in sorted(_stage_code(script)):
            if not any(path == d or d in path.parents for d in deps):
                problems.append(f"stage {name}: runs {path.relative_to(ROOT)} but dvc.yaml does not list it in deps")
    assert not problems, "\n".join(problems)


def test_every_stage_lists_exactly_the_params_it_reads():
    problems = []
    for name, stage in _stages().items():
        script = ROOT / re.search(r"python (stages/\S+\.py)", stage["cmd"]).group(1)
        reads = set().union(*(_param_reads(p) for p in _stage_code(script)))
        declared = _declared_params(stage)
        for key in sorted(reads):
            if not any(_covers(d, key) for d in declared):
                problems.append(f"stage {name}: reads params key {key} but dvc.yaml does not declare it")
        for d in declared:
            if not any(_covers(d, key) or _covers(key, d) for key in reads):
                problems.append(f"stage {name}: declares params key {d} that its code never reads")
    assert not problems, "\n".join(problems)


def _path_params() -> dict[str, set[str]]:
    """Dotted params key -> the paths inside this checkout that its value names in params.yaml or any preset.

    A value is a path here when it is relative and lies under a folder git tracks (``configs/deepspeed/zero2.json``,
    ``data/alpaca/...``) or under a stage's output (``models/base``); caches (``.cache/...``), URLs, names and
    absolute paths outside the checkout (a preset's ``/models/...``) are not: DVC cannot hash what is not here.
    """
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    folders = {str(p) for f in tracked for p in Path(f).parents if str(p) != "."}
    outs = {o if isinstance(o, str) else next(iter(o)) for s in _stages().values() for o in s.get("outs", [])}
    roots = folders | {o for o in outs if "${" not in o}

    def leaves(tree, path=""):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, f"{path}{key}.")
            else:
                yield f"{path}{key}", value

    found: dict[str, set[str]] = {}
    for source in [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]:
        for key, value in leaves(yaml.safe_load(source.read_text()) or {}):
            if not isinstance(value, str) or not value or "://" in value or Path(value).is_absolute():
                continue
            if any(value == r or value.startswith(r + "/") for r in roots):
                found.setdefault(key, set()).add(value)
    return found


def test_every_path_valued_param_a_stage_reads_is_a_dep():
    """A stage that reads a config file through a param (``train.deepspeed``) must depend on it, or editing the file
    re-runs nothing. A dep covers the path when it is ``${key}`` or the path itself or a folder above it (for a param
    whose default is empty, the folder its presets point into)."""
    paths = _path_params()
    assert {"train.deepspeed", "data.seed_path", "eval.lm_eval.include_path"} <= set(paths)  # the finder finds them
    problems = []
    for name, stage in _stages().items():
        deps = stage.get("deps", [])
        for key, values in sorted(paths.items()):
            if not any(_covers(d, key) for d in _declared_params(stage)):
                continue
            for value in sorted(values):
                if f"${{{key}}}" in deps or any(value == d or value.startswith(d.rstrip("/") + "/") for d in deps):
                    continue
                problems.append(f"stage {name}: reads {key} (a path, {value}) but dvc.yaml does not list it in deps")
    assert not problems, "\n".join(problems)


def test_the_graph_walker_sees_lazy_and_registry_imports():
    # the walker itself must not miss what Python would run: a lazy import inside a function, a registry string
    code = {p.relative_to(SRC).as_posix() for p in _stage_code(ROOT / "stages/refine.py") if SRC in p.parents}
    assert "middo/refine/engine.py" in code  # via refine.run
    assert "middo/teachers/openai_backend.py" in code  # only named as a string in teachers.BACKENDS
    assert "middo/__init__.py" in code
    assert _param_reads(ROOT / "stages/train.py") >= {"train", "base.seed", "model.trust_remote_code"}


def test_the_first_stage_reports_every_cross_field_error_and_writes_nothing(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text(
        (ROOT / "params.yaml")
        .read_text()
        .replace("'2': 1", "'2': 1\n  '4': 3")
        .replace("  suites: [gsm8k, hellaswag, truthfulqa, humaneval, math500, ifbench, mmlu]", "  suites: []")
    )
    assert "  suites: []" in bad.read_text()  # the edit above matched the shipped params.yaml
    out = subprocess.run(
        [sys.executable, str(ROOT / "stages/base_model.py"), "--out", str(tmp_path / "base"), "--params", str(bad)],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2, out.stderr
    assert "rounds.4: refines round 3, which does not exist (rounds: 0, 1, 2, 4)" in out.stderr
    assert "eval.suites: must name at least one suite" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "base").exists()


def test_cli_check_params_reports_cross_field_errors_together(tmp_path):
    bad = tmp_path / "params.yaml"
    bad.write_text("rounds:\n  '1': 0\n  '3': 2\neval:\n  suites: []\n")
    out = _check_params(bad)
    assert out.returncode == 2
    assert "2 problem(s)" in out.stderr
    assert "rounds.3: refines round 2" in out.stderr and "eval.suites: must name at least one suite" in out.stderr
