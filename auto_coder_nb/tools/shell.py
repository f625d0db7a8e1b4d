"""run_command: one shell command in the workspace root, in its own process group, bounded in time and output.

The handler is a coroutine. Cancelling the task that awaits it (the panel's Stop, Ctrl-C in the CLI) kills the
whole process group at once, so nothing the command started keeps running.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import functools
import os
import shutil
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..config import ENV_VARS, SECRET_KEYS
from ..hub import is_hub_credential
from ..providers.base import ToolDefinition
from ..text import MIN_SECRET_LENGTH, omit_middle, strip_ansi
from .registry import ToolError
from .workspace import Workspace

MAX_TIMEOUT = 600.0
MAX_OUTPUT_CHARS = 10_000
READ_CHUNK = 64 * 1024
# After the shell exits, how long background processes may keep its output pipes open before they are stopped.
PIPE_GRACE_SECONDS = 1.0
TIMEOUT_EXIT_CODE = 124

NON_INTERACTIVE_ENV = {
    "PAGER": "cat",
    "MANPAGER": "cat",
    "GIT_PAGER": "cat",
    "GIT_TERMINAL_PROMPT": "0",
    "TERM": "dumb",
    "NO_COLOR": "1",
    "PIP_PROGRESS_BAR": "off",
    "PIP_NO_INPUT": "1",
    "TQDM_DISABLE": "1",
    "DEBIAN_FRONTEND": "noninteractive",
    "PYTHONUNBUFFERED": "1",
}
# Set by Jupyter and CI: colour codes in the output only cost the model tokens.
FORCED_COLOR_ENV_VARS = {"FORCE_COLOR", "CLICOLOR_FORCE", "PY_COLORS"}
# The endpoint's credentials stay out of commands: a model running `env` must not print them into the chat.
SECRET_ENV_VARS = {name for name, key in ENV_VARS.items() if key in SECRET_KEYS} | {"OPENAI_API_KEY"}


class _Capture:
    """Keeps the first and last MAX_OUTPUT_CHARS characters of a stream and counts the rest: bounded memory."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.head = ""
        self.tail = ""
        self.total = 0

    def feed(self, data: bytes, final: bool = False) -> None:
        text = self._decoder.decode(data, final)
        if not text:
            return
        self.total += len(text)
        if len(self.head) < MAX_OUTPUT_CHARS:
            self.head += text[:MAX_OUTPUT_CHARS - len(self.head)]
        self.tail = (self.tail + text[-MAX_OUTPUT_CHARS:])[-MAX_OUTPUT_CHARS:]

    def render(self, budget: int) -> str:
        if self.total <= budget:
            return self.head  # budget <= MAX_OUTPUT_CHARS, so the head holds everything
        return omit_middle(self.head, self.tail, self.total, budget)


async def _drain(stream: asyncio.StreamReader, capture: _Capture) -> None:
    while chunk := await stream.read(READ_CHUNK):
        capture.feed(chunk)
    capture.feed(b"", final=True)


async def _exited(process: asyncio.subprocess.Process) -> None:
    """Wait for the shell itself to exit. (Process.wait() also waits for the pipes to close before Python 3.12, so
    a background process holding them would look like a hung command.)"""
    delay = 0.005
    while process.returncode is None:
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.05)


async def _settle(process: asyncio.subprocess.Process, readers: asyncio.Future[Any]) -> None:
    """After a kill, let the pipes reach EOF so the transport closes on this loop (bounded, never raises)."""
    try:
        await asyncio.wait_for(asyncio.gather(_exited(process), readers), PIPE_GRACE_SECONDS)
    except BaseException:  # a second Stop or a stuck pipe: give up, the caller re-raises the first
        readers.cancel()


def _readers(process: asyncio.subprocess.Process, stdout: _Capture, stderr: _Capture) -> asyncio.Future[Any]:
    assert process.stdout is not None and process.stderr is not None
    return asyncio.gather(_drain(process.stdout, stdout), _drain(process.stderr, stderr))


async def _started(starting: asyncio.Future[asyncio.subprocess.Process]) -> asyncio.subprocess.Process | None:
    """The process once its set-up is over, however often the caller is cancelled meanwhile; None if it failed."""
    while not starting.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(starting)
    if starting.cancelled() or starting.exception() is not None:
        return None
    return starting.result()


