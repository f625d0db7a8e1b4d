"""`auto-coder`: argparse and dispatch to single-prompt mode, the REPL, --show-config and --doctor.

Rendering and approvals at the terminal live in `terminal.py`. Only what the parser needs is imported before the
arguments are read, so `--version` and `--help` start at once; each mode imports what it uses (the REPL alone
loads prompt_toolkit)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import __version__
from .approvals import APPROVAL_MODES
from .config import TOOL_CALLING_MODES

if TYPE_CHECKING:
    import asyncio

    from .config import Config
    from .images import Image
    from .session import Session


class _Newest(str):
    """`--resume` without an ID (the newest conversation here), told apart from an empty ID (`--resume ""`)."""


NEWEST = _Newest()


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
    # const 0: the listing's own default (history.LISTED, said in the help; history is not imported to parse)
    parser.add_argument("--sessions", nargs="?", type=_count, const=0, metavar="N",
                        help="list the newest N saved conversations (default 20) and how many more, and exit")
    parser.add_argument("--all", action="store_true", help="with --sessions: list every saved conversation")
    parser.add_argument("--here", action="store_true",
                        help="with --sessions: only the conversations of this working directory")
    parser.add_argument("--resume", nargs="?", const=NEWEST, metavar="ID",
                        help="continue a saved conversation: ID or a unique prefix (alone: the newest for this "
                             "working directory), with a prompt after the ID or in the REPL")
    parser.add_argument("--export", metavar="PATH",
                        help="write the --resume'd (or newest) conversation to PATH (.md, .ipynb, .jsonl) and exit; "
                             "an existing file is replaced only with --force (or when you say so at a terminal)")
    parser.add_argument("--force", action="store_true", help="with --export: replace PATH if it exists")
    parser.add_argument("--attach", metavar="PATH", action="append", default=[],
                        help="send a PNG/JPEG image with the prompt to a vision model (repeatable)")
    parser.add_argument("--show-context", action="store_true",
                        help="print what would be sent (prompt, project instructions, images) and exit")
    parser.add_argument("--trust-project", action="store_true",
                        help="trust ./.auto-coder.yaml as it is now, so its settings that run commands or send "
                             "credentials elsewhere apply (remembered until the file changes)")
    parser.add_argument("--show-config", action="store_true", help="print the effective configuration and exit")
    parser.add_argument("--doctor", action="store_true", help="check the endpoint, TLS, auth and model, then exit")
    parser.add_argument("--acp", action="store_true",
                        help="serve the Agent Client Protocol on stdin/stdout (for Zed, JetBrains, jupyter-ai...)")
    parser.add_argument("--version", action="version", version=f"auto-coder {__version__}")
    return parser


def _count(text: str) -> int:
    """A number of conversations to list: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a number of conversations: {text!r}")
    return int(text)


def _lists_sessions(args: argparse.Namespace) -> bool:
    return args.sessions is not None or args.all or args.here


