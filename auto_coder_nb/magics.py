"""The IPython face: `%%autocoder` / `%autocoder` (and `%autocoder_chat` for the panel).

A magic runs on the kernel's main thread while ipykernel's event loop is busy running it, so a turn
runs on the kernel's worker loop (`kernel.Worker`). Its events come back through a queue and are rendered
here, on the main thread (display updates must come from it, see `cell_output`); approvals are asked with
`input()`, and `run_code` is executed here too, at the worker's request. The kernel's one session lives in
`kernel.py` (`get_session` is re-exported here, where the README points).
"""

from __future__ import annotations

import queue
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from .approvals import ANSWER_HELP, APPROVAL_MODES, parse_answer, question
from .config import TOOL_CALLING_MODES
from .kernel import (
    CellFailed,
    CellInterrupted,
    KernelState,
    MainThreadCall,
    Worker,
    attach,
    change_working_dir,
    get_session,
    insert_cells,
    kernel_state,
    refresh_config,
    trust_project,
    worker,
)
from .notebook_context import (
    CONTEXT_MODES,
    build_context,
    error_before_load,
    fix_prompt,
    interpolate,
)

if TYPE_CHECKING:  # events (and asyncio with them) are imported on first use, not at %load_ext
    from .agent import TurnOptions
    from .cell_output import CellRenderer
    from .events import ApprovalRequest
    from .images import Image
    from .session import Session

__all__ = ["AutoCoderMagics", "code_blocks", "get_session", "refresh_config", "split_options"]

NO_STDIN = (
    "There is no stdin to ask for approval here (nbclient, papermill or allow_stdin=False), so this {tool} "
    "call was refused. Allow it with `%%autocoder --approval-mode full-auto` (or auto-edit for file changes "
    "only), AUTO_CODER_APPROVAL_MODE, or `agent.approval_mode` in .auto-coder.yaml."
)
# Without stdin the request comes from a runner (nbclient, papermill, nbconvert), not a frontend that adds cells.
NO_FRONTEND = ("No frontend takes new cells in this run (no stdin: nbclient, papermill or nbconvert), so the "
               "{count} code block(s) were not inserted. The code:")
_FENCED_BLOCK = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_QUESTION_LINE = re.compile(r"^(\s*)%autocoder(\s+.*\?)\s*$")


# -- the turn pump --------------------------------------------------------------------------------

_DONE = object()


def pump_turn(worker: Worker, session: Session, message: str, options: TurnOptions, renderer: CellRenderer,
              can_ask: bool, images: Sequence[Image] = ()) -> None:
    """Run one turn on the worker's loop and serve it from the main thread until it ends: render its events,
    ask its approvals, run what it needs run here (run_code, cell insertion)."""
    import asyncio

    from .cell_output import UPDATE_INTERVAL
    from .events import ApprovalRequest

    channel: queue.Queue[Any] = queue.Queue()
    # A magic run from inside a turn (by run_code) pumps its own channel; the running turn's comes back after.
    previous, worker.channel = worker.channel, channel

    async def pump() -> None:
        try:
            async for event in session.agent.run(message, images, options):
                channel.put(event)
        finally:
            channel.put(_DONE)

    future = asyncio.run_coroutine_threadsafe(pump(), worker.loop)
    try:
        while True:
            try:
                item = channel.get(timeout=UPDATE_INTERVAL)
            except queue.Empty:
                renderer.flush()
                continue
            if item is _DONE:
                break
            if isinstance(item, MainThreadCall):
                item.run()
            elif isinstance(item, ApprovalRequest):
                _ask(worker, item, renderer, can_ask)
            else:
                renderer.event(item)
        future.result()
    except BaseException as exc:
        # Kernel interrupt, or anything failing here: cancel the turn (the agent repairs the history and frees
        # the session) and wait until it has, so no failure leaves the session busy.
        future.cancel()
        _drain(worker, channel)
        if not isinstance(exc, KeyboardInterrupt):
            raise
        renderer.stopped()
    finally:
        worker.channel = previous
        renderer.finish()


def _ask(worker: Worker, request: ApprovalRequest, renderer: CellRenderer, can_ask: bool) -> None:
    renderer.approval(request)
    if not can_ask:
        reason = NO_STDIN.format(tool=request.tool)
        renderer.notice(reason)
        worker.loop.call_soon_threadsafe(request.deny, reason)
        return
    while True:
        try:
            typed = input(question(request.tool, request.always_covers, request.can_run))
        except EOFError:  # Ctrl-D in terminal IPython: a refusal
            worker.loop.call_soon_threadsafe(request.deny, "")
            return
        answer = parse_answer(typed, request.can_run)
        if answer is not None:
            worker.loop.call_soon_threadsafe(request.reply, answer)
            return
        print(ANSWER_HELP)


