"""Time to first token for a session in a second folder: the system prompt's unchanging part first (now) vs the
folder first (before), with a real model on a server that caches prompts.

llama-server (one slot, prompt cache on, as the project's tests start it) serves SmolLM2-135M. For each
layout, a prompted request for folder A warms the cache, then the same request for folder B is timed from
sending to the first streamed token; the server's own `timings.prompt_n` says how many prompt tokens it had to
process. The layouts are measured interleaved, in the same run. "before" is the same text with the part that
changes per folder (workspace root, OS, date, project instructions) moved to the start, where the workspace
path was before (its first line).

    python benchmarks/bench_prompt_cache.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from auto_coder_nb.config import Config
from auto_coder_nb.providers.prompted import ENVIRONMENT_HEADING, response_format, to_prompted_messages
from auto_coder_nb.session import Session
from auto_coder_nb.testing.llama_server import LlamaServer


def prompted_body(folder: Path, model: str, layout: str) -> dict[str, Any]:
    """The first prompted request of a session in `folder`, as the product sends it (or with the folder's part
    first, for `layout="before"`)."""
    config = Config()
    config.history.enabled = False
    session = Session.create(config, working_dir=folder)
    tools = session.tools.definitions()
    messages = [*session.conversation.messages, {"role": "user", "content": "What does calc.py do?"}]
    prompt = to_prompted_messages(messages, tools)
    if layout == "before":
        system = prompt[0]["content"]
        at = system.index(f"\n\n{ENVIRONMENT_HEADING}\n")
        prompt[0]["content"] = f"{system[at + 2:]}\n\n{system[:at]}"
    return {"model": model, "messages": prompt, "response_format": response_format(tools), "max_tokens": 8,
            "temperature": 0, "stream": True}


def first_token(client: httpx.Client, url: str, body: dict[str, Any]) -> tuple[float, int]:
    """Seconds to the first streamed token, and the prompt tokens the server processed."""
    started = time.perf_counter()
    first, processed = None, -1
    # A new connection each time: llama-server may close a kept-alive one just as it is reused.
    with client.stream("POST", url, json=body, headers={"Connection": "close"}) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            delta = (chunk.get("choices") or [{}])[0].get("delta") or {}
            if first is None and delta.get("content"):
                first = time.perf_counter() - started
            if "timings" in chunk:
                processed = chunk["timings"].get("prompt_n", -1)
    return (first if first is not None else time.perf_counter() - started), processed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cache-"))

    def folder(name: str) -> Path:
        made = base / name
        made.mkdir()
        (made / "calc.py").write_text("def add(a, b):\n    return a + b\n")
        return made

    results: dict[str, list[tuple[float, int]]] = {"before": [], "now": []}
    with LlamaServer() as server, httpx.Client(timeout=300) as client:
        url = f"{server.base_url}/chat/completions"
        total = 0
        for run in range(args.repeat):
            for layout in ("before", "now"):
                # New folders every time: the server keeps earlier prompts (--cache-ram), so only a prefix can
                # be reused, never a whole prompt seen before.
                first, second = (prompted_body(folder(f"{layout}-{run}-{name}"), server.model, layout)
                                 for name in ("first", "second"))
                total = len(second["messages"][0]["content"])
                first_token(client, url, first)  # folder A: the cache now holds its prompt
                results[layout].append(first_token(client, url, second))
    print(f"system prompt: {total} characters; {args.repeat} runs each, interleaved")
    medians = {}
    for layout, runs in results.items():
        medians[layout] = statistics.median(seconds for seconds, _ in runs)
        processed = statistics.median(tokens for _, tokens in runs)
        print(f"{layout:7} time to first token in the second folder: median {medians[layout] * 1000:.0f} ms "
              f"(runs: {', '.join(f'{s * 1000:.0f}' for s, _ in runs)}); prompt tokens processed: {processed:g}")
    print(f"now / before: {medians['now'] / medians['before']:.2f}x")


if __name__ == "__main__":
    main()
