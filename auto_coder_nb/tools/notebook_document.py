"""A notebook as a list of cells addressed by id: one interface, with a home on disk and one in a live room.

`NotebookDocument` is what the notebook tools, per-cell review and rewind work on. Its operations are written
once, here, on top of a few primitives (`CellList`) that each home gives:

- `MemoryNotebook`: cells in memory (a snapshot); previews and tests apply a change to a copy with it.
- `FileNotebook`: the `.ipynb` on disk, read and written through the `Workspace` (checkpointed writes, so the
  file tools' undo covers them). The CLI uses it, and the kernel for notebooks no Jupyter server has open.
- `live_notebook.LiveNotebook`: the shared document of a Jupyter server's collaboration room, which the
  browser shows at once (unsaved edits included); it needs the `[live]` extra.

Every method is synchronous and safe to call from any thread; a live one waits a few seconds at most. Errors
are `ToolError`s with a message the model can act on. Cells are addressed by id (ids survive the user
inserting cells above); a change given `expected_source` fails with `CellChanged` instead of overwriting what
the user typed since. `Notebooks.open(path)` picks the home for a path.
"""

from __future__ import annotations

import copy
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from .registry import ToolError

if TYPE_CHECKING:
    from .workspace import Workspace

CELL_TYPES = ("code", "markdown", "raw")
HOW_TO_GO_LIVE = ("To edit it live, install jupyter-collaboration where the Jupyter server runs and "
                  "`pip install \"auto-coder-nb[live]\"` in this kernel's environment, then restart the server.")
NBFORMAT_MINOR = 5  # the first minor version with cell ids
T = TypeVar("T")


@dataclass(frozen=True)
class Cell:
    """One cell as nbformat 4.5 has it. `outputs` and `execution_count` are empty for markdown and raw cells."""

    id: str
    cell_type: str
    source: str
    metadata: dict[str, Any] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    execution_count: int | None = None
    attachments: dict[str, Any] | None = None  # pasted images of markdown and raw cells

    def to_dict(self) -> dict[str, Any]:
        """The cell as nbformat JSON (what `snapshot()` holds)."""
        cell: dict[str, Any] = {"id": self.id, "cell_type": self.cell_type, "metadata": copy.deepcopy(self.metadata),
                                "source": self.source}
        if self.cell_type == "code":
            cell["outputs"] = copy.deepcopy(self.outputs)
            cell["execution_count"] = self.execution_count
        elif self.attachments:
            cell["attachments"] = copy.deepcopy(self.attachments)
        return cell

    @classmethod
    def from_dict(cls, cell: Mapping[str, Any], fallback_id: str = "") -> Cell:
        """A cell from nbformat JSON; `fallback_id` for a notebook older than 4.5 (no ids)."""
        source = cell.get("source", "")
        count = cell.get("execution_count")
        return cls(
            id=str(cell.get("id") or fallback_id or new_cell_id()),
            cell_type=str(cell.get("cell_type", "code")),
            source="".join(source) if isinstance(source, list) else str(source),
            metadata=copy.deepcopy(dict(cell.get("metadata") or {})),
            outputs=[_joined(output) for output in cell.get("outputs") or []],
            execution_count=int(count) if isinstance(count, (int, float)) else None,
            attachments=copy.deepcopy(dict(cell["attachments"])) if cell.get("attachments") else None,
        )


