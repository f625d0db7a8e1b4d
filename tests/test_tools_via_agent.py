"""The workspace tools through the whole agent: a real Session, scripted tool calls from the test server over
HTTP, approvals answered the way a face answers them, and undo after the turn."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from turns import run_turn

from auto_coder_nb.config import Config
from auto_coder_nb.events import ApprovalRequest, Event, ToolResult, TurnDone
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    return folder


def make_session(server: FakeLLMServer, root: Path, mode: str) -> Session:
    config = Config()
    config.llm.base_url = server.base_url
    config.llm.model = "fake-model"
    config.agent.approval_mode = mode
    return Session.create(config, working_dir=root)


def wait_until_gone(pid: int) -> bool:
    """True once the process is dead or a zombie; SIGKILL lands asynchronously, so allow it a moment."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.02)
    return False


def results(events: list[Event]) -> list[ToolResult]:
    return [event for event in events if isinstance(event, ToolResult)]


def tool_messages(server: FakeLLMServer) -> list[str]:
    """What the model was sent back as tool results, in the last request."""
    return [m["content"] for m in server.chat_requests[-1].json["messages"] if m["role"] == "tool"]


def test_a_turn_of_several_edits_is_undone_in_one_step(fake_server: FakeLLMServer, root: Path) -> None:
    (root / "app.py").write_bytes(b"def main():\r\n    return 1\r\n")
    (root / "README.md").write_text("# App\n")
    session = make_session(fake_server, root, "auto-edit")
    fake_server.enqueue(
        reply.tool_call("read_file", {"path": "app.py"}),
        reply.tool_call("edit_file", {"path": "app.py", "old_string": "return 1", "new_string": "return 2"}),
        reply.tool_calls([
            {"name": "write_file", "arguments": {"path": "lib/util.py", "content": "X = 1\n"}},
            {"name": "edit_file", "arguments": {"path": "README.md", "old_string": "# App",
                                                "new_string": "# App\n\nNow with util."}},
        ]),
        reply.text("Done."),
    )
    events = run_turn(session, "improve the app")
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    assert [r.is_error for r in results(events)] == [False, False, False, False]
    assert (root / "app.py").read_bytes() == b"def main():\r\n    return 2\r\n"
    assert (root / "lib/util.py").read_text() == "X = 1\n"
    sent = tool_messages(fake_server)
    assert sent[0] == "     1\tdef main():\n     2\t    return 1"
    assert "     2\t    return 2" in sent[1]
    assert "Created folder(s): lib/" in sent[2]

    message = session.undo()
    assert (root / "app.py").read_bytes() == b"def main():\r\n    return 1\r\n"
    assert (root / "README.md").read_text() == "# App\n"
    assert not (root / "lib").exists()
    assert "app.py" in message and "README.md" in message and "lib/util.py" in message
    assert "Nothing to undo" in session.undo()


def test_undo_goes_back_one_turn_at_a_time_and_mentions_commands(fake_server: FakeLLMServer, root: Path) -> None:
    (root / "notes.txt").write_text("v0\n")
    session = make_session(fake_server, root, "full-auto")
    fake_server.enqueue(reply.tool_call("write_file", {"path": "notes.txt", "content": "v1\n"}), reply.text("ok"))
    run_turn(session, "first")
    fake_server.enqueue(
        reply.tool_call("write_file", {"path": "notes.txt", "content": "v2\n"}),
        reply.tool_call("run_command", {"command": "echo hello > made-by-shell.txt"}),
        reply.text("ok"),
    )
    run_turn(session, "second")
    assert (root / "notes.txt").read_text() == "v2\n"
    second = session.undo()
    assert (root / "notes.txt").read_text() == "v1\n"
    assert "not undone" in second and (root / "made-by-shell.txt").exists()
    session.undo()
    assert (root / "notes.txt").read_text() == "v0\n"


def test_a_denied_write_leaves_the_file_and_tells_the_model_why(fake_server: FakeLLMServer, root: Path) -> None:
    (root / "config.py").write_text("DEBUG = False\n")
    session = make_session(fake_server, root, "ask")
    fake_server.enqueue(
        reply.tool_call("edit_file", {"path": "config.py", "old_string": "False", "new_string": "True"}),
        reply.text("Understood."),
    )
    requests: list[ApprovalRequest] = []

    def deny(request: ApprovalRequest) -> None:
        requests.append(request)
        request.deny("not in production")

    events = run_turn(session, "turn on debug", deny)
    assert len(requests) == 1
    assert requests[0].kind == "write"
    assert "-DEBUG = False" in requests[0].preview and "+DEBUG = True" in requests[0].preview
    assert (root / "config.py").read_text() == "DEBUG = False\n"
    [result] = results(events)
    assert result.is_error and "denied" in result.output and "not in production" in result.output
    assert tool_messages(fake_server) == [result.output]


