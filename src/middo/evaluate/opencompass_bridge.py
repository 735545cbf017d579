"""OpenCompass, the paper's harness, as middo's evaluation backend (``eval.backend: opencompass``).

OpenCompass runs in the user's own environment (it pins numpy < 2, which breaks this one), so this module never
imports it. For one round's checkpoint it writes an OpenCompass config, runs ``<eval.opencompass.python> -m
opencompass.cli.main`` as a subprocess, and turns what OpenCompass wrote into the builtin backend's ``eval.json``
(accuracy, n and 95% interval per suite) plus ``eval_details.jsonl`` (one line per item, paired on ``(suite, id)``).

What OpenCompass writes under ``-w WORK -r RUN`` (open-compass/opencompass: ``tasks/openicl_infer.py``,
``tasks/openicl_eval.py``, ``summarizers/default.py``):

- ``RUN/predictions/<model abbr>/<dataset abbr>.json``: ``{"0": {"origin_prompt", "prediction", "gold"}, ...}``;
- ``RUN/results/<model abbr>/<dataset abbr>.json``: the evaluator's scores (percent) and, with
  ``--dump-eval-details``, ``details``: one entry per item, its result under ``correct`` / ``is_correct``;
- ``RUN/summary/summary_<time>.csv``: ``dataset, version, metric, mode, <model abbr>``, ``-`` where a dataset has
  no score.

Run: ``python -m middo.evaluate.opencompass_bridge RUN_DIR|SUMMARY.csv OUT.json`` (convert what a run left).
"""

from __future__ import annotations

import argparse
import ast
import csv
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
from middo.evaluate.stats import intervals
from middo.evaluate.suite import details_path
from middo.provenance import environment

if TYPE_CHECKING:
    from middo.config import OpenCompassConfig

KEY_COLUMNS = ("dataset", "version", "metric", "mode")
# convert_summary: our suite name -> OpenCompass dataset abbr (``dataset`` or ``dataset:metric``). Only datasets that
# measure the same thing as a builtin suite: IFEval is not IFBench and OpenCompass's TruthfulQA is generative.
DEFAULT_SUITE_MAP = {
    "humaneval": "openai_humaneval",
    "math500": "math-500",
    "gsm8k": "gsm8k",
    "hellaswag": "hellaswag",
}

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
# Dataset abbr (what those configs name their datasets) -> our suite and the metric OpenCompass's summary shows.
ABBR_SUITES = {
    "IFEval": ("ifeval", "Prompt-level-strict-accuracy"),
    "gsm8k": ("gsm8k", "accuracy"),
    "math": ("math", "accuracy"),
    "openai_humaneval": ("humaneval", "humaneval_pass@1"),
    "mbpp": ("mbpp", "score"),
    "hellaswag": ("hellaswag", "accuracy"),
    "GPQA_diamond": ("gpqa", "accuracy"),
}
MMLU_PREFIX = "lukaemon_mmlu_"  # MMLU is 57 datasets, one per subject; they make one suite
SUITE_ORDER = ("mmlu", "ifeval", "gsm8k", "math", "humaneval", "mbpp", "hellaswag", "gpqa")
# DefaultSummarizer's METRIC_WHITELIST order: a dataset outside ABBR_SUITES is scored by its first numeric metric here.
METRIC_ORDER = ("score", "auc_score", "accuracy", "humaneval_pass@1", "rouge1", "f1", "exact_match")
CORRECT_KEYS = ("correct", "is_correct", "cascade_correct")  # an item's result, as BaseEvaluator.evaluate reads it
DETAIL_FIELDS = ("pred", "answer", "predictions", "references", "origin_prediction", "completion", "result", "grade")
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


# ---- reading what it wrote ----


