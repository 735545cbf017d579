"""Each validation rule on hand-made strings: one sample it must reject, one good sample it must let through.

The junk strings are the shapes the demo's 135M teacher really produced on Alpaca data.
"""

import pytest

from middo.records import Record
from middo.refine.prompts import ANSWER, DIVERSIFY, IMPROVE, SIMPLIFY
from middo.refine.validate import (
    NEAR_COPY_RATIO,
    degenerate,
    instruction_reason,
    reads_as_prompt,
    reject_reason,
    similarity,
)

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
    assert _reason(instruction=text) == f"degenerate instruction ({why})"  # each is long enough to be measured


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


# A diversify sample the 135M demo teacher wrote into data/round_1 of a fresh-clone `make demo` (CPU, float32), as
# issue 21 quotes it: parent seed-0010 (eigenvalues of symmetric matrices, meta {"category": "hard"}), reply status
# "fallback". The instruction is an untagged paragraph; the answer is that paragraph with a few words changed.
GREENHOUSE_Q = (
    "The greenhouse effect is a phenomenon that occurs when the Earth's atmosphere traps a large amount of heat. It "
    "is caused by the absorption of infrared radiation by greenhouse gases, such as carbon dioxide, methane, and "
    "ozone. This process is known as the greenhouse effect. The greenhouse effect is a natural process that keeps "
    "the Earth warm, but human activities are making it stronger."
)
GREENHOUSE_A = (
    "The greenhouse effect is a phenomenon that occurs when the Earth's atmosphere traps a large amount of heat. It "
    "is caused by the absorption of infrared radiation by greenhouse gases, such as carbon dioxide, methane, and "
    "ozone. This process is known as the greenhouse effect. It helps regulate the Earth's climate, but human "
    "activities are making it stronger."
)
SEED_0010 = Record(
    id="seed-0010",
    instruction="Show that the eigenvalues of a real symmetric matrix are real and that eigenvectors for distinct "
    "eigenvalues are orthogonal.",
    output="Let A be real with A^T = A and Av = λv ...",
    meta={"category": "hard"},
)


def test_the_demo_greenhouse_sample_is_rejected_twice_over():
    """Its answer is a near copy of its instruction, and its untagged instruction is an essay, not a prompt."""
    assert similarity(GREENHOUSE_A, GREENHOUSE_Q) == pytest.approx(0.880, abs=0.001)
    assert reject_reason(GREENHOUSE_Q, "", GREENHOUSE_A, SEED_0010, DIVERSIFY, must_differ=True) == (
        "answer is a near copy of the instruction"
    )
    assert instruction_reason(GREENHOUSE_Q, SEED_0010, DIVERSIFY, must_differ=True, untagged=True) == (
        "untagged reply does not read as a prompt"
    )
    # the same paragraph inside a <prompt> block is a teacher's deliberate choice: only its answer decides
    assert instruction_reason(GREENHOUSE_Q, SEED_0010, DIVERSIFY, must_differ=True) is None


@pytest.mark.parametrize(
    "instruction,output",
    [
        # a sentence edited in a long prompt
        (
            "Describe the water cycle: evaporation from oceans, condensation into clouds, precipitation as rain or "
            "snow, and collection in rivers and lakes.",
            "Describe the water cycle: evaporation from the oceans, condensation into clouds, precipitation as rain "
            "and snow, and collection in lakes and rivers.",
        ),
        # the question restated as a statement with the same words
        (
            "Why do leaves of deciduous trees change colour in the autumn before they fall from the branches?",
            "Leaves of deciduous trees change colour in the autumn before they fall from the branches.",
        ),
    ],
)
def test_an_answer_that_is_the_instruction_with_small_edits_is_rejected(instruction, output):
    assert similarity(output, instruction) >= NEAR_COPY_RATIO
    assert _reason(instruction, output, template=DIVERSIFY) == "answer is a near copy of the instruction"


def test_an_answer_on_the_instructions_words_in_its_own_sentences_is_fine():
    """The bar sits above every accepted pair of this file (at most 0.667) and below every echo (0.737 up)."""
    question = "Explain how the greenhouse effect warms the Earth and why carbon dioxide matters for it."
    answer = (
        "Sunlight warms the ground, which radiates infrared; carbon dioxide and other greenhouse gases absorb that "
        "infrared and send part of it back, so the Earth stays warmer than it would without them."
    )
    assert similarity(answer, question) < 0.3
    assert _reason(question, answer, template=DIVERSIFY) is None
    quoted = f"{GOOD_Q} Answer: the road was crossed by the frog, which is the passive form."
    assert similarity(quoted, GOOD_Q) == pytest.approx(0.649, abs=0.001)  # the closest accepted pair but one
    assert similarity("I love you", "Repeat after me: I love you") == pytest.approx(0.667, abs=0.001)


def test_similarity_counts_words_in_order():
    assert similarity("a b c d", "a b c d") == 1.0
    assert similarity("a b c d", "e f g h") == 0.0
    assert similarity("A, b; C d!", "a b c d") == 1.0  # case and punctuation are not words
    assert similarity("a b c d", "d c b a") == 0.25  # one word in order of four: 2 * 1 / 8


@pytest.mark.parametrize(
    "reply",
    [
        "What causes the seasons on Earth",  # a question without its mark
        "How would you explain tides to a child?",
        "Tides rise twice a day, so what pulls the water up?",  # only its question mark says it asks
        "Write a haiku about the first snow.",
        "{1, 2, 3} is a set. List all of its subsets.",  # context first, the task last
        "Given a list of numbers, find the two that sum to ten.",  # the verb after a leading clause
        "In three sentences, summarise the causes of the French Revolution.",
        "Please name three rivers in Africa.",
        "You are a travel agent planning a week in Norway for a family of four. Is a train pass worth it",
    ],
)
def test_an_untagged_reply_that_reads_as_a_prompt_is_accepted(reply):
    assert reads_as_prompt(reply)
    assert instruction_reason(reply, PARENT, DIVERSIFY, must_differ=True, untagged=True) is None


@pytest.mark.parametrize(
    "reply",
    [
        GREENHOUSE_Q,
        "The instruction is to merge two lists.",
        "Photosynthesis is the process by which plants turn light into chemical energy. It takes place in the "
        "chloroplasts, which hold chlorophyll.",
        "A new prompt about rivers.",
        "When water freezes, it expands.",
    ],
)
def test_an_untagged_reply_that_states_things_is_rejected(reply):
    assert not reads_as_prompt(reply)
    assert instruction_reason(reply, PARENT, DIVERSIFY, must_differ=True, untagged=True) == (
        "untagged reply does not read as a prompt"
    )
    assert instruction_reason(reply, PARENT, DIVERSIFY, must_differ=True) is None  # a tagged one is not held to it
