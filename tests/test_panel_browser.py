"""The chat panel in a real JupyterLab, driven by headless Chromium through Playwright.

The test starts JupyterLab on 127.0.0.1 with throw-away settings, opens tests/notebooks/chat_panel.ipynb
(which shows `ChatPanel()`), and talks to the test server through the panel: a streamed answer with a
tool card, an approved write, a write denied with a reason, Stop during a held stream (while another cell
runs), the next message, Reset. It also checks what only a browser shows: the header stays on one line,
disabled buttons are grey, blockquotes are styled. Screenshots go to test-output/panel_browser/. Needs
Debian's chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jupyter_helpers
import pytest
from jupyter_helpers import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, Jupyter, jupyter, model_env, needs_chromium
from PIL import Image as PILImage

from auto_coder_nb.testing.server import FakeLLMServer, reply

NOTEBOOK = Path(__file__).parent / "notebooks" / "chat_panel.ipynb"
OUTPUT = jupyter_helpers.OUTPUT / "panel_browser"
CONTRAST = {"text": 3.0, "buttons": 4.5}


def enabled_buttons(page: object) -> set[str]:
    """The first words of the labels of the panel's visible enabled buttons (the ones the contrast check reads)."""
    return set(page.eval_on_selector_all(  # type: ignore[attr-defined]
        ".autocoder-panel button:not([disabled])",
        "buttons => buttons.filter(b => b.getClientRects().length).map(b => b.innerText.trim().split(' ')[0])"))
# Each visible text of the panel, buttons included, with its contrast ratio (WCAG) against the background it is
# drawn on: translucent backgrounds are composed over the ancestors' up to an opaque one. Buttons need
# `minimums.buttons` (4.5:1, WCAG AA for their size), other text `minimums.text`; a disabled button is exempt (WCAG:
# inactive components), and is checked to look grey instead.
LOW_CONTRAST_JS = """(panel, minimums) => {
  const parse = (c) => {
    const m = c.match(/[\\d.]+/g).map(Number);
    return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1];
  };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3]));
  const background = (element) => {
    const layers = [];
    for (let e = element; e; e = e.parentElement) {
      const color = parse(getComputedStyle(e).backgroundColor);
      if (color[3] > 0) { layers.push(color); if (color[3] >= 1) break; }
    }
    return layers.reverse().reduce((under, layer) => over(layer, under), [255, 255, 255]);
  };
  const luminance = (rgb) => {
    const [r, g, b] = rgb.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const low = [];
  for (const element of panel.querySelectorAll('*')) {
    const text = [...element.childNodes].filter((n) => n.nodeType === 3).map((n) => n.textContent).join('').trim();
    if (!text || !element.getClientRects().length) continue;
    const button = element.closest('button');
    if (button && button.disabled) continue;
    const back = background(element);
    const [a, b] = [luminance(over(parse(getComputedStyle(element).color), back)), luminance(back)];
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    const minimum = button ? minimums.buttons : minimums.text;
    if (ratio < minimum) low.push(`${text.slice(0, 40)} (${element.className}): ${ratio.toFixed(2)}`);
  }
  return low;
}"""

pytestmark = needs_chromium
playwright_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (the test extra)")


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def lab(tmp_path: Path, llm: FakeLLMServer) -> Iterator[Jupyter]:
    """JupyterLab on 127.0.0.1 with its own home, settings and runtime folders; the kernel reaches the test server."""
    yield from _jupyter("lab", tmp_path, llm)


@pytest.fixture
def notebook7(tmp_path: Path, llm: FakeLLMServer) -> Iterator[Jupyter]:
    """Notebook 7 (`jupyter notebook`), set up as `lab` is."""
    yield from _jupyter("notebook", tmp_path, llm)


