"""Time to consume a long streamed answer: the provider vs raw httpx + json.loads vs the openai SDK.

All three read the same pre-encoded SSE answer from the project's test server, started in this
process. Run: `python benchmarks/bench_stream.py [--chunks 20000] [--repeat 7]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import httpx

from auto_coder_nb.config import Config
from auto_coder_nb.providers import answers
from auto_coder_nb.providers.base import Completion
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.testing.server import FakeLLMServer, reply

MESSAGES = [{"role": "user", "content": "stream"}]
DEFAULT_MERGE_ABOVE = answers.MERGE_ABOVE


async def raw_httpx(client: httpx.AsyncClient, url: str) -> str:
    """The floor: iterate lines, parse each `data:` JSON, keep the text."""
    parts = []
    body = {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with client.stream("POST", f"{url}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                if chunk["choices"]:
                    text = chunk["choices"][0]["delta"].get("content")
                    if text:
                        parts.append(text)
    return "".join(parts)


async def through_provider(provider: OpenAICompatibleProvider, merge: bool = True) -> str:
    # Without merging, every delta is its own event, as when the consumer keeps up with the stream.
    answers.MERGE_ABOVE = DEFAULT_MERGE_ABOVE if merge else sys.maxsize
    async for event in provider.chat(MESSAGES):
        if isinstance(event, Completion):
            return event.content
    raise AssertionError("no completion")


async def openai_sdk(client: object) -> str:
    parts = []
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True,  # type: ignore[attr-defined]
                                                  stream_options={"include_usage": True})
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


async def timed(server: FakeLLMServer, text: str, chunks: int, run: Callable[[], Awaitable[str]]) -> float:
    server.enqueue(reply.text(text, chunks=chunks))  # encoded here, outside the timing
    start = time.perf_counter()
    result = await run()
    elapsed = time.perf_counter() - start
    assert result == text, "the answer was not assembled correctly"
    return elapsed


async def main(chunks: int, repeat: int, with_sdk: bool) -> None:
    digits = random.Random(0)  # not periodic: the provider cuts text that repeats itself (runaway output)
    text = "".join(f"w{digits.randrange(10)} " for _ in range(chunks))
    with FakeLLMServer() as server:
        config = Config()
        config.llm.base_url, config.llm.model = server.base_url, "m"
        provider = OpenAICompatibleProvider(config)
        runs: dict[str, Callable[[], Awaitable[str]]] = {}
        async with httpx.AsyncClient(timeout=60) as client:
            runs["raw httpx"] = lambda: raw_httpx(client, server.base_url)
            runs["provider"] = lambda: through_provider(provider)
            runs["provider, unmerged"] = lambda: through_provider(provider, merge=False)
            if with_sdk:
                import openai

                sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="unused", max_retries=0)
                runs["openai SDK"] = lambda: openai_sdk(sdk)
            times: dict[str, list[float]] = {name: [] for name in runs}
            for run in runs.values():  # warm-up: connections, imports, caches
                await timed(server, text, chunks, run)
            # Interleaved, so that load from other processes hits every contender alike.
            for _ in range(repeat):
                for name, run in runs.items():
                    times[name].append(await timed(server, text, chunks, run))
            if with_sdk:
                await sdk.close()
        await provider.aclose()
    raw = statistics.median(times["raw httpx"])
    print(f"{chunks} chunks, median of {repeat} interleaved runs")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"  {name:20} {median * 1000:8.1f} ms   {median / raw:6.2f}x raw httpx")
    for name in ("provider", "provider, unmerged"):
        ratios = [p / r for p, r in zip(times[name], times["raw httpx"], strict=True)]
        print(f"{name} / raw httpx = {statistics.median(ratios):.2f} (median of per-run ratios; target <= 1.10)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-sdk", action="store_true", help="skip the openai SDK (if it is not installed)")
    args = parser.parse_args()
    asyncio.run(main(args.chunks, args.repeat, not args.no_sdk))
