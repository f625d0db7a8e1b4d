"""The `auto-coder` command as a user runs it: single-prompt mode as a subprocess, the REPL in a
pseudo-terminal, both against the project's test server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from auto_coder_nb.terminal import STATUS_AFTER, STATUS_INTERVAL
from auto_coder_nb.testing.server import FakeLLMServer, reply


@pytest.fixture
def server(fake_server: FakeLLMServer) -> FakeLLMServer:
    return fake_server


@pytest.fixture
def env(tmp_path: Path, server: FakeLLMServer, clean_env: dict[str, str]) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return clean_env | {"HOME": str(home), "AUTO_CODER_BASE_URL": server.base_url, "AUTO_CODER_MODEL": "fake-model",
                    "NO_COLOR": "1", "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "dumb"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    root.mkdir()
    (root / "notes.txt").write_text("first line\nsecond line\n")
    return root


def run(args: list[str], env: dict[str, str], cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["auto-coder", *args], env=env, cwd=cwd, input=stdin, capture_output=True, text=True,
                          timeout=60, stdin=None if stdin is not None else subprocess.DEVNULL)


def test_single_prompt_streams_to_stdout_and_tools_to_stderr(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    server.enqueue(reply.tool_call("read_file", {"path": "notes.txt"}), reply.text("It has two lines.", chunks=5))
    result = run(["What is in notes.txt?"], env, workspace)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "It has two lines.\n"
    assert "read_file" in result.stderr and "notes.txt" in result.stderr
    tool_message = server.chat_requests[1].json["messages"][-1]
    assert tool_message["role"] == "tool" and "second line" in tool_message["content"]
    assert server.chat_requests[0].json["messages"][-1] == {"role": "user", "content": "What is in notes.txt?"}


def test_prompt_from_standard_input(server: FakeLLMServer, env: dict[str, str], workspace: Path) -> None:
    result = run([], env, workspace, stdin="summarise this\n")
    assert result.returncode == 0, result.stderr
    assert server.chat_requests[0].json["messages"][-1]["content"] == "summarise this"


def test_without_a_terminal_approvals_are_refused_and_the_model_told(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    server.enqueue(reply.tool_call("write_file", {"path": "new.txt", "content": "x"}), reply.text(""))
    result = run(["make new.txt"], env, workspace)
    assert result.returncode == 3  # every action refused and no answer after it: nothing asked for was done
    assert not (workspace / "new.txt").exists()
    told = server.chat_requests[1].json["messages"][-1]["content"]
    assert "--approval-mode" in told
    assert "1 change(s) or command(s) refused (nothing was changed or run" in result.stderr
    server.enqueue(reply.tool_call("write_file", {"path": "new.txt", "content": "x"}), reply.text("done"))
    allowed = run(["make new.txt", "--approval-mode", "auto-edit"], env, workspace)
    assert allowed.returncode == 0 and (workspace / "new.txt").read_text() == "x"


def test_working_dir_flag_scopes_the_tools(server: FakeLLMServer, env: dict[str, str], workspace: Path,
                                            tmp_path: Path) -> None:
    server.enqueue(reply.tool_call("read_file", {"path": "../outside.txt"}), reply.text("no"))
    (tmp_path / "outside.txt").write_text("secret")
    result = run(["-d", str(workspace), "read it"], env, tmp_path)
    assert result.returncode == 0
    told = server.chat_requests[1].json["messages"][-1]["content"]
    assert "outside the workspace" in told and "secret" not in told


def test_connection_refused_is_one_clear_line(env: dict[str, str], workspace: Path) -> None:
    result = run(["hi", "--base-url", "http://127.0.0.1:9/v1"], env, workspace)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:9" in result.stderr


def test_default_url_error_says_how_to_point_elsewhere(env: dict[str, str], workspace: Path) -> None:
    del env["AUTO_CODER_BASE_URL"]
    result = run(["hi"], env, workspace)
    if result.returncode == 0:
        pytest.skip("something answers on localhost:11434 on this machine, so the error cannot be shown")
    assert result.returncode == 1
    assert "Ollama" in result.stderr and "--base-url" in result.stderr and "Traceback" not in result.stderr


def test_api_key_never_printed_on_auth_failure(server: FakeLLMServer, env: dict[str, str], workspace: Path) -> None:
    server.enqueue(reply.error(401, "Incorrect API key provided: sk-cli-***-key"))
    env = env | {"AUTO_CODER_API_KEY": "sk-cli-secret-key"}
    result = run(["hi"], env, workspace)
    assert result.returncode == 1
    assert "sk-cli-secret-key" not in result.stdout + result.stderr
    assert server.chat_requests[0].headers["authorization"] == "Bearer sk-cli-secret-key"


def as_from_an_interactive_shell() -> None:
    """In the child before it starts: Ctrl-C interrupts, as when a user starts it at a terminal. A suite started in
    the background (`nohup ... &`, a CI job) has SIGINT ignored, and an ignored signal is inherited across exec."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def spawn_repl(env: dict[str, str], cwd: Path, *args: str) -> pexpect.spawn:
    child = pexpect.spawn(sys.executable, ["-m", "auto_coder_nb", *args], env=env, cwd=str(cwd), encoding="utf-8",
                          timeout=30, dimensions=(40, 200), preexec_fn=as_from_an_interactive_shell)
    child.expect("/help for commands")
    child.expect("> ")
    return child


