"""The chat panel while a long answer streams: widget updates per second and the cost of one update,
after a short and a long transcript.

For each transcript length the panel first gets EARLIER exchanges (a question and a Markdown answer
each, rendered through the panel's own code, without HTTP), then one turn streams a
CHUNKS-chunk Markdown answer (paragraphs, lists, code blocks) from the test server, which runs in its
own process so that it does not share this interpreter. Measured: updates (throttled flushes) per
second, time per update (mean, p95, max) and widget state sent per update (characters of HTML values
plus child-id lists), which must not grow with the transcript.
With `--delay 0` the whole answer arrives in one burst: the loop is busy reading it, so there are only a
few (large) updates; the paced run (0.5 ms between chunks, about 14 s) shows the steady state.
Run: `python benchmarks/bench_panel.py [--chunks 20000] [--earlier 10 1000] [--delay 0.0005 0]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import ipywidgets as widgets

from auto_coder_nb.config import load_config
from auto_coder_nb.events import TextDelta
from auto_coder_nb.panel import ChatPanel
from auto_coder_nb.session import Session
from auto_coder_nb.testing.ports import free_port
from auto_coder_nb.testing.server import reply

MODEL_ID_CHARS = 45  # "IPY_MODEL_" + a 32-digit hex id + quotes and comma, as sent in a children list


def answer_text(chunks: int) -> list[str]:
    """`chunks` pieces of a realistic Markdown answer: a paragraph of words, a list, a code block, again."""
    pieces: list[str] = []
    while len(pieces) < chunks:
        pieces += [f"word{i} " for i in range(60)] + ["\n\n"]
        pieces += ["- a **point**\n", "- another `point`\n", "\n"]
        pieces += ["```python\n"] + [f"x{i} = {i}\n" for i in range(8)] + ["```\n", "\n"]
    return pieces[:chunks]


def sse_chunk(text: str) -> str:
    body = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return f"data: {json.dumps(body)}\n\n"


class Meter:
    """Times the panel's flushes and adds up the widget state each one changes."""

    def __init__(self, panel: ChatPanel) -> None:
        self.times: list[float] = []
        self.sent: list[int] = []
        self._current = 0
        flush = panel.view.stream.flush

        def timed_flush() -> None:
            self._current = 0
            start = time.perf_counter()
            flush()
            self.times.append(time.perf_counter() - start)
            self.sent.append(self._current)

        panel.view.stream.flush = timed_flush  # type: ignore[method-assign]
        self._original = original = widgets.Widget.notify_change

        def notify_change(widget: widgets.Widget, change: Any) -> None:
            if change["name"] == "value" and isinstance(change["new"], str):
                self._current += len(change["new"])
            elif change["name"] == "children":
                self._current += MODEL_ID_CHARS * len(change["new"])
            original(widget, change)

        widgets.Widget.notify_change = notify_change  # type: ignore[method-assign]

    def close(self) -> None:
        widgets.Widget.notify_change = self._original  # type: ignore[method-assign]


async def measure(base_url: str, root: str, chunks: int, earlier: int, delay: float) -> dict[str, float]:
    config = load_config({"llm.base_url": base_url, "llm.model": "fake-model"}, env={}, cwd=Path(root),
                         home=Path(root))
    panel = ChatPanel(Session.create(config, working_dir=root))
    for i in range(earlier):
        panel._begin_turn(f"question {i}")
        panel._on_event(TextDelta(f"Answer **{i}** with a list:\n\n- one\n- two\n\n```python\nprint({i})\n```\n"))
        panel._end_turn()
    pieces = answer_text(chunks)
    stream = reply.raw_sse([sse_chunk(p) for p in pieces] + ["data: [DONE]\n\n"], delay=delay)
    httpx.post(f"{base_url.removesuffix('/v1')}/_script", json=[stream]).raise_for_status()
    meter = Meter(panel)
    start = time.perf_counter()
    try:
        await panel.ask("write a long answer")
    finally:
        meter.close()
    elapsed = time.perf_counter() - start
    assert panel.transcript[-1]["text"] == "".join(pieces), "the whole answer arrived"
    times = sorted(meter.times)
    return {
        "seconds": elapsed,
        "updates": len(times),
        "updates_per_s": len(times) / elapsed,
        "mean_ms": statistics.fmean(times) * 1000,
        "p95_ms": times[int(len(times) * 0.95)] * 1000,
        "max_ms": times[-1] * 1000,
        "sent_mean": statistics.fmean(meter.sent),
        "sent_max": max(meter.sent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--chunks", type=int, default=20000)
    parser.add_argument("--earlier", type=int, nargs="+", default=[10, 1000])
    parser.add_argument("--delay", type=float, nargs="+", default=[0.0005, 0.0],
                        help="seconds between chunks (0: as fast as the server writes)")
    args = parser.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "auto_coder_nb.testing.server", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{base_url}/models")
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        print(f"{args.chunks}-chunk answer; updates are throttled to 20/s")
        print(f"{'delay':>7} {'earlier':>8} {'seconds':>8} {'updates':>8} {'upd/s':>6} {'mean ms':>8} "
              f"{'p95 ms':>7} {'max ms':>7} {'sent/upd':>9} {'sent max':>9}")
        for delay in args.delay:
            for earlier in args.earlier:
                with tempfile.TemporaryDirectory() as root:
                    r = asyncio.run(measure(base_url, root, args.chunks, earlier, delay))
                print(f"{delay:>7} {earlier:>8} {r['seconds']:>8.2f} {r['updates']:>8} {r['updates_per_s']:>6.1f} "
                      f"{r['mean_ms']:>8.3f} {r['p95_ms']:>7.3f} {r['max_ms']:>7.3f} {r['sent_mean']:>9.0f} "
                      f"{r['sent_max']:>9}")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
