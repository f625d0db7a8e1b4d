"""`auto-coder --acp`: the Agent Client Protocol methods, and the process around them.

Each `session/new` or `session/load` gets its own `Session` (configuration read with the client's cwd as the
project folder, so its project file applies; the flags given with --acp apply to every session), on a thread of
its own (`session.py`). Standard output carries only JSON-RPC: the protocol writes to a private duplicate of fd 1,
and fd 1 and `sys.stdout` point at stderr, so no print, library or child process can write into the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config, McpServerConfig, load_config
from ..errors import ConfigError
from ..history import ConversationStore, HistoryError
from ..loop_thread import LoopThread
from ..session import Session
from .files import ClientFiles
from .session import STOP_SECONDS, AcpSession
from .wire import INTERNAL_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, Connection, RpcError, invalid_params

PROTOCOL_VERSION = 1
EXIT_OK, EXIT_USAGE = 0, 2
SHUTDOWN_SECONDS = 5.0
VISION_PROBE_SECONDS = 2.0
# Options of the one-shot modes that mean nothing to an agent serving sessions.
NOT_WITH_ACP = ("prompt", "working_dir", "resume", "export", "attach", "show_context", "show_config", "doctor",
                "sessions")

log = logging.getLogger("auto_coder_nb.acp")

Loader = Callable[[Path], Config]


def run_agent(args: argparse.Namespace, flags: dict[str, Any]) -> int:
    """Serve ACP on stdin/stdout until the client closes stdin (or a SIGTERM); 0 then, 2 for a usage error."""
    given = [name for name in NOT_WITH_ACP if getattr(args, name, None)]
    if given:
        option = "a prompt" if given[0] == "prompt" else "--" + given[0].replace("_", "-")
        print(f"auto-coder: error: --acp serves sessions to an ACP client: {option} does not apply (each session "
              "works in the folder its client gives)", file=sys.stderr)
        return EXIT_USAGE

    def load(cwd: Path) -> Config:
        return load_config(flags, args.config, cwd=cwd, trust_project=args.trust_project)

    try:
        load(Path.home())  # the user's and the site's files, and the flags: a mistake there is the process's
    except ConfigError as exc:
        print(f"auto-coder: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    protocol_out, protocol_in = _take_stdio()
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="auto-coder --acp: %(message)s")
    asyncio.run(AgentServer(load, protocol_in, protocol_out).serve())
    return EXIT_OK


def _take_stdio() -> tuple[int, int]:
    """Private duplicates of fds 1 and 0 for the protocol; fd 1 and sys.stdout become stderr and fd 0 /dev/null,
    so nothing else (a print, a library, a command the agent runs) writes into the protocol or reads from it."""
    protocol_out, protocol_in = os.dup(1), os.dup(0)  # not inherited by children (os.dup makes them so)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    return protocol_out, protocol_in


class AgentServer:
    def __init__(self, load: Loader, read_fd: int, write_fd: int) -> None:
        self.load = load
        self.connection = Connection(read_fd, write_fd, self.handle, self.notified)
        self.sessions: dict[str, AcpSession] = {}
        self.client_fs: dict[str, bool] = {}
        self.store = ConversationStore(warn=lambda text: log.warning("%s", text))
        self.methods = {
            "initialize": self.initialize,
            "authenticate": self.authenticate,
            "session/new": self.new_session,
            "session/load": self.load_session,
            "session/prompt": self.prompt,
            "session/set_mode": self.set_mode,
            "session/cancel": self.cancel,
        }

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        serving = asyncio.ensure_future(self.connection.serve())
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, serving.cancel)
        try:
            await serving
        except asyncio.CancelledError:
            pass
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        """The client is gone: stop every turn (what was said is saved as it happened), close the sessions."""
        for live in self.sessions.values():
            live.cancel()
        await self.connection.finish(SHUTDOWN_SECONDS)
        for live in self.sessions.values():
            await self._close(live)
        self.connection.stop_writing()

    async def _close(self, live: AcpSession) -> None:
        try:
            await asyncio.wait_for(asyncio.wrap_future(live.thread.submit(live.close())), SHUTDOWN_SECONDS)
        except Exception as exc:  # closing one session must not keep the others open
            log.warning("closing session %s: %s", live.id, exc)
        live.thread.stop(STOP_SECONDS)

    async def handle(self, method: str, params: Any) -> Any:
        handler = self.methods.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"Method not found: {method}")
        return await handler(params)

    async def notified(self, method: str, params: Any) -> None:
        if method == "session/cancel":
            await self.cancel(params)
        # Other notifications ($/cancel_request, extensions) need nothing from us.

    # -- methods -------------------------------------------------------------------------------------

    async def initialize(self, params: Any) -> dict[str, Any]:
        params = _object(params)
        if not isinstance(params.get("protocolVersion"), int):
            raise invalid_params("protocolVersion must be an integer")
        capabilities = params.get("clientCapabilities")
        fs = capabilities.get("fs") if isinstance(capabilities, dict) else None
        fs = fs if isinstance(fs, dict) else {}
        self.client_fs = {"read": fs.get("readTextFile") is True, "write": fs.get("writeTextFile") is True}
        return {
            "protocolVersion": PROTOCOL_VERSION,  # the one we speak, whatever the client asked for
            "agentCapabilities": {
                "loadSession": True,
                "promptCapabilities": {"image": await self._takes_images(), "audio": False, "embeddedContext": True},
                "mcpCapabilities": {"http": importlib.util.find_spec("mcp") is not None, "sse": False},
            },
            "authMethods": [],
            "agentInfo": {"name": "auto-coder", "title": "auto-coder", "version": __version__},
        }

    async def authenticate(self, params: Any) -> dict[str, Any]:
        raise invalid_params("auto-coder offers no ACP authentication method: its credentials come from its "
                             "configuration (see auto-coder --doctor)")

    async def new_session(self, params: Any) -> dict[str, Any]:
        params = _object(params)
        live = await self._open(None, _cwd(params), _mcp_servers(params))
        return {"sessionId": live.id, "modes": live.modes()}

    async def load_session(self, params: Any) -> dict[str, Any]:
        params = _object(params)
        session_id = params.get("sessionId")
        if not isinstance(session_id, str) or not session_id:
            raise invalid_params("sessionId must be a string")
        cwd, servers = _cwd(params), _mcp_servers(params)
        live = self.sessions.get(session_id)
        if live is not None:  # open already (a host that reopened its thread): show it again
            if live.running:
                raise RpcError(INVALID_REQUEST, f"Session {session_id} is answering a prompt: cancel it first.")
            await asyncio.wrap_future(live.thread.submit(live.show_history()))
            return {"modes": live.modes()}
        try:
            saved = self.store.find(session_id)
        except HistoryError as exc:
            raise invalid_params(f"unknown session {session_id}: {exc}") from None
        live = await self._open(session_id, cwd, servers)
        try:
            await asyncio.wrap_future(live.thread.submit(live.load(saved)))
        except HistoryError as exc:
            await self._close(self.sessions.pop(session_id))
            raise invalid_params(str(exc)) from None
        return {"modes": live.modes()}

    async def prompt(self, params: Any) -> dict[str, Any]:
        live = self._session(params)
        if live.running:
            raise RpcError(INVALID_REQUEST, "A prompt is already running in this session: wait for it or cancel it "
                                            "(session/cancel), then send this one again.")
        live.running, live.cancelling = True, False
        try:
            stop_reason, error = await asyncio.wrap_future(live.thread.submit(live.prompt(params.get("prompt"))))
        finally:
            live.running = False
        if live.cancelling:
            return {"stopReason": "cancelled"}
        if error is not None:
            raise RpcError(INTERNAL_ERROR, error)  # the model server failed: the client shows the message
        return {"stopReason": stop_reason}

    async def set_mode(self, params: Any) -> dict[str, Any]:
        live = self._session(params)
        mode = params.get("modeId")
        if not isinstance(mode, str):
            raise invalid_params("modeId must be a string")
        try:
            await asyncio.wrap_future(live.thread.submit(_call(live.session.set_approval_mode, mode)))
        except ValueError as exc:
            raise invalid_params(str(exc)) from None
        return {}

    async def cancel(self, params: Any) -> dict[str, Any]:
        self._session(params).cancel()
        return {}

    # -- helpers -------------------------------------------------------------------------------------

    def _session(self, params: Any) -> AcpSession:
        params = _object(params)
        session_id = params.get("sessionId")
        live = self.sessions.get(session_id) if isinstance(session_id, str) else None
        if live is None:
            raise invalid_params(f"unknown session {session_id!r}")
        return live

    async def _open(self, session_id: str | None, cwd: Path, servers: dict[str, McpServerConfig]) -> AcpSession:
        """A session at `cwd` with the client's MCP servers beside the configured ones, on a thread of its own."""
        thread = LoopThread("auto-coder-acp-session")
        try:
            session = await asyncio.wrap_future(thread.submit(_call(self._create, cwd, servers)))
        except BaseException:
            thread.stop(STOP_SECONDS)
            raise
        session_id = session_id or session.conversation.correlation_id
        files = None
        if self.client_fs.get("read") or self.client_fs.get("write"):
            files = ClientFiles(self.connection, session_id, read=self.client_fs["read"],
                                write=self.client_fs["write"])
            session.workspace.editor = files
        live = AcpSession(session_id, session, thread, self.connection, files)
        self.sessions[session_id] = live
        return live

    def _create(self, cwd: Path, servers: dict[str, McpServerConfig]) -> Session:
        """Read the configuration for `cwd` and make its Session (on the session's thread: MCP servers start)."""
        try:
            config = self.load(cwd)
            _check_within_site(config, cwd)
            refused = _add_servers(config, servers)
            session = Session.create(config, working_dir=cwd)
        except ConfigError as exc:
            raise invalid_params(f"config error: {exc}") from None
        for text in refused:
            session.tools.notify(text)
        project = config.project
        if project is not None and project.needs_trust:
            session.tools.notify(project.notice("acp"))
        return session

    async def _takes_images(self) -> bool:
        """What the configured model says of images: llm.vision, else what its server reports (briefly asked)."""
        try:
            config = self.load(Path.home())
        except ConfigError:
            return False
        if config.llm.vision is not None:
            return config.llm.vision
        from ..providers.openai_compatible import OpenAICompatibleProvider

        provider = OpenAICompatibleProvider(config)
        try:
            capabilities = await asyncio.wait_for(provider.capabilities(), VISION_PROBE_SECONDS)
            return bool(capabilities.vision)
        except Exception:  # an unreachable server says nothing; a prompt with an image then says why it failed
            return False
        finally:
            await provider.aclose()


