"""Rewind: the conversation, the files and the notebook's cells back to before a turn.

`Turns` hears each turn begin and end from the agent (`Agent.turns`). A turn's checkpoint is where the
conversation was (`Conversation.position`), the workspace's turn mark (its file checkpoints, `Workspace.undo_since`),
the kernel's variables by identity (the face's `variables()`) and the code the agent ran there (`note_code`); the
notebook's cells are checkpointed as the agent changes them (`cell_changes.CellChanges`: each cell as it was, with
its source, type, outputs and id), so a rewind undoes exactly the agent's changes and never the cells the user
wrote. The saved conversation gets a record of each (`TurnsObserver`, `history.Recorder`), so a rewind also
works after a kernel restart (files excepted: their checkpoints live in the process) and a resumed conversation
never brings rewound turns back.

`rewind(number, force)` first looks for work someone else did since (a file or a cell changed after the agent
changed it): then it refuses, naming each, unless `force`, which goes on and keeps that work beside its file.
The kernel's memory cannot go back: the outcome names the variables later turns created or changed and the
notebook's cells that define them, to re-run.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .cell_changes import CellChange, CellChanges
from .errors import AutoCoderError
from .history import message_text
from .state.conversation import Conversation
from .text import prompt_of
from .tools.notebook_document import Cell, NotebookDocument
from .tools.workspace import Workspace

_MAGIC_LINE = re.compile(r"^\s*[%!].*$", re.MULTILINE)


class RewindRefused(AutoCoderError):
    """Nothing was rewound: the message says why (and, for work done since, how to force it)."""


@dataclass
class Turn:
    """The checkpoint of one turn of the conversation, taken as it began."""

    number: int  # 1 for the conversation's first turn
    prompt: str  # what the user asked (without the kernel context)
    position: int  # `Conversation.position` before its message
    conversation_id: str
    workspace_mark: int | None = None  # None: the turn ran in an earlier process (its file checkpoints are gone)
    variables: dict[str, int] | None = None  # the kernel's variables by identity as it began; None: not known
    code: list[str] = field(default_factory=list)  # what the agent ran in the kernel during the turn

    @property
    def title(self) -> str:
        line = " ".join(self.prompt.split())
        return line if len(line) <= 60 else line[:59] + "…"


@dataclass
class Rewound:
    """What a rewind did: `message` to show; the kernel's `stale` variables (names) and the notebook cells to re-run
    to rebuild them (`(index, cell id)`); the rewound turn's `prompt`, for the face to offer again."""

    message: str
    prompt: str
    stale: list[str] = field(default_factory=list)
    rerun: list[tuple[int, str]] = field(default_factory=list)
    notebook: str | None = None  # where the cells to re-run are


class TurnsObserver(Protocol):
    """Hears what a rewind needs kept with the saved conversation (`history.Recorder`)."""

    def turn_began(self, number: int) -> None: ...

    def cell_changed(self, change: CellChange) -> None: ...

    def rewound(self, number: int) -> None: ...


