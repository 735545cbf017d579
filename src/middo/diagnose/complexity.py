"""Complexity signal: mean cross-entropy of the response tokens, prompt masked, through the chat template.

Fast path: one decoder pass per length-sorted, token-budgeted batch; the LM head runs only on the positions that are
scored, in chunks, so no ``[batch, seq, vocab]`` logits tensor is ever built.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from middo.chat_template import tokenize_turn
from middo.diagnose.batching import pad_batch, progress, token_budget_batches
from middo.distributed import Shard, owned_mask
from middo.modeling import decoder_hidden
from middo.records import Record


def tokenize_for_loss(tokenizer, records: Sequence[Record], max_length: int) -> list[tuple[list[int], int]]:
    """``(full_ids, n_prompt)`` per record: the tokens training sees and how many of them are prompt (masked).

    Both come from :func:`middo.chat_template.tokenize_turn`, the function training tokenizes with, so the loss is
    measured on exactly the tokens training learns from, cut at ``max_length`` (``train.max_length``) the same way:
    a sample too long keeps the first tokens of its response and gives up the end of its prompt (LLaMA-Factory's
    rule), so it still gets a loss.
    """
    return [tokenize_turn(tokenizer, rec, max_length) for rec in records]


@torch.inference_mode()
def response_losses(
    model: torch.nn.Module,
    encoded: Sequence[tuple[list[int], int]],
    pad_id: int,
    device: torch.device,
    max_tokens: int = 8192,
    head_chunk: int = 1024,
    padding_side: str = "right",
    desc: str = "loss",
    shard: Shard = Shard(),
    bar=None,
) -> np.ndarray:
    """Per-sample mean response-token loss (float64); NaN for a sample with no response token.

    With a ``shard`` each process scores its share of the batches and every process returns the merged array.
    """
    losses = np.full(len(encoded), np.nan)
    head = model.get_output_embeddings()
    batches = shard.take(token_budget_batches([len(ids) for ids, _ in encoded], max_tokens))
    owned = owned_mask(len(encoded), batches)
    with progress(bar, int(owned.sum()), desc, "sample", shard.is_main) as bar:
        for batch in batches:
            ids, mask = pad_batch([encoded[i][0] for i in batch], pad_id, padding_side)
            ids, mask = ids.to(device), mask.to(device)
            hidden = decoder_hidden(model, ids, mask)
            # scored[b, t] is True where position t predicts a response token t+1
            scored = torch.zeros_like(mask, dtype=torch.bool)
            for row, i in enumerate(batch):
                full, n_prompt = encoded[i]
                offset = ids.shape[1] - len(full) if padding_side == "left" else 0
                # the first token has no prediction, so a response starting at 0 is scored from token 1 on
                scored[row, offset + max(n_prompt, 1) - 1 : offset + len(full) - 1] = True
            rows, cols = scored.nonzero(as_tuple=True)
            targets = ids[rows, cols + 1]
            token_loss = torch.empty(len(rows), dtype=torch.float32, device=device)
            for start in range(0, len(rows), head_chunk):
                sl = slice(start, start + head_chunk)
                logits = head(hidden[rows[sl], cols[sl]]).float()
                token_loss[sl] = F.cross_entropy(logits, targets[sl], reduction="none")
            sums = torch.zeros(len(batch), dtype=torch.float64, device=device).index_add_(0, rows, token_loss.double())
            counts = torch.bincount(rows, minlength=len(batch))
            for row, i in enumerate(batch):
                if counts[row] > 0:
                    losses[i] = (sums[row] / counts[row]).item()
            bar.update(len(batch))
    return shard.merge_rows(losses, owned)
