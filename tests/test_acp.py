"""`auto-coder --acp` as a subprocess, driven by a raw JSON-RPC client (`acp_clients.RawAgent`) against the project's
scripted model server: updates, permissions, modes, cancel, load, errors, MCP servers, the client's files, several
sessions, and that stdout carries nothing but JSON-RPC and no secret."""

from __future__ import annotations

import base64
import io
import json
import os
import select
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from acp_clients import WAIT, RawAgent, agent_env, allow

from auto_coder_nb import __version__
from auto_coder_nb.history import ConversationStore, read_records, rebuild
from auto_coder_nb.testing.server import FakeLLMServer, reply

NOTES_SERVER = Path(__file__).parent / "mcp_servers" / "notes_server.py"
SECRET = "sk-test-SECRET-0123456789abcdef"

Start = Callable[..., RawAgent]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


@pytest.fixture
def start(fake_server: FakeLLMServer, home: Path, tmp_path: Path) -> Iterator[Start]:
    """Start agents talking to `fake_server` (keyword arguments are environment variables); all closed after."""
    agents: list[RawAgent] = []

    def start(answer: Any = None, args: tuple[str, ...] = (), **env: str) -> RawAgent:
        agent = RawAgent(agent_env(fake_server, home, **env), cwd=tmp_path, args=args, answer=answer)
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        if agent.process.poll() is None:
            agent.close()


def is_update(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("method") == "session/update" and \
        message["params"]["update"]["sessionUpdate"] == kind


def is_permission(message: dict[str, Any]) -> bool:
    return message.get("method") == "session/request_permission"


def cancel(agent: RawAgent, session_id: str) -> None:
    agent.send({"jsonrpc": "2.0", "method": "session/cancel", "params": {"sessionId": session_id}})


def answered(number: int) -> Callable[[dict[str, Any]], bool]:
    return lambda message: message.get("id") == number and "method" not in message


def test_initialize_speaks_version_1_and_says_what_it_takes(start: Start) -> None:
    agent = start()
    result = agent.call("initialize", {"protocolVersion": 7, "clientCapabilities": {}})["result"]
    assert result["protocolVersion"] == 1  # the version we speak, whatever the client asked for
    capabilities = result["agentCapabilities"]
    assert capabilities["loadSession"] is True
    assert capabilities["promptCapabilities"] == {"image": False, "audio": False, "embeddedContext": True}
    assert capabilities["mcpCapabilities"] == {"http": True, "sse": False}
    assert result["agentInfo"] == {"name": "auto-coder", "title": "auto-coder", "version": __version__}
    vision = start(AUTO_CODER_VISION="1")
    assert vision.initialize()["agentCapabilities"]["promptCapabilities"]["image"] is True


def test_a_read_streams_its_updates_before_the_answer(start: Start, fake_server: FakeLLMServer, root: Path) -> None:
    (root / "notes.txt").write_text("remember the milk\n")
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.tool_call("read_file", {"path": "notes.txt"}, id="call-1"),
                        reply.text("It says: remember the milk.", chunks=4, wait_for="rest", wait_after=2))
    number = agent.request("session/prompt", {"sessionId": session,
                                              "prompt": [{"type": "text", "text": "What does notes.txt say?"}]})
    first = agent.wait_for(is_update("agent_message_chunk"))  # streamed: here while the answer is held back
    shown = first["params"]["update"]["content"]["text"]
    assert shown and "It says: remember the milk.".startswith(shown) and len(shown) < 27
    fake_server.release("rest")
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "end_turn"}
    (call,) = agent.updates(session, "tool_call")
    assert call["toolCallId"] == "call-1"
    assert (call["title"], call["kind"], call["status"]) == ("Read notes.txt", "read", "in_progress")
    assert call["locations"] == [{"path": str((root / "notes.txt").resolve())}]
    assert call["rawInput"] == {"path": "notes.txt"}
    (done,) = agent.updates(session, "tool_call_update")
    assert done["status"] == "completed"
    assert done["content"][0]["content"]["text"] == "     1\tremember the milk"
    assert agent.text(session) == "It says: remember the milk."


