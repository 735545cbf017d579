"""Teacher prompts for the three refinement operations, and the parser for their replies.

The operations follow the Middo reference in structure (the wording is ours): ``simplify`` and ``improve`` make the
teacher reason in four steps (what is wrong, a plan, a draft, the final prompt) before committing to a rewrite,
``diversify`` shows the sparse sample as the core prompt with its nearest neighbours as hints and asks for one new,
original prompt, and every new prompt is then answered afresh through ``ANSWER``. Only prompts are rewritten: the
parent's instruction and input become one new prompt, and its response is never shown (a new prompt needs a new
answer, not a patched old one).

The final prompt must sit between ``<prompt>`` tags, because a multi-step reply is mostly analysis: the parser takes
the last tagged block and never the reply as a whole, so analysis cannot leak into a dataset. Parsing only extracts:
whether the extracted text is fit for the dataset is :mod:`middo.refine.validate`'s call.

With structured output on, rewrites are asked as JSON matching ``REWRITE_SCHEMA``: an ``analysis`` field first, so
that a server which constrains decoding to the schema (vLLM's guided decoding) still lets the teacher work through
its steps before it commits, then the ``prompt``. The parser reads such a reply's ``prompt`` and keeps reading
tagged text, for the servers and backends that ignore the schema.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence

SIMPLIFY = """You are preparing training data for small open-source language models. The prompt below is too hard
for such a model to learn from. Rewrite it into an easier prompt with the same intent: one from which a weaker model
can learn the underlying skill instead of memorising an answer.

Prompt to simplify:
{prompt}

Work through these steps, each under its own heading:
Step 1 - Difficulties: say what makes the prompt hard (length, jargon, several tasks at once, missing context and so
on) and list ways to make it easier.
Step 2 - Plan: choose several of those ways and lay out, step by step, how you will apply them.
Step 3 - Draft: rewrite the prompt by following your plan. The scenario, setting and details may change; the intent
stays.
Step 4 - Final prompt: check the draft for remaining problems, then write the finished prompt between <prompt> and
</prompt>. It must stand on its own, so put any text it refers to inside it. Do not answer it, and write nothing
after </prompt>."""

IMPROVE = """You are preparing training data for small open-source language models. The prompt below is a poor
training example: it may be unclear, ambiguous, incomplete, badly written or factually wrong. Rewrite it into a
high-quality prompt with the same intent, one that a weaker model can learn well from.

Prompt to improve:
{prompt}

Work through these steps, each under its own heading:
Step 1 - Problems: say why the prompt is of poor quality and list ways to fix each problem.
Step 2 - Plan: choose several of those ways and lay out, step by step, how you will apply them.
Step 3 - Draft: rewrite the prompt by following your plan.
Step 4 - Final prompt: check the draft for remaining problems, then write the finished prompt between <prompt> and
</prompt>. It must stand on its own, so put any text it refers to inside it. Do not answer it, and write nothing
after </prompt>."""

DIVERSIFY = """You are preparing training data for small open-source language models. The core prompt below comes
from a sparsely covered part of the training set; the hint prompts, where shown, are the prompts in the set most
similar to it. Taking them as examples of the area, write ONE brand-new prompt that is original and unlike every
prompt shown, so that a model trained on it learns knowledge or skills the set lacks.

{hints}Core prompt:
{prompt}

The new prompt must be complete and answerable on its own. Write only the new prompt, between <prompt> and
</prompt>, and do not answer it."""

HINT = "Hint prompt {number}:\n{prompt}\n\n"  # one per neighbour, most similar first

# A rewrite reply as JSON (structured output). Strict-mode rules: every property required, no others.
REWRITE_SCHEMA = {
    "title": "rewrite",
    "type": "object",
    "properties": {
        "analysis": {"type": "string", "description": "Your working, step by step, before the final prompt."},
        "prompt": {"type": "string", "description": "The final prompt alone, complete and unanswered."},
    },
    "required": ["analysis", "prompt"],
    "additionalProperties": False,
}

ANSWER = """Respond to the prompt below with a comprehensive, accurate and high-quality answer.

