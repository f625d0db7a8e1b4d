"""The context window read from the server (llama.cpp, Ollama, LM Studio, vLLM), emulated by the project's test
server over HTTP: used for the context share and for shortening, overridden by agent.context_window, shown by
--show-config, and lying or silent servers ignored safely. Also the no-native-tools notice, said once per server
and model across runs."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest
from turns import run_turn

from auto_coder_nb.config import DEFAULT_CONTEXT_WINDOW, Config
from auto_coder_nb.events import Event, Notice, TurnDone
from auto_coder_nb.providers import capabilities
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, RecordedRequest, reply


def make_session(server: FakeLLMServer, root: Path, **agent: Any) -> Session:
    config = Config()
    config.llm.base_url, config.llm.model, config.llm.tool_calling = server.base_url, "fake-model", "native"
    for key, value in agent.items():
        setattr(config.agent, key, value)
    return Session.create(config, working_dir=root)


def window_of(events: list[Event]) -> int:
    [done] = [event for event in events if isinstance(event, TurnDone)]
    assert done.context is not None
    return done.context.window


def llama_cpp_props(n_ctx: Any) -> Any:
    return lambda request: reply.json_body({"default_generation_settings": {"n_ctx": n_ctx},
                                            "chat_template_caps": {"supports_tools": True},
                                            "modalities": {"vision": False}})


def ollama_show(parameters: str = "", trained: Any = 131072) -> Any:
    return lambda request: reply.json_body({"capabilities": ["completion", "tools"], "parameters": parameters,
                                            "model_info": {"general.architecture": "llama",
                                                           "llama.context_length": trained}})


def routes_for(kind: str, value: Any) -> dict[tuple[str, str], Any]:
    """The answers of a kind of server that reports `value` as the window of fake-model."""
    if kind == "llama.cpp":
        return {("GET", "/props"): llama_cpp_props(value)}
    if kind == "ollama num_ctx":
        return {("POST", "/api/show"): ollama_show(f'num_ctx                        {value}\nstop "<|im_end|>"')}
    if kind == "ollama loaded":
        return {("POST", "/api/show"): ollama_show(),
                ("GET", "/api/ps"): lambda request: reply.json_body(
                    {"models": [{"name": "other", "context_length": 999999}, {"name": "fake-model",
                                                                              "context_length": value}]})}
    if kind == "lm studio":
        return {("GET", "/api/v0/models/fake-model"): lambda request: reply.json_body(
            {"id": "fake-model", "state": "loaded", "max_context_length": 131072, "loaded_context_length": value})}
    assert kind == "vllm"
    return {("GET", "/v1/models"): lambda request: reply.json_body(
        {"object": "list", "data": [{"id": "other", "max_model_len": 1024},
                                    {"id": "fake-model", "object": "model", "max_model_len": value}]})}


KINDS = ["llama.cpp", "ollama num_ctx", "ollama loaded", "lm studio", "vllm"]


@pytest.mark.parametrize("kind", KINDS)
def test_the_window_comes_from_the_server(fake_server: FakeLLMServer, root: Path, kind: str) -> None:
    for (method, path), handler in routes_for(kind, 8192).items():
        fake_server.route(method, path, handler)
    session = make_session(fake_server, root)
    events = run_turn(session, "hi")
    assert window_of(events) == 8192
    assert "of 8192" in str(session.agent.context_usage())
    window, source = asyncio.run(session.agent.context_window())
    assert window == 8192 and source.split()[0] in ("llama.cpp", "Ollama", "LM", "/models")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lie", [0, -4096, 10**15, "8192", None, True, 8192.5, float("nan")])
def test_lying_windows_are_ignored(fake_server: FakeLLMServer, root: Path, kind: str, lie: Any) -> None:
    if kind == "llama.cpp" and isinstance(lie, float) and lie != lie:
        lie = "NaN"  # JSON has no NaN: a server sends it as text, if at all
    if kind == "ollama num_ctx" and lie == "8192":
        lie = "8192 tokens"  # Ollama's parameters are text already: text where only a number belongs
    for (method, path), handler in routes_for(kind, lie).items():
        fake_server.route(method, path, handler)
    assert window_of(run_turn(make_session(fake_server, root), "hi")) == DEFAULT_CONTEXT_WINDOW


def test_a_window_larger_than_the_model_was_trained_for_is_cut_down_to_it(fake_server: FakeLLMServer,
                                                                        root: Path) -> None:
    fake_server.route("POST", "/api/show", ollama_show("num_ctx 65536", trained=8192))
    assert window_of(run_turn(make_session(fake_server, root), "hi")) == 8192


def test_a_silent_or_slow_server_gives_the_default(fake_server: FakeLLMServer, root: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capabilities, "PROBE_TIMEOUT", 0.5)  # the probe's own limit, shorter for the test
    fake_server.route("GET", "/props", lambda request: reply.json_body({}, wait_for="never"))
    try:
        events = run_turn(make_session(fake_server, root), "hi")
    finally:
        fake_server.release("never")
    assert window_of(events) == DEFAULT_CONTEXT_WINDOW
    assert len(fake_server.chat_requests) == 1  # the turn went on, answered


def test_agent_context_window_overrides_the_server_and_shortening_follows_the_server(
        fake_server: FakeLLMServer, root: Path) -> None:
    fake_server.route("GET", "/props", llama_cpp_props(8192))
    assert window_of(run_turn(make_session(fake_server, root, context_window=4000), "hi")) == 4000
    # With the server's small window, a long history is shortened before the request (the default would not).
    session = make_session(fake_server, root)
    for number in range(12):
        session.conversation.add_user(f"question {number} " + "words " * 600)
        session.conversation.add_assistant("an answer")
    events = run_turn(session, "and now?")
    assert any(isinstance(e, Notice) and "shortened to fit" in e.text for e in events)
    assert len(fake_server.chat_requests[-1].json["messages"]) < 26


def test_show_config_says_where_the_window_comes_from(fake_server: FakeLLMServer, root: Path,
                                                      clean_env: dict[str, str]) -> None:
    env = clean_env | {"HOME": str(root), "AUTO_CODER_BASE_URL": fake_server.base_url,
                       "AUTO_CODER_MODEL": "fake-model"}
    before = subprocess.run(["auto-coder", "--show-config"], env=env, cwd=root, capture_output=True, text=True,
                            timeout=60)
    assert "agent.context_window = None  (default = as the server reports, else 32768)" in before.stdout
    assert "not asked yet" in before.stdout
    fake_server.route("GET", "/props", llama_cpp_props(8192))
    fake_server.enqueue(reply.text("Hello."))
    assert subprocess.run(["auto-coder", "hi"], env=env, cwd=root, capture_output=True, timeout=60).returncode == 0
    after = subprocess.run(["auto-coder", "--show-config"], env=env, cwd=root, capture_output=True, text=True,
                           timeout=60)
    assert "context window in use: 8192 tokens (llama.cpp /props n_ctx" in after.stdout
    (root / ".auto-coder.yaml").write_text("agent:\n  context_window: 4000\n")
    told = subprocess.run(["auto-coder", "--show-config"], env=env, cwd=root, capture_output=True, text=True,
                          timeout=60)
    assert "agent.context_window = 4000" in told.stdout and "context window in use: 4000 tokens" in told.stdout


def no_tools_props(request: RecordedRequest) -> Any:
    return reply.json_body({"chat_template_caps": {"supports_tools": False, "supports_tool_calls": False}})


def test_the_no_native_tools_notice_is_one_line_said_once_per_server_and_model(
        fake_server: FakeLLMServer, root: Path, clean_env: dict[str, str]) -> None:
    fake_server.route("GET", "/props", no_tools_props)
    env = clean_env | {"HOME": str(root), "AUTO_CODER_BASE_URL": fake_server.base_url,
                       "AUTO_CODER_MODEL": "fake-model"}
    fake_server.enqueue(reply.prompted_answer("First."), reply.prompted_answer("Second."),
                        reply.prompted_answer("Other model."))
    first = subprocess.run(["auto-coder", "hi"], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    [notice] = [line for line in first.stderr.splitlines() if "no native tool calling" in line]
    assert notice.startswith("Model fake-model: llama.cpp /props says it has no native tool calling;")
    assert first.stdout == "First.\n"
    second = subprocess.run(["auto-coder", "hi"], env=env, cwd=root, capture_output=True, text=True, timeout=60)
    assert second.stdout == "Second.\n" and "tool calling" not in second.stderr  # said already
    other = subprocess.run(["auto-coder", "hi", "-m", "other-model"], env=env, cwd=root, capture_output=True,
                           text=True, timeout=60)
    assert "Model other-model: llama.cpp /props says" in other.stderr  # another model: news again
