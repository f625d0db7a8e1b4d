"""The agent's own overhead per tool round trip, with an instant server.

One turn makes ROUNDS tool calls (a no-op tool) and then answers. The same number of requests is
also made through the provider alone and through raw httpx, so the difference is what the agent
adds per round trip: history, tool lookup and execution, events. The server runs in its own process
so that its work does not share this process's interpreter lock.
Run: `python benchmarks/bench_agent.py [--rounds 20] [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx

from auto_coder_nb.agent import iterate_sync
from auto_coder_nb.config import Config
from auto_coder_nb.events import TurnDone
from auto_coder_nb.providers.base import Completion, ToolDefinition
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.session import Session
from auto_coder_nb.testing.server import reply

NOOP = ToolDefinition("noop", "Does nothing.", {"type": "object", "properties": {"n": {"type": "integer"}}},
                      handler=lambda n=0: "ok")
MESSAGES = [{"role": "user", "content": "call noop"}]


def script(root: str, rounds: int) -> None:
    specs = [reply.tool_call("noop", {"n": n}) for n in range(rounds)] + [reply.text("done")]
    httpx.post(f"{root}/_script", json=specs).raise_for_status()


async def raw_requests(client: httpx.AsyncClient, base_url: str, rounds: int) -> None:
    body = {"model": "m", "messages": MESSAGES, "tools": [NOOP.schema()], "stream": True,
            "stream_options": {"include_usage": True}}
    for _ in range(rounds + 1):
        async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
            async for line in response.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])


async def provider_requests(provider: OpenAICompatibleProvider, rounds: int) -> None:
    for _ in range(rounds + 1):
        async for event in provider.chat(MESSAGES, [NOOP]):
            if isinstance(event, Completion):
                assert event.tool_calls or event.content == "done"


async def agent_turn(session: Session, rounds: int) -> None:
    session.clear()
    events = [event async for event in session.agent.run("call noop")]
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop", events[-3:]
    assert len(session.conversation.messages) == 2 + 2 * rounds + 1 or session.conversation.system_prompt is None


def agent_turn_sync(session: Session, loop: asyncio.AbstractEventLoop) -> None:
    """As the CLI drives it: from sync code, one event at a time."""
    session.clear()
    events = list(iterate_sync(session.agent.run("call noop"), loop))
    assert isinstance(events[-1], TurnDone) and events[-1].reason == "stop"


def main(rounds: int, repeat: int) -> None:
    server = subprocess.Popen([sys.executable, "-m", "auto_coder_nb.testing.server", "--port", "0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        base_url = server.stdout.readline().split()[-1]  # type: ignore[union-attr]
        root = base_url.removesuffix("/v1")
        with tempfile.TemporaryDirectory() as workdir:
            config = Config()
            config.llm.base_url, config.llm.model = base_url, "m"
            config.agent.max_iterations = rounds + 5
            session = Session.create(config, working_dir=workdir, extra_tools=[NOOP])
            provider = OpenAICompatibleProvider(config)
            loop = asyncio.new_event_loop()
            client = httpx.AsyncClient(timeout=60)
            runs: dict[str, Any] = {
                "raw httpx": lambda: loop.run_until_complete(raw_requests(client, base_url, rounds)),
                "provider": lambda: loop.run_until_complete(provider_requests(provider, rounds)),
                "agent (async)": lambda: loop.run_until_complete(agent_turn(session, rounds)),
                "agent (iterate_sync)": lambda: agent_turn_sync(session, loop),
            }
            times: dict[str, list[float]] = {name: [] for name in runs}
            for round_number in range(repeat + 1):  # round 0 warms up and is not counted
                for name, run in runs.items():
                    script(root, rounds)
                    start = time.perf_counter()
                    run()
                    if round_number:
                        times[name].append((time.perf_counter() - start) / (rounds + 1))
            loop.run_until_complete(client.aclose())
            loop.run_until_complete(provider.aclose())
            loop.run_until_complete(session.aclose())
            loop.close()
    finally:
        server.terminate()
        server.wait()
    per_request = {name: statistics.median(samples) * 1000 for name, samples in times.items()}
    print(f"{rounds} tool round trips per turn, median of {repeat} turns, milliseconds per model request")
    for name, ms in per_request.items():
        print(f"  {name:22} {ms:6.2f} ms")
    own = per_request["agent (async)"] - per_request["provider"]
    print(f"agent's own overhead per tool round trip: {own:.2f} ms (target <= 3 ms); "
          f"provider over raw httpx: {per_request['provider'] - per_request['raw httpx']:.2f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    main(args.rounds, args.repeat)
