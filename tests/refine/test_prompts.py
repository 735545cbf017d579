import pytest

from middo.refine.prompts import DIVERSIFY, IMPROVE, SIMPLIFY, parse_fields


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
    ],
)
def test_parse_fields(reply, fields, expected):
    assert parse_fields(reply, fields) == expected


def test_templates_ask_for_marked_answers():
    for t in (SIMPLIFY, DIVERSIFY, IMPROVE):
        assert "<instruction>" in t and "</instruction>" in t
    assert "<response>" in IMPROVE
    assert "{prompt}" in SIMPLIFY and "{response}" in IMPROVE