def _kill_group(process: asyncio.subprocess.Process) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # start_new_session made the shell's pid the group id
    except (ProcessLookupError, PermissionError):
        pass


def _budgets(stdout: _Capture, stderr: _Capture) -> tuple[int, int]:
    """Share MAX_OUTPUT_CHARS between the streams: a short one keeps all of it, the other gets the rest."""
    if stdout.total + stderr.total <= MAX_OUTPUT_CHARS:
        return stdout.total, stderr.total
    half = MAX_OUTPUT_CHARS // 2
    if stderr.total < half:
        return MAX_OUTPUT_CHARS - stderr.total, stderr.total
    if stdout.total < half:
        return stdout.total, MAX_OUTPUT_CHARS - stdout.total
    return half, MAX_OUTPUT_CHARS - half


def environment_without_secrets(environ: Mapping[str, str], secrets: Iterable[str | None]) -> dict[str, str]:
    """`environ` without the variables that hold a secret: the endpoint's own variables and JupyterHub's tokens by
    name, and any variable whose value contains a secret the configuration holds (`${MY_GATEWAY_KEY}`, a proxy URL
    with a password, a fetched token)."""
    values = [secret for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH]
    return {name: value for name, value in environ.items()
            if name not in SECRET_ENV_VARS and not is_hub_credential(name)
            and not any(secret in value for secret in values)}


@contextlib.contextmanager
def secrets_hidden_from_environ(secrets: Iterable[str | None]) -> Iterator[None]:
    """`os.environ` without the variables that hold a secret while the block runs, then as it was: for run_code,
    whose code runs in this process and whose children (`!cmd`, subprocess) inherit its environment."""
    hidden = {name: value for name, value in os.environ.items()
              if name not in environment_without_secrets({name: value}, secrets)}
    for name in hidden:
        del os.environ[name]
    try:
        yield
    finally:
        for name, value in hidden.items():
            os.environ.setdefault(name, value)  # a value the code set on purpose stays


def _command_env(secrets: Iterable[str | None] = ()) -> dict[str, str]:
    env = {name: value for name, value in environment_without_secrets(os.environ, secrets).items()
           if name not in FORCED_COLOR_ENV_VARS}
    if env.get("MPLBACKEND", "").startswith("module://"):
        del env["MPLBACKEND"]  # a kernel's inline backend means nothing to a script run from the shell
    env.update(NON_INTERACTIVE_ENV)
    return env


def _timeout_seconds(timeout: Any, default: float) -> tuple[float, str]:
    if timeout is None:
        return min(default, MAX_TIMEOUT), ""
    try:
        seconds = float(timeout)
    except (TypeError, ValueError):
        raise ToolError(f"timeout must be a number of seconds, got {timeout!r}.") from None
    if not seconds > 0:
        raise ToolError(f"timeout must be a positive number of seconds, got {timeout!r}.")
    if seconds > MAX_TIMEOUT:
        return MAX_TIMEOUT, f"(timeout lowered from {seconds:g} s to the maximum of {MAX_TIMEOUT:g} s)\n"
    return seconds, ""


RUN_COMMAND_DESCRIPTION = f"""Run a shell command (bash) in the workspace root and return its exit code and output.

- Each call starts a fresh shell in the workspace root: `cd` does not carry over to the next call, so chain \
commands with `&&` (e.g. `cd src && pytest -q`). Use paths relative to the root.
- Non-interactive: stdin is closed, there is no terminal, PAGER=cat. Commands that wait for input fail or hang \
until the timeout: pass flags such as `-y` / `--yes` / `--no-edit`, and avoid editors and pagers.
- `timeout` is in seconds, at most {MAX_TIMEOUT:g}. When it expires the command and every process it started are \
killed and the result says so, with the output so far. Background processes (`cmd &`) are stopped when the \
command ends unless their output is redirected to a file (`cmd > log 2>&1 &`).
- stdout and stderr are returned separately, together at most {MAX_OUTPUT_CHARS:,} characters: longer output keeps \
its beginning and end with a marker saying how much was omitted. Filter big outputs (grep, head, tail, `| wc -l`).
- Prefer read_file, edit_file, write_file and list_directory for files: their changes can be reviewed and \
undone; a command's effects cannot be undone. The user may be asked to approve each command."""


