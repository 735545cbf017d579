"""One chat template for every stage, written into ``models/base`` by the ``base_model`` stage.

Training, loss scoring, judging, the local teacher and evaluation all call ``tokenizer.apply_chat_template`` on a
tokenizer loaded from ``models/base`` or from a checkpoint trained from it (which saves the same tokenizer), so
fixing the template once, in the base folder, makes every stage format turns the same way, and the template is part
of a DVC output (its hash changes when it does). The paper's runs use LLaMA-Factory's ``default`` template, and the
base (non-instruct) checkpoints it fine-tunes often ship no template at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from middo.errors import MiddoError

if TYPE_CHECKING:
    from middo.records import Record

# LLaMA-Factory's "default" turn format: "Human: {user}<eos>\nAssistant:" then "{assistant}<eos>\n", with an
# optional leading "System: {system}<eos>\n". The generation prompt is already part of the user turn.
DEFAULT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'system' -%}"
    "{{ 'System: ' + message['content'] + eos_token + '\\n' }}"
    "{%- elif message['role'] == 'user' -%}"
    "{{ 'Human: ' + message['content'] + eos_token + '\\nAssistant:' }}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{ message['content'] + eos_token + '\\n' }}"
    "{%- endif -%}"
    "{%- endfor -%}"
)


class ChatTemplateError(MiddoError, ValueError):
    """``model.chat_template`` cannot be applied; the message says which value to use instead."""


def resolve_template(setting: str, has_own: bool, model: str) -> str | None:
    """The Jinja text to write for ``setting`` (None: keep the tokenizer's own).

    Raises:
        ChatTemplateError: ``auto`` for a tokenizer without a template, or a path that is not a readable file.
    """
    if setting == "auto":
        if not has_own:
            raise ChatTemplateError(
                f"model.chat_template: 'auto' keeps the tokenizer's own template, but {model} has none (base "
                f"checkpoints often do not); set model.chat_template: default (LLaMA-Factory's, as the paper) or a "
                f"path to a Jinja file"
            )
        return None
    if setting == "default":
        return DEFAULT_TEMPLATE
    path = Path(setting)
    if not path.is_file():
        raise ChatTemplateError(
            f"model.chat_template: {setting!r} is neither 'auto', 'default' nor a readable Jinja file"
        )
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ChatTemplateError(f"model.chat_template: {setting} is empty")
    return text


def set_chat_template(folder: str | Path, setting: str, trust_remote_code: bool = False) -> bool:
    """Write the template chosen by ``setting`` into the tokenizer files of the model folder ``folder``.

    Returns True when the folder was changed (``auto`` with a template already present changes nothing, so the
    folder's bytes, and its DVC hash, stay what the conversion wrote).
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
    text = resolve_template(setting, bool(getattr(tokenizer, "chat_template", None)), str(folder))
    if text is None or text == tokenizer.chat_template:
        return False
    tokenizer.chat_template = text
    tokenizer.save_pretrained(folder)
    return True


# transformers 5 names its generic fast tokenizer "TokenizersBackend"; transformers 4 (OpenCompass, LLaMA-Factory,
# many vLLM builds) does not know that class, while both load the same files as "PreTrainedTokenizerFast".
PORTABLE_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def make_tokenizer_portable(folder: str | Path) -> bool:
    """Rewrite a saved tokenizer's class name to one every transformers version since 4.x loads (same token ids);
    True when the file changed. Every checkpoint this project writes goes through it, so round R's model opens in the
    user's OpenCompass, LLaMA-Factory or vLLM environment."""
    import json

    from middo.dataio.atomic import atomic_write_text

    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return False
    config = json.loads(path.read_text(encoding="utf-8"))
    portable = PORTABLE_CLASSES.get(config.get("tokenizer_class"))
    if portable is None:
        return False
    config["tokenizer_class"] = portable
    atomic_write_text(path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return True


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def fit_to_cutoff(n_prompt: int, n_response: int, cutoff: int) -> tuple[int, int]:
    """How many prompt and response tokens a sample keeps when it must fit in ``cutoff`` tokens.

    The rule of LLaMA-Factory (the reference's trainer, ``cutoff_len``), in our words: a side shorter than half the
    cutoff is kept whole and the other side gets the rest; when both are longer they share the cutoff in proportion
    to their lengths. Unlike cutting the end of the whole sequence, a long prompt never pushes the response out: the
    response keeps at least one token (LLaMA-Factory's proportional share rounds to zero when the prompt is thousands
    of times longer; we keep one so the sample is still trained on and scored).
    """
    if n_prompt + n_response <= cutoff:
        return n_prompt, n_response
    if 2 * n_response < cutoff:  # short response: whole; the prompt gives way
        keep_response = n_response
    elif 2 * n_prompt < cutoff:  # short prompt: whole; the response takes what is left
        keep_response = cutoff - n_prompt
    else:  # both long: shared in proportion to their lengths
        keep_response = max(1, cutoff * n_response // (n_prompt + n_response))
    return min(n_prompt, cutoff - keep_response), keep_response


def _ids(encoded) -> list[int]:
    return list(encoded["input_ids"] if not isinstance(encoded, list) else encoded)


def tokenize_turn(tokenizer, record: Record, max_length: int) -> tuple[list[int], int]:
    """``(ids, n_prompt)``: the tokens of one prompt/response turn as training learns from and scoring measures them,
    and how many of them are prompt (masked). The one place the rule lives, so training and loss scoring cannot differ.

    ``ids`` is the chat template applied to prompt + response; the response starts where it first differs from the
    template applied to the prompt alone with the generation prompt (usually right after it; earlier when a template
    renders the prompt alone differently; TRL draws the same line). Past ``max_length`` tokens (``train.max_length``),
    :func:`fit_to_cutoff` decides how many of each side stay: the first tokens of the prompt and the first tokens of
    the response, as LLaMA-Factory keeps them.
    """
    prompt = _ids(tokenizer.apply_chat_template(record.messages(False), add_generation_prompt=True, tokenize=True))
    full = _ids(tokenizer.apply_chat_template(record.messages(True), tokenize=True))
    n_prompt = common_prefix_length(prompt, full)
    keep_prompt, keep_response = fit_to_cutoff(n_prompt, len(full) - n_prompt, max_length)
    return full[:keep_prompt] + full[n_prompt : n_prompt + keep_response], keep_prompt


def training_rows(tokenizer, records: Sequence[Record], max_length: int) -> list[dict]:
    """Pre-tokenized rows for TRL's ``SFTTrainer`` (``input_ids`` and ``completion_mask``, 1 on the response), cut by
    :func:`tokenize_turn`; TRL keeps them as they are (they already fit ``max_length``, so its own cut is a no-op)."""
    rows = []
    for rec in records:
        ids, n_prompt = tokenize_turn(tokenizer, rec, max_length)
        rows.append({"input_ids": ids, "completion_mask": [0] * n_prompt + [1] * (len(ids) - n_prompt)})
    return rows