def _jupyter(app: str, tmp_path: Path, llm: FakeLLMServer) -> Iterator[Jupyter]:
    """`jupyter lab` or `jupyter notebook` serving the panel's notebook and a picture to attach."""
    (tmp_path / "work").mkdir()
    shutil.copy(NOTEBOOK, tmp_path / "work" / NOTEBOOK.name)
    PILImage.new("RGB", (120, 80), "teal").save(tmp_path / "work" / "chart.png")  # for the attach control
    log = OUTPUT / ("jupyterlab.log" if app == "lab" else "notebook7.log")
    env = {**model_env(llm.base_url), "AUTO_CODER_VISION": "true"}
    with jupyter(tmp_path, tmp_path / "work", log, env, app=app) as server:
        yield server


def test_chat_panel_in_jupyterlab(lab: Jupyter, llm: FakeLLMServer) -> None:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 1200},
                                          permissions=["clipboard-read", "clipboard-write"])
            page = context.new_page()
            try:
                _chat(page, lab, llm)
            except BaseException:
                page.screenshot(path=str(OUTPUT / "failure.png"))
                raise
        finally:
            browser.close()
    assert "Traceback" not in lab.log.read_text(errors="replace")  # nothing went to the log console


def use_theme(page: object, theme: str) -> None:
    """Switch JupyterLab's (or Notebook 7's) theme from the Settings menu and wait until the panel follows."""
    p: Any = page
    p.click(".lm-MenuBar-itemLabel:text-is('Settings')")
    p.hover(".lm-Menu-itemLabel:text-is('Theme')")
    p.click(f".lm-Menu-itemLabel:text-is('{theme}')")
    p.wait_for_selector(f"body[data-jp-theme-name='{theme}']", state="attached")
    # The theme's CSS loads after the attribute changes: wait until the panel's background follows.
    p.wait_for_function("dark => (parseInt(getComputedStyle(document.querySelector('.autocoder-panel'))"
                        ".backgroundColor.match(/\\d+/)[0]) < 128) === dark", arg="Dark" in theme)


def readable_in_both_themes(page: object, buttons: set[str], dark_shot: Callable[[], None] = lambda: None) -> None:
    """Every text of the panel readable, buttons at 4.5:1, in the dark theme and the light one (left on); `buttons`
    are among the enabled ones checked."""
    for theme in ("JupyterLab Dark", "JupyterLab Light"):
        use_theme(page, theme)
        assert page.eval_on_selector(".autocoder-panel", LOW_CONTRAST_JS, CONTRAST) == [], theme  # type: ignore
        assert enabled_buttons(page) >= buttons, theme
        if "Dark" in theme:
            dark_shot()


