"""The teacher prompts (what each shows the teacher, and that the cache version covers them) and the reply parser,
for tagged text and for structured (JSON) replies."""

import json

import pytest

from middo.refine import prompts
from middo.refine.prompts import (
    ANSWER,
    DIVERSIFY,
    IMPROVE,
    REWRITE_SCHEMA,
    SIMPLIFY,
    answer_prompt,
    echoes_template,
    parse_prompt,
    rewrite_prompt,
    rewrite_schema,
)

MULTI_STEP = """Step 1 - Difficulties: the prompt mixes two tasks.
Step 2 - Plan: keep one task and drop the jargon.
Step 3 - Draft: <prompt>List the planets.</prompt>
Step 4 - Final prompt:
<prompt>List the planets of the solar system in order from the Sun.</prompt>"""


@pytest.mark.parametrize(
    "reply,fallback,expected",
    [
        ("<prompt>Add 2 and 3.</prompt>", False, ("Add 2 and 3.", "ok")),
        ("Sure! Here it is:\n<prompt>Add 2 and 3.</prompt>\nHope it helps.", False, ("Add 2 and 3.", "ok")),
        # the final block wins over a tagged draft and over the tag named in the analysis
        (MULTI_STEP, False, ("List the planets of the solar system in order from the Sun.", "ok")),
        (
            "I will put it in <prompt> tags.\nStep 4 - Final prompt: <prompt>Add 2 and 3.</prompt>",
            False,
            ("Add 2 and 3.", "ok"),
        ),
        # a multi-step reply without its final block is analysis only: never used
        ("Step 1 - Difficulties: jargon.\nStep 2 - Plan: define it.", False, (None, "unparseable: no <prompt> block")),
        (
            "Step 4 - Final prompt: <prompt>Explain how photosyn",
            False,
            (None, "unparseable: <prompt> never closed (reply cut off?)"),
        ),
        ("Step 1 - Problems: none.</prompt>", False, (None, "unparseable: </prompt> without <prompt>")),
        ("<prompt>   </prompt>", False, (None, "unparseable: empty <prompt>")),
        ("", False, (None, "unparseable: empty reply")),
        (None, True, (None, "failed: no reply (call failed)")),
        # diversify's reply is meant to be the prompt alone, so an untagged one is cleaned and validated
        ("```\nWhat is 2 + 3?\n```", True, ("What is 2 + 3?", "fallback")),
        ("<prompt>Name a bird of prey.", True, ("Name a bird of prey.", "fallback")),
        # labels in front of the answer (real replies of the 135M demo teacher), quotes around it dropped
        (
            'The rewritten instruction is: "The human body is made up of organs that pump blood through the body.',
            True,
            ("The human body is made up of organs that pump blood through the body.", "fallback"),
        ),
        (
            '<prompt>Final prompt: "Name the organ that pumps blood."</prompt>',
            False,
            ("Name the organ that pumps blood.", "ok"),
        ),
        ('<prompt>New prompt: say "hi" to "Bob"</prompt>', False, ('say "hi" to "Bob"', "ok")),
        ("The instruction is to merge two lists.", True, ("The instruction is to merge two lists.", "fallback")),
    ],
)
def test_parse_prompt(reply, fallback, expected):
    assert parse_prompt(reply, fallback=fallback) == expected


def test_simplify_and_improve_show_the_prompt_only_and_ask_for_steps_then_a_tagged_prompt():
    for op, template in (("simplify", SIMPLIFY), ("improve", IMPROVE)):
        shown = rewrite_prompt(op, "Translate the sentence into French.\nThe cat sleeps.")
        assert shown == template.format(prompt="Translate the sentence into French.\nThe cat sleeps.")
        assert "{response}" not in template and "Step 4 - Final prompt" in template
        assert "<prompt>" in template and "</prompt>" in template
        with pytest.raises(ValueError, match="diversify only"):
            rewrite_prompt(op, "Q?", ["a hint"])


def test_diversify_shows_the_core_prompt_after_its_hints():
    shown = rewrite_prompt("diversify", "Explain fornyrðislag.", ["Explain dróttkvætt.", "What is a kenning?"])
    assert shown.index("Hint prompt 1:\nExplain dróttkvætt.") < shown.index("Hint prompt 2:\nWhat is a kenning?")
    assert shown.index("Hint prompt 2:") < shown.index("Core prompt:\nExplain fornyrðislag.")
    bare = rewrite_prompt("diversify", "Explain fornyrðislag.")  # an older diagnosis: no neighbours
    assert "Hint prompt" not in bare and "Core prompt:\nExplain fornyrðislag." in bare


def test_the_answer_call_asks_for_a_comprehensive_answer_to_the_new_prompt():
    shown = answer_prompt("Name three planets.")
    assert shown.endswith("\n\nName three planets.") and "comprehensive, accurate" in shown
    assert shown == ANSWER.format(prompt="Name three planets.")


