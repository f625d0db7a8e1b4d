"""The notebook tools (core, no IPython): namespace views, run_code, read_notebook, edit_notebook."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from turns import run_turn

from auto_coder_nb.config import load_config
from auto_coder_nb.events import ToolResult
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.tools.notebook import build_notebook_tools, run_python
from auto_coder_nb.tools.registry import ToolError, ToolRegistry
from auto_coder_nb.tools.workspace import Workspace


def make_notebook(path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# Title"),
        nbformat.v4.new_code_cell("x = 1\nx", execution_count=1, outputs=[
            nbformat.v4.new_output("execute_result", {"text/plain": "1"}, execution_count=1),
            nbformat.v4.new_output("display_data", {"image/png": "iVBORw0KGgo" * 1000}),
        ]),
        nbformat.v4.new_code_cell("print('hi')",
                                  outputs=[nbformat.v4.new_output("stream", name="stdout", text="hi\n")]),
    ])
    nbformat.write(notebook, path)


class Tools:
    def __init__(self, root: Path, open_notebook: Path | None = None) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__", "numbers": [1, 2, 3], "Path": Path}
        run_python("def greet(name):\n    return f'hi {name}'", self.namespace)  # defined "in the notebook"
        self.workspace = Workspace(root)
        self.inserted: list[tuple[str, str]] = []
        self.registry = ToolRegistry(build_notebook_tools(
            self.namespace,
            lambda code: run_python(code, self.namespace),
            lambda: self.workspace,
            open_notebook=lambda: open_notebook,
            insert_cell=lambda source, kind: self.inserted.append((source, kind)),
        ))

    def call(self, tool: str, /, **arguments: Any) -> str:
        return asyncio.run(self.registry.call(tool, arguments))


def test_variables_are_listed_and_inspected(tmp_path: Path) -> None:
    tools = Tools(tmp_path)
    listing = tools.call("list_variables")
    assert "numbers: list len=3 = [1, 2, 3]" in listing and "greet: function greet(name)" in listing
    assert "Path" not in listing  # imported classes are not the user's variables
    assert "[1, 2, 3]" in tools.call("inspect_variable", name="numbers")
    with pytest.raises(ToolError, match="no variable 'nope'.*numbers"):
        tools.call("inspect_variable", name="nope")
    assert tools.registry.get("list_variables").kind == "read"  # type: ignore[union-attr]


def test_run_code_returns_stdout_result_and_exception(tmp_path: Path) -> None:
    tools = Tools(tmp_path)
    assert tools.registry.get("run_code").kind == "command"  # type: ignore[union-attr]
    assert tools.registry.get("run_code").preview(code="a = 1") == "a = 1"  # type: ignore[union-attr]
    out = tools.call("run_code", code="total = sum(numbers)\nprint('total', total)\ntotal * 2")
    assert out == "stdout:\ntotal 6\nresult: 12"
    assert tools.namespace["total"] == 6  # runs in the user's namespace
    failed = tools.call("run_code", code="def f():\n    return 1 / 0\nf()")
    assert "exception:" in failed and "ZeroDivisionError: division by zero" in failed
    assert "run_python" not in failed  # the executor's own frame is not shown
    assert "SyntaxError" in tools.call("run_code", code="def (")
    big = tools.call("run_code", code="print('x' * 50000)")
    assert len(big) < 11000 and "characters omitted" in big


def test_read_notebook_is_compact_text_without_images(tmp_path: Path) -> None:
    make_notebook(tmp_path / "a.ipynb")
    text = Tools(tmp_path).call("read_notebook", path="a.ipynb")
    ids = [cell.id for cell in nbformat.read(tmp_path / "a.ipynb", as_version=4).cells]
    assert text.startswith("a.ipynb: 3 cells (unknown kernel; as saved on disk)")
    assert f"[0] markdown id={ids[0]}\n# Title" in text
    assert f"[1] code id={ids[1]} (executed as [1])\nx = 1\nx\n  -> 1\n  -> [image/png]" in text
    assert "stdout: hi" in text
    assert "iVBOR" not in text


def test_edit_notebook_insert_replace_delete_validated_and_undoable(tmp_path: Path) -> None:
    path = tmp_path / "a.ipynb"
    make_notebook(path)
    original = path.read_bytes()
    tools = Tools(tmp_path)
    edit = tools.registry.get("edit_notebook")
    assert edit is not None and edit.kind == "write"
    preview = edit.preview(path="a.ipynb", action="replace", index=2, source="print('bye')")  # type: ignore[misc]
    assert "-print('hi')" in preview and "+print('bye')" in preview
    assert path.read_bytes() == original  # a preview changes nothing
    tools.workspace.begin_turn()
    tools.call("edit_notebook", path="a.ipynb", action="insert", index=1, source="import math", cell_type="code")
    tools.call("edit_notebook", path="a.ipynb", action="replace", index=3, source="print('bye')")
    tools.call("edit_notebook", path="a.ipynb", action="delete", index=0)
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert [cell.source for cell in notebook.cells] == ["import math", "x = 1\nx", "print('bye')"]
    assert notebook.cells[2].outputs == []  # a replaced code cell loses its stale outputs
    tools.workspace.undo()
    assert path.read_bytes() == original


@pytest.mark.parametrize(("arguments", "message"), [
    ({"path": "a.ipynb", "action": "replace", "index": 9, "source": "x"}, "index 9 is out of range.*0-2"),
    ({"path": "a.ipynb", "action": "insert", "index": 7, "source": "x"}, "out of range"),
    ({"path": "a.ipynb", "action": "insert"}, "needs the cell.s .source."),
    ({"path": "a.ipynb", "action": "move", "index": 0}, "move needs .to_index."),
    ({"path": "a.ipynb", "action": "move", "index": 0, "to_index": 3}, "to_index 3 is out of range"),
    ({"path": "a.ipynb", "action": "replace", "cell_id": "nope", "source": "x"}, "no cell with id 'nope'"),
    ({"path": "a.ipynb", "action": "delete"}, "needs .cell_id. or .index."),
    ({"path": "a.ipynb", "action": "split", "index": 0}, "Unknown action"),
    ({"path": "notes.txt", "action": "insert", "source": "x"}, "not a notebook"),
    ({"path": "../outside.ipynb", "action": "insert", "source": "x"}, "outside the workspace"),
])
def test_edit_notebook_errors_say_what_to_do(tmp_path: Path, arguments: dict[str, Any], message: str) -> None:
    (tmp_path / "ws").mkdir()
    make_notebook(tmp_path / "ws" / "a.ipynb")
    with pytest.raises(ToolError, match=message):
        Tools(tmp_path / "ws").call("edit_notebook", **arguments)


def test_cells_by_id_survive_cells_added_above(tmp_path: Path) -> None:
    path = tmp_path / "a.ipynb"
    make_notebook(path)
    tools = Tools(tmp_path)
    tools.call("read_notebook", path="a.ipynb")
    ids = [cell.id for cell in nbformat.read(path, as_version=4).cells]
    # Someone else adds a cell at the top after the model read the notebook.
    notebook = nbformat.read(path, as_version=4)
    notebook.cells.insert(0, nbformat.v4.new_code_cell("import os"))
    nbformat.write(notebook, path)
    # Index 2 still means the cell the model saw there; the id says the same.
    tools.call("edit_notebook", path="a.ipynb", action="replace", index=2, source="print('bye')")
    tools.call("edit_notebook", path="a.ipynb", action="replace", cell_id=ids[0], source="# Title 2",
               cell_type="markdown")
    assert [c.source for c in nbformat.read(path, as_version=4).cells] == [
        "import os", "# Title 2", "x = 1\nx", "print('bye')"]
    # A position for a new cell is ambiguous now: the model is told to read again.
    with pytest.raises(ToolError, match="added, removed or moved cells"):
        tools.call("edit_notebook", path="a.ipynb", action="insert", index=1, source="y = 2")
    tools.call("read_notebook", path="a.ipynb")
    result = tools.call("edit_notebook", path="a.ipynb", action="move", index=0, to_index=3)
    assert "moved cell" in result
    assert [c.source for c in nbformat.read(path, as_version=4).cells][-1] == "import os"


def test_a_cell_the_user_edited_since_it_was_read_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "a.ipynb"
    make_notebook(path)
    tools = Tools(tmp_path)
    tools.call("read_notebook", path="a.ipynb")
    notebook = nbformat.read(path, as_version=4)
    notebook.cells[2].source = "print('the user typed this')"
    nbformat.write(notebook, path)
    with pytest.raises(ToolError, match="(?s)changed since you read it.*the user typed this"):
        tools.call("edit_notebook", path="a.ipynb", action="replace", index=2, source="print('bye')")
    with pytest.raises(ToolError, match="changed since you read it"):
        tools.call("edit_notebook", path="a.ipynb", action="delete", index=2)
    assert nbformat.read(path, as_version=4).cells[2].source == "print('the user typed this')"


def test_a_long_notebook_is_read_in_pages(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"value_{i} = {i}\n" * 5)
                                               for i in range(2000)])
    notebook.cells[3].source = "x = 'a'\n" * 600_000  # a 5 MB cell
    (tmp_path / "big.ipynb").write_text(json.dumps(notebook))
    tools = Tools(tmp_path)
    first = tools.call("read_notebook", path="big.ipynb")
    assert len(first) < 31000 and "characters omitted" in first  # the big cell keeps head and tail
    assert first.startswith("big.ipynb: 2000 cells")
    start = int(first.rsplit("start=", 1)[1].split(" ")[0])
    second = tools.call("read_notebook", path="big.ipynb", start=start)
    assert f"[{start}] code" in second and f"[cells 0-{start - 1} not shown]" in second
    last = tools.call("read_notebook", path="big.ipynb", start=1990)
    assert "[1999] code" in last and "not shown: read_notebook" not in last
    with pytest.raises(ToolError, match="start 2000 is out of range"):
        tools.call("read_notebook", path="big.ipynb", start=2000)


def test_new_notebook_is_created_by_insert(tmp_path: Path) -> None:
    Tools(tmp_path).call("edit_notebook", path="new.ipynb", action="insert", source="# Notes", cell_type="markdown")
    notebook = nbformat.read(tmp_path / "new.ipynb", as_version=4)
    assert [(c.cell_type, c.source) for c in notebook.cells] == [("markdown", "# Notes")]


def test_the_open_notebook_changes_only_through_new_cells(tmp_path: Path) -> None:
    path = tmp_path / "open.ipynb"
    make_notebook(path)
    original = path.read_bytes()
    tools = Tools(tmp_path, open_notebook=path)
    with pytest.raises(ToolError, match="open in the user's editor"):
        tools.call("edit_notebook", path="open.ipynb", action="replace", index=1, source="x = 2")
    result = tools.call("edit_notebook", path="open.ipynb", action="insert", source="x = 2")
    assert "below the current cell" in result
    assert tools.inserted == [("x = 2", "code")]
    assert path.read_bytes() == original


def test_the_first_refused_change_says_how_to_go_live_even_after_an_insert(tmp_path: Path) -> None:
    """An insert that falls back to a cell below the current one is not a refusal: the how-to of live editing is
    kept for the first change that is refused, and said once."""
    path = tmp_path / "open.ipynb"
    make_notebook(path)
    tools = Tools(tmp_path, open_notebook=path)
    assert "below the current cell" in tools.call("edit_notebook", path="open.ipynb", action="insert", source="x = 2")
    with pytest.raises(ToolError, match="install jupyter-collaboration"):
        tools.call("edit_notebook", path="open.ipynb", action="replace", index=1, source="x = 3")
    with pytest.raises(ToolError) as again:
        tools.call("edit_notebook", path="open.ipynb", action="delete", index=1)
    assert "open in the user's editor" in str(again.value) and "install" not in str(again.value)


def test_agent_edits_a_notebook_and_session_undo_restores_it(tmp_path: Path) -> None:
    path = tmp_path / "a.ipynb"
    make_notebook(path)
    original = path.read_bytes()
    with FakeLLMServer() as server:
        config = load_config({"llm.base_url": server.base_url, "agent.approval_mode": "full-auto"},
                             env={}, cwd=tmp_path, home=tmp_path)
        holder: list[Session] = []
        namespace: dict[str, Any] = {}
        tools = build_notebook_tools(namespace, lambda code: run_python(code, namespace), lambda: holder[0].workspace)
        session = Session.create(config, working_dir=tmp_path, extra_tools=tools)
        holder.append(session)
        server.enqueue(reply.tool_call("edit_notebook", {"path": "a.ipynb", "action": "delete", "index": 0}),
                       reply.text("Deleted the title."))
        results = [e for e in run_turn(session, "delete the title cell") if isinstance(e, ToolResult)]
        assert results and not results[0].is_error, results
        assert len(nbformat.read(path, as_version=4).cells) == 2
        tool_names = {t["function"]["name"] for t in server.chat_requests[0].json["tools"]}
        assert {"list_variables", "inspect_variable", "run_code", "read_notebook", "edit_notebook"} <= tool_names
        assert "a.ipynb" in session.undo()
        assert path.read_bytes() == original
        assert json.loads(original)  # still a valid JSON notebook
