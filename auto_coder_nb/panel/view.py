"""What the panel's parts draw on: the view of one panel. `ChatPanel` (chat.py) is the controller (turns, buttons,
trust, resume); the parts (tool cards, review, code blocks, attachments, the saved conversation) get a `PanelView`
and never the controller, so no part reaches into another's insides and `panel/` has no import circle.

Threading: every widget change happens on the kernel's loop (`PanelView.loop`). Widget callbacks may arrive on the
main thread or a kernel subshell thread (ipykernel 7), so they only hand their work over (`handover`).

Streaming cost: text deltas are buffered and flushed at most `UPDATES_PER_SECOND` times a second (`Stream`); an
answer part renders block by block (`parts.TextPart`), so one update costs the same after 10 or 1,000 messages.
"""

from __future__ import annotations

import asyncio
import functools
import html
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import ipywidgets as widgets

from ..events import ContextUsage
from ..providers.base import Usage
from .parts import (
    IDLE,
    RUNNING_TOOL,
    WAITING,
    PlainText,
    Stack,
    TextPart,
    append_child,
    code_html,
    make_box,
    make_html,
    usage_text,
)

if TYPE_CHECKING:
    from ..session import Session

UPDATES_PER_SECOND = 20


class Stream:
    """Streamed parts (answers, reasoning) shown at most UPDATES_PER_SECOND times a second."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.pending: list[TextPart | PlainText] = []  # parts with text not yet shown
        self.clock: Callable[[], float] = time.monotonic
        self.last_flush = 0.0
        self.handle: asyncio.TimerHandle | None = None
        self.updates = 0  # flushes, for the benchmark

    def dirty(self, part: TextPart | PlainText) -> None:
        if part not in self.pending:
            self.pending.append(part)
        wait = self.last_flush + 1 / UPDATES_PER_SECOND - self.clock()
        if wait <= 0:
            self.flush()
        elif self.handle is None:
            self.handle = self.loop.call_later(wait, self.flush)

    def flush(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.last_flush = self.clock()
        for part in self.pending:
            part.flush()
        self.pending.clear()
        self.updates += 1

    def finish(self, part: TextPart) -> None:
        """`part` is complete: render it whole now, and the other pending parts with it."""
        part.flush(final=True)
        if part in self.pending:
            self.pending.remove(part)
        if self.pending:
            self.flush()


class StatusLine:
    """The header's line: model, state, correlation id, tokens (or, before the first turn, the approval mode and
    the server), and how full the context window is."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.widget = make_html("", "autocoder-status")
        self.state = IDLE
        self.detail = ""  # the tool running or waiting for approval
        self.turn_usage: Usage | None = None  # None until the turn's first UsageUpdate
        self.context: ContextUsage | None = None  # after each turn

    def set_state(self, state: str, detail: str = "") -> None:
        self.state, self.detail = state, detail
        self.show()

    def forget_usage(self) -> None:
        self.turn_usage = None
        self.context = None

    def show(self) -> None:
        conversation = self.session.conversation
        state = f"{self.state}: {self.detail}" if self.detail and self.state in (RUNNING_TOOL, WAITING) else self.state
        css = {IDLE: "idle", WAITING: "waiting"}.get(self.state, "busy")
        model, full_id = html.escape(self.session.config.llm.model), html.escape(conversation.correlation_id)
        value = (
            f'<span class="autocoder-model" title="{model}">{model}</span> · '
            f'<span class="autocoder-state autocoder-state-{css}">{html.escape(state)}</span> · '
            f'id <code class="autocoder-id" title="Correlation id {full_id} (click to select)">{full_id}</code> · '
            + (self._before_first_turn() if self._fresh() else
               f"tokens turn {usage_text(self.turn_usage)} · session {usage_text(conversation.usage)}")
        )
        if self.context is not None:
            share = f"{'~' if self.context.estimated else ''}{self.context.share:.0%}"
            value += (f' · <span class="autocoder-context" title="{html.escape(str(self.context))}">'
                      f"context {share}</span>")
        self.widget.value = value

    def _fresh(self) -> bool:
        """Nothing asked yet in this conversation: token counts would say nothing."""
        conversation = self.session.conversation
        return (self.state == IDLE and self.turn_usage is None and not conversation.usage.total_tokens
                and not any(message["role"] == "user" for message in conversation.messages))

    def _before_first_turn(self) -> str:
        """What the status says before the first turn: how changes are approved, and which server is asked."""
        where = urlsplit(self.session.config.llm.base_url)
        try:
            server = f"{where.hostname or '?'}{f':{where.port}' if where.port else ''}"  # never its credentials
        except ValueError:  # a port that is not a number: the first request will say what is wrong
            server = where.hostname or "?"
        return html.escape(f"approval {self.session.policy.mode} · {server} · ask below to start")


def plain_code(code: str, language: str) -> widgets.Widget:
    """A code block without a Run button (until the panel gives its own: `PanelView.code_widget`)."""
    return make_html(code_html(code, language))


