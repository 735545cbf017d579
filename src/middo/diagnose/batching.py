"""Length-sorted batches under a token budget.

A fixed batch size either wastes compute on padding (long and short mixed) or runs out of memory (many long ones).
Sorting by length and filling each batch up to ``max_tokens`` padded tokens keeps padding near zero and memory flat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from tqdm.auto import tqdm


def token_budget_batches(lengths: Sequence[int], max_tokens: int, max_batch: int = 256) -> list[list[int]]:
    """Group indices so that ``len(batch) * max(length in batch) <= max_tokens`` (a single longer item stands alone).

    Longest first, so the first batch reveals an out-of-memory budget at once rather than at the end.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        longest_if_added = max(longest, lengths[i])
        if current and (longest_if_added * (len(current) + 1) > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current, longest_if_added = [], lengths[i]
        current.append(i)
        longest = longest_if_added
    if current:
        batches.append(current)
    return batches


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists to a ``[B, T]`` tensor and its attention mask."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        if side == "right":
            ids[row, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[row, : len(s)] = 1
        else:
            ids[row, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[row, width - len(s) :] = 1
    return ids, mask


def windows(n: int, size: int) -> list[range]:
    """Consecutive index ranges of at most ``size``: long runs tokenize and batch one window at a time, so memory
    holds ``size`` samples' tokens, not N's (the window is large enough that sorting inside it removes padding)."""
    return [range(lo, min(lo + size, n)) for lo in range(0, n, max(1, size))]


@contextlib.contextmanager
def progress(shared, total: int, desc: str, unit: str, show: bool = True) -> Iterator:
    """The caller's progress bar when one is passed (the windows of one signal share a bar), else a new one."""
    if shared is not None:
        yield shared
        return
    with tqdm(total=total, desc=desc, unit=unit, disable=not show) as bar:
        yield bar