def _chat(page: object, lab: Jupyter, llm: FakeLLMServer) -> None:
    page.set_default_timeout(WAIT_MS)  # type: ignore[attr-defined]
    playwright_api.expect.set_options(timeout=WAIT_MS)
    p = page  # Playwright's Page; typed loosely so the module imports without playwright

    def shot(name: str) -> None:
        p.locator(".autocoder-panel").scroll_into_view_if_needed()
        p.locator(".autocoder-panel").screenshot(path=str(OUTPUT / f"{name}.png"))

    def send(text: str) -> None:
        p.locator(".autocoder-input textarea").fill(text)
        p.locator("button.autocoder-send:not([disabled])").click()

    def status_lines() -> float:
        """The header's status text height in lines (ipywidgets gives an HTML widget one line-height per line)."""
        return p.eval_on_selector(".autocoder-status .widget-html-content",
                                  "e => e.getBoundingClientRect().height / parseFloat(getComputedStyle(e).lineHeight)")

    p.goto(f"{lab.url}/lab/tree/{NOTEBOOK.name}?token={lab.token}")
    # The execution indicator says idle before the kernel is even connected; the status bar names the kernel.
    p.wait_for_selector(".jp-StatusBar-TextItem:has-text('(ipykernel) | Idle')")
    lab.wait_for_connected_kernel(NOTEBOOK.name)  # the page's indicators can say idle before its websocket is up
    # The log console records what widget callbacks print or raise, from the level set when it happens.
    p.click(".lm-MenuBar-itemLabel:text-is('View')")
    p.click(".lm-Menu-itemLabel:text-is('Show Log Console')")
    p.locator("select", has=p.locator("option[value='info']")).select_option("info")
    p.click(".lm-MenuBar-itemLabel:text-is('Run')")
    p.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    p.wait_for_selector(".autocoder-panel .autocoder-input")
    p.wait_for_selector(".jp-OutputArea-output:has-text('other cell run 1')")
    assert p.locator(".autocoder-input textarea").get_attribute("placeholder").startswith("Ask")
    assert "fake-model" in p.inner_text(".autocoder-status")
    assert "approval ask · 127.0.0.1:" in p.inner_text(".autocoder-status")  # before the first turn
    trust_bar = p.locator(".autocoder-trust-bar")
    playwright_api.expect(trust_bar).to_be_hidden()  # no project config file yet
    # A disabled button is plain grey, not a faded colour that looks half-active.
    disabled, background, opacity = p.eval_on_selector(
        "button.autocoder-stop", "b => [b.disabled, getComputedStyle(b).backgroundColor, getComputedStyle(b).opacity]")
    red, green, blue = (int(part) for part in background[background.index("(") + 1:-1].split(",")[:3])
    assert disabled and red == green == blue and opacity == "1", background
    shot("01-empty")

    # A streamed Markdown answer after a tool call: the card shows the tool, its argument and its result.
    llm.enqueue(reply.tool_call("list_directory", {"path": "."}),
                reply.text("The folder holds **one notebook**:\n\n- `chat_panel.ipynb`\n\n> Tip: ask me about it.\n",
                           chunks=8))
    send("What is in this folder?")
    p.wait_for_selector(".autocoder-assistant strong:has-text('one notebook')")
    quote = p.locator(".autocoder-assistant blockquote").last
    assert quote.evaluate("q => getComputedStyle(q).borderLeftWidth") == "3px"
    card = p.locator(".autocoder-tool").last
    assert "list_directory" in card.inner_text() and "done" in card.inner_text()
    assert "chat_panel.ipynb" in card.inner_text()  # the result summary
    p.wait_for_selector(".autocoder-state-idle")
    shot("02-answer-and-tool-card")

    # Images for a vision model: an attached file and run_code's plot show as thumbnails and reach the model.
    p.locator(".autocoder-attach-name input").fill("chart.png")
    p.locator("button.autocoder-attach").click()
    p.wait_for_selector(".autocoder-attachments img.autocoder-thumb")
    llm.enqueue(reply.tool_call("run_code", {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])"}),
                reply.text("A tiny chart and a line plot."))
    send("What do these show?")
    p.wait_for_selector("button.autocoder-approve")
    p.locator("button.autocoder-approve").click()
    p.wait_for_selector(".autocoder-assistant:has-text('A tiny chart and a line plot.')")
    thumbs = ".autocoder-user img.autocoder-thumb, .autocoder-thumbs img.autocoder-thumb"
    p.wait_for_function(f"document.querySelectorAll({thumbs!r}).length === 2")
    decoded = p.eval_on_selector_all(thumbs, "images => images.map(i => i.complete && i.naturalWidth > 0)")
    assert decoded == [True, True], decoded  # both data URLs are real images in the browser
    assert p.locator(".autocoder-attachments img").count() == 0  # sent with that message, then cleared
    messages = llm.requests[-1].json["messages"]
    sent_images = [part for m in messages if isinstance(m["content"], list) for part in m["content"]
                   if part["type"] == "image_url"]
    assert len(sent_images) == 2 and messages[-1]["role"] == "user"  # the attachment, then the plot
    assert p.inner_text(".autocoder-context").startswith("context ")
    shot("02b-images")

    # A write asks first: the card shows the diff; Approve writes the file.
    llm.enqueue(reply.tool_call("write_file", {"path": "hello.txt", "content": "Hello from the panel\n"}),
                reply.text("Created `hello.txt`."))
    send("Create hello.txt saying hello")
    p.wait_for_selector("button.autocoder-approve")
    assert "+Hello from the panel" in p.locator(".autocoder-preview").last.inner_text()
    p.wait_for_selector(".autocoder-status:has-text('waiting for approval')")
    assert not (lab.root / "hello.txt").exists()
    # The longest status still fits on one line: the id shows shortened, the whole id is in the element.
    assert status_lines() < 1.5
    clipped, title, text = p.eval_on_selector(".autocoder-id",
                                              "e => [e.scrollWidth > e.clientWidth, e.title, e.innerText]")
    assert clipped and text in title and len(text) == 36
    assert "content=<1 line>" in p.locator(".autocoder-tool .autocoder-card-head").last.inner_text()
    shot("03-approval")
    # Every text stays readable in the dark theme too: the status pill, badges, the user's bubble, the
    # approval card and the diff (opaque pastel backgrounds under the theme's white text were not).
    readable_in_both_themes(p, {"Stop", "Approve", "Always", "Deny"}, lambda: shot("03b-approval-dark"))
    p.locator("button.autocoder-approve").click()
    p.wait_for_selector(".autocoder-assistant code:has-text('hello.txt')")
    assert (lab.root / "hello.txt").read_text() == "Hello from the panel\n"

    # Deny with a reason: the card says so in a neutral style, and the model reads the reason.
    reason = "keep the hello, other tests read it"
    llm.enqueue(reply.tool_call("write_file", {"path": "hello.txt", "content": "Goodbye\nfrom the panel\n"}),
                reply.text("Understood: I left it as it is."))
    send("Change hello.txt to say goodbye")
    card = p.locator(".autocoder-tool").last
    card.locator("button.autocoder-deny").wait_for()
    # In a narrow window (JupyterLab's sidebar open on a laptop) every answer stays on the card.
    p.set_viewport_size({"width": 800, "height": 1200})
    card_box = card.bounding_box()
    for part in ("button.autocoder-approve", "button.autocoder-always", ".autocoder-reason",
                 "button.autocoder-deny"):
        box = card.locator(part).bounding_box()
        assert box is not None and box["x"] + box["width"] <= card_box["x"] + card_box["width"] + 1, part
    shot("04a-narrow-approval")
    p.set_viewport_size({"width": 1280, "height": 1200})
    card.locator(".autocoder-reason input").fill(reason)
    card.locator("button.autocoder-deny").click()
    p.wait_for_selector(".autocoder-assistant:has-text('left it as it is')")
    assert card.locator(".autocoder-outcome").inner_text() == f"Denied: {reason}"
    assert "autocoder-card-denied" in card.get_attribute("class")
    assert "denied" in card.locator(".autocoder-card-head").inner_text()
    assert "Allow this change?" not in card.inner_text() and card.locator(".autocoder-reason").count() == 0
    assert llm.requests[-1].json["messages"][-1]["content"].endswith(f"Reason: {reason}")
    assert (lab.root / "hello.txt").read_text() == "Hello from the panel\n"
    shot("04-denied")

    # A code block: Copy puts it on the clipboard, Insert below adds a cell under the panel, Run asks first.
    code = "answer = 6 * 7\nprint(answer)"
    llm.enqueue(reply.text(f"Run this:\n\n```python\n{code}\n```\n", chunks=6))
    send("Show me some code")
    block = p.locator(".autocoder-code").last
    block.locator(".autocoder-copy").click()
    p.wait_for_selector(".autocoder-copy:text-is('Copied')")
    assert p.evaluate("navigator.clipboard.readText()") == code
    block.locator(".autocoder-insert").click()
    p.wait_for_selector(".autocoder-insert:text-is('Inserted')")
    cells = p.locator(".jp-Notebook .jp-Cell")
    assert cells.nth(1).locator(".autocoder-panel").count() == 1
    playwright_api.expect(cells.nth(2).locator(".jp-InputArea-editor")).to_contain_text("answer = 6 * 7")
    assert cells.nth(2).locator(".jp-InputArea-editor").inner_text().split() == code.split()
    block.locator("button.autocoder-run").click()
    block.locator("button.autocoder-approve").click()
    p.wait_for_selector(".autocoder-code .autocoder-summary:has-text('42')")
    shot("05-code-block")

    # Stop during a stream the server holds open; meanwhile another cell runs.
    llm.enqueue(reply.text("token " * 400, chunks=400, wait_for="held", wait_after=40))
    send("Write a very long answer")
    p.wait_for_selector(".autocoder-assistant:has-text('token token token')")
    p.locator(".jp-Cell", has_text="other cell run").locator(".cm-content").click()
    p.keyboard.press("Shift+Enter")
    p.wait_for_selector(".jp-OutputArea-output:has-text('other cell run 2')")
    assert p.locator("button.autocoder-stop:not([disabled])").count() == 1  # the turn is still running
    p.wait_for_selector(".autocoder-state:text-is('answering')")
    assert "turn —" in p.inner_text(".autocoder-status")  # no usage reported yet
    assert status_lines() < 1.5
    shot("06-streaming")
    p.locator("button.autocoder-stop").click()
    p.wait_for_selector(".autocoder-notice:has-text('Stopped')")
    llm.release("held")
    p.wait_for_selector(".autocoder-state-idle")
    assert "turn —" in p.inner_text(".autocoder-status")

    # The next message works; the history sent with it is consistent.
    # Typed with the keyboard: Shift+Enter is a new line, Enter sends.
    llm.enqueue(reply.text("Still here after the stop."))
    p.locator(".autocoder-input textarea").click()
    p.keyboard.type("Are you")
    p.keyboard.press("Shift+Enter")
    p.keyboard.type("still there?")
    p.keyboard.press("Enter")
    p.wait_for_selector(".autocoder-assistant:has-text('Still here after the stop.')")
    messages = llm.requests[-1].json["messages"]
    assert messages[-1] == {"role": "user", "content": "Are you\nstill there?"}
    assert [m["role"] for m in messages[-3:]] == ["user", "assistant", "user"]
    assert messages[-2]["content"].startswith("token")
    shot("07-after-stop")

    # Reset: a new conversation with a new correlation id, shown.
    old_id = p.inner_text(".autocoder-id")
    assert llm.requests[-1].headers["x-correlation-id"] == old_id
    p.locator("button.autocoder-reset").click()
    p.wait_for_selector(f".autocoder-notice:has-text('New conversation'):not(:has-text('{old_id}'))")
    p.wait_for_selector(f".autocoder-id:not(:text-is('{old_id}'))")  # a separate widget update
    new_id = p.inner_text(".autocoder-id")
    assert new_id != old_id and new_id in p.inner_text(".autocoder-transcript")
    shot("08-reset")
    readable_in_both_themes(p, {"Send", "Reset"})  # idle: Send enabled, Stop disabled (grey, exempt)

    # The notebook folder gets its own config file (a git pull, say): untrusted, its header is not sent and the
    # bar says so; Trust this folder sends it with the next request, and the bar leaves.
    (lab.root / ".auto-coder.yaml").write_text("llm:\n  auth_headers:\n    X-Team: team-header-1\n")
    llm.enqueue(reply.text("Not trusted yet."))
    send("Who is there?")
    p.wait_for_selector(".autocoder-assistant:has-text('Not trusted yet.')")
    playwright_api.expect(trust_bar).to_be_visible()
    assert "llm.auth_headers" in trust_bar.inner_text() and "team-header-1" not in trust_bar.inner_text()
    assert trust_bar.locator("button.auto-coder-trust").inner_text() == "Trust this folder"
    assert all("x-team" not in request.headers for request in llm.chat_requests)
    shot("09-untrusted")
    trust_bar.locator("button.auto-coder-trust").click()
    p.wait_for_selector(".autocoder-notice:has-text('Trusted')")
    playwright_api.expect(trust_bar).to_be_hidden()
    llm.enqueue(reply.text("Trusted and answering."))
    send("And now?")
    p.wait_for_selector(".autocoder-assistant:has-text('Trusted and answering.')")
    assert llm.chat_requests[-1].headers["x-team"] == "team-header-1"
    shot("10-trusted")
    assert p.locator(".autocoder-error").count() == 0

    # No click raised in the kernel: callback errors only show in JupyterLab's log console.
    p.wait_for_selector(".jp-LogConsolePanel:has-text('42')")  # the Run click's stdout: the log is recorded
    assert "Traceback" not in p.inner_text(".jp-LogConsolePanel")
    p.screenshot(path=str(OUTPUT / "09-notebook-and-log-console.png"))


