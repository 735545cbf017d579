"""Any OpenAI-compatible chat server as the teacher (OpenAI, vLLM serve, `transformers serve`, llama.cpp...).

Retries are ours, not the client's (its ``max_retries`` is 0). We retry only what can succeed on a second try (429,
408/409, 5xx, timeouts, dropped connections) and honour the server's ``Retry-After`` / ``retry-after-ms`` as the
openai client would (up to ``MAX_RETRY_AFTER`` seconds; a longer one, such as a spent daily quota, fails the item at
once), with exponential backoff where the server names no wait. We keep the loop because at scale (64 requests in
flight against per-minute rate limits) three things need it: a ``Retry-After`` holds back every worker, not only the
one that was told, so the others do not spend their retries on a window the server has already closed; a wait can be
cut short when the run stops (the client's ``time.sleep`` cannot, so an interrupted run would hang for minutes); and
the failure reasons stay per item and countable. Anything else (a 400, a reply that is not JSON, an empty reply) is
``None`` for that one item, counted by reason. A server that cannot be reached at all stops the run with
:class:`~middo.teachers.base.TeacherUnavailable`, since every remaining call would fail the same way.

The reply length goes out as ``max_tokens`` unless ``token_limit_param`` says otherwise; with ``auto``, a server that
refuses ``max_tokens`` and asks for ``max_completion_tokens`` (newer OpenAI models) is asked again with that, and so
is every later request. A :class:`~middo.teachers.base.Sampling` with a ``response_schema`` is sent as
``response_format`` json_schema (strict), which vLLM serves as guided decoding. Each reply keeps the server's
``finish_reason`` (a :class:`~middo.teachers.base.Reply`), so refine can reject one cut at ``max_tokens``.

The API key is read from the environment variable named by ``api_key_env`` and handed to the client only: it is never
logged, stored, or put in a message.
"""

from __future__ import annotations

import email.utils
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any

from tqdm.auto import tqdm

from middo.errors import MiddoError
from middo.optional import require
from middo.teachers.base import Reply, Sampling, TeacherUnavailable
from middo.teachers.cache import request_identity, server_identity
from middo.teachers.usage import Usage

log = logging.getLogger(__name__)

_NO_KEY = "EMPTY"  # local servers ignore the key, but the client insists on one
MAX_RETRY_AFTER = 120.0  # seconds; the openai client's own limit
MAX_BACKOFF = 60.0  # seconds; the longest wait without a Retry-After
TOKEN_LIMIT_PARAMS = ("auto", "max_tokens", "max_completion_tokens")


