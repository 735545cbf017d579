"""Quality signal: the model judges each sample for clarity, completeness and factuality, on a 0-10 scale.

Six judgements per sample, following the reference code's structure: each aspect is judged twice, once on the
prompt alone (the response is not shown at all) and once on the response together with its prompt. A sample's
score is, per aspect, the mean of its two sides, then the mean of the three aspects.

Two modes. ``generate`` asks for the number first, decodes an answer and takes the first number in it, clipped to
0..10; an answer without a number scores 0, as in the reference code, and is counted. Its sampling, answer length,
character clipping and token cutoff are params (``diagnose.quality.*``): the demo decodes 8 greedy tokens, the paper
presets the reference's 1024 tokens at temperature 0.1, top_p 0.7, top_k 50 with a 4096-token cutoff
(``quality_infer.py``). ``logits`` (our fast option, not in the reference) reads the next-token distribution over
"0".."10" after a fixed "Score: " prefix and takes its expected value: one forward pass, always a number.

Both run on the diagnosis's own HF model; the reference generates with vLLM, which only the teacher uses here.
"""

from __future__ import annotations

import re
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

# what each aspect asks, per side: "instruction" = the prompt alone, "response" = the response given its prompt
ASPECTS = {
    "clarity": {
        "instruction": "is it easy to understand, worded concisely and clearly structured?",
        "response": "is it easy to understand, worded concisely and clearly structured?",
    },
    "completeness": {
        "instruction": "does it give enough information and detail for a good answer to be written?",
        "response": "does it give enough information and detail to answer the prompt fully?",
    },
    "factuality": {
        "instruction": "is everything it states or assumes accurate and grounded in reliable facts?",
        "response": "is everything it states accurate and grounded in reliable facts?",
    },
}
TARGETS = ("instruction", "response")
JUDGEMENTS = tuple(f"{t}_{a}" for t in TARGETS for a in ASPECTS)
SCORE_PREFIX = "Score: "

# The sample comes first and the question last, so the three judgements of one side share a long token prefix that
# the fast path encodes once (see judge_logits). The intro does not depend on the side, so the prompt-side text is a
# prefix of the response-side text.
_INTRO = "You are reviewing an example from the data used to fine-tune an AI assistant.\n\n### Prompt\n{prompt}\n"
_RESPONSE = "\n### Response\n{response}\n"
_QUESTION = (
    "\nRate the {aspect} of the {what}: {question} Use a score from 0 to 10, higher meaning better {aspect}. Keep 10 "
    "for the truly flawless, which is rare. Begin your reply with the score, then explain it briefly."
)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


CUT_MARK = " [...]"


def _clip(text: str, max_chars: int) -> str:
    """``text`` cut to ``max_chars`` characters (0: never cut)."""
    return text if max_chars <= 0 or len(text) <= max_chars else text[:max_chars] + CUT_MARK


def _render(prompt: str, response: str, judgement: str) -> str:
    if judgement not in JUDGEMENTS:
        raise KeyError(f"unknown judgement {judgement!r}; expected one of {JUDGEMENTS}")
    target, aspect = judgement.split("_", 1)
    text = _INTRO.format(prompt=prompt)
    if target == "response":
        text += _RESPONSE.format(response=response)
    what = "prompt above" if target == "instruction" else "response above, read together with its prompt"
    return text + _QUESTION.format(what=what, aspect=aspect, question=ASPECTS[aspect][target])


def judge_prompt(rec: Record, judgement: str, max_chars: int = 2000) -> str:
    """The user message for one of the six judgements; ``instruction_*`` ones never contain the response.

    ``max_chars`` clips the prompt and the response to that many characters each (0: no clipping).

    Raises:
        KeyError: ``judgement`` is not one of :data:`JUDGEMENTS`.
    """
    return _render(_clip(rec.prompt_text, max_chars), _clip(rec.output, max_chars), judgement)


