"""MCP servers as tools: configuration, and real servers written with the official SDK (tests/mcp_servers/) over
stdio and streamable HTTP on 127.0.0.1, called through the whole agent with the test LLM server scripting the
tool calls."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from turns import run_turns

from auto_coder_nb.config import Config, McpServerConfig, load_config
from auto_coder_nb.doctor import run_doctor
from auto_coder_nb.errors import ConfigError
from auto_coder_nb.events import ApprovalRequest, Event, Notice, ToolResult
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.testing.tls_front import TLSFront
from auto_coder_nb.tools.shell import MAX_OUTPUT_CHARS

pytest.importorskip("mcp", reason="the MCP client tests need the optional extra: pip install 'auto-coder-nb[mcp]'")

NOTES_SERVER = Path(__file__).parent / "mcp_servers" / "notes_server.py"
NOTES_TOOLS = {"notes__add_note", "notes__list_notes", "notes__crash", "notes__slow", "notes__huge", "notes__fail"}
# The SDK's import alone takes seconds on a loaded machine: generous, since nothing waits for it on success.
STARTUP = 120.0
TOKEN = "mcp-test-token-8841"


def notes_server(**settings: object) -> McpServerConfig:
    values: dict[str, object] = {"command": sys.executable, "args": [str(NOTES_SERVER)], "startup_timeout": STARTUP,
                                 **settings}
    return McpServerConfig(**values)  # type: ignore[arg-type]


def make_session(llm: FakeLLMServer, root: Path, mode: str, servers: dict[str, McpServerConfig],
                 tool_calling: str = "auto", ca_bundle: str | None = None) -> Session:
    config = Config()
    config.llm.base_url, config.llm.model = llm.base_url, "fake-model"
    config.llm.tool_calling, config.llm.ca_bundle = tool_calling, ca_bundle
    config.agent.approval_mode = mode
    config.mcp.servers = servers
    return Session.create(config, working_dir=root)


def results(events: list[Event]) -> list[ToolResult]:
    return [event for event in events if isinstance(event, ToolResult)]


def notices(events: list[Event]) -> list[str]:
    return [event.text for event in events if isinstance(event, Notice)]


def offered_tools(llm: FakeLLMServer, request: int) -> dict[str, dict[str, object]]:
    return {tool["function"]["name"]: tool["function"] for tool in llm.chat_requests[request].json.get("tools", [])}


# -- configuration -------------------------------------------------------------------------------------------

def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcp.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(config_path=write_config(tmp_path, text), env=env or {}, cwd=tmp_path, home=tmp_path)


@pytest.mark.parametrize(("text", "message"), [
    ("mcp:\n  servers:\n    db:\n      comand: x\n", "mcp.servers.db: unknown field 'comand'"),
    ("mcp:\n  servers:\n    db:\n      args: [x]\n", "mcp.servers.db: missing command (a stdio server) or url"),
    ("mcp:\n  servers:\n    db:\n      command: x\n      url: http://h/mcp\n", "give command or url, not both"),
    ("mcp:\n  servers:\n    db:\n      type: sse\n      url: http://h/sse\n", "SSE servers are not supported"),
    ("mcp:\n  servers:\n    db:\n      url: http://h/mcp\n      env: {A: b}\n", "db.env: only for a stdio server"),
    ("mcp:\n  servers:\n    db:\n      command: x\n      read_only: maybe\n", "read_only: expected true or false"),
    ("mcp:\n  servers:\n    'a b':\n      command: x\n", "a server name uses letters, digits"),
    ("mcp:\n  server: {}\n", "unknown key 'mcp.server'"),
])
def test_a_bad_server_entry_is_a_config_error_naming_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert str(caught.value).startswith(str(tmp_path / "mcp.yaml")), caught.value
    assert message in str(caught.value)


def test_servers_take_the_mcpservers_shape_and_show_config_hides_what_came_from_the_environment(
        tmp_path: Path) -> None:
    config = load(tmp_path, """
