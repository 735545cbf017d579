"""Token and cost accounting on hand-made numbers: who pays for a reply, what an unknown usage counts as, and a
budget that carries what a round already paid into its next attempt."""

from __future__ import annotations

import pickle
from types import SimpleNamespace

import pytest

from middo.refine.plan import check_budget
from middo.teachers.base import Reply
from middo.teachers.usage import Budget, BudgetExceeded, Price, Usage, usage_report

PRICE = Price(input=2.0, output=10.0)  # $ per million: 1M prompt tokens cost $2


def test_price_and_usage_parsing():
    assert PRICE.cost(Usage(500_000, 100_000)) == pytest.approx(1.0 + 1.0)
    assert PRICE.cost(None) == 0.0 and PRICE.scaled(0.5) == Price(1.0, 5.0)
    assert Usage.from_json({"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}) == Usage(3, 4)
    assert Usage.from_json(SimpleNamespace(prompt_tokens=3, completion_tokens=4)) == Usage(3, 4)  # the client's
    negative, flag, fraction = ({"prompt_tokens": n, "completion_tokens": 1} for n in (-1, True, 1.5))
    for bad in (None, {}, {"prompt_tokens": 3}, negative, flag, fraction):
        assert Usage.from_json(bad) is None, bad


def test_a_reply_keeps_its_usage_and_payer_across_pickling():
    r = Reply("text", "length", Usage(5, 6), 2)
    back = pickle.loads(pickle.dumps(r))
    assert (back, back.finish_reason, back.usage, back.paid_round) == ("text", "length", Usage(5, 6), 2)


def test_usage_report_charges_only_what_this_round_paid():
    calls = [
        ("simplify", "rewrite", Reply("a", usage=Usage(1000, 200), paid_round=3)),  # sent by round 3
        ("simplify", "answer", Reply("b", usage=Usage(100, 300), paid_round=3)),
        ("improve", "rewrite", Reply("c", usage=Usage(2000, 400), paid_round=1)),  # round 1's entry: free here
        ("improve", "answer", Reply("d", usage=Usage(50, 60), paid_round=None)),  # a repeat: free
        ("improve", "answer", Reply("e")),  # an entry from before usage was recorded
        ("improve", "answer", None),  # failed: not charged
    ]
    rep = usage_report(calls, 3, PRICE)
    t = rep["total"]
    assert (t["requests"], t["cached"], t["failed"], t["unknown_usage"]) == (5, 3, 1, 1)
    assert (t["prompt_tokens"], t["completion_tokens"]) == (3150, 960)
    assert (t["paid_prompt_tokens"], t["paid_completion_tokens"]) == (1100, 500)
    assert t["cost"] == pytest.approx((1100 * 2 + 500 * 10) / 1e6)
    assert t["cached_cost"] == pytest.approx((2050 * 2 + 460 * 10) / 1e6)
    imp = rep["operations"]["improve"]
    assert imp["answer"]["failed"] == 1 and imp["answer"]["cached"] == 2 and imp["rewrite"]["cost"] == 0.0
    assert imp["total"]["requests"] == 3 and rep["operations"]["simplify"]["total"]["cost"] == t["cost"]
    assert rep["price"] == {"input": 2.0, "output": 10.0}
    unpriced = usage_report(calls, 3, None)
    assert "cost" not in unpriced["total"] and unpriced["price"] is None
    assert usage_report(calls, 1, PRICE)["total"]["paid_prompt_tokens"] == 2000  # round 1 paid only its own


def test_a_budget_stops_before_sending_once_reached():
    budget = Budget(PRICE, max_cost=1.0)
    budget.check(left=4)  # nothing spent: go on
    budget.charge(Usage(250_000, 50_000))  # $1.00
    with pytest.raises(BudgetExceeded, match=r"\$1\.0000 reached refine.teacher.max_cost \$1\.0000 after 1 paid"):
        budget.check(left=4)


def test_check_budget_counts_what_the_round_already_paid():
    plan = {"round": 2, "paid_so_far": 0.6, "total": {"cost": 0.3, "requests": 3, "cached": 3,
                                                      "prompt_tokens": 10, "completion_tokens": 20}}  # fmt: skip
    budget = check_budget(plan, PRICE, max_cost=1.0)
    assert budget.spent == 0.6 and not budget.reached
    budget.charge(Usage(0, 40_000))  # $0.40 more
    assert budget.reached  # 0.6 paid before + 0.4 now
    with pytest.raises(BudgetExceeded, match=r"\$0\.3000 for 3 requests .* plus \$0\.6000 already paid"):
        check_budget(plan, PRICE, max_cost=0.8)


class _Counting:
    """An in-process teacher that answers with its prompt reversed and counts words as tokens."""

    backend, model = "counting", "counting"

    def __init__(self):
        self.asked: list[str] = []

    def complete(self, prompts, sampling):
        self.asked += prompts
        return [Reply(p[::-1], usage=Usage(len(p.split()), 2)) for p in prompts]


def test_the_cache_stores_usage_and_marks_who_paid(tmp_path):
    import json

    from middo.teachers.base import Sampling
    from middo.teachers.cache import CachedTeacher

    inner = _Counting()
    cache = CachedTeacher(inner, tmp_path, {"backend": "counting"}, "v1", round_=2)
    first, repeat, other = cache.complete(["a b c", "a b c", "d e"], Sampling())
    assert inner.asked == ["a b c", "d e"]  # a greedy repeat is sent once...
    assert (first.paid_round, repeat.paid_round, other.paid_round) == (2, None, 2)  # ...and paid once
    assert repeat.usage == first.usage == Usage(3, 2)
    entries = sorted((json.loads(p.read_text()) for p in tmp_path.glob("??/*.json")), key=lambda e: e["prompt"])
    assert [(e["usage"], e["round"]) for e in entries] == [({"prompt_tokens": 3, "completion_tokens": 2}, 2)] + [
        ({"prompt_tokens": 2, "completion_tokens": 2}, 2)
    ]
    later = CachedTeacher(inner, tmp_path, {"backend": "counting"}, "v1", round_=3).complete(["a b c"], Sampling())
    assert later[0].paid_round == 2 and later[0].usage == Usage(3, 2) and len(inner.asked) == 2  # replayed
    assert usage_report([("op", "rewrite", later[0])], 3, PRICE)["total"]["cached"] == 1
