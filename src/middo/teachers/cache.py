"""A content-addressed cache in front of any teacher, so a rerun (or a resumed, killed run) never pays twice.

Each call is keyed by what determines its answer: backend, model, prompt and every sampling field. One small JSON
file per call, written atomically, means a process killed mid-run leaves only complete entries behind, and two runs
sharing a cache directory cannot corrupt each other. Misses go to the inner teacher in chunks and each chunk is
stored as soon as it returns, so a kill loses at most one chunk of work. Failed calls (``None``) are not stored, so
the next run retries them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path

from middo.dataio.atomic import atomic_write_text
from middo.teachers.base import Sampling, Teacher

log = logging.getLogger(__name__)


def cache_key(backend: str, model: str, prompt: str, sampling: Sampling) -> str:
    """sha256 of the canonical JSON of everything that determines the reply."""
    payload = {"backend": backend, "model": model, "prompt": prompt, "sampling": asdict(sampling)}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class CachedTeacher:
    """Wraps a :class:`~middo.teachers.base.Teacher`; is itself a Teacher with the same ``backend`` and ``model``.

    Attributes:
        hits: calls answered from the cache since this object was made.
        misses: calls sent to the inner teacher since this object was made (failed ones included).
    """

    def __init__(self, teacher: Teacher, cache_dir: str | Path, chunk_size: int = 64):
        """
        Args:
            teacher: the backend that answers the misses.
            cache_dir: where the ``<key[:2]>/<key>.json`` files live (created on first write).
            chunk_size: misses sent to the inner teacher per call; each chunk is stored before the next is sent.
        """
        if chunk_size < 1:
            raise ValueError(f"CachedTeacher: chunk_size must be >= 1, got {chunk_size}")
        self.teacher = teacher
        self.backend = teacher.backend
        self.model = teacher.model
        self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer from the cache where possible; send only the distinct misses to the inner teacher.

        Raises:
            TeacherUnavailable: from the inner teacher; chunks finished before it are already stored.
        """
        keys = [cache_key(self.backend, self.model, p, sampling) for p in prompts]
        results: list[str | None] = [None] * len(prompts)
        missing: dict[str, list[int]] = {}  # key -> positions, so a prompt repeated in one call is sent once
        for i, key in enumerate(keys):
            if key in missing:
                missing[key].append(i)
                continue
            cached = self._load(key)
            if cached is None:
                missing[key] = [i]
            else:
                results[i] = cached
                self.hits += 1
        self.hits += sum(len(pos) - 1 for pos in missing.values())  # repeats are answered by the first call
        todo = list(missing.items())
        for start in range(0, len(todo), self.chunk_size):
            chunk = todo[start : start + self.chunk_size]
            self.misses += len(chunk)
            replies = self.teacher.complete([prompts[pos[0]] for _, pos in chunk], sampling)
            if len(replies) != len(chunk):
                raise RuntimeError(f"{type(self.teacher).__name__} returned {len(replies)} replies for {len(chunk)}")
            for (key, positions), reply in zip(chunk, replies):
                if reply is not None:
                    self._store(key, prompts[positions[0]], sampling, reply)
                for i in positions:
                    results[i] = reply
        return results

    def _load(self, key: str) -> str | None:
        """The cached reply, or None when absent or unreadable (a hand-edited or foreign file is simply redone)."""
        path = self.path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("teacher cache: ignoring unreadable entry %s (%s); calling the teacher again", path, exc)
            return None
        output = entry.get("output") if isinstance(entry, dict) else None
        if not isinstance(output, str) or entry.get("key") != key:
            log.warning("teacher cache: ignoring malformed entry %s; calling the teacher again", path)
            return None
        return output

    def _store(self, key: str, prompt: str, sampling: Sampling, output: str) -> None:
        """Keep the inputs beside the output so an entry can be read (and audited) without the code."""
        entry = {
            "key": key,
            "backend": self.backend,
            "model": self.model,
            "prompt": prompt,
            "sampling": asdict(sampling),
            "output": output,
        }
        atomic_write_text(self.path(key), json.dumps(entry, ensure_ascii=False, indent=1) + "\n")
