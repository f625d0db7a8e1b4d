"""Drives `auto-coder --acp` with the client side of the `agent-client-protocol` SDK (whichever line the running
interpreter has: the test environment's 0.11, or 0.12 from a cached venv), and prints what it saw as JSON.

Needs only the SDK (it imports nothing of auto_coder_nb): `python acp_sdk_driver.py '<json settings>'` with
settings {agent: [argv], env: {...}, root: folder, server: the scripted model server's URL}. The test scripts the
server's replies first; the SDK validates every message the agent sends against its schema, and anything it
rejects is logged, which this script reports as `errors`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import urllib.request
from importlib.metadata import version
from pathlib import Path
from typing import Any

from acp import PROTOCOL_VERSION, spawn_agent_process
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    FileSystemCapabilities,
    Implementation,
    ReadTextFileResponse,
    RequestPermissionResponse,
    TextContentBlock,
    WriteTextFileResponse,
)

LIMIT = 60.0


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record.getMessage() + (f" {record.exc_info[1]!r}" if record.exc_info else ""))


class Client:
    """What a host does: keep the updates, answer permissions with allow_once, read and write files."""

    def __init__(self) -> None:
        self.updates: list[Any] = []
        self.permissions: list[Any] = []
        self.files: list[str] = []
        self.arrived = asyncio.Event()

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.updates.append(update)
        self.arrived.set()

    async def until(self, done: Any) -> None:
        """Until `done(updates)`: the SDK hands notifications to a queue of their own while it resolves responses
        at once, so an update sent before a response may reach this client after it."""
        while not done(self.updates):
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), LIMIT)

    def said(self, text: str) -> Any:
        return lambda updates: "".join(update.content.text for update in updates
                                       if update.session_update == "agent_message_chunk").endswith(text)

    async def request_permission(self, options: list[Any], session_id: str, tool_call: Any,
                                 **kwargs: Any) -> RequestPermissionResponse:
        self.permissions.append({"options": [option.kind for option in options],
                                 "content": [item.model_dump(mode="json", by_alias=True, exclude_none=True)
                                             for item in tool_call.content or []]})
        return RequestPermissionResponse(outcome=AllowedOutcome(outcome="selected", option_id="allow_once"))

    async def read_text_file(self, path: str, session_id: str, **kwargs: Any) -> ReadTextFileResponse:
        self.files.append(f"read {path}")
        return ReadTextFileResponse(content=Path(path).read_text())

    async def write_text_file(self, content: str, path: str, session_id: str, **kwargs: Any) -> WriteTextFileResponse:
        self.files.append(f"write {path}")
        Path(path).write_text(content)
        return WriteTextFileResponse()

    def kinds(self) -> list[str]:
        kinds, self.updates = [update.session_update for update in self.updates], []
        return kinds


def release(server: str, name: str) -> None:
    request = urllib.request.Request(f"{server}/_release", data=json.dumps({"name": name}).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=LIMIT).close()


async def main(settings: dict[str, Any]) -> dict[str, Any]:
    root = settings["root"]
    seen: dict[str, Any] = {"sdk": version("agent-client-protocol")}
    client = Client()
    capabilities = ClientCapabilities(fs=FileSystemCapabilities(read_text_file=True, write_text_file=True))
    async with spawn_agent_process(client, *settings["agent"], env=settings["env"]) as (conn, _process):
        hello = await conn.initialize(protocol_version=PROTOCOL_VERSION, client_capabilities=capabilities,
                                      client_info=Implementation(name="sdk-test", version="1"))
        seen["initialize"] = hello.model_dump(mode="json", by_alias=True, exclude_none=True)
        session = await conn.new_session(cwd=root, mcp_servers=[])
        seen["modes"] = [mode.id for mode in session.modes.available_modes]
        seen["current_mode"] = session.modes.current_mode_id

        def say(text: str) -> Any:
            return conn.prompt(session_id=session.session_id, prompt=[TextContentBlock(type="text", text=text)])

        stop = (await say("read notes.txt")).stop_reason
        await client.until(client.said("It says remember the milk."))
        seen["read"] = stop, client.kinds()
        stop = (await say("write hello.txt")).stop_reason
        await client.until(client.said("Written."))
        seen["write"] = stop, client.kinds()
        seen["permissions"] = client.permissions
        await conn.set_session_mode(session_id=session.session_id, mode_id="auto-edit")
        answer = asyncio.ensure_future(say("count slowly"))
        await client.until(lambda updates: any(u.session_update == "agent_message_chunk" for u in updates))
        await conn.cancel(session_id=session.session_id)
        seen["cancel"] = (await asyncio.wait_for(answer, LIMIT)).stop_reason, client.kinds()
        release(settings["server"], "held")
        seen["files"] = client.files
    loader = Client()
    async with spawn_agent_process(loader, *settings["agent"], env=settings["env"]) as (conn, _process):
        await conn.initialize(protocol_version=PROTOCOL_VERSION, client_capabilities=ClientCapabilities())
        loaded = await conn.load_session(cwd=root, session_id=session.session_id, mcp_servers=[])
        await loader.until(lambda updates: [u.session_update for u in updates].count("user_message_chunk") == 3
                           and updates[-1].session_update == "agent_message_chunk")
        seen["load"] = loaded.modes.current_mode_id if loaded and loaded.modes else None, loader.kinds()
    return seen


if __name__ == "__main__":
    errors = Errors()
    logging.getLogger().addHandler(errors)
    result = asyncio.run(main(json.loads(sys.argv[1])))
    print(json.dumps({**result, "errors": errors.seen}))
