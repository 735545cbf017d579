"""LLaMA-Factory interop: the ``dataset_info.json`` that lets ``llamafactory-cli train`` use a round's folder as is,
and import through a user's ``dataset_info.json`` entry.

An entry maps LLaMA-Factory's roles (``prompt``, ``response``, ``messages``, ``user_tag``, ...) onto a file's own
column names. Import follows LLaMA-Factory's rules (``data/README.md``, ``data/parser.py``): without ``columns`` only
the default columns are read (no system, no history); with ``columns`` only the ones it names; with ``tags`` only the
tags it names. A field with one of our names that the entry does not read goes to ``meta``: LLaMA-Factory would not
train on it, and nothing is lost.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_text
from middo.dataio.readers import DatasetError
from middo.dataio.schema import RecordError, type_name
from middo.errors import MiddoError

DATASET_INFO = "dataset_info.json"
# LLaMA-Factory column role -> our Alpaca field; and its conversation column -> our ShareGPT field.
ALPACA_COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "system": "system",
    "history": "history",
}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": "system"}
# LLaMA-Factory tag -> the value our ShareGPT reader expects (ShareGPT's own names, also LLaMA-Factory's defaults).
SHAREGPT_TAGS = {
    "role_tag": "from",
    "content_tag": "value",
    "user_tag": "human",
    "assistant_tag": "gpt",
    "system_tag": "system",
}
OPENAI_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
    "system_tag": "system",
}
_ROLE_TAGS = ("user_tag", "assistant_tag", "system_tag")
# What LLaMA-Factory reads when an entry has no "columns" (DatasetAttr's defaults).
_DEFAULT_COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output"},
    "sharegpt": {"messages": "conversations"},
}
_REQUIRED_COLUMNS = {"alpaca": ("prompt", "response"), "sharegpt": ("messages",)}
_REQUIRED_TAGS = ("role_tag", "content_tag", "user_tag", "assistant_tag")
_UNSUPPORTED_COLUMNS = {
    "chosen": "preference",
    "rejected": "preference",
    "kto_tag": "KTO feedback",
    "images": "multimodal",
    "videos": "multimodal",
    "audios": "multimodal",
    "tools": "tool-calling",
}
_REMOTE_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
_HF_SAVED = ("state.json", "dataset_dict.json")  # beside a save_to_disk folder's own dataset_info.json
_QUOTED = re.compile(r"'(\w+)((?:\[\w+\])*)(?:\.(\w+))?([^']*)'")  # 'name[2].part...' in a reject reason


def round_dataset_name(round_: int) -> str:
    """The dataset name of round ``round_`` for ``llamafactory-cli train --dataset``: ``middo_round_2``."""
    return f"middo_round_{round_}"


def dataset_info_entry(name: str, file_name: str, fmt: str = "alpaca") -> dict[str, Any]:
    """``{name: entry}``: a ``dataset_info.json`` that describes ``file_name`` in middo's own layout.

    Args:
        name: the dataset name for ``llamafactory-cli train --dataset``.
        file_name: the data file, relative to the folder of the ``dataset_info.json``.
        fmt: ``alpaca`` (our JSONL or Parquet), ``sharegpt`` or ``openai`` (our exports of those layouts).
    """
    if fmt == "alpaca":
        entry = {"file_name": file_name, "formatting": "alpaca", "columns": dict(ALPACA_COLUMNS)}
    elif fmt == "sharegpt":
        columns = dict(SHAREGPT_COLUMNS)
        entry = {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": dict(SHAREGPT_TAGS)}
    elif fmt == "openai":
        columns = {"messages": "messages"}  # the system prompt is the first message
        entry = {"file_name": file_name, "formatting": "sharegpt", "columns": columns, "tags": dict(OPENAI_TAGS)}
    else:
        raise ValueError(f"dataset_info_entry: unknown fmt {fmt!r}; expected alpaca, sharegpt or openai")
    return {name: entry}


def write_dataset_info(
    folder: str | os.PathLike[str], name: str, file_name: str = "train.jsonl", fmt: str = "alpaca", merge: bool = False
) -> Path:
    """Write ``folder/dataset_info.json`` (atomically) describing ``folder/file_name``; return its path.

    Args:
        merge: keep the other entries of an existing file (an export folder shared by several exports); without
            it the file names this dataset only, as a round's folder should.

    Raises:
        MiddoError: ``merge`` and the existing file is not a JSON object (it is left as it is).
    """
    path = Path(folder) / DATASET_INFO
    info = _read_existing(path) if merge and path.is_file() else {}
    info.update(dataset_info_entry(name, file_name, fmt))
    atomic_write_text(path, json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return path


def _read_existing(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise MiddoError(f"{path}: not valid JSON ({e}); expected a dataset_info.json to add an entry to") from e
    if not isinstance(info, dict):
        raise MiddoError(f"{path}: top-level JSON is a {type_name(info)}; expected an object of dataset entries")
    return info


def find_dataset_info(source: str | os.PathLike[str]) -> Path | None:
    """The ``dataset_info.json`` that ``source`` names: the file itself, or one in a LLaMA-Factory data folder.

    A folder written by ``datasets``' ``save_to_disk`` has a ``dataset_info.json`` of its own (next to
    ``state.json``); that is not one, and ``None`` is returned.
    """
    path = Path(source)
    if path.name == DATASET_INFO and path.is_file():
        return path
    if path.is_dir() and (path / DATASET_INFO).is_file() and not any((path / m).exists() for m in _HF_SAVED):
        return path / DATASET_INFO
    return None


@dataclass(frozen=True)
class Columns:
    """One entry's column and tag names; renames a record's keys to the names our reader expects.

    ``fields`` maps our field to the source's column (only the columns the entry reads); ``tags`` maps each
    LLaMA-Factory tag to the source's value (sharegpt only).
    """

    schema: str
    fields: dict[str, str]
    tags: dict[str, str] = field(default_factory=dict)

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj`` with the entry's columns under our names; keys that are not columns (id, lineage, meta) stay."""
        fields = dict(self.fields)
        messages = obj.get(fields["conversations"]) if self.schema == "sharegpt" else None
        if "system" in fields and self._leads_with_system(messages):
            del fields["system"]  # LLaMA-Factory: a leading system message wins over the system column
        out = {ours: obj[theirs] for ours, theirs in fields.items() if theirs in obj}
        if isinstance(messages, list):
            roles = {self.tags[t]: SHAREGPT_TAGS[t] for t in _ROLE_TAGS if t in self.tags}
            out["conversations"] = [self._message(m, i, roles) for i, m in enumerate(messages)]
        used = set(fields.values())
        ours = set(ALPACA_COLUMNS.values() if self.schema == "alpaca" else SHAREGPT_COLUMNS.values())
        unread = {}
        for key, value in obj.items():
            if key in used:
                continue
            if key in ours:
                unread[key] = value
            else:
                out.setdefault(key, value)
        if unread:
            meta = out.get("meta")
            base = meta if isinstance(meta, dict) else {} if meta is None else {"meta": meta}
            out["meta"] = {**unread, **base}
        return out

    def explain(self, reason: str) -> str:
        """A reject reason in the file's own column and key names: ``field 'output'`` -> ``field 'answer'``.

        Role values stay in ShareGPT's words (human, gpt): the reject's raw record shows the file's own.
        """
        parts = {}
        if self.schema == "sharegpt":
            parts = {"from": self.tags["role_tag"], "value": self.tags["content_tag"]}
        names = {**parts, **self.fields}

        def rename(m: re.Match) -> str:
            head, index, part, rest = m.groups()
            tail = "" if part is None else "." + (parts.get(part, part) if index else part)
            return f"'{names.get(head, head)}{index}{tail}{rest}'"

        return _QUOTED.sub(rename, reason)

    def _leads_with_system(self, messages: Any) -> bool:
        system_tag = self.tags.get("system_tag")
        first = messages[0] if isinstance(messages, list) and messages else None
        return system_tag is not None and isinstance(first, dict) and first.get(self.tags["role_tag"]) == system_tag

    def _message(self, message: Any, i: int, roles: dict[str, str]) -> Any:
        """One message with ShareGPT's keys and roles; a role the entry's tags do not name is rejected here."""
        if not isinstance(message, dict):
            return message  # the reader rejects it with its reason
        role_tag, content_tag = self.tags["role_tag"], self.tags["content_tag"]
        out = {k: v for k, v in message.items() if k not in (role_tag, content_tag, "from", "value")}
        if content_tag in message:
            out["value"] = message[content_tag]
        if role_tag in message:
            role = message[role_tag]
            if not isinstance(role, str) or role not in roles:
                # roles in double quotes: explain() renames single-quoted field names, and "system" is both
                expected = ", ".join(_quote(r) for r in roles)
                where = f"{self.fields['conversations']}[{i}].{role_tag}"
                raise RecordError(
                    "bad_role", f"field '{where}': unknown role {_quote(role)}; expected one of {expected}"
                )
            out["from"] = roles[role]
        return out


