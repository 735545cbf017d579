import contextlib
import hashlib
import json

import gguf
import pytest
import torch

from middo import base_model
from middo.base_model import BaseModelError, embedded_gguf, gguf_parsed_once, load_gguf, materialise


def convert_counting(out):
    """Convert the embedded model into ``out``, counting the GGUF parses and tensor-name maps gguf-py really builds
    (counted at their constructors, beneath any memo, so a transformers that bypasses the memo shows up here)."""
    counts = {"GGUFReader": 0, "TensorNameMap": 0}

    def counting(cls):
        init = cls.__init__

        def counted(self, *args, **kwargs):
            counts[cls.__name__] += 1
            init(self, *args, **kwargs)

        return counted

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gguf.GGUFReader, "__init__", counting(gguf.GGUFReader))
        mp.setattr(gguf.TensorNameMap, "__init__", counting(gguf.TensorNameMap))
        materialise("embedded:smollm2-135m-instruct", out, False, "auto", False)
    return out, counts


def file_hashes(folder):
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """Converted here and now, once for this module, not the ``base_model_dir`` fixture's folder: that one is reused
    across runs, so on a warm machine it would be whatever an older converter wrote (~35 s on a 2-core CPU)."""
    return convert_counting(tmp_path_factory.mktemp("converted") / "base")


@pytest.mark.slow
def test_conversion_parses_the_gguf_once(converted):
    _, counts = converted
    assert counts == {"GGUFReader": 1, "TensorNameMap": 1}


@pytest.mark.slow
def test_conversion_is_byte_identical_to_the_plain_path(converted, tmp_path, monkeypatch):
    """The memo only shares what transformers reads, so every file must equal a conversion without it (~60 s)."""
    folder, _ = converted
    monkeypatch.setattr(base_model, "gguf_parsed_once", contextlib.nullcontext)
    plain, plain_counts = convert_counting(tmp_path / "plain")
    assert plain_counts["GGUFReader"] > 1  # else the memo guards nothing and the counter above proves nothing
    hashes = file_hashes(folder)
    assert "model.safetensors" in hashes
    assert hashes == file_hashes(plain)


def test_gguf_memo_is_scoped_to_its_block():
    real = gguf.GGUFReader, gguf.get_tensor_name_map
    with pytest.raises(KeyError), gguf_parsed_once():
        assert (gguf.GGUFReader, gguf.get_tensor_name_map) != real
        raise KeyError("conversion failed")
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == real


@pytest.mark.slow
def test_converted_logits_equal_gguf(converted):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_model_dir, _ = converted
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
