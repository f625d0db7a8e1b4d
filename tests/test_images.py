"""Images for vision models (checking, downscaling, the history's image budget, tool images reaching the
model as user-message parts) and the server's vision capability, against the project's test server."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from test_agent import assert_strictly_valid
from turns import run_turn

from auto_coder_nb.agent import Agent
from auto_coder_nb.approvals import ApprovalPolicy
from auto_coder_nb.config import AgentConfig, Config, load_config
from auto_coder_nb.events import Event, ToolResult, TurnDone
from auto_coder_nb.images import (
    MAX_IMAGE_BYTES,
    Image,
    ImageError,
    fit_image,
    image_from_object,
    read_image_file,
    sniff,
)
from auto_coder_nb.providers import capabilities
from auto_coder_nb.providers.base import ToolDefinition
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.state.conversation import Conversation
from auto_coder_nb.testing.server import FakeLLMServer, RecordedRequest, reply
from auto_coder_nb.tools.registry import ToolOutput, ToolRegistry


def png(width: int, height: int, color: str = "red") -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def jpeg(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    PILImage.new("RGB", (width, height), "blue").save(buffer, "JPEG")
    return buffer.getvalue()


# -- checking and fitting -------------------------------------------------------------------------

def decompression_bomb(side: int = 13_000) -> bytes:
    """A PNG of about 20 KB (1-bit, all black) that decodes to side x side pixels: 169 megapixels by default,
    1.6 GB and 4 s to fit with Pillow, which also printed its DecompressionBombWarning raw."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    rows = (b"\x00" + b"\x00" * ((side + 7) // 8)) * side
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9))
            + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_before_it_is_decoded(recwarn: pytest.WarningsRecorder) -> None:
    bomb = decompression_bomb()
    assert len(bomb) < 40_000
    with pytest.raises(ImageError) as refused:
        fit_image(bomb, "bomb.png", 1024)
    assert str(refused.value) == "bomb.png: 13000x13000 is too large to decode (169 megapixels; the limit is 50)"
    assert not recwarn.list
    # Within the limit it is decoded and fitted as before.
    assert fit_image(decompression_bomb(3000), "fine.png", 1024).original == (3000, 3000)


def test_sizes_are_read_from_png_and_jpeg_headers() -> None:
    assert sniff(png(300, 200)) == ("image/png", 300, 200)
    assert sniff(jpeg(64, 48)) == ("image/jpeg", 64, 48)
    with pytest.raises(ImageError, match="not a PNG or JPEG"):
        sniff(b"GIF89a....")


def test_a_large_image_is_downscaled_to_the_maximum_side() -> None:
    image = fit_image(png(2000, 1000), "plot.png", max_side=500)
    assert (image.width, image.height) == (500, 250) and image.original == (2000, 1000)
    assert sniff(image.data) == ("image/png", 500, 250)
    assert image.describe().startswith("plot.png: PNG 500x250, ") and "downscaled from 2000x1000" in image.describe()
    small = png(100, 80)
    kept = fit_image(small, "small", max_side=500)
    assert kept.data == small and kept.original is None
    assert kept.data_url().startswith("data:image/png;base64,iVBOR")


def test_without_pillow_a_small_image_passes_and_a_large_one_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    small, big = png(100, 80), png(2000, 1000)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `from PIL import Image` now raises ImportError
    assert fit_image(small, "small", 500).width == 100
    with pytest.raises(ImageError, match="pip install pillow") as refused:
        fit_image(big, "big.png", 500)
    assert "2000x1000" in str(refused.value) and "agent.image_max_side" in str(refused.value)


def test_bad_images_are_refused_with_the_reason(tmp_path: Path) -> None:
    corrupt = png(300, 200)[:60]  # a real header, the pixels cut off
    with pytest.raises(ImageError, match="corrupt"):
        fit_image(corrupt, "cut.png", 1024)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ImageError, match="notes.png: not a PNG or JPEG"):
        read_image_file(text, 1024)
    with pytest.raises(ImageError, match="no such file"):
        read_image_file(tmp_path / "missing.png", 1024)
    huge = tmp_path / "huge.png"
    with huge.open("wb") as handle:
        handle.truncate(MAX_IMAGE_BYTES + 1)  # sparse: nothing is read before it is refused
    with pytest.raises(ImageError, match="too large"):
        read_image_file(huge, 1024)
    with pytest.raises(ImageError, match="not a file"):
        read_image_file(tmp_path, 1024)


