"""Live notebook: how long a change made through the collaboration room takes to show in the browser, next to the
round trip of a plain kernel execute, measured in the same run.

Starts JupyterLab (with jupyter-collaboration) on 127.0.0.1, opens a notebook in headless Chromium, joins the
notebook's room from this process the way the kernel does (`LiveEditing`, pointed at the server by settings),
then alternates: a replace of a cell's source, an inserted cell, and a plain `execute_request` ("pass") on the
notebook's kernel through a kernel client. The page records when each change's marker appears in the notebook's
DOM (a MutationObserver, the page's clock); the change starts on this process's clock (same machine, same
epoch). Prints medians, p90 and the ratio to the kernel round trip.
Run: `python benchmarks/bench_live.py [--edits 20]` (needs the test extra and Debian's chromium).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the tests' Jupyter launcher
from jupyter_helpers import CHROMIUM, CHROMIUM_ARGS, jupyter  # noqa: E402

from auto_coder_nb.live_notebook import LiveEditing  # noqa: E402

WATCH = """() => {
  window.__seen = {};
  const notebook = document.querySelector('.jp-Notebook');
  const look = () => {
    const text = notebook.textContent;
    for (const mark of text.matchAll(/mark-(\\d+)-/g)) {
      if (!(mark[1] in window.__seen)) window.__seen[mark[1]] = performance.timeOrigin + performance.now();
    }
  };
  new MutationObserver(look).observe(notebook, {subtree: true, childList: true, characterData: true});
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--edits", type=int, default=20, help="changes of each kind (default 20)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        root = tmp / "work"
        root.mkdir()
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1"),
                                                   nbformat.v4.new_code_cell("y = 2")])
        notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)",
                                           "language": "python"}
        nbformat.write(notebook, root / "bench.ipynb")
        with jupyter(tmp, root, tmp / "jupyterlab.log", {}, app="lab") as lab, sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(60_000)
            page.goto(f"{lab.url}/lab/tree/bench.ipynb?token={lab.token}")
            page.wait_for_selector(".jp-StatusBar-TextItem:has-text('(ipykernel) | Idle')")
            page.evaluate(WATCH)
            kernel_id = next(s["kernel"]["id"] for s in lab.api("GET", "api/sessions").json()
                             if s["path"] == "bench.ipynb")
            live = LiveEditing(kernel_id, {"AUTO_CODER_JUPYTER_URL": lab.url, "AUTO_CODER_JUPYTER_TOKEN": lab.token,
                                           "AUTO_CODER_JUPYTER_ROOT": str(root)})
            document = live(root / "bench.ipynb")
            assert document is not None
            target = document.ids()[0]
            replace, insert, execute = [], [], []
            with lab.kernel_client(kernel_id) as kernel:
                kernel.execute_interactive("pass", timeout=60)  # warm up
                mark = 0
                for _ in range(args.edits):
                    mark += 1
                    started = time.time() * 1000
                    document.replace(target, f"x = {mark}  # mark-{mark}-")
                    replace.append(_seen(page, mark) - started)
                    mark += 1
                    started = time.time() * 1000
                    document.insert(len(document.ids()), f"z = {mark}  # mark-{mark}-")
                    insert.append(_seen(page, mark) - started)
                    started = time.perf_counter()
                    kernel.execute_interactive("pass", timeout=60)
                    execute.append((time.perf_counter() - started) * 1000)
            live.close()
            browser.close()
    base = statistics.median(execute)
    print(f"{args.edits} of each, JupyterLab in headless Chromium, milliseconds (median, p90):")
    for name, values in (("replace visible in the browser", replace), ("insert visible in the browser", insert),
                         ("kernel execute round trip (baseline)", execute)):
        median = statistics.median(values)
        p90 = sorted(values)[int(len(values) * 0.9) - 1]
        print(f"  {name:<38} {median:7.1f}  {p90:7.1f}   {median / base:5.2f}x baseline")


def _seen(page: object, mark: int) -> float:
    page.wait_for_function(f"() => window.__seen['{mark}'] !== undefined")  # type: ignore[attr-defined]
    return float(page.evaluate(f"() => window.__seen['{mark}']"))  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
