from middo.evaluate import math as math_suite


def _item(answer: str) -> dict:
    return next(it for it in math_suite.load(None, 0) if it["answer"] == answer)


def test_load_real_math500_items():
    items = math_suite.load(None, 0)
    assert len(items) == 311
    assert all(it["data_source"] == "MATH500" and it["question"] and it["answer"] for it in items)
    assert len(math_suite.load(10, 3)) == 10


def test_boxed_and_last_number_answers_are_graded():
    item = _item("1440")
    assert math_suite.grade("We multiply 4 by 360 and get \\boxed{1440}.", item)["correct"]
    assert math_suite.grade("4 * 360 = 1,440, so the answer is 1440", item)["correct"]
    assert math_suite.grade("The total is \\boxed{1,440}", item)["correct"]  # normalised: thousands separator


def test_wrong_and_missing_answers_fail():
    item = _item("1440")
    assert not math_suite.grade("\\boxed{1441}", item)["correct"]
    res = math_suite.grade("I do not know.", item)
    assert not res["correct"] and res["predicted"] is None


def test_symbolic_equivalence():
    assert math_suite.is_equivalent("\\frac{1}{2}", "0.5")
    assert not math_suite.is_equivalent("\\frac{1}{3}", "0.5")
