"""What produced a stage's numbers: package versions, the device and dtype the models really ran with, and the CPU
features that decide which kernels ran.

Every stage writes this as its own env record, ``env/<name>`` beside its metrics file (:func:`write_metrics`), not
inside the metrics: ``dvc exp show`` would turn every field into a string column, and ``middo verify-lock`` compares
the records stage by stage to tell a kernel or dtype difference from a bug. DVC hashes the records, so nothing here
may vary between two runs of the same environment: no host name, CPU model, time or path. Versions come from
installed package metadata (``importlib.metadata``), so asking costs no import of torch or dvc.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
from pathlib import Path

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError

PACKAGES = ("torch", "transformers", "trl", "dvc", "middo")
# /proc/cpuinfo flags that change which kernels PyTorch's CPU backend picks (and so the low bits of a result):
# AVX2 vs AVX-512 paths, native bfloat16 dot products, AMX tiles for bfloat16 matmuls
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
# env fields that describe the machine rather than the software: a difference there explains a different result
MACHINE_FIELDS = ("device", "dtype", "gpu", "cpu")


def package_version(name: str) -> str | None:
    """The installed version of distribution ``name``, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment(device: str, dtype: str) -> dict:
    """Versions of python and :data:`PACKAGES`, plus the resolved ``device`` and ``dtype`` as given.

    Args:
        device: the device the stage's models ran on (``cpu``, ``cuda``), resolved from ``auto``; ``n/a`` for stages
            that run no model.
        dtype: the resolved dtype name (``float32``, ``bfloat16``, ``float16``), or ``n/a``.

    Returns:
        ``{"python": ..., "torch": ..., ..., "device": device, "dtype": dtype, "cpu": {...}}`` (plus ``gpu`` on
        CUDA); a package that is not installed maps to None.
    """
    env = {
        "python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "device": device,
        "dtype": dtype,
        "cpu": cpu_features(),
    }
    gpu = gpu_name() if device == "cuda" else None
    return env | ({"gpu": gpu} if gpu else {})


def cpu_features(cpuinfo: str | None = None) -> dict:
    """The machine architecture and, on Linux, which of :data:`CPU_FLAGS` the CPU has.

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (read when None); where it cannot be read (macOS, Windows) the flags
            are left out rather than guessed, and the record says so with ``arch`` alone.
    """
    features: dict = {"arch": platform.machine()}
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return features
    line = next((ln for ln in cpuinfo.splitlines() if ln.startswith(("flags", "Features"))), "")
    present = set(line.partition(":")[2].split())
    return features | {flag: flag in present for flag in CPU_FLAGS}


def gpu_name() -> str | None:
    """The first CUDA device's name, asked only of a torch the stage already imported (its model ran there)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(0)


def env_path(metrics_path: str | Path) -> Path:
    """Where the env record of the metrics file ``metrics_path`` lives: ``round_1/train.json`` ->
    ``round_1/env/train.json``; dvc.yaml declares it as a ``cache: false`` out of the same stage."""
    path = Path(metrics_path)
    return path.parent / "env" / path.name


def write_metrics(metrics_path: str | Path, metrics: dict, env: dict) -> None:
    """Write a stage's numeric ``metrics`` to ``metrics_path`` and its ``env`` to :func:`env_path`, atomically.

    Raises:
        MiddoError: a metrics value that is not a number (or None: not measured) or a mapping of them; a string or
            list would become an unreadable column in ``dvc exp show``. Nothing is written.
    """
    bad = [k for k, v in _leaves(metrics) if v is not None and (type(v) is bool or not isinstance(v, (int, float)))]
    if bad:
        raise MiddoError(f"{metrics_path}: metrics must be numbers; not numeric: {', '.join(bad)}")
    path = Path(metrics_path)
    env_file = env_path(path)
    env_file.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(env_file, json.dumps(env, indent=2) + "\n")
    atomic_write_text(path, json.dumps(metrics, indent=2) + "\n")


def _leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def device_name(device) -> str:
    """``torch.device('cuda:1')`` -> ``cuda``: the kind, not the index, which differs between torchrun ranks and
    would make a one-process run's metrics differ from a sharded one's."""
    return getattr(device, "type", str(device).split(":", 1)[0])


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")
