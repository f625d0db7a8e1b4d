"""Configuration: files, environment, flags, precedence, ${VAR}, errors, --show-config."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest

from auto_coder_nb import auth, trust
from auto_coder_nb import config as config_module
from auto_coder_nb.config import DEFAULT_BASE_URL, DEFAULT_MODEL, load_config
from auto_coder_nb.errors import ConfigError
from auto_coder_nb.session import Session, start_mcp_servers
from auto_coder_nb.tools.registry import ToolRegistry


def write(path: Path, text: str, trusted_in: Path | None = None) -> Path:
    """Write a config file; `trusted_in`: the home of a user who trusts it (a project file that may set
    anything, recorded as --trust-project would)."""
    path.write_text(text, encoding="utf-8")
    if trusted_in is not None:
        trust.record(path, trust.digest(path.read_bytes()), trust.store_path({}, trusted_in))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    home, cwd = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    cwd.mkdir()
    return home, cwd


def test_defaults_when_nothing_is_set(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    config = load_config(env={}, home=home, cwd=cwd)
    assert config.llm.base_url == DEFAULT_BASE_URL == "http://localhost:11434/v1"
    assert config.llm.model == DEFAULT_MODEL == "llama3.2"
    assert config.llm.api_key is None
    assert config.agent.approval_mode == "ask"
    assert config.agent.max_iterations == 50
    assert config.sources == {}


def test_files_then_env_then_flags(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    home, cwd = dirs
    write(home / ".auto-coder.yaml", "llm:\n  model: home-model\n  timeout: 30\n  base_url: http://home/v1\n")
    write(cwd / ".auto-coder.yaml", "llm:\n  model: project-model\nagent:\n  max_iterations: 7\n")
    explicit = write(tmp_path / "extra.yaml", "llm:\n  base_url: http://explicit/v1\n")
    env = {"AUTO_CODER_MODEL": "env-model"}
    config = load_config({"llm.model": None}, explicit, env=env, home=home, cwd=cwd)
    assert config.llm.timeout == 30.0  # home file, untouched by later files: key by key
    assert config.agent.max_iterations == 7
    assert config.llm.base_url == "http://explicit/v1"
    assert config.llm.model == "env-model"
    assert config.sources["llm.model"] == "env AUTO_CODER_MODEL"
    assert config.sources["llm.timeout"] == f"file {home / '.auto-coder.yaml'}"
    config = load_config({"llm.model": "flag-model"}, explicit, env=env, home=home, cwd=cwd)
    assert config.llm.model == "flag-model"
    assert config.sources["llm.model"] == "flag --model"


def test_openai_api_key_is_only_a_fallback(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    config = load_config(env={"OPENAI_API_KEY": "sk-openai"}, home=home, cwd=cwd)
    assert config.llm.api_key == "sk-openai"
    write(cwd / ".auto-coder.yaml", "llm:\n  api_key: sk-file\n", trusted_in=home)
    assert load_config(env={"OPENAI_API_KEY": "sk-openai"}, home=home, cwd=cwd).llm.api_key == "sk-file"
    env = {"OPENAI_API_KEY": "sk-openai", "AUTO_CODER_API_KEY": "sk-auto"}
    assert load_config(env=env, home=home, cwd=cwd).llm.api_key == "sk-auto"


def test_variables_expand_from_the_environment(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml",
          "llm:\n  api_key: ${MY_KEY}\n  auth_headers:\n    X-Team: ${TEAM:-data}\n    X-Key: pre-${MY_KEY}\n",
          trusted_in=home)
    config = load_config(env={"MY_KEY": "s3cret"}, home=home, cwd=cwd)
    assert config.llm.api_key == "s3cret"
    assert config.llm.auth_headers == {"X-Team": "data", "X-Key": "pre-s3cret"}


def test_an_unset_variable_is_named_where_it_is_used(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    path = write(cwd / ".auto-coder.yaml", "llm:\n  api_key: ${NOT_SET_ANYWHERE}\n", trusted_in=home)
    config = load_config(env={}, home=home, cwd=cwd)  # not an error yet: nothing used it
    assert config.llm.api_key is None
    with pytest.raises(ConfigError) as info:
        auth.http_client_kwargs(config)  # what every request to the model is made with
    assert str(info.value) == f"{path}: llm.api_key: environment variable NOT_SET_ANYWHERE is not set"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llm: [unclosed\n", "malformed YAML at line"),
        ("llm:\n  modle: x\n", "unknown key 'llm.modle'"),
        ("llm:\n  timeout: soon\n", "llm.timeout: expected a positive number"),
        ("agent:\n  max_iterations: many\n", "agent.max_iterations: expected a positive whole number"),
        ("agent:\n  approval_mode: yolo\n", "agent.approval_mode: expected one of ask, auto-edit"),
        ("llm:\n  auth_headers: [a, b]\n", "llm.auth_headers: expected a mapping"),
        ("llm:\n  base_url: localhost:8765/v1\n", "llm.base_url: expected a URL starting with http://"),
        ("llm:\n  model: ''\n", "llm.model: expected a model name"),
        ("models:\n  a: b\n", "unknown section 'models'"),
        ("- just a list\n", "expected a mapping"),
    ],
)
def test_bad_files_give_one_line_naming_file_and_key(dirs: tuple[Path, Path], text: str, expected: str) -> None:
    home, cwd = dirs
    path = write(cwd / ".auto-coder.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_config(env={}, home=home, cwd=cwd)
    message = str(info.value)
    assert expected in message
    assert str(path) in message
    assert "\n" not in message


def test_a_wrong_secret_is_not_echoed(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "llm:\n  api_key: [sk-visible-secret]\n")
    with pytest.raises(ConfigError) as info:
        load_config(env={}, home=home, cwd=cwd)
    assert "sk-visible-secret" not in str(info.value)


def test_show_config_masks_secrets_and_names_sources(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "llm:\n  auth_headers:\n    X-Gateway-Key: hdr-secret-1\n")
    config = load_config(env={"AUTO_CODER_API_KEY": "sk-shown-nowhere"}, home=home, cwd=cwd)
    shown = config.show()
    assert "sk-shown-nowhere" not in shown and "hdr-secret-1" not in shown
    assert "llm.api_key = '<hidden>'  (env AUTO_CODER_API_KEY)" in shown
    assert "X-Gateway-Key" in shown
    assert "llm.model = 'llama3.2'  (default)" in shown


def run_cli(*args: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "auto_coder_nb", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_cli_config_errors_exit_2_without_traceback(dirs: tuple[Path, Path], clean_env: dict[str, str]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "llm:\n  timeout: -1\n")
    result = run_cli("--show-config", cwd=cwd, env=clean_env | {"HOME": str(home)})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and "llm.timeout" in result.stderr


def test_cli_show_config(dirs: tuple[Path, Path], clean_env: dict[str, str]) -> None:
    home, cwd = dirs
    env = clean_env | {"HOME": str(home), "AUTO_CODER_API_KEY": "sk-cli-secret"}
    result = run_cli("--show-config", "--model", "m1", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "llm.model = 'm1'  (flag --model)" in result.stdout
    assert "sk-cli-secret" not in result.stdout + result.stderr


def test_cli_version_and_usage_errors(dirs: tuple[Path, Path], clean_env: dict[str, str]) -> None:
    home, cwd = dirs
    env = clean_env | {"HOME": str(home)}
    version = run_cli("--version", cwd=cwd, env=env)
    assert version.returncode == 0 and version.stdout.startswith("auto-coder ")
    bad = run_cli("--approval-mode", "sometimes", "hi", cwd=cwd, env=env)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    no_scheme = run_cli("--base-url", "localhost:8765/v1", "hi", cwd=cwd, env=env)
    assert no_scheme.returncode == 2 and "--base-url: llm.base_url: expected a URL" in no_scheme.stderr
    missing = run_cli("-d", str(cwd / "nowhere"), "hi", cwd=cwd, env=env)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def test_show_config_hides_passwords_in_urls(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "llm:\n  base_url: https://me:url-secret-1@gw.example/v1\n"
                                    "  proxy: http://corp:proxy-secret-2@proxy:8080\n")
    shown = load_config(env={}, home=home, cwd=cwd).show()
    assert "url-secret-1" not in shown and "proxy-secret-2" not in shown
    assert "https://me:<hidden>@gw.example/v1" in shown


def test_tool_calling_and_max_tokens_from_file_env_and_flags(dirs: tuple[Path, Path],
                                                            clean_env: dict[str, str]) -> None:
    home, cwd = dirs
    defaults = load_config(env={}, home=home, cwd=cwd)
    assert (defaults.llm.tool_calling, defaults.llm.max_tokens) == ("auto", 4096)
    write(cwd / ".auto-coder.yaml", "llm:\n  tool_calling: prompted\n  max_tokens: null\n")
    config = load_config(env={}, home=home, cwd=cwd)
    assert (config.llm.tool_calling, config.llm.max_tokens) == ("prompted", None)
    config = load_config(env={"AUTO_CODER_TOOL_CALLING": "none", "AUTO_CODER_MAX_TOKENS": "256"}, home=home, cwd=cwd)
    assert (config.llm.tool_calling, config.llm.max_tokens) == ("none", 256)
    assert config.sources["llm.tool_calling"] == "env AUTO_CODER_TOOL_CALLING"
    with pytest.raises(ConfigError, match=r"AUTO_CODER_TOOL_CALLING: llm.tool_calling: expected one of auto, "
                                          r"native, prompted, none, got 'sometimes'"):
        load_config(env={"AUTO_CODER_TOOL_CALLING": "sometimes"}, home=home, cwd=cwd)
    with pytest.raises(ConfigError, match="llm.max_tokens: expected a positive whole number or null"):
        load_config({"llm.max_tokens": "0"}, env={}, home=home, cwd=cwd)
    env = clean_env | {"HOME": str(home)}
    result = run_cli("--show-config", "--tool-calling", "native", "--max-tokens", "null", cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert "llm.tool_calling = 'native'  (flag --tool-calling)" in result.stdout
    assert "llm.max_tokens = None  (flag --max-tokens)" in result.stdout
    result = run_cli("--tool-calling", "maybe", "hi", cwd=cwd, env=env)
    assert result.returncode == 2 and "--tool-calling" in result.stderr


BILLION_LAUGHS = "".join(
    f"l{level}: &l{level} [{', '.join([f'*l{level - 1}'] * 10) if level else ', '.join(['lol'] * 10)}]\n"
    for level in range(9))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (BILLION_LAUGHS, "more than 10000 values once aliases are expanded"),
        ("x: &x 1\ny: [" + ", ".join(["*x"] * 150) + "]\n", "more than 100 aliases"),
        ("llm:\n  extra_params: &a\n    again: *a\n", "an alias refers to a node that contains it"),
        ("llm:\n  extra_params: " + "[" * 20000 + "]" * 20000 + "\n", "nested more than 32 levels deep"),
        ("llm:\n  extra_params:\n" + "".join(f"    k{i}: {i}\n" for i in range(6000)), "more than 10000 values"),
        ("llm:\n  model: x\n" + "#" * (300 * 1024) + "\n", "larger than 256 KiB"),
        ("llm:\n  model: bell\x07\n", "character U+0007 at position 19 is not allowed"),
    ],
    ids=["billion-laughs", "many-aliases", "alias-cycle", "deep-nesting", "many-values", "huge-file", "control"],
)
def test_hostile_yaml_is_refused_quickly_in_one_line(dirs: tuple[Path, Path], text: str, expected: str) -> None:
    home, cwd = dirs
    path = write(cwd / ".auto-coder.yaml", text)
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_config(env={}, home=home, cwd=cwd)
    assert time.monotonic() - started < 5
    message = str(info.value)
    assert expected in message and message.startswith(f"{path}: ") and "\n" not in message


def test_a_file_that_is_not_utf8_is_named(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    path = cwd / ".auto-coder.yaml"
    path.write_bytes("llm:\n  model: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_config(env={}, home=home, cwd=cwd)
    assert str(info.value).startswith(f"{path}: ")


@pytest.mark.parametrize("key", ["llm.timeout", "agent.command_timeout", "auth.token_lifetime",
                                 "auth.token_command_timeout"])
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "0", "-1", "1.0e+300", "'nan'", "'inf'", "'1e3'",
                                   "'30s'", "[30]", "true", "2024-01-01"])
def test_seconds_must_be_finite_positive_and_sensible_from_a_file(dirs: tuple[Path, Path], key: str,
                                                                  value: str) -> None:
    home, cwd = dirs
    section, name = key.split(".")
    path = write(cwd / ".auto-coder.yaml", f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"{key}: expected a positive number of seconds") as info:
        load_config(env={}, home=home, cwd=cwd)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


@pytest.mark.parametrize("key", ["llm.max_tokens", "agent.max_iterations", "agent.max_tool_calls_per_answer",
                                 "agent.context_window", "agent.image_max_side", "agent.max_images",
                                 "history.retention_days"])
@pytest.mark.parametrize("value", [".nan", ".inf", "0", "-5", "2.5", "99999999999999999999", "'1e3'", "'²'",
                                   "true"])
def test_whole_numbers_must_be_positive_and_sensible_from_a_file(dirs: tuple[Path, Path], key: str,
                                                                 value: str) -> None:
    home, cwd = dirs
    section, name = key.split(".")
    path = write(cwd / ".auto-coder.yaml", f"{section}:\n  {name}: {value}\n")
    with pytest.raises(ConfigError, match=rf"{key}: expected a positive whole number") as info:
        load_config(env={}, home=home, cwd=cwd)
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_mcp_timeouts_must_be_finite(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "mcp:\n  servers:\n    files:\n      command: srv\n      startup_timeout: .inf\n")
    with pytest.raises(ConfigError, match=r"mcp.servers.files.startup_timeout: expected a positive number"):
        load_config(env={}, home=home, cwd=cwd)


def test_numbers_written_as_text_are_read_only_when_written_plainly(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "llm:\n  timeout: '30'\n  max_tokens: '512'\nagent:\n  command_timeout: '2.5'\n")
    config = load_config(env={"AUTO_CODER_MAX_TOKENS": " 256 "}, home=home, cwd=cwd)
    assert (config.llm.timeout, config.llm.max_tokens, config.agent.command_timeout) == (30.0, 256, 2.5)
    assert load_config({"llm.timeout": "45"}, env={}, home=home, cwd=cwd).llm.timeout == 45.0
    for text in ("1e3", "nan", "inf", "0x10", "1_000", "+5", "²"):
        with pytest.raises(ConfigError, match=r"AUTO_CODER_MAX_TOKENS: llm.max_tokens: expected a positive whole"):
            load_config(env={"AUTO_CODER_MAX_TOKENS": text}, home=home, cwd=cwd)
        with pytest.raises(ConfigError, match=r"--timeout: llm.timeout: expected a positive number of seconds"):
            load_config({"llm.timeout": text}, env={}, home=home, cwd=cwd)
    for number in (float("nan"), float("inf"), 0, -1.0, 1e300):
        with pytest.raises(ConfigError, match=r"--timeout: llm.timeout: expected a positive number of seconds"):
            load_config({"llm.timeout": number}, env={}, home=home, cwd=cwd)


@pytest.mark.parametrize(("value", "expected"), [
    ("{temperature: .nan}", "llm.extra_params.temperature: expected a finite number"),
    ("{stop: [a, .inf]}", "llm.extra_params.stop: expected a finite number"),
    ("{seed: 2024-01-01}", "llm.extra_params.seed: expected a JSON value"),
    ("{options: {1: x}}", "llm.extra_params.options: keys must be strings"),
])
def test_extra_params_must_be_sendable_as_json(dirs: tuple[Path, Path], value: str, expected: str) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", f"llm:\n  extra_params: {value}\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(env={}, home=home, cwd=cwd)


@pytest.mark.parametrize(("text", "expected"), [
    ("llm:\n  extra_params: [a, b]\n", "llm.extra_params: expected a mapping"),
    ("mcp:\n  servers: [a, b]\n", "mcp.servers: expected a mapping"),
    ("mcp:\n  servers:\n    files: [srv]\n", "mcp.servers.files: expected a mapping"),
    ("mcp:\n  servers:\n    files:\n      command: srv\n      env: [A=1]\n",
     "mcp.servers.files.env: expected a mapping"),
    ("agent: [a]\n", "agent: expected a mapping of settings"),
])
def test_a_list_where_a_mapping_belongs_names_file_and_key(dirs: tuple[Path, Path], text: str, expected: str) -> None:
    home, cwd = dirs
    path = write(cwd / ".auto-coder.yaml", text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(env={}, home=home, cwd=cwd)
    assert str(path) in str(info.value)


def test_a_folder_or_a_fifo_given_as_config_file_is_refused(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    home, cwd = dirs
    with pytest.raises(ConfigError, match=rf"config file {tmp_path} is a folder; give the path of a YAML file"):
        load_config(None, tmp_path, env={}, home=home, cwd=cwd)
    fifo = tmp_path / "config.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):  # reading it would block for ever
        load_config(None, fifo, env={}, home=home, cwd=cwd)
    with pytest.raises(ConfigError, match="AUTO_CODER_SITE_CONFIG: site configuration file .* is a folder"):
        load_config(env={"AUTO_CODER_SITE_CONFIG": str(tmp_path)}, home=home, cwd=cwd)


@pytest.mark.parametrize(("args", "text", "expected"), [
    (["--config", "."], None, "is a folder"),
    ([], "llm:\n  timeout: .nan\n", "llm.timeout: expected a positive number of seconds"),
    ([], "llm:\n  timeout: 0\n", "llm.timeout: expected a positive number of seconds"),
    ([], "a: &a [1, 2]\nb: [" + ", ".join(["*a"] * 120) + "]\n", "more than 100 aliases"),
    (["--max-tokens", "1e3"], None, "--max-tokens: llm.max_tokens: expected a positive whole number"),
])
def test_cli_refuses_bad_configuration_in_one_line_with_exit_2(dirs: tuple[Path, Path], clean_env: dict[str, str],
                                                              args: list[str], text: str | None,
                                                              expected: str) -> None:
    home, cwd = dirs
    if text is not None:
        write(cwd / ".auto-coder.yaml", text)
    result = run_cli(*args, "--show-config", cwd=cwd, env=clean_env | {"HOME": str(home)})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1
    assert expected in result.stderr


GATEWAY_FILE = "llm:\n  base_url: http://gateway.example/v1\n  api_key: ${MY_GATEWAY_KEY}\n"


def test_an_unset_variable_is_overridden_silently_by_a_later_file_variable_or_flag(dirs: tuple[Path, Path],
                                                                                   tmp_path: Path) -> None:
    home, cwd = dirs
    write(home / ".auto-coder.yaml", GATEWAY_FILE)
    by_env = load_config(env={"AUTO_CODER_API_KEY": "sk-env"}, home=home, cwd=cwd)
    by_flag = load_config({"llm.api_key": "sk-flag"}, env={}, home=home, cwd=cwd)
    by_file = load_config(None, write(tmp_path / "more.yaml", "llm:\n  api_key: sk-file\n"), env={}, home=home,
                          cwd=cwd)
    for config, key in ((by_env, "sk-env"), (by_flag, "sk-flag"), (by_file, "sk-file")):
        assert config.llm.api_key == key and config.unset == {} and config.warnings == []
        assert auth.http_client_kwargs(config)["auth"] is not None
    # OPENAI_API_KEY is only a fallback when nothing names a key: it does not go to the gateway the file names.
    config = load_config(env={"OPENAI_API_KEY": "sk-openai"}, home=home, cwd=cwd)
    assert config.llm.api_key is None and "llm.api_key" in config.unset
    # a later file's unset variable does not fall back to an earlier file's value either
    write(cwd / ".auto-coder.yaml", "llm:\n  api_key: ${OTHER_KEY}\n", trusted_in=home)
    config = load_config(env={"MY_GATEWAY_KEY": "sk-home"}, home=home, cwd=cwd)
    assert config.llm.api_key is None
    with pytest.raises(ConfigError, match="llm.api_key: environment variable OTHER_KEY is not set"):
        auth.http_client_kwargs(config)


def test_an_unset_variable_the_auth_mode_does_not_use_is_no_error(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    write(cwd / ".auto-coder.yaml", "auth:\n  client_secret: ${CLIENT_SECRET}\n"
                                    "agent:\n  system_prompt: ${TEAM_PROMPT:-You help.}\n", trusted_in=home)
    config = load_config(env={}, home=home, cwd=cwd)
    assert auth.http_client_kwargs(config)["headers"] == {}  # API-key mode: the client secret is not used
    with pytest.raises(ConfigError, match="auth.client_secret: environment variable CLIENT_SECRET is not set"):
        auth.http_client_kwargs(load_config(env={"SERVER_SIDE_TOKEN_REFRESH": "true"}, home=home, cwd=cwd))


def test_show_config_shows_an_unset_variable_instead_of_failing(dirs: tuple[Path, Path],
                                                                clean_env: dict[str, str]) -> None:
    home, cwd = dirs
    path = write(home / ".auto-coder.yaml", GATEWAY_FILE)
    result = run_cli("--show-config", cwd=cwd, env=clean_env | {"HOME": str(home)})
    assert result.returncode == 0, result.stderr
    assert f"llm.api_key = <unset: ${{MY_GATEWAY_KEY}} is not set>  (file {path})" in result.stdout
    result = run_cli("--show-config", cwd=cwd, env=clean_env | {"HOME": str(home), "AUTO_CODER_API_KEY": "sk-x1"})
    assert result.returncode == 0 and "llm.api_key = '<hidden>'  (env AUTO_CODER_API_KEY)" in result.stdout


def test_a_session_setting_with_an_unset_variable_stops_the_session(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    path = write(cwd / ".auto-coder.yaml", "agent:\n  working_dir: ${PROJECT_ROOT}/src\n", trusted_in=home)
    config = load_config(env={}, home=home, cwd=cwd)
    assert config.agent.working_dir is None and "agent.working_dir" in config.show()
    with pytest.raises(ConfigError) as info:
        Session.create(config, working_dir=cwd)
    assert str(info.value) == f"{path}: agent.working_dir: environment variable PROJECT_ROOT is not set"


def test_an_mcp_server_with_an_unset_variable_is_not_started_and_says_why(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    path = write(cwd / ".auto-coder.yaml",
                 "mcp:\n  servers:\n"
                 "    gh:\n      command: gh-mcp\n      env:\n        TOKEN: ${GH_TOKEN}\n"
                 "        USER: ${GH_USER}-${GH_TOKEN}\n      timeout: ${GH_TIMEOUT}\n"
                 "    later:\n      url: ${LATER_URL}\n      disabled: true\n", trusted_in=home)
    config = load_config(env={"GH_USER": "octo-secret-user"}, home=home, cwd=cwd)
    gh = config.mcp.servers["gh"]
    assert gh.unset is not None and gh.unset.message() == \
        f"{path}: mcp.servers.gh.env.TOKEN: environment variable GH_TOKEN is not set"
    assert "octo-secret-user" in gh.secrets and "octo-secret-user" in config.from_variables
    shown = config.show()
    assert "mcp.servers.gh = stdio gh-mcp env TOKEN, USER (unset: ${GH_TOKEN} is not set)" in shown
    assert "octo-secret-user" not in shown
    registry = ToolRegistry()
    servers = start_mcp_servers(config, registry, cwd)
    assert servers is not None
    try:
        assert (servers.servers["gh"].state, servers.servers["gh"].detail) == ("failed", gh.unset.message())
        assert servers.servers["later"].state == "disabled"  # never started: its unset URL is no error
    finally:
        servers.close()
    config = load_config(env={"GH_TOKEN": "t", "GH_USER": "u", "GH_TIMEOUT": "5", "LATER_URL": "http://x/mcp"},
                         home=home, cwd=cwd)
    assert config.mcp.servers["gh"].unset is None and config.mcp.servers["gh"].timeout == 5.0


def test_switches_from_the_environment_are_true_false_or_refused(dirs: tuple[Path, Path]) -> None:
    home, cwd = dirs
    config = load_config(env={"USE_SSO": "Yes", "SERVER_SIDE_TOKEN_REFRESH": "0", "AUTO_CODER_VISION": "off"},
                         home=home, cwd=cwd)
    assert (config.auth.use_sso, config.auth.server_side_token_refresh, config.llm.vision) == (True, False, False)
    assert load_config(env={"AUTO_CODER_VISION": "null"}, home=home, cwd=cwd).llm.vision is None
    for var, key in (("USE_SSO", "auth.use_sso"), ("AUTO_CODER_VISION", "llm.vision")):
        with pytest.raises(ConfigError, match=rf"^{var}: {key}: expected true or false, got 'enabled'$"):
            load_config(env={var: "enabled"}, home=home, cwd=cwd)  # was read as false, silently


def test_every_number_setting_has_a_limit() -> None:
    numbers = [f"{section}.{f.name}" for section, cls in config_module.SECTIONS.items() for f in fields(cls)
               if str(f.type).startswith(("int", "float"))]
    numbers += [f"mcp.servers.*.{f.name}" for f in fields(config_module.McpServerConfig)
                if str(f.type).startswith(("int", "float"))]
    assert len(numbers) >= 13
    assert sorted(numbers) == sorted(config_module.NUMBER_LIMITS)
