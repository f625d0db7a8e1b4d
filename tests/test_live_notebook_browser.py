"""The live notebook in real JupyterLab 4 and Notebook 7 (one server with jupyter-collaboration serves both), a
real kernel and headless Chromium: a `%%autocoder` cell run in the browser makes the agent replace cell 2,
insert a cell after it and run it; the page shows both and the output without a reload, text typed in cell 1
during the turn survives, and the server saves the state. Screenshots go to test-output/live_browser/."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jupyter_helpers
import nbformat
import pytest
from jupyter_helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    WAIT_MS,
    Jupyter,
    jupyter,
    model_env,
    needs_chromium,
    saved_notebook,
)

from auto_coder_nb.testing.server import FakeLLMServer, reply

OUTPUT = jupyter_helpers.OUTPUT / "live_browser"
TYPED = "  # typed by the user during the turn"

pytestmark = needs_chromium
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
pytest.importorskip("jupyter_server_ydoc", reason="needs jupyter-collaboration (the test extra)")


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer) -> Iterator[Jupyter]:
    tmp = tmp_path_factory.mktemp("live-browser")
    root = tmp / "work"
    root.mkdir()
    with jupyter(tmp, root, OUTPUT / "jupyterlab.log", model_env(llm.base_url, "full-auto"), app="lab") as started:
        yield started


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.mark.parametrize("frontend", ["lab", "notebook"])
def test_the_agent_edits_and_runs_cells_the_browser_shows(frontend: str, lab: Jupyter, llm: FakeLLMServer,
                                                           browser: Any) -> None:
    name = f"live-{frontend}.ipynb"
    notebook = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("%load_ext auto_coder_nb\nx = 21"),
        nbformat.v4.new_code_cell("# notes"),
        nbformat.v4.new_code_cell("y = 0"),
        nbformat.v4.new_code_cell("%%autocoder\nDouble x into y, then print it"),
    ])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                       "language": "python"}
    nbformat.write(notebook, lab.root / name)
    llm.clear()
    llm.enqueue(
        reply.tool_call("read_notebook", {"path": name}),
        reply.tool_call("edit_notebook", {"path": name, "action": "replace", "index": 2, "source": "y = x * 2"}),
        reply.tool_call("edit_notebook", {"path": name, "action": "insert", "index": 3,
                                          "source": "print('y is', y)"}),
        # Held until the browser has shown both changes and typed in cell 1: the turn is still running then.
        reply.tool_call("run_cell", {"path": name, "index": 2}, wait_for=f"typed-{frontend}", wait_after=0),
        reply.tool_call("run_cell", {"path": name, "index": 3}),
        reply.text("Done."),
    )
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    playwright_api.expect.set_options(timeout=WAIT_MS)
    try:
        _turn_in_the_browser(page, lab, llm, frontend, name)
    except BaseException:
        page.screenshot(path=str(OUTPUT / f"{frontend}-failure.png"))
        raise
    finally:
        llm.release(f"typed-{frontend}")  # never leave the model server holding a reply
        context.close()
    saved = saved_notebook(lab.root / name, lambda nb: len(nb.cells) == 5 and nb.cells[3].outputs)
    assert [cell.source for cell in saved.cells[:4]] == [
        "%load_ext auto_coder_nb\nx = 21", "# notes" + TYPED, "y = x * 2", "print('y is', y)"]
    assert saved.cells[3].outputs[0]["text"] == "y is 42\n" and saved.cells[3].execution_count
    log = lab.log.read_text(errors="replace")
    assert lab.token not in log.replace(f"token={lab.token}", "")  # only the server's own start-up line shows it


def _turn_in_the_browser(page: Any, lab: Jupyter, llm: FakeLLMServer, frontend: str, name: str) -> None:
    expect = playwright_api.expect
    path = f"/lab/tree/{name}" if frontend == "lab" else f"/notebooks/{name}"
    page.goto(f"{lab.url}{path}?token={lab.token}")
    cells = page.locator(".jp-Notebook .jp-Cell")
    expect(cells).to_have_count(4)
    # A run sent before the page's kernel connection is up is dropped (the page may already say idle; #jp-top-bar
    # was there at once): wait until the server says the kernel is idle with the page connected.
    lab.wait_for_connected_kernel(name)
    page.wait_for_selector(".jp-StatusBar-TextItem:has-text('(ipykernel) | Idle')" if frontend == "lab"
                           else ".jp-Notebook-ExecutionIndicator[data-status='idle']")  # and the page follows
    requests_before = len(llm.chat_requests)
    for index in (0, 3):  # load the extension, then the %%autocoder cell
        cells.nth(index).locator(".cm-content").click()
        page.keyboard.press("Control+Enter")  # run in place (Shift+Enter on the last cell adds one)
        if index == 0:
            expect(cells.nth(0).locator(".jp-InputPrompt")).to_contain_text("[1]")
    # The held request means the agent has replaced cell 2 and inserted cell 3, and the magic still runs.
    for _ in range(1800):
        if len(llm.chat_requests) >= requests_before + 4:
            break
        page.wait_for_timeout(100)
    expect(cells).to_have_count(5)
    expect(cells.nth(2).locator(".cm-content")).to_have_text("y = x * 2")
    expect(cells.nth(3).locator(".cm-content")).to_have_text("print('y is', y)")
    page.screenshot(path=str(OUTPUT / f"{frontend}-during-turn.png"))
    editor = cells.nth(1).locator(".cm-content")
    editor.click()
    page.keyboard.press("Control+End")
    page.keyboard.type(TYPED)
    expect(editor).to_have_text("# notes" + TYPED)
    llm.release(f"typed-{frontend}")
    expect(cells.nth(3).locator(".jp-OutputArea-output")).to_have_text("y is 42")
    expect(cells.nth(3).locator(".jp-InputPrompt")).not_to_have_text("[ ]:")
    expect(cells.nth(4).locator(".jp-OutputArea")).to_contain_text("Done.")
    expect(cells.nth(1).locator(".cm-content")).to_have_text("# notes" + TYPED)
    page.screenshot(path=str(OUTPUT / f"{frontend}-after-turn.png"))