class Turns:
    """The turns of the session's conversation, and rewinding them. Faces set `variables` (the kernel's user
    variables) and `notebook` (the document of the kernel's own notebook, where cells are re-run)."""

    def __init__(self, conversation: Conversation, workspace: Workspace, cells: CellChanges) -> None:
        self.conversation = conversation
        self.workspace = workspace
        self.cells = cells
        self.observer: TurnsObserver | None = None
        self.variables: Callable[[], Mapping[str, Any]] = dict
        self.notebook: Callable[[], NotebookDocument | None] = lambda: None
        self._turns: list[Turn] = []
        cells.recorded = self._cell_changed

    def _cell_changed(self, change: CellChange) -> None:
        if self.observer is not None:
            self.observer.cell_changed(change)

    # -- the agent's hooks (agent.TurnHooks) ----------------------------------------------------------

    def begin(self, message: str, workspace_mark: int | None) -> None:
        """A turn begins: its message (`message`, as the user wrote it) was just added to the conversation."""
        current = self.current()
        if len(current) != len(self._turns):  # another conversation now (cleared, reset, resumed)
            self._turns = current
            self.cells.forget_turns(1 if not current else current[-1].number + 1)
        turn = Turn(len(current) + 1, prompt_of(message), self.conversation.position - 1,
                    self.conversation.correlation_id, workspace_mark, self._fingerprint())
        self._turns.append(turn)
        self.cells.turn = turn.number
        if self.observer is not None:
            self.observer.turn_began(turn.number)

    def end(self) -> None:
        """The turn ended (however): the cells it marked are unmarked."""
        self.cells.clear_marks()

    def take_feedback(self) -> list[str]:
        """What the user did to the agent's changes since the model last heard (reverts), for its next request."""
        return self.cells.take_feedback()

    def change_count(self) -> int:
        return len(self.cells.changes)

    def changes_since(self, count: int) -> list[CellChange]:
        return self.cells.changes[count:]

    def note_code(self, code: str) -> None:
        """The agent ran `code` in the kernel (run_code, run_cell): the names it assigns may be stale after a rewind."""
        if self._turns:
            self._turns[-1].code.append(code)

    # -- listing and rewinding ----------------------------------------------------------------------

    def current(self) -> list[Turn]:
        """The turns of the current conversation, oldest first."""
        return [turn for turn in self._turns if turn.conversation_id == self.conversation.correlation_id]

    def load(self, starts: Mapping[int, int], changes: list[CellChange]) -> None:
        """The turns of a resumed conversation (`history.Replay`: each turn's position among the saved messages) and
        its cell changes. Their files cannot be restored any more, and the kernel's variables are not theirs."""
        first = 1 if self.conversation.system_prompt else 0
        messages = self.conversation.messages
        self._turns = []
        for number, start in sorted(starts.items()):
            position = start + first
            prompt = prompt_of(message_text(messages[position].get("content"))) if position < len(messages) else ""
            self._turns.append(Turn(number, prompt, position, self.conversation.correlation_id))
        self.cells.load(changes)
        self.cells.turn = self._turns[-1].number if self._turns else 0

    def rewind(self, number: int | None = None, force: bool = False) -> Rewound:
        """Back to before turn `number` (default: the last): the conversation, the files and the notebook cells the
        agent changed since. Raises RewindRefused, changing nothing, when there is no such turn or when someone
        changed the agent's work since (unless `force`)."""
        turns = self.current()
        if not turns:
            raise RewindRefused("Nothing to rewind: this conversation has no turn yet.")
        number = turns[-1].number if number is None else number
        if not 1 <= number <= len(turns):
            listing = "; ".join(f"{turn.number}: {turn.title}" for turn in turns[-10:])
            raise RewindRefused(f"There is no turn {number}: this conversation has {len(turns)} turn(s) ({listing}).")
        target, later = turns[number - 1], turns[number - 1:]
        marks = [turn.workspace_mark for turn in later if turn.workspace_mark is not None]
        changed = self.workspace.changed_outside(min(marks)) if marks else []
        # A file's cells come back with the file (its checkpoint), unless that turn ran in an earlier process.
        unfiled = {turn.number for turn in later if turn.workspace_mark is None}
        changes = [change for change in self.cells.of_turns(number) if change.live or change.turn in unfiled]
        conflicts = self.cells.check(changes).conflicts
        if (changed or conflicts) and not force:
            raise RewindRefused(
                f"Not rewound: work was changed by someone else after turn {number} changed it, and rewinding would "
                f"replace it: {'; '.join(changed + conflicts)}. Look at it first; to rewind anyway (what is "
                "replaced is kept beside its file), use --force.")
        report = self.cells.undo(changes, force=True)
        lines = [f"Rewound to before turn {number} ({target.title})."]
        lines += [self._keep_overwritten(path, cells) for path, cells in report.overwritten.items()]
        if report.message():
            lines.append(report.message())
        files = self.workspace.undo_since(min(marks)) if marks else ""
        if files:
            lines.append(files)
        if len(marks) < len(later) and any(turn.workspace_mark is None for turn in later):
            lines.append("Files changed by turns of an earlier session (before a restart) are not restored.")
        stale = self._stale(target, later)
        removed = self.conversation.truncate(target.position)
        lines.append(f"The conversation is back to before that turn ({removed} message(s) removed).")
        self.cells.forget_turns(number)
        self._turns = [turn for turn in self._turns if turn not in later]
        self.cells.turn = number - 1
        if self.observer is not None:
            self.observer.rewound(number)
        notebook, rerun = self._defining_cells(stale)
        if stale:
            lines.append(f"The kernel's memory cannot be rewound: these variables were created or changed since "
                         f"and keep their current values: {', '.join(stale)}.")
            if rerun:
                lines.append(f"Re-run the cell(s) that define them: {', '.join(f'[{i}]' for i, _ in rerun)}.")
        elif target.variables is None:
            lines.append("The kernel's variables are not known for that turn (it ran in another kernel).")
        return Rewound(" ".join(lines), target.prompt, stale, rerun, notebook)

    def _keep_overwritten(self, path: str, cells: list[Cell]) -> str:
        """A forced rewind replaced these cells: keep them, as a notebook beside the one they were in."""
        notebook = {"cells": [cell.to_dict() for cell in cells], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
        kept = self.workspace.keep_beside(Path(path), json.dumps(notebook, indent=1).encode("utf-8"),
                                          ".before-rewind.ipynb")
        return f"Cells edited since (replaced by the rewind) were kept in {kept}."

    def _fingerprint(self) -> dict[str, int] | None:
        try:
            return {name: id(value) for name, value in self.variables().items()}
        except Exception:  # a face's namespace that cannot be read: not known
            return None

    def _stale(self, target: Turn, later: list[Turn]) -> list[str]:
        """The kernel variables created, rebound or deleted since `target` began, and those the agent's code in the
        rewound turns assigned (a table changed in place keeps its identity)."""
        now = self._fingerprint() or {}
        before = target.variables
        names: set[str] = set()
        if before is not None:
            names |= {name for name, identity in now.items() if before.get(name) != identity}
            names |= {name for name in before if name not in now}
        for turn in later:
            for code in turn.code:
                names |= assigned_names(code) & (set(now) | set(before or {}))
        return sorted(names)

    def _defining_cells(self, stale: list[str]) -> tuple[str | None, list[tuple[int, str]]]:
        """The kernel's notebook and its code cells that assign any of `stale`: (index, id)."""
        try:
            document = self.notebook() if stale else None
            cells = document.cells() if document is not None else []
        except AutoCoderError:
            return None, []
        wanted = set(stale)
        found = [(index, cell.id) for index, cell in enumerate(cells)
                 if cell.cell_type == "code" and assigned_names(cell.source) & wanted]
        return (str(document.path) if document is not None and found else None), found


def assigned_names(code: str) -> set[str]:
    """The top-level names `code` binds or changes: assignments, definitions, imports, `del`, and the variable under
    an item or attribute assignment (`df["x"] = ...`). Magic and shell lines are skipped; unparsable code binds none."""
    try:
        tree = ast.parse(_MAGIC_LINE.sub("", code))
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names if alias.name != "*"}
        elif isinstance(node, (ast.Subscript, ast.Attribute)) and isinstance(node.ctx, (ast.Store, ast.Del)):
            base = node.value
            while isinstance(base, (ast.Subscript, ast.Attribute)):
                base = base.value
            if isinstance(base, ast.Name):
                names.add(base.id)
    return names