class PanelView:
    """One panel's transcript and status: records (what `ChatPanel.transcript` returns), the column of turns, the
    open turn's box and its streamed parts, notices and errors, the status line, and the hand-over of widget
    callbacks to the kernel's loop. `running()` says whether the panel's turn runs (the controller knows)."""

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop, running: Callable[[], bool]) -> None:
        self.session = session
        self.loop = loop
        self.running = running
        self.records: list[tuple[str, str | TextPart]] = []  # (role, text or the streaming part)
        self.transcript = Stack(make_box([], "autocoder-transcript"))
        self.turn = make_box([], "autocoder-turn")
        self.in_turn = False  # notices and errors go into the turn's box while it is open
        self.stream = Stream(loop)
        self.status = StatusLine(session)
        self.code_widget: Callable[[str, str], widgets.Widget] = plain_code  # a fenced block of an answer
        self._answer: TextPart | None = None
        self._reasoning: PlainText | None = None
        self._records_before: dict[str, int] = {}  # a turn's first widget (model id) -> records before it

    # -- the hand-over: callbacks only queue work on the loop ------------------------------------------

    def handover(self, action: Callable[[], None]) -> Callable[[Any], None]:
        @functools.wraps(action)
        def callback(_: Any = None) -> None:
            self.loop.call_soon_threadsafe(self.guarded, action)

        return callback

    def guarded(self, action: Callable[[], None]) -> None:
        """Run a UI action on the loop; a bug shows in the panel, not as a traceback in a log nobody reads."""
        try:
            action()
        except Exception as exc:
            self.error(f"The panel failed: {type(exc).__name__}: {exc}")

    # -- records -----------------------------------------------------------------------------------------

    def record(self, role: str, text: str | TextPart) -> None:
        self.records.append((role, text))

    def transcript_records(self) -> list[dict[str, str]]:
        return [{"role": role, "text": text if isinstance(text, str) else text.text} for role, text in self.records]

    # -- turns: the one rendering path for live and saved turns ------------------------------------------

    def open_turn(self, message: str, thumbnails: str = "") -> widgets.Widget:
        """The user's line and a new turn box below it; returns the line (where a rewind cuts)."""
        start = make_html(html.escape(message) + thumbnails, "autocoder-msg", "autocoder-user")
        self._records_before[start.model_id] = len(self.records)
        self.record("user", message)
        self.transcript.append(start)
        self.turn = make_box([], "autocoder-turn")
        self.transcript.append(self.turn)
        self._answer, self._reasoning = None, None
        self.in_turn = True
        return start

    def close_turn(self) -> None:
        self.end_text()
        self.in_turn = False

    def add_to_turn(self, widget: widgets.Widget) -> None:
        append_child(self.turn, widget)

    def answer(self, text: str) -> None:
        """A piece of the answer: a new answer part after a tool card or notice, else the current one grows."""
        if self._answer is None:
            self._answer = TextPart(self.code_widget)
            self.record("assistant", self._answer)
            self.add_to_turn(self._answer.box)
        self._answer.feed(text)
        self.stream.dirty(self._answer)

    def reasoning(self, text: str) -> None:
        if self._reasoning is None:
            self._reasoning = PlainText()
            accordion = widgets.Accordion([self._reasoning.box], titles=("Reasoning",), selected_index=None)
            accordion.add_class("autocoder-reasoning")
            self.add_to_turn(accordion)
        self._reasoning.feed(text)
        self.stream.dirty(self._reasoning)

    def end_text(self) -> None:
        """The current answer part is finished: render it whole and start a new one on the next piece."""
        part, self._answer = self._answer, None
        if part is not None:
            self.stream.finish(part)
        elif self.stream.pending:
            self.stream.flush()

    # -- lines: notices, errors, buttons -------------------------------------------------------------

    def show_line(self, widget: widgets.Widget) -> None:
        if self.in_turn:
            self.add_to_turn(widget)
        else:
            self.transcript.append(widget)

    def notice(self, text: str) -> None:
        self.record("notice", text)
        self.show_line(make_html(html.escape(text), "autocoder-msg", "autocoder-notice"))

    def error(self, text: str) -> None:
        self.record("error", text)
        self.show_line(make_html("<b>Error:</b> " + html.escape(text), "autocoder-msg", "autocoder-error"))

    def set_state(self, state: str, detail: str = "") -> None:
        self.status.set_state(state, detail)

    # -- clearing and cutting --------------------------------------------------------------------------

    def clear(self) -> None:
        self.records.clear()
        self.stream.pending.clear()
        self.transcript.clear()

    def cut(self, start: widgets.Widget) -> None:
        """A rewind: the turn that begins with `start` and everything after it leave the transcript."""
        self.transcript.cut(start)
        del self.records[self._records_before.get(start.model_id, len(self.records)):]
