"""The chat panel: an ipywidgets face of the agent that works wherever ipywidgets work.

Threading model (the hard part). The agent runs as an asyncio task on the kernel's own event loop,
captured when the panel is created (in a cell, so on the main thread). Widget callbacks may arrive on
the main thread or on a kernel subshell thread with its own loop (ipykernel 7), so every callback
only hands its work to that loop with `call_soon_threadsafe` and returns at once. All widget state is
changed from the loop, never from a callback directly.

Streaming cost. Text deltas are buffered and flushed at most `UPDATES_PER_SECOND` times a second.
An answer is rendered block by block: finished Markdown blocks are rendered once into the current
segment widget (a new segment starts every `SEGMENT_CHARS`), only the open last block is re-rendered,
and earlier messages are never touched, so one update costs the same after 10 or 1,000 messages.
"""

from __future__ import annotations

import asyncio
import functools
import html
import json
import re
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .events import (
    ApprovalRequest,
    ErrorEvent,
    Event,
    Notice,
    ReasoningDelta,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
    UsageUpdate,
)
from .providers.base import Usage

if TYPE_CHECKING:
    from .session import Session

UPDATES_PER_SECOND = 20
SEGMENT_CHARS = 6000  # rendered HTML per frozen segment widget
OPEN_LIMIT = 2000  # characters of an unfinished paragraph re-rendered on each update, at most
PAGE_SIZE = 50  # children per page of a growing column
PREVIEW_LIMIT = 20000  # characters of a diff or command shown in an approval card
SUMMARY_LIMIT = 300
SUMMARY_LINES = 3  # lines of a tool result shown on its card
TITLE_VALUE = 60  # characters of one argument value shown in a tool card's one-line title
TITLE_LIMIT = 120  # characters of all the arguments in that title

IDLE, THINKING, ANSWERING = "idle", "thinking", "answering"
RUNNING_TOOL, WAITING = "running a tool", "waiting for approval"
TURN_END_NOTES = {
    "max_iterations": "Stopped at the request limit for one turn.",
    "repeated_call": "Stopped: the same tool call was repeated.",
}