def test_images_from_python_objects() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from IPython.display import Image as IPythonImage
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 3), dpi=50)
    figure.add_subplot().plot([1, 2, 3])
    assert image_from_object(figure, "fig", 1024).mime == "image/png"
    assert image_from_object(PILImage.new("RGB", (40, 30)), "pic", 1024).width == 40
    assert image_from_object(IPythonImage(data=jpeg(20, 10)), "ipy", 1024).mime == "image/jpeg"
    with pytest.raises(ImageError, match="df is a dict, not an image"):
        image_from_object({"a": 1}, "df", 1024)


# -- the history's image budget ---------------------------------------------------------------------

def image(number: int, side: int = 64) -> Image:
    return fit_image(png(side, side, color=(number * 40 % 256, 0, 0)), f"plot{number}.png", 1024)  # type: ignore[arg-type]


def test_only_the_last_images_stay_in_the_history() -> None:
    conversation = Conversation("system", max_images=2)
    for number in range(1, 5):
        conversation.add_user(f"look at {number}", [image(number)])
        conversation.add_assistant("seen")
    parts = [part for m in conversation.messages if isinstance(m["content"], list) for part in m["content"]]
    urls = [part for part in parts if part["type"] == "image_url"]
    placeholders = [part["text"] for part in parts if "image removed" in part.get("text", "")]
    assert len(urls) == 2 and [i.source for i in conversation.images] == ["plot3.png", "plot4.png"]
    assert len(placeholders) == 2 and "plot1.png: PNG 64x64" in placeholders[0]
    json.dumps(conversation.messages)  # still plain JSON, nothing of ours in it


def test_images_count_by_their_tokens_and_shortening_drops_them() -> None:
    conversation = Conversation("system", max_images=10)
    big = image(1, side=1000)
    conversation.add_user("first", [big])
    conversation.add_assistant("ok")
    tokens = conversation.estimate_tokens()
    assert tokens < 1000 < len(big.data_url()) // 4  # 85 + 170 * 4 tiles, not the base64 length
    conversation.add_user("second " + "x" * 4000)
    assert conversation.shorten(200) >= 2
    assert conversation.images == [] and [m["role"] for m in conversation.messages] == ["system", "user"]


# -- through the agent and the test server ---------------------------------------------------------------

class Harness:
    def __init__(self, server: FakeLLMServer, vision: bool | None, **agent_options: Any) -> None:
        config = Config()
        config.llm.base_url, config.llm.model = server.base_url, "fake-vision"
        self.server = server
        self.provider = OpenAICompatibleProvider(config)
        self.plots: list[bytes] = []
        self.registry = ToolRegistry([ToolDefinition("plot", "Draw.", {"type": "object", "properties": {}},
                                                     self.plot)])
        self.conversation = Conversation("You are a test.", max_images=agent_options.pop("max_images", 3))
        self.agent = Agent(self.provider, self.registry, self.conversation, ApprovalPolicy("full-auto"),
                           AgentConfig(**agent_options), vision=vision)

    def plot(self, broken: bool = False) -> ToolOutput:
        data = png(1500, 900) if not broken else png(100, 100)[:50]
        return ToolOutput("drew a plot", [data])

    def turn(self, message: str, images: list[Image] | None = None) -> list[Event]:
        return run_turn(self, message, images=images or ())

    async def aclose(self) -> None:
        await self.provider.aclose()

    def request(self, index: int) -> list[dict[str, Any]]:
        return self.server.chat_requests[index].json["messages"]