def write_and_answer(agent: RawAgent, fake_server: FakeLLMServer, session: str, option: str,
                     path: str = "hello.py") -> tuple[dict[str, Any], dict[str, Any]]:
    """The model writes `path`; the permission request is answered with `option`. Returns (request, response)."""
    fake_server.enqueue(reply.tool_call("write_file", {"path": path, "content": "print('hi')\n"}, id="w1"),
                        reply.text("Done."))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "write"}]})
    permission = agent.wait_for(is_permission)
    agent.reply(permission, {"outcome": {"outcome": "selected", "optionId": option}})
    return permission, agent.wait_for(answered(number))


def test_a_write_asks_with_its_diff_and_runs_when_allowed(start: Start, fake_server: FakeLLMServer,
                                                          root: Path) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.tool_call("write_file", {"path": "hello.py", "content": "print('hi')\n"}, id="w1"),
                        reply.text("Done."))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "write"}]})
    permission = agent.wait_for(is_permission)
    assert not (root / "hello.py").exists()  # nothing written before the answer
    params = permission["params"]
    assert params["sessionId"] == session
    assert [(option["optionId"], option["kind"]) for option in params["options"]] == [
        ("allow_once", "allow_once"), ("allow_always", "allow_always"), ("reject_once", "reject_once"),
        ("reject_always", "reject_always")]
    tool_call = params["toolCall"]
    target = str((root / "hello.py").resolve())
    assert (tool_call["toolCallId"], tool_call["kind"], tool_call["status"]) == ("w1", "edit", "pending")
    assert tool_call["content"] == [{"type": "diff", "path": target, "oldText": None, "newText": "print('hi')\n"}]
    assert tool_call["locations"] == [{"path": target}]
    agent.reply(permission, {"outcome": {"outcome": "selected", "optionId": "allow_always"}})
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "end_turn"}
    assert (root / "hello.py").read_text() == "print('hi')\n"
    started = agent.updates(session, "tool_call")[0]
    assert started["status"] == "pending" and started["content"][0]["type"] == "diff"
    statuses = [update["status"] for update in agent.updates(session, "tool_call_update")]
    assert statuses == ["in_progress", "completed"]
    assert agent.updates(session, "tool_call_update")[-1]["content"][0] == {
        "type": "diff", "path": target, "oldText": None, "newText": "print('hi')\n"}
    # "Always" holds for the rest of the session: the next write asks nothing.
    fake_server.enqueue(reply.tool_call("write_file", {"path": "hello.py", "content": "print('bye')\n"}),
                        reply.text("Changed."))
    assert agent.prompt(session, "change it")["result"] == {"stopReason": "end_turn"}
    assert (root / "hello.py").read_text() == "print('bye')\n"
    assert sum(1 for message in agent.seen if is_permission(message)) == 1


@pytest.mark.parametrize("option", ["reject_once", "reject_always"])
def test_a_rejected_write_leaves_no_file(start: Start, fake_server: FakeLLMServer, root: Path, option: str) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    _, response = write_and_answer(agent, fake_server, session, option)
    assert response["result"] == {"stopReason": "end_turn"}
    assert not (root / "hello.py").exists()
    (update,) = agent.updates(session, "tool_call_update")
    assert update["status"] == "failed"
    assert "The user denied this write_file call." in update["content"][0]["content"]["text"]
    said_to_model = fake_server.chat_requests[-1].json["messages"][-1]
    assert said_to_model["role"] == "tool" and "denied" in said_to_model["content"]
    assert ("do not want" in said_to_model["content"] or "does not want" in said_to_model["content"]) == (
        option == "reject_always")


def test_set_mode_changes_what_asks(start: Start, fake_server: FakeLLMServer, root: Path) -> None:
    agent = start()
    agent.initialize()
    response = agent.call("session/new", {"cwd": str(root), "mcpServers": []})["result"]
    assert response["modes"]["currentModeId"] == "ask"
    assert [mode["id"] for mode in response["modes"]["availableModes"]] == ["ask", "auto-edit", "full-auto",
                                                                           "read-only"]
    session = response["sessionId"]
    assert agent.call("session/set_mode", {"sessionId": session, "modeId": "auto-edit"})["result"] == {}
    fake_server.enqueue(reply.tool_call("write_file", {"path": "a.txt", "content": "a\n"}), reply.text("ok"))
    assert agent.prompt(session, "write a")["result"] == {"stopReason": "end_turn"}
    assert (root / "a.txt").read_text() == "a\n" and not any(is_permission(m) for m in agent.seen)
    error = agent.call("session/set_mode", {"sessionId": session, "modeId": "yolo"})["error"]
    assert error["code"] == -32602 and "unknown approval mode 'yolo'" in error["message"]
    assert agent.call("session/set_mode", {"sessionId": session, "modeId": "read-only"})["result"] == {}
    fake_server.enqueue(reply.tool_call("write_file", {"path": "b.txt", "content": "b\n"}), reply.text("no"))
    agent.prompt(session, "write b")
    assert not (root / "b.txt").exists()


