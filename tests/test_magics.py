"""%%autocoder in real kernels (jupyter_client and nbclient) against the project's test server."""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hostile
import nbformat
import pytest
from jupyter_client import BlockingKernelClient, KernelManager
from nbclient import NotebookClient

from auto_coder_nb.approvals import question
from auto_coder_nb.testing.server import FakeLLMServer, reply

SECRET = "sk-test-secret-never-shown"


def kernel_env(server: FakeLLMServer, home: Path) -> dict[str, str]:
    """The test process's environment, pointed at the test server."""
    env = dict(os.environ)  # conftest removed the machine's own settings
    env.update(HOME=str(home), AUTO_CODER_BASE_URL=server.base_url, AUTO_CODER_MODEL="fake-model",
               AUTO_CODER_API_KEY=SECRET, IPYTHONDIR=str(home / ".ipython"))
    return env


@dataclass
class Execution:
    messages: list[dict[str, Any]] = field(default_factory=list)
    reply: dict[str, Any] = field(default_factory=dict)

    def of_type(self, *kinds: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m["msg_type"] in kinds]

    @property
    def stdout(self) -> str:
        return "".join(m["content"]["text"] for m in self.of_type("stream") if m["content"]["name"] == "stdout")

    @property
    def shown_text(self) -> str:
        """Everything the cell showed as text: streams and the text/plain of displays."""
        parts = [self.stdout]
        for m in self.of_type("display_data", "update_display_data", "execute_result"):
            parts.append(m["content"]["data"].get("text/plain", ""))
        return "\n".join(parts)

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return self.reply["content"].get("payload", [])