def test_chat_panel_in_notebook_7(notebook7: Jupyter, llm: FakeLLMServer) -> None:
    """Notebook 7: the panel runs, fills its cell's width, and every text and button is readable in both themes."""
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_context(viewport={"width": 1280, "height": 1200}).new_page()
            try:
                _chat_in_notebook_7(page, notebook7, llm)
            except BaseException:
                page.screenshot(path=str(OUTPUT / "nb7-failure.png"))
                raise
        finally:
            browser.close()
    assert "Traceback" not in notebook7.log.read_text(errors="replace")


def _chat_in_notebook_7(page: object, server: Jupyter, llm: FakeLLMServer) -> None:
    p: Any = page
    p.set_default_timeout(WAIT_MS)
    playwright_api.expect.set_options(timeout=WAIT_MS)
    p.goto(f"{server.url}/notebooks/{NOTEBOOK.name}?token={server.token}")
    p.wait_for_selector(".jp-Notebook .jp-Cell")
    # Run All before the kernel is connected would ask which kernel to start: wait until it is.
    p.wait_for_function("() => document.querySelector('.jp-Toolbar-kernelName').innerText.includes('ipykernel') && "
                        "!document.querySelector('.jp-NotebookKernelStatus').innerText.includes('Connecting')")
    server.wait_for_connected_kernel(NOTEBOOK.name)  # Notebook 7 ran nothing at times without this wait
    p.click(".lm-MenuBar-itemLabel:text-is('Run')")
    p.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
    p.wait_for_selector(".autocoder-panel .autocoder-input")
    p.wait_for_selector(".jp-OutputArea-output:has-text('other cell run 1')")
    assert "approval ask · 127.0.0.1:" in p.inner_text(".autocoder-status")  # something useful before a turn
    # As wide as its cell's output area (it stopped about 120 px short), and that area is wide here.
    panel, area = p.eval_on_selector(".autocoder-panel", "e => [e.getBoundingClientRect().width, "
                                     "e.closest('.jp-OutputArea-output').getBoundingClientRect().width]")
    assert area > 1000 and abs(panel - area) <= 2, (panel, area)

    llm.enqueue(reply.tool_call("write_file", {"path": "nb7.txt", "content": "from Notebook 7\n"}),
                reply.text("Created `nb7.txt`."))
    p.locator(".autocoder-input textarea").fill("Create nb7.txt")
    p.locator("button.autocoder-send:not([disabled])").click()
    p.wait_for_selector("button.autocoder-approve")
    readable_in_both_themes(p, {"Stop", "Approve", "Always", "Deny"},
                            lambda: p.locator(".autocoder-panel").screenshot(path=str(OUTPUT / "nb7-dark.png")))
    p.locator("button.autocoder-approve").click()
    p.wait_for_selector(".autocoder-assistant code:has-text('nb7.txt')")
    assert (server.root / "nb7.txt").read_text() == "from Notebook 7\n"
    p.wait_for_selector(".autocoder-state-idle")
    readable_in_both_themes(p, {"Send", "Reset"})
    p.locator(".autocoder-panel").screenshot(path=str(OUTPUT / "nb7-light.png"))
