"""MCP servers as tools: every tool of a configured server becomes the ToolDefinition `server__tool`.

The official `mcp` SDK (the optional `mcp` extra) is imported only when servers are configured. An MCP client
session belongs to the event loop and task that opened it, while one Session's tools are called from several
loops (the magics' worker loop, the kernel's loop for the panel), so every client lives on one background thread
with its own loop and each call is bridged to it; cancelling the caller (Stop, Ctrl-C) cancels the call there.
A server that fails to start or stops is reported once (a notice in the next turn) and its tools disappear;
a call only ever raises ToolError, which the model reads.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import json
import os
import re
import tempfile
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ..config import MCP_SERVERS, McpServerConfig
from ..loop_thread import LoopThread
from ..providers.base import MAX_ARGUMENT_DEPTH, ToolDefinition, ToolKind, nested_deeper_than
from ..text import hide_secrets, truncate
from .registry import ToolError, ToolRegistry
from .shell import MAX_OUTPUT_CHARS

SEPARATOR = "__"
MAX_TOOL_NAME = 64  # what OpenAI-compatible servers accept for a function name
INSTALL_HINT = 'MCP servers need the optional extra: pip install "auto-coder-nb[mcp]"'
STOP_SECONDS = 10.0  # to close every client (a stdio server gets its stdin closed, then a kill)
STDERR_TAIL = 2000  # bytes of a stdio server's stderr kept to say why it stopped
LISTING_PAGES = 100
MAX_TOOLS_PER_SERVER = 128  # more make every request heavy (20,000 tools: 3.4 MB of schemas, 17 s a prompt)
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")

# Why a server is refused before it starts (the site allow-list), or None to let it run.
Refusal = Callable[[str, McpServerConfig], "str | None"]
# TLS trust and proxy for an HTTP server's URL: {"verify": ..., "proxy": ...}, as for the model.
HttpOptions = Callable[[str], "dict[str, Any]"]


@dataclass
class McpServerStatus:
    """One server as the doctor and the notices describe it."""

    name: str
    config: McpServerConfig
    state: str = "starting"  # "running", "failed", "stopped", "refused", "disabled"
    detail: str = ""  # why it is not running
    tools: dict[str, str] = field(default_factory=dict)  # the model's name -> the server's name
    read_tools: list[str] = field(default_factory=list)  # model names of the tools marked read
    client: Any = field(default=None, repr=False)
    stop: asyncio.Event | None = field(default=None, repr=False)
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    errlog: BinaryIO | None = field(default=None, repr=False)
    http_error: str = ""  # the last HTTP error status a streamable-HTTP server answered
    junk_said: bool = False  # that it writes what is not MCP on its stdout (said once)

    @property
    def transport(self) -> str:
        return "http" if self.config.url is not None else "stdio"


def tool_name(server: str, tool: str) -> str:
    """`server__tool`, in the characters and length every OpenAI-compatible server accepts."""
    return _UNSAFE_NAME.sub("_", f"{server}{SEPARATOR}{tool}")[:MAX_TOOL_NAME]


class McpServers:
    """The configured MCP servers of one session, their tools registered in `registry` while they run."""

    def __init__(
        self,
        servers: Mapping[str, McpServerConfig],
        registry: ToolRegistry,
        *,
        cwd: Path,
        refuse: Refusal | None = None,
        http_options: HttpOptions | None = None,
    ) -> None:
        self.registry = registry
        self.cwd = cwd
        self.servers = {name: McpServerStatus(name, config) for name, config in servers.items()}
        self._refuse = refuse
        self._http_options = http_options
        self._runner: LoopThread | None = None
        self._closed = False

    # -- starting and stopping (from the caller's thread) -----------------------------------------

    def start(self) -> None:
        """Start every server and wait until each runs or failed (each within its startup_timeout)."""
        pending = []
        for server in self.servers.values():
            refusal = self._refuse(server.name, server.config) if self._refuse is not None else None
            if server.config.disabled:
                server.state, server.detail = "disabled", f"{MCP_SERVERS}.{server.name}.disabled is true"
            elif server.config.unset is not None:  # its ${VAR} is not set: only an error for a server that starts
                self._fail(server, "failed", server.config.unset.message())
            elif refusal is not None:
                self._fail(server, "refused", refusal)
            else:
                pending.append(server)
        if not pending:
            return
        try:
            import mcp  # noqa: F401  (the optional extra)
        except ImportError:
            for server in pending:
                self._fail(server, "failed", INSTALL_HINT)
            return
        runner = self._runner = LoopThread("auto-coder-mcp")
        atexit.register(self.close)
        futures = [runner.submit(self._open(server)) for server in pending]
        longest = max(server.config.startup_timeout for server in pending)
        concurrent.futures.wait(futures, timeout=longest + STOP_SECONDS)

    def close(self) -> None:
        """Stop every server and the background thread (from synchronous code, or at exit)."""
        runner = self._begin_close()
        if runner is None:
            return
        with suppress(Exception):
            runner.submit(self._stop_all()).result(STOP_SECONDS + 1)
        runner.stop(STOP_SECONDS)

    async def aclose(self) -> None:
        """close() for async code: the caller's loop keeps running while the servers stop."""
        runner = self._begin_close()
        if runner is None:
            return
        with suppress(Exception):
            await asyncio.wait_for(asyncio.wrap_future(runner.submit(self._stop_all())), STOP_SECONDS + 1)
        runner.stop(STOP_SECONDS)

    def _begin_close(self) -> LoopThread | None:
        for server in self.servers.values():
            self._unregister(server)
        if self._closed or self._runner is None:
            self._closed = True
            return None
        self._closed = True
        atexit.unregister(self.close)
        return self._runner

    # -- on the background loop --------------------------------------------------------------------

    async def _open(self, server: McpServerStatus) -> None:
        ready = asyncio.Event()
        server.stop = asyncio.Event()
        server.task = asyncio.create_task(self._hold(server, ready))
        timeout = server.config.startup_timeout
        try:
            await asyncio.wait_for(ready.wait(), timeout)
        except asyncio.TimeoutError:
            self._fail(server, "failed", f"did not start within {timeout:g} s "
                                         f"({MCP_SERVERS}.{server.name}.startup_timeout)")
            server.task.cancel()

    async def _hold(self, server: McpServerStatus, ready: asyncio.Event) -> None:
        """Open the client, list its tools, and keep it open until stopped: an anyio client must be entered
        and left by the same task."""
        try:
            async with AsyncExitStack() as stack:
                client = await self._connect(server, stack)
                tools, more = await _list_tools(client)
                server.client = client
                self._register(server, tools, more)
                server.state = "running"
                ready.set()
                assert server.stop is not None
                await server.stop.wait()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # anyio raises exception groups; any failure only ends this server
            self._fail(server, "failed" if server.state == "starting" else "stopped", self._describe(server, exc))
        finally:
            server.client = None
            if server.errlog is not None:
                server.errlog.close()
            ready.set()

    async def _connect(self, server: McpServerStatus, stack: AsyncExitStack) -> Any:
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client
        from mcp.types import Implementation

        config = server.config
        transport: Any
        if config.url is not None:
            import httpx2

            async def note_refusal(response: httpx2.Response) -> None:
                if response.status_code >= 400:  # the SDK's error says only "Server returned an error response"
                    server.http_error = f"HTTP {response.status_code} {response.reason_phrase}".strip()

            # The SDK's defaults: a response stream may stay open, so reads wait long.
            options = self._http_options(config.url) if self._http_options is not None else {}
            http = await stack.enter_async_context(httpx2.AsyncClient(
                headers=config.headers, timeout=httpx2.Timeout(30.0, read=300.0),
                event_hooks={"response": [note_refusal]}, **options))
            transport = streamable_http_client(config.url, http_client=http)
        else:
            from .mcp_stdio import bounded_stdio

            assert config.command is not None
            server.errlog = tempfile.TemporaryFile("w+b")  # closed by _hold, once it has said why a server ended
            cwd = Path(config.cwd).expanduser() if config.cwd else self.cwd
            transport = bounded_stdio(config.command, config.args, config.env or None, cwd, server.errlog,
                                      on_junk=lambda junk: self._junk(server, junk))
        info = Implementation(name="auto-coder-nb", version=_version())
        return await stack.enter_async_context(Client(transport, client_info=info))

    def _register(self, server: McpServerStatus, tools: list[Any], more: bool = False) -> None:
        config = server.config
        if len(tools) > MAX_TOOLS_PER_SERVER:
            self.registry.notify(f"MCP server {server.name} offers {'more than ' if more else ''}{len(tools):,} "
                                 f"tools; only the first "
                                 f"{MAX_TOOLS_PER_SERVER} are used (each tool's schema goes with every request).")
        for tool in tools[:MAX_TOOLS_PER_SERVER]:
            name = tool_name(server.name, tool.name)
            if nested_deeper_than(tool.input_schema, MAX_ARGUMENT_DEPTH):
                self.registry.notify(f"MCP server {server.name}: tool {tool.name} is left out, its schema is nested "
                                     f"more than {MAX_ARGUMENT_DEPTH} levels deep.")
                continue
            if name in self.registry:
                self.registry.notify(f"MCP server {server.name}: tool {tool.name} is left out, its name {name} "
                                     "is taken.")
                continue
            kind: ToolKind = "read" if config.read_only or tool.name in config.read_tools else "command"
            schema = tool.input_schema if isinstance(tool.input_schema, dict) else {}
            added = self.registry.register(ToolDefinition(
                name=name,
                description=f"[MCP server {server.name}] {tool.description or tool.title or tool.name}",
                parameters={"type": "object", "properties": {}, **schema},
                handler=self._handler(server, tool.name),
                kind=kind,
                preview=_previewer(server.name, tool.name),
            ))
            if added:  # else the site's allow.tools leaves it out
                server.tools[name] = tool.name
                if kind == "read":
                    server.read_tools.append(name)
        unknown = sorted(set(config.read_tools) - {tool.name for tool in tools})
        if unknown:
            self.registry.notify(f"{MCP_SERVERS}.{server.name}.read_tools names {', '.join(unknown)}, which the "
                                 f"server does not have.")

    def _handler(self, server: McpServerStatus, tool: str) -> Callable[..., Any]:
        async def call(**arguments: Any) -> str:
            if self._closed or self._runner is None:
                raise ToolError(f"The MCP server {server.name} was closed with its session.")
            return await asyncio.wrap_future(self._runner.submit(self._call(server, tool, arguments)))

        return call

    async def _call(self, server: McpServerStatus, tool: str, arguments: dict[str, Any]) -> str:
        from mcp.shared.exceptions import MCPError
        from mcp.types import CONNECTION_CLOSED

        name = tool_name(server.name, tool)
        client = server.client
        if server.state != "running" or client is None:
            raise ToolError(f"The MCP server {server.name} is not running ({server.detail}); its tools are gone.")
        timeout = server.config.timeout
        try:
            result = await asyncio.wait_for(client.call_tool(tool, arguments), timeout)
        except asyncio.TimeoutError:
            raise ToolError(f"{name} gave no answer within {timeout:g} s ({MCP_SERVERS}.{server.name}.timeout), "
                            "so the call was cancelled.") from None
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise ToolError(self._hide(server, f"{name} failed: {exc.message}")) from None
            self._lose(server, "the connection closed")
            raise ToolError(f"The MCP server {server.name} stopped during the call ({server.detail}); its tools "
                            "are no longer available.") from None
        except Exception as exc:  # the transport failed (an HTTP server went away)
            self._lose(server, self._describe(server, exc))
            raise ToolError(f"The MCP server {server.name} stopped during the call ({server.detail}); its tools "
                            "are no longer available.") from None
        text = truncate(self._hide(server, _render(result)), MAX_OUTPUT_CHARS)
        if result.is_error:
            raise ToolError(text or f"{name} failed without saying why.")
        return text

    async def _stop_all(self) -> None:
        running = []
        for server in self.servers.values():
            if server.stop is not None:
                server.stop.set()
            if server.task is not None and not server.task.done():
                running.append(server.task)
        if running:
            _, late = await asyncio.wait(running, timeout=STOP_SECONDS)
            for task in late:
                task.cancel()

    # -- state --------------------------------------------------------------------------------------

    def _lose(self, server: McpServerStatus, cause: str) -> None:
        """A running server stopped: say why once, drop its tools and let its holder close the client."""
        stderr = self._stderr_tail(server)
        self._fail(server, "stopped", f"{cause}: {stderr}" if stderr else cause)
        if server.stop is not None:
            server.stop.set()

    def _fail(self, server: McpServerStatus, state: str, detail: str) -> None:
        if server.state not in ("starting", "running") or self._closed:
            return  # reported already (or closing on purpose): once is enough
        was_running = server.state == "running"
        server.state, server.detail = state, detail
        self._unregister(server)
        if state == "refused":
            self.registry.notify(f"MCP server {server.name} was not started: {detail}.")
        elif was_running:
            self.registry.notify(f"MCP server {server.name} stopped ({detail}); its tools are no longer available.")
        else:
            self.registry.notify(f"MCP server {server.name} failed to start: {detail}.")

    def _junk(self, server: McpServerStatus, junk: str) -> None:
        if not server.junk_said:
            server.junk_said = True
            self.registry.notify(f"MCP server {server.name} wrote something that is not MCP on its stdout "
                                 f"({self._hide(server, junk)}); it is ignored (a server's logs belong on stderr).")

    def _unregister(self, server: McpServerStatus) -> None:
        for name in server.tools:
            self.registry.unregister(name)

    def _describe(self, server: McpServerStatus, exc: BaseException) -> str:
        leaf = _first_leaf(exc)
        text = str(leaf) or type(leaf).__name__
        if isinstance(leaf, FileNotFoundError) and server.config.command:
            text = f"command not found: {server.config.command}"
        if server.http_error:
            text = f"{text} ({server.http_error})"
        stderr = self._stderr_tail(server)
        if stderr and not isinstance(leaf, FileNotFoundError):
            text = f"{text}; its stderr ends: {stderr}"
        return self._hide(server, " ".join(text.split())[:500])

    def _stderr_tail(self, server: McpServerStatus) -> str:
        """The last line the stdio server wrote to stderr (read without moving the shared file offset)."""
        if server.errlog is None or server.errlog.closed:
            return ""
        fd = server.errlog.fileno()
        size = os.fstat(fd).st_size
        data = os.pread(fd, STDERR_TAIL, max(0, size - STDERR_TAIL))
        lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        return self._hide(server, lines[-1][:300]) if lines else ""

    def _hide(self, server: McpServerStatus, text: str) -> str:
        config = server.config
        return hide_secrets(text, [*config.secrets, *config.env.values(), *config.headers.values()])