def test_the_sites_maximum_caps_the_modes(start: Start, tmp_path: Path, root: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("allow:\n  max_approval_mode: auto-edit\n")
    agent = start(AUTO_CODER_SITE_CONFIG=str(site), AUTO_CODER_APPROVAL_MODE="full-auto")
    agent.initialize()
    modes = agent.call("session/new", {"cwd": str(root), "mcpServers": []})["result"]["modes"]
    assert modes["currentModeId"] == "auto-edit"
    assert [mode["id"] for mode in modes["availableModes"]] == ["ask", "auto-edit", "read-only"]
    session = agent.new_session(root)
    error = agent.call("session/set_mode", {"sessionId": session, "modeId": "full-auto"})["error"]
    assert error["code"] == -32602 and "above the site's maximum, 'auto-edit'" in error["message"]


def test_cancel_while_the_answer_streams(start: Start, fake_server: FakeLLMServer, root: Path) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.text("one two three four", chunks=4, wait_for="never", wait_after=2))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "count"}]})
    agent.wait_for(is_update("agent_message_chunk"))
    cancel(agent, session)
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "cancelled"}
    fake_server.release("never")
    # The conversation goes on: the cut answer is kept, marked.
    fake_server.enqueue(reply.text("five"))
    assert agent.prompt(session, "go on")["result"] == {"stopReason": "end_turn"}
    messages = fake_server.chat_requests[-1].json["messages"]
    assert messages[-2]["role"] == "assistant" and messages[-2]["content"].startswith("one")
    assert "[interrupted]" in messages[-2]["content"]


def test_cancel_while_a_permission_waits_for_a_client_that_never_answers(start: Start, fake_server: FakeLLMServer,
                                                                          root: Path) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.tool_call("write_file", {"path": "x.txt", "content": "x"}, id="w1"))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "write"}]})
    permission = agent.wait_for(is_permission)
    cancel(agent, session)
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "cancelled"}
    agent.reply(permission, {"outcome": {"outcome": "selected", "optionId": "allow_once"}})  # too late: ignored
    fake_server.enqueue(reply.text("ok"))
    assert agent.prompt(session, "next")["result"] == {"stopReason": "end_turn"}
    assert not (root / "x.txt").exists()
    messages = fake_server.chat_requests[-1].json["messages"]
    assert [m["role"] for m in messages[-4:]] == ["assistant", "tool", "assistant", "user"] or \
        [m["role"] for m in messages[-3:]] == ["assistant", "tool", "user"]
    assert any(m["role"] == "tool" and m["tool_call_id"] == "w1" for m in messages)


