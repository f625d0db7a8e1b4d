"""What an OpenAI-compatible server's failures mean: typed errors (`errors.py`) with readable messages
that say what to do and never hold a secret.

Shared by the provider (every request) and the doctor (which reports what the server said about
credentials and /models): an error body or a model list is read in one place.
"""

from __future__ import annotations

import email.utils
import json
import re
import socket
import time
from typing import Any

import httpx

from .. import auth, transport
from ..bounded_http import ResponseTooLarge
from ..config import DEFAULT_BASE_URL, Config
from ..errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ConnectionRefused,
    ContextOverflow,
    EndpointNotFound,
    HostNotFound,
    ModelNotFound,
    ProviderError,
    RateLimited,
    RequestTimeout,
    ServerError,
    StreamError,
    TLSError,
)
from ..text import caused_by, clause, hide_credential_shapes, scrub

OVERFLOW_HINT = ("Start a new conversation (/clear in the REPL, Reset in the panel, %autocoder --reset) "
                 "or use a model with a larger context.")
RETRY_STATUSES = frozenset({408, 409, 429})
SNIPPET_LIMIT = 300

_OVERFLOW_CODES = frozenset({"context_length_exceeded", "exceed_context_size_error", "context_window_exceeded"})
_OVERFLOW_TEXT = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|too many tokens|prompt is too long|input is too long"
    r"|exceeds? (the )?(max|context)|n_ctx|reduce the length|longer than the model",
    re.IGNORECASE,
)


def safe_url(url: str) -> str:
    """The URL without credentials or query string, fit for messages."""
    parts = httpx.URL(url)
    return str(parts.copy_with(username=None, password=None, query=None, fragment=None))


def is_overflow(message: str, code: str | None) -> bool:
    """Whether an error says the conversation no longer fits the model's context window."""
    return code in _OVERFLOW_CODES or bool(_OVERFLOW_TEXT.search(message))


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Seconds to wait from `retry-after-ms` or `Retry-After` (seconds or an HTTP date); None if absent."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            pass
        try:
            return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            continue
    return None


def parse_model_list(response: httpx.Response) -> list[str]:
    """The model ids of a /models answer (`{"data": [{"id": ...}]}`, or a bare list); ValueError if it is none."""
    try:
        data = response.json()
        entries = data["data"] if isinstance(data, dict) else data
        return [entry["id"] if isinstance(entry, dict) else str(entry) for entry in entries]
    except (ValueError, KeyError, TypeError):
        raise ValueError("not a model list") from None


def error_details(data: Any) -> tuple[Any, str | None]:
    """(message, code) of a decoded error body in any usual shape: `{"error": {"message", "code"}}`,
    `{"error": "text"}`, `{"detail": ...}`, `{"message": ...}`. The message may be any JSON value."""
    error = data.get("error", data) if isinstance(data, dict) else data
    if isinstance(error, dict):
        message = error.get("message") or error.get("detail") or error.get("error") or ""
        code = error.get("code") or error.get("type")
    else:
        message, code = error, None
    return message, code if isinstance(code, str) else None


