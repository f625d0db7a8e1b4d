"""How a magic's turn shows in the cell. Notebook: the answer as HTML updated in place (display ids), tool calls as
collapsible HTML, each output tagged with metadata (model, correlation id); terminal IPython: plain text.

Everything from the model or a server is shown as text: the answer's Markdown becomes HTML through the escaping
renderer (`auto_coder_nb.markdown`), errors, notices and previews are escaped. Never `text/markdown`: a frontend
renders the raw HTML in it, and a notebook's own outputs are trusted, so an `<img onerror>` in an answer would run
as JavaScript in the user's page."""

from __future__ import annotations

import html
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .markdown import markdown_html
from .text import scrub, show_controls

if TYPE_CHECKING:  # events (and asyncio with them) are imported on first use, not at %load_ext
    from .cell_changes import CellChange
    from .events import ApprovalRequest, ContextUsage, Event, ToolCallStarted, ToolResult, UsageUpdate
    from .images import Image

UPDATE_INTERVAL = 0.15  # seconds between display updates: a fast stream must not flood the frontend
METADATA_KEY = "auto_coder_nb"


class CellRenderer:
    """Shows one turn. Notebook: the answer rendered to escaped HTML, updated in place (display ids), tool calls as
    collapsible HTML; terminal IPython: plain text printed as it streams."""

    def __init__(self, rich: bool, metadata: dict[str, Any], sent: str, attached: list[Image] | None = None,
                 secrets: Iterable[str | None] = ()) -> None:
        self.rich = rich
        self.secrets = list(secrets)  # hidden in every output and its metadata: a notebook is saved and shared
        self.metadata = {METADATA_KEY: {key: scrub(value, self.secrets) if isinstance(value, str) else value
                                        for key, value in metadata.items()}}
        self.sent = sent
        self.images = list(attached or [])  # attached, then those the tools produced: listed in the footer
        self.context: ContextUsage | None = None
        self.answer: list[str] = []  # every text delta of the turn, for --insert
        self.segment = ""  # the text since the last tool call, shown in one display
        self.segment_handle: Any = None
        self.dirty = False
        self.last_update = 0.0
        self.tool_handles: dict[str, tuple[Any, ToolCallStarted]] = {}
        self.usage: UsageUpdate | None = None
        self.failed = False  # an error was shown
        self.asked: dict[str, bool] = {}  # calls whose approval showed their cells already
        # Why the turn could not reach the model or was refused by it: the magic fails the cell with this one line
        # (so it is not shown here as well).
        self.failure: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.answer)

    def event(self, event: Event) -> None:
        from .events import (
            ApprovalRequest,
            ErrorEvent,
            Notice,
            ReasoningDelta,
            TextDelta,
            ToolCallStarted,
            ToolResult,
            TurnDone,
            UsageUpdate,
            assert_never,
        )

        match event:
            case TextDelta():
                self.answer.append(event.text)
                self.segment += event.text
                if self.rich:
                    self.dirty = True
                    if time.monotonic() - self.last_update >= UPDATE_INTERVAL:
                        self.flush()
                else:
                    print(event.text, end="", flush=True)
            case ToolCallStarted():
                self._end_segment()
                self._tool_started(event)
            case ToolResult():
                self.images.extend(event.images)
                self._tool_result(event)
                if not self.asked.pop(event.call_id, False):
                    self.changed_cells(event)
            case ApprovalRequest():
                self.approval(event)
            case ErrorEvent():
                self.failed = True
                self._end_segment()
                message = self._hide(event.message)
                if stops_the_run(event.error):
                    self.failure = message
                else:
                    self._show_html(f"<p><strong>Error:</strong> {_text_html(message)}</p>", f"Error: {message}")
            case Notice():
                self.notice(event.text)
            case UsageUpdate():
                self.usage = event
            case TurnDone():
                self.context = event.context  # the footer says how full the context is
            case ReasoningDelta():
                pass  # reasoning stays out of the cell
            case _:
                assert_never(event)

    def flush(self) -> None:
        if not (self.rich and self.dirty):
            return
        text = self._hide(self.segment)
        bundle = {"text/html": _answer_html(text), "text/plain": text}
        if self.segment_handle is None:
            self.segment_handle = self._display(bundle, new_id=True)
        else:
            self._update(self.segment_handle, bundle)
        self.dirty = False
        self.last_update = time.monotonic()

    def _end_segment(self) -> None:
        self.flush()
        if not self.rich and self.segment and not self.segment.endswith("\n"):
            print()
        self.segment, self.segment_handle = "", None

    def _tool_started(self, event: ToolCallStarted) -> None:
        label = self._hide(show_controls(f"{event.name} {_key_argument(event)}".strip()))
        if not self.rich:
            print(f"[{label}]", flush=True)
            return
        handle = self._display(_tool_bundle(label, "running...", ""), new_id=True)
        self.tool_handles[event.call_id] = (handle, event)

    def _tool_result(self, result: ToolResult) -> None:
        first = result.output.strip().splitlines()[0] if result.output.strip() else "(empty)"
        first = show_controls(first[:100]) + ("..." if len(first) > 100 else "")
        short = self._hide(("error: " if result.is_error else "") + first)
        if not self.rich:
            print(f"  -> {short}", flush=True)
            return
        handle, started = self.tool_handles.get(result.call_id, (None, None))
        label = show_controls(f"{result.name} {_key_argument(started)}".strip() if started else result.name)
        bundle = _tool_bundle(self._hide(label), short, self._hide(result.output))
        if handle is None:
            self._display(bundle)
        else:
            self._update(handle, bundle)

    def approval(self, request: ApprovalRequest) -> None:
        self._end_segment()
        self.asked[request.call_id] = True
        if request.cells:  # a notebook change: one card per cell, with the cell's diff
            for change in request.cells:
                self._show_cell(change, f"{request.tool} needs your approval to {change.action} "
                                        f"{change.describe()}:")
            return
        preview = self._hide(show_controls(request.preview))  # what is approved is what runs: nothing else hidden
        tool = html.escape(request.tool)
        self._show_html(f"<p><strong>{tool}</strong> needs your approval:</p><pre>{html.escape(preview)}</pre>",
                        f"{request.tool} needs your approval:\n{preview}")

    def _show_cell(self, change: CellChange, title: str, code: str = "") -> None:
        """One cell's change: `title`, its diff, then `code` (a command to type) if any."""
        title, diff = self._hide(title), self._hide(show_controls(change.diff()))
        command = f" <code>{html.escape(code)}</code>" if code else ""
        self._show_html(f"<p><strong>{html.escape(title)}</strong>{command}</p><pre>{html.escape(diff)}</pre>",
                        f"{title} {code}".rstrip() + f"\n{diff}")

    def changed_cells(self, result: ToolResult) -> None:
        """The cells a call changed without asking (auto-edit): each with its diff and how to revert it."""
        for change in result.cells:
            if change.action in ("insert", "replace", "delete", "move"):
                self._show_cell(change, f"Changed {change.describe()} ({change.action}); until the turn after next, "
                                        "undo it with", f"%autocoder --revert {change.number}")

    def notice(self, text: str) -> None:
        self._end_segment()
        text = self._hide(text)
        self._show_html(f"<p><em>{_text_html(text)}</em></p>", text)

    def stopped(self) -> None:
        self._end_segment()
        self._show_html("<p><em>stopped</em></p>", "stopped")

    def finish(self) -> None:
        self._end_segment()
        meta = self.metadata[METADATA_KEY]
        tokens = f" · {self.usage.turn.total_tokens} tokens" if self.usage is not None else ""
        context = f" · {self.context}" if self.context is not None else ""
        summary = f"{meta['model']} · correlation id {meta['correlation_id']}{tokens}{context}"
        sent = self._hide(self.sent + "".join(f"\nimage: {image.describe()}" for image in self.images))
        if self.rich:
            body = (f"<details><summary>{html.escape(summary)} · what was sent</summary>"
                    f"<pre>{html.escape(sent)}</pre></details>")
            self._display({"text/html": body, "text/plain": summary})

    def _show_html(self, body: str, plain: str) -> None:
        if self.rich:
            self._display({"text/html": body, "text/plain": plain})
        else:
            print(plain, flush=True)

    def _hide(self, text: str) -> str:
        """`text` with the session's secrets hidden: done before it becomes HTML (`<hidden>` must be escaped too)."""
        return scrub(text, self.secrets)

    def _display(self, bundle: dict[str, str], *, new_id: bool = False) -> Any:
        """Show a bundle built from `_hide`'s text (its HTML escaped as it was built)."""
        return _display(bundle, self.metadata, new_id=new_id)

    def _update(self, handle: Any, bundle: dict[str, str]) -> None:
        handle.update(bundle, raw=True, metadata=self.metadata)


