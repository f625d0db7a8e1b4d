"""The time limit of one turn (`agent.turn_timeout`), not counting the time the user takes to approve.

The agent marks when the turn's own code is running (`running()`): between those marks the task that
iterates the turn waits only on the turn's awaits (the model's stream, a tool), so cancelling it there stops
the turn at a point built to be stopped. When the limit passes while the face holds an event, nothing is
interrupted: `expired` is seen when the turn resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager


class TurnDeadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self.fired = False  # the running task was cancelled for the deadline (not by the user)
        self._left = seconds
        self._started: float | None = None  # when the clock last (re)started; None while paused
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        if self._started is None and not self.expired:
            self._loop = loop = asyncio.get_running_loop()
            self._started = loop.time()
            self._timer = loop.call_later(self._left, self._expire)

    def stop(self) -> None:
        """Stop the clock (the turn ended, or waits for the user); `start()` goes on with the time left."""
        if self._started is not None and self._loop is not None:
            self._left -= self._loop.time() - self._started
            self._started = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    @contextmanager
    def running(self) -> Iterator[None]:
        """The turn's own code runs on the current task in this block: at the deadline, it is cancelled."""
        self._task = asyncio.current_task()
        try:
            yield
        finally:
            self._task = None

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The user's time (an approval): not counted."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _expire(self) -> None:
        self.expired = True
        self._timer = None
        if self._task is not None and not self._task.done():
            self.fired = True
            self._task.cancel()

    def swallow(self) -> None:
        """The cancellation this deadline caused was handled: the task goes on (Python 3.11+ counts cancels)."""
        task = asyncio.current_task()
        uncancel = getattr(task, "uncancel", None)
        if uncancel is not None:
            uncancel()
