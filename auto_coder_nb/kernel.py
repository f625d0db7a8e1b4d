"""The kernel side shared by the magics and the chat panel: the one Session per kernel, re-reading its
configuration, the worker thread that runs magic turns, running code in the kernel and inserting cells.

A magic runs on the kernel's main thread while ipykernel's event loop is busy running it, so a magic's
turn runs on a private event loop in a worker thread (`Worker`); work that must happen on the main thread
(`run_code`, cell insertion) is handed back to the magic's turn pump with `Worker.call_in_main_thread`.
Nothing heavy is imported here at `%load_ext` time.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .notebook_context import KernelHistory

if TYPE_CHECKING:
    from .config import Config
    from .images import Image
    from .live_notebook import LiveEditing
    from .providers.base import LLMProvider
    from .session import Session
    from .tools.notebook import CellRun, CodeOutcome
    from .tools.notebook_document import NotebookDocument

NOTEBOOK_PROMPT = """

You run inside the user's Jupyter kernel. list_variables and inspect_variable show the user's
variables; run_code runs Python in the kernel namespace (it asks the user first); read_notebook and
edit_notebook work on .ipynb files, and run_cell runs one cell of a notebook in the kernel with its outputs
written into it. The notebook the user has open is edited live when its Jupyter server allows it. A
summary of the kernel may follow the user's message between <kernel-context> tags."""


# -- a cell that fails with one line -------------------------------------------------------------

class CellFailed(Exception):
    """Raised by a magic to fail its cell with one line and no traceback (IPython shows what
    `_render_traceback_` returns), so that Run All, nbclient and papermill stop there."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line

    def _render_traceback_(self) -> list[str]:
        return [self.line]


class CellInterrupted(KeyboardInterrupt):
    """A kernel interrupt, shown as one line instead of a traceback; still a KeyboardInterrupt, so it stops a run."""

    def __init__(self, line: str) -> None:
        super().__init__(line)
        self.line = line

    def _render_traceback_(self) -> list[str]:
        return [self.line]


# -- one session per kernel ---------------------------------------------------------------------

@dataclass
class KernelState:
    shell: Any
    load_dir: Path
    history: KernelHistory = field(default_factory=KernelHistory)
    session: Session | None = None
    worker: Worker | None = None
    # How the session's configuration was read, to read it again before each request.
    config_flags: dict[str, Any] = field(default_factory=dict)
    config_dir: Path | None = None
    images: ImageOutputs = field(default_factory=lambda: ImageOutputs())
    # (project file, ignored settings) already announced: the untrusted-file notice is shown once per kernel.
    untrusted_announced: set[tuple[str, tuple[str, ...]]] = field(default_factory=set)
    live: LiveEditing | None = None  # the way to the open notebook's live document (made with the first session)


_state: KernelState | None = None


def kernel_state(shell: Any = None) -> KernelState:
    global _state
    if _state is None:
        if shell is None:
            from IPython import get_ipython

            shell = get_ipython()
        _state = KernelState(shell, Path.cwd())
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
    local = kernel_state(shell).load_dir / path.name
    return local if local.exists() else None


def notebook_directory(shell: Any = None) -> Path:
    """The workspace root in a kernel: the open notebook's folder, else the working directory at load time."""
    state = kernel_state(shell)
    notebook = open_notebook_path(state.shell)
    return notebook.parent if notebook is not None else state.load_dir


def get_session(shell: Any = None) -> Session:
    """The kernel's one Session, shared by the magics and the chat panel; created on first use.

    Configuration comes from `load_config()` (files, environment); the workspace root is the notebook's
    folder unless `agent.working_dir` says otherwise. Raises ConfigError for a bad configuration.
    """
    state = kernel_state(shell)
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

    state = kernel_state(shell)
    if state.session is None or state.config_dir is None:
        return None
    config = load_config(state.config_flags, cwd=state.config_dir)
    changed = state.session.apply_config(config)
    _announce_untrusted(state, state.session)
    if not changed:
        return None
    return (f"Configuration changed: now {config.llm.model} at {redact_url(config.llm.base_url)}, "
            f"approval mode {config.agent.approval_mode}.")