def _drain(worker: Worker, channel: queue.Queue[Any]) -> None:
    """Consume what the cancelled turn still sends until it is over; nothing more runs or asks."""
    from .events import ApprovalRequest

    while True:
        try:
            item = channel.get(timeout=10)
        except queue.Empty:
            return
        except KeyboardInterrupt:
            continue
        if item is _DONE:
            return
        if isinstance(item, MainThreadCall):
            item.result.cancel()
        elif isinstance(item, ApprovalRequest):
            worker.loop.call_soon_threadsafe(item.deny, "interrupted")


def code_blocks(markdown: str) -> list[str]:
    """The Python fenced code blocks of an answer, in order. An unlabelled block counts only when it is
    valid (IPython) Python: models also fence tracebacks and output without a label."""
    from .text import PYTHON_FENCE_LANGUAGES

    blocks = []
    for match in _FENCED_BLOCK.finditer(markdown):
        language, code = match.group(1).lower(), match.group(2)
        if language in PYTHON_FENCE_LANGUAGES and code.strip() and (language or _is_python(code)):
            blocks.append(code)
    return blocks


def _is_python(code: str) -> bool:
    import ast

    from IPython.core.inputtransformer2 import TransformerManager

    try:
        ast.parse(TransformerManager().transform_cell(code))
    except SyntaxError:
        return False
    return True


# -- the magics -----------------------------------------------------------------------------------

@magics_class
class AutoCoderMagics(Magics):
    @magic_arguments()
    @argument("-m", "--model", help="model for this request (default: the configured one)")
    @argument("--approval-mode", choices=APPROVAL_MODES, help="what needs a yes, for this request")
    @argument("--tool-calling", choices=TOOL_CALLING_MODES, metavar="MODE",
              help="how the model uses tools for this request: " + ", ".join(TOOL_CALLING_MODES)
              + " (default: llm.tool_calling)")
    @argument("--insert", action="store_true", help="put the answer's code blocks into a new cell below")
    @argument("--no-interpolate", action="store_true", help="send {name} as written, without the variable's value")
    @argument("--context", choices=CONTEXT_MODES, default="auto",
              help="kernel summary sent with the prompt (default auto: variables, recent cells, last error)")
    @argument("--show-context", action="store_true", help="print exactly what would be sent, and send nothing")
    @argument("--fix", action="store_true", help="explain and fix the most recent error")
    @argument("--reset", action="store_true", help="start a new conversation (new correlation id)")
    @argument("--id", action="store_true", help="show the conversation's correlation id")
    @argument("--undo", action="store_true", help="undo the file changes of the last turn that made any")
    @argument("--rewind", nargs="?", const=0, type=int, metavar="N",
              help="go back to before turn N (default: the last turn): the conversation, the files and the notebook "
                   "cells the agent changed since; lists the kernel variables that keep later values")
    @argument("--revert", type=int, metavar="CHANGE",
              help="undo one notebook cell change of the agent (its number is on its card), until the turn after next")
    @argument("--sessions", nargs="?", type=int, const=0, metavar="N",  # 0: history.LISTED (imported when used)
              help="list the newest N saved conversations (default 20) and how many more")
    @argument("--all", action="store_true", help="with --sessions: list every saved conversation")
    @argument("--here", action="store_true", help="with --sessions: only this notebook's conversations")
    @argument("--resume", nargs="?", const="", metavar="ID",
              help="continue a saved conversation: ID or a unique prefix (default: the newest for this notebook)")
    @argument("--export", metavar="PATH", help="write this (or the --resume'd) conversation to PATH "
                                               "(.md, .ipynb or .jsonl); never the open notebook")
    @argument("--force", action="store_true", help="with --export: replace PATH if it exists; with --rewind: rewind "
                                                   "even what someone changed since (it is kept beside its file)")
    @argument("--doctor", action="store_true", help="check the endpoint, TLS, authentication and model")
    @argument("--trust-project", action="store_true",
              help="trust this folder's .auto-coder.yaml as it is now, so its settings that run commands or send "
                   "credentials elsewhere apply (remembered until the file changes)")
    @argument("--working-dir", metavar="DIR", help="workspace root for the tools (starts a new conversation)")
    @argument("--attach", metavar="NAME_OR_PATH", action="append", default=[],
              help="send an image to a vision model (repeatable): a PNG/JPEG file, a variable holding a matplotlib "
                   "Figure, PIL image or IPython Image, or `last` for the notebook's last image output")
    @argument("prompt", nargs="*", help="the request (in a %%%%autocoder cell, the cell body); kept as written")
    @no_var_expand  # IPython's own {var}/$var expansion of the line would break braces in code
    @line_cell_magic
    def autocoder(self, line: str, cell: str | None = None) -> None:
        """Ask auto-coder. `%autocoder PROMPT` or a `%%autocoder` cell; `{name}` inserts a variable's value."""
        from .errors import AutoCoderError

        options, rest = split_options(line)
        try:
            args = self.autocoder.parser.parse_args(options)
        except UsageError as exc:  # argparse's message, one line, no traceback
            print(f"autocoder: {exc}")
            return
        prompt = rest if cell is None else (f"{rest}\n{cell}" if rest else cell)
        try:
            _run_magic(kernel_state(self.shell), args, prompt)
        except AutoCoderError as exc:
            print(f"autocoder: {exc}")

    @line_magic
    def autocoder_chat(self, line: str) -> Any:
        """Open the chat panel; it shares the conversation with %%autocoder."""
        from .panel import ChatPanel

        return ChatPanel()