class _Failed(Exception):
    """One call failed for good; ``reason`` is a short label used in the summary, ``detail`` the server's words."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class OpenAITeacher:
    """Chat completions against an OpenAI-compatible server, ``concurrency`` requests in flight."""

    backend = "openai"
    served = True  # known by name only: prompts are counted with ``refine.teacher.tokenizer``

    @classmethod
    def config_kwargs(cls, cfg, device: str, dtype: str) -> dict:
        """The constructor arguments from ``refine.teacher`` (a :class:`~middo.config.TeacherConfig`); the server
        picks device and dtype."""
        return {
            "base_url": cfg.base_url,
            "model": cfg.model,
            "api_key_env": cfg.api_key_env,
            "concurrency": cfg.concurrency,
            "timeout": cfg.timeout,
            "max_retries": cfg.max_retries,
            "system_prompt": cfg.system_prompt,
            "extra_body": cfg.extra_body,
            "token_limit_param": cfg.token_limit_param,
        }

    @classmethod
    def cache_identity(cls, cfg, device: str, dtype: str) -> dict[str, str]:
        """The served name, URL and the user's ``revision``, and what every request carries besides the prompt."""
        identity = server_identity(cfg.model, cfg.base_url, cfg.revision)
        identity.update(request_identity(cfg.system_prompt, cfg.extra_body))
        return identity

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff: float = 1.0,
        system_prompt: str = "",
        extra_body: Mapping[str, Any] | None = None,
        token_limit_param: str = "auto",
    ):
        """
        Args:
            base_url: the server's API root, e.g. ``http://127.0.0.1:8000/v1``.
            model: the model name the server expects in requests (for `transformers serve`, the model path).
            api_key_env: NAME of the environment variable holding the key; unset means a placeholder key.
            concurrency: requests in flight at once.
            timeout: seconds per request.
            max_retries: retries per call after the first attempt, on retryable errors only.
            backoff: seconds before the first retry when the server names no wait; doubles on each further retry.
            system_prompt: sent as a system message before every prompt; empty sends none.
            extra_body: JSON fields merged into every request body (they win over ours), e.g.
                ``{"chat_template_kwargs": {"enable_thinking": False}}``.
            token_limit_param: ``max_tokens``, ``max_completion_tokens``, or ``auto`` (the first, switching to the
                second when the server asks for it).

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
        if token_limit_param not in TOKEN_LIMIT_PARAMS:
            raise MiddoError(
                f"OpenAITeacher: token_limit_param must be one of {TOKEN_LIMIT_PARAMS}, got {token_limit_param!r}"
            )
        self._openai = openai
        self.base_url = base_url
        self.model = model
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.system_prompt = system_prompt
        self.extra_body = dict(extra_body or {})
        self.token_limit_param = token_limit_param
        self.token_field = "max_completion_tokens" if token_limit_param == "max_completion_tokens" else "max_tokens"
        self._client = openai.OpenAI(
            base_url=base_url, api_key=os.environ.get(api_key_env) or _NO_KEY, timeout=timeout, max_retries=0
        )
        self._reached = False  # until the server has answered once, complete() probes it first (fail fast)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._resume_at = 0.0  # time.monotonic() before which no request is sent (the server's Retry-After)

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
                            detail = f": {exc.detail}" if exc.detail else ""
                            log.warning("openai teacher: a call failed (%s%s); its reply is None", exc.reason, detail)
                        failures[exc.reason] += 1
                    bar.update(1)
        finally:
            self._stop.set()  # lets waiting retries give up at once if we leave early
            pool.shutdown(wait=True, cancel_futures=True)
        if failures:
            detail = ", ".join(f"{reason}: {n}" for reason, n in failures.most_common())
            log.warning("openai teacher: %d/%d calls failed (%s)", sum(failures.values()), len(prompts), detail)
        return results

    def request(self, prompt: str, sampling: Sampling, token_field: str) -> dict[str, Any]:
        """The keyword arguments of ``chat.completions.create`` for one prompt."""
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [*messages, {"role": "user", "content": prompt}],
            token_field: sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }
        schema = sampling.schema
        if schema is not None:
            name = str(schema.get("title") or "reply")
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": name, "schema": schema, "strict": True},
            }
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        return kwargs

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

    def _call(self, prompt: str, sampling: Sampling) -> Reply:
        """One chat completion with retries; raise _Failed (item is None) or TeacherUnavailable (stop the run)."""
        openai = self._openai
        attempt = 0
        while True:
            self._wait_turn()
            field = self.token_field
            wait = None
            try:
                response = self._client.chat.completions.create(**self.request(prompt, sampling, field))
            except openai.APIStatusError as exc:
                if field == "max_tokens" and self.token_limit_param == "auto" and _wants_max_completion_tokens(exc):
                    self._use_max_completion_tokens()
                    continue  # not a retry: the same request, in the form this server takes
                reason = f"HTTP {exc.status_code}"
                if not _retryable_status(exc.status_code):
                    raise _Failed(reason, _message(exc) if exc.status_code in (400, 404, 422) else "") from None
                wait = retry_after(exc.response.headers)
                if wait is not None and wait > MAX_RETRY_AFTER:
                    raise _Failed(f"{reason} (Retry-After over {MAX_RETRY_AFTER:.0f} s)", f"{wait:.0f} s") from None
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
            if attempt == self.max_retries:
                raise _Failed(f"{reason} after {self.max_retries + 1} attempts")
            if wait is not None:
                self._hold_off(wait)  # every worker waits: the next _wait_turn() sleeps until then
            elif self._stop.wait(min(self.backoff * 2**attempt, MAX_BACKOFF) * random.uniform(1.0, 1.25)):
                raise _Failed("cancelled")
            attempt += 1

    def _wait_turn(self) -> None:
        """Sleep until the server's last Retry-After has passed; give up at once when the run stops."""
        while True:
            left = self._resume_at - time.monotonic()
            if self._stop.is_set():
                raise _Failed("cancelled")
            if left <= 0:
                return
            self._stop.wait(left)

    def _hold_off(self, seconds: float) -> None:
        with self._lock:
            self._resume_at = max(self._resume_at, time.monotonic() + max(seconds, 0.0))

    def _use_max_completion_tokens(self) -> None:
        with self._lock:
            if self.token_field != "max_completion_tokens":
                self.token_field = "max_completion_tokens"
                log.info(
                    "openai teacher: %s refuses max_tokens; sending max_completion_tokens from now on", self.model
                )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait (``retry-after-ms``, then ``retry-after`` in seconds or as an HTTP date),
    or None when it names no wait (or names it in a form we cannot read)."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value:
        try:
            return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
        except (TypeError, ValueError, OverflowError):
            pass
    return None


def _retryable_status(status: int) -> bool:
    """The statuses the openai client itself would retry: timeouts, conflicts, rate limits, server errors."""
    return status in (408, 409, 429) or status >= 500


def _message(exc) -> str:
    """The server's own error message (e.g. which parameter it rejects), shortened for a log line."""
    body = exc.body if isinstance(exc.body, dict) else {}
    text = str(body.get("message") or exc.message or "")
    return text[:200] + ("..." if len(text) > 200 else "")


def _wants_max_completion_tokens(exc) -> bool:
    """OpenAI's 400 for newer models: "Unsupported parameter: 'max_tokens' is not supported with this model. Use
    'max_completion_tokens' instead." (param ``max_tokens``); other servers word it their own way, naming both."""
    if exc.status_code != 400:
        return False
    if getattr(exc, "param", None) == "max_tokens" and getattr(exc, "code", None) == "unsupported_parameter":
        return True
    text = f"{exc.message} {exc.body}"
    return "max_tokens" in text and "max_completion_tokens" in text


def _reply_text(response) -> Reply:
    """The assistant text of a chat completion with its ``finish_reason`` (``length``: cut at ``max_tokens``) and the
    server's ``usage`` (``None`` when it sends none), or _Failed if the reply has none (or is not a completion)."""
    try:
        choice = response.choices[0]
        message = choice.message
        content = message.content
    except (AttributeError, IndexError, TypeError):
        raise _Failed("reply is not a chat completion") from None
    if not isinstance(content, str) or not content.strip():
        refusal = getattr(message, "refusal", None)  # structured output: a refusal comes in its own field
        raise _Failed("refusal" if isinstance(refusal, str) and refusal.strip() else "empty reply") from None
    reason = getattr(choice, "finish_reason", None)
    usage = Usage.from_json(getattr(response, "usage", None))
    return Reply(content, reason if isinstance(reason, str) and reason else "stop", usage)
