"""Each validation rule on hand-made strings: one sample it must reject, one good sample it must let through.

The junk strings are the shapes the demo's 135M teacher really produced on Alpaca data.
"""

import pytest

from middo.records import Record
from middo.refine.prompts import ANSWER, DIVERSIFY, IMPROVE, SIMPLIFY
from middo.refine.validate import degenerate, instruction_reason, reject_reason

PARENT = Record(
    id="p",
    instruction="Rewrite the following sentence in the passive voice.",
    input="The frog crossed the road.",
    output="The road was crossed by the frog.",
)
GOOD_Q = "Put this sentence into the passive voice: the frog crossed the road."
GOOD_A = "The road was crossed by the frog."


def _reason(instruction=GOOD_Q, output=GOOD_A, input="", parent=PARENT, template=SIMPLIFY, must_differ=True):
    return reject_reason(instruction, input, output, parent, template, must_differ=must_differ)


def test_a_good_sample_passes_every_rule():
    assert _reason() is None
    assert _reason(template=DIVERSIFY) is None
    assert _reason(instruction=PARENT.instruction, output="The road was crossed by a frog.", template=IMPROVE,
                   must_differ=False) is None  # fmt: skip


@pytest.mark.parametrize(
    "instruction,output,reason",
    [
        ("", GOOD_A, "empty instruction"),
        ("   \n", GOOD_A, "empty instruction"),
        (GOOD_Q, "", "empty answer"),
        (GOOD_Q, " \n ", "empty answer"),
    ],
)
def test_empty(instruction, output, reason):
    assert _reason(instruction, output) == reason


@pytest.mark.parametrize(
    "instruction,output,reason",
    [
        ("I'm sorry, but I can't help with that.", GOOD_A, "refusal in the instruction"),
        ("I\u2019m sorry, I cannot rewrite this.", GOOD_A, "refusal in the instruction"),
        ("I cannot help with rewriting instructions.", GOOD_A, "refusal in the instruction"),
        ("As an AI language model, I do not rewrite text.", GOOD_A, "refusal in the instruction"),
        (GOOD_Q, "I can't help with that.", "refusal in the answer"),
        (GOOD_Q, "Sorry, but I am unable to answer.", "refusal in the answer"),
        (GOOD_Q, "I apologize, but that is not possible.", "refusal in the answer"),
        (GOOD_Q, "As an AI, I have no opinion on frogs.", "refusal in the answer"),
    ],
)
def test_refusals(instruction, output, reason):
    assert _reason(instruction, output) == reason


def test_a_sentence_starting_with_i_cannot_is_not_a_refusal():
    assert (
        _reason("I cannot sleep at night; suggest a calming evening routine.", "Dim the lights an hour early.") is None
    )
    assert _reason(GOOD_Q, "I'm glad you asked: the road was crossed by the frog.") is None


def test_copies_of_the_template():
    parrot = "The prompt below is too hard for such a model to learn from."  # a sentence of SIMPLIFY
    assert _reason(parrot) == "instruction copies the prompt template"
    parrot_answer = "Respond to the prompt below with a comprehensive, accurate and high-quality answer."
    assert _reason(template=IMPROVE + ANSWER, must_differ=False, output=parrot_answer) == (
        "answer copies the prompt template"
    )
    shares_words = "Write a simpler instruction for a student: explain what the passive voice is."
    assert _reason(shares_words) is None


@pytest.mark.parametrize(
    "instruction",
    [
        "Rewrite it as:\n\nInvent a new word for a frog that crosses roads.",
        "Invent a new word.\n\nThe rewritten instruction is:\nThe frog crossed the road",
        "Describe a frog.\nNew instruction: describe a toad.",
        "Here is the improved response:\nFrogs are amphibians.",
        "Describe frogs.\n\nInstruction:\nDescribe toads.",
        "Rewrite this as: a question about frogs",
    ],
)
def test_label_residue_in_the_instruction(instruction):
    assert _reason(instruction) == "label left in the instruction"


@pytest.mark.parametrize(
    "instruction",
    [
        "Step 1 - Difficulties: the prompt uses jargon.\nStep 2 - Plan: define the terms.",
        "Describe a frog.\n\n**Step 4 - Final prompt:** Describe a toad.",
        "Step 3: Draft\nName three frogs.",
    ],
)
def test_analysis_of_the_multi_step_rewrite_in_the_instruction(instruction):
    assert _reason(instruction) == "analysis left in the instruction"


def test_numbered_steps_of_an_ordinary_prompt_are_fine():
    recipe = "Put these steps in order.\nStep 1: boil the water.\nStep 2: add the pasta."
    assert _reason(recipe, "Boil the water, then add the pasta.") is None


def test_tags_in_the_instruction():
    assert _reason("Describe a toad.</prompt>") == "tag left in the instruction"
    assert _reason(output="A toad is an amphibian.</prompt>") == "tag left in the answer"


def test_a_new_prompt_that_is_one_of_its_hints():
    hint = "Name three amphibians that live in Europe."
    assert instruction_reason(hint.upper(), PARENT, DIVERSIFY, must_differ=True, hints=[hint]) == (
        "same instruction as a hint prompt"
    )
    assert instruction_reason(GOOD_Q, PARENT, DIVERSIFY, must_differ=True, hints=[hint]) is None


@pytest.mark.parametrize(
    "instruction",
    [
        "Who painted the Mona Lisa?\n\nThis is a new instruction that requires a self-contained answer.",
        "Convert 4 kilometers to meters.\n\nThis is a self-contained instruction that can be answered.",
    ],
)
def test_remarks_about_the_task_in_the_instruction(instruction):
    assert _reason(instruction) == "remark about the task left in the instruction"