async def run_command(workspace: Workspace, command: Any, timeout: Any = None, *, default_timeout: float,
                      secrets: Callable[[], Iterable[str | None]] = tuple) -> str:
    if not isinstance(command, str) or not command.strip():
        raise ToolError("command is empty: give the shell command to run, e.g. `ls -la` or `pytest -q`.")
    seconds, note = _timeout_seconds(timeout, default_timeout)
    workspace.note_command()
    shell = shutil.which("bash") or "/bin/sh"
    starting = asyncio.ensure_future(asyncio.create_subprocess_exec(
        shell, "-c", command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=workspace.root,
        env=_command_env(secrets()),
        start_new_session=True,
    ))
    stdout, stderr = _Capture(), _Capture()
    try:
        process = await asyncio.shield(starting)
    except asyncio.CancelledError:
        # Stopped while the shell was being set up. A cancelled set-up kills only the shell, then (before
        # Python 3.12) waits for its pipes, which a background child may hold for ever: let the set-up finish
        # (it does not wait for the command), then kill the whole group.
        started = await _started(starting)
        if started is not None:
            _kill_group(started)
            await _settle(started, _readers(started, stdout, stderr))
        raise
    readers = _readers(process, stdout, stderr)
    timed_out = background_stopped = False
    try:
        try:
            await asyncio.wait_for(_exited(process), seconds)
        except asyncio.TimeoutError:
            timed_out = True
            _kill_group(process)
            await _exited(process)
        try:
            await asyncio.wait_for(asyncio.shield(readers), PIPE_GRACE_SECONDS)
        except asyncio.TimeoutError:
            # Something the command started still holds stdout/stderr open: stop it so the call can finish.
            background_stopped = True
            _kill_group(process)
            try:
                await asyncio.wait_for(readers, PIPE_GRACE_SECONDS)
            except asyncio.TimeoutError:
                pass  # a process that left the group (setsid) keeps the pipe; its output is not waited for
    except BaseException:
        _kill_group(process)  # cancelled (Stop) or failed: nothing the command started outlives the call
        await _settle(process, readers)
        raise
    stdout_budget, stderr_budget = _budgets(stdout, stderr)
    parts = [note]
    if timed_out:
        parts.append(f"Timed out after {seconds:g} s: the command and every process it started were killed. "
                     "Output so far:\n")
    elif process.returncode is not None and process.returncode < 0:
        parts.append(f"Killed by signal {_signal_name(-process.returncode)}.\n")
    code = TIMEOUT_EXIT_CODE if timed_out else process.returncode
    parts.append(f"exit code: {code}\n")
    if background_stopped and not timed_out:
        parts.append("(background processes still holding the output open were stopped; redirect a background "
                     "process's output to a file to keep it running)\n")
    for label, capture, budget in (("stdout", stdout, stdout_budget), ("stderr", stderr, stderr_budget)):
        if capture.total:
            text = strip_ansi(capture.render(budget)).rstrip("\n")
            parts.append(f"{label}:\n{text}\n")
    if not stdout.total and not stderr.total:
        parts.append("(no output)\n")
    return "".join(parts).rstrip("\n")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def preview_run_command(workspace: Workspace, command: Any, timeout: Any = None) -> str:
    if not isinstance(command, str) or not command.strip():
        raise ToolError("command is empty: give the shell command to run.")
    return command


def shell_tools(workspace: Workspace, command_timeout: float = 120.0,
                secrets: Callable[[], Iterable[str | None]] = tuple) -> list[ToolDefinition]:
    return [
        ToolDefinition(
            name="run_command",
            description=RUN_COMMAND_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "command": {"type": "string", "description": "The shell command line to run."},
                    "timeout": {"type": "number", "minimum": 1, "maximum": MAX_TIMEOUT,
                                "description": f"Seconds before the command is killed. Default {command_timeout:g}, "
                                               f"maximum {MAX_TIMEOUT:g}."},
                },
                "required": ["command"],
            },
            handler=functools.partial(run_command, workspace, default_timeout=command_timeout, secrets=secrets),
            kind="command",
            always_scope="command",  # "always" to one command line is not a yes to every command
            preview=functools.partial(preview_run_command, workspace),
            rarely_needed=("timeout",),
        ),
    ]
