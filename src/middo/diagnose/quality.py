"""Quality signal: the model judges prompt and response for clarity, completeness and factuality (0-10 each).

Two modes. ``generate`` asks for a short answer and parses the first number (what the reference code does; slow, and
some answers are unparseable, which we count). ``logits`` reads the next-token distribution over "0".."10" after a
fixed "Score: " prefix and takes the expected value: one forward pass, always a number, and smoother.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import DynamicCache

from middo.diagnose.batching import pad_batch, progress, token_budget_batches
from middo.distributed import Shard, owned_mask
from middo.errors import MiddoError
from middo.modeling import decoder_hidden
from middo.records import Record

ASPECTS = {
    "clarity": "is it clear, well written and unambiguous?",
    "completeness": "does it contain everything needed (for a response: does it fully answer the instruction)?",
    "factuality": "is everything it states correct and accurate?",
}
TARGETS = ("instruction", "response")
JUDGEMENTS = tuple(f"{t}_{a}" for t in TARGETS for a in ASPECTS)
SCORE_PREFIX = "Score: "

# The sample comes first and the question last, so the six judgements of one sample share a long token prefix
# that the fast path encodes once (see judge_logits).
_TEMPLATE = (
    "You are grading training data for an AI assistant. You will rate one aspect of the example below with a single "
    "integer from 0 (very poor) to 10 (excellent).\n\n"
    "### Instruction\n{instruction}\n{response_block}\n"
    "Rate the {target} above for {aspect}: {question}"
)
_WORDS = {w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_WORD = re.compile(r"\b(" + "|".join(_WORDS) + r")\b", re.IGNORECASE)


def _clip(text: str, max_chars: int) -> str:
    return text if len(text) <= max_chars else text[:max_chars] + " [...]"


def judge_prompt(rec: Record, judgement: str, max_chars: int = 2000) -> str:
    """The user message for one of the six judgements (the instruction ones still show the response)."""
    target, aspect = judgement.split("_", 1)
    response_block = f"\n### Response\n{_clip(rec.output, max_chars)}\n"
    return _TEMPLATE.format(
        target=target,
        aspect=aspect,
        question=ASPECTS[aspect],
        instruction=_clip(rec.prompt_text, max_chars),
        response_block=response_block,
    )


def parse_score(text: str) -> tuple[float | None, str]:
    """First number in ``text`` (digits, or an English word zero..ten), clamped to 0..10.

    Returns ``(score, status)`` with status ``ok``, ``clamped`` or ``unparseable`` (score None).
    """
    m = _NUMBER.search(text or "")
    if m:
        value = float(m.group())
    else:
        w = _WORD.search(text or "")
        if not w:
            return None, "unparseable"
        value = float(_WORDS[w.group(1).lower()])
    clamped = min(10.0, max(0.0, value))
    return clamped, "ok" if clamped == value else "clamped"


@dataclass
class QualityResult:
    scores: np.ndarray  # [N, 6] sub-scores in JUDGEMENTS order; NaN where unparseable
    status_counts: dict[str, int]

    @property
    def mean(self) -> np.ndarray:
        """Mean of the parsed sub-scores per sample; NaN only when all six were unparseable."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows are expected and stay NaN
            return np.nanmean(self.scores, axis=1)


def _chat_ids(tokenizer, user: str) -> list[int]:
    enc = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"] if not isinstance(enc, list) else enc)


def _score_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """Token ids of "0".."9" and of "10" (one token, or two when the tokenizer splits digits)."""
    digits = [tokenizer.encode(str(d), add_special_tokens=False) for d in range(10)]
    if any(len(d) != 1 for d in digits):
        raise MiddoError(
            "diagnose.quality.mode=logits: this tokenizer does not encode 0-9 as single tokens; use mode: generate"
        )
    ten = tokenizer.encode("10", add_special_tokens=False)
    if len(ten) not in (1, 2) or (len(ten) == 2 and ten != [digits[1][0], digits[0][0]]):
        raise MiddoError("diagnose.quality.mode=logits: cannot read '10' from this tokenizer; use mode: generate")
    return [d[0] for d in digits], ten


def _expected_scores(head, h_first, h_second, digit_ids, ten) -> torch.Tensor:
    """Expected value over 0..10 from the hidden states where the first digit (and, for a split "10", the digit
    after "1") is predicted."""
    values = torch.arange(11, dtype=torch.float64)
    if h_second is not None:
        first = torch.softmax(head(h_first).float(), -1).double().cpu()
        second = torch.softmax(head(h_second).float(), -1).double().cpu()
        p = first[:, digit_ids].clone()
        p_ten = p[:, 1] * second[:, digit_ids[0]]
        p[:, 1] = p[:, 1] - p_ten
        p = torch.cat([p, p_ten[:, None]], 1)
    else:
        p = torch.softmax(head(h_first).float(), -1).double().cpu()[:, digit_ids + ten]
    return (p / p.sum(1, keepdim=True)) @ values


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


