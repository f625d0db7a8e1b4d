"""Bad input from the model, the file system and damaged saved conversations: a clear line, never a traceback,
and nothing lost."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from auto_coder_nb.testing.server import FakeLLMServer, reply


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
