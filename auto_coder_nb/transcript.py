"""Exports of a saved conversation, chosen by the file's suffix:

- `.md`: a readable transcript, prompts and answers, each tool call folded with its result;
- `.ipynb`: a notebook, prompts and answers as Markdown cells, the answers' Python code blocks as code cells,
  tool calls folded in Markdown;
- `.jsonl`: the records themselves.

The records were freed of secrets when they were written (`history.py`); nothing here adds any. Text from the model
(and the prompts, and tool names) goes through `markdown.inert_markdown` or is escaped: an export is Markdown for
nbconvert, editors and Jupyter, which render raw HTML in it live, so the model's `<script>` stays text.
"""

from __future__ import annotations

import ast
import html
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .history import HistoryError, message_text, rebuild
from .markdown import inert_markdown
from .text import PYTHON_FENCE_LANGUAGES, counted, prompt_of, truncate

EXPORT_SUFFIXES = (".md", ".ipynb", ".jsonl")
RESULT_LIMIT = 4000  # characters of a tool result shown in a fold
_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)


@dataclass
class ToolExchange:
    name: str
    arguments: str
    result: str = ""
    is_error: bool = False
    approval: dict[str, Any] | None = None  # the user's answer when asked: its approval record

    @property
    def denied(self) -> bool:
        return self.approval is not None and not self.approval.get("allowed")


@dataclass
class Exchange:
    """One prompt and what followed it: answer texts and tool calls, in order."""

    prompt: str
    parts: list[str | ToolExchange] = field(default_factory=list)


def _outcomes(records: list[dict[str, Any]]) -> dict[int, tuple[bool, dict[str, Any] | None]]:
    """(is_error, approval record) of each saved tool message, by the message's identity. A call's approval record
    comes before its tool message and its tool_result record right after, so they pair up in order even when a
    server reused call ids. A tool message without a result record (a call cut off by Stop) counts as an error."""
    outcomes: dict[int, tuple[bool, dict[str, Any] | None]] = {}
    asked: dict[Any, dict[str, Any]] = {}  # the last approval of each call id not yet answered by its tool message
    answered: dict[Any, int] = {}  # the tool message of each call id waiting for its tool_result record
    for record in records:
        call_id = record.get("call_id")
        if record["type"] == "approval":
            asked[call_id] = record
        elif _is_tool_message(record):
            message = record["message"]
            call_id = message.get("tool_call_id")
            outcomes[id(message)] = (True, asked.pop(call_id, None))
            answered[call_id] = id(message)
        elif record["type"] == "tool_result" and call_id in answered:
            key = answered.pop(call_id)
            outcomes[key] = (bool(record.get("is_error")), outcomes[key][1])
    return outcomes


def _is_tool_message(record: dict[str, Any]) -> bool:
    message = record.get("message")
    return record["type"] == "message" and isinstance(message, dict) and message.get("role") == "tool"


def exchanges(records: list[dict[str, Any]]) -> list[Exchange]:
    """The conversation as prompts with their answers and tool calls (from the rebuilt history)."""
    outcomes = _outcomes(records)
    found: list[Exchange] = []
    calls: dict[str, ToolExchange] = {}
    for message in rebuild(records):
        role, content = message["role"], message_text(message.get("content"))
        if role == "user":
            found.append(Exchange(prompt_of(content)))
            continue
        if not found:
            found.append(Exchange(""))
        current = found[-1]
        if role == "assistant":
            if content:
                current.parts.append(content)
            for call in message.get("tool_calls") or []:
                exchange = ToolExchange(call["function"]["name"], call["function"].get("arguments") or "")
                calls[call["id"]] = exchange
                current.parts.append(exchange)
        elif role == "tool" and message.get("tool_call_id") in calls:
            exchange = calls[message["tool_call_id"]]
            exchange.result = content
            # A result the replay added for a call a crash left open has no record: an error too.
            exchange.is_error, exchange.approval = outcomes.get(id(message), (True, None))
    return found


class ExportExists(HistoryError):
    """The export's file exists: a face replaces it only when told to (--force) or when the user says so."""


