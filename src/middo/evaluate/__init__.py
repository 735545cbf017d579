"""Offline benchmark suites that track a round's model: HumanEval, MATH-500, IFBench, GSM8K, HellaSwag, TruthfulQA.

Every suite reads its items from a PyPI package's data file and scores with that benchmark's own checker where one
exists, so a round can be evaluated with no network. See ``docs/evaluation.md``.
"""

from middo.evaluate.suite import SUITES, Suite, evaluate_model

__all__ = ["SUITES", "Suite", "evaluate_model"]