def test_cancel_kills_the_running_command(start: Start, fake_server: FakeLLMServer, root: Path) -> None:
    ready = root / "ready"
    os.mkfifo(ready)
    agent = start(AUTO_CODER_APPROVAL_MODE="full-auto")
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.tool_call("run_command", {"command": "echo $$ > ready; exec sleep 60"}))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "wait"}]})
    fd = os.open(ready, os.O_RDONLY | os.O_NONBLOCK)
    try:
        data = b""
        while not data.endswith(b"\n"):  # the shell runs once it has written its pid
            assert select.select([fd], [], [], WAIT)[0], "the command never started"
            data += os.read(fd, 100)
    finally:
        os.close(fd)
    pid = int(data)
    cancel(agent, session)
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "cancelled"}
    assert not alive(pid)
    (update,) = agent.updates(session, "tool_call")
    assert update["kind"] == "execute" and update["title"] == "Run `echo $$ > ready; exec sleep 60`"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_load_in_a_new_process_replays_the_conversation_and_its_mode(start: Start, fake_server: FakeLLMServer,
                                                                      root: Path, home: Path) -> None:
    (root / "a.txt").write_text("alpha\n")
    first = start()
    first.initialize()
    session = first.new_session(root)
    fake_server.enqueue(reply.tool_call("read_file", {"path": "a.txt"}, id="r1"), reply.text("It says alpha."))
    assert first.prompt(session, "read a.txt")["result"] == {"stopReason": "end_turn"}
    assert first.call("session/set_mode", {"sessionId": session, "modeId": "auto-edit"})["result"] == {}
    assert first.close() == 0

    second = start()
    second.initialize()
    response = second.call("session/load", {"sessionId": session, "cwd": str(root), "mcpServers": []})
    assert response["result"]["modes"]["currentModeId"] == "auto-edit"
    before = second.seen[:second.seen.index(response)]
    replayed = [m["params"]["update"] for m in before if m.get("method") == "session/update"]
    assert [(u["sessionUpdate"], u.get("content", {}).get("text") if u["sessionUpdate"] != "tool_call" else
             u["title"]) for u in replayed] == [
        ("user_message_chunk", "read a.txt"), ("tool_call", "Read a.txt"), ("agent_message_chunk", "It says alpha.")]
    assert replayed[1]["toolCallId"] == "r1" and replayed[1]["status"] == "completed"
    fake_server.enqueue(reply.text("Still alpha."))
    assert second.prompt(session, "and now?")["result"] == {"stopReason": "end_turn"}
    contents = [m.get("content") for m in fake_server.chat_requests[-1].json["messages"]]
    assert "read a.txt" in contents and "It says alpha." in contents
    listing = subprocess.run([sys.executable, "-m", "auto_coder_nb", "--sessions"], capture_output=True, text=True,
                             env=agent_env(fake_server, home), check=True).stdout
    assert f"{session[:8]}" in listing and str(root.resolve()) in listing
    again = second.call("session/load", {"sessionId": session, "cwd": str(root), "mcpServers": []})  # reopened
    shown = [m["params"]["update"]["sessionUpdate"] for m in second.seen[second.seen.index(response) + 1:
                                                                          second.seen.index(again)]
             if m.get("method") == "session/update"]
    assert shown.count("user_message_chunk") == 2 and again["result"]["modes"]["currentModeId"] == "auto-edit"
    error = second.call("session/load", {"sessionId": "0000dead", "cwd": str(root), "mcpServers": []})["error"]
    assert error["code"] == -32602 and "unknown session 0000dead" in error["message"]


def test_bad_input_gets_json_rpc_errors_and_the_agent_goes_on(start: Start, root: Path, tmp_path: Path) -> None:
    agent = start()
    agent.initialize()
    assert agent.call("session/fork", {})["error"]["code"] == -32601
    assert agent.call("session/prompt", {"sessionId": "nope", "prompt": []})["error"]["code"] == -32602
    agent.send_raw(b'{"jsonrpc": "2.0", "id": 7, "method": \n')
    assert agent.wait_for(lambda m: "error" in m)["error"]["code"] == -32700
    agent.send_raw(b"[1, 2]\n")
    assert agent.wait_for(lambda m: "error" in m)["error"]["code"] == -32600
    agent.send({"jsonrpc": "2.0", "method": "$/cancel_request", "params": {"id": 3}})  # a notification: no answer
    file = tmp_path / "file.txt"
    file.write_text("")
    for cwd, says in [("relative/path", "not an absolute path"), (str(tmp_path / "gone"), "is not a folder"),
                      (str(file), "is not a folder"), (None, "cwd must be")]:
        error = agent.call("session/new", {"cwd": cwd, "mcpServers": []})["error"]
        assert error["code"] == -32602 and says in error["message"]
    error = agent.call("session/new", {"cwd": str(root), "mcpServers": [{"command": "x"}]})["error"]
    assert error["code"] == -32602 and "needs a name" in error["message"]
    session = agent.new_session(root)
    for prompt in ([], [{"type": "audio", "data": "", "mimeType": "audio/wav"}], [{"text": "no type"}]):
        error = agent.call("session/prompt", {"sessionId": session, "prompt": prompt})["error"]
        assert error["code"] == -32602
    assert agent.initialize()["protocolVersion"] == 1  # still serving
    assert agent.close() == 0


