"""What the user sees reaches the model, in a real kernel against the project's test server: images from
run_code and `--attach` for a vision model (and only text for others), project instructions from a nested
notebook folder, and the context share in the magic's footer."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image as PILImage
from test_images import decompression_bomb
from test_magics import Execution, Kernel, kernel_env

from auto_coder_nb.testing.server import FakeLLMServer, reply

PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])"


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git project whose notebook folder is two levels down, with instructions at both ends."""
    top = tmp_path_factory.mktemp("repo")
    (top / ".git").mkdir()
    (top / "AGENTS.md").write_text("Top rule: answer in English.\n")
    notebooks = top / "analysis" / "notebooks"
    notebooks.mkdir(parents=True)
    (notebooks / "CLAUDE.md").write_text("Notebook rule: plots use matplotlib.\n")
    buffer = io.BytesIO()
    PILImage.new("RGB", (1600, 800), "green").save(buffer, "PNG")
    (notebooks / "chart.png").write_bytes(buffer.getvalue())
    (notebooks / "notes.txt").write_text("not an image")
    return top


@pytest.fixture(scope="module")
def kernel(server: FakeLLMServer, project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    running = Kernel(kernel_env(server, tmp_path_factory.mktemp("home")), project / "analysis" / "notebooks")
    assert running.execute("%load_ext auto_coder_nb").reply["content"]["status"] == "ok"
    yield running
    running.close()


@pytest.fixture(autouse=True)
def fresh(server: FakeLLMServer, kernel: Kernel) -> None:
    server.clear()
    kernel.execute("import os\nos.environ['AUTO_CODER_VISION'] = 'true'\n%autocoder --reset")


def user_messages(server: FakeLLMServer, index: int = -1) -> list[dict[str, Any]]:
    return [m for m in server.chat_requests[index].json["messages"] if m["role"] == "user"]


def image_urls(messages: list[dict[str, Any]]) -> list[str]:
    return [part["image_url"]["url"] for m in messages if isinstance(m["content"], list) for part in m["content"]
            if part["type"] == "image_url"]


def ok(run: Execution) -> Execution:
    assert run.reply["content"]["status"] == "ok", run.messages
    return run


def test_a_plot_from_run_code_reaches_a_vision_model(kernel: Kernel, server: FakeLLMServer) -> None:
    server.enqueue(reply.tool_call("run_code", {"code": PLOT}), reply.text("The line goes up, then down."))
    run = ok(kernel.execute("%autocoder --approval-mode full-auto --context none what does it look like?"))
    assert len(server.chat_requests) == 2
    messages = server.chat_requests[1].json["messages"]
    assert [m["role"] for m in messages[-3:]] == ["assistant", "tool", "user"]
    assert "[image output run_code image 1: PNG " in messages[-2]["content"]
    assert "and to you in the next message" in messages[-2]["content"]
    urls = image_urls(messages[-1:])
    assert len(urls) == 1 and urls[0].startswith("data:image/png;base64,")
    assert any("image/png" in m["content"]["data"] for m in run.of_type("display_data")), "the user saw the plot"
    footer = run.of_type("display_data")[-1]["content"]["data"]
    assert "image: run_code image 1: PNG" in footer["text/html"]
    assert "context " in footer["text/plain"] and "% of 32k" in footer["text/plain"]


def test_a_model_without_vision_gets_only_the_text(kernel: Kernel, server: FakeLLMServer) -> None:
    kernel.execute("os.environ['AUTO_CODER_VISION'] = 'false'")
    server.enqueue(reply.tool_call("run_code", {"code": PLOT}), reply.text("ok"))
    ok(kernel.execute("%autocoder --approval-mode full-auto --context none plot it"))
    messages = server.chat_requests[1].json["messages"]
    assert not image_urls(messages) and messages[-1]["role"] == "tool"
    assert "shown to the user (this model does not receive images)" in messages[-1]["content"]


def test_attach_a_file_and_a_figure_variable(kernel: Kernel, server: FakeLLMServer) -> None:
    ok(kernel.execute("from matplotlib.figure import Figure\nfig = Figure(figsize=(3, 2))\n"
                      "fig.add_subplot().bar([1, 2], [3, 4])"))
    run = ok(kernel.execute("%autocoder --attach chart.png --attach fig --context none compare these"))
    sent = user_messages(server)[-1]
    assert sent["content"][0] == {"type": "text", "text": "compare these"}
    assert len(image_urls([sent])) == 2
    footer = run.of_type("display_data")[-1]["content"]["data"]["text/html"]
    assert "image: chart.png: PNG 1024x512" in footer and "downscaled from 1600x800" in footer
    assert "image: fig: PNG" in footer


def test_attach_last_takes_the_last_image_output(kernel: Kernel, server: FakeLLMServer) -> None:
    ok(kernel.execute(PLOT))
    ok(kernel.execute("%autocoder --attach last --context none what is this?"))
    first = image_urls(user_messages(server)[-1:])
    assert len(first) == 1
    # A cell's last value shown as an image (execute_result) counts too.
    ok(kernel.execute("from PIL import Image as Picture\nPicture.new('RGB', (30, 20), 'orange')"))
    run = ok(kernel.execute("%autocoder --attach last --context none and this?"))
    assert "image: last image output: PNG 30x20" in run.of_type("display_data")[-1]["content"]["data"]["text/html"]


def test_a_figure_returned_and_drawn_is_sent_once(kernel: Kernel, server: FakeLLMServer) -> None:
    code = "fig, ax = plt.subplots(figsize=(3, 2))\nax.plot([1, 2])\nfig"
    server.enqueue(reply.tool_call("run_code", {"code": "import matplotlib.pyplot as plt\n" + code}),
                   reply.text("ok"))
    ok(kernel.execute("%autocoder --approval-mode full-auto --context none draw"))
    assert len(image_urls(server.chat_requests[1].json["messages"])) == 1


def test_attachments_refused_with_the_reason(kernel: Kernel, server: FakeLLMServer) -> None:
    bad = ok(kernel.execute("%autocoder --attach notes.txt --context none look"))
    assert "autocoder: notes.txt: not a PNG or JPEG image" in bad.stdout
    missing = ok(kernel.execute("%autocoder --attach nothing_here.png --context none look"))
    assert "nothing_here.png: no such file" in missing.stdout
    assert not server.chat_requests
    kernel.execute("os.environ['AUTO_CODER_VISION'] = 'false'")
    blind = ok(kernel.execute("%autocoder --attach chart.png --context none look"))
    assert "does not accept images" in blind.shown_text and "llm.vision" in blind.shown_text
    assert not server.chat_requests


def test_instructions_from_the_nested_notebook_folder(kernel: Kernel, server: FakeLLMServer,
                                                      project: Path) -> None:
    shown = ok(kernel.execute("%autocoder --show-context --context none --attach chart.png hello"))
    assert shown.stdout == "hello\n"  # stdout stays exactly the message
    listed = "\n".join(m["content"]["data"]["text/plain"] for m in shown.of_type("display_data"))
    assert f"project instructions (in the system prompt): {project / 'AGENTS.md'} (29 bytes)" in listed
    assert "project instructions (in the system prompt): CLAUDE.md (37 bytes)" in listed
    assert "image: chart.png: PNG 1024x512" in listed
    ok(kernel.execute("%autocoder --context none hello"))
    system = server.chat_requests[-1].json["messages"][0]["content"]
    assert system.index("Top rule") < system.index("Notebook rule")
    assert json.dumps(system).count("# Project instructions") == 1


def test_a_decompression_bomb_plotted_or_attached_is_refused_in_one_line(kernel: Kernel, server: FakeLLMServer,
                                                                          project: Path) -> None:
    (project / "analysis" / "notebooks" / "bomb.png").write_bytes(decompression_bomb())
    shown = "from IPython.display import Image, display\ndisplay(Image(filename='bomb.png'))"
    server.enqueue(reply.tool_call("run_code", {"code": shown}), reply.text("ok"))
    run = ok(kernel.execute("%autocoder --approval-mode full-auto --context none show it"))
    messages = server.chat_requests[1].json["messages"]
    assert not image_urls(messages)
    assert "run_code image 1: 13000x13000 is too large to decode (169 megapixels; the limit is 50)" in (
        messages[-1]["content"])
    assert "DecompressionBomb" not in json.dumps(run.messages, default=str)  # stderr, displays: all the cell showed
    attached = ok(kernel.execute("%autocoder --attach bomb.png --context none look"))
    assert "autocoder: bomb.png: 13000x13000 is too large to decode" in attached.stdout
    assert "DecompressionBomb" not in json.dumps(attached.messages, default=str)
