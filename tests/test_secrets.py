"""Secrets the configuration holds never leave the process: not into commands' environments, tool results, errors,
the doctor's output (issue 10 item 6). Real parts: the test server over HTTP, real subprocesses."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from turns import run_turn

from auto_coder_nb.config import Config, load_config, redact_url
from auto_coder_nb.doctor import run_doctor
from auto_coder_nb.errors import AuthenticationFailed
from auto_coder_nb.events import ErrorEvent, ToolResult
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply

GATEWAY_KEY = "gw-key-7f3a9c1e55"  # reaches the config only through ${MY_GATEWAY_KEY}
HEADER_VALUE = "hdr-secret-42bd10"
URL_PASSWORD = "p@ss-9911"  # holds an @, which used to cut the redaction short


def config_from_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, base_url: str, extra: str = "") -> Config:
    monkeypatch.setenv("MY_GATEWAY_KEY", GATEWAY_KEY)
    home = tmp_path / "home"  # the user's own file: trusted, unlike a project's
    home.mkdir()
    (home / ".auto-coder.yaml").write_text(
        "llm:\n"
        f"  base_url: {base_url}\n"
        "  model: fake-model\n"
        "  api_key: ${MY_GATEWAY_KEY}\n"
        f"  auth_headers: {{x-gateway-token: {HEADER_VALUE}}}\n"
        "agent:\n"
        "  approval_mode: full-auto\n" + extra, encoding="utf-8")
    return load_config(cwd=home, home=home)


def test_run_command_children_see_no_secret_and_tool_results_hide_them(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: FakeLLMServer) -> None:
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text(f"key={GATEWAY_KEY} header={HEADER_VALUE}\n")
    monkeypatch.setenv("UNRELATED_SETTING", "stays")
    config = config_from_file(tmp_path, monkeypatch, fake_server.base_url)
    fake_server.enqueue(reply.tool_call("run_command", {"command": "env"}),
                        reply.tool_call("read_file", {"path": "notes.txt"}), reply.text("done"))
    events = run_turn(Session.create(config, working_dir=work), "look")
    environment, notes = [event.output for event in events if isinstance(event, ToolResult)]
    assert "MY_GATEWAY_KEY" not in environment and GATEWAY_KEY not in environment
    assert "UNRELATED_SETTING=stays" in environment  # only what holds a secret goes
    assert notes.count("<hidden>") == 2 and GATEWAY_KEY not in notes and HEADER_VALUE not in notes
    sent = "\n".join(str(request.json) for request in fake_server.chat_requests)
    assert GATEWAY_KEY not in sent and HEADER_VALUE not in sent  # the model never got them either


def test_an_error_object_in_a_200_stream_does_not_echo_the_url_password(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: FakeLLMServer) -> None:
    base_url = fake_server.base_url.replace("http://", f"http://gateway-user:{URL_PASSWORD}@")
    config = config_from_file(tmp_path, monkeypatch, base_url)
    fake_server.enqueue(reply.chunks([{"error": {"message": f"login {URL_PASSWORD} and key {GATEWAY_KEY} refused"}}]))
    events = run_turn(Session.create(config, working_dir=tmp_path), "hi")
    message = next(event.message for event in events if isinstance(event, ErrorEvent))
    assert "refused" in message and URL_PASSWORD not in message and GATEWAY_KEY not in message


def test_doctor_output_hides_url_users_and_passwords_holding_an_at_sign(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_server: FakeLLMServer) -> None:
    base_url = fake_server.base_url.replace("http://", f"http://gateway-user:{URL_PASSWORD}@")
    lines: list[str] = []
    run_doctor(config_from_file(tmp_path, monkeypatch, base_url), lines.append)
    output = "\n".join(lines)
    assert "gateway-user:<hidden>@127.0.0.1" in output
    assert URL_PASSWORD not in output and "9911" not in output and GATEWAY_KEY not in output
    assert redact_url("https://tok3n-as-user@gateway.example/v1") == "https://<hidden>@gateway.example/v1"


@pytest.mark.parametrize("printed", ["Welcome to corp-login\\ntoken-abc123", "token-abc123\\x1b[0m"])
def test_token_command_output_that_is_not_one_printable_line_is_refused_without_echo(
        tmp_path: Path, fake_server: FakeLLMServer, printed: str) -> None:
    script = tmp_path / "print_token.py"
    script.write_text(f"print('{printed}')\n", encoding="utf-8")
    command = f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"
    config = load_config({"llm.base_url": fake_server.base_url}, env={}, cwd=tmp_path, home=tmp_path / "home")
    config.auth.token_command = command
    from auto_coder_nb import auth

    with httpx.Client(**auth.http_client_kwargs(config)) as client, pytest.raises(AuthenticationFailed) as raised:
        client.get(fake_server.base_url + "/models")
    assert "one line of printable characters" in str(raised.value)
    assert "token-abc123" not in str(raised.value) and "corp-login" not in str(raised.value)
    assert fake_server.requests == []


def test_in_a_kernel_secrets_stay_out_of_context_run_code_children_outputs_and_metadata(
        tmp_path: Path, fake_server: FakeLLMServer) -> None:
    from test_magics import SECRET, Kernel, kernel_env

    work = tmp_path / "notebooks"
    work.mkdir()
    # In HOME (kernel_env): the user's own, trusted file.
    (tmp_path / ".auto-coder.yaml").write_text("llm:\n  auth_headers:\n    x-team-token: ${MY_GATEWAY_KEY}\n",
                                               encoding="utf-8")
    kernel = Kernel(kernel_env(fake_server, tmp_path) | {"MY_GATEWAY_KEY": GATEWAY_KEY}, work)
    try:
        assert kernel.execute("%load_ext auto_coder_nb").reply["content"]["status"] == "ok"
        kernel.execute(f"import os\nleaked = {SECRET!r}")
        shown = kernel.execute("%autocoder --show-context look at leaked")
        assert "leaked" in shown.stdout and "<hidden>" in shown.stdout
        code = ("import os, subprocess\n"
                "print(subprocess.run('env', shell=True, capture_output=True, text=True).stdout)\n"
                "print(os.environ.get('MY_GATEWAY_KEY'), os.environ.get('AUTO_CODER_API_KEY'))\n"
                "print(leaked)")
        fake_server.enqueue(reply.tool_calls([{"name": "run_code", "arguments": {"code": code}},
                                              {"name": "inspect_variable", "arguments": {"name": "leaked"}}]),
                            reply.text("done"))
        ran = kernel.execute("%autocoder --approval-mode full-auto --context none go")
        restored = kernel.execute("print(os.environ['MY_GATEWAY_KEY'] == " + repr(GATEWAY_KEY) + ")")
    finally:
        kernel.close()
    everything = str(shown.messages) + str(ran.messages)  # outputs, display updates and their metadata
    assert SECRET not in everything and GATEWAY_KEY not in everything
    tool_messages = [m["content"] for m in fake_server.chat_requests[-1].json["messages"] if m["role"] == "tool"]
    assert len(tool_messages) == 2 and "<hidden>" in tool_messages[1]
    assert SECRET not in str(tool_messages) and GATEWAY_KEY not in str(tool_messages)
    assert "None None" in tool_messages[0]  # run_code's own environment had them removed...
    assert restored.stdout.strip() == "True"  # ...for the call only


def test_show_context_in_the_terminal_hides_a_configured_secret(tmp_path: Path, clean_env: dict[str, str]) -> None:
    env = clean_env | {"HOME": str(tmp_path), "AUTO_CODER_API_KEY": GATEWAY_KEY}
    shown = subprocess.run(["auto-coder", "--show-context", f"why is {GATEWAY_KEY} refused?"], env=env,
                           cwd=tmp_path, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "why is <hidden> refused?\n"