_VALUE_OPTIONS = {"-m", "--model", "--approval-mode", "--tool-calling", "--context", "--working-dir", "--attach",
                  "--revert",
                  "--export"}
_TOKEN = re.compile(r"\s*(\S+)")


def split_options(line: str) -> tuple[list[str], str]:
    """Leading options, then the prompt exactly as written. Not shlex: a prompt with an apostrophe or
    braces must not be re-quoted or rejected."""
    options: list[str] = []
    position = 0
    expect_value = False
    while match := _TOKEN.match(line, position):
        token = match.group(1)
        resume_id = options[-1:] == ["--resume"]  # its value is optional; any word there is the id
        resume_id = resume_id or (options[-1:] == ["--rewind"] and token.isdigit())  # so is --rewind's
        if not expect_value and not token.startswith("-") and not resume_id:
            break
        position = match.end()
        if token == "--" and not expect_value:
            break
        options.append(token)
        expect_value = not expect_value and token in _VALUE_OPTIONS
    return options, line[position:].strip()


def _run_magic(state: KernelState, args: Any, prompt: str) -> None:
    shell = state.shell
    if args.working_dir:
        print(change_working_dir(state, args.working_dir))
    changed = refresh_config(shell)
    if changed:
        print(changed)
    session = get_session(shell)
    if args.trust_project:
        print(trust_project(shell))
    if args.doctor:
        from .doctor import run_doctor

        try:
            run_doctor(session.config, lambda text: print(text, flush=True), instructions=session.instructions,
                       live=state.live)
        except KeyboardInterrupt:
            raise CellInterrupted("autocoder: --doctor interrupted") from None
        return
    if args.reset:
        print(f"New conversation: correlation id {session.reset()}")
    if args.undo:
        print(session.undo())
    if args.revert is not None:
        _revert(session, args.revert)
    if args.rewind is not None:
        _rewind(state, session, args.rewind or None, args.force)
    if args.id:
        print(f"Correlation id: {session.conversation.correlation_id}")
    from .history import LISTED, ConversationStore

    store = ConversationStore(warn=lambda text: print(f"autocoder: warning: {text}"))
    if args.sessions is not None or args.all or args.here:
        count = None if args.all else max(1, args.sessions or LISTED)
        print(session.listing(store, count, args.here, "--sessions N shows N, --all every one"))
        return
    if args.export:
        print(session.export(args.export, args.resume or None, store, overwrite=args.force))
        return
    if args.resume is not None:
        print(session.resume(session.saved_here(args.resume or None, store)))
    if args.fix:
        error = state.history.last_error or error_before_load()
        if error is None:
            print("No error to fix: no cell has raised one in this kernel.")
            return
        prompt = fix_prompt(error, prompt)
    elif not prompt.strip() and not args.show_context:
        if not (args.reset or args.undo or args.id or args.working_dir or args.trust_project
                or args.rewind is not None or args.revert is not None
                or args.resume is not None):
            print("Nothing to ask: give a prompt (`%autocoder PROMPT` or a `%%autocoder` cell). `%autocoder?` "
                  "shows the options.")
        return
    if not args.no_interpolate:
        prompt = interpolate(prompt, shell.user_ns)
    context = build_context(args.context, shell.user_ns, state.history,
                            hidden=getattr(shell, "user_ns_hidden", {}), include_error=not args.fix)
    from .text import compose_message, scrub

    # A variable's repr in the kernel context, or an interpolated {name}, may hold a configured secret.
    message = scrub(compose_message(prompt, context), session.secret_values())
    images = [attach(session, name, shell) for name in args.attach]
    if args.show_context:
        print(message)
        _show_also_sent(session, images)
        return
    _run_turn(state, session, message, args, images)