def test_the_template_version_covers_every_template():
    """The cache key holds TEMPLATE_VERSION: a template missing from it would replay replies to an old wording."""
    module_templates = {
        name: value
        for name, value in vars(prompts).items()
        if name.isupper() and isinstance(value, str) and "{" in value and not name.startswith("_")
    }
    assert set(module_templates.values()) == set(prompts.TEMPLATES)
    assert set(prompts.REWRITE.values()) | {ANSWER} <= set(prompts.TEMPLATES)
    assert prompts.TEMPLATE_VERSION == prompts.template_version(prompts.TEMPLATES)
    for i in range(len(prompts.TEMPLATES)):
        edited = list(prompts.TEMPLATES)
        edited[i] += " "
        assert prompts.template_version(edited) != prompts.TEMPLATE_VERSION


def test_a_reply_that_parrots_the_prompt_echoes_the_template():
    parrot = "The prompt below is too hard for such a model to learn from."
    assert echoes_template(parrot, SIMPLIFY)
    assert parse_prompt(parrot, fallback=True) == (parrot, "fallback")  # parsing keeps it, validation rejects it
    # a real rewrite that shares words with the template ("prompt", "easier") does not echo it
    good = "Write an easier prompt: explain how a virus differs from a bacterium in two sentences."
    assert not echoes_template(good, SIMPLIFY)
    assert echoes_template("Taking them as examples of the area, write one brand-new prompt.", DIVERSIFY)


def test_a_refusal_falls_back_to_the_whole_reply_for_validation_to_judge():
    refusal = "I'm sorry, but I can't help with that."
    assert parse_prompt(refusal, fallback=True) == (refusal, "fallback")
    assert parse_prompt(refusal, fallback=False) == (None, "unparseable: no <prompt> block")


NO_PROMPT, CUT_OFF = (
    'unparseable: JSON reply without a "prompt" string',
    "unparseable: JSON reply cut off or malformed",
)


@pytest.mark.parametrize(
    "reply,fallback,expected",
    [
        ('{"analysis": "Too much jargon.", "prompt": "Add 2 and 3."}', False, ("Add 2 and 3.", "ok")),
        ('```json\n{"analysis": "", "prompt": "Add 2 and 3."}\n```', False, ("Add 2 and 3.", "ok")),  # fenced
        ('{"prompt": "Add 2 and 3."}', True, ("Add 2 and 3.", "ok")),  # the analysis is not needed to parse
        # the templates ask for tags, and a constrained teacher may still write them inside the field
        ('{"analysis": "x", "prompt": "Step 4 - Final prompt: <prompt>Add 2 and 3.</prompt>"}', False,
         ("Add 2 and 3.", "ok")),
        ('{"analysis": "x", "prompt": "<prompt>Add 2 and 3."}', False, ("Add 2 and 3.", "ok")),
        ('{"analysis": "x", "prompt": "  "}', False, (None, 'unparseable: empty "prompt" in the JSON reply')),
        ('{"analysis": "x", "answer": "Add 2 and 3."}', True, (None, NO_PROMPT)),
        ('{"analysis": "x", "prompt": 5}', True, (None, NO_PROMPT)),
        # cut off by max_new_tokens mid-JSON: never read as text, whatever it holds
        ('{"analysis": "Step 1 - Difficulties: the prompt', True, (None, CUT_OFF)),
        ('{"prompt": "<prompt>Add 2 and 3.</prompt>', False, (None, CUT_OFF)),
        # free text that merely starts with a brace, or JSON that is not an object, is read as text as before
        ("{1, 2, 3} is a set. List all of its subsets.", True,
         ("{1, 2, 3} is a set. List all of its subsets.", "fallback")),
        ('["Add 2 and 3."]', False, (None, "unparseable: no <prompt> block")),
    ],
)  # fmt: skip
def test_parse_prompt_reads_a_structured_reply(reply, fallback, expected):
    assert parse_prompt(reply, fallback=fallback) == expected


def test_the_rewrite_schema_is_strict_and_reasons_before_the_prompt():
    """Strict mode (OpenAI) needs every property required and no others; constrained decoding writes properties in
    the order given, so the teacher's steps come before the prompt it commits to."""
    schema = json.loads(rewrite_schema())
    assert schema == REWRITE_SCHEMA and schema["title"] == "rewrite"
    assert list(schema["properties"]) == ["analysis", "prompt"] == schema["required"]
    assert schema["additionalProperties"] is False
    assert all(p["type"] == "string" for p in schema["properties"].values())
    reply = json.dumps({"analysis": "Jargon.", "prompt": "Say plainly what a derivative is."})
    assert parse_prompt(reply, fallback=False) == ("Say plainly what a derivative is.", "ok")