@torch.inference_mode()
def judge_logits(
    model,
    tokenizer,
    records: Sequence[Record],
    device: torch.device,
    max_tokens: int = 8192,
    max_chars: int = 2000,
    share_prefix: bool = True,
    shard: Shard = Shard(),
    bar=None,
) -> QualityResult:
    """Expected score over "0".."10" for every record × judgement.

    With ``share_prefix`` the six prompts of a sample are split into their common token prefix (the sample itself,
    most of the tokens) and six short suffixes (the question): the prefix is encoded once into a KV cache that the
    six suffixes attend to, cutting the work about 3-4x. ``share_prefix=False`` is the plain one-pass-per-prompt
    reference; both give the same scores.
    """
    digit_ids, ten = _score_tokens(tokenizer)
    answer = tokenizer.encode(SCORE_PREFIX, add_special_tokens=False)
    # with a split "10" we append "1" and read two positions: P(first digit) and P("0" | "1")
    extra = [digit_ids[1]] if len(ten) == 2 else []
    n_read = 2 if extra else 1
    per_record = [
        [_chat_ids(tokenizer, judge_prompt(r, j, max_chars)) + answer + extra for j in JUDGEMENTS] for r in records
    ]
    head = model.get_output_embeddings()
    n_j = len(JUDGEMENTS)
    scores = np.zeros((len(records), n_j))
    if not share_prefix:
        flat = [s for seqs in per_record for s in seqs]
        batches = shard.take(token_budget_batches([len(s) for s in flat], max_tokens))
        owned = owned_mask(len(flat), batches)
        with progress(bar, int(owned.sum()), "quality(logits)", "judgement", shard.is_main) as bar:
            for batch in batches:
                ids, mask = pad_batch([flat[i] for i in batch], tokenizer.pad_token_id, "right")
                hidden = decoder_hidden(model, ids.to(device), mask.to(device))
                last = mask.sum(1).to(device) - 1
                rows = torch.arange(len(batch), device=device)
                h2 = hidden[rows, last] if extra else None
                e = _expected_scores(head, hidden[rows, last - n_read + 1], h2, digit_ids, ten)
                scores.reshape(-1)[batch] = e.numpy()
                bar.update(len(batch))
        flat_scores = shard.merge_rows(scores.reshape(-1), owned)
        return QualityResult(flat_scores.reshape(len(records), n_j), {"ok": scores.size})
    cuts = [min(_common_prefix(seqs), min(len(s) for s in seqs) - n_read) for seqs in per_record]
    cost = [cuts[i] + n_j * (max(len(s) for s in per_record[i]) - cuts[i]) for i in range(len(records))]
    batches = shard.take(token_budget_batches(cost, max_tokens))
    owned = owned_mask(len(records), batches)
    with progress(bar, int(owned.sum()) * n_j, "quality(logits)", "judgement", shard.is_main) as bar:
        for batch in batches:
            pre_ids, pre_mask = pad_batch([per_record[i][0][: cuts[i]] for i in batch], tokenizer.pad_token_id, "left")
            pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
            cache = DynamicCache()
            decoder_hidden(model, pre_ids, pre_mask, past_key_values=cache)
            cache.batch_repeat_interleave(n_j)
            tails = [per_record[i][j][cuts[i] :] for i in batch for j in range(n_j)]
            suf_ids, suf_mask = pad_batch(tails, tokenizer.pad_token_id, "right")
            full_mask = torch.cat([pre_mask.repeat_interleave(n_j, 0), suf_mask.to(device)], 1)
            hidden = decoder_hidden(model, suf_ids.to(device), full_mask, past_key_values=cache)
            last = suf_mask.sum(1).to(device) - 1
            rows = torch.arange(len(tails), device=device)
            h2 = hidden[rows, last] if extra else None
            e = _expected_scores(head, hidden[rows, last - n_read + 1], h2, digit_ids, ten)
            scores[batch] = e.numpy().reshape(len(batch), n_j)
            bar.update(len(tails))
    return QualityResult(shard.merge_rows(scores, owned), {"ok": scores.size})


@torch.inference_mode()
def judge_generate(
    model,
    tokenizer,
    records: Sequence[Record],
    device: torch.device,
    max_tokens: int = 8192,
    max_new_tokens: int = 8,
    max_chars: int = 2000,
    shard: Shard = Shard(),
    bar=None,
) -> tuple[QualityResult, list[str]]:
    """Greedy short answers, parsed with :func:`parse_score`; returns the raw answers too (for the report)."""
    seqs = [_chat_ids(tokenizer, judge_prompt(r, j, max_chars)) for r in records for j in JUDGEMENTS]
    scores = np.full(len(seqs), np.nan)
    answers = [""] * len(seqs)
    counts = {"ok": 0, "clamped": 0, "unparseable": 0}
    batches = shard.take(token_budget_batches([len(s) + max_new_tokens for s in seqs], max_tokens))
    owned = owned_mask(len(seqs), batches)
    with progress(bar, int(owned.sum()), "quality(generate)", "judgement", shard.is_main) as bar:
        for batch in batches:
            ids, mask = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id, "left")
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
                value, status = parse_score(answers[i])
                counts[status] += 1
                if value is not None:
                    scores[i] = value
            bar.update(len(batch))
    if shard.world > 1:
        scores = shard.merge_rows(scores, owned)
        mine = [answers[i] for i in np.flatnonzero(owned)]
        parts = shard.gather_json({"counts": counts, "idx": np.flatnonzero(owned).tolist(), "answers": mine})
        counts = {k: sum(p["counts"][k] for p in parts) for k in counts}
        for p in parts:
            for i, a in zip(p["idx"], p["answers"]):
                answers[i] = a
    return QualityResult(scores.reshape(len(records), len(JUDGEMENTS)), counts), answers


def agreement(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> dict[str, float]:
    """How far two score sets (e.g. generate vs logits means) agree: within-tolerance rate and correlations."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return {"n": int(a.size), "within_tolerance": float("nan"), "pearson": float("nan"), "spearman": float("nan")}
    ranks = lambda x: np.argsort(np.argsort(x)).astype(float)  # noqa: E731
    corr = lambda x, y: float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")  # noqa: E731
    return {
        "n": int(a.size),
        "within_tolerance": float(np.mean(np.abs(a - b) <= tolerance)),
        "pearson": corr(a, b),
        "spearman": corr(ranks(a), ranks(b)),
    }
