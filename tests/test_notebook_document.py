"""The notebook document interface (`tools/notebook_document.py`) in memory and on disk: cells by id, the
checks that keep a change off the wrong cell, snapshot and restore. The live home is tested against a real
Jupyter server in test_live_notebook.py with the same operations."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from auto_coder_nb.tools import ToolError, Workspace
from auto_coder_nb.tools.notebook_document import (
    CellChanged,
    CellNotFound,
    FileNotebook,
    MemoryNotebook,
    Notebooks,
    NotLive,
)


def _notebook(path: Path, sources: list[str], *, minor: int = 5) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    notebook.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    notebook.cells[0].execution_count = 1
    data = json.loads(nbformat.writes(notebook))
    if minor < 5:
        data["nbformat_minor"] = minor
        for cell in data["cells"]:
            cell.pop("id")
    path.write_text(json.dumps(data))
    return path


def test_cells_by_id_in_a_file(root: Path, workspace: Workspace) -> None:
    path = _notebook(root / "nb.ipynb", ["a = 1", "b = 2", "c = 3"])
    document = FileNotebook(workspace, path)
    first, second, third = document.cells()
    assert (first.source, first.execution_count, first.outputs[0]["text"]) == ("a = 1", 1, "1\n")
    added = document.insert(1, "# Notes", "markdown")
    assert [c.id for c in document.cells()] == [first.id, added.id, second.id, third.id]
    replaced = document.replace(first.id, "a = 10")
    assert (replaced.source, replaced.outputs, replaced.execution_count) == ("a = 10", [], None)  # stale outputs go
    document.move(third.id, 0)
    assert [c.source for c in document.cells()] == ["c = 3", "a = 10", "# Notes", "b = 2"]
    assert document.delete(second.id).source == "b = 2"
    document.set_outputs(third.id, [{"output_type": "stream", "name": "stdout", "text": "3\n"}], 7)
    document.mark(third.id, "auto-coder")
    assert document.cell(third.id).metadata["tags"] == ["auto-coder"]
    document.unmark(third.id, "auto-coder")
    assert "tags" not in document.cell(third.id).metadata
    saved = nbformat.read(path, as_version=4)
    nbformat.validate(saved)
    assert [(c.id, c.source) for c in saved.cells] == [(third.id, "c = 3"), (first.id, "a = 10"), (added.id, "# Notes")]
    assert saved.cells[0].execution_count == 7 and saved.cells[0].outputs[0]["text"] == "3\n"


def test_a_change_never_lands_on_a_wrong_cell(root: Path, workspace: Workspace) -> None:
    document = FileNotebook(workspace, _notebook(root / "nb.ipynb", ["a = 1", "b = 2"]))
    first = document.cells()[0]
    with pytest.raises(CellNotFound, match="no cell with id 'gone'"):
        document.replace("gone", "x")
    with pytest.raises(CellChanged, match="changed since you read it") as changed:
        document.replace(first.id, "a = 5", expected_source="a = 0")
    assert "a = 1" in str(changed.value)  # the model sees what the cell holds now
    with pytest.raises(ToolError, match="out of range"):
        document.insert(3, "x")
    with pytest.raises(ToolError, match="to_index 2 is out of range"):
        document.move(first.id, 2)
    with pytest.raises(ToolError, match="Unknown cell_type"):
        document.insert(0, "x", "python")
    assert [c.source for c in document.cells()] == ["a = 1", "b = 2"]  # nothing changed


def test_a_notebook_without_ids_gets_stable_ones(root: Path, workspace: Workspace) -> None:
    path = _notebook(root / "old.ipynb", ["a = 1", "b = 2"], minor=4)
    document = FileNotebook(workspace, path)
    assert document.ids() == document.ids() == ["cell-0", "cell-1"]
    document.replace("cell-1", "b = 3")
    saved = nbformat.read(path, as_version=4)
    assert saved.nbformat_minor >= 5 and [c.id for c in saved.cells] == ["cell-0", "cell-1"]


def test_snapshot_and_restore(root: Path, workspace: Workspace) -> None:
    document = FileNotebook(workspace, _notebook(root / "nb.ipynb", ["a = 1", "b = 2", "c = 3"]))
    before = document.snapshot()
    a, b, c = document.ids()
    document.delete(a)
    document.replace(b, "b = 20", cell_type="markdown")
    document.insert(0, "new")
    document.move(c, 0)
    document.restore(before)
    assert document.snapshot() == before
    memory = MemoryNotebook(before)
    memory.insert(3, "d = 4")
    assert len(memory.cells()) == 4 and len(document.cells()) == 3  # a copy: the file is untouched


def test_notebooks_open_refuses_the_open_notebook_without_live_editing(root: Path, workspace: Workspace) -> None:
    path = _notebook(root / "open.ipynb", ["a = 1"])
    workspace.open_notebook = lambda: path
    notebooks = Notebooks(lambda: workspace, open_notebook=lambda: path)
    assert notebooks.open("open.ipynb").cells()[0].source == "a = 1"  # reading the saved file is fine
    with pytest.raises(NotLive, match="open in the user's editor"):
        notebooks.open("open.ipynb", write=True)
    with pytest.raises(ToolError, match="not a notebook"):
        notebooks.open("notes.txt")
    other = notebooks.open("other.ipynb", write=True)
    other.insert(0, "x = 1")  # a notebook nobody has open is a file
    assert nbformat.read(root / "other.ipynb", as_version=4).cells[0].source == "x = 1"
