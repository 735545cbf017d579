"""Rules of ``refine/validate.py`` that mutation testing (``make mutate``, docs/testing.md) found unguarded: mostly
where a threshold is inclusive, pinned here on the boundary itself."""

import random

from middo.records import Record
from middo.refine.validate import (
    MAX_ANSWER_CHARS,
    MAX_INSTRUCTION_CHARS,
    MIN_INSTRUCTION_CHARS,
    NEAR_COPY_MIN_WORDS,
    NEAR_COPY_RATIO,
    degenerate,
    instruction_reason,
    reads_as_prompt,
    reject_reason,
    similarity,
)

PARENT = Record(id="p", instruction="Tell me about the sea.", output="It is large.")


def _reason(instruction: str, output: str, parent: Record = PARENT) -> str | None:
    return reject_reason(instruction, "", output, parent, "TEMPLATE", must_differ=False)


def _prose(chars: int) -> str:
    """``chars`` characters of ordinary, non-repeating text (no rule but the length one applies)."""
    text = " ".join(f"Point {i} adds a detail." for i in range(chars // 10 + 1))
    return text[:chars]


def test_only_the_first_and_last_sentence_can_make_a_reply_read_as_a_prompt():
    """A task buried in the middle of statements is how an essay mentions a task, not how a prompt sets one."""
    assert not reads_as_prompt("The Nile is long. Explain its floods to children. It flows north.")
    assert reads_as_prompt("The Nile is long. It flows north. Explain its floods to children.")


def test_similarity_keeps_frequent_words():
    """difflib's autojunk would drop every word that fills over 1% of a 200+ word text, and with it the match."""
    rng = random.Random(0)
    words = [rng.choice("the a of and to in is it that was".split()) for _ in range(250)]
    shifted = ["so", *words[:100], *words[101:]]
    assert similarity(" ".join(words), " ".join(shifted)) > 0.99


def test_the_answer_length_limit_is_inclusive_and_scales_with_the_parent():
    assert _reason("Write a long report.", _prose(MAX_ANSWER_CHARS)) is None
    assert _reason("Write a long report.", _prose(MAX_ANSWER_CHARS + 1)) == "answer too long"
    long_parent = Record(id="q", instruction="Write a long report.", output=_prose(2500))
    assert _reason("Write a longer report.", _prose(10000), long_parent) is None  # 4 x 2500
    assert _reason("Write a longer report.", _prose(10001), long_parent) == "answer too long"


def test_a_near_copy_is_caught_from_eight_words_and_at_the_ratio_itself():
    # 8 words, 7 of them the instruction's, in order: 2 * 7 / (8 + 9) = 0.82
    instruction = "Describe the water cycle in simple terms for children"
    assert NEAR_COPY_MIN_WORDS == 8
    assert _reason(instruction, "describe the water cycle in simple terms please") == (
        "answer is a near copy of the instruction"
    )
    # 8 words each, 6 shared in order: 2 * 6 / 16 = 0.75 exactly
    instruction, output = "Write a short poem about the quiet sea", "Write a short poem about the loud ocean"
    assert similarity(instruction, output) == NEAR_COPY_RATIO
    assert _reason(instruction, output) == "answer is a near copy of the instruction"


def test_a_verbatim_echo_is_found_whichever_text_sorts_first():
    """The shorter text is looked for in the longer one, by length, not by alphabetical order."""
    instruction = "What is the boiling point of water at sea level?"
    assert _reason(instruction, "Answer: what is the boiling point of water at sea level?") == (
        "answer repeats the instruction"
    )


def test_a_verbatim_echo_counts_from_four_words_and_sixty_percent_inclusive():
    assert _reason("Name three primary colours", "Name three primary colours now") == "answer repeats the instruction"
    # the held text is exactly 60% of the longer one: 15 of 25 characters
    assert _reason("Add two and two", "Add two and two equals 4.") == "answer repeats the instruction"


def test_similarity_of_texts_without_words():
    """Equal texts score 1.0 even with no word in them; a text without words shares none with one that has some."""
    assert similarity("", "") == 1.0 and similarity("!!", "?") == 1.0
    assert similarity("", "some words") == 0.0 and similarity("some words", "...") == 0.0


def test_degenerate_thresholds_are_inclusive():
    """Each threshold of :func:`degenerate` on both sides of its boundary."""
    assert degenerate("!?!?") == "no letters or digits" and degenerate("!?!") is None  # 4 characters
    assert degenerate("abcabcabcabcabca") == "one character repeated"  # 16 characters, 3 distinct
    assert degenerate("abcabcabcabcabc") is None  # 15
    assert degenerate("abcdabcdabcdabcd") is None  # 4 distinct
    assert degenerate("go go go go now please") == "one word repeated"  # 6 words, 4 the same
    assert degenerate("go go go now please") is None  # 5 words
    assert degenerate("go go go now please stop") is None  # exactly half is not more than half
    loop = "alpha beta " * 10  # 20 words, 2 distinct 4-grams of 17
    assert degenerate(loop) == "a phrase repeated" and degenerate("omega " + "alpha beta " * 9) is None  # 19 words


def test_a_phrase_loop_is_counted_in_four_word_windows():
    """20 words, 6 distinct then a 2-word loop: 8 distinct 4-grams of 17, under half; 21 words: 9 of 18, not under."""
    six = "gamma delta epsilon zeta eta theta "
    assert degenerate(six + "alpha beta " * 7) == "a phrase repeated"
    assert degenerate(six + "iota " + "alpha beta " * 7) is None
    assert degenerate("gamma delta epsilon zeta " + "alpha beta " * 8) == "a phrase repeated"  # 6 of 17


def test_the_instruction_length_limits_are_inclusive_and_scale_with_the_parent():
    def reason(instruction, parent=PARENT):
        return instruction_reason(instruction, parent, "TEMPLATE", must_differ=False)

    assert MIN_INSTRUCTION_CHARS == 5
    assert reason("Smile") is None and reason("Sing") == "instruction too short"
    assert reason(_prose(MAX_INSTRUCTION_CHARS)) is None
    assert reason(_prose(MAX_INSTRUCTION_CHARS + 1)) == "instruction too long"
    long_parent = Record(id="q", instruction=_prose(600), output="ok")
    assert reason(_prose(2400), long_parent) is None  # 4 x 600
    assert reason(_prose(2401), long_parent) == "instruction too long"


def test_a_refusal_typed_with_curly_apostrophes_is_still_a_refusal():
    """Chat models often write U+2019 (and sometimes U+2018) where an apostrophe goes."""
    for quote in ("\u2019", "\u2018"):
        text = f"I{quote}m sorry, but I can{quote}t rewrite this prompt."
        assert instruction_reason(text, PARENT, "TEMPLATE", must_differ=False) == "refusal in the instruction"