def _quote(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


@dataclass(frozen=True)
class Entry:
    """A resolved ``dataset_info.json`` entry: which file to read, in which schema, with which column names."""

    info_path: Path
    name: str
    file: Path
    schema: str
    columns: Columns


def open_entry(info_path: str | os.PathLike[str], name: str = "") -> Entry:
    """Resolve entry ``name`` of ``info_path`` (the only entry when ``name`` is empty) to a local file.

    ``file_name`` is relative to the folder of ``info_path``, as in LLaMA-Factory. Keys that only shape how
    LLaMA-Factory samples or loads (``split``, ``num_samples``, ``subset``, ``folder``) are not used.

    Raises:
        DatasetError: the file is not a JSON object of entries, the entry is missing (the message lists those it
            has), loads from the hub or a script, uses an unsupported formatting or column, lacks a required
            column or tag, or its ``file_name`` is not a file.
    """
    info_path = Path(info_path)
    info = _load_info(info_path)
    if not name:
        if len(info) != 1:
            raise DatasetError(f"{info_path}: holds {len(info)} entries ({', '.join(info)}); name one as data.entry")
        name = next(iter(info))
    if name not in info:
        raise DatasetError(f"{info_path}: no entry {name!r}; it has: {', '.join(info)}")
    entry = info[name]
    where = f"{info_path}: entry {name!r}"
    if not isinstance(entry, dict):
        raise DatasetError(f"{where}: is a {type_name(entry)}; expected an object with file_name, formatting, columns")
    remote = [k for k in _REMOTE_KEYS if k in entry]
    if remote and "file_name" not in entry:
        raise DatasetError(
            f"{where}: loads from {remote[0]}={entry[remote[0]]!r}, which needs the internet (or a loading script); "
            "middo imports local files only: download the dataset and give the entry a local file_name"
        )
    schema = entry.get("formatting", "alpaca")
    if schema not in _DEFAULT_COLUMNS:
        raise DatasetError(f"{where}: formatting {schema!r} is not supported; expected alpaca or sharegpt")
    if entry.get("ranking"):
        raise DatasetError(f"{where}: is a preference dataset (ranking: true); middo imports supervised data only")
    columns = Columns(schema, _fields(entry, schema, where), _tags(entry, schema, where))
    file_name = entry.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise DatasetError(f"{where}: file_name is {file_name!r}; expected the data file's name")
    file = info_path.parent / file_name
    if file.is_dir():
        raise DatasetError(f"{where}: file_name {file_name!r} is a folder ({file}); expected one data file")
    if not file.is_file():
        raise DatasetError(f"{where}: file_name {file_name!r}: {file}: no such file")
    return Entry(info_path, name, file, schema, columns)


def _load_info(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise DatasetError(f"{path}: no such file; expected a LLaMA-Factory dataset_info.json")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); expected a dataset_info.json"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 ({e.reason} at byte {e.start}); expected UTF-8 JSON") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: top-level JSON is a {type_name(info)}; expected an object of dataset entries")
    if not info:
        raise DatasetError(f"{path}: has no dataset entries; expected at least one")
    return info


