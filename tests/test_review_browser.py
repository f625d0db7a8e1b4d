"""Per-cell review and rewind in JupyterLab 4 and Notebook 7 with jupyter-collaboration, in headless Chromium: the
chat panel in the notebook it edits, the kernel the browser started, the scripted model server. Reject leaves the
cell, Accept & Run changes and runs it (the saved file has it), and Rewind to here brings back the notebook of two
turns ago and names the stale variables. Screenshots go to test-output/review_browser/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jupyter_helpers
import nbformat
import pytest
from jupyter_helpers import (
    WAIT_MS,
    Jupyter,
    jupyter,
    model_env,
    needs_chromium,
    saved_notebook,
)

from auto_coder_nb.testing.server import FakeLLMServer, reply

pytestmark = needs_chromium
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
pytest.importorskip("jupyter_server_ydoc", reason="needs jupyter-collaboration (the test extra)")
OUTPUT = jupyter_helpers.OUTPUT / "review_browser"


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer) -> Iterator[Jupyter]:
    """One server with collaboration for both frontends (Notebook 7's pages come from it too); kernels ask."""
    tmp = tmp_path_factory.mktemp("review-browser")
    root = tmp / "work"
    root.mkdir()
    with jupyter(tmp, root, OUTPUT / "jupyterlab.log", model_env(llm.base_url), app="lab") as started:
        yield started


@pytest.mark.parametrize("app", ["lab", "notebook"])
def test_reject_accept_and_run_then_rewind_two_turns(app: str, lab: Jupyter, llm: FakeLLMServer,
                                                      browser: Any) -> None:
    name = f"review-{app}.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in (
        "a = 1", "b = a + 1\nb", "from auto_coder_nb import ChatPanel\nChatPanel()")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, lab.root / name)
    ids = [cell.id for cell in notebook.cells]
    llm.clear()
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.set_default_timeout(WAIT_MS)
    playwright_api.expect.set_options(timeout=WAIT_MS)
    try:
        _scenario(page, lab, name, llm, ids, app)
    except BaseException:
        page.screenshot(path=str(OUTPUT / f"{app}-failure.png"))
        raise
    finally:
        page.close()


def _scenario(page: Any, lab: Jupyter, name: str, llm: FakeLLMServer, ids: list[str], app: str) -> None:
    expect = playwright_api.expect
    OUTPUT.mkdir(parents=True, exist_ok=True)
    address = f"{lab.url}/lab/tree/{name}" if app == "lab" else f"{lab.url}/notebooks/{name}"
    page.goto(f"{address}?token={lab.token}")
    cells = page.locator(".jp-Notebook .jp-Cell")
    expect(cells).to_have_count(3)
    # A run sent before the page's kernel connection is up is dropped (the page may already say idle): wait until
    # the server says the kernel is idle with the page connected, then run the cells in place (Shift+Enter on the
    # last cell would add one).
    lab.wait_for_connected_kernel(name)
    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('(ipykernel) | Idle')" if app == "lab"
                           else ".jp-Notebook-ExecutionIndicator[data-status='idle']")  # and the page follows
    cells.nth(0).locator(".cm-content").click()
    page.keyboard.press("Control+Enter")
    expect(cells.nth(0).locator(".jp-InputPrompt")).to_contain_text("[1]")
    for index in (1, 2):
        cells.nth(index).locator(".cm-content").click()
        page.keyboard.press("Control+Enter")
    page.wait_for_selector(".autocoder-panel .autocoder-input")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_contain_text("2")

    def send(text: str) -> None:
        page.locator(".autocoder-input textarea").fill(text)
        page.locator("button.autocoder-send:not([disabled])").click()

    def source(index: int) -> object:
        return expect(cells.nth(index).locator(".jp-InputArea-editor"))

    def shot(name: str) -> None:
        panel = page.locator(".autocoder-panel")
        panel.scroll_into_view_if_needed()
        panel.screenshot(path=str(OUTPUT / f"{app}-{name}.png"))

    # Turn 1: a change rejected with a reason; the cell stays as it was.
    llm.enqueue(reply.tool_call("edit_notebook", {"path": name, "action": "replace", "cell_id": ids[1],
                                                  "source": "b = a + 100\nb"}), reply.text("Left it."))
    send("change b")
    card = page.locator(".autocoder-tool").last
    card.locator("button.autocoder-reject").wait_for()
    assert "+b = a + 100" in card.locator(".autocoder-cell").inner_text()
    assert [card.locator(f"button.{css}").inner_text() for css in ("autocoder-accept", "autocoder-accept-run",
                                                                   "autocoder-reject")] == [
        "Accept", "Accept & Run", "Reject"]
    shot("1-cell-card")
    card.locator(".autocoder-reason input").fill("too big")
    card.locator("button.autocoder-reject").click()
    page.wait_for_selector(".autocoder-assistant:has-text('Left it.')")
    source(1).to_contain_text("b = a + 1")
    assert "Reason: too big" in llm.chat_requests[-1].json["messages"][-1]["content"]

    # Turn 2: Accept & Run; the cell shows its new source and output, and the server saves it.
    llm.enqueue(reply.tool_call("edit_notebook", {"path": name, "action": "replace", "cell_id": ids[1],
                                                  "source": "b = a + 10\nb"}), reply.text("Changed and ran it."))
    send("change b again")
    card = page.locator(".autocoder-tool").last
    card.locator("button.autocoder-accept-run").click()
    page.wait_for_selector(".autocoder-assistant:has-text('Changed and ran it.')")
    source(1).to_contain_text("b = a + 10")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_text("11")
    saved_notebook(lab.root / name, lambda nb: nb.cells[1].source == "b = a + 10\nb" and nb.cells[1].outputs)

    # Turn 3: a new cell, accepted, then run (run_cell asks like run_code).
    llm.enqueue(reply.tool_call("edit_notebook", {"path": name, "action": "insert", "index": 2,
                                                  "source": "c = b * 2\nc"}),
                reply.tool_call("run_cell", {"path": name, "index": 2}), reply.text("Added c."))
    send("add c")
    page.locator("button.autocoder-accept").last.click()
    page.locator("button.autocoder-approve").last.click()
    page.wait_for_selector(".autocoder-assistant:has-text('Added c.')")
    expect(cells.nth(2).locator(".jp-OutputArea-output")).to_have_text("22")
    shot("2-before-rewind")

    # Rewind to before turn 2: the notebook of two turns ago; b and c keep their values in the kernel.
    rewinds = page.locator("button.autocoder-rewind")
    expect(rewinds).to_have_count(3)
    rewinds.nth(1).click()
    notice = page.locator(".autocoder-notice").last
    expect(notice).to_contain_text("Rewound to before turn 2")
    assert "keep their current values: b, c." in notice.inner_text()
    assert "Re-run the cell(s) that define them: [1]." in notice.inner_text()
    expect(cells).to_have_count(3)
    source(1).to_contain_text("b = a + 1")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_text("2")
    assert page.locator(".autocoder-input textarea").input_value() == "change b again"
    expect(page.locator(".autocoder-user")).to_have_count(1)
    shot("3-rewound")
    page.locator("button.autocoder-rerun").click()  # b is 11 in the kernel: its cell runs again
    expect(page.locator(".autocoder-notice").last).to_contain_text("Ran cell(s) [1] as [")
    expect(cells.nth(1).locator(".jp-OutputArea-output")).to_have_text("2")
    saved_notebook(lab.root / name, lambda nb: len(nb.cells) == 3 and nb.cells[1].source == "b = a + 1\nb")
