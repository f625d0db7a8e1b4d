"""`run_doctor` and `auto-coder --doctor` against the real test server, a TLS front and a proxy."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_tls_proxy import TLSSetup, start_proxy, tls  # noqa: F401  (tls is a fixture)

from auto_coder_nb.config import Config, load_config
from auto_coder_nb.doctor import run_doctor
from auto_coder_nb.testing.server import FakeLLMServer, reply

API_KEY = "sk-doctor-secret-5150"
STEPS = ["configuration", "base URL reachable", "TLS verified", "authentication", "model listed",
         "streamed answer", "tool call", "prompted tool call", "tool calling"]


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(tmp_path: Path, base_url: str, env: dict[str, str] | None = None, **flags: Any) -> Config:
    return load_config({"llm.base_url": base_url, "llm.model": "fake-model", **flags}, env=env or {},
                       cwd=tmp_path, home=tmp_path / "home")


def doctor(config: Config) -> tuple[bool, list[str]]:
    lines: list[str] = []
    return run_doctor(config, lines.append), lines


def results(lines: list[str]) -> dict[str, str]:
    """step -> PASS / WARN / FAIL / SKIP, read back from the table."""
    found = {}
    for line in lines:
        for step in STEPS:
            if line.startswith(f"  {step}  ") and "  ...  " not in line:  # not a "waiting for" line
                found[step] = line[len("  ") + 20 + 2:].split()[0]
    return found


def row(lines: list[str], step: str) -> str:
    """The row of `step` with its `next:` line, if any."""
    index = next(i for i, line in enumerate(lines) if line.startswith(f"  {step}  ") and "  ...  " not in line)
    following = lines[index + 1] if index + 1 < len(lines) and "next:" in lines[index + 1] else ""
    return lines[index] + "\n" + following


def script_good_model(server: FakeLLMServer) -> None:
    server.enqueue(reply.text("Yes, ready.", chunks=3), reply.tool_call("get_current_time", {"timezone": "UTC"}),
                   reply.prompted_call("get_current_time", {"timezone": "UTC"}))


def test_all_steps_pass_against_a_working_server(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization(f"Bearer {API_KEY}")
    script_good_model(fake_server)
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url, {"AUTO_CODER_API_KEY": API_KEY}))
    assert ok
    assert results(lines) == dict.fromkeys(STEPS, "PASS")
    assert "API key (env AUTO_CODER_API_KEY)" in row(lines, "authentication")
    assert "3 chunks" in row(lines, "streamed answer")
    assert lines[-1] == "All 9 checks passed."
    correlation = {r.headers.get("x-correlation-id") for r in fake_server.requests}
    assert len(correlation) == 1 and correlation.pop().startswith("doctor-")
    assert API_KEY not in "\n".join(lines)


def test_rejected_key_fails_authentication_and_names_its_source(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization("Bearer sk-the-right-one")
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url, {"OPENAI_API_KEY": API_KEY}))
    assert not ok
    assert results(lines) == {"configuration": "PASS", "base URL reachable": "PASS", "TLS verified": "PASS",
                              "authentication": "FAIL", "model listed": "SKIP", "streamed answer": "SKIP",
                              "tool call": "SKIP", "prompted tool call": "SKIP", "tool calling": "SKIP"}
    assert "HTTP 401" in row(lines, "authentication") and "env OPENAI_API_KEY" in row(lines, "authentication")
    assert API_KEY not in "\n".join(lines)
    assert fake_server.chat_requests == []


def test_missing_key_says_the_server_wants_credentials(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization("Bearer sk-the-right-one")
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert not ok
    assert "AUTO_CODER_API_KEY" in row(lines, "authentication") and "none (no API key)" in row(lines, "authentication")


def test_unreachable_server(tmp_path: Path) -> None:
    with FakeLLMServer() as stopped:
        url = stopped.base_url
    ok, lines = doctor(make_config(tmp_path, url))
    assert not ok
    assert results(lines)["base URL reachable"] == "FAIL"
    assert "flag --base-url" in row(lines, "base URL reachable")
    assert all(results(lines)[step] == "SKIP" for step in STEPS[2:])
    assert lines[-1] == "1 of 9 checks failed: base URL reachable (7 more could not run)."


def test_model_not_listed_and_no_tool_call(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("Ready."), reply.text("It is noon."))
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url, **{"llm.model": "gpt-nonexistent"}))
    assert not ok
    found = results(lines)
    assert found["model listed"] == "FAIL" and found["streamed answer"] == "PASS" and found["tool call"] == "FAIL"
    assert "fake-model, fake-model-large" in row(lines, "model listed")
    assert "llm.model" in row(lines, "model listed")
    assert "answered with text" in row(lines, "tool call") and "tool" in row(lines, "tool call").split("next:")[1]
    assert fake_server.chat_requests[1].json["tools"][0]["function"]["name"] == "get_current_time"


def test_a_model_without_native_tool_calling_on_llama_cpp(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    """SmolLM2 on llama-server: the model talks instead of calling, /props says so, prompted mode works."""
    fake_server.route("GET", "/props", lambda request: reply.json_body(
        {"chat_template_caps": {"supports_tools": False, "supports_tool_calls": False}}))
    fake_server.enqueue(reply.text("Ready."), reply.text("I would call get_current_time."),
                        reply.prompted_call("get_current_time", {"timezone": "UTC"}))
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert ok, lines
    found = results(lines)
    assert (found["tool call"], found["prompted tool call"], found["tool calling"]) == ("WARN", "PASS", "PASS")
    assert "with structured output" in row(lines, "prompted tool call")
    assert "llm.tool_calling: auto uses prompted (llama.cpp /props" in row(lines, "tool calling")
    assert "response_format" in fake_server.chat_requests[2].json


def test_the_doctor_says_which_mode_to_set(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    """No up-front signal and no refusal: auto would stay native, which does not work; prompted does."""
    fake_server.structured_output = False
    fake_server.enqueue(reply.text("Ready."), reply.text("It is noon."),
                        reply.text('```json\n{"tool": "get_current_time", "arguments": {"timezone": "UTC"}}\n```'))
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert not ok
    found = results(lines)
    assert (found["tool call"], found["prompted tool call"], found["tool calling"]) == ("FAIL", "PASS", "FAIL")
    assert "read from free text" in row(lines, "prompted tool call")
    assert "set llm.tool_calling: prompted" in row(lines, "tool calling")


def test_native_refusal_is_named(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.refuse_tools = "ollama"
    fake_server.enqueue(reply.text("Ready."), reply.prompted_call("get_current_time", {}))
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert ok, lines
    assert "the server refused tools: registry.ollama.ai" in row(lines, "tool call")
    assert results(lines)["tool call"] == "WARN" and "uses prompted" in row(lines, "tool calling")


def test_chat_failure_is_reported(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(500, "the model crashed"))
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert not ok
    assert results(lines)["streamed answer"] == "FAIL" and results(lines)["tool call"] == "SKIP"
    assert "the model crashed" in row(lines, "streamed answer")


def test_private_ca_fails_tls_with_what_to_set_then_passes_with_ca_bundle(tmp_path: Path,
                                                                         tls: TLSSetup) -> None:  # noqa: F811
    ok, lines = doctor(make_config(tmp_path, tls.front.base_url))
    assert not ok
    assert results(lines)["base URL reachable"] == "PASS" and results(lines)["TLS verified"] == "FAIL"
    assert "certifi" in row(lines, "TLS verified") and "llm.ca_bundle" in row(lines, "TLS verified")
    assert tls.server.requests == []

    script_good_model(tls.server)
    ok, lines = doctor(make_config(tmp_path, tls.front.base_url, **{"llm.ca_bundle": str(tls.ca_file)}))
    assert ok, "\n".join(lines)
    assert f"with llm.ca_bundle {tls.ca_file}" in row(lines, "TLS verified")


def test_verify_false_is_a_warning_not_a_failure(tmp_path: Path, tls: TLSSetup) -> None:  # noqa: F811
    script_good_model(tls.server)
    ok, lines = doctor(make_config(tmp_path, tls.front.base_url, **{"llm.verify": False}))
    assert ok
    assert results(lines)["TLS verified"] == "WARN"
    assert "llm.ca_bundle" in row(lines, "TLS verified")


def test_token_endpoint_refusal_fails_authentication_without_the_secret(tmp_path: Path,
                                                                       fake_server: FakeLLMServer) -> None:
    secret = "client-secret-6061"
    fake_server.route("POST", "/token", lambda request: reply.error(
        401, body={"error": "invalid_client", "error_description": f"wrong secret {secret}"}))
    config = make_config(tmp_path, fake_server.base_url, {"AUTO_CODER_CLIENT_SECRET": secret},
                         **{"auth.token_url": fake_server.url + "/token", "auth.client_id": "corp"})
    ok, lines = doctor(config)
    assert not ok
    assert "invalid_client" in row(lines, "authentication") and "auth.client_secret" in row(lines, "authentication")
    assert secret not in "\n".join(lines)


@pytest.fixture
def proxy_with_login(tmp_path: Path) -> Iterator[str]:
    for proxy in start_proxy(tmp_path / "proxy", "--basic-auth", "corp:proxy-pass-1234"):
        yield proxy.url.replace("http://", "http://corp:proxy-pass-1234@")


def test_through_a_proxy_with_credentials(tmp_path: Path, fake_server: FakeLLMServer, proxy_with_login: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_with_login.replace("proxy-pass-1234", "wrong-pass-99"))
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert not ok
    assert results(lines)["base URL reachable"] == "FAIL" and "HTTP 407" in row(lines, "base URL reachable")
    assert "user:password@host:port" in row(lines, "base URL reachable")
    assert fake_server.requests == []

    monkeypatch.setenv("HTTP_PROXY", proxy_with_login)
    script_good_model(fake_server)
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert ok, "\n".join(lines)
    assert "via proxy http://corp:<hidden>@127.0.0.1:" in row(lines, "base URL reachable")
    assert "proxy.py" in fake_server.requests[0].headers["via"]
    assert "proxy-pass-1234" not in "\n".join(lines) and "wrong-pass-99" not in "\n".join(lines)


@pytest.mark.parametrize("userinfo", ["alice:pw", "al:p", "tok"])
def test_url_credentials_are_hidden_whatever_their_length_and_never_sent(tmp_path: Path, fake_server: FakeLLMServer,
                                                                         userinfo: str) -> None:
    """Issue 24 item 10: the doctor printed `GET http://alice:pw@...` (passwords under 4 characters were not
    hidden) and its check without credentials sent them as Basic, which chat never does."""
    script_good_model(fake_server)
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url.replace("http://", f"http://{userinfo}@")))
    assert ok, "\n".join(lines)
    report = "\n".join(lines)
    assert f"{userinfo}@" not in report and "<hidden>@127.0.0.1" in report
    assert "GET http://127.0.0.1:" in row(lines, "base URL reachable")
    assert all("authorization" not in request.headers for request in fake_server.requests)


def test_runs_inside_a_running_event_loop(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    """As from a notebook cell, where IPython already runs an asyncio loop."""
    script_good_model(fake_server)
    config = make_config(tmp_path, fake_server.base_url)

    async def from_a_cell() -> tuple[bool, list[str]]:
        return doctor(config)

    ok, lines = asyncio.run(from_a_cell())
    assert ok, "\n".join(lines)


def test_cli_exit_codes_and_masked_output(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization(f"Bearer {API_KEY}")
    script_good_model(fake_server)
    env = dict(os.environ)
    env.update(AUTO_CODER_BASE_URL=fake_server.base_url, AUTO_CODER_MODEL="fake-model", AUTO_CODER_API_KEY=API_KEY,
               HOME=str(tmp_path))
    command = [sys.executable, "-m", "auto_coder_nb", "--doctor"]
    passed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "All 9 checks passed." in passed.stdout
    env["AUTO_CODER_API_KEY"] = "sk-wrong-key-0000"
    failed = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1
    assert "authentication        FAIL" in failed.stdout
    everything = passed.stdout + passed.stderr + failed.stdout + failed.stderr
    assert API_KEY not in everything and "sk-wrong-key-0000" not in everything


def test_it_tells_whether_images_are_sent_and_which_instructions_are_read(
    tmp_path: Path, fake_server: FakeLLMServer
) -> None:
    (tmp_path / "AGENTS.md").write_text("be brief\n")
    fake_server.route("POST", "/api/show", lambda _: reply.json_body({"capabilities": ["completion", "vision"]}))
    script_good_model(fake_server)
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url, **{"agent.working_dir": str(tmp_path)}))
    assert ok and lines[-1] == "All 9 checks passed."
    assert any(line.startswith("  vision ") and "server reports vision" in line and "images are sent" in line
               for line in lines)
    assert any(line.startswith("  instructions ") and "AGENTS.md (9 bytes)" in line for line in lines)
    script_good_model(fake_server)
    _, lines = doctor(make_config(tmp_path, fake_server.base_url, env={"AUTO_CODER_VISION": "false"},
                                  **{"agent.instructions_files": []}))
    assert any("llm.vision is false: images are not sent" in line for line in lines)
    assert any("turned off (agent.instructions_files is [])" in line for line in lines)


def test_every_step_passes_against_the_test_server_without_scripting(tmp_path: Path,
                                                                      fake_server: FakeLLMServer) -> None:
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert results(lines) == dict.fromkeys(STEPS, "PASS"), "\n".join(lines)
    assert ok and "the model called get_current_time" in row(lines, "tool call")


# -- deadlines, token caps, Ctrl-C ------------------------------------------------------------------


def endless_answer() -> dict[str, Any]:
    """A stream that never ends and never repeats itself (the runaway guard cannot stop it): only a deadline can."""
    return reply.text("".join(f"word{number} " for number in range(100_000)), chunks=100_000, delay=0.02)


def test_a_server_streaming_forever_is_stopped_by_the_deadline_and_each_request_is_capped(
        tmp_path: Path, fake_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from auto_coder_nb import doctor as doctor_module

    monkeypatch.setattr(doctor_module, "CHAT_DEADLINE", 2.0)  # the doctor's own limit, shortened for the test
    fake_server.enqueue(endless_answer())
    ok, lines = doctor(make_config(tmp_path, fake_server.base_url, {"AUTO_CODER_MAX_TOKENS": "null"},
                                   **{"llm.extra_params": {"max_completion_tokens": 100_000}}))
    assert not ok
    assert results(lines)["streamed answer"] == "FAIL"
    assert "no complete answer within 2 s" in row(lines, "streamed answer")
    waiting = [line for line in lines if "waiting for the model's answer" in line]
    assert len(waiting) == 1 and "2 s at most, Ctrl-C stops" in waiting[0]
    assert lines.index(waiting[0]) < lines.index(row(lines, "streamed answer").splitlines()[0])
    [asked] = fake_server.chat_requests
    # The cap goes where llm.extra_params put the user's (OpenAI's newer models refuse max_tokens).
    assert asked.json["max_completion_tokens"] == doctor_module.ANSWER_TOKENS and "max_tokens" not in asked.json


def test_every_model_request_of_the_doctor_is_capped(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    from auto_coder_nb.doctor import ANSWER_TOKENS

    script_good_model(fake_server)
    ok, _ = doctor(make_config(tmp_path, fake_server.base_url))
    assert ok and len(fake_server.chat_requests) == 3
    assert {request.json["max_tokens"] for request in fake_server.chat_requests} == {ANSWER_TOKENS}


def test_the_doctor_shows_the_context_window_and_where_it_comes_from(tmp_path: Path,
                                                                     fake_server: FakeLLMServer) -> None:
    fake_server.route("GET", "/props", lambda request: reply.json_body(
        {"default_generation_settings": {"n_ctx": 8192}, "chat_template_caps": {"supports_tools": True}}))
    script_good_model(fake_server)
    _, lines = doctor(make_config(tmp_path, fake_server.base_url))
    assert "  context window        info    8192 tokens (llama.cpp /props n_ctx)" in lines
    script_good_model(fake_server)
    _, lines = doctor(make_config(tmp_path, fake_server.base_url, **{"agent.context_window": 4000}))
    assert any("4000 tokens (agent.context_window from" in line and "the server says 8192" in line for line in lines)


HOLD = "doctor-step"


def hold_step(server: FakeLLMServer, step: str) -> None:
    """Make the server hold the request of `step` until released (the steps before it answer at once)."""
    models = {"object": "list", "data": [{"id": "fake-model", "object": "model"}]}
    gets = iter(range(10))

    def listing(request: Any) -> dict[str, Any]:
        number = next(gets)  # the first GET checks the connection, the second the credentials
        held = (step == "base URL reachable" and number == 0) or (step == "authentication" and number == 1)
        return reply.json_body(models, wait_for=HOLD if held else None)

    server.route("GET", "/v1/models", listing)
    if step == "context window":
        server.route("GET", "/props", lambda request: reply.json_body({}, wait_for=HOLD))
    answers = {"streamed answer": [reply.text("Ready.", wait_for=HOLD)],
               "tool call": [reply.text("Ready."), reply.text("held", wait_for=HOLD)],
               "prompted tool call": [reply.text("Ready."), reply.tool_call("get_current_time", {}),
                                      reply.text("held", wait_for=HOLD)]}
    server.enqueue(*answers.get(step, []))


@pytest.mark.parametrize("step", ["base URL reachable", "authentication", "context window", "streamed answer",
                                  "tool call", "prompted tool call"])
def test_ctrl_c_at_each_step_ends_the_doctor_at_once_with_one_line(
        tmp_path: Path, fake_server: FakeLLMServer, step: str) -> None:
    hold_step(fake_server, step)
    env = {**os.environ, "HOME": str(tmp_path), "AUTO_CODER_BASE_URL": fake_server.base_url,
           "AUTO_CODER_MODEL": "fake-model", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "auto_coder_nb", "--doctor"], env=env, cwd=tmp_path,
                               stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        shown = []
        for line in process.stdout:  # until the doctor says what the held step waits for
            shown.append(line)
            if "waiting for" in line:
                break
        assert shown and shown[-1].startswith(f"  {step:<20}  ...     waiting for"), shown
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)  # at once: no second Ctrl-C, nothing waits for the server
    finally:
        fake_server.release(HOLD)
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert err.strip() == "auto-coder: --doctor interrupted", err
    assert "Traceback" not in out + err


@pytest.mark.parametrize("when", ["before the network", "streamed answer"])
def test_ctrl_c_in_the_cli_before_the_network_also_ends_with_one_line(
        tmp_path: Path, fake_server: FakeLLMServer, when: str) -> None:
    # A custom tool module that blocks while it is imported: the step before any request.
    (tmp_path / "slow_tools.py").write_text("import sys, time\nprint('importing', file=sys.stderr, flush=True)\n"
                                            "time.sleep(60)\nTOOLS = []\n")
    (tmp_path / ".auto-coder.yaml").write_text("agent:\n  tools: ['slow_tools:TOOLS']\n")
    env = {**os.environ, "HOME": str(tmp_path), "AUTO_CODER_BASE_URL": fake_server.base_url,
           "AUTO_CODER_MODEL": "fake-model"}
    process = subprocess.Popen([sys.executable, "-m", "auto_coder_nb", "--doctor", "--trust-project"], env=env,
                               cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        assert process.stderr.readline() == "importing\n"
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130 and err.strip() == "auto-coder: --doctor interrupted", err
    assert "Traceback" not in out + err
