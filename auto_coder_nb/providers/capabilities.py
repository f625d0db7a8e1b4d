"""What a server says its model can do, asked up front: llama.cpp's `GET /props`, Ollama's `POST /api/show`.

The provider asks once per model and remembers the answer for its own life (a Session's), not the process's:
a server restarted with another model, or another server on the same address, is asked afresh. A server
that answers neither (OpenAI, vLLM...) gives "unknown" (None) for everything, and the configuration decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from ..bounded_http import ResponseTooLarge

PROBE_TIMEOUT = 5.0


@dataclass(frozen=True)
class ModelCapabilities:
    """None: the server did not say. `source` names where the answer came from, for notices."""

    tools: bool | None = None  # native tool calling
    vision: bool | None = None
    source: str = ""


def server_root(base_url: str) -> str:
    """`http://host:11434/v1` -> `http://host:11434`: the native endpoints live beside the OpenAI ones."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/"))


async def probe_capabilities(
    client: httpx.AsyncClient, base_url: str, model: str, *, headers: dict[str, str] | None = None
) -> ModelCapabilities | None:
    """The model's capabilities as the server reports them; ModelCapabilities() when it does not say. Never
    raises: None when the server could not be asked at all (so the caller asks again next time)."""
    root = server_root(base_url)
    try:
        found = await _llama_cpp(client, root, headers) or await _ollama(client, root, model, headers)
    except (httpx.TimeoutException, httpx.DecodingError, ResponseTooLarge):
        return ModelCapabilities()  # it answered, endlessly or too much (see bounded_http): asking again would too
    except (httpx.HTTPError, httpx.InvalidURL):
        return None
    return found or ModelCapabilities()


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
