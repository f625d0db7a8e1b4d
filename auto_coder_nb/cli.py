"""`auto-coder`: single-prompt mode, the REPL, --show-config and --doctor."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from . import __version__
from .approvals import APPROVAL_MODES
from .config import TOOL_CALLING_MODES, load_config
from .errors import ConfigError
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

if TYPE_CHECKING:
    from .session import Session

EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
NO_TERMINAL = ("There is no terminal to ask the user for approval, so this action was refused. "
               "Tell the user it needs --approval-mode auto-edit (file changes) or full-auto (also commands).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="auto-coder",
        description="A coding assistant for any OpenAI-compatible endpoint. "
        "With PROMPT (or a prompt on standard input) it answers once; without, it starts a chat.",
    )
    parser.add_argument("prompt", nargs="*", help="the request; omit it for the interactive REPL")
    parser.add_argument("--base-url", metavar="URL", help="LLM API base URL (default http://localhost:11434/v1)")
    parser.add_argument("--model", "-m", metavar="MODEL", help="model name (default llama3.2)")
    parser.add_argument("--api-key", metavar="KEY", help="API key (prefer AUTO_CODER_API_KEY: flags show in ps)")
    parser.add_argument("--config", "-c", metavar="PATH", help="config file, read after ~/ and ./.auto-coder.yaml")
    parser.add_argument("--working-dir", "-d", metavar="DIR", help="workspace root for the tools (default: .)")
    parser.add_argument("--approval-mode", choices=APPROVAL_MODES, help="what needs a yes (default ask)")
    parser.add_argument("--tool-calling", choices=TOOL_CALLING_MODES,
                        help="how the model calls tools: the server's own (native), steps described in the prompt "
                        "(prompted), none, or auto (native, prompted when the model has no tool calling; default)")
    parser.add_argument("--max-tokens", metavar="N", help="cap on the tokens of each reply (default 4096; "
                        "'null' leaves it to the server)")
    parser.add_argument("--show-config", action="store_true", help="print the effective configuration and exit")
    parser.add_argument("--doctor", action="store_true", help="check the endpoint, TLS, auth and model, then exit")
    parser.add_argument("--version", action="version", version=f"auto-coder {__version__}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {
        "llm.base_url": args.base_url,
        "llm.model": args.model,
        "llm.api_key": args.api_key,
        "agent.approval_mode": args.approval_mode,
        "agent.working_dir": args.working_dir,
        "llm.tool_calling": args.tool_calling,
        "llm.max_tokens": args.max_tokens,
    }
    try:
        config = load_config(flags, args.config)
    except ConfigError as exc:
        print(f"auto-coder: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.show_config:
        print(config.show())
        print("files read: " + (", ".join(map(str, config.files)) or "none"))
        return EXIT_OK
    if args.doctor:
        from .doctor import run_doctor

        return EXIT_OK if run_doctor(config, lambda text: print(text, flush=True)) else EXIT_RUNTIME
    root = Path(config.agent.working_dir or ".").expanduser()
    if not root.is_dir():
        print(f"auto-coder: error: working directory {root} does not exist", file=sys.stderr)
        return EXIT_USAGE

    prompt = " ".join(args.prompt)
    if not prompt and not _is_terminal(sys.stdin):
        prompt = sys.stdin.read().strip() if sys.stdin is not None else ""
        if not prompt:
            print("auto-coder: error: no prompt given on the command line or standard input", file=sys.stderr)
            return EXIT_USAGE
    from .session import Session

    try:
        session = Session.create(config, working_dir=root)
    except ConfigError as exc:
        print(f"auto-coder: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    loop = asyncio.new_event_loop()
    try:
        if prompt:
            return run_once(session, prompt, loop)
        from .repl import run_repl

        return run_repl(session, loop)
    finally:
        loop.run_until_complete(session.aclose())
        loop.close()


def run_once(session: Session, prompt: str, loop: asyncio.AbstractEventLoop) -> int:
    """Single-prompt mode: the answer streams to stdout, tool activity goes to stderr."""
    from .agent import iterate_sync

    interactive = _is_terminal(sys.stdin) and _is_terminal(sys.stderr)
    view = TerminalView(ask=ask_on_terminal if interactive else refuse_without_terminal)
    try:
        with closing(iterate_sync(session.agent.run(prompt), loop)) as events:
            for event in events:
                view.handle(event)
    except KeyboardInterrupt:
        view.finish_text()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_RUNTIME if view.failed else EXIT_OK


def _is_terminal(stream: TextIO | None) -> bool:
    """A started-without-stdin process has None here; that is no terminal either."""
    return stream is not None and stream.isatty()


def ask_on_terminal(request: ApprovalRequest, err: TextIO) -> None:
    """Show what would happen and ask: yes, no (with an optional reason), or always for this session."""
    err.write(f"\n{request.preview}\n" if request.preview else "\n")
    err.flush()
    while True:
        answer = input(f"Allow {request.tool}? [y]es / [n]o / [a]lways for this session: ").strip().lower()
        if answer in ("y", "yes"):
            request.approve()
            return
        if answer in ("a", "always"):
            request.approve(always=True)
            return
        if answer in ("n", "no"):
            request.deny(input("Reason for the model (optional): ").strip())
            return


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
        self.color = self.err.isatty() and "NO_COLOR" not in os.environ
        # Flushing every chunk to a pipe costs a syscall per token; a terminal wants each one at once.
        self.flush_every = 0.0 if self.out.isatty() else 0.05
        self._last_flush = 0.0
        self._in_text = False
        self._in_reasoning = False
        self._usage: UsageUpdate | None = None

    def _paint(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def finish_text(self) -> None:
        if self._in_text:
            self.out.write("\n")
            self.out.flush()
            self._in_text = False
        if self._in_reasoning:
            self.err.write("\n")
            self._in_reasoning = False

    def handle(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            if self._in_reasoning:
                self.err.write("\n")
                self._in_reasoning = False
            self.out.write(event.text)
            self._in_text = True
            now = time.monotonic()
            if now - self._last_flush >= self.flush_every:
                self.out.flush()
                self._last_flush = now
            return
        if isinstance(event, ReasoningDelta):
            self.err.write(self._paint("2", event.text))
            self._in_reasoning = True
            return
        self.finish_text()
        if isinstance(event, ToolCallStarted):
            self.err.write(self._paint("36", f"> {event.name}") + f"({_brief_arguments(event)})\n")
        elif isinstance(event, ToolResult):
            lines = event.output.splitlines() or [""]
            first = lines[0][:150] + (f"  (+{len(lines) - 1} lines)" if len(lines) > 1 else "")
            self.err.write("  " + self._paint("31" if event.is_error else "2", first) + "\n")
        elif isinstance(event, ApprovalRequest):
            self.err.flush()
            self.ask(event, self.err)
        elif isinstance(event, UsageUpdate):
            self._usage = event
        elif isinstance(event, Notice):
            self.err.write(self._paint("33", event.text) + "\n")
        elif isinstance(event, ErrorEvent):
            self.failed = True
            self.err.write(self._paint("31", f"error: {event.message}") + "\n")
        elif isinstance(event, TurnDone):
            if self.show_usage and self._usage is not None:
                turn, total = self._usage.turn, self._usage.session
                self.err.write(self._paint("2", f"[tokens: {turn.total_tokens} this turn, "
                                                f"{total.total_tokens} this session]") + "\n")
            self._usage = None
        self.err.flush()


def _brief_arguments(event: ToolCallStarted) -> str:
    if event.arguments is None:
        return "invalid arguments"
    parts = []
    for key, value in event.arguments.items():
        text = repr(value)
        parts.append(f"{key}={text[:60] + '...' if len(text) > 60 else text}")
    return ", ".join(parts)