{prompt}"""

REWRITE = {"simplify": SIMPLIFY, "diversify": DIVERSIFY, "improve": IMPROVE}
TEMPLATES = (SIMPLIFY, DIVERSIFY, IMPROVE, HINT, ANSWER)  # everything that shapes a prompt the teacher sees


def template_version(templates: Sequence[str] = TEMPLATES) -> str:
    """A short hash of the templates' text, part of every teacher cache key: editing any of them must never replay
    replies to the old wording."""
    return hashlib.sha256("\x1f".join(templates).encode()).hexdigest()[:16]


TEMPLATE_VERSION = template_version()


def rewrite_prompt(op: str, prompt: str, hints: Sequence[str] = ()) -> str:
    """The first call of ``op`` for a parent whose prompt (instruction and input) is ``prompt``.

    Args:
        op: ``simplify``, ``diversify`` or ``improve``.
        prompt: the parent's prompt text; its response is never shown.
        hints: the prompt texts of the parent's nearest neighbours (diversify only), most similar first.
    """
    if op == "diversify":
        shown = "".join(HINT.format(number=i, prompt=h) for i, h in enumerate(hints, 1))
        return DIVERSIFY.format(hints=shown, prompt=prompt)
    if hints:
        raise ValueError(f"{op}: hint prompts are for diversify only")
    return REWRITE[op].format(prompt=prompt)


def rewrite_schema() -> str:
    """``REWRITE_SCHEMA`` as the JSON text a :class:`~middo.teachers.base.Sampling` carries (keys in their order:
    constrained decoding writes the properties in the order given, so ``analysis`` comes before ``prompt``)."""
    return json.dumps(REWRITE_SCHEMA)


def answer_prompt(prompt: str) -> str:
    """The second call: a fresh answer to a new prompt."""
    return ANSWER.format(prompt=prompt)


_FENCE = re.compile(r"^```[\w-]*\s*\n?|\n?```\s*$")
_PREAMBLE = re.compile(r"^(sure|certainly|here(?:'s| is| are)|of course|okay|ok)\b[^\n]*[:.!]\s*\n", re.IGNORECASE)
# "The rewritten instruction is: "..."", "Final prompt:" -- a label in front of the answer, often quoted
_LABEL = re.compile(
    r"^(?:the\s+)?(?:(?:rewritten|new|improved|simplified|simpler|clearer|final|finished)\s+){1,2}"
    r"(?:instruction|response|answer|prompt)(?:\s+(?:is|would be))?\s*:\s*",
    re.IGNORECASE,
)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d"}
_OPEN, _CLOSE = re.compile(r"<prompt>", re.IGNORECASE), re.compile(r"</prompt>", re.IGNORECASE)


def clean(text: str, strip_fences: bool = True) -> str:
    """Strip a one-line conversational preamble, a leading label ("Rewritten instruction: ...", with the quotes
    around a quoted answer) and (for prompts) code fences around the whole text.

    Answers keep their fences: a code answer is markdown, and the fence is part of what the student should learn.
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


def parse_prompt(reply: str | None, *, fallback: bool) -> tuple[str | None, str]:
    """Extract the new prompt from a rewrite reply: its JSON ``prompt`` field (structured output), or the text of its
    last ``<prompt>...</prompt>`` block.

    The last block, because a reply may mention the tag (or tag a draft) before its final answer. Without a closed
    block, ``fallback`` decides: True (``diversify``, whose reply is meant to be the prompt alone) uses the cleaned
    reply, False (the multi-step operations, whose reply is mostly analysis) calls it unparseable, so the analysis
    can never become a prompt. A JSON ``prompt`` that still holds a tagged block (the template asks for tags) gives
    that block.

    Returns:
        ``(prompt, status)``: status ``ok`` (tagged, or the JSON field), ``fallback`` (untagged, must be validated
        like any other value), or ``failed`` (no reply: the call failed) / ``unparseable``, each with a short reason
        after a colon and the prompt ``None``.
    """
    if reply is None:
        return None, "failed: no reply (call failed)"
    if not reply.strip():
        return None, "unparseable: empty reply"
    structured = _json_reply(reply)
    if structured is not None:
        return structured
    closes = list(_CLOSE.finditer(reply))
    if closes:
        end = closes[-1].start()
        opens = [m for m in _OPEN.finditer(reply, 0, end)]
        if not opens:
            return None, "unparseable: </prompt> without <prompt>"
        text = clean(reply[opens[-1].end() : end])
        return (text, "ok") if text else (None, "unparseable: empty <prompt>")
    opens = list(_OPEN.finditer(reply))
    if opens:
        if not fallback:
            return None, "unparseable: <prompt> never closed (reply cut off?)"
        text = clean(reply[opens[-1].end() :])
        return (text, "fallback") if text else (None, "unparseable: empty <prompt>")
    if not fallback:
        return None, "unparseable: no <prompt> block"
    text = clean(reply)
    return (text, "fallback") if text else (None, "unparseable: empty reply")


_SCHEMA_START = re.compile(r'\{\s*"(?:' + "|".join(REWRITE_SCHEMA["properties"]) + r')"\s*:')  # REWRITE_SCHEMA's start


def _json_reply(reply: str) -> tuple[str | None, str] | None:
    """``parse_prompt``'s answer for a JSON object reply, or None when the reply is not one (read it as text).

    A reply that starts like ``REWRITE_SCHEMA`` but is not valid JSON was cut off (``max_new_tokens``) or mangled;
    any other text that is not JSON, a free-text prompt about JSON included, is left to the tagged-text rules.
    """
    text = _FENCE.sub("", reply.strip()).strip()  # a ```json fence, from a server that ignored response_format
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return (None, "unparseable: JSON reply cut off or malformed") if _SCHEMA_START.match(text) else None
    if not isinstance(data, dict):
        return None
    value = data.get("prompt")
    if not isinstance(value, str):
        return None, 'unparseable: JSON reply without a "prompt" string'
    closes = list(_CLOSE.finditer(value))
    opens = list(_OPEN.finditer(value, 0, closes[-1].start())) if closes else []
    if opens:
        value = value[opens[-1].end() : closes[-1].start()]
    text = clean(_OPEN.sub("", _CLOSE.sub("", value)) if not opens else value)
    return (text, "ok") if text else (None, 'unparseable: empty "prompt" in the JSON reply')


def _trigrams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"\w+", text.lower())
    return {tuple(words[i : i + 3]) for i in range(len(words) - 2)}


def echoes_template(value: str, template: str) -> bool:
    """True when ``value`` is mostly the prompt's own wording (small teachers often parrot the task description).

    Measured on word trigrams of the template's fixed text (placeholders removed), so a rewrite that merely shares
    a topic word with the instructions is not caught, while "The prompt below is too hard ..." is.
    """
    grams = _trigrams(value)
    if not grams:
        return False
    fixed = _trigrams(re.sub(r"\{\w+\}", " ", template))
    return len(grams & fixed) / len(grams) >= 0.5
