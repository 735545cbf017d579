import numpy as np
import pytest

from middo.diagnose.quality import JUDGEMENTS, agreement, judge_generate, judge_logits, judge_prompt, parse_score
from middo.records import Record


@pytest.mark.parametrize(
    "text,expected",
    [
        ("7", (7.0, "ok")),
        ("Score: 7/10", (7.0, "ok")),
        ("I'd give it seven.", (7.0, "ok")),
        ("Ten out of ten", (10.0, "ok")),
        ("8.5", (8.5, "ok")),
        ("", (None, "unparseable")),
        ("The response is clear", (None, "unparseable")),
        ("15", (10.0, "clamped")),
        ("-3", (0.0, "clamped")),
    ],
)
def test_parse_score(text, expected):
    assert parse_score(text) == expected


def test_prompt_names_aspect_and_contents():
    rec = Record(id="x", instruction="Name a fruit.", input="Red ones.", output="Apple.")
    p = judge_prompt(rec, "response_factuality")
    assert "response" in p and "factuality" in p and "Name a fruit.\nRed ones." in p and "Apple." in p
    assert len(JUDGEMENTS) == 6


def test_agreement_measures():
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert agreement(a, a + 0.5) == {"n": 4, "within_tolerance": 1.0, "pearson": 1.0, "spearman": 1.0}
    assert agreement(a, a + 2)["within_tolerance"] == 0.0


GOOD = Record(id="g", instruction="What is the capital of France?", output="The capital of France is Paris.")
BAD = Record(id="b", instruction="wat capital france", output="Berlin is a big city in Spain, I think maybe.")


@pytest.mark.slow
def test_logits_mode_scores_in_range_and_prefers_good(scoring_model):
    lm = scoring_model
    res = judge_logits(lm.model, lm.tokenizer, [GOOD, BAD], lm.device)
    assert res.scores.shape == (2, 6)
    assert ((res.scores >= 0) & (res.scores <= 10)).all()
    assert res.mean[0] > res.mean[1]
    # neither batch size nor the shared-prefix KV cache changes the scores
    res1 = judge_logits(lm.model, lm.tokenizer, [GOOD, BAD], lm.device, max_tokens=1)
    np.testing.assert_allclose(res.scores, res1.scores, atol=1e-4)
    plain = judge_logits(lm.model, lm.tokenizer, [GOOD, BAD], lm.device, share_prefix=False)
    np.testing.assert_allclose(res.scores, plain.scores, atol=1e-4)


@pytest.mark.slow
def test_generate_mode_counts_every_answer(scoring_model):
    lm = scoring_model
    res, answers = judge_generate(lm.model, lm.tokenizer, [GOOD, BAD], lm.device, max_new_tokens=6)
    assert len(answers) == 12
    assert sum(res.status_counts.values()) == 12
    assert np.isnan(res.scores).sum() == res.status_counts["unparseable"]
