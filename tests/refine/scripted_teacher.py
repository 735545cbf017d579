"""A scripted teacher that writes well-formed replies, as a capable teacher would, so every success path runs.

It reads what each request shows (the operation, the prompt, the hint prompts), answers a rewrite with the four
analysis steps and a tagged final prompt (or, for diversify, a tagged new prompt), and answers an answer request
with a fixed good answer. The same function serves in-process (:class:`ScriptedTeacher`) and over real HTTP (the
``chat_server`` fixture), and ``overrides`` turn chosen requests into failures or junk.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from middo.refine import prompts

MARKERS = {"simplify": "Prompt to simplify:\n", "improve": "Prompt to improve:\n", "diversify": "Core prompt:\n"}
ANSWER_HEAD = prompts.ANSWER.split("{prompt}")[0]
NEW_PROMPT = {  # parent's prompt -> the new prompt the script writes for it
    "simplify": lambda p: "In plain words: " + " ".join(p.split()),
    "improve": lambda p: "Clearly and completely: " + " ".join(p.split()),
    "diversify": lambda p: "Invent a fresh question on a topic unlike this one: " + " ".join(p.split()),
}


def answer_to(prompt: str) -> str:
    """The script's answer to a new prompt: well formed, and distinct per prompt."""
    return (
        "A complete answer in three parts: the key idea, a worked example and a short summary "
        f"(answer {hashlib.sha256(prompt.encode()).hexdigest()[:8]})."
    )


@dataclass(frozen=True)
class Request:
    """What one teacher request shows: ``op`` is ``answer`` for the second call."""

    op: str
    prompt: str
    hints: tuple[str, ...] = ()


def read_request(message: str) -> Request:
    """Take a request apart by the templates' own text (so a template change cannot silently fool the script)."""
    if message.startswith(ANSWER_HEAD):
        return Request("answer", message[len(ANSWER_HEAD) :])
    for op, template in prompts.REWRITE.items():
        tail = template.rsplit("{prompt}", 1)[1]
        assert MARKERS[op] in template, f"the script's marker for {op} is not in its template any more"
        if message.endswith(tail) and MARKERS[op] in message:
            head, prompt = message[: -len(tail)].rsplit(MARKERS[op], 1)
            hints = tuple(re.findall(r"Hint prompt \d+:\n(.*?)\n\n", head, re.DOTALL))
            return Request(op, prompt, hints)
    raise AssertionError(f"not a request the templates make: {message[:200]!r}")


def well_formed(request: Request) -> str:
    """The reply of a capable teacher to ``request``."""
    if request.op == "answer":
        return answer_to(request.prompt)
    new = NEW_PROMPT[request.op](request.prompt)
    if request.op == "diversify":
        return f"<prompt>{new}</prompt>"
    return (
        "Step 1 - Difficulties: the prompt packs several ideas together.\n"
        "Step 2 - Plan: keep the core task and say it plainly.\n"
        f"Step 3 - Draft: {new}\n"
        f"Step 4 - Final prompt:\n<prompt>{new}</prompt>"
    )


Overrides = Mapping[tuple[str, str], str | None]


def script(overrides: Overrides | None = None) -> Callable[[str], str | None]:
    """A reply function. ``overrides`` maps ``(op, text)`` to a reply: the first whose op is the request's and whose
    text is in the shown prompt wins (``None``: the call fails); ``op`` is an operation or ``answer``."""
    overrides = dict(overrides or {})

    def reply(message: str) -> str | None:
        request = read_request(message)
        for (op, text), value in overrides.items():
            if op == request.op and text in request.prompt:
                return value
        return well_formed(request)

    return reply


class ScriptedTeacher:
    """In-process teacher answering with :func:`script`; records every request it was shown, in order."""

    backend, model = "scripted", "scripted"

    def __init__(self, overrides: Overrides | None = None):
        self.reply = script(overrides)
        self.asked: list[str] = []
        self.calls: list[list[str]] = []  # one list per complete() call

    def complete(self, batch, sampling):
        self.asked += batch
        self.calls.append(list(batch))
        return [self.reply(m) for m in batch]