def main(argv: list[str] | None = None) -> int:
    import io

    if isinstance(sys.stdout, io.TextIOWrapper):  # a character no UTF-8 can hold is shown escaped, as on stderr
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)  # --version and --help end here
    import asyncio
    from pathlib import Path

    from .config import load_config
    from .errors import ConfigError
    from .history import LISTED, ConversationStore, HistoryError
    from .images import ImageError
    from .interrupts import close_loop
    from .terminal import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, export_at_terminal, is_terminal
    from .text import scrub

    resume_id = None if args.resume is NEWEST else args.resume  # an ID that matches nothing is an error, never a prompt
    flags = {
        "llm.base_url": args.base_url,
        "llm.model": args.model,
        "llm.api_key": args.api_key,
        "agent.approval_mode": args.approval_mode,
        "agent.working_dir": args.working_dir,
        "llm.tool_calling": args.tool_calling,
        "llm.max_tokens": args.max_tokens,
    }
    if args.acp:
        from .acp import run_agent

        return run_agent(args, flags)

    def load(trust_project: bool = False) -> Config:
        return load_config(flags, args.config, trust_project=trust_project)

    try:
        config = load(args.trust_project)
        config = settle_trust(config, load, args)
    except ConfigError as exc:
        print(f"auto-coder: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    if args.show_config:
        from .providers.known_servers import describe_context_window

        print(config.show())
        print(describe_context_window(config))
        print("files read: " + (", ".join(map(str, [*config.site.files, *config.files])) or "none"))
        return EXIT_OK
    if args.doctor:
        from .doctor import run_doctor

        try:
            passed = run_doctor(config, lambda text: print(text, flush=True))
        except KeyboardInterrupt:
            print("\nauto-coder: --doctor interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        if passed:
            return EXIT_OK
        from .auth import request_keys  # a ${VAR} the requests need is not set: a configuration error

        return EXIT_USAGE if any(key in config.unset for key in request_keys(config)) else EXIT_RUNTIME
    store = ConversationStore(warn=lambda text: print(f"auto-coder: warning: {text}", file=sys.stderr))
    if _lists_sessions(args):
        here = Path(config.agent.working_dir or ".").expanduser().resolve() if args.here else None
        print(store.listing(None if args.all else args.sessions or LISTED, working_dir=here))
        return EXIT_OK
    root = Path(config.agent.working_dir or ".").expanduser()
    if not root.is_dir():
        print(f"auto-coder: error: working directory {root} does not exist", file=sys.stderr)
        return EXIT_USAGE
    from .session import Session

    try:
        session = Session.create(config, working_dir=root)
        if args.export:
            print(export_at_terminal(session, args.export, resume_id, store, force=args.force))
            return EXIT_OK
        if args.resume is not None:
            print(session.resume(session.saved_here(resume_id, store)), file=sys.stderr)
    except ConfigError as exc:
        print(f"auto-coder: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except HistoryError as exc:
        print(f"auto-coder: error: {exc}", file=sys.stderr)
        if resume_id is not None and args.prompt:
            print('auto-coder: to continue the newest conversation with a prompt, put the prompt first: auto-coder '
                  '"PROMPT" --resume', file=sys.stderr)
        return EXIT_USAGE
    prompt = " ".join(args.prompt)
    if not prompt and not args.show_context and not is_terminal(sys.stdin):
        prompt = sys.stdin.read().strip() if sys.stdin is not None else ""
        if not prompt:
            print("auto-coder: error: no prompt given on the command line or standard input", file=sys.stderr)
            return EXIT_USAGE
    try:
        images = [session.attach_file(path) for path in args.attach]
    except ImageError as exc:
        print(f"auto-coder: error: --attach {exc}", file=sys.stderr)
        return EXIT_USAGE
    prompt = scrub(prompt, session.secret_values())  # what --show-context shows is what is sent
    if args.show_context:
        show_context(session, prompt, images)
        return EXIT_OK
    loop = asyncio.new_event_loop()
    try:
        if prompt:
            return run_once(session, prompt, loop, images)
        from .repl import run_repl

        return run_repl(session, loop, images, reload=load)
    finally:
        loop.run_until_complete(session.aclose())
        close_loop(loop)


def settle_trust(config: Config, load: Callable[[bool], Config], args: argparse.Namespace) -> Config:
    """The project file's trust: --trust-project records it; at a terminal the user is asked once (before
    anything runs); elsewhere its settings that need trust stay ignored, with one line saying which and how to
    trust it. --show-config and --doctor ask nothing: they list what was ignored (--sessions needs no settings)."""
    from .terminal import ask_to_trust, is_terminal, trust_and_reload

    project = config.project
    if project is None or project.trusted and not args.trust_project:
        return config
    if args.trust_project:
        try:
            project.trust()
        except OSError as exc:
            print(f"auto-coder: warning: could not record trust in {project.store} ({exc.strerror or exc}); "
                  "trusted for this run only", file=sys.stderr)
        return config
    if not project.needs_trust or args.show_config or args.doctor or _lists_sessions(args):
        return config
    if is_terminal(sys.stdin) and is_terminal(sys.stderr) and ask_to_trust(project, sys.stderr):
        return trust_and_reload(project, load, sys.stderr)
    print(f"auto-coder: {project.notice('cli')}", file=sys.stderr)
    return config


def show_context(session: Session, prompt: str, images: list[Image]) -> None:
    """--show-context: the prompt on stdout as it would be sent; what goes with it on stderr."""
    print(prompt)
    for line in session.instructions.describe(session.workspace.root):
        print(f"project instructions (in the system prompt): {line}", file=sys.stderr)
    for image in images:
        print(f"image: {image.describe()}", file=sys.stderr)


def run_once(session: Session, prompt: str, loop: asyncio.AbstractEventLoop, images: list[Image] | None = None) -> int:
    """Single-prompt mode: the answer streams to stdout, tool activity goes to stderr."""
    from .terminal import (
        EXIT_INTERRUPTED,
        TerminalView,
        ask_on_terminal,
        drive_turn,
        is_terminal,
        refuse_without_terminal,
    )

    interactive = is_terminal(sys.stdin) and is_terminal(sys.stderr)
    view = TerminalView(ask=ask_on_terminal if interactive else refuse_without_terminal)
    if not drive_turn(session, prompt, loop, view, images or []):
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if view.actions_refused:
        done = "nothing was changed or run" if view.all_actions_refused else "the rest was done"
        print(f"auto-coder: {view.actions_refused} change(s) or command(s) refused ({done}; see --approval-mode)",
              file=sys.stderr)
    return view.exit_code()