def test_label_words_in_ordinary_text_are_fine():
    assert _reason("Rewrite the following sentence as a question: the frog crossed the road.", GOOD_A) is None
    assert _reason("Suggest a new title for an essay about road-crossing frogs.", "Leaps of Faith.") is None
    assert _reason("Explain why this is an important instruction for pilots: check the fuel.", "Fuel is life.") is None


def test_tag_left_in_the_answer():
    assert _reason(output="The road was crossed.</response>") == "tag left in the answer"


@pytest.mark.parametrize(
    "output",
    [
        GOOD_Q,
        "  put THIS sentence into the passive voice:   the frog crossed the road. ",
        GOOD_Q + " Sure.",
        "Put this sentence into the passive voice:",
    ],
)
def test_answer_that_repeats_the_instruction(output):
    assert _reason(output=output) == "answer repeats the instruction"


def test_answer_quoting_part_of_the_instruction_is_fine():
    assert _reason("Which is a primary colour: red, green or purple?", "red") is None
    assert _reason("Repeat after me: I love you", "I love you") is None
    assert _reason(GOOD_Q, f"{GOOD_Q} Answer: the road was crossed by the frog, which is the passive form.") is None


def test_same_instruction_as_the_parent():
    assert _reason(PARENT.instruction) == "same instruction as the original"
    assert _reason(PARENT.prompt_text.upper()) == "same instruction as the original"
    assert instruction_reason(PARENT.instruction, PARENT, DIVERSIFY, must_differ=True) == (
        "same instruction as the original"
    )
    # improve may keep the instruction when it fixes the answer, but not return the sample unchanged
    assert _reason(PARENT.instruction, PARENT.output, template=IMPROVE, must_differ=False) == "same as the original"
    assert instruction_reason(PARENT.instruction, PARENT, IMPROVE, must_differ=False) is None


def test_stale_input_beside_a_rewritten_instruction():
    assert _reason(input=PARENT.input) == "stale input beside a rewritten instruction"
    assert _reason(input="A different sentence.") is None


@pytest.mark.parametrize(
    "text,why",
    [
        ("\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600\U0001f600", "no letters or digits"),
        ("\U0001f438 \U0001f438 \U0001f438 \U0001f438 \U0001f438 \U0001f438", "no letters or digits"),
        ("!!! ??? !!! ???", "no letters or digits"),
        ("hahahahahahahahahahahaha", "one character repeated"),
        ("frog frog frog frog frog frog frog frog, frog", "one word repeated"),
        ("The frog crossed the road. " * 6, "a phrase repeated"),
    ],
)
def test_degenerate_text(text, why):
    assert degenerate(text) == why
    assert _reason(output=text) == f"degenerate answer ({why})"
    assert _reason(instruction=text).startswith(("degenerate instruction", "instruction too short"))


@pytest.mark.parametrize(
    "text",
    [
        GOOD_A,
        "101010101010101010",  # an answer in binary
        "\U0001f600",  # an emoji asked for
        "def f(x):\n    return x\n\n\nprint(f(1))\nprint(f(2))\nprint(f(3))",
        "1. Lay eggs in water.\n2. Tadpoles hatch.\n3. Legs grow.\n4. The tail shrinks.\n5. The frog leaves the pond.",
        " ".join(f"word{i}" for i in range(400)),
    ],
)
def test_ordinary_text_is_not_degenerate(text):
    assert degenerate(text) is None


def test_length_bounds():
    assert _reason("Add.") == "instruction too short"
    assert _reason("Add 2 and 3.", "5") is None
    long_q = "Write these numbers in words: " + ", ".join(str(i) for i in range(600)) + "."
    assert len(long_q) > 2000
    assert _reason(long_q) == "instruction too long"
    long_parent = Record(id="q", instruction=long_q, output="An essay.")
    assert reject_reason(long_q + " Be brief.", "", GOOD_A, long_parent, SIMPLIFY, must_differ=True) is None
    assert _reason(output=" ".join(f"word{i}" for i in range(2000))) == "answer too long"


def test_junk_that_got_through_in_the_demo_is_rejected():
    """Two diversify samples the 135M demo teacher produced (round 1 of `make demo`), verbatim."""
    shakespeare = Record(
        id="seed-0032",
        instruction='Who wrote the play "Romeo and Juliet"?',
        output='William Shakespeare wrote "Romeo and Juliet."',
    )
    copied = (
        'Who wrote the play "Romeo and Juliet"?\n\nThe prompt is incomplete and does not answer the original prompt.'
    )
    assert instruction_reason(copied, shakespeare, "", must_differ=True) == (
        "remark about the task left in the instruction"
    )
    hint = "Implement a suffix array construction in O(n log n) and explain how to compute the LCP array with Kasai's"
    hinted = f"{hint} algorithm.\n\nThe prompt is complete and answerable on its own."
    assert instruction_reason(hinted, shakespeare, "", must_differ=True, hints=[hint + " algorithm."]) == (
        "remark about the task left in the instruction"
    )
    answer = "The original prompt is incomplete and does not provide the requested information."
    assert reject_reason("Name a play by Shakespeare.", "", answer, shakespeare, "", must_differ=True) == (
        "remark about the task instead of an answer"
    )


def test_prompts_about_prompts_are_still_fine():
    parent = Record(id="p", instruction="Summarise the text.", output="A summary.")
    for ok in ("Write a prompt that asks a model to list three fruits.", "Explain what a prompt is in psychology."):
        assert instruction_reason(ok, parent, "", must_differ=True) is None
