"""Site configuration (JupyterHub, teams): site files read before the user's, `locked:` keys that user and project
files, the environment and flags cannot change, and `allow:` lists, through load_config, a real Session with the
test LLM server, the CLI and the doctor. Site files come from AUTO_CODER_SITE_CONFIG (never /etc in tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from turns import approve, run_turn

from auto_coder_nb.agent import TurnOptions
from auto_coder_nb.config import Config, load_config
from auto_coder_nb.doctor import run_doctor
from auto_coder_nb.errors import ConfigError
from auto_coder_nb.events import ApprovalRequest, ErrorEvent, Notice, ToolResult
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply

SITE = """
llm:
  base_url: {base_url}
  model: team-large
locked: [llm.base_url, agent.command_timeout, mcp.servers]
allow:
  models: ["team-*"]
  max_approval_mode: auto-edit
  base_urls: ["{base_url}"]
"""


@pytest.fixture
def home(tmp_path: Path) -> Path:
    folder = tmp_path / "home"
    folder.mkdir()
    return folder


def site_file(tmp_path: Path, text: str, name: str = "site.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(site: list[Path], home: Path, flags: dict[str, object] | None = None,
         env: dict[str, str] | None = None) -> Config:
    environment = {"AUTO_CODER_SITE_CONFIG": ":".join(map(str, site)), **(env or {})}
    return load_config(flags, env=environment, cwd=home, home=home)


def test_locks_and_allow_lists_hold_for_the_model_finally_sent(tmp_path: Path, home: Path,
                                                               fake_server: FakeLLMServer) -> None:
    """Issue 24 item 3: extra_params.model (from any file) got past a lock on llm.model and the model allow-list."""
    site = site_file(tmp_path, f"llm:\n  base_url: {fake_server.base_url}\n  model: team-large\n"
                               "  extra_params: {model: site-typo}\nlocked: [llm.model]\n"
                               "allow:\n  models: ['team-*']\n")
    (home / ".auto-coder.yaml").write_text("llm:\n  extra_params: {model: forbidden-model, temperature: 0.1}\n")
    config = load([site], home)
    assert config.llm.model == "team-large" and config.llm.extra_params == {"temperature": 0.1}
    assert sum("llm.extra_params.model is refused" in line for line in config.warnings) == 2  # site and user files
    session = Session.create(config, working_dir=home)
    run_turn(session, "hello", approve)
    assert [request.json["model"] for request in fake_server.chat_requests] == ["team-large"]

    # A turn's own model: the lock leaves only the locked one, even where the allow-list would let it through.
    events = run_turn(Session.create(config, working_dir=home), "hello", approve,
                      options=TurnOptions(model="team-small"))
    assert [e.message for e in events if isinstance(e, ErrorEvent)] == [
        f"Not sent: model 'team-small': llm.model is locked by the administrator ({site}) to 'team-large'."]
    # Set in code, past load_config: the provider still refuses to send it.
    config.llm.extra_params = {"model": "forbidden-model"}
    session = Session.create(config, working_dir=home)
    session.provider.model = "forbidden-model"
    events = run_turn(session, "hello", approve)
    assert any(isinstance(e, ErrorEvent) and "'forbidden-model'" in e.message for e in events)
    assert [request.json["model"] for request in fake_server.chat_requests] == ["team-large"]


def test_locks_and_allow_lists_override_user_files_environment_and_flags(tmp_path: Path, home: Path) -> None:
    site = site_file(tmp_path, SITE.format(base_url="https://gateway.corp/v1"))
    (home / ".auto-coder.yaml").write_text(
        "llm:\n  base_url: https://elsewhere/v1\n  model: team-small\nagent:\n  approval_mode: full-auto\n"
        "  command_timeout: 5\nmcp:\n  servers:\n    mine: {command: my-server}\n")
    config = load([site], home, env={"AUTO_CODER_BASE_URL": "https://other/v1"})
    # Locked: the site's value stays, each attempt is a warning naming the admin file.
    assert config.llm.base_url == "https://gateway.corp/v1"
    assert config.agent.command_timeout == 120.0 and config.mcp.servers == {}
    assert config.sources["llm.base_url"] == f"site {site}"
    user = home / ".auto-coder.yaml"
    assert f"{user}: llm.base_url is locked by the administrator ({site}); the site's value is kept" in config.warnings
    assert f"{user}: agent.command_timeout is locked by the administrator ({site}); the site's value is kept" \
        in config.warnings
    assert f"{user}: mcp.servers.mine is locked by the administrator ({site}); the site's value is kept" \
        in config.warnings
    assert f"AUTO_CODER_BASE_URL: llm.base_url is locked by the administrator ({site}); the site's value is kept" \
        in config.warnings
    # Not locked but allow-listed: the user may pick another allowed model; the mode is capped with a warning.
    assert config.llm.model == "team-small" and config.sources["llm.model"] == f"file {user}"
    assert config.agent.approval_mode == "auto-edit"
    assert any("approval mode 'full-auto' is above the site's maximum, 'auto-edit'" in w for w in config.warnings)
    shown = config.show()
    assert f"llm.base_url = 'https://gateway.corp/v1'  (site {site}, locked)" in shown
    assert f"site allow.models = ['team-*']  ({site})" in shown
    assert f"site locked agent.command_timeout  ({site})" in shown


@pytest.mark.parametrize(("flags", "message"), [
    ({"llm.base_url": "https://elsewhere/v1"}, "--base-url: llm.base_url is locked by the administrator ({site})"),
    ({"llm.model": "gpt-4o"}, "llm.model from flag --model: model 'gpt-4o' is not allowed by the site configuration "
                              "(allow.models in {site}: team-*)"),
    ({"agent.approval_mode": "full-auto"}, "--approval-mode: approval mode 'full-auto' is above the site's maximum"),
])
def test_a_flag_against_the_site_is_an_error(tmp_path: Path, home: Path, flags: dict[str, object],
                                              message: str) -> None:
    site = site_file(tmp_path, SITE.format(base_url="https://gateway.corp/v1"))
    with pytest.raises(ConfigError) as caught:
        load([site], home, flags)
    assert message.format(site=site) in str(caught.value)


def test_a_model_or_base_url_from_a_file_outside_the_allow_list_is_an_error(tmp_path: Path, home: Path) -> None:
    site = site_file(tmp_path, "allow:\n  models: [team-*]\n  base_urls: ['https://gateway.corp/*']\n")
    (home / ".auto-coder.yaml").write_text("llm:\n  base_url: https://gateway.corp/v1\n  model: gpt-4o\n")
    with pytest.raises(ConfigError, match=r"llm.model from file .*: model 'gpt-4o' is not allowed"):
        load([site], home)
    (home / ".auto-coder.yaml").write_text("llm:\n  base_url: https://api.openai.com/v1\n  model: team-a\n")
    with pytest.raises(ConfigError, match=r"base URL 'https://api.openai.com/v1' is not allowed"):
        load([site], home)


def test_later_site_files_win_and_user_files_come_after_them(tmp_path: Path, home: Path) -> None:
    first = site_file(tmp_path, "llm:\n  model: one\n  timeout: 30\n", "first.yaml")
    second = site_file(tmp_path, "llm:\n  model: two\n", "second.yaml")
    (home / ".auto-coder.yaml").write_text("llm:\n  timeout: 60\n")
    config = load([first, second], home)
    assert (config.llm.model, config.llm.timeout) == ("two", 60.0)
    assert config.site.files == [first, second]


@pytest.mark.parametrize(("text", "message"), [
    ("llm: [\n", "malformed YAML"),
    ("locked: llm.model\n", "locked: expected a list of dotted keys"),
    ("locked: [llm.modle]\n", "locked: unknown key 'llm.modle'"),
    ("allow:\n  model: [x]\n", "allow: unknown list 'model'"),
    ("allow:\n  max_approval_mode: yolo\n", "allow.max_approval_mode: expected one of"),
    ("allow:\n  tools: {a: b}\n", "allow.tools: expected a list of tool names"),
    ("llm:\n  modle: x\n", "unknown key 'llm.modle'"),
])
def test_a_malformed_site_file_is_a_config_error_naming_it(tmp_path: Path, home: Path, text: str,
                                                           message: str) -> None:
    site = site_file(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load([site], home)
    assert str(site) in str(caught.value) and message in str(caught.value)


def test_a_missing_site_file_is_an_error_and_locked_belongs_in_a_site_file(tmp_path: Path, home: Path) -> None:
    with pytest.raises(ConfigError, match="AUTO_CODER_SITE_CONFIG: site configuration file .*gone.yaml does not"):
        load([tmp_path / "gone.yaml"], home)
    (home / ".auto-coder.yaml").write_text("locked: [llm.model]\n")
    with pytest.raises(ConfigError, match="locked and allow belong in a site file"):
        load([], home)


def test_the_cli_exits_2_on_a_bad_site_file_and_show_config_marks_site_values(
        tmp_path: Path, home: Path, clean_env: dict[str, str]) -> None:
    site = site_file(tmp_path, SITE.format(base_url="https://gateway.corp/v1"))
    env = clean_env | {"HOME": str(home), "AUTO_CODER_SITE_CONFIG": str(site)}
    shown = subprocess.run(["auto-coder", "--show-config"], env=env, cwd=home, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"llm.model = 'team-large'  (site {site})" in shown.stdout
    assert f"files read: {site}" in shown.stdout
    refused = subprocess.run(["auto-coder", "--show-config", "--model", "gpt-4o"], env=env, cwd=home,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "is not allowed by the site configuration" in refused.stderr
    site.write_text("allow: [models]\n")
    broken = subprocess.run(["auto-coder", "--show-config"], env=env, cwd=home, capture_output=True, text=True,
                            timeout=60)
    assert broken.returncode == 2
    assert broken.stderr.strip() == f"auto-coder: config error: {site}: allow: expected a mapping with models, " \
                                    "tools, base_urls, mcp_commands, mcp_urls, max_approval_mode"


def test_the_session_caps_the_mode_keeps_allowed_tools_and_refuses_a_turns_model(
        fake_server: FakeLLMServer, tmp_path: Path, home: Path, root: Path) -> None:
    site = site_file(tmp_path, f"""
