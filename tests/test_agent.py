"""The agent loop against the project's test server: events, tool round trips, guards, approvals,
cancellation, and histories that a strict server accepts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from turns import Answer, run_turn

from auto_coder_nb.agent import Agent
from auto_coder_nb.approvals import ApprovalPolicy
from auto_coder_nb.config import AgentConfig, Config
from auto_coder_nb.events import (
    ApprovalRequest,
    ErrorEvent,
    Event,
    Notice,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
    UsageUpdate,
)
from auto_coder_nb.providers.base import ToolCall, ToolDefinition
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.state.conversation import Conversation
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.tools.registry import ToolError, ToolRegistry


def assert_strictly_valid(messages: list[dict[str, Any]]) -> None:
    """What strict servers (OpenAI, vLLM) demand: every tool call answered, in order, by one tool message
    right after its assistant message, and no tool message without a call."""
    open_calls: list[str] = []
    for message in messages:
        if message["role"] == "tool":
            assert open_calls and message["tool_call_id"] == open_calls.pop(0), messages
            assert isinstance(message["content"], str)
            continue
        assert not open_calls, f"unanswered tool calls {open_calls} before a {message['role']} message"
        if message["role"] == "assistant":
            for call in message.get("tool_calls") or []:
                assert isinstance(call["function"]["arguments"], str)  # strict servers reject objects
                open_calls.append(call["id"])
    assert not open_calls, f"unanswered tool calls {open_calls} at the end"


class Harness:
    def __init__(self, server: FakeLLMServer, mode: str = "ask", **agent_options: Any) -> None:
        config = Config()
        config.llm.base_url = server.base_url
        config.llm.model = "fake-model"
        self.server = server
        self.provider = OpenAICompatibleProvider(config)
        self.calls: list[dict[str, Any]] = []
        self.store: dict[str, str] = {}
        self.registry = ToolRegistry([
            ToolDefinition("lookup", "Look a key up.", {"type": "object", "properties": {"key": {"type": "string"}}},
                           self.lookup),
            ToolDefinition("store", "Store a value.", {"type": "object", "properties": {}}, self.put, kind="write",
                           preview=lambda key, value: f"+ {key} = {value}"),
            ToolDefinition("shout", "Run a command.", {"type": "object", "properties": {}}, self.shout,
                           kind="command"),
        ])
        self.conversation = Conversation("You are a test.")
        self.policy = ApprovalPolicy(mode)
        self.agent = Agent(self.provider, self.registry, self.conversation, self.policy,
                           AgentConfig(**agent_options))

    def lookup(self, key: str) -> str:
        self.calls.append({"lookup": key})
        if key == "boom":
            raise RuntimeError("the lookup table is on fire")
        return f"value of {key}"

    def put(self, key: str, value: str) -> str:
        self.store[key] = value
        return f"stored {key}"

    async def shout(self, text: str = "", seconds: float = 0.0) -> str:
        await asyncio.sleep(seconds)
        return text.upper()

    def turn(self, message: str, answer: Answer | None = None) -> list[Event]:
        return run_turn(self, message, answer)

    async def aclose(self) -> None:
        await self.provider.aclose()

    @property
    def last_messages(self) -> list[dict[str, Any]]:
        return self.server.chat_requests[-1].json["messages"]


def kinds(events: list[Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def tool_results(events: list[Event]) -> list[ToolResult]:
    return [e for e in events if isinstance(e, ToolResult)]


@pytest.fixture
def server(fake_server: FakeLLMServer) -> FakeLLMServer:
    return fake_server


def test_a_text_answer_streams_and_is_kept(server: FakeLLMServer) -> None:
    server.enqueue(reply.text("Hello there, friend.", chunks=4))
    h = Harness(server)
    events = h.turn("hi")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there, friend."
    assert len([e for e in events if isinstance(e, TextDelta)]) == 4
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    assert any(isinstance(e, UsageUpdate) for e in events)
    assert h.conversation.messages[-1] == {"role": "assistant", "content": "Hello there, friend."}
    request = server.chat_requests[0]
    assert request.headers["x-correlation-id"] == h.conversation.correlation_id
    assert [m["role"] for m in request.json["messages"]] == ["system", "user"]
    assert {t["function"]["name"] for t in request.json["tools"]} == {"lookup", "store", "shout"}


def test_tool_round_trip(server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("lookup", {"key": "alpha"}, id="call00001"), reply.text("alpha is known"))
    h = Harness(server)
    events = h.turn("what is alpha?")
    assert kinds(events).count("ToolCallStarted") == 1
    started = next(e for e in events if isinstance(e, ToolCallStarted))
    assert started.arguments == {"key": "alpha"} and started.name == "lookup"
    assert tool_results(events)[0].output == "value of alpha" and not tool_results(events)[0].is_error
    second = server.chat_requests[1].json["messages"]
    assert second[-1] == {"role": "tool", "tool_call_id": "call00001", "content": "value of alpha"}
    assert second[-2]["tool_calls"][0]["function"] == {"name": "lookup", "arguments": '{"key":"alpha"}'}
    assert len({r.headers["x-correlation-id"] for r in server.chat_requests}) == 1
    assert_strictly_valid(h.conversation.messages)


def test_several_calls_in_one_answer_all_run_in_order(server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_calls([{"name": "lookup", "arguments": {"key": "a"}},
                                     {"name": "lookup", "arguments": {"key": "b"}}]), reply.text("done"))
    h = Harness(server)
    h.turn("both")
    assert h.calls == [{"lookup": "a"}, {"lookup": "b"}]
    assert_strictly_valid(h.last_messages)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (reply.tool_call("lookup", '{"key": "a"'), "Invalid JSON in the tool arguments"),
        (reply.tool_call("lookup", "[1, 2]"), "must be a JSON object"),
        (reply.tool_call("teleport", {"to": "mars"}), "Unknown tool 'teleport'"),
        (reply.tool_call("lookup", {"wrong": "x"}), "Invalid arguments for lookup"),
        (reply.tool_call("lookup", {"key": "boom"}), "the lookup table is on fire"),
        (reply.tool_call("lookup", '{"key": "lo', finish_reason="length"), "cut off"),
        (reply.tool_call("lookup", '{"key": ' + "[" * 100_000 + "]" * 100_000 + "}"), "nested more than 64 levels"),
        (reply.tool_call("lookup", '{"key": ' + '{"a": ' * 500 + "1" + "}" * 500 + "}"),
         "nested more than 64 levels"),
    ],
)
def test_bad_calls_become_error_results_and_the_turn_goes_on(
    server: FakeLLMServer, call: dict[str, Any], expected: str
) -> None:
    server.enqueue(call, reply.text("sorry"))
    h = Harness(server)
    events = h.turn("go")
    result = tool_results(events)[0]
    assert result.is_error and expected in result.output
    assert events[-1] == TurnDone("stop")
    assert_strictly_valid(h.last_messages)
    assert h.last_messages[-1]["content"] == result.output


def test_truncated_arguments_are_never_executed(server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("store", {"key": "k", "value": "v"}, finish_reason="length"), reply.text("ok"))
    h = Harness(server, mode="full-auto")
    h.turn("store it")
    assert h.store == {}


def test_approval_yes_no_and_always(server: FakeLLMServer) -> None:
    server.enqueue(
        reply.tool_call("store", {"key": "a", "value": "1"}), reply.text("stored a"),
        reply.tool_call("store", {"key": "b", "value": "2"}), reply.text("not stored"),
        reply.tool_call("store", {"key": "c", "value": "3"}), reply.text("stored c"),
        reply.tool_call("store", {"key": "d", "value": "4"}), reply.text("stored d without asking"),
    )
    h = Harness(server)
    asked: list[ApprovalRequest] = []

    events = h.turn("a", lambda r: (asked.append(r), r.approve()))
    assert asked[0].preview == "+ a = 1" and asked[0].kind == "write" and asked[0].tool == "store"
    assert h.store == {"a": "1"} and "ApprovalRequest" in kinds(events)

    events = h.turn("b", lambda r: r.deny("use the other table"))
    assert "b" not in h.store
    assert tool_results(events)[0].output == "The user denied this store call. Reason: use the other table"

    h.turn("c", lambda r: r.approve(always=True))
    events = h.turn("d")  # no answer callback: asking again would fail the test
    assert h.store == {"a": "1", "c": "3", "d": "4"} and "ApprovalRequest" not in kinds(events)
    assert_strictly_valid(h.last_messages)


def test_always_covers_that_tool_only_and_a_scoped_tool_only_that_value(server: FakeLLMServer) -> None:
    h = Harness(server)
    h.registry.register(ToolDefinition("say", "Say it.", {"type": "object", "properties": {}}, h.shout,
                                       kind="command", always_scope="text"))
    server.enqueue(reply.tool_call("shout", {"text": "a"}), reply.tool_call("shout", {"text": "b"}),
                   reply.tool_call("say", {"text": "hi"}), reply.tool_call("say", {"text": "hi"}),
                   reply.tool_call("say", {"text": "bye"}), reply.tool_call("store", {"key": "k", "value": "v"}),
                   reply.text("done"))
    asked: list[tuple[str, str]] = []
    h.turn("go", lambda r: (asked.append((r.tool, r.always_covers)), r.approve(always=True)))
    # shout b and the second say hi ran without asking; say bye and store (another tool, another kind) asked.
    assert asked == [("shout", "every shout call"), ("say", "this exact text"), ("say", "this exact text"),
                     ("store", "every store call")]


def test_modes(server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("store", {"key": "a", "value": "1"}), reply.text("refused"))
    h = Harness(server, mode="read-only")
    events = h.turn("write")
    assert h.store == {} and "approval mode is 'read-only'" in tool_results(events)[0].output

    server.enqueue(reply.tool_call("store", {"key": "a", "value": "1"}), reply.text("ok"),
                   reply.tool_call("shout", {"text": "hey"}), reply.text("ok"))
    h = Harness(server, mode="auto-edit")
    h.turn("write")
    assert h.store == {"a": "1"}
    asked: list[str] = []
    events = h.turn("command", lambda r: (asked.append(r.tool), r.approve()))
    assert asked == ["shout"] and tool_results(events)[0].output == "HEY"


def test_same_call_three_times_stops_the_turn(server: FakeLLMServer) -> None:
    server.enqueue(*[reply.tool_call("lookup", {"key": "same"}) for _ in range(5)])
    h = Harness(server)
    events = h.turn("loop")
    assert h.calls == [{"lookup": "same"}] * 2
    assert events[-1] == TurnDone("repeated_call")
    assert any(isinstance(e, Notice) and "3 times in a row" in e.text for e in events)
    assert_strictly_valid(h.conversation.messages)


def test_max_iterations(server: FakeLLMServer) -> None:
    server.enqueue(*[reply.tool_call("lookup", {"key": str(i)}) for i in range(5)])
    h = Harness(server, max_iterations=3)
    events = h.turn("loop")
    assert len(h.calls) == 3 and events[-1] == TurnDone("max_iterations")
    assert_strictly_valid(h.conversation.messages)


def test_provider_errors_end_the_turn_readably_and_the_next_turn_works(server: FakeLLMServer) -> None:
    server.enqueue(reply.error(401, "Incorrect API key provided"), reply.text("fine now"))
    h = Harness(server)
    events = h.turn("first")
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "authentication" in errors[0].message.lower()
    assert events[-1] == TurnDone("error")
    events = h.turn("second")
    assert events[-1] == TurnDone("stop")
    roles = [m["role"] for m in h.last_messages]
    assert roles == ["system", "user", "assistant", "user"]


def test_cancelling_mid_stream_keeps_the_partial_answer_and_a_valid_history(server: FakeLLMServer) -> None:
    server.enqueue(reply.text("one two three four five six", chunks=6, delay=0.5), reply.text("next answer"))
    h = Harness(server)

    async def stop_after_first_delta() -> None:
        async for event in h.agent.run("count"):
            if isinstance(event, TextDelta):
                break  # closes the generator, as a face does on Stop

    asyncio.run(stop_after_first_delta())
    assert h.conversation.messages[-1]["role"] == "assistant"
    assert h.conversation.messages[-1]["content"].endswith("[interrupted]")
    events = h.turn("again")
    assert events[-1] == TurnDone("stop")
    assert [m["role"] for m in h.last_messages] == ["system", "user", "assistant", "user"]


def test_cancelling_during_a_tool_answers_every_open_call(server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_calls([{"name": "shout", "arguments": {"text": "a", "seconds": 30}},
                                     {"name": "lookup", "arguments": {"key": "b"}}]), reply.text("after"))
    h = Harness(server, mode="full-auto")

    async def cancel_while_running() -> None:
        async def consume() -> None:
            async for event in h.agent.run("slow"):
                if isinstance(event, ToolCallStarted):
                    started.set()

        started = asyncio.Event()
        task = asyncio.create_task(consume())
        await started.wait()
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await h.provider.aclose()

    asyncio.run(cancel_while_running())
    tools = [m for m in h.conversation.messages if m["role"] == "tool"]
    assert [m["content"].startswith("interrupted") for m in tools] == [True, True]
    assert h.calls == []
    h.turn("go on")
    assert_strictly_valid(h.last_messages)


def test_history_is_shortened_before_it_overflows(server: FakeLLMServer) -> None:
    h = Harness(server, context_window=2000)
    big = "x" * 3000
    for i in range(4):
        server.enqueue(reply.tool_call("lookup", {"key": f"{i}" + big[:10]}), reply.text("ok"))
    h.registry.register(ToolDefinition("lookup", "Big output.", {"type": "object", "properties": {}},
                                       lambda key: big))
    notices: list[str] = []
    for i in range(4):
        notices += [e.text for e in h.turn(f"turn {i}") if isinstance(e, Notice)]
    assert any("shortened to fit the model's context window" in n for n in notices)
    assert h.conversation.estimate_tokens() < 2000
    assert_strictly_valid(h.last_messages)
    assert h.last_messages[0]["role"] == "system"


def test_context_overflow_from_the_server_shortens_and_retries_once(server: FakeLLMServer) -> None:
    h = Harness(server, context_window=100_000)
    server.enqueue(reply.text("a" * 4000), reply.text("b" * 4000))
    h.turn("one")
    h.turn("two")
    server.enqueue(reply.error(400, "This model's maximum context length is 2048 tokens. However, you requested "
                                    "4000 tokens", code="context_length_exceeded"),
                   reply.text("fits now"))
    events = h.turn("three")
    assert events[-1] == TurnDone("stop")
    assert any(isinstance(e, Notice) for e in events)
    assert len(server.chat_requests[-1].json["messages"]) < len(server.chat_requests[-2].json["messages"])


def test_clearing_makes_a_new_correlation_id(server: FakeLLMServer) -> None:
    h = Harness(server)
    h.turn("one")
    first = h.conversation.correlation_id
    h.conversation.clear()
    h.turn("two")
    ids = [r.headers["x-correlation-id"] for r in server.chat_requests]
    assert ids == [first, h.conversation.correlation_id] and ids[0] != ids[1]


def test_retries_are_announced_while_they_wait(server: FakeLLMServer) -> None:
    server.enqueue(reply.error(429, "slow down", headers={"retry-after": "0"}), reply.text("made it"))
    h = Harness(server)
    events = h.turn("hi")
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert notices == ["rate limited (429), retrying in 0.0 s (1/4)"]
    assert events[-1] == TurnDone("stop")


def test_one_turn_at_a_time_per_session(server: FakeLLMServer) -> None:
    server.enqueue(reply.text("slow answer", chunks=4, delay=0.2))
    h = Harness(server)

    async def two_at_once() -> list[Event]:
        first = h.agent.run("first")
        await first.__anext__()  # the first turn is running
        second = [event async for event in h.agent.run("second")]
        rest = [event async for event in first]
        await h.provider.aclose()
        return second + rest

    events = asyncio.run(two_at_once())
    assert isinstance(events[0], ErrorEvent) and "Another request is still running" in events[0].message
    assert events[1] == TurnDone("busy") and events[-1] == TurnDone("stop")
    assert [m["content"] for m in h.conversation.messages if m["role"] == "user"] == ["first"]
    h.turn("third")  # free again
    assert h.conversation.messages[-1]["role"] == "assistant"


def test_a_dropped_stream_keeps_what_the_user_saw(server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("lookup", {"key": "a"}),
                   reply.text("The value is alpha and the rest", chunks=6, drop_after=3),
                   reply.text("again"))
    h = Harness(server)
    events = h.turn("what is a?")
    assert events[-1] == TurnDone("error")
    shown = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert shown and h.conversation.messages[-1] == {"role": "assistant",
                                                     "content": f"{shown}\n[the request failed]"}
    h.turn("try again")
    assert_strictly_valid(h.last_messages)


def test_an_answer_cut_off_mid_stream_is_an_error_and_marked_in_the_history(server: FakeLLMServer) -> None:
    server.enqueue(reply.text("The fix is to change", chunks=3, cut_off=True), reply.text("ok"))
    h = Harness(server)
    events = h.turn("fix it")
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert len(errors) == 1 and "cut off" in errors[0].message
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "cut_off"
    last = h.conversation.messages[-1]
    assert last["role"] == "assistant"
    assert last["content"].startswith("The fix is to change") and "[the answer was cut off here" in last["content"]
    h.turn("go on")  # the next request carries the marked answer, so the model knows it was cut
    assert "[the answer was cut off here" in h.last_messages[-2]["content"]


def test_tool_calls_of_a_cut_off_answer_are_not_run(server: FakeLLMServer) -> None:
    server.enqueue(reply.chunks([{"choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "c1", "type": "function", "function": {"name": "lookup", "arguments": '{"key": "a"}'}}]},
        "finish_reason": None}]}], done=False))
    h = Harness(server)
    events = h.turn("look a up")
    assert h.calls == [] and not tool_results(events)
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "cut_off"
    assert_strictly_valid(h.conversation.messages)


def test_a_chunk_nested_too_deeply_is_a_clear_error_not_a_crash(server: FakeLLMServer) -> None:
    deep = '{"choices": [{"delta": {"content": ' + "[" * 100_000 + "]" * 100_000 + "}}]}"
    server.enqueue(reply.raw_sse([f"data: {deep}\n\n", "data: [DONE]\n\n"]), reply.text("fine again"))
    h = Harness(server)
    events = h.turn("go")
    errors = [e for e in events if isinstance(e, ErrorEvent)]
    assert errors and "nested too deeply" in errors[0].message
    assert isinstance(events[-1], TurnDone)
    assert "fine again" in "".join(e.text for e in h.turn("again") if isinstance(e, TextDelta))


def test_thousands_of_tool_calls_in_one_answer_run_only_up_to_the_cap(server: FakeLLMServer) -> None:
    calls = [{"name": "lookup", "arguments": {"key": f"k{i}"}} for i in range(3000)]
    server.enqueue(reply.tool_calls(calls), reply.text("done"))
    h = Harness(server)
    events = h.turn("look everything up")
    assert len(h.calls) == 64 and h.calls[-1] == {"lookup": "k63"}
    assert any(isinstance(e, Notice) and "3000 tool calls" in e.text and "first 64" in e.text for e in events)
    assert len(tool_results(events)) == 64, "the calls not run are not shown one by one"
    messages = h.last_messages
    assert_strictly_valid(messages)
    answers = [m["content"] for m in messages if m["role"] == "tool"]
    assert len(answers) == 3000
    assert answers[63] == "value of k63" and answers[64].startswith("Not executed: the answer asked for more than 64")
    assert events[-1] == TurnDone("stop")


@pytest.mark.timeout(120)
def test_shortening_thousands_of_messages_measures_each_message_a_bounded_number_of_times(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from auto_coder_nb.state import conversation as module

    conversation = Conversation("system")
    for turn in range(5000):
        conversation.add_user(f"question {turn}")
        calls = [ToolCall(f"call{turn}", "lookup", '{"key": "x"}')]
        conversation.add_assistant("", calls)
        conversation.add_tool_result(f"call{turn}", "output " * 100)
        conversation.add_assistant(f"answer {turn}")
    measured = 0
    size = module._size

    def counting(*args: Any) -> int:
        nonlocal measured
        measured += 1
        return size(*args)

    monkeypatch.setattr(module, "_size", counting)
    changed = conversation.shorten(20_000)
    assert measured <= 2 * 20_001, f"{measured} measurements for 20,001 messages"
    assert changed > 0 and conversation.estimate_tokens() <= 20_000
    assert conversation.messages[0] == {"role": "system", "content": "system"}
    assert conversation.messages[-4] == {"role": "user", "content": "question 4999"}
    assert_strictly_valid(conversation.messages)


def test_a_tool_result_that_cannot_become_text_is_a_tool_error() -> None:
    registry = ToolRegistry([
        ToolDefinition("pairs", "Returns tuple keys.", {"type": "object", "properties": {}}, lambda: {(1, 2): 3}),
    ])
    with pytest.raises(ToolError, match="pairs returned a result that cannot be shown as text"):
        asyncio.run(registry.call("pairs", {}))