mcp:
  servers:
    github:
      type: stdio
      command: npx
      args: ["-y", "server-github", "--token=${GH_TOKEN}"]
      env: {GITHUB_TOKEN: "${GH_TOKEN}", LOG: quiet}
      read_only: true
    docs:
      type: streamable-http
      url: https://docs.example/mcp
      headers: {Authorization: "Bearer ${DOCS_TOKEN}"}
      read_tools: [search]
      timeout: 30
""", env={"GH_TOKEN": "ghp_secret_1234", "DOCS_TOKEN": "docs_secret_5678"})
    github, docs = config.mcp.servers["github"], config.mcp.servers["docs"]
    assert github.command == "npx" and github.env == {"GITHUB_TOKEN": "ghp_secret_1234", "LOG": "quiet"}
    assert github.read_only and docs.read_tools == ["search"] and docs.timeout == 30.0
    assert docs.headers == {"Authorization": "Bearer docs_secret_5678"}
    shown = config.show()
    assert "ghp_secret_1234" not in shown and "docs_secret_5678" not in shown
    assert "mcp.servers.github = stdio npx -y server-github --token=<hidden> env GITHUB_TOKEN, LOG (read_only)" in shown
    assert f"mcp.servers.docs = http https://docs.example/mcp headers Authorization (read_tools search)  (file " \
           f"{tmp_path / 'mcp.yaml'})" in shown


def test_a_later_file_adds_servers_and_replaces_one_of_the_same_name(tmp_path: Path) -> None:
    (tmp_path / ".auto-coder.yaml").write_text("mcp:\n  servers:\n    a: {command: one}\n    b: {command: two}\n")
    path = write_config(tmp_path, "mcp:\n  servers:\n    b: {command: three}\n")
    config = load_config(config_path=path, env={}, cwd=tmp_path, home=tmp_path / "nohome", trust_project=True)
    assert {name: server.command for name, server in config.mcp.servers.items()} == {"a": "one", "b": "three"}
    assert config.sources["mcp.servers.b"] == f"file {path}"


def test_without_servers_the_sdk_is_never_imported(tmp_path: Path, clean_env: dict[str, str]) -> None:
    code = ("import sys; from auto_coder_nb.config import Config; from auto_coder_nb.session import Session; "
            "import auto_coder_nb.magics; Session.create(Config(), working_dir='.'); "
            "print(sorted(m for m in sys.modules if m == 'mcp' or m.startswith(('mcp.', 'auto_coder_nb.tools.mcp'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env, capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[]"


# -- stdio ----------------------------------------------------------------------------------------------------

def test_stdio_tools_reach_the_model_with_their_schemas_and_ask_like_commands(fake_server: FakeLLMServer,
                                                                              root: Path) -> None:
    session = make_session(fake_server, root, "ask", {"notes": notes_server(read_tools=["list_notes"])})
    assert NOTES_TOOLS <= set(session.tools.names())
    fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "buy milk"}),
                        reply.tool_call("notes__list_notes", {}), reply.text("Noted."))
    asked: list[ApprovalRequest] = []

    def approve(request: ApprovalRequest) -> None:
        asked.append(request)
        request.approve()

    [events] = run_turns(session, ["Remember to buy milk"], approve)
    offered = offered_tools(fake_server, 0)
    assert NOTES_TOOLS <= set(offered)
    assert offered["notes__add_note"]["parameters"]["properties"] == {"text": {"title": "Text", "type": "string"}}
    assert "[MCP server notes] Keep a note." == offered["notes__add_note"]["description"]
    # The command-like tool asked first; the one marked read did not.
    assert [(r.tool, r.kind) for r in asked] == [("notes__add_note", "command")]
    assert asked[0].preview == 'MCP server notes: add_note\n{\n  "text": "buy milk"\n}'
    assert [(r.name, r.output, r.is_error) for r in results(events)] == [
        ("notes__add_note", "noted (1 notes)", False), ("notes__list_notes", "buy milk", False)]
    assert notices(events) == []


def test_prompted_mode_describes_mcp_tools_and_runs_them_with_approval(fake_server: FakeLLMServer,
                                                                       root: Path) -> None:
    """A model without native tool calling gets the servers' tools in the prompt and the step schema, and its
    calls go through the same approval as native ones."""
    session = make_session(fake_server, root, "ask", {"notes": notes_server(read_tools=["list_notes"])}, "prompted")
    fake_server.enqueue(reply.prompted_call("notes__add_note", {"text": "buy milk"}),
                        reply.prompted_call("notes__list_notes", {}), reply.prompted_answer("Noted."))
    asked: list[ApprovalRequest] = []

    def approve(request: ApprovalRequest) -> None:
        asked.append(request)
        request.approve()

    [events] = run_turns(session, ["Remember to buy milk"], approve)
    first = fake_server.chat_requests[0].json
    assert "tools" not in first and "notes__add_note" in first["messages"][0]["content"]
    assert "notes__add_note" in json.dumps(first["response_format"])  # the step schema offers it
    assert [(r.tool, r.kind) for r in asked] == [("notes__add_note", "command")]
    assert [(r.name, r.output, r.is_error) for r in results(events)] == [
        ("notes__add_note", "noted (1 notes)", False), ("notes__list_notes", "buy milk", False)]


def test_always_to_one_command_is_not_a_yes_to_mcp_tools_or_other_commands(fake_server: FakeLLMServer,
                                                                           root: Path) -> None:
    """Issue 24 item 8: "always" to `run_command ls` pre-approved every command-kind tool, MCP tools included."""
    session = make_session(fake_server, root, "ask", {"notes": notes_server()})
    fake_server.enqueue(reply.tool_call("run_command", {"command": "ls"}), reply.text("Listed."),
                        reply.tool_call("run_command", {"command": "ls"}),
                        reply.tool_call("notes__add_note", {"text": "delete everything"}),
                        reply.tool_call("run_command", {"command": "ls -a"}), reply.text("Done."))
    asked: list[ApprovalRequest] = []

    def answer(request: ApprovalRequest) -> None:
        asked.append(request)
        request.approve(always=True) if request.tool == "run_command" else request.deny("not that")

    first, second = run_turns(session, ["list the files", "again, then note it"], answer)
    assert [(r.tool, r.always_covers) for r in asked] == [
        ("run_command", "this exact command"), ("notes__add_note", "every notes__add_note call"),
        ("run_command", "this exact command")]
    assert asked[-1].arguments == {"command": "ls -a"}  # another command line asks again
    assert [r.is_error for r in results(second)] == [False, True, False]
    assert "denied" in results(second)[1].output


def test_a_denied_call_never_reaches_the_server_and_read_only_mode_refuses_it(fake_server: FakeLLMServer,
                                                                              root: Path) -> None:
    session = make_session(fake_server, root, "ask", {"notes": notes_server(read_tools=["list_notes"])})
    fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "secret plan"}),
                        reply.tool_call("notes__list_notes", {}), reply.text("ok"))
    [events] = run_turns(session, ["note it"], lambda request: request.deny("not now"))
    outputs = [r.output for r in results(events)]
    assert outputs == ["The user denied this notes__add_note call. Reason: not now", "no notes"]


def test_a_crash_mid_call_is_reported_once_and_the_tools_go(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"notes": notes_server()})
    fake_server.enqueue(reply.tool_call("notes__crash", {}), reply.text("It crashed."), reply.text("Still here."))
    first, second = run_turns(session, ["crash it", "and now?"])
    [crashed] = results(first)
    assert crashed.is_error
    assert "The MCP server notes stopped during the call" in crashed.output
    assert "crashing on purpose" in crashed.output  # the last line of its stderr says why
    assert [n for n in notices(first) if "MCP server notes stopped" in n] != []
    assert notices(second) == []  # reported once
    assert not NOTES_TOOLS & set(offered_tools(fake_server, 1))  # gone from the next request
    assert not NOTES_TOOLS & set(session.tools.names())
    assert "read_file" in offered_tools(fake_server, 2)  # the session works on


def test_a_slow_call_times_out_and_the_server_keeps_serving(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"notes": notes_server(timeout=1)})
    fake_server.enqueue(reply.tool_call("notes__slow", {"seconds": 60}), reply.tool_call("notes__add_note",
                                                                                         {"text": "after"}),
                        reply.text("done"))
    started = time.monotonic()
    [events] = run_turns(session, ["be slow"])
    slow, after = results(events)
    assert slow.is_error and "notes__slow gave no answer within 1 s (mcp.servers.notes.timeout)" in slow.output
    assert (after.output, after.is_error) == ("noted (1 notes)", False)
    assert time.monotonic() - started < 60  # the slow call was not waited for


def test_a_huge_result_is_cut_in_the_middle_like_run_command(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"notes": notes_server()})
    fake_server.enqueue(reply.tool_call("notes__huge", {"size": 500_000}), reply.text("big"))
    [events] = run_turns(session, ["big one"])
    [huge] = results(events)
    assert huge.output.startswith("HEAD\nxxx") and huge.output.endswith("xxx\nTAIL")
    assert "characters omitted" in huge.output and len(huge.output) < MAX_OUTPUT_CHARS + 100


def test_a_tool_error_from_the_server_is_a_tool_error_for_the_model(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"notes": notes_server()})
    fake_server.enqueue(reply.tool_call("notes__fail", {}), reply.tool_call("notes__add_note", {"wrong": 1}),
                        reply.text("ok"))
    [events] = run_turns(session, ["fail"])
    failed, invalid = results(events)
    assert failed.is_error and "fail" in failed.output
    assert invalid.is_error and "text" in invalid.output  # the server's validation names the missing field
    assert notices(events) == []  # the server still runs


def test_servers_that_cannot_start_are_reported_once_and_never_crash(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {
        "missing": McpServerConfig(command="no-such-mcp-server-here"),
        "broken": McpServerConfig(command=sys.executable, args=["-c", "import sys; sys.exit('bad credentials')"],
                                  startup_timeout=STARTUP),
        "off": McpServerConfig(command="no-such-mcp-server-here", disabled=True),
        "mute": McpServerConfig(command=sys.executable, args=["-c", "import time; time.sleep(600)"],
                                startup_timeout=1),
    })
    fake_server.enqueue(reply.text("hello"), reply.text("again"))
    first, second = run_turns(session, ["hi", "hi again"])
    said = notices(first)
    assert "MCP server missing failed to start: command not found: no-such-mcp-server-here." in said
    assert any(n.startswith("MCP server broken failed to start:") and "bad credentials" in n for n in said), said
    assert "MCP server mute failed to start: did not start within 1 s (mcp.servers.mute.startup_timeout)." in said
    assert not any("off" in n for n in said)
    assert notices(second) == []


# -- streamable HTTP ------------------------------------------------------------------------------------------

@pytest.fixture
def http_server(clean_env: dict[str, str]) -> Iterator[str]:
    """The notes server over streamable HTTP on 127.0.0.1, wanting `Authorization: Bearer TOKEN`; its URL."""
    process = subprocess.Popen([sys.executable, str(NOTES_SERVER), "--http"], env=clean_env | {"MCP_TEST_TOKEN": TOKEN},
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), line
        yield f"http://127.0.0.1:{line.split()[1]}/mcp"
    finally:
        process.terminate()
        process.wait(30)


def test_http_server_with_headers_from_the_environment(fake_server: FakeLLMServer, root: Path, tmp_path: Path,
                                                       http_server: str) -> None:
    path = write_config(tmp_path, f"""
