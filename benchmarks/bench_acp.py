"""Time to the first answer text: `auto-coder --acp` (from `session/prompt` to the first `agent_message_chunk`, in a
running agent with an open session, as an editor or jupyter-ai uses it) next to `auto-coder "prompt"` (from the
process start to the first byte of the answer on stdout) and a raw httpx request (to the first content delta), all
on the same test server, interleaved in the same run.

Run: `python benchmarks/bench_acp.py [--repeat 15]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import httpx

from auto_coder_nb.testing.server import FakeLLMServer, reply

ANSWER = "The answer streams in five pieces."


def raw_first_delta(client: httpx.Client, base_url: str) -> float:
    """A minimal streaming request in this process, on a kept-alive connection: to the first content delta."""
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    start = time.perf_counter()
    with client.stream("POST", f"{base_url}/chat/completions", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                choices = json.loads(line[6:])["choices"]
                if choices and choices[0]["delta"].get("content"):
                    return time.perf_counter() - start
    raise SystemExit("the raw request got no content")


def cli_first_byte(env: dict[str, str], cwd: str) -> float:
    """`auto-coder "prompt"` from its start to the first byte of the answer on stdout."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "auto_coder_nb", "say something"], env=env, cwd=cwd,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.stdout is not None
    first = process.stdout.read(1)
    elapsed = time.perf_counter() - start
    rest = first + process.stdout.read()
    if process.wait() != 0 or rest.decode().strip() != ANSWER:
        raise SystemExit(f"auto-coder failed or wrote {rest!r}")
    return elapsed


class Agent:
    """One `auto-coder --acp` process with one open session."""

    def __init__(self, env: dict[str, str], cwd: str) -> None:
        self.process = subprocess.Popen([sys.executable, "-m", "auto_coder_nb", "--acp"], env=env, cwd=cwd,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.number = 0
        self.call("initialize", {"protocolVersion": 1, "clientCapabilities": {}})
        self.session = self.call("session/new", {"cwd": cwd, "mcpServers": []})["result"]["sessionId"]

    def send(self, method: str, params: Any) -> int:
        self.number += 1
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps({"jsonrpc": "2.0", "id": self.number, "method": method,
                                             "params": params}).encode() + b"\n")
        self.process.stdin.flush()
        return self.number

    def read(self) -> dict[str, Any]:
        stdout: IO[bytes] | None = self.process.stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise SystemExit("the agent closed stdout")
        return dict(json.loads(line))

    def call(self, method: str, params: Any) -> dict[str, Any]:
        number = self.send(method, params)
        while (message := self.read()).get("id") != number or "method" in message:
            pass
        return message

    def first_chunk(self) -> float:
        """From sending session/prompt to the first agent_message_chunk (then the prompt is read to its end)."""
        start = time.perf_counter()
        number = self.send("session/prompt", {"sessionId": self.session,
                                              "prompt": [{"type": "text", "text": "say something"}]})
        elapsed = None
        while True:
            message = self.read()
            update = message.get("params", {}).get("update", {}) if message.get("method") else {}
            if elapsed is None and update.get("sessionUpdate") == "agent_message_chunk":
                elapsed = time.perf_counter() - start
            if message.get("id") == number and "method" not in message:
                if elapsed is None or message.get("result", {}).get("stopReason") != "end_turn":
                    raise SystemExit(f"the prompt failed: {message}")
                return elapsed

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def main(repeat: int) -> None:
    with FakeLLMServer() as server, tempfile.TemporaryDirectory() as home:
        Path(home, "project").mkdir()
        cwd = str(Path(home, "project"))
        env = {**os.environ, "HOME": home, "AUTO_CODER_BASE_URL": server.base_url, "AUTO_CODER_MODEL": "m",
               "AUTO_CODER_DATA_DIR": str(Path(home, "data")), "NO_COLOR": "1"}
        for name in ("AUTO_CODER_API_KEY", "OPENAI_API_KEY", "USE_SSO", "SERVER_SIDE_TOKEN_REFRESH"):
            env.pop(name, None)
        agent, client = Agent(env, cwd), httpx.Client(timeout=60)
        times: dict[str, list[float]] = {"raw httpx request": [], "auto-coder --acp prompt": [],
                                         "auto-coder process": []}
        try:
            for round_number in range(repeat + 1):  # round 0 warms caches and connections, and is not counted
                server.enqueue(reply.text(ANSWER))
                raw = raw_first_delta(client, server.base_url)
                server.enqueue(reply.text(ANSWER, chunks=5))
                acp = agent.first_chunk()
                server.enqueue(reply.text(ANSWER, chunks=5))
                cli = cli_first_byte(env, cwd)
                if round_number:
                    for name, value in zip(times, (raw, acp, cli), strict=True):
                        times[name].append(value)
        finally:
            agent.close()
            client.close()
    floor = statistics.median(times["raw httpx request"])
    print(f"time to the first answer text on the test server, median of {repeat} interleaved runs")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:26} {median * 1000:8.1f} ms   p90 {sorted(samples)[int(len(samples) * 0.9) - 1] * 1000:7.1f}"
              f" ms   {median / floor:6.1f}x the raw request")
    ratio = statistics.median(times["auto-coder --acp prompt"]) / statistics.median(times["auto-coder process"])
    print(f"--acp prompt / CLI process = {ratio:.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    main(parser.parse_args().repeat)