async def _list_tools(client: Any) -> tuple[list[Any], bool]:
    """The server's tools, page after page until there are more than MAX_TOOLS_PER_SERVER; and whether pages
    were left unread."""
    tools: list[Any] = []
    cursor = None
    for _ in range(LISTING_PAGES):
        page = await client.list_tools(cursor=cursor)
        tools.extend(page.tools)
        cursor = page.next_cursor
        if not cursor or len(tools) > MAX_TOOLS_PER_SERVER:
            break
    return tools, bool(cursor)


def _render(result: Any) -> str:
    """A tool result as text: text parts as they are, other media described by a line."""
    parts: list[str] = []
    for part in result.content:
        kind = getattr(part, "type", "")
        if kind == "text":
            parts.append(part.text)
        elif kind in ("image", "audio"):
            parts.append(f"[{kind} {part.mime_type}, {len(part.data) * 3 // 4:,} bytes, not shown]")
        elif kind == "resource":
            resource = part.resource
            parts.append(getattr(resource, "text", None) or f"[resource {resource.uri}]")
        elif kind == "resource_link":
            parts.append(f"[resource {part.uri}]")
    if not parts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content))
    return "\n".join(parts)


def _version() -> str:
    """This package's version, told to the server (from the installed metadata: the package root is a face)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("auto-coder-nb")
    except PackageNotFoundError:
        return "unknown"


def _previewer(server: str, tool: str) -> Callable[..., str]:
    """What an approval shows: the server, its tool and the arguments."""
    def preview(**arguments: Any) -> str:
        return f"MCP server {server}: {tool}\n{json.dumps(arguments, indent=2)}"

    return preview


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups."""
    while isinstance(inner := getattr(exc, "exceptions", None), tuple) and inner:
        exc = inner[0]
    return exc
