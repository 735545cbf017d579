"""Field rules for one dataset record: turn a parsed object into a :class:`Record`, or say exactly why not.

Kept apart from the file readers so that JSON, JSONL, Parquet and ``save_to_disk`` rows obey one set of rules and
produce one set of reject reasons. Text is kept byte-for-byte (never stripped) so our own files round-trip exactly.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from middo.records import AXES, OPS, Record, content_id

SCHEMAS = ("alpaca", "sharegpt", "openai")
LINEAGE = ("parent_id", "round", "axis", "op")
CONVERSATION_KEY = {"sharegpt": "conversations", "openai": "messages"}
_ALPACA_FIELDS = frozenset({"id", "instruction", "input", "output", "system", "history", "meta", *LINEAGE})
_MESSAGE_KEYS = {"sharegpt": ("from", "value"), "openai": ("role", "content")}
# Both role vocabularies are accepted in both formats: mixed-up exports are common and the mapping is unambiguous.
_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
_ROLE_NAMES = {"sharegpt": {"user": "human", "assistant": "gpt"}, "openai": {"user": "user", "assistant": "assistant"}}
# Control characters (C0, DEL, C1) other than \t \n \r, and lone surrogates (which cannot be written as UTF-8).
_BAD_CHAR = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class RecordError(ValueError):
    """Why one record cannot be used; ``kind`` is a short category so rejects can be counted by cause."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def detect_schema(obj: dict[str, Any]) -> str:
    """Guess the schema from one record's keys: Alpaca if it has ``instruction``, else the conversation key."""
    if "instruction" in obj:
        return "alpaca"
    for schema, key in CONVERSATION_KEY.items():
        if key in obj:
            return schema
    return "alpaca"


def build_record(obj: dict[str, Any], schema: str) -> Record:
    """Validate ``obj`` against ``schema`` and build the record; ``None`` counts as absent for optional fields.

    Unknown keys go to ``meta``; lineage fields are kept when present, so the pipeline's own files round-trip.

    Raises:
        RecordError: the first rule the object breaks, naming the field and what was expected.
    """
    if schema == "alpaca":
        known = _ALPACA_FIELDS
        instruction = _required_text(obj, "instruction")
        output = _required_text(obj, "output")
        input_ = _optional_text(obj, "input")
        system = _optional_text(obj, "system")
        history = _history(obj.get("history"))
    elif schema in CONVERSATION_KEY:
        system, history, prompt, output = _conversation(obj, schema)
        instruction, input_ = _split_input(prompt, obj.get("input"))
        known = frozenset({CONVERSATION_KEY[schema], "id", "system", "meta", *LINEAGE, *(["input"] if input_ else [])})
    else:
        raise ValueError(f"unknown schema {schema!r}; expected one of {', '.join(SCHEMAS)}")
    lineage = _lineage(obj)
    meta = _meta(obj, known)
    record_id = _id(obj) or content_id(instruction, input_, output, system, history)
    return Record(
        id=record_id,
        instruction=instruction,
        output=output,
        input=input_,
        system=system,
        history=history,
        meta=meta,
        **lineage,
    )


def type_name(value: Any) -> str:
    """JSON-flavoured type name for messages ("null", "int", "list", ...)."""
    return "null" if value is None else type(value).__name__


def _text(value: Any, label: str, nonempty: bool) -> str:
    if not isinstance(value, str):
        raise RecordError("wrong_type", f"{label}: expected str, got {type_name(value)}")
    bad = _BAD_CHAR.search(value)
    if bad:
        code = ord(bad.group())
        if 0xD800 <= code <= 0xDFFF:
            raise RecordError(
                "bad_unicode",
                f"{label}: lone surrogate U+{code:04X} at offset {bad.start()}; expected valid Unicode text",
            )
        raise RecordError(
            "control_char",
            f"{label}: control character U+{code:04X} at offset {bad.start()}; "
            "expected text without control characters other than \\n, \\t, \\r",
        )
    if nonempty and not value.strip():
        raise RecordError("empty_text", f"{label}: empty after stripping whitespace; expected non-empty text")
    return value


