"""The CPU loss path projects only the scored positions, and gives TRL's loss, gradients and logged token count."""

from dataclasses import replace

import pytest
import torch
from test_train import RECORDS, TINY
from tiny_models import tiny_model

from middo.train import build_trainer


def _one_step(trainer, batch, response_only: bool):
    """Loss, gradients, rows the LM head projected, and the metrics TRL logs, for one training step on ``batch``."""
    trainer.response_logits_only = response_only
    trainer._metrics["train"].clear()
    trainer._total_train_tokens = 0
    rows = []
    hook = trainer.model.get_output_embeddings().register_forward_hook(
        lambda module, args, out: rows.append(args[0].reshape(-1, args[0].size(-1)).size(0))
    )
    trainer.model.train()
    trainer.model.zero_grad()
    # as in a step accumulating three such micro-batches: the loss divides by the step's token count, not the batch's
    n_items = 3 * int((batch["labels"][:, 1:] != -100).sum())
    try:
        loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n_items)
        loss.backward()
    finally:
        hook.remove()
    grads = torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None])
    metrics = {k: list(v) for k, v in trainer._metrics["train"].items()}
    return float(loss.detach()), grads, rows, metrics


@pytest.mark.slow
def test_padding_free_cpu_loss_projects_only_the_response_and_matches_trls_loss_and_gradients(
    base_model_dir, tmp_path
):
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    cfg = replace(TINY, padding_free=True)
    trainer = build_trainer(RECORDS, model, tmp_path / "t", cfg, 42, "cpu", "float32", False)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == 1  # padding-free: one row
    scored = int((batch["labels"][0, 1:] != -100).sum())
    total = batch["input_ids"].shape[1]
    assert 0 < scored < total // 2  # the prompts are most of the row: what projecting them would waste

    ours = _one_step(trainer, batch, response_only=True)
    trl = _one_step(trainer, batch, response_only=False)

    assert ours[2] == [scored]  # the LM head saw the scored positions alone (TRL's fallback: all total - 1)
    assert trl[2] == []  # TRL's fused head multiplies by the weight itself: the module's hook never runs
    assert ours[0] == pytest.approx(trl[0], rel=1e-5)
    assert torch.allclose(ours[1], trl[1], rtol=1e-4, atol=1e-6)
    # the logged metrics: the token count (LiveCurves' tokens curve) exactly, entropy and accuracy to rounding
    assert ours[3]["num_tokens"] == trl[3]["num_tokens"] == [total]
    assert ours[3]["mean_token_accuracy"] == pytest.approx(trl[3]["mean_token_accuracy"])
    assert ours[3]["entropy"] == pytest.approx(trl[3]["entropy"], rel=1e-4)


@pytest.mark.slow
def test_a_batch_of_several_rows_keeps_trls_path(base_model_dir, tmp_path):
    model = tiny_model(base_model_dir, tmp_path / "tiny")
    cfg = replace(TINY, padding_free=False)
    trainer = build_trainer(RECORDS, model, tmp_path / "t", cfg, 42, "cpu", "float32", False)
    batch = next(iter(trainer.get_train_dataloader()))
    assert batch["input_ids"].shape[0] == len(RECORDS)
    loss, _, rows, _ = _one_step(trainer, batch, response_only=True)
    assert rows == []  # TRL's fused head, which multiplies by the weight itself, not through the module
    assert loss == pytest.approx(_one_step(trainer, batch, response_only=False)[0], rel=1e-6)
