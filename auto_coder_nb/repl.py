"""The interactive REPL: prompt_toolkit input with history, streamed answers, slash commands."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory
from prompt_toolkit.key_binding import KeyBindings, KeyPressEvent

from .config import CONFIG_FILENAME, Config, redact_url
from .errors import ConfigError, ProviderError
from .history import LISTED, ConversationStore, HistoryError
from .images import Image, ImageError
from .interrupts import LoopRunner
from .private import NotPrivate, open_private, private_folder
from .rewind import RewindRefused
from .session import Session
from .terminal import EXIT_OK, TerminalView, ask_on_terminal, drive_turn, export_at_terminal, trust_and_reload
from .text import scrub

HELP = """\
Type a request and press Enter. Alt+Enter (or Esc then Enter) starts a new line.
Ctrl-C stops the running answer; Ctrl-D quits.

  /help           this help
  /clear          clear the conversation history (new correlation id)
  /reset          clear history and session state (approvals "for this session")
  /id             show the correlation id and the tokens used this session
  /models         list the models the endpoint offers
  /undo           undo the file changes of the last turn
  /rewind [N]     back to before turn N (default: the last): conversation and files; --force rewinds even
                  files changed since (kept beside them)
  /sessions [N]   list the newest N saved conversations (default 20); `all`: every one, `here`: this folder's
  /resume [ID]    continue a saved conversation (default: the newest for this folder)
  /export PATH    write this conversation to PATH (.md, .ipynb or .jsonl)
  /attach PATH    send a PNG/JPEG image with the next message (vision models); /attach alone lists them
  /trust          trust this folder's .auto-coder.yaml (as it is now) and apply its settings
  /quit, /exit    leave"""

T = TypeVar("T")


def history_path() -> Path:
    state = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return state / "auto-coder" / "history"


def _prompt_session() -> PromptSession[str]:
    bindings = KeyBindings()

    @bindings.add("escape", "enter")
    def _newline(event: KeyPressEvent) -> None:
        event.current_buffer.insert_text("\n")

    return PromptSession(history=prompt_history(), key_bindings=bindings, multiline=False)


def prompt_history() -> FileHistory | InMemoryHistory:
    """The prompts typed before, kept in a file only the user can read (folder 0700, file 0600); in memory when
    that cannot be."""
    try:
        path = history_path()
        private_folder(path.parent)
        os.close(open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND))  # 0600 before FileHistory appends
        return FileHistory(str(path))
    except NotPrivate as exc:  # never kept where other users can read it
        print(f"auto-coder: warning: the prompt history is not kept on disk: {exc.strerror}", file=sys.stderr)
    except OSError:
        pass
    return InMemoryHistory()


def run_repl(session: Session, loop: asyncio.AbstractEventLoop, attachments: list[Image] | None = None,
             reload: Callable[[bool], Config] | None = None) -> int:
    """The chat loop; `attachments` (from --attach) go with the first message. The prompt shows how full the
    context window is after each turn. `reload(trust_project)` reads the configuration again (for /trust)."""
    prompts = _prompt_session()
    attachments = attachments if attachments is not None else []
    context = ""
    llm = session.config.llm
    print(f"auto-coder: {llm.model} at {redact_url(llm.base_url)}, workspace {session.workspace.root}, "
          f"approval mode {session.policy.mode}. /help for commands.", file=sys.stderr)
    while True:
        try:
            text = prompts.prompt(f"[{context}] > " if context else "> ").strip()
        except KeyboardInterrupt:
            continue
        except EOFError:
            break
        if not text:
            continue
        if text.startswith("/"):
            try:
                if run_command(session, text, loop, attachments, reload) == "quit":
                    break
            except KeyboardInterrupt:  # e.g. /models waiting on a slow server
                print("(stopped)", file=sys.stderr)
            if text.split()[0] in ("/clear", "/reset", "/resume"):
                context = ""  # another conversation now: its share shows after its next turn
            continue
        view = TerminalView(ask=ask_on_terminal, show_usage=True)
        try:
            if not drive_turn(session, text, loop, view, attachments):
                # From the start of the line: over the "^C" the terminal echoed, not after it.
                print("\r(stopped)" if sys.stderr.isatty() else "(stopped)", file=sys.stderr)
        except Exception as exc:  # a failing turn must not end the REPL and lose its session
            view.finish_text()
            failure = scrub(f"{type(exc).__name__}: {exc}", session.secret_values())
            print(f"error: the turn failed ({failure}); the session is kept, ask again.", file=sys.stderr)
        attachments.clear()
        context = str(view.context or session.agent.context_usage())
    total = session.conversation.usage.total_tokens
    print(f"bye ({total} tokens this session)", file=sys.stderr)
    return EXIT_OK


def wait(loop: asyncio.AbstractEventLoop, awaitable: Awaitable[T]) -> T:
    """The result of `awaitable` run on `loop`; Ctrl-C stops it cleanly (KeyboardInterrupt)."""
    with LoopRunner(loop) as runner:
        return runner.run(awaitable)


def run_command(session: Session, line: str, loop: asyncio.AbstractEventLoop,
                attachments: list[Image] | None = None, reload: Callable[[bool], Config] | None = None) -> str | None:
    """Run a slash command; returns "quit" to leave. `/attach` adds to `attachments`."""
    name, _, rest = line.partition(" ")
    if name in ("/quit", "/exit"):
        return "quit"
    if name == "/help":
        print(HELP)
    elif name == "/clear":
        print(f"Conversation cleared. New correlation id: {session.clear()}")
    elif name == "/reset":
        print(f"Conversation and session state reset. New correlation id: {session.reset()}")
    elif name == "/id":
        usage = session.conversation.usage
        print(f"Correlation id: {session.conversation.correlation_id}")
        print(f"Tokens this session: {usage.total_tokens} "
              f"(prompt {usage.prompt_tokens}, completion {usage.completion_tokens})")
    elif name == "/models":
        try:
            models = wait(loop, session.provider.list_models(headers=session.conversation.headers))
        except ProviderError as exc:
            print(f"error: {exc}", file=sys.stderr)
        else:
            for model in models:
                print(("* " if model == session.config.llm.model else "  ") + model)
    elif name == "/undo":
        print(session.undo())
    elif name == "/rewind":
        rewind(session, rest)
    elif name in ("/sessions", "/resume", "/export"):
        store = ConversationStore(warn=lambda text: print(f"warning: {text}", file=sys.stderr))
        try:
            if name == "/sessions":
                words = rest.split()
                count = None if "all" in words else next((int(w) for w in words if w.isdigit() and int(w)), LISTED)
                print(session.listing(store, count, "here" in words, "/sessions N shows N, /sessions all every one"))
            elif name == "/resume":
                print(session.resume(session.saved_here(rest.strip() or None, store)))
            elif not rest.strip():
                print("/export needs a file name: /export PATH (.md, .ipynb or .jsonl)", file=sys.stderr)
            else:
                print(export_at_terminal(session, rest.strip(), None, store))
        except HistoryError as exc:
            print(f"error: {exc}", file=sys.stderr)
    elif name == "/trust":
        trust_project(session, reload)
    elif name == "/attach" and attachments is not None:
        attach(session, rest.strip(), loop, attachments)
    else:
        print(f"Unknown command {name}. /help lists the commands.", file=sys.stderr)
    return None


def rewind(session: Session, rest: str) -> None:
    """`/rewind [N] [--force]`: the conversation and the files back to before turn N (default: the last)."""
    words = rest.split()
    force = "--force" in words
    numbers = [word for word in words if word != "--force"]
    if len(numbers) > 1 or (numbers and not numbers[0].isdigit()):
        print("/rewind takes a turn number and --force: /rewind [N] [--force]", file=sys.stderr)
        return
    try:
        print(session.rewind(int(numbers[0]) if numbers else None, force).message)
    except RewindRefused as exc:
        print(f"error: {exc}", file=sys.stderr)


def trust_project(session: Session, reload: Callable[[bool], Config] | None) -> None:
    """/trust: record trust for this folder's config file as it was read, and apply its settings now."""
    project = session.config.project
    if project is None:
        print(f"There is no project config file ({CONFIG_FILENAME} in the working directory) to trust.")
        return
    if project.trusted:
        print(f"{project.path} is already trusted.")
        return
    if reload is None:
        print("error: /trust cannot read the configuration again here", file=sys.stderr)
        return
    try:
        session.apply_config(trust_and_reload(project, reload, sys.stderr))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return
    now = session.config.project
    print(project.after_trusting(now, "cli"), file=sys.stderr if now is not None and now.needs_trust else sys.stdout)


def attach(session: Session, path: str, loop: asyncio.AbstractEventLoop, attachments: list[Image]) -> None:
    """`/attach PATH`: check the image now (and that the model sees images), send it with the next message."""
    if not path:
        for image in attachments:
            print(f"attached: {image.describe()}")
        if not attachments:
            print("Nothing attached. /attach PATH sends a PNG or JPEG with your next message.")
        return
    if not wait(loop, session.agent.sees_images()):
        print(f"error: {session.agent.no_vision_message()}", file=sys.stderr)
        return
    try:
        image = session.attach_file(path)
    except ImageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return
    attachments.append(image)
    print(f"Attached {image.describe()}; it goes with your next message.")
