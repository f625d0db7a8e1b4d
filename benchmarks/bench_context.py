"""The kernel context summary that goes with every magic, for a crowded namespace: 2,000 small pandas
DataFrames plus 5,000 other variables (issue 10, item 15: it took 4 s per magic; target under 100 ms).

`build_context("auto", ...)` as the magics call it, against a baseline measured in the same run: the
previous algorithm, which described every variable and then kept what fitted. Needs pandas
(`pip install pandas`; it is in the `bench` extra).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import pandas as pd

from auto_coder_nb.notebook_context import build_context
from auto_coder_nb.tools.notebook import describe_value, user_variables

TARGET_SECONDS = 0.100


def crowded_namespace(frames: int, others: int) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    for i in range(frames):
        namespace[f"frame_{i}"] = pd.DataFrame({"city": ["Oslo", "Bergen", "Turku"], "temp": [5.7, 7.6, 5.3 + i]})
    for i in range(others):
        namespace[f"value_{i}"] = (i, f"text {i}", [i, i + 1, i + 2], {"key": i})[i % 4]
    return namespace


def describe_everything(namespace: dict[str, Any]) -> str:
    """The baseline: every variable described, then whole blocks kept until the share is spent."""
    blocks = [describe_value(name, value) for name, value in user_variables(namespace).items()]
    kept: list[str] = []
    used = 0
    for block in blocks:
        if used + len(block) > 2000 and kept:
            kept.append(f"... {len(blocks) - len(kept)} more variables not shown")
            break
        kept.append(block)
        used += len(block) + 1
    return "\n".join(kept)


def timed(function: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=2000)
    parser.add_argument("--others", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5, help="measurements of each, interleaved")
    args = parser.parse_args()
    namespace = crowded_namespace(args.frames, args.others)
    build_context("auto", namespace)  # warm up pandas' formatting code once
    now, before = [], []
    for _ in range(args.repeat):  # interleaved, so that load from other processes hits both alike
        now.append(timed(lambda: build_context("auto", namespace), 1))
        before.append(timed(lambda: describe_everything(namespace), 1))
    current, baseline = statistics.median(now), statistics.median(before)
    print(f"namespace: {args.frames} DataFrames + {args.others} other variables")
    print(f"build_context (auto)        median {current * 1000:8.1f} ms   target < {TARGET_SECONDS * 1000:.0f} ms")
    print(f"baseline (describe all)     median {baseline * 1000:8.1f} ms")
    print(f"ratio                       {current / baseline:.3f}x")


if __name__ == "__main__":
    main()