def test_a_second_prompt_while_one_runs_is_refused_and_the_first_goes_on(start: Start, fake_server: FakeLLMServer,
                                                                          root: Path) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.text("first answer", chunks=2, wait_for="go", wait_after=2))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "one"}]})
    agent.wait_for(is_update("agent_message_chunk"))
    error = agent.prompt(session, "two")["error"]
    assert error["code"] == -32600 and "already running" in error["message"]
    fake_server.release("go")
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "end_turn"}
    assert agent.text(session) == "first answer"
    assert len(fake_server.chat_requests) == 1


def test_a_failing_model_server_ends_the_prompt_with_an_error(start: Start, fake_server: FakeLLMServer,
                                                              root: Path) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.error(400, "the model is not loaded"))
    error = agent.prompt(session, "hello")["error"]
    assert error["code"] == -32603 and "the model is not loaded" in error["message"]
    fake_server.enqueue(reply.text("back"))
    assert agent.prompt(session, "again")["result"] == {"stopReason": "end_turn"}


def test_mcp_servers_given_by_the_client_join_the_session(start: Start, fake_server: FakeLLMServer,
                                                         root: Path) -> None:
    agent = start(AUTO_CODER_APPROVAL_MODE="full-auto")
    agent.initialize()
    servers = [{"name": "notes", "command": sys.executable, "args": [str(NOTES_SERVER)], "env": []}]
    session = agent.new_session(root, servers)
    fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "buy milk"}), reply.text("Noted."))
    assert agent.prompt(session, "note it")["result"] == {"stopReason": "end_turn"}
    tools = [tool["function"]["name"] for tool in fake_server.chat_requests[0].json["tools"]]
    assert "notes__add_note" in tools
    (update,) = agent.updates(session, "tool_call_update")
    assert update["status"] == "completed" and update["content"][0]["content"]["text"] == "noted (1 notes)"
    assert agent.updates(session, "tool_call")[0]["kind"] == "other"


NOISY_TOOL = '''
import os, subprocess, sys
from auto_coder_nb import ToolDefinition

def shout() -> str:
    print("print to stdout")
    sys.stdout.write("sys.stdout write\\n")
    os.write(1, b"fd 1 write\\n")
    subprocess.run(["echo", "a child writing to its stdout"], check=True)
    return "shouted"

TOOL = ToolDefinition("shout", "Make noise.", {"type": "object", "properties": {}}, shout)
'''


def test_stdout_carries_only_json_rpc_and_no_secret(start: Start, fake_server: FakeLLMServer, root: Path,
                                                    home: Path) -> None:
    (home / "noisy_tool.py").write_text(NOISY_TOOL)
    (home / ".auto-coder.yaml").write_text("agent:\n  tools: ['noisy_tool:TOOL']\n")
    (root / "settings.env").write_text(f"API_KEY={SECRET}\n")
    agent = start(AUTO_CODER_API_KEY=SECRET, AUTO_CODER_APPROVAL_MODE="full-auto")
    agent.initialize()
    session = agent.new_session(root)
    half = len(SECRET) // 2
    fake_server.enqueue(
        reply.tool_call("shout"), reply.tool_call("read_file", {"path": "settings.env"}),
        reply.tool_call("write_file", {"path": "copy.env", "content": f"KEY={SECRET}\n"}),
        reply.chunks([{"choices": [{"index": 0, "delta": {"content": f"the key is {SECRET[:half]}"}}]},
                      {"choices": [{"index": 0, "delta": {"content": f"{SECRET[half:]} indeed"}}]},
                      {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}], delay=0.05))
    assert agent.prompt(session, f"use {SECRET}")["result"] == {"stopReason": "end_turn"}
    assert agent.close() == 0
    for line in agent.stdout:
        message = json.loads(line)
        assert message["jsonrpc"] == "2.0" and ("method" in message or "id" in message)
    everything = b"".join(agent.stdout)
    assert SECRET.encode() not in everything and SECRET[:half].encode() + b"\"" not in everything
    assert b"<hidden>" in everything and "the key is <hidden> indeed" in agent.text(session)
    noise = agent.stderr_text()
    assert "Traceback" not in noise
    assert "print to stdout" in noise and "fd 1 write" in noise and "a child writing to its stdout" in noise