def _required_text(obj: dict[str, Any], name: str) -> str:
    if name not in obj:
        raise RecordError("missing_field", f"missing required field '{name}'")
    return _text(obj[name], f"field '{name}'", nonempty=True)


def _optional_text(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    return "" if value is None else _text(value, f"field '{name}'", nonempty=False)


def _history(value: Any) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)):
        raise RecordError(
            "wrong_type", f"field 'history': expected a list of [user, assistant] pairs, got {type_name(value)}"
        )
    pairs = []
    for i, pair in enumerate(value):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            got = f"{type_name(pair)} of length {len(pair)}" if isinstance(pair, (list, tuple)) else type_name(pair)
            raise RecordError("wrong_type", f"field 'history[{i}]': expected a [user, assistant] pair, got {got}")
        user = _text(pair[0], f"field 'history[{i}][0]'", nonempty=True)
        assistant = _text(pair[1], f"field 'history[{i}][1]'", nonempty=True)
        pairs.append((user, assistant))
    return tuple(pairs)


def _split_input(prompt: str, value: Any) -> tuple[str, str]:
    """Instruction and input of a conversation's last user turn.

    middo's ShareGPT / OpenAI exports keep an Alpaca ``input`` beside the conversation, whose last user turn is
    ``instruction + "\\n" + input`` (how LLaMA-Factory joins them), so the two split back apart. An ``input`` that
    does not end that turn is just another unknown field.
    """
    if isinstance(value, str) and value and prompt.endswith("\n" + value):
        head = prompt[: -len(value) - 1]
        if head.strip():
            return head, value
    return prompt, ""


def _conversation(obj: dict[str, Any], schema: str) -> tuple[str, tuple[tuple[str, str], ...], str, str]:
    """System prompt, earlier pairs, and the last user/assistant pair of a ShareGPT or OpenAI conversation."""
    key = CONVERSATION_KEY[schema]
    role_key, content_key = _MESSAGE_KEYS[schema]
    names = _ROLE_NAMES[schema]
    order = (
        f"expected an optional system message, then alternating {names['user']}/{names['assistant']} turns "
        f"ending with {names['assistant']}"
    )
    if key not in obj:
        raise RecordError("missing_field", f"missing required field '{key}'")
    messages = obj[key]
    if not isinstance(messages, (list, tuple)):
        raise RecordError("wrong_type", f"field '{key}': expected a list of messages, got {type_name(messages)}")
    top_system = obj.get("system") is not None
    system = _optional_text(obj, "system")
    turns: list[str] = []
    for i, message in enumerate(messages):
        loc = f"{key}[{i}]"
        if not isinstance(message, dict):
            expected = f"expected an object with '{role_key}' and '{content_key}'"
            raise RecordError("wrong_type", f"field '{loc}': {expected}, got {type_name(message)}")
        for k in (role_key, content_key):
            if k not in message:
                raise RecordError("missing_field", f"field '{loc}': missing '{k}'")
        raw_role = message[role_key]
        role = _ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            expected = f"expected one of system, {names['user']}, {names['assistant']}"
            raise RecordError("bad_role", f"field '{loc}.{role_key}': unknown role {_short(raw_role)}; {expected}")
        text = _content(message[content_key], f"{loc}.{content_key}", nonempty=role != "system")
        if role == "system":
            if i != 0:
                raise RecordError("role_order", f"field '{loc}.{role_key}': system message not first; {order}")
            if top_system:
                raise RecordError(
                    "bad_value",
                    f"field '{loc}': system prompt given both as field 'system' and as a "
                    "system message; expected one of them",
                )
            system = text
            continue
        wanted = "user" if len(turns) % 2 == 0 else "assistant"
        if role != wanted:
            raise RecordError(
                "role_order",
                f"field '{loc}.{role_key}': expected role '{names[wanted]}', got {_short(raw_role)}; {order}",
            )
        turns.append(text)
    if not turns:
        raise RecordError("role_order", f"field '{key}': no {names['user']}/{names['assistant']} turns; {order}")
    if len(turns) % 2:
        raise RecordError("role_order", f"field '{key}': ends with a {names['user']} message; {order}")
    pairs = tuple((turns[j], turns[j + 1]) for j in range(0, len(turns), 2))
    instruction, output = pairs[-1]
    return system, pairs[:-1], instruction, output