mcp:
  servers:
    notes:
      url: {http_server}
      headers: {{Authorization: "Bearer ${{NOTES_TOKEN}}"}}
      read_tools: [list_notes]
      startup_timeout: {STARTUP}
    locked_out:
      url: {http_server}
      headers: {{Authorization: "Bearer wrong-${{NOTES_TOKEN}}"}}
      startup_timeout: {STARTUP}
""")
    config = load_config({"llm.base_url": fake_server.base_url, "llm.model": "fake-model",
                          "agent.approval_mode": "ask"}, path, env={"NOTES_TOKEN": TOKEN}, cwd=tmp_path, home=tmp_path)
    session = Session.create(config, working_dir=root)
    fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "over http"}),
                        reply.tool_call("notes__list_notes", {}), reply.text("done"))
    [events] = run_turns(session, ["note over http"], lambda request: request.approve())
    assert [(r.output, r.is_error) for r in results(events)] == [("noted (1 notes)", False), ("over http", False)]
    [refused] = [n for n in notices(events) if "locked_out" in n]
    assert refused.startswith("MCP server locked_out failed to start:") and "401" in refused
    assert TOKEN not in refused
    assert not any(name.startswith("locked_out__") for name in offered_tools(fake_server, 0))


def test_http_server_behind_a_private_ca_is_trusted_through_llm_ca_bundle(fake_server: FakeLLMServer, root: Path,
                                                                          tmp_path: Path, http_server: str) -> None:
    """An MCP server inside the company sits behind the same TLS-re-signing gateway as the model: the CA that
    llm.ca_bundle names verifies it too, and without it the server is reported, not trusted."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    front = TLSFront(int(http_server.split(":")[2].split("/")[0]), context)
    try:
        servers = {"notes": McpServerConfig(url=f"https://127.0.0.1:{front.port}/mcp",
                                            headers={"Authorization": f"Bearer {TOKEN}"}, startup_timeout=STARTUP)}
        untrusted = make_session(fake_server, root, "full-auto", servers)
        fake_server.enqueue(reply.text("no notes tool"))
        [events] = run_turns(untrusted, ["hi"])
        [failed] = [n for n in notices(events) if "MCP server notes" in n]
        assert "failed to start" in failed and "certificate" in failed.lower(), failed
        session = make_session(fake_server, root, "full-auto", servers, ca_bundle=str(ca_file))
        fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "over tls"}), reply.text("done"))
        [events] = run_turns(session, ["note it"])
        assert [(r.output, r.is_error) for r in results(events)] == [("noted (1 notes)", False)]
    finally:
        front.close()


