"""What a team's shared setup relies on, checked without a hub (tests/test_hub.py runs the same on a real JupyterHub):
a turn cannot change what the site locks, requests say who is asking, JupyterHub's tokens stay out of commands and
text, the product's folders are private even in a 0755 home, an unexpanded ${VAR} from a spawner is an error, and
the doctor says where it runs. Real parts: the test server over HTTP, real sessions and subprocesses."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from team_site import team_site
from turns import approve, run_turn

from auto_coder_nb.agent import TurnOptions
from auto_coder_nb.config import Config, load_config
from auto_coder_nb.doctor import run_doctor
from auto_coder_nb.errors import ConfigError
from auto_coder_nb.events import ApprovalRequest, ErrorEvent, Event, Notice
from auto_coder_nb.history import ConversationStore
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.trust import record

HUB_TOKEN = "hub-token-5d1e0b7a93c4"
GATEWAY_KEY = "team-gateway-key-81c2f0"
# The team's site file (tests/team_site.py) here locks the tool-calling mode too, so a turn cannot pick its own.
MORE_LOCKED = ("llm.tool_calling",)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A home folder as Debian makes them: 0755, readable by every user of the machine."""
    folder = tmp_path / "home"
    folder.mkdir()
    folder.chmod(0o755)
    return folder


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, home: Path, fake_server: FakeLLMServer) -> Path:
    """This process as a kernel in Ana's server on a hub: the spawner's variables, the site file, the gateway key."""
    site = tmp_path / "site.yaml"
    site.write_text(team_site(fake_server.base_url, *MORE_LOCKED))
    for name, value in {"JUPYTERHUB_USER": "anabel", "JUPYTERHUB_API_URL": "http://127.0.0.1:9/hub/api",
                        "JUPYTERHUB_API_TOKEN": HUB_TOKEN, "JPY_API_TOKEN": HUB_TOKEN,
                        "JUPYTERHUB_SERVER_NAME": "", "TEAM_GATEWAY_KEY": GATEWAY_KEY,
                        "AUTO_CODER_SITE_CONFIG": str(site), "HOME": str(home)}.items():
        monkeypatch.setenv(name, value)
    return site


def errors(events: list[Event]) -> list[str]:
    return [event.message for event in events if isinstance(event, ErrorEvent)]


def test_a_turn_cannot_change_what_the_site_locks(hub_env: Path, home: Path, fake_server: FakeLLMServer) -> None:
    hub_env.write_text(team_site(fake_server.base_url, *MORE_LOCKED, "agent.approval_mode"))
    (home / ".auto-coder.yaml").write_text("llm:\n  model: my-model\nagent:\n  approval_mode: full-auto\n")
    config = load_config(cwd=home, home=home)
    assert config.llm.model == "team-model" and config.agent.approval_mode == "ask"
    session = Session.create(config, working_dir=home)
    for options in (TurnOptions(model="other-model"), TurnOptions(tool_calling="prompted")):
        [message] = errors(run_turn(session, "hi", approve, options=options))
        locked = "llm.model" if options.model else "llm.tool_calling"
        assert message.startswith("Not sent: ") and f"{locked} is locked by the administrator ({hub_env})" in message
    assert fake_server.chat_requests == []  # what -m other-model used to send
    fake_server.enqueue(reply.text("same model"))
    run_turn(session, "hi", approve, options=TurnOptions(model="team-model"))  # the site's own value is no change
    assert fake_server.chat_requests[-1].json["model"] == "team-model"
    # A looser approval mode for one turn is capped at the locked one: the write still asks.
    fake_server.enqueue(reply.tool_call("write_file", {"path": "a.txt", "content": "x\n"}), reply.text("done"))
    events = run_turn(session, "write", approve, options=TurnOptions(approval_mode="full-auto"))
    assert "Approval mode 'ask' instead of 'full-auto': the site configuration allows no more." in [
        event.text for event in events if isinstance(event, Notice)]
    assert [event.tool for event in events if isinstance(event, ApprovalRequest)] == ["write_file"]
    fake_server.enqueue(reply.tool_call("write_file", {"path": "b.txt", "content": "x\n"}), reply.text("done"))
    events = run_turn(session, "write", approve, options=TurnOptions(approval_mode="read-only"))  # stricter: fine
    assert [event.tool for event in events if isinstance(event, ApprovalRequest)] == []
    assert not (home / "b.txt").exists()


def test_requests_say_who_is_asking_and_a_user_cannot_pose_as_someone_else(
        hub_env: Path, home: Path, fake_server: FakeLLMServer) -> None:
    (home / ".auto-coder.yaml").write_text(
        "llm:\n  user: mallory\n  auth_headers: {x-user: mallory, X-Team: blue}\n  extra_params: {user: mallory}\n")
    config = load_config(cwd=home, home=home)
    assert (config.llm.user, config.llm.user_header, config.llm.user_field) == ("anabel", "X-User", True)
    assert "llm.user = 'anabel'" in config.show()  # who is asking is shown, not masked
    fake_server.enqueue(reply.tool_call("run_command", {"command": "echo $HOME; echo anabel"}), reply.text("done"))
    events = run_turn(Session.create(config, working_dir=home), "who am I?", approve,
                      options=TurnOptions(approval_mode="read-only"))
    for request in fake_server.chat_requests:
        assert request.headers["x-user"] == "anabel" and request.headers["x-team"] == "blue"
        assert request.json["user"] == "anabel"
        assert request.headers["authorization"] == f"Bearer {GATEWAY_KEY}"
    # Not a secret: a user name hidden everywhere would garble paths (nothing ran here: read-only refused it).
    assert "anabel" not in Session.create(config, working_dir=home).secret_values()
    assert errors(events) == []


