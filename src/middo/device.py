"""Pick the device and dtype from what the hardware really computes fast.

bfloat16 is only a win where the hardware has it natively: CUDA with compute capability >= 8, or CPUs with
AVX512-BF16 / AMX. On AVX2-only CPUs torch emulates bf16 and it is *slower* than float32, so ``auto`` falls back.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from middo.errors import MiddoError


class DeviceError(MiddoError, RuntimeError):
    """A device was asked for that this machine does not have."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when /proc/cpuinfo lists a bf16 matmul instruction set (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; asking for cuda without one is an error, not a silent fallback."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' requested but torch.cuda.is_available() is False on this machine")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Map a dtype name to torch; ``auto`` chooses bf16 only where the device runs it natively."""
    if name != "auto":
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
