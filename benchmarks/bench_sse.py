"""Time to parse one huge SSE line arriving in many network reads (issue 10, item 8).

The parser joins a long line once, when its end arrives, so the cost is linear in the stream's size.
Run: `python benchmarks/bench_sse.py [--megabytes 20] [--read 65536] [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import statistics
import time

from auto_coder_nb.providers.sse import EventTooLarge, SSEParser


def parse(line: bytes, read: int, limit: int) -> tuple[float, str]:
    parser = SSEParser(max_event_bytes=limit)
    started = time.perf_counter()
    try:
        for start in range(0, len(line), read):
            parser.feed(line[start:start + read])
        events = parser.feed(b"\n\n")
        outcome = f"{len(events)} event of {len(events[0]) / 1048576:.0f} MiB"
    except EventTooLarge:
        outcome = "refused at the cap"
    return time.perf_counter() - started, outcome


def main() -> None:
    options = argparse.ArgumentParser()
    options.add_argument("--megabytes", type=int, default=20)
    options.add_argument("--read", type=int, default=65536, help="bytes per network read")
    options.add_argument("--repeat", type=int, default=5)
    args = options.parse_args()
    line = b"data: " + b"x" * (args.megabytes * 1024 * 1024)
    for label, limit in (("under a raised cap", len(line) * 2), ("default 16 MiB cap", SSEParser().max_event_bytes)):
        runs = [parse(line, args.read, limit) for _ in range(args.repeat)]
        median = statistics.median(seconds for seconds, _ in runs)
        print(f"{args.megabytes} MB line in {args.read}-byte reads, {label}: {median * 1000:.1f} ms median "
              f"({runs[0][1]})")


if __name__ == "__main__":
    main()
