"""The IPython face: `%%autocoder` / `%autocoder` (and `%autocoder_chat` for the panel).

A magic runs on the kernel's main thread while ipykernel's event loop is busy running it, so a turn
runs on a private event loop in a worker thread. Events come back through a queue and are rendered
here, on the main thread (display updates must come from it); approvals are asked with `input()`,
and `run_code` is executed here too, at the worker's request.
"""

from __future__ import annotations

import concurrent.futures
import html
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, line_magic, magics_class, no_var_expand
from IPython.core.magic_arguments import argument, magic_arguments

from .approvals import APPROVAL_MODES
from .notebook_context import (
    CONTEXT_MODES,
    KernelHistory,
    build_context,
    compose_message,
    error_before_load,
    fix_prompt,
    interpolate,
)

if TYPE_CHECKING:  # events (and asyncio with them) are imported on first use, not at %load_ext
    from .config import Config
    from .events import ApprovalRequest, Event, ToolCallStarted, ToolResult, UsageUpdate
    from .providers.base import LLMProvider
    from .session import Session
    from .tools.notebook import CodeOutcome

NOTEBOOK_PROMPT = """

You run inside the user's Jupyter kernel. list_variables and inspect_variable show the user's
variables; run_code runs Python in the kernel namespace (it asks the user first); read_notebook and
edit_notebook work on .ipynb files. A summary of the kernel may follow the user's message between
<kernel-context> tags."""

