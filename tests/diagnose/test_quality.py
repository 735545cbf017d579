import numpy as np
import pytest
import torch

from middo.diagnose.quality import (
    JUDGEMENTS,
    SCORE_PREFIX,
    _chat_ids,
    _expected_scores,
    aggregate,
    agreement,
    average_ranks,
    judge_generate,
    judge_logits,
    judge_prompt,
    parse_score,
)
from middo.records import Record


@pytest.mark.parametrize(
    "text,expected",
    [
        ("7", (7.0, "ok")),
        ("Score: 7/10", (7.0, "ok")),
        ("Score: 7. Also 3", (7.0, "ok")),  # the first number, not the last or the largest
        ("8.5 - quite clear", (8.5, "ok")),
        ("12/10", (10.0, "clamped")),
        ("-2", (0.0, "clamped")),
        ("", (0.0, "unparseable")),
        ("The response is clear", (0.0, "unparseable")),
        ("I'd give it seven.", (0.0, "unparseable")),  # digits only, like the reference parser
    ],
)
def test_parse_score_first_number_clipped_unparseable_is_zero(text, expected):
    assert parse_score(text) == expected


MARKER = "ZQX-RESPONSE-MARKER-4711"
REC = Record(id="x", instruction="Name a fruit.", input="Red ones.", output=f"Apple. {MARKER}")


def test_prompt_side_judgements_never_show_the_response():
    assert len(JUDGEMENTS) == 6
    for judgement in JUDGEMENTS:
        prompt = judge_prompt(REC, judgement)
        target, aspect = judgement.split("_", 1)
        assert aspect in prompt and "Name a fruit.\nRed ones." in prompt
        assert (MARKER in prompt) == (target == "response"), judgement
        assert "Apple." in prompt if target == "response" else "Apple" not in prompt
        assert "0 to 10" in prompt and "Begin your reply with the score" in prompt  # number first
        assert "Keep 10 for the truly flawless" in prompt  # steer away from a full 10


def test_prompt_side_token_sequences_fed_to_the_model_lack_the_response(base_model_dir):
    """The same check on what the judge really reads: the chat-formatted token ids, decoded back."""
    from middo.modeling import load_tokenizer

    tok = load_tokenizer(base_model_dir)
    for judgement in JUDGEMENTS:
        text = tok.decode(_chat_ids(tok, judge_prompt(REC, judgement)))
        assert (MARKER in text) == judgement.startswith("response_"), judgement


def test_unknown_judgement_is_refused():
    with pytest.raises(KeyError, match="unknown judgement"):
        judge_prompt(REC, "response_style")


def test_score_is_mean_of_aspects_each_the_mean_of_both_sides():
    # JUDGEMENTS order: prompt side clarity, completeness, factuality; then the response side
    scores = np.array([[8.0, 6.0, 4.0, 10.0, 2.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    per_aspect, overall = aggregate(scores)
    np.testing.assert_allclose(per_aspect, [[9.0, 4.0, 2.0], [0.0, 0.0, 4.5]])
    np.testing.assert_allclose(overall, [5.0, 1.5])


def test_agreement_measures():
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan])
    assert agreement(a, a + 0.5) == {"n": 4, "within_tolerance": 1.0, "pearson": 1.0, "spearman": 1.0}
    assert agreement(a, a + 2)["within_tolerance"] == 0.0


def test_spearman_uses_average_ranks_for_ties():
    stats = pytest.importorskip("scipy.stats")
    np.testing.assert_array_equal(average_ranks(np.array([5.0, 1.0, 5.0, 3.0, 5.0])), [4.0, 1.0, 4.0, 2.0, 4.0])
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 40).astype(float)  # many ties, like integer generate scores
    b = a + rng.normal(0, 1.5, 40)
    assert agreement(a, b)["spearman"] == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    # the answer does not depend on the order the samples come in
    perm = rng.permutation(40)
    assert agreement(a[perm], b[perm])["spearman"] == pytest.approx(agreement(a, b)["spearman"], abs=1e-12)


class _ScriptedModel:
    """Stands in for a causal LM in ``judge_generate``: answers each judgement prompt with its scripted reply."""

    def __init__(self, tokenizer, replies: dict[str, str]):
        self.tokenizer, self.replies = tokenizer, replies

    def _judgement(self, ids) -> str:
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        side = "response" if MARKER in text else "instruction"
        return next(f"{side}_{a}" for a in ("clarity", "completeness", "factuality") if f"Rate the {a} " in text)

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        rows = []
        for ids in input_ids:
            reply = self.replies[self._judgement(ids)]
            reply_ids = self.tokenizer.encode(reply, add_special_tokens=False)[:max_new_tokens]
            rows.append(reply_ids + [self.tokenizer.pad_token_id] * (max_new_tokens - len(reply_ids)))
        return torch.cat([input_ids, torch.tensor(rows, dtype=torch.long)], 1)


