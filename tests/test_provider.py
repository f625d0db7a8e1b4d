"""The OpenAI-compatible provider against the project's test server over real HTTP.

Each quirk real servers have is scripted on the wire and the assembled Completion is checked.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import string
import threading
import time
from typing import Any

import pytest

from auto_coder_nb.config import DEFAULT_BASE_URL, Config
from auto_coder_nb.errors import (
    AuthenticationFailed,
    BadRequest,
    ConnectionFailed,
    ConnectionRefused,
    ContextOverflow,
    EndpointNotFound,
    HostNotFound,
    ModelNotFound,
    ProviderError,
    RateLimited,
    RequestTimeout,
    ServerError,
    StreamCutOff,
    StreamError,
)
from auto_coder_nb.providers.base import Completion, ReasoningChunk, Retrying, TextChunk, ToolDefinition
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.testing.ports import free_port
from auto_coder_nb.testing.server import FakeLLMServer, reply

API_KEY = "sk-test-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "hi"}]
READ_FILE = ToolDefinition("read_file", "Read a file", {"type": "object", "properties": {"path": {"type": "string"}}},
                           handler=lambda path: path)


def make_provider(server: FakeLLMServer, **kwargs: Any) -> OpenAICompatibleProvider:
    config = Config()
    config.llm.base_url = server.base_url
    config.llm.model = "test-model"
    config.llm.api_key = API_KEY
    kwargs.setdefault("retry_base_delay", 0.0)
    return OpenAICompatibleProvider(config, **kwargs)


async def collect(provider: OpenAICompatibleProvider, tools: list[ToolDefinition] | None = None,
                  headers: dict[str, str] | None = None) -> tuple[list[Any], Completion]:
    events = [event async for event in provider.chat(MESSAGES, tools, headers=headers)]
    *streamed, completion = events
    assert isinstance(completion, Completion)
    assert not any(isinstance(event, Completion) for event in streamed)
    return streamed, completion


def chat(provider: OpenAICompatibleProvider, tools: list[ToolDefinition] | None = None,
         headers: dict[str, str] | None = None) -> tuple[list[Any], Completion]:
    async def run() -> tuple[list[Any], Completion]:
        try:
            return await collect(provider, tools, headers)
        finally:
            await provider.aclose()
    return asyncio.run(run())


def chunk(delta: dict[str, Any] | None = None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": delta or {}, "finish_reason": finish}], **extra}


def call(index: int | None = None, id: str | None = None, name: str | None = None,
         arguments: Any = None) -> dict[str, Any]:
    fragment: dict[str, Any] = {"function": {}}
    if index is not None:
        fragment["index"] = index
    if id is not None:
        fragment["id"] = id
        fragment["type"] = "function"
    if name is not None:
        fragment["function"]["name"] = name
    if arguments is not None:
        fragment["function"]["arguments"] = arguments
    return fragment


def calls_of(completion: Completion) -> list[tuple[str, str, str]]:
    return [(c.id, c.name, c.arguments) for c in completion.tool_calls]


# -- text, reasoning, usage, request shape ------------------------------------------------------


def test_streams_text_and_reports_usage(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("Hello, world", chunks=4, usage={"prompt_tokens": 7, "completion_tokens": 4,
                                                                     "total_tokens": 11}))
    streamed, completion = chat(make_provider(fake_server), headers={"x-correlation-id": "conv-1"})
    assert [type(e) for e in streamed] == [TextChunk] * 4
    assert "".join(e.text for e in streamed) == completion.content == "Hello, world"
    assert completion.finish_reason == "stop" and completion.tool_calls == []
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        7, 4, 11)
    [request] = fake_server.requests
    assert request.headers["x-correlation-id"] == "conv-1"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.json == {"model": "test-model", "messages": MESSAGES, "stream": True, "max_tokens": 4096,
                            "stream_options": {"include_usage": True}}


def test_tools_and_extra_params_are_sent(fake_server: FakeLLMServer) -> None:
    provider = make_provider(fake_server)
    provider.extra_params = {"temperature": 0.2}
    chat(provider, tools=[READ_FILE])
    body = fake_server.chat_requests[0].json
    assert body["temperature"] == 0.2
    assert body["tools"] == [READ_FILE.schema()]


def test_reasoning_content_and_reasoning_are_kept_apart_from_the_answer(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"role": "assistant", "reasoning_content": "Think "}),
        chunk({"reasoning": "more. "}),
        chunk({"reasoning": {"text": "Done."}}),
        chunk({"content": "Answer"}),
        chunk(finish="stop"),
    ]))
    streamed, completion = chat(make_provider(fake_server))
    assert [e.text for e in streamed if isinstance(e, ReasoningChunk)] == ["Think ", "more. ", "Done."]
    assert [e.text for e in streamed if isinstance(e, TextChunk)] == ["Answer"]
    assert (completion.reasoning, completion.content) == ("Think more. Done.", "Answer")


def test_deltas_crowding_one_read_are_merged_in_order(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("t" * 200, reasoning="r" * 200, chunks=200))  # one write: 400 events
    streamed, completion = chat(make_provider(fake_server))
    assert len(streamed) < 20  # merged per network read; never more than one event per kind and read
    kinds = [type(e) for e in streamed]
    assert kinds == sorted(kinds, key=lambda kind: kind is TextChunk)  # all reasoning first, then text
    assert "".join(e.text for e in streamed if isinstance(e, ReasoningChunk)) == completion.reasoning == "r" * 200
    assert "".join(e.text for e in streamed if isinstance(e, TextChunk)) == completion.content == "t" * 200


def test_usage_only_final_chunk_with_empty_choices(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"content": "ok"}), chunk(finish="stop"),
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
    ]))
    _, completion = chat(make_provider(fake_server))
    assert completion.content == "ok"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens, completion.usage.total_tokens) == (
        3, 1, 4)


def test_no_usage_at_all_is_none(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("ok", usage=False))
    _, completion = chat(make_provider(fake_server))
    assert completion.content == "ok" and completion.usage is None


# -- tool calls ------------------------------------------------------------------------------------


def test_fragments_keyed_by_index_with_interleaved_calls(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(0, "call_a", "read_file", "")]}),
        chunk({"tool_calls": [call(1, "call_b", "list_directory", "")]}),
        chunk({"tool_calls": [call(0, arguments='{"pa')]}),
        chunk({"tool_calls": [call(1, arguments='{"path": ".')]}),
        chunk({"tool_calls": [call(0, arguments='th": "a.txt"}')]}),
        chunk({"tool_calls": [call(1, arguments='"}')]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert calls_of(completion) == [("call_a", "read_file", '{"path": "a.txt"}'),
                                    ("call_b", "list_directory", '{"path": "."}')]
    assert completion.finish_reason == "tool_calls"


def test_calls_without_index_are_not_merged(fake_server: FakeLLMServer) -> None:
    # Ollama: each call whole in one chunk, no index; then finish_reason "stop".
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(id="call_1", name="read_file", arguments='{"path": "a"}')]}),
        chunk({"tool_calls": [call(id="call_2", name="read_file", arguments='{"path": "b"}')]}),
        chunk(finish="stop"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert calls_of(completion) == [("call_1", "read_file", '{"path": "a"}'), ("call_2", "read_file", '{"path": "b"}')]
    assert completion.finish_reason == "tool_calls"


def test_fragments_without_index_or_id_continue_the_last_call(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(name="read_file", arguments='{"path":')]}),
        chunk({"tool_calls": [call(arguments=' "a"}')]}),
        chunk({"tool_calls": [call(name="list_directory", arguments="{}")]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert [(c.name, c.arguments) for c in completion.tool_calls] == [
        ("read_file", '{"path": "a"}'), ("list_directory", "{}")]


def test_id_and_name_repeated_on_every_fragment(fake_server: FakeLLMServer) -> None:
    # Fireworks / NIM: naive concatenation gives "read_fileread_file" and a doubled id.
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(0, "call_x", "read_file", '{"path"')]}),
        chunk({"tool_calls": [call(0, "call_x", "read_file", ': "a.txt"}')]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert calls_of(completion) == [("call_x", "read_file", '{"path": "a.txt"}')]


def test_id_changing_between_fragments_of_one_call(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(0, "id-1", "read_file", '{"path": ')]}),
        chunk({"tool_calls": [call(0, "id-2", arguments='"a"}')]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert calls_of(completion) == [("id-1", "read_file", '{"path": "a"}')]


def test_index_reused_for_a_second_call(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(0, "id-1", "read_file", '{"path": "a"}')]}),
        chunk({"tool_calls": [call(0, "id-2", "read_file", '{"path": "b"}')]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert calls_of(completion) == [("id-1", "read_file", '{"path": "a"}'), ("id-2", "read_file", '{"path": "b"}')]


def test_whole_call_in_one_chunk_with_finish_in_the_same_chunk(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"content": "Let me look.", "tool_calls": [call(0, "call_1", "read_file", '{"path": "x"}')]},
              finish="tool_calls"),
    ]))
    streamed, completion = chat(make_provider(fake_server))
    assert [e.text for e in streamed] == ["Let me look."]
    assert calls_of(completion) == [("call_1", "read_file", '{"path": "x"}')]
    assert completion.finish_reason == "tool_calls"


def test_stop_after_tool_calls_means_tool_calls_but_length_is_kept(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(
        reply.tool_call("read_file", {"path": "a"}, finish_reason="stop"),
        reply.tool_call("write_file", '{"path": "a", "content": "trunc', finish_reason="length"),
    )
    provider = make_provider(fake_server)
    assert chat(provider)[1].finish_reason == "tool_calls"
    truncated = chat(provider)[1]
    assert truncated.finish_reason == "length"  # the agent must not run a cut-off call
    assert truncated.tool_calls[0].arguments == '{"path": "a", "content": "trunc'


def test_arguments_as_object_or_empty_string(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(0, "c1", "read_file", {"path": "ü.txt"})]}),
        chunk({"tool_calls": [call(1, "c2", "list_directory", "")]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    assert calls_of(completion) == [("c1", "read_file", '{"path": "ü.txt"}'), ("c2", "list_directory", "{}")]


def test_missing_ids_are_minted_as_nine_alphanumerics(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([
        chunk({"tool_calls": [call(0, name="a", arguments="{}"), call(1, name="b", arguments="{}")]}),
        chunk(finish="tool_calls"),
    ]))
    _, completion = chat(make_provider(fake_server))
    ids = [c.id for c in completion.tool_calls]
    assert len(set(ids)) == 2
    assert all(len(i) == 9 and set(i) <= set(string.ascii_letters + string.digits) for i in ids)


# -- SSE framing -----------------------------------------------------------------------------------


def test_comments_event_lines_data_without_space_and_crlf(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.raw_sse([
        ": OPENROUTER PROCESSING\r\n\r\n",
        'event: message\r\nid: 1\r\ndata:{"choices":[{"index":0,"delta":{"content":"Hel"}}]}\r\n\r\n',
        'retry: 100\r\ndata: {"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\r\n\r\n',
        ": trailing comment\r\n\r\n",
        "data: [DONE]\r\n\r\n",
    ]))
    streamed, completion = chat(make_provider(fake_server))
    assert [e.text for e in streamed] == ["Hel", "lo"]
    assert completion.content == "Hello" and completion.finish_reason == "stop"


def test_event_split_across_network_reads(fake_server: FakeLLMServer) -> None:
    event = 'data: {"choices":[{"index":0,"delta":{"content":"split ü"}}]}\r\n\r\n'.encode()
    cut = event.index("ü".encode()) + 1  # inside a multi-byte character, and later between \r and \n
    pieces = [event[:10], event[10:cut], event[cut:-3], event[-3:-1], event[-1:], b"data: [DONE]\n\n"]
    fake_server.enqueue(reply.raw_sse([p.decode("latin-1") for p in pieces], encoding="latin-1", delay=0.02))
    streamed, completion = chat(make_provider(fake_server))
    assert [e.text for e in streamed] == ["split ü"]
    assert completion.content == "split ü"


def test_event_split_across_reads_at_every_position(fake_server: FakeLLMServer) -> None:
    text = 'data: {"choices":[{"index":0,"delta":{"content":"abc"}}]}\r\n\r\ndata: [DONE]\r\n\r\n'
    for cut in (3, 5, 6, 30, len(text) - 21, len(text) - 20, len(text) - 19, len(text) - 3):
        fake_server.enqueue(reply.raw_sse([text[:cut], text[cut:]], delay=0.01))
    provider = make_provider(fake_server)
    for _ in range(8):
        assert chat(provider)[1].content == "abc"


def test_multi_line_data_is_joined(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.raw_sse(['data: {"choices":[{"index":0,"finish_reason":"stop",\n'
                                       'data: "delta":{"content":"two lines"}}]}\n\n']))
    assert chat(make_provider(fake_server))[1].content == "two lines"


def test_stream_without_done(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([chunk({"content": "no done"}), chunk(finish="stop")], done=False))
    _, completion = chat(make_provider(fake_server))
    assert (completion.content, completion.finish_reason) == ("no done", "stop")


def test_last_event_without_blank_line(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.raw_sse(['data: {"choices":[{"index":0,"delta":{"content":"end"},'
                                       '"finish_reason":"stop"}]}']))
    assert chat(make_provider(fake_server))[1].content == "end"


def test_json_body_although_streaming_was_asked(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.json_body(reply.completion(
        "whole", reasoning="why", tool_calls=[{"name": "read_file", "arguments": {"path": "a"}, "id": "c1"}],
        usage={"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7})))
    streamed, completion = chat(make_provider(fake_server))
    assert [type(e) for e in streamed] == [ReasoningChunk, TextChunk]
    assert (completion.content, completion.reasoning) == ("whole", "why")
    assert calls_of(completion) == [("c1", "read_file", '{"path":"a"}')]
    assert completion.usage.total_tokens == 7


def test_error_object_inside_a_200_stream(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(
        reply.chunks([chunk({"content": "partial"}), {"error": {"message": "upstream exploded", "code": 502}}]),
        reply.raw_sse(['{"error":{"type":"exceed_context_size_error","message":"request (9000 tokens) exceeds the '
                       'available context size (8192 tokens)","n_prompt_tokens":9000,"n_ctx":8192}}']),
    )
    provider = make_provider(fake_server)
    with pytest.raises(StreamError, match="upstream exploded"):
        chat(provider)
    with pytest.raises(ContextOverflow, match="context window"):
        chat(provider)
    assert len(fake_server.requests) == 2  # neither is retried


def test_non_streaming_path_gives_the_same_completion(fake_server: FakeLLMServer) -> None:
    spec = reply.tool_calls([{"name": "read_file", "arguments": {"path": "a"}, "id": "c1"}], content="Reading.",
                            usage={"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3})
    fake_server.enqueue(spec, spec)
    _, streamed = chat(make_provider(fake_server))
    _, whole = chat(make_provider(fake_server, stream=False))
    assert streamed == whole
    assert fake_server.requests[1].json["stream"] is False and "stream_options" not in fake_server.requests[1].json


def test_extra_params_never_replace_what_the_provider_sets(fake_server: FakeLLMServer) -> None:
    """Set in code past load_config (which refuses them): model, messages, stream and tool_choice are still the
    provider's own."""
    config = make_provider(fake_server).config
    config.llm.extra_params = {"stream": False, "top_p": 0.5, "model": "other", "tool_choice": "none",
                               "messages": [{"role": "user", "content": "injected"}]}
    assert chat(OpenAICompatibleProvider(config))[1].content == "You said: hi"
    body = fake_server.requests[0].json
    assert body["stream"] is True and body["top_p"] == 0.5 and body["model"] == config.llm.model
    assert body["messages"][-1]["content"] == "hi" and "tool_choice" not in body


