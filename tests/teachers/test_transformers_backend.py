"""The local transformers teacher: greedy replies must not depend on how prompts were batched, and sampled ones
must repeat under the same seed (so a rerun without the cache reproduces the data)."""

from __future__ import annotations

import pytest
import torch

from middo.teachers import Sampling, TransformersTeacher


@pytest.mark.slow
def test_greedy_output_does_not_depend_on_batch_budget(base_model_dir, one_torch_thread):
    teacher = TransformersTeacher(base_model_dir, device="cpu", dtype="float32")
    prompts = ["Say hi.", "Name three colours of the rainbow and say why the sky is blue."]  # unequal: padding
    sampling = Sampling(max_new_tokens=6)
    teacher.max_tokens = 100_000
    together = teacher.complete(prompts, sampling)
    teacher.max_tokens = 1  # every prompt alone, no padding
    alone = teacher.complete(prompts, sampling)
    assert together == alone
    assert all(isinstance(t, str) and t.strip() for t in together), together
    assert teacher.complete([], sampling) == []


@pytest.fixture(scope="module")
def tiny_teacher(base_model_dir, tmp_path_factory):
    """A random 2-layer model: near-uniform next-token odds, so different seeds give different replies."""
    from tiny_models import tiny_model

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TransformersTeacher(tiny_model(base_model_dir, tmp_path_factory.mktemp("tiny") / "m"), "cpu", "float32")
    torch.set_num_threads(before)


def test_sampled_replies_repeat_under_the_same_seed_without_any_cache(tiny_teacher):
    prompts = ["Tell me a story.", "Name a colour.", "What is 2+2?"]
    seeded = Sampling(max_new_tokens=8, temperature=1.0, seed=7)
    first = tiny_teacher.complete(prompts, seeded)
    assert all(isinstance(t, str) and t.strip() for t in first), first
    torch.manual_seed(123)  # the caller's random state neither matters nor changes
    state = torch.random.get_rng_state()
    assert tiny_teacher.complete(prompts, seeded) == first
    assert torch.equal(torch.random.get_rng_state(), state)
    # a reply depends on its prompt and the seed only, not on the other prompts of its call (a partly cached rerun
    # sends fewer prompts), nor on their order
    assert tiny_teacher.complete(prompts[1:2], seeded) == first[1:2]
    assert tiny_teacher.complete(prompts[::-1], seeded) == first[::-1]
    reseeded = tiny_teacher.complete(prompts, Sampling(max_new_tokens=8, temperature=1.0, seed=8))
    assert all(a != b for a, b in zip(reseeded, first)), (reseeded, first)
    greedy = Sampling(max_new_tokens=8)
    assert tiny_teacher.complete(prompts, greedy) == tiny_teacher.complete(prompts, greedy)


def test_the_system_prompt_goes_through_the_chat_template(tiny_teacher):
    with_system = TransformersTeacher(tiny_teacher.model, "cpu", "float32", system_prompt="You are a careful editor.")
    shown = with_system.tokenizer.decode(with_system.encode("Name a colour."))
    assert "You are a careful editor." in shown and shown.index("careful editor") < shown.index("Name a colour.")
    assert "careful editor" not in tiny_teacher.tokenizer.decode(tiny_teacher.encode("Name a colour."))
    prompts, plain = ["Name a colour."], Sampling(max_new_tokens=4)
    schema = Sampling(max_new_tokens=4, response_schema='{"type": "object"}')
    assert with_system.complete(prompts, schema) == with_system.complete(prompts, plain)  # no constrained decoding


def test_a_sampled_reply_that_hits_max_new_tokens_is_marked_cut(tiny_teacher):
    """The random model never ends within 3 tokens: each sampled reply (generated one by one) is cut."""
    replies = tiny_teacher.complete(
        ["Tell me a story.", "Name a colour."], Sampling(max_new_tokens=3, temperature=1.0)
    )
    assert all(r.strip() for r in replies) and [getattr(r, "finish_reason", None) for r in replies] == ["length"] * 2


@pytest.mark.slow
def test_a_reply_that_uses_every_new_token_without_ending_is_marked_cut(base_model_dir, one_torch_thread):
    """Cut means: all max_new_tokens generated and no end-of-sequence among them (greedy, batched with padding). A
    reply whose last allowed token ends it is complete, and so is one that ends before the cap."""
    teacher = TransformersTeacher(base_model_dir, device="cpu", dtype="float32")
    prompt = "Tell me a story."
    replies = teacher.complete([prompt, "Name three colours of the rainbow."], Sampling(max_new_tokens=3))
    assert all(r.strip() for r in replies) and [getattr(r, "finish_reason", None) for r in replies] == ["length"] * 2
    ids = torch.tensor([teacher.encode(prompt)])
    model = teacher.loaded.model
    greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    third = greedy[0, -1].item()
    assert third not in greedy[0, -3:-1].tolist()  # so the reply ends at its third token, not before
    eos = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [*(eos if isinstance(eos, list) else [eos]), third]
    at_cap = teacher.complete([prompt], Sampling(max_new_tokens=3))  # the third greedy token now ends the reply
    below_cap = teacher.complete([prompt], Sampling(max_new_tokens=8))
    assert at_cap == below_cap and at_cap[0].strip()
    assert [r.finish_reason for r in [*at_cap, *below_cap]] == ["stop", "stop"]


def test_each_reply_counts_its_prompt_and_generated_tokens(base_model_dir, one_torch_thread):
    """Usage as a server reports it: the prompt through the chat template, and the tokens generated, up to and
    including the end-of-sequence token (a reply cut at the cap used every one)."""
    teacher = TransformersTeacher(base_model_dir, device="cpu", dtype="float32")
    prompts = ["What is 2 + 2? Reply with the number only.", "Name three colours and say why the sky is blue."]
    replies = teacher.complete(prompts, Sampling(max_new_tokens=12))
    assert [r.finish_reason for r in replies] == ["stop", "length"], replies  # one ends early, one is cut
    for prompt, reply in zip(prompts, replies):
        assert reply.usage.prompt_tokens == len(teacher.encode(prompt))
        decoded = len(teacher.tokenizer(reply, add_special_tokens=False)["input_ids"])
        ended = reply.finish_reason == "stop"  # its EOS token was generated and counted, but is not in the text
        assert reply.usage.completion_tokens == (decoded + 1 if ended else 12), (reply, reply.usage)