def test_unparseable_generate_answer_scores_zero_and_is_counted(base_model_dir):
    from middo.modeling import load_tokenizer

    tok = load_tokenizer(base_model_dir)
    # the first number (not the "10" of "/10", nor the 8), clipped to 0..10; none at all scores 0
    replies = ["7 - clear", "Looks fine to me", "12/10", "3/10, maybe 8", "-4", "no idea"]
    model = _ScriptedModel(tok, dict(zip(JUDGEMENTS, replies)))
    res, answers = judge_generate(model, tok, [REC], "cpu", max_new_tokens=8)
    assert [a.strip() for a in answers] == replies
    np.testing.assert_array_equal(res.scores, [[7.0, 0.0, 10.0, 3.0, 0.0, 0.0]])
    assert res.status_counts == {"ok": 2, "clamped": 2, "unparseable": 2}
    assert res.mean[0] == pytest.approx(((7 + 3) / 2 + (0 + 0) / 2 + (10 + 0) / 2) / 3)


GOOD = Record(id="g", instruction="What is the capital of France?", output="The capital of France is Paris.")
BAD = Record(id="b", instruction="wat capital france", output="Berlin is a big city in Spain, I think maybe.")


@pytest.mark.slow
def test_logits_mode_scores_in_range_and_do_not_depend_on_batching(scoring_model):
    """Mechanics only: the 135M default model is no judge (on six hand-made good/bad pairs it ranked 1 to 3 of them
    right, with this prompt and with the earlier one), so which sample it prefers is not asserted."""
    lm = scoring_model
    res = judge_logits(lm.model, lm.tokenizer, [GOOD, BAD], lm.device)
    assert res.scores.shape == (2, 6)
    assert ((res.scores >= 0) & (res.scores <= 10)).all()
    assert np.unique(res.scores).size > 1  # read from the model, not a constant
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
    assert not np.isnan(res.scores).any()  # unparseable answers score 0, they are not dropped
    assert (res.scores == 0).sum() >= res.status_counts["unparseable"]


# The logits judge's arithmetic on hand-set distributions. The "head" is the identity, so the hidden states passed
# in are the logits themselves; a vocabulary of 40 with "0".."9" at ids 10..19 and other tokens around them.
DIGITS = list(range(10, 20))
SPLIT_TEN = [11, 10]  # "10" as the tokens "1", "0" (SmolLM2's tokenizer splits digits)
ONE_TEN = [30]  # "10" as a single token


def _logits(probs: dict[int, float], vocab: int = 40) -> torch.Tensor:
    """One row of logits whose softmax puts ``probs`` on those ids and nothing on the rest."""
    row = torch.full((vocab,), -1e4)
    for token, p in probs.items():
        row[token] = float(np.log(p))
    return row[None]


def _expected(first: dict[int, float], second: dict[int, float] | None, ten=SPLIT_TEN) -> float:
    h2 = _logits(second) if second is not None else None
    return float(_expected_scores(torch.nn.Identity(), _logits(first), h2, DIGITS, ten)[0])


@pytest.mark.parametrize(
    "first,second,expected",
    [
        ({DIGITS[7]: 1.0}, {DIGITS[0]: 1.0}, 7.0),  # all mass on "7"
        ({DIGITS[0]: 1.0}, {DIGITS[0]: 1.0}, 0.0),
        ({DIGITS[1]: 1.0}, {DIGITS[0]: 1.0}, 10.0),  # "1" then surely "0": a ten
        ({DIGITS[1]: 1.0}, {DIGITS[5]: 1.0}, 1.0),  # "1" then anything but "0": a one
        ({DIGITS[1]: 1.0}, {DIGITS[0]: 0.25, 5: 0.75}, 0.25 * 10 + 0.75 * 1),  # the "0" after "1" decides
        # mass outside the digits is dropped and the rest renormalised: P(1) = P(3) = 0.5, P("0" | "1") = 0.4, so
        # P(one) = 0.3, P(three) = 0.5, P(ten) = 0.2 and the expected score 0.3 + 1.5 + 2.0
        ({DIGITS[1]: 0.25, DIGITS[3]: 0.25, 5: 0.5}, {DIGITS[0]: 0.4, DIGITS[2]: 0.6}, 3.8),
    ],
)
def test_expected_score_with_a_split_ten(first, second, expected):
    assert _expected(first, second) == pytest.approx(expected, abs=1e-6)  # softmax in float32