def test_doctor_lists_each_server_with_its_state_and_tools(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    config = Config()
    config.llm.base_url, config.llm.model = fake_server.base_url, "fake-model"
    fake_server.enqueue(reply.text("Ready."), reply.tool_call("get_current_time", {"timezone": "UTC"}))
    config.mcp.servers = {"notes": notes_server(read_only=True), "gone": McpServerConfig(command="no-such-mcp-server")}
    lines: list[str] = []
    assert run_doctor(config, lines.append) is False
    [notes] = [line for line in lines if line.startswith("  mcp notes")]
    assert "PASS" in notes and "running, 6 tools, 6 marked read" in notes, notes
    [gone] = [line for line in lines if line.startswith("  mcp gone")]
    assert "FAIL" in gone and "command not found: no-such-mcp-server" in gone, gone


def user_config_with_notes(home: Path) -> None:
    """The notes server in the user's own file (~/.auto-coder.yaml)."""
    home.mkdir(exist_ok=True)
    (home / ".auto-coder.yaml").write_text(
        f"mcp:\n  servers:\n    notes:\n      command: {sys.executable}\n      args: [{NOTES_SERVER}]\n"
        f"      startup_timeout: {STARTUP}\n")


def test_the_cli_face_offers_and_runs_mcp_tools(fake_server: FakeLLMServer, tmp_path: Path, root: Path,
                                                clean_env: dict[str, str]) -> None:
    user_config_with_notes(tmp_path / "home")
    fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "from the cli"}), reply.text("Noted it."))
    env = clean_env | {"HOME": str(tmp_path / "home"), "AUTO_CODER_BASE_URL": fake_server.base_url,
                       "AUTO_CODER_MODEL": "fake-model", "NO_COLOR": "1"}
    done = subprocess.run(["auto-coder", "--approval-mode", "full-auto", "note it"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Noted it.\n"
    assert "> notes__add_note(text='from the cli')" in done.stderr
    assert fake_server.chat_requests[1].json["messages"][-1]["content"] == "noted (1 notes)"


def test_the_magics_face_runs_mcp_tools_from_the_kernel(fake_server: FakeLLMServer, tmp_path: Path,
                                                        root: Path) -> None:
    from test_magics import Kernel, kernel_env

    user_config_with_notes(tmp_path / "home")
    kernel = Kernel(kernel_env(fake_server, tmp_path / "home"), root)
    try:
        assert kernel.execute("%load_ext auto_coder_nb").reply["content"]["status"] == "ok"
        fake_server.enqueue(reply.tool_call("notes__add_note", {"text": "from a cell"}), reply.text("Noted."),
                            reply.tool_call("notes__list_notes", {}), reply.text("One note."))
        first = kernel.execute("%%autocoder --approval-mode full-auto --context none\nnote it", timeout=240)
        assert first.reply["content"]["status"] == "ok", first.reply
        second = kernel.execute("%autocoder --approval-mode full-auto --context none what notes?", timeout=240)
        assert second.reply["content"]["status"] == "ok", second.reply
    finally:
        kernel.close()
    assert NOTES_TOOLS <= set(offered_tools(fake_server, 0))
    tool_results = [m["content"] for request in fake_server.chat_requests for m in request.json["messages"]
                    if m["role"] == "tool"]
    assert "noted (1 notes)" in tool_results and "from a cell" in tool_results  # one server for both cells


def test_the_server_process_ends_with_the_session(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"notes": notes_server()})
    children = _children(os.getpid())
    assert any("notes_server.py" in command for command in children.values()), children
    run_turns(session, [])  # closes the session
    deadline = time.monotonic() + 30
    while any("notes_server.py" in command for command in _children(os.getpid()).values()):
        assert time.monotonic() < deadline, "the MCP server outlived its session"
        time.sleep(0.1)


def _children(pid: int) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat[1]) == pid and stat[0] not in ("Z", "X"):
            found[int(entry.name)] = command
    return found


