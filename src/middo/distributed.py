"""Sharding diagnosis and evaluation across processes started by ``torchrun`` or ``accelerate launch``.

Work is split by *batch*, not by sample: every process builds the same length-sorted batch plan over the whole
dataset and takes every ``world``-th batch. Each sample is then computed in exactly the batch (same neighbours, same
padding) it would get in a single process, so merged scores are bit-identical to a one-process run with the same
thread count, and the merge is a plain sum in which every position has exactly one non-zero contributor.

Training is sharded by the trainer itself (accelerate's data-parallel loader); what it needs from here is
:func:`atomic_dir_on_main`, so that N processes leave one checkpoint folder, renamed into place once.

Nothing here is a scheduler: one machine's processes share the work evenly. Past one machine the documented path is
an existing engine (vLLM data-parallel serving behind the ``openai`` teacher, or Ray Data), see docs/scaling.md.
Data between processes moves as tensors and JSON bytes, never pickle.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from middo.dataio.atomic import atomic_dir

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes (``Shard()`` is the single-process case)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes outputs and shows progress."""
        return self.rank == 0

    def take(self, items: Sequence[T]) -> list[T]:
        """Every ``world``-th element starting at ``rank`` (round-robin keeps long and short batches balanced)."""
        return list(items[self.rank :: self.world])

    def merge_rows(self, values: np.ndarray, owned: np.ndarray) -> np.ndarray:
        """Combine per-process arrays whose first axis is the sample: each row comes from the process owning it.

        Args:
            values: ``[N, ...]`` with this process's rows filled (anything elsewhere).
            owned: ``[N]`` bool, True for the rows this process computed.

        Returns:
            The full array on every process, dtype preserved (NaN rows stay NaN).
        """
        if self.world == 1:
            return values
        mask = owned.reshape((-1,) + (1,) * (values.ndim - 1))
        mine = np.where(mask, values, 0).astype(np.float64)
        t = torch.from_numpy(np.ascontiguousarray(mine))
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM, group=_cpu_group())
        # every row has exactly one non-zero contributor, so the float64 sum is exact
        return t.numpy().astype(values.dtype)

    def gather_json(self, obj: Any) -> list[Any]:
        """Every process's JSON-serialisable ``obj``, in rank order (as UTF-8 bytes in a tensor, not pickle)."""
        if self.world == 1:
            return [obj]
        group = _cpu_group()
        payload = torch.frombuffer(bytearray(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)
        size = torch.tensor([payload.numel()], dtype=torch.long)
        sizes = [torch.zeros(1, dtype=torch.long) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, size, group=group)
        width = int(max(s.item() for s in sizes))
        padded = torch.zeros(width, dtype=torch.uint8)
        padded[: payload.numel()] = payload
        parts = [torch.zeros(width, dtype=torch.uint8) for _ in range(self.world)]
        torch.distributed.all_gather(parts, padded, group=group)
        return [json.loads(bytes(p[: int(s.item())].tolist()).decode("utf-8")) for p, s in zip(parts, sizes)]

    def interleave(self, per_rank: Sequence[Sequence[T]]) -> list[T]:
        """Undo :meth:`take`: rank r's j-th element goes back to position ``j * world + r``."""
        total = sum(len(p) for p in per_rank)
        out: list[Any] = [None] * total
        for r, part in enumerate(per_rank):
            out[r :: self.world] = list(part)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier(group=_cpu_group())


_GROUP = None


def _cpu_group():
    """A gloo group for the merges, so they work whether the default backend is gloo (CPU) or NCCL (GPU)."""
    global _GROUP
    if _GROUP is None:
        backend = torch.distributed.get_backend()
        _GROUP = torch.distributed.group.WORLD if backend == "gloo" else torch.distributed.new_group(backend="gloo")
    return _GROUP


def from_env(backend: str | None = None) -> Shard:
    """The shard described by torchrun's environment (``RANK``, ``WORLD_SIZE``); joins the process group once.

    A plain ``python`` run (no ``WORLD_SIZE``, or 1) is the single-process shard and touches no process group.

    Args:
        backend: the process group's backend; None: ``nccl`` where CUDA is available, else ``gloo``. Training on
            the CPU of a GPU machine passes ``gloo``: the trainer (accelerate, DeepSpeed) then joins this group.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    if not torch.distributed.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        torch.distributed.init_process_group(backend=backend)
    return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size())


@contextlib.contextmanager
def atomic_dir_on_main(path: str | os.PathLike[str], shard: Shard) -> Iterator[Path]:
    """:func:`~middo.dataio.atomic.atomic_dir` for a folder that every process takes part in saving.

    DeepSpeed ZeRO-3 gathers the weights from all ranks while rank 0 alone writes them, so every rank must be handed
    the same temp folder: rank 0 makes it and tells the others, waits until all are done, then does the one rename;
    no rank leaves before the folder is in place. A failure on any rank ends the torchrun job (rank 0's temp folder
    is removed when its exception reaches here; a worker killed outright leaves a dot-folder beside ``path``).
    """
    if shard.world == 1:
        with atomic_dir(path) as target:
            yield target
        return
    with contextlib.ExitStack() as stack:
        mine = str(stack.enter_context(atomic_dir(path))) if shard.is_main else None
        target = Path(shard.gather_json(mine)[0])
        yield target
        shard.barrier()  # every rank has finished writing before rank 0 renames
    shard.barrier()  # and none goes on to read `path` before the rename


def local_device(name: str) -> str:
    """Under torchrun each process drives its own GPU: ``cuda``/``auto`` become ``cuda:LOCAL_RANK``."""
    local = os.environ.get("LOCAL_RANK")
    if local is None or not torch.cuda.is_available() or name not in ("auto", "cuda"):
        return name
    torch.cuda.set_device(int(local))
    return f"cuda:{local}"


def owned_mask(n: int, batches: Sequence[Sequence[int]]) -> np.ndarray:
    """``[n]`` bool: True for the indices that appear in ``batches``."""
    mask = np.zeros(n, dtype=bool)
    for b in batches:
        mask[list(b)] = True
    return mask
