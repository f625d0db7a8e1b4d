"""Ctrl-C (SIGINT) at any point of a turn driven from synchronous code, as the CLI and the REPL drive it: the
turn stops at once, the session is free and its history valid, and the next turn works."""

from __future__ import annotations

import asyncio
import io
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from auto_coder_nb.config import Config
from auto_coder_nb.session import Session
from auto_coder_nb.terminal import TerminalView, drive_turn, refuse_without_terminal
from auto_coder_nb.testing.server import FakeLLMServer
from tests.test_agent import assert_strictly_valid

# With nothing queued, the test server calls the tool the message names, then answers: a turn of two requests.
MESSAGE = "Call the list_directory tool"


class SigintAt:
    """A trace function that sends this process SIGINT at the `point`-th call or line event of this thread (the
    handler then runs right there, as for a real Ctrl-C), or only counts when `point` is 0."""

    def __init__(self, point: int = 0) -> None:
        self.point = point
        self.count = 0

    def __call__(self, frame: FrameType, event: str, arg: Any) -> SigintAt:
        self.count += 1
        if self.count == self.point:
            signal.raise_signal(signal.SIGINT)
        return self


@contextmanager
def traced(trace: SigintAt) -> Iterator[None]:
    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(None)


@pytest.fixture
def sigint_raises() -> Iterator[None]:
    """Ctrl-C raises KeyboardInterrupt here as at a terminal, however the suite was started (a suite started in the
    background has SIGINT ignored)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def turn(session: Session, loop: asyncio.AbstractEventLoop, trace: SigintAt) -> bool:
    """One turn as the CLI drives it; True when it ran to its end, False when Ctrl-C stopped it."""
    view = TerminalView(ask=refuse_without_terminal, out=io.StringIO(), err=io.StringIO())
    try:
        with traced(trace):
            return drive_turn(session, MESSAGE, loop, view)
    except KeyboardInterrupt:  # Ctrl-C in drive_turn's own lines, outside the turn: as the REPL's loop sees it
        return False


@pytest.mark.timeout(120)  # before the fix, a Ctrl-C inside the event loop's own code could hang a turn for good
def test_sigint_at_any_point_of_a_turn_stops_it_and_the_next_turn_works(
        fake_server: FakeLLMServer, root: Path, sigint_raises: None) -> None:
    config = Config()
    config.llm.base_url = fake_server.base_url
    session = Session.create(config, working_dir=root)
    loop = asyncio.new_event_loop()
    try:
        assert turn(session, loop, SigintAt())  # first imports and connections: not part of every turn
        whole = SigintAt()
        assert turn(session, loop, whole)
        points = sorted({1 + whole.count * step // 80 for step in range(80)})
        stopped = 0
        for point in points:
            ran_to_the_end = turn(session, loop, SigintAt(point))
            stopped += not ran_to_the_end
            assert not session.agent.busy, f"Ctrl-C at event {point} of {whole.count} left the session busy"
            assert_strictly_valid(session.conversation.messages)
            assert session.conversation.messages[-1]["role"] != "user"  # an interrupted answer is marked
        assert stopped >= len(points) * 0.9  # the points are spread over the whole turn
        fake_server.clear()
        assert turn(session, loop, SigintAt())
        assert fake_server.chat_requests[-1].json["messages"][-1]["role"] == "tool"
    finally:
        loop.run_until_complete(session.aclose())
        loop.close()
