"""Teacher prompts and the parser for their replies.

Each prompt asks for the result between explicit tags, because teachers (small local ones especially) add chatter,
code fences and preambles. The parser takes the tagged text when present, falls back to the cleaned reply for
single-field answers, and otherwise says the reply is unparseable, so the caller keeps the original and counts it.
"""

from __future__ import annotations

import re

SIMPLIFY = """The following instruction is too hard or convoluted for a student model to learn from.
Rewrite it as a clearer, simpler instruction that keeps the same intent and topic. Do not answer it.

Instruction:
{prompt}

Write only the rewritten instruction between <instruction> and </instruction>."""

DIVERSIFY = """Here is an instruction from a training set for an AI assistant. It comes from a rare area.
Write one NEW instruction in the same domain but on a different topic or in a different form (for example a
different task type, question or scenario). It must be self-contained and answerable. Do not answer it.

Instruction:
{prompt}

Write only the new instruction between <instruction> and </instruction>."""

IMPROVE = """Here is a training example for an AI assistant whose quality is poor.
Rewrite it so that the instruction is clear and complete and the response is correct, complete, well written
and directly answers the instruction. Fix every factual error.

Instruction:
{prompt}

Response:
{response}

Write the improved instruction between <instruction> and </instruction>, then the improved response between
<response> and </response>."""

ANSWER = "{prompt}"  # a fresh response is simply the teacher's answer to the (new) instruction

_FENCE = re.compile(r"^```[\w-]*\s*\n?|\n?```\s*$")
_PREAMBLE = re.compile(r"^(sure|certainly|here(?:'s| is| are)|of course|okay|ok)\b[^\n]*[:.!]\s*\n", re.IGNORECASE)
# "The rewritten instruction is: "..."" -- a label in front of the answer, the answer often in quotes
_LABEL = re.compile(
    r"^(?:the\s+)?(?:rewritten|new|improved|simplified|simpler|clearer)\s+(?:instruction|response|answer)"
    r"(?:\s+(?:is|would be))?\s*:\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d"}


def _tagged(text: str, tag: str) -> str | None:
    m = re.search(rf"<{tag}>\s*(.*?)\s*(?:</{tag}>|<\w+>|$)", text, re.DOTALL | re.IGNORECASE)
    return m.group(1).strip() if m else None


def clean(text: str, strip_fences: bool = True) -> str:
    """Strip a one-line conversational preamble, a leading label ("Rewritten instruction: ...", with the quotes
    around a quoted answer) and (for instructions) code fences around the whole reply.

    Responses keep their fences: a code answer is markdown, and the fence is part of what the student should learn.
    """
    text = (text or "").strip()
    text = _PREAMBLE.sub("", text, count=1).strip()
    labelled = _LABEL.match(text)
    if labelled:
        text = text[labelled.end() :].strip()
        close = _QUOTES.get(text[:1])
        inner = text[1:]
        if close and close not in inner.removesuffix(close):  # the whole answer is one quoted span (or cut off)
            text = inner.removesuffix(close).strip()
    return _FENCE.sub("", text).strip() if strip_fences else text


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def echoes_template(value: str, template: str) -> bool:
    """True when ``value`` is mostly the prompt's own wording (small teachers often parrot the task description).

    Measured on word trigrams of the template's fixed text (placeholders removed), so a rewrite that merely shares
    a topic word with the instructions is not caught, while "The instruction is too hard ..." is.
    """
    grams = _trigrams(value)
    if not grams:
        return False
    fixed = _trigrams(re.sub(r"\{\w+\}", " ", template))
    return len(grams & fixed) / len(grams) >= 0.5


def parse_fields(
    reply: str | None, fields: tuple[str, ...], template: str | None = None
) -> tuple[dict[str, str] | None, str]:
    """Extract ``fields`` from a teacher reply.

    Returns ``(values, status)``: status ``ok`` (all tags found), ``fallback`` (single field, no tag: the cleaned
    reply is used), or ``unparseable`` with a short reason after a colon (values ``None``). With ``template`` (the
    prompt the reply answers), a value that mostly repeats the template's own wording is unparseable too.
    """
    values, status = _parse(reply, fields)
    if values is not None and template is not None:
        echoed = [f for f, v in values.items() if echoes_template(v, template)]
        if echoed:
            return None, f"unparseable: <{'>, <'.join(echoed)}> repeats the prompt"
    return values, status


def _parse(reply: str | None, fields: tuple[str, ...]) -> tuple[dict[str, str] | None, str]:
    if reply is None:
        return None, "unparseable: no reply (call failed)"
    if not reply.strip():
        return None, "unparseable: empty reply"
    values = {f: clean(_tagged(reply, f) or "", strip_fences=f != "response") for f in fields}
    if all(values.values()):
        return values, "ok"
    if len(fields) == 1 and f"<{fields[0]}" not in reply.lower():
        text = clean(reply)
        return ({fields[0]: text}, "fallback") if text else (None, "unparseable: empty reply")
    missing = [f for f, v in values.items() if not v]
    return None, f"unparseable: missing <{'>, <'.join(missing)}>"