NO_STDIN = (
    "There is no stdin to ask for approval here (nbclient, papermill or allow_stdin=False), so this {tool} "
    "call was refused. Allow it with `%%autocoder --approval-mode full-auto` (or auto-edit for file changes "
    "only), AUTO_CODER_APPROVAL_MODE, or `agent.approval_mode` in .auto-coder.yaml."
)
UPDATE_INTERVAL = 0.15  # seconds between display updates: a fast stream must not flood the frontend
METADATA_KEY = "auto_coder_nb"
_FENCED_BLOCK = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)^[ \t]*```", re.DOTALL | re.MULTILINE)
_PYTHON_LANGUAGES = {"", "python", "python3", "py", "ipython", "ipython3"}
_QUESTION_LINE = re.compile(r"^(\s*)%autocoder(\s+.*\?)\s*$")


# -- one session per kernel ---------------------------------------------------------------------

@dataclass
class _KernelState:
    shell: Any
    load_dir: Path
    history: KernelHistory = field(default_factory=KernelHistory)
    session: Session | None = None
    worker: _Worker | None = None
    # How the session's configuration was read, to read it again before each request.
    config_flags: dict[str, Any] = field(default_factory=dict)
    config_dir: Path | None = None


_state: _KernelState | None = None


def _kernel_state(shell: Any = None) -> _KernelState:
    global _state
    if _state is None:
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        _state = _KernelState(shell, Path.cwd())
    return _state


def open_notebook_path(shell: Any) -> Path | None:
    """The notebook the frontend says the kernel belongs to: VS Code's `__vsc_ipynb_file__`, or
    Jupyter's `JPY_SESSION_NAME` (absolute, or relative to the server root while the kernel runs in the
    notebook's folder)."""
    vscode = (getattr(shell, "user_ns", None) or {}).get("__vsc_ipynb_file__")
    if isinstance(vscode, str) and vscode:
        return Path(vscode)
    name = os.environ.get("JPY_SESSION_NAME", "")
    if not name.endswith(".ipynb"):
        return None
    path = Path(name)
    if path.is_absolute():
        return path
    local = _kernel_state(shell).load_dir / path.name
    return local if local.exists() else None


def notebook_directory(shell: Any = None) -> Path:
    """The workspace root in a kernel: the open notebook's folder, else the working directory at load time."""
    state = _kernel_state(shell)
    notebook = open_notebook_path(state.shell)
    return notebook.parent if notebook is not None else state.load_dir


def get_session(shell: Any = None) -> Session:
    """The kernel's one Session, shared by the magics and the chat panel; created on first use.

    Configuration comes from `load_config()` (files, environment); the workspace root is the notebook's
    folder unless `agent.working_dir` says otherwise. Raises ConfigError for a bad configuration.
    """
    state = _kernel_state(shell)
    if state.session is None:
        from .config import load_config

        root = notebook_directory(state.shell)
        state.config_flags, state.config_dir = {}, root
        state.session = _create_session(load_config(cwd=root), state, root)
    return state.session


def refresh_config(shell: Any = None) -> str | None:
    """Apply environment variables and config files changed since the kernel's session was made (users set
    os.environ or edit .auto-coder.yaml in the notebook) from the next request on; the conversation stays.
    Returns a sentence saying what is used now, or None when nothing changed. Raises ConfigError."""
    from .config import load_config, redact_url

    state = _kernel_state(shell)
    if state.session is None or state.config_dir is None:
        return None
    config = load_config(state.config_flags, cwd=state.config_dir)
    if not state.session.apply_config(config):
        return None
    return (f"Configuration changed: now {config.llm.model} at {redact_url(config.llm.base_url)}, "
            f"approval mode {config.agent.approval_mode}.")


def _create_session(config: Config, state: _KernelState, root: Path, provider: LLMProvider | None = None) -> Session:
    from .session import DEFAULT_SYSTEM_PROMPT, Session
    from .tools.notebook import build_notebook_tools

    if config.agent.system_prompt is None:
        config.agent.system_prompt = DEFAULT_SYSTEM_PROMPT + NOTEBOOK_PROMPT
    shell = state.shell
    holder: list[Session] = []
    tools = build_notebook_tools(
        shell.user_ns,
        lambda code: _worker(state).call_in_main_thread(lambda: _run_code(state, code)),
        lambda: holder[0].workspace,
        hidden=lambda: getattr(shell, "user_ns_hidden", {}),
        open_notebook=lambda: open_notebook_path(shell),
        insert_cell=lambda source, kind: _insert_from_turn(state, f"%%markdown\n{source}" if kind == "markdown"
                                                            else source),
    )
    session = Session.create(config, working_dir=config.agent.working_dir or root, extra_tools=tools,
                             provider=provider)
    session.workspace.open_notebook = lambda: open_notebook_path(shell)  # write_file/edit_file refuse it too
    holder.append(session)
    return session


def _run_code(state: _KernelState, code: str) -> CodeOutcome:
    """run_code's executor, on the main thread: IPython syntax (magics, `!cmd`) is transformed first."""
    from .tools.notebook import run_python

    return run_python(state.shell.transform_cell(code), state.shell.user_ns)


async def _insert_from_turn(state: _KernelState, source: str) -> str | None:
    """edit_notebook's insert. A magic's turn adds the cell when its cell finishes; a chat-panel turn runs
    outside any cell execution, so the frontend applies the cell only after the user's next run."""
    in_magic = state.worker is not None and state.worker.channel is not None
    await _worker(state).call_in_main_thread(lambda: _insert_cells(state.shell, [source]))
    if in_magic:
        return None
    return ("The new cell will appear below the next cell the user runs (a cell can only be added during a "
            "cell execution). Tell the user, and show the code in your answer too.")


def _insert_cells(shell: Any, blocks: list[str]) -> None:
    """New cell(s) below the current one. Frontends apply one `set_next_input` payload per execution
    (a later one replaces an earlier one), so several blocks are joined into one cell."""
    shell.set_next_input("\n\n".join(block.strip("\n") for block in blocks), replace=False)


# -- the worker thread ---------------------------------------------------------------------------

_DONE = object()


@dataclass
class _MainThreadCall:
    function: Callable[[], Any]
    result: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)

    def run(self) -> None:
        try:
            self.result.set_result(self.function())
        except KeyboardInterrupt:
            # Not handed to the worker: a KeyboardInterrupt inside its loop would stop the loop itself.
            self.result.cancel()
            raise
        except BaseException as exc:
            self.result.set_exception(exc)


class _Worker:
    """One thread with its own event loop, kept for the kernel's life so connections are reused."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="auto-coder-turns", daemon=True)
        self.thread.start()
        self.channel: queue.Queue[Any] | None = None

    async def call_in_main_thread(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the kernel's main thread (the magic's loop picks it up) and await its result."""
        import asyncio

        if threading.current_thread() is threading.main_thread():
            return function()
        channel = self.channel
        if channel is None:
            raise RuntimeError("no magic is running to execute this on the kernel's main thread")
        call = _MainThreadCall(function)
        channel.put(call)
        return await asyncio.wrap_future(call.result)

    def run_turn(self, session: Session, message: str, renderer: _Renderer, can_ask: bool) -> None:
        import asyncio

        from .events import ApprovalRequest

        channel: queue.Queue[Any] = queue.Queue()
        self.channel = channel

        async def pump() -> None:
            try:
                async for event in session.agent.run(message):
                    channel.put(event)
            finally:
                channel.put(_DONE)

        future = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        try:
            while True:
                try:
                    item = channel.get(timeout=UPDATE_INTERVAL)
                except queue.Empty:
                    renderer.flush()
                    continue
                if item is _DONE:
                    break
                if isinstance(item, _MainThreadCall):
                    item.run()
                elif isinstance(item, ApprovalRequest):
                    self._ask(item, renderer, can_ask)
                else:
                    renderer.event(item)
            future.result()
        except KeyboardInterrupt:
            # Kernel interrupt: cancel the turn (the agent repairs the history) and wait until it has.
            future.cancel()
            self._drain(channel)
            renderer.stopped()
        finally:
            self.channel = None
            renderer.finish()

    def _ask(self, request: ApprovalRequest, renderer: _Renderer, can_ask: bool) -> None:
        renderer.approval(request)
        if not can_ask:
            reason = NO_STDIN.format(tool=request.tool)
            renderer.notice(reason)
            self.loop.call_soon_threadsafe(request.deny, reason)
            return
        answer = input(f"Allow {request.tool}? [y]es / [n]o / [a]lways for this session: ").strip().lower()
        if answer in ("y", "yes"):
            self.loop.call_soon_threadsafe(request.approve)
        elif answer in ("a", "always"):
            self.loop.call_soon_threadsafe(lambda: request.approve(always=True))
        else:
            self.loop.call_soon_threadsafe(request.deny, "")

    def _drain(self, channel: queue.Queue[Any]) -> None:
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
            if isinstance(item, _MainThreadCall):
                item.result.cancel()
            elif isinstance(item, ApprovalRequest):
                self.loop.call_soon_threadsafe(item.deny, "interrupted")


def _worker(state: _KernelState) -> _Worker:
    if state.worker is None:
        state.worker = _Worker()
    return state.worker


# -- rendering ----------------------------------------------------------------------------------

class _Renderer:
    """Shows one turn. Notebook: Markdown updated in place (display ids), tool calls as collapsible
    HTML; terminal IPython: plain text printed as it streams."""

    def __init__(self, rich: bool, metadata: dict[str, Any], sent: str) -> None:
        self.rich = rich
        self.metadata = {METADATA_KEY: metadata}
        self.sent = sent
        self.answer: list[str] = []  # every text delta of the turn, for --insert
        self.segment = ""  # the text since the last tool call, shown in one display
        self.segment_handle: Any = None
        self.dirty = False
        self.last_update = 0.0
        self.tool_handles: dict[str, tuple[Any, ToolCallStarted]] = {}
        self.usage: UsageUpdate | None = None

    @property
    def text(self) -> str:
        return "".join(self.answer)

    def event(self, event: Event) -> None:
        from .events import (
            ErrorEvent,
            Notice,
            ReasoningDelta,
            TextDelta,
            ToolCallStarted,
            ToolResult,
            TurnDone,
            UsageUpdate,
        )

        if isinstance(event, TextDelta):
            self.answer.append(event.text)
            self.segment += event.text
            if self.rich:
                self.dirty = True
                if time.monotonic() - self.last_update >= UPDATE_INTERVAL:
                    self.flush()
            else:
                print(event.text, end="", flush=True)
        elif isinstance(event, ToolCallStarted):
            self._end_segment()
            self._tool_started(event)
        elif isinstance(event, ToolResult):
            self._tool_result(event)
        elif isinstance(event, ErrorEvent):
            self._end_segment()
            self._show_markdown(f"**Error:** {event.message}", f"Error: {event.message}")
        elif isinstance(event, Notice):
            self.notice(event.text)
        elif isinstance(event, UsageUpdate):
            self.usage = event
        elif isinstance(event, (TurnDone, ReasoningDelta)):
            pass  # the footer says how the turn ended; reasoning stays out of the cell

    def flush(self) -> None:
        if not (self.rich and self.dirty):
            return
        bundle = {"text/markdown": self.segment, "text/plain": self.segment}
        if self.segment_handle is None:
            self.segment_handle = _display(bundle, self.metadata, new_id=True)
        else:
            self.segment_handle.update(bundle, raw=True, metadata=self.metadata)
        self.dirty = False
        self.last_update = time.monotonic()

    def _end_segment(self) -> None:
        self.flush()
        if not self.rich and self.segment and not self.segment.endswith("\n"):
            print()
        self.segment, self.segment_handle = "", None

    def _tool_started(self, event: ToolCallStarted) -> None:
        label = f"{event.name} {_key_argument(event)}".strip()
        if not self.rich:
            print(f"[{label}]", flush=True)
            return
        handle = _display(_tool_bundle(label, "running...", ""), self.metadata, new_id=True)
        self.tool_handles[event.call_id] = (handle, event)

    def _tool_result(self, result: ToolResult) -> None:
        first = result.output.strip().splitlines()[0] if result.output.strip() else "(empty)"
        short = ("error: " if result.is_error else "") + (first[:100] + ("..." if len(first) > 100 else ""))
        if not self.rich:
            print(f"  -> {short}", flush=True)
            return
        handle, started = self.tool_handles.get(result.call_id, (None, None))
        label = f"{result.name} {_key_argument(started)}".strip() if started else result.name
        bundle = _tool_bundle(label, short, result.output)
        if handle is None:
            _display(bundle, self.metadata)
        else:
            handle.update(bundle, raw=True, metadata=self.metadata)

    def approval(self, request: ApprovalRequest) -> None:
        self._end_segment()
        fence = "diff" if request.preview.startswith(("---", "diff")) else ("python" if request.tool == "run_code"
                                                                            else "")
        self._show_markdown(f"**{request.tool}** needs your approval:\n\n```{fence}\n{request.preview}\n```",
                            f"{request.tool} needs your approval:\n{request.preview}")

    def notice(self, text: str) -> None:
        self._end_segment()
        self._show_markdown(f"*{text}*", text)

    def stopped(self) -> None:
        self._end_segment()
        self._show_markdown("*stopped*", "stopped")

    def finish(self) -> None:
        self._end_segment()
        meta = self.metadata[METADATA_KEY]
        tokens = f" · {self.usage.turn.total_tokens} tokens" if self.usage is not None else ""
        summary = f"{meta['model']} · correlation id {meta['correlation_id']}{tokens}"
        if self.rich:
            body = (f"<details><summary>{html.escape(summary)} · what was sent</summary>"
                    f"<pre>{html.escape(self.sent)}</pre></details>")
            _display({"text/html": body, "text/plain": summary}, self.metadata)

    def _show_markdown(self, markdown: str, plain: str) -> None:
        if self.rich:
            _display({"text/markdown": markdown, "text/plain": plain}, self.metadata)
        else:
            print(plain, flush=True)


def _display(bundle: dict[str, str], metadata: dict[str, Any], *, new_id: bool = False) -> Any:
    from IPython.display import display

    return display(bundle, raw=True, metadata=metadata, display_id=True if new_id else None)


def _tool_bundle(label: str, short: str, detail: str) -> dict[str, str]:
    summary = f"<code>{html.escape(label)}</code> → {html.escape(short)}"
    body = f"<details><summary>{summary}</summary><pre>{html.escape(detail[:5000])}</pre></details>"
    return {"text/html": body, "text/plain": f"[{label}] {short}"}


def _key_argument(event: ToolCallStarted) -> str:
    arguments = event.arguments or {}
    for key in ("path", "command", "code", "name"):
        if isinstance(arguments.get(key), str):
            value = arguments[key].strip().splitlines()[0] if arguments[key].strip() else ""
            return value[:80] + ("..." if len(value) > 80 else "")
    return ""


def code_blocks(markdown: str) -> list[str]:
    """The Python fenced code blocks of an answer, in order. An unlabelled block counts only when it is
    valid (IPython) Python: models also fence tracebacks and output without a label."""
    blocks = []
    for match in _FENCED_BLOCK.finditer(markdown):
        language, code = match.group(1).lower(), match.group(2)
        if language in _PYTHON_LANGUAGES and code.strip() and (language or _is_python(code)):
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
    @argument("--insert", action="store_true", help="put the answer's code blocks into a new cell below")
    @argument("--no-interpolate", action="store_true", help="send {name} as written, without the variable's value")
    @argument("--context", choices=CONTEXT_MODES, default="auto",
              help="kernel summary sent with the prompt (default auto: variables, recent cells, last error)")
    @argument("--show-context", action="store_true", help="print exactly what would be sent, and send nothing")
    @argument("--fix", action="store_true", help="explain and fix the most recent error")
    @argument("--reset", action="store_true", help="start a new conversation (new correlation id)")
    @argument("--id", action="store_true", help="show the conversation's correlation id")
    @argument("--undo", action="store_true", help="undo the file changes of the last turn that made any")
    @argument("--doctor", action="store_true", help="check the endpoint, TLS, authentication and model")
    @argument("--working-dir", metavar="DIR", help="workspace root for the tools (starts a new conversation)")
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
            _run_magic(_kernel_state(self.shell), args, prompt)
        except AutoCoderError as exc:
            print(f"autocoder: {exc}")

    @line_magic
    def autocoder_chat(self, line: str) -> Any:
        """Open the chat panel; it shares the conversation with %%autocoder."""
        from .panel import ChatPanel

        return ChatPanel()


_VALUE_OPTIONS = {"-m", "--model", "--approval-mode", "--context", "--working-dir"}
_TOKEN = re.compile(r"\s*(\S+)")


def split_options(line: str) -> tuple[list[str], str]:
    """Leading options, then the prompt exactly as written. Not shlex: a prompt with an apostrophe or
    braces must not be re-quoted or rejected."""
    options: list[str] = []
    position = 0
    expect_value = False
    while match := _TOKEN.match(line, position):
        token = match.group(1)
        if not expect_value and not token.startswith("-"):
            break
        position = match.end()
        if token == "--" and not expect_value:
            break
        options.append(token)
        expect_value = not expect_value and token in _VALUE_OPTIONS
    return options, line[position:].strip()


def _run_magic(state: _KernelState, args: Any, prompt: str) -> None:
    shell = state.shell
    if args.working_dir:
        _change_working_dir(state, args.working_dir)
    changed = refresh_config(shell)
    if changed:
        print(changed)
    session = get_session(shell)
    if args.doctor:
        from .doctor import run_doctor

        run_doctor(session.config, lambda text: print(text, flush=True))
        return
    if args.reset:
        print(f"New conversation: correlation id {session.reset()}")
    if args.undo:
        print(session.undo())
    if args.id:
        print(f"Correlation id: {session.conversation.correlation_id}")
    if args.fix:
        error = state.history.last_error or error_before_load()
        if error is None:
            print("No error to fix: no cell has raised one in this kernel.")
            return
        prompt = fix_prompt(error, prompt)
    elif not prompt.strip() and not args.show_context:
        if not (args.reset or args.undo or args.id or args.working_dir):
            print("Nothing to ask: give a prompt (`%autocoder PROMPT` or a `%%autocoder` cell). `%autocoder?` "
                  "shows the options.")
        return
    if not args.no_interpolate:
        prompt = interpolate(prompt, shell.user_ns)
    context = build_context(args.context, shell.user_ns, state.history,
                            hidden=getattr(shell, "user_ns_hidden", {}), include_error=not args.fix)
    message = compose_message(prompt, context)
    if args.show_context:
        print(message)
        return
    _run_turn(state, session, message, args)


def _run_turn(state: _KernelState, session: Session, message: str, args: Any) -> None:
    shell = state.shell
    kernel = getattr(shell, "kernel", None)
    can_ask = kernel is None or bool(getattr(kernel, "_allow_stdin", False))
    saved_mode, saved_model = session.policy.mode, session.provider.model
    if args.approval_mode:
        session.policy.mode = args.approval_mode
    if args.model:
        session.provider.model = args.model
    metadata = {"model": session.provider.model, "correlation_id": session.conversation.correlation_id}
    renderer = _Renderer(rich=kernel is not None, metadata=metadata, sent=message)
    try:
        _worker(state).run_turn(session, message, renderer, can_ask)
    finally:
        session.policy.mode, session.provider.model = saved_mode, saved_model
    if args.insert:
        blocks = code_blocks(renderer.text)
        if blocks:
            _insert_cells(shell, blocks)
            print(f"Inserted {len(blocks)} code block(s) into a new cell below.")
        else:
            print("The answer has no Python code block to insert.")


def _change_working_dir(state: _KernelState, directory: str) -> None:
    """Point the tools at another root: a new conversation on the same endpoint (the provider and its
    connections are kept). The session object stays the same (the panel holds it); its parts are replaced."""
    from .config import load_config

    root = Path(directory).expanduser().resolve()
    if not root.is_dir():
        from .errors import ConfigError

        raise ConfigError(f"--working-dir {directory}: not a folder")
    state.config_flags, state.config_dir = {"agent.working_dir": str(root)}, root
    config = load_config(state.config_flags, cwd=root)
    fresh = _create_session(config, state, root, state.session.provider if state.session else None)
    if state.session is None:
        state.session = fresh
    else:
        for part in fields(state.session):
            setattr(state.session, part.name, getattr(fresh, part.name))
    print(f"Workspace root: {root}; new conversation {state.session.conversation.correlation_id}")


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
    state = _kernel_state(ipython)
    state.shell = ipython
    ipython.register_magics(AutoCoderMagics)
    ipython.events.register("post_run_cell", state.history.record)
    if _keep_question_marks not in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.insert(0, _keep_question_marks)


def unload_ipython_extension(ipython: Any) -> None:
    state = _kernel_state(ipython)
    for kind in ("line", "cell"):
        ipython.magics_manager.magics[kind].pop("autocoder", None)
    ipython.magics_manager.magics["line"].pop("autocoder_chat", None)
    try:
        ipython.events.unregister("post_run_cell", state.history.record)
    except ValueError:
        pass  # not registered: unload without load
    if _keep_question_marks in ipython.input_transformers_cleanup:
        ipython.input_transformers_cleanup.remove(_keep_question_marks)
