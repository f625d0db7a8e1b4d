"""Tools that exist when the agent runs inside a kernel: the user namespace, running code, notebooks.

This module is core: it never imports IPython. The face (magics, panel) hands in the user namespace
as a mapping and a `run_code` callable that executes code where it must run (the kernel's main
thread); `run_python` below is the plain-Python executor such a callable can wrap.
"""

from __future__ import annotations

import ast
import difflib
import inspect
import io
import sys
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..providers.base import ToolDefinition
from ..text import scrub, strip_ansi, truncate
from .notebook_document import CELL_TYPES, Cell, MemoryNotebook, NotebookDocument, Notebooks, NotLive
from .registry import ToolError, ToolOutput

if TYPE_CHECKING:
    from ..cell_changes import CellChange
    from .workspace import Workspace

OUTPUT_LIMIT = 10000  # like run_command: head and tail kept, the middle cut
NOTEBOOK_LIMIT = 30000  # one page of read_notebook
CELL_SOURCE_LIMIT = 20000  # a longer cell shows its head and tail
CELL_OUTPUT_LIMIT = 500
EDIT_ACTIONS = ("insert", "replace", "delete", "move")


# -- describing values (also used by the face for its context summary) -------------------------

def describe_value(name: str, value: Any, *, detail: int = 600) -> str:
    """A short block about a variable: type and size; for tables columns, dtypes and a few rows.

    Duck-typed (no pandas or numpy import). An object's `_repr_llm_()` wins when it has one.
    """
    kind = type(value).__name__
    llm_repr = getattr(type(value), "_repr_llm_", None)
    if callable(llm_repr):
        try:
            return f"{name}: {kind}\n{_indent(truncate(str(llm_repr(value)), detail))}"
        except Exception as exc:  # a broken _repr_llm_ should not hide the variable
            return f"{name}: {kind} (_repr_llm_ failed: {type(exc).__name__})"
    if _is_table(value):
        return _describe_table(name, value, kind, detail)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        shape = _safe(lambda: tuple(value.shape))
        if shape:  # an array; a numpy scalar (shape ()) is shown by its value below
            return f"{name}: {kind} shape={shape} dtype={_safe(lambda: value.dtype)}"
    if isinstance(value, types.ModuleType):
        return f"{name}: module {value.__name__}"
    if isinstance(value, type):
        return f"{name}: class {value.__qualname__}"
    if callable(value):
        return f"{name}: {kind} {name}{_signature(value)}"
    sized = isinstance(value, (str, bytes, list, tuple, dict, set, frozenset))
    header = f"{name}: {kind}" + (f" len={len(value)}" if sized else "")
    return f"{header} = {truncate(safe_repr(value), min(detail, 200))}"


