"""The chat panel's images and context share, in process: real widgets, a real Session, the test server."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image as PILImage
from test_panel import find, html_of, run, status, until

from auto_coder_nb.config import load_config
from auto_coder_nb.panel import ChatPanel
from auto_coder_nb.providers.base import ToolDefinition
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.tools.registry import ToolOutput


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), "purple").save(buffer, "PNG")
    return buffer.getvalue()


def draw() -> ToolOutput:
    return ToolOutput("drew it", [png(200, 100)])


def make_session(server: FakeLLMServer, root: Path, vision: bool) -> Session:
    flags = {"llm.base_url": server.base_url, "llm.model": "fake-model", "agent.approval_mode": "full-auto",
             "llm.vision": vision}
    tool = ToolDefinition("draw", "Draw a picture.", {"type": "object", "properties": {}}, draw)
    return Session.create(load_config(flags, env={}, cwd=root, home=root), working_dir=root, extra_tools=[tool])


def image_urls(message: dict[str, Any]) -> list[str]:
    content = message["content"]
    return [p["image_url"]["url"] for p in content if p["type"] == "image_url"] if isinstance(content, list) else []


def test_attach_a_variable_then_send(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    async def scenario() -> None:
        panel = ChatPanel(make_session(fake_server, tmp_path, vision=True),
                          namespace={"pic": PILImage.new("RGB", (64, 32), "red")})
        panel._attachments.name.value = "pic"
        panel._attachments.button.click()
        await until(lambda: panel.attachments, "the attachment")
        assert panel.attachments[0].startswith("pic: PNG 64x32")
        assert 'class="autocoder-thumb"' in panel._attachments.shown.value
        await panel.ask("what is this?")
        sent = fake_server.chat_requests[0].json["messages"][-1]
        assert len(image_urls(sent)) == 1 and sent["content"][0]["text"] == "what is this?"
        user = find(panel.widget, "autocoder-user")[0]
        assert 'class="autocoder-thumb"' in user.value and "data:image/png;base64," in user.value
        assert panel.attachments == [] and panel._attachments.shown.value == ""

    run(scenario)


def test_refusals_show_the_reason(fake_server: FakeLLMServer, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("text")

    async def scenario() -> None:
        blind = ChatPanel(make_session(fake_server, tmp_path, vision=False), namespace={})
        blind.attach("notes.txt")
        await until(lambda: blind.transcript, "the refusal")
        assert blind.transcript[-1]["role"] == "error" and "does not accept images" in blind.transcript[-1]["text"]
        panel = ChatPanel(make_session(fake_server, tmp_path, vision=True), namespace={})
        panel.attach("notes.txt")
        await until(lambda: panel.transcript, "the refusal")
        assert panel.transcript[-1]["text"] == "notes.txt: not a PNG or JPEG image"
        assert panel.attachments == [] and not fake_server.chat_requests

    run(scenario)


def test_tool_images_show_as_thumbnails_and_the_header_shows_the_context(fake_server: FakeLLMServer,
                                                                          tmp_path: Path) -> None:
    fake_server.enqueue(reply.tool_call("draw", {}), reply.text("a purple box"))

    async def scenario() -> None:
        panel = ChatPanel(make_session(fake_server, tmp_path, vision=True), namespace={})
        assert "autocoder-context" not in status(panel)
        await panel.ask("draw")
        thumbs = find(panel.widget, "autocoder-thumbs")
        assert len(thumbs) == 1 and "draw image 1: PNG 200x100" in html_of(thumbs[0])
        assert len(image_urls(fake_server.chat_requests[1].json["messages"][-1])) == 1
        assert "autocoder-context" in status(panel) and "% of 32k" in status(panel)  # the tooltip
        assert ">context " in status(panel)

    run(scenario)
