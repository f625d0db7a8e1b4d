"""A model that repeats itself until the token limit must not hold the user: the stream is stopped once its
text ends in the same chunk over and over (long enough, often enough), the text so far is kept, a notice says
so, and the history stays valid for the next turn. Ordinary long output (code, tables, rulers) is never cut.

The test server stops sending in the middle of each runaway reply until it is released (`wait_for`): a client
that kept reading would get the rest only after RELEASE_TIMEOUT, so a cut text proves the stream was stopped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from turns import run_turn

from auto_coder_nb.config import Config
from auto_coder_nb.events import Event, Notice, ReasoningDelta, TextDelta, ToolCallStarted, TurnDone
from auto_coder_nb.providers.repetition import REPETITION_NOTICE, RepetitionGuard, repeated_period
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply

HOLD = "runaway-hold"  # never released while the client reads: only a client that stopped goes on


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake
        fake.release(HOLD)


def make_session(server: FakeLLMServer, root: Path, mode: str) -> Session:
    config = Config()
    config.llm.base_url, config.llm.model, config.llm.tool_calling = server.base_url, "fake-model", mode
    config.agent.approval_mode = "full-auto"
    return Session.create(config, working_dir=root)


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


def held(spec: dict[str, Any], after: int) -> dict[str, Any]:
    """`spec` with the server pausing before piece `after` until HOLD is released."""
    return {**spec, "wait_for": HOLD, "wait_after": after}


def test_a_runaway_answer_is_cut_with_a_notice_and_the_next_turn_works(server: FakeLLMServer, tmp_path: Path) -> None:
    preface = "Here is what I found in the project.\n\n"
    loop = "I will check the file again. " * 400  # 11,600 characters in 400 pieces
    server.enqueue(held(reply.text(preface + loop, chunks=401), after=200), reply.text("Fine now."))
    session = make_session(server, tmp_path, "native")

    events = run_turn(session, "What is in the project?")
    text = text_of(events)
    assert text.startswith(preface + "I will check the file again. ")
    assert 1000 < len(text) < len(preface + loop) // 2  # stopped before the pause: the rest was never awaited
    assert Notice(REPETITION_NOTICE) in events
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    assert session.conversation.messages[-1] == {"role": "assistant", "content": text}

    events = run_turn(session, "Try again.")
    assert text_of(events) == "Fine now."
    sent = server.chat_requests[-1].json["messages"]
    assert [m["role"] for m in sent[1:]] == ["user", "assistant", "user"] and sent[2]["content"] == text


def test_a_runaway_prompted_answer_is_cut_and_a_runaway_tool_step_runs_nothing(server: FakeLLMServer,
                                                                             tmp_path: Path) -> None:
    server.enqueue(held(reply.prompted_answer("Sure. " + "na " * 3000, chunks=600), after=300))
    session = make_session(server, tmp_path, "prompted")
    events = run_turn(session, "Sing.")
    assert text_of(events).startswith("Sure. na na na") and Notice(REPETITION_NOTICE) in events
    assert events[-1] == TurnDone("stop")

    server.enqueue(held(reply.prompted_call("write_file", {"path": "song.txt", "content": "la" * 5000}, chunks=500),
                        after=250), reply.prompted_answer("Done."))
    events = run_turn(session, "Write the song to song.txt.")
    assert Notice(REPETITION_NOTICE) in events and not any(isinstance(e, ToolCallStarted) for e in events)
    assert not (tmp_path / "song.txt").exists()
    events = run_turn(session, "Say done.")
    assert text_of(events) == "Done."


def test_runaway_reasoning_is_cut_too(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(held(reply.text("The answer.", reasoning="Wait, let me think. " * 500, chunks=400), after=200))
    events = run_turn(make_session(server, tmp_path, "native"), "Think.")
    reasoning = "".join(e.text for e in events if isinstance(e, ReasoningDelta))
    assert 1000 <= len(reasoning) < 5000 and Notice(REPETITION_NOTICE) in events


LONG_CODE = "\n".join([
    "# " + "=" * 78,
    "# Report",
    "# " + "=" * 78,
    "| id | name | value |",
    "| --- | --- | --- |",
    *[f"| {i} | item{i} | {i * i} |" for i in range(120)],
    "-" * 300,
    *["    pass"] * 40,
    "x = [" + ", ".join("0" for _ in range(100)) + "]",
    *[f"def f{i}(a, b):\n    return a + b + {i}\n" for i in range(60)],
])


def test_long_ordinary_output_is_not_cut(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(reply.text(LONG_CODE, chunks=800))
    events = run_turn(make_session(server, tmp_path, "native"), "Write the report.")
    assert text_of(events) == LONG_CODE and not any(isinstance(e, Notice) for e in events)


def test_repeated_period_needs_a_long_tail_and_many_repeats() -> None:
    assert repeated_period("x" + "ab" * 600) == 2
    assert repeated_period("=" * 999) is None  # too short a tail
    assert repeated_period("x" + "=" * 1200) == 1
    line = "A long line of about one hundred characters that a model might repeat when it is stuck in a loop!!\n"
    assert repeated_period(line * 7) is None and repeated_period(line * 11) == len(line)
    assert repeated_period(LONG_CODE) is None
    guard = RepetitionGuard()
    assert not any(guard.feed(piece) for piece in LONG_CODE.split("\n"))
    guard = RepetitionGuard()
    assert any(guard.feed("yes ") for _ in range(300)) and guard.tripped


def brute_force_period(text: str) -> int | None:
    for period in range(1, 201):
        tail = max(1000, 10 * period)
        if tail <= len(text) and all(text[i] == text[i - period] for i in range(len(text) - tail + period, len(text))):
            return period
    return None


@pytest.mark.parametrize("text", [
    "ab" * 600, "x" * 1000, "abcabd" * 300 + "abc" * 400, "q" + "0, " * 400, ("row 1\n" * 5 + "row 2\n") * 40,
    "".join(f"{i % 7}," for i in range(1500)), "a" * 999 + "b", ("z" * 33 + "y") * 50, "ab" * 499 + "a",
])
def test_repeated_period_finds_what_a_brute_force_search_finds(text: str) -> None:
    assert repeated_period(text) == brute_force_period(text)


def test_a_repetitive_answer_that_already_ended_is_kept_whole(server: FakeLLMServer, tmp_path: Path) -> None:
    server.enqueue(reply.text("=" * 3000))  # one write: the whole answer and its end arrive together
    events = run_turn(make_session(server, tmp_path, "native"), "Draw a line.")
    assert text_of(events) == "=" * 3000 and not any(isinstance(e, Notice) for e in events)