def stops_the_run(error: BaseException | None) -> bool:
    """Whether a turn's error means the model was not reached or refused the request (no connection, credentials
    refused or missing, an HTTP error after the retries): then the cell fails, and Run All stops there."""
    from .errors import ConfigError, ProviderError

    return isinstance(error, (ProviderError, ConfigError))


def _display(bundle: dict[str, str], metadata: dict[str, Any], *, new_id: bool = False) -> Any:
    from IPython.display import display

    return display(bundle, raw=True, metadata=metadata, display_id=True if new_id else None)


def _answer_html(markdown: str) -> str:
    return f'<div class="autocoder-answer">{markdown_html(markdown)}</div>'


def _text_html(text: str) -> str:
    """A message (an error, a notice: a server's words may be in it) as escaped HTML, its line breaks kept."""
    return html.escape(text).replace("\n", "<br>")


def _tool_bundle(label: str, short: str, detail: str) -> dict[str, str]:
    summary = f"<code>{html.escape(label)}</code> → {html.escape(short)}"
    body = f"<details><summary>{summary}</summary><pre>{html.escape(show_controls(detail[:5000]))}</pre></details>"
    return {"text/html": body, "text/plain": f"[{label}] {short}"}


def _key_argument(event: ToolCallStarted) -> str:
    arguments = event.arguments or {}
    for key in ("path", "command", "code", "name"):
        if isinstance(arguments.get(key), str):
            value = arguments[key].strip().splitlines()[0] if arguments[key].strip() else ""
            return value[:80] + ("..." if len(value) > 80 else "")
    return ""
