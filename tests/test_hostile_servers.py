"""Servers that never finish: one that dribbles a byte at a time on every path, one that floods a body without end.
Every request the product makes ends at its deadline or its size cap, with a readable error."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from auto_coder_nb.authentication_provider import AuthenticationProviderWithClientSideTokenRefresh
from auto_coder_nb.bounded_http import BODY_LIMIT, ResponseTooLarge, bounded_client
from auto_coder_nb.config import Config
from auto_coder_nb.errors import ConnectionFailed, RequestTimeout, StreamError
from auto_coder_nb.providers.capabilities import ModelCapabilities
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.testing.server import FakeLLMServer, reply

pytestmark = pytest.mark.timeout(120)  # before the fix these requests never ended


def provider_for(server: FakeLLMServer, timeout: float = 1.0, **llm: Any) -> OpenAICompatibleProvider:
    config = Config()
    config.llm.base_url = server.base_url
    config.llm.model = "fake-model"
    config.llm.timeout = timeout
    for key, value in llm.items():
        setattr(config.llm, key, value)
    return OpenAICompatibleProvider(config, max_retries=0)


def run(coroutine: Any, provider: OpenAICompatibleProvider) -> Any:
    async def main() -> Any:
        try:
            return await coroutine
        finally:
            await provider.aclose()
    return asyncio.run(main())


async def answer(provider: OpenAICompatibleProvider) -> Any:
    return [event async for event in provider.chat([{"role": "user", "content": "hi"}])]


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream", "text/plain"])
@pytest.mark.parametrize("status", [200, 500])
def test_a_chat_answer_dribbled_a_byte_at_a_time_ends_at_llm_timeout(
        fake_server: FakeLLMServer, content_type: str, status: int) -> None:
    fake_server.every_request = reply.dribble(interval=0.2, status=status, content_type=content_type)
    provider = provider_for(fake_server)
    with pytest.raises(RequestTimeout, match=r"llm.timeout"):
        run(answer(provider), provider)


def test_status_and_headers_dribbled_end_at_the_deadline_too(fake_server: FakeLLMServer) -> None:
    fake_server.every_request = reply.dribble(interval=0.2, head=False)

    async def fetch() -> httpx.Response:
        async with bounded_client({"timeout": 1.0}) as client:  # connect and read: 1 s each
            return await client.get(fake_server.url + "/anything")

    with pytest.raises(httpx.ReadTimeout, match=r"no answer \(status and headers\) within 2 s"):
        asyncio.run(fetch())


def test_models_dribbled_or_flooded_end_with_a_readable_error(fake_server: FakeLLMServer) -> None:
    fake_server.every_request = reply.dribble(interval=0.2)
    provider = provider_for(fake_server)
    with pytest.raises(RequestTimeout):
        run(provider.list_models(), provider)
    fake_server.every_request = reply.flood()
    provider = provider_for(fake_server)
    with pytest.raises(StreamError, match="larger than 16 MiB"):
        run(provider.list_models(), provider)


@pytest.mark.parametrize("hostile", [reply.dribble(interval=0.2), reply.flood()], ids=["dribble", "flood"])
def test_a_hostile_props_probe_counts_as_saying_nothing_and_is_not_asked_again(
        fake_server: FakeLLMServer, hostile: dict[str, Any]) -> None:
    fake_server.route("GET", "/props", lambda request: hostile)
    provider = provider_for(fake_server, timeout=30.0)

    async def twice() -> tuple[ModelCapabilities, ModelCapabilities]:
        return await provider.capabilities(), await provider.capabilities()

    first, second = run(twice(), provider)
    assert first == second == ModelCapabilities()
    assert [request.path for request in fake_server.requests] == ["/props"]


def test_auto_tool_calling_against_a_dribbling_server_fails_the_turn_at_the_deadlines(
        fake_server: FakeLLMServer, tmp_path: Path, clean_env: dict[str, str]) -> None:
    """The whole CLI as in the report (tool_calling auto probes first), which ran past 120 s with llm.timeout 5."""
    fake_server.every_request = reply.dribble(interval=0.5)
    env = clean_env | {"HOME": str(tmp_path), "AUTO_CODER_BASE_URL": fake_server.base_url,
                       "AUTO_CODER_MODEL": "fake-model", "AUTO_CODER_TOOL_CALLING": "auto"}
    (tmp_path / "timeout.yaml").write_text("llm:\n  timeout: 1\n")
    done = subprocess.run(["auto-coder", "--config", "timeout.yaml", "hello"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=100, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stderr
    assert "error: no answer from" in done.stderr and "Traceback" not in done.stderr
    assert [request.path for request in fake_server.requests][:1] == ["/props"]


@pytest.mark.parametrize("hostile", [reply.dribble(interval=0.2), reply.flood()], ids=["dribble", "flood"])
def test_a_hostile_token_endpoint_is_a_readable_connection_failure(
        fake_server: FakeLLMServer, hostile: dict[str, Any]) -> None:
    config = Config()
    config.llm.base_url = fake_server.base_url
    config.llm.timeout = 1.0
    config.auth.token_url = f"{fake_server.url}/token"
    config.auth.client_id, config.auth.client_secret = "client", "secret-for-the-token"
    fake_server.route("POST", "/token", lambda request: hostile)
    refresher = AuthenticationProviderWithClientSideTokenRefresh(config)
    with pytest.raises(ConnectionFailed, match=r"token request: could not reach .*/token: ") as raised:
        refresher.get_bearer_token()
    assert "secret-for-the-token" not in str(raised.value)


def test_a_flood_is_read_no_further_than_the_cap_and_a_compressed_answer_is_refused(
        fake_server: FakeLLMServer) -> None:
    fake_server.every_request = reply.flood()

    async def fetch(url: str) -> httpx.Response:
        async with bounded_client({"timeout": 30.0}) as client:
            return await client.get(url)

    with pytest.raises(ResponseTooLarge, match=f"larger than {BODY_LIMIT // 1024 // 1024} MiB"):
        asyncio.run(fetch(fake_server.url + "/anything"))
    fake_server.every_request = None
    fake_server.route("GET", "/zipped", lambda request: reply.json_body({"a": 1}, headers={"Content-Encoding": "gzip"}))
    with pytest.raises(httpx.DecodingError, match="compressed .gzip. although asked not to"):
        asyncio.run(fetch(fake_server.url + "/zipped"))
    assert fake_server.requests[-1].headers["accept-encoding"] == "identity"
