"""Benchmarks for a round's model: middo's offline suites (MMLU, GSM8K, HellaSwag, TruthfulQA, HumanEval, MATH-500,
IFBench) and bridges to lm-evaluation-harness and OpenCompass, all writing one ``eval.json`` shape with 95% intervals.

Every builtin suite reads its items from a PyPI package's data file and scores with that benchmark's own checker where
one exists, so a round can be evaluated with no network. See ``docs/evaluation.md``. Nothing is imported here: the
statistics and the comparison (:mod:`.stats`, :mod:`.compare`) must not pull torch in through the suites.
"""
