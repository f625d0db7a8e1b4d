"""`auto-coder --acp` driven by real hosts' client code: the agent-client-protocol SDK's client side of the 0.11 line
(in the test environment, as jupyter-ai-acp-client 0.3.3 pins it) and of the 0.12 line (a venv built once and cached
under ~/.cache/auto-coder-nb), and jupyter-ai v3's own persona machinery with our persona class."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest
from acp_clients import agent_env

from auto_coder_nb.testing.server import FakeLLMServer, reply

DRIVER = Path(__file__).with_name("acp_sdk_driver.py")
SDK_0_12 = "0.12.1"
CACHE = Path.home() / ".cache" / "auto-coder-nb"


def sdk_0_12_python() -> Path:
    """The interpreter of a venv with the SDK's 0.12 line, built once (a failed build leaves nothing behind)."""
    folder = CACHE / f"acp-sdk-{SDK_0_12}"
    python = folder / "bin" / "python"
    if (folder / "ready").exists():
        return python
    building = CACHE / f".acp-sdk-{SDK_0_12}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    venv.EnvBuilder(with_pip=True).create(building)
    installed = subprocess.run([str(building / "bin" / "python"), "-m", "pip", "install", "-q",
                                f"agent-client-protocol=={SDK_0_12}"], capture_output=True, text=True)
    if installed.returncode != 0:
        shutil.rmtree(building, ignore_errors=True)
        pytest.fail(f"could not install agent-client-protocol {SDK_0_12} in a venv: {installed.stderr[-2000:]}")
    (building / "ready").touch()
    try:
        building.rename(folder)
    except OSError:  # another run built it meanwhile
        shutil.rmtree(building, ignore_errors=True)
    return python


