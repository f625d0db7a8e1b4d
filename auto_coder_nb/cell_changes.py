"""The agent's changes to notebook cells, one record each: what the per-cell review shows (the cell's diff), what
Revert undoes, and what a rewind undoes turn by turn.

`CellChanges.watch(document)` wraps a `NotebookDocument` the agent changes: every primitive of every change is
seen (`_Recording`), so each cell touched gets a `CellChange` with the cell as it was before (id, type, source,
outputs, metadata, the cell above it) and as the change left it, whatever tool made it. Undoing checks first that
the cell is still what the agent left (else someone edited it since: a conflict, named and not overwritten unless
forced), then puts the cell back by id, so a cell the user inserted meanwhile shifts nothing and the cells the
user wrote are never touched.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import json
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from .tools.notebook_document import Cell, CellList, NotebookDocument, legacy_cell_id
from .tools.registry import ToolError

T = TypeVar("T")
ACTIONS = ("insert", "replace", "delete", "move", "run")
MARK_TAG = "auto-coder-changed"  # in metadata.tags of the cells the running turn changed; removed when it ends


@dataclass
class CellChange:
    """One change of one cell by the agent."""

    number: int  # 1, 2, ... in this session: what Revert and the saved record name
    turn: int  # the conversation turn that made it
    path: str  # the notebook's resolved path
    action: str  # one of ACTIONS ("run": only its outputs changed)
    cell_id: str
    before: Cell | None  # None: the cell did not exist (insert)
    after: Cell | None  # None: the cell is gone (delete)
    index: int  # where the cell was before (an inserted one: where it went)
    above: str | None = None  # the id of the cell above it before the change (None: it was the first)
    live: bool = False  # made in the live document of an open notebook (else the file, which undo restores too)
    reverted: bool = False

    @property
    def cell_type(self) -> str:
        return (self.after or self.before or Cell("", "code", "")).cell_type

    @property
    def runnable(self) -> bool:
        """A code cell that the change leaves in place: Accept & Run can run it."""
        return self.after is not None and self.after.cell_type == "code" and self.action in ("insert", "replace")

    def describe(self) -> str:
        """`cell 3 (code, id 1a2b) of analysis.ipynb`: how messages name the cell (a proposed new cell has no id
        yet: `new cell 3 (code) of ...`)."""
        if not self.cell_id:
            return f"new cell {self.index} ({self.cell_type}) of {Path(self.path).name}"
        return f"cell {self.index} ({self.cell_type}, id {self.cell_id}) of {Path(self.path).name}"

    def card(self) -> str:
        """The change as text faces show it: what happens to which cell, then its diff."""
        return f"{self.action} {self.describe()}:\n{self.diff()}"

    def diff(self) -> str:
        """The change of the cell's source as a unified diff (a move or a run says so in one line)."""
        if self.action == "move":
            return f"(moved from position {self.index}; the source is unchanged)\n"
        if self.action == "run":
            return "(ran: its outputs changed)\n"
        before = self.before.source if self.before is not None else ""
        after = self.after.source if self.after is not None else ""
        label = f"cell {self.cell_id or 'new'}"
        lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True),
                                     f"a/{label}" if self.before is not None else "/dev/null",
                                     f"b/{label}" if self.after is not None else "/dev/null")
        return "".join(line if line.endswith("\n") else line + "\n" for line in lines) or "(no change)\n"

    def record(self) -> dict[str, Any]:
        """As saved with the conversation (`history.py`), so that a rewind after a kernel restart can undo it."""
        return {"number": self.number, "turn": self.turn, "path": self.path, "action": self.action,
                "cell_id": self.cell_id, "index": self.index, "above": self.above, "live": self.live,
                "before": self.before.to_dict() if self.before is not None else None,
                "after": self.after.to_dict() if self.after is not None else None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> CellChange | None:
        """A change read back from a saved conversation; None for a record that is not one."""
        try:
            before, after = record.get("before"), record.get("after")
            return cls(int(record["number"]), int(record["turn"]), str(record["path"]), str(record["action"]),
                       str(record["cell_id"]), Cell.from_dict(before) if isinstance(before, dict) else None,
                       Cell.from_dict(after) if isinstance(after, dict) else None, int(record["index"]),
                       record.get("above") if isinstance(record.get("above"), str) else None,
                       record.get("live") is True)
        except (KeyError, TypeError, ValueError):
            return None


def notebook_diff(path: str, before: str, after: str) -> list[CellChange]:
    """The cells a new text of a notebook file changes (write_file, edit_file on an .ipynb), matched by id: for the
    per-cell review. Empty when `after` is not a notebook (then the text diff is what is shown)."""
    old, new = _cells_of(before), _cells_of(after)
    if new is None:
        return []
    old = old or []
    where = {cell.id: (index, cell) for index, cell in enumerate(old)}
    kept = {cell.id for cell in new}
    changes = [CellChange(0, 0, path, "delete", cell.id, cell, None, index, old[index - 1].id if index else None)
               for index, cell in enumerate(old) if cell.id not in kept]
    for index, cell in enumerate(new):
        if cell.id not in where:
            changes.append(CellChange(0, 0, path, "insert", cell.id, None, cell, index))
        elif (where[cell.id][1].source, where[cell.id][1].cell_type) != (cell.source, cell.cell_type):
            changes.append(CellChange(0, 0, path, "replace", cell.id, where[cell.id][1], cell, where[cell.id][0]))
    return changes


def _cells_of(text: str) -> list[Cell] | None:
    try:
        cells = json.loads(text).get("cells") if text.strip() else []
    except (ValueError, AttributeError, RecursionError):
        return None
    if not isinstance(cells, list) or not all(isinstance(cell, dict) for cell in cells):
        return None
    return [Cell.from_dict(cell, legacy_cell_id(index)) for index, cell in enumerate(cells)]


@dataclass
class UndoReport:
    """What undoing changes did, and what it found changed by someone else since."""

    undone: list[CellChange] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # cells edited since the agent changed them
    missing: list[str] = field(default_factory=list)  # notebooks that could not be opened, and why
    overwritten: dict[str, list[Cell]] = field(default_factory=dict)  # per notebook: what a forced undo replaced

    def message(self) -> str:
        lines = []
        if self.undone:
            notebooks = sorted({Path(change.path).name for change in self.undone})
            cells = len({(change.path, change.cell_id) for change in self.undone})
            lines.append(f"Restored {cells} cell(s) of {', '.join(notebooks)}.")
        if self.missing:
            lines.append(f"Cells not restored: {'; '.join(self.missing)}.")
        return " ".join(lines)


class CellChanges:
    """The log of the agent's cell changes in this session, oldest first. `open_document(path)` opens a notebook
    to undo in (`session.notebooks.open(path, write=True)`); `recorded(change)` hears each new change (the saved
    conversation); `feedback` collects what the user did to the agent's changes, for the model's next request."""

    def __init__(self, open_document: Callable[[str], NotebookDocument]) -> None:
        self.open_document = open_document
        self.changes: list[CellChange] = []
        self.turn = 0  # the running (or last) turn: `rewind.Turns` sets it
        self.recorded: Callable[[CellChange], None] = lambda change: None
        self.feedback: list[str] = []
        self._numbers = itertools.count(1)
        self._marked: list[tuple[NotebookDocument, str]] = []
        self._paused = threading.local()  # undoing: those changes are not the agent's

    # -- recording -------------------------------------------------------------------------------------

    def watch(self, document: NotebookDocument) -> NotebookDocument:
        """`document`, recording every change made through it (as the agent's, in the current turn)."""
        return _Recorded(document, self)

    @property
    def recording(self) -> bool:
        return not getattr(self._paused, "on", False)

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Changes made meanwhile on this thread (an undo, a rewind) are not recorded as the agent's."""
        self._paused.on = True
        try:
            yield
        finally:
            self._paused.on = False

    def add(self, document: NotebookDocument, change: CellChange) -> None:
        """A change just made through `document` (a `watch`ed one calls this)."""
        last = self.changes[-1] if self.changes else None
        if last is not None and (last.action, last.turn, last.path, last.cell_id) == (
                "run", change.turn, change.path, change.cell_id) and change.action == "run":
            last.after = change.after  # a cell's outputs written as it runs: one change
            return
        change.number, change.live = next(self._numbers), document.live
        self.changes.append(change)
        self.recorded(change)
        if document.live and change.after is not None:
            self._mark(document, change.cell_id)

    def load(self, changes: Iterable[CellChange]) -> None:
        """Changes read back from a saved conversation (after a kernel restart); new ones are numbered on."""
        self.changes = list(changes)
        self._numbers = itertools.count(max((change.number for change in self.changes), default=0) + 1)

    def find(self, number: int) -> CellChange | None:
        return next((change for change in self.changes if change.number == number), None)

    def of_turns(self, first: int) -> list[CellChange]:
        """The changes of turn `first` and the later ones, not reverted, oldest first."""
        return [change for change in self.changes if change.turn >= first and not change.reverted]

    def forget_turns(self, first: int) -> None:
        self.changes = [change for change in self.changes if change.turn < first]

    def revertible(self, change: CellChange) -> bool:
        """Revert is offered until the turn after next begins."""
        return not change.reverted and self.turn <= change.turn + 1

    # -- undoing ---------------------------------------------------------------------------------------

    def revert(self, number: int, reason: str = "") -> str:
        """Undo one change (a Revert button); the model hears it with the next request. Returns what to show.
        Raises ToolError when it cannot: unknown, too old, or the cell was edited since."""
        change = self.find(number)
        if change is None or change.reverted:
            raise ToolError(f"There is no change {number} to revert.")
        if not self.revertible(change):
            raise ToolError(f"Change {number} is from turn {change.turn}: too old to revert alone. Rewind instead.")
        report = self.undo([change])
        if report.conflicts or report.missing:
            raise ToolError("Not reverted: " + "; ".join(report.conflicts + report.missing) + ".")
        because = f" Reason: {reason}" if reason else ""
        self.feedback.append(f"The user reverted your {change.action} of {change.describe()}; it is as it was "
                             f"before.{because}")
        return f"Reverted the {change.action} of {change.describe()}."

    def check(self, changes: list[CellChange]) -> UndoReport:
        """What undoing `changes` would meet, changing nothing: notebooks that cannot be opened, and conflicts (a
        cell edited by someone else since the agent changed it, or between two of these changes)."""
        return self._check(changes)[1]

    def undo(self, changes: list[CellChange], force: bool = False) -> UndoReport:
        """Undo `changes` (oldest first), newest first, each cell back as it was, by id. With a conflict (see
        `check`) nothing is done unless `force`; then the report keeps the cells it overwrote, for the caller to
        save."""
        documents, report = self._check(changes)
        if report.conflicts and not force:
            report.overwritten.clear()
            return report
        with self.paused():
            for path, document in documents.items():
                mine = [change for change in changes if change.path == path]
                document.change(functools.partial(_undo_all, mine))
                for change in mine:
                    change.reverted = True
                report.undone += mine
        return report

    def _check(self, changes: list[CellChange]) -> tuple[dict[str, NotebookDocument], UndoReport]:
        report = UndoReport()
        documents: dict[str, NotebookDocument] = {}
        for path in dict.fromkeys(change.path for change in changes):
            try:
                documents[path] = self.open_document(path)
            except ToolError as exc:
                report.missing.append(f"{Path(path).name}: {exc}")
        for path, document in documents.items():
            mine = [change for change in changes if change.path == path]
            now = {cell.id: cell for cell in document.cells()}
            found = _conflicts(mine, now)
            report.conflicts += found.values()
            if found:
                report.overwritten[path] = [cell for cell in now.values() if cell.id in found]
        return documents, report

    # -- marks: the cells the running turn changed ------------------------------------------------------

    def _mark(self, document: NotebookDocument, cell_id: str) -> None:
        try:
            document.mark(cell_id, MARK_TAG)
        except ToolError:
            return  # a mark is a courtesy: the change itself is done
        self._marked.append((document, cell_id))

    def clear_marks(self) -> None:
        """The turn ended: the cells it marked are unmarked."""
        marked, self._marked = self._marked, []
        for document, cell_id in marked:
            try:
                document.unmark(cell_id, MARK_TAG)
            except ToolError:
                pass  # the room is gone: the tag stays in that copy, harmless

    def take_feedback(self) -> list[str]:
        feedback, self.feedback = self.feedback, []
        return feedback


def _unmarked(cell: Cell) -> Cell:
    """`cell` without our mark: what is recorded and restored."""
    tags = cell.metadata.get("tags")
    if not isinstance(tags, list) or MARK_TAG not in tags:
        return cell
    metadata = {key: value for key, value in cell.metadata.items() if key != "tags"}
    if len(tags) > 1:
        metadata["tags"] = [tag for tag in tags if tag != MARK_TAG]
    return replace(cell, metadata=metadata)


def _conflicts(changes: list[CellChange], now: dict[str, Cell]) -> dict[str, str]:
    """The cells of `changes` whose source is not what the agent left, between two of the changes or now: by id,
    what to say."""
    found: dict[str, str] = {}
    last: dict[str, CellChange] = {}
    for change in changes:
        previous = last.get(change.cell_id)
        if previous is not None and previous.after is not None and change.before is not None \
                and previous.after.source != change.before.source:
            found[change.cell_id] = (f"{change.describe()} was edited between turn {previous.turn} and turn "
                                     f"{change.turn}")
        last[change.cell_id] = change
    for cell_id, change in last.items():
        current = now.get(cell_id)
        if change.after is not None and current is not None and current.source != change.after.source:
            found[cell_id] = f"{change.describe()} was edited after the agent changed it in turn {change.turn}"
    return found


def _undo_all(changes: list[CellChange], cells: CellList) -> None:
    for change in reversed(changes):
        _undo_one(cells, change)


def _undo_one(cells: CellList, change: CellChange) -> None:
    ids = cells.ids()
    here = ids.index(change.cell_id) if change.cell_id in ids else None
    if change.action == "insert":
        if here is not None:
            cells.delete(here)
    elif change.action == "move":
        if here is not None:
            cells.move(here, _position([i for i in ids if i != change.cell_id], change))
    elif change.before is not None:  # replace, run, delete: the cell as it was
        if here is None:
            cells.insert(_position(ids, change), change.before)
            return
        current, before = cells.cell(here), change.before
        if (current.cell_type, _unmarked(current).metadata, current.attachments) != (
                before.cell_type, before.metadata, before.attachments):
            cells.put(here, before)
            return
        if current.source != before.source:
            cells.set_source(here, before.source)
        if (current.outputs, current.execution_count) != (before.outputs, before.execution_count):
            cells.set_outputs(here, before.outputs, before.execution_count, running=False)


def _position(ids: list[str], change: CellChange) -> int:
    """Where the cell goes back: below the cell that was above it, else at its old index (within the notebook)."""
    if change.above is None:
        return 0
    if change.above in ids:
        return ids.index(change.above) + 1
    return min(change.index, len(ids))


# -- recording every primitive of a change --------------------------------------------------------------------

class _Recording(CellList):
    """Passes every primitive on to `cells`, remembering each cell touched as it was before its first touch
    (and where). Tags alone (marks) are not a change of the cell."""

    def __init__(self, cells: CellList) -> None:
        self.cells = cells
        self.first: dict[str, tuple[Cell | None, int, str | None]] = {}  # id -> (before, index, id above)

    def _touch(self, index: int, cell: Cell | None = None) -> None:
        ids = self.cells.ids()
        cell_id = cell.id if cell is not None else ids[index]
        if cell_id not in self.first:
            before = None if cell is not None else _unmarked(self.cells.cell(index))
            self.first[cell_id] = (before, index, ids[index - 1] if index > 0 else None)

    def changes(self, turn: int, path: str) -> list[CellChange]:
        """What the change did to each cell touched, read at its end."""
        ids = self.cells.ids()
        found = []
        for cell_id, (before, index, above) in self.first.items():
            after = _unmarked(self.cells.cell(ids.index(cell_id))) if cell_id in ids else None
            action = _action(before, after, index, ids.index(cell_id) if after is not None else index)
            if action is not None:
                found.append(CellChange(0, turn, path, action, cell_id, before, after, index, above))
        return found

    def __len__(self) -> int:
        return len(self.cells)

    def cell(self, index: int) -> Cell:
        return self.cells.cell(index)

    def ids(self) -> list[str]:
        return self.cells.ids()

    def insert(self, index: int, cell: Cell) -> None:
        ids = self.cells.ids()
        if cell.id not in self.first:
            self.first[cell.id] = (None, index, ids[index - 1] if index > 0 else None)
        self.cells.insert(index, cell)

    def delete(self, index: int) -> None:
        self._touch(index)
        self.cells.delete(index)

    def move(self, index: int, to_index: int) -> None:
        self._touch(index)
        self.cells.move(index, to_index)

    def put(self, index: int, cell: Cell) -> None:
        self._touch(index)
        self.cells.put(index, cell)

    def set_source(self, index: int, source: str) -> None:
        self._touch(index)
        self.cells.set_source(index, source)

    def set_outputs(self, index: int, outputs: list[dict[str, Any]], execution_count: int | None,
                    running: bool) -> None:
        self._touch(index)
        self.cells.set_outputs(index, outputs, execution_count, running)

    def set_metadata(self, index: int, key: str, value: Any) -> None:
        if key != "tags":
            self._touch(index)
        self.cells.set_metadata(index, key, value)

    def notebook_metadata(self) -> dict[str, Any]:
        return self.cells.notebook_metadata()


def _action(before: Cell | None, after: Cell | None, index: int, now: int) -> str | None:
    if before is None:
        return "insert" if after is not None else None
    if after is None:
        return "delete"
    if (before.source, before.cell_type) != (after.source, after.cell_type):
        return "replace"
    if (before.outputs, before.execution_count) != (after.outputs, after.execution_count):
        return "run"
    if before.metadata != after.metadata:
        return "replace"
    return "move" if index != now else None


class _Recorded(NotebookDocument):
    """A document whose changes are recorded in `log` as the agent's (unless the log is paused)."""

    def __init__(self, document: NotebookDocument, log: CellChanges) -> None:
        self.document = document
        self.log = log
        self.path = document.path
        self.live = document.live

    def read(self, look: Callable[[CellList], T]) -> T:
        return self.document.read(look)

    def change(self, edit: Callable[[CellList], T]) -> T:
        if not self.log.recording:
            return self.document.change(edit)
        found: list[CellChange] = []

        def recorded(cells: CellList) -> T:
            recording = _Recording(cells)
            result = edit(recording)
            found[:] = recording.changes(self.log.turn, str(self.path))
            return result

        result = self.document.change(recorded)
        for change in found:
            self.log.add(self.document, change)
        return result