@pytest.mark.parametrize(
    "first,expected",
    [
        ({DIGITS[7]: 1.0}, 7.0),
        ({ONE_TEN[0]: 1.0}, 10.0),
        ({DIGITS[1]: 1.0}, 1.0),
        ({ONE_TEN[0]: 0.25, DIGITS[2]: 0.25, 5: 0.5}, 6.0),  # renormalised over "0".."10": half 10, half 2
    ],
)
def test_expected_score_with_a_one_token_ten(first, expected):
    assert _expected(first, None, ONE_TEN) == pytest.approx(expected, abs=1e-6)


def _reference_scores(model, tokenizer, rec: Record) -> list[float]:
    """The slow, obvious way: for each judgement, the full-vocabulary softmax after "Score: " gives P("0".."9");
    a second pass with "1" appended gives P("0" | "1"), which splits P("1") into a one and a ten."""
    scores = []
    for judgement in JUDGEMENTS:
        chat = tokenizer.apply_chat_template(
            [{"role": "user", "content": judge_prompt(rec, judgement)}], tokenize=False, add_generation_prompt=True
        )

        def next_token_probs(text: str) -> torch.Tensor:
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            with torch.inference_mode():
                return torch.softmax(model(input_ids=ids).logits[0, -1].double(), -1)

        first = next_token_probs(chat + SCORE_PREFIX)
        zero_after_one = next_token_probs(chat + SCORE_PREFIX + "1")[tokenizer.convert_tokens_to_ids("0")]
        p = {d: float(first[tokenizer.convert_tokens_to_ids(str(d))]) for d in range(10)}
        total = sum(p.values())
        p[10] = p[1] * float(zero_after_one)
        p[1] -= p[10]
        scores.append(sum(k * v for k, v in p.items()) / total)
    return scores


@pytest.mark.slow
def test_logits_judge_matches_a_full_vocabulary_reference(scoring_model, one_torch_thread):
    """Both paths of the fast judge (shared-prefix cache and one pass per prompt) against the reference: a wrong read
    position, a wrong split-"10" formula or a reversed scale each move the scores far past the tolerance."""
    lm = scoring_model
    assert lm.tokenizer.encode("10", add_special_tokens=False) == lm.tokenizer.encode("1") + lm.tokenizer.encode("0")
    ref = np.array([_reference_scores(lm.model, lm.tokenizer, r) for r in (GOOD, BAD)])
    assert np.ptp(ref) > 0.1  # the scores differ between judgements and samples: a mix-up cannot match by chance
    for share_prefix in (True, False):
        res = judge_logits(lm.model, lm.tokenizer, [GOOD, BAD], lm.device, share_prefix=share_prefix)
        np.testing.assert_allclose(res.scores, ref, atol=1e-4, err_msg=f"share_prefix={share_prefix}")


# --- the judge's params (diagnose.quality.{max_chars, cutoff, temperature, top_p, top_k}) ---
LONG = Record(
    id="long",
    instruction="Summarise this report. " + "The harvest was late this year. " * 600,
    output=("The report says the harvest was late. " * 600),
)


def test_judge_cutoff_trims_the_sample_and_keeps_the_question(base_model_dir):
    from middo.diagnose.quality import judge_ids
    from middo.modeling import load_tokenizer

    tok = load_tokenizer(base_model_dir)
    for j in JUDGEMENTS:
        full = judge_ids(tok, LONG, j, max_chars=0, cutoff=0)
        assert len(full) > 4000  # max_chars 0 clips nothing: the whole sample is there
        cut = judge_ids(tok, LONG, j, max_chars=0, cutoff=512)
        assert 400 < len(cut) <= 512
        text = tok.decode(cut)
        aspect = j.split("_", 1)[1]
        assert f"Rate the {aspect} " in text and text.rstrip().endswith(tok.decode(full[-8:]).rstrip())
        assert "[...]" in text
        assert ("harvest was late." in text.split("### Response")[-1]) == j.startswith("response")
    assert len(judge_prompt(LONG, JUDGEMENTS[3], max_chars=0)) > len(LONG.output)  # 0 = no character clipping
    assert len(judge_prompt(LONG, JUDGEMENTS[3], max_chars=100)) < 1000