@pytest.mark.parametrize("line", ["0.11", "0.12"])
def test_the_sdk_client_side_drives_the_agent(line: str, fake_server: FakeLLMServer, tmp_path: Path) -> None:
    python = Path(sys.executable) if line == "0.11" else sdk_0_12_python()
    root, home = tmp_path / "project", tmp_path / "home"
    root.mkdir()
    home.mkdir()
    (root / "notes.txt").write_text("remember the milk\n")
    fake_server.enqueue(
        reply.tool_call("read_file", {"path": "notes.txt"}), reply.text("It says remember the milk.", chunks=3),
        reply.tool_call("write_file", {"path": "hello.txt", "content": "hi\n"}), reply.text("Written."),
        reply.text("one two three four", chunks=4, wait_for="held", wait_after=2))
    settings = {"agent": [sys.executable, "-m", "auto_coder_nb", "--acp"], "env": agent_env(fake_server, home),
                "root": str(root), "server": fake_server.url}
    run = subprocess.run([str(python), str(DRIVER), json.dumps(settings)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    seen = json.loads(run.stdout)
    assert seen["sdk"].startswith(line + ".")
    assert seen["errors"] == []  # the SDK validated every message the agent sent
    assert seen["initialize"]["protocolVersion"] == 1
    assert seen["initialize"]["agentCapabilities"]["loadSession"] is True
    assert seen["modes"] == ["ask", "auto-edit", "full-auto", "read-only"] and seen["current_mode"] == "ask"
    stop, kinds = seen["read"]
    assert stop == "end_turn" and kinds[:2] == ["tool_call", "tool_call_update"]
    assert set(kinds[2:]) == {"agent_message_chunk"}
    stop, kinds = seen["write"]
    assert stop == "end_turn" and (root / "hello.txt").read_text() == "hi\n"
    assert seen["permissions"] == [{"options": ["allow_once", "allow_always", "reject_once", "reject_always"],
                                    "content": [{"type": "diff", "path": str((root / "hello.txt").resolve()),
                                                 "newText": "hi\n"}]}]
    assert kinds == ["tool_call", "tool_call_update", "tool_call_update", "agent_message_chunk"]
    stop, kinds = seen["cancel"]
    assert stop == "cancelled" and kinds and set(kinds) == {"agent_message_chunk"}
    target = str((root / "notes.txt").resolve())
    assert f"read {target}" in seen["files"] and f"write {(root / 'hello.txt').resolve()}" in seen["files"]
    mode, replayed = seen["load"]
    assert mode == "auto-edit"  # set before the cancelled prompt, restored by the load
    assert replayed[:3] == ["user_message_chunk", "tool_call", "agent_message_chunk"]
    assert replayed.count("user_message_chunk") == 3


def test_the_persona_is_registered_for_jupyter_ai() -> None:
    (entry,) = [entry for entry in entry_points(group="jupyter_ai.personas") if entry.value.startswith("auto_coder")]
    persona = entry.load()
    assert persona.__name__ == "AutoCoderAcpPersona"
    assert version("jupyter-ai-acp-client") >= "0.3.3"


def test_jupyter_ai_runs_the_agent_through_its_acp_client(fake_server: FakeLLMServer, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """jupyter-ai's own persona machinery (BaseAcpPersona, JaiAcpClient) with our persona class and a real chat
    document: a message mentioning @AutoCoder starts our agent and gets its answer into the chat."""
    from jupyterlab_chat.models import Message
    from jupyterlab_chat.ychat import YChat
    from traitlets.config import LoggingConfigurable

    from auto_coder_nb.acp.persona import AVATAR, AutoCoderAcpPersona

    class ChatRoom(LoggingConfigurable):  # type: ignore[misc]
        """What jupyter-ai's PersonaManager gives a persona: the chat, its folder, the loop."""

        def __init__(self, folder: Path, chat: YChat, loop: asyncio.AbstractEventLoop) -> None:
            super().__init__()
            self.folder, self.chat, self.event_loop, self.event_logger = folder, chat, loop, None
            self.root_dir = str(folder)

        def get_chat_dir(self) -> str:
            return str(self.folder)

        def get_chat_path(self, relative: bool = False) -> str:
            return "talk.chat" if relative else str(self.folder / "talk.chat")

        def get_dotjupyter_dir(self) -> None:
            return None

        def get_workspace_dir(self) -> str:
            return str(self.folder)

        def get_mcp_settings(self) -> None:
            return None

    folder = tmp_path / "notebooks"
    folder.mkdir()
    (folder / "data.csv").write_text("a,b\n1,2\n")
    for name, value in agent_env(fake_server, tmp_path).items():
        monkeypatch.setenv(name, value)
    fake_server.enqueue(reply.tool_call("read_file", {"path": "data.csv"}), reply.text("Two columns, a and b."))

    ours = "jupyter-ai-personas::auto_coder_nb::AutoCoderAcpPersona"

    async def talk() -> list[str]:
        chat = YChat()
        changed = asyncio.Event()
        chat.observe(lambda topic, event: changed.set())

        def replies() -> list[str]:
            return [message.body for message in chat.get_messages() if message.sender == ours]

        persona = AutoCoderAcpPersona(parent=ChatRoom(folder, chat, asyncio.get_running_loop()), chat=chat)
        try:
            await persona.on_message(Message(id="m1", body="@AutoCoder what is in data.csv?", sender="ada",
                                             time=time.time()))
            # The SDK queues notifications apart from responses: the last chunks may land just after the answer.
            while "Two columns, a and b." not in replies():
                changed.clear()
                await asyncio.wait_for(changed.wait(), 60)
        finally:
            await persona.shutdown()
        return replies()

    replies = asyncio.run(talk())
    assert "Two columns, a and b." in replies
    assert fake_server.chat_requests[0].json["messages"][-1]["content"].endswith("@AutoCoder what is in data.csv?")
    assert str(folder.resolve()) in fake_server.chat_requests[0].json["messages"][0]["content"]  # the chat's folder
    assert AVATAR.is_file()