def test_who_is_asking_needs_a_user_and_a_header_name(tmp_path: Path, home: Path,
                                                       fake_server: FakeLLMServer) -> None:
    def load(text: str, env: dict[str, str] | None = None) -> Config:
        site = tmp_path / "site.yaml"
        site.write_text(f"llm:\n  base_url: {fake_server.base_url}\n{text}")
        return load_config(env={"AUTO_CODER_SITE_CONFIG": str(site), **(env or {})}, cwd=home, home=home)

    with pytest.raises(ConfigError, match="llm.user_header: expected an HTTP header name"):
        load("  user_header: 'X User'\n")
    with pytest.raises(ConfigError, match="llm.user_header: expected an HTTP header name"):
        load("  user_header: Authorization\n")
    with pytest.raises(ConfigError, match="llm.user: expected a user name of 1 to 256 printable characters"):
        load("  user: \"ana\\nX-Admin: yes\"\n")
    config = load("  user_header: X-User\n")
    session = Session.create(config, working_dir=home)
    [message] = errors(run_turn(session, "hi", approve))
    assert "llm.user_header" in message and "llm.user is not set" in message
    config = load("  user: ${JUPYTERHUB_USER}\n  user_field: true\n")  # outside a hub
    [message] = errors(run_turn(Session.create(config, working_dir=home), "hi", approve))
    assert message.endswith("llm.user: environment variable JUPYTERHUB_USER is not set")
    assert fake_server.chat_requests == []


def test_hub_tokens_stay_out_of_commands_and_every_text(hub_env: Path, home: Path, data_dir: Path,
                                                         fake_server: FakeLLMServer) -> None:
    (home / "notes.txt").write_text(f"the hub gave me {HUB_TOKEN}\n")
    fake_server.enqueue(reply.tool_call("run_command", {"command": "env > seen.txt; env"}),
                        reply.tool_call("read_file", {"path": "notes.txt"}), reply.text("done"))
    # In a prompt too (a variable the user printed into it, say): the CLI, like every face, hides it.
    done = subprocess.run([sys.executable, "-m", "auto_coder_nb", "--approval-mode", "full-auto",
                           f"why does {HUB_TOKEN} not work?"],
                          capture_output=True, text=True, cwd=home, env=dict(os.environ), timeout=120)
    assert done.returncode == 0, done.stderr
    seen = (home / "seen.txt").read_text()
    assert "JUPYTERHUB_USER=anabel" in seen and "JUPYTERHUB_API_URL" in seen  # the rest of the hub's settings stay
    assert HUB_TOKEN not in seen and "JUPYTERHUB_API_TOKEN" not in seen and "JPY_API_TOKEN" not in seen
    assert GATEWAY_KEY not in seen and "TEAM_GATEWAY_KEY" not in seen
    sent = str([request.json for request in fake_server.chat_requests])
    assert HUB_TOKEN not in sent and "why does <hidden> not work?" in sent and "the hub gave me <hidden>" in sent
    saved = "".join(path.read_text() for path in (data_dir / "sessions").iterdir())
    assert "why does <hidden> not work?" in saved and HUB_TOKEN not in saved and GATEWAY_KEY not in saved
    assert HUB_TOKEN not in done.stdout + done.stderr


def test_an_unexpanded_variable_from_the_spawner_is_a_config_error_naming_it(tmp_path: Path, home: Path) -> None:
    # c.Spawner.environment passes values as written: "${TEAM_KEY}" arrives as those characters.
    with pytest.raises(ConfigError) as raised:
        load_config(env={"AUTO_CODER_API_KEY": "${TEAM_KEY}"}, cwd=home, home=home)
    assert str(raised.value).startswith("AUTO_CODER_API_KEY is '${TEAM_KEY}': ${TEAM_KEY} was never expanded "
                                        "(TEAM_KEY is not set either)")
    with pytest.raises(ConfigError, match=r"AUTO_CODER_SITE_CONFIG is '\$\{SITE\}/a.yaml': \$\{SITE\} was never"):
        load_config(env={"AUTO_CODER_SITE_CONFIG": "${SITE}/a.yaml", "SITE": str(tmp_path)}, cwd=home, home=home)


def modes(*paths: Path) -> list[str]:
    return [f"{stat.S_IMODE(path.stat().st_mode):04o}" for path in paths]


