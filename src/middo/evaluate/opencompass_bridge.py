"""OpenCompass, the paper's harness, as middo's evaluation backend (``eval.backend: opencompass``): the config and
the run.

OpenCompass runs in the user's own environment (it pins numpy < 2, which breaks this one), so this module never
imports it. For one round's checkpoint it writes an OpenCompass config, runs ``<eval.opencompass.python> -m
opencompass.cli.main`` as a subprocess, and hands the run folder to :mod:`middo.evaluate.opencompass_results`, which
turns what OpenCompass wrote into the builtin backend's ``eval.json`` and ``eval_details.jsonl``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from middo.checkpoint_config import misread_rope_keys
from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError
from middo.evaluate.opencompass_results import convert_results
from middo.provenance import environment

if TYPE_CHECKING:
    from middo.config import OpenCompassConfig

CONFIGS_PACKAGE = "opencompass.configs.datasets"
# The paper's eight configs: folder under opencompass/configs/datasets and the list each defines.
PAPER_CONFIGS = {
    "mmlu_zero_shot_gen_47e2c0": ("mmlu", "mmlu_datasets"),
    "IFEval_gen_3321a3": ("IFEval", "ifeval_datasets"),
    "gsm8k_gen_1d7fe4": ("gsm8k", "gsm8k_datasets"),
    "math_gen_265cce": ("math", "math_datasets"),
    "humaneval_gen_8e312c": ("humaneval", "humaneval_datasets"),
    "mbpp_gen_830460": ("mbpp", "mbpp_datasets"),
    "hellaswag_gen_6faab5": ("hellaswag", "hellaswag_datasets"),
    "gpqa_openai_simple_evals_gen_5aeece": ("gpqa", "gpqa_datasets"),
}
TAIL_LINES = 40


# ---- the config OpenCompass runs ----


@dataclass(frozen=True)
class DatasetImport:
    name: str  # the config's name, as eval.opencompass.datasets gives it
    module: str  # e.g. opencompass.configs.datasets.gsm8k.gsm8k_gen_1d7fe4
    variables: tuple[str, ...]  # the dataset lists it defines, e.g. ("gsm8k_datasets",)


def _dataset_lists(path: Path) -> tuple[str, ...]:
    """Names ending in ``_datasets`` that a config file assigns or imports (OpenCompass's own ``--datasets`` rule)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.ImportFrom):
            names += [a.asname or a.name for a in node.names]
    return tuple(dict.fromkeys(n for n in names if n.endswith("_datasets")))


def resolve_datasets(names: list[str] | tuple[str, ...], datasets_dir: Path | None = None) -> list[DatasetImport]:
    """Where each dataset config lives: the paper's eight from a table, others found under ``datasets_dir``.

    Args:
        names: config names (``gsm8k_gen_1d7fe4``).
        datasets_dir: ``opencompass/configs/datasets`` of the user's install; None when unknown (only the paper's
            eight resolve then). When given, the paper's eight are checked to exist there too.

    Raises:
        MiddoError: every name that is unknown, missing from that OpenCompass, ambiguous or defines no dataset list.
    """
    found: list[DatasetImport] = []
    errors = [] if names else ["empty: name at least one OpenCompass dataset config"]
    for name in names:
        if name in PAPER_CONFIGS:
            folder, variable = PAPER_CONFIGS[name]
            if datasets_dir is not None and not (datasets_dir / folder / f"{name}.py").is_file():
                errors.append(f"'{name}' is not in your OpenCompass ({datasets_dir / folder} has no {name}.py)")
            else:
                found.append(DatasetImport(name, f"{CONFIGS_PACKAGE}.{folder}.{name}", (variable,)))
            continue
        hits = sorted(datasets_dir.rglob(f"{name}.py")) if datasets_dir is not None else []
        if len(hits) != 1:
            where = f"under {datasets_dir}" if datasets_dir is not None else "(not one of the paper's eight)"
            errors.append(f"'{name}' matches {len(hits)} configs {where}" + (f": {hits}" if hits else ""))
            continue
        variables = _dataset_lists(hits[0])
        if not variables:
            errors.append(f"'{name}' ({hits[0]}) defines no *_datasets list")
            continue
        parts = hits[0].relative_to(datasets_dir).with_suffix("").parts
        found.append(DatasetImport(name, ".".join((CONFIGS_PACKAGE, *parts)), variables))
    if errors:
        raise MiddoError("eval.opencompass.datasets: " + "; ".join(errors))
    return found


def render_config(
    model_path: str | Path,
    model_abbr: str,
    datasets: list[DatasetImport],
    backend: str,
    max_out_len: int,
    batch_size: int,
    tensor_parallel: int,
    limit: int,
) -> str:
    """The text of an OpenCompass config: the paper's model block (chat template, temperature 0) and the datasets.

    ``limit`` > 0 keeps each dataset's first ``limit`` test items (``reader_cfg.test_range``), the same items every
    round; MMLU's 57 subjects each keep ``limit``. A dataset config's own ``max_out_len`` (gsm8k's 512, ...) wins
    over the model's, as in OpenCompass.
    """
    model_type = "VLLMwithChatTemplate" if backend == "vllm" else "HuggingFacewithChatTemplate"
    lines = [
        "# Written by middo (eval.backend: opencompass, src/middo/evaluate/opencompass_bridge.py) on every run.",
        "from mmengine.config import read_base",
        f"from opencompass.models import {model_type}",
        "",
        "with read_base():",
    ]
    lists = []
    for d in datasets:
        for variable in d.variables:
            alias = re.sub(r"\W", "_", d.name if len(d.variables) == 1 else f"{d.name}_{variable}")
            lines.append(f"    from {d.module} import {variable} as {alias}")
            lists.append(alias)
    mmlu = any(d.module.startswith(f"{CONFIGS_PACKAGE}.mmlu.") for d in datasets)
    if mmlu:
        lines.append("    from opencompass.configs.summarizers.groups.mmlu import mmlu_summary_groups")
    lines += ["", f"datasets = [{', '.join(f'*{name}' for name in lists)}]"]
    if limit > 0:
        lines += [
            "for _dataset in datasets:",
            f"    _dataset['reader_cfg']['test_range'] = '[0:{limit}]'",
            "del _dataset",
        ]
    if backend == "vllm":
        engine = [
            f"model_kwargs=dict(tensor_parallel_size={tensor_parallel}),",
            "generation_kwargs=dict(temperature=0),",
        ]
    else:
        engine = ["generation_kwargs=dict(do_sample=False),"]
    fields = [
        f"type={model_type},",
        f"abbr={model_abbr!r},",
        f"path={str(Path(model_path).absolute())!r},",
        *engine,
        f"max_out_len={max_out_len},",
        f"batch_size={batch_size},",
        f"run_cfg=dict(num_gpus={tensor_parallel}),",
    ]
    lines += ["", "models = [", "    dict(", *(f"        {f}" for f in fields), "    )", "]"]
    if mmlu:  # adds OpenCompass's `mmlu` (naive mean over subjects) and `mmlu-weighted` rows to its summary
        lines += ["", "summarizer = dict(summary_groups=mmlu_summary_groups)"]
    return "\n".join(lines) + "\n"


# ---- running it in the user's env ----

PROBE = """import importlib.metadata as m, opencompass
print(getattr(opencompass, '__version__', 'unknown')); print(opencompass.__file__)
try: print(m.version('transformers'))
except m.PackageNotFoundError: print('none')"""


def _child_env(python: Path) -> dict[str, str]:
    """Our environment with the OpenCompass env's bin first on PATH, as if activated (old versions run `python`)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHOME"}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def check_python(python: str) -> tuple[Path, str, Path, str]:
    """The OpenCompass env's python (not resolved: a venv's python is a symlink), OpenCompass's version and package
    folder, and that env's transformers version.

    Raises:
        MiddoError: naming ``eval.opencompass.python`` when it is unset, missing, or cannot import opencompass.
    """
    if not python:
        raise MiddoError("eval.opencompass.python: not set; name the python of your OpenCompass env")
    exe = Path(os.path.abspath(Path(python).expanduser()))
    if not exe.is_file():
        raise MiddoError(
            f"eval.opencompass.python: {python} does not exist; point it at the python of the env where you installed "
            "OpenCompass (e.g. ~/opencompass-env/bin/python; docs/evaluation.md, 'eval.backend: opencompass')"
        )
    try:
        probe = subprocess.run([str(exe), "-c", PROBE], capture_output=True, text=True, env=_child_env(exe))
    except OSError as exc:
        raise MiddoError(f"eval.opencompass.python: cannot run {python}: {exc}") from exc
    out = probe.stdout.strip().splitlines()
    if probe.returncode != 0 or len(out) < 3:
        why = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        raise MiddoError(
            f"eval.opencompass.python: {python} cannot import opencompass ({why}); install it in that env: "
            f"{python} -m pip install opencompass (never in this project's env)"
        )
    return exe, out[-3], Path(out[-2]).parent, out[-1]


def check_tokenizer(model: Path, transformers: str) -> None:
    """Fail before the run when the checkpoint's tokenizer names a class the OpenCompass env cannot load.

    transformers 5 saves ``"tokenizer_class": "TokenizersBackend"``, unknown to transformers 4, which OpenCompass
    0.5's HF models need (they call ``batch_encode_plus``, gone in 5) and vLLM releases may pin.

    Raises:
        MiddoError: such a tokenizer and a transformers < 5 in the OpenCompass env.
    """
    config = model / "tokenizer_config.json"
    major = transformers.split(".")[0]
    if not major.isdigit() or int(major) >= 5 or not config.is_file():
        return
    if json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class") == "TokenizersBackend":
        raise MiddoError(
            f"{config}: tokenizer_class 'TokenizersBackend' (saved by transformers 5) cannot be loaded by the "
            f"transformers {transformers} of your OpenCompass env; see docs/evaluation.md, 'eval.backend: opencompass'"
        )


def check_config(model: Path, transformers: str) -> None:
    """Fail before the run when the OpenCompass env's transformers 4 would read the checkpoint's RoPE differently.

    transformers 4 ignores the ``rope_parameters`` that transformers 5 saves and falls back to ``rope_theta`` 10000
    without scaling: every score would come from a model with the wrong positions, and nothing would say so.
    Checkpoints written by middo carry both (:mod:`middo.checkpoint_config`).

    Raises:
        MiddoError: naming ``config.json`` and each key (``rope_theta``, ``rope_scaling``, ...) that would be misread.
    """
    major = transformers.split(".")[0]
    path = model / "config.json"
    if not major.isdigit() or int(major) >= 5 or not path.is_file():
        return
    problems = misread_rope_keys(json.loads(path.read_text(encoding="utf-8")))
    if problems:
        raise MiddoError(
            f"{path}: the transformers {transformers} of your OpenCompass env would misread the RoPE: "
            + "; ".join(problems)
            + f". Write the keys it reads: {sys.executable} -m middo.checkpoint_config {model} (then `dvc commit` "
            "it); checkpoints trained now carry them"
        )


def stream(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    """Run ``cmd``, echoing its output as it comes (OpenCompass's progress) and keeping the tail for the error.

    Raises:
        MiddoError: the command could not start or exited non-zero; the message ends with its last output lines.
    """
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise MiddoError(f"cannot run {cmd[0]}: {exc}") from exc
    with proc:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            tail.append(line.rstrip("\n"))
    if proc.returncode != 0:
        last = "\n".join(tail)
        raise MiddoError(f"{' '.join(cmd)} exited with {proc.returncode} (cwd {cwd}); its last lines:\n{last}")


def _fingerprint(folder: Path) -> str:
    """File names, sizes and mtimes: a retrained checkpoint differs, so its run never reuses old predictions."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return "\n".join(f"{p.relative_to(folder)} {p.stat().st_size} {p.stat().st_mtime_ns}" for p in files)


def evaluate_opencompass(
    model_path: str | Path,
    limit: int,
    out_path: str | Path,
    seed: int,
    bootstrap: int,
    config: OpenCompassConfig,
    round_: int,
) -> dict[str, Any]:
    """Run OpenCompass on one round's checkpoint and write ``eval.json`` and its details like the builtin backend.

    The config goes to ``<work_dir>/round_R/opencompass_config.py``; OpenCompass writes under
    ``<work_dir>/round_R/run_<hash>`` (``-r``), the hash covering the config, the OpenCompass version and the
    checkpoint's files, so an interrupted run resumes and a changed one starts fresh.

    Args:
        model_path: the round's HF checkpoint folder.
        limit: each dataset's first ``limit`` test items; 0 for all.
        out_path: the metrics JSON to write; details go beside it (:func:`middo.evaluate.suite.details_path`).
        seed: the bootstrap's seed (OpenCompass picks no random items: ``limit`` takes the first ones).
        bootstrap: resamples for the average's 95% interval.
        config: ``eval.opencompass``.
        round_: the round, naming the work folder and the model abbr (``middo_round_R``).

    Returns:
        What was written (:func:`convert_results`).

    Raises:
        MiddoError: a bad ``eval.opencompass.python`` or dataset name, a model folder without ``config.json`` or
            with a tokenizer that env cannot load or a RoPE config it would misread, OpenCompass failing (with its
            last output lines), or results that cannot be read.
    """
    exe, version, package, transformers = check_python(config.python)
    model = Path(model_path).absolute()
    if not (model / "config.json").is_file():
        raise MiddoError(f"{model}: not a HF model folder (no config.json)")
    check_tokenizer(model, transformers)
    check_config(model, transformers)
    datasets_dir = package / "configs" / "datasets"
    datasets = resolve_datasets(config.datasets, datasets_dir if datasets_dir.is_dir() else None)
    abbr = f"middo_round_{round_}"
    text = render_config(
        model, abbr, datasets, config.backend, config.max_out_len, config.batch_size, config.tensor_parallel, limit
    )
    work = Path(config.work_dir).absolute() / f"round_{round_}"
    config_path = work / "opencompass_config.py"
    atomic_write_text(config_path, text)
    run = "run_" + hashlib.sha256("\n".join((version, text, _fingerprint(model))).encode()).hexdigest()[:12]
    cmd = [str(exe), "-m", "opencompass.cli.main", str(config_path), "-w", str(work), "-r", run, "--dump-eval-details"]
    print(f"opencompass {version}: {' '.join(cmd)}", flush=True)
    # cwd: OpenCompass looks for ./data/<dataset> first, which must not be this project's data/
    stream(cmd, cwd=work, env=_child_env(exe))
    env = {**environment(device="see opencompass", dtype="auto"), "opencompass": version}
    return convert_results(work / run, out_path, seed, bootstrap, model_abbr=abbr, env=env)
