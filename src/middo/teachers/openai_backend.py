"""Any OpenAI-compatible chat server as the teacher (OpenAI, vLLM serve, `transformers serve`, llama.cpp...).

The client's own retries are off and ours are on: we retry only what can succeed on a second try (429, 408/409, 5xx,
timeouts, dropped connections) with exponential backoff, and turn anything else (a 400, a reply that is not JSON, an
empty reply) into ``None`` for that one item, counted by reason. A server that cannot be reached at all stops the run
with :class:`~middo.teachers.base.TeacherUnavailable`, since every remaining call would fail the same way.

The API key is read from the environment variable named by ``api_key_env`` and handed to the client only: it is never
logged, stored, or put in a message.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from middo.errors import MiddoError
from middo.optional import require
from middo.teachers.base import Sampling, TeacherUnavailable

log = logging.getLogger(__name__)

_NO_KEY = "EMPTY"  # local servers ignore the key, but the client insists on one


class _Failed(Exception):
    """One call failed for good; ``reason`` is a short label used in the summary."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class OpenAITeacher:
    """Chat completions against an OpenAI-compatible server, ``concurrency`` requests in flight."""

    backend = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
    ):
        """
        Args:
            base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
            model: the model name the server expects in requests (for `transformers serve`, the model path).
            api_key_env: NAME of the environment variable holding the key; unset means a placeholder key.
            concurrency: requests in flight at once.
            timeout: seconds per request.
            max_retries: retries per call after the first attempt, on retryable errors only.
            backoff: seconds before the first retry; doubles on each further retry.

        Raises:
            MiddoError: the ``openai`` package is not installed, or an argument is out of range.
        """
        require("openai")
        import openai

        if concurrency < 1 or max_retries < 0 or timeout <= 0 or backoff < 0:
            raise MiddoError(
                "OpenAITeacher: expected concurrency >= 1, max_retries >= 0, timeout > 0, backoff >= 0; got "
                f"{concurrency}, {max_retries}, {timeout}, {backoff}"
            )
        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(api_key_env) or _NO_KEY, timeout=timeout, max_retries=0
        )
        self._reached = False  # until the server has answered once, complete() probes it first (fail fast)
        self._stop = threading.Event()

    def __repr__(self) -> str:  # the default repr would show the client, which holds the key
        return f"OpenAITeacher(base_url={self.base_url!r}, model={self.model!r}, concurrency={self.concurrency})"

    def complete(self, prompts: list[str], sampling: Sampling) -> list[str | None]:
        """Answer every prompt; failed items are ``None`` and their reasons are logged as one summary.

        Raises:
            TeacherUnavailable: the server refuses or drops every connection (checked before the first call, and
                again whenever a call has used up its retries on connection errors).
        """
        if not prompts:
            return []
        if not self._reached:
            self._probe()
        self._stop.clear()
        results: list[str | None] = [None] * len(prompts)
        failures: Counter = Counter()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="teacher")
        try:
            futures = {pool.submit(self._call, p, sampling): i for i, p in enumerate(prompts)}
            with tqdm(total=len(prompts), desc="teacher (openai)", unit="call") as bar:
                for future in as_completed(futures):
                    try:
                        results[futures[future]] = future.result()  # TeacherUnavailable propagates: stop the run
                    except _Failed as exc:
                        if not failures:
                            log.warning("openai teacher: a call failed (%s); its reply is None", exc.reason)
                        failures[exc.reason] += 1
                    bar.update(1)
        finally:
            self._stop.set()  # lets sleeping retries give up at once if we leave early
            pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            detail = ", ".join(f"{reason}: {n}" for reason, n in failures.most_common())
            log.warning("openai teacher: %d/%d calls failed (%s)", sum(failures.values()), len(prompts), detail)
        return results

    def _probe(self) -> None:
        """Fail fast on a wrong URL or a server that is not up: any HTTP answer, even an error, means reachable."""
        openai = self._openai
        last: Exception | None = None
        for attempt in range(3):
            try:
                self._client.with_options(timeout=min(self.timeout, 10.0)).models.list()
            except openai.APITimeoutError:
                return  # connected but slow (busy?): let the calls and their retries decide
            except openai.APIConnectionError as exc:
                last = exc
                if attempt < 2:
                    time.sleep(min(self.backoff, 1.0) * 2**attempt)
                continue
            except (openai.APIError, ValueError):
                pass  # it answered (an HTTP error, or not JSON; some servers have no /models): reachable
            self._reached = True
            return
        raise self._unavailable(last)

    def _unavailable(self, exc: Exception | None) -> TeacherUnavailable:
        cause = exc.__cause__ if exc is not None and exc.__cause__ is not None else exc
        return TeacherUnavailable(
            f"cannot reach OpenAI-compatible server at {self.base_url}: {type(cause).__name__}: {cause}. "
            "Is the server running, and is refine.teacher.base_url right?"
        )

    def _call(self, prompt: str, sampling: Sampling) -> str:
        """One chat completion with retries; raise _Failed (item is None) or TeacherUnavailable (stop the run)."""
        openai = self._openai
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise _Failed("cancelled")
            try:
                response = self._client.chat.completions.create(
                    model=self.model,
                    messages=[{"role": "user", "content": prompt}],
                    max_tokens=sampling.max_new_tokens,
                    temperature=sampling.temperature,
                    top_p=sampling.top_p,
                    seed=sampling.seed,
                )
            except openai.APIStatusError as exc:
                reason = f"HTTP {exc.status_code}"
                if not _retryable_status(exc.status_code):
                    raise _Failed(reason) from None
            except openai.APITimeoutError:
                reason = "timeout"
            except openai.APIConnectionError as exc:
                reason = "connection error"
                if attempt == self.max_retries:
                    raise self._unavailable(exc) from None
            except openai.APIError as exc:  # e.g. a reply that does not validate as a completion
                raise _Failed(type(exc).__name__) from None
            except ValueError as exc:  # the body was not JSON (json.JSONDecodeError is a ValueError)
                raise _Failed(f"invalid JSON reply ({type(exc).__name__})") from None
            else:
                self._reached = True
                return _reply_text(response)
            if attempt < self.max_retries:
                self._stop.wait(self.backoff * 2**attempt * random.uniform(1.0, 1.25))
        raise _Failed(f"{reason} after {self.max_retries + 1} attempts")


def _retryable_status(status: int) -> bool:
    """The statuses the openai client itself would retry: timeouts, conflicts, rate limits, server errors."""
    return status in (408, 409, 429) or status >= 500


def _reply_text(response) -> str:
    """The assistant text of a chat completion, or _Failed if the reply has none (or is not a completion)."""
    try:
        content = response.choices[0].message.content
    except (AttributeError, IndexError, TypeError):
        raise _Failed("reply is not a chat completion") from None
    if not isinstance(content, str) or not content.strip():
        raise _Failed("empty reply")
    return content