def test_judge_cutoff_too_small_for_the_question_names_the_param(base_model_dir):
    from middo.diagnose.quality import judge_ids
    from middo.errors import MiddoError
    from middo.modeling import load_tokenizer

    with pytest.raises(MiddoError, match=r"diagnose\.quality\.cutoff=40"):
        judge_ids(load_tokenizer(base_model_dir), LONG, JUDGEMENTS[0], max_chars=0, cutoff=40)


@pytest.mark.slow
def test_generate_samples_with_the_given_settings_and_a_seed_repeats_them(scoring_model):
    lm = scoring_model
    run = lambda **kw: judge_generate(lm.model, lm.tokenizer, [GOOD, BAD], lm.device, max_new_tokens=5, **kw)[1]  # noqa: E731
    greedy = run()
    hot = run(temperature=1.5, top_p=1.0, top_k=0, seed=0)
    assert hot == run(temperature=1.5, top_p=1.0, top_k=0, seed=0)  # same seed, same draws
    assert hot != greedy and hot != run(temperature=1.5, top_p=1.0, top_k=0, seed=1)  # it does sample
    assert run(temperature=1.5, top_p=1.0, top_k=1, seed=1) == greedy  # top_k reaches the sampler: k=1 is greedy
    assert run(temperature=1.5, top_p=1e-6, top_k=0, seed=2) == greedy  # so does top_p


class _RecordingModel(_ScriptedModel):
    """The scripted judge above, also keeping what the stage asked ``generate`` for (the 135M model's sampled answers
    are all unparseable, so its scores cannot show which settings it got)."""

    def generate(self, input_ids, attention_mask, max_new_tokens, **kwargs):
        self.calls.append({"n_ids": input_ids.shape[1], "max_new_tokens": max_new_tokens, **kwargs})
        return super().generate(input_ids, attention_mask, max_new_tokens)


def test_the_diagnosis_judges_with_its_params(base_model_dir):
    """``diagnose.quality.*`` reach the judge from the stage's config, the demo's greedy default included."""
    from middo.config import DiagnoseConfig, QualityConfig
    from middo.diagnose.run import _judge
    from middo.distributed import Shard
    from middo.modeling import load_tokenizer

    tok = load_tokenizer(base_model_dir)
    lm = type("LM", (), {"tokenizer": tok, "device": "cpu"})()
    lm.model = _RecordingModel(tok, dict.fromkeys(JUDGEMENTS, "7"))
    lm.model.calls = []
    q = QualityConfig(mode="generate", temperature=0.1, top_p=0.7, top_k=50, max_new_tokens=3, max_chars=0, cutoff=300)
    res = _judge("generate", lm, [GOOD, LONG], DiagnoseConfig(quality=q), Shard())
    np.testing.assert_array_equal(res.scores, np.full((2, 6), 7.0))
    asked = lm.model.calls
    assert {(c["do_sample"], c["temperature"], c["top_p"], c["top_k"], c["max_new_tokens"]) for c in asked} == {
        (True, 0.1, 0.7, 50, 3)
    }
    assert max(c["n_ids"] for c in asked) <= 300  # the cutoff bounds every prompt (LONG is over 4000 tokens)
    lm.model.calls = []
    _judge("generate", lm, [GOOD, LONG], DiagnoseConfig(), Shard())  # the demo's: greedy, 8 tokens, 2000 chars
    assert {(c["do_sample"], c["max_new_tokens"]) for c in lm.model.calls} == {(False, 8)}
    assert max(c["n_ids"] for c in lm.model.calls) > 300


def test_the_agreement_bench_defaults_to_the_paper_judge_and_compares_flag_sets(capsys):
    import importlib.util
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("bench_judge_agreement", root / "bench/bench_judge_agreement.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(
        ["--model", "unused", "--data", str(root / "tests/assets/datasets/alpaca.jsonl"), "--limit", "3", "--dry-run"]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["records"] == 3
    assert printed["generate"] == {
        "engine": "vllm", "temperature": 0.1, "top_p": 0.7, "top_k": 50, "max_new_tokens": 1024, "cutoff": 4096,
        "max_chars": 0,
    }  # fmt: skip
    # flag sets at mean - m*std (sample std): generate flags 0 and 1, logits 1 and 2 -> one shared of three
    gen = np.array([0.0, 1.0, 8.0, 8.0, 8.0, 8.0, 8.0, 8.0])
    log = np.array([8.0, 1.0, 0.0, 8.0, 8.0, 8.0, 8.0, 8.0])
    row = bench.flagged_overlap(gen, log, 0.5)
    assert (row["flagged_generate"], row["flagged_logits"], row["flagged_both"]) == (2, 2, 1)
    assert row["jaccard"] == pytest.approx(1 / 3) and row["generate_flags_also_logits"] == 0.5
