"""Diversity signal: prompt embeddings and each sample's mean cosine similarity to its k nearest neighbours.

Embedding = mean of the model's last hidden state over the prompt's non-padding tokens (instruction and input as
plain text, no chat template, as the reference does). kNN is a chunked matmul top-k: memory is O(chunk·N + N·k),
never N×N, so 100k samples fit on a laptop and 1M on one GPU. The neighbours themselves are kept too (as ids): the
reference gives a sparse sample's nearest prompts to the teacher as hints when it writes a new one.

Block size differs by device (:func:`block_elems`): a CPU is fastest with blocks that stay near its caches, a GPU
with few large matmuls, so there the block is sized from free memory and the results stay on the device until one
copy at the end (a copy per block would make the GPU wait for the CPU thousands of times at 1M rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from middo.diagnose.batching import pad_batch, progress, token_budget_batches
from middo.distributed import Shard, owned_mask
from middo.modeling import decoder_hidden


@torch.inference_mode()
def prompt_embeddings(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    device: torch.device,
    max_length: int | None = None,
    max_tokens: int = 16384,
    padding_side: str = "right",
    desc: str = "embed",
    shard: Shard = Shard(),
    bar=None,
) -> np.ndarray:
    """Mean-pooled last hidden states, float32 ``[N, H]``, in input order (merged across a ``shard``'s processes).

    ``max_length`` None embeds each prompt whole, as the reference does; memory stays bounded all the same, since the
    caller passes one window of texts at a time and a prompt longer than ``max_tokens`` is a batch of its own.
    """
    cut = max_length is not None
    encoded = [
        tokenizer(t, truncation=cut, max_length=max_length)["input_ids"] or [tokenizer.eos_token_id] for t in texts
    ]
    hidden_size = model.get_input_embeddings().weight.shape[1]
    out = np.zeros((len(texts), hidden_size), dtype=np.float32)
    batches = shard.take(token_budget_batches([len(e) for e in encoded], max_tokens))
    owned = owned_mask(len(texts), batches)
    with progress(bar, int(owned.sum()), desc, "sample", shard.is_main) as bar:
        for batch in batches:
            ids, mask = pad_batch([encoded[i] for i in batch], tokenizer.pad_token_id, padding_side)
            ids, mask = ids.to(device), mask.to(device)
            hidden = decoder_hidden(model, ids, mask).float()
            m = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1)
            out[batch] = pooled.cpu().numpy()
            bar.update(len(batch))
    return shard.merge_rows(out, owned)


CPU_BLOCK_ELEMS = 1 << 26  # 256 MiB of float32: larger blocks only add cache misses on a CPU (bench/)
CUDA_BLOCK_ELEMS_MAX = 1 << 31  # 8 GiB; also keeps every index of the block within int32 for top-k kernels


def block_elems(device_type: str, free_bytes: int | None = None) -> int:
    """Similarity elements held at once (rows × N) on ``device_type``, given ``free_bytes`` of device memory.

    A CUDA block takes an eighth of the free memory (the float32 block and top-k's working space, with room to
    spare), at most :data:`CUDA_BLOCK_ELEMS_MAX`: about 2,000 rows per block at 1M samples on an 80 GB GPU, against
    67 rows at the CPU's cap. Elsewhere (CPU, or free memory unknown) it is :data:`CPU_BLOCK_ELEMS`.
    """
    if device_type != "cuda" or not free_bytes:
        return CPU_BLOCK_ELEMS
    return max(1, min(CUDA_BLOCK_ELEMS_MAX, free_bytes // 32))


def _chunk_rows(n: int, max_elems: int) -> int:
    return max(1, min(n, max_elems // max(n, 1)))


def _free_bytes(device: torch.device) -> int | None:
    """Memory a new block can take on a CUDA ``device``: free on the device plus what torch has cached but not used."""
    if device.type != "cuda":
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


@torch.inference_mode()
def knn_similarity(
    embeddings: np.ndarray | torch.Tensor,
    k: int = 2,
    device: str | torch.device = "cpu",
    max_elems: int | None = None,
    return_indices: bool = False,
):
    """Mean cosine similarity of each row to its ``k`` nearest other rows (self excluded).

    Args:
        embeddings: ``[N, H]`` vectors (any scale; rows are L2-normalised here).
        k: neighbours per row; must be < N.
        device: where the matmuls run (``cuda`` for millions of rows).
        max_elems: cap on the similarity block held at once (rows_per_chunk × N); None: :func:`block_elems` for
            the device. The neighbours do not depend on it.
        return_indices: also return the ``[N, k]`` neighbour indices, most similar first (exact ties in a fixed
            but unspecified order).

    Raises:
        ValueError: ``k`` is not in ``1..N-1``.
    """
    x = torch.as_tensor(embeddings, dtype=torch.float32).to(device)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k must be between 1 and N-1 = {n - 1}, got {k}")
    x = torch.nn.functional.normalize(x, dim=1)
    # results stay where the matmuls run: one copy at the end, no wait for the host after every block
    sims = torch.empty(n, dtype=torch.float32, device=x.device)
    idx = torch.empty((n, k), dtype=torch.long, device=x.device)
    if max_elems is None:
        max_elems = block_elems(x.device.type, _free_bytes(x.device))
    step = _chunk_rows(n, max_elems)
    for start in tqdm(range(0, n, step), desc="knn", unit="chunk", disable=n <= step):
        stop = min(start + step, n)
        block = x[start:stop] @ x.T
        rows = torch.arange(stop - start, device=block.device)
        block[rows, rows + start] = -float("inf")  # a sample is not its own neighbour
        top, top_idx = block.topk(k, dim=1)
        sims[start:stop] = top.mean(1)
        idx[start:stop] = top_idx
        del block, top, top_idx  # free before the next block is allocated (two would not fit on a GPU)
    sims_np = sims.clamp_(-1.0, 1.0).cpu().numpy().astype(np.float64)
    return (sims_np, idx.cpu().numpy()) if return_indices else sims_np


def neighbour_ids(ids: Sequence[str], indices: np.ndarray) -> list[list[str]]:
    """The ``[N, k]`` neighbour indices of :func:`knn_similarity` as ids, row by row (most similar first)."""
    return [[ids[j] for j in row] for row in np.asarray(indices).tolist()]


def knn_similarity_bruteforce(embeddings: np.ndarray, k: int = 2) -> np.ndarray:
    """The N×N reference, for tests and benchmarks only."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    s = x @ x.T
    np.fill_diagonal(s, -np.inf)
    return np.sort(s, axis=1)[:, ::-1][:, :k].mean(1)
