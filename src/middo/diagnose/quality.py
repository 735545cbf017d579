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
from tqdm.auto import tqdm

from middo.diagnose.batching import pad_batch, token_budget_batches
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

_TEMPLATE = (
    "You are grading training data for an AI assistant. Rate the {target} below for {aspect}: {question}\n"
    "Answer with a single integer from 0 (very poor) to 10 (excellent).\n\n"
    "### Instruction\n{instruction}\n{response_block}\n"
    "How would you rate the {target}'s {aspect} from 0 to 10?"
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
        target=target, aspect=aspect, question=ASPECTS[aspect], instruction=_clip(rec.prompt_text, max_chars),
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
        raise MiddoError("diagnose.quality.mode=logits: this tokenizer does not encode 0-9 as single tokens; "
                         "use mode: generate")
    ten = tokenizer.encode("10", add_special_tokens=False)
    if len(ten) not in (1, 2) or (len(ten) == 2 and ten != [digits[1][0], digits[0][0]]):
        raise MiddoError("diagnose.quality.mode=logits: cannot read '10' from this tokenizer; use mode: generate")
    return [d[0] for d in digits], ten


@torch.inference_mode()
def judge_logits(
    model, tokenizer, records: Sequence[Record], device: torch.device, max_tokens: int = 8192,
    max_chars: int = 2000,
) -> QualityResult:
    """Expected score over "0".."10" for every record × judgement, in one forward pass each."""
    digit_ids, ten = _score_tokens(tokenizer)
    prefix = tokenizer.encode(SCORE_PREFIX, add_special_tokens=False)
    # with a split "10" we append "1" and read two positions: P(first digit) and P("0" | "1")
    suffix = [digit_ids[1]] if len(ten) == 2 else []
    seqs = [
        _chat_ids(tokenizer, judge_prompt(r, j, max_chars)) + prefix + suffix for r in records for j in JUDGEMENTS
    ]
    head = model.get_output_embeddings()
    scores = np.empty(len(seqs))
    values = torch.arange(11, dtype=torch.float64)
    with tqdm(total=len(seqs), desc="quality(logits)", unit="judgement") as bar:
        for batch in token_budget_batches([len(s) for s in seqs], max_tokens):
            ids, mask = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id, "right")
            hidden = decoder_hidden(model, ids.to(device), mask.to(device))
            last = mask.sum(1).to(device) - 1
            rows = torch.arange(len(batch), device=device)
            if suffix:
                first = torch.softmax(head(hidden[rows, last - 1]).float(), -1).double().cpu()
                second = torch.softmax(head(hidden[rows, last]).float(), -1).double().cpu()
                p = first[:, digit_ids].clone()
                p_ten = p[:, 1] * second[:, digit_ids[0]]
                p[:, 1] = p[:, 1] - p_ten
                p = torch.cat([p, p_ten[:, None]], 1)
            else:
                probs = torch.softmax(head(hidden[rows, last]).float(), -1).double().cpu()
                p = probs[:, digit_ids + ten]
            p = p / p.sum(1, keepdim=True)
            scores[batch] = (p @ values).numpy()
            bar.update(len(batch))
    return QualityResult(scores.reshape(len(records), len(JUDGEMENTS)), {"ok": len(seqs)})


@torch.inference_mode()
def judge_generate(
    model, tokenizer, records: Sequence[Record], device: torch.device, max_tokens: int = 8192,
    max_new_tokens: int = 8, max_chars: int = 2000,
) -> tuple[QualityResult, list[str]]:
    """Greedy short answers, parsed with :func:`parse_score`; returns the raw answers too (for the report)."""
    seqs = [_chat_ids(tokenizer, judge_prompt(r, j, max_chars)) for r in records for j in JUDGEMENTS]
    scores = np.full(len(seqs), np.nan)
    answers = [""] * len(seqs)
    counts = {"ok": 0, "clamped": 0, "unparseable": 0}
    with tqdm(total=len(seqs), desc="quality(generate)", unit="judgement") as bar:
        for batch in token_budget_batches([len(s) + max_new_tokens for s in seqs], max_tokens):
            ids, mask = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id, "left")
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=tokenizer.pad_token_id,
            )
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
                value, status = parse_score(answers[i])
                counts[status] += 1
                if value is not None:
                    scores[i] = value
            bar.update(len(batch))
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
