"""The pieces of the panel's transcript: widget helpers, streamed answer parts (Markdown and plain text),
paged columns, and tool cards with their titles, argument details and diff previews."""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets

from ..markdown import Block, block_html, markdown_html, opens_fence, split_blocks, take_blocks
from ..providers.base import Usage
from ..text import show_controls, strip_ansi

IDLE, THINKING, ANSWERING = "idle", "thinking", "answering"  # the panel's states
RUNNING_TOOL, WAITING = "running a tool", "waiting for approval"
SEGMENT_CHARS = 6000  # rendered HTML per frozen segment widget
OPEN_LIMIT = 2000  # characters of an unfinished paragraph re-rendered on each update, at most
PAGE_SIZE = 50  # children per page of a growing column
PREVIEW_LIMIT = 20000  # characters of a diff or command shown in an approval card
SUMMARY_LIMIT = 300
SUMMARY_LINES = 3  # lines of a tool result shown on its card
TITLE_VALUE = 60  # characters of one argument value shown in a tool card's one-line title
TITLE_LIMIT = 120  # characters of all the arguments in that title


def make_html(value: str = "", *classes: str) -> widgets.HTML:
    widget = widgets.HTML(value)
    for name in classes:
        widget.add_class(name)
    return widget


def make_box(children: list[widgets.Widget], *classes: str, horizontal: bool = False) -> widgets.Box:
    box = widgets.HBox(children) if horizontal else widgets.VBox(children)
    for name in classes:
        box.add_class(name)
    return box


def make_button(description: str, style: str, css: str, tooltip: str = "") -> widgets.Button:
    button = widgets.Button(description=description, button_style=style, tooltip=tooltip or description,
                            layout=widgets.Layout(width="auto"))
    button.add_class(css)
    return button


def append_child(box: widgets.Box, child: widgets.Widget) -> None:
    box.children = (*box.children, child)


def short(text: str, limit: int = SUMMARY_LIMIT) -> str:
    """Output for a summary: colour codes dropped, other control characters escaped, cut to `limit`."""
    return exact(strip_ansi(text), limit)