# -- learning from rejections ---------------------------------------------------------------------


def test_stream_options_rejected_is_dropped_and_remembered(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(400, "Unrecognized request argument supplied: stream_options"))
    provider = make_provider(fake_server)
    assert chat(provider)[1].content == "You said: hi"
    assert chat(provider)[1].content == "You said: hi"
    sent = [r.json for r in fake_server.requests]
    assert [("stream_options" in body) for body in sent] == [True, False, False]


def test_tools_with_stream_unsupported_falls_back_to_non_streaming(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(500, "Cannot use tools with stream"),
                        reply.tool_call("read_file", {"path": "a"}), reply.text("plain"))
    provider = make_provider(fake_server)
    assert calls_of(chat(provider, tools=[READ_FILE])[1])[0][1:] == ("read_file", '{"path":"a"}')
    assert chat(provider)[1].content == "plain"
    streams = [r.json["stream"] for r in fake_server.chat_requests]
    assert streams == [True, False, True]  # without tools, streaming is still used


# -- retries -----------------------------------------------------------------------------------------


def test_retries_429_and_5xx_honouring_retry_after(fake_server: FakeLLMServer) -> None:
    past = email.utils.formatdate(time.time() - 10, usegmt=True)
    fake_server.enqueue(
        reply.error(429, "slow down", headers={"retry-after": "0"}),
        reply.error(503, "busy", headers={"retry-after-ms": "10"}),
        reply.error(502, "bad gateway", headers={"Retry-After": past}),
        reply.error(408, "timeout"),
        reply.text("finally"),
    )
    streamed, completion = chat(make_provider(fake_server))
    assert completion.content == "finally"
    assert len(fake_server.requests) == 5
    notices = [event.message for event in streamed if isinstance(event, Retrying)]
    assert notices[0] == "rate limited (429), retrying in 0.0 s (1/4)"
    assert notices[1] == "server error (503), retrying in 0.0 s (2/4)"
    assert len(notices) == 4


