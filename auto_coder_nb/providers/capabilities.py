"""What a server says its model can do, asked up front: llama.cpp's `GET /props`, Ollama's `POST /api/show`.

The context window comes from the same answers (llama.cpp's `n_ctx`, Ollama's `num_ctx` or the loaded model's
`context_length` in `GET /api/ps`), else from the model lists of LM Studio (`GET /api/v0/models/{model}`:
`loaded_context_length`) and of vLLM (`GET {base_url}/models`: `max_model_len`). A value
that cannot be a window (not a number, under MIN_CONTEXT_WINDOW, over MAX_CONTEXT_WINDOW) is ignored; one over
the model's training window is cut down to it.

The provider asks once per model and remembers the answer for its own life (a Session's), not the process's:
a server restarted with another model, or another server on the same address, is asked afresh. A server
that answers neither (OpenAI, vLLM...) gives "unknown" (None) for everything, and the configuration decides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx

from ..bounded_http import ResponseTooLarge

PROBE_TIMEOUT = 5.0
MIN_CONTEXT_WINDOW = 256  # tokens: a server reporting less is not describing a usable window
MAX_CONTEXT_WINDOW = 100_000_000  # as agent.context_window's own limit
_NUM_CTX = re.compile(r"^\s*num_ctx\s+(\d+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class ModelCapabilities:
    """None: the server did not say. `source` names where the answer came from, for notices."""

    tools: bool | None = None  # native tool calling
    vision: bool | None = None
    source: str = ""
    context_window: int | None = None  # tokens the server holds for one request of this model
    context_source: str = ""  # where context_window came from, e.g. "llama.cpp /props n_ctx"


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
    if found is None:  # neither llama.cpp nor Ollama: the model lists of LM Studio and vLLM may give the window
        try:
            window, where = await _lm_studio(client, root, model, headers)
            if window is None:
                window, where = await _model_list(client, base_url, model, headers)
        except (httpx.HTTPError, httpx.InvalidURL):
            window, where = None, ""
        return ModelCapabilities(context_window=window, context_source=where if window else "")
    return found


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
    settings = props.get("default_generation_settings")
    window = plausible_window(settings.get("n_ctx") if isinstance(settings, dict) else None)
    return ModelCapabilities(tools=tools, vision=_bool(vision), source="llama.cpp /props", context_window=window,
                             context_source="llama.cpp /props n_ctx" if window else "")


async def _ollama(
    client: httpx.AsyncClient, root: str, model: str, headers: dict[str, str] | None
) -> ModelCapabilities | None:
    shown = await _json(client.post(f"{root}/api/show", json={"model": model}, headers=headers,
                                    timeout=PROBE_TIMEOUT))
    capabilities = shown.get("capabilities") if isinstance(shown, dict) else None
    if not isinstance(capabilities, list):
        return None
    found = ModelCapabilities(tools="tools" in capabilities, vision="vision" in capabilities, source="Ollama /api/show")
    # The window Ollama runs the model with: num_ctx when the model sets it, else what the loaded model got
    # (OLLAMA_CONTEXT_LENGTH or Ollama's default); never more than the model was trained for.
    info = shown.get("model_info")
    trained = next((value for key, value in info.items() if key.endswith(".context_length")), None) \
        if isinstance(info, dict) else None
    parameters = shown.get("parameters")
    num_ctx = _NUM_CTX.search(parameters) if isinstance(parameters, str) else None
    if num_ctx is not None:
        window = plausible_window(int(num_ctx.group(1)), trained)
        return replace(found, context_window=window, context_source="Ollama /api/show num_ctx" if window else "")
    running = await _json(client.get(f"{root}/api/ps", headers=headers, timeout=PROBE_TIMEOUT))
    loaded = running.get("models") if isinstance(running, dict) else None
    for entry in loaded if isinstance(loaded, list) else ():
        if isinstance(entry, dict) and model in (entry.get("name"), entry.get("model")):
            window = plausible_window(entry.get("context_length"), trained)
            return replace(found, context_window=window, context_source="Ollama /api/ps context_length" if window
                           else "")
    return found


async def _lm_studio(client: httpx.AsyncClient, root: str, model: str,
                     headers: dict[str, str] | None) -> tuple[int | None, str]:
    """LM Studio's own model details: the context the model is loaded with (its maximum is only a bound: LM Studio
    loads models with less unless told otherwise)."""
    details = await _json(client.get(f"{root}/api/v0/models/{quote(model, safe='/')}", headers=headers,
                                     timeout=PROBE_TIMEOUT))
    if not isinstance(details, dict) or details.get("id") != model:
        return None, ""
    loaded = plausible_window(details.get("loaded_context_length"), details.get("max_context_length"))
    return loaded, "LM Studio /api/v0/models loaded_context_length"


async def _model_list(client: httpx.AsyncClient, base_url: str, model: str,
                      headers: dict[str, str] | None) -> tuple[int | None, str]:
    """vLLM lists each model with `max_model_len` (llama.cpp with `meta.n_ctx`, already read from /props)."""
    listed = await _json(client.get(f"{base_url.rstrip('/')}/models", headers=headers, timeout=PROBE_TIMEOUT))
    entries = listed.get("data") if isinstance(listed, dict) else None
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and entry.get("id") == model:
            return plausible_window(entry.get("max_model_len")), "/models max_model_len"
    return None, ""


def plausible_window(value: Any, trained: Any = None) -> int | None:
    """`value` as a context window, or None when it cannot be one (not a whole number, too small, absurdly large);
    cut down to `trained` (the model's training window) when that is known and smaller."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None
    if not MIN_CONTEXT_WINDOW <= value <= MAX_CONTEXT_WINDOW or value != int(value):
        return None
    limit = plausible_window(trained) if trained is not None else None
    return min(int(value), limit) if limit is not None else int(value)


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
