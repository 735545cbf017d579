"""What every teacher backend offers: a batch of single-turn prompts in, one reply (or ``None``) per prompt out.

Refinement only ever needs "answer this one user message", so the protocol is that and nothing more; a backend is
free to batch, pool or stream however it likes. A failed item is ``None`` rather than an exception, so that one bad
reply never costs the rest of a long run; only an unreachable server stops the run, since then every call would fail.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from middo.errors import MiddoError
from middo.teachers.usage import Usage

log = logging.getLogger(__name__)


class TeacherUnavailable(MiddoError):
    """The teacher cannot answer at all (e.g. its server is down); retrying item by item would only waste time."""


CUT = "length"  # the finish reason of a reply stopped by max_new_tokens, in the OpenAI API's and vLLM's words


class Reply(str):
    """A reply's text that also says why decoding stopped (``finish_reason``: ``stop``, or ``length`` when it hit
    ``max_new_tokens``), what it took (``usage``: prompt and completion tokens, ``None`` when unknown) and which round
    paid for it (``paid_round``: set by :class:`~middo.teachers.cache.CachedTeacher`; ``None``: nobody, e.g. a
    repeat of a prompt answered once).

    A ``str``, so every caller that only reads the text is unchanged; a plain ``str`` from a backend that cannot tell
    counts as complete. A reply cut at the cap reads like a complete one (a prompt missing its last clause, an
    answer without its conclusion), so the caller must see the reason to reject it.
    """

    finish_reason: str
    usage: Usage | None
    paid_round: int | None

    def __new__(
        cls, text: str, finish_reason: str = "stop", usage: Usage | None = None, paid_round: int | None = None
    ):
        reply = super().__new__(cls, text)
        reply.finish_reason = finish_reason
        reply.usage = usage
        reply.paid_round = paid_round
        return reply

    def __reduce__(self):  # a str subclass with fields: keep them across pickling (multiprocessing, copies)
        return (Reply, (str(self), self.finish_reason, self.usage, self.paid_round))


def finish_reason(reply: str) -> str:
    """Why decoding stopped: a :class:`Reply`'s own reason, ``stop`` for a plain string."""
    return getattr(reply, "finish_reason", "stop")


def is_cut(reply: str | None) -> bool:
    """True when ``reply`` stopped at ``max_new_tokens`` rather than where the model meant to end."""
    return reply is not None and finish_reason(reply) == CUT


@dataclass(frozen=True)
class Sampling:
    """How to decode; part of every cache key, so changing any field means fresh calls.

    Attributes:
        max_new_tokens: longest reply, in tokens.
        temperature: 0 means greedy (reproducible); above 0 samples.
        top_p: nucleus sampling mass (only used when sampling).
        seed: seeds sampling, so a sampled run can be repeated where the backend allows it.
        response_schema: structured output: the JSON Schema (as JSON text, so the settings stay hashable) every
            reply must match, its ``title`` naming it; ``None`` for free text. Backends that can constrain decoding
            (openai: ``response_format`` json_schema; vllm: structured outputs) do; others ignore it, so the caller
            must still accept free text.
    """

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 42
    response_schema: str | None = None

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise MiddoError(f"Sampling.max_new_tokens: expected >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise MiddoError(f"Sampling.temperature: expected >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise MiddoError(f"Sampling.top_p: expected a value in (0, 1], got {self.top_p}")
        if self.response_schema is not None and not isinstance(self.schema, dict):
            raise MiddoError(f"Sampling.response_schema: expected a JSON object, got {self.response_schema!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def schema(self) -> dict | None:
        """``response_schema`` parsed, or None (free text).

        Raises:
            MiddoError: ``response_schema`` is not JSON.
        """
        if self.response_schema is None:
            return None
        try:
            return json.loads(self.response_schema)
        except ValueError as exc:
            raise MiddoError(f"Sampling.response_schema: not JSON ({exc}): {self.response_schema[:80]!r}") from None


@runtime_checkable
class Teacher(Protocol):
    """A teacher LLM backend.

    Each backend also reads its own settings, so refine never branches on a backend's name and a new backend
    touches ``teachers/`` only: the classmethods ``config_kwargs(cfg, device, dtype)`` (its constructor's arguments
    from ``refine.teacher``) and ``cache_identity(cfg, device, dtype)`` (what the cache keys its replies on besides
    the prompt and sampling), and the class attribute ``served`` (True: known by name only, its prompts counted with
    ``refine.teacher.tokenizer``; False: a local folder whose own tokenizer counts them).

    Attributes:
        backend: the registry name (``transformers``, ``openai``, ``vllm``); part of the cache key.
        model: the model folder or served model name; part of the cache key.
    """

    backend: str
    model: str
    served: bool

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer each prompt, sent as a single user message.

        A backend that knows why decoding stopped returns :class:`Reply` objects, so a reply cut at
        ``max_new_tokens`` can be told from a complete one.

        Args:
            prompts: the user messages, in order.
            sampling: decoding settings shared by all prompts.

        Returns:
            One assistant reply per prompt (a ``str`` or :class:`Reply`), in the same order; ``None`` where that
            call failed after retries.

        Raises:
            TeacherUnavailable: the backend cannot be reached at all.
        """
        ...


def warn_unused_extra_body(cfg) -> None:
    """``refine.teacher.extra_body`` goes into OpenAI request bodies; a local backend has none to put it in."""
    if cfg.extra_body:
        log.warning("refine.teacher.extra_body is for the openai backend; the %s backend ignores it", cfg.backend)
