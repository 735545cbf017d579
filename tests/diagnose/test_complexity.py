import numpy as np
import pytest
import torch
import torch.nn.functional as F

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
