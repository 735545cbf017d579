import pytest

from middo.refine.prompts import DIVERSIFY, IMPROVE, SIMPLIFY, echoes_template, parse_fields


@pytest.mark.parametrize(
    "reply,fields,expected",
    [
        ("<instruction>Add 2 and 3.</instruction>", ("instruction",), ({"instruction": "Add 2 and 3."}, "ok")),
        (
            "Sure! Here it is:\n<instruction>Add 2 and 3.</instruction>\nHope it helps.",
            ("instruction",),
            ({"instruction": "Add 2 and 3."}, "ok"),
        ),
        ("```\nWhat is 2 + 3?\n```", ("instruction",), ({"instruction": "What is 2 + 3?"}, "fallback")),
        (
            "<instruction>Q?</instruction>\n<response>```python\nprint(1)\n```</response>",
            ("instruction", "response"),
            ({"instruction": "Q?", "response": "```python\nprint(1)\n```"}, "ok"),
        ),
        (
            "<instruction>Q?</instruction> but no response",
            ("instruction", "response"),
            (None, "unparseable: missing <response>"),
        ),
        ("", ("instruction",), (None, "unparseable: empty reply")),
        (None, ("instruction",), (None, "unparseable: no reply (call failed)")),
        ("<instruction>   </instruction>", ("instruction",), (None, "unparseable: missing <instruction>")),
        # labels in front of the answer (real replies of the 135M demo teacher), quotes around it dropped
        (
            'The rewritten instruction is: "The human body is made up of organs that pump blood through the body.',
            ("instruction",),
            ({"instruction": "The human body is made up of organs that pump blood through the body."}, "fallback"),
        ),
        (
            '<instruction>New instruction: "Name the organ that pumps blood."</instruction>',
            ("instruction",),
            ({"instruction": "Name the organ that pumps blood."}, "ok"),
        ),
        (
            '<instruction>Rewritten instruction: say "hi" to "Bob"</instruction>',
            ("instruction",),
            ({"instruction": 'say "hi" to "Bob"'}, "ok"),
        ),
        (
            "The instruction is to merge two lists.",
            ("instruction",),
            ({"instruction": "The instruction is to merge two lists."}, "fallback"),
        ),
    ],
)
def test_parse_fields(reply, fields, expected):
    assert parse_fields(reply, fields) == expected


def test_templates_ask_for_marked_answers():
    for t in (SIMPLIFY, DIVERSIFY, IMPROVE):
        assert "<instruction>" in t and "</instruction>" in t
    assert "<response>" in IMPROVE
    assert "{prompt}" in SIMPLIFY and "{response}" in IMPROVE


def test_a_reply_that_parrots_the_prompt_is_unparseable():
    # a real reply of the 135M demo teacher to SIMPLIFY (round 2 of the demo, before this check)
    parrot = "The instruction is too hard or convoluted for a student model to learn from."
    assert echoes_template(parrot, SIMPLIFY)
    values, status = parse_fields(parrot, ("instruction",), template=SIMPLIFY)
    assert values is None and status == "unparseable: <instruction> repeats the prompt"
    # a real rewrite that shares words with the template ("instruction", "simpler") is kept
    good = "Write a simpler instruction: explain how a virus differs from a bacterium in two sentences."
    assert not echoes_template(good, SIMPLIFY)
    assert parse_fields(f"<instruction>{good}</instruction>", ("instruction",), template=SIMPLIFY) == (
        {"instruction": good},
        "ok",
    )
    # without a template nothing changes
    assert parse_fields(parrot, ("instruction",))[1] == "fallback"
