"""Start-up: `auto-coder --version` against `python -c "import httpx"`, whole processes, interleaved.

Each run starts a fresh interpreter; the two contenders alternate so that load from other processes hits them alike,
and the ratio is the median of the per-run ratios. Bytecode caches are allowed (PYTHONDONTWRITEBYTECODE is dropped
from the children's environment), as on a user's machine; a first round warms them and the disk cache.
Run: `python benchmarks/bench_startup.py [--repeat 21]`. Target: <= 1.5x.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def auto_coder_command() -> list[str]:
    """The installed console script, as a user runs it (next to this interpreter), else the module."""
    script = Path(sys.executable).with_name("auto-coder")
    return [str(script), "--version"] if script.exists() else [sys.executable, "-m", "auto_coder_nb", "--version"]


def timed(command: list[str], env: dict[str, str], cwd: str) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, env=env, cwd=cwd, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{command} failed ({done.returncode}): {done.stderr.decode()[-2000:]}")
    return elapsed


def main(repeat: int) -> None:
    commands = {
        "python -c 'import httpx'": [sys.executable, "-c", "import httpx"],
        "auto-coder --version": auto_coder_command(),
        "python -c 'pass'": [sys.executable, "-c", "pass"],  # the interpreter alone, for scale
    }
    with tempfile.TemporaryDirectory() as home:
        env = {key: value for key, value in os.environ.items()
               if key != "PYTHONDONTWRITEBYTECODE" and not key.startswith("AUTO_CODER_")}
        env["HOME"] = home
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_number in range(repeat + 1):  # round 0 warms the caches and is not counted
            for name, command in commands.items():
                elapsed = timed(command, env, home)
                if round_number:
                    times[name].append(elapsed)
    baseline = "python -c 'import httpx'"
    print(f"whole processes, median of {repeat} interleaved runs")
    for name, samples in times.items():
        print(f"  {name:28} {statistics.median(samples) * 1000:7.1f} ms   min {min(samples) * 1000:7.1f} ms")
    ratios = [ours / base for ours, base in zip(times["auto-coder --version"], times[baseline], strict=True)]
    print(f"auto-coder --version / import httpx = {statistics.median(ratios):.2f} "
          "(median of per-run ratios; target <= 1.5)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=21)
    main(parser.parse_args().repeat)