def judge_ids(tokenizer, rec: Record, judgement: str, max_chars: int = 2000, cutoff: int = 0) -> list[int]:
    """Chat-formatted token ids of one judgement, at most ``cutoff`` long (0: no limit).

    The reference cuts its judge inputs at ``cutoff_len`` tokens. Here the sample's text is trimmed (its end, the
    longer of prompt and response first) and the closing question always kept: a judge that never sees the question
    cannot answer it.

    Raises:
        MiddoError: ``cutoff`` leaves no room for the sample (names ``diagnose.quality.cutoff``).
    """
    ids = _chat_ids(tokenizer, judge_prompt(rec, judgement, max_chars))
    if cutoff <= 0 or len(ids) <= cutoff:
        return ids
    enc = lambda t: tokenizer.encode(t, add_special_tokens=False)  # noqa: E731
    prompt = enc(_clip(rec.prompt_text, max_chars))
    response = enc(_clip(rec.output, max_chars)) if judgement.startswith("response") else []
    mark = len(enc(CUT_MARK))
    budget = cutoff - (len(ids) - len(prompt) - len(response)) - 2 * mark
    for _ in range(8):  # token merges at the joins can shift the count by a few; each pass removes the overshoot
        if budget < 2:
            raise MiddoError(
                f"diagnose.quality.cutoff={cutoff}: the judge prompt's own text leaves no tokens for the sample; "
                "raise it (the reference uses 4096)"
            )
        keep_p = min(len(prompt), max(budget // 2, budget - len(response)))
        keep_r = min(len(response), budget - keep_p)
        p_text = tokenizer.decode(prompt[:keep_p]) + (CUT_MARK if keep_p < len(prompt) else "")
        r_text = tokenizer.decode(response[:keep_r]) + (CUT_MARK if keep_r < len(response) else "")
        ids = _chat_ids(tokenizer, _render(p_text, r_text, judgement))
        if len(ids) <= cutoff:
            return ids
        budget -= len(ids) - cutoff
    raise MiddoError(f"diagnose.quality.cutoff={cutoff}: could not fit a judge prompt; raise it")


def parse_score(text: str) -> tuple[float, str]:
    """The first number in ``text``, clipped to 0..10; 0 when there is none.

    Only digits count (a reply of "seven" has no number), like the reference parser; unlike it, a leading minus
    sign is read, so "-2" clips to 0 rather than reading 2.

    Returns:
        ``(score, status)`` with status ``ok``, ``clamped`` (the number was outside 0..10) or ``unparseable``.
    """
    m = _NUMBER.search(text or "")
    if not m:
        return 0.0, "unparseable"
    value = float(m.group())
    clipped = min(10.0, max(0.0, value))
    return clipped, "ok" if clipped == value else "clamped"


def aggregate(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-aspect scores (mean of the prompt side and the response side) and the sample score (mean of aspects).

    Args:
        scores: ``[N, 6]`` sub-scores in :data:`JUDGEMENTS` order.

    Returns:
        ``([N, 3] per aspect in ASPECTS order, [N] overall)``.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1, len(TARGETS), len(ASPECTS))
    per_aspect = s.mean(axis=1)
    return per_aspect, per_aspect.mean(axis=1)


@dataclass
class QualityResult:
    scores: np.ndarray  # [N, 6] sub-scores in JUDGEMENTS order (an unparseable generate answer is 0)
    status_counts: dict[str, int]

    @property
    def aspects(self) -> np.ndarray:
        """``[N, 3]`` per-aspect scores, the two sides averaged."""
        return aggregate(self.scores)[0]

    @property
    def mean(self) -> np.ndarray:
        """``[N]`` sample scores: the mean of the three aspect scores."""
        return aggregate(self.scores)[1]


def _chat_ids(tokenizer, user: str) -> list[int]:
    enc = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True)
    return list(enc["input_ids"] if not isinstance(enc, list) else enc)


def _side_groups(
    tokenizer, records: Sequence[Record], max_chars: int, suffix: Sequence[int], cutoff: int = 0
) -> list[list[list[int]]]:
    """Token ids of every judgement prompt (plus ``suffix``), grouped by record and side: ``2N`` groups of 3.

    A group's prompts differ only in their closing question, so they share almost all their tokens.
    """
    n_a = len(ASPECTS)
    groups = []
    room = cutoff - len(suffix) if cutoff > 0 else 0
    for r in records:
        seqs = [judge_ids(tokenizer, r, j, max_chars, room) + list(suffix) for j in JUDGEMENTS]
        groups.extend(seqs[i : i + n_a] for i in range(0, len(seqs), n_a))
    return groups


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
    cutoff: int = 0,
) -> QualityResult:
    """Expected score over "0".."10" for every record × judgement.

    With ``share_prefix`` the three prompts of one record and side are split into their common token prefix (the
    sample itself, most of the tokens) and three short suffixes (the question): the prefix is encoded once into a
    KV cache that the three suffixes attend to. ``share_prefix=False`` is the plain one-pass-per-prompt reference;
    both give the same scores.
    """
    digit_ids, ten = _score_tokens(tokenizer)
    answer = tokenizer.encode(SCORE_PREFIX, add_special_tokens=False)
    # with a split "10" we append "1" and read two positions: P(first digit) and P("0" | "1")
    extra = [digit_ids[1]] if len(ten) == 2 else []
    n_read = 2 if extra else 1
    groups = _side_groups(tokenizer, records, max_chars, answer + extra, cutoff)
    head = model.get_output_embeddings()
    n_g, n_j = len(ASPECTS), len(JUDGEMENTS)
    scores = np.zeros((len(groups), n_g))
    if not share_prefix:
        flat = [s for g in groups for s in g]
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
        return QualityResult(flat_scores.reshape(len(records), n_j), {"ok": int(flat_scores.size)})
    cuts = [min(_common_prefix(g), min(len(s) for s in g) - n_read) for g in groups]
    cost = [cuts[i] + n_g * (max(len(s) for s in groups[i]) - cuts[i]) for i in range(len(groups))]
    batches = shard.take(token_budget_batches(cost, max_tokens))
    owned = owned_mask(len(groups), batches)
    with progress(bar, int(owned.sum()) * n_g, "quality(logits)", "judgement", shard.is_main) as bar:
        for batch in batches:
            pre_ids, pre_mask = pad_batch([groups[i][0][: cuts[i]] for i in batch], tokenizer.pad_token_id, "left")
            pre_ids, pre_mask = pre_ids.to(device), pre_mask.to(device)
            cache = DynamicCache()
            decoder_hidden(model, pre_ids, pre_mask, past_key_values=cache)
            cache.batch_repeat_interleave(n_g)
            tails = [groups[i][j][cuts[i] :] for i in batch for j in range(n_g)]
            suf_ids, suf_mask = pad_batch(tails, tokenizer.pad_token_id, "right")
            full_mask = torch.cat([pre_mask.repeat_interleave(n_g, 0), suf_mask.to(device)], 1)
            hidden = decoder_hidden(model, suf_ids.to(device), full_mask, past_key_values=cache)
            last = suf_mask.sum(1).to(device) - 1
            rows = torch.arange(len(tails), device=device)
            h2 = hidden[rows, last] if extra else None
            e = _expected_scores(head, hidden[rows, last - n_read + 1], h2, digit_ids, ten)
            scores[batch] = e.numpy().reshape(len(batch), n_g)
            bar.update(len(tails))
    merged = shard.merge_rows(scores, owned)
    return QualityResult(merged.reshape(len(records), n_j), {"ok": int(merged.size)})


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
    *,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    cutoff: int = 0,
    seed: int = 0,
) -> tuple[QualityResult, list[str]]:
    """Answers decoded by the model, parsed with :func:`parse_score` (unparseable = 0, counted); returns the raw
    answers too, for the report.

    ``temperature`` 0 decodes greedily (the demo: reruns give the same scores). Above 0 it samples with ``top_p`` and
    ``top_k`` (0: no top-k), as the reference's vLLM judge does at 0.1 / 0.7 / 50; each batch seeds torch from
    ``seed`` and its first judgement's index, so a rerun with the same batches draws the same answers. ``cutoff``
    bounds each judge prompt in tokens (:func:`judge_ids`).
    """
    seqs = [judge_ids(tokenizer, r, j, max_chars, cutoff) for r in records for j in JUDGEMENTS]
    scores = np.zeros(len(seqs))
    answers = [""] * len(seqs)
    counts = {"ok": 0, "clamped": 0, "unparseable": 0}
    sampling = (
        {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": top_k}
        if temperature > 0
        else {"do_sample": False}
    )
    batches = shard.take(token_budget_batches([len(s) + max_new_tokens for s in seqs], max_tokens))
    owned = owned_mask(len(seqs), batches)
    with progress(bar, int(owned.sum()), "quality(generate)", "judgement", shard.is_main) as bar:
        for batch in batches:
            ids, mask = pad_batch([seqs[i] for i in batch], tokenizer.pad_token_id, "left")
            if temperature > 0:
                torch.manual_seed(seed + int(batch[0]))
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            for row, i in enumerate(batch):
                answers[i] = tokenizer.decode(out[row, ids.shape[1] :], skip_special_tokens=True)
                scores[i], status = parse_score(answers[i])
                counts[status] += 1
            bar.update(len(batch))
    scores = shard.merge_rows(scores, owned)  # one process: the same array (and the rank report's rows)
    counts = gather_answers(shard, owned, answers, counts)
    return QualityResult(scores.reshape(len(records), len(JUDGEMENTS)), counts), answers


def gather_answers(shard: Shard, owned: np.ndarray, answers: list[str], counts: dict[str, int]) -> dict[str, int]:
    """Fill ``answers`` with every process's decoded answers and return the status counts summed over processes
    (one process: ``counts`` as they are). Every rank gets the whole list, as with the scores."""
    if shard.world == 1:
        return counts
    idx = np.flatnonzero(owned).tolist()
    parts = shard.gather_json({"counts": counts, "idx": idx, "answers": [answers[i] for i in idx]})
    for p in parts:
        for i, a in zip(p["idx"], p["answers"]):
            answers[i] = a
    return {k: sum(p["counts"][k] for p in parts) for k in counts}


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span (what Spearman's rho needs with ties)."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based rank where each distinct value starts
    return (first + (counts + 1) / 2.0)[inverse.reshape(-1)]


def agreement(a: np.ndarray, b: np.ndarray, tolerance: float = 1.0) -> dict[str, float]:
    """How far two score sets (e.g. generate vs logits means) agree: within-tolerance rate and correlations.

    Spearman's rho is the Pearson correlation of average ranks, so ties (common with integer generate scores) do not
    depend on the order of the samples.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if a.size < 2:
        return {"n": int(a.size), "within_tolerance": float("nan"), "pearson": float("nan"), "spearman": float("nan")}
    corr = lambda x, y: float(np.corrcoef(x, y)[0, 1]) if x.std() > 0 and y.std() > 0 else float("nan")  # noqa: E731
    return {
        "n": int(a.size),
        "within_tolerance": float(np.mean(np.abs(a - b) <= tolerance)),
        "pearson": corr(a, b),
        "spearman": corr(average_ranks(a), average_ranks(b)),
    }
