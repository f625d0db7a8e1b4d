"""What a model can do, from servers that say so up front: llama.cpp's `GET /props` and Ollama's
`POST /api/show`. Other servers say nothing (every field None) and the request itself has to tell.

One probe per base URL + model per process: the answer does not change while the server runs the model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

PROBE_TIMEOUT = 5.0  # seconds; a server that does not answer quickly says nothing


@dataclass(frozen=True)
class ModelCapabilities:
    """None means the server did not say. `source` names where the answer came from, for notices."""

    tools: bool | None = None  # native tool calling
    vision: bool | None = None  # image input
    source: str = ""


_known: dict[tuple[str, str], ModelCapabilities] = {}


async def probe_capabilities(
    client: httpx.AsyncClient, base_url: str, model: str, *, headers: dict[str, str] | None = None
) -> ModelCapabilities:
    """The capabilities of `model` at `base_url` (the OpenAI-style URL, usually ending in /v1), asked once.
    Never raises: an unreachable or silent server gives `ModelCapabilities()`."""
    key = (base_url.rstrip("/"), model)
    if key not in _known:
        root = server_root(base_url)
        found = await _llama_cpp(client, root, model, headers) or await _ollama(client, root, model, headers)
        _known[key] = found or ModelCapabilities()
    return _known[key]


def server_root(base_url: str) -> str:
    """The server's own address: the base URL without its OpenAI-style /v1 suffix."""
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


async def _get_json(client: httpx.AsyncClient, method: str, url: str, headers: dict[str, str] | None,
                    **kwargs: Any) -> Any:
    try:
        response = await asyncio.wait_for(client.request(method, url, headers=headers, **kwargs), PROBE_TIMEOUT)
        return response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, asyncio.TimeoutError, ValueError):
        return None


async def _llama_cpp(client: httpx.AsyncClient, root: str, model: str,
                     headers: dict[str, str] | None) -> ModelCapabilities | None:
    # `model` matters only to llama-server's router mode (several models); a single-model server ignores it.
    props = await _get_json(client, "GET", f"{root}/props", headers, params={"model": model})
    if not isinstance(props, dict) or not isinstance(props.get("chat_template_caps"), dict):
        return None
    caps = props["chat_template_caps"]
    # The template must both take tool definitions and render tool calls; else the model only talks about them.
    tools = bool(caps.get("supports_tools")) and bool(caps.get("supports_tool_calls", True))
    modalities = props.get("modalities")
    vision = modalities.get("vision") if isinstance(modalities, dict) else None
    return ModelCapabilities(tools, vision if isinstance(vision, bool) else None, "llama.cpp /props")


async def _ollama(client: httpx.AsyncClient, root: str, model: str,
                  headers: dict[str, str] | None) -> ModelCapabilities | None:
    shown = await _get_json(client, "POST", f"{root}/api/show", headers, json={"model": model})
    if not isinstance(shown, dict) or not isinstance(shown.get("capabilities"), list):
        return None  # not Ollama, or one too old to list capabilities
    capabilities = shown["capabilities"]
    return ModelCapabilities("tools" in capabilities, "vision" in capabilities, "Ollama /api/show")