# Part types that carry text: the chat API's "text", the Responses API's "input_text"/"output_text".
_TEXT_PARTS = frozenset({"text", "input_text", "output_text"})


def _content(value: Any, loc: str, nonempty: bool) -> str:
    """A message's text: a string, or a list of typed parts (``[{"type": "text", "text": ...}]``, as the OpenAI API
    and many exported datasets write it; some tools put the text under ``value``), whose text parts are joined with
    a newline. A part that is not text (an image, audio, a file) rejects the record: a text-only model would train
    on a message with a hole in it."""
    if not isinstance(value, list):
        return _text(value, f"field '{loc}'", nonempty)
    texts = []
    for j, part in enumerate(value):
        where = f"field '{loc}[{j}]'"
        if not isinstance(part, dict):
            raise RecordError("wrong_type", f"{where}: expected a content part object, got {type_name(part)}")
        kind = part.get("type", "text")
        if kind not in _TEXT_PARTS:
            raise RecordError(
                "non_text_part", f"{where}: part of type {_short(kind)} is not text; expected text parts only"
            )
        key = "text" if "text" in part else "value" if "value" in part else None
        if key is None:
            raise RecordError("missing_field", f"{where}: text part without 'text' (or 'value')")
        texts.append(_text(part[key], f"{where}.{key}", nonempty=False))
    text = "\n".join(texts)
    if nonempty and not text.strip():
        raise RecordError("empty_text", f"field '{loc}': empty after stripping whitespace; expected non-empty text")
    return text


def _id(obj: dict[str, Any]) -> str | None:
    value = obj.get("id")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise RecordError("wrong_type", f"field 'id': expected str or int, got {type_name(value)}")
    text = _text(str(value), "field 'id'", nonempty=False)
    if not text.strip():
        raise RecordError(
            "empty_text", "field 'id': empty; expected a non-empty id, or no 'id' field for a content-derived one"
        )
    return text


def _lineage(obj: dict[str, Any]) -> dict[str, Any]:
    """Lineage fields present in the source; absent ones take the Record defaults (round 0, op "seed")."""
    out: dict[str, Any] = {}
    if obj.get("parent_id") is not None:
        out["parent_id"] = _text(obj["parent_id"], "field 'parent_id'", nonempty=True)
    value = obj.get("round")
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise RecordError("wrong_type", f"field 'round': expected int, got {type_name(value)}")
        if value < 0:
            raise RecordError("bad_value", f"field 'round': expected an int >= 0, got {value}")
        out["round"] = value
    value = obj.get("axis")
    if value is not None:
        if not isinstance(value, str) or value not in AXES:
            raise RecordError(
                "bad_value", f"field 'axis': expected one of {', '.join(AXES)} or null, got {_short(value)}"
            )
        out["axis"] = value
    value = obj.get("op")
    if value is not None:
        if not isinstance(value, str) or value not in OPS:
            raise RecordError("bad_value", f"field 'op': expected one of {', '.join(OPS)}, got {_short(value)}")
        out["op"] = value
    return out


def _meta(obj: dict[str, Any], known: frozenset[str]) -> dict[str, Any]:
    """Our own ``meta`` object plus every unknown field; a non-object ``meta`` is just another unknown field."""
    given = obj.get("meta")
    meta = dict(given) if isinstance(given, dict) else {}
    for key, value in obj.items():
        if key not in known or (key == "meta" and not isinstance(value, dict)):
            meta.setdefault(key, value)
    return {str(k): _jsonable(v, f"meta.{k}") for k, v in meta.items()}


def _jsonable(value: Any, path: str) -> Any:
    """A JSON-writable copy of a meta value: Parquet / Arrow rows can hold dates, decimals or bytes."""
    if isinstance(value, str):
        bad = _SURROGATE.search(value)
        if bad:
            raise RecordError(
                "bad_unicode",
                f"field '{path}': lone surrogate U+{ord(bad.group()):04X} at offset "
                f"{bad.start()}; expected valid Unicode text",
            )
        return value
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    return str(value)


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
