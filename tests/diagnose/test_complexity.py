import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from middo.config import TrainConfig
from middo.diagnose.complexity import response_losses, tokenize_for_loss
from middo.records import Record

EASY = Record(id="easy", instruction="What is the capital of France?", output="The capital of France is Paris.")
HARD = Record(
    id="hard",
    instruction="Prove that every finite integral domain is a field.",
    output="Let R be finite, a≠0. The map φ_a: R→R, x↦ax is injective since ax=ay ⇒ a(x−y)=0 ⇒ x=y (no zero "
    "divisors); an injective self-map of a finite set is surjective, so ∃b: ab=1. Hence every a≠0 is a unit.",
)
OTHERS = [
    Record(id="o1", instruction="Say hello.", output="Hello!"),
    Record(id="o2", instruction="Give a synonym for happy.", input="One word.", output="Joyful."),
    Record(id="o3", instruction="Add 12 and 30.", output="12 + 30 = 42."),
]


def _reference_loss(model, tokenizer, rec):
    """The slow, obvious way: full logits, labels masked to the response."""
    full, n_prompt = tokenize_for_loss(tokenizer, [rec], 1024)[0]
    ids = torch.tensor([full])
    with torch.inference_mode():
        logits = model(input_ids=ids).logits[0, :-1]
    labels = ids[0, 1:].clone()
    labels[: n_prompt - 1] = -100
    return F.cross_entropy(logits.float(), labels, ignore_index=-100).item()


@pytest.mark.slow
def test_hard_sample_has_higher_loss(scoring_model):
    lm = scoring_model
    enc = tokenize_for_loss(lm.tokenizer, [EASY, HARD], 1024)
    loss = response_losses(lm.model, enc, lm.tokenizer.pad_token_id, lm.device)
    assert loss[1] > loss[0] + 0.5


@pytest.mark.slow
def test_prompt_tokens_are_masked(scoring_model):
    lm = scoring_model
    full, n_prompt = tokenize_for_loss(lm.tokenizer, [EASY], 1024)[0]
    response = lm.tokenizer.decode(full[n_prompt:])
    assert response.startswith(EASY.output)
    assert EASY.instruction not in response


@pytest.mark.slow
def test_fast_path_matches_full_logits_reference(scoring_model):
    lm = scoring_model
    recs = [EASY, HARD, *OTHERS]
    enc = tokenize_for_loss(lm.tokenizer, recs, 1024)
    fast = response_losses(lm.model, enc, lm.tokenizer.pad_token_id, lm.device)
    ref = [_reference_loss(lm.model, lm.tokenizer, r) for r in recs]
    np.testing.assert_allclose(fast, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("max_tokens,side,head_chunk", [(48, "right", 3), (100000, "left", 1024), (200, "left", 7)])
def test_invariant_to_batching_and_padding(scoring_model, max_tokens, side, head_chunk):
    lm = scoring_model
    recs = [EASY, HARD, *OTHERS]
    enc = tokenize_for_loss(lm.tokenizer, recs, 1024)
    base = response_losses(lm.model, enc, lm.tokenizer.pad_token_id, lm.device, max_tokens=1)
    other = response_losses(lm.model, enc, lm.tokenizer.pad_token_id, lm.device, max_tokens, head_chunk, side)
    np.testing.assert_allclose(other, base, rtol=1e-4, atol=1e-4)
    # and independent of the order records come in
    perm = [4, 2, 0, 3, 1]
    shuffled = response_losses(lm.model, [enc[i] for i in perm], lm.tokenizer.pad_token_id, lm.device, max_tokens)
    np.testing.assert_allclose(shuffled, base[perm], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_truncated_away_response_is_nan_not_dropped(scoring_model):
    lm = scoring_model
    enc = tokenize_for_loss(lm.tokenizer, [EASY, HARD], max_length=20)  # the system prompt alone is longer
    loss = response_losses(lm.model, enc, lm.tokenizer.pad_token_id, lm.device)
    assert loss.shape == (2,)
    assert np.isnan(loss).all()


# 161 tokens through SmolLM2's chat template, 50 of them prompt (system prompt included)
LONG = Record(
    id="long",
    instruction="Explain why the sky is blue, in plain words.",
    input="For a ten-year-old.",
    output="Sunlight is a mix of colours. "
    + "Air molecules scatter short blue waves far more than long red ones, so blue light reaches us from every part "
    "of the sky. " * 4,
)


@pytest.mark.slow
def test_scored_tokens_are_the_trained_tokens(base_model_dir, tmp_path):
    """One truncation rule: under ``train.max_length`` the loss is measured on exactly the tokens and labels TRL
    trains on (same side, same count, chat-template tokens included), and equals the training loss of the sample."""
    from middo.modeling import load_tokenizer
    from middo.train import build_trainer

    model_dir = tiny_model(base_model_dir, tmp_path / "tiny")
    tok = load_tokenizer(model_dir)
    ((untruncated, _),) = tokenize_for_loss(tok, [LONG], 10**6)
    for max_length in (64, 120, 4096):  # cut 14 tokens into the response, mid-response, not cut
        cfg = TrainConfig(max_steps=1, batch_size=1, max_length=max_length)
        trainer = build_trainer([LONG], model_dir, tmp_path / f"run{max_length}", cfg, 0, "cpu", "float32", False)
        row = trainer.train_dataset[0]
        ((full, n_prompt),) = tokenize_for_loss(tok, [LONG], max_length)
        assert len(full) == min(max_length, len(untruncated)) and full == untruncated[: len(full)]
        assert row["input_ids"] == full
        trained = [i for i, label in enumerate(row["labels"]) if label != -100]
        assert trained == list(range(n_prompt, len(full)))
        model = trainer.model.eval()
        ids = torch.tensor([row["input_ids"]])
        with torch.inference_mode():
            train_loss = model(input_ids=ids, labels=torch.tensor([row["labels"]])).loss.item()
        scored = response_losses(model, [(full, n_prompt)], tok.pad_token_id, torch.device("cpu"))
        assert scored[0] == pytest.approx(train_loss, rel=1e-5)
