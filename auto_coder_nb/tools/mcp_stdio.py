"""The stdio transport of MCP servers, made for servers that misbehave (the SDK's `stdio_client` trusts them).

- One message is read up to MAX_MESSAGE_BYTES; the rest of a longer line is read and dropped as it comes, so a
  300 MB tool result costs the time of reading a pipe, not of parsing it. The request it answers gets the head of
  its text (more than a tool result keeps) with a note, or an error.
- A line that is not a JSON-RPC message (nested too deep to read, say) but carries the id of a request answers
  that request with an error at once, instead of leaving it to its timeout. Other junk on stdout is dropped, and
  said once (`on_junk`), never as a library traceback.
- The server runs in a process group of its own, stopped with the transport: stdin closed, then SIGTERM and
  SIGKILL to the whole group, so the processes it started do not outlive the session.

Imported only when a stdio server starts (the `mcp` extra).
"""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import mcp_types as types
from anyio.abc import Process
from mcp.client.stdio import get_default_environment
from mcp.shared.message import SessionMessage

MAX_MESSAGE_BYTES = 4 * 1024 * 1024  # a listing of 20,000 tools is 3.4 MB
KEPT_TEXT_CHARS = 100_000  # of an oversized result's text: more than a tool result keeps (MAX_OUTPUT_CHARS)
EXIT_GRACE_SECONDS = 2.0  # for the server to leave once its stdin is closed, then for its group after each signal
_TAIL_BYTES = 256  # kept of an oversized line's end, where some servers write the id
_ID_FIRST = re.compile(rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")')
_ID_LAST = re.compile(rb'"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')
_FIRST_TEXT = re.compile(rb'"text"\s*:\s*"')
_STRING_BODY = re.compile(rb'(?:[^"\\]|\\.){0,%d}' % (4 * 100_000))
INTERNAL_ERROR = -32603


@asynccontextmanager
async def bounded_stdio(command: str, args: list[str], env: dict[str, str] | None, cwd: Path, errlog: BinaryIO,
                        on_junk: Callable[[str], None]) -> AsyncIterator[tuple[Any, Any]]:
    """An MCP transport (read stream, write stream) to the server `command args`; see the module's doc."""
    process = await anyio.open_process([command, *args], env=get_default_environment() | (env or {}),
                                       stderr=errlog, cwd=cwd, start_new_session=True)
    to_session, from_server = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_server, from_session = anyio.create_memory_object_stream[SessionMessage](0)
    lines = _Lines(to_session, on_junk)

    async def read() -> None:
        assert process.stdout is not None
        async with to_session:
            with suppress(anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                async for chunk in process.stdout:
                    await lines.feed(chunk)

    async def write() -> None:
        assert process.stdin is not None
        async with from_session:
            with suppress(anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
                async for message in from_session:
                    if isinstance(message.message, types.JSONRPCRequest):
                        lines.asked[message.message.id] = message.message.method
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True) + "\n"
                    await process.stdin.send(data.encode("utf-8"))
        await to_session.aclose()  # the server cannot be written to: the session sees the connection end

    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(read)
            tasks.start_soon(write)
            try:
                yield from_server, to_server
            finally:
                tasks.cancel_scope.cancel()
    finally:
        with anyio.CancelScope(shield=True):
            await _stop(process)


class _Lines:
    """Splits the server's stdout into messages, each kept to MAX_MESSAGE_BYTES, and hands them to the session."""

    def __init__(self, session: Any, on_junk: Callable[[str], None]) -> None:
        self.session = session
        self.on_junk = on_junk
        self.kept = bytearray()
        self.size = 0
        self.tail = b""
        self.asked: dict[int | str, str] = {}  # the method of each request not answered yet

    async def feed(self, chunk: bytes) -> None:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if self.size < MAX_MESSAGE_BYTES:
                self.kept += piece[:MAX_MESSAGE_BYTES - self.size]
            self.size += len(piece)
            if self.size > MAX_MESSAGE_BYTES:
                self.tail = (self.tail + piece[-_TAIL_BYTES:])[-_TAIL_BYTES:]
            if end < 0:
                return
            line, oversized, tail = bytes(self.kept), self.size > MAX_MESSAGE_BYTES, self.tail
            self.kept, self.size, self.tail = bytearray(), 0, b""
            if line.strip():
                await self._deliver(line, oversized, tail)
            start = end + 1

    async def _deliver(self, line: bytes, oversized: bool, tail: bytes) -> None:
        if oversized:
            request = _request_id(line, tail)
            if request is None:
                self.on_junk(f"a line of more than {MAX_MESSAGE_BYTES // 1024 // 1024} MB")
                return
            cut = _cut_result(request, line) if self.asked.pop(request, None) == "tools/call" else None
            await self.session.send(SessionMessage(cut or _error(request, "its answer was larger than "
                                                                          f"{MAX_MESSAGE_BYTES // 1024 // 1024} MB")))
            return
        try:
            message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
        except ValueError as exc:
            request = _request_id(line, line[-_TAIL_BYTES:])
            if request is None:
                self.on_junk(repr(line[:80].decode("utf-8", "replace")))
                return
            why = "nested too deep" if "recursion limit" in str(exc) else "not a valid MCP message"
            self.asked.pop(request, None)
            await self.session.send(SessionMessage(_error(request, f"its answer could not be read ({why})")))
            return
        if isinstance(message, (types.JSONRPCResponse, types.JSONRPCError)) and message.id is not None:
            self.asked.pop(message.id, None)
        await self.session.send(SessionMessage(message))


def _request_id(head: bytes, tail: bytes) -> int | str | None:
    """The id of the request a (cut or unreadable) answer is for, where servers write it: first or last."""
    found = _ID_FIRST.match(head) or _ID_LAST.search(tail)
    if found is None:
        return None
    value = json.loads(found.group(1))
    return value if isinstance(value, (int, str)) else None


def _cut_result(request: int | str, head: bytes) -> types.JSONRPCResponse | None:
    """A tool result made of the beginning of the first text of an answer too long to read, with a note; None
    when the head holds no text."""
    found = _FIRST_TEXT.search(head)
    if found is None:
        return None
    body = _STRING_BODY.match(head, found.end())
    text = _string_start(body.group() if body else b"")
    note = (f"[the rest of this result was not read: the answer was larger than "
            f"{MAX_MESSAGE_BYTES // 1024 // 1024} MB]")
    content = [{"type": "text", "text": f"{text[:KEPT_TEXT_CHARS]}\n{note}"}]
    return types.JSONRPCResponse(jsonrpc="2.0", id=request, result={"content": content, "isError": False})


def _string_start(body: bytes) -> str:
    """The text of the body of a JSON string cut anywhere (inside a \\uXXXX escape, inside a UTF-8 character)."""
    for end in (len(body), body.rfind(b"\\")):
        with suppress(ValueError):
            return str(json.loads('"' + body[:end].decode("utf-8", "ignore") + '"'))
    return body.decode("utf-8", "ignore")


def _error(request: int | str, message: str) -> types.JSONRPCError:
    return types.JSONRPCError(jsonrpc="2.0", id=request, error=types.ErrorData(code=INTERNAL_ERROR, message=message))


async def _stop(process: Process) -> None:
    """Close the server's stdin and give it EXIT_GRACE_SECONDS to leave, then stop its whole process group (what
    it started too, even when it left by itself): SIGTERM, then SIGKILL."""
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError):
        if process.stdin is not None:
            await process.stdin.aclose()
    with anyio.move_on_after(EXIT_GRACE_SECONDS):
        while process.returncode is None:  # not wait(): it also waits for the pipes, which children may hold
            await anyio.sleep(0.02)
    for kind in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, kind)  # the group's id is the leader's pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            break  # the group is gone (or holds only what this user may not signal)
        with anyio.move_on_after(EXIT_GRACE_SECONDS):
            while _group_alive(process):
                await anyio.sleep(0.02)
            break
    with suppress(OSError, anyio.BrokenResourceError, anyio.ClosedResourceError), anyio.move_on_after(1):
        await process.aclose()  # bounded: a process that left the group may still hold the pipes


def _group_alive(process: Process) -> bool:
    _ = process.returncode  # reaps the leader, else its zombie keeps the group alive
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True
