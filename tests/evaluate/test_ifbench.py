import pytest

from middo.evaluate import ifbench


@pytest.fixture(scope="module")
def items():
    return {it["key"]: it for it in ifbench.load(None, 0)}


def test_load_real_prompts(items):
    assert len(items) == 294
    item = items["0"]
    assert item["instruction_id_list"] == ["count:keywords_multiple"]
    assert len(item["kwargs"]) == len(item["instruction_id_list"]) and "kaleidoscope" in item["prompt"]


def test_checkers_import_offline():
    table = ifbench.checkers()
    assert len(table) >= 57 and "words:start_verb" in table
    assert set(ifbench.ensure_nltk_data()) == {"punkt_tab", "stopwords", "tagger"}


def test_keyword_counts_right_and_wrong(items):
    item = items["0"]  # kaleidoscope x1, nebula x2, whisper x3, labyrinth x5, paradox x7
    right = "A kaleidoscope. Nebula, nebula. Whisper whisper whisper. " + "labyrinth " * 5 + "and " + "paradox " * 7
    assert ifbench.grade(right, item)["correct"]
    wrong = ifbench.grade("A kaleidoscope and one nebula.", item)
    assert not wrong["correct"] and wrong["followed"] == [False]


def test_checkers_that_need_nltk_data_run(items):
    verb = next(it for it in items.values() if it["instruction_id_list"] == ["words:start_verb"])
    assert ifbench.grade("Imagine an empire where minds suffer forever.", verb)["correct"]
    assert not ifbench.grade("The empire is vast.", verb)["correct"]
    stop = next(it for it in items.values() if "ratio:stop_words" in it["instruction_id_list"])
    assert isinstance(ifbench.grade("Cats chase mice. Dogs bark loudly.", stop)["correct"], bool)


def test_empty_reply_follows_nothing(items):
    assert not ifbench.grade("   ", items["0"])["correct"]
