"""How requests to an LLM server are retried, and when a run gives up on the server.

:func:`call_with_retries` retries what may pass (rate limits, server errors, timeouts, lost
connections) with seeded exponential back-off; :class:`Outage` watches every try of a run and
stops the run when the server cannot answer: refused credentials, or a server that is not there.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from ambinb.curation.errors import AttemptError, CurationError

log = logging.getLogger(__name__)


def backoff_delay(retry: int, base: float, cap: float, rng: random.Random) -> float:
    """Seconds to wait before retry ``retry`` (0-based): half of ``min(cap, base * 2**retry)`` plus
    a uniform jitter up to the other half.

    Example: base 1, cap 30 -> retry 0 in [0.5, 1], retry 1 in [1, 2], retry 5 in [15, 30].
    """
    ceiling = min(cap, base * 2.0**retry)
    return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)


def _retry_after(err: Exception) -> float | None:
    response = getattr(err, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class Outage:
    """Watches the tries of one run and stops the run when its requests cannot succeed.

    The run stops (:class:`CurationError`, raised from then on in every worker, even one that is
    waiting to retry) when:

    - the server refuses the credentials, the permission or the model (401, 403, 404) or reports an
      exhausted quota: at once (:meth:`refuse`);
    - ``give_up_after`` tries in a row fail the same way (refused connection, timeout, one status
      code, an answer that cannot be used) before any answer was usable: the server is not there,
      or not one that can do the job;
    - the same after a success, once that streak has also lasted ``outage_s`` seconds: a brief
      outage (a restarting server) is waited out, a lasting one is not.

    A rate limit (429) never counts: it is retried as long as the retries allow.

    Example: ``give_up_after=8`` and nothing listening at ``base_url``: four workers fail their
    first two tries each within about a second, and the run stops with "cannot reach
    http://127.0.0.1:9/v1 after 8 attempts (APIConnectionError: Connection error.)".
    """

    def __init__(self, url: str, give_up_after: int, outage_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.url = url
        self.give_up_after = give_up_after
        self.outage_s = outage_s
        self.clock = clock
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.message = ""
        self.succeeded = False
        self.kind: str | None = None
        self.count = 0
        self.since = 0.0

    def check(self) -> None:
        """Raise :class:`CurationError` once the run has been stopped."""
        if self.stopped.is_set():
            raise CurationError(self.message)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, waking early (and raising) when the run is stopped meanwhile."""
        self.stopped.wait(seconds)
        self.check()

    def success(self) -> None:
        """A try got a usable answer: the streak of failures ends."""
        with self.lock:
            self.succeeded, self.kind, self.count = True, None, 0

    def refuse(self, message: str) -> None:
        """Stop the run now with ``message`` (a refusal that retrying cannot change)."""
        with self.lock:
            if not self.stopped.is_set():
                self.message = f"{self.url}: {message}" if self.url else message
                self.stopped.set()
        self.check()

    def failure(self, kind: str, reason: str) -> None:
        """Count a failed try of ``kind`` (``connection``, ``timeout``, ``status <code>`` or ``unusable
        answer``); stop the run when the streak says the server cannot answer."""
        with self.lock:
            now = self.clock()
            if kind != self.kind:
                self.kind, self.count, self.since = kind, 0, now
            self.count += 1
            lasting = not self.succeeded or now - self.since >= self.outage_s
            if self.count >= self.give_up_after and lasting and not self.stopped.is_set():
                self.message = self._describe(kind, reason)
                self.stopped.set()
        self.check()

    def _describe(self, kind: str, reason: str) -> str:
        if kind == "connection":
            return f"cannot reach {self.url} after {self.count} attempts ({reason})"
        if kind == "timeout":
            return f"{self.url} did not answer {self.count} requests in a row within curation_timeout ({reason})"
        if kind == "unusable answer":
            return (f"{self.url} gave {self.count} unusable answers in a row ({reason}); check curation_model, "
                    "json_mode and base_url")
        return f"{self.url} failed {self.count} requests in a row the same way ({reason})"


def _kind(err: Exception) -> str:
    import openai  # optional

    if isinstance(err, openai.APITimeoutError):
        return "timeout"
    if isinstance(err, openai.APIConnectionError):
        return "connection"
    return f"status {getattr(err, 'status_code', '?')}"


def _refusal(err: Any) -> str | None:
    """Why retrying cannot help (None when it may): refused credentials, permission or model, or an
    exhausted quota (a 429 whose code says so)."""
    import openai  # optional

    if isinstance(err, (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError)):
        what = "the request"
    elif isinstance(err, openai.RateLimitError) and getattr(err, "code", None) == "insufficient_quota":
        what = "the request: the account's quota is exhausted"
    else:
        return None
    return f"the server refused {what} ({type(err).__name__}, status {err.status_code}): {err.message}"


def call_with_retries(fn: Callable[[], Any], retries: int, base: float, cap: float, rng: random.Random,
                      sleep: Callable[[float], None] = time.sleep, outage: Outage | None = None) -> Any:
    """Call ``fn``; on a rate limit (429), a server error (5xx), a timeout or a lost connection, wait
    :func:`backoff_delay` (at least the server's ``Retry-After``, at most ``cap``) and try again, up
    to ``retries`` more times. Every failed try is reported to ``outage``, which may stop the run;
    the caller reports an answer it could use (:meth:`Outage.success`) or not (:meth:`Outage.failure`).

    Raises:
        AttemptError: the transport still failed after the retries, or the request was refused (4xx).
        CurationError: the credentials, permission, model name or quota were refused (401, 403, 404,
            429 ``insufficient_quota``), or ``outage`` stopped the run: retrying other utterances
            cannot help.
    """
    import openai  # optional

    outage = outage or Outage("", retries + 2, 0.0)  # a watch of this call alone: only refusals stop
    for k in range(retries + 1):
        outage.check()
        try:
            response = fn()
        except openai.APIStatusError as err:
            refused = _refusal(err)
            if refused:
                outage.refuse(refused)
            reason = f"{type(err).__name__}: {err.message}"
            if err.status_code != 429:
                outage.failure(_kind(err), reason)
            if not isinstance(err, (openai.RateLimitError, openai.InternalServerError, openai.ConflictError)):
                raise AttemptError(f"request refused (status {err.status_code}): {err.message}") from err
            _wait_or_give_up(err, reason, k, retries, base, cap, rng, sleep)
        except openai.APIConnectionError as err:
            reason = f"{type(err).__name__}: {getattr(err, 'message', err)}"
            outage.failure(_kind(err), reason)
            _wait_or_give_up(err, reason, k, retries, base, cap, rng, sleep)
        else:
            return response
    raise AssertionError("unreachable")


def _wait_or_give_up(err: Exception, reason: str, k: int, retries: int, base: float, cap: float,
                     rng: random.Random, sleep: Callable[[float], None]) -> None:
    """Back off before retry ``k + 1``, or raise :class:`AttemptError` when none is left."""
    if k == retries:
        raise AttemptError(f"transport: gave up after {retries} retries ({reason})") from err
    wait = backoff_delay(k, base, cap, rng)
    after = _retry_after(err)
    if after is not None:
        wait = min(cap, max(wait, after))
    log.warning("retry %d/%d in %.2f s after %s", k + 1, retries, wait, reason)
    sleep(wait)
