"""Validation of every teacher-made sample before it enters the dataset: what a model writes is input, not truth.

Small teachers return refusals, echoes of the prompt, labels left in front of (or inside) the answer, steps of the
multi-step rewrite left in the prompt, the question as its own answer (verbatim or with a few words changed), an essay
where a prompt was asked for, and loops of one token. Each rule here is a pure check on strings that names what is
wrong in a short, fixed reason (so reasons can be counted); the engine keeps the original sample when a rule fires.
The instruction-only rules run before the teacher is asked to answer a new instruction, so junk costs no second call.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from difflib import SequenceMatcher

from middo.records import Record
from middo.refine.prompts import echoes_template

# a reply stopped by the token cap (finish reason "length"): its end is missing however well the rest reads
CUT_REASON = "cut at max_new_tokens"
MIN_INSTRUCTION_CHARS = 5
MAX_INSTRUCTION_CHARS = 2000  # or 4x the parent's prompt, whichever is larger
MAX_ANSWER_CHARS = 8000  # or 4x the parent's answer, whichever is larger
# An answer whose words match its instruction's this closely (see `similarity`) is a near copy. Measured on the
# samples of tests/refine/test_validate.py: every accepted pair scores at most 0.667 ("Repeat after me: I love you" ->
# "I love you"; next 0.649, the instruction quoted before an answer of equal length, then 0.545), every verbatim echo
# 0.737-1.0, and the demo's edited greenhouse paragraph 0.880. 0.75 is also what the verbatim rule (`_echoes`)
# allows: a quoted instruction that is 60% of the answer scores 2 * 0.6 / 1.6 = 0.75.
NEAR_COPY_RATIO = 0.75
NEAR_COPY_MIN_WORDS = 8  # below this one changed word moves the ratio by 0.1 or more; `_echoes` covers short copies

# a refusal opens the text; "I cannot" alone is not one ("I cannot sleep; suggest a routine" is a fine instruction)
_REFUSAL = re.compile(
    r"^\W*(?:"
    r"(?:i'?m|i am)\s+(?:so\s+|very\s+|really\s+|truly\s+)?sorry\b"
    r"|sorry,?\s+(?:but\s+)?i\b"
    r"|i\s+apologi[sz]e\b|my\s+apologies\b"
    r"|i\s+(?:cannot|can\s?not|can't|won't|will\s+not|am\s+unable\s+to|'m\s+unable\s+to|am\s+not\s+able\s+to"
    r"|'m\s+not\s+able\s+to|am\s+not\s+allowed\s+to|'m\s+not\s+allowed\s+to)\s+"
    r"(?:help|assist|provide|answer|comply|fulfil|fulfill|do\s+that|do\s+this|create|generate|write|complete"
    r"|rewrite|respond|support|engage|share|give|process|perform|continue|rephrase)\b"
    r"|as\s+an\s+ai\b|as\s+a\s+(?:large\s+)?language\s+model\b"
    r"|unfortunately,?\s+i\s+(?:cannot|can't|can\s?not|am\s+unable|'m\s+unable|am\s+not\s+able)\b"
    r")",
    re.IGNORECASE,
)
# a line that is a label from the rewrite task, anywhere in the text: "The rewritten instruction is:", "Rewrite it
# as:", "Here is the improved response:", or a bare "Instruction:" heading copied from the prompt
_LABEL_LINE = re.compile(
    r"^\W*(?:(?:here\s+is|here's|this\s+is)\s+)?(?:the\s+|a\s+|an\s+|my\s+|your\s+)?"
    r"(?:rewritten|new|improved|simplified|simpler|clearer|revised|updated|original|final|finished)\s+"
    r"(?:instruction|response|answer|prompt|version)s?(?:\s+(?:is|would\s+be|could\s+be))?\s*:"
    r"|^\W*rewrite\s+(?:it|this|that)\s+as\s*:"
    r"|^\W*(?:instruction|response|input)\s*:\s*$",
    re.IGNORECASE | re.MULTILINE,
)
# a heading of the multi-step rewrite ("Step 2 - Plan:", "**Step 4: Final prompt**"): its analysis, not a prompt
_STEP_LINE = re.compile(
    r"^\W*step\s*\d\s*[-:.)#]*\s*#?(?:difficulties|problems|methods|plan|draft|rewritten|final)\b",
    re.IGNORECASE | re.MULTILINE,
)
_TAG = re.compile(r"</?(?:prompt|instruction|response)>", re.IGNORECASE)
# the teacher talking about its own output: "This is a new instruction that requires a self-contained answer."
_REMARK = re.compile(r"^\W*this\s+is\s+an?\s+(?:[\w-]+\s+){0,3}instruction\b", re.IGNORECASE | re.MULTILINE)
# ... or judging the prompt it was given, in the words of our templates (seen in the demo: "The prompt is complete and
# answerable on its own.", "The original prompt is incomplete and does not provide the requested information.")
_PROMPT_REMARK = re.compile(
    r"^\W*(?:this|the|that|my|your)\s+(?:[\w-]+\s+){0,2}prompts?\s+(?:is|was|does|did|has|had|seems|appears|"
    r"requires|asks|contains|can(?:not)?|should|lacks)\b",
    re.IGNORECASE | re.MULTILINE,
)


# What a prompt opens with, in its first or last sentence: a question word or auxiliary, or a task verb (a task verb
# right after a leading clause too: "Given a list, find ..."). An untagged diversify reply needs one of these or a
# question mark; the demo's 135M teacher otherwise returns a paragraph on the topic (an essay, not a prompt). "When"
# and "where" are left out: they open statements ("When water freezes, it expands.") more often than mark-less
# questions.
_QUESTION_WORDS = frozenset(
    "what who whom whose which why how is are was were do does did can could would should will shall may might has "
    "have had".split()
)
_TASK_VERBS = frozenset(
    "add analyse analyze answer arrange assess brainstorm build calculate categorise categorize change check choose "
    "classify combine compare compose compute consider construct convert correct count create critique debug define "
    "demonstrate derive describe design determine develop devise discuss divide draft draw edit elaborate estimate "
    "evaluate explain explore express extract fill find fix formulate generate give given guess identify illustrate "
    "imagine implement improve insert invent justify label let list make match multiply name outline paraphrase pick "
    "plan please predict prepare pretend produce proofread propose prove provide put rank rate read recommend "
    "rephrase replace respond restate reverse review revise rewrite select share show simplify sketch solve sort "
    "specify state subtract suggest summarise summarize suppose take teach tell test think transform translate turn "
    "use verify write".split()
)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def similarity(a: str, b: str) -> float:
    """How much of two texts is the same words in the same order: ``2 * matched / (len(a) + len(b))`` over lower-cased
    word tokens (difflib's ratio, without its junk heuristic), 1.0 for equal texts, 0.0 for texts sharing no word.

    Words rather than characters, so a changed word costs the same whatever its length, and word order counts,
    so an answer that uses the instruction's vocabulary in its own sentences scores low.
    """
    wa, wb = _words(a), _words(b)
    if not wa and not wb:
        return 1.0
    return SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def reads_as_prompt(text: str) -> bool:
    """True when an untagged reply looks like a prompt: it asks a question, or its first or last sentence opens with
    a question word or a task verb (a verb after a leading clause too: "Given a list of numbers, find the largest.").

    A paragraph that only states things ("The greenhouse effect is a phenomenon ...") is not a prompt: answered, it
    comes back restated, and the pair teaches nothing.
    """
    if "?" in text:
        return True
    sentences = [s for s in _SENTENCE_END.split(text.strip()) if s.strip()]
    for sentence in sentences[:1] + sentences[-1:]:
        first, _, rest = sentence.partition(",")
        opening, after_clause = _words(first)[:1], _words(rest)[:1]
        if opening and (opening[0] in _QUESTION_WORDS or opening[0] in _TASK_VERBS):
            return True
        if after_clause and after_clause[0] in _TASK_VERBS:
            return True
    return False


def _plain(text: str) -> str:
    """Lower-cased, curly apostrophes straightened, so the refusal pattern stays readable."""
    return text.replace("\u2019", "'").replace("\u2018", "'").lower()


def degenerate(text: str) -> str | None:
    """Why ``text`` is not language (a line of emoji, one token or phrase looping), or None.

    Measured on distinct characters, the share of the commonest word and repeated word 4-grams: ordinary prose and
    code stay far from each threshold even when long, while a generation loop crosses them quickly.
    """
    chars = [c for c in text if not c.isspace()]
    if len(chars) >= 4 and not any(c.isalnum() for c in chars):
        return "no letters or digits"
    if len(chars) >= 16 and len(set(chars)) <= 3 and not text.strip().isdigit():
        return "one character repeated"
    words = text.lower().split()
    if len(words) >= 6 and Counter(words).most_common(1)[0][1] > len(words) / 2:
        return "one word repeated"
    grams = [tuple(words[i : i + 4]) for i in range(len(words) - 3)]
    if len(words) >= 20 and len(set(grams)) < len(grams) / 2:
        return "a phrase repeated"
    return None


def instruction_reason(
    instruction: str,
    parent: Record,
    template: str,
    *,
    must_differ: bool,
    hints: Sequence[str] = (),
    untagged: bool = False,
) -> str | None:
    """Why a rewritten instruction must not be used, or None; checked before any answer is asked for.

    Args:
        instruction: the teacher's new prompt (already cleaned by :func:`~middo.refine.prompts.parse_prompt`).
        parent: the sample it rewrites or is inspired by.
        template: the prompt the teacher answered, whose wording the instruction must not parrot.
        must_differ: True where a new prompt is the whole point (simplify, diversify); False for ``improve``, whose
            prompt may already be fine when the sample was flagged for its response (the fresh answer is the
            improvement; :func:`reject_reason` then checks that the sample as a whole changed).
        hints: the hint prompts shown to ``diversify``; the new prompt must not be one of them.
        untagged: the instruction is a whole reply without a ``<prompt>`` block (parse status ``fallback``), so
            nothing marked it as a prompt: it must read as one (:func:`reads_as_prompt`).
    """
    if not instruction.strip():
        return "empty instruction"
    if _REFUSAL.match(_plain(instruction)):
        return "refusal in the instruction"
    if echoes_template(instruction, template):
        return "instruction copies the prompt template"
    if _TAG.search(instruction):
        return "tag left in the instruction"
    if _STEP_LINE.search(instruction):
        return "analysis left in the instruction"
    if _LABEL_LINE.search(instruction):
        return "label left in the instruction"
    if _REMARK.search(instruction) or _PROMPT_REMARK.search(instruction):
        return "remark about the task left in the instruction"
    if len(instruction.strip()) < MIN_INSTRUCTION_CHARS:
        return "instruction too short"
    if len(instruction) > max(MAX_INSTRUCTION_CHARS, 4 * len(parent.prompt_text)):
        return "instruction too long"
    bad = degenerate(instruction)
    if bad:
        return f"degenerate instruction ({bad})"
    if must_differ and _norm(instruction) in (_norm(parent.instruction), _norm(parent.prompt_text)):
        return "same instruction as the original"
    if _norm(instruction) in {_norm(h) for h in hints}:
        return "same instruction as a hint prompt"
    if untagged and not reads_as_prompt(instruction):
        return "untagged reply does not read as a prompt"
    return None


def reject_reason(
    instruction: str, input: str, output: str, parent: Record, template: str, *, must_differ: bool
) -> str | None:
    """Why a new sample must not enter the dataset, or None when it may.

    Args:
        instruction: the new sample's instruction.
        input: the new sample's input (a rewrite covers instruction and input together, so a non-empty input that
            is the parent's own, kept beside a changed instruction, is stale).
        output: the new sample's answer.
        parent: the sample it replaces or was inspired by.
        template: the prompts that produced the instruction and the answer, whose wording neither may parrot.
        must_differ: as in :func:`instruction_reason`.
    """
    reason = instruction_reason(instruction, parent, template, must_differ=must_differ)
    if reason:
        return reason
    if not output.strip():
        return "empty answer"
    if _REFUSAL.match(_plain(output)):
        return "refusal in the answer"
    if echoes_template(output, template):
        return "answer copies the prompt template"
    if _TAG.search(output):
        return "tag left in the answer"
    if _PROMPT_REMARK.match(output):
        return "remark about the task instead of an answer"
    if len(output) > max(MAX_ANSWER_CHARS, 4 * len(parent.output)):
        return "answer too long"
    bad = degenerate(output)
    if bad:
        return f"degenerate answer ({bad})"
    if _echoes(output, instruction):
        return "answer repeats the instruction"
    if len(_words(output)) >= NEAR_COPY_MIN_WORDS and similarity(output, instruction) >= NEAR_COPY_RATIO:
        return "answer is a near copy of the instruction"
    if input.strip() and input == parent.input and _norm(instruction) != _norm(parent.instruction):
        return "stale input beside a rewritten instruction"
    if _norm(instruction) in (_norm(parent.instruction), _norm(parent.prompt_text)) and _norm(output) == _norm(
        parent.output
    ):
        return "same as the original"
    return None


def _echoes(answer: str, instruction: str) -> bool:
    """True when the answer is the instruction, or one holds the other verbatim and adds little to it.

    "Little" is under 40% of the longer text, and the held text must be four words or more: a one-word answer
    quoted from a multiple-choice question ("red" in "Red, green or blue?") is a fine answer.
    """
    a, q = _norm(answer), _norm(instruction)
    if a == q:
        return True
    short, long_ = sorted((a, q), key=len)
    return len(short.split()) >= 4 and short in long_ and len(short) >= 0.6 * len(long_)
