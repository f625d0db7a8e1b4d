"""Terminal rendering shared by single-prompt mode and the REPL: exit codes, TTY detection, approvals asked
at the terminal, `TerminalView`, and `drive_turn()` (one turn, rendered, Ctrl-C handled)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from typing import TYPE_CHECKING, TextIO

from .approvals import ANSWER_HELP, parse_answer, question
from .errors import ConfigError
from .events import (
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
from .text import counted, show_controls

if TYPE_CHECKING:
    from .config import Config
    from .history import ConversationStore
    from .images import Image
    from .session import Session
    from .trust import ProjectFile

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_REFUSED = 3  # the changes or commands the model asked for were refused and no answer came after them
STATUS_INTERVAL = 0.5  # seconds between updates of the waiting line
STATUS_AFTER = 1.0  # a wait shorter than this shows no line (no flicker before a fast answer)
NO_TERMINAL = ("There is no terminal to ask the user for approval, so this action was refused. "
               "Tell the user it needs --approval-mode auto-edit (file changes) or full-auto (also commands).")


def drive_turn(session: Session, message: str, loop: asyncio.AbstractEventLoop, view: TerminalView,
               images: Sequence[Image] = ()) -> bool:
    """Run one turn on `loop`, rendering its events on `view`; `images` go with the message. False when
    Ctrl-C stopped it (the history is repaired and the session free again); the caller says so in its own
    words."""
    from .agent import iterate_sync

    view.start_waiting()
    ticker = _Ticker(loop, view.tick)
    try:
        with closing(iterate_sync(session.agent.run(message, images), loop)) as events:
            for event in events:
                view.handle(event)
    except KeyboardInterrupt:
        view.finish_text()
        return False
    finally:
        ticker.stop()
        view.clear_status()
    return True


class _Ticker:
    """Calls `tick` every STATUS_INTERVAL seconds on `loop` while the loop runs (while a turn waits on it)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tick: Callable[[], None]) -> None:
        self.loop, self.tick = loop, tick
        self.handle = loop.call_later(STATUS_INTERVAL, self._run)

    def _run(self) -> None:
        self.tick()
        self.handle = self.loop.call_later(STATUS_INTERVAL, self._run)

    def stop(self) -> None:
        self.handle.cancel()


def is_terminal(stream: TextIO | None) -> bool:
    """A started-without-stdin process has None here; that is no terminal either."""
    return stream is not None and stream.isatty()


def ask_on_terminal(request: ApprovalRequest, err: TextIO) -> None:
    """Show what would happen and ask the one approval question (`approvals.question`): yes, no with an optional
    reason on the same line, or always for this session; anything else asks again. End of input (Ctrl-D) is a no."""
    # Escaped control characters: a preview must not be able to hide or rewrite what will run.
    shown = "\n".join(change.card() for change in request.cells) or request.preview  # a notebook: cell by cell
    err.write(f"\n{show_controls(shown)}\n" if shown else "\n")
    err.flush()
    while True:
        typed = _read(question(request.tool, request.always_covers, request.can_run), err)
        if typed is None:
            request.deny("")
            return
        answer = parse_answer(typed, request.can_run)
        if answer is not None:
            request.reply(answer)
            return
        err.write(ANSWER_HELP + "\n")


def _read(prompt: str, err: TextIO) -> str | None:
    """A line from the user; None at end of input (Ctrl-D), after ending the prompt's line. Ctrl-C raises
    KeyboardInterrupt."""
    try:
        if is_terminal(sys.stdin) and is_terminal(err):
            # Not input(): its prompt is on screen before it starts reading, and a SIGINT in between only sets
            # a flag, so that Ctrl-C is lost until Enter. prompt_toolkit reads Ctrl-C as a key in raw mode. Imported
            # here: a single prompt that asks nothing at a terminal never loads it (start-up time).
            from prompt_toolkit import PromptSession
            from prompt_toolkit.output import create_output

            return PromptSession[str](output=create_output(stdout=err)).prompt(prompt)
        return input(prompt)
    except EOFError:
        err.write("\n")
        return None


