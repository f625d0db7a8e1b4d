"""llm.tool_calling (auto / native / prompted / none) and llm.max_tokens, against the project's test server
emulating real servers: refusals of `tools` as Ollama, vLLM and llama.cpp word them, servers without
structured output, capabilities stated up front (llama.cpp /props, Ollama /api/show), and bad steps."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from turns import approve, run_turn

from auto_coder_nb.config import Config
from auto_coder_nb.errors import ToolsNotSupported
from auto_coder_nb.events import (
    ApprovalRequest,
    ErrorEvent,
    Event,
    Notice,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
)
from auto_coder_nb.providers.base import ToolDefinition
from auto_coder_nb.providers.prompted import RESULT_PREFIX, AnswerStream, parse_step
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import TOOL_REFUSALS, FakeLLMServer, RecordedRequest, reply


def make_session(server: FakeLLMServer, root: Path, mode: str = "auto", *, approval: str = "full-auto",
                 **llm: Any) -> Session:
    config = Config()
    config.llm.base_url = server.base_url
    config.llm.model = "fake-model"
    config.llm.tool_calling = mode
    for key, value in llm.items():
        setattr(config.llm, key, value)
    config.agent.approval_mode = approval
    return Session.create(config, working_dir=root)


def notices(events: list[Event]) -> list[str]:
    return [event.text for event in events if isinstance(event, Notice)]


def answer(events: list[Event]) -> str:
    return "".join(event.text for event in events if isinstance(event, TextDelta))


def sent_messages(request: RecordedRequest) -> list[dict[str, Any]]:
    return request.json["messages"]


def assert_no_tool_fields(request: RecordedRequest) -> None:
    """What servers without tool support accept: no tools, no tool role, no tool_calls."""
    body = request.json
    assert "tools" not in body and "tool_choice" not in body
    for message in body["messages"]:
        assert message["role"] in ("system", "user", "assistant"), message
        assert "tool_calls" not in message and "tool_call_id" not in message


@pytest.fixture
def project(root: Path) -> Path:
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    return root


# -- prompted mode -------------------------------------------------------------------------------


def test_prompted_step_runs_the_tool_and_the_result_returns_as_a_user_message(
        fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.prompted_call("read_file", {"path": "calc.py"}),
                        reply.prompted_answer("It adds two numbers.", chunks=4))
    session = make_session(fake_server, project, "prompted")
    events = run_turn(session, "What does calc.py do?", approve)
    [started] = [e for e in events if isinstance(e, ToolCallStarted)]
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert (started.name, started.arguments) == ("read_file", {"path": "calc.py"})
    assert "return a + b" in result.output and not result.is_error
    assert answer(events) == "It adds two numbers."
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    first, second = fake_server.chat_requests
    for request in (first, second):
        assert_no_tool_fields(request)
        schema = request.json["response_format"]["json_schema"]["schema"]
        assert {choice["properties"].get("tool", {}).get("const") for choice in schema["anyOf"]} >= {
            "read_file", "write_file", "edit_file", "list_directory", "run_command"}
        assert '{"tool": "<tool name>"' in sent_messages(request)[0]["content"]
        assert request.json["max_tokens"] == 4096
    step, result_message = sent_messages(second)[-2:]
    assert step == {"role": "assistant", "content": '{"tool": "read_file", "arguments": {"path": "calc.py"}}'}
    assert result_message["role"] == "user"
    assert result_message["content"].startswith(RESULT_PREFIX.format(name="read_file"))
    assert "return a + b" in result_message["content"]
    # The conversation itself stays in the native shape: the agent loop does not know the mode.
    assert [m["role"] for m in session.conversation.messages] == ["system", "user", "assistant", "tool", "assistant"]


def test_prompted_answer_streams_while_it_is_decoded(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.prompted_answer('Line one\nsays "hi" \u00e9', chunks=8, wait_for="rest",
                                              wait_after=5))
    session = make_session(fake_server, project, "prompted")

    async def first_text_before_the_end() -> tuple[str, str]:
        turn = session.agent.run("hello")
        async for event in turn:
            if isinstance(event, TextDelta):
                break
        early = event.text
        fake_server.release("rest")
        rest = "".join([e.text async for e in turn if isinstance(e, TextDelta)])
        await session.aclose()
        return early, rest

    early, rest = asyncio.run(first_text_before_the_end())
    assert early and not early.startswith("{")  # decoded answer text, before the server sent the rest
    assert early + rest == 'Line one\nsays "hi" \u00e9'


@pytest.mark.parametrize("bad, problem", [
    ('{"tool": "read_file", "arguments": {"path": ', "not valid JSON"),
    ('{"tool": "delete_everything", "arguments": {}}', "Unknown tool 'delete_everything'"),
    ('{"tool": "write_file", "arguments": {"path": "calc.py"}}', "lacks the required content"),
    ('{"tool": "write_file", "arguments": {"path": "calc.py", "content": 5}}', "content must be a string"),
])
def test_an_invalid_step_is_answered_with_its_problem_and_never_run(
        fake_server: FakeLLMServer, project: Path, bad: str, problem: str) -> None:
    fake_server.enqueue(reply.text(bad), reply.prompted_call("write_file", {"path": "new.txt", "content": "x\n"}),
                        reply.prompted_answer("Done."))
    session = make_session(fake_server, project, "prompted")
    events = run_turn(session, "Write new.txt", approve)
    repair = fake_server.chat_requests[1]
    assert sent_messages(repair)[-2] == {"role": "assistant", "content": bad}
    assert problem in sent_messages(repair)[-1]["content"]
    assert (project / "calc.py").read_text() == "def add(a, b):\n    return a + b\n"
    assert (project / "new.txt").read_text() == "x\n"
    assert [e.name for e in events if isinstance(e, ToolCallStarted)] == ["write_file"]
    assert not [e for e in events if isinstance(e, ErrorEvent)] and notices(events) == []
    # The repair round is not kept: the next request sees the valid step only.
    assert bad not in json.dumps(sent_messages(fake_server.chat_requests[2]))


def test_a_model_that_never_produces_a_valid_step_ends_the_turn_clearly(
        fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.text('{"tool": "rm", "arguments": {}}'), reply.text('{"tool": "rm", "arguments": {}}'))
    session = make_session(fake_server, project, "prompted")
    events = run_turn(session, "Remove everything", approve)
    [notice] = notices(events)
    assert "not a valid step" in notice and "Unknown tool 'rm'" in notice and "nothing was run" in notice
    assert not [e for e in events if isinstance(e, ToolCallStarted)]
    assert isinstance(events[-1], TurnDone) and len(fake_server.chat_requests) == 2
    fake_server.enqueue(reply.prompted_answer("Still here."))
    assert answer(run_turn(session, "hello?", approve)) == "Still here."  # the session goes on


def test_prompted_writes_still_need_approval(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.prompted_call("write_file", {"path": "calc.py", "content": "gone\n"}),
                        reply.prompted_answer("Denied, fine."))
    session = make_session(fake_server, project, "prompted", approval="ask")
    session.workspace.resolve("calc.py")
    events = run_turn(session, "Overwrite calc.py", lambda request: request.deny("no"))
    [request] = [e for e in events if isinstance(e, ApprovalRequest)]
    assert request.tool == "write_file" and "gone" in request.preview
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert result.is_error and "denied" in result.output
    assert "return a + b" in (project / "calc.py").read_text()


def test_without_structured_output_steps_are_read_from_free_text(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.structured_output = False
    fake_server.enqueue(
        reply.text('I will list the folder.\n```json\n{"tool": "list_directory", "arguments": {}}\n```', chunks=5),
        reply.text("The folder holds calc.py."),
        reply.text('{"answer": "Second turn."}'),
    )
    session = make_session(fake_server, project, "prompted")
    events = run_turn(session, "What is here?", approve)
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert "calc.py" in result.output
    assert answer(events) == "I will list the folder.The folder holds calc.py."
    [notice] = notices(events)
    assert "response_format" in notice and "free text" in notice
    refused, *accepted = fake_server.chat_requests
    assert "response_format" in refused.json and not any("response_format" in r.json for r in accepted)
    second = run_turn(session, "And now?", approve)
    assert answer(second) == "Second turn." and notices(second) == []  # remembered for the session
    assert len(fake_server.chat_requests) == 4


def test_a_step_cut_by_the_token_limit_is_not_run(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.text('{"tool": "write_file", "arguments": {"path": "big.txt", "content": "aaa',
                                   finish_reason="length"),
                        reply.prompted_answer("I will write less."))
    session = make_session(fake_server, project, "prompted")
    events = run_turn(session, "Write a big file", approve)
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert result.is_error and "cut off" in result.output and not (project / "big.txt").exists()


def test_custom_tools_work_in_prompted_mode(fake_server: FakeLLMServer, project: Path) -> None:
    seen: list[str] = []
    shout = ToolDefinition("shout", "Shout a word.", {"type": "object", "properties": {"word": {"type": "string"}},
                                                      "required": ["word"]}, lambda word: seen.append(word) or "ok")
    config = Config()
    config.llm.base_url, config.llm.tool_calling = fake_server.base_url, "prompted"
    session = Session.create(config, working_dir=project, extra_tools=[shout])
    fake_server.enqueue(reply.prompted_call("shout", {"word": "hey"}), reply.prompted_answer("Shouted."))
    run_turn(session, "Shout hey", approve)
    assert seen == ["hey"]
    assert "## shout" in sent_messages(fake_server.chat_requests[0])[0]["content"]


# -- auto ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("server_kind", ["ollama", "vllm", "llama.cpp"])
def test_auto_switches_to_prompted_when_the_server_refuses_tools(
        fake_server: FakeLLMServer, project: Path, server_kind: str) -> None:
    fake_server.refuse_tools = server_kind
    fake_server.enqueue(reply.prompted_call("read_file", {"path": "calc.py"}), reply.prompted_answer("Read it."),
                        reply.prompted_answer("Again."))
    session = make_session(fake_server, project, "auto")
    events = run_turn(session, "Read calc.py", approve)
    [notice] = notices(events)
    assert "refused native tool calls" in notice and "described in the prompt" in notice
    body = TOOL_REFUSALS[server_kind][1]
    assert "llm.tool_calling" in notice and (body.get("error") or body)["message"] in notice  # its own words
    assert [e.name for e in events if isinstance(e, ToolResult)] == ["read_file"]
    refused, *rest = fake_server.chat_requests
    assert refused.json.get("tools") and len(rest) == 2
    for request in rest:
        assert_no_tool_fields(request)
    later = run_turn(session, "Once more", approve)
    assert answer(later) == "Again." and notices(later) == []  # the choice is remembered: no native try again
    assert len(fake_server.chat_requests) == 4


@pytest.mark.parametrize("server_kind", ["ollama", "vllm", "llama.cpp"])
def test_native_mode_reports_the_refusal_and_the_setting_to_change(
        fake_server: FakeLLMServer, project: Path, server_kind: str) -> None:
    fake_server.refuse_tools = server_kind
    events = run_turn(make_session(fake_server, project, "native"), "Read calc.py", approve)
    [error] = [e for e in events if isinstance(e, ErrorEvent)]
    assert isinstance(error.error, ToolsNotSupported)
    assert "llm.tool_calling" in error.message and "prompted" in error.message
    assert len(fake_server.chat_requests) == 1  # not retried


def test_auto_decides_from_llama_cpp_props_up_front(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.route("GET", "/props", lambda request: reply.json_body(
        {"chat_template_caps": {"supports_tools": False, "supports_tool_calls": False},
         "modalities": {"vision": False}}))
    fake_server.enqueue(reply.prompted_answer("Hello."))
    events = run_turn(make_session(fake_server, project, "auto"), "hi", approve)
    [notice] = notices(events)
    assert "llama.cpp /props" in notice and "llm.tool_calling" in notice
    [request] = fake_server.chat_requests
    assert_no_tool_fields(request)
    assert "response_format" in request.json


@pytest.mark.parametrize("capabilities, native", [(["completion"], False), (["completion", "tools"], True)])
def test_auto_decides_from_ollama_capabilities(fake_server: FakeLLMServer, project: Path,
                                               capabilities: list[str], native: bool) -> None:
    fake_server.route("POST", "/api/show", lambda request: reply.json_body({"capabilities": capabilities}))
    fake_server.enqueue(reply.prompted_answer("Hi.") if not native else reply.text("Hi."))
    events = run_turn(make_session(fake_server, project, "auto"), "hi", approve)
    assert answer(events) == "Hi."
    [request] = fake_server.chat_requests
    assert bool(request.json.get("tools")) is native
    [show] = [r for r in fake_server.requests if r.path == "/api/show"]
    assert show.json == {"model": "fake-model"}


# -- none and max_tokens -------------------------------------------------------------------------


def test_none_sends_no_tools_and_says_so_once(fake_server: FakeLLMServer, project: Path) -> None:
    session = make_session(fake_server, project, "none")
    first, second = run_turn(session, "hi", approve), run_turn(session, "again", approve)
    [notice] = notices(first)
    assert "llm.tool_calling: none" in notice and notices(second) == []
    for request in fake_server.chat_requests:
        assert "tools" not in request.json and "response_format" not in request.json
        assert "No tools are available" in sent_messages(request)[0]["content"]


def test_max_tokens_is_sent_and_a_cut_answer_says_so(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.text("It goes on and on", finish_reason="length"))
    events = run_turn(make_session(fake_server, project, "native", max_tokens=64), "Talk", approve)
    assert fake_server.chat_requests[0].json["max_tokens"] == 64
    assert any("llm.max_tokens" in text and "cut off" in text for text in notices(events))
    run_turn(make_session(fake_server, project, "native", max_tokens=None, extra_params={}), "Talk", approve)
    assert "max_tokens" not in fake_server.chat_requests[1].json
    run_turn(make_session(fake_server, project, "native", extra_params={"max_completion_tokens": 9}), "Talk", approve)
    body = fake_server.chat_requests[2].json
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body  # the user's own setting wins


# -- parsing -------------------------------------------------------------------------------------


def test_free_text_steps_tolerate_prose_and_prose_alone_is_an_answer(project: Path) -> None:
    from auto_coder_nb.tools import Workspace, build_workspace_tools

    tools = build_workspace_tools(Workspace(project))
    step = parse_step('Let me look.\n```json\n{"tool": "list_directory", "arguments": {}}\n```\n', tools)
    assert (step.prose, step.tool, step.arguments, step.problem) == ("Let me look.", "list_directory", {}, None)
    assert parse_step("Just an answer, {not json} here.", tools).answer == "Just an answer, {not json} here."
    assert parse_step('{"name": "read_file", "parameters": {"path": "a"}}', tools).tool == "read_file"
    # A number out of range is a valid step (the agent clamps it, with a note); a wrong type is not.
    assert parse_step('{"tool": "read_file", "arguments": {"path": "a", "offset": 0}}', tools).problem is None
    assert "offset must be an integer" in str(parse_step(
        '{"tool": "read_file", "arguments": {"path": "a", "offset": "x"}}', tools).problem)


def test_the_answer_stream_decodes_escapes_split_anywhere() -> None:
    step = '  {"answer": "caf\\u00e9 \\"q\\" \\ud83d\\ude00\\n\\tend"}'
    for size in (1, 2, 3, 7):
        stream = AnswerStream()
        pieces = [stream.feed(step[i:i + size]) for i in range(0, len(step), size)]
        assert "".join(pieces) == 'caf\u00e9 "q" \U0001f600\n\tend'
    quiet = AnswerStream()
    assert "".join(quiet.feed(c) for c in '{"tool": "read_file", "arguments": {"path": "x"}}') == ""


def test_a_turn_chooses_its_own_tool_calling_mode(fake_server: FakeLLMServer, project: Path) -> None:
    """TurnOptions(tool_calling=...) (`%%autocoder --tool-calling MODE`) is for that turn only."""
    from auto_coder_nb.agent import TurnOptions

    session = make_session(fake_server, project, "native")

    fake_server.enqueue(reply.prompted_call("read_file", {"path": "calc.py"}), reply.prompted_answer("Adds."))
    events = run_turn(session, "What does calc.py do?", options=TurnOptions(tool_calling="prompted"))
    assert any("return a + b" in e.output for e in events if isinstance(e, ToolResult)) and answer(events) == "Adds."
    for request in fake_server.chat_requests:
        assert_no_tool_fields(request)
        assert "response_format" in request.json
    fake_server.enqueue(reply.text("Plain."))
    events = run_turn(session, "Hello", options=TurnOptions(tool_calling="none"))
    assert "tools" not in fake_server.chat_requests[-1].json and "Tool calling is off" in " ".join(notices(events))
    fake_server.enqueue(reply.text("Native again."))
    run_turn(session, "Hello again")
    assert "tools" in fake_server.chat_requests[-1].json and session.provider.tool_calling == "native"


# -- a repeated step -------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_a_repeated_step_is_followed_by_a_request_that_lets_the_model_only_answer(
        fake_server: FakeLLMServer, project: Path, mode: str) -> None:
    """Small models call the same tool again instead of answering from its result: after the same step twice in
    a row, the next request keeps the tools in view but allows only an answer, so the turn ends answered rather
    than at the loop guard."""
    call = reply.tool_call if mode == "native" else reply.prompted_call
    say = reply.text if mode == "native" else reply.prompted_answer
    fake_server.enqueue(call("read_file", {"path": "calc.py"}), call("list_directory", {}),
                        call("read_file", {"path": "calc.py"}), call("read_file", {"path": "calc.py"}),
                        say("calc.py adds two numbers."))
    events = run_turn(make_session(fake_server, project, mode), "What does calc.py do?", approve)
    assert answer(events) == "calc.py adds two numbers."
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"
    assert [e.name for e in events if isinstance(e, ToolResult)] == [
        "read_file", "list_directory", "read_file", "read_file"]
    requests = [request.json for request in fake_server.chat_requests]
    if mode == "native":
        assert [body.get("tool_choice") for body in requests] == [None, None, None, None, "none"]
        assert all(body["tools"] for body in requests)  # still offered: the history's calls stay valid
    else:
        branches = [body["response_format"]["json_schema"]["schema"]["anyOf"] for body in requests]
        assert [len(choices) for choices in branches[:4]] == [len(branches[0])] * 4 and len(branches[0]) > 1
        assert branches[4] == [{"type": "object", "properties": {"answer": {"type": "string"}},
                                "required": ["answer"], "additionalProperties": False}]


def test_a_server_that_rejects_tool_choice_still_gets_the_answer_request(
        fake_server: FakeLLMServer, project: Path) -> None:
    read = reply.tool_call("read_file", {"path": "calc.py"})
    fake_server.enqueue(read, read, reply.error(400, "Unrecognized request argument supplied: tool_choice"),
                        reply.text("It adds."))
    events = run_turn(make_session(fake_server, project, "native"), "What does calc.py do?", approve)
    assert answer(events) == "It adds." and notices(events) == []
    sent = [request.json.get("tool_choice") for request in fake_server.chat_requests]
    assert sent == [None, None, "none", None]  # rejected once, then sent without it
