"""Who runs a round's benchmarks (``eval.backend``): middo's offline suites, lm-evaluation-harness, or OpenCompass.

All three write the same ``eval.json`` shape (``accuracy``, ``average``, ``n``, ``interval`` per suite) and an
``eval_details.jsonl`` of per-item verdicts, so ``dvc metrics diff``, ``summarize`` and ``middo compare`` need not know
which one ran. The harnesses are imported only when chosen.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from middo.config import EvalConfig


def evaluate_backend(
    cfg: EvalConfig, model_path: str | Path, out_path: str | Path, seed: int, device: str, dtype: str, round_: int
) -> dict[str, Any]:
    """Evaluate one checkpoint with the backend ``cfg.backend`` names; returns the metrics written ({} off rank 0)."""
    common = dict(model_path=model_path, limit=cfg.limit, out_path=out_path, seed=seed, bootstrap=cfg.bootstrap)
    if cfg.backend == "opencompass":
        from middo.evaluate.opencompass_bridge import evaluate_opencompass

        return evaluate_opencompass(**common, config=cfg.opencompass, round_=round_)
    if cfg.backend == "lm-eval":
        from middo.evaluate.lm_eval_bridge import evaluate_lm_eval

        return evaluate_lm_eval(
            **common,
            tasks=list(cfg.tasks),
            device=device,
            dtype=dtype,
            max_new_tokens=cfg.max_new_tokens,
            include_path=cfg.lm_eval.include_path,
            batch_size=cfg.lm_eval.batch_size,
            chat_template=cfg.lm_eval.chat_template,
            allow_code_eval=cfg.humaneval.sandbox == "none",
        )
    from middo.evaluate.suite import evaluate_model

    return evaluate_model(
        **common,
        suites=list(cfg.suites),
        device=device,
        dtype=dtype,
        max_new_tokens=cfg.max_new_tokens,
        suite_options={"mmlu": {"mode": cfg.mmlu_mode}, "humaneval": {"sandbox": cfg.humaneval.sandbox}},
    )


def describe(round_: int, res: dict[str, Any]) -> str:
    """One line per suite: accuracy, its 95% interval and n, so a 4-item smoke check reads as one."""
    lines = [f"round {round_}: average {res['average']:.3f}"]
    if "average" in res.get("interval", {}):
        iv = res["interval"]["average"]
        lines[0] += f" [95% {iv['low']:.2f}, {iv['high']:.2f}]"
    for suite, acc in res["accuracy"].items():
        iv = res.get("interval", {}).get(suite)
        shown = f" [95% {iv['low']:.2f}, {iv['high']:.2f}]" if iv else ""
        lines.append(f"  {suite:<20} {acc:.3f}{shown}  n={res['n'].get(suite)}")
    return "\n".join(lines)