def ask_to_trust(project: ProjectFile, err: TextIO) -> bool:
    """Ask once whether to trust the project's config file, showing exactly the settings that need it. Only yes
    is a yes (end of input too is a no); Ctrl-C raises KeyboardInterrupt."""
    err.write(f"The project file {show_controls(str(project.path))} asks for settings that can run commands or "
              "send your credentials elsewhere:\n")
    for key, value in project.ignored.items():
        err.write(f"  {key} = {value}\n")
    err.flush()
    return confirm("Trust this file and apply them? (remembered until the file changes)", err)


def confirm(question: str, err: TextIO) -> bool:
    """A yes/no question whose default is no: only y or yes is a yes (end of input too is a no). Ctrl-C raises
    KeyboardInterrupt."""
    answer = _read(f"{question} [y/N]: ", err)
    return (answer or "").strip().lower() in ("y", "yes")


def export_at_terminal(session: Session, target: str, conversation_id: str | None, store: ConversationStore,
                       *, force: bool = False) -> str:
    """`session.export`; a file that exists is replaced with `force`, or when the user says so at a terminal (else
    a HistoryError saying it was kept and how to replace it)."""
    from .history import HistoryError
    from .transcript import ExportExists

    try:
        return session.export(target, conversation_id, store, overwrite=force)
    except ExportExists:
        if not (is_terminal(sys.stdin) and is_terminal(sys.stderr)):
            raise
    try:
        replace = confirm(f"{show_controls(target)} exists. Replace it with the export?", sys.stderr)
    except KeyboardInterrupt:
        replace = False
    if not replace:
        raise HistoryError(f"Not exported: {target} exists and was kept.")
    return session.export(target, conversation_id, store, overwrite=True)


def trust_and_reload(project: ProjectFile, load: Callable[[bool], Config], err: TextIO) -> Config:
    """Record trust for the project file as it was read, then read the configuration again (`load(trust)`; a
    file changed since stays untrusted). If trust cannot be recorded, it holds for this run only."""
    try:
        project.trust()
    except OSError as exc:
        err.write(f"auto-coder: warning: could not record trust in {project.store} ({exc.strerror or exc}); "
                  "trusted for this run only\n")
        return load(True)
    return load(False)


def refuse_without_terminal(request: ApprovalRequest, err: TextIO) -> None:
    err.write(f"  refused {request.tool}: no terminal to ask for approval (see --approval-mode)\n")
    request.deny(NO_TERMINAL)


