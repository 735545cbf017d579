"""model.chat_template: one template, written into models/base, used by every stage that formats turns."""

import json

import pytest
from tiny_models import tiny_model
from transformers import AutoTokenizer

from middo.base_model import materialise
from middo.chat_template import DEFAULT_TEMPLATE, ChatTemplateError, fit_to_cutoff, resolve_template
from middo.config import TrainConfig
from middo.records import Record

MESSAGES = [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}]


@pytest.fixture()
def templateless(base_model_dir, tmp_path):
    """A tiny model whose tokenizer has no chat template, like many base (non-instruct) checkpoints."""
    folder = tiny_model(base_model_dir, tmp_path / "tiny")
    config = folder / "tokenizer_config.json"
    raw = json.loads(config.read_text())
    raw.pop("chat_template", None)
    config.write_text(json.dumps(raw))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    assert not AutoTokenizer.from_pretrained(folder).chat_template
    return folder


def test_default_is_llama_factory_default_format(base_model_dir, tmp_path):
    out = materialise(str(base_model_dir), tmp_path / "base", False, "default", False)
    tok = AutoTokenizer.from_pretrained(out)
    eos = tok.eos_token
    prompt = tok.apply_chat_template(MESSAGES[:1], add_generation_prompt=True, tokenize=False)
    full = tok.apply_chat_template(MESSAGES, tokenize=False)
    assert prompt == f"Human: Name a colour.{eos}\nAssistant:"
    assert full == f"Human: Name a colour.{eos}\nAssistant:Blue.{eos}\n"
    system = tok.apply_chat_template([{"role": "system", "content": "Be brief."}, *MESSAGES], tokenize=False)
    assert system.startswith(f"System: Be brief.{eos}\nHuman: ")


def test_auto_keeps_the_tokenizers_own_and_leaves_the_files_alone(base_model_dir, tmp_path):
    out = materialise(str(base_model_dir), tmp_path / "base", False, "auto", False)
    assert (out / "tokenizer.json").read_bytes() == (base_model_dir / "tokenizer.json").read_bytes()
    config, before = (json.loads((d / "tokenizer_config.json").read_text()) for d in (out, base_model_dir))
    assert config.pop("tokenizer_class") == "PreTrainedTokenizerFast"  # only ever made portable, nothing else
    before.pop("tokenizer_class")
    assert config == before


def test_auto_without_a_template_names_the_param_and_writes_nothing(templateless, tmp_path):
    with pytest.raises(ChatTemplateError, match=r"chat_template: 'auto'.*has none.*chat_template: default"):
        materialise(str(templateless), tmp_path / "base", False, "auto", False)
    assert not (tmp_path / "base").exists()


def test_a_template_file_is_used_as_written(templateless, tmp_path):
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}<<{{ m['role'] }}>>{{ m['content'] }}{% endfor %}")
    out = materialise(str(templateless), tmp_path / "base", False, str(jinja), False)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.apply_chat_template(MESSAGES, tokenize=False) == "<<user>>Name a colour.<<assistant>>Blue."


def test_bad_settings_are_clear():
    with pytest.raises(ChatTemplateError, match="neither 'auto', 'default' nor a readable Jinja file"):
        resolve_template("no/such/file.jinja", True, "m")
    assert resolve_template("default", False, "m") == DEFAULT_TEMPLATE
    assert resolve_template("auto", True, "m") is None


@pytest.mark.slow
def test_training_and_loss_scoring_format_with_the_base_folders_template(templateless, tmp_path):
    from middo.diagnose.complexity import tokenize_for_loss
    from middo.modeling import load_tokenizer
    from middo.train import build_trainer

    base = materialise(str(templateless), tmp_path / "base", False, "default", False)
    rec = Record(id="a", instruction="Name a colour.", output="Blue.")
    cfg = TrainConfig(max_steps=1, batch_size=1, max_length=64)
    trainer = build_trainer([rec], base, tmp_path / "run", cfg, 0, "cpu", "float32", False)
    tok = load_tokenizer(base)
    trained = tok.decode(trainer.train_dataset[0]["input_ids"])
    assert trained.startswith("Human: Name a colour.") and "\nAssistant:Blue." in trained
    scored = tok.decode(tokenize_for_loss(tok, [rec], max_length=64)[0][0])
    assert scored == trained


@pytest.mark.parametrize(
    "n_prompt,n_response,cutoff,kept",
    [
        (100, 50, 200, (100, 50)),  # fits: nothing cut
        (4036, 964, 4096, (3132, 964)),  # response under half the cutoff: whole; the prompt gives way
        (300, 4700, 4096, (300, 3796)),  # prompt under half: whole; the response takes the rest
        (2535, 2508, 4096, (2059, 2037)),  # both long: in proportion, 4096 * 2508 // 5043 = 2037 to the response
        (10**6, 10, 16, (15, 1)),  # LLaMA-Factory's share would round to 0 here; one response token stays
        (30, 0, 16, (16, 0)),  # nothing to keep of a response that has no token
    ],
)
def test_a_long_sample_keeps_its_response_and_trims_its_prompt(n_prompt, n_response, cutoff, kept):
    """LLaMA-Factory's cutoff_len split (data/processor/processor_utils.py, infer_seqlen), worked by hand."""
    assert fit_to_cutoff(n_prompt, n_response, cutoff) == kept
    assert sum(kept) == min(cutoff, n_prompt + n_response)


def test_saved_tokenizers_name_a_class_transformers_4_knows(base_model_dir, tmp_path):
    """OpenCompass, LLaMA-Factory and many vLLM builds run transformers 4, which has no 'TokenizersBackend'."""
    import json
    import shutil

    from transformers import AutoTokenizer

    from middo.chat_template import make_tokenizer_portable

    folder = tmp_path / "model"
    shutil.copytree(base_model_dir, folder)
    before = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "TokenizersBackend"  # what transformers 5's save_pretrained writes
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert make_tokenizer_portable(folder)
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert not make_tokenizer_portable(folder)  # already portable: the file (and its DVC hash) stays
    after = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    text = "Übersetze: <|im_start|>user\nHi 你好"
    assert after(text)["input_ids"] == before(text)["input_ids"]
    assert after.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == before.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False
    )