def exact(text: str, limit: int) -> str:
    """What will run or be written (a preview, an argument): every control character shown escaped, none
    dropped, so what the user approves is exactly what runs; cut to `limit`."""
    text = show_controls(text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def diff_html(preview: str) -> str:
    lines = []
    for line in exact(preview, PREVIEW_LIMIT).split("\n"):
        css = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        lines.append(f'<span class="{css}">{html.escape(line)}</span>' if css else html.escape(line))
    return '<pre class="autocoder-diff">' + "\n".join(lines) + "</pre>"


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _title_value(value: Any) -> str:
    """One argument for a one-line title: multi-line text as its line count, long values cut."""
    if isinstance(value, str) and "\n" in value:
        lines = len(value.splitlines())
        return f"<{lines} line{'' if lines == 1 else 's'}>"
    return clip(show_controls(json.dumps(value, ensure_ascii=False)), TITLE_VALUE)


def arguments_title(arguments: dict[str, Any] | None, raw: str) -> str:
    if arguments is None:
        return clip(show_controls(" ".join(raw.split())), TITLE_LIMIT)
    return clip(", ".join(f"{key}={_title_value(value)}" for key, value in arguments.items()), TITLE_LIMIT)


def arguments_detail(arguments: dict[str, Any] | None, raw: str) -> str:
    """The full arguments, text values as they are (real line breaks), folded under the title."""
    if arguments is None:
        body = f"<pre>{html.escape(exact(raw, PREVIEW_LIMIT))}</pre>"
    else:
        body = "".join(
            f"<div><b>{html.escape(key)}</b></div><pre>"
            f"{html.escape(exact(value if isinstance(value, str) else json.dumps(value, indent=2), PREVIEW_LIMIT))}"
            "</pre>"
            for key, value in arguments.items()
        )
    return f'<details class="autocoder-args"><summary>arguments</summary>{body}</details>'


def usage_text(usage: Usage | None) -> str:
    if usage is None:  # nothing reported yet: a 0 would be wrong while tokens are spent
        return "—"
    return f"{usage.prompt_tokens:,} in / {usage.completion_tokens:,} out"


def tool_card(call_id: str, name: str, arguments: dict[str, Any] | None, raw: str) -> ToolCard:
    """A card titled by its arguments in one line; the full arguments fold under it when the title shortened them."""
    title = arguments_title(arguments, raw)
    whole = raw if arguments is None else ", ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items())
    return ToolCard(call_id, name, title, arguments_detail(arguments, raw) if title != whole else "")


def code_html(code: str, language: str = "") -> str:
    label = f'<span class="autocoder-lang">{html.escape(language)}</span>' if language else "<span></span>"
    buttons = (
        '<span><button class="autocoder-copy" title="Copy to the clipboard" '
        'onclick="window.autocoder &amp;&amp; autocoder.copy(this)">Copy</button> '
        '<button class="autocoder-insert" title="Insert as a new cell below the panel" '
        'onclick="window.autocoder &amp;&amp; autocoder.insert(this)">Insert below</button></span>'
    )
    return f'<div class="autocoder-codehead">{label}{buttons}</div><pre><code>{html.escape(code)}</code></pre>'


class Stack:
    """A column that grows by pages of PAGE_SIZE children: adding a child re-sends a short list of ids,
    however long the column gets (a Box sends its whole children list on every change)."""

    def __init__(self, box: widgets.Box) -> None:
        self.box = box
        self.page: widgets.Box | None = None

    def append(self, widget: widgets.Widget) -> None:
        if self.page is None or len(self.page.children) >= PAGE_SIZE:
            self.page = make_box([], "autocoder-page")
            append_child(self.box, self.page)
        append_child(self.page, widget)

    def clear(self) -> None:
        self.box.children = ()
        self.page = None

    def cut(self, widget: widgets.Widget) -> None:
        """Remove `widget` and everything after it (a rewind)."""
        shown = [child for page in self.box.children for child in page.children]
        if widget not in shown:
            return
        self.clear()
        for child in shown[:shown.index(widget)]:
            self.append(child)


class TextPart:
    """One streamed Markdown answer: frozen segments and code blocks, plus the re-rendered open tail."""

    def __init__(self, code_widget: Callable[[str, str], widgets.Widget]) -> None:
        self.code_widget = code_widget  # a fenced block's widget, from its code and language
        self.done = Stack(make_box([]))
        self.tail = make_html()
        self.box = make_box([self.done.box, self.tail], "autocoder-msg", "autocoder-assistant")
        self.source: list[str] = []  # everything received, for the transcript
        self.pending = ""  # received, not yet rendered
        self.open = ""  # rendered as the tail, not yet a finished block
        self.segment: widgets.HTML | None = None
        self.segment_html = ""

    def feed(self, text: str) -> None:
        self.source.append(text)
        self.pending += text

    @property
    def text(self) -> str:
        return "".join(self.source)

    def flush(self, final: bool = False) -> None:
        if not self.pending and not final:
            return
        self.open += self.pending
        self.pending = ""
        blocks, self.open = take_blocks(self.open)
        if final:
            blocks += split_blocks(self.open)
            self.open = ""
        elif len(self.open) > OPEN_LIMIT and not opens_fence(self.open):
            # One endless paragraph: freeze all but its last line, so the tail stays small.
            cut = self.open.rfind("\n", 0, len(self.open) - 1)
            cut = cut if cut > 0 else self.open.rfind(" ", 0, len(self.open) - 1)
            if cut > 0:
                blocks.append(Block(self.open[:cut]))
                self.open = self.open[cut + 1:]
        for block in blocks:
            if block.language is not None:
                self._add_code(block)
            else:
                self._add_html(block_html(block.text))
        if self.segment is not None and self.segment.value != self.segment_html:
            self.segment.value = self.segment_html
        tail = markdown_html(self.open)
        if self.tail.value != tail:
            self.tail.value = tail

    def _add_html(self, rendered: str) -> None:
        if self.segment is None or len(self.segment_html) > SEGMENT_CHARS:
            if self.segment is not None:
                self.segment.value = self.segment_html
            self.segment, self.segment_html = make_html(), ""
            self.done.append(self.segment)
        self.segment_html += rendered

    def _add_code(self, block: Block) -> None:
        if self.segment is not None:
            self.segment.value = self.segment_html
        self.segment = None
        self.done.append(self.code_widget(block.text, block.language or ""))


class PlainText:
    """Streamed plain text (reasoning) in pages of SEGMENT_CHARS, so an update re-sends one page at most."""

    def __init__(self) -> None:
        self.pages = Stack(make_box([]))
        self.box = self.pages.box
        self.current: widgets.HTML | None = None
        self.current_text = ""
        self.pending = ""

    def feed(self, text: str) -> None:
        self.pending += text

    def flush(self, final: bool = False) -> None:
        if not self.pending:
            return
        if self.current is None or len(self.current_text) > SEGMENT_CHARS:
            self.current, self.current_text = make_html(), ""
            self.pages.append(self.current)
        self.current_text += self.pending
        self.pending = ""
        self.current.value = f"<pre>{html.escape(self.current_text)}</pre>"


class ToolCard:
    def __init__(self, call_id: str, name: str, arguments: str, detail: str = "") -> None:
        self.call_id, self.name, self.arguments = call_id, name, arguments
        self.head = make_html(self._head("running"), "autocoder-card-head")
        self.summary = make_html("", "autocoder-summary")
        children = [self.head, make_html(detail, "autocoder-detail")] if detail else [self.head]
        self.box = make_box(children, "autocoder-card", "autocoder-tool")
        self.buttons: list[widgets.Button] = []
        self.question: widgets.HTML | None = None  # "Allow this change?", replaced by the answer
        self.answered = False
        self.denied = False

    def _head(self, status: str) -> str:
        return (f"<b>{html.escape(show_controls(self.name))}</b>(<span>{html.escape(self.arguments)}</span>)"
                f'<span class="autocoder-badge autocoder-status-{status.split()[0]}">{html.escape(status)}</span>')

    def status(self, status: str, css: str | None = None) -> None:
        self.head.value = self._head(status)
        for old in ("autocoder-card-ok", "autocoder-card-error", "autocoder-card-ask"):
            self.box.remove_class(old)
        if css:
            self.box.add_class(css)

    def close_approval(self, note: str) -> None:
        self.answered = True
        for button in self.buttons:
            button.disabled = True
        self.buttons = []
        outcome = make_html(html.escape(note), "autocoder-outcome")
        children = [c for c in self.box.children if not isinstance(c, widgets.HBox)]
        if self.question in children:
            children[children.index(self.question)] = outcome
        else:
            children.append(outcome)
        self.box.children = tuple(children)
