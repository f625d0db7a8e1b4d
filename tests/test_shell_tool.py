"""run_command: real shells in a temporary workspace, timeouts and cancellation killing whole process groups."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from auto_coder_nb.tools import ToolError, ToolRegistry, Workspace, build_workspace_tools


def run(registry: ToolRegistry, command: str, **arguments: Any) -> str:
    return asyncio.run(registry.call("run_command", {"command": command, **arguments}))


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper (containers may lack an init that reaps orphans)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def wait_until_gone(pid: int) -> bool:
    """SIGKILL is delivered asynchronously by the kernel: give it a moment, without asserting on time."""
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not alive(pid)


def read_pid(path: Path) -> int:
    deadline = time.monotonic() + 30
    while not (path.exists() and path.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return int(path.read_text())


def test_exit_code_and_labelled_streams(registry: ToolRegistry) -> None:
    result = run(registry, "echo out; echo err >&2; exit 3")
    assert result == "exit code: 3\nstdout:\nout\nstderr:\nerr"


def test_runs_in_the_root_non_interactively(root: Path, registry: ToolRegistry) -> None:
    result = run(registry, "pwd; cat; test -t 0 || echo no-tty; echo $PAGER $GIT_PAGER")
    assert result == f"exit code: 0\nstdout:\n{root.resolve()}\nno-tty\ncat cat"


def test_commands_do_not_see_the_endpoint_credentials(registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTO_CODER_API_KEY", "sk-test-secret")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-2")
    result = run(registry, "env")
    assert "sk-test-secret" not in result


def test_no_output_and_signals_are_reported(registry: ToolRegistry) -> None:
    assert run(registry, "true") == "exit code: 0\n(no output)"
    assert "Killed by signal SIGTERM" in run(registry, "kill -TERM $$")


def test_fifty_megabytes_of_output_keep_head_and_tail_in_bounded_memory(registry: ToolRegistry) -> None:
    command = "echo FIRST; head -c 52428800 /dev/zero | tr '\\0' 'a'; echo; echo LAST"
    tracemalloc.start()
    try:
        result = run(registry, command)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024, f"peak memory {peak:,} bytes"
    assert len(result) < 10_300
    assert result.startswith("exit code: 0\nstdout:\nFIRST\naaaa")
    assert result.endswith("aaaa\nLAST")
    total = len("FIRST\n") + 52428800 + len("\nLAST\n")
    assert f"[{total - 10_000:,} characters omitted]" in result


def test_output_budget_is_shared_so_a_short_stderr_survives(registry: ToolRegistry) -> None:
    result = run(registry, "seq 1 100000; echo 'the real error' >&2; exit 1")
    assert result.startswith("exit code: 1\nstdout:\n1\n2\n3\n")
    assert "100000\nstderr:\nthe real error" in result
    assert "characters omitted" in result


def test_timeout_kills_the_whole_group_and_keeps_the_output_so_far(root: Path, registry: ToolRegistry) -> None:
    command = "echo started; (sleep 300; echo never) & echo $! > child.pid; sleep 300"
    result = run(registry, command, timeout=1)
    assert result.startswith("Timed out after 1 s")
    assert "exit code: 124" in result and "stdout:\nstarted" in result and "never" not in result
    assert wait_until_gone(read_pid(root / "child.pid")), "the background child outlived the timeout"


def test_timeout_is_capped_at_600_seconds(registry: ToolRegistry) -> None:
    assert "lowered from 5000 s to the maximum of 600 s" in run(registry, "true", timeout=5000)


@pytest.mark.parametrize("timeout", ["soon", 0, -1])
def test_bad_timeout_is_an_error(registry: ToolRegistry, timeout: Any) -> None:
    with pytest.raises(ToolError, match="timeout"):
        run(registry, "true", timeout=timeout)


def test_empty_command_is_an_error(registry: ToolRegistry) -> None:
    with pytest.raises(ToolError, match="empty"):
        run(registry, "  ")


def test_background_process_holding_the_output_is_stopped(root: Path, registry: ToolRegistry) -> None:
    result = run(registry, "sleep 300 & echo $! > bg.pid; echo done")
    assert "stdout:\ndone" in result and "background processes" in result
    assert wait_until_gone(read_pid(root / "bg.pid"))


def test_background_process_with_redirected_output_keeps_running(root: Path, registry: ToolRegistry) -> None:
    result = run(registry, "sleep 300 > /dev/null 2>&1 & echo $! > server.pid")
    pid = read_pid(root / "server.pid")
    try:
        assert result == "exit code: 0\n(no output)"
        assert alive(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def test_cancelling_the_call_kills_the_process_group(root: Path, registry: ToolRegistry) -> None:
    command = "echo $$ > shell.pid; sleep 300 & echo $! > child.pid; sleep 300"

    async def scenario() -> None:
        task = asyncio.create_task(registry.call("run_command", {"command": command}))
        while not (root / "child.pid").exists() or not (root / "child.pid").read_text().strip():
            assert not task.done()
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert wait_until_gone(read_pid(root / "shell.pid"))
    assert wait_until_gone(read_pid(root / "child.pid"))


def _shells_running(marker: str) -> list[int]:
    """Pids of live processes whose command line contains `marker`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace") and alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


