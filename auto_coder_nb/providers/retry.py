"""When a failed request is asked again, and how long after: one policy for every request of the provider."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from ..errors import ConnectionFailed, ConnectionRefused, HostNotFound, ProviderError, RateLimited
from ..text import caused_by

MAX_RETRIES = 4
RETRY_BASE_DELAY = 0.5
MAX_RETRY_DELAY = 60.0


@dataclass
class RetryPolicy:
    """Retryable failures (`ProviderError.retryable`) are asked again up to `max_retries` times, after the server's
    Retry-After or an exponential backoff from `base_delay` with jitter, never more than a minute apart."""

    max_retries: int = MAX_RETRIES
    base_delay: float = RETRY_BASE_DELAY

    def limit(self, failure: ProviderError) -> int:
        # A refused connection or an unknown host is one quick retry (a server starting up, a DNS hiccup);
        # four would make every typo cost 7 s.
        quick = isinstance(failure, (ConnectionRefused, HostNotFound))
        return min(1, self.max_retries) if quick else self.max_retries

    def allows(self, failure: ProviderError, retries: int) -> bool:
        """Whether `failure`, after `retries` retries already, is worth asking again."""
        return failure.retryable and retries < self.limit(failure)

    def delay(self, retries: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retries` (1-based): the server's wish, else exponential backoff
        with up to 25% jitter; never more than a minute."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_DELAY)
        backoff = self.base_delay * 2 ** (retries - 1)
        return min(backoff * (1 - 0.25 * random.random()), MAX_RETRY_DELAY)

    def notice(self, failure: ProviderError, retries: int, delay: float) -> str:
        """The sentence that tells the user about retry number `retries`."""
        reason = "rate limited (429)" if isinstance(failure, RateLimited) else _short_reason(failure)
        return f"{reason}, retrying in {delay:.1f} s ({retries}/{self.limit(failure)})"


def server_gave_up_connection(exc: Exception) -> bool:
    """Whether a request failed before any answer byte because the server closed the connection under it (a
    kept-alive connection it dropped just as it was reused): asked again at once on a new connection, once."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return "without sending a response" in str(exc)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return caused_by(exc, ConnectionResetError) or caused_by(exc, BrokenPipeError)
    return False


def _short_reason(error: ProviderError) -> str:
    if error.status is not None:
        return f"server error ({error.status})"
    if isinstance(error, ConnectionRefused):
        return "connection refused"
    if isinstance(error, HostNotFound):
        return "host not found"
    return "connection failed" if isinstance(error, ConnectionFailed) else type(error).__name__
