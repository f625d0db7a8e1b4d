"""The chat panel: an ipywidgets face of the agent that works wherever ipywidgets work.

`ChatPanel` is the controller: it owns the turn (an asyncio task on the kernel's own event loop, captured when the
panel is created, in a cell, so on the main thread), the buttons, trust and resume, and reacts to the agent's
events. What is shown lives in its `PanelView` (view.py: records, the turn box, the throttled stream, the status
line, notices, the hand-over of widget callbacks to that loop), which the parts (tool cards, review, code blocks,
attachments, the saved conversation) draw on.
"""

from __future__ import annotations

import asyncio
import html
import weakref
from contextlib import suppress
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..events import (
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
    assert_never,
)
from ..images import Image
from .asking import Questions
from .assets import FRONTEND, STYLE
from .attachments import Attachments, thumbnails_html
from .code_blocks import CodeBlocks
from .parts import ANSWERING, IDLE, RUNNING_TOOL, THINKING, make_box, make_button, make_html
from .review import CellReview
from .saved import SavedList, SavedOffer
from .tools import ToolCards
from .view import PanelView

if TYPE_CHECKING:
    from ..history import SavedConversation
    from ..session import Session

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
        self.view = PanelView(session, self._loop, lambda: self.running)
        questions = Questions(self.view)
        self._code_blocks = CodeBlocks(self.view, questions)
        self.view.code_widget = self._code_blocks.widget
        self._questions = questions
        self._review = CellReview(self.view, questions, self._ask_again, in_kernel=self._shares_kernel_session)
        self._tools = ToolCards(self.view, questions, self._review)
        self._attachments = Attachments(self.view, self._resolve_image)
        self._turn_start: widgets.Widget | None = None  # the user's message of the current turn
        self._build()
        _PANELS.add(self)
        self._show_busy()
        self._offer = SavedOffer.look(session)  # after a kernel restart: the notebook's latest conversation
        if self._offer is not None:
            self._offer.show(self.view, self._tools)
            self._resume_button.layout.display = None

    # -- layout ----------------------------------------------------------------------------

    def _build(self) -> None:
        title = make_html(STYLE + FRONTEND + '<span class="autocoder-title">auto-coder</span>', "autocoder-titlebox")
        header = make_box([title, self.view.status.widget], "autocoder-header", horizontal=True)
        scroll = make_box([self.view.transcript.box], "autocoder-scroll")
        self._input = widgets.Textarea(
            continuous_update=False,
            placeholder="Ask about your code, your data or this notebook… (Enter to send, Shift+Enter for a new line)",
            layout=widgets.Layout(width="100%", height="64px"),
        )
        self._input.add_class("autocoder-input")
        self._send_button = make_button("Send", "primary", "autocoder-send", "Send the message")
        self._stop_button = make_button("Stop", "warning", "autocoder-stop", "Stop the running turn")
        self._reset_button = make_button("Reset", "", "autocoder-reset", "Start a new conversation (new id)")
        self._stop_button.disabled = True
        self._send_button.on_click(self.view.handover(self._on_send))
        self._stop_button.on_click(self.view.handover(self._stop))
        self._reset_button.on_click(self.view.handover(self._start_reset))
        self._resume_button = make_button("Resume", "info", "autocoder-resume",
                                          "Continue the saved conversation shown above (same history and id)")
        self._resume_button.layout.display = "none"  # shown only with a saved conversation to offer
        self._resume_button.on_click(self.view.handover(self._resume))
        self._saved = SavedList(self.view, self._show_saved)
        self._saved_button = make_button("Saved", "", "autocoder-saved",
                                         "The saved conversations of this notebook, newest first: show one to resume "
                                         "it")
        self._saved_button.on_click(self.view.handover(self._saved.toggle))
        buttons = make_box([self._send_button, self._stop_button, self._reset_button, self._resume_button,
                            self._saved_button], "autocoder-buttons", horizontal=True)
        # The project's .auto-coder.yaml, while untrusted: which of its settings were ignored, and a way to trust it.
        self._trust_note = make_html("", "autocoder-trust-note")
        self._trust_button = make_button("Trust this folder", "warning", "auto-coder-trust",
                                         "Trust this folder's .auto-coder.yaml as it is now and apply all its "
                                         "settings")
        self._trust_button.on_click(self.view.handover(self._trust))
        self._trust_bar = make_box([self._trust_note, self._trust_button], "autocoder-trust-bar")
        self.widget = make_box([header, scroll, self._trust_bar, self._input, buttons, self._saved.box,
                                self._attachments.widget], "autocoder-panel")
        self.view.status.show()
        self._show_trust()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    # -- the Python API --------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self.view.status.state

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def transcript(self) -> list[dict[str, str]]:
        """What the panel shows, as `{"role", "text"}` dicts (roles: user, assistant, tool, notice, error)."""
        return self.view.transcript_records()

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
        before = len(self.view.records)
        self._start_turn(message)
        await self.wait()
        return "\n\n".join(r["text"] for r in self.transcript[before:] if r["role"] == "assistant")

    async def wait(self) -> None:
        """Wait until the running turn (if any) has ended."""
        if self._task is not None:
            await asyncio.wait([self._task])

    @property
    def updates(self) -> int:
        """Throttled transcript flushes so far (the benchmark counts them)."""
        return self.view.stream.updates

    # -- the controls ------------------------------------------------------------------------

    def _on_send(self) -> None:
        message = self._input.value.strip()
        if not message or self.running:
            return
        self._input.value = ""
        self._start_turn(message)

    # -- turns -----------------------------------------------------------------------------

    def _start_turn(self, message: str) -> None:
        if self.running:
            self.view.notice("A turn is already running: Stop it first.")
            return
        if self._offer is not None:  # sent without Resume: a new conversation, the saved one leaves the view
            self._withdraw_offer()
            if self.session.has_talked():  # a Saved pick hid the conversation before it: that one ends too
                self._new_conversation()
            else:
                self.view.clear()
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
            self._new_conversation()
        except Exception as exc:  # a task's error would only reach the log console
            self.view.error(f"Reset failed: {type(exc).__name__}: {exc}")

    def _new_conversation(self) -> None:
        new_id = self.session.reset()
        self.view.clear()
        self._tools.clear()
        self.view.status.forget_usage()
        self.view.notice(f"New conversation. Correlation id {new_id}.")
        self.view.status.show()

    def _resume(self) -> None:
        from ..history import HistoryError

        if self._offer is None or self.running:
            return
        try:
            message = self._offer.resume()
        except HistoryError as exc:
            self.view.error(str(exc))
            return
        self._withdraw_offer()
        self.view.notice(message)
        self.view.status.show()

    def _show_saved(self, saved: SavedConversation) -> None:
        """Show a conversation chosen in the Saved list in place of the transcript, with Resume to continue it."""
        from ..history import HistoryError

        if self.running:
            self.view.notice("A turn is running: Stop it first, then choose a saved conversation.")
            return
        try:
            offer = SavedOffer(self.session, saved, SavedList.read(saved))
        except HistoryError as exc:
            self.view.error(str(exc))
            return
        self.view.clear()
        self._offer = offer
        offer.show(self.view, self._tools)
        self._resume_button.layout.display = None

    def _withdraw_offer(self) -> None:
        self._offer = None
        self._resume_button.layout.display = "none"

    async def _run_turn(self, message: str) -> None:
        images = self._attachments.take()
        self._begin_turn(message, thumbnails_html(images))
        if self._shares_kernel_session and not self._refresh_config():
            self._end_turn()
            return
        events = self.session.agent.run(message, images)
        try:
            async for event in events:
                self._on_event(event)
        except asyncio.CancelledError:
            self.view.end_text()
            self.view.notice("Stopped. The conversation is kept: you can send the next message.")
        except Exception as exc:  # the agent reports errors as events; this is a last guard
            self.view.end_text()
            self.view.error(f"{type(exc).__name__}: {exc}")
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
            self.view.error(f"Configuration error: {exc}")
            return False
        if changed:
            self.view.notice(changed)
            self.view.status.show()
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
        self._loop.call_soon_threadsafe(self.view.guarded, self._trust)

    def _trust(self) -> None:
        from ..errors import ConfigError
        from ..kernel import trust_project

        if self.running:
            self.view.notice("A turn is running: trust the folder when it has ended.")
            return
        try:
            self.view.notice(trust_project())
        except ConfigError as exc:
            self.view.error(str(exc))
        self._show_trust()
        self.view.status.show()

    def _begin_turn(self, message: str, thumbnails: str = "") -> None:
        self._set_busy(True)
        self.view.status.turn_usage = None
        self._turn_start = self.view.open_turn(message, thumbnails)
        self.view.set_state(THINKING)

    def _end_turn(self) -> None:
        self.view.close_turn()
        self._questions.close_open()
        self._set_busy(False)

    def _on_event(self, event: Event) -> None:
        view = self.view
        match event:
            case TextDelta():
                if view.status.state != ANSWERING:
                    view.set_state(ANSWERING)
                view.answer(event.text)
            case ReasoningDelta():
                if view.status.state != THINKING:
                    view.set_state(THINKING)
                view.reasoning(event.text)
            case ToolCallStarted():
                self._tools.started(event.call_id, event.name, event.arguments, event.raw_arguments)
                view.set_state(RUNNING_TOOL, event.name)
            case ApprovalRequest():
                self._tools.ask(event)
            case ToolResult():
                self._tools.result(event)
                view.set_state(THINKING)
            case UsageUpdate():
                view.status.turn_usage = event.turn
                view.status.show()
            case Notice():
                view.end_text()
                view.notice(event.text)
            case ErrorEvent():
                view.end_text()
                view.error(event.message)
            case TurnDone():
                view.end_text()
                view.status.context = event.context or view.status.context
                view.status.show()
                self._review.expire()
                turns = self.session.turns.current() if self.session.turns is not None else []
                if event.reason != "busy" and turns and self._turn_start is not None:
                    self._review.offer_rewind(view.turn, turns[-1], self._turn_start)
                if event.reason in TURN_END_NOTES:
                    view.notice(TURN_END_NOTES[event.reason])
            case _:
                assert_never(event)

    def _ask_again(self, prompt: str) -> None:
        """A rewound turn's prompt goes back into the input, to send again, changed or not."""
        self._input.value = prompt

    def _resolve_image(self, name: str) -> Image:
        if self._shares_kernel_session:
            from ..kernel import attach

            return attach(self.session, name)
        return self.session.attach(name, self._namespace)

    # -- busy ------------------------------------------------------------------------------

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self._send_button.disabled = busy
        for panel in list(_PANELS):
            if panel.session is self.session:
                panel._show_busy()
        if not busy:
            self.view.set_state(IDLE)

    def _show_busy(self) -> None:
        """Stop is enabled while a turn of this panel, or of another panel on the same session, runs."""
        self._stop_button.disabled = not any(panel._busy for panel in list(_PANELS) if panel.session is self.session)

    @property
    def correlation_id(self) -> str:
        return self.session.conversation.correlation_id


def _main_loop() -> asyncio.AbstractEventLoop:
    """The loop of this thread: in a kernel cell, the kernel's main loop (running)."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.get_event_loop_policy().get_event_loop()