@pytest.mark.timeout(120)
def test_cancelling_while_the_shell_is_still_being_set_up_kills_the_whole_group_at_once(
        root: Path, registry: ToolRegistry) -> None:
    marker = f"setup-{os.getpid()}-{time.monotonic_ns()}"
    command = f"sleep 300 & echo $! > child.pid; wait # {marker}"  # the shell stays (no exec of a last command)

    async def scenario() -> bool:
        task = asyncio.create_task(registry.call("run_command", {"command": command}))
        # Yield until the shell exists, then keep the loop blocked (no asyncio step runs) while its background
        # child starts: the call is still inside its set-up when it is cancelled.
        deadline = time.monotonic() + 60
        while not _shells_running(marker):
            assert time.monotonic() < deadline, "the shell never started"
            await asyncio.sleep(0)
        read_pid(root / "child.pid")
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=30)
        if not done:  # the call waited for the background child: end it so the test can report
            os.kill(read_pid(root / "child.pid"), signal.SIGKILL)
            await asyncio.wait({task})
        return bool(done)

    assert asyncio.run(scenario()), "the cancelled call waited for a background child instead of killing it"
    assert wait_until_gone(read_pid(root / "child.pid")), "the background child outlived the cancelled call"
    assert not _shells_running(marker)


def test_invalid_utf8_output_is_replaced_not_fatal(registry: ToolRegistry) -> None:
    assert run(registry, "printf 'ok\\377\\n'") == "exit code: 0\nstdout:\nok\ufffd"


def test_preview_is_the_command_line_and_commands_are_noted_for_undo(workspace: Workspace,
                                                                     registry: ToolRegistry) -> None:
    tool = registry.get("run_command")
    assert tool is not None and tool.preview is not None
    assert tool.preview(command="rm -rf build") == "rm -rf build"
    workspace.begin_turn()
    workspace.atomic_write("a.txt", b"x")
    run(registry, "touch made-by-command.txt")
    assert "1 command(s)" in workspace.undo()


def test_the_configured_default_timeout_applies(root: Path) -> None:
    registry = ToolRegistry(build_workspace_tools(Workspace(root), command_timeout=1))
    result = run(registry, "echo $$ > shell.pid; sleep 300")
    assert result.startswith("Timed out after 1 s")
    assert wait_until_gone(read_pid(root / "shell.pid"))


def test_colour_is_off_and_escape_codes_are_removed(registry: ToolRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    result = run(registry, "printf '\\033[1;31mred\\033[0m\\n'; echo ${FORCE_COLOR:-unset} $NO_COLOR")
    assert result == "exit code: 0\nstdout:\nred\nunset 1"