def test_files_go_through_the_client_when_it_offers_them(start: Start, fake_server: FakeLLMServer, root: Path,
                                                         tmp_path: Path) -> None:
    (root / "a.txt").write_text("on disk\n")
    (tmp_path / "outside.txt").write_text("not yours\n")
    written: list[dict[str, Any]] = []

    def answer(message: dict[str, Any]) -> Any:
        if message["method"] == "fs/read_text_file":
            return {"content": "unsaved buffer\n"}
        if message["method"] == "fs/write_text_file":
            written.append(message["params"])
            return {}
        return allow("allow_once")(message)

    agent = start(answer=answer)
    agent.initialize(fs=True)
    session = agent.new_session(root)
    fake_server.enqueue(reply.tool_call("read_file", {"path": "a.txt"}),
                        reply.tool_call("edit_file", {"path": "a.txt", "old_string": "unsaved", "new_string": "saved"}),
                        reply.tool_call("read_file", {"path": "../outside.txt"}),
                        reply.text("done"))
    assert agent.prompt(session, "edit a.txt")["result"] == {"stopReason": "end_turn"}
    results = agent.updates(session, "tool_call_update")
    assert results[0]["content"][0]["content"]["text"] == "     1\tunsaved buffer"  # the editor's text, not the disk's
    permission = next(message for message in agent.seen if is_permission(message))
    assert permission["params"]["toolCall"]["content"][0]["oldText"] == "unsaved buffer\n"
    target = str((root / "a.txt").resolve())
    assert written == [{"sessionId": session, "path": target, "content": "saved buffer\n"}]
    assert (root / "a.txt").read_text() == "on disk\n"  # the client writes; the agent did not go around it
    assert results[-1]["status"] == "failed" and "outside the workspace" in results[-1]["content"][0]["content"]["text"]
    reads = [m["params"]["path"] for m in agent.seen if m.get("method") == "fs/read_text_file"]
    assert reads and set(reads) == {target}  # containment first: nothing outside was asked for


def test_one_process_serves_several_sessions_at_once(start: Start, fake_server: FakeLLMServer,
                                                     tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "which.txt").write_text(f"{folder.name} folder\n")
    agent = start()
    agent.initialize()
    one, two = agent.new_session(first), agent.new_session(second)
    assert one != two
    assert agent.call("session/set_mode", {"sessionId": two, "modeId": "read-only"})["result"] == {}
    fake_server.enqueue(reply.text("slow answer", chunks=2, wait_for="one", wait_after=2))
    number = agent.request("session/prompt", {"sessionId": one, "prompt": [{"type": "text", "text": "slow"}]})
    agent.wait_for(is_update("agent_message_chunk"))
    fake_server.enqueue(reply.tool_call("read_file", {"path": "which.txt"}), reply.text("second it is"))
    assert agent.prompt(two, "which folder?")["result"] == {"stopReason": "end_turn"}  # while the first one runs
    assert agent.updates(two, "tool_call_update")[0]["content"][0]["content"]["text"] == "     1\tsecond folder"
    fake_server.release("one")
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "end_turn"}
    assert agent.text(one) == "slow answer" and agent.text(two) == "second it is"
    prompts = [request.json["messages"][0]["content"] for request in fake_server.chat_requests]
    assert str(first.resolve()) in prompts[0] and str(second.resolve()) in prompts[1]


def test_a_cwd_outside_what_the_site_allows_fails_that_session_only(start: Start, tmp_path: Path) -> None:
    allowed = tmp_path / "allowed"
    (allowed / "project").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    site = tmp_path / "site.yaml"
    site.write_text(f"agent:\n  working_dir: {allowed}\nlocked: [agent.working_dir]\n")
    agent = start(AUTO_CODER_SITE_CONFIG=str(site))
    agent.initialize()
    error = agent.call("session/new", {"cwd": str(elsewhere), "mcpServers": []})["error"]
    assert error["code"] == -32602 and "outside" in error["message"] and str(allowed) in error["message"]
    assert agent.new_session(allowed / "project")


