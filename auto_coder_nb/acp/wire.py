"""JSON-RPC 2.0 over newline-delimited JSON on two file descriptors: the Agent Client Protocol's stdio transport.

Written here rather than taken from the `agent-client-protocol` SDK: the wire is small, and doing it ourselves
answers a malformed line with -32700 and an unknown method with -32601 (the SDK logs the first and answers the
second with an empty result when a method is left out of its Agent protocol), needs no pin between the SDK's 0.11
line (which jupyter-ai-acp-client requires) and the 0.12 line, and keeps `auto-coder --acp` in the base install.

A reader thread turns the input into lines and hands each to the event loop; a writer thread writes what any
thread queues, in order, so neither a slow client nor a blocked session ever holds up the loop that reads
`session/cancel`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
MAX_LINE_BYTES = 64 * 1024 * 1024  # one message; base64 images fit, an endless line does not fill memory
READ_BYTES = 256 * 1024

log = logging.getLogger(__name__)

Handler = Callable[[str, Any], Awaitable[Any]]


class RpcError(Exception):
    """An error answered to a request: `code` as JSON-RPC defines them, `message` one readable sentence."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        return error


def invalid_params(message: str) -> RpcError:
    return RpcError(INVALID_PARAMS, f"Invalid params: {message}")


def encode(message: dict[str, Any]) -> bytes:
    """One line of JSON (json.dumps escapes every newline inside strings); no NaN, which JSON does not have."""
    return (json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")


class Connection:
    """Reads requests and notifications from `read_fd`, answers through `handle_request` / `handle_notification`
    (each message runs in its own task), and sends requests of its own (`request`)."""

    def __init__(self, read_fd: int, write_fd: int, handle_request: Handler, handle_notification: Handler) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._handle_request = handle_request
        self._handle_notification = handle_notification
        self._outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed: asyncio.Event | None = None
        self._writer: threading.Thread | None = None

    # -- running -------------------------------------------------------------------------------

    async def serve(self) -> None:
        """Read until the input ends (the client closed it or exited)."""
        self._loop = asyncio.get_running_loop()
        self._closed = asyncio.Event()
        self._writer = threading.Thread(target=self._write_all, name="acp-writer", daemon=True)
        self._writer.start()
        threading.Thread(target=self._read_all, name="acp-reader", daemon=True).start()
        await self._closed.wait()
        for future in self._pending.values():
            future.cancel()  # the client is gone: nobody answers an open permission request

    async def finish(self, timeout: float) -> None:
        """Wait (at most `timeout` seconds) for the requests being answered, e.g. turns being cancelled."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def stop_writing(self, timeout: float = 5.0) -> None:
        """Write what is queued, then stop the writer (at exit)."""
        self._outbox.put(None)
        if self._writer is not None:
            self._writer.join(timeout)

    def _read_all(self) -> None:
        assert self._loop is not None and self._closed is not None
        buffer, skipping = b"", False
        try:
            while chunk := os.read(self._read_fd, READ_BYTES):
                lines = (buffer + chunk).split(b"\n")
                buffer = lines.pop()
                for line in lines:
                    if skipping:  # the rest of a line too long to keep
                        skipping = False
                    elif line.strip():
                        self._loop.call_soon_threadsafe(self._received, line)
                if len(buffer) > MAX_LINE_BYTES:
                    if not skipping:
                        self._loop.call_soon_threadsafe(
                            self._send, {"jsonrpc": "2.0", "id": None, "error": RpcError(
                                PARSE_ERROR, f"Parse error: a message longer than {MAX_LINE_BYTES // 2**20} MiB "
                                             "was dropped").to_json()})
                    buffer, skipping = b"", True
        except OSError as exc:
            log.warning("reading the client's messages failed: %s", exc)
        finally:
            if buffer.strip() and not skipping:
                self._loop.call_soon_threadsafe(self._received, buffer)
            self._loop.call_soon_threadsafe(self._closed.set)

    def _write_all(self) -> None:
        while (data := self._outbox.get()) is not None:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_fd, view):]
            except OSError as exc:  # the client went away: what is left has no reader
                log.warning("writing to the client failed: %s", exc)
                return

    def _send(self, message: dict[str, Any]) -> None:
        try:
            data = encode(message)
        except (TypeError, ValueError) as exc:  # a bug of ours: say so to the client rather than send bad JSON
            log.error("could not encode a message: %s", exc)
            if "id" not in message or "method" in message:
                return
            data = encode({"jsonrpc": "2.0", "id": message["id"],
                           "error": RpcError(INTERNAL_ERROR, "Internal error: the result could not be encoded").
                          to_json()})
        self._outbox.put(data)

    # -- sending (from any thread) ---------------------------------------------------------------

    def notify(self, method: str, params: Any) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params})

    async def request(self, method: str, params: Any) -> Any:
        """Send a request and wait for its answer (on the connection's loop). RpcError for an error answer;
        CancelledError when the input ends first."""
        assert self._loop is not None
        number = next(self._ids)
        future = self._loop.create_future()
        self._pending[number] = future
        try:
            self._send({"jsonrpc": "2.0", "id": number, "method": method, "params": params})
            return await future
        finally:
            self._pending.pop(number, None)

    def request_threadsafe(self, method: str, params: Any) -> concurrent.futures.Future[Any]:
        """`request` from another thread; cancelling the returned future stops waiting for the answer."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(self.request(method, params), self._loop)

    # -- receiving (on the loop) -------------------------------------------------------------------

    def _received(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            self._send({"jsonrpc": "2.0", "id": None,
                        "error": RpcError(PARSE_ERROR, f"Parse error: {str(exc)[:200]}").to_json()})
            return
        if not isinstance(message, dict):
            self._send({"jsonrpc": "2.0", "id": None, "error": RpcError(
                INVALID_REQUEST, "Invalid Request: expected one JSON object per line (batches are not used by "
                                 "ACP)").to_json()})
            return
        method, identifier = message.get("method"), message.get("id")
        if method is None and ("result" in message or "error" in message):
            self._answered(identifier, message)
            return
        if not isinstance(method, str) or ("id" in message and not _valid_id(identifier)):
            self._send({"jsonrpc": "2.0", "id": identifier if _valid_id(identifier) else None, "error": RpcError(
                INVALID_REQUEST, "Invalid Request: a request needs a string 'method' and a string or number "
                                 "'id'").to_json()})
            return
        params = message.get("params")
        if "id" in message:
            self._spawn(self._answer(identifier, method, params))
        else:
            self._spawn(self._notified(method, params))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, identifier: Any, method: str, params: Any) -> None:
        try:
            result = await self._handle_request(method, params)
            self._send({"jsonrpc": "2.0", "id": identifier, "result": result if result is not None else {}})
        except RpcError as exc:
            self._send({"jsonrpc": "2.0", "id": identifier, "error": exc.to_json()})
        except asyncio.CancelledError:
            self._send({"jsonrpc": "2.0", "id": identifier,
                        "error": RpcError(INTERNAL_ERROR, "Internal error: the agent is shutting down").to_json()})
            raise
        except Exception as exc:  # a bug of ours must not end the agent: the client hears of it
            log.exception("%s failed", method)
            self._send({"jsonrpc": "2.0", "id": identifier,
                        "error": RpcError(INTERNAL_ERROR, f"Internal error: {type(exc).__name__}").to_json()})

    async def _notified(self, method: str, params: Any) -> None:
        try:
            await self._handle_notification(method, params)
        except Exception:  # a notification has no answer: log and go on
            log.exception("notification %s failed", method)

    def _answered(self, identifier: Any, message: dict[str, Any]) -> None:
        future = self._pending.get(identifier) if isinstance(identifier, int) else None
        if future is None or future.done():
            return  # an answer to a request we stopped waiting for (a cancelled turn's permission)
        error = message.get("error")
        if error is not None:
            code = error.get("code") if isinstance(error, dict) else None
            text = error.get("message") if isinstance(error, dict) else None
            future.set_exception(RpcError(code if isinstance(code, int) else INTERNAL_ERROR, str(text or error)))
        else:
            future.set_result(message.get("result"))


def _valid_id(identifier: Any) -> bool:
    return isinstance(identifier, (str, int)) and not isinstance(identifier, bool)