def _announce_untrusted(state: KernelState, session: Session) -> None:
    """Say (as a notice in the next turn) which settings of the untrusted project file were ignored: once per kernel
    for each file and set of settings, not in every cell."""
    project = session.config.project
    if project is None or not project.needs_trust:
        return
    said = (str(project.path), tuple(project.ignored))
    if said not in state.untrusted_announced:
        state.untrusted_announced.add(said)
        session.tools.notify(project.notice("kernel"))


def trust_project(shell: Any = None) -> str:
    """`%autocoder --trust-project` and the panel's Trust this folder button: trust the project's config file as
    last read (a file changed since stays untrusted) and apply its settings from the next request on. Returns
    the sentence to show. Raises ConfigError (also when trust cannot be recorded)."""
    from .errors import ConfigError

    state = kernel_state(shell)
    session = get_session(shell)
    refresh_config(shell)
    project = session.config.project
    if project is None:
        return f"There is no project config file ({state.config_dir}/.auto-coder.yaml) to trust."
    if project.trusted:
        return f"{project.path} is already trusted."
    try:
        project.trust()
    except OSError as exc:
        raise ConfigError(f"could not record trust in {project.store}: {exc.strerror or exc}") from None
    notice = project.notice("kernel")
    for waiting in session.tools.take_notices():  # the "not trusted" notice not yet shown is out of date now
        if waiting != notice:
            session.tools.notify(waiting)
    refresh_config(shell)
    return project.after_trusting(session.config.project, "kernel")


def change_working_dir(state: KernelState, directory: str) -> str:
    """Point the tools at another root: a new conversation on the same endpoint (the provider and its
    connections are kept). The session object stays the same (the panel holds it); its parts are replaced.
    Returns the sentence to show."""
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
        if state.session.recorder is not None:
            state.session.recorder.close()  # the old conversation's file; the fresh session starts a new one
        state.session.close_mcp_servers()  # the fresh session started its own
        for part in fields(state.session):
            setattr(state.session, part.name, getattr(fresh, part.name))
    return f"Workspace root: {root}; new conversation {state.session.conversation.correlation_id}"


def _create_session(config: Config, state: KernelState, root: Path, provider: LLMProvider | None = None) -> Session:
    from .live_notebook import LiveEditing
    from .session import DEFAULT_SYSTEM_PROMPT, Session
    from .tools.notebook import build_notebook_tools
    from .tools.notebook_document import Notebooks

    if config.agent.system_prompt is None:
        config.agent.system_prompt = DEFAULT_SYSTEM_PROMPT + NOTEBOOK_PROMPT
    shell = state.shell
    if state.live is None:
        state.live = LiveEditing(kernel_id(shell), open_notebook=lambda: open_notebook_path(shell))
    holder: list[Session] = []
    notebooks = Notebooks(lambda: holder[0].workspace, live=state.live, open_notebook=lambda: open_notebook_path(shell),
                          secrets=state.live.secret_values)
    tools = build_notebook_tools(
        shell.user_ns,
        lambda code: worker(state).call_in_main_thread(lambda: _run_code(state, code)),
        lambda: holder[0].workspace,
        hidden=lambda: getattr(shell, "user_ns_hidden", {}),
        open_notebook=lambda: open_notebook_path(shell),
        insert_cell=lambda source, kind: _insert_from_turn(state, f"%%markdown\n{source}" if kind == "markdown"
                                                            else source),
        notebooks=lambda: notebooks,  # the session's own (it records the agent's cell changes)
        run_cell=lambda source: worker(state).call_in_main_thread(lambda: _run_cell(state, source)),
    )
    session = Session.create(config, working_dir=config.agent.working_dir or root, extra_tools=tools,
                             provider=provider, instructions_from=root,
                             notebook=open_notebook_path(shell), notebooks=notebooks)
    session.workspace.open_notebook = lambda: open_notebook_path(shell)  # write_file/edit_file refuse it too
    holder.append(session)
    _checkpoint_kernel(session, shell)
    _announce_untrusted(state, session)
    return session


