"""Every request with a deadline and a size cap, whatever the server does.

httpx's timeouts are per read: a server that sends one byte every few seconds never trips them (not even while it
sends the status line and headers), and a body is read whole whatever its size. `BoundedTransport` wraps the real
transport of a client so that, for every request:

- the status line and headers arrive within the request's connect + read timeout, counted from the start;
- a body that is not a stream of events (JSON, text: the probes, /models, errors, whole completions, tokens) is
  read within the read timeout and BODY_LIMIT bytes. A successful event stream (`text/event-stream`, a streamed
  answer) may run as long as it makes progress: its reader checks that (llm.timeout) and caps each event;
- answers come uncompressed (`Accept-Encoding: identity`); one compressed anyway is refused, since a few
  compressed megabytes can decode to gigabytes.

`bounded_client(options)` is an `httpx.AsyncClient` built that way; `SyncClient` gives synchronous callers (token
endpoints) the same, each request on an event loop of its own thread (a blocking read cannot be stopped at a
deadline; a task can).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import AsyncIterator
from typing import Any

import httpx

MiB = 1024 * 1024
BODY_LIMIT = 16 * MiB  # as a streamed event (sse.MAX_EVENT_BYTES): no whole answer, model list or probe is near it
PIECE = 64 * 1024  # a body is handed on in pieces of at most this size


class ResponseTooLarge(httpx.HTTPError):
    """The body passed BODY_LIMIT; reading stopped there."""


class BoundedTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, body_limit: int = BODY_LIMIT) -> None:
        self.inner = inner
        self.body_limit = body_limit

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeout = request.extensions.get("timeout") or {}
        read = timeout.get("read")
        headers_within = None if read is None else read + (timeout.get("connect") or 0.0)
        try:
            response = await asyncio.wait_for(self.inner.handle_async_request(request), headers_within)
        except asyncio.TimeoutError:
            raise httpx.ReadTimeout(f"no answer (status and headers) within {headers_within:g} s",
                                    request=request) from None
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            await response.aclose()
            raise httpx.DecodingError(f"the server sent its answer compressed ({encoding}) although asked not to; "
                                      "it was not read", request=request)
        if response.status_code < 300 and "text/event-stream" in response.headers.get("content-type", ""):
            return response
        assert isinstance(response.stream, httpx.AsyncByteStream)
        body = _BoundedBody(response.stream, request, self.body_limit, read)
        return httpx.Response(response.status_code, headers=response.headers, stream=body,
                              extensions=response.extensions)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _BoundedBody(httpx.AsyncByteStream):
    """A body read within `deadline` seconds (from the first read) and `limit` bytes."""

    def __init__(self, stream: httpx.AsyncByteStream, request: httpx.Request, limit: int,
                 deadline: float | None) -> None:
        self.stream = stream
        self.request = request
        self.limit = limit
        self.deadline = deadline

    async def __aiter__(self) -> AsyncIterator[bytes]:
        pieces = self.stream.__aiter__()
        ends = None if self.deadline is None else asyncio.get_running_loop().time() + self.deadline
        size = 0
        while True:
            left = None if ends is None else max(ends - asyncio.get_running_loop().time(), 0.0)
            try:
                part = await asyncio.wait_for(pieces.__anext__(), left)
            except StopAsyncIteration:
                return
            except asyncio.TimeoutError:
                raise httpx.ReadTimeout(f"the answer's body did not arrive within {self.deadline:g} s",
                                        request=self.request) from None
            size += len(part)
            if size > self.limit:
                error = ResponseTooLarge(f"the answer from {self.request.url.copy_with(query=None)} is larger than "
                                         f"{self.limit / MiB:g} MiB; it was not read further")
                error.request = self.request
                raise error
            for start in range(0, len(part), PIECE):
                yield part[start:start + PIECE]

    async def aclose(self) -> None:
        await self.stream.aclose()


def bounded_client(options: dict[str, Any]) -> httpx.AsyncClient:
    """An AsyncClient from httpx.AsyncClient keyword arguments (verify, proxy, trust_env, timeout, auth, headers...),
    every request of it bounded."""
    options = dict(options)
    inner = httpx.AsyncHTTPTransport(verify=options.pop("verify", True), proxy=options.pop("proxy", None),
                                     trust_env=options.get("trust_env", True))
    headers = httpx.Headers(options.pop("headers", None))
    headers.setdefault("Accept-Encoding", "identity")
    return httpx.AsyncClient(transport=BoundedTransport(inner), headers=headers, **options)


class SyncClient:
    """Bounded requests for synchronous code: `SyncClient(options).post(url, data=...)` returns the whole
    response (read, so usable after the call). Raises httpx errors as httpx.Client does."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options

    def request(self, method: str, url: str, **arguments: Any) -> httpx.Response:
        async def exchange() -> httpx.Response:
            async with bounded_client(self.options) as client:
                return await client.request(method, url, **arguments)

        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="auto-coder-http") as pool:
            return pool.submit(asyncio.run, exchange()).result()

    def get(self, url: str, **arguments: Any) -> httpx.Response:
        return self.request("GET", url, **arguments)

    def post(self, url: str, **arguments: Any) -> httpx.Response:
        return self.request("POST", url, **arguments)