def _joined(output: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of an output with the multi-line strings that .ipynb files store as lists joined (as nbformat reads
    them); JSON data stays as it is."""
    joined = copy.deepcopy(dict(output))
    if isinstance(joined.get("text"), list):
        joined["text"] = "".join(joined["text"])
    data = joined.get("data")
    if isinstance(data, dict):
        for mime, value in data.items():
            if isinstance(value, list) and not (mime == "application/json" or mime.endswith("+json")):
                data[mime] = "".join(value)
    return joined


def new_cell_id(taken: Any = ()) -> str:
    """A fresh id in nbformat's style (8 hex digits), not among `taken`."""
    while True:
        cell_id = uuid.uuid4().hex[:8]
        if cell_id not in taken:
            return cell_id


def legacy_cell_id(index: int) -> str:
    """The id given to the cell at `index` of a notebook saved without ids (nbformat < 4.5): the same on every
    read, and written into the file with the next change."""
    return f"cell-{index}"


class CellNotFound(ToolError):
    """No cell has this id (the user deleted it, or the id is wrong)."""


class CellChanged(ToolError):
    """The cell's source is not what the caller expected: someone (the user) edited it since it was read."""


class NotLive(ToolError):
    """The notebook is open in the user's editor but cannot be edited live: `reason` says why, `how_to` how to
    turn live editing on. Nothing is written to the file (the editor would overwrite it, or lose the user's
    unsaved cells)."""

    def __init__(self, path: Path, reason: str, how_to: str = "") -> None:
        self.path, self.reason, self.how_to = path, reason, how_to
        super().__init__(f"{path.name} is open in the user's editor and {reason}" + (f" {how_to}" if how_to else ""))


class CellList(ABC):
    """The primitives a home gives `NotebookDocument`: positional, unchecked, called inside one change."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def cell(self, index: int) -> Cell: ...

    @abstractmethod
    def ids(self) -> list[str]: ...

    @abstractmethod
    def insert(self, index: int, cell: Cell) -> None: ...

    @abstractmethod
    def delete(self, index: int) -> None: ...

    @abstractmethod
    def move(self, index: int, to_index: int) -> None:
        """Take the cell at `index` out and put it back so that it ends at `to_index`; its id stays."""

    @abstractmethod
    def put(self, index: int, cell: Cell) -> None:
        """Replace the whole cell at `index` (a new type, or a restored cell)."""

    @abstractmethod
    def set_source(self, index: int, source: str) -> None:
        """Change the text only, as little as possible (a live document keeps the user's cursor)."""

    @abstractmethod
    def set_outputs(self, index: int, outputs: list[dict[str, Any]], execution_count: int | None,
                    running: bool) -> None: ...

    @abstractmethod
    def set_metadata(self, index: int, key: str, value: Any) -> None:
        """Set one key of the cell's metadata; None removes it."""

    @abstractmethod
    def notebook_metadata(self) -> dict[str, Any]: ...


class NotebookDocument(ABC):
    """A notebook's cells, addressed by id. See the module docstring; `path` is the resolved file path."""

    path: Path
    live = False  # True for the shared document of an open notebook (changes show in the browser at once)

    @abstractmethod
    def read(self, look: Callable[[CellList], T]) -> T:
        """Call `look(cells)` on a consistent view of the cells and return its result."""

    @abstractmethod
    def change(self, edit: Callable[[CellList], T]) -> T:
        """Call `edit(cells)` as one change (one write of the file, one transaction of the room) and return its
        result; an exception from `edit` leaves the notebook as it was."""

    # -- reading ---------------------------------------------------------------------------------

    def cells(self) -> list[Cell]:
        return self.read(lambda cells: [cells.cell(i) for i in range(len(cells))])

    def cell(self, cell_id: str) -> Cell:
        return self.read(lambda cells: cells.cell(self._index(cells, cell_id)))

    def index_of(self, cell_id: str) -> int:
        return self.read(lambda cells: self._index(cells, cell_id))

    def ids(self) -> list[str]:
        return self.read(lambda cells: cells.ids())

    def metadata(self) -> dict[str, Any]:
        return self.read(lambda cells: cells.notebook_metadata())

    def snapshot(self) -> dict[str, Any]:
        """The whole notebook as nbformat 4.5 JSON (cells with ids, outputs, metadata): keep it to `restore`."""
        def look(cells: CellList) -> dict[str, Any]:
            return {"cells": [cells.cell(i).to_dict() for i in range(len(cells))],
                    "metadata": cells.notebook_metadata(), "nbformat": 4, "nbformat_minor": NBFORMAT_MINOR}
        return self.read(look)

    # -- changing --------------------------------------------------------------------------------

    def insert(self, index: int, source: str, cell_type: str = "code", *,
               metadata: Mapping[str, Any] | None = None) -> Cell:
        """A new cell at `index` (0 = first, len = last); returns it with its new id."""
        _check_type(cell_type)

        def edit(cells: CellList) -> Cell:
            if not 0 <= index <= len(cells):
                raise ToolError(f"index {index} is out of range: {self.path.name} has {len(cells)} cells "
                                f"(insert at 0-{len(cells)}).")
            cell = Cell(new_cell_id(cells.ids()), cell_type, source, dict(metadata or {}))
            cells.insert(index, cell)
            return cell
        return self.change(edit)

    def replace(self, cell_id: str, source: str, *, cell_type: str | None = None,
                expected_source: str | None = None) -> Cell:
        """New source for the cell (and a new type when `cell_type` differs). A code cell's outputs go, since they
        came from the old source. With `expected_source`, raises CellChanged if the cell no longer has it."""
        if cell_type is not None:
            _check_type(cell_type)

        def edit(cells: CellList) -> Cell:
            index = self._index(cells, cell_id)
            current = self._expect(cells.cell(index), expected_source)
            if cell_type is not None and cell_type != current.cell_type:
                changed = Cell(current.id, cell_type, source, current.metadata)
                cells.put(index, changed)
                return changed
            cells.set_source(index, source)
            if current.cell_type == "code" and (current.outputs or current.execution_count is not None):
                cells.set_outputs(index, [], None, running=False)
            return cells.cell(index)
        return self.change(edit)

    def delete(self, cell_id: str, *, expected_source: str | None = None) -> Cell:
        """Remove the cell; returns it as it was."""
        def edit(cells: CellList) -> Cell:
            index = self._index(cells, cell_id)
            removed = self._expect(cells.cell(index), expected_source)
            cells.delete(index)
            return removed
        return self.change(edit)

    def move(self, cell_id: str, to_index: int) -> Cell:
        """Move the cell so that it ends at `to_index` (0 = first, len - 1 = last); its id stays."""
        def edit(cells: CellList) -> Cell:
            index = self._index(cells, cell_id)
            if not 0 <= to_index < len(cells):
                raise ToolError(f"to_index {to_index} is out of range: {self.path.name} has {len(cells)} cells "
                                f"(0-{len(cells) - 1}).")
            if to_index != index:
                cells.move(index, to_index)
            return cells.cell(to_index)
        return self.change(edit)

    def set_outputs(self, cell_id: str, outputs: list[dict[str, Any]], execution_count: int | None, *,
                    running: bool = False) -> None:
        """Write a code cell's outputs (nbformat output dicts) and execution count, as if the user had run it.
        `running=True` marks it as executing ([*] in the frontends that show it) until the next call."""
        def edit(cells: CellList) -> None:
            index = self._index(cells, cell_id)
            if cells.cell(index).cell_type != "code":
                raise ToolError(f"cell {cell_id} of {self.path.name} is not a code cell: it has no outputs.")
            cells.set_outputs(index, outputs, execution_count, running)
        self.change(edit)

    def mark(self, cell_id: str, tag: str) -> None:
        """Add `tag` to the cell's `metadata.tags` (e.g. to show which cells a running turn changed)."""
        self._retag(cell_id, tag, add=True)

    def unmark(self, cell_id: str, tag: str) -> None:
        """Remove `tag` from the cell's `metadata.tags` (a missing cell or tag is fine)."""
        try:
            self._retag(cell_id, tag, add=False)
        except CellNotFound:
            pass

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Make the cells what `snapshot()` returned (sources, types, outputs, metadata, ids, order), in one
        change. Cells already equal are left alone, so a live document keeps the user's cursor in them;
        the notebook's own metadata is not touched."""
        target = [Cell.from_dict(cell, legacy_cell_id(i)) for i, cell in enumerate(snapshot.get("cells") or [])]

        def edit(cells: CellList) -> None:
            wanted = {cell.id for cell in target}
            for index in reversed(range(len(cells))):
                if cells.cell(index).id not in wanted:
                    cells.delete(index)
            for index, cell in enumerate(target):
                ids = cells.ids()
                if cell.id not in ids[index:]:
                    cells.insert(index, cell)
                    continue
                if ids[index] != cell.id:
                    cells.move(ids.index(cell.id, index), index)
                current = cells.cell(index)
                if (current.cell_type, current.metadata, current.attachments) != (
                        cell.cell_type, cell.metadata, cell.attachments):
                    cells.put(index, cell)
                    continue
                if current.source != cell.source:
                    cells.set_source(index, cell.source)
                if (current.outputs, current.execution_count) != (cell.outputs, cell.execution_count):
                    cells.set_outputs(index, cell.outputs, cell.execution_count, running=False)
            for index in reversed(range(len(target), len(cells))):  # a duplicate id left behind
                cells.delete(index)
        self.change(edit)

    # -- helpers -----------------------------------------------------------------------------------

    def _index(self, cells: CellList, cell_id: str) -> int:
        try:
            return cells.ids().index(cell_id)
        except ValueError:
            raise CellNotFound(f"{self.path.name} has no cell with id {cell_id!r} (deleted, or a wrong id); "
                               "read_notebook shows the cells and their ids.") from None

    def _expect(self, cell: Cell, expected_source: str | None) -> Cell:
        if expected_source is not None and cell.source != expected_source:
            shown = cell.source if len(cell.source) <= 2000 else cell.source[:2000] + "\n[...]"
            raise CellChanged(f"cell {cell.id} of {self.path.name} was changed since you read it (the user edited "
                              f"it?), so it was left alone. It is now:\n{shown}\nRead it again and decide whether "
                              "your change still applies.")
        return cell

    def _retag(self, cell_id: str, tag: str, add: bool) -> None:
        def edit(cells: CellList) -> None:
            index = self._index(cells, cell_id)
            tags = [t for t in cells.cell(index).metadata.get("tags") or [] if t != tag]
            if add:
                tags.append(tag)
            cells.set_metadata(index, "tags", tags or None)
        self.change(edit)


def _check_type(cell_type: str) -> None:
    if cell_type not in CELL_TYPES:
        raise ToolError(f"Unknown cell_type {cell_type!r}: use code, markdown or raw.")


# -- in memory and on disk --------------------------------------------------------------------------

class _Cells(CellList):
    """CellList over a list of `Cell`s."""

    def __init__(self, cells: list[Cell], metadata: dict[str, Any]) -> None:
        self.items = cells
        self.meta = metadata

    def __len__(self) -> int:
        return len(self.items)

    def cell(self, index: int) -> Cell:
        return self.items[index]

    def ids(self) -> list[str]:
        return [cell.id for cell in self.items]

    def insert(self, index: int, cell: Cell) -> None:
        self.items.insert(index, cell)

    def delete(self, index: int) -> None:
        del self.items[index]

    def move(self, index: int, to_index: int) -> None:
        self.items.insert(to_index, self.items.pop(index))

    def put(self, index: int, cell: Cell) -> None:
        self.items[index] = cell

    def set_source(self, index: int, source: str) -> None:
        self.items[index] = replace(self.items[index], source=source)

    def set_outputs(self, index: int, outputs: list[dict[str, Any]], execution_count: int | None,
                    running: bool) -> None:
        self.items[index] = replace(self.items[index], outputs=copy.deepcopy(outputs), execution_count=execution_count)

    def set_metadata(self, index: int, key: str, value: Any) -> None:
        metadata = {k: v for k, v in self.items[index].metadata.items() if k != key}
        if value is not None:
            metadata[key] = copy.deepcopy(value)
        self.items[index] = replace(self.items[index], metadata=metadata)

    def notebook_metadata(self) -> dict[str, Any]:
        return copy.deepcopy(self.meta)


class MemoryNotebook(NotebookDocument):
    """A notebook held in memory, from a `snapshot()` (or nbformat JSON): apply a change to a copy to preview it."""

    def __init__(self, snapshot: Mapping[str, Any] | None = None, path: Path = Path("notebook.ipynb")) -> None:
        self.path = path
        snapshot = snapshot or {}
        cells = [Cell.from_dict(cell, legacy_cell_id(i)) for i, cell in enumerate(snapshot.get("cells") or [])]
        self._cells = _Cells(cells, copy.deepcopy(dict(snapshot.get("metadata") or {})))

    def read(self, look: Callable[[CellList], T]) -> T:
        return look(self._cells)

    def change(self, edit: Callable[[CellList], T]) -> T:
        work = _Cells(list(self._cells.items), self._cells.meta)
        result = edit(work)
        self._cells = work
        return result


class FileNotebook(NotebookDocument):
    """The `.ipynb` file, read for every call and written atomically through the workspace (which checkpoints it
    for undo and refuses the notebook open in the user's editor). A change to a missing file creates it."""

    def __init__(self, workspace: Workspace, path: Path) -> None:
        self.workspace = workspace
        self.path = path

    def read(self, look: Callable[[CellList], T]) -> T:
        return look(self._load(must_exist=True))

    def change(self, edit: Callable[[CellList], T]) -> T:
        import nbformat

        cells = self._load(must_exist=False)
        result = edit(cells)
        notebook = nbformat.v4.new_notebook(metadata=cells.meta)
        notebook.nbformat_minor = max(notebook.nbformat_minor, NBFORMAT_MINOR)
        notebook.cells = [nbformat.from_dict(cell.to_dict()) for cell in cells.items]
        try:
            nbformat.validate(notebook)
        except nbformat.ValidationError as exc:
            raise ToolError(f"The edited notebook would not be valid: {exc.message}") from None
        self.workspace.atomic_write(self.path, (nbformat.writes(notebook) + "\n").encode("utf-8"))
        return result

    def _load(self, must_exist: bool) -> _Cells:
        if not self.path.exists() and not must_exist:
            return _Cells([], {})
        data = read_notebook_json(self.workspace, self.path)
        cells = [Cell.from_dict(cell, legacy_cell_id(i)) for i, cell in enumerate(data.get("cells") or [])]
        return _Cells(cells, dict(data.get("metadata") or {}))


def read_notebook_json(workspace: Workspace, path: Path) -> dict[str, Any]:
    """The notebook at a resolved path as nbformat 4 JSON, read like the other file tools (no link followed).
    Not validated (half a second for 2,000 cells): every write is."""
    import nbformat

    if not path.is_file():
        raise ToolError(f"{path.name} does not exist. list_directory shows the files.")
    try:
        data = json.loads(workspace.read_bytes(path).decode("utf-8"))
        if not isinstance(data, dict) or not isinstance(data.get("cells", []), list):
            raise ValueError("not a notebook's JSON")
        if data.get("nbformat") != 4:
            data = dict(nbformat.convert(nbformat.from_dict(data), 4))
    except UnicodeDecodeError:
        raise ToolError(f"{path.name} is not a valid notebook: it is not UTF-8 text.") from None
    except (ValueError, KeyError, TypeError, nbformat.ValidationError) as exc:
        raise ToolError(f"{path.name} is not a valid notebook: {exc}") from None
    return data


# -- which home a path opens -------------------------------------------------------------------------

# The live document of `path` when it is the notebook open in a collaboration room; None when `path` is not the
# open notebook. Raises NotLive when it is open but cannot be edited live.
LiveOpener = Callable[[Path], "NotebookDocument | None"]


class Notebooks:
    """Opens the document for a notebook path: the live one when the path is the notebook the user has open in a
    Jupyter server with real-time collaboration, else the file. `session.notebooks` is one of these; the kernel
    gives it `live` (and `open_notebook`, the notebook its frontend says is open); the CLI gives neither."""

    def __init__(self, workspace: Callable[[], Workspace], live: LiveOpener | None = None,
                 open_notebook: Callable[[], Path | None] = lambda: None,
                 secrets: Callable[[], list[str]] = list) -> None:
        self._workspace = workspace
        self._live = live
        self._open_notebook = open_notebook
        self._secrets = secrets
        # What the documents opened for writing go through: the session records the agent's cell changes there.
        self.watch: Callable[[NotebookDocument], NotebookDocument] = lambda document: document

    def resolve(self, path: str | Path, write: bool = False) -> Path:
        """The real path of a notebook the tools may use (ToolError outside the workspace or not a .ipynb)."""
        target = self._workspace().resolve(path, write=write)
        if not target.name.endswith(".ipynb"):
            raise ToolError(f"{path} is not a notebook (.ipynb). Use read_file or edit_file for other files.")
        return target

    def open(self, path: str | Path, *, write: bool = False) -> NotebookDocument:
        """The document for `path` (relative to the workspace root, or absolute inside it). Raises ToolError: a
        path outside the workspace, or NotLive when `path` is the open notebook and cannot be edited live
        (reading it still works with `write=False`: the file as last saved)."""
        target = self.resolve(path, write=write)
        document = self._open(target, write)
        return self.watch(document) if write else document

    def _open(self, target: Path, write: bool) -> NotebookDocument:
        if self._live is not None:
            try:
                document = self._live(target)
            except NotLive:
                if write:
                    raise
                return FileNotebook(self._workspace(), target)
            if document is not None:
                return document
        if write and self.is_open(target):
            raise NotLive(target, "no live connection to it was found (its frontend is not a Jupyter server "
                          "with real-time collaboration).", HOW_TO_GO_LIVE)
        return FileNotebook(self._workspace(), target)

    def is_open(self, target: Path) -> bool:
        """Whether the kernel's frontend says `target` is the notebook it has open."""
        current = self._open_notebook()
        return current is not None and current.resolve() == target.resolve()

    def secret_values(self) -> list[str]:
        """Credentials used to reach the live documents (the Jupyter server's token): hidden like the others."""
        return self._secrets()
