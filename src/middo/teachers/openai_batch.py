"""The OpenAI Batch API as the teacher's transport (``refine.teacher.mode: batch``): half the price, no rate limits.

A batch takes up to 24 hours, far longer than a stage should block, so a refine run never waits for one. It sends
every request the cache cannot answer as one Batch API input file (``custom_id`` = the cache key, ``body`` exactly
what online mode would POST), records the batch beside the cache, and stops with :class:`BatchPending`, so that
DVC records nothing; the next run polls, and once the batch has ended downloads its output and error files next to
its record, stores each reply in the cache and goes on (to the answer step, which is sent the same way, then the
merge). The cache keys stay those of online mode, so the two modes share replies.

A request that failed (its line in the error file, or none at all because the batch expired, was cancelled or
failed) is a failed reply (``None``), as a failed call is online. Its batch record remembers it for the rest of the
round, so that a later run does not send it again (which could loop forever on a request the API always refuses);
deleting the round's folder (:attr:`BatchTeacher.folder`) sends the failed requests afresh.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from pathlib import Path

from middo.dataio.atomic import atomic_write_text
from middo.errors import MiddoError
from middo.teachers.base import Reply, Sampling
from middo.teachers.cache import CachedTeacher
from middo.teachers.openai_backend import OpenAITeacher, _Failed, _reply_text
from middo.teachers.usage import Budget

log = logging.getLogger(__name__)

ENDPOINT = "/v1/chat/completions"
MAX_REQUESTS = 50_000  # the API's limit on the lines of one input file
MAX_BYTES = 190 * 2**20  # the API's limit is 200 MB per input file; a margin for the multipart envelope
ENDED = ("completed", "expired", "cancelled", "failed")  # before: validating, in_progress, finalizing, cancelling


class BatchPending(MiddoError):
    """A batch was just submitted, or one is still running: the stage stops before writing anything, so DVC does
    not record the round as done and ``dvc repro`` runs it again."""


class BatchTeacher(CachedTeacher):
    """A :class:`CachedTeacher` whose misses go to the Batch API instead of ``teacher.complete``.

    Attributes:
        folder: ``<cache_dir>/batches/round_<R>``: one ``<batch id>.json`` record per submitted batch, and the
            batch's ``.output.jsonl`` and ``.errors.jsonl`` once it has ended.
    """

    def __init__(
        self,
        teacher: OpenAITeacher,
        cache_dir: str | Path,
        identity: dict[str, str],
        prompt_version: str,
        round_: int = 0,
        max_requests: int = MAX_REQUESTS,
        budget: Budget | None = None,
    ):
        """
        Args:
            teacher: builds each request body (:meth:`OpenAITeacher.request`) and holds the client (and the key).
            cache_dir, identity, prompt_version, round_, budget: as :class:`CachedTeacher` (the budget is
                charged as replies arrive: a batch is paid for once it has run).
            max_requests: lines per input file; more misses are split over several batches.
        """
        super().__init__(teacher, cache_dir, identity, prompt_version, round_=round_, budget=budget)
        if max_requests < 1:
            raise MiddoError(f"BatchTeacher: max_requests must be >= 1, got {max_requests}")
        self.folder = self.cache_dir / "batches" / f"round_{round_}"
        self.max_requests = max_requests
        # uploads, polls and downloads are safe to repeat, so the client's own retries do; creating a batch is not
        # (the API takes no idempotency key: a retry after a lost reply would run, and bill, the batch twice)
        self._client = teacher._client.with_options(max_retries=3)

    def __repr__(self) -> str:
        return f"BatchTeacher({self.teacher!r}, folder={str(self.folder)!r})"

    def _ask(self, todo, prompts, sampling, draws) -> list[str | None]:
        """Answer the misses from ended batches; submit those no batch of this round holds; raise
        :class:`BatchPending` if anything was submitted or is still running (after storing what has arrived)."""
        asked = {key: positions[0] for key, positions in todo}
        owner: dict[str, dict] = {}
        for record in self._records():
            owner.update({key: record for key in record["keys"] if key in asked})
        results: dict[str, Reply | str] = {}  # key -> reply, or why it failed
        running = []
        for record in {r["id"]: r for r in owner.values()}.values():
            if record["status"] not in ENDED:
                record = self._poll(record)
            if record["status"] in ENDED:
                results.update(self._results(record))
            else:
                running.append(record)
        self.misses += sum(key in results for key in asked)
        for key, reply in results.items():
            if isinstance(reply, Reply) and key in asked:
                i = asked[key]
                results[key] = self._store(
                    key, prompts[i], sampling, reply, draws[i], self.sent(sampling, draws[i]).seed
                )
                if self.budget is not None:
                    self.budget.charge(results[key].usage)
        new = [key for key in asked if key not in owner]
        if new and self.budget is not None:
            self.budget.check(left=len(new))  # spent already (collected replies): submit nothing more
        submitted = self._submit([(key, prompts[asked[key]], self.sent(sampling, draws[asked[key]])) for key in new])
        if submitted or running:
            done = sum(key in results for key in asked)
            n = f"{len(new)} request" + ("s" if len(new) != 1 else "")
            news = [f"batch submitted, {n} ({', '.join(submitted)})"] if submitted else []
            waits = [f"batch {r['id']} is {r['status']}" for r in running]
            raise BatchPending(
                "; ".join(news + waits)
                + ("; run `dvc repro` again to collect" if submitted else "; run again later")
                + (f" ({done} replies of this step already in the cache)" if done else "")
            )
        failed = Counter(r for key, r in results.items() if key in asked and not isinstance(r, Reply))
        if failed:
            detail = ", ".join(f"{reason}: {n}" for reason, n in failed.most_common())
            log.warning(
                "openai batch: %d/%d requests failed (%s); they count as failed replies this round (delete %s to "
                "send them again)",
                sum(failed.values()),
                len(asked),
                detail,
                self.folder,
            )
        return [r if isinstance(r := results[key], Reply) else None for key, _ in todo]

    def _records(self) -> list[dict]:
        """This round's batch records, oldest first (a key sent twice, after its folder was cleared, is the
        latest's)."""
        records = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                record = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(record.get("keys"), list) or not isinstance(record.get("id"), str):
                    raise ValueError("expected 'id' and 'keys'")
            except (OSError, ValueError, AttributeError) as exc:
                raise MiddoError(f"{path}: not a batch record ({exc}); delete it to send its requests again") from None
            records.append(record)
        return sorted(records, key=lambda r: r.get("created_at", 0))

    def _write(self, record: dict) -> None:
        atomic_write_text(self.folder / f"{record['id']}.json", json.dumps(record, indent=1) + "\n")

    def body(self, prompt: str, sampling: Sampling) -> dict:
        """The JSON body online mode POSTs for ``prompt``: the client's keyword arguments with ``extra_body``
        merged in (its fields win, as the client merges them)."""
        kwargs = self.teacher.request(prompt, sampling, self.teacher.token_field)
        extra = kwargs.pop("extra_body", None) or {}
        return {**kwargs, **extra}

    def _submit(self, requests: list[tuple[str, str, Sampling]]) -> list[str]:
        """Upload ``(key, prompt, sampling)`` requests as input files of at most ``max_requests`` lines (and
        ``MAX_BYTES``), create one batch per file, record each; returns the batch ids."""
        files: list[list[tuple[str, str]]] = [[]]
        size = 0
        for key, prompt, sent in requests:
            line = {"custom_id": key, "method": "POST", "url": ENDPOINT, "body": self.body(prompt, sent)}
            text = json.dumps(line, ensure_ascii=False, separators=(",", ":")) + "\n"
            if files[-1] and (len(files[-1]) == self.max_requests or size + len(text.encode()) > MAX_BYTES):
                files.append([])
                size = 0
            files[-1].append((key, text))
            size += len(text.encode())
        ids = []
        for lines in files if requests else []:
            data = "".join(text for _, text in lines)
            name = f"middo-round{self.round}-{len(lines)}.jsonl"
            try:
                upload = self._client.files.create(file=(name, data.encode(), "application/jsonl"), purpose="batch")
                batch = self._client.with_options(max_retries=0).batches.create(
                    input_file_id=upload.id, endpoint=ENDPOINT, completion_window="24h"
                )
            except self.teacher._openai.APIError as exc:
                raise MiddoError(
                    f"openai batch: submitting {len(lines)} requests to {self.teacher.base_url} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from None
            atomic_write_text(self.folder / f"{batch.id}.input.jsonl", data)  # what was sent, for audit
            record = {
                "id": batch.id,
                "round": self.round,
                "status": batch.status,
                "input_file_id": upload.id,
                "created_at": time.time(),
                "keys": [key for key, _ in lines],
            }
            self._write(record)
            log.info("openai batch: submitted %s (%d requests)", batch.id, len(lines))
            ids.append(batch.id)
        return ids

    def _poll(self, record: dict) -> dict:
        """Ask the batch's status; once it has ended, download its output and error files beside the record, then
        mark the record ended (in that order, so a kill in between only repeats free downloads)."""
        openai = self.teacher._openai
        try:
            batch = self._client.batches.retrieve(record["id"])
            if batch.status not in ENDED:
                return {**record, "status": batch.status}
            for kind, file_id in (("output", batch.output_file_id), ("errors", batch.error_file_id)):
                if file_id:
                    content = self._client.files.content(file_id).content.decode("utf-8")
                    atomic_write_text(self.folder / f"{record['id']}.{kind}.jsonl", content)
        except openai.APIError as exc:
            raise MiddoError(
                f"openai batch: polling {record['id']} at {self.teacher.base_url} failed: {type(exc).__name__}: "
                f"{exc}; run again later"
            ) from None
        errors = [e.message for e in (batch.errors.data or [])] if batch.errors else []
        if errors:
            log.warning("openai batch %s %s: %s", batch.id, batch.status, "; ".join(str(e) for e in errors[:3]))
        counts = batch.request_counts
        ended = {
            **record,
            "status": batch.status,
            "request_counts": counts.to_dict() if counts is not None else None,
            "errors": errors,
        }
        self._write(ended)
        return ended

    def _results(self, record: dict) -> dict[str, Reply | str]:
        """Each key of an ended batch -> its reply, or the reason it has none (its error line's code, or the
        batch's end when it has no line at all, e.g. not reached before the batch expired)."""
        results: dict[str, Reply | str] = {}
        for kind in ("output", "errors"):
            path = self.folder / f"{record['id']}.{kind}.jsonl"
            if not path.exists():
                continue
            for n, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if not text.strip():
                    continue
                try:
                    line = json.loads(text)
                    results[line["custom_id"]] = _line_result(line)
                except (ValueError, KeyError, TypeError) as exc:
                    raise MiddoError(f"{path}:{n}: not a Batch API result line ({exc})") from None
        why = record.get("errors") or []
        ended = f"no result (batch {record['status']}" + (f": {why[0]}" if why else "") + ")"
        return {key: results.get(key, ended) for key in record["keys"]}


def _line_result(line: dict) -> Reply | str:
    """One output or error line -> the reply (parsed as online mode parses a completion) or why there is none."""
    from openai.types.chat import ChatCompletion

    response = line.get("response") or {}
    status = response.get("status_code")
    body = response.get("body")
    if status == 200 and isinstance(body, dict):
        try:
            return _reply_text(ChatCompletion.construct(**body))
        except _Failed as exc:
            return exc.reason
    error = line.get("error") or (body.get("error") if isinstance(body, dict) else None) or {}
    code = error.get("code") if isinstance(error, dict) else None
    return " ".join(str(part) for part in (f"HTTP {status}" if status else "", code or "") if part) or "error"
