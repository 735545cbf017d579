"""One chat template for every stage, written into ``models/base`` by the ``base_model`` stage.

Training, loss scoring, judging, the local teacher and evaluation all call ``tokenizer.apply_chat_template`` on a
tokenizer loaded from ``models/base`` or from a checkpoint trained from it (which saves the same tokenizer), so
fixing the template once, in the base folder, makes every stage format turns the same way, and the template is part
of a DVC output (its hash changes when it does). The paper's runs use LLaMA-Factory's ``default`` template, and the
base (non-instruct) checkpoints it fine-tunes often ship no template at all.
"""

from __future__ import annotations

from pathlib import Path

from middo.errors import MiddoError

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
