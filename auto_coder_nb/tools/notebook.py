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
import json
import sys
import traceback
import types
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from ..providers.base import ToolDefinition
from ..text import scrub, truncate
from .registry import ToolError, ToolOutput

if TYPE_CHECKING:
    from .workspace import Workspace

OUTPUT_LIMIT = 10000  # like run_command: head and tail kept, the middle cut
NOTEBOOK_LIMIT = 30000
CELL_OUTPUT_LIMIT = 500
EDIT_ACTIONS = ("insert", "replace", "delete")


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

def notebook_as_text(notebook: Any, name: str, limit: int = NOTEBOOK_LIMIT) -> str:
    """index, type, source and short text outputs of each cell; images become a placeholder."""
    cells = notebook.cells
    kernel = notebook.metadata.get("kernelspec", {}).get("name", "unknown kernel")
    lines = [f"{name}: {len(cells)} cells ({kernel})"]
    for index, cell in enumerate(cells):
        count = cell.get("execution_count")
        lines.append(f"[{index}] {cell.cell_type}" + (f" (executed as [{count}])" if count else ""))
        lines.append(cell.source.rstrip() or "(empty)")
        for output in cell.get("outputs", []):
            lines.append(_indent("-> " + truncate(_output_text(output).rstrip(), CELL_OUTPUT_LIMIT)))
    return truncate("\n".join(lines), limit)


def _output_text(output: Any) -> str:
    kind = output.get("output_type")
    if kind == "stream":
        return f"{output.get('name', 'stdout')}: {output.get('text', '')}"
    if kind == "error":
        return f"error: {output.get('ename')}: {output.get('evalue')}"
    data = output.get("data", {})
    if "text/plain" in data:
        return str(data["text/plain"])
    if "text/markdown" in data:
        return str(data["text/markdown"])
    return "[" + ", ".join(sorted(data)) + "]"


# -- the tools ----------------------------------------------------------------------------------