llm: {{base_url: "{fake_server.base_url}", model: team-large}}
locked: [agent.approval_mode]
allow:
  models: [team-*]
  max_approval_mode: ask
  tools: [read_file, list_directory, write_file]
""")
    config = load([site], home, env={"AUTO_CODER_APPROVAL_MODE": "full-auto"})
    session = Session.create(config, working_dir=root)
    assert sorted(session.tools.names()) == ["list_directory", "read_file", "write_file"]
    fake_server.enqueue(reply.tool_call("write_file", {"path": "a.txt", "content": "hi\n"}), reply.text("done"))
    events = run_turn(session, "write it", approve, options=TurnOptions(approval_mode="full-auto"))
    notices = [event.text for event in events if isinstance(event, Notice)]
    assert any("AUTO_CODER_APPROVAL_MODE: agent.approval_mode is locked by the administrator" in n for n in notices)
    assert any("Tools left out by the site configuration" in n and "run_command" in n for n in notices)
    assert "Approval mode 'ask' instead of 'full-auto': the site configuration allows no more." in notices
    assert [event.tool for event in events if isinstance(event, ApprovalRequest)] == ["write_file"]  # it asked
    assert [r.output for r in events if isinstance(r, ToolResult)][0].startswith("Created a.txt")
    offered = {tool["function"]["name"] for tool in fake_server.chat_requests[0].json["tools"]}
    assert offered == {"list_directory", "read_file", "write_file"}
    system = fake_server.chat_requests[0].json["messages"][0]["content"]
    assert "Not available here (the site configuration removed them): edit_file, run_command." in system

    session = Session.create(config, working_dir=root)
    requests = len(fake_server.chat_requests)
    events = run_turn(session, "hi", approve, options=TurnOptions(model="gpt-4o"))
    [error] = [event for event in events if isinstance(event, ErrorEvent)]
    assert error.message.startswith("Not sent: model 'gpt-4o' is not allowed by the site configuration")
    assert len(fake_server.chat_requests) == requests  # nothing was sent


def test_the_site_allow_list_decides_which_mcp_servers_and_tools_run(fake_server: FakeLLMServer, tmp_path: Path,
                                                                     home: Path, root: Path) -> None:
    pytest.importorskip("mcp", reason="the MCP client is the optional extra: pip install 'auto-coder-nb[mcp]'")
    notes = Path(__file__).parent / "mcp_servers" / "notes_server.py"
    site = site_file(tmp_path, f"""
