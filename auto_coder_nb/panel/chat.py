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
import time
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import ipywidgets as widgets

from ..events import (
    ApprovalRequest,
    ContextUsage,
    ErrorEvent,
    Event,
    Notice,
    ReasoningDelta,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
    UsageUpdate,
    assert_never,
)
from ..providers.base import Usage
from .assets import FRONTEND, STYLE
from .attachments import Attachments, thumbnails_html
from .code_blocks import CodeBlocks
from .parts import (
    ANSWERING,
    IDLE,
    RUNNING_TOOL,
    THINKING,
    WAITING,
    _append,
    _box,
    _button,
    _html,
    _PlainText,
    _Stack,
    _TextPart,
    _usage_text,
)
from .saved import SavedList, SavedOffer
from .tools import ToolCards

if TYPE_CHECKING:
    from ..history import SavedConversation
    from ..session import Session

UPDATES_PER_SECOND = 20
# Every panel of this process. A turn belongs to the panel that started it, but re-running the
# `%autocoder_chat` cell replaces the panel on screen while its turn (waiting for an approval, say) goes on
# and keeps the shared session busy: the panels of one session can stop each other's turns.
_PANELS: weakref.WeakSet[ChatPanel] = weakref.WeakSet()
TURN_END_NOTES = {
    "max_iterations": "Stopped at the request limit for one turn.",
    "repeated_call": "Stopped: the same tool call was repeated.",
}


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
            from ..kernel import get_session

            session = get_session()
        self.session = session
        self._loop = loop or _main_loop()
        self._namespace = namespace
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # between the start and the end of this panel's turn
        self._state = IDLE
        self._turn_usage: Usage | None = None  # None until the turn's first UsageUpdate
        self._records: list[tuple[str, str | _TextPart]] = []  # (role, text or the streaming part)
        self._parts: list[_TextPart | _PlainText] = []  # parts with text not yet shown
        self._turn = _box([], "autocoder-turn")
        self._part: _TextPart | None = None
        self._reasoning: _PlainText | None = None
        self._state_detail = ""
        self._in_turn = False  # notices and errors go into the turn's box while it runs
        self._tools = ToolCards(self)
        self._last_flush = 0.0
        self._clock: Callable[[], float] = time.monotonic
        self._flush_handle: asyncio.TimerHandle | None = None
        self.updates = 0  # throttled transcript flushes, for the benchmark
        self._code_blocks = CodeBlocks(self)
        self._context: ContextUsage | None = None  # how full the context window is, after each turn
        self._attachments = Attachments(self)
        self._turn_start: widgets.Widget | None = None  # the user's message of the current turn
        self._records_before: dict[str, int] = {}  # a turn's first widget (model id) -> records before it
        self._build()
        _PANELS.add(self)
        self._show_busy()
        self._offer = SavedOffer.look(self)  # after a kernel restart: the notebook's latest conversation
        if self._offer is not None:
            self._offer.show()
            self._resume_button.layout.display = None

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
        self._resume_button = _button("Resume", "info", "autocoder-resume",
                                      "Continue the saved conversation shown above (same history and id)")
        self._resume_button.layout.display = "none"  # shown only with a saved conversation to offer
        self._resume_button.on_click(self._handover(self._resume))
        self._saved = SavedList(self, self._show_saved)
        self._saved_button = _button("Saved", "", "autocoder-saved",
                                     "The saved conversations of this notebook, newest first: show one to resume it")
        self._saved_button.on_click(self._handover(self._saved.toggle))
        buttons = _box([self._send_button, self._stop_button, self._reset_button, self._resume_button,
                        self._saved_button], "autocoder-buttons", horizontal=True)
        # The project's .auto-coder.yaml, while untrusted: which of its settings were ignored, and a way to trust it.
        self._trust_note = _html("", "autocoder-trust-note")
        self._trust_button = _button("Trust this folder", "warning", "auto-coder-trust",
                                     "Trust this folder's .auto-coder.yaml as it is now and apply all its settings")
        self._trust_button.on_click(self._handover(self._trust))
        self._trust_bar = _box([self._trust_note, self._trust_button], "autocoder-trust-bar")
        self.widget = _box([header, scroll, self._trust_bar, self._input, buttons, self._saved.box,
                            self._attachments.widget], "autocoder-panel")
        self._show_status()
        self._show_trust()

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

    def attach(self, name: str) -> None:
        """Attach an image for the next message, like the Attach control: a file, a variable or `last`."""
        self._loop.call_soon_threadsafe(self._attachments.start, name)

    @property
    def attachments(self) -> list[str]:
        """The images attached for the next message, described."""
        return [image.describe() for image in self._attachments.images]

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
        if self._offer is not None:  # sent without Resume: a new conversation, the saved one leaves the view
            self._withdraw_offer()
            self._transcript.clear()
            self._records.clear()
        self._task = self._loop.create_task(self._run_turn(message))

    def _stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            return
        for other in self._others_running():  # a turn of an earlier panel of this session (no longer shown)
            other.stop()

    def _others_running(self) -> list[ChatPanel]:
        return [panel for panel in list(_PANELS) if panel is not self and panel.session is self.session
                and panel.running]

    def _start_reset(self) -> None:
        self._loop.create_task(self._reset())

    async def _reset(self) -> None:
        try:
            if self.running:
                self._stop()
                await self.wait()
            others = self._others_running()
            for other in others:
                other.stop()
            for _ in range(1000):  # their tasks may run on another loop: poll, at most 10 s
                if not any(other.running for other in others):
                    break
                await asyncio.sleep(0.01)
            self._withdraw_offer()
            new_id = self.session.reset()
            self._records.clear()
            self._parts.clear()
            self._tools.cards.clear()
            self._turn_usage = None
            self._context = None
            self._transcript.clear()
            self._notice(f"New conversation. Correlation id {new_id}.")
            self._show_status()
        except Exception as exc:  # a task's error would only reach the log console
            self._error(f"Reset failed: {type(exc).__name__}: {exc}")

    def _resume(self) -> None:
        from ..history import HistoryError

        if self._offer is None or self.running:
            return
        try:
            message = self._offer.resume()
        except HistoryError as exc:
            self._error(str(exc))
            return
        self._withdraw_offer()
        self._notice(message)
        self._show_status()

    def _show_saved(self, saved: SavedConversation) -> None:
        """Show a conversation chosen in the Saved list in place of the transcript, with Resume to continue it."""
        from ..history import HistoryError

        if self.running:
            self._notice("A turn is running: Stop it first, then choose a saved conversation.")
            return
        try:
            offer = SavedOffer(self, saved, SavedList.read(saved))
        except HistoryError as exc:
            self._error(str(exc))
            return
        self._transcript.clear()
        self._records.clear()
        self._offer = offer
        offer.show()
        self._resume_button.layout.display = None

    def _withdraw_offer(self) -> None:
        self._offer = None
        self._resume_button.layout.display = "none"

    async def _run_turn(self, message: str) -> None:
        images = self._attachments.take()
        self._begin_turn(message, thumbnails_html(images))
        if self._shares_kernel_session and not self._refresh_config():
            self._end_turn()
            self._set_state(IDLE)
            return
        events = self.session.agent.run(message, images)
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
        from ..errors import ConfigError
        from ..kernel import refresh_config

        try:
            changed = refresh_config()
        except ConfigError as exc:
            self._error(f"Configuration error: {exc}")
            return False
        if changed:
            self._notice(changed)
            self._show_status()
        self._show_trust()
        return True

    def _show_trust(self) -> None:
        """The trust bar, shown while the kernel's project file has settings ignored for want of trust."""
        project = self.session.config.project
        if self._shares_kernel_session and project is not None and project.needs_trust:
            self._trust_note.value = html.escape(project.notice("kernel"))
            self._trust_bar.layout.display = None
        else:
            self._trust_bar.layout.display = "none"

    def trust_project(self) -> None:
        """Trust this folder's config file, like the Trust this folder button (safe from any thread)."""
        self._loop.call_soon_threadsafe(self._guarded, self._trust)

    def _trust(self) -> None:
        from ..errors import ConfigError
        from ..kernel import trust_project

        if self.running:
            self._notice("A turn is running: trust the folder when it has ended.")
            return
        try:
            self._notice(trust_project())
        except ConfigError as exc:
            self._error(str(exc))
        self._show_trust()
        self._show_status()

    def _begin_turn(self, message: str, thumbnails: str = "") -> None:
        self._set_busy(True)
        self._turn_usage = None
        self._turn_start = _html(html.escape(message) + thumbnails, "autocoder-msg", "autocoder-user")
        self._records_before[self._turn_start.model_id] = len(self._records)
        self._records.append(("user", message))
        self._transcript.append(self._turn_start)
        self._turn = _box([], "autocoder-turn")
        self._transcript.append(self._turn)
        self._part, self._reasoning = None, None
        self._in_turn = True
        self._set_state(THINKING)

    def _end_turn(self) -> None:
        self._end_text()
        self._tools.close_open()
        self._in_turn = False
        self._set_busy(False)

    def _on_event(self, event: Event) -> None:
        match event:
            case TextDelta():
                if self._part is None:
                    self._part = _TextPart(self._code_blocks.widget)
                    self._records.append(("assistant", self._part))
                    self._add_to_turn(self._part.box)
                if self._state != ANSWERING:
                    self._set_state(ANSWERING)
                self._part.feed(event.text)
                self._mark_dirty(self._part)
            case ReasoningDelta():
                if self._state != THINKING:
                    self._set_state(THINKING)
                if self._reasoning is None:
                    self._reasoning = _PlainText()
                    accordion = widgets.Accordion([self._reasoning.box], titles=("Reasoning",), selected_index=None)
                    accordion.add_class("autocoder-reasoning")
                    self._add_to_turn(accordion)
                self._reasoning.feed(event.text)
                self._mark_dirty(self._reasoning)
            case ToolCallStarted():
                self._end_text()
                self._tools.started(event.call_id, event.name, event.arguments, event.raw_arguments)
                self._set_state(RUNNING_TOOL, event.name)
            case ApprovalRequest():
                self._tools.ask(event)
            case ToolResult():
                self._tools.result(event)
            case UsageUpdate():
                self._turn_usage = event.turn
                self._show_status()
            case Notice():
                self._end_text()
                self._notice(event.text)
            case ErrorEvent():
                self._end_text()
                self._error(event.message)
            case TurnDone():
                self._end_text()
                self._context = event.context or self._context
                self._show_status()
                self._tools.review.expire()
                turns = self.session.turns.current() if self.session.turns is not None else []
                if event.reason != "busy" and turns and self._turn_start is not None:
                    self._tools.review.offer_rewind(self._turn, turns[-1], self._turn_start)
                if event.reason in TURN_END_NOTES:
                    self._notice(TURN_END_NOTES[event.reason])
            case _:
                assert_never(event)

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

    # -- status, notices, errors -----------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._send_button.disabled = busy
        for panel in list(_PANELS):
            if panel.session is self.session:
                panel._show_busy()
        if not busy:
            self._set_state(IDLE)

    def _show_busy(self) -> None:
        """Stop is enabled while a turn of this panel, or of another panel on the same session, runs."""
        self._stop_button.disabled = not any(panel._busy for panel in list(_PANELS) if panel.session is self.session)

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
            + (self._before_first_turn() if self._fresh() else
               f"tokens turn {_usage_text(self._turn_usage)} · session {_usage_text(conversation.usage)}")
        )
        if self._context is not None:
            share = f"{'~' if self._context.estimated else ''}{self._context.share:.0%}"
            self._status.value += (f' · <span class="autocoder-context" title="{html.escape(str(self._context))}">'
                                   f"context {share}</span>")

    def _fresh(self) -> bool:
        """Nothing asked yet in this conversation: token counts would say nothing."""
        conversation = self.session.conversation
        return (self._state == IDLE and self._turn_usage is None and not conversation.usage.total_tokens
                and not any(message["role"] == "user" for message in conversation.messages))

    def _before_first_turn(self) -> str:
        """What the status says before the first turn: how changes are approved, and which server is asked."""
        where = urlsplit(self.session.config.llm.base_url)
        try:
            server = f"{where.hostname or '?'}{f':{where.port}' if where.port else ''}"  # never its credentials
        except ValueError:  # a port that is not a number: the first request will say what is wrong
            server = where.hostname or "?"
        return html.escape(f"approval {self.session.policy.mode} · {server} · ask below to start")

    def _notice(self, text: str) -> None:
        self._records.append(("notice", text))
        self._show_line(_html(html.escape(text), "autocoder-msg", "autocoder-notice"))

    def _error(self, text: str) -> None:
        self._records.append(("error", text))
        self._show_line(_html("<b>Error:</b> " + html.escape(text), "autocoder-msg", "autocoder-error"))

    def _cut_transcript(self, start: widgets.Widget) -> None:
        """A rewind: the turn that begins with `start` and everything after it leave the transcript."""
        self._transcript.cut(start)
        del self._records[self._records_before.get(start.model_id, len(self._records)):]

    def _show_line(self, widget: widgets.Widget) -> None:
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
