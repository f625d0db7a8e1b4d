"""Bad input from the model, the file system and damaged saved conversations: a clear line, never a traceback,
and nothing lost."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import httpx
import pytest

from auto_coder_nb import auth
from auto_coder_nb.authentication_provider import (
    AuthenticationProvider,
    AuthenticationProviderWithClientSideTokenRefresh,
    DeviceCode,
)
from auto_coder_nb.testing.server import FakeLLMServer, reply
from tests.test_auth import (
    DEVICE_PATH,
    DeviceEndpoints,
    FakeClock,
    TokenEndpoint,
    make_config,
    oauth_error,
    token_body,
    token_config,
)


@pytest.fixture
def env(tmp_path: Path, fake_server: FakeLLMServer, clean_env: dict[str, str]) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return clean_env | {"HOME": str(home), "AUTO_CODER_BASE_URL": fake_server.base_url,
                        "AUTO_CODER_MODEL": "fake-model", "NO_COLOR": "1"}


def auto_coder(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["auto-coder", *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)


# -- prompted steps nested thousands deep (item 5) -----------------------------------------------------------


@pytest.mark.parametrize("step", [
    '{"a":' * 5000 + "1" + "}" * 5000,  # a runaway object: deeper than Python's JSON reader goes
    '{"tool": "read_file", "arguments": ' + '{"a":' * 100 + "1" + "}" * 100 + "}",  # readable, but over 64
], ids=["5000-deep-step", "100-deep-arguments"])
def test_a_prompted_step_nested_too_deep_is_refused_like_a_native_call(
        fake_server: FakeLLMServer, env: dict[str, str], tmp_path: Path, step: str) -> None:
    fake_server.enqueue(reply.text(step), reply.text(step))
    done = auto_coder(["--tool-calling", "prompted", "read it"], env, tmp_path)
    assert "Traceback" not in done.stderr and "RecursionError" not in done.stderr
    assert "not a valid step, twice" in done.stderr
    repair = fake_server.chat_requests[1].json["messages"][-1]["content"]
    assert "nested more than 64 levels deep" in repair
    fake_server.enqueue(reply.prompted_answer("Fine now."))
    assert auto_coder(["--tool-calling", "prompted", "again"], env, tmp_path).stdout.strip() == "Fine now."


# -- a token endpoint's nonsense expires_in (item 12) --------------------------------------------------------


@pytest.mark.parametrize(("expires_in", "lasts"), [
    (None, "unknown"), (-5, "unknown"), (0, "unknown"), ("soon", "unknown"), (float("nan"), "unknown"),
    (float("inf"), "unknown"), (True, "unknown"), (10**400, "unknown"), (1e308, "a day"), ("7200", "two hours"),
], ids=["missing", "negative", "zero", "string", "nan", "infinity", "boolean", "400-digits", "huge", "numeric-text"])
def test_a_nonsense_expires_in_is_unknown_or_clamped(tmp_path: Path, fake_server: FakeLLMServer,
                                                     expires_in: object, lasts: str) -> None:
    endpoint = TokenEndpoint(fake_server, expires_in=expires_in)  # type: ignore[arg-type]
    clock = FakeClock()
    refresher = AuthenticationProviderWithClientSideTokenRefresh(token_config(tmp_path, fake_server, endpoint),
                                                                 clock=clock)
    url = fake_server.base_url + "/models"
    with httpx.Client(**(auth.http_client_kwargs(refresher.config) | {"auth": refresher})) as client:
        for _ in range(3):  # not fetched again for every request (an expiry in the past or NaN did that)
            assert client.get(url).status_code == 200
        assert endpoint.issued == ["tok-1"]
        clock.now += 3 * 3600  # three hours on: a known lifetime of two hours has run out, a day's has not
        assert client.get(url).status_code == 200
        assert endpoint.issued == (["tok-1", "tok-2"] if lasts == "two hours" else ["tok-1"])
        clock.now += 86400  # a day on: even a token that claimed to last for ever is renewed
        assert client.get(url).status_code == 200
        assert len(endpoint.issued) == (1 if lasts == "unknown" else 3 if lasts == "two hours" else 2)
        fake_server.require_authorization("Bearer revoked-meanwhile")  # an unknown lifetime ends with a 401
        assert client.get(url).status_code == 200
        assert fake_server.requests[-1].headers["authorization"] == f"Bearer {endpoint.issued[-1]}"


@pytest.mark.parametrize(("expires_in", "interval", "waits", "minutes"), [
    ("soon", float("nan"), 5.0, 10), (-1, -3, 5.0, 10), (10**400, 10**400, 5.0, 10), (1e9, 1e9, 60.0, 1440)],
    ids=["text-and-nan", "negative", "400-digits", "huge"])
def test_a_device_sign_in_with_nonsense_timings_uses_the_defaults_or_a_cap(
        tmp_path: Path, fake_server: FakeLLMServer, expires_in: object, interval: float, waits: float,
        minutes: int) -> None:
    endpoints = DeviceEndpoints(fake_server, [oauth_error("authorization_pending"), token_body("sso-token")],
                                interval=interval)
    fake_server.route("POST", DEVICE_PATH, lambda request: reply.json_body(
        {"device_code": "dev", "user_code": "WDJB-MJHT", "verification_uri": f"{fake_server.url}/activate",
         "expires_in": expires_in, "interval": interval}))
    config = make_config(tmp_path, env={"USE_SSO": "true"}, yaml_text=endpoints.yaml())
    shown: list[DeviceCode] = []
    sleeps: list[float] = []
    provider = AuthenticationProvider(config, show_device_code=shown.append, clock=FakeClock(), sleep=sleeps.append)
    assert provider.generate_auth_token() == "sso-token"
    assert sleeps == [waits, waits]  # the RFC's 5 s when the server's makes no sense, at most a minute
    assert f"expires in {minutes} minutes" in shown[0].message()


# -- answers whose connection ends oddly (item 10) -----------------------------------------------------------


@pytest.mark.parametrize("ending", ["dropped-after-the-last-chunk", "runaway-stopped-early"])
def test_an_answer_whose_stream_ends_early_or_oddly_leaves_nothing_pending(
        fake_server: FakeLLMServer, env: dict[str, str], tmp_path: Path, ending: str) -> None:
    if ending == "dropped-after-the-last-chunk":  # whole, [DONE] included, then closed without ending the body
        fake_server.enqueue(reply.text("All of it.", chunks=3, drop_after=10**6))
    else:  # the provider stops reading a runaway answer and closes the stream itself
        fake_server.enqueue(reply.text("la " * 2000, chunks=400))
    done = auto_coder(["hello"], env | {"PYTHONASYNCIODEBUG": "1"}, tmp_path)
    assert "Task was destroyed but it is pending" not in done.stderr
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("All of it." if ending.startswith("dropped") else "la la")


# -- names that are not UTF-8 (item 6) -----------------------------------------------------------------------


def test_a_workspace_and_a_file_named_in_no_utf8_are_shown_sent_and_saved_escaped(
        fake_server: FakeLLMServer, env: dict[str, str], tmp_path: Path, data_dir: Path) -> None:
    root = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9-project"))
    root.mkdir()
    (root / os.fsdecode(b"na\xefve.txt")).write_text("hi")
    fake_server.enqueue(reply.tool_call("list_directory", {"path": "."}), reply.text("One file."))
    done = auto_coder(["what is here?"], env, root)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == "One file.\n"
    assert "caf\\xe9-project" in done.stderr  # the tool's line, escaped
    system, *_, tool = fake_server.chat_requests[1].json["messages"]
    assert "caf\\xe9-project" in system["content"] and "na\\xefve.txt" in tool["content"]
    saved = next((data_dir / "sessions").glob("*.jsonl"))
    text = saved.read_bytes().decode("utf-8")  # strict: the file is UTF-8
    assert "caf\\\\xe9-project" in text and "na\\\\xefve.txt" in text  # as JSON writes a backslash
    listed = auto_coder(["--sessions"], env, root)
    assert "caf\\xe9-project" in listed.stdout and "what is here?" in listed.stdout
    fake_server.enqueue(reply.text("Still here."))
    resumed = auto_coder(["and now?", "--resume"], env, root)  # the newest of this folder, found by its name
    assert resumed.returncode == 0 and "Resumed conversation" in resumed.stderr, resumed.stderr
    assert len(fake_server.chat_requests[-1].json["messages"]) == 6


# -- damaged saved conversations (item 7) --------------------------------------------------------------------


def record(**fields: object) -> str:
    return json.dumps({"v": 1, "t": "2026-01-01T00:00:00.000Z", **fields})


def saved_file(data_dir: Path, conversation_id: str, *lines: str, name: str | None = None,
               working_dir: str = "") -> Path:
    folder = data_dir / "sessions"
    folder.mkdir(exist_ok=True)
    path = folder / f"{name or conversation_id}.jsonl"
    start = record(type="start", correlation_id=conversation_id, working_dir=working_dir, notebook=None,
                   model="fake-model", base_url="http://x")
    path.write_text("\n".join([start, *lines]) + "\n")
    return path


USER = record(type="message", message={"role": "user", "content": "the first question"})
DAMAGED_MESSAGES = {
    "tool-calls-a-string": record(type="message", message={"role": "assistant", "content": None,
                                                           "tool_calls": "read_file"}),
    "call-without-a-function": record(type="message", message={"role": "assistant", "content": None,
                                                               "tool_calls": [{"id": 5, "function": "x"}]}),
    "content-a-number": record(type="message", message={"role": "user", "content": 5}),
    "parts-not-objects": record(type="message", message={"role": "assistant", "content": ["x", 3]}),
    "message-a-list": record(type="message", message=["user", "hi"]),
}


@pytest.mark.parametrize("damage", DAMAGED_MESSAGES)
def test_a_damaged_message_is_left_out_with_one_line_and_the_rest_resumes_and_exports(
        fake_server: FakeLLMServer, env: dict[str, str], tmp_path: Path, data_dir: Path, damage: str) -> None:
    conversation_id = "0a1b2c3d-0000-4000-8000-000000000001"
    answer = record(type="message", message={"role": "assistant", "content": "the first answer"})
    saved_file(data_dir, conversation_id, USER, DAMAGED_MESSAGES[damage], answer, working_dir=str(tmp_path))
    resumed = auto_coder(["--resume", conversation_id[:8], "and then?"], env, tmp_path)
    assert resumed.returncode == 0 and "Traceback" not in resumed.stderr, resumed.stderr
    assert "1 damaged line left out" in resumed.stderr
    sent = fake_server.chat_requests[-1].json["messages"]
    assert [(m["role"], m["content"]) for m in sent[1:]] == [
        ("user", "the first question"), ("assistant", "the first answer"), ("user", "and then?")]
    exported = auto_coder(["--export", str(tmp_path / "out.md"), "--resume", conversation_id[:8]], env, tmp_path)
    assert exported.returncode == 0 and "the first answer" in (tmp_path / "out.md").read_text(), exported.stderr


def test_a_tool_result_that_answers_no_call_is_left_out(
        fake_server: FakeLLMServer, env: dict[str, str], tmp_path: Path, data_dir: Path) -> None:
    orphan = record(type="message", message={"role": "tool", "tool_call_id": "nowhere", "content": "late"})
    saved_file(data_dir, "0a1b2c3d-0000-4000-8000-000000000002", USER, orphan, working_dir=str(tmp_path))
    assert auto_coder(["--resume", "0a1b2c3d", "go on"], env, tmp_path).returncode == 0
    roles = [m["role"] for m in fake_server.chat_requests[-1].json["messages"]]
    assert roles == ["system", "user", "assistant", "user"]  # the open question marked interrupted, no orphan


@pytest.mark.parametrize("conversation_id", ["0a1b2c3d\n\x1b[31mRED", "0a1b2c3dé", "0a1b 2c3d", "-x", "a" * 200])
def test_a_conversation_id_no_header_can_carry_is_refused_with_one_escaped_line(
        fake_server: FakeLLMServer, env: dict[str, str], tmp_path: Path, data_dir: Path,
        conversation_id: str) -> None:
    saved_file(data_dir, conversation_id, USER, name="0a1b2c3d-odd", working_dir=str(tmp_path))
    for args in (["--sessions"], ["--resume", "0a1b2c3d", "go on"], ["--export", str(tmp_path / "x.md")]):
        done = auto_coder(args, env, tmp_path)
        shown = done.stdout + done.stderr
        assert "Traceback" not in shown and "\x1b" not in shown and "\nRED" not in shown, shown
        assert "0a1b2c3d-odd.jsonl is damaged: its conversation id" in done.stderr
        assert done.returncode == (0 if args == ["--sessions"] else 2)
    assert fake_server.chat_requests == []