llm: {{base_url: "{fake_server.base_url}", model: m}}
mcp:
  servers:
    notes: {{command: "{sys.executable}", args: ["{notes}"], startup_timeout: 120}}
allow:
  mcp_commands: ["{sys.executable}"]
  tools: [read_file, "notes__*_notes", notes__add_note]
""")
    (home / ".auto-coder.yaml").write_text("mcp:\n  servers:\n    other: {command: /usr/bin/env, args: [\"true\"]}\n")
    config = load([site], home)
    session = Session.create(config, working_dir=root)
    assert session.mcp is not None
    assert sorted(session.tools.names()) == ["notes__add_note", "notes__list_notes", "read_file"]
    assert session.mcp.servers["other"].state == "refused"
    fake_server.enqueue(reply.text("hi"))
    events = run_turn(session, "hello", approve)
    notices = [event.text for event in events if isinstance(event, Notice)]
    assert (f"MCP server other was not started: command '/usr/bin/env' is not allowed by the site configuration "
            f"(allow.mcp_commands in {site}: {sys.executable})." in notices)


def test_the_doctor_reports_the_site_files_and_what_they_refused(fake_server: FakeLLMServer, tmp_path: Path,
                                                                 home: Path) -> None:
    site = site_file(tmp_path, f"llm: {{base_url: '{fake_server.base_url}', model: fake-model}}\n"
                               "locked: [llm.model]\nallow: {models: [fake-*]}\n")
    (home / ".auto-coder.yaml").write_text("llm:\n  model: fake-other\n")
    fake_server.enqueue(reply.text("Ready."), reply.tool_call("get_current_time", {"timezone": "UTC"}))
    lines: list[str] = []
    run_doctor(load([site], home), lines.append)
    [row] = [line for line in lines if line.startswith("  site configuration")]
    assert "WARN" in row and f"files: {site}; locked: llm.model; allow: models" in row
    assert "llm.model is locked by the administrator" in row
