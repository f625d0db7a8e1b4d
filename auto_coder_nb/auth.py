"""Authentication for the HTTP clients, on top of the transport (TLS, proxies: `transport.py`).

`http_client_kwargs(config)` is everything `httpx.Client` / `httpx.AsyncClient` needs to reach the model:

- auth: USE_SSO -> `Authorization: Bearer` from `AuthenticationProvider.generate_auth_token()`;
  SERVER_SIDE_TOKEN_REFRESH -> `Authorization: Basic` from `get_basic_credentials()`; otherwise
  `AuthenticationProviderWithClientSideTokenRefresh` (API key, token command or OAuth token endpoint).
- headers: `llm.auth_headers`, sent as HTTP headers on every request, and `llm.user` in `llm.user_header` (who is
  asking, for the gateway to attribute and limit usage per person).
- verify, proxy, timeout: `transport.transport_kwargs()`.

The TLS and proxy helpers that used to live here (`update_certifi`, `tls_trust`, `proxy_for`,
`tls_failure_message`, ...) are still importable from this module.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import fields
from typing import Any

import httpx

from .authentication_provider import (
    AuthenticationProvider,
    AuthenticationProviderWithClientSideTokenRefresh,
    ProviderHeaderAuth,
    basic_credentials,
    fetched_tokens,
)
from .config import Config, load_config, redact_url
from .errors import ConfigError
from .hub import hub_credentials
from .plugins import instantiate, load_provider_class

# TLS and proxy helpers moved to transport.py; still importable from here.
from .transport import (
    Trust,
    certificate_problem,
    proxy_for,
    tls_failure_message,
    tls_trust,
    transport_kwargs,
    update_certifi,
    user_cache_dir,
)

__all__ = [
    "Trust", "auth_mode", "authentication_provider", "build_auth", "certificate_problem", "get_sso_token",
    "http_client_kwargs", "is_sso_enabled", "proxy_for", "redact_url", "secret_values", "tls_failure_message",
    "tls_trust", "transport_kwargs", "update_certifi", "user_cache_dir",
]

_TRUE = ("1", "true", "yes", "on")

# One provider per distinct configuration, so a cached SSO token outlives a client (a new session,
# /reset) and the user signs in once per process.
_providers: dict[str, Any] = {}


# -- authentication ------------------------------------------------------------------------------


def is_sso_enabled(config: Config | None = None) -> bool:
    """USE_SSO=true (or `auth.use_sso`)."""
    if config is not None:
        return config.auth.use_sso
    return os.environ.get("USE_SSO", "").strip().lower() in _TRUE


def authentication_provider(config: Config) -> Any:
    """The `AuthenticationProvider` for this configuration: `auth.provider` if set, else the shipped one."""
    key = repr((config.auth, config.llm.ca_bundle, config.llm.extra_ca_certs, config.llm.verify, config.llm.proxy))
    if key not in _providers:
        if config.auth.provider:
            cls = load_provider_class(config.auth.provider, config.folders.get("auth.provider"))
            provider = instantiate(cls, config)
        else:
            provider = AuthenticationProvider(config)
        _providers[key] = provider
    return _providers[key]


async def get_sso_token(config: Config | None = None) -> str | None:
    """The SSO bearer token, or None when SSO is off. May run the device sign-in (in a worker thread)."""
    config = config if config is not None else load_config()
    if not is_sso_enabled(config):
        return None
    return await asyncio.to_thread(authentication_provider(config).generate_auth_token)


def secret_values(config: Config) -> list[str]:
    """Every secret this process holds for `config`, for `text.scrub` wherever text leaves the process: the
    configuration's (`Config.secret_values`), the basic credentials made of them, fetched tokens, and the JupyterHub
    tokens the environment holds."""
    basic = basic_credentials(config.auth)
    return [*config.secret_values(), *([basic] if basic else []), *fetched_tokens(), *hub_credentials()]


def auth_mode(config: Config) -> str:
    """What authenticates requests, in words (no secrets), for the doctor and error messages."""
    auth = config.auth
    if auth.use_sso:
        if auth.sso_token:
            return f"SSO bearer token ({config.sources.get('auth.sso_token', 'auth.sso_token')})"
        return "SSO bearer token (device sign-in)" if not auth.provider else f"SSO bearer token ({auth.provider})"
    if auth.server_side_token_refresh:
        return "basic credentials (server-side token refresh)"
    if auth.provider:
        return f"client-side auth {auth.provider}"
    if auth.token_command:
        return "bearer token from auth.token_command"
    if auth.token_url:
        grant = "refresh token" if auth.refresh_token else "client credentials"
        return f"bearer token from auth.token_url ({grant})"
    if config.llm.api_key:
        return f"API key ({config.sources.get('llm.api_key', 'llm.api_key')})"
    if "llm.api_key" in config.unset:
        return f"API key (${{{config.unset['llm.api_key'].variable}}} is not set)"
    return "none (no API key)"


def build_auth(config: Config) -> httpx.Auth:
    """The httpx.Auth for the configured mode (see the module docstring)."""
    if config.auth.use_sso or config.auth.server_side_token_refresh:
        provider = authentication_provider(config)
        method = "generate_auth_token" if config.auth.use_sso else "get_basic_credentials"
        if not callable(getattr(provider, method, None)):
            raise ConfigError(f"auth.provider: {config.auth.provider} has no {method}() method")
        if config.auth.use_sso:
            return ProviderHeaderAuth(provider.generate_auth_token, "Bearer",
                                      "USE_SSO is on but the authentication provider gave no token",
                                      forget=getattr(provider, "forget_token", None))
        return ProviderHeaderAuth(provider.get_basic_credentials, "Basic",
                                  "SERVER_SIDE_TOKEN_REFRESH is on but there are no basic credentials: set "
                                  "auth.client_id and auth.client_secret (or AUTO_CODER_CLIENT_ID and "
                                  "AUTO_CODER_CLIENT_SECRET)")
    if config.auth.provider:
        cls = load_provider_class(config.auth.provider, config.folders.get("auth.provider"))
        if not issubclass(cls, httpx.Auth):
            raise ConfigError(f"auth.provider: {config.auth.provider} is not an httpx.Auth; with USE_SSO and "
                              "SERVER_SIDE_TOKEN_REFRESH off it must be one (client-side token refresh)")
        return instantiate(cls, config)
    return AuthenticationProviderWithClientSideTokenRefresh(config)


# What decides the authentication mode: used by every request.
_MODE_KEYS = ("auth.provider", "auth.use_sso", "auth.server_side_token_refresh", "auth.token_command", "auth.token_url")


def request_keys(config: Config) -> list[str]:
    """The settings a request to the model uses: every llm.* one but the key, and the auth.* ones (and llm.api_key)
    of the authentication mode in effect. One of them with an unset ${VAR} makes the request a configuration error
    (an unset variable in a setting the mode does not use is no error)."""
    auth = config.auth
    if auth.use_sso:
        used = ["auth.sso_token", "auth.device_authorization_url", "auth.client_id", "auth.client_secret", "auth.scope"]
    elif auth.server_side_token_refresh:
        used = ["auth.client_id", "auth.client_secret"]
    elif auth.provider:  # the user's class may read any of them
        used = [f"auth.{f.name}" for f in fields(auth)] + ["llm.api_key"]
    elif auth.token_command:
        used = ["auth.token_lifetime", "auth.token_command_timeout"]
    elif auth.token_url:
        used = ["auth.client_id", "auth.client_secret", "auth.scope", "auth.refresh_token"]
    else:
        used = ["llm.api_key"]
    return [*(f"llm.{f.name}" for f in fields(config.llm) if f.name != "api_key"), *_MODE_KEYS, *used]


def http_client_kwargs(config: Config) -> dict[str, Any]:
    """Keyword arguments for httpx.Client / httpx.AsyncClient: auth, headers, TLS, proxy, timeout. ConfigError if a
    setting the requests use has an unset ${VAR}."""
    config.require(request_keys(config))
    return {
        **transport_kwargs(config, config.llm.base_url),
        "auth": build_auth(config),
        "headers": request_headers(config),
    }


def request_headers(config: Config) -> dict[str, str]:
    """The headers of every request: `llm.auth_headers`, then `llm.user` in `llm.user_header` (replacing a custom
    header of that name, whatever its case, so a locked identity wins). ConfigError when who is asking should be
    sent and llm.user is not set."""
    llm = config.llm
    headers = dict(llm.auth_headers)
    if (llm.user_header or llm.user_field) and not llm.user:
        wanted = "llm.user_header" if llm.user_header else "llm.user_field"
        raise ConfigError(f"{wanted} ({config.sources.get(wanted, 'default')}) sends who is asking, but llm.user is "
                          "not set: set it too (in a JupyterHub site file, user: ${JUPYTERHUB_USER})")
    if llm.user_header and llm.user:
        headers = {name: value for name, value in headers.items() if name.lower() != llm.user_header.lower()}
        headers[llm.user_header] = llm.user
    return headers