def inspect_value(name: str, value: Any, *, limit: int = 4000) -> str:
    """A longer view than `describe_value`: the description, then the repr (or a table's first rows)."""
    lines = [describe_value(name, value, detail=limit // 2)]
    if _is_table(value):
        lines.append(_safe(lambda: value.head(10).to_string()) or "")
    elif callable(value) and not isinstance(value, type):
        lines.append(_safe(lambda: inspect.getdoc(value)) or "(no docstring)")
    else:
        lines.append(safe_repr(value))
    return truncate("\n".join(line for line in lines if line), limit)


def _is_table(value: Any) -> bool:
    return not isinstance(value, type) and all(hasattr(value, a) for a in ("columns", "dtypes", "head", "shape"))


def _describe_table(name: str, value: Any, kind: str, detail: int) -> str:
    lines = [f"{name}: {kind} shape={_safe(lambda: tuple(value.shape))}"]
    dtypes = _safe(lambda: {str(k): str(v) for k, v in value.dtypes.items()}) or {}
    columns = [str(c) for c in _safe(lambda: list(value.columns)) or []]
    shown = ", ".join(f"{c} ({dtypes.get(c, '?')})" for c in columns[:40])
    lines.append(f"  columns: {shown}" + (f", ... {len(columns) - 40} more" if len(columns) > 40 else ""))
    head = _safe(lambda: value.head(3).to_string()) or _safe(lambda: str(value.head(3)))
    if head:
        lines.append(_indent(truncate(head, detail)))
    return "\n".join(lines)


def _signature(function: Any) -> str:
    try:
        return str(inspect.signature(function))
    except (TypeError, ValueError):
        return "(...)"


def _safe(get: Callable[[], Any]) -> Any:
    try:
        return get()
    except Exception:  # describing must never fail because of one odd object
        return None


def safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ should not hide the variable
        return f"<repr failed: {type(exc).__name__}>"


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def user_variables(namespace: Mapping[str, Any], hidden: Iterable[str] = ()) -> dict[str, Any]:
    """The user's own names: no `_`-prefixed names, none IPython put there (`hidden`), no modules, and no
    classes or functions imported from elsewhere (`from pathlib import Path`); those defined here stay."""
    skip = set(hidden) | {"In", "Out", "exit", "quit", "get_ipython"}
    return {
        name: value
        for name, value in list(namespace.items())
        if not name.startswith("_") and name not in skip and not isinstance(value, types.ModuleType)
        and not _imported_definition(value)
    }


def _imported_definition(value: Any) -> bool:
    definition = isinstance(value, (type, types.FunctionType, types.BuiltinFunctionType))
    return definition and getattr(value, "__module__", "__main__") != "__main__"


# -- running code ------------------------------------------------------------------------------

@dataclass
class CodeOutcome:
    stdout: str = ""
    stderr: str = ""
    result: str | None = None  # repr of the last expression's value, when it is not None
    error: str | None = None  # formatted traceback
    value: Any = field(default=None, repr=False)  # the last expression's value itself
    images: list[bytes] = field(default_factory=list)  # PNG/JPEG outputs the face captured (plots)

    def hide(self, secrets: Iterable[str | None]) -> None:
        """Hide `secrets` in every text of the outcome (`text.scrub`), wherever it is shown next."""
        secrets = list(secrets)
        self.stdout, self.stderr = scrub(self.stdout, secrets), scrub(self.stderr, secrets)
        self.result = None if self.result is None else scrub(self.result, secrets)
        self.error = None if self.error is None else scrub(self.error, secrets)

    def to_text(self, limit: int = OUTPUT_LIMIT) -> str:
        parts = []
        if self.stdout:
            parts.append(f"stdout:\n{self.stdout.rstrip()}")
        if self.stderr:
            parts.append(f"stderr:\n{self.stderr.rstrip()}")
        if self.result is not None:
            parts.append(f"result: {self.result}")
        if self.error:
            parts.append(f"exception:\n{self.error.rstrip()}")
        return truncate("\n".join(parts) or "(no output)", limit)


class _Tee:
    """Writes to the real stream (so the user sees it in the cell) and keeps a copy for the model.
    Everything else (encoding, isatty, fileno...) is the real stream's, so libraries see what they expect."""

    def __init__(self, stream: TextIO, secrets: Iterable[str | None] = ()) -> None:
        self.stream = stream
        self.copy = io.StringIO()
        self.secrets = list(secrets)  # hidden in what the cell shows (and the notebook saves)

    def write(self, text: str) -> int:
        self.copy.write(text)
        self.stream.write(scrub(text, self.secrets) if self.secrets else text)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def run_python(code: str, namespace: dict[str, Any], filename: str = "<run_code>",
               secrets: Iterable[str | None] = ()) -> CodeOutcome:
    """Execute `code` in `namespace` like a cell: statements, then the value of a final expression. What it
    prints shows with `secrets` hidden (the copy for the model is scrubbed by the agent).

    Must be called on the thread that owns the namespace (the kernel's main thread).
    """
    outcome = CodeOutcome()
    try:
        tree = ast.parse(code, filename=filename)
    except SyntaxError:
        outcome.error = traceback.format_exc(limit=0)
        return outcome
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    assert last is None or isinstance(last, ast.Expr)
    out, err = _Tee(sys.stdout, secrets), _Tee(sys.stderr, secrets)
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err  # type: ignore[assignment]
    try:
        exec(compile(tree, filename, "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), filename, "eval"), namespace)
            if value is not None:
                outcome.value = value
                outcome.result = truncate(safe_repr(value), OUTPUT_LIMIT // 2)
    except BaseException as exc:  # noqa: B036 - the user's code may raise anything, SystemExit included
        if isinstance(exc, KeyboardInterrupt):
            raise
        # Drop this function's own frame: the model should see only its code.
        frames = traceback.TracebackException(type(exc), exc, exc.__traceback__.tb_next if exc.__traceback__ else None)
        outcome.error = "".join(frames.format())
    finally:
        sys.stdout, sys.stderr = saved
        outcome.stdout, outcome.stderr = out.copy.getvalue(), err.copy.getvalue()
    return outcome


# -- notebooks as text --------------------------------------------------------------------------

def notebook_as_text(cells: Sequence[Cell], name: str, *, kernel: str = "", live: bool = False, start: int = 0,
                     limit: int = NOTEBOOK_LIMIT) -> str:
    """Each cell from `start` (index, id, type, source, short text outputs; images as placeholders) until `limit`
    characters, then where to continue. A very long source keeps its head and tail."""
    where = "the live document, unsaved edits included" if live else "as saved on disk"
    lines = [f"{name}: {len(cells)} cells ({kernel or 'unknown kernel'}; {where})"]
    if start:
        lines.append(f"[cells 0-{start - 1} not shown]")
    size = sum(len(line) for line in lines)
    end = len(cells)
    for index in range(start, len(cells)):
        block = cell_as_text(index, cells[index])
        if index > start and size + len(block) > limit:
            end = index
            break
        lines.append(block)
        size += len(block) + 1
    if end < len(cells):
        lines.append(f"[cells {end}-{len(cells) - 1} not shown: read_notebook with start={end} continues]")
    return "\n".join(lines)


def cell_as_text(index: int, cell: Cell) -> str:
    count = f" (executed as [{cell.execution_count}])" if cell.execution_count else ""
    lines = [f"[{index}] {cell.cell_type} id={cell.id}{count}", truncate(cell.source.rstrip(), CELL_SOURCE_LIMIT)
             or "(empty)"]
    for output in cell.outputs:
        lines.append(_indent("-> " + truncate(_output_text(output).rstrip(), CELL_OUTPUT_LIMIT)))
    return "\n".join(lines)


def _output_text(output: Any) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        text = output.get("text", "")
        return f"{output.get('name', 'stdout')}: {''.join(text) if isinstance(text, list) else text}"
    if kind == "error":
        return f"error: {output.get('ename')}: {output.get('evalue')}"
    data = output.get("data", {})
    for mime in ("text/plain", "text/markdown"):
        if mime in data:
            value = data[mime]
            return "".join(value) if isinstance(value, list) else str(value)
    return "[" + ", ".join(sorted(data)) + "]"


@dataclass
class CellRun:
    """What running a cell produced: nbformat outputs (secrets hidden), the execution count it took, and the
    images among the outputs (for a vision model)."""

    outputs: list[dict[str, Any]]
    execution_count: int | None
    images: list[bytes] = field(default_factory=list)

    def to_text(self, limit: int = OUTPUT_LIMIT) -> str:
        parts = []
        for output in self.outputs:
            if output.get("output_type") == "error":  # the model needs the whole traceback, without colours
                parts.append(strip_ansi("\n".join(output.get("traceback") or [])) or _output_text(output))
            else:
                parts.append(_output_text(output).rstrip())
        return truncate("\n".join(parts) or "(no output)", limit)


class _Seen:
    """The notebooks as the model last read them (read_notebook) and changed them since. An index it gives means
    the cell it saw there, even after the user inserted cells above; a cell it changes must still have the source
    it saw, or the user's edit would be lost; a position for a new or moved cell needs the layout it saw."""

    def __init__(self) -> None:
        self._layouts: dict[Path, list[str]] = {}
        self._sources: dict[Path, dict[str, str]] = {}

    def saw(self, path: Path, cells: Sequence[Cell]) -> None:
        self._layouts[path] = [cell.id for cell in cells]
        self._sources[path] = {cell.id: cell.source for cell in cells}

    def cell_id(self, path: Path, index: int, current: list[str]) -> str:
        layout = self._layouts.get(path, current)
        if not 0 <= index < len(layout):
            raise ToolError(f"index {index} is out of range: {path.name} has {len(layout)} cells (0-{len(layout) - 1})"
                            " as you last read it; read_notebook shows them.")
        return layout[index]

    def position(self, path: Path, index: int, current: list[str]) -> int:
        layout = self._layouts.get(path)
        if layout is not None and layout != current:
            raise ToolError(f"The user added, removed or moved cells of {path.name} since you read it, so index "
                            f"{index} may mean another place now: read_notebook again, then retry.")
        return index

    def index_shown(self, path: Path, cell_id: str, current: list[str]) -> int:
        layout = self._layouts.get(path, current)
        return layout.index(cell_id) if cell_id in layout else current.index(cell_id)

    def source(self, path: Path, cell_id: str) -> str | None:
        return self._sources.get(path, {}).get(cell_id)

    def inserted(self, path: Path, position: int, cell: Cell) -> None:
        if path in self._layouts:
            self._layouts[path].insert(position, cell.id)
        self.wrote(path, cell)

    def removed(self, path: Path, cell_id: str) -> None:
        if cell_id in self._layouts.get(path, []):
            self._layouts[path].remove(cell_id)

    def moved(self, path: Path, cell_id: str, to_index: int) -> None:
        self.removed(path, cell_id)
        if path in self._layouts:
            self._layouts[path].insert(to_index, cell_id)

    def wrote(self, path: Path, cell: Cell) -> None:
        self._sources.setdefault(path, {})[cell.id] = cell.source


# -- the tools ----------------------------------------------------------------------------------

RunCode = Callable[[str], "CodeOutcome | Awaitable[CodeOutcome]"]
# Runs a cell's source in the kernel as the user's run would (history, execution count), outputs captured.
RunCell = Callable[[str], "CellRun | Awaitable[CellRun]"]
# Returns None once the cell is added, or a sentence saying when it will appear.
InsertCell = Callable[[str, str], "str | None | Awaitable[str | None]"]


def build_notebook_tools(
    namespace: Mapping[str, Any],
    run_code: RunCode,
    workspace: Callable[[], Workspace],
    *,
    hidden: Callable[[], Iterable[str]] = tuple,
    open_notebook: Callable[[], Path | None] = lambda: None,
    insert_cell: InsertCell | None = None,
    notebooks: Callable[[], Notebooks] | None = None,
    run_cell: RunCell | None = None,
) -> list[ToolDefinition]:
    """list_variables, inspect_variable, run_code, read_notebook, edit_notebook, and run_cell when `run_cell` is
    given.

    `namespace` is the user namespace (read live). `run_code(code)` executes code where the user's code
    runs and returns a CodeOutcome (with the images it displayed, which go to a vision model).
    `workspace()` gives the session's workspace (created after the tools). `notebooks()` opens notebook
    documents (the session's: live for the open notebook when the server has collaboration); by default files,
    with `open_notebook()` (the notebook the user has open, if known) never rewritten on disk.
    `insert_cell(source, cell_type)` adds a cell below the current one through the frontend when the open
    notebook cannot be edited live. `run_cell(source)` runs a cell's source in the kernel.
    """
    seen = _Seen()
    last_edited: list[str] = []  # the id of the cell the last edit_notebook left (Accept & Run runs it)
    told_how = [False]  # the how-to of live editing is said with the first refusal only
    default_notebooks = Notebooks(workspace, open_notebook=open_notebook)
    opener = notebooks or (lambda: default_notebooks)

    def list_variables() -> str:
        variables = user_variables(namespace, hidden())
        if not variables:
            return "The user namespace has no variables yet."
        blocks = [describe_value(name, value, detail=300) for name, value in variables.items()]
        return truncate("\n".join(blocks), OUTPUT_LIMIT)

    def inspect_variable(name: str) -> str:
        if name not in namespace:
            known = ", ".join(sorted(user_variables(namespace, hidden()))[:50]) or "none"
            raise ToolError(f"There is no variable {name!r} in the user namespace. Variables: {known}.")
        return inspect_value(name, namespace[name])

    async def run_code_tool(code: str) -> ToolOutput:
        outcome = run_code(code)
        if inspect.isawaitable(outcome):
            outcome = await outcome
        return ToolOutput(outcome.to_text(), outcome.images, failed=outcome.error is not None)

    def read_notebook(path: str, start: int = 0) -> str:
        document = opener().open(path)
        cells, metadata = document.read(lambda found: ([found.cell(i) for i in range(len(found))],
                                                       found.notebook_metadata()))
        if not 0 <= start <= max(len(cells) - 1, 0):
            raise ToolError(f"start {start} is out of range: {path} has {len(cells)} cells.")
        seen.saw(document.path, cells)
        kernel = (metadata.get("kernelspec") or {}).get("name", "")
        return notebook_as_text(cells, path, kernel=kernel, live=document.live, start=start)

    def _writable(path: str, falls_back: bool = False) -> NotebookDocument:
        """The document to change; NotLive for an open notebook that cannot be edited live. `falls_back`: the
        caller adds the cell through the frontend instead, so this is no refusal and keeps the how-to for one."""
        try:
            return opener().open(path, write=True)
        except NotLive as refused:
            if falls_back:
                raise
            if told_how[0] or not refused.how_to:
                raise NotLive(refused.path, refused.reason) from None
            told_how[0] = True
            raise

    def _cell_id(document: NotebookDocument, index: int | None, cell_id: str | None, action: str) -> str:
        if cell_id is not None:
            return cell_id
        if index is None:
            raise ToolError(f"{action} needs `cell_id` or `index` (read_notebook shows both).")
        return seen.cell_id(document.path, index, document.ids())

    def _check(action: str, source: str | None, cell_type: str | None, to_index: int | None) -> None:
        if action not in EDIT_ACTIONS:
            raise ToolError(f"Unknown action {action!r}: use one of {', '.join(EDIT_ACTIONS)}.")
        if cell_type is not None and cell_type not in CELL_TYPES:
            raise ToolError(f"Unknown cell_type {cell_type!r}: use code, markdown or raw.")
        if action in ("insert", "replace") and source is None:
            raise ToolError(f"{action} needs the cell's `source`.")
        if action == "move" and to_index is None:
            raise ToolError("move needs `to_index`, the index the cell should end at.")

    def preview_edit(path: str, action: str, index: int | None = None, cell_id: str | None = None,
                     source: str | None = None, cell_type: str | None = None, to_index: int | None = None) -> str:
        _check(action, source, cell_type, to_index)
        try:
            document = opener().open(path, write=True)
        except NotLive:
            if action != "insert" or insert_cell is None:
                _writable(path)  # raises, saying why (and the first time how to turn live editing on)
            return f"Add a new cell below the current cell of the open notebook {path}:\n{source or ''}"
        ids = document.ids() if document.path.exists() or document.live else []
        if action == "insert":
            position = len(ids) if index is None else seen.position(document.path, index, ids)
            if not 0 <= position <= len(ids):
                raise ToolError(f"index {index} is out of range: {path} has {len(ids)} cells (insert at 0-{len(ids)}).")
            return _diff(path, f"new {cell_type or 'code'} cell at [{position}]", "", source or "")
        target = _cell_id(document, index, cell_id, action)
        cell = document.cell(target)
        shown = f"[{seen.index_shown(document.path, target, ids)}] id={target}"
        if action == "delete":
            return _diff(path, f"delete cell {shown}", cell.source, "")
        if action == "move":
            return f"Move cell {shown} of {path} to [{to_index}]:\n{cell.source}"
        kind = f" (now {cell_type})" if cell_type and cell_type != cell.cell_type else ""
        return _diff(path, f"cell {shown}{kind}", cell.source, source or "")

    async def edit_notebook(path: str, action: str, index: int | None = None, cell_id: str | None = None,
                            source: str | None = None, cell_type: str | None = None,
                            to_index: int | None = None) -> str:
        _check(action, source, cell_type, to_index)
        falls_back = action == "insert" and insert_cell is not None
        try:
            document = _writable(path, falls_back)
        except NotLive:
            if not falls_back:
                raise
            return await _insert_below(path, source or "", cell_type or "code")
        ids = document.ids() if document.path.exists() or document.live else []
        if action == "insert":
            position = len(ids) if index is None else seen.position(document.path, index, ids)
            cell = document.insert(position, source or "", cell_type or "code")
            seen.inserted(document.path, position, cell)
            last_edited[:] = [cell.id]
            return f"{path}: inserted {cell.cell_type} cell [{position}] id={cell.id}; {len(ids) + 1} cells now."
        target = _cell_id(document, index, cell_id, action)
        expected = seen.source(document.path, target)
        if action == "delete":
            document.delete(target, expected_source=expected)
            seen.removed(document.path, target)
            return f"{path}: deleted cell id={target}; {len(ids) - 1} cells now."
        if action == "move":
            assert to_index is not None
            seen.position(document.path, to_index, ids)
            moved = document.move(target, to_index)
            seen.moved(document.path, target, to_index)
            return f"{path}: moved cell id={moved.id} to [{to_index}]."
        cell = document.replace(target, source or "", cell_type=cell_type, expected_source=expected)
        seen.wrote(document.path, cell)
        last_edited[:] = [cell.id]
        return f"{path}: replaced cell [{seen.index_shown(document.path, target, ids)}] id={target} ({cell.cell_type})."

    def review_edit(path: str, action: str, index: int | None = None, cell_id: str | None = None,
                    source: str | None = None, cell_type: str | None = None,
                    to_index: int | None = None) -> list[CellChange]:
        """The cell the edit would change, as a CellChange (before and after), from the edit applied to a copy."""
        from ..cell_changes import CellChanges

        _check(action, source, cell_type, to_index)
        try:
            document = opener().open(path, write=True)
        except NotLive:
            return []  # a cell added below through the frontend: the preview says so
        exists = document.live or document.path.exists()
        copy = MemoryNotebook(document.snapshot() if exists else None, document.path)
        log = CellChanges(lambda _: copy)
        proposed = log.watch(copy)
        ids = copy.ids()
        if action == "insert":
            proposed.insert(len(ids) if index is None else seen.position(document.path, index, ids), source or "",
                            cell_type or "code")
        else:
            target = _cell_id(document, index, cell_id, action)
            if action == "delete":
                proposed.delete(target)
            elif action == "move":
                assert to_index is not None
                proposed.move(target, to_index)
            else:
                proposed.replace(target, source or "", cell_type=cell_type)
        for change in log.changes:
            if change.before is None:
                change.cell_id = ""  # the copy's id for a new cell is not the one it will get
        return log.changes

    async def run_edited(path: str, **_: Any) -> ToolOutput:
        """Accept & Run: run the code cell the last edit left."""
        if run_cell is None or not last_edited:
            raise ToolError("there is no kernel to run it in here.")
        return await run_cell_tool(path, cell_id=last_edited[0])

    async def _insert_below(path: str, source: str, cell_type: str) -> str:
        assert insert_cell is not None
        inserted = insert_cell(source, cell_type)
        if inspect.isawaitable(inserted):
            inserted = await inserted
        return inserted or f"Added a new {cell_type} cell below the current cell of the open notebook {path}."

    def preview_run(path: str, index: int | None = None, cell_id: str | None = None) -> str:
        document = _writable(path)
        target = _cell_id(document, index, cell_id, "run_cell")
        cell = document.cell(target)
        if cell.cell_type != "code":
            raise ToolError(f"cell id={target} of {path} is a {cell.cell_type} cell: there is nothing to run.")
        shown = seen.index_shown(document.path, target, document.ids())
        return f"Run cell [{shown}] id={target} of {path} in the kernel:\n{cell.source}"

    async def run_cell_tool(path: str, index: int | None = None, cell_id: str | None = None) -> ToolOutput:
        assert run_cell is not None
        document = _writable(path)
        target = _cell_id(document, index, cell_id, "run_cell")
        cell = document.cell(target)
        if cell.cell_type != "code":
            raise ToolError(f"cell id={target} of {path} is a {cell.cell_type} cell: there is nothing to run.")
        document.set_outputs(target, [], None, running=True)
        try:
            outcome = run_cell(cell.source)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except BaseException:
            document.set_outputs(target, [], None)  # no [*] left behind by a run that was stopped
            raise
        header = f"Ran cell id={target} of {path} as [{outcome.execution_count}]"
        if seen.source(document.path, target) not in (None, cell.source):
            header += f" (the user had changed it since you read it; it ran as:\n{cell.source}\n)"
        try:
            document.set_outputs(target, outcome.outputs, outcome.execution_count)
        except ToolError as exc:
            header += f"; its outputs could not be written into the notebook: {exc}"
        return ToolOutput(f"{header}:\n{outcome.to_text()}", outcome.images)

    def preview_code(code: str) -> str:
        return code

    tools = [
        ToolDefinition(
            "list_variables",
            "List the variables in the user's Python kernel: name, type, size; tables with columns and dtypes.",
            {"type": "object", "properties": {}},
            list_variables,
        ),
        ToolDefinition(
            "inspect_variable",
            "Show one variable of the user's kernel in more detail (its repr, a table's first rows, a docstring).",
            {"type": "object", "properties": {"name": {"type": "string", "description": "the variable name"}},
             "required": ["name"]},
            inspect_variable,
        ),
        ToolDefinition(
            "run_code",
            "Run Python code in the user's kernel namespace (variables persist, like a notebook cell). Returns "
            "stdout, stderr, the repr of the last expression and any exception. Output is truncated.",
            {"type": "object", "properties": {"code": {"type": "string", "description": "Python source"}},
             "required": ["code"]},
            run_code_tool,
            kind="command",
            preview=preview_code,
        ),
        ToolDefinition(
            "read_notebook",
            "Read a Jupyter notebook (.ipynb) as compact text: index, id, type and source of each cell, short text "
            "outputs (images as placeholders). The notebook the user has open is read live, unsaved edits "
            "included. Long notebooks come in pages: `start` is the first cell index shown.",
            {"type": "object", "properties": {
                "path": {"type": "string", "description": "path of the .ipynb"},
                "start": {"type": "integer", "description": "first cell index to show (default 0)"}},
             "required": ["path"]},
            read_notebook,
        ),
        ToolDefinition(
            "edit_notebook",
            "Change one cell of a notebook: action insert (at `index`, default the end), replace (new `source`, "
            "and a new `cell_type` if given), delete, or move (to `to_index`). Address the cell by `cell_id` "
            "(surest: ids stay when cells are added above) or by its 0-based `index` as read_notebook showed it. "
            "The notebook the user has open is changed live when its server allows it.",
            {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "path of the .ipynb"},
                    "action": {"type": "string", "enum": list(EDIT_ACTIONS)},
                    "index": {"type": "integer", "description": "0-based cell index"},
                    "cell_id": {"type": "string", "description": "the cell's id (read_notebook shows it)"},
                    "source": {"type": "string", "description": "the cell's new source (insert, replace)"},
                    "cell_type": {"type": "string", "enum": list(CELL_TYPES), "default": "code"},
                    "to_index": {"type": "integer", "description": "move: the index the cell ends at"},
                },
                "required": ["path", "action"],
            },
            edit_notebook,
            kind="write",
            preview=preview_edit,
            review=review_edit,
            run_after=run_edited if run_cell is not None else None,
        ),
    ]
    if run_cell is not None:
        tools.append(ToolDefinition(
            "run_cell",
            "Run one code cell of a notebook in the user's kernel, as if the user ran it: its outputs and execution "
            "count are written into that cell, and returned here (images as placeholders). Address it by `cell_id` "
            "or `index`.",
            {"type": "object", "properties": {
                "path": {"type": "string", "description": "path of the .ipynb"},
                "index": {"type": "integer", "description": "0-based cell index"},
                "cell_id": {"type": "string", "description": "the cell's id (read_notebook shows it)"}},
             "required": ["path"]},
            run_cell_tool,
            kind="command",
            preview=preview_run,
        ))
    return tools


def _diff(path: str, what: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{path} {what}",
                                 f"b/{path} {what}", n=3)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines).rstrip("\n") or "(no change)"