def _load(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise MiddoError(f"{path}:{exc.lineno}: not JSON ({exc.msg})") from exc


def _value(entry: dict[str, Any], key: str, what: str) -> Any:
    """A detail field; OpenCompass >= 0.4 (entries with ``example_abbr``) lists it per replica: we run n = 1."""
    value = entry[key]
    if "example_abbr" not in entry or not isinstance(value, list):
        return value
    if len(value) != 1:
        raise MiddoError(f"{what}: {len(value)} replicas per item; middo reads runs with n = 1")
    return value[0]


def read_items(details: Any, abbr: str) -> list[dict[str, Any]] | None:
    """``{"id", "correct", ...}`` per item from a results file's ``details``, or None when they carry no result.

    Handles a list (OpenCompass >= 0.4: ``example_abbr`` and one-element lists) and a dict keyed ``"0", "1", ...``
    (``OpenICLEvalTask.format_details``, which adds a ``"type"`` key). AccEvaluator (MMLU, HellaSwag) gives no
    details; OpenCompass then dumps each item's postprocessed prediction and reference, and AccEvaluator's accuracy
    is exactly their string equality, so that is the item's result there.
    """
    if isinstance(details, dict):
        entries = sorted((int(k), v) for k, v in details.items() if str(k).isdigit())
    elif isinstance(details, list):
        entries = list(enumerate(details))
    else:
        return None
    exact = abbr == "hellaswag" or abbr.startswith(MMLU_PREFIX)
    items = []
    for position, entry in entries:
        if not isinstance(entry, dict):
            return None
        what = f"{abbr} item {position}"
        flag = next((_value(entry, k, what) for k in CORRECT_KEYS if k in entry), None)
        if flag is None and exact and "predictions" in entry and "references" in entry:
            flag = str(_value(entry, "predictions", what)) == str(_value(entry, "references", what))
        if flag is None:
            return None
        tail = str(entry.get("example_abbr", "")).rpartition("_")[2]  # "<subdivision>_<index in the dataset>"
        index = int(tail) if tail.isdigit() else position
        fields = {k: _value(entry, k, what) for k in DETAIL_FIELDS if k in entry}
        items.append({"id": f"{abbr}/{index}", "correct": bool(flag), "dataset": abbr, **fields})
    return items or None


def _count_predictions(folder: Path, abbr: str) -> int:
    """Items predicted: ``<abbr>.json``, or the parts ``<abbr>_0.json, <abbr>_1.json, ...`` of a split dataset."""
    parts = [folder / f"{abbr}.json"]
    if not parts[0].is_file():
        parts = []
        while (folder / f"{abbr}_{len(parts)}.json").is_file():
            parts.append(folder / f"{abbr}_{len(parts)}.json")
    if not parts:
        raise MiddoError(f"{folder}: no predictions for {abbr} ({abbr}.json)")
    return sum(len(_load(p)) for p in parts)


def _read_summary(csv_path: Path, model: str | None) -> list[dict[str, Any]]:
    """Rows of an OpenCompass summary CSV with ``_line`` and ``_score`` (the chosen model's column)."""
    with csv_path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or any(k not in rows[0] for k in KEY_COLUMNS):
        raise MiddoError(f"{csv_path}: not an OpenCompass summary (expected columns {', '.join(KEY_COLUMNS)}, ...)")
    header = rows[0]
    models = [c for c in header if c not in KEY_COLUMNS]
    if model is None and len(models) != 1:
        raise MiddoError(f"{csv_path}: {len(models)} model columns {models}; pass model= to pick one")
    if model is not None and model not in models:
        raise MiddoError(f"{csv_path}: no model column '{model}'; columns are {models}")
    col = header.index(model or models[0])
    return [dict(zip(header, r)) | {"_line": i + 2, "_score": (r + [""] * col)[col]} for i, r in enumerate(rows[1:])]


def convert_results(
    run_dir: str | Path,
    out_path: str | Path,
    seed: int,
    bootstrap: int,
    model_abbr: str | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``eval.json`` and ``eval_details.jsonl`` from one OpenCompass run folder (``WORK/<timestamp>``).

    Each suite's accuracy is over its items (for MMLU, pooled over the 57 subjects: OpenCompass's ``mmlu-weighted``),
    so it is the proportion its Wilson interval and the paired comparison describe. ``opencompass_summary`` keeps
    each suite as OpenCompass's summary shows it: MMLU there is ``mmlu``, the naive mean over subjects. A dataset
    without per-item results (run without ``--dump-eval-details``) falls back to its summary score over as many items
    as it has predictions; ``notes`` says so.

    Raises:
        MiddoError: no results, a dataset the summary lists without a score, a results file with an ``error`` or
            without its metric, or predictions missing for a fallback (all problems together).
    """
    run_dir = Path(run_dir)
    results = run_dir / "results"
    if model_abbr is None:
        models = sorted(p.name for p in results.iterdir()) if results.is_dir() else []
        if len(models) != 1:
            raise MiddoError(f"{results}: {len(models)} model folders {models}; pass model_abbr to pick one")
        model_abbr = models[0]
    files = sorted((results / model_abbr).glob("*.json"))
    if not files:
        raise MiddoError(f"{results / model_abbr}: no results; did OpenCompass finish? (its logs: {run_dir / 'logs'})")
    errors: list[str] = []
    notes: dict[str, list[str]] = {}
    summaries = sorted((run_dir / "summary").glob("summary_*.csv"))
    if summaries:
        for row in _read_summary(summaries[-1], model_abbr):
            if row["_score"].strip() == "-" and not (results / model_abbr / f"{row['dataset']}.json").is_file():
                errors.append(f"{row['dataset']}: no score (see {run_dir / 'logs'})")
    correct: dict[str, list[bool]] = {}  # per item (a fallback dataset: round(score * n) of its n)
    hits: dict[str, float] = {}  # items right (a fallback dataset: score * n, unrounded)
    scores: dict[str, list[float]] = {}  # each dataset's own score, as OpenCompass reports it
    metric: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    for path in files:
        abbr, result = path.stem, _load(path)
        suite, name = ("mmlu", "accuracy") if abbr.startswith(MMLU_PREFIX) else ABBR_SUITES.get(abbr, (abbr, None))
        numeric = [k for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        name = name or next((m for m in METRIC_ORDER if m in numeric), numeric[0] if numeric else None)
        if "error" in result or name not in result:
            errors.append(f"{path}: {result.get('error') or f'no metric {name!r}'}")
            continue
        score = float(result[name]) / 100
        items = read_items(result.get("details"), abbr)
        if items is not None and abs(sum(i["correct"] for i in items) / len(items) - score) > 1e-6:
            notes.setdefault(suite, []).append(f"{abbr}: per-item results disagree with its {name}; used the latter")
            items = None
        if items is None:
            try:
                n = _count_predictions(run_dir / "predictions" / model_abbr, abbr)
            except MiddoError as exc:
                errors.append(str(exc))
                continue
            right = round(score * n)
            flags, total = [True] * right + [False] * (n - right), score * n
            notes.setdefault(suite, []).append(
                f"{abbr}: no per-item results (run without --dump-eval-details?): its {name} over its {n} "
                f"predictions, interval from {right}/{n}"
            )
        else:
            flags = [i["correct"] for i in items]
            total = float(sum(flags))
            rows += [{"suite": suite, **i} for i in items]
        if not flags:
            errors.append(f"{path}: no items")
            continue
        correct.setdefault(suite, []).extend(flags)
        hits[suite] = hits.get(suite, 0.0) + total
        scores.setdefault(suite, []).append(score)
        metric[suite] = name if suite != "mmlu" else "accuracy, pooled over subjects"
    if errors:
        raise MiddoError(f"{run_dir}: " + "; ".join(errors))

    def order(suite: str) -> tuple[int, str]:
        return (SUITE_ORDER.index(suite) if suite in SUITE_ORDER else len(SUITE_ORDER), suite)

    suites = sorted(correct, key=order)
    rows.sort(key=lambda r: order(r["suite"]))  # stable: each dataset's items stay in order
    accuracy = {s: hits[s] / len(correct[s]) for s in suites}
    metrics = {
        "accuracy": accuracy,
        "average": sum(accuracy.values()) / len(accuracy),
        "n": {s: len(correct[s]) for s in suites},
        "interval": intervals({s: correct[s] for s in suites}, bootstrap, seed),
        "metric": {s: metric[s] for s in suites},
        "opencompass_summary": {s: sum(scores[s]) / len(scores[s]) for s in suites},
        "backend": "opencompass",
        **({"notes": {s: "; ".join(notes[s]) for s in suites if s in notes}} if notes else {}),
        "env": env or environment(device="see opencompass", dtype="auto"),
    }
    atomic_write_text(details_path(out_path), "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    atomic_write_text(Path(out_path), json.dumps(metrics, indent=2) + "\n")
    return metrics


def convert_summary(
    csv_path: str | Path, out_path: str | Path, suite_map: dict[str, str] | None = None, model: str | None = None
) -> dict:
    """Write ``{"accuracy": {suite: 0..1}, "average", "n": {suite: None}}`` from an OpenCompass summary CSV.

    OpenCompass does not report item counts in its summary, so ``n`` is null for every suite (prefer
    :func:`convert_results` on the run folder: it has counts, intervals and per-item details).

    Args:
        csv_path: ``outputs/.../summary/summary_<timestamp>.csv``.
        out_path: the metrics JSON to write (atomically).
        suite_map: our suite name -> OpenCompass dataset (``"gsm8k"``) or dataset and metric
            (``"IFEval:Prompt-level-strict-accuracy"``); default: :data:`DEFAULT_SUITE_MAP` restricted to the datasets
            present in the CSV.
        model: which model column to read when the CSV has several.

    Returns:
        The metrics written.

    Raises:
        MiddoError: a missing column, dataset or metric, an ambiguous dataset, or a score that is not a number
            (all problems reported together).
    """
    csv_path = Path(csv_path)
    records = _read_summary(csv_path, model)
    present = {r["dataset"] for r in records}
    if suite_map is None:
        suite_map = {s: d for s, d in DEFAULT_SUITE_MAP.items() if d.split(":")[0] in present}
    errors: list[str] = []
    accuracy: dict[str, float] = {}
    for suite, target in suite_map.items():
        dataset, _, name = target.partition(":")
        rows = [r for r in records if r["dataset"] == dataset and (not name or r["metric"] == name)]
        if not rows:
            errors.append(f"suite '{suite}': no row with dataset '{dataset}'" + (f", metric '{name}'" if name else ""))
            continue
        if len(rows) > 1:
            found = [r["metric"] for r in rows]
            errors.append(
                f"suite '{suite}': dataset '{dataset}' has rows for metrics {found}; map it as 'dataset:metric'"
            )
            continue
        raw = rows[0]["_score"].strip()
        try:
            accuracy[suite] = float(raw) / 100.0
        except ValueError:
            line = rows[0]["_line"]
            errors.append(f"{csv_path}:{line}: suite '{suite}': score '{raw}' is not a number (did it run?)")
    if errors:
        raise MiddoError(f"{csv_path}: " + "; ".join(errors))
    if not accuracy:
        raise MiddoError(f"{csv_path}: no suite matched; datasets in the file: {sorted(present)}")
    metrics = {"accuracy": accuracy, "average": sum(accuracy.values()) / len(accuracy), "n": dict.fromkeys(accuracy)}
    atomic_write_text(Path(out_path), json.dumps(metrics, indent=2) + "\n")
    return metrics


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m middo.evaluate.opencompass_bridge RUN_DIR|SUMMARY.csv OUT.json``."""
    from middo.config import BaseConfig, EvalConfig

    parser = argparse.ArgumentParser(description="Convert an OpenCompass run folder or summary CSV to eval.json.")
    parser.add_argument("source", help="an OpenCompass run folder (WORK/<timestamp>) or its summary_<timestamp>.csv")
    parser.add_argument("out_path", help="metrics JSON to write (a run folder also writes <stem>_details.jsonl)")
    parser.add_argument("--model", default=None, help="model abbr when the run has several")
    parser.add_argument("--map", nargs="*", default=None, metavar="SUITE=DATASET[:METRIC]", help="CSV: suite map")
    parser.add_argument("--seed", type=int, default=BaseConfig().seed, help="run folder: the bootstrap's seed")
    parser.add_argument("--bootstrap", type=int, default=EvalConfig().bootstrap, help="run folder: resamples")
    args = parser.parse_args(argv)
    if Path(args.source).is_dir():
        result = convert_results(args.source, args.out_path, args.seed, args.bootstrap, model_abbr=args.model)
    else:
        suite_map = dict(m.split("=", 1) for m in args.map) if args.map else None
        result = convert_summary(args.source, args.out_path, suite_map, args.model)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
