"""The one record shape every stage reads and writes.

Lineage (``parent_id``, ``round``, ``axis``, ``op``) lives in the record so that a dataset file alone tells where
each sample came from; file names never carry it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

AXES = ("complexity", "diversity", "quality")
OPS = ("seed", "simplify", "diversify", "improve")


@dataclass(frozen=True)
class Record:
    """One SFT sample in Alpaca shape, with earlier turns of a conversation kept in ``history``.

    ``history`` holds ``(user, assistant)`` pairs that precede ``instruction``; ``system`` is an optional system
    prompt. Multi-turn ShareGPT / OpenAI conversations map onto this without loss.
    """

    id: str
    instruction: str
    output: str
    input: str = ""
    system: str = ""
    history: tuple[tuple[str, str], ...] = ()
    parent_id: str | None = None
    round: int = 0
    axis: str | None = None
    op: str = "seed"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def prompt_text(self) -> str:
        """Instruction and input as plain text, the way the reference code embeds prompts."""
        return f"{self.instruction}\n{self.input}" if self.input else self.instruction

    def messages(self, with_response: bool = True) -> list[dict[str, str]]:
        """Chat messages for a chat template; the response is left out when scoring the prompt alone."""
        msgs: list[dict[str, str]] = []
        if self.system:
            msgs.append({"role": "system", "content": self.system})
        for user, assistant in self.history:
            msgs.append({"role": "user", "content": user})
            msgs.append({"role": "assistant", "content": assistant})
        msgs.append({"role": "user", "content": self.prompt_text})
        if with_response:
            msgs.append({"role": "assistant", "content": self.output})
        return msgs

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["history"] = [list(pair) for pair in self.history]
        if not d["meta"]:
            del d["meta"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=False)


def content_id(instruction: str, input: str, output: str, system: str = "", history=()) -> str:
    """Stable id from the content, so that re-importing the same data gives the same ids on any machine."""
    h = hashlib.sha256()
    for part in (system, json.dumps([list(p) for p in history], ensure_ascii=False), instruction, input, output):
        h.update(part.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()[:16]