def test_repl_tool_round_trip_with_approval_and_slash_commands(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    server.enqueue(reply.tool_call("write_file", {"path": "hello.py", "content": "print('hi')\n"}),
                   reply.text("Wrote hello.py."))
    child = spawn_repl(env, workspace)
    child.sendline("write hello.py")
    child.expect(r"\+print\('hi'\)")  # the diff of the new file, shown before asking
    child.expect(r"Allow write_file\?")
    child.sendline("y")
    child.expect("Wrote hello.py.")
    child.expect("> ")
    assert (workspace / "hello.py").read_text() == "print('hi')\n"
    first_id = server.chat_requests[0].headers["x-correlation-id"]

    child.sendline("/id")
    child.expect(f"Correlation id: {first_id}")
    child.expect("> ")
    child.sendline("/models")
    child.expect("fake-model-large")
    child.expect("> ")
    child.sendline("/undo")
    child.expect("hello.py")
    child.expect("> ")
    assert not (workspace / "hello.py").exists()
    child.sendline("/help")
    child.expect("/reset")
    child.expect("> ")
    child.sendline("/clear")
    child.expect(r"New correlation id: ([0-9a-f-]{36})")
    cleared_id = child.match.group(1)
    child.expect("> ")
    child.sendline("/reset")
    child.expect(r"New correlation id: ([0-9a-f-]{36})")
    reset_id = child.match.group(1)
    child.expect("> ")
    child.sendline("hello again")
    child.expect("> ")
    assert len({first_id, cleared_id, reset_id}) == 3
    assert server.chat_requests[-1].headers["x-correlation-id"] == reset_id
    assert [m["role"] for m in server.chat_requests[-1].json["messages"]] == ["system", "user"]
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_ctrl_c_stops_the_answer_not_the_repl(server: FakeLLMServer, env: dict[str, str],
                                                   workspace: Path) -> None:
    server.enqueue(reply.text("slow " * 40, chunks=40, delay=0.25), reply.text("second answer works"))
    child = spawn_repl(env, workspace)
    child.sendline("tell me slowly")
    child.expect("slow slow")
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect("> ")
    child.sendline("again")
    child.expect("second answer works")
    child.expect("> ")
    messages = server.chat_requests[-1].json["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[2]["content"].endswith("[interrupted]")
    child.send("\x04")  # Ctrl-D as the terminal sends it (sendeof reads VEOF from a pty in raw mode)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_unknown_command_and_exit(env: dict[str, str], workspace: Path) -> None:
    child = spawn_repl(env, workspace)
    child.sendline("/frobnicate")
    child.expect("Unknown command /frobnicate. /help lists the commands.")
    child.expect("> ")
    child.sendline("/exit")
    child.expect(r"bye \(0 tokens this session\)")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_ctrl_c_at_an_approval_prompt_stops_the_turn_cleanly(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    server.enqueue(reply.tool_call("write_file", {"path": "x.txt", "content": "x"}), reply.text("next works"))
    child = spawn_repl(env, workspace)
    child.sendline("write x.txt")
    child.expect(r"Allow write_file\?")
    child.sendintr()
    child.expect(r"\(stopped\)")
    child.expect("> ")
    child.sendline("and now?")
    child.expect("next works")
    child.expect("> ")
    assert not (workspace / "x.txt").exists()
    messages = server.chat_requests[-1].json["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[3]["content"].startswith("interrupted")
    child.send("\x04")
    child.expect(pexpect.EOF)


def test_an_answer_cut_off_mid_stream_exits_non_zero(server: FakeLLMServer, env: dict[str, str],
                                                     workspace: Path) -> None:
    server.enqueue(reply.text("Half an ans", chunks=2, cut_off=True))
    result = run(["explain"], env, workspace)
    assert result.returncode == 1
    assert result.stdout.startswith("Half an ans")
    assert "was cut off" in result.stderr


@pytest.mark.parametrize(("setting", "says"), [("USE_SSO", "SSO_TOKEN"),
                                               ("SERVER_SIDE_TOKEN_REFRESH", "AUTO_CODER_CLIENT_SECRET")])
def test_missing_sso_token_or_client_credentials_is_a_configuration_error(
    server: FakeLLMServer, env: dict[str, str], workspace: Path, setting: str, says: str
) -> None:
    result = run(["hi"], env | {setting: "true"}, workspace)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr and "Traceback" not in result.stderr
    assert server.chat_requests == []


def test_refusals_exit_3_only_when_no_answer_came_after_them(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    # A read beside a refused command, then the model gives up without an answer: nothing asked for was done.
    server.enqueue(reply.tool_calls([{"name": "read_file", "arguments": {"path": "notes.txt"}},
                                     {"name": "run_command", "arguments": {"command": "touch made"}}]),
                   reply.text(" \n"))
    assert run(["touch made"], env, workspace).returncode == 3
    # Asked to read and explain, the model also tried two writes nobody asked for, then answered: a success,
    # with the refusals said on stderr.
    server.enqueue(reply.tool_call("read_file", {"path": "notes.txt"}),
                   reply.tool_calls([{"name": "write_file", "arguments": {"path": "a.txt", "content": "a"}},
                                     {"name": "write_file", "arguments": {"path": "b.txt", "content": "b"}}]),
                   reply.text("notes.txt has two lines: first line and second line."))
    explained = run(["read notes.txt and explain it"], env, workspace)
    assert explained.returncode == 0, explained.stderr
    assert explained.stdout == "notes.txt has two lines: first line and second line.\n"
    assert "2 change(s) or command(s) refused" in explained.stderr and "--approval-mode" in explained.stderr
    assert not (workspace / "a.txt").exists() and not (workspace / "b.txt").exists()
    # A refusal the model answers after ("could not") is said on stderr; the exit code is 0.
    server.enqueue(reply.tool_call("write_file", {"path": "new.txt", "content": "x"}), reply.text("could not"))
    answered = run(["make new.txt"], env, workspace)
    assert answered.returncode == 0 and "1 change(s) or command(s) refused" in answered.stderr
    server.enqueue(reply.tool_call("run_command", {"command": "touch made"}), reply.text("done"))
    allowed = run(["touch made", "--approval-mode", "full-auto"], env, workspace)
    assert allowed.returncode == 0 and "refused" not in allowed.stderr
    assert (workspace / "made").exists()


def test_repl_end_of_input_at_an_approval_prompt_is_a_refusal(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    server.enqueue(reply.tool_call("write_file", {"path": "x.txt", "content": "x"}), reply.text("Left it alone."),
                   reply.text("next works"))
    child = spawn_repl(env, workspace)
    child.sendline("write x.txt")
    child.expect(r"Allow write_file\?")
    child.sendeof()  # Ctrl-D at input()
    child.expect("Left it alone.")
    child.expect("> ")
    assert not (workspace / "x.txt").exists()
    tool_message = server.chat_requests[1].json["messages"][-1]
    assert tool_message["role"] == "tool" and "denied" in tool_message["content"]
    child.sendline("and now?")
    child.expect("next works")
    child.expect("> ")
    child.send("\x04")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_repl_approval_preview_shows_control_characters_escaped(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    # \r and an erase-line escape would otherwise print "echo safe" over the real command.
    server.enqueue(reply.tool_call("run_command", {"command": "touch pwned\r\x1b[2Kecho safe"}), reply.text("ok"))
    child = spawn_repl(env, workspace)
    child.sendline("run it")
    child.expect(r"Allow run_command\?")
    assert "touch pwned\\r\\x1b[2Kecho safe" in child.before
    assert "\x1b[2K" not in child.before
    child.sendline("n")
    child.expect("> ")
    assert not (workspace / "pwned").exists()
    child.send("\x04")
    child.expect(pexpect.EOF)


def test_repl_asks_again_after_a_typo_takes_a_reason_inline_and_always_covers_one_command(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    """Issue 22 item 13 and 24 item 8 at the terminal: one question (a typo asks again, a no carries its reason on
    the same line) and "always" to one command line is not a yes to another."""
    server.enqueue(reply.tool_call("run_command", {"command": "echo one"}), reply.text("first"),
                   reply.tool_call("run_command", {"command": "echo one"}),
                   reply.tool_call("run_command", {"command": "touch two"}), reply.text("second"))
    child = spawn_repl(env, workspace)
    child.sendline("run it")
    child.expect_exact("Allow run_command? [y]es / [n]o [reason] / [a]lways (this exact command, this session):")
    child.sendline("yse")
    child.expect_exact("Please answer y (yes)")
    child.expect_exact("Allow run_command?")
    child.sendline("a")
    child.expect("first")
    child.expect("> ")
    child.sendline("again")
    child.expect(r"touch two")  # echo one ran without asking; the other command asks
    child.expect_exact("Allow run_command?")
    child.sendline("no: keep the folder clean")
    child.expect("second")
    child.expect("> ")
    assert not (workspace / "two").exists()
    results = [m for m in server.chat_requests[-1].json["messages"] if m["role"] == "tool"]
    assert [m["content"] for m in results][-3:] == [
        "exit code: 0\nstdout:\none", "exit code: 0\nstdout:\none",
        "The user denied this run_command call. Reason: keep the folder clean"]
    child.send("\x04")
    child.expect(pexpect.EOF)


def test_repl_survives_a_turn_that_fails_and_keeps_its_session(server: FakeLLMServer, env: dict[str, str],
                                                                workspace: Path, tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "crashy.py").write_text(
        "from auto_coder_nb.providers.base import ToolDefinition\n"
        "tool = ToolDefinition('crashy', 'Has a broken preview.', {'type': 'object', 'properties': {}},\n"
        "                      lambda: 'ran', kind='write', preview=lambda: 42)\n")
    (Path(env["HOME"]) / ".auto-coder.yaml").write_text("agent:\n  tools: ['crashy:tool']\n")
    env = env | {"PYTHONPATH": f"{tools}:{env.get('PYTHONPATH', '')}"}
    server.enqueue(reply.tool_call("read_file", '{"path": ' + "[" * 5000 + "]" * 5000 + "}"),
                   reply.text("told about the nesting"), reply.tool_call("crashy", {}),
                   reply.text("still here"))
    child = spawn_repl(env, workspace)
    child.sendline("deeply nested")
    child.expect("told about the nesting")
    child.expect("> ")
    assert "nested more than 64 levels" in server.chat_requests[1].json["messages"][-1]["content"]
    child.sendline("broken preview")  # the face fails on it: the REPL says so and goes on
    child.expect(r"error: the turn failed \(TypeError")
    child.expect("> ")
    child.sendline("/id")
    child.expect("Correlation id: ")
    child.sendline("and now?")
    child.expect("still here")
    child.expect("> ")
    roles = [m["role"] for m in server.chat_requests[-1].json["messages"]]
    assert roles.count("user") == 3, roles
    child.send("\x04")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


GATEWAY_KEY_FILE = "llm:\n  api_key: ${MY_GATEWAY_KEY}\n"  # the README's example, the variable unset


@pytest.mark.parametrize(("override", "flags"), [({"AUTO_CODER_API_KEY": "sk-env-override"}, []),
                                                 ({}, ["--api-key", "sk-flag-override"])])
def test_a_key_given_elsewhere_overrides_an_unset_variable_in_a_file(
    server: FakeLLMServer, env: dict[str, str], workspace: Path, override: dict[str, str], flags: list[str]
) -> None:
    (Path(env["HOME"]) / ".auto-coder.yaml").write_text(GATEWAY_KEY_FILE)
    server.enqueue(reply.text("Hello there."))
    result = run([*flags, "say hello"], env | override, workspace)
    assert result.returncode == 0, result.stderr
    assert "Hello there." in result.stdout
    key = override.get("AUTO_CODER_API_KEY") or flags[-1]
    assert server.chat_requests[0].headers["authorization"] == f"Bearer {key}"


def test_an_unset_variable_is_an_error_only_when_a_request_needs_it(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    path = Path(env["HOME"]) / ".auto-coder.yaml"
    path.write_text(GATEWAY_KEY_FILE)
    expected = f"{path}: llm.api_key: environment variable MY_GATEWAY_KEY is not set"
    shown = run(["--show-context", "look"], env, workspace)  # no request: no error
    assert shown.returncode == 0, shown.stderr
    result = run(["say hello"], env, workspace)
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in result.stderr and "Traceback" not in result.stderr
    assert server.chat_requests == []
    doctor = run(["--doctor"], env, workspace)
    assert doctor.returncode == 2, doctor.stdout + doctor.stderr
    assert expected in doctor.stdout and "Traceback" not in doctor.stderr


def test_repl_reviews_a_notebook_cell_by_cell_and_rewinds(server: FakeLLMServer, env: dict[str, str],
                                                          workspace: Path) -> None:
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("y = 2")])
    nbformat.write(notebook, workspace / "a.ipynb")
    original = (workspace / "a.ipynb").read_text()
    changed = original.replace('"x = 1"', '"x = 10"')
    server.enqueue(reply.tool_call("write_file", {"path": "a.ipynb", "content": changed}), reply.text("Rejected."),
                   reply.tool_call("write_file", {"path": "a.ipynb", "content": changed}), reply.text("Done."))
    child = spawn_repl(env, workspace)
    child.sendline("set x to 10")
    child.expect(f"replace cell 0 \\(code, id {notebook.cells[0].id}\\) of a.ipynb:")  # the cell, not the JSON
    child.expect(r"-x = 1\s+\+x = 10")
    child.expect(r"Allow write_file\?")
    child.sendline("n keep x")
    child.expect("Rejected.")
    child.expect("> ")
    assert "The user rejected your change to cell 0" in server.chat_requests[-1].json["messages"][-1]["content"]
    child.sendline("set x to 10, please")
    child.expect(r"Allow write_file\?")
    child.sendline("y")
    child.expect("Done.")
    child.expect("> ")
    assert (workspace / "a.ipynb").read_text() == changed
    child.sendline("/rewind 3")
    child.expect(r"There is no turn 3: this conversation has 2 turn\(s\)")
    child.sendline("/rewind")
    child.expect(r"Rewound to before turn 2 \(set x to 10, please\)\. Restored 1 file\(s\): a.ipynb\.")
    child.expect("> ")
    assert (workspace / "a.ipynb").read_text() == original
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_a_waiting_line_shows_on_a_terminal_until_the_first_token_and_never_on_a_pipe(
    server: FakeLLMServer, env: dict[str, str], workspace: Path
) -> None:
    # The server sends its headers, then holds the answer (a CPU model reading the prompt) until released.
    server.enqueue(reply.text("The answer.", wait_for="first-token"))
    child = pexpect.spawn("auto-coder", ["a question"], env=env, cwd=str(workspace), encoding="utf-8", timeout=30)
    try:
        child.expect(r"waiting for the model\.\.\. (\d+) s \(Ctrl-C stops\)")
        child.expect(r"waiting for the model\.\.\. (\d+) s")  # updated in place as the time passes
        server.release("first-token")
        child.expect("The answer.")
        shown = child.before
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert shown.endswith("\r\x1b[K")  # the waiting line was erased before the answer was written over it
    assert child.exitstatus == 0
    # The REPL shows it too, between the request and the answer.
    server.enqueue(reply.text("Second answer.", wait_for="second"))
    repl = spawn_repl(env, workspace)
    try:
        repl.sendline("another question")
        repl.expect(r"waiting for the model\.\.\. \d+ s")
        server.release("second")
        repl.expect("Second answer.")
        repl.expect("> ")
        repl.sendline("/quit")
        repl.expect(pexpect.EOF)
    finally:
        repl.close()
    # On a pipe: the same wait, no line.
    server.enqueue(reply.text("Piped answer.", wait_for="piped"))
    process = subprocess.Popen(["auto-coder", "a question"], env=env, cwd=workspace, stdin=subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_requests(server, 3)
        time.sleep(STATUS_AFTER + 2 * STATUS_INTERVAL)  # long enough that a terminal would have shown the line
        server.release("piped")
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert out == "Piped answer.\n" and "waiting" not in err and "\x1b" not in err


def wait_for_requests(server: FakeLLMServer, count: int) -> None:
    """Until the server has `count` chat requests (not a timing: the process is waiting on the server)."""
    for _ in range(600):
        if len(server.chat_requests) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server got {len(server.chat_requests)} of {count} chat requests")
