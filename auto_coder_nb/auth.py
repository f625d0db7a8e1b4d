"""Authentication, TLS and proxy settings for the HTTP client. (Placeholder: API key only.)"""

from __future__ import annotations

from typing import Any

import httpx

from .config import Config


def http_client_kwargs(config: Config) -> dict[str, Any]:
    """Keyword arguments for httpx.Client / httpx.AsyncClient: auth, headers, TLS, proxy, timeout."""
    headers = dict(config.llm.auth_headers)
    if config.llm.api_key:
        headers["Authorization"] = f"Bearer {config.llm.api_key}"
    return {"headers": headers, "timeout": httpx.Timeout(config.llm.timeout, connect=10.0)}
