import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_model

from middo.chat_template import fit_to_cutoff
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
def test_a_prompt_longer_than_the_cutoff_still_scores_its_response(scoring_model):
    lm = scoring_model
    enc = tokenize_for_loss(lm.tokenizer, [EASY, HARD], max_length=20)  # the system prompt alone is longer
    loss = response_losses(lm.model, enc, lm.tokenizer.pad_token_id, lm.device)
    assert loss.shape == (2,)
    assert np.isfinite(loss).all()  # the prompt gave way, not the response
    assert all(len(ids) == 20 and n_prompt < 20 for ids, n_prompt in enc)


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
    ((untruncated, n_whole),) = tokenize_for_loss(tok, [LONG], 10**6)
    for max_length in (64, 120, 4096):  # both sides cut (20 + 44), the response cut (50 + 70), not cut
        cfg = TrainConfig(max_steps=1, batch_size=1, max_length=max_length)
        trainer = build_trainer([LONG], model_dir, tmp_path / f"run{max_length}", cfg, 0, "cpu", "float32", False)
        row = trainer.train_dataset[0]
        ((full, n_prompt),) = tokenize_for_loss(tok, [LONG], max_length)
        keep_prompt, keep_response = fit_to_cutoff(n_whole, len(untruncated) - n_whole, max_length)
        assert len(full) == min(max_length, len(untruncated)) and n_prompt == keep_prompt
        assert full == untruncated[:keep_prompt] + untruncated[n_whole : n_whole + keep_response]
        assert row["input_ids"] == full
        trained = [i for i, label in enumerate(row["labels"]) if label != -100]
        assert trained == list(range(n_prompt, len(full)))
        model = trainer.model.eval()
        ids = torch.tensor([row["input_ids"]])
        with torch.inference_mode():
            train_loss = model(input_ids=ids, labels=torch.tensor([row["labels"]])).loss.item()
        scored = response_losses(model, [(full, n_prompt)], tok.pad_token_id, torch.device("cpu"))
        assert scored[0] == pytest.approx(train_loss, rel=1e-5)


# About 5,000 tokens each through SmolLM2's chat template, over the paper's cutoff of 4096: a prompt longer than
# the cutoff (4,316 + 688 tokens: cutting the sequence's end left no response token), and both sides long (2,535 +
# 2,508: they share the cutoff, each keeping its start).
LONG_PROMPT = Record(
    id="long-prompt",
    instruction="Count the words below. " + "alpha beta gamma delta " * 1070,
    output="There are four thousand words. " + "They repeat alpha beta gamma delta. " * 97,
)
LONG_BOTH = Record(
    id="long-both",
    instruction="Continue the list. " + "one two three four five " * 500,
    output="Here it goes on: " + "six seven eight nine ten " * 500,
)


@pytest.mark.slow
def test_a_sample_over_the_cutoff_keeps_its_response_start_and_trains_on_the_tokens_it_is_scored_on(
    base_model_dir, tmp_path
):
    """The paper's cutoff (4096) on 5,000-token samples, through the real tokenizer and a tiny model of the same
    architecture (a 4096-token pass of it takes well under a second): a finite loss for each, the prompt trimmed,
    the response's first tokens kept, and training labels exactly the tokens scored (once cutting the end of the
    whole sequence lost the first sample's response: NaN loss, and TRL dropped it from training)."""
    from middo.modeling import load_tokenizer
    from middo.train import build_trainer

    model_dir = tiny_model(base_model_dir, tmp_path / "tiny")
    tok = load_tokenizer(model_dir)
    records = [LONG_PROMPT, LONG_BOTH]
    whole = tokenize_for_loss(tok, records, 10**6)
    cut = tokenize_for_loss(tok, records, 4096)
    cfg = TrainConfig(max_steps=1, batch_size=1, max_length=4096)
    trainer = build_trainer(records, model_dir, tmp_path / "run", cfg, 0, "cpu", "float32", False)
    model = trainer.model.eval()
    scored = response_losses(model, cut, tok.pad_token_id, torch.device("cpu"))
    assert np.isfinite(scored).all()
    rows = {tuple(row["input_ids"]): row["labels"] for row in trainer.train_dataset}
    assert len(rows) == 2  # no sample dropped
    for (untruncated, n_whole), (full, n_prompt), loss in zip(whole, cut, scored, strict=True):
        response = untruncated[n_whole:]
        assert 5000 <= len(untruncated) < 5100 and len(full) == 4096
        assert 0 < n_prompt < n_whole  # the prompt gave way...
        assert full[:n_prompt] == untruncated[:n_prompt]  # ...keeping its start
        assert full[n_prompt:] == response[: len(full) - n_prompt]  # the response's first tokens
        labels = rows[tuple(full)]
        trained = [i for i, label in enumerate(labels) if label != -100]
        assert trained == list(range(n_prompt, len(full)))  # trained tokens = scored tokens
        with torch.inference_mode():
            train_loss = model(input_ids=torch.tensor([full]), labels=torch.tensor([labels])).loss.item()
        assert loss == pytest.approx(train_loss, rel=1e-5)
    (_, n_whole), (full, n_prompt) = whole[0], cut[0]
    assert len(full) - n_prompt == len(whole[0][0]) - n_whole  # a response under half the cutoff is kept whole
    (untruncated, n_whole), (full, n_prompt) = whole[1], cut[1]
    assert len(full) - n_prompt < len(untruncated) - n_whole  # two long sides share the cutoff