# -- Markdown to HTML: small and safe (everything from the model is escaped) ---------------------

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_QUOTE = re.compile(r"^ {0,3}>\s?(.*)$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])|(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def inline_html(text: str) -> str:
    """Inline Markdown (code, links, bold, italic, strike) of one piece of text, HTML-escaped."""
    spans: list[str] = []

    def keep(html_text: str) -> str:
        spans.append(html_text)
        return f"\x00{len(spans) - 1}\x00"

    text = text.replace("\x00", "")
    text = _CODE_SPAN.sub(lambda m: keep(f"<code>{html.escape(m.group(2).strip())}</code>"), text)
    text = html.escape(text)
    text = _LINK.sub(lambda m: keep(f'<a href="{m.group(2)}" target="_blank" rel="noopener noreferrer">'
                                    f"{m.group(1)}</a>"), text)
    text = _STRONG.sub(lambda m: f"<strong>{m.group(1) or m.group(2)}</strong>", text)
    text = _EMPHASIS.sub(lambda m: f"<em>{m.group(1) or m.group(2)}</em>", text)
    text = _STRIKE.sub(r"<del>\1</del>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], text)


def code_html(code: str, language: str = "") -> str:
    label = f'<span class="autocoder-lang">{html.escape(language)}</span>' if language else "<span></span>"
    buttons = (
        '<span><button class="autocoder-copy" title="Copy to the clipboard" '
        'onclick="window.autocoder &amp;&amp; autocoder.copy(this)">Copy</button> '
        '<button class="autocoder-insert" title="Insert as a new cell below the panel" '
        'onclick="window.autocoder &amp;&amp; autocoder.insert(this)">Insert below</button></span>'
    )
    return f'<div class="autocoder-codehead">{label}{buttons}</div><pre><code>{html.escape(code)}</code></pre>'


def markdown_html(text: str) -> str:
    """A whole Markdown text to HTML (blocks, then their inline parts). Unclosed fences run to the end."""
    parts: list[str] = []
    for block in split_blocks(text):
        if block.language is not None:
            parts.append(f'<pre><code>{html.escape(block.text)}</code></pre>')
        else:
            parts.append(block_html(block.text))
    return "".join(parts)


@dataclass
class Block:
    text: str
    language: str | None = None  # not None for a fenced code block (then `text` is the code)


def split_blocks(text: str) -> list[Block]:
    blocks, rest = take_blocks(text)
    if rest.strip():
        fence = _FENCE.match(rest)
        if fence:
            body = rest.split("\n", 1)[1] if "\n" in rest else ""
            blocks.append(Block(body, fence.group(2)))
        else:
            blocks.append(Block(rest))
    return blocks


def take_blocks(text: str) -> tuple[list[Block], str]:
    """Split off the finished blocks of `text`; return them and the unfinished rest.

    A text block ends at a blank line or where a fence opens; a code block ends at its closing fence.
    Only complete lines are looked at, so the rest may keep growing.
    """
    lines = text.split("\n")
    blocks: list[Block] = []
    start, fence, language = 0, "", ""
    for i, line in enumerate(lines[:-1]):
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                blocks.append(Block("\n".join(lines[start + 1:i]), language))
                start, fence = i + 1, ""
            continue
        opened = _FENCE.match(line)
        if opened or not line.strip():
            if any(piece.strip() for piece in lines[start:i]):
                blocks.append(Block("\n".join(lines[start:i])))
            start = i if opened else i + 1
            if opened:
                fence, language = opened.group(1), opened.group(2)
    return blocks, "\n".join(lines[start:])


def block_html(text: str) -> str:
    """One text block: headings, rules, lists, quotes, tables and paragraphs (soft breaks kept)."""
    lines = text.split("\n")
    if len(lines) >= 2 and "|" in lines[0] and _TABLE_RULE.match(lines[1]):
        return _table_html(lines)
    out: list[str] = []
    paragraph: list[str] = []
    lists: list[tuple[int, str]] = []  # open lists: (indent, tag)
    quote: list[str] = []

    def close_paragraph() -> None:
        if paragraph:
            out.append("<p>" + "<br>".join(inline_html(line.strip()) for line in paragraph) + "</p>")
            paragraph.clear()

    def close_lists(indent: int = -1) -> None:
        while lists and lists[-1][0] > indent:
            out.append(f"</li></{lists.pop()[1]}>")

    def close_quote() -> None:
        if quote:
            out.append(f"<blockquote>{block_html(chr(10).join(quote))}</blockquote>")
            quote.clear()

    for line in lines:
        quoted = _QUOTE.match(line)
        if quoted:
            close_paragraph()
            close_lists()
            quote.append(quoted.group(1))
            continue
        close_quote()
        heading, item = _HEADING.match(line), _ITEM.match(line)
        if heading:
            close_paragraph()
            close_lists()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline_html(heading.group(2))}</h{level}>")
        elif _RULE.match(line):
            close_paragraph()
            close_lists()
            out.append("<hr>")
        elif item:
            close_paragraph()
            indent, marker, body = len(item.group(1).expandtabs(4)), item.group(2), item.group(3)
            tag = "ol" if marker[0].isdigit() else "ul"
            close_lists(indent)
            if lists and lists[-1][0] == indent:
                out.append("</li>")
                if lists[-1][1] != tag:
                    out.append(f"</{lists.pop()[1]}>")
            if not lists or lists[-1][0] < indent:
                start = f' start="{int(marker[:-1])}"' if tag == "ol" and int(marker[:-1]) != 1 else ""
                out.append(f"<{tag}{start}>")
                lists.append((indent, tag))
            out.append(f"<li>{inline_html(body)}")
        elif not line.strip():
            close_paragraph()
        elif lists:
            out.append("<br>" + inline_html(line.strip()))  # continuation of a list item
        else:
            paragraph.append(line)
    close_quote()
    close_lists()
    close_paragraph()
    return "".join(out)


def _table_html(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [inline_html(cell.strip()) for cell in line.strip().strip("|").split("|")]

    head = "".join(f"<th>{cell}</th>" for cell in cells(lines[0]))
    rows = ["".join(f"<td>{cell}</td>" for cell in cells(line)) for line in lines[2:] if line.strip()]
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- widgets -------------------------------------------------------------------------------------

STYLE = """<style>
.autocoder-panel { border: 1px solid var(--jp-border-color2, #ddd); border-radius: 8px; padding: 8px;
  background: var(--jp-layout-color1, #fff); max-width: 980px; font-family: var(--jp-ui-font-family, sans-serif); }
.autocoder-header { justify-content: space-between; align-items: center; gap: 0 12px; flex-wrap: wrap; }
.autocoder-header > .autocoder-titlebox { flex: 0 0 auto; width: auto; }
.autocoder-title { font-weight: 600; font-size: 14px; white-space: nowrap; }
.autocoder-header > .autocoder-status { flex: 1 1 auto; text-align: right; }
.autocoder-status { font-size: 12px; color: var(--jp-ui-font-color2, #666); }
.autocoder-status code { font-size: 11px; }
/* The id shows its first 8 characters; the element holds it all, so a click selects and copies the full id. */
.autocoder-id { display: inline-block; max-width: 9.5ch; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; vertical-align: middle; user-select: all; cursor: text;
  font-family: var(--jp-code-font-family, monospace); }
.autocoder-model { display: inline-block; max-width: 180px; overflow: hidden; text-overflow: ellipsis;
  white-space: nowrap; vertical-align: top; }
.autocoder-state { display: inline-block; padding: 0 6px; border-radius: 8px; background: #eef; }
.autocoder-state-idle { background: #e8f5e9; }
.autocoder-state-waiting { background: #fff3cd; }
.autocoder-scroll { max-height: 520px; overflow-y: auto; display: flex; flex-direction: column-reverse;
  border-top: 1px solid var(--jp-border-color2, #eee); border-bottom: 1px solid var(--jp-border-color2, #eee);
  margin: 6px 0; }
.autocoder-transcript { padding: 6px 2px; }
/* Let the scroll box scroll: flex items must keep their height instead of shrinking to fit. */
.autocoder-scroll > *, .autocoder-scroll .widget-box > * { flex-shrink: 0; }
.autocoder-transcript .widget-html, .autocoder-transcript .widget-html-content { width: 100%; height: auto;
  line-height: 1.45; font-size: 13px; }
.autocoder-msg { margin: 4px 0; }
.autocoder-transcript .autocoder-user { align-self: flex-end; width: auto; max-width: 80%; }
.autocoder-user .widget-html-content { background: var(--jp-brand-color3, #dbeafe); padding: 6px 10px;
  border-radius: 12px 12px 2px 12px; white-space: pre-wrap; }
.autocoder-assistant { width: 100%; }
.autocoder-assistant p { margin: 4px 0; }
.autocoder-assistant pre, .autocoder-card pre { background: var(--jp-layout-color2, #f6f8fa); padding: 8px;
  border-radius: 6px; overflow-x: auto; font-size: 12px; margin: 0; white-space: pre; }
.autocoder-assistant blockquote { margin: 4px 0; padding: 0 10px; border-left: 3px solid
  var(--jp-border-color1, #bbb); color: var(--jp-ui-font-color2, #555); }
.autocoder-assistant table { border-collapse: collapse; } .autocoder-assistant td, .autocoder-assistant th {
  border: 1px solid #ccc; padding: 2px 6px; }
.autocoder-code { border: 1px solid var(--jp-border-color2, #e1e4e8); border-radius: 6px; margin: 4px 0; }
.autocoder-codehead { display: flex; justify-content: space-between; font-size: 11px; padding: 2px 8px;
  color: var(--jp-ui-font-color2, #666); }
.autocoder-copy, .autocoder-insert { font-size: 11px; cursor: pointer; border: 1px solid #ccc;
  border-radius: 4px; background: transparent; margin-left: 4px; }
.autocoder-card { border: 1px solid var(--jp-border-color2, #e1e4e8); border-left: 3px solid #6b7280;
  border-radius: 6px; padding: 4px 8px; margin: 4px 0; font-size: 12px; }
.autocoder-card-ok { border-left-color: #16a34a; } .autocoder-card-error { border-left-color: #dc2626; }
.autocoder-card-ask { border-left-color: #d97706; background: #fffbeb; }
.autocoder-card-denied { border-left-color: #9ca3af; }
.autocoder-card-head { font-family: var(--jp-code-font-family, monospace); }
.autocoder-badge { font-size: 11px; padding: 0 6px; border-radius: 8px; background: #eee; margin-left: 6px; }
.autocoder-args summary { cursor: pointer; color: var(--jp-ui-font-color2, #666); font-size: 11px; }
.autocoder-args pre { white-space: pre-wrap; margin: 2px 0 4px; }
.autocoder-outcome { font-style: italic; color: var(--jp-ui-font-color2, #555); }
/* In a narrow notebook the answers wrap onto more lines rather than scroll out of sight. */
.autocoder-panel .autocoder-approval { flex-wrap: wrap; overflow: visible; gap: 4px 0; }
.autocoder-reason { width: 280px; max-width: 100%; }
.autocoder-summary { color: var(--jp-ui-font-color2, #555); white-space: pre-wrap; font-family:
  var(--jp-code-font-family, monospace); font-size: 11px; }
.autocoder-diff .add { color: #15803d; } .autocoder-diff .del { color: #b91c1c; }
.autocoder-diff .hunk { color: #6d28d9; }
.autocoder-notice .widget-html-content { color: var(--jp-ui-font-color2, #666); font-size: 12px;
  font-style: italic; }
.autocoder-error .widget-html-content { color: #991b1b; background: #fef2f2; border: 1px solid #fecaca;
  border-radius: 6px; padding: 4px 8px; }
.autocoder-reasoning { font-size: 12px; }
.autocoder-reasoning pre { white-space: pre-wrap; color: var(--jp-ui-font-color2, #666); }
.autocoder-input textarea { font-size: 13px; min-height: 56px; }
/* ipywidgets only fades a disabled button, so a disabled Stop still looks half-active: grey it out. */
.autocoder-panel .jupyter-button:disabled { background: var(--jp-layout-color3, #e0e0e0);
  color: var(--jp-ui-font-color3, #888); opacity: 1; box-shadow: none; cursor: not-allowed; }
</style>"""


# What ipywidgets cannot do from the kernel, done in the page where the frontend runs inline handlers
# (JupyterLab, Notebook 7); elsewhere the buttons do nothing and Enter is a newline (Send still works).
# Installed once per page by an image that fails to load.
# - Enter sends, Shift+Enter is a new line. The input syncs its value on blur (continuous_update=False):
#   blurring first sends the whole text in one update, ahead of the click (per-keystroke updates are
#   throttled by ipywidgets and could arrive after it).
# - Copy uses the clipboard (or selects the code where the clipboard is not allowed).
# - Insert below: a kernel can only add a cell while it executes one (set_next_input), so the page does
#   what a user would: select the panel's cell, insert a cell below (B), type the code into it.
FRONTEND_JS = """
if (!window.autocoder) {
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const press = (key, code, keyCode) => document.activeElement.dispatchEvent(new KeyboardEvent('keydown',
    {key: key, code: code, keyCode: keyCode, which: keyCode, bubbles: true, cancelable: true}));
  const codeOf = (button) => button.closest('.autocoder-code').querySelector('code');
  window.autocoder = {
    copy: async (button) => {
      try {
        await navigator.clipboard.writeText(codeOf(button).innerText);
        button.textContent = 'Copied';
      } catch (error) {
        const range = document.createRange();
        range.selectNodeContents(codeOf(button));
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        button.textContent = 'Selected: press Ctrl+C';
      }
    },
    insert: async (button) => {
      const cell = button.closest('.jp-Cell');
      const prompt = cell && cell.querySelector('.jp-InputPrompt');
      if (!prompt) return window.autocoder.copy(button);
      const below = cell.nextElementSibling;
      for (const type of ['mousedown', 'mouseup', 'click']) {
        prompt.dispatchEvent(new MouseEvent(type, {bubbles: true, button: 0}));
      }
      await sleep(50);
      press('b', 'KeyB', 66);
      await sleep(100);
      if (!cell.nextElementSibling || cell.nextElementSibling === below) return window.autocoder.copy(button);
      press('Enter', 'Enter', 13);
      await sleep(100);
      document.execCommand('insertText', false, codeOf(button).innerText);
      press('Escape', 'Escape', 27);
      button.textContent = 'Inserted';
    },
  };
  document.addEventListener('keydown', (event) => {
    const input = event.target.closest && event.target.closest('.autocoder-input');
    if (!input || event.key !== 'Enter' || event.shiftKey || event.isComposing) return;
    event.preventDefault();
    event.stopPropagation();
    const send = input.closest('.autocoder-panel').querySelector('.autocoder-send');
    if (send && !send.disabled) {
      event.target.blur();
      send.click();
      event.target.focus();
    }
  }, true);
}
"""
FRONTEND = f'<img alt="" style="display:none" src="data:image/gif;base64," onerror="{html.escape(FRONTEND_JS)}">'


def _html(value: str = "", *classes: str) -> widgets.HTML:
    widget = widgets.HTML(value)
    for name in classes:
        widget.add_class(name)
    return widget


def _box(children: list[widgets.Widget], *classes: str, horizontal: bool = False) -> widgets.Box:
    box = widgets.HBox(children) if horizontal else widgets.VBox(children)
    for name in classes:
        box.add_class(name)
    return box


def _button(description: str, style: str, css: str, tooltip: str = "") -> widgets.Button:
    button = widgets.Button(description=description, button_style=style, tooltip=tooltip or description,
                            layout=widgets.Layout(width="auto"))
    button.add_class(css)
    return button


def _append(box: widgets.Box, child: widgets.Widget) -> None:
    box.children = (*box.children, child)


def _short(text: str, limit: int = SUMMARY_LIMIT) -> str:
    text = _ANSI.sub("", text)
    return text if len(text) <= limit else text[:limit] + f"… ({len(text)} characters)"


def _diff_html(preview: str) -> str:
    lines = []
    for line in _short(preview, PREVIEW_LIMIT).split("\n"):
        css = ("add" if line.startswith("+") and not line.startswith("+++") else
               "del" if line.startswith("-") and not line.startswith("---") else
               "hunk" if line.startswith("@@") else "")
        lines.append(f'<span class="{css}">{html.escape(line)}</span>' if css else html.escape(line))
    return '<pre class="autocoder-diff">' + "\n".join(lines) + "</pre>"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _title_value(value: Any) -> str:
    """One argument for a one-line title: multi-line text as its line count, long values cut."""
    if isinstance(value, str) and "\n" in value:
        lines = len(value.splitlines())
        return f"<{lines} line{'' if lines == 1 else 's'}>"
    return _clip(json.dumps(value, ensure_ascii=False), TITLE_VALUE)


def _arguments_title(arguments: dict[str, Any] | None, raw: str) -> str:
    if arguments is None:
        return _clip(" ".join(raw.split()), TITLE_LIMIT)
    return _clip(", ".join(f"{key}={_title_value(value)}" for key, value in arguments.items()), TITLE_LIMIT)


def _arguments_detail(arguments: dict[str, Any] | None, raw: str) -> str:
    """The full arguments, text values as they are (real line breaks), folded under the title."""
    if arguments is None:
        body = f"<pre>{html.escape(_short(raw, PREVIEW_LIMIT))}</pre>"
    else:
        body = "".join(
            f"<div><b>{html.escape(key)}</b></div><pre>"
            f"{html.escape(_short(value if isinstance(value, str) else json.dumps(value, indent=2), PREVIEW_LIMIT))}"
            "</pre>"
            for key, value in arguments.items()
        )
    return f'<details class="autocoder-args"><summary>arguments</summary>{body}</details>'


def _usage_text(usage: Usage | None) -> str:
    if usage is None:  # nothing reported yet: a 0 would be wrong while tokens are spent
        return "—"
    return f"{usage.prompt_tokens:,} in / {usage.completion_tokens:,} out"


def _tool_card(call_id: str, name: str, arguments: dict[str, Any] | None, raw: str) -> _ToolCard:
    """A card titled by its arguments in one line; the full arguments fold under it when the title shortened them."""
    title = _arguments_title(arguments, raw)
    whole = raw if arguments is None else ", ".join(
        f"{key}={json.dumps(value, ensure_ascii=False)}" for key, value in arguments.items())
    return _ToolCard(call_id, name, title, _arguments_detail(arguments, raw) if title != whole else "")


class _Stack:
    """A column that grows by pages of PAGE_SIZE children: adding a child re-sends a short list of ids,
    however long the column gets (a Box sends its whole children list on every change)."""

    def __init__(self, box: widgets.Box) -> None:
        self.box = box
        self.page: widgets.Box | None = None

    def append(self, widget: widgets.Widget) -> None:
        if self.page is None or len(self.page.children) >= PAGE_SIZE:
            self.page = _box([], "autocoder-page")
            _append(self.box, self.page)
        _append(self.page, widget)

    def clear(self) -> None:
        self.box.children = ()
        self.page = None


class _TextPart:
    """One streamed Markdown answer: frozen segments and code blocks, plus the re-rendered open tail."""

    def __init__(self, panel: ChatPanel) -> None:
        self.panel = panel
        self.done = _Stack(_box([]))
        self.tail = _html()
        self.box = _box([self.done.box, self.tail], "autocoder-msg", "autocoder-assistant")
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
        elif len(self.open) > OPEN_LIMIT and not _FENCE.match(self.open):
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
            self.segment, self.segment_html = _html(), ""
            self.done.append(self.segment)
        self.segment_html += rendered

    def _add_code(self, block: Block) -> None:
        if self.segment is not None:
            self.segment.value = self.segment_html
        self.segment = None
        self.done.append(self.panel._code_block(block.text, block.language or ""))


class _PlainText:
    """Streamed plain text (reasoning) in pages of SEGMENT_CHARS, so an update re-sends one page at most."""

    def __init__(self) -> None:
        self.pages = _Stack(_box([]))
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
            self.current, self.current_text = _html(), ""
            self.pages.append(self.current)
        self.current_text += self.pending
        self.pending = ""
        self.current.value = f"<pre>{html.escape(self.current_text)}</pre>"


class _ToolCard:
    def __init__(self, call_id: str, name: str, arguments: str, detail: str = "") -> None:
        self.call_id, self.name, self.arguments = call_id, name, arguments
        self.head = _html(self._head("running"), "autocoder-card-head")
        self.summary = _html("", "autocoder-summary")
        children = [self.head, _html(detail, "autocoder-detail")] if detail else [self.head]
        self.box = _box(children, "autocoder-card", "autocoder-tool")
        self.buttons: list[widgets.Button] = []
        self.question: widgets.HTML | None = None  # "Allow this change?", replaced by the answer
        self.answered = False
        self.denied = False

    def _head(self, status: str) -> str:
        return (f"<b>{html.escape(self.name)}</b>(<span>{html.escape(self.arguments)}</span>)"
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
        outcome = _html(html.escape(note), "autocoder-outcome")
        children = [c for c in self.box.children if not isinstance(c, widgets.HBox)]
        if self.question in children:
            children[children.index(self.question)] = outcome
        else:
            children.append(outcome)
        self.box.children = tuple(children)


class ChatPanel:
    """A chat with the agent as an ipywidget. Display it, or drive it from Python.

    `ChatPanel()` uses the kernel's shared session (`auto_coder_nb.kernel.get_session()`), so the panel
    and the magics share one conversation and correlation id. Create it on the thread that runs the
    kernel's event loop (any notebook cell does), or pass `loop`.
    """

    def __init__(
        self,
        session: Session | None = None,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        namespace: dict[str, Any] | None = None,
    ) -> None:
        self._shares_kernel_session = session is None
        if session is None:
            from .kernel import get_session

            session = get_session()
        self.session = session
        self._loop = loop or _main_loop()
        self._namespace = namespace
        self._task: asyncio.Task[None] | None = None
        self._state = IDLE
        self._turn_usage: Usage | None = None  # None until the turn's first UsageUpdate
        self._records: list[tuple[str, str | _TextPart]] = []  # (role, text or the streaming part)
        self._parts: list[_TextPart | _PlainText] = []  # parts with text not yet shown
        self._turn = _box([], "autocoder-turn")
        self._part: _TextPart | None = None
        self._reasoning: _PlainText | None = None
        self._state_detail = ""
        self._in_turn = False  # notices and errors go into the turn's box while it runs
        self._cards: dict[str, _ToolCard] = {}
        self._open_cards: list[_ToolCard] = []  # cards whose approval buttons are live
        self._last_flush = 0.0
        self._clock: Callable[[], float] = time.monotonic
        self._flush_handle: asyncio.TimerHandle | None = None
        self.updates = 0  # throttled transcript flushes, for the benchmark
        self._build()

    # -- layout ----------------------------------------------------------------------------

    def _build(self) -> None:
        self._status = _html("", "autocoder-status")
        title = _html(STYLE + FRONTEND + '<span class="autocoder-title">auto-coder</span>', "autocoder-titlebox")
        header = _box([title, self._status],
                      "autocoder-header", horizontal=True)
        self._transcript = _Stack(_box([], "autocoder-transcript"))
        scroll = _box([self._transcript.box], "autocoder-scroll")
        self._input = widgets.Textarea(
            continuous_update=False,
            placeholder="Ask about your code, your data or this notebook… (Enter to send, Shift+Enter for a new line)",
            layout=widgets.Layout(width="100%", height="64px"),
        )
        self._input.add_class("autocoder-input")
        self._send_button = _button("Send", "primary", "autocoder-send", "Send the message")
        self._stop_button = _button("Stop", "warning", "autocoder-stop", "Stop the running turn")
        self._reset_button = _button("Reset", "", "autocoder-reset", "Start a new conversation (new id)")
        self._stop_button.disabled = True
        self._send_button.on_click(self._handover(self._on_send))
        self._stop_button.on_click(self._handover(self._stop))
        self._reset_button.on_click(self._handover(self._start_reset))
        buttons = _box([self._send_button, self._stop_button, self._reset_button], "autocoder-buttons",
                       horizontal=True)
        self.widget = _box([header, scroll, self._input, buttons], "autocoder-panel")
        self._show_status()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- the Python API --------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def transcript(self) -> list[dict[str, str]]:
        """What the panel shows, as `{"role", "text"}` dicts (roles: user, assistant, tool, notice, error)."""
        return [{"role": role, "text": text if isinstance(text, str) else text.text} for role, text in self._records]

    def send(self, message: str) -> None:
        """Start a turn with `message` (safe from any thread; returns at once)."""
        self._loop.call_soon_threadsafe(self._start_turn, message)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stop)

    def reset(self) -> None:
        self._loop.call_soon_threadsafe(self._start_reset)

    async def ask(self, message: str) -> str:
        """Send `message`, wait for the turn to end, return the assistant's answer text (`await` in a cell)."""
        before = len(self._records)
        self._start_turn(message)
        await self.wait()
        return "\n\n".join(r["text"] for r in self.transcript[before:] if r["role"] == "assistant")

    async def wait(self) -> None:
        """Wait until the running turn (if any) has ended."""
        if self._task is not None:
            await asyncio.wait([self._task])

    # -- callbacks: hand over to the kernel's loop, never work here -------------------------

    def _handover(self, action: Callable[[], None]) -> Callable[[Any], None]:
        @functools.wraps(action)
        def callback(_: Any = None) -> None:
            self._loop.call_soon_threadsafe(self._guarded, action)

        return callback

    def _guarded(self, action: Callable[[], None]) -> None:
        """Run a UI action on the loop; a bug shows in the panel, not as a traceback in a log nobody reads."""
        try:
            action()
        except Exception as exc:
            self._error(f"The panel failed: {type(exc).__name__}: {exc}")

    def _on_send(self) -> None:
        message = self._input.value.strip()
        if not message or self.running:
            return
        self._input.value = ""
        self._start_turn(message)

    # -- turns -----------------------------------------------------------------------------

    def _start_turn(self, message: str) -> None:
        if self.running:
            self._notice("A turn is already running: Stop it first.")
            return
        self._task = self._loop.create_task(self._run_turn(message))

    def _stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def _start_reset(self) -> None:
        self._loop.create_task(self._reset())

    async def _reset(self) -> None:
        try:
            if self.running:
                self._stop()
                await self.wait()
            new_id = self.session.reset()
            self._records.clear()
            self._parts.clear()
            self._cards.clear()
            self._turn_usage = None
            self._transcript.clear()
            self._notice(f"New conversation. Correlation id {new_id}.")
            self._show_status()
        except Exception as exc:  # a task's error would only reach the log console
            self._error(f"Reset failed: {type(exc).__name__}: {exc}")

    async def _run_turn(self, message: str) -> None:
        self._begin_turn(message)
        if self._shares_kernel_session and not self._refresh_config():
            self._end_turn()
            self._set_state(IDLE)
            return
        events = self.session.agent.run(message)
        try:
            async for event in events:
                self._on_event(event)
        except asyncio.CancelledError:
            self._end_text()
            self._notice("Stopped. The conversation is kept: you can send the next message.")
        except Exception as exc:  # the agent reports errors as events; this is a last guard
            self._end_text()
            self._error(f"{type(exc).__name__}: {exc}")
        finally:
            with suppress(BaseException):
                await events.aclose()  # type: ignore[attr-defined]
            self._end_turn()

    def _refresh_config(self) -> bool:
        """Settings changed in the environment or config files apply to this turn, as in the magics."""
        from .errors import ConfigError
        from .kernel import refresh_config

        try:
            changed = refresh_config()
        except ConfigError as exc:
            self._error(f"Configuration error: {exc}")
            return False
        if changed:
            self._notice(changed)
            self._show_status()
        return True

    def _begin_turn(self, message: str) -> None:
        self._set_busy(True)
        self._turn_usage = None
        self._records.append(("user", message))
        self._transcript.append(_html(html.escape(message), "autocoder-msg", "autocoder-user"))
        self._turn = _box([], "autocoder-turn")
        self._transcript.append(self._turn)
        self._part, self._reasoning = None, None
        self._in_turn = True
        self._set_state(THINKING)

    def _end_turn(self) -> None:
        self._end_text()
        for card in self._open_cards:
            card.close_approval("Not answered: the turn ended.")
            card.status("not run")
        self._open_cards.clear()
        self._in_turn = False
        self._set_busy(False)

    def _on_event(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            if self._part is None:
                self._part = _TextPart(self)
                self._records.append(("assistant", self._part))
                self._add_to_turn(self._part.box)
            if self._state != ANSWERING:
                self._set_state(ANSWERING)
            self._part.feed(event.text)
            self._mark_dirty(self._part)
        elif isinstance(event, ReasoningDelta):
            if self._state != THINKING:
                self._set_state(THINKING)
            if self._reasoning is None:
                self._reasoning = _PlainText()
                accordion = widgets.Accordion([self._reasoning.box], titles=("Reasoning",), selected_index=None)
                accordion.add_class("autocoder-reasoning")
                self._add_to_turn(accordion)
            self._reasoning.feed(event.text)
            self._mark_dirty(self._reasoning)
        elif isinstance(event, ToolCallStarted):
            self._end_text()
            card = _tool_card(event.call_id, event.name, event.arguments, event.raw_arguments)
            self._cards[event.call_id] = card
            self._add_to_turn(card.box)
            self._set_state(RUNNING_TOOL, event.name)
        elif isinstance(event, ApprovalRequest):
            self._ask(event)
        elif isinstance(event, ToolResult):
            self._tool_result(event)
        elif isinstance(event, UsageUpdate):
            self._turn_usage = event.turn
            self._show_status()
        elif isinstance(event, Notice):
            self._end_text()
            self._notice(event.text)
        elif isinstance(event, ErrorEvent):
            self._end_text()
            self._error(event.message)
        elif isinstance(event, TurnDone):
            self._end_text()
            if event.reason in TURN_END_NOTES:
                self._notice(TURN_END_NOTES[event.reason])

    def _add_to_turn(self, widget: widgets.Widget) -> None:
        _append(self._turn, widget)

    def _end_text(self) -> None:
        """The current answer part is finished: render it whole and start a new one on the next delta."""
        part, self._part = self._part, None
        if part is not None:
            part.flush(final=True)
            if part in self._parts:
                self._parts.remove(part)
        if self._parts:
            self._flush()

    # -- throttled streaming ---------------------------------------------------------------

    def _mark_dirty(self, part: _TextPart | _PlainText) -> None:
        if part not in self._parts:
            self._parts.append(part)
        wait = self._last_flush + 1 / UPDATES_PER_SECOND - self._clock()
        if wait <= 0:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(wait, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._last_flush = self._clock()
        for part in self._parts:
            part.flush()
        self._parts.clear()
        self.updates += 1

    # -- tools and approvals ---------------------------------------------------------------

    def _card_for(self, call_id: str, name: str, arguments: dict[str, Any]) -> _ToolCard:
        card = self._cards.get(call_id)
        if card is None:
            card = _tool_card(call_id, name, arguments, "")
            self._cards[call_id] = card
            self._add_to_turn(card.box)
        return card

    def _ask(self, request: ApprovalRequest) -> None:
        self._end_text()
        card = self._card_for(request.call_id, request.tool, request.arguments)
        what = "this command" if request.kind == "command" else "this change"
        self._records.append(("tool", f"{request.tool}: waiting for approval"))
        card.status("waiting for approval", "autocoder-card-ask")
        card.question = _html(f"Allow {what}?", "autocoder-question")
        preview = _html(_diff_html(request.preview), "autocoder-preview")
        # Synced on blur, which comes before the Deny click, so the click sees the whole reason.
        reason = widgets.Text(placeholder="Reason for the model (optional)", continuous_update=False)
        reason.add_class("autocoder-reason")
        card.buttons = self._approval_buttons(
            lambda: request.approve(), lambda: request.approve(always=True), request.deny, card, request.kind, reason
        )
        row = _box([*card.buttons[:2], reason, card.buttons[2]], "autocoder-approval", horizontal=True)
        card.box.children = (*card.box.children, card.question, preview, row)
        self._open_cards.append(card)
        self._set_state(WAITING, request.tool)

    def _approval_buttons(
        self,
        approve: Callable[[], None],
        always: Callable[[], None],
        deny: Callable[[str], None],
        card: _ToolCard,
        kind: str,
        reason: widgets.Text | None = None,
    ) -> list[widgets.Button]:
        """Approve / Always for this session / Deny; each click is answered once, on the loop.
        Deny passes the text of `reason` (if given) on, for the model to read."""

        def once(act: Callable[[], None]) -> Callable[[], None]:
            def on_loop() -> None:
                if card.answered:
                    return
                if card in self._open_cards:
                    self._open_cards.remove(card)
                act()

            return on_loop

        def allow(action: Callable[[], None], note: str) -> Callable[[], None]:
            def act() -> None:
                card.close_approval(note)
                card.status("running")
                action()
                if self.running:
                    self._set_state(RUNNING_TOOL, card.name)

            return once(act)

        def refuse() -> None:
            why = reason.value.strip() if reason is not None else ""
            card.denied = True
            card.close_approval(f"Denied: {why}" if why else "Denied.")
            card.status("denied", "autocoder-card-denied")
            deny(why)
            if self.running:
                self._set_state(THINKING)

        buttons = [
            _button("Approve", "success", "autocoder-approve"),
            _button(f"Always for this session ({'commands' if kind == 'command' else 'edits'})", "info",
                    "autocoder-always"),
            _button("Deny", "danger", "autocoder-deny"),
        ]
        buttons[0].on_click(self._handover(allow(approve, "Approved.")))
        buttons[1].on_click(self._handover(allow(always, "Approved for the rest of this session.")))
        buttons[2].on_click(self._handover(once(refuse)))
        return buttons

    def _tool_result(self, result: ToolResult) -> None:
        card = self._card_for(result.call_id, result.name, {})
        if card.denied:  # the user's choice, not a failure: the card already says why
            card.status("denied", "autocoder-card-denied")
            self._records.append(("tool", f"{result.name}: denied: {_short(result.output)}"))
            self._set_state(THINKING)
            return
        lines = result.output.count("\n") + 1
        status = "error" if result.is_error else "done"
        card.status(status, "autocoder-card-error" if result.is_error else "autocoder-card-ok")
        head = [_short(line, 160) for line in result.output.strip().split("\n")[:SUMMARY_LINES]]
        more = f"\n… +{lines - SUMMARY_LINES} lines" if lines > SUMMARY_LINES else ""
        card.summary.value = html.escape("\n".join(head) + more)
        if card.summary not in card.box.children:
            card.box.children = (*card.box.children, card.summary)
        self._records.append(("tool", f"{result.name}: {status}: {_short(result.output)}"))
        self._set_state(THINKING)

    # -- code blocks in answers ------------------------------------------------------------

    def _code_block(self, code: str, language: str) -> widgets.Widget:
        run = _button("Run", "", "autocoder-run", "Run this code in the kernel (asks first in ask mode)")
        result = _html("", "autocoder-summary")
        box = _box([_html(code_html(code, language)), _box([run], "autocoder-code-actions", horizontal=True)],
                   "autocoder-code")
        if language in ("", "python", "py", "python3", "ipython"):
            run.on_click(self._handover(lambda: self._run_code(code, box, result)))
        else:
            run.disabled, run.tooltip = True, f"Only Python runs in the kernel (this block is {language})"
        return box

    def _run_code(self, code: str, box: widgets.Box, result: widgets.HTML) -> None:
        decision = self.session.policy.decide("command")
        if decision == "deny":
            result.value = html.escape(f"Not run: the approval mode is {self.session.policy.mode!r}.")
            if result not in box.children:
                _append(box, result)
            return
        if decision == "allow":
            self._execute_code(code, box, result)
            return
        card = _ToolCard("", "run_code", _clip(code.strip().split("\n", 1)[0], 80))
        card.status("waiting for approval", "autocoder-card-ask")

        def always() -> None:
            self.session.policy.allow_always("command")
            self._execute_code(code, box, result, card)

        # No model waits on this run, so a denial has no one to tell.
        card.buttons = self._approval_buttons(lambda: self._execute_code(code, box, result, card), always,
                                              lambda _reason: None, card, "command")
        card.box.children = (*card.box.children, _box(card.buttons, "autocoder-approval", horizontal=True))
        _append(box, card.box)

    def _execute_code(self, code: str, box: widgets.Box, result: widgets.HTML, card: _ToolCard | None = None) -> None:
        """Run like the run_code tool: in the user namespace, IPython syntax (magics, !cmd) transformed first."""
        from IPython import get_ipython

        from .tools.notebook import run_python

        shell = get_ipython()
        if self._namespace is None:
            self._namespace = shell.user_ns if shell is not None else {}
        source = shell.transform_cell(code) if shell is not None else code
        outcome = run_python(source, self._namespace, filename="<chat panel>")
        text = outcome.to_text() or "(no output)"
        result.value = "<b>Output</b>\n" + html.escape(_short(text, 4000))
        if result not in box.children:
            _append(box, result)
        if card is not None:
            card.status("error" if outcome.error else "done",
                        "autocoder-card-error" if outcome.error else "autocoder-card-ok")

    # -- status, notices, errors -----------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        self._send_button.disabled = busy
        self._stop_button.disabled = not busy
        if not busy:
            self._set_state(IDLE)

    def _set_state(self, state: str, detail: str = "") -> None:
        self._state = state
        self._state_detail = detail
        self._show_status()

    def _show_status(self) -> None:
        conversation = self.session.conversation
        detail = self._state_detail
        state = f"{self._state}: {detail}" if detail and self._state in (RUNNING_TOOL, WAITING) else self._state
        css = {IDLE: "idle", WAITING: "waiting"}.get(self._state, "busy")
        model, full_id = html.escape(self.session.config.llm.model), html.escape(conversation.correlation_id)
        self._status.value = (
            f'<span class="autocoder-model" title="{model}">{model}</span> · '
            f'<span class="autocoder-state autocoder-state-{css}">{html.escape(state)}</span> · '
            f'id <code class="autocoder-id" title="Correlation id {full_id} (click to select)">{full_id}</code> · '
            f"tokens turn {_usage_text(self._turn_usage)} · session {_usage_text(conversation.usage)}"
        )

    def _notice(self, text: str) -> None:
        self._records.append(("notice", text))
        self._show_line(_html(html.escape(text), "autocoder-msg", "autocoder-notice"))

    def _error(self, text: str) -> None:
        self._records.append(("error", text))
        self._show_line(_html("<b>Error:</b> " + html.escape(text), "autocoder-msg", "autocoder-error"))

    def _show_line(self, widget: widgets.HTML) -> None:
        if self._in_turn:
            self._add_to_turn(widget)
        else:
            self._transcript.append(widget)

    @property
    def correlation_id(self) -> str:
        return self.session.conversation.correlation_id


def _main_loop() -> asyncio.AbstractEventLoop:
    """The loop of this thread: in a kernel cell, the kernel's main loop (running)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()
