"""The SFT loss on a CPU computed from the response positions' logits only.

TRL 1.16 computes the loss through its fused LM head. On a GPU with Triton it projects only the positions that carry a
label. Elsewhere its torch fallback projects every position, prompt tokens included, recomputes the logits in the
backward pass and does the backward's products in float32. For the demo's padding-free batches on a 2-core CPU, that
fallback took about a quarter of the training time in bfloat16 (docs/benchmarks.md).

A padding-free batch is one row. The positions whose next token is scored are then one 1-D index, which transformers
takes as ``logits_to_keep``. The model projects those positions alone, and the loss is the usual cross-entropy, summed
and divided by the trainer's token count as TRL does. Batches of several rows (padded), GPUs, and TRL's other loss
options (label smoothing, DFT, MoE auxiliary losses, a custom ``compute_loss_func``) keep TRL's own path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from trl import SFTTrainer

IGNORE = -100


class ResponseLogitsSFTTrainer(SFTTrainer):
    """``SFTTrainer`` whose CPU loss projects only the positions the loss scores; see the module docstring.

    ``response_logits_only`` turns it off (TRL's path everywhere), for benchmarks that compare the two.
    """

    response_logits_only = True

    def _takes_response_path(self, model, inputs) -> bool:
        labels = inputs.get("labels")
        return (
            self.response_logits_only
            and model.training
            and labels is not None
            and labels.dim() == 2
            and labels.size(0) == 1
            and labels.device.type == "cpu"
            and self.compute_loss_func is None
            and self.label_smoother is None
            and self.args.loss_type == "nll"
            and not self.aux_loss_enabled
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not self._takes_response_path(model, inputs):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        targets = labels[0, 1:]  # the logits at position i predict token i + 1
        kept = (targets != IGNORE).nonzero().squeeze(-1)
        outputs = model(**inputs, use_cache=False, logits_to_keep=kept)
        # (len(kept), vocab); cross_entropy is nll_loss of log_softmax, whose result the metrics reuse
        log_p = torch.log_softmax(outputs.logits[0].float(), dim=-1)
        targets = targets[kept]
        count = torch.as_tensor(kept.numel() if num_items_in_batch is None else num_items_in_batch)
        # clamped as TRL does: a batch with no scored token is a finite zero, not 0 / 0
        loss = F.nll_loss(log_p, targets, reduction="sum") / count.to(log_p.device).clamp(min=1)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * (self.accelerator.num_processes // self.get_tp_size())  # DDP averages the gradients
        self._log_batch(inputs, log_p.detach(), targets)
        return loss

    def _log_batch(self, inputs, log_p: torch.Tensor, targets: torch.Tensor) -> None:
        """The metrics TRL's ``compute_loss`` logs: entropy, token accuracy and the running token count, which
        :class:`middo.train.LiveCurves` turns into the tokens curve."""
        gather = self.accelerator.gather_for_metrics
        with torch.no_grad():
            entropy = -(log_p.exp() * log_p).sum(-1)
            num_valid = gather(torch.tensor(targets.numel())).sum()
            entropy_sum = gather(entropy.sum()).sum()
            num_correct = gather((log_p.argmax(-1) == targets).sum()).sum()
        metrics = self._metrics["train"]
        metrics["entropy"].append((entropy_sum / num_valid).item() if num_valid > 0 else 0.0)
        metrics["mean_token_accuracy"].append((num_correct / num_valid).item() if num_valid > 0 else 0.0)
        if "attention_mask" in inputs:
            tokens = inputs["attention_mask"].sum()
        else:
            tokens = torch.tensor(inputs["input_ids"].size(1))
        self._total_train_tokens += gather(tokens).sum().item() // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