def test_stopping_a_turn_cancels_the_call_on_the_server_thread(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"notes": notes_server()})
    fake_server.enqueue(reply.tool_call("notes__slow", {"seconds": 600}), reply.tool_call("notes__list_notes", {}),
                        reply.text("done"))

    async def stop_then_go_on() -> list[Event]:
        async def first_turn() -> None:
            async for event in session.agent.run("be slow"):
                if isinstance(event, ToolResult):
                    raise AssertionError(f"the slow call ended: {event}")

        task = asyncio.create_task(first_turn())
        while not fake_server.chat_requests:  # the model was asked, so the slow call is about to start
            await asyncio.sleep(0.05)
        await asyncio.sleep(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        events = [event async for event in session.agent.run("go on")]
        await session.aclose()
        return events

    started = time.monotonic()
    events = asyncio.run(stop_then_go_on())
    assert [(r.name, r.output) for r in results(events)] == [("notes__list_notes", "no notes")]
    assert time.monotonic() - started < 300  # neither the stop nor the next call waited for the slow one


# -- hostile servers (issue 22 item 3) --------------------------------------------------------------------------

HOSTILE_SERVER = Path(__file__).parent / "mcp_servers" / "hostile_server.py"


def hostile_server(*options: str, **settings: object) -> McpServerConfig:
    values: dict[str, object] = {"command": sys.executable, "args": [str(HOSTILE_SERVER), *options],
                                 "startup_timeout": STARTUP, **settings}
    return McpServerConfig(**values)  # type: ignore[arg-type]


def test_a_result_of_hundreds_of_megabytes_is_read_as_far_as_it_is_kept(fake_server: FakeLLMServer,
                                                                         root: Path) -> None:
    """Before: 40 MB took 14 s, 300 MB ran into the call's timeout at 934 MB of memory."""
    session = make_session(fake_server, root, "full-auto", {"big": hostile_server("--huge", "300", timeout=60)})
    fake_server.enqueue(reply.tool_call("big__dump", {}), reply.tool_call("big__tool_0", {"x": "1"}),
                        reply.text("ok"))
    [events] = run_turns(session, ["dump it"])
    dump, after = results(events)
    assert not dump.is_error, dump.output
    assert dump.output.startswith("HEAD\nxxx") and "TAIL" not in dump.output
    assert dump.output.endswith("xxx\n[the rest of this result was not read: the answer was larger than 4 MB]")
    assert len(dump.output) < MAX_OUTPUT_CHARS + 200
    assert (after.output, after.is_error) == ("tool_0 ran", False)  # the server serves on


def test_a_server_with_twenty_thousand_tools_gives_the_first_ones_with_a_notice(fake_server: FakeLLMServer,
                                                                                  root: Path) -> None:
    session = make_session(fake_server, root, "full-auto", {"many": hostile_server("--tools", "20000")})
    fake_server.enqueue(reply.text("hello"))
    [events] = run_turns(session, ["hi"])
    assert "MCP server many offers 20,001 tools; only the first 128 are used (each tool's schema goes with every " \
           "request)." in notices(events)
    offered = [name for name in offered_tools(fake_server, 0) if name.startswith("many__")]
    assert offered == [f"many__tool_{n}" for n in range(128)]


def test_a_deeply_nested_tool_schema_is_refused_at_once(fake_server: FakeLLMServer, root: Path) -> None:
    """Before: a listing nested thousands deep was never answered, so the start-up waited its whole timeout."""
    session = make_session(fake_server, root, "full-auto", {
        "abyss": hostile_server("--deep", "5000"),
        "deep": hostile_server("--deep", "40"),  # readable (80 levels of JSON), but deeper than a call may be
    })
    fake_server.enqueue(reply.text("hello"))
    [events] = run_turns(session, ["hi"])
    said = notices(events)
    assert "MCP server abyss failed to start: its answer could not be read (nested too deep)." in said
    assert "MCP server deep: tool deep is left out, its schema is nested more than 64 levels deep." in said
    offered = set(offered_tools(fake_server, 0))
    assert {"deep__tool_0", "deep__dump"} <= offered and "deep__deep" not in offered
    assert not any(name.startswith("abyss__") for name in offered)


def test_the_processes_a_stdio_server_started_end_with_the_session(fake_server: FakeLLMServer, root: Path,
                                                                   tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    session = make_session(fake_server, root, "full-auto", {"parent": hostile_server("--child", str(pidfile))})
    child = int(pidfile.read_text())
    assert _alive(child)
    run_turns(session, [])  # closes the session
    assert not _alive(child), "a process the MCP server started outlived the session"


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_junk_on_a_servers_stdout_is_one_line_and_no_traceback(fake_server: FakeLLMServer, tmp_path: Path,
                                                               root: Path, clean_env: dict[str, str]) -> None:
    home = tmp_path / "home"
    (home / ".auto-coder.yaml").parent.mkdir(parents=True)
    (home / ".auto-coder.yaml").write_text(
        f"mcp:\n  servers:\n    noisy:\n      command: {sys.executable}\n      args: [{HOSTILE_SERVER}, --junk]\n"
        f"      startup_timeout: {STARTUP}\n")
    fake_server.enqueue(reply.tool_call("noisy__tool_0", {"x": "1"}), reply.text("Done."))
    env = clean_env | {"HOME": str(home), "AUTO_CODER_BASE_URL": fake_server.base_url,
                       "AUTO_CODER_MODEL": "fake-model", "NO_COLOR": "1"}
    done = subprocess.run(["auto-coder", "--approval-mode", "full-auto", "run it"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "Done.\n"
    assert "Traceback" not in done.stderr and "JSONRPC" not in done.stderr
    said = [line for line in done.stderr.splitlines() if "not MCP" in line]
    assert said == ["MCP server noisy wrote something that is not MCP on its stdout ('Starting the hostile "
                    "server... ready!'); it is ignored (a server's logs belong on stderr)."], done.stderr
    assert fake_server.chat_requests[1].json["messages"][-1]["content"] == "tool_0 ran"