def _checkpoint_kernel(session: Session, shell: Any) -> None:
    """What a rewind needs from the kernel: its user variables (by identity, to name the stale ones after a rewind)
    and the notebook whose cells would rebuild them."""
    from .tools.notebook import user_variables

    def notebook() -> NotebookDocument | None:
        path = open_notebook_path(shell)
        if path is None or session.notebooks is None:
            return None
        return session.notebooks.open(path)

    assert session.turns is not None
    session.turns.variables = lambda: user_variables(shell.user_ns, getattr(shell, "user_ns_hidden", {}))
    session.turns.notebook = notebook


def rerun_cells(path: str, cell_ids: list[str], shell: Any = None) -> str:
    """Run cells of a notebook again after a rewind (the kernel's memory is not rewound), on the main thread: each
    runs as the user's run would and its outputs go into the cell. Returns what to show; raises ToolError."""
    state = kernel_state(shell)
    session = get_session(shell)
    assert session.cells is not None
    document = session.open_notebooks().open(path, write=True)
    ran = []
    with session.cells.paused():  # the user's runs, not the agent's changes
        for cell_id in cell_ids:
            run = _run_cell(state, document.cell(cell_id).source)
            document.set_outputs(cell_id, run.outputs, run.execution_count)
            ran.append(f"[{document.index_of(cell_id)}] as [{run.execution_count}]")
    return f"Ran cell(s) {', '.join(ran)} again."


# -- running code and adding cells --------------------------------------------------------------

def _run_code(state: KernelState, code: str) -> CodeOutcome:
    """The one executor of run_code (the model's calls and the panel's Run button, which calls the tool), on the
    main thread: IPython syntax (magics, `!cmd`) is transformed first; the code and the processes it starts do not
    see the session's secrets in the environment, and what it prints shows (and returns) with them hidden. The
    images it shows (display(), IPython Image, matplotlib figures, an image as the last expression) are shown to
    the user as in a cell and collected for the model."""
    from .tools.notebook import run_python
    from .tools.shell import secrets_hidden_from_environ

    shell = state.shell
    state.images.watch(shell)
    secrets = state.session.secret_values() if state.session is not None else []
    with state.images.collect() as images, secrets_hidden_from_environ(secrets):
        outcome = run_python(shell.transform_cell(code), shell.user_ns, secrets=secrets)
        if outcome.value is not None and _is_image(outcome.value):
            from IPython.display import display

            display(outcome.value)
        _flush_figures()
    outcome.images = images
    outcome.hide(secrets)
    if state.session is not None and state.session.turns is not None:
        state.session.turns.note_code(code)  # a rewind names what it assigned as stale
    return outcome


def _run_cell(state: KernelState, source: str) -> CellRun:
    """run_cell's runner, on the main thread: the cell's source run as the user's run would, outputs caught for
    the notebook document (see cell_runs)."""
    from .cell_runs import run_cell_captured
    from .tools.shell import secrets_hidden_from_environ

    secrets = state.session.secret_values() if state.session is not None else []
    if state.session is not None and state.session.turns is not None:
        state.session.turns.note_code(source)  # a rewind names what it assigned as stale
    with secrets_hidden_from_environ(secrets):
        return run_cell_captured(state.shell, source, secrets)


def kernel_id(shell: Any) -> str | None:
    """This kernel's id, from its connection file `kernel-<id>.json` (the kernel app that started the shell's
    kernel knows it); None outside a Jupyter kernel (terminal IPython)."""
    app = getattr(getattr(shell, "kernel", None), "parent", None)
    name = Path(str(getattr(app, "connection_file", "") or "")).name
    return name[len("kernel-"):-len(".json")] if name.startswith("kernel-") and name.endswith(".json") else None


def _is_image(value: Any) -> bool:
    figure = callable(getattr(value, "savefig", None)) and hasattr(value, "axes")
    return figure or any(callable(getattr(value, method, None)) for method in ("_repr_png_", "_repr_jpeg_"))