class ServerErrors:
    """Turns what the server (or the network) did into a typed error, with the configuration's secrets,
    the token that was sent and anything shaped like a credential hidden."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.model = config.llm.model
        self.base_url = config.llm.base_url.rstrip("/")

    def status_error(self, response: httpx.Response, *, listing: bool = False,
                     model: str | None = None) -> ProviderError:
        """The error for an HTTP status >= 300 (its body already read). `listing`: the request was /models;
        `model`: the one the request asked for, when not the configured one."""
        status = response.status_code
        message, code = self.server_message(response)
        where = safe_url(str(response.request.url))
        detail = f": {clause(message)}" if message else ""
        error: ProviderError
        if 300 <= status < 400:
            error = EndpointNotFound(f"{where} redirects to {safe_url(response.headers.get('location', '?'))}: "
                                     f"set llm.base_url to the address it should be.", status=status)
        elif status in (401, 403) and "authorization" not in response.request.headers:
            error = AuthenticationFailed(
                f"authentication failed ({status}) at {where}{detail}. No API key or token was sent: set "
                f"AUTO_CODER_API_KEY (or --api-key, llm.api_key), or configure auth (USE_SSO, auth.*).",
                status=status)
        elif status in (401, 403):
            error = AuthenticationFailed(
                f"authentication failed ({status}) at {where}{detail}. Check llm.api_key (AUTO_CODER_API_KEY) "
                f"or your auth settings.", status=status)
        elif is_overflow(message, code):
            error = ContextOverflow(f"the conversation is longer than the model's context window ({status})"
                                    f"{detail}. {OVERFLOW_HINT}", status=status)
        elif status == 404 or code == "model_not_found":
            if not listing and (code == "model_not_found" or "model" in message.lower()):
                asked = model or self.model
                error = ModelNotFound(f"model {asked!r} was not found at {safe_url(self.base_url)}{detail}. "
                                      f"Pick one from /models or set llm.model.", status=status)
            else:
                error = EndpointNotFound(f"{where} answered 404 Not Found{detail}. Check llm.base_url: "
                                         f"it is usually the URL that ends in /v1.", status=status)
        elif status == 429:
            error = RateLimited(f"rate limited (429) by {where}{detail}", status=status)
        elif status in RETRY_STATUSES or status >= 500:
            error = ServerError(f"the server at {where} failed ({status}){detail}", status=status)
        else:
            error = BadRequest(f"the server at {where} rejected the request ({status}){detail}", status=status)
        if response.headers.get("x-should-retry") in ("true", "false"):
            error.retryable = response.headers["x-should-retry"] == "true"
        return error

    def raise_stream_error(self, payload: Any) -> None:
        """Raise the error for an error object inside a 200 answer (streamed or whole)."""
        details = payload if isinstance(payload, dict) else {"message": str(payload)}
        message = clause(self.redact(str(details.get("message") or details)))
        code = details.get("code") or details.get("type")
        if is_overflow(message, code if isinstance(code, str) else None):
            raise ContextOverflow(f"the conversation is longer than the model's context window: {message}. "
                                  + OVERFLOW_HINT)
        raise StreamError(f"the server at {safe_url(self.base_url)} reported an error mid-answer: {message}")

    def transport_error(self, exc: httpx.HTTPError | httpx.InvalidURL, url: str, started: bool) -> ProviderError:
        """The error for a request that got no HTTP answer (or lost it mid-way, `started`)."""
        where = safe_url(url)
        if isinstance(exc, (httpx.UnsupportedProtocol, httpx.InvalidURL)):
            return EndpointNotFound(f"{where} is not a usable URL ({exc}): set llm.base_url to something like "
                                    f"http://localhost:11434/v1")
        if isinstance(exc, httpx.TimeoutException):
            if isinstance(exc, httpx.ConnectTimeout):
                return ConnectionFailed(f"could not connect to {where}: timed out{self.where_hint()}")
            what = "the answer stalled" if started else "no answer"
            timeout = RequestTimeout(f"{what} from {where} for {self.config.llm.timeout:g} s (llm.timeout)")
            timeout.retryable = False  # the user already waited the whole timeout; four more would be too long
            return timeout
        text = str(exc)
        certificate = transport.tls_failure_message(exc, self.config)  # says which CA settings to use
        if certificate is not None:
            return TLSError(certificate)
        if isinstance(exc, httpx.ProxyError):
            return ConnectionFailed(f"the proxy refused the connection to {where}: {self.redact(text)}")
        if isinstance(exc, httpx.ConnectError):
            if "refused" in text.lower() or caused_by(exc, ConnectionRefusedError):
                return ConnectionRefused(f"could not connect to {where}: connection refused{self.where_hint()}")
            if caused_by(exc, socket.gaierror):
                host = httpx.URL(url).host
                return HostNotFound(f"could not connect to {where}: the host name {host} was not found (DNS)"
                                    f"{self.where_hint()}")
            reason = self.redact(text) or "connection failed"
            return ConnectionFailed(f"could not connect to {where}: {reason}{self.where_hint()}")
        if isinstance(exc, ResponseTooLarge):
            return StreamError(f"the server at {where} sent an answer that cannot be read: {self.redact(text)}")
        if started:
            return StreamError(f"the connection to {where} broke mid-answer: {self.redact(text)}")
        if isinstance(exc, (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)):
            return ConnectionFailed(f"the connection to {where} broke: {self.redact(text) or type(exc).__name__}")
        return ProviderError(f"request to {where} failed: {self.redact(text) or type(exc).__name__}")

    def where_hint(self) -> str:
        """How to fix a connection failure: start Ollama or point elsewhere, or check the URL that was set."""
        if self.base_url == DEFAULT_BASE_URL.rstrip("/"):
            return (". This is the default URL: Ollama does not seem to be running (start it with `ollama serve`), "
                    "or point elsewhere with AUTO_CODER_BASE_URL, llm.base_url in .auto-coder.yaml, "
                    "or auto-coder --base-url")
        source = self.config.sources.get("llm.base_url", "default")
        return (f". Check that the server is running and the URL is right (llm.base_url, from {source}); "
                "the doctor (auto-coder --doctor, %autocoder --doctor) checks each step")

    def server_message(self, response: httpx.Response) -> tuple[str, str | None]:
        """The server's own explanation (redacted, shortened) and its error code, from any usual shape."""
        sent_token = response.request.headers.get("authorization", "").rpartition(" ")[2]
        try:
            data = response.json()
        except ValueError:
            return self.snippet(response.text, sent_token), None
        message, code = error_details(data)
        if not isinstance(message, str):
            message = json.dumps(message)
        return self.snippet(message, sent_token), code

    def snippet(self, text: str, sent_token: str = "", limit: int = SNIPPET_LIMIT) -> str:
        """`text` on one line, redacted, at most `limit` characters."""
        text = self.redact(" ".join(text.split()), sent_token)
        return text if len(text) <= limit else text[:limit] + "…"

    def redact(self, text: str, sent_token: str = "") -> str:
        """Remove anything that may be a credential: every secret this process holds (the configuration's, the
        token that was sent, fetched tokens), URL credentials, bearer tokens and sk- keys."""
        return hide_credential_shapes(scrub(text, [sent_token, *auth.secret_values(self.config)]))
