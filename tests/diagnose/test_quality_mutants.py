"""Rules of ``diagnose/quality.py`` that mutation testing (``make mutate``, docs/testing.md) found unguarded: the
token-level helpers of the logits judge, checked on the default tokenizer alone (no model load, so they run in the
mutation check; the judge itself is decorated and left out of it)."""

import math

import pytest
import torch

from middo.diagnose.quality import (
    JUDGEMENTS,
    _chat_ids,
    _expected_scores,
    _score_tokens,
    _side_groups,
    agreement,
    judge_prompt,
)
from middo.records import Record

A = Record(id="a", instruction="Name a fruit.", output="Apple.")
B = Record(id="b", instruction="Describe the sea. " * 40, output="It is large and deep. " * 60)


@pytest.fixture(scope="module")
def tok(base_model_dir):
    from middo.modeling import load_tokenizer

    return load_tokenizer(base_model_dir)


def test_score_tokens_of_the_default_tokenizer(tok):
    """SmolLM2 encodes 0-9 as single tokens and splits "10" into "1", "0": the judge reads two positions."""
    digit_ids, ten = _score_tokens(tok)
    assert digit_ids == [tok.encode(str(d), add_special_tokens=False)[0] for d in range(10)]
    assert len(set(digit_ids)) == 10
    assert ten == [digit_ids[1], digit_ids[0]]


def test_side_groups_hold_each_records_three_judgements_per_side_with_the_suffix(tok):
    groups = _side_groups(tok, [A, B], 2000, [7, 8])
    expected = [_chat_ids(tok, judge_prompt(r, j)) + [7, 8] for r in (A, B) for j in JUDGEMENTS]
    assert groups == [expected[0:3], expected[3:6], expected[6:9], expected[9:12]]


def test_side_groups_fit_the_cutoff_with_the_suffix_counted(tok):
    groups = _side_groups(tok, [A, B], 2000, [7, 8], cutoff=300)
    seqs = [s for g in groups for s in g]
    assert all(len(s) <= 300 and s[-2:] == [7, 8] for s in seqs)
    assert max(len(s) for s in seqs) >= 290  # B is trimmed to fit, not cut far below the limit
    assert groups[0] == _side_groups(tok, [A], 2000, [7, 8])[0]  # a sample that fits is left whole


def test_expected_scores_normalise_each_row_on_its_own():
    """Two judgements in one batch: each row's digit probabilities are renormalised by that row's own mass."""
    logits = torch.full((2, 12), -1e4)  # 11 score tokens ("0".."9", a one-token "10") and one other token
    logits[0, 7] = 0.0  # all mass on "7"
    logits[1, 3] = logits[1, 11] = 0.0  # half on "3", half outside the score tokens
    scores = _expected_scores(torch.nn.Identity(), logits, None, list(range(10)), [10])
    assert scores.tolist() == [7.0, 3.0] and not any(math.isnan(s) for s in scores.tolist())


def test_agreement_of_fewer_than_two_pairs_is_undefined():
    out = agreement([1.0, float("nan")], [2.0, 3.0])
    assert out["n"] == 1 and set(out) == {"n", "within_tolerance", "pearson", "spearman"}
    assert all(out[k] != out[k] for k in ("within_tolerance", "pearson", "spearman"))  # NaN