RunCode = Callable[[str], "CodeOutcome | Awaitable[CodeOutcome]"]
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
) -> list[ToolDefinition]:
    """list_variables, inspect_variable, run_code, read_notebook, edit_notebook.

    `namespace` is the user namespace (read live). `run_code(code)` executes code where the user's code
    runs and returns a CodeOutcome (with the images it displayed, which go to a vision model).
    `workspace()` gives the session's workspace (created after the tools). `open_notebook()` is the
    notebook the user has open, if known: it is never rewritten on disk; `insert_cell(source, cell_type)`
    adds a cell to it through the frontend instead.
    """

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

    def read_notebook(path: str) -> str:
        target = workspace().resolve(path)
        return notebook_as_text(_read(workspace(), target), path)

    def _is_open(target: Path) -> bool:
        current = open_notebook()
        return current is not None and current.resolve() == target.resolve()

    def _plan(path: str, action: str, index: int | None, source: str | None, cell_type: str) -> tuple[Path, Any]:
        """Check the arguments and build the changed notebook, without writing it."""
        import nbformat

        if action not in EDIT_ACTIONS:
            raise ToolError(f"Unknown action {action!r}: use one of {', '.join(EDIT_ACTIONS)}.")
        if cell_type not in ("code", "markdown", "raw"):
            raise ToolError(f"Unknown cell_type {cell_type!r}: use code, markdown or raw.")
        if action != "delete" and source is None:
            raise ToolError(f"{action} needs the cell's `source`.")
        target = workspace().resolve(path, write=True)
        if not target.name.endswith(".ipynb"):
            raise ToolError(f"{path} is not a notebook (.ipynb). Use edit_file for other files.")
        notebook = _read(workspace(), target) if target.exists() else nbformat.v4.new_notebook()
        cells = notebook.cells
        if action == "insert":
            position = len(cells) if index is None else index
            if not 0 <= position <= len(cells):
                raise ToolError(f"index {index} is out of range: the notebook has {len(cells)} cells (0-{len(cells)}).")
            make = {"code": nbformat.v4.new_code_cell, "markdown": nbformat.v4.new_markdown_cell,
                    "raw": nbformat.v4.new_raw_cell}[cell_type]
            cells.insert(position, make(source))
        else:
            if index is None or not 0 <= index < len(cells):
                raise ToolError(f"{action} needs an `index` between 0 and {len(cells) - 1} "
                                f"(the notebook has {len(cells)} cells; read_notebook shows them).")
            if action == "delete":
                del cells[index]
            else:
                cells[index].source = source
                if cells[index].cell_type == "code":
                    cells[index].outputs, cells[index].execution_count = [], None
        try:
            nbformat.validate(notebook)
        except nbformat.ValidationError as exc:
            raise ToolError(f"The edited notebook would not be valid: {exc.message}") from None
        return target, notebook

    def preview_edit(path: str, action: str, index: int | None = None, source: str | None = None,
                     cell_type: str = "code") -> str:
        target, notebook = _plan(path, action, index, source, cell_type)
        before = notebook_as_text(_read(workspace(), target), path) if target.exists() else ""
        after = notebook_as_text(notebook, path)
        diff = difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{path}", f"b/{path}")
        return "".join(diff) or "(no change)"

    async def edit_notebook(path: str, action: str, index: int | None = None, source: str | None = None,
                            cell_type: str = "code") -> str:
        import nbformat

        target, notebook = _plan(path, action, index, source, cell_type)
        if _is_open(target):
            if action != "insert" or insert_cell is None:
                raise ToolError(f"{path} is open in the user's editor: it is not rewritten on disk. Use action "
                                "insert to add a new cell below the current one, and tell the user what to change.")
            assert source is not None
            inserted = insert_cell(source, cell_type)
            if inspect.isawaitable(inserted):
                inserted = await inserted
            return inserted or f"Added a new {cell_type} cell below the current cell of the open notebook {path}."
        workspace().atomic_write(target, (nbformat.writes(notebook) + "\n").encode("utf-8"))  # checkpoints first
        where = f"cell {index}" if index is not None else f"cell {len(notebook.cells) - 1}"
        return f"{path}: {action} {where} done; the notebook now has {len(notebook.cells)} cells."

    def preview_code(code: str) -> str:
        return code

    return [
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
            "Read a Jupyter notebook (.ipynb) as compact text: index, type and source of each cell, short text "
            "outputs (images as placeholders).",
            {"type": "object", "properties": {"path": {"type": "string", "description": "path of the .ipynb"}},
             "required": ["path"]},
            read_notebook,
        ),
        ToolDefinition(
            "edit_notebook",
            "Change one cell of a notebook: action insert (at `index`, default the end), replace (the cell at "
            "`index`) or delete. Indexes are 0-based as read_notebook shows them. The notebook the user has "
            "open only accepts insert, which adds a cell below the current one.",
            {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "path of the .ipynb"},
                    "action": {"type": "string", "enum": list(EDIT_ACTIONS)},
                    "index": {"type": "integer", "description": "0-based cell index"},
                    "source": {"type": "string", "description": "the cell's new source (insert, replace)"},
                    "cell_type": {"type": "string", "enum": ["code", "markdown", "raw"], "default": "code"},
                },
                "required": ["path", "action"],
            },
            edit_notebook,
            kind="write",
            preview=preview_edit,
        ),
    ]


def _read(workspace: Workspace, path: Path) -> Any:
    """The notebook at a resolved path, read like the other file tools (no link followed on the way)."""
    import nbformat

    if not path.is_file():
        raise ToolError(f"{path.name} does not exist. list_directory shows the files.")
    try:
        return nbformat.reads(workspace.read_bytes(path).decode("utf-8"), as_version=4)
    except UnicodeDecodeError:
        raise ToolError(f"{path.name} is not a valid notebook: it is not UTF-8 text.") from None
    except (json.JSONDecodeError, nbformat.reader.NotJSONError) as exc:
        raise ToolError(f"{path.name} is not a valid notebook: {exc}") from None