def test_an_approved_command_shows_its_command_line(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "auto-edit")
    fake_server.enqueue(reply.tool_call("run_command", {"command": "echo from-the-shell"}), reply.text("ok"))
    previews: list[str] = []

    def approve(request: ApprovalRequest) -> None:
        previews.append(request.preview)
        request.approve()

    events = run_turn(session, "run it", approve)
    assert previews == ["echo from-the-shell"]
    assert results(events)[0].output == "exit code: 0\nstdout:\nfrom-the-shell"


def test_paths_outside_the_workspace_come_back_as_tool_results(fake_server: FakeLLMServer, root: Path,
                                                                tmp_path: Path) -> None:
    (tmp_path / "secret.txt").write_text("top secret\n")
    session = make_session(fake_server, root, "ask")
    fake_server.enqueue(
        reply.tool_call("read_file", {"path": "../secret.txt"}),
        reply.tool_call("write_file", {"path": str(tmp_path / "planted.txt"), "content": "x"}),
        reply.tool_call("edit_file", {"path": "app.py", "old_string": "missing", "new_string": "y"}),
        reply.text("I cannot reach it."),
    )
    (root / "app.py").write_text("x = 1\n")
    # No approval is asked for calls that cannot run: run_turn fails on any ApprovalRequest.
    events = run_turn(session, "read the secret")
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    read, write, edit = results(events)
    assert read.is_error and "outside the workspace" in read.output and str(root.resolve()) in read.output
    assert "top secret" not in read.output
    assert write.is_error and "outside the workspace" in write.output
    assert edit.is_error and "not found" in edit.output
    assert not (tmp_path / "planted.txt").exists()
    assert tool_messages(fake_server) == [read.output, write.output, edit.output]


def test_stopping_a_turn_kills_the_running_command_and_the_next_turn_works(fake_server: FakeLLMServer,
                                                                           root: Path) -> None:
    session = make_session(fake_server, root, "full-auto")
    command = "echo $$ > shell.pid; sleep 300 & echo $! > child.pid; sleep 300"
    fake_server.enqueue(reply.tool_call("run_command", {"command": command}))

    async def stop_midway() -> None:
        async def consume() -> None:
            async for _ in session.agent.run("start a long job"):
                pass

        task = asyncio.create_task(consume())
        while not (root / "child.pid").exists() or not (root / "child.pid").read_text().strip():
            assert not task.done()
            await asyncio.sleep(0.02)
        task.cancel()  # what the panel's Stop does
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(stop_midway())
    for name in ("shell.pid", "child.pid"):
        assert wait_until_gone(int((root / name).read_text())), f"{name} survived the stop"
    fake_server.enqueue(reply.text("Stopped as asked."))
    events = run_turn(session, "ok, never mind")
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    messages = fake_server.chat_requests[-1].json["messages"]
    [tool_message] = [m for m in messages if m["role"] == "tool"]
    assert tool_message["tool_call_id"] == messages[messages.index(tool_message) - 1]["tool_calls"][0]["id"]


@pytest.mark.parametrize("mode", ["ask", "full-auto"])
def test_writing_a_file_with_the_content_it_has_asks_nothing_and_writes_nothing(
    fake_server: FakeLLMServer, root: Path, mode: str
) -> None:
    (root / "notes.txt").write_bytes(b"one\r\ntwo\r\n")  # CRLF kept by write_file: LF content is the same file
    before = (root / "notes.txt").stat().st_mtime_ns
    fake_server.enqueue(reply.tool_call("write_file", {"path": "notes.txt", "content": "one\ntwo\n"}),
                        reply.text("Already there."))
    events = run_turn(make_session(fake_server, root, mode), "make sure notes.txt has one and two")
    assert not [event for event in events if isinstance(event, ApprovalRequest)]
    [result] = [event for event in events if isinstance(event, ToolResult)]
    assert (result.output, result.is_error) == (
        "No change to notes.txt: it already has this content (nothing was written).", False)
    assert (root / "notes.txt").stat().st_mtime_ns == before
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
