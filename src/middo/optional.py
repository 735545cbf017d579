"""Optional heavy dependencies: checked late, with a message that says exactly what to install.

deepspeed, liger-kernel, flash-attn, peft and vllm are only needed on the code paths that use them; importing them
eagerly would make every CPU user install GPU packages (or break their env, for vllm).
"""

from __future__ import annotations

import importlib.util

from middo.errors import MiddoError

PACKAGES = {
    # import name: (pip name, why / where)
    "deepspeed": ("deepspeed", "train.deepspeed (ZeRO-2/3)"),
    "liger_kernel": ("liger-kernel", "train.liger (Liger Triton kernels; needs CUDA)"),
    "flash_attn": ("flash-attn", "train.attn_implementation: flash_attention_2 (needs CUDA)"),
    "peft": ("peft", "train.lora.enabled"),
    "vllm": ("vllm", "the vllm teacher backend (install vllm in its own env: it replaces torch)"),
    "openai": ("openai", "the openai teacher backend"),
}


GPU_EXTRA = {"deepspeed", "liger_kernel", "flash_attn", "peft"}  # what bench/install_gpu.sh brings (README)


def is_available(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def require(module: str, needs_cuda: bool = False) -> None:
    """Raise a :class:`MiddoError` naming the package to install (and CUDA if it needs one).

    Raises:
        MiddoError: the package is not importable, or CUDA is required and missing.
    """
    pip_name, purpose = PACKAGES.get(module, (module, module))
    if not is_available(module):
        raise MiddoError(
            f"{purpose} needs the '{pip_name}' package: pip install {pip_name}"
            + ("  (or build the CUDA env: bash bench/install_gpu.sh)" if module in GPU_EXTRA else "")
        )
    if needs_cuda:
        import torch

        if not torch.cuda.is_available():
            raise MiddoError(f"{purpose} needs a CUDA GPU; torch.cuda.is_available() is False on this machine")
