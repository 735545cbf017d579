import time

import pytest

from middo.evaluate import humaneval


@pytest.fixture(scope="module")
def problems():
    return {p["task_id"]: p for p in humaneval.load(None, 0)}


def test_load_real_problems(problems):
    assert len(problems) == 164
    item = problems["HumanEval/0"]
    assert {"task_id", "prompt", "entry_point", "canonical_solution", "test"} <= item.keys()
    assert item["entry_point"] == "has_close_elements"
    assert [p["task_id"] for p in humaneval.load(5, 7)] == [p["task_id"] for p in humaneval.load(5, 7)]


def test_canonical_solution_passes(problems):
    item = problems["HumanEval/38"]  # its prompt defines a helper (encode_cyclic) that the solution calls
    res = humaneval.grade(item["canonical_solution"], item)
    assert res["correct"] and res["status"] == "passed"


def test_wrong_solution_fails(problems):
    res = humaneval.grade("    return s\n", problems["HumanEval/38"])
    assert not res["correct"] and res["status"].startswith("failed")


def test_full_function_in_a_fence_and_dedented_body(problems):
    item = problems["HumanEval/38"]
    reply = (
        "Sure! Here it is:\n```python\ndef decode_cyclic(s: str):\n    return encode_cyclic(encode_cyclic(s))\n\n"
        "if __name__ == '__main__':\n    print(decode_cyclic(input()))\n```\nHope this helps."
    )
    assert humaneval.grade(reply, item)["correct"]
    assert humaneval.grade("return encode_cyclic(encode_cyclic(s))", item)["correct"]  # body without indentation


def test_infinite_loop_is_failed_within_timeout(problems):
    timeout = 2.0
    start = time.perf_counter()
    res = humaneval.grade("    while True:\n        pass\n", problems["HumanEval/0"], timeout=timeout)
    assert not res["correct"] and res["status"] == "timed out"
    assert time.perf_counter() - start < timeout + 3


def test_memory_cap_fails_a_huge_allocation():
    res = humaneval.run_program("x = bytearray(64 * 1024**3)\n", timeout=5, memory_mb=512)
    assert not res["passed"] and "MemoryError" in res["status"]