async def _call(function: Callable[..., Any], *args: Any) -> Any:
    """Run a synchronous function on a session's loop (as a coroutine for `LoopThread.submit`)."""
    return function(*args)


def _object(params: Any) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise invalid_params("params must be an object")
    return params


def _cwd(params: dict[str, Any]) -> Path:
    cwd = params.get("cwd")
    if not isinstance(cwd, str) or not cwd:
        raise invalid_params("cwd must be the absolute path of a folder")
    path = Path(cwd)
    if not path.is_absolute():
        raise invalid_params(f"cwd {cwd!r} is not an absolute path")
    if not path.is_dir():
        raise invalid_params(f"cwd {cwd} is not a folder")
    return path.resolve()


def _check_within_site(config: Config, cwd: Path) -> None:
    """A site that locks agent.working_dir allows sessions only in that folder (and below it)."""
    locked = config.site.locked_by("agent.working_dir")
    if locked is None or not config.agent.working_dir:
        return
    allowed = Path(config.agent.working_dir).expanduser().resolve()
    if not cwd.is_relative_to(allowed):
        raise ConfigError(f"cwd {cwd} is outside {allowed}, the folder the site configuration allows "
                          f"(agent.working_dir, locked in {locked})")


def _mcp_servers(params: dict[str, Any]) -> dict[str, McpServerConfig]:
    """The client's MCP servers: stdio `{name, command, args, env: [{name, value}]}` and
    `{type: http, name, url, headers: [{name, value}]}`."""
    given = params.get("mcpServers", [])
    if not isinstance(given, list):
        raise invalid_params("mcpServers must be a list")
    servers: dict[str, McpServerConfig] = {}
    for number, server in enumerate(given, 1):
        if not isinstance(server, dict) or not isinstance(server.get("name"), str) or not server["name"]:
            raise invalid_params(f"mcpServers[{number}] needs a name")
        kind = server.get("type", "stdio")
        if kind == "stdio" or "command" in server:
            command, args = server.get("command"), server.get("args", [])
            if not isinstance(command, str) or not command:
                raise invalid_params(f"mcpServers[{number}] ({server['name']}): command must be a string")
            if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
                raise invalid_params(f"mcpServers[{number}] ({server['name']}): args must be a list of strings")
            env = _pairs(server.get("env", []), f"mcpServers[{number}].env")
            config = McpServerConfig(command=command, args=args, env=env, secrets=list(env.values()))
        elif kind in ("http", "sse"):
            url = server.get("url")
            if not isinstance(url, str) or not url:
                raise invalid_params(f"mcpServers[{number}] ({server['name']}): url must be a string")
            headers = _pairs(server.get("headers", []), f"mcpServers[{number}].headers")
            config = McpServerConfig(url=url, headers=headers, secrets=list(headers.values()),
                                     disabled=kind == "sse")
        else:
            raise invalid_params(f"mcpServers[{number}] ({server['name']}): unknown type {kind!r}")
        servers[server["name"]] = config
    return servers


def _pairs(value: Any, where: str) -> dict[str, str]:
    if not isinstance(value, list) or not all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                              and isinstance(item.get("value"), str) for item in value):
        raise invalid_params(f"{where} must be a list of {{name, value}} objects")
    return {item["name"]: item["value"] for item in value}


def _add_servers(config: Config, servers: dict[str, McpServerConfig]) -> list[str]:
    """Add the client's MCP servers to the configured ones; returns what to tell the user about those left out."""
    refused = []
    locked = config.site.locked_by("mcp.servers") or config.site.locked_by("mcp")
    for name, server in servers.items():
        if locked is not None:
            refused.append(f"MCP server {name} (from the client) was not started: the site configuration sets the "
                           f"MCP servers (locked in {locked}).")
        elif name in config.mcp.servers:
            refused.append(f"MCP server {name} (from the client) was not started: a configured server has that name.")
        elif server.disabled:
            refused.append(f"MCP server {name} (from the client) was not started: SSE servers are not supported "
                           "(streamable HTTP and stdio are).")
        else:
            config.mcp.servers[name] = server
    return refused
