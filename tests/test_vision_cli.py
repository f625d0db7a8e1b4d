"""Images and project instructions at the terminal: `auto-coder --attach`, `--show-context`, the REPL's
`/attach` and the context share in its prompt, against the project's test server."""

from __future__ import annotations

import io
from pathlib import Path

import pexpect
import pytest
from PIL import Image as PILImage
from test_cli import run, spawn_repl
from test_images import decompression_bomb

from auto_coder_nb.testing.server import FakeLLMServer, reply


@pytest.fixture
def env(tmp_path: Path, fake_server: FakeLLMServer, clean_env: dict[str, str]) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir()
    return clean_env | {"HOME": str(home), "AUTO_CODER_BASE_URL": fake_server.base_url,
                        "AUTO_CODER_MODEL": "fake-model", "AUTO_CODER_VISION": "true", "NO_COLOR": "1",
                        "PROMPT_TOOLKIT_NO_CPR": "1", "TERM": "dumb"}


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    root = tmp_path / "work"
    root.mkdir()
    buffer = io.BytesIO()
    PILImage.new("RGB", (300, 200), "red").save(buffer, "JPEG")
    (root / "photo.jpg").write_bytes(buffer.getvalue())
    (root / "notes.txt").write_text("just text")
    (root / "AGENTS.md").write_text("Always answer in haiku.\n")
    return root


def image_parts(message: dict[str, object]) -> list[dict[str, object]]:
    content = message["content"]
    return [part for part in content if part["type"] == "image_url"] if isinstance(content, list) else []  # type: ignore[index]


def test_attach_sends_the_image_with_the_prompt(fake_server: FakeLLMServer, env: dict[str, str],
                                                workspace: Path) -> None:
    result = run(["--attach", "photo.jpg", "what is this?"], env, workspace)
    assert result.returncode == 0, result.stderr
    request = fake_server.chat_requests[0].json["messages"]
    assert "Always answer in haiku." in request[0]["content"]
    parts = image_parts(request[-1])
    assert len(parts) == 1 and str(parts[0]["image_url"]["url"]).startswith("data:image/jpeg;base64,")  # type: ignore[index]


def test_show_context_lists_instructions_and_images(fake_server: FakeLLMServer, env: dict[str, str],
                                                    workspace: Path) -> None:
    result = run(["--show-context", "--attach", "photo.jpg", "what is this?"], env, workspace)
    assert result.returncode == 0 and result.stdout == "what is this?\n"
    assert "project instructions (in the system prompt): AGENTS.md (24 bytes)" in result.stderr
    assert "image: photo.jpg: JPEG 300x200" in result.stderr
    assert not fake_server.requests


def test_bad_attachments_and_models_without_vision_are_refused(fake_server: FakeLLMServer, env: dict[str, str],
                                                               workspace: Path) -> None:
    bad = run(["--attach", "notes.txt", "look"], env, workspace)
    assert bad.returncode == 2 and "notes.txt: not a PNG or JPEG image" in bad.stderr
    (workspace / "bomb.png").write_bytes(decompression_bomb())
    bomb = run(["--attach", "bomb.png", "look"], env, workspace)
    assert bomb.returncode == 2, bomb.stderr
    assert bomb.stderr.splitlines() == [
        "auto-coder: error: --attach bomb.png: 13000x13000 is too large to decode (169 megapixels; the limit is 50)"]
    blind = run(["--attach", "photo.jpg", "look"], env | {"AUTO_CODER_VISION": "false"}, workspace)
    assert blind.returncode == 1 and "does not accept images" in blind.stderr
    assert not fake_server.chat_requests


def test_repl_attach_and_the_context_share_in_the_prompt(fake_server: FakeLLMServer, env: dict[str, str],
                                                         workspace: Path) -> None:
    fake_server.enqueue(reply.text("A red rectangle.", usage={"prompt_tokens": 3277, "completion_tokens": 5,
                                                              "total_tokens": 3282}))
    child = spawn_repl(env, workspace)
    child.sendline("/attach missing.png")
    child.expect("missing.png: no such file")
    child.sendline("/attach photo.jpg")
    child.expect("Attached photo.jpg: JPEG 300x200")
    child.sendline("describe it")
    child.expect("A red rectangle.")
    child.expect(r"\[context 10% of 32k\] > ")
    assert len(image_parts(fake_server.chat_requests[0].json["messages"][-1])) == 1
    child.sendline("and now?")
    child.expect(r"\[context ~?\d+% of 32k\] > ")
    assert not image_parts(fake_server.chat_requests[1].json["messages"][-1])  # sent once, with one message
    for command, said in (("/clear", "Conversation cleared"), ("/reset", "session state reset")):
        child.sendline(command)
        child.expect(said)
        child.expect(r"(\[context [^\]]*\] )?> ")
        assert child.match.group(1) is None, f"the old conversation's share after {command}"
    child.sendline("/quit")
    child.expect(pexpect.EOF)