class TerminalView:
    """Renders events: the answer to stdout as it streams, everything else to stderr."""

    def __init__(
        self,
        ask: Callable[[ApprovalRequest, TextIO], None],
        out: TextIO | None = None,
        err: TextIO | None = None,
        show_usage: bool = False,
    ) -> None:
        self.ask = ask
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.show_usage = show_usage
        self.failed = False
        self.error: BaseException | None = None  # what made the turn fail, when known
        self.all_actions_refused = False
        self.actions_refused = 0
        self.answered = False  # the turn ended with an answer after its last tool call
        self.color = self.err.isatty() and "NO_COLOR" not in os.environ
        # What the model or a server wrote reaches a terminal with its control characters shown, not obeyed (an
        # escape sequence could retitle the window, clear the screen or hide text); a pipe gets the answer as is.
        self.answer_text: Callable[[str], str] = show_controls if self.out.isatty() else str
        # Flushing every chunk to a pipe costs a syscall per token; a terminal wants each one at once.
        self.flush_every = 0.0 if self.out.isatty() else 0.05
        self._last_flush = 0.0
        self._in_text = False
        self._in_reasoning = False
        self._text_since_tools = False
        self._usage: UsageUpdate | None = None
        self.context: ContextUsage | None = None  # how full the context window is after the turn
        # While the model has said nothing yet (a CPU model reads the prompt for seconds or minutes), a line on a
        # terminal's stderr says so with the time waited; the answer replaces it. Never on a pipe.
        self.show_status = self.err.isatty()
        self._waiting_since: float | None = None
        self._waiting_for = ""
        self._status_shown = ""  # the waiting line on screen, if any

    def exit_code(self) -> int:
        """Single-prompt mode's exit code for the turn shown: 2 for a configuration error met during the
        request (missing SSO token or credentials), 1 for another failure, 3 when every action was refused and
        no answer came after the refusals (a question answered despite refused side trips is a success)."""
        if self.failed:
            return EXIT_USAGE if isinstance(self.error, ConfigError) else EXIT_RUNTIME
        return EXIT_REFUSED if self.all_actions_refused and not self.answered else EXIT_OK

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def start_waiting(self, what: str = "the model") -> None:
        """From now until the next output, the waiting line may show."""
        self._waiting_since, self._waiting_for = time.monotonic(), what

    def tick(self) -> None:
        """Show (or update) the waiting line: what is awaited and for how long."""
        if not self.show_status or self._waiting_since is None:
            return
        waited = time.monotonic() - self._waiting_since
        if waited < STATUS_AFTER:
            return
        line = f"waiting for {self._waiting_for}... {waited:.0f} s (Ctrl-C stops)"
        if self._status_shown == line:
            return
        self.err.write("\r\x1b[K" + self._paint("2", line))
        self.err.flush()
        self._status_shown = line

    def clear_status(self) -> None:
        """Stop waiting, and erase the waiting line if it is on screen."""
        self._waiting_since = None
        self._erase_status()

    def _erase_status(self) -> None:
        """The cursor back to the start of the waiting line, the line erased."""
        if self._status_shown:
            self.err.write("\r\x1b[K")
            self.err.flush()
            self._status_shown = ""

    def finish_text(self) -> None:
        if self._in_text:
            self.out.write("\n")
            self.out.flush()
            self._in_text = False
        if self._in_reasoning:
            self.err.write("\n")
            self._in_reasoning = False

    def handle(self, event: Event) -> None:
        self._erase_status()
        if not isinstance(event, (Notice, UsageUpdate)):  # after a notice (retrying...) the model is still awaited
            self._waiting_since = None
        match event:
            case TextDelta():
                if self._in_reasoning:
                    self.err.write("\n")
                    self._in_reasoning = False
                self.out.write(self.answer_text(event.text))
                self._in_text = True
                self._text_since_tools = self._text_since_tools or bool(event.text.strip())
                now = time.monotonic()
                if now - self._last_flush >= self.flush_every:
                    self.out.flush()
                    self._last_flush = now
            case ReasoningDelta():
                self.err.write(self._paint("2", show_controls(event.text)))
                self._in_reasoning = True
            case _:
                self.finish_text()
                self._handle_other(event)
                self.err.flush()

    def _handle_other(self, event: Event) -> None:
        match event:
            case ToolCallStarted():
                self._text_since_tools = False
                self.err.write(self._paint("36", f"> {show_controls(event.name)}") + f"({_brief_arguments(event)})\n")
            case ToolResult():
                lines = event.output.splitlines() or [""]
                more = f"  (+{counted(len(lines) - 1, 'line')})" if len(lines) > 1 else ""
                first = show_controls(lines[0][:150]) + more
                self.err.write("  " + self._paint("31" if event.is_error else "2", first) + "\n")
                for image in event.images:
                    self.err.write("  " + self._paint("2", f"[image: {image.describe()}]") + "\n")
                self.start_waiting()  # the model reads the result next
            case ApprovalRequest():
                self.err.flush()
                self.ask(event, self.err)
            case UsageUpdate():
                self._usage = event
            case Notice():
                self.err.write(self._paint("33", show_controls(event.text)) + "\n")
            case ErrorEvent():
                self.failed = True
                self.error = event.error
                self.err.write(self._paint("31", f"error: {show_controls(event.message)}") + "\n")
            case TurnDone():
                self.context = event.context
                self.all_actions_refused = event.all_actions_refused
                self.actions_refused = event.actions_refused
                self.answered = event.reason == "stop" and self._text_since_tools
                if self.show_usage and self._usage is not None:
                    turn, total = self._usage.turn, self._usage.session
                    self.err.write(self._paint("2", f"[tokens: {turn.total_tokens} this turn, "
                                                    f"{total.total_tokens} this session]") + "\n")
                self._usage = None
            case TextDelta() | ReasoningDelta():
                pass  # streamed by handle()
            case _:
                assert_never(event)


def _brief_arguments(event: ToolCallStarted) -> str:
    if event.arguments is None:
        return "invalid arguments"
    parts = []
    for key, value in event.arguments.items():
        text = repr(value)
        parts.append(f"{key}={text[:60] + '...' if len(text) > 60 else text}")
    return ", ".join(parts)
