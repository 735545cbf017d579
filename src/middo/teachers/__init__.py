"""Teacher LLM backends behind one small protocol, and a content-addressed cache in front of them.

``BACKENDS`` maps each config name to the import path of its class, resolved only when that backend is made:
importing this package must not pull in torch (transformers backend), the openai client, or vllm (which lives in its
own environment). The classes themselves are importable from here too, also lazily.
"""

from __future__ import annotations

import importlib
import inspect

from middo.errors import MiddoError
from middo.teachers.base import Sampling, Teacher, TeacherUnavailable
from middo.teachers.cache import CachedTeacher

BACKENDS: dict[str, str] = {
    "transformers": "middo.teachers.transformers_backend:TransformersTeacher",
    "openai": "middo.teachers.openai_backend:OpenAITeacher",
    "vllm": "middo.teachers.vllm_backend:VLLMTeacher",
}


def backend_class(backend: str) -> type:
    """Import and return the class registered under ``backend``.

    Raises:
        MiddoError: ``backend`` is not a known name.
    """
    if backend not in BACKENDS:
        raise MiddoError(f"unknown teacher backend {backend!r}; expected one of: {', '.join(sorted(BACKENDS))}")
    module, name = BACKENDS[backend].split(":")
    return getattr(importlib.import_module(module), name)


def make_teacher(backend: str, **kwargs) -> Teacher:
    """Build the teacher ``backend`` with its constructor's keyword arguments.

    Raises:
        MiddoError: unknown backend, a missing package, or an argument the backend rejects.
    """
    cls = backend_class(backend)
    try:
        inspect.signature(cls).bind(**kwargs)  # a config typo should read as a config error, not a traceback
    except TypeError as exc:
        raise MiddoError(f"teacher backend {backend!r}: {exc} (accepted: {inspect.signature(cls)})") from None
    return cls(**kwargs)


_LAZY = {path.rsplit(":", 1)[1]: name for name, path in BACKENDS.items()}


def __getattr__(attr: str):
    if attr in _LAZY:
        return backend_class(_LAZY[attr])
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = [
    "BACKENDS",
    "CachedTeacher",
    "OpenAITeacher",
    "Sampling",
    "Teacher",
    "TeacherUnavailable",
    "TransformersTeacher",
    "VLLMTeacher",
    "backend_class",
    "make_teacher",
]
