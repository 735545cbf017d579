"""What produced a stage's numbers: package versions and the device and dtype the models really ran with.

Every stage's metrics JSON carries this under ``env`` so a result can be traced to its software. DVC hashes those
files, so nothing here may vary between two runs of the same environment: no host name, CPU model, time or path.
Versions come from installed package metadata (``importlib.metadata``), so asking costs no import of torch or dvc.
"""

from __future__ import annotations

import importlib.metadata
import platform

PACKAGES = ("torch", "transformers", "trl", "dvc", "middo")


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
        ``{"python": ..., "torch": ..., ..., "device": device, "dtype": dtype}``; a package that is not installed
        maps to None.
    """
    return {
        "python": platform.python_version(),
        **{name: package_version(name) for name in PACKAGES},
        "device": device,
        "dtype": dtype,
    }


def device_name(device) -> str:
    """``torch.device('cuda:1')`` -> ``cuda``: the kind, not the index, which differs between torchrun ranks and
    would make a one-process run's metrics differ from a sharded one's."""
    return getattr(device, "type", str(device).split(":", 1)[0])


def dtype_name(dtype) -> str:
    """``torch.bfloat16`` -> ``bfloat16``."""
    return str(dtype).removeprefix("torch.")
