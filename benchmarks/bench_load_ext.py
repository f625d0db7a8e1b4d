"""`%load_ext auto_coder_nb` against `%load_ext jupyter_ai_magics`, each in a fresh interpreter.

Every measurement starts a new process with an IPython shell already created (as in a kernel), then
times only the `%load_ext` call. The two extensions alternate so that load from other processes hits
them alike. jupyter-ai-magics must not go into the test environment: install it in a separate one,
e.g. `python -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install jupyter-ai-magics -e .`, then
`/tmp/bench-venv/bin/python benchmarks/bench_load_ext.py [--repeat 15]`. Target: ≤ 0.05×. Bytecode caches are
allowed (PYTHONDONTWRITEBYTECODE is dropped from the children's environment), as on a user's machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

EXTENSIONS = ("auto_coder_nb", "jupyter_ai_magics")
HEAVY = ("httpx", "ipywidgets", "nbformat", "langchain", "langchain_core", "pydantic")

CHILD = """
import json, sys, time
from IPython.core.interactiveshell import InteractiveShell
shell = InteractiveShell.instance()
start = time.perf_counter()
shell.run_line_magic("load_ext", sys.argv[1])
elapsed = time.perf_counter() - start
assert sys.argv[1] in shell.extension_manager.loaded, "the extension did not load"
heavy = sorted(name for name in sys.argv[2].split(",") if name in sys.modules)
print(json.dumps({"seconds": elapsed, "heavy": heavy}))
"""


def measure(python: str, extension: str) -> dict[str, object]:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run([python, "-c", CHILD, extension, ",".join(HEAVY)], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"%load_ext {extension} failed:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="measurements per extension")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the benchmark environment")
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in EXTENSIONS}
    heavy: dict[str, list[str]] = {}
    for name in EXTENSIONS:
        measure(args.python, name)  # warm the file cache and .pyc files once
    for _ in range(args.repeat):
        for name in EXTENSIONS:
            result = measure(args.python, name)
            times[name].append(float(result["seconds"]))  # type: ignore[arg-type]
            heavy[name] = list(result["heavy"])  # type: ignore[call-overload]
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name in EXTENSIONS:
        print(f"{name:20s} median {medians[name] * 1000:8.1f} ms  min {min(times[name]) * 1000:8.1f} ms  "
              f"heavy modules loaded: {', '.join(heavy[name]) or 'none'}")
    ratio = medians["auto_coder_nb"] / medians["jupyter_ai_magics"]
    print(f"ratio auto_coder_nb / jupyter_ai_magics = {ratio:.3f}  (target <= 0.05)")


if __name__ == "__main__":
    main()
