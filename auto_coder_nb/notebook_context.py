"""What the kernel tells the model: `{name}` interpolation and a budgeted summary of the user namespace,
the last executed cells and the last error.

Values are described by duck typing (`tools.notebook.describe_value`): no pandas or numpy import.
"""

from __future__ import annotations

import ast
import os
import re
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The helpers from tools.notebook and text are imported inside the functions: importing them at
# `%load_ext` time would slow the load (load must stay fast).

CONTEXT_MODES = ("auto", "none", "vars", "cells", "all")
# Characters, not tokens: about 1000 tokens for auto, 3000 for all.
CONTEXT_BUDGETS = {"auto": 4000, "vars": 4000, "cells": 4000, "all": 12000}
CELLS_PER_MODE = {"auto": 3, "cells": 5, "all": 10}
_MAX_VALUE_CHARS = 20000  # an interpolated value longer than this is cut, with a marker
# Describing variables runs user code (reprs, properties). One that takes longer than this is skipped, not
# waited for; after the total, the remaining variables are only counted.
SLOW_VALUE_SECONDS = 0.25
VARIABLES_SECONDS = 1.0
_REFERENCE = re.compile(r"\{([^{}\n]+)\}")


# -- {name} interpolation ----------------------------------------------------------------------

def interpolate(prompt: str, namespace: Mapping[str, Any]) -> str:
    """Replace `{ref}` by the value of `ref` in `namespace`, in one pass.

    A reference is a name with attributes and constant subscripts (`df.shape`, `In[3]`, `Out[4]`,
    `cfg["key"]`). Anything else, a missing name or a lookup that fails, stays exactly as written,
    so code with dicts, f-strings and JSON passes through. Inserted values are never re-scanned.
    """
    from .text import truncate

    def replace(match: re.Match[str]) -> str:
        found, value = resolve_reference(match.group(1).strip(), namespace)
        if not found:
            return match.group(0)
        return truncate(str(value), _MAX_VALUE_CHARS)

    return _REFERENCE.sub(replace, prompt)


def resolve_reference(expression: str, namespace: Mapping[str, Any]) -> tuple[bool, Any]:
    """Look up `name(.attr | [constant])*` without eval; (False, None) when it is not such a reference."""
    try:
        node = ast.parse(expression, mode="eval").body
    except SyntaxError:
        return False, None
    try:
        return True, _lookup(node, namespace)
    except _NotAReference:
        return False, None
    except Exception:  # a failing property or index means "not a reference": leave the text
        return False, None


class _NotAReference(Exception):
    pass


def _lookup(node: ast.expr, namespace: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name):
        if node.id not in namespace:
            raise _NotAReference
        return namespace[node.id]
    if isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            raise _NotAReference
        return getattr(_lookup(node.value, namespace), node.attr)
    if isinstance(node, ast.Subscript):
        return _lookup(node.value, namespace)[_constant(node.slice)]
    raise _NotAReference


def _constant(node: ast.expr) -> Any:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        if isinstance(node.operand.value, int):
            return -node.operand.value
    raise _NotAReference


# -- what happened in the kernel ---------------------------------------------------------------

@dataclass
class CellRecord:
    execution_count: int | None
    source: str
    output: str = ""  # repr of the cell's result, if any
    error: str = ""  # "ExcType: message"


@dataclass
class ErrorRecord:
    source: str
    error: str
    traceback: str
    execution_count: int | None = None


_IPYTHON_DIR = f"{os.sep}IPython{os.sep}"
MAGIC_PREFIXES = ("%%autocoder", "%autocoder")


@dataclass
class KernelHistory:
    """Filled by IPython's `post_run_cell` event (not `set_custom_exc`, which other extensions need).

    Cells that are themselves requests to the assistant (`ignore_prefixes`) are not recorded: they
    are already in the conversation.
    """

    max_cells: int = 20
    ignore_prefixes: tuple[str, ...] = MAGIC_PREFIXES
    cells: deque[CellRecord] = field(default_factory=deque)
    last_error: ErrorRecord | None = None

    def record(self, result: Any) -> None:
        """The `post_run_cell(result)` callback: `result` is IPython's ExecutionResult."""
        from .text import truncate
        from .tools.notebook import safe_repr

        info = getattr(result, "info", None)
        source = getattr(info, "raw_cell", "") or ""
        if not source.strip() or source.lstrip().startswith(self.ignore_prefixes):
            return
        error = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
        value = getattr(result, "result", None)
        record = CellRecord(
            execution_count=getattr(result, "execution_count", None),
            source=source,
            output=truncate(safe_repr(value), 300) if value is not None else "",
            error=f"{type(error).__name__}: {error}" if error is not None else "",
        )
        self.cells.append(record)
        while len(self.cells) > self.max_cells:
            self.cells.popleft()
        if error is not None:
            self.last_error = ErrorRecord(
                source=source,
                error=record.error,
                traceback=_format_user_traceback(error),
                execution_count=record.execution_count,
            )


