"""What a server says its model can do, asked up front: llama.cpp's `GET /props`, Ollama's `POST /api/show`.

One probe per base URL + model for the process; a server that answers neither (OpenAI, vLLM...) gives
"unknown" (None) for everything, and the configuration decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ModelCapabilities:
    """None: the server did not say. `source` names where the answer came from, for notices."""

    tools: bool | None = None  # native tool calling
    vision: bool | None = None
    source: str = ""


_known: dict[tuple[str, str], ModelCapabilities] = {}


def server_root(base_url: str) -> str:
    """`http://host:11434/v1` -> `http://host:11434`: the native endpoints live beside the OpenAI ones."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/"))


async def probe_capabilities(
    client: httpx.AsyncClient, base_url: str, model: str, *, headers: dict[str, str] | None = None
) -> ModelCapabilities:
    """The model's capabilities as the server reports them, cached per base URL + model. Never raises: a
    server that cannot be asked gives ModelCapabilities() (and is asked again next time)."""
    key = (base_url.rstrip("/"), model)
    if key in _known:
        return _known[key]
    root = server_root(base_url)
    try:
        found = await _llama_cpp(client, root, headers) or await _ollama(client, root, model, headers)
    except (httpx.HTTPError, httpx.InvalidURL):
        return ModelCapabilities()
    _known[key] = found or ModelCapabilities()
    return _known[key]


async def _llama_cpp(client: httpx.AsyncClient, root: str, headers: dict[str, str] | None) -> ModelCapabilities | None:
    props = await _json(client.get(f"{root}/props", headers=headers, timeout=PROBE_TIMEOUT))
    if not isinstance(props, dict) or not ("modalities" in props or "chat_template_caps" in props):
        return None
    modalities, template = props.get("modalities"), props.get("chat_template_caps")
    vision = modalities.get("vision") if isinstance(modalities, dict) else None
    tools = None
    if isinstance(template, dict) and isinstance(template.get("supports_tools"), bool):
        # The template must both take tool definitions and render tool calls; else the model only talks about them.
        tools = template["supports_tools"] and template.get("supports_tool_calls", True) is not False
    return ModelCapabilities(tools=tools, vision=_bool(vision), source="llama.cpp /props")


async def _ollama(
    client: httpx.AsyncClient, root: str, model: str, headers: dict[str, str] | None
) -> ModelCapabilities | None:
    shown = await _json(client.post(f"{root}/api/show", json={"model": model}, headers=headers,
                                    timeout=PROBE_TIMEOUT))
    capabilities = shown.get("capabilities") if isinstance(shown, dict) else None
    if not isinstance(capabilities, list):
        return None
    return ModelCapabilities(tools="tools" in capabilities, vision="vision" in capabilities, source="Ollama /api/show")


async def _json(request: Any) -> Any:
    response = await request
    if response.status_code != 200:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _bool(value: Any) -> bool | None:
    return value if isinstance(value, bool) else None
