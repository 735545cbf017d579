"""A content-addressed cache in front of any teacher, so a rerun (or a resumed, killed run) never pays twice.

Each call is keyed by what determines its answer: the teacher's identity (for a local model the hash of its weight and
tokenizer files, not its path, so a new model at ``models/base`` is asked afresh; for a server its model name, URL and
the configured revision; for both, the system prompt and extra request fields when set), the version of the prompt
templates, the prompt and every sampling field (a structured-output schema included), and for a sampled reply the
round and draw index (see :class:`CachedTeacher`). One small JSON file per call,
written atomically, means a process killed mid-run leaves only complete entries behind, and two runs sharing a cache
directory cannot corrupt each other. Misses go to the inner teacher in chunks and each chunk is stored as soon as it
returns, so a kill loses at most one chunk of work. Failed calls (``None``) are not stored, so the next run retries
them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError
from middo.teachers.base import Reply, Sampling, Teacher, finish_reason
from middo.teachers.usage import Budget, Usage, reply_usage

log = logging.getLogger(__name__)

# what a local model's answers depend on: weights, tokenizer, configs (chat template included), remote code
MODEL_SUFFIXES = (
    *(".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5"),
    *(".json", ".model", ".txt", ".tiktoken", ".jinja", ".py"),
)
FINGERPRINTS = "fingerprints.json"  # memo under the cache dir: folder -> file sizes and mtimes -> hash


def cache_key(
    identity: Mapping[str, str],
    prompt_version: str,
    prompt: str,
    sampling: Sampling,
    draw: tuple[int, int] | None = None,
) -> str:
    """sha256 of the canonical JSON of everything that determines the reply.

    An unset ``response_schema`` (free text) is left out, and so is an unset ``draw`` (greedy), so the caches written
    before they existed stay valid.

    Args:
        draw: ``(round, index)`` of a sampled reply (see :class:`CachedTeacher`); ``None`` for a greedy one.
    """
    fields = {k: v for k, v in asdict(sampling).items() if not (k == "response_schema" and v is None)}
    payload = {
        "teacher": dict(identity),
        "prompt_version": prompt_version,
        "prompt": prompt,
        "sampling": fields,
    }
    if draw is not None:
        payload["draw"] = {"round": draw[0], "index": draw[1]}
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def draw_seed(seed: int, round_: int, index: int) -> int:
    """The seed a sampled draw is asked with: the run's seed, the round and the draw index hashed into 31 bits (a
    range every backend takes), so seeded backends (vLLM, the local teacher, OpenAI's best effort) draw afresh."""
    digest = hashlib.sha256(f"{seed}\x1f{round_}\x1f{index}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & (2**31 - 1)


def server_identity(model: str, base_url: str, revision: str) -> dict[str, str]:
    """A served teacher is known only by name, so the user's ``revision`` marks a change of weights behind it."""
    return {"backend": "openai", "model": model, "base_url": base_url.rstrip("/"), "revision": revision}


def request_identity(system_prompt: str = "", extra_body: Mapping[str, Any] | None = None) -> dict[str, str]:
    """What every request carries besides the prompt (a system message, extra body fields), to add to an identity.

    Empty settings add nothing, so the keys of a teacher without them (every cache written before they existed)
    stay as they were.
    """
    identity = {"system_prompt": system_prompt} if system_prompt else {}
    if extra_body:
        identity["extra_body"] = json.dumps(extra_body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return identity


def local_identity(backend: str, model: str | Path, cache_dir: str | Path, revision: str) -> dict[str, str]:
    """A local model is known by its files' content; a name that is not a folder (vLLM can load hub names) falls
    back to name and ``revision``, with a warning, since its files cannot be read here."""
    if not Path(model).is_dir():
        log.warning("teacher cache: %s is not a local folder; keying its replies on the name and revision", model)
        return {"backend": backend, "model": str(model), "revision": revision}
    return {"backend": backend, "weights": model_fingerprint(model, Path(cache_dir) / FINGERPRINTS)}


def _model_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix in MODEL_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def model_fingerprint(folder: str | Path, memo_path: str | Path) -> str:
    """sha256 over the sorted relative paths and bytes of a model folder's weight, tokenizer and config files.

    Hashing gigabytes on every run would cost more than most cache hits save, so the hash is memoised in
    ``memo_path`` under the folder's absolute path together with each file's size and mtime_ns; any change to
    those (a copied-in model, a re-converted one) hashes again.

    Raises:
        MiddoError: the folder holds none of the files a model needs.
    """
    folder = Path(folder).resolve()
    files = _model_files(folder)
    if not files:
        raise MiddoError(f"teacher model {folder}: no weight, tokenizer or config files ({', '.join(MODEL_SUFFIXES)})")
    stats = {}
    for p in files:
        st = p.stat()
        stats[p.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
    memo_path = Path(memo_path)
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    seen = memo.get(str(folder))
    if isinstance(seen, dict) and seen.get("files") == stats and isinstance(seen.get("sha256"), str):
        return seen["sha256"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        h.update(b"\0")
    memo[str(folder)] = {"files": stats, "sha256": h.hexdigest()}
    try:
        atomic_write_text(memo_path, json.dumps(memo, indent=1, sort_keys=True) + "\n")
    except OSError as exc:  # the memo only saves time; a read-only cache dir still gets a correct key
        log.warning("teacher cache: could not store the model fingerprint in %s (%s)", memo_path, exc)
    return memo[str(folder)]["sha256"]


class CachedTeacher:
    """Wraps a :class:`~middo.teachers.base.Teacher`; is itself a Teacher with the same ``backend`` and ``model``.

    The key is built from ``identity`` and ``prompt_version`` rather than the inner teacher's ``model`` (a path or a
    name), which stays the same when the weights behind it change.

    A sampled reply (temperature > 0) is one draw, not the answer to its prompt: its key also holds the round and a
    draw index (the prompt's occurrence in the call: a prompt asked twice in one call is two draws), and the inner
    teacher is asked with :func:`draw_seed`. So a sample flagged again in a later round with the same prompt gets a
    fresh reply instead of round 1's (which would only be a duplicate), while a rerun of the same round (a resumed
    run) asks the same draws and hits. A greedy reply is the answer: its key has neither, repeats in one call are
    sent once, and every round shares it.

    The entry keeps the reply's finish reason, so a cached reply cut at ``max_new_tokens`` is still known as cut; an
    entry written before the field existed reads as complete.

    Attributes:
        hits: calls answered from the cache since this object was made.
        misses: calls sent to the inner teacher since this object was made (failed ones included).
    """

    def __init__(
        self,
        teacher: Teacher,
        cache_dir: str | Path,
        identity: Mapping[str, str],
        prompt_version: str,
        chunk_size: int = 64,
        round_: int = 0,
        budget: Budget | None = None,
    ):
        """
        Args:
            teacher: the backend that answers the misses.
            cache_dir: where the ``<key[:2]>/<key>.json`` files live (created on first write).
            identity: what answers, from :func:`local_identity` or :func:`server_identity`.
            prompt_version: the version of the caller's prompt templates (the cache knows nothing of them).
            chunk_size: misses sent to the inner teacher per call; each chunk is stored before the next is sent.
            round_: the refinement round asking; keys sampled replies, and marks the replies it pays for.
            budget: charged for every reply sent; once reached, no further chunk is sent (the run stops).
        """
        if chunk_size < 1:
            raise ValueError(f"CachedTeacher: chunk_size must be >= 1, got {chunk_size}")
        self.teacher = teacher
        self.backend = teacher.backend
        self.model = teacher.model
        self.identity = dict(identity)
        self.prompt_version = prompt_version
        self.cache_dir = Path(cache_dir)
        self.chunk_size = chunk_size
        self.round = round_
        self.budget = budget
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.cache_dir / key[:2] / f"{key}.json"

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer from the cache where possible; send only the distinct misses to the inner teacher.

        Each reply is a :class:`Reply` carrying its usage and the round that paid for it: this round for a reply sent
        now, the entry's round for one replayed, nobody for a repeat of a prompt answered once in this call.

        Raises:
            TeacherUnavailable: from the inner teacher; chunks finished before it are already stored.
            BudgetExceeded: ``budget`` reached before a chunk was sent; the chunks sent so far are stored.
        """
        draws = self.draws(prompts, sampling)
        keys = [cache_key(self.identity, self.prompt_version, p, sampling, d) for p, d in zip(prompts, draws)]
        results: list[str | None] = [None] * len(prompts)
        missing: dict[str, list[int]] = {}  # key -> positions, so a greedy prompt repeated in one call is sent once
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
        for (_, positions), reply in zip(todo, self._ask(todo, prompts, sampling, draws)):
            for n, i in enumerate(positions):  # a repeat is answered, free, by the first call
                free = n > 0 and reply is not None
                results[i] = Reply(reply, finish_reason(reply), reply_usage(reply)) if free else reply
        return results

    def lookup(self, prompts: list[str], sampling: Sampling) -> list[Reply | None]:
        """The cached reply to each prompt, or ``None`` where the cache has none; sends nothing (for a plan)."""
        draws = self.draws(prompts, sampling)
        keys = [cache_key(self.identity, self.prompt_version, p, sampling, d) for p, d in zip(prompts, draws)]
        return [self._load(key) for key in keys]

    def _ask(
        self,
        todo: list[tuple[str, list[int]]],
        prompts: list[str],
        sampling: Sampling,
        draws: list[tuple[int, int] | None],
    ) -> list[str | None]:
        """Send the misses (key -> positions in ``prompts``) to the inner teacher in chunks, storing each chunk
        before the next is sent; one reply (or None) per miss. A transport that cannot answer at once (the Batch
        API, :mod:`middo.teachers.openai_batch`) overrides this and keeps the keys and the cache as they are."""
        replies: dict[str, str | None] = {}
        for start in range(0, len(todo), self.chunk_size):
            if self.budget is not None:  # reached (by the chunks before, or an earlier call): send nothing more
                self.budget.check(left=len(todo) - start)
            chunk = todo[start : start + self.chunk_size]
            self.misses += len(chunk)
            by_seed: dict[Sampling, list[tuple[str, list[int]]]] = {}  # one inner call per seed (draw index)
            for key, positions in chunk:
                by_seed.setdefault(self.sent(sampling, draws[positions[0]]), []).append((key, positions))
            for sent, part in by_seed.items():
                got = self.teacher.complete([prompts[pos[0]] for _, pos in part], sent)
                if len(got) != len(part):
                    raise RuntimeError(f"{type(self.teacher).__name__} returned {len(got)} replies for {len(part)}")
                for (key, positions), reply in zip(part, got):
                    if reply is not None:
                        first = positions[0]
                        reply = self._store(key, prompts[first], sampling, reply, draws[first], sent.seed)
                        if self.budget is not None:
                            self.budget.charge(reply.usage)
                    replies[key] = reply
        return [replies[key] for key, _ in todo]

    def draws(self, prompts: list[str], sampling: Sampling) -> list[tuple[int, int] | None]:
        """Each prompt's ``(round, index)`` when sampling (index: how often the prompt came earlier in this call);
        ``None`` for every prompt when greedy."""
        if sampling.greedy:
            return [None] * len(prompts)
        seen: dict[str, int] = {}
        out = []
        for p in prompts:
            out.append((self.round, seen.get(p, 0)))
            seen[p] = seen.get(p, 0) + 1
        return out

    @staticmethod
    def sent(sampling: Sampling, draw: tuple[int, int] | None) -> Sampling:
        """The sampling the inner teacher is asked with: a draw's own seed, so a seeded backend does not repeat."""
        return sampling if draw is None else replace(sampling, seed=draw_seed(sampling.seed, *draw))

    def _load(self, key: str) -> Reply | None:
        """The cached reply with its finish reason (``stop`` when the entry has none), usage (``None`` when the entry
        has none) and paying round (``None`` when the entry has none: free), or None when absent or unreadable (a
        hand-edited or foreign file is simply redone)."""
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
        reason = entry.get("finish_reason")
        paid = entry.get("round")
        return Reply(
            output,
            reason if isinstance(reason, str) and reason else "stop",
            Usage.from_json(entry.get("usage")),
            paid if isinstance(paid, int) and not isinstance(paid, bool) else None,
        )

    def _store(
        self, key: str, prompt: str, sampling: Sampling, output: str, draw: tuple[int, int] | None, seed: int
    ) -> Reply:
        """Keep the inputs beside the output so an entry can be read (and audited) without the code; ``usage`` is
        the reply's tokens (absent when the backend could not tell), ``round`` the round that paid for it. Returns
        the reply as stored, marked paid by this round."""
        usage = reply_usage(output)
        entry = {
            "key": key,
            "teacher": self.identity,
            "prompt_version": self.prompt_version,
            "model": self.model,
            "prompt": prompt,
            "sampling": asdict(sampling),
            **({"draw": {"round": draw[0], "index": draw[1], "seed": seed}} if draw is not None else {}),
            "output": str(output),
            "finish_reason": finish_reason(output),
            **({"usage": usage.to_json()} if usage is not None else {}),
            "round": self.round,
        }
        atomic_write_text(self.path(key), json.dumps(entry, ensure_ascii=False, indent=1) + "\n")
        return Reply(output, finish_reason(output), usage, self.round)
