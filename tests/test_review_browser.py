"""Per-cell review and rewind in JupyterLab 4 and Notebook 7 with jupyter-collaboration, in headless Chromium: the
chat panel in the notebook it edits, the kernel the browser started, the scripted model server. Reject leaves the
cell, Accept & Run changes and runs it (the saved file has it), and Rewind to here brings back the notebook of two
turns ago and names the stale variables. Screenshots go to test-output/review_browser/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from jupyter_helpers import CHROMIUM, CHROMIUM_ARGS, jupyter
from test_live_notebook import _saved

from auto_coder_nb.testing.server import FakeLLMServer, reply

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and os.environ.get("CI") != "true",
                                reason="needs Debian's chromium: apt-get install chromium (.ci/run does)")
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
pytest.importorskip("jupyter_server_ydoc", reason="needs jupyter-collaboration (the test extra)")
OUTPUT = Path(__file__).parent.parent / "test-output" / "review_browser"
WAIT_MS = 60_000
NOTEBOOK = "review.ipynb"


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_reject_accept_and_run_then_rewind_two_turns(tmp_path: Path, llm: FakeLLMServer, app: str) -> None:
    root = tmp_path / "work"
    root.mkdir()
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "a = 1", "b = a + 1\nb", "from auto_coder_nb import ChatPanel\nChatPanel()")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, root / NOTEBOOK)
    ids = [cell.id for cell in notebook.cells]
    env = {"AUTO_CODER_BASE_URL": llm.base_url, "AUTO_CODER_MODEL": "fake-model", "AUTO_CODER_APPROVAL_MODE": "ask"}
    with jupyter(tmp_path, root, OUTPUT / f"{app}.log", env, app=app) as server, \
            playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.set_default_timeout(WAIT_MS)
        playwright_api.expect.set_options(timeout=WAIT_MS)
        try:
            _scenario(page, server.url, server.token, root, llm, ids, app)
        except BaseException:
            page.screenshot(path=str(OUTPUT / f"{app}-failure.png"))
            raise
        finally:
            browser.close()


def _scenario(p: object, url: str, token: str, root: Path, llm: FakeLLMServer, ids: list[str], app: str) -> None:
    page: object = p
    expect = playwright_api.expect
    OUTPUT.mkdir(parents=True, exist_ok=True)
    address = f"{url}/lab/tree/{NOTEBOOK}" if app == "lab" else f"{url}/notebooks/{NOTEBOOK}"
    page.goto(f"{address}?token={token}")  # type: ignore[attr-defined]
    cells = page.locator(".jp-Notebook .jp-Cell")  # type: ignore[attr-defined]
    cells.nth(0).locator(".cm-content").click()
    for key in ("Shift+Enter", "Shift+Enter", "Control+Enter"):  # run all three; no new cell after the last
        page.keyboard.press(key)  # type: ignore[attr-defined]
    page.wait_for_selector(".autocoder-panel .autocoder-input")  # type: ignore[attr-defined]
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("2")

    def send(text: str) -> None:
        page.locator(".autocoder-input textarea").fill(text)  # type: ignore[attr-defined]
        page.locator("button.autocoder-send:not([disabled])").click()  # type: ignore[attr-defined]

    def source(index: int) -> object:
        return expect(cells.nth(index).locator(".jp-InputArea-editor"))

    def shot(name: str) -> None:
        panel = page.locator(".autocoder-panel")  # type: ignore[attr-defined]
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(OUTPUT / f"{app}-{name}.png"))

    # Turn 1: a change rejected with a reason; the cell stays as it was.
    llm.enqueue(reply.tool_call("edit_notebook", {"path": NOTEBOOK, "action": "replace", "cell_id": ids[1],
                                                  "source": "b = a + 100\nb"}), reply.text("Left it."))
    send("change b")
    card = page.locator(".autocoder-tool").last  # type: ignore[attr-defined]
    card.locator("button.autocoder-reject").wait_for()
    assert "+b = a + 100" in card.locator(".autocoder-cell").inner_text()
    assert [card.locator(f"button.{css}").inner_text() for css in ("autocoder-accept", "autocoder-accept-run",
                                                                   "autocoder-reject")] == [
        "Accept", "Accept & Run", "Reject"]
    shot("1-cell-card")
    card.locator(".autocoder-reason input").fill("too big")
    card.locator("button.autocoder-reject").click()
    page.wait_for_selector(".autocoder-assistant:has-text('Left it.')")  # type: ignore[attr-defined]
    source(1).to_contain_text("b = a + 1")
    assert "Reason: too big" in llm.chat_requests[-1].json["messages"][-1]["content"]

    # Turn 2: Accept & Run; the cell shows its new source and output, and the server saves it.
    llm.enqueue(reply.tool_call("edit_notebook", {"path": NOTEBOOK, "action": "replace", "cell_id": ids[1],
                                                  "source": "b = a + 10\nb"}), reply.text("Changed and ran it."))
    send("change b again")
    card = page.locator(".autocoder-tool").last  # type: ignore[attr-defined]
    card.locator("button.autocoder-accept-run").click()
    page.wait_for_selector(".autocoder-assistant:has-text('Changed and ran it.')")  # type: ignore[attr-defined]
    source(1).to_contain_text("b = a + 10")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_text("11")
    _saved(root / NOTEBOOK, lambda nb: nb.cells[1].source == "b = a + 10\nb" and nb.cells[1].outputs)

    # Turn 3: a new cell, accepted, then run (run_cell asks like run_code).
    llm.enqueue(reply.tool_call("edit_notebook", {"path": NOTEBOOK, "action": "insert", "index": 2,
                                                  "source": "c = b * 2\nc"}),
                reply.tool_call("run_cell", {"path": NOTEBOOK, "index": 2}), reply.text("Added c."))
    send("add c")
    page.locator("button.autocoder-accept").last.click()  # type: ignore[attr-defined]
    page.locator("button.autocoder-approve").last.click()  # type: ignore[attr-defined]
    page.wait_for_selector(".autocoder-assistant:has-text('Added c.')")  # type: ignore[attr-defined]
    expect(cells.nth(2).locator(".jp-OutputArea-output")).to_have_text("22")
    shot("2-before-rewind")

    # Rewind to before turn 2: the notebook of two turns ago; b and c keep their values in the kernel.
    rewinds = page.locator("button.autocoder-rewind")  # type: ignore[attr-defined]
    expect(rewinds).to_have_count(3)
    rewinds.nth(1).click()
    notice = page.locator(".autocoder-notice").last  # type: ignore[attr-defined]
    expect(notice).to_contain_text("Rewound to before turn 2")
    assert "keep their current values: b, c." in notice.inner_text()
    assert "Re-run the cell(s) that define them: [1]." in notice.inner_text()
    expect(cells).to_have_count(3)
    source(1).to_contain_text("b = a + 1")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_text("2")
    assert page.locator(".autocoder-input textarea").input_value() == "change b again"  # type: ignore[attr-defined]
    expect(page.locator(".autocoder-user")).to_have_count(1)  # type: ignore[attr-defined]
    shot("3-rewound")
    _saved(root / NOTEBOOK, lambda nb: len(nb.cells) == 3 and nb.cells[1].source == "b = a + 1\nb")