def test_gives_up_after_four_retries(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(*[reply.error(429, "slow down", headers={"retry-after": "0"})] * 6)
    with pytest.raises(RateLimited, match="429"):
        chat(make_provider(fake_server))
    assert len(fake_server.requests) == 5


def test_retry_after_is_capped_at_sixty_seconds(fake_server: FakeLLMServer) -> None:
    async def first_retry_notice() -> str:
        provider = make_provider(fake_server)
        answer = provider.chat(MESSAGES)
        try:
            event = await anext(answer)  # told before the wait, which is not waited for here
        finally:
            await answer.aclose()
            await provider.aclose()
        assert isinstance(event, Retrying)
        return event.message

    fake_server.enqueue(reply.error(503, "busy", headers={"retry-after": "3600"}))
    assert "retrying in 60.0 s" in asyncio.run(first_retry_notice())


def test_backoff_grows_exponentially_with_jitter(fake_server: FakeLLMServer) -> None:
    provider = make_provider(fake_server, retry_base_delay=0.5)
    for retries, (low, high) in enumerate([(0.375, 0.5), (0.75, 1.0), (1.5, 2.0), (3.0, 4.0)], start=1):
        delays = {provider.retry.delay(retries) for _ in range(20)}
        assert all(low <= d <= high for d in delays) and len(delays) > 1
    assert provider.retry.delay(30) == 60.0
    assert provider.retry.delay(1, retry_after=2.5) == 2.5


@pytest.mark.parametrize("status,error_type", [(400, BadRequest), (401, AuthenticationFailed),
                                               (403, AuthenticationFailed), (404, EndpointNotFound)])
def test_client_errors_are_never_retried(fake_server: FakeLLMServer, status: int, error_type: type) -> None:
    fake_server.enqueue(reply.error(status, "nope", headers={"retry-after": "0"}))
    with pytest.raises(error_type):
        chat(make_provider(fake_server))
    assert len(fake_server.requests) == 1


def test_x_should_retry_false_is_obeyed(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(503, "maintenance", headers={"x-should-retry": "false"}))
    with pytest.raises(ServerError, match="maintenance"):
        chat(make_provider(fake_server))
    assert len(fake_server.requests) == 1


def test_dropped_connection_before_any_answer_is_retried(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("lost", chunks=2, drop_after=1), reply.text("second try"))
    assert chat(make_provider(fake_server))[1].content == "second try"
    assert len(fake_server.requests) == 2


def test_kept_alive_connection_closed_by_the_server_is_retried_silently(fake_server: FakeLLMServer) -> None:
    # llama-server (cpp-httplib) closes a kept-alive connection after its keep-alive timeout or count; a
    # request that reuses it just then gets no answer at all. The next request goes again on a fresh
    # connection at once, without a "retrying" notice.
    fake_server.enqueue(reply.tool_call("read_file", {"path": "a"}, close_idle=True), reply.text("after the tool"))
    provider = make_provider(fake_server)

    async def two_requests() -> tuple[list[Any], list[Any], Completion]:
        try:
            first_events, _ = await collect(provider, [READ_FILE], None)
            streamed, completion = await collect(provider, [READ_FILE], None)  # on the same client
            return first_events, streamed, completion
        finally:
            await provider.aclose()

    first_events, streamed, completion = asyncio.run(two_requests())
    assert completion.content == "after the tool"
    assert not [event for event in first_events + streamed if isinstance(event, Retrying)]
    assert len(fake_server.chat_requests) == 2


def test_dropped_connection_mid_answer_is_a_stream_error(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("abcdef", chunks=6, drop_after=3))
    received: list[str] = []

    async def run() -> None:
        provider = make_provider(fake_server)
        async for event in provider.chat(MESSAGES):
            received.append(event.text)
    with pytest.raises(StreamError, match="broke mid-answer"):
        asyncio.run(run())
    assert received == ["a", "b"]
    assert len(fake_server.requests) == 1  # text was shown: a retry would repeat it


# -- errors --------------------------------------------------------------------------------------


def retry_notices_until_failure(config: Config, notices: list[str]) -> None:
    """Chat with a provider for `config` until it gives up (the error is raised), collecting its retry notices."""
    async def run() -> None:
        provider = OpenAICompatibleProvider(config, retry_base_delay=0.0)
        async for event in provider.chat(MESSAGES):
            if isinstance(event, Retrying):
                notices.append(event.message)

    asyncio.run(run())


def test_connection_refused_names_the_url_and_is_retried_once() -> None:
    config = Config()
    config.llm.base_url = f"http://127.0.0.1:{free_port()}/v1"
    config.sources["llm.base_url"] = "flag --base-url"
    retries: list[str] = []
    with pytest.raises(ConnectionRefused) as caught:
        retry_notices_until_failure(config, retries)
    message = str(caught.value)
    assert config.llm.base_url in message and "refused" in message
    assert "from flag --base-url" in message and "--doctor" in message
    assert "Ollama" not in message
    assert retries == ["connection refused, retrying in 0.0 s (1/1)"]


def test_connection_refused_at_the_default_url_mentions_ollama() -> None:
    with socket.socket() as sock:
        if sock.connect_ex(("127.0.0.1", 11434)) == 0:
            pytest.skip("something listens on Ollama's port here, so the default URL does not fail")
    provider = OpenAICompatibleProvider(Config(), retry_base_delay=0.0)
    with pytest.raises(ConnectionFailed) as caught:
        asyncio.run(collect(provider))
    message = str(caught.value)
    assert DEFAULT_BASE_URL in message and "Ollama" in message and "AUTO_CODER_BASE_URL" in message


def test_authentication_failure_never_echoes_the_key(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(401, f"Incorrect API key provided: {API_KEY}. Sent: Bearer {API_KEY}",
                                    code="invalid_api_key"))
    with pytest.raises(AuthenticationFailed) as caught:
        chat(make_provider(fake_server))
    message = str(caught.value)
    assert "401" in message and "api_key" in message
    assert API_KEY not in message and API_KEY[3:12] not in message


def test_required_authorization_is_met_with_the_configured_key(fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization(f"Bearer {API_KEY}")
    assert chat(make_provider(fake_server))[1].content == "You said: hi"
    fake_server.require_authorization("Bearer another-key")
    with pytest.raises(AuthenticationFailed):
        chat(make_provider(fake_server))


def test_unknown_model_and_wrong_path(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(404, 'model "test-model" not found, try pulling it first'))
    with pytest.raises(ModelNotFound, match="'test-model' was not found"):
        chat(make_provider(fake_server))
    provider = make_provider(fake_server)
    provider.base_url = fake_server.url + "/v2"
    with pytest.raises(EndpointNotFound, match="/v2/chat/completions.*llm.base_url"):
        chat(provider)


@pytest.mark.parametrize("status,body", [
    (400, {"error": {"message": "This model's maximum context length is 8192 tokens. However, you requested 9000",
                     "code": "context_length_exceeded"}}),
    (400, {"object": "error", "message": "This model's maximum context length is 4096 tokens. However, you "
                                         "requested 5000 tokens", "code": 400}),
    (400, {"error": {"type": "exceed_context_size_error", "message": "request exceeds the available context size"}}),
    (413, "prompt is too long"),
])
def test_context_overflow_is_recognised(fake_server: FakeLLMServer, status: int, body: Any) -> None:
    fake_server.enqueue(reply.error(status, body=body))
    with pytest.raises(ContextOverflow):
        chat(make_provider(fake_server))


def test_timeout_from_config_applies(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("late", wait_for="never", wait_after=1))
    provider = make_provider(fake_server)
    provider.config.llm.timeout = 0.3
    with pytest.raises(RequestTimeout, match=r"no answer from .* for 0\.3 s \(llm.timeout\)"):
        chat(provider)
    assert len(fake_server.requests) == 1


def test_a_redirect_names_the_new_address(fake_server: FakeLLMServer) -> None:
    fake_server.route("POST", "/old/chat/completions", lambda request: reply.json_body(
        {}, status=301, headers={"Location": "https://user:secret@moved.example/v1/chat/completions"}))
    provider = make_provider(fake_server)
    provider.base_url = fake_server.url + "/old"
    with pytest.raises(EndpointNotFound) as caught:
        chat(provider)
    assert "redirects to https://moved.example/v1/chat/completions" in str(caught.value)
    assert "secret" not in str(caught.value)


def test_an_empty_answer_is_an_error(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.raw_sse([": only a comment\n\n"]))
    with pytest.raises(StreamError, match="without an answer"):
        chat(make_provider(fake_server))


def test_a_base_url_that_is_not_http(fake_server: FakeLLMServer) -> None:
    provider = make_provider(fake_server)
    provider.base_url = "localhost:11434/v1"
    with pytest.raises(EndpointNotFound, match="llm.base_url"):
        chat(provider)


def test_a_json_answer_that_is_not_a_completion(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.json_body({"model": "llama3.2", "message": {"role": "assistant", "content": "hi"}}))
    with pytest.raises(StreamError, match="did not answer like an OpenAI-compatible API"):
        chat(make_provider(fake_server))


def test_errors_are_provider_errors_with_status(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(422, "bad field"))
    with pytest.raises(ProviderError) as caught:
        chat(make_provider(fake_server))
    assert caught.value.status == 422 and "bad field" in str(caught.value)


# -- models, loops, cancellation -----------------------------------------------------------------


def test_list_models(fake_server: FakeLLMServer) -> None:
    fake_server.models = ["llama3.2", "qwen2.5-coder"]
    provider = make_provider(fake_server)
    assert asyncio.run(provider.list_models(headers={"x-correlation-id": "m1"})) == ["llama3.2", "qwen2.5-coder"]
    assert fake_server.requests[0].path == "/v1/models"
    assert fake_server.requests[0].headers["x-correlation-id"] == "m1"
    fake_server.require_authorization("Bearer other")
    with pytest.raises(AuthenticationFailed):
        asyncio.run(provider.list_models())


def test_one_provider_on_two_event_loops(fake_server: FakeLLMServer) -> None:
    provider = make_provider(fake_server)
    results: list[str] = []

    async def turn() -> None:
        results.append((await collect(provider))[1].content)

    asyncio.run(turn())  # a first loop (the magics' private loop) ...
    worker_loop = asyncio.new_event_loop()
    thread = threading.Thread(target=worker_loop.run_until_complete, args=(turn(),))
    thread.start()
    thread.join(30)
    worker_loop.close()
    asyncio.run(turn())  # ... and another one again afterwards
    assert results == ["You said: hi"] * 3


def test_stopping_mid_stream_leaves_the_provider_usable(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("x" * 50, chunks=50, delay=0.01))
    provider = make_provider(fake_server)

    async def run() -> str:
        stream = provider.chat(MESSAGES)
        async for _ in stream:
            break
        await stream.aclose()
        return (await collect(provider))[1].content

    assert asyncio.run(run()) == "You said: hi"


# -- hostile streams: huge events, keep-alives forever, answers cut off ----------------------------


@pytest.mark.timeout(120)
def test_an_event_beyond_the_size_cap_ends_with_a_clear_error(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.raw_sse(["data: {\"choices\":[{\"delta\":{\"content\":\"" + "x" * (20 * 1024 * 1024)]))
    with pytest.raises(StreamError, match="cannot be read: one event of the stream is larger than 16 MiB"):
        chat(make_provider(fake_server))


def test_a_json_body_beyond_the_size_cap_ends_with_a_clear_error(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.json_body(reply.completion("y" * (17 * 1024 * 1024))))
    with pytest.raises(StreamError, match="larger than 16 MiB"):
        chat(make_provider(fake_server))


def test_only_keep_alives_for_llm_timeout_end_the_stream(fake_server: FakeLLMServer) -> None:
    # 40 keep-alives 0.25 s apart outlast the 1 s limit however slow the machine is.
    fake_server.enqueue(reply.raw_sse([": keep-alive\n\n"] * 40, delay=0.25))
    provider = make_provider(fake_server)
    provider.config.llm.timeout = 1.0
    with pytest.raises(RequestTimeout, match=r"nothing but keep-alives or empty deltas for 1 s \(llm.timeout\)"):
        chat(provider)
    assert len(fake_server.chat_requests) == 1  # the user already waited: no retry


def test_only_empty_deltas_for_llm_timeout_end_the_stream(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([chunk({"content": "started"})] + [chunk({"content": ""})] * 40, delay=0.25))
    provider = make_provider(fake_server)
    provider.config.llm.timeout = 1.0
    with pytest.raises(RequestTimeout, match="llm.timeout"):
        chat(provider)


def test_slow_but_steady_text_is_not_a_stall(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("one two three four five six", chunks=6, delay=0.3))
    provider = make_provider(fake_server)
    provider.config.llm.timeout = 5.0
    assert chat(provider)[1].content == "one two three four five six"


def test_a_stream_without_finish_reason_or_done_is_cut_off(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("The first half of", chunks=3, cut_off=True))
    with pytest.raises(StreamCutOff, match="was cut off"):
        chat(make_provider(fake_server))


def test_done_without_finish_reason_is_complete(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.chunks([chunk({"content": "whole"})]))
    assert chat(make_provider(fake_server))[1].content == "whole"


def test_a_host_name_that_does_not_resolve_is_retried_once_like_a_refused_connection() -> None:
    config = Config()
    config.llm.base_url = "http://no-such-host.invalid/v1"  # .invalid never resolves (RFC 6761)
    retries: list[str] = []
    with pytest.raises(HostNotFound) as caught:
        retry_notices_until_failure(config, retries)
    assert "no-such-host.invalid was not found" in str(caught.value)
    assert retries == ["host not found, retrying in 0.0 s (1/1)"]


def test_a_server_message_ending_in_a_period_is_not_followed_by_a_second_one(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(401, "Incorrect API key provided."),
                        reply.chunks([{"error": {"message": "Upstream failed."}}]))
    with pytest.raises(AuthenticationFailed) as refused:
        chat(make_provider(fake_server))
    with pytest.raises(StreamError) as broke:
        chat(make_provider(fake_server))
    assert "provided. Check llm.api_key" in str(refused.value)
    assert ".." not in str(refused.value) + str(broke.value)


def test_a_401_when_no_key_was_sent_says_so(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.error(401, "Unauthorized"), reply.error(401, "Unauthorized"))
    provider = make_provider(fake_server)
    provider.config.llm.api_key = None
    with pytest.raises(AuthenticationFailed) as without_key:
        chat(provider)
    with pytest.raises(AuthenticationFailed) as with_key:
        chat(make_provider(fake_server))
    assert "No API key or token was sent" in str(without_key.value) and "AUTO_CODER_API_KEY" in str(without_key.value)
    assert "No API key" not in str(with_key.value)
    assert "authorization" not in fake_server.chat_requests[0].headers
