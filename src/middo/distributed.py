"""Sharding diagnosis and evaluation across processes started by ``torchrun`` or ``accelerate launch``.

Work is split by *batch*, not by sample: every process builds the same length-sorted batch plan over the whole
dataset and takes every ``world``-th batch. Each sample is then computed in exactly the batch (same neighbours, same
padding) it would get in a single process, so merged scores are bit-identical to a one-process run with the same
thread count, and the merge is a plain sum in which every position has exactly one non-zero contributor.

Training is sharded by the trainer itself (accelerate's data-parallel loader); what it needs from here is
:func:`atomic_dir_on_main`, so that N processes leave one checkpoint folder, renamed into place once, and
:func:`one_process_group`, so that one process with no launcher (DeepSpeed, several GPUs in sight) is rank 0 of one.

Nothing here is a scheduler: the processes of one torchrun job share the work evenly, on one machine or across
several (``torchrun --nnodes``: ranks and world size are global, ``LOCAL_RANK`` picks the GPU on each node); see
docs/scaling.md and the README's cluster section. Data between processes moves as tensors and JSON bytes, never pickle.

``MIDDO_RANK_REPORT=<folder>`` makes every process write ``<folder>/<stage>.rank<R>.json``: its host, ranks and
the ids of the samples or items it computed, phase by phase (:func:`write_rank_report`), to see how a job was split.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from middo.dataio.atomic import atomic_dir, atomic_write_text

T = TypeVar("T")
RANK_REPORT_ENV = "MIDDO_RANK_REPORT"


class ShareLog:
    """What one process computed, phase by phase (the per-rank report); filled by :meth:`Shard.merge_rows`."""

    def __init__(self) -> None:
        self.units: dict[str, list[int]] = {}  # phase -> global unit indices (a unit: a sample, or a sample's part)
        self.per: dict[str, int] = {}  # phase -> units per sample
        self._at = ("", 0, 0)  # phase, first sample of the window, samples in the window

    def add(self, phase: str, keys: Iterable[Any]) -> None:
        self.units.setdefault(phase, []).extend(keys)

    def add_rows(self, owned: np.ndarray) -> None:
        phase, offset, n = self._at
        per = max(1, len(owned) // max(n, 1))  # e.g. a quality phase scores several judgements per sample
        self.per[phase] = per
        self.add(phase, (offset * per + np.flatnonzero(owned)).tolist())


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` processes (``Shard()`` is the single-process case)."""

    rank: int = 0
    world: int = 1
    log: ShareLog | None = field(default=None, compare=False, repr=False)  # set when a rank report is wanted

    @contextlib.contextmanager
    def part(self, phase: str, offset: int, n: int) -> Iterator[None]:
        """Rows merged inside the block belong to ``phase`` and to samples ``offset .. offset + n`` (the report)."""
        if self.log is None:
            yield
            return
        saved, self.log._at = self.log._at, (phase, offset, n)
        try:
            yield
        finally:
            self.log._at = saved

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
        if self.log is not None:
            self.log.add_rows(owned)
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
    log = ShareLog() if os.environ.get(RANK_REPORT_ENV) else None
    if world <= 1:
        return Shard(log=log)
    if not torch.distributed.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        torch.distributed.init_process_group(backend=backend)
    return Shard(torch.distributed.get_rank(), torch.distributed.get_world_size(), log)


def write_rank_report(stage: str, shard: Shard, ids: Sequence[str] | None = None, **facts: Any) -> Path | None:
    """With ``MIDDO_RANK_REPORT=<folder>``, write what this process computed to ``<folder>/<stage>.rank<R>.json``.

    One file per process (the ranks of a multi-node job may not share stdout): host, global rank, node rank and
    local rank as torchrun set them, ``facts`` (e.g. the device), and per phase the keys of the units it computed:
    ``ids[i]`` for a sample, ``ids[i]#j`` for part ``j`` of a sample, or the keys a stage noted itself. Across the
    ranks of one job the keys of a phase are disjoint and together cover the whole dataset.

    Args:
        stage: the file's name stem (``diagnose``, ``evaluate``).
        shard: this process's shard; a shard without a log writes nothing.
        ids: sample ids, for phases logged by row (``merge_rows``).
    """
    folder = os.environ.get(RANK_REPORT_ENV)
    if not folder or shard.log is None:
        return None
    computed = {}
    for phase, units in shard.log.units.items():
        per = shard.log.per.get(phase)
        if per is None or ids is None:
            computed[phase] = units
        else:
            computed[phase] = [ids[u // per] + (f"#{u % per}" if per > 1 else "") for u in units]
    env = {key.lower(): int(os.environ.get(key, "0")) for key in ("GROUP_RANK", "LOCAL_RANK")}
    doc = {"stage": stage, "rank": shard.rank, "world": shard.world, "host": socket.gethostname(), **env, **facts}
    doc["counts"] = {phase: len(keys) for phase, keys in computed.items()}
    doc["computed"] = computed
    path = Path(folder) / f"{stage}.rank{shard.rank}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(doc, indent=1) + "\n")
    return path


@contextlib.contextmanager
def one_process_group(backend: str | None = None) -> Iterator[None]:
    """torchrun's environment for one process (rank 0 of 1, a free port on 127.0.0.1) and its process group, for
    the span of the block; nothing changes under a launcher (``WORLD_SIZE`` set) or where a group exists.

    A trainer in a plain ``python`` run sees no launcher: DeepSpeed then looks for its ranks through MPI (and fails
    without mpi4py), and with several GPUs visible transformers picks ``nn.DataParallel``, which TRL refuses. As
    rank 0 of a one-process group, DeepSpeed joins the group and the process drives ``cuda:0`` alone. The variables
    and the group are undone on the way out, so a later run in the same interpreter starts as it would have.

    Args:
        backend: as for :func:`from_env`.
    """
    if "WORLD_SIZE" in os.environ or torch.distributed.is_initialized():
        yield
        return
    import socket

    with socket.socket() as s:  # a free port for the group's store (the --standalone of torchrun does the same)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1"}
    env |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        # from_env sets no group up for one process; the trainer and DeepSpeed then join this one
        torch.distributed.init_process_group(backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"))
        yield
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


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
