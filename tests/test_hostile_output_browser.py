"""Model and server text never runs as code in the page (issue 24 item 1), checked where it would run: real
JupyterLab 4 and Notebook 7 in headless Chromium. A notebook asks `%%autocoder` for an answer full of HTML and
script, then meets an HTTP 400 whose error body carries the same, and the chat panel gets both too. Each payload
would set `window.__pwned` or `document.body.dataset.pwned`; both stay unset, no element or link of the payloads
exists in the outputs, and the payloads show as text. Screenshots go to test-output/hostile_output/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import hostile
import jupyter_helpers
import nbformat
import pytest
from jupyter_helpers import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, Jupyter, jupyter, model_env, needs_chromium

from auto_coder_nb.testing.server import FakeLLMServer, reply

pytestmark = needs_chromium
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")
OUTPUT = jupyter_helpers.OUTPUT / "hostile_output"

# The magic whose request the server refuses fails its cell, which ends Run All: it comes last.
CELLS = [
    "%load_ext auto_coder_nb",
    "from auto_coder_nb import ChatPanel\npanel = ChatPanel()\npanel",
    "await panel.ask('the plan, in the panel')\nawait panel.ask('and again')\nprint('panel turns done')",
    "%%autocoder --context none\nshow me the plan",
    "%%autocoder --context none\nand again",
]
# What the page says about the payloads: elements they would create, what they would set.
INSPECT_JS = """(live) => {
  const cells = [...document.querySelectorAll('.jp-OutputArea-output')]
    .filter(o => !o.querySelector('.autocoder-panel'));
  const roots = [...cells, ...document.querySelectorAll('.autocoder-transcript')];
  const found = [];
  for (const root of roots) for (const selector of live) if (root.querySelector(selector)) found.push(selector);
  return {found, pwned: window.__pwned ?? null, dataset: document.body.dataset.pwned ?? null,
          background: getComputedStyle(document.body).backgroundColor,
          text: roots.map(r => r.innerText).join('\\n')};
}"""


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def lab(tmp_path: Path, llm: FakeLLMServer) -> Iterator[Jupyter]:
    (tmp_path / "work").mkdir()
    for name in ("hostile_lab.ipynb", "hostile_nb7.ipynb"):
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in CELLS])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                           "language": "python"}
        nbformat.write(notebook, tmp_path / "work" / name)
    with jupyter(tmp_path, tmp_path / "work", OUTPUT / "jupyterlab.log", model_env(llm.base_url)) as server:
        yield server


@pytest.mark.parametrize("face", ["lab", "notebook7"])
def test_answers_and_error_bodies_show_as_text(lab: Jupyter, llm: FakeLLMServer, face: str) -> None:
    llm.enqueue(reply.text(hostile.ANSWER, chunks=7), reply.error(400, hostile.ERROR_BODY),
                reply.text(hostile.ANSWER, chunks=7), reply.error(400, hostile.ERROR_BODY))
    name = "hostile_lab.ipynb" if face == "lab" else "hostile_nb7.ipynb"
    url = f"{lab.url}/lab/tree/{name}" if face == "lab" else f"{lab.url}/notebooks/{name}"
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 2400})
            page.set_default_timeout(WAIT_MS)
            try:
                page.goto(f"{url}?token={lab.token}")
                lab.wait_for_connected_kernel(name)
                seen = _run_all_and_inspect(page, face)
            finally:
                page.screenshot(path=str(OUTPUT / f"{face}.png"), full_page=True)
        finally:
            browser.close()
    assert seen["found"] == [], seen["found"]
    assert seen["pwned"] is None and seen["dataset"] is None
    assert seen["background"] != "rgb(255, 0, 0)"
    text = seen["text"]
    assert text.count(hostile.SHOWN_AS_TEXT) >= 4  # the answer and the error, in a cell and in the panel
    assert text.count("Bad request: <img") >= 2
    assert len(llm.chat_requests) == 4


def _run_all_and_inspect(page: object, face: str) -> dict[str, object]:
    p = page  # Playwright's Page; typed loosely so the module imports without playwright
    # The page follows the server's kernel state: JupyterLab says so in its status bar, Notebook 7 (which has
    # none) in its toolbar indicator.
    ready = (".jp-StatusBar-TextItem:has-text('(ipykernel) | Idle')" if face == "lab"
             else ".jp-Notebook-ExecutionIndicator[data-status='idle']")
    p.wait_for_selector(ready)  # type: ignore[attr-defined]
    p.click(".lm-MenuBar-itemLabel:text-is('Run')")  # type: ignore[attr-defined]
    p.click(".lm-Menu-itemLabel:text-is('Run All Cells')")  # type: ignore[attr-defined]
    p.wait_for_selector(".jp-OutputArea-output:has-text('panel turns done')")  # type: ignore[attr-defined]
    # The last cell's own error (the panel's output area shows the panel's error too, earlier): Run All has ended.
    last = p.locator(".jp-Notebook .jp-Cell").last  # type: ignore[attr-defined]
    last.locator(".jp-OutputArea-output:has-text('Bad request: <img')").wait_for()
    p.wait_for_function("document.querySelectorAll('.autocoder-transcript .autocoder-error').length === 1")  # type: ignore[attr-defined]
    return p.evaluate(INSPECT_JS, list(hostile.LIVE))  # type: ignore[attr-defined,no-any-return]