def image_parts(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [part for m in messages if isinstance(m["content"], list) for part in m["content"]
            if part["type"] == "image_url"]


def test_a_tool_image_reaches_a_vision_model_in_a_user_message_after_the_tool_messages(
    fake_server: FakeLLMServer,
) -> None:
    plot = {"name": "plot", "arguments": {}}
    fake_server.enqueue(reply.tool_calls([plot, plot]), reply.text("a red square"))
    h = Harness(fake_server, vision=True, image_max_side=600)
    events = h.turn("draw")
    messages = h.request(1)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool", "user"]
    assert_strictly_valid(messages)
    for tool_message in messages[3:5]:
        assert "drew a plot" in tool_message["content"] and "PNG 600x360" in tool_message["content"]
        assert "in the next message" in tool_message["content"]
    parts = image_parts(messages)
    assert len(parts) == 2 and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert messages[-1]["content"][0]["type"] == "text"
    result = next(e for e in events if isinstance(e, ToolResult))
    assert result.images and result.images[0].original == (1500, 900)


def test_a_model_without_vision_gets_only_the_text(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.tool_call("plot", {}), reply.text("ok"))
    h = Harness(fake_server, vision=False)
    h.turn("draw")
    messages = h.request(1)
    assert not image_parts(messages) and messages[-1]["role"] == "tool"
    assert "shown to the user (this model does not receive images)" in messages[-1]["content"]


def test_a_corrupt_image_output_is_skipped_with_a_note(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.tool_call("plot", {"broken": True}), reply.text("ok"))
    h = Harness(fake_server, vision=True)
    h.turn("draw")
    messages = h.request(1)
    assert not image_parts(messages)
    assert "drew a plot\n[image output skipped: plot image 1: corrupt" in messages[-1]["content"]


def test_the_image_budget_applies_across_turns(fake_server: FakeLLMServer) -> None:
    h = Harness(fake_server, vision=True, max_images=2)
    for _ in range(3):
        fake_server.enqueue(reply.tool_call("plot", {}), reply.text("ok"))
        h.turn("draw again")
    fake_server.enqueue(reply.text("done"))
    h.turn("and now?")
    last = h.request(-1)
    assert len(image_parts(last)) == 2
    assert sum("image removed to keep the context small" in json.dumps(m) for m in last) == 1


def test_attachments_go_with_the_message_and_are_refused_without_vision(fake_server: FakeLLMServer) -> None:
    picture = image(1)
    h = Harness(fake_server, vision=True)
    h.turn("what is this?", [picture])
    sent = h.request(0)[-1]
    assert sent["role"] == "user" and sent["content"][0] == {"type": "text", "text": "what is this?"}
    assert image_parts([sent]) == [picture.message_part()]

    blind = Harness(fake_server, vision=False)
    events = blind.turn("what is this?", [picture])
    assert len(fake_server.chat_requests) == 1  # nothing sent
    assert "does not accept images" in events[0].message and "llm.vision" in events[0].message  # type: ignore[union-attr]
    assert events[-1] == TurnDone("error")


def test_unset_vision_follows_what_the_server_reports(fake_server: FakeLLMServer) -> None:
    shown: list[dict[str, Any]] = []

    def show(request: RecordedRequest) -> dict[str, Any]:
        shown.append(request.json)
        # "tools" too: without it, llm.tool_calling auto would describe the tools in the prompt instead
        return reply.json_body({"capabilities": ["completion", "tools", "vision"]})

    fake_server.route("POST", "/api/show", show)
    fake_server.enqueue(reply.tool_call("plot", {}), reply.text("ok"), reply.tool_call("plot", {}), reply.text("ok"))
    h = Harness(fake_server, vision=None)
    h.turn("draw")
    h.turn("again")
    assert shown == [{"model": "fake-vision"}]  # asked once, then cached
    assert len(image_parts(h.request(-1))) == 2


def test_llama_cpp_props_and_an_unknown_server() -> None:
    with FakeLLMServer() as server:
        server.route("GET", "/props", lambda _: reply.json_body(
            {"modalities": {"vision": True}, "chat_template_caps": {"supports_tools": False}}))
        found = asyncio.run(_probe(server))
        assert (found.tools, found.vision) == (False, True)
    with FakeLLMServer() as server:  # answers neither /props nor /api/show: unknown, and config decides
        assert asyncio.run(_probe(server)) == capabilities.ModelCapabilities()


async def _probe(server: FakeLLMServer) -> capabilities.ModelCapabilities:
    config = Config()
    config.llm.base_url, config.llm.model = server.base_url, "m"
    provider = OpenAICompatibleProvider(config)
    try:
        return await provider.capabilities()
    finally:
        await provider.aclose()


def test_the_context_share_comes_with_the_end_of_each_turn(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.text("hi"))
    h = Harness(fake_server, vision=False, context_window=1000)
    done = h.turn("hello")[-1]
    assert isinstance(done, TurnDone) and done.context is not None
    assert done.context.window == 1000 and 0 < done.context.used < 1000
    assert str(done.context).startswith("context ") and "% of 1000" in str(done.context)


def test_vision_and_the_image_budget_are_settings() -> None:
    config = load_config(env={"AUTO_CODER_VISION": "true"}, cwd=Path("/nonexistent"), home=Path("/nonexistent"))
    assert config.llm.vision is True and config.sources["llm.vision"] == "env AUTO_CODER_VISION"
    shown = load_config(env={}, cwd=Path("/nonexistent"), home=Path("/nonexistent")).show()
    assert "llm.vision = None  (default = as the server reports, else false)" in shown
    assert "agent.image_max_side = 1024" in shown and "agent.max_images = 3" in shown



def test_images_leave_the_history_when_the_model_no_longer_sees_them(fake_server: FakeLLMServer) -> None:
    fake_server.enqueue(reply.tool_call("plot", {}), reply.text("ok"), reply.text("fine"))
    h = Harness(fake_server, vision=True)
    h.turn("draw")
    assert len(image_parts(h.request(-1))) == 1
    h.agent.vision = False  # a configuration change to a model without vision
    h.turn("and now?")
    last = h.request(-1)
    assert not image_parts(last) and "image removed to keep the context small" in json.dumps(last)
    assert_strictly_valid(last)
