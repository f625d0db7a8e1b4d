"""Small local models finish on time (issue 23): steps capped by what they write, a turn deadline, a low
temperature in prompted mode, placeholders refused, numbers clamped, cycles caught, the unchanging part of the
prompt first, rarely needed arguments left out of the prompted schema.

Each bad model is the project's test server scripted to misbehave over real HTTP; every case must end with a
notice, never a crash, and leave a history the next message can be sent with.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from turns import Answer, approve, run_turn

from auto_coder_nb.config import Config
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
from auto_coder_nb.providers.prompted import ENVIRONMENT_HEADING, parse_step
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, RecordedRequest, reply
from auto_coder_nb.tools.arguments import clamp_numbers, placeholder_problem


def make_session(server: FakeLLMServer, root: Path, mode: str = "prompted", *, approval: str = "full-auto",
                 turn_timeout: float | None = None, **llm: Any) -> Session:
    config = Config()
    config.llm.base_url, config.llm.model, config.llm.tool_calling = server.base_url, "fake-model", mode
    for key, value in llm.items():
        setattr(config.llm, key, value)
    config.agent.approval_mode = approval
    if turn_timeout is not None:
        config.agent.turn_timeout = turn_timeout
    return Session.create(config, working_dir=root)


def approve_after(seconds: float) -> Answer:
    """The answer of a user who thinks each call over for `seconds`, then allows it."""
    async def answer(request: ApprovalRequest) -> None:
        await asyncio.sleep(seconds)
        request.approve()

    return answer


def notices(events: list[Event]) -> list[str]:
    return [event.text for event in events if isinstance(event, Notice)]


def ending(events: list[Event]) -> str:
    assert isinstance(events[-1], TurnDone)
    return events[-1].reason


def assert_valid_history(request: RecordedRequest) -> None:
    """What a strict server accepts: every tool call answered by a tool message before anything else, no
    tool message without its call, user and assistant turns in order."""
    messages = request.json["messages"]
    assert messages[0]["role"] == "system"
    open_calls: list[str] = []
    for message in messages[1:]:
        if message["role"] == "tool":
            assert message["tool_call_id"] in open_calls, message
            open_calls.remove(message["tool_call_id"])
            continue
        assert not open_calls, f"calls {open_calls} unanswered before {message}"
        open_calls = [call["id"] for call in message.get("tool_calls") or ()]
    assert not open_calls


def next_message_works(server: FakeLLMServer, session: Session, mode: str) -> None:
    """The conversation goes on: the next message is sent with a valid history and answered."""
    server.clear()  # what the bad model had left in the queue
    server.enqueue(reply.prompted_answer("Back.") if mode == "prompted" else reply.text("Back."))
    events = run_turn(session, "And now?", approve)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Back." and ending(events) == "stop"
    if mode == "native":
        assert_valid_history(server.chat_requests[-1])
    else:  # the history itself, in the native shape the prompted messages are made from
        request = RecordedRequest("POST", "/", {}, {}, json.dumps({"messages": session.conversation.messages}).encode())
        assert_valid_history(request)


@pytest.fixture
def project(root: Path) -> Path:
    (root / "calc.py").write_text("def add(a, b):\n    return a + b\n")
    return root


# -- a model that streams forever inside a step ------------------------------------------------------


def test_a_prompted_answer_that_never_ends_is_cut_at_the_step_limit(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.endless('{"answer": "It'))
    session = make_session(fake_server, project, step_max_tokens=40)
    events = run_turn(session, "What does calc.py do?", approve)
    assert ending(events) == "stop"
    [cut] = [text for text in notices(events) if "llm.step_max_tokens" in text]
    assert "cut off at 41 tokens" in cut and not any("llm.max_tokens" in text for text in notices(events))
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert answer.startswith("It w1 w2") and session.conversation.messages[-1]["content"] == answer
    body = fake_server.chat_requests[0].json
    assert body["max_tokens"] == 4096  # the request allows a whole file: the kind is only known as it streams
    next_message_works(fake_server, session, "prompted")


def test_a_step_writing_a_file_may_run_to_the_content_limit_and_is_not_run_when_cut(
        fake_server: FakeLLMServer, project: Path) -> None:
    """File content gets llm.max_tokens, not the step limit; cut there, the call is refused and the model told."""
    fake_server.enqueue(reply.endless('{"tool": "write_file", "arguments": {"path": "big.txt", "content": "'),
                        reply.endless('{"tool": "read_file", "arguments": {"path": "calc'),
                        reply.prompted_answer("Gave up."))
    session = make_session(fake_server, project, step_max_tokens=20, max_tokens=120)
    events = run_turn(session, "Write a big file", approve)
    results = [e for e in events if isinstance(e, ToolResult)]
    assert [(r.name, r.is_error) for r in results] == [("write_file", True), ("read_file", True)]
    assert all("cut off" in r.output for r in results) and not (project / "big.txt").exists()
    write, read = [e.raw_arguments for e in events if isinstance(e, ToolCallStarted)]
    assert " w100" in write and " w30" not in read  # the write ran to the content limit, the read to the step limit
    [cut] = [text for text in notices(events) if "llm.step_max_tokens" in text]
    assert "cut off at 21 tokens" in cut
    assert ending(events) == "stop"
    next_message_works(fake_server, session, "prompted")


def test_a_read_only_call_with_a_runaway_path_is_cut_early(fake_server: FakeLLMServer, project: Path) -> None:
    """SmolLM2 wrote paths like "lisst_directory_a_rgument_a_..." until the limit: a read-only call is a path or
    a name, so it stops at 128 tokens whatever llm.step_max_tokens allows an answer."""
    fake_server.enqueue(reply.endless('{"tool": "list_directory", "arguments": {"path": "lisst'),
                        reply.prompted_answer("Sorry."))
    events = run_turn(make_session(fake_server, project), "List the files in the folder src", approve)
    [cut] = [text for text in notices(events) if "llm.step_max_tokens" in text]
    assert "cut off at 129 tokens" in cut
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert result.is_error and "cut off" in result.output and ending(events) == "stop"


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_an_answer_that_never_ends_stops_at_the_turn_deadline(fake_server: FakeLLMServer, project: Path,
                                                              mode: str) -> None:
    """Natively only the server's max_tokens limits an answer, and a user may raise the prompted step limits:
    a server that ignores them meets agent.turn_timeout."""
    fake_server.enqueue(reply.endless("Thinking" if mode == "native" else '{"answer": "Thinking'))
    session = make_session(fake_server, project, mode, turn_timeout=1.0, step_max_tokens=10_000_000,
                           max_tokens=None)
    events = run_turn(session, "Explain calc.py", approve)
    assert ending(events) == "turn_timeout"
    assert any("agent.turn_timeout" in text for text in notices(events))
    last = session.conversation.messages[-1]
    assert last["role"] == "assistant" and last["content"].startswith("Thinking w1")
    assert last["content"].endswith("[stopped at the turn's time limit]")
    next_message_works(fake_server, session, mode)


def test_a_prompted_step_that_goes_silent_ends_after_llm_timeout(fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.prompted_answer("It adds two numbers.", chunks=6, wait_for="never", wait_after=3))
    session = make_session(fake_server, project, timeout=0.5)
    events = run_turn(session, "What does calc.py do?", approve)
    assert ending(events) == "error"
    assert any("llm.timeout" in e.message for e in events if isinstance(e, ErrorEvent))
    next_message_works(fake_server, session, "prompted")


def test_the_deadline_does_not_count_the_time_the_user_takes_to_approve(
        fake_server: FakeLLMServer, project: Path) -> None:
    """The user answers after the turn's whole time limit; the turn's own part takes far less (the margin is
    wide so that a loaded machine does not eat it)."""
    fake_server.enqueue(reply.tool_call("write_file", {"path": "a.txt", "content": "hi\n"}), reply.text("Done."))
    session = make_session(fake_server, project, "native", approval="ask", turn_timeout=2.0)
    events = run_turn(session, "Write a.txt", approve_after(2.5))
    assert ending(events) == "stop" and (project / "a.txt").read_text() == "hi\n"
    assert not any("agent.turn_timeout" in text for text in notices(events))


# -- a model that alternates calls forever --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_a_model_that_alternates_two_calls_forever(fake_server: FakeLLMServer, project: Path, mode: str) -> None:
    call = reply.tool_call if mode == "native" else reply.prompted_call
    read, listing = call("read_file", {"path": "calc.py"}), call("list_directory", {})
    fake_server.enqueue(*[read, listing] * 10)
    session = make_session(fake_server, project, mode)
    events = run_turn(session, "What is in calc.py?", approve)
    assert [e.name for e in events if isinstance(e, ToolResult)] == ["read_file", "list_directory"] * 2
    assert ending(events) == "repeated_call"
    assert any(text.startswith("Stopped:") and "read_file" in text for text in notices(events))
    fifth = fake_server.chat_requests[4].json  # after the pair twice over: only an answer is allowed
    if mode == "native":
        assert fifth["tool_choice"] == "none"
    else:
        assert [list(choice["properties"]) for choice in fifth["response_format"]["json_schema"]["schema"]["anyOf"]] \
            == [["answer"]]
    next_message_works(fake_server, session, mode)


def test_a_cycle_of_three_calls_gets_the_answer_only_request(fake_server: FakeLLMServer, project: Path) -> None:
    steps = [reply.tool_call("read_file", {"path": "calc.py"}), reply.tool_call("list_directory", {}),
             reply.tool_call("run_command", {"command": "true"})]
    fake_server.enqueue(*steps * 2, reply.text("calc.py adds."))
    events = run_turn(make_session(fake_server, project, "native"), "Look around", approve)
    assert ending(events) == "stop" and len([e for e in events if isinstance(e, ToolResult)]) == 6
    assert [r.json.get("tool_choice") for r in fake_server.chat_requests] == [None] * 6 + ["none"]


def test_the_answer_only_request_is_capped_hard(fake_server: FakeLLMServer, project: Path) -> None:
    """After a repeated step the model may only answer; SmolLM2 then wrote garbage to the limit: 128 tokens (or
    llm.step_max_tokens, if lower), natively as max_tokens, in prompted mode also while it streams."""
    read = reply.tool_call("read_file", {"path": "calc.py"})
    fake_server.enqueue(read, read, reply.text("It adds", finish_reason="length"))
    events = run_turn(make_session(fake_server, project, "native"), "What does calc.py do?", approve)
    assert [r.json.get("max_tokens") for r in fake_server.chat_requests] == [4096, 4096, 128]
    assert any("cut off at 128 tokens" in text for text in notices(events)) and ending(events) == "stop"
    assert not any("llm.max_tokens" in text for text in notices(events))
    fake_server.clear()
    fake_server.enqueue(read, read, reply.text("It adds"))
    run_turn(make_session(fake_server, project, "native", step_max_tokens=64), "What does calc.py do?", approve)
    assert fake_server.chat_requests[-1].json["max_tokens"] == 64
    fake_server.clear()
    read = reply.prompted_call("read_file", {"path": "calc.py"})
    fake_server.enqueue(read, read, reply.endless('{"answer": "1234'))
    events = run_turn(make_session(fake_server, project), "What does calc.py do?", approve)
    assert fake_server.chat_requests[-1].json["max_tokens"] == 128
    assert any("cut off at 129 tokens" in text for text in notices(events)) and ending(events) == "stop"


# -- a model that answers "..." for every path ------------------------------------------------------------


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_a_model_that_answers_a_placeholder_for_every_path(fake_server: FakeLLMServer, project: Path,
                                                           mode: str) -> None:
    call = reply.tool_call if mode == "native" else reply.prompted_call
    fake_server.enqueue(call("write_file", {"path": "...", "content": "x"}), *[call("read_file", {"path": "..."})] * 5)
    session = make_session(fake_server, project, mode, approval="ask")
    events = run_turn(session, "Read my file", approve)
    assert not any(isinstance(e, ApprovalRequest) for e in events)  # refused before anything, approvals included
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results and all(r.is_error and "placeholder" in r.output and "'...'" in r.output for r in results)
    assert sorted(p.name for p in project.iterdir()) == ["calc.py"]
    assert ending(events) == "repeated_call" and notices(events)
    next_message_works(fake_server, session, mode)


def test_placeholders_are_refused_and_real_values_are_not() -> None:
    schema = {"type": "object", "properties": {name: {"type": "string"} for name in (
        "path", "content", "command", "new_string", "file_path")}}
    for arguments in ({"path": "..."}, {"path": "…"}, {"path": "<path>"}, {"path": "/path/to/file"},
                      {"path": "path/to/your/file.py"}, {"file_path": "{file}"}, {"path": "your_file.py"},
                      {"content": "..."}, {"command": " ... "}):
        assert placeholder_problem("tool", arguments, schema) is not None, arguments
    for arguments in ({"path": ".."}, {"path": "src/calc.py"}, {"path": "notes/path.md"}, {"new_string": "<br>"},
                      {"command": "[ -f setup.py ] && echo yes"}, {"content": "{}"}, {"content": "a ... b"},
                      {"other": "..."}):
        assert placeholder_problem("tool", arguments, schema) is None, arguments
    problem = placeholder_problem("read_file", {"path": "..."}, schema)
    assert problem is not None and "Call read_file again with the actual path" in problem


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_numbers_out_of_range_are_clamped_with_a_note(fake_server: FakeLLMServer, project: Path, mode: str) -> None:
    call = reply.tool_call if mode == "native" else reply.prompted_call
    fake_server.enqueue(call("read_file", {"path": "calc.py", "offset": 0}),
                        call("run_command", {"command": "echo ran", "timeout": 5000}),
                        reply.text("Read.") if mode == "native" else reply.prompted_answer("Read."))
    events = run_turn(make_session(fake_server, project, mode), "Read calc.py", approve)
    read, command = [e for e in events if isinstance(e, ToolResult)]
    assert not read.is_error and read.output.startswith("(offset 0 raised to the minimum, 1)\n")
    assert "return a + b" in read.output
    assert not command.is_error and command.output.startswith("(timeout 5000 lowered to the maximum, 600)\n")
    assert "ran" in command.output and ending(events) == "stop"
    schema = {"properties": {"timeout": {"type": "number", "minimum": 1, "maximum": 600}, "flag": {"type": "integer"}}}
    assert clamp_numbers({"timeout": 5000, "flag": True}, schema) == (
        {"timeout": 600, "flag": True}, ["(timeout 5000 lowered to the maximum, 600)"])


# -- a model that repeats its last step in answer-only mode ----------------------------------------------


@pytest.mark.parametrize("mode", ["native", "prompted"])
def test_a_model_that_repeats_its_step_when_asked_to_answer(fake_server: FakeLLMServer, project: Path,
                                                            mode: str) -> None:
    call = reply.tool_call if mode == "native" else reply.prompted_call
    fake_server.enqueue(*[call("read_file", {"path": "calc.py"})] * 4)
    session = make_session(fake_server, project, mode)
    events = run_turn(session, "What does calc.py do?", approve)
    assert [e.name for e in events if isinstance(e, ToolResult)] == ["read_file"] * 2
    assert ending(events) == "repeated_call" and any("3 times in a row" in text for text in notices(events))
    assert len(fake_server.chat_requests) == 3
    next_message_works(fake_server, session, mode)


def test_a_new_call_from_the_answer_only_request_runs(fake_server: FakeLLMServer, project: Path) -> None:
    """A server that ignores tool_choice: a call the turn already made is stopped, a new one is progress."""
    read = reply.tool_call("read_file", {"path": "calc.py"})
    fake_server.enqueue(read, read, reply.tool_call("list_directory", {}), reply.text("calc.py adds."))
    events = run_turn(make_session(fake_server, project, "native"), "What does calc.py do?", approve)
    assert [e.name for e in events if isinstance(e, ToolResult)] == ["read_file", "read_file", "list_directory"]
    assert [r.json.get("tool_choice") for r in fake_server.chat_requests] == [None, None, "none", None]
    assert ending(events) == "stop" and not notices(events)


# -- temperature, prompt order, schema size ----------------------------------------------------------------


def test_prompted_steps_are_sent_a_low_temperature_unless_the_user_set_one(
        fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.prompted_answer("a"), reply.prompted_answer("b"), reply.text("c"))
    run_turn(make_session(fake_server, project), "Hi", approve)
    run_turn(make_session(fake_server, project, extra_params={"temperature": 0.7}), "Hi", approve)
    run_turn(make_session(fake_server, project, "native"), "Hi", approve)
    assert [r.json.get("temperature") for r in fake_server.chat_requests] == [0, 0.7, None]
    shown = Config().show()
    assert "llm.extra_params.temperature = <not set: prompted steps are sent 0>  (default)" in shown
    assert "agent.turn_timeout = 1800.0  (default)" in shown and "llm.step_max_tokens = 512  (default)" in shown
    config = Config()
    config.llm.extra_params = {"temperature": 0.2}
    assert "llm.extra_params.temperature" not in config.show()


def test_the_prompt_starts_with_what_never_changes(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    """A server's prompt cache can reuse everything up to the folder: instructions, then tools, then the
    environment (root, date) and the project's own instructions."""
    systems = []
    for name in ("one", "two"):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "AGENTS.md").write_text(f"Project {name} rules.\n")
        fake_server.enqueue(reply.prompted_answer("ok"))
        run_turn(make_session(fake_server, folder), "Hi", approve)
        systems.append(fake_server.chat_requests[-1].json["messages"][0]["content"])
    one, two = systems
    shared = next(i for i, (a, b) in enumerate(zip(one, two, strict=False)) if a != b)
    environment = one.index(f"\n\n{ENVIRONMENT_HEADING}\n")
    assert one.index("# Tools") < environment < one.index("Project one rules")
    assert shared > environment and one[:environment] == two[:two.index(f"\n\n{ENVIRONMENT_HEADING}\n")]
    assert str(tmp_path / "one") in one[environment:]


def test_rarely_needed_arguments_are_left_out_of_the_prompted_schema(
        fake_server: FakeLLMServer, project: Path) -> None:
    fake_server.enqueue(reply.prompted_answer("ok"))
    session = make_session(fake_server, project)
    run_turn(session, "Hi", approve)
    body = fake_server.chat_requests[0].json
    choices = body["response_format"]["json_schema"]["schema"]["anyOf"]
    schemas = {choice["properties"]["tool"]["const"]: choice["properties"]["arguments"]
               for choice in choices if "tool" in choice["properties"]}
    assert set(schemas["edit_file"]["properties"]) == {"path", "old_string", "new_string"}
    assert set(schemas["run_command"]["properties"]) == {"command"}
    assert set(schemas["read_file"]["properties"]) == {"path"}
    section = body["messages"][0]["content"]
    assert "replace_all" not in section and "- command (string, required)" in section
    # A model writing free text may still use them: the step is checked against the whole schema.
    tools = session.tools.definitions()
    step = parse_step('{"tool": "edit_file", "arguments": {"path": "a", "old_string": "x", "new_string": "y", '
                      '"replace_all": true}}', tools)
    assert step.problem is None and step.arguments is not None and step.arguments["replace_all"] is True
