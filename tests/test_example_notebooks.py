"""The example notebooks, executed top to bottom with nbclient against the test server, every output checked."""

from __future__ import annotations

import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from auto_coder_nb.testing.server import FakeLLMServer, reply

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """A test server the notebook's kernel talks to (nbclient starts kernels with this environment)."""
    (tmp_path / "home").mkdir()
    with FakeLLMServer() as fake:
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "home" / ".ipython"))
        monkeypatch.setenv("AUTO_CODER_BASE_URL", fake.base_url)
        monkeypatch.setenv("AUTO_CODER_MODEL", "fake-model")
        monkeypatch.setenv("AUTO_CODER_APPROVAL_MODE", "full-auto")  # nbclient has no stdin for approvals
        yield fake


def run_notebook(name: str, workdir: Path) -> Any:
    shutil.copytree(NOTEBOOKS, workdir, dirs_exist_ok=True)
    notebook = nbformat.read(workdir / name, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    return notebook


def cell_with(notebook: Any, start: str) -> Any:
    matches = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.startswith(start)]
    assert len(matches) == 1, f"expected one cell starting with {start!r}"
    return matches[0]


def stdout(cell: Any) -> str:
    return "".join(o.text for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")


def markdown(cell: Any) -> list[str]:
    """The answers' text (their Markdown, shown as escaped HTML: each output has both)."""
    return [o.data["text/plain"] for o in cell.outputs if o.output_type == "display_data"
            and 'class="autocoder-answer"' in o.data.get("text/html", "")]


def user_messages(request: Any) -> list[str]:
    return [m["content"] for m in request.json["messages"] if m["role"] == "user"]


def test_quickstart(server: FakeLLMServer, tmp_path: Path) -> None:
    palindrome = ("Here is a version that ignores case and spaces:\n\n```python\ndef is_palindrome(text):\n"
                  "    cleaned = text.replace(\" \", \"\").lower()\n    return cleaned == cleaned[::-1]\n```\n")
    fixed = ("`len([])` is 0, so the division fails. Return `None` for an empty list:\n\n```python\n"
             "def average(values):\n    return sum(values) / len(values) if values else None\n\naverage([])\n```\n")
    server.enqueue(
        reply.text(palindrome, chunks=12),
        reply.text('{"level": true, "python": false, "noon": true, "Step on no pets": true}', chunks=4),
        reply.text(fixed, chunks=6),
        reply.text("```python\nsum(is_palindrome(w) for w in words)\n```\n"),
        reply.tool_call("read_notebook", {"path": "quickstart.ipynb"}),
        reply.text("Ask, Use your variables, Fix an error, Insert code, This notebook, The conversation."),
        reply.text("An empty string reads the same both ways, so `is_palindrome(\"\")` is `True`."),
    )
    notebook = run_notebook("quickstart.ipynb", tmp_path / "work")
    requests = server.chat_requests
    assert len(requests) == 7

    assert cell_with(notebook, "%load_ext").outputs == []
    ask = cell_with(notebook, "%%autocoder\nWrite a Python function")
    assert markdown(ask)[0] == palindrome  # the streamed updates ended with the whole answer
    assert ask.outputs[0].metadata["auto_coder_nb"]["model"] == "fake-model"
    assert user_messages(requests[0])[0].startswith("Write a Python function `is_palindrome(text)`")

    shown = stdout(cell_with(notebook, "%autocoder --show-context"))
    sent = user_messages(requests[1])[-1]
    assert shown.rstrip("\n") == sent
    assert sent.startswith("Which of ['level', 'python', 'noon', 'Step on no pets'] are palindromes? "
                           'Answer as JSON like {"word": true}.\n\n<kernel-context>')
    assert "words: list len=4" in sent
    assert markdown(cell_with(notebook, "%autocoder Which of"))[0].startswith('{"level": true')

    failing = cell_with(notebook, "def average(values)")
    assert [o.ename for o in failing.outputs if o.output_type == "error"] == ["ZeroDivisionError"]
    fix = cell_with(notebook, "%autocoder --fix --insert")
    fix_request = user_messages(requests[2])[-1]
    assert "ZeroDivisionError: division by zero" in fix_request and "average([])" in fix_request
    assert markdown(fix)[0] == fixed
    # nbclient is no frontend: nothing would add the cell, so the code is shown instead.
    assert "No frontend takes new cells" in stdout(fix) and "return sum(values) / len(values) if values" in stdout(fix)

    inserted = stdout(cell_with(notebook, "%autocoder --insert Write a one-line"))
    assert "No frontend takes new cells" in inserted and "sum(is_palindrome(w) for w in words)" in inserted
    # No live server here (nbclient): the notebook is read as saved, its cells with their ids.
    read = requests[5].json["messages"][-1]
    assert read["role"] == "tool"
    assert read["content"].startswith("quickstart.ipynb: 19 cells (python3; as saved on disk)")
    assert "## This notebook" in read["content"] and "needs a live server" in read["content"]
    assert "This notebook" in markdown(cell_with(notebook, "%%autocoder\nRead this notebook"))[0]
    follow_up = requests[6]
    assert len(user_messages(follow_up)) == 6  # the whole conversation went along
    assert "is_palindrome(\"\")" in markdown(cell_with(notebook, "%autocoder And what"))[0]

    correlation_id = follow_up.headers["x-correlation-id"]
    assert {r.headers["x-correlation-id"] for r in requests} == {correlation_id}
    assert stdout(cell_with(notebook, "%autocoder --id")).strip() == f"Correlation id: {correlation_id}"
    reset = stdout(cell_with(notebook, "%autocoder --reset"))
    new_id = re.fullmatch(r"New conversation: correlation id (\S+)\n", reset)
    assert new_id is not None and new_id.group(1) != correlation_id


def test_data_example(server: FakeLLMServer, tmp_path: Path) -> None:
    code = ("from collections import defaultdict\n"
            "temps = defaultdict(list)\n"
            "for row in rows:\n"
            "    temps[row['country']].append(float(row['avg_temp_c']))\n"
            "averages = {country: round(sum(t) / len(t), 2) for country, t in temps.items()}\n"
            "averages")
    table = ("| country | average °C |\n|---|---|\n| Denmark | 8.85 |\n| Sweden | 7.75 |\n| Norway | 7.05 |\n"
             "| Finland | 5.4 |\n")
    server.enqueue(reply.tool_call("run_code", {"code": code}), reply.text(table, chunks=5))
    notebook = run_notebook("data_example.ipynb", tmp_path / "work")
    requests = server.chat_requests
    assert len(requests) == 2

    loaded = cell_with(notebook, "import csv")
    assert loaded.outputs[0].data["text/plain"].startswith("(8,\n {'city': 'Oslo'")

    shown = stdout(cell_with(notebook, "%autocoder --show-context"))
    assert shown.startswith("What is in rows?\n\n<kernel-context>\n## Variables\nrows: list len=8 = [{'city': 'Oslo'")
    assert "Recent cells" not in shown  # --context vars

    sent = user_messages(requests[0])[-1]
    assert "rows: list len=8" in sent and "## Recent cells" in sent and "csv.DictReader" in sent
    tool_result = requests[1].json["messages"][-1]
    assert tool_result["role"] == "tool"
    assert tool_result["content"] == ("result: {'Norway': 7.05, 'Sweden': 7.75, 'Denmark': 8.85, 'Finland': 5.4}")

    ask = cell_with(notebook, "%%autocoder")
    tool_card = [o.data["text/plain"] for o in ask.outputs if "text/html" in o.get("data", {})][0]
    assert tool_card.startswith("[run_code from collections import defaultdict] result: {'Norway': 7.05")
    assert table in markdown(ask)

    final = cell_with(notebook, "import sys")
    assert final.outputs[0].data["text/plain"] == ("[('Denmark', 8.85), ('Finland', 5.4), ('Norway', 7.05), "
                                                   "('Sweden', 7.75)]")


def test_data_example_runs_to_the_end_when_no_code_was_run(
    server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As a newcomer runs it without full-auto: nothing can approve run_code here, so it is refused.
    monkeypatch.setenv("AUTO_CODER_APPROVAL_MODE", "ask")
    server.enqueue(reply.tool_call("run_code", {"code": "averages = {}"}), reply.text("I could not run code."))
    notebook = run_notebook("data_example.ipynb", tmp_path / "work")  # raises on any cell's error
    assert "no stdin" in server.chat_requests[1].json["messages"][-1]["content"]
    final = cell_with(notebook, "import sys")
    assert "No `averages` in the kernel" in final.outputs[0].data["text/plain"]
    assert "What it needs" in notebook.cells[0].source


# -- the shipped notebooks when the model cannot be reached or refuses ---------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]  # closed again when this returns: nothing listens there


def break_endpoint(server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, how: str) -> str:
    """Make the notebooks' endpoint fail `how`; returns what the failing cell's line must say."""
    if how == "no endpoint":
        monkeypatch.setenv("AUTO_CODER_BASE_URL", f"http://127.0.0.1:{closed_port()}/v1")
        return "connect"
    if how == "401":
        server.require_authorization("Bearer the-right-key")
        monkeypatch.setenv("AUTO_CODER_API_KEY", "sk-a-wrong-key-424242")
        return "401"
    # A 500 on every try: the provider retries (at once: the server asks for no wait), then gives up.
    server.route("POST", "/v1/chat/completions",
                 lambda request: reply.error(500, "the model crashed", headers={"retry-after": "0"}))
    return "500"


def error_outputs(notebook: Any) -> list[tuple[int, Any]]:
    return [(index, output) for index, cell in enumerate(notebook.cells) if cell.cell_type == "code"
            for output in cell.get("outputs", []) if output.output_type == "error"]


@pytest.mark.parametrize("how", ["no endpoint", "401", "500"])
@pytest.mark.parametrize("name", ["quickstart.ipynb", "data_example.ipynb"])
def test_run_all_stops_at_the_first_request_that_cannot_reach_the_model(
        server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, how: str) -> None:
    says = break_endpoint(server, monkeypatch, how)
    with pytest.raises(CellExecutionError) as failure:
        run_notebook(name, tmp_path / "work")
    assert failure.value.ename == "CellFailed"
    assert failure.value.evalue.startswith("autocoder: ") and says in failure.value.evalue
    assert "sk-a-wrong-key-424242" not in str(failure.value)
    assert "Traceback" not in failure.value.evalue


@pytest.mark.parametrize("how", ["no endpoint", "401", "500"])
def test_data_example_run_past_the_failure_blames_the_request_not_run_code(
        server: FakeLLMServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str) -> None:
    says = break_endpoint(server, monkeypatch, how)
    shutil.copytree(NOTEBOOKS, tmp_path / "work", dirs_exist_ok=True)
    notebook = nbformat.read(tmp_path / "work" / "data_example.ipynb", as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", allow_errors=True,  # as "run all, ignore errors"
                   resources={"metadata": {"path": str(tmp_path / "work")}}).execute()
    [(index, error)] = error_outputs(notebook)
    assert notebook.cells[index].source.startswith("%%autocoder")
    assert error.ename == "CellFailed" and len(error.traceback) == 1  # one line, no traceback
    assert error.traceback[0].startswith("autocoder: ") and says in error.traceback[0]
    final = cell_with(notebook, "import sys").outputs[0].data["text/plain"]
    assert "the request above failed (autocoder: " in final and says in final
    assert "run_code was refused" not in final