def _flush_figures() -> None:
    """Show the figures the code drew with the inline backend now, as a cell would at its end."""
    import sys

    inline = sys.modules.get("matplotlib_inline.backend_inline")
    matplotlib = sys.modules.get("matplotlib")
    if inline is not None and matplotlib is not None and "inline" in str(matplotlib.get_backend()):
        inline.flush_figures()


class ImageOutputs:
    """Watches the kernel's display publisher (display(), plots) and display hook (a cell's last value):
    remembers the last image output (for `--attach last`) and, while `collect()` runs, the images shown.
    Outputs still reach the frontend unchanged."""

    def __init__(self) -> None:
        self.last: str | bytes | None = None
        self._collecting: list[bytes] | None = None

    def watch(self, shell: Any) -> None:
        """Wrap the shell's current publisher and display hook, once each (`capture_output` may swap the
        publisher, so run_code calls this again)."""
        for owner, method in ((getattr(shell, "display_pub", None), "publish"),
                              (getattr(shell, "displayhook", None), "write_format_data")):
            original = getattr(owner, method, None)
            if original is None or getattr(original, "_auto_coder_images", False):
                continue

            def wrapped(data: dict[str, Any], *args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self._seen(data)
                return _original(data, *args, **kwargs)

            wrapped._auto_coder_images = True  # type: ignore[attr-defined]
            setattr(owner, method, wrapped)

    def _seen(self, data: Any) -> None:
        from .images import IMAGE_MIME_TYPES, decode_output

        found = next((data[mime] for mime in IMAGE_MIME_TYPES if isinstance(data, dict) and mime in data), None)
        if found is None:
            return
        self.last = found
        data = decode_output(found)
        if self._collecting is not None and data not in self._collecting:  # a figure shown twice is sent once
            self._collecting.append(data)

    @contextlib.contextmanager
    def collect(self) -> Iterator[list[bytes]]:
        collected: list[bytes] = []
        self._collecting = collected
        try:
            yield collected
        finally:
            self._collecting = None


def attach(session: Session, name: str, shell: Any = None) -> Image:
    """`session.attach` with the kernel's namespace and last image output (the magics' --attach, the panel)."""
    state = kernel_state(shell)
    return session.attach(name, state.shell.user_ns, state.images.last)


async def _insert_from_turn(state: KernelState, source: str) -> str | None:
    """edit_notebook's insert. A magic's turn adds the cell when its cell finishes; a chat-panel turn runs
    outside any cell execution, so the frontend applies the cell only after the user's next run."""
    in_magic = state.worker is not None and state.worker.channel is not None
    await worker(state).call_in_main_thread(lambda: insert_cells(state.shell, [source]))
    if in_magic:
        return None
    return ("The new cell will appear below the next cell the user runs (a cell can only be added during a "
            "cell execution). Tell the user, and show the code in your answer too.")


def insert_cells(shell: Any, blocks: list[str]) -> None:
    """New cell(s) below the current one. Frontends apply one `set_next_input` payload per execution
    (a later one replaces an earlier one), so several blocks are joined into one cell."""
    shell.set_next_input("\n\n".join(block.strip("\n") for block in blocks), replace=False)


# -- the worker thread ---------------------------------------------------------------------------

@dataclass
class MainThreadCall:
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


class Worker:
    """One thread with its own event loop, kept for the kernel's life so connections are reused.

    `channel` is the queue of the magic whose turn is running (its pump reads it on the main thread);
    None between magics."""

    def __init__(self) -> None:
        import asyncio

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="auto-coder-turns", daemon=True)
        self.thread.start()
        self.channel: queue.Queue[Any] | None = None

    async def call_in_main_thread(self, function: Callable[[], Any]) -> Any:
        """Run `function` on the kernel's main thread (the magic's pump picks it up) and await its result."""
        import asyncio

        if threading.current_thread() is threading.main_thread():
            return function()
        channel = self.channel
        if channel is None:
            raise RuntimeError("no magic is running to execute this on the kernel's main thread")
        call = MainThreadCall(function)
        channel.put(call)
        return await asyncio.wrap_future(call.result)


def worker(state: KernelState) -> Worker:
    if state.worker is None:
        state.worker = Worker()
    return state.worker
