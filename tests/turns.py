"""Agent turns for the tests that talk to the core without a face: each turn's events collected in order, each
approval request answered by the test's `answer` (a turn without one expects none, and fails instead of hanging).
Tests that stop, cancel or interleave a turn half-way still drive `agent.run` themselves."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Sequence
from typing import Protocol

from auto_coder_nb.agent import Agent, TurnOptions
from auto_coder_nb.events import ApprovalRequest, Event
from auto_coder_nb.images import Image

# Answers one approval request; it may return an awaitable (a user who thinks it over), awaited before the turn goes on.
Answer = Callable[[ApprovalRequest], object]


class Runner(Protocol):
    """What turns run on: a `Session`, or a test's harness around an `Agent` that closes what it opened."""

    @property
    def agent(self) -> Agent: ...

    async def aclose(self) -> None: ...


def approve(request: ApprovalRequest) -> None:
    """The answer of a user who allows every call."""
    request.approve()


async def collect(agent: Agent, message: str, answer: Answer | None = None, *, options: TurnOptions | None = None,
                  images: Sequence[Image] = ()) -> list[Event]:
    """The events of one turn of `agent`, each approval request answered by `answer` (none expected without it)."""
    events: list[Event] = []
    async for event in agent.run(message, images, options=options):
        events.append(event)
        if isinstance(event, ApprovalRequest):
            assert answer is not None, f"unexpected approval request: {event}"
            answered = answer(event)
            if inspect.isawaitable(answered):
                await answered
    return events


def run_turns(runner: Runner, messages: Sequence[str], answer: Answer | None = None, *,
              options: TurnOptions | None = None, images: Sequence[Image] = ()) -> list[list[Event]]:
    """The events of each turn, one after the other on a fresh event loop; `runner` is closed afterwards."""
    async def turns() -> list[list[Event]]:
        try:
            return [await collect(runner.agent, message, answer, options=options, images=images)
                    for message in messages]
        finally:
            await runner.aclose()

    return asyncio.run(turns())


def run_turn(runner: Runner, message: str, answer: Answer | None = None, *, options: TurnOptions | None = None,
             images: Sequence[Image] = ()) -> list[Event]:
    """The events of one turn on a fresh event loop; `runner` is closed afterwards, as a face closes it when done."""
    [events] = run_turns(runner, [message], answer, options=options, images=images)
    return events
