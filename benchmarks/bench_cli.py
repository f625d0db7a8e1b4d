"""The CLI as a whole process on a long streamed answer, against a raw-httpx reader process.

Both processes start from nothing (interpreter, imports), read the same pre-encoded 100,000-chunk
answer from the test server running in this process, and write the text to a pipe that this
process drains. Bytecode caches are allowed (PYTHONDONTWRITEBYTECODE is dropped from the children's environment),
as on a user's machine. Run: `python benchmarks/bench_cli.py [--chunks 100000] [--repeat 5]`. Target: <= 1.3x (goal
1.2x).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

from auto_coder_nb.testing.server import FakeLLMServer, reply

# The floor: a minimal streaming reader, what any client has to do at least.
RAW_READER = """
import json, sys, httpx
body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "stream"}]}
out = sys.stdout
with httpx.Client(timeout=60) as client, client.stream("POST", sys.argv[1] + "/chat/completions", json=body) as r:
    for line in r.iter_lines():
        if line.startswith("data: ") and line != "data: [DONE]":
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                out.write(choices[0]["delta"]["content"])
out.write("\\n")
"""


def run_process(command: list[str], env: dict[str, str], cwd: str) -> tuple[float, bytes]:
    start = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, env=env, cwd=cwd, check=False)
    elapsed = time.perf_counter() - start
    if completed.returncode != 0:
        raise SystemExit(f"{command[:3]} failed ({completed.returncode}): {completed.stderr.decode()[-2000:]}")
    return elapsed, completed.stdout


def main(chunks: int, repeat: int) -> None:
    digits = random.Random(0)  # not periodic: the provider cuts text that repeats itself (runaway output)
    text = "".join(f"w{digits.randrange(10)} " for _ in range(chunks))
    expected = (text + "\n").encode()
    with FakeLLMServer() as server, tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "HOME": home, "AUTO_CODER_BASE_URL": server.base_url, "AUTO_CODER_MODEL": "m",
               "NO_COLOR": "1"}
        for name in ("AUTO_CODER_API_KEY", "OPENAI_API_KEY", "USE_SSO", "SERVER_SIDE_TOKEN_REFRESH",
                     "PYTHONDONTWRITEBYTECODE"):
            env.pop(name, None)
        commands = {
            "raw httpx process": [sys.executable, "-c", RAW_READER, server.base_url],
            "auto-coder process": [sys.executable, "-m", "auto_coder_nb", "stream please"],
        }
        times: dict[str, list[float]] = {name: [] for name in commands}
        for round_number in range(repeat + 1):  # round 0 warms the disk cache and is not counted
            for name, command in commands.items():  # interleaved: other load hits both alike
                server.enqueue(reply.text(text, chunks=chunks))
                elapsed, output = run_process(command, env, home)
                if output.strip() != expected.strip():
                    raise SystemExit(f"{name} wrote {len(output)} bytes, not the answer ({len(expected)} bytes)")
                if round_number:
                    times[name].append(elapsed)
    raw = statistics.median(times["raw httpx process"])
    print(f"{chunks} chunks to a pipe, whole processes, median of {repeat} interleaved runs")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:20} {median * 1000:8.1f} ms   {median / raw:5.2f}x")
    ratios = [a / r for a, r in zip(times["auto-coder process"], times["raw httpx process"], strict=True)]
    print(f"auto-coder / raw httpx = {statistics.median(ratios):.2f} "
          "(median of per-run ratios; target <= 1.3, goal 1.2)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    main(args.chunks, args.repeat)