class Kernel:
    def __init__(self, env: dict[str, str], cwd: Path, extra_arguments: list[str] | None = None) -> None:
        self.cwd = cwd
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(env=env, cwd=str(cwd), extra_arguments=extra_arguments or [])
        self.client: BlockingKernelClient = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def execute(self, code: str, *, answers: list[str] | None = None, interrupt_when: str | None = None,
                timeout: float = 60) -> Execution:
        """Run `code`; answer input() requests from `answers` (allow_stdin only then); optionally interrupt
        the kernel once a display or stream containing `interrupt_when` arrived."""
        client = self.client
        msg_id = client.execute(code, allow_stdin=answers is not None)
        run = Execution()
        pending = list(answers or [])
        idle = False
        while not idle:
            if answers is not None:
                try:
                    request = client.get_stdin_msg(timeout=0.05)
                    if request["msg_type"] == "input_request":
                        run.messages.append(request)
                        client.input(pending.pop(0))
                except queue.Empty:
                    pass
            try:
                message = client.get_iopub_msg(timeout=0.05 if answers is not None else timeout)
            except queue.Empty:
                continue
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            run.messages.append(message)
            if interrupt_when and interrupt_when in str(message["content"]):
                interrupt_when = None
                self.manager.interrupt_kernel()
            idle = message["msg_type"] == "status" and message["content"]["execution_state"] == "idle"
        # Skip stale replies: under load wait_for_ready() sends several kernel_info requests, and their
        # extra replies would otherwise be taken for this execution's.
        run.reply = client.get_shell_msg(timeout=timeout)
        while run.reply["parent_header"].get("msg_id") != msg_id:
            run.reply = client.get_shell_msg(timeout=timeout)
        assert not pending, f"input() was asked fewer times than expected: {pending} left"
        return run

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def kernel(server: FakeLLMServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    home = tmp_path_factory.mktemp("home")
    workdir = tmp_path_factory.mktemp("notebook-dir")
    running = Kernel(kernel_env(server, home), workdir)
    loaded = running.execute("%load_ext auto_coder_nb")
    assert loaded.reply["content"]["status"] == "ok"
    yield running
    running.close()


@pytest.fixture(autouse=True)
def fresh_server(server: FakeLLMServer) -> None:
    server.clear()


def last_user_message(server: FakeLLMServer) -> str:
    messages = server.chat_requests[-1].json["messages"]
    return [m for m in messages if m["role"] == "user"][-1]["content"]


def test_answer_streams_as_display_updates_with_provenance_and_no_secret(kernel: Kernel,
                                                                         server: FakeLLMServer) -> None:
    answer = "Streaming **works**: one, two, three, four, five, six, seven, eight."
    server.enqueue(reply.text(answer, chunks=8, delay=0.25))
    run = kernel.execute("%autocoder say something")
    first = run.of_type("display_data")[0]
    display_id = first["content"]["transient"]["display_id"]
    updates = [m for m in run.of_type("update_display_data") if m["content"]["transient"]["display_id"] == display_id]
    assert updates, "the answer was not updated in place"
    assert len(first["content"]["data"]["text/plain"]) < len(answer)
    assert updates[-1]["content"]["data"]["text/plain"] == answer
    assert "<strong>works</strong>" in updates[-1]["content"]["data"]["text/html"]
    assert all("text/markdown" not in m["content"]["data"] for m in run.of_type("display_data",
                                                                               "update_display_data"))
    provenance = updates[-1]["content"]["metadata"]["auto_coder_nb"]
    assert provenance["model"] == "fake-model"
    assert provenance["correlation_id"] == server.chat_requests[-1].headers["x-correlation-id"]
    assert SECRET not in str(run.messages)
    # What was sent is shown (collapsed) with the answer.
    assert "say something" in run.of_type("display_data")[-1]["content"]["data"]["text/html"]


def test_answers_errors_and_notices_from_the_model_or_server_show_as_text(kernel: Kernel,
                                                                          server: FakeLLMServer) -> None:
    """Issue 24 item 1: the answer went out as text/markdown, whose raw HTML JupyterLab renders (and runs: a
    notebook's own outputs are trusted). Every HTML output of a turn is now built from escaped text; the browser
    test (tests/test_hostile_output_browser.py) checks what the page does with it."""
    server.enqueue(reply.text(hostile.ANSWER, chunks=7), reply.error(400, hostile.ERROR_BODY))
    outputs = [*kernel.execute("%autocoder --context none show me").messages,
               *kernel.execute("%autocoder --context none again").messages]
    shown = [m["content"]["data"] for m in outputs if m["msg_type"] in ("display_data", "update_display_data")]
    assert all("text/markdown" not in data for data in shown)
    html_shown = "".join(data.get("text/html", "") for data in shown)
    assert "&lt;img src=x onerror=" in html_shown and "&lt;script&gt;" in html_shown
    # The server's refusal fails the cell with one line of plain text (the traceback frontends show as text).
    failures = [line for m in outputs if m["msg_type"] == "error" for line in m["content"]["traceback"]]
    assert any("Bad request: <img" in line for line in failures), failures
    hostile.assert_inert_html(html_shown)


def test_braces_in_code_stay_and_names_are_interpolated(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("rows = [1, 2, 3]\nconfig = {'depth': 4}")
    cell = ('%%autocoder --context none\n'
            'rows={rows} depth={config["depth"]} n={len(rows)}\n'
            'def f(): return {"a": 1}\n'
            'print(f"{missing} {rows!r}")\n')
    run = kernel.execute(cell)
    assert run.reply["content"]["status"] == "ok"
    assert last_user_message(server) == (
        'rows=[1, 2, 3] depth=4 n={len(rows)}\n'
        'def f(): return {"a": 1}\n'
        'print(f"{missing} {rows!r}")\n'
    )


def test_no_interpolate_sends_braces_as_written(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("rows = [1, 2, 3]")
    kernel.execute("%autocoder --no-interpolate --context none what is {rows}")
    assert last_user_message(server) == "what is {rows}"


def test_prompt_ending_in_question_mark_reaches_the_magic(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("this = 'x'")
    run = kernel.execute("%autocoder --context none why is this?")
    assert run.reply["content"]["status"] == "ok"
    assert last_user_message(server) == "why is this?"
    helped = kernel.execute("%autocoder?")
    help_text = str(helped.payloads) + helped.shown_text
    assert "--show-context" in help_text and "--approval-mode" in help_text and "--tool-calling" in help_text


def test_show_context_is_exactly_what_is_sent(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("class Table:\n"
                   "    columns = ['a', 'b']\n"
                   "    dtypes = {'a': 'int64', 'b': 'object'}\n"
                   "    shape = (2, 2)\n"
                   "    def head(self, n):\n"
                   "        return 'a b\\n1 x\\n2 y'\n"
                   "table = Table()")
    shown = kernel.execute("%autocoder --show-context summarize {table.shape}")
    assert not server.chat_requests, "--show-context must send nothing"
    assert "columns: a (int64), b (object)" in shown.stdout
    kernel.execute("%autocoder summarize {table.shape}")
    assert last_user_message(server) == shown.stdout.rstrip("\n")
    assert last_user_message(server).startswith("summarize (2, 2)\n\n<kernel-context>")


def test_fix_sends_the_error_and_inserts_the_fixed_cell(kernel: Kernel, server: FakeLLMServer) -> None:
    failed = kernel.execute("def ratio(a, b):\n    return a / b\nratio(1, 0)")
    assert failed.reply["content"]["status"] == "error"
    server.enqueue(reply.text("Division by zero.\n\n```python\ndef ratio(a, b):\n    return a / b if b else 0.0\n"
                              "ratio(1, 0)\n```\n"))
    run = kernel.execute("%autocoder --fix --insert", answers=[])  # a frontend with stdin, like JupyterLab
    sent = last_user_message(server)
    assert "ZeroDivisionError" in sent and "def ratio(a, b):" in sent and "ratio(1, 0)" in sent
    next_inputs = [p for p in run.payloads if p["source"] == "set_next_input"]
    assert next_inputs == [{"source": "set_next_input", "text": "def ratio(a, b):\n    return a / b if b else 0.0\n"
                            "ratio(1, 0)", "replace": False}]


def test_insert_joins_several_code_blocks_into_one_new_cell(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.text("First:\n```python\na = 1\n```\nShell, not inserted:\n```bash\nls\n```\n"
                              "Then:\n```\nb = a + 1\n```\n"))
    run = kernel.execute("%autocoder --insert --context none two steps", answers=[])  # a frontend with stdin
    next_inputs = [p for p in run.payloads if p["source"] == "set_next_input"]
    assert len(next_inputs) == 1
    assert next_inputs[0]["text"] == "a = 1\n\nb = a + 1"
    assert "Inserted 2 code block(s)" in run.stdout


def test_insert_without_a_frontend_says_so_and_shows_the_code(kernel: Kernel, server: FakeLLMServer) -> None:
    # No stdin, as under nbclient or papermill: nothing applies a set_next_input payload.
    server.enqueue(reply.text("Here:\n```python\nc = 3\n```\n"))
    run = kernel.execute("%autocoder --insert --context none one step")
    assert "Inserted" not in run.stdout
    assert "No frontend takes new cells" in run.stdout and run.stdout.rstrip().endswith("c = 3")
    assert [p for p in run.payloads if p["source"] == "set_next_input"] == []


def test_insert_after_a_failed_request_shows_only_the_error(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.error(401, "invalid api key"))
    run = kernel.execute("%autocoder --insert --context none one step", answers=[])
    # The cell fails with the one line (no traceback), so Run All stops here; the error is not shown twice.
    assert run.reply["content"]["status"] == "error"
    [error] = run.of_type("error")
    [line] = error["content"]["traceback"]
    assert line.startswith("autocoder: ") and "authentication failed" in line and SECRET not in line
    assert "authentication failed" not in run.shown_text
    assert "no Python code block" not in run.stdout and "Inserted" not in run.stdout
    server.enqueue(reply.text("Just words."))
    answered = kernel.execute("%autocoder --insert --context none another step", answers=[])
    assert "The answer has no Python code block to insert." in answered.stdout


def test_run_code_approved_through_stdin(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("run_code", {"code": "made_by_agent = 6 * 7\nprint('hello from agent')"}),
                   reply.text("Done."))
    run = kernel.execute("%autocoder --context none make a variable", answers=["y"])
    prompts = [m for m in run.messages if m["msg_type"] == "input_request"]
    assert len(prompts) == 1 and "Allow run_code?" in prompts[0]["content"]["prompt"]
    assert "made_by_agent = 6 * 7" in run.shown_text  # the code was shown before the question
    tool_result = server.chat_requests[-1].json["messages"][-1]
    assert tool_result["role"] == "tool" and "hello from agent" in tool_result["content"]
    assert "hello from agent" in run.stdout  # the user sees run_code's output too
    check = kernel.execute("print(made_by_agent)")
    assert check.stdout == "42\n"


def test_run_code_denied_through_stdin(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("run_code", {"code": "denied_variable = 1"}), reply.text("Understood."))
    kernel.execute("%autocoder --context none try it", answers=["n"])
    tool_result = server.chat_requests[-1].json["messages"][-1]
    assert tool_result["role"] == "tool" and "denied" in tool_result["content"]
    check = kernel.execute("print('denied_variable' in globals())")
    assert check.stdout == "False\n"


def test_a_typo_asks_again_and_a_no_takes_a_reason(kernel: Kernel, server: FakeLLMServer) -> None:
    """Issue 22 item 13: the input box counted a typo as no and took no reason."""
    server.enqueue(reply.tool_call("run_code", {"code": "typo_variable = 1"}), reply.text("Understood."))
    run = kernel.execute("%autocoder --context none try it", answers=["yse", "n use the other dataset"])
    prompts = [m["content"]["prompt"] for m in run.messages if m["msg_type"] == "input_request"]
    assert prompts == [question("run_code", "every run_code call")] * 2
    assert "Please answer y (yes), n (no" in run.stdout
    tool_result = server.chat_requests[-1].json["messages"][-1]
    assert tool_result["content"] == "The user denied this run_code call. Reason: use the other dataset"
    assert kernel.execute("print('typo_variable' in globals())").stdout == "False\n"


def test_approval_refused_without_stdin(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("run_code", {"code": "refused_variable = 1"}), reply.text("I could not."))
    run = kernel.execute("%autocoder --context none try it")  # allow_stdin=False, like nbclient
    assert run.reply["content"]["status"] == "ok"
    tool_result = server.chat_requests[-1].json["messages"][-1]
    assert "no stdin" in tool_result["content"]
    assert "--approval-mode" in run.shown_text
    assert kernel.execute("print('refused_variable' in globals())").stdout == "False\n"


def test_interrupt_mid_stream_stops_and_the_next_magic_works(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.text("Partial answer that never finishes", chunks=6, delay=0.05,
                              wait_for="interrupt-test", wait_after=2))
    run = kernel.execute("%autocoder --context none long story", interrupt_when="Partia")
    server.release("interrupt-test")
    assert run.reply["content"]["status"] == "ok"
    assert "stopped" in run.shown_text
    server.enqueue(reply.text("Fine again."))
    after = kernel.execute("%autocoder --context none still there")
    assert after.reply["content"]["status"] == "ok"
    assert "Fine again." in after.shown_text
    history = server.chat_requests[-1].json["messages"]
    roles = [m["role"] for m in history[-3:]]
    assert roles == ["user", "assistant", "user"], "the interrupted turn left the history alternating"
    assert "[interrupted]" in history[-2]["content"]


def test_interrupt_while_run_code_runs_stops_the_code_and_the_turn(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("run_code", {"code": "import time\nprint('sleeping')\ntime.sleep(60)"}))
    run = kernel.execute("%autocoder --approval-mode full-auto --context none sleep", interrupt_when="sleeping")
    assert run.reply["content"]["status"] == "ok"
    assert "stopped" in run.shown_text
    server.enqueue(reply.text("Awake."))
    after = kernel.execute("%autocoder --context none still there")
    assert "Awake." in after.shown_text
    history = server.chat_requests[-1].json["messages"]
    assert history[-2]["role"] == "tool" and "interrupted" in history[-2]["content"]


def test_conversation_shared_across_cells_and_reset_gives_a_new_id(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("%autocoder --context none first-question")
    kernel.execute("%autocoder --context none second-question")
    first_id = server.chat_requests[0].headers["x-correlation-id"]
    assert server.chat_requests[1].headers["x-correlation-id"] == first_id
    assert "first-question" in str(server.chat_requests[1].json["messages"])  # the history came along
    shown = kernel.execute("%autocoder --id")
    assert first_id in shown.stdout
    reset = kernel.execute("%autocoder --reset")
    new_id = re.search(r"correlation id (\S+)", reset.stdout).group(1)  # type: ignore[union-attr]
    assert new_id != first_id
    kernel.execute("%autocoder --context none third-question")
    assert server.chat_requests[-1].headers["x-correlation-id"] == new_id
    assert "first-question" not in str(server.chat_requests[-1].json["messages"])


def test_panel_and_magics_share_one_session(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("%autocoder --context none hello")
    run = kernel.execute("from auto_coder_nb.magics import get_session\n"
                         "print(get_session().conversation.correlation_id)")
    assert run.stdout.strip() == server.chat_requests[-1].headers["x-correlation-id"]


def test_load_does_not_import_heavy_modules(server: FakeLLMServer, tmp_path: Path) -> None:
    running = Kernel(kernel_env(server, tmp_path), tmp_path)
    try:
        run = running.execute("import sys\n%load_ext auto_coder_nb\n"
                              "print(sorted(m for m in ('httpx', 'ipywidgets', 'nbformat') if m in sys.modules))")
        assert run.stdout == "[]\n"
        running.execute("%unload_ext auto_coder_nb")
        unloaded = running.execute("%autocoder hello")
        assert unloaded.reply["content"]["status"] == "error"  # the magic is gone
    finally:
        running.close()


def test_notebook_executed_with_nbclient_refuses_approvals_and_checks_the_workspace_root(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in kernel_env(server, tmp_path).items():
        monkeypatch.setenv(key, value)
    server.enqueue(reply.tool_call("write_file", {"path": "out.txt", "content": "x"}), reply.text("Refused, ok."))
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext auto_coder_nb"),
        nbformat.v4.new_code_cell("%%autocoder --context none\nwrite a file"),
        nbformat.v4.new_code_cell("from auto_coder_nb.magics import get_session\nprint(get_session().workspace.root)"),
    ])
    (tmp_path / "nb").mkdir()
    NotebookClient(notebook, timeout=60, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path / "nb")}}).execute()
    outputs = notebook.cells[1].outputs
    shown = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "no stdin" in shown and "Refused, ok." in shown
    assert not (tmp_path / "nb" / "out.txt").exists()
    assert notebook.cells[2].outputs[0]["text"].strip() == str((tmp_path / "nb").resolve())


def test_model_option_applies_to_one_request(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("%autocoder -m fake-model-large --context none hi")
    kernel.execute("%autocoder --context none hi again")
    assert [r.json["model"] for r in server.chat_requests] == ["fake-model-large", "fake-model"]


def test_a_file_written_by_the_agent_is_undone(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("write_file", {"path": "made.txt", "content": "made by the agent\n"}),
                   reply.text("Written."))
    run = kernel.execute("%autocoder --approval-mode auto-edit --context none write made.txt")
    assert "write_file made.txt" in run.shown_text
    assert (kernel.cwd / "made.txt").read_text() == "made by the agent\n"
    undone = kernel.execute("%autocoder --undo")
    assert "made.txt" in undone.stdout
    assert not (kernel.cwd / "made.txt").exists()


def test_doctor_runs_from_the_magic_without_secrets(kernel: Kernel, server: FakeLLMServer) -> None:
    run = kernel.execute("%autocoder --doctor")
    assert server.base_url in run.stdout
    assert SECRET not in run.stdout


def test_a_kernel_interrupt_ends_the_doctor_at_once_with_one_line(kernel: Kernel, server: FakeLLMServer) -> None:
    with FakeLLMServer() as held:
        held.route("GET", "/props", lambda request: reply.json_body({}, wait_for="props"))
        try:
            run = kernel.execute(f"import os; os.environ['AUTO_CODER_BASE_URL'] = {held.base_url!r}\n"
                                 "%autocoder --doctor", interrupt_when="waiting for the server's model details")
        finally:
            held.release("props")
        kernel.execute(f"os.environ['AUTO_CODER_BASE_URL'] = {server.base_url!r}")
    assert run.reply["content"]["status"] == "error"  # the cell failed: Run All stops here
    [error] = run.of_type("error")
    assert error["content"]["traceback"] == ["autocoder: --doctor interrupted"]
    assert error["content"]["ename"] == "CellInterrupted"
    assert "waiting for the server's model details" in run.stdout
    assert kernel.execute("1 + 1").reply["content"]["status"] == "ok"  # the kernel is fine


def test_bad_option_is_one_readable_line(kernel: Kernel) -> None:
    run = kernel.execute("%autocoder --context everything hi")
    assert run.reply["content"]["status"] == "ok"
    assert run.stdout.startswith("autocoder: ") and "invalid choice" in run.stdout


def test_open_notebook_is_the_root_and_changes_only_through_new_cells(server: FakeLLMServer, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    notebook_path = project / "analysis.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), notebook_path)
    original = notebook_path.read_bytes()
    env = {**kernel_env(server, tmp_path), "JPY_SESSION_NAME": str(notebook_path)}
    # Loaded from configuration (c.InteractiveShellApp.extensions), not %load_ext.
    running = Kernel(env, tmp_path, extra_arguments=["--InteractiveShellApp.extensions=auto_coder_nb"])
    try:
        root = running.execute("from auto_coder_nb.magics import get_session\nprint(get_session().workspace.root)")
        assert root.stdout.strip() == str(project.resolve())
        server.enqueue(
            reply.tool_call("edit_notebook", {"path": "analysis.ipynb", "action": "replace", "index": 0,
                                              "source": "x = 2"}),
            reply.tool_call("write_file", {"path": "analysis.ipynb", "content": "{}"}),
            reply.tool_call("edit_file", {"path": "analysis.ipynb", "old_string": "x = 1", "new_string": "x = 2"}),
            reply.tool_call("edit_notebook", {"path": "analysis.ipynb", "action": "insert", "source": "x = 2"}),
            reply.text("Added a cell."),
        )
        run = running.execute("%autocoder --approval-mode full-auto --context none set x to 2")
        results = [m["content"] for m in server.chat_requests[-1].json["messages"] if m["role"] == "tool"]
        assert all("open in the user's editor" in result for result in results[:3]), results
        assert "below the current cell" in results[3]
        assert [p for p in run.payloads if p["source"] == "set_next_input"] == [
            {"source": "set_next_input", "text": "x = 2", "replace": False}]
        assert notebook_path.read_bytes() == original
        # From the chat panel no cell is executing: the model is told when the cell will really appear.
        server.enqueue(
            reply.tool_call("edit_notebook", {"path": "analysis.ipynb", "action": "insert", "source": "x = 3"}),
            reply.text("It will appear."),
        )
        running.execute("from auto_coder_nb import ChatPanel\npanel = ChatPanel()\n"
                        "get_session().policy.mode = 'full-auto'\nawait panel.ask('set x to 3')")
        told = server.chat_requests[-1].json["messages"][-1]["content"]
        assert told.startswith("The new cell will appear below the next cell the user runs")
        other = tmp_path / "other"
        other.mkdir()
        moved = running.execute(f"%autocoder --working-dir {other}")
        assert f"Workspace root: {other.resolve()}" in moved.stdout
        again = running.execute("print(get_session().workspace.root)")
        assert again.stdout.strip() == str(other.resolve())
    finally:
        running.close()


def test_chat_magic_shows_the_panel(kernel: Kernel) -> None:
    run = kernel.execute("%autocoder_chat")
    assert any("application/vnd.jupyter.widget-view+json" in m["content"]["data"]
               for m in run.of_type("execute_result", "display_data"))


def test_terminal_ipython_streams_plain_text(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(reply.text("Plain **text** in the terminal.", chunks=4))
    script = tmp_path / "ask.ipy"
    script.write_text("%load_ext auto_coder_nb\n%autocoder --context none hello from the terminal\n")
    done = subprocess.run([sys.executable, "-m", "IPython", "--quick", "--no-banner", "--colors=NoColor", str(script)],
                          env=kernel_env(server, tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Plain **text** in the terminal." in done.stdout
    assert "<details>" not in done.stdout
    assert last_user_message(server) == "hello from the terminal"


def test_always_answer_allows_the_rest_of_the_session_until_reset(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("run_code", {"code": "first_run = 1"}),
                   reply.tool_call("run_code", {"code": "second_run = 2"}), reply.text("Both ran."))
    run = kernel.execute("%autocoder --context none run twice", answers=["a"])
    assert len([m for m in run.messages if m["msg_type"] == "input_request"]) == 1
    assert kernel.execute("print(first_run + second_run)").stdout == "3\n"
    kernel.execute("%autocoder --reset")
    server.enqueue(reply.tool_call("run_code", {"code": "third_run = 3"}), reply.text("Asked again."))
    asked = kernel.execute("%autocoder --context none once more", answers=["n"])
    assert len([m for m in asked.messages if m["msg_type"] == "input_request"]) == 1


def test_changed_settings_apply_to_the_next_magic_and_keep_the_conversation(kernel: Kernel,
                                                                           server: FakeLLMServer) -> None:
    kernel.execute("%autocoder --context none first question")
    conversation_id = server.chat_requests[-1].headers["x-correlation-id"]
    with FakeLLMServer() as other:
        moved = kernel.execute(f"import os; os.environ['AUTO_CODER_BASE_URL'] = {other.base_url!r}\n"
                               "%autocoder --context none second question")
        assert f"Configuration changed: now fake-model at {other.base_url}" in moved.stdout
        assert len(other.chat_requests) == 1
        sent = other.chat_requests[0]
        assert sent.headers["x-correlation-id"] == conversation_id
        assert [m["content"] for m in sent.json["messages"] if m["role"] == "user"][-2:] == [
            "first question", "second question"]
        doctor = kernel.execute("%autocoder --doctor")
        assert other.base_url in doctor.stdout
    back = kernel.execute(f"os.environ['AUTO_CODER_BASE_URL'] = {server.base_url!r}\n"
                          "%autocoder --context none third question")
    assert "Configuration changed" in back.stdout
    assert last_user_message(server) == "third question"


def test_insert_takes_python_blocks_and_unlabelled_ones_only_when_they_are_python() -> None:
    from auto_coder_nb.magics import code_blocks

    answer = ("The error:\n```\nTraceback (most recent call last):\nZeroDivisionError: division by zero\n```\n"
              "Fixed:\n```\n%time total = 1 + 1\n```\n```python\nprint(total)\n```\n```bash\nls\n```\n")
    assert code_blocks(answer) == ["%time total = 1 + 1\n", "print(total)\n"]


def test_the_panel_also_follows_changed_settings(kernel: Kernel, server: FakeLLMServer) -> None:
    with FakeLLMServer() as other:
        other.enqueue(reply.text("from the other server"))
        run = kernel.execute("import os\nfrom auto_coder_nb import ChatPanel\npanel = ChatPanel()\n"
                             f"os.environ['AUTO_CODER_BASE_URL'] = {other.base_url!r}\n"
                             "print(await panel.ask('hello panel'))\n"
                             "print([r['text'] for r in panel.transcript])")
        assert "from the other server" in run.stdout
        assert "Configuration changed" in run.stdout
        assert len(other.chat_requests) == 1
    kernel.execute(f"os.environ['AUTO_CODER_BASE_URL'] = {server.base_url!r}\n%autocoder --context none back")
    assert last_user_message(server) == "back"


def test_the_panels_run_button_uses_run_codes_executor(kernel: Kernel, server: FakeLLMServer) -> None:
    """Issue 24 item 9: Run ran the block on its own path, where the code saw the API key in os.environ and its
    output showed it. Now it runs through the run_code tool: no key in the environment, output scrubbed."""
    code = ("import os\nprint('env:', os.environ.get('AUTO_CODER_API_KEY'))\n"
            f"print('printed:', {SECRET[:8]!r} + {SECRET[8:]!r})\nran_from_panel = True")
    server.enqueue(reply.text(f"Run this:\n\n```python\n{code}\n```\n"))
    run = kernel.execute(
        "import asyncio\nfrom auto_coder_nb import ChatPanel\n"
        "def find(w, css):\n"
        "    return ([w] if css in w._dom_classes else []) + [f for c in getattr(w, 'children', ()) "
        "for f in find(c, css)]\n"
        "panel = ChatPanel()\nawait panel.ask('show code')\n"
        "[block] = find(panel.widget, 'autocoder-code')\n"
        "find(block, 'autocoder-run')[0].click()\n"
        "for _ in range(3000):\n"
        "    await asyncio.sleep(0.01)\n"
        "    if find(block, 'autocoder-approve'):\n"
        "        break\n"
        "find(block, 'autocoder-approve')[0].click()\n"
        "for _ in range(3000):\n"
        "    await asyncio.sleep(0.01)\n"
        "    if 'printed' in find(block, 'autocoder-summary')[0].value:\n"
        "        break\n"
        "print(find(block, 'autocoder-summary')[0].value)\nprint(ran_from_panel)")
    assert "env: None" in run.stdout and "printed: &lt;hidden&gt;" in run.stdout, run.stdout
    assert SECRET not in json.dumps(run.messages, default=str)
    assert run.stdout.rstrip().endswith("True")
    assert kernel.execute("import os; print(os.environ['AUTO_CODER_API_KEY'] == " + repr(SECRET) + ")").stdout \
        == "True\n"  # given back after the call


def test_end_of_input_at_an_approval_is_a_refusal_and_the_session_stays_usable(kernel: Kernel,
                                                                               server: FakeLLMServer) -> None:
    # Ctrl-D at input() in terminal IPython; ipykernel raises EOFError for the same "\x04" answer.
    server.enqueue(reply.tool_call("run_code", {"code": "eof_variable = 1"}), reply.text("Not run, then."))
    run = kernel.execute("%autocoder --context none try it", answers=["\x04"])
    assert run.reply["content"]["status"] == "ok", run.reply["content"]
    tool_result = server.chat_requests[-1].json["messages"][-1]
    assert tool_result["role"] == "tool" and "denied" in tool_result["content"]
    assert kernel.execute("print('eof_variable' in globals())").stdout == "False\n"
    server.enqueue(reply.text("Still here."))
    after = kernel.execute("%autocoder --context none are you free?")
    assert "Still here." in after.shown_text and "still running" not in after.shown_text


def test_a_magic_refused_as_busy_does_not_disturb_the_running_turn(kernel: Kernel, server: FakeLLMServer) -> None:
    # The running turn's run_code starts a second request (with other options); it is refused as busy, and the
    # first turn's next run_code still runs, with the first turn's model.
    nested = "%autocoder --model other-model --approval-mode read-only --context none nested question"
    server.enqueue(reply.tool_call("run_code", {"code": nested}),
                   reply.tool_call("run_code", {"code": "print(6 * 7)"}), reply.text("Both done."))
    before = len(server.chat_requests)
    run = kernel.execute("%autocoder --approval-mode full-auto --context none go")
    assert run.reply["content"]["status"] == "ok"
    requests = server.chat_requests[before:]
    assert len(requests) == 3 and {r.json["model"] for r in requests} == {"fake-model"}
    assert "still running" in run.shown_text  # the nested request's own output says it was refused
    last_result = [m["content"] for m in requests[-1].json["messages"] if m["role"] == "tool"][-1]
    assert "42" in last_result and "Error" not in last_result
    assert "Both done." in run.shown_text


def test_per_request_options_apply_to_that_request_only(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.text("From the other model."))
    kernel.execute("%autocoder --model other-model --context none which model?")
    assert server.chat_requests[-1].json["model"] == "other-model"
    state = kernel.execute("from auto_coder_nb.magics import get_session\ns = get_session()\n"
                           "print(s.provider.model, s.policy.mode)")
    assert state.stdout.split() == ["fake-model", "ask"]
    kernel.execute("%autocoder --context none and now?")
    assert server.chat_requests[-1].json["model"] == "fake-model"
    server.enqueue(reply.prompted_answer("Prompted."))
    run = kernel.execute("%autocoder --tool-calling prompted --context none and prompted?")
    assert "Prompted." in run.shown_text
    assert "response_format" in server.chat_requests[-1].json and "tools" not in server.chat_requests[-1].json
    kernel.execute("%autocoder --context none and native?")
    assert "tools" in server.chat_requests[-1].json


def test_approval_preview_shows_control_characters_escaped(kernel: Kernel, server: FakeLLMServer) -> None:
    command = "echo safe\r\x1b[2Krm -rf data #\u202e"
    server.enqueue(reply.tool_call("run_command", {"command": command}), reply.text("Refused."))
    run = kernel.execute("%autocoder --context none clean up")  # no stdin: shown, then refused
    assert "echo safe\\r\\x1b[2Krm -rf data #\\u202e" in run.shown_text
    assert "\x1b" not in run.shown_text and "\u202e" not in run.shown_text and "\r" not in run.shown_text


def test_rewind_names_the_variables_later_turns_changed(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("%autocoder --reset")
    kernel.execute("kept = 'from before'")
    server.enqueue(reply.tool_call("run_code", {"code": "a = 1"}), reply.text("Set a."))
    kernel.execute("%autocoder --approval-mode full-auto --context none set a")
    kernel.execute("import os")  # the user's own cell between the turns
    server.enqueue(reply.tool_call("run_code", {"code": "b = 2\na = 5\nkept.upper()"}), reply.text("Set b."))
    kernel.execute("%autocoder --approval-mode full-auto --context none set b")
    server.enqueue(reply.text("Nothing to do."))
    kernel.execute("%autocoder --context none anything else?")

    refused = kernel.execute("%autocoder --rewind 7")
    assert "autocoder: There is no turn 7: this conversation has 3 turn(s) (1: set a; 2: set b; 3: anything else?)" \
        in refused.stdout
    rewound = kernel.execute("%autocoder --rewind 2")
    assert "Rewound to before turn 2 (set b)." in rewound.stdout
    assert "keep their current values: a, b." in rewound.stdout, rewound.stdout  # not `kept`, nor the module `os`
    assert kernel.execute("print(a, b)").stdout == "5 2\n", "the kernel's memory is not rewound"
    server.enqueue(reply.text("Again."))
    kernel.execute("%autocoder --context none once more")
    prompts = [m["content"] for m in server.chat_requests[-1].json["messages"] if m["role"] == "user"]
    assert prompts == ["set a", "once more"]
