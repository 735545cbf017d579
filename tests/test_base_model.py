import json

import pytest
import torch

from middo.base_model import BaseModelError, embedded_gguf, load_gguf, materialise


@pytest.mark.slow
def test_converted_logits_equal_gguf(tmp_path):
    """Converted here and now, not the ``base_model_dir`` fixture's folder: that one is reused across runs, so on a
    warm machine it would be whatever an older converter wrote (~25 s on a 2-core CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model_dir = materialise("embedded:smollm2-135m-instruct", tmp_path / "base", False, "auto", False)
    gguf_model, gguf_tok = load_gguf(*embedded_gguf("smollm2-135m-instruct"))
    model = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32, local_files_only=True)
    tok = AutoTokenizer.from_pretrained(base_model_dir, local_files_only=True)
    msgs = [{"role": "user", "content": "Name three primary colours."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    gguf_ids = gguf_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    assert torch.equal(ids["input_ids"], gguf_ids["input_ids"])
    with torch.inference_mode():
        a = model(**ids).logits
        b = gguf_model(**ids).logits
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert (base_model_dir / "model.safetensors").is_file()
    assert tok.chat_template and "<|im_start|>" in tok.chat_template


@pytest.mark.slow
def test_local_folder_is_copied_atomically(base_model_dir, tmp_path):
    out = materialise(str(base_model_dir), tmp_path / "models" / "base", False, "auto", False)
    assert (out / "config.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left behind
    # a class name transformers 4 knows too (OpenCompass, LLaMA-Factory, vLLM envs)
    assert json.loads((out / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_unknown_spec_offline_is_clear(tmp_path):
    with pytest.raises(BaseModelError, match="allow_download"):
        materialise("someone/some-model", tmp_path / "m", False, "auto", False)
    assert not (tmp_path / "m").exists()
    assert list(tmp_path.iterdir()) == []


def test_folder_without_config_is_rejected(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BaseModelError, match="no config.json"):
        materialise(str(tmp_path / "empty"), tmp_path / "m", False, "auto", False)


def test_unknown_embedded_name():
    with pytest.raises(BaseModelError, match="unknown embedded model 'nope'"):
        embedded_gguf("nope")