def error_before_load() -> ErrorRecord | None:
    """The last error IPython showed before the extension was loaded (`sys.last_value`), with the failing
    cell's source read back from the line cache IPython fills for every cell."""
    import linecache
    import sys

    error = getattr(sys, "last_value", None)
    if error is None:
        return None
    tb = error.__traceback__
    while tb is not None and _IPYTHON_DIR in tb.tb_frame.f_code.co_filename:
        tb = tb.tb_next
    source = "".join(linecache.getlines(tb.tb_frame.f_code.co_filename)) if tb is not None else ""
    return ErrorRecord(source=source or "(source not available)", error=f"{type(error).__name__}: {error}",
                       traceback=_format_user_traceback(error))


def _format_user_traceback(error: BaseException) -> str:
    """The traceback from the user's code on: IPython's own frames above it say nothing to the model."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None and _IPYTHON_DIR in tb.tb_frame.f_code.co_filename:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(error), error, tb))


def build_context(
    mode: str,
    namespace: Mapping[str, Any],
    history: KernelHistory | None = None,
    *,
    hidden: Iterable[str] = (),
    include_error: bool = True,
) -> str:
    """The kernel summary sent with a prompt: variables, recent cells, last error, within the mode's budget.

    `--fix` sends the error itself, so it passes `include_error=False`.
    """
    from .text import truncate
    from .tools.notebook import describe_value, user_variables

    if mode not in CONTEXT_MODES:
        raise ValueError(f"unknown context mode {mode!r}; expected one of {', '.join(CONTEXT_MODES)}")
    if mode == "none":
        return ""
    budget = CONTEXT_BUDGETS[mode]
    sections: list[str] = []
    if mode in ("auto", "vars", "all"):
        variables = user_variables(namespace, hidden)
        if variables:
            share = budget // 2 if mode != "vars" else budget
            sections.append("## Variables\n" + _describe_variables(variables, share, describe_value))
    if history is not None and mode in ("auto", "cells", "all"):
        cells = list(history.cells)[-CELLS_PER_MODE[mode]:]
        if cells:
            sections.append("## Recent cells\n" + _fit([_describe_cell(cell) for cell in cells], budget // 3, "cells"))
        if include_error and history.last_error is not None:
            error = history.last_error
            sections.append(
                f"## Last error\n{truncate(error.traceback.strip(), budget // 5)}"
            )
    return truncate("\n\n".join(sections), budget)


def _describe_variables(variables: Mapping[str, Any], budget: int, describe: Callable[[str, Any], str]) -> str:
    """Whole descriptions until the budget is spent, then how many were left out. Only what is shown is
    described, so the cost does not grow with the namespace; each description runs in a helper thread, so a
    value whose repr takes seconds is skipped (and left to finish on its own) instead of holding the request."""
    from .text import truncate

    kept: list[str] = []
    used = 0
    deadline = time.monotonic() + VARIABLES_SECONDS
    for name, value in variables.items():
        left = deadline - time.monotonic()
        if left <= 0:
            break
        block = _describe_in_time(name, value, describe, min(SLOW_VALUE_SECONDS, left))
        if used + len(block) > budget and kept:
            break
        kept.append(truncate(block, budget))
        used += len(block) + 1
    if len(kept) < len(variables):
        kept.append(f"... {len(variables) - len(kept)} more variables not shown")
    return "\n".join(kept)


def _describe_in_time(name: str, value: Any, describe: Callable[[str, Any], str], seconds: float) -> str:
    done: list[str] = []

    def run() -> None:
        try:
            done.append(describe(name, value))
        except Exception as exc:  # describing one odd object must not fail the request
            done.append(f"{name}: {type(value).__name__} (not described: {type(exc).__name__})")

    helper = threading.Thread(target=run, name="auto-coder-describe", daemon=True)
    helper.start()
    helper.join(seconds)
    if done:
        return done[0]
    return f"{name}: {type(value).__name__} (not described: its description took too long)"


def _describe_cell(cell: CellRecord) -> str:
    from .text import truncate

    source = "\n".join("  " + line for line in truncate(cell.source.rstrip(), 600).splitlines())
    text = f"[{cell.execution_count if cell.execution_count is not None else '-'}]:\n{source}"
    if cell.output:
        text += f"\n  -> {cell.output}"
    if cell.error:
        text += f"\n  !! {cell.error}"
    return text


def _fit(blocks: list[str], budget: int, what: str) -> str:
    """Join whole blocks until the budget is spent, then say how many were left out."""
    from .text import truncate

    kept: list[str] = []
    used = 0
    for block in blocks:
        if used + len(block) > budget and kept:
            kept.append(f"... {len(blocks) - len(kept)} more {what} not shown")
            break
        kept.append(truncate(block, budget))
        used += len(block) + 1
    return "\n".join(kept)


def fix_prompt(error: ErrorRecord, extra: str = "") -> str:
    """The request `--fix` sends: the failing cell and its traceback."""
    from .text import truncate

    request = extra.strip() or "Explain this error briefly, then give the corrected cell as one python code block."
    return (
        f"{request}\n\nThe cell that failed:\n```python\n{error.source.rstrip()}\n```\n\n"
        f"Its traceback:\n```\n{truncate(error.traceback.strip(), 6000)}\n```"
    )