def test_saved_conversations_trust_records_and_prompt_history_are_private_in_a_0755_home(
        monkeypatch: pytest.MonkeyPatch, home: Path, fake_server: FakeLLMServer) -> None:
    monkeypatch.delenv("AUTO_CODER_DATA_DIR")
    for name in ("XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AUTO_CODER_BASE_URL", fake_server.base_url)
    old = home / ".local" / "share" / "auto-coder"  # left 0755 by an older version, with a 0644 file
    (old / "sessions").mkdir(parents=True)
    old.chmod(0o755)
    session = Session.create(load_config(cwd=home, home=home), working_dir=home)
    earlier = old / "sessions" / f"{session.conversation.correlation_id}.jsonl"
    earlier.write_text(json.dumps({"v": 1, "type": "start", "correlation_id": session.conversation.correlation_id})
                       + "\n")
    earlier.chmod(0o644)
    fake_server.enqueue(reply.text("saved"))
    run_turn(session, "hello", approve)
    [saved] = (old / "sessions").iterdir()
    assert modes(home, old, old / "sessions", saved) == ["0755", "0700", "0700", "0600"]
    assert "saved" in saved.read_text()

    store = home / ".config" / "auto-coder" / "trusted.json"
    record(home / ".auto-coder.yaml", "0" * 64, store)
    assert modes(store.parent, store) == ["0700", "0600"]

    from auto_coder_nb.repl import history_path, prompt_history

    prompt_history().store_string("a prompt with a secret in it")
    assert history_path() == home / ".local" / "state" / "auto-coder" / "history"
    assert modes(history_path().parent, history_path()) == ["0700", "0600"]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_data_folder_of_another_user_is_refused_and_nothing_is_written(
        data_dir: Path, home: Path, fake_server: FakeLLMServer) -> None:
    os.chown(data_dir, 65534, 65534)  # nobody's
    data_dir.chmod(0o755)
    config = load_config(env={"AUTO_CODER_BASE_URL": fake_server.base_url}, cwd=home, home=home)
    fake_server.enqueue(reply.text("answered anyway"))
    events = run_turn(Session.create(config, working_dir=home), "hello", approve)
    notices = [event.text for event in events if isinstance(event, Notice)]
    assert any(f"{data_dir} belongs to another user (uid 65534)" in notice and "AUTO_CODER_DATA_DIR" in notice
               for notice in notices), notices
    assert not (data_dir / "sessions").exists() and modes(data_dir) == ["0755"]
    assert ConversationStore().list() == []


def test_the_doctor_says_it_runs_under_a_hub_and_whether_the_data_folder_is_private(
        hub_env: Path, home: Path, data_dir: Path, fake_server: FakeLLMServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[str] = []
    run_doctor(load_config(cwd=home, home=home), lines.append)
    text = "\n".join(lines)
    assert "JupyterHub" in text and "the server of user 'anabel'" in text and f"site files: {hub_env}" in text
    assert f"saved conversations in {data_dir}: private (0700)" in text
    assert HUB_TOKEN not in text and GATEWAY_KEY not in text
    # A node without the site file: said, with where it was looked for; a folder others can read: a warning.
    monkeypatch.delenv("AUTO_CODER_SITE_CONFIG")
    monkeypatch.setenv("AUTO_CODER_BASE_URL", fake_server.base_url)
    data_dir.chmod(0o755)
    lines.clear()
    run_doctor(load_config(cwd=home, home=home), lines.append)
    [hub_row] = [line for line in lines if line.strip().startswith("JupyterHub")]
    assert "WARN" in hub_row and "AUTO_CODER_SITE_CONFIG is not set and /etc/auto-coder/config.yaml" in hub_row
    [private_row] = [line for line in lines if line.strip().startswith("private data")]
    assert "WARN" in private_row and "readable by other users (mode 0755)" in private_row


def test_a_missing_site_file_stops_the_cli_and_names_it(tmp_path: Path, clean_env: dict[str, str]) -> None:
    missing = tmp_path / "not-on-this-node" / "site.yaml"
    done = subprocess.run([sys.executable, "-m", "auto_coder_nb", "--doctor"], capture_output=True, text=True,
                          env=clean_env | {"AUTO_CODER_SITE_CONFIG": str(missing)}, timeout=60)
    assert done.returncode == 2
    assert f"AUTO_CODER_SITE_CONFIG: site configuration file {missing} does not exist" in done.stderr


def test_the_doctor_warns_of_a_secret_on_a_command_line(tmp_path: Path, home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_GATEWAY_KEY", GATEWAY_KEY)
    (home / ".auto-coder.yaml").write_text(
        "mcp:\n  servers:\n    docs: {command: docs-server, args: [--key, '${TEAM_GATEWAY_KEY}']}\n"
        "    safe: {command: docs-server, env: {KEY: '${TEAM_GATEWAY_KEY}'}}\n")
    lines: list[str] = []
    run_doctor(load_config(env={"TEAM_GATEWAY_KEY": GATEWAY_KEY, "AUTO_CODER_BASE_URL": "http://127.0.0.1:9/v1"},
                           cwd=home, home=home), lines.append)
    [row] = [line for line in lines if line.strip().startswith("command lines")]
    assert "WARN" in row and "mcp.servers.docs.args" in row and "safe" not in row
    assert GATEWAY_KEY not in "\n".join(lines)