def export(records: list[dict[str, Any]], target: Path, *, overwrite: bool = False,
           protected: Iterable[Path] = ()) -> str:
    """Write the conversation to `target` in the format its suffix names; returns what was written. Never onto a
    `protected` file (the notebook open in the kernel); onto an existing file only with `overwrite` (else
    ExportExists). Written whole or not at all: a reader never sees half an export."""
    suffix = target.suffix.lower()
    if suffix not in EXPORT_SUFFIXES:
        raise HistoryError(f"Cannot export to {target.name}: the file must end in {', '.join(EXPORT_SUFFIXES)}.")
    target = target.expanduser()
    if any(target.resolve() == Path(path).expanduser().resolve() for path in protected):
        raise HistoryError(f"Cannot export to {target}: it is the notebook open in this kernel, and the export "
                           "would replace it. Name another file.")
    if not target.parent.is_dir():
        raise HistoryError(f"Cannot export to {target}: the folder {target.parent} does not exist.")
    if target.is_dir():
        raise HistoryError(f"Cannot export to {target}: it is a folder.")
    if suffix == ".jsonl":
        data = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    elif suffix == ".md":
        data = to_markdown(records)
    else:
        data = json.dumps(to_notebook(records), indent=1, ensure_ascii=False) + "\n"
    try:
        _write_atomically(target, data.encode("utf-8"), overwrite)
    except FileExistsError:
        raise ExportExists(f"Cannot export to {target}: the file exists. Name another file, or add --force to "
                           "replace it.") from None
    except OSError as exc:
        raise HistoryError(f"Cannot export to {target}: {exc.strerror or exc}") from None
    return f"Exported {counted(len(exchanges(records)), 'prompt')} to {target}"


def _write_atomically(target: Path, data: bytes, overwrite: bool) -> None:
    """Through a temporary file beside `target`, renamed over it (`overwrite`) or linked to its name, which fails
    with FileExistsError if the name is taken, even by a file made a moment ago. (Not the workspace's writer: an
    export may go anywhere the user names, and is not a change to undo.)"""
    temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "xb") as stream:
            stream.write(data)
        if overwrite:
            os.replace(temporary, target)
        else:
            try:
                os.link(temporary, target, follow_symlinks=False)
            except FileExistsError:
                raise
            except OSError:  # a filesystem without hard links: look, then rename
                if os.path.lexists(target):
                    raise FileExistsError(target) from None
                os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


def _heading(records: list[dict[str, Any]]) -> str:
    start = records[0]
    where = start.get("notebook") or start.get("working_dir") or ""
    return inert_markdown(f"# auto-coder conversation {start.get('correlation_id', '')}\n\n"
                          f"Started {start.get('t', '')} in `{where}` with {start.get('model', '')}.")


def _fold(tool: ToolExchange) -> str:
    status = " (denied)" if tool.denied else " (failed)" if tool.is_error else ""
    arguments = truncate(tool.arguments, RESULT_LIMIT)
    result = truncate(tool.result, RESULT_LIMIT)
    return (f"<details><summary>Tool call: {html.escape(tool.name)}{status}</summary>\n\n"
            f"{_fenced(arguments, 'json')}\n\n{_fenced(result)}\n\n</details>")


def _fenced(text: str, language: str = "") -> str:
    """`text` in a code fence longer than any run of backticks inside it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{language}\n{text}\n{fence}"


def to_markdown(records: list[dict[str, Any]]) -> str:
    parts = [_heading(records)]
    for exchange in exchanges(records):
        parts.append(f"## You\n\n{inert_markdown(exchange.prompt)}")
        answer = ["## auto-coder"]
        for part in exchange.parts:
            answer.append(_fold(part) if isinstance(part, ToolExchange) else inert_markdown(part))
        parts.append("\n\n".join(answer))
    return "\n\n".join(parts) + "\n"


def to_notebook(records: list[dict[str, Any]]) -> dict[str, Any]:
    """An nbformat 4 notebook: Markdown cells for prompts, answers and folded tool calls; code cells for
    the answers' Python code blocks."""
    import nbformat

    cells = [nbformat.v4.new_markdown_cell(_heading(records))]
    for exchange in exchanges(records):
        cells.append(nbformat.v4.new_markdown_cell(f"**You:**\n\n{inert_markdown(exchange.prompt)}"))
        for part in exchange.parts:
            if isinstance(part, ToolExchange):
                cells.append(nbformat.v4.new_markdown_cell(_fold(part)))
                continue
            for kind, text in _split_code(part):
                if kind == "code":
                    cells.append(nbformat.v4.new_code_cell(text))
                else:
                    cells.append(nbformat.v4.new_markdown_cell(inert_markdown(text)))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.metadata["language_info"] = {"name": "python"}
    return dict(notebook)


def _split_code(answer: str) -> Iterator[tuple[str, str]]:
    """An answer as ("markdown", text) and ("code", source) pieces: Python fenced blocks become code."""
    position = 0
    for match in _FENCE.finditer(answer):
        language, code = match.group(1).lower(), match.group(2).rstrip("\n")
        if language not in PYTHON_FENCE_LANGUAGES or not code.strip() or (not language and not _parses(code)):
            continue
        before = answer[position:match.start()].strip()
        if before:
            yield "markdown", before
        yield "code", code
        position = match.end()
    rest = answer[position:].strip()
    if rest:
        yield "markdown", rest


def _parses(code: str) -> bool:
    """Whether an unlabelled block is Python (models also fence output and tracebacks without a label)."""
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True
