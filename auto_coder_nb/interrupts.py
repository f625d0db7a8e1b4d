"""Ctrl-C while synchronous code waits on an event loop (the CLI and the REPL drive turns this way).

Python's own SIGINT handler raises KeyboardInterrupt at whatever line runs, which may be inside the event loop's
own code: between taking a task's wake-up off the ready queue and running it, the wake-up is lost and the task
never runs again (the turn went on streaming, or stayed "busy" for good). While `LoopRunner.run` waits, SIGINT
instead cancels the awaited task from the loop (at its await point, like `asyncio.run` does) and `run` raises
KeyboardInterrupt once the task has unwound; outside `run`, Ctrl-C raises KeyboardInterrupt as usual.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Awaitable
from types import FrameType, TracebackType
from typing import Any, TypeVar

T = TypeVar("T")


class LoopRunner:
    """`with LoopRunner(loop) as runner: runner.run(coroutine)`. Takes SIGINT over only when it would raise
    KeyboardInterrupt (Python's default handler, in the main thread): an ignored SIGINT (`nohup`, a background
    job) stays ignored, and an application's own handler stays in place."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._task: asyncio.Task[Any] | None = None
        self._waiting = False
        self._run_number = 0  # a cancel queued during one run must not reach the next one's task
        self._interrupted = False
        self._previous: Any = None

    def __enter__(self) -> LoopRunner:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def run(self, awaitable: Awaitable[T]) -> T:
        """Run `awaitable` to its end on the loop. Ctrl-C meanwhile cancels it, then raises KeyboardInterrupt."""
        self._run_number += 1
        self._interrupted = False
        self._waiting = True  # from here a SIGINT is queued to the loop, never raised in the middle of this
        try:
            task = self._task = self.loop.create_task(_awaited(awaitable))
            try:
                result = self.loop.run_until_complete(task)
            except asyncio.CancelledError:
                if not self._interrupted:
                    raise
        finally:
            self._waiting = False
            self._task = None
        if self._interrupted:
            raise KeyboardInterrupt
        return result

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if not self._waiting:
            raise KeyboardInterrupt  # in the caller's own synchronous code: safe where it lands
        self._interrupted = True
        self.loop.call_soon_threadsafe(self._cancel, self._run_number)

    def _cancel(self, run_number: int) -> None:
        if run_number == self._run_number and self._task is not None:
            self._task.cancel()


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a loop the way `asyncio.run` ends: what is still pending (the closing of readers an answer left early,
    scheduled when they were collected) is run out first, so that nothing is destroyed while pending."""
    while pending := asyncio.all_tasks(loop):
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()