def _fields(entry: dict[str, Any], schema: str, where: str) -> dict[str, str]:
    """Our field -> the file's column, for the columns LLaMA-Factory reads for this entry."""
    given = entry.get("columns", _DEFAULT_COLUMNS[schema])
    if not isinstance(given, dict):
        raise DatasetError(f"{where}: columns is a {type_name(given)}; expected an object of column names")
    unsupported = [f"{k} ({_UNSUPPORTED_COLUMNS[k]})" for k in given if k in _UNSUPPORTED_COLUMNS]
    if unsupported:
        raise DatasetError(
            f"{where}: uses column(s) {', '.join(unsupported)}; middo imports text-only supervised data"
        )
    roles = ALPACA_COLUMNS if schema == "alpaca" else SHAREGPT_COLUMNS
    missing = [k for k in _REQUIRED_COLUMNS[schema] if not given.get(k)]
    if missing:
        raise DatasetError(
            f'{where}: columns name no {" / ".join(missing)} column; expected e.g. "{missing[0]}": '
            f'"<the file\'s {roles[missing[0]]} column>"'
        )
    fields = {}
    for role, ours in roles.items():
        theirs = given.get(role)
        if theirs is None:
            continue
        if not isinstance(theirs, str) or not theirs:
            raise DatasetError(f"{where}: columns.{role} is {theirs!r}; expected a column name")
        fields[ours] = theirs
    return fields


def _tags(entry: dict[str, Any], schema: str, where: str) -> dict[str, str]:
    if schema != "sharegpt":
        return {}
    if "tags" not in entry:
        return dict(SHAREGPT_TAGS)
    given = entry["tags"]
    if not isinstance(given, dict):
        raise DatasetError(f"{where}: tags is a {type_name(given)}; expected an object of tag names")
    missing = [t for t in _REQUIRED_TAGS if not isinstance(given.get(t), str) or not given[t]]
    if missing:
        raise DatasetError(
            f"{where}: tags lack {', '.join(missing)}; expected all of {', '.join(_REQUIRED_TAGS)} "
            "(LLaMA-Factory leaves an unnamed tag unset, so no message would match it)"
        )
    return {t: given[t] for t in SHAREGPT_TAGS if isinstance(given.get(t), str) and given[t]}