def _revert(session: Session, number: int) -> None:
    """`--revert CHANGE`: one cell change of the agent undone (the model hears it with the next request)."""
    from .tools.registry import ToolError

    assert session.cells is not None
    try:
        print(session.cells.revert(number))
    except ToolError as exc:
        print(f"autocoder: {exc}")


def _rewind(state: KernelState, session: Session, number: int | None, force: bool) -> None:
    """`--rewind [N] [--force]`: RewindRefused (nothing changed) goes to the magic's one error line. Offers to run
    the cells that define the stale variables again, where the kernel can ask."""
    from .kernel import rerun_cells
    from .tools.registry import ToolError

    outcome = session.rewind(number, force)
    print(outcome.message)
    kernel = getattr(state.shell, "kernel", None)
    if not outcome.rerun or outcome.notebook is None or not getattr(kernel, "_allow_stdin", False):
        return
    cells = ", ".join(f"[{index}]" for index, _ in outcome.rerun)
    if input(f"Run cell(s) {cells} again now? [y/N]: ").strip().lower() in ("y", "yes"):
        try:
            print(rerun_cells(outcome.notebook, [cell_id for _, cell_id in outcome.rerun], state.shell))
        except ToolError as exc:
            print(f"autocoder: {exc}")


def _show_also_sent(session: Session, images: list[Image]) -> None:
    """What --show-context sends besides the message (kept off stdout, which is exactly the message)."""
    from IPython.display import display

    lines = [f"project instructions (in the system prompt): {line}"
             for line in session.instructions.describe(session.workspace.root)]
    lines += [f"image: {image.describe()}" for image in images]
    if lines:
        display({"text/plain": "\n".join(lines)}, raw=True)


def _run_turn(state: KernelState, session: Session, message: str, args: Any, images: list[Image]) -> None:
    shell = state.shell
    kernel = getattr(shell, "kernel", None)
    can_ask = kernel is None or bool(getattr(kernel, "_allow_stdin", False))
    from .agent import TurnOptions
    from .cell_output import CellRenderer

    options = TurnOptions(model=args.model, approval_mode=args.approval_mode, tool_calling=args.tool_calling)
    metadata = {"model": args.model or session.provider.model,
                "correlation_id": session.conversation.correlation_id}
    renderer = CellRenderer(rich=kernel is not None, metadata=metadata, sent=message, attached=images,
                            secrets=session.secret_values())
    pump_turn(worker(state), session, message, options, renderer, can_ask, images)
    if renderer.failure is not None:
        raise CellFailed(f"autocoder: {renderer.failure}")
    if args.insert:
        blocks = code_blocks(renderer.text)
        if not blocks:
            if renderer.text.strip() or not renderer.failed:  # after an error without an answer, the error says it
                print("The answer has no Python code block to insert.")
        elif can_ask:
            insert_cells(shell, blocks)
            print(f"Inserted {len(blocks)} code block(s) into a new cell below.")
        else:  # the kernel would only add a payload to the reply, and nothing here reads it
            print(NO_FRONTEND.format(count=len(blocks)))
            print("\n\n".join(block.strip("\n") for block in blocks))


# -- `?` at the end of a prompt -----------------------------------------------------------------

def _keep_question_marks(lines: list[str]) -> list[str]:
    """IPython turns a line ending in `?` into a help request (`%autocoder why is this?` -> `%pinfo this`).
    This cleanup transform runs first and makes such a line an explicit magic call; `%autocoder?` stays help."""
    changed = []
    for line in lines:
        match = _QUESTION_LINE.match(line)
        if match:
            indent, rest = match.groups()
            line = f"{indent}get_ipython().run_line_magic('autocoder', {rest.strip()!r})\n"
        changed.append(line)
    return changed


# -- loading ------------------------------------------------------------------------------------

def load_ipython_extension(ipython: Any) -> None:
    state = kernel_state(ipython)
    state.shell = ipython
    ipython.register_magics(AutoCoderMagics)
    state.images.watch(ipython)  # for --attach last
    ipython.events.register("post_run_cell", state.history.record)
    if _keep_question_marks not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.insert(0, _keep_question_marks)


def unload_ipython_extension(ipython: Any) -> None:
    state = kernel_state(ipython)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("autocoder", None)
    ipython.magics_manager.magics["line"].pop("autocoder_chat", None)
    try:
        ipython.events.unregister("post_run_cell", state.history.record)
    except ValueError:
        pass  # not registered: unload without load
    if _keep_question_marks in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(_keep_question_marks)
