"""What the teacher's replies cost: tokens per call, summed per operation, priced, and a budget that stops a run.

At API scale a round is tens of thousands of requests, so every reply keeps the tokens it took (the server's
``usage``; a local backend counts them with its own tokenizer) in its cache entry, and the round's report sums them.
A reply is paid by the round that first asked for it: a reply replayed from a cache entry that another round wrote
(a greedy reply is shared across rounds) is free in this round's cost and shown as ``cached``, while one written by
this same round (a run stopped by its budget, or killed, then resumed) stays this round's. So the round's figures do
not depend on how many attempts it took, and DVC sees the same metrics from a warm and a cold run.

A cache entry written before usage was recorded has no token counts: it counts as 0 tokens, under ``unknown_usage``,
never as an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from middo.errors import MiddoError

PER = 1_000_000  # prices are quoted in dollars per million tokens


@dataclass(frozen=True)
class Usage:
    """Tokens one reply took: the prompt as the server counted it (chat formatting included) and the completion."""

    prompt_tokens: int
    completion_tokens: int

    def to_json(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}

    @classmethod
    def from_json(cls, raw: object) -> Usage | None:
        """The usage in a cache entry or an API reply (``None`` when absent or not two non-negative counts, as in
        entries written before usage was recorded, or a server that sends none)."""
        if isinstance(raw, Mapping):
            p, c = raw.get("prompt_tokens"), raw.get("completion_tokens")
        else:  # the openai client's CompletionUsage object
            p, c = getattr(raw, "prompt_tokens", None), getattr(raw, "completion_tokens", None)
        ok = all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (p, c))
        return cls(p, c) if ok else None


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens, prompt (``input``) and completion (``output``), as providers quote them."""

    input: float
    output: float

    def cost(self, usage: Usage | None) -> float:
        if usage is None:
            return 0.0
        return (usage.prompt_tokens * self.input + usage.completion_tokens * self.output) / PER

    def scaled(self, factor: float) -> Price:
        """This price times ``factor``, e.g. 0.5 for the Batch API's half price."""
        return Price(self.input * factor, self.output * factor)


def reply_usage(reply: object) -> Usage | None:
    """The usage a reply carries (a :class:`~middo.teachers.base.Reply`), ``None`` for a plain string."""
    return getattr(reply, "usage", None)


def paid_in(reply: object, round_: int) -> bool:
    """True when ``reply`` counts in round ``round_``'s cost: sent by it, or replayed from an entry it wrote."""
    return getattr(reply, "paid_round", None) == round_


@dataclass
class Bucket:
    """Sums over a group of teacher calls.

    Attributes:
        requests: calls that got a reply (sent now or replayed from the cache).
        cached: of those, replies another round paid for (free here).
        failed: calls without a reply (not charged).
        unknown_usage: replies whose token counts are unknown (entries written before usage was recorded): 0 tokens.
        prompt_tokens: prompt tokens of every reply, cached ones included (what the round's data took).
        completion_tokens: likewise for completions.
        paid_prompt_tokens: prompt tokens of the replies this round paid for.
        paid_completion_tokens: likewise for completions.
    """

    requests: int = 0
    cached: int = 0
    failed: int = 0
    unknown_usage: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    paid_prompt_tokens: int = 0
    paid_completion_tokens: int = 0

    def add(self, reply: object, round_: int) -> None:
        if reply is None:
            self.failed += 1
            return
        self.requests += 1
        usage = reply_usage(reply)
        if usage is None:
            self.unknown_usage += 1
            usage = Usage(0, 0)
        self.prompt_tokens += usage.prompt_tokens
        self.completion_tokens += usage.completion_tokens
        if paid_in(reply, round_):
            self.paid_prompt_tokens += usage.prompt_tokens
            self.paid_completion_tokens += usage.completion_tokens
        else:
            self.cached += 1

    def merge(self, other: Bucket) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_json(self, price: Price | None) -> dict:
        out: dict = dict(self.__dict__)
        if price is not None:
            out["cost"] = round(price.cost(Usage(self.paid_prompt_tokens, self.paid_completion_tokens)), 6)
            free = Usage(
                self.prompt_tokens - self.paid_prompt_tokens, self.completion_tokens - self.paid_completion_tokens
            )
            out["cached_cost"] = round(price.cost(free), 6)  # what the cached replies would have cost: not charged
        return out


def usage_report(calls: Iterable[tuple[str, str, object]], round_: int, price: Price | None) -> dict:
    """Tokens and cost of one round's teacher calls, per operation and step, with totals.

    Args:
        calls: ``(operation, step, reply)`` per call, e.g. ``("simplify", "rewrite", reply)``; ``reply`` is ``None``
            for a failed call.
        round_: the round asking: replies it did not pay for count as cached (free).
        price: dollars per million tokens, or ``None`` when unset (tokens only, no ``cost``).

    Returns:
        ``{"price": {...} | None, "total": bucket, "operations": {op: {"total": bucket, step: bucket, ...}}}``, each
        bucket a :class:`Bucket` as JSON plus ``cost`` and ``cached_cost`` in dollars when ``price`` is set.
    """
    ops: dict[str, dict[str, Bucket]] = {}
    for op, step, reply in calls:
        ops.setdefault(op, {}).setdefault(step, Bucket()).add(reply, round_)
    total = Bucket()
    operations = {}
    for op, steps in ops.items():
        op_total = Bucket()
        for bucket in steps.values():
            op_total.merge(bucket)
        total.merge(op_total)
        operations[op] = {"total": op_total.to_json(price), **{s: b.to_json(price) for s, b in steps.items()}}
    return {
        "price": None if price is None else {"input": price.input, "output": price.output},
        "total": total.to_json(price),
        "operations": operations,
    }


class BudgetExceeded(MiddoError):
    """The round's teacher cost reached ``refine.teacher.max_cost``; the replies so far are in the cache."""


class Budget:
    """The most a round may spend on its teacher, and what it has spent so far (earlier attempts included).

    Attributes:
        price: dollars per million tokens.
        max_cost: the limit in dollars.
        spent: dollars this round has paid, starting from what earlier attempts of it paid.
        sent: replies charged since this object was made.
    """

    def __init__(self, price: Price, max_cost: float, spent: float = 0.0):
        if not (max_cost >= 0 and math.isfinite(max_cost)):
            raise MiddoError(f"Budget: max_cost must be a finite number >= 0, got {max_cost}")
        self.price = price
        self.max_cost = max_cost
        self.spent = spent
        self.sent = 0

    def charge(self, usage: Usage | None) -> None:
        self.spent += self.price.cost(usage)
        self.sent += 1

    @property
    def reached(self) -> bool:
        return self.spent >= self.max_cost

    def check(self, left: int) -> None:
        """Stop the run once the budget is reached; called before each request (or chunk of them) is sent, so a
        round overshoots by at most the chunk in flight when the budget was reached, and one that reaches it with
        its last reply still completes.

        Args:
            left: requests about to be sent, for the message.

        Raises:
            BudgetExceeded: ``spent >= max_cost``, naming both, the replies charged and those left.
        """
        if self.reached:
            raise BudgetExceeded(
                f"teacher cost ${self.spent:.4f} reached refine.teacher.max_cost ${self.max_cost:.4f} after "
                f"{self.sent} paid replies in this run ({left} requests not sent). The replies "
                "so far are in the teacher cache and nothing was written for this round: raise "
                "refine.teacher.max_cost and run again to resume without paying for them twice."
            )
