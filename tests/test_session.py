"""Session-level state: clear and reset, and settings applied to a running session."""

from __future__ import annotations

from pathlib import Path

from turns import run_turn

from auto_coder_nb.approvals import Allowance
from auto_coder_nb.config import Config
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply


def make_session(server: FakeLLMServer, root: Path) -> Session:
    config = Config()
    config.llm.base_url = server.base_url
    return Session.create(config, working_dir=root)


def test_clear_keeps_the_token_count_and_reset_drops_session_state(fake_server: FakeLLMServer, root: Path) -> None:
    session = make_session(fake_server, root)
    run_turn(session, "hello")
    used = session.conversation.usage.total_tokens
    assert used > 0
    first_id = session.conversation.correlation_id
    session.policy.allow_always(Allowance("write_file"))

    cleared_id = session.clear()
    assert cleared_id != first_id and session.conversation.usage.total_tokens == used
    assert [m["role"] for m in session.conversation.messages] == ["system"]
    assert session.policy.decide("write", allowance=Allowance("write_file")) == "allow"

    reset_id = session.reset()
    assert reset_id not in (first_id, cleared_id)
    assert session.conversation.usage.total_tokens == 0
    assert session.policy.decide("write", allowance=Allowance("write_file")) == "ask"


def test_apply_config_switches_endpoint_and_mode_but_keeps_the_conversation(fake_server: FakeLLMServer,
                                                                             root: Path) -> None:
    session = make_session(fake_server, root)
    run_turn(session, "one")
    with FakeLLMServer() as other:
        other.enqueue(reply.text("from the other server"))
        config = Config()
        config.llm.base_url = other.base_url
        config.agent.approval_mode = "read-only"
        assert session.apply_config(config) is True
        assert session.policy.mode == "read-only"
        run_turn(session, "two")
        assert [m["content"] for m in other.chat_requests[0].json["messages"] if m["role"] == "user"] == ["one", "two"]
        assert session.apply_config(config) is False  # nothing new
        session.policy.mode = "full-auto"  # chosen at run time (the panel, a test, a user's cell)
        session.apply_config(config)
        assert session.policy.mode == "full-auto"