def test_a_huge_resource_is_cut_to_the_context_budget_with_a_notice(start: Start, fake_server: FakeLLMServer,
                                                                    root: Path, home: Path) -> None:
    (home / ".auto-coder.yaml").write_text("agent:\n  context_window: 2000\n")
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.text("ok"))
    resource = {"uri": "file:///data/big.csv", "mimeType": "text/csv", "text": "x" * 200_000}
    response = agent.call("session/prompt", {"sessionId": session, "prompt": [
        {"type": "text", "text": "summarise"}, {"type": "resource", "resource": resource}]})
    assert response["result"] == {"stopReason": "end_turn"}
    assert "file:///data/big.csv was cut to" in agent.text(session)
    sent = fake_server.chat_requests[0].json["messages"][-1]["content"]
    assert sent.startswith("summarise") and '<resource uri="file:///data/big.csv">' in sent
    assert len(sent) < 2000 * 4 * 0.6


def test_images_and_linked_files_reach_the_model(start: Start, fake_server: FakeLLMServer, root: Path) -> None:
    from PIL import Image as PILImage

    buffer = io.BytesIO()
    PILImage.new("RGB", (8, 8), "red").save(buffer, format="PNG")
    (root / "plot.png").write_bytes(buffer.getvalue())
    (root / "data.csv").write_text("a,b\n")
    agent = start(AUTO_CODER_VISION="1")
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.text("red"))
    blocks = [{"type": "text", "text": "what colour?"},
              {"type": "image", "mimeType": "image/png", "data": base64.b64encode(buffer.getvalue()).decode()},
              {"type": "resource_link", "uri": (root / "plot.png").as_uri(), "name": "plot.png",
               "mimeType": "image/png"},
              {"type": "resource_link", "uri": (root / "data.csv").as_uri(), "name": "data.csv"}]
    assert agent.call("session/prompt", {"sessionId": session, "prompt": blocks})["result"] == {
        "stopReason": "end_turn"}
    content = fake_server.chat_requests[0].json["messages"][-1]["content"]
    assert content[0] == {"type": "text", "text": "what colour?\n[Attached: data.csv]"}
    assert [part["type"] for part in content[1:]] == ["image_url", "image_url"]


@pytest.mark.parametrize("ending", ["stdin closed", "SIGTERM"])
def test_the_client_going_away_mid_turn_stops_it_saves_and_exits_0(start: Start, fake_server: FakeLLMServer,
                                                                   root: Path, data_dir: Path, ending: str) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.text("partial answer", chunks=2, wait_for="never", wait_after=2))
    agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "talk"}]})
    agent.wait_for(is_update("agent_message_chunk"))
    if ending == "SIGTERM":  # what jupyter-ai sends the agent's process group when the server stops
        agent.process.send_signal(signal.SIGTERM)
        assert agent.process.wait(WAIT) == 0
    assert agent.close() == 0
    assert "Traceback" not in agent.stderr_text()
    fake_server.release("never")
    saved = ConversationStore(data_dir / "sessions").find(session)
    history = rebuild(read_records(saved.path))
    assert history[-2]["content"] == "talk"
    assert history[-1]["role"] == "assistant" and history[-1]["content"].startswith("partial")
    assert "[interrupted]" in history[-1]["content"]
    assert stat.S_IMODE(saved.path.stat().st_mode) == 0o600


def test_stop_reasons_and_thoughts(start: Start, fake_server: FakeLLMServer, root: Path, home: Path) -> None:
    (home / ".auto-coder.yaml").write_text("agent:\n  max_iterations: 1\n")
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.text("The answer is cut", reasoning="Let me think.", finish_reason="length"))
    assert agent.prompt(session, "long answer")["result"] == {"stopReason": "max_tokens"}
    thoughts = agent.updates(session, "agent_thought_chunk")
    assert "".join(update["content"]["text"] for update in thoughts) == "Let me think."
    assert agent.text(session).startswith("The answer is cut")
    fake_server.enqueue(reply.tool_call("list_directory", {}))
    assert agent.prompt(session, "look around")["result"] == {"stopReason": "max_turn_requests"}


class Buffers:
    """An editor holding `texts` (path -> text); `None` for a path it does not have."""

    def __init__(self, texts: dict[Path, str | None]) -> None:
        self.texts = texts
        self.written: dict[Path, str] = {}

    def read_text(self, path: Path) -> str | None:
        return self.texts.get(path)

    def write_text(self, path: Path, text: str) -> bool:
        self.written[path] = text
        return True


def test_the_workspace_reads_and_writes_utf8_text_through_an_editor(root: Path) -> None:
    from auto_coder_nb.tools import Workspace
    from auto_coder_nb.tools.filesystem import edit_file, planned_change, read_file

    (root / "a.txt").write_text("disk\n")
    (root / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    (root / "blob.bin").write_bytes(b"\x00\x01")
    (root / "absent.txt").write_text("disk only\n")
    workspace = Workspace(root)
    a, latin = workspace.resolve("a.txt"), workspace.resolve("latin.txt")
    editor = Buffers({a: "buffer\n", latin: "ignored\n"})
    workspace.editor = editor
    assert read_file(workspace, "a.txt") == "     1\tbuffer"
    assert read_file(workspace, "latin.txt").startswith("     1\tcaf\xe9")  # not UTF-8: the disk
    assert read_file(workspace, "absent.txt") == "     1\tdisk only"  # the editor has nothing: the disk
    assert workspace.read_bytes(workspace.resolve("blob.bin")) == b"\x00\x01"
    change = planned_change(workspace, "edit_file", {"path": "a.txt", "old_string": "buffer", "new_string": "new"})
    assert change is not None and (change.path, change.before, change.after) == (a, "buffer\n", "new\n")
    edit_file(workspace, "a.txt", "buffer", "new")
    assert editor.written == {a: "new\n"} and (root / "a.txt").read_text() == "disk\n"
    assert planned_change(workspace, "read_file", {"path": "a.txt"}) is None
    assert planned_change(workspace, "edit_file", {"path": "a.txt", "old_string": "nowhere", "new_string": "x"}) \
        is None


@pytest.mark.parametrize(("args", "says"), [
    (["hello"], "a prompt does not apply"), (["--working-dir", "."], "--working-dir does not apply"),
    (["--approval-mode", "read-only", "--config", "/nowhere.yaml"], "config error")])
def test_options_that_mean_nothing_to_an_agent_are_usage_errors(args: list[str], says: str, fake_server: FakeLLMServer,
                                                                home: Path, tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "auto_coder_nb", "--acp", *args], env=agent_env(fake_server, home),
                         cwd=tmp_path, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=WAIT)
    assert run.returncode == 2 and says in run.stderr and run.stdout == ""


def test_always_for_a_command_covers_that_command_line_only(start: Start, fake_server: FakeLLMServer,
                                                            root: Path) -> None:
    agent = start()
    agent.initialize()
    session = agent.new_session(root)
    fake_server.enqueue(reply.tool_call("run_command", {"command": "echo one"}, id="c1"), reply.text("Ran."))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "run"}]})
    permission = agent.wait_for(is_permission)
    always = [option for option in permission["params"]["options"] if option["optionId"] == "allow_always"]
    assert always[0]["name"] == "Always allow (this exact command, this session)"
    agent.reply(permission, {"outcome": {"outcome": "selected", "optionId": "allow_always"}})
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "end_turn"}
    # The same command line again asks nothing and is shown running at once; another one asks again.
    fake_server.enqueue(reply.tool_call("run_command", {"command": "echo one"}, id="c2"), reply.text("Again."))
    assert agent.prompt(session, "again")["result"] == {"stopReason": "end_turn"}
    assert [call["status"] for call in agent.updates(session, "tool_call") if call["toolCallId"] == "c2"] == [
        "in_progress"]
    assert sum(1 for message in agent.seen if is_permission(message)) == 1
    fake_server.enqueue(reply.tool_call("run_command", {"command": "echo two"}, id="c3"), reply.text("Other."))
    number = agent.request("session/prompt", {"sessionId": session, "prompt": [{"type": "text", "text": "other"}]})
    second = agent.wait_for(lambda message: is_permission(message) and message is not permission)
    assert second["params"]["toolCall"]["toolCallId"] == "c3"
    agent.reply(second, {"outcome": {"outcome": "selected", "optionId": "reject_once"}})
    assert agent.wait_for(answered(number))["result"] == {"stopReason": "end_turn"}
