"""Authentication modes against the real test server: API key, SSO (SSO_TOKEN and the OAuth device
flow), basic credentials, client-side token refresh (client credentials, refresh token, token command),
custom headers, user providers, and secrets kept out of every output."""

from __future__ import annotations

import asyncio
import base64
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auto_coder_nb import auth, authentication_provider, trust
from auto_coder_nb.authentication_provider import (
    AuthenticationProvider,
    AuthenticationProviderWithClientSideTokenRefresh,
    DeviceCode,
)
from auto_coder_nb.config import Config, load_config
from auto_coder_nb.errors import AuthenticationFailed, ConfigError, ConnectionFailed
from auto_coder_nb.providers.base import Completion
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.testing.server import FakeLLMServer, RecordedRequest, Spec, reply

CLIENT_SECRET = "csecret-Zq81xLw"
TOKEN_PATH = "/oauth/token"
DEVICE_PATH = "/oauth/device"
CHAT_BODY = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA settings of the machine: these tests talk straight to 127.0.0.1 with certifi."""
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                 "USE_SSO", "SSO_TOKEN", "SERVER_SIDE_TOKEN_REFRESH"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def make_config(tmp_path: Path, flags: dict[str, Any] | None = None, env: dict[str, str] | None = None,
                yaml_text: str | None = None) -> Config:
    if yaml_text is not None:  # a project file its user trusts (recorded as --trust-project would)
        path = tmp_path / ".auto-coder.yaml"
        path.write_text(yaml_text, encoding="utf-8")
        trust.record(path, trust.digest(path.read_bytes()), trust.store_path({}, tmp_path / "home"))
    return load_config(flags, env=env or {}, cwd=tmp_path, home=tmp_path / "home")


class FakeClock:
    """The tokens' clock, moved by the test instead of waited for."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenEndpoint:
    """An OAuth token endpoint on the test server. Issues tok-1, tok-2, ... and (with `server_follows`)
    makes the model endpoints accept only the newest token, as a gateway would."""

    def __init__(self, server: FakeLLMServer, *, expires_in: float = 3600, refresh_tokens: bool = False,
                 server_follows: bool = True) -> None:
        self.server = server
        self.expires_in = expires_in
        self.refresh_tokens = refresh_tokens
        self.server_follows = server_follows
        self.issued: list[str] = []
        self.forms: list[dict[str, str]] = []
        self.scripted: list[Spec] = []
        server.route("POST", TOKEN_PATH, self._handle)

    @property
    def url(self) -> str:
        return self.server.url + TOKEN_PATH

    def _handle(self, request: RecordedRequest) -> Spec:
        self.forms.append(request.form)
        if self.scripted:
            return self.scripted.pop(0)
        token = f"tok-{len(self.issued) + 1}"
        self.issued.append(token)
        if self.server_follows:
            self.server.require_authorization(f"Bearer {token}")
        body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in}
        if self.refresh_tokens:
            body["refresh_token"] = f"rt-{len(self.issued)}"
        return reply.json_body(body)


class Client:
    """One httpx client built from `http_client_kwargs`, sync or async, driven from the test thread."""

    def __init__(self, config: Config, kind: str, auth_override: httpx.Auth | None = None) -> None:
        kwargs = auth.http_client_kwargs(config)
        if auth_override is not None:
            kwargs["auth"] = auth_override
        self.kind = kind
        if kind == "sync":
            self.sync = httpx.Client(**kwargs)
        else:
            self.loop = asyncio.new_event_loop()
            self.asynchronous = httpx.AsyncClient(**kwargs)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self.kind == "sync":
            return self.sync.request(method, url, **kwargs)
        return self.loop.run_until_complete(self.asynchronous.request(method, url, **kwargs))

    def close(self) -> None:
        if self.kind == "sync":
            self.sync.close()
        else:
            self.loop.run_until_complete(self.asynchronous.aclose())
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.close()


def client_for(clients: list[Client], config: Config, kind: str, **kwargs: Any) -> Client:
    client = Client(config, kind, **kwargs)
    clients.append(client)
    return client


def model_requests(server: FakeLLMServer) -> list[RecordedRequest]:
    return [r for r in server.requests if r.path.startswith("/v1/")]


# -- API key and no key ----------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["flag", "AUTO_CODER_API_KEY", "file", "OPENAI_API_KEY"])
def test_api_key_from_each_source_is_sent_as_bearer(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                    clients: list[Client], source: str) -> None:
    key = f"sk-from-{source.lower()}-1234"
    fake_server.require_authorization(f"Bearer {key}")
    flags: dict[str, Any] = {"llm.base_url": fake_server.base_url}
    env: dict[str, str] = {}
    yaml_text = None
    if source == "flag":
        flags["llm.api_key"] = key
    elif source == "file":
        yaml_text = f"llm:\n  api_key: {key}\n"
    else:
        env[source] = key
    config = make_config(tmp_path, flags, env, yaml_text)
    response = client_for(clients, config, kind).request("GET", fake_server.base_url + "/models")
    assert response.status_code == 200
    assert fake_server.requests[-1].headers["authorization"] == f"Bearer {key}"


def test_no_key_sends_no_authorization(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                       clients: list[Client]) -> None:
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url})
    response = client_for(clients, config, kind).request("GET", fake_server.base_url + "/models")
    assert response.status_code == 200
    assert "authorization" not in fake_server.requests[-1].headers
    assert auth.auth_mode(config) == "none (no API key)"


# -- SSO and basic credentials ----------------------------------------------------------------------


def test_sso_token_from_environment_is_sent_as_bearer(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                      clients: list[Client]) -> None:
    fake_server.require_authorization("Bearer sso-token-7781")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "llm.api_key": "sk-ignored-under-sso"},
                         {"USE_SSO": "true", "SSO_TOKEN": "sso-token-7781"})
    assert auth.is_sso_enabled(config)
    response = client_for(clients, config, kind).request("POST", fake_server.base_url + "/chat/completions",
                                                         json=CHAT_BODY)
    assert response.status_code == 200
    assert fake_server.requests[-1].headers["authorization"] == "Bearer sso-token-7781"


def test_get_sso_token_and_is_sso_enabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    off = make_config(tmp_path)
    assert asyncio.run(auth.get_sso_token(off)) is None
    on = make_config(tmp_path, env={"USE_SSO": "yes", "SSO_TOKEN": "sso-abc-123"})
    assert asyncio.run(auth.get_sso_token(on)) == "sso-abc-123"
    assert not auth.is_sso_enabled()
    monkeypatch.setenv("USE_SSO", "true")
    assert auth.is_sso_enabled()


def test_sso_without_token_or_device_settings_says_what_to_set(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url}, {"USE_SSO": "true"})
    # A missing setting is a configuration error (exit code 2), not a refusal by a server.
    with httpx.Client(**auth.http_client_kwargs(config)) as client, pytest.raises(ConfigError) as raised:
        client.get(fake_server.base_url + "/models")
    assert "SSO_TOKEN" in str(raised.value) and "auth.device_authorization_url" in str(raised.value)
    assert fake_server.requests == []


def test_server_side_refresh_sends_basic_credentials(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                     clients: list[Client]) -> None:
    expected = base64.b64encode(f"corp-client:{CLIENT_SECRET}".encode()).decode()
    fake_server.require_authorization(f"Basic {expected}")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url}, {
        "SERVER_SIDE_TOKEN_REFRESH": "true", "AUTO_CODER_CLIENT_ID": "corp-client",
        "AUTO_CODER_CLIENT_SECRET": CLIENT_SECRET})
    assert AuthenticationProvider(config).get_basic_credentials() == expected
    response = client_for(clients, config, kind).request("GET", fake_server.base_url + "/models")
    assert response.status_code == 200
    assert fake_server.requests[-1].headers["authorization"] == f"Basic {expected}"


def test_server_side_refresh_without_credentials_is_a_readable_error(tmp_path: Path,
                                                                     fake_server: FakeLLMServer) -> None:
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url}, {"SERVER_SIDE_TOKEN_REFRESH": "1"})
    with httpx.Client(**auth.http_client_kwargs(config)) as client, pytest.raises(ConfigError) as raised:
        client.get(fake_server.base_url + "/models")
    assert "AUTO_CODER_CLIENT_SECRET" in str(raised.value)


# -- the OAuth 2.0 device flow ----------------------------------------------------------------------


class DeviceEndpoints:
    """Device authorization (RFC 8628) on the test server; the token endpoint answers from `polls`."""

    def __init__(self, server: FakeLLMServer, polls: list[Spec], *, interval: float = 2) -> None:
        self.server = server
        self.polls = polls
        self.interval = interval
        self.device_forms: list[dict[str, str]] = []
        self.token_forms: list[dict[str, str]] = []
        server.route("POST", DEVICE_PATH, self._device)
        server.route("POST", TOKEN_PATH, self._token)

    def yaml(self, scope: str = "openid offline_access") -> str:
        return (f"auth:\n  device_authorization_url: {self.server.url}{DEVICE_PATH}\n"
                f"  token_url: {self.server.url}{TOKEN_PATH}\n  client_id: corp-cli\n  scope: {scope}\n")

    def _device(self, request: RecordedRequest) -> Spec:
        self.device_forms.append(request.form)
        return reply.json_body({"device_code": "dev-code-secret", "user_code": "WDJB-MJHT",
                                "verification_uri": f"{self.server.url}/activate",
                                "verification_uri_complete": f"{self.server.url}/activate?user_code=WDJB-MJHT",
                                "expires_in": 300, "interval": self.interval})

    def _token(self, request: RecordedRequest) -> Spec:
        self.token_forms.append(request.form)
        return self.polls.pop(0)


def oauth_error(code: str) -> Spec:
    return reply.error(400, body={"error": code})


def token_body(token: str, *, expires_in: int = 600, refresh_token: str | None = None) -> Spec:
    body: dict[str, Any] = {"access_token": token, "token_type": "Bearer", "expires_in": expires_in}
    if refresh_token:
        body["refresh_token"] = refresh_token
    return reply.json_body(body)


def test_device_flow_polls_with_the_servers_interval_and_caches_the_token(tmp_path: Path,
                                                                          fake_server: FakeLLMServer) -> None:
    endpoints = DeviceEndpoints(fake_server, [
        oauth_error("authorization_pending"), oauth_error("slow_down"), oauth_error("authorization_pending"),
        token_body("sso-device-token-1", expires_in=600, refresh_token="sso-refresh-1"),
        token_body("sso-device-token-2", expires_in=600),
    ])
    config = make_config(tmp_path, env={"USE_SSO": "true"}, yaml_text=endpoints.yaml())
    shown: list[DeviceCode] = []
    sleeps: list[float] = []
    clock = FakeClock()
    provider = AuthenticationProvider(config, show_device_code=shown.append, clock=clock, sleep=sleeps.append)

    assert provider.generate_auth_token() == "sso-device-token-1"
    assert [code.user_code for code in shown] == ["WDJB-MJHT"]
    assert shown[0].verification_uri == f"{fake_server.url}/activate"
    assert "WDJB-MJHT" in shown[0].message() and "/activate" in shown[0].message()
    assert sleeps == [2, 2, 7, 7]  # the server's interval, plus 5 s after slow_down
    assert endpoints.device_forms == [{"client_id": "corp-cli", "scope": "openid offline_access"}]
    assert [form["grant_type"] for form in endpoints.token_forms] == [
        "urn:ietf:params:oauth:grant-type:device_code"] * 4
    assert {form["device_code"] for form in endpoints.token_forms} == {"dev-code-secret"}

    clock.now += 500  # still fresh: no request at all
    assert provider.generate_auth_token() == "sso-device-token-1"
    assert len(endpoints.token_forms) == 4

    clock.now += 50  # within a minute of expiry: renewed with the refresh token, no new sign-in
    assert provider.generate_auth_token() == "sso-device-token-2"
    assert endpoints.token_forms[-1]["grant_type"] == "refresh_token"
    assert endpoints.token_forms[-1]["refresh_token"] == "sso-refresh-1"
    assert len(shown) == 1 and len(endpoints.device_forms) == 1


@pytest.mark.parametrize(("error", "says"), [("access_denied", "denied"), ("expired_token", "expired")])
def test_device_flow_denied_or_expired_is_a_readable_error(tmp_path: Path, fake_server: FakeLLMServer,
                                                           error: str, says: str) -> None:
    endpoints = DeviceEndpoints(fake_server, [oauth_error("authorization_pending"), oauth_error(error)])
    config = make_config(tmp_path, env={"USE_SSO": "true"}, yaml_text=endpoints.yaml())
    sleeps: list[float] = []
    provider = AuthenticationProvider(config, show_device_code=lambda code: None, sleep=sleeps.append)
    with pytest.raises(AuthenticationFailed) as raised:
        provider.generate_auth_token()
    assert says in str(raised.value)
    assert "dev-code-secret" not in str(raised.value)
    assert len(sleeps) == 2


def test_a_face_can_show_the_device_code_its_own_way(tmp_path: Path, fake_server: FakeLLMServer,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    endpoints = DeviceEndpoints(fake_server, [token_body("sso-device-token-face")], interval=0.01)
    shown: list[str] = []
    monkeypatch.setattr(authentication_provider, "device_code_display", lambda code: shown.append(code.user_code))
    config = make_config(tmp_path, env={"USE_SSO": "true"}, yaml_text=endpoints.yaml())
    assert asyncio.run(auth.get_sso_token(config)) == "sso-device-token-face"
    assert shown == ["WDJB-MJHT"]


def test_device_flow_through_the_client_shows_the_code_on_stderr(tmp_path: Path, fake_server: FakeLLMServer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    endpoints = DeviceEndpoints(fake_server, [oauth_error("authorization_pending"),
                                              token_body("sso-device-token-e2e")], interval=0.01)
    fake_server.require_authorization("Bearer sso-device-token-e2e")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url}, {"USE_SSO": "true"},
                         yaml_text=endpoints.yaml())

    async def two_requests() -> list[int]:
        async with httpx.AsyncClient(**auth.http_client_kwargs(config)) as client:
            first = await client.get(fake_server.base_url + "/models")
            second = await client.get(fake_server.base_url + "/models")
        return [first.status_code, second.status_code]

    assert asyncio.run(two_requests()) == [200, 200]
    assert len(endpoints.device_forms) == 1  # signed in once, the token was cached
    err = capsys.readouterr().err
    assert "WDJB-MJHT" in err and f"{fake_server.url}/activate" in err
    assert "sso-device-token-e2e" not in err and "dev-code-secret" not in err


def test_sso_token_rejected_early_is_renewed_and_the_request_retried(tmp_path: Path,
                                                                     fake_server: FakeLLMServer) -> None:
    endpoints = DeviceEndpoints(fake_server, [token_body("sso-device-token-1", refresh_token="sso-refresh-1"),
                                              token_body("sso-device-token-2")], interval=0.01)
    fake_server.require_authorization("Bearer sso-device-token-1")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url}, {"USE_SSO": "true"},
                         yaml_text=endpoints.yaml())
    with httpx.Client(**auth.http_client_kwargs(config)) as client:
        assert client.get(fake_server.base_url + "/models").status_code == 200
        fake_server.require_authorization("Bearer sso-device-token-2")  # the identity provider revoked token 1
        assert client.get(fake_server.base_url + "/models").status_code == 200
    assert [r.headers["authorization"] for r in model_requests(fake_server)] == [
        "Bearer sso-device-token-1", "Bearer sso-device-token-1", "Bearer sso-device-token-2"]
    assert endpoints.token_forms[-1]["grant_type"] == "refresh_token"
    assert len(endpoints.device_forms) == 1  # renewed without a second sign-in


def test_a_rejected_static_sso_token_is_not_retried(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization("Bearer something-else")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url},
                         {"USE_SSO": "true", "SSO_TOKEN": "sso-static-1"})
    with httpx.Client(**auth.http_client_kwargs(config)) as client:
        assert client.get(fake_server.base_url + "/models").status_code == 401
    assert len(fake_server.requests) == 1


# -- client-side token refresh ----------------------------------------------------------------------


def token_config(tmp_path: Path, server: FakeLLMServer, endpoint: TokenEndpoint, **extra: str) -> Config:
    flags: dict[str, Any] = {"llm.base_url": server.base_url, "auth.token_url": endpoint.url,
                             "auth.client_id": "corp-client", "auth.client_secret": CLIENT_SECRET,
                             "auth.scope": "llm.read"}
    flags.update({f"auth.{key}": value for key, value in extra.items()})
    return make_config(tmp_path, flags)


def test_client_credentials_token_is_fetched_once_and_reused(tmp_path: Path, fake_server: FakeLLMServer,
                                                             kind: str, clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server)
    config = token_config(tmp_path, fake_server, endpoint)
    config.llm.auth_headers = {"X-Gateway": "gateway-only"}
    client = client_for(clients, config, kind)
    for _ in range(3):
        assert client.request("GET", fake_server.base_url + "/models").status_code == 200
    assert endpoint.forms == [{"grant_type": "client_credentials", "client_id": "corp-client",
                               "client_secret": CLIENT_SECRET, "scope": "llm.read"}]
    assert [r.headers["authorization"] for r in model_requests(fake_server)] == ["Bearer tok-1"] * 3
    assert [r.headers.get("x-gateway") for r in fake_server.requests] == [None] + ["gateway-only"] * 3


def test_token_is_renewed_shortly_before_it_expires(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                    clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server, expires_in=600)
    clock = FakeClock()
    refresher = AuthenticationProviderWithClientSideTokenRefresh(
        token_config(tmp_path, fake_server, endpoint), clock=clock)
    client = client_for(clients, refresher.config, kind, auth_override=refresher)
    url = fake_server.base_url + "/models"
    assert client.request("GET", url).status_code == 200
    clock.now += 539  # 61 s left: still used
    assert client.request("GET", url).status_code == 200
    clock.now += 2  # 59 s left: renewed before the request, which therefore never sees a 401
    assert client.request("GET", url).status_code == 200
    seen = [(r.path, r.headers.get("authorization")) for r in fake_server.requests]
    assert seen == [(TOKEN_PATH, None), ("/v1/models", "Bearer tok-1"), ("/v1/models", "Bearer tok-1"),
                    (TOKEN_PATH, None), ("/v1/models", "Bearer tok-2")]


def test_a_401_renews_the_token_once_and_retries_the_request_once(tmp_path: Path, fake_server: FakeLLMServer,
                                                                  kind: str, clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server)
    client = client_for(clients, token_config(tmp_path, fake_server, endpoint), kind)
    assert client.request("GET", fake_server.base_url + "/models").status_code == 200
    fake_server.require_authorization("Bearer revoked")  # the gateway revokes tok-1 before its expiry
    fake_server.enqueue(reply.text("after refresh"))
    response = client.request("POST", fake_server.base_url + "/chat/completions", json=CHAT_BODY)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "after refresh"
    chats = fake_server.chat_requests
    assert [r.headers["authorization"] for r in chats] == ["Bearer tok-1", "Bearer tok-2"]
    assert chats[0].json == chats[1].json == CHAT_BODY  # the retry carries the same body
    assert len(endpoint.forms) == 2


def test_a_second_401_is_returned_without_looping(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                  clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server, server_follows=False)
    fake_server.require_authorization("Bearer never-issued")
    client = client_for(clients, token_config(tmp_path, fake_server, endpoint), kind)
    response = client.request("GET", fake_server.base_url + "/models")
    assert response.status_code == 401
    assert [r.path for r in fake_server.requests] == [TOKEN_PATH, "/v1/models", TOKEN_PATH, "/v1/models"]


def test_refresh_token_grant_is_used_and_rotated(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                 clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server, expires_in=600, refresh_tokens=True)
    clock = FakeClock()
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_url": endpoint.url,
                                    "auth.client_id": "corp-client", "auth.refresh_token": "rt-initial"})
    refresher = AuthenticationProviderWithClientSideTokenRefresh(config, clock=clock)
    client = client_for(clients, config, kind, auth_override=refresher)
    assert client.request("GET", fake_server.base_url + "/models").status_code == 200
    clock.now += 600
    assert client.request("GET", fake_server.base_url + "/models").status_code == 200
    assert [(f["grant_type"], f["refresh_token"]) for f in endpoint.forms] == [
        ("refresh_token", "rt-initial"), ("refresh_token", "rt-1")]
    assert auth.auth_mode(config) == "bearer token from auth.token_url (refresh token)"


def test_rejected_refresh_token_falls_back_to_client_credentials(tmp_path: Path, fake_server: FakeLLMServer,
                                                                 clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server)
    endpoint.scripted.append(reply.error(400, body={"error": "invalid_grant"}))
    config = token_config(tmp_path, fake_server, endpoint, refresh_token="rt-expired")
    assert client_for(clients, config, "sync").request("GET", fake_server.base_url + "/models").status_code == 200
    assert [f["grant_type"] for f in endpoint.forms] == ["refresh_token", "client_credentials"]


def test_token_endpoint_refusal_is_readable_and_hides_the_secret(tmp_path: Path, fake_server: FakeLLMServer,
                                                                 kind: str, clients: list[Client]) -> None:
    endpoint = TokenEndpoint(fake_server)
    endpoint.scripted.append(reply.error(401, body={"error": "invalid_client",
                                                    "error_description": f"bad secret {CLIENT_SECRET}"}))
    client = client_for(clients, token_config(tmp_path, fake_server, endpoint), kind)
    with pytest.raises(AuthenticationFailed) as raised:
        client.request("GET", fake_server.base_url + "/models")
    message = str(raised.value)
    assert "HTTP 401" in message and "invalid_client" in message and TOKEN_PATH in message
    assert CLIENT_SECRET not in message
    assert model_requests(fake_server) == []


def test_unreachable_token_endpoint_is_named_in_the_error(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    with FakeLLMServer() as stopped:
        token_url = stopped.url + TOKEN_PATH
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_url": token_url,
                                    "auth.client_id": "corp-client", "auth.client_secret": CLIENT_SECRET})
    with httpx.Client(**auth.http_client_kwargs(config)) as client, pytest.raises(ConnectionFailed) as raised:
        client.get(fake_server.base_url + "/models")
    assert str(raised.value).startswith(f"token request: could not reach {token_url}: ")
    assert fake_server.requests == []


def test_get_bearer_token_outside_a_request(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    endpoint = TokenEndpoint(fake_server)
    refresher = AuthenticationProviderWithClientSideTokenRefresh(token_config(tmp_path, fake_server, endpoint))
    assert refresher.get_bearer_token() == "tok-1"
    assert refresher.get_bearer_token() == "tok-1"
    assert len(endpoint.forms) == 1


def token_command(tmp_path: Path, output: str, *, exit_code: int = 0, stderr: str = "") -> str:
    """A command that counts its runs in a file and prints `output` (as corporate token CLIs do)."""
    script = tmp_path / "print_token.py"
    script.write_text(
        "import pathlib, sys\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "count = len(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text('x' * (count + 1))\n"
        f"sys.stderr.write({stderr!r})\n"
        f"print({output!r}.replace('N', str(count + 1)))\n"
        f"sys.exit({exit_code})\n", encoding="utf-8")
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(script))}"


def test_token_command_runs_again_after_its_lifetime(tmp_path: Path, fake_server: FakeLLMServer, kind: str,
                                                     clients: list[Client]) -> None:
    fake_server.require_authorization("Bearer cmd-token-1")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_lifetime": 300,
                                    "auth.token_command": token_command(tmp_path, "cmd-token-N")})
    clock = FakeClock()
    client = client_for(clients, config, kind,
                        auth_override=AuthenticationProviderWithClientSideTokenRefresh(config, clock=clock))
    url = fake_server.base_url + "/models"
    assert client.request("GET", url).status_code == 200
    assert client.request("GET", url).status_code == 200
    fake_server.require_authorization("Bearer cmd-token-2")
    clock.now += 300
    assert client.request("GET", url).status_code == 200
    assert [r.headers["authorization"] for r in model_requests(fake_server)] == [
        "Bearer cmd-token-1", "Bearer cmd-token-1", "Bearer cmd-token-2"]
    assert (tmp_path / "runs").read_text() == "xx"


def test_token_command_json_output(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    fake_server.require_authorization("Bearer json-token-1")
    command = token_command(tmp_path, json.dumps({"accessToken": "json-token-N", "expires_in": 900}))
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_command": command})
    with httpx.Client(**auth.http_client_kwargs(config)) as client:
        assert client.get(fake_server.base_url + "/models").status_code == 200
    assert auth.auth_mode(config) == "bearer token from auth.token_command"


def test_failing_token_command_is_a_readable_error_without_secrets(tmp_path: Path,
                                                                   fake_server: FakeLLMServer) -> None:
    command = token_command(tmp_path, "leaked-token-999", exit_code=3, stderr="login required: session expired")
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_command": command})
    with httpx.Client(**auth.http_client_kwargs(config)) as client, pytest.raises(AuthenticationFailed) as raised:
        client.get(fake_server.base_url + "/models")
    assert "exited with status 3" in str(raised.value) and "login required" in str(raised.value)
    assert "leaked-token-999" not in str(raised.value)
    assert fake_server.requests == []


@pytest.mark.timeout(60)
def test_streamed_answers_are_not_buffered_by_the_auth_flow(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    """The first chunk arrives while the server still holds the rest back; a flow that read the
    response body would wait for the whole answer (and this test would time out)."""
    endpoint = TokenEndpoint(fake_server)
    fake_server.enqueue(reply.text("aaaabbbbcccc", chunks=3, wait_for="rest", wait_after=2))
    config = token_config(tmp_path, fake_server, endpoint)
    provider = OpenAICompatibleProvider(config)
    seen_before_release: list[str] = []

    async def stream() -> Completion:
        completion = Completion()
        async for event in provider.chat([{"role": "user", "content": "hi"}]):
            if isinstance(event, Completion):
                completion = event
            elif not seen_before_release:
                seen_before_release.append(event.text)
                fake_server.release("rest")
        await provider.aclose()
        return completion

    assert asyncio.run(stream()).content == "aaaabbbbcccc"
    assert seen_before_release == ["aaaa"]
    assert fake_server.chat_requests[0].headers["authorization"] == "Bearer tok-1"


# -- custom headers, correlation id, user providers --------------------------------------------------


def test_custom_headers_and_correlation_id_reach_the_server_as_headers(tmp_path: Path,
                                                                       fake_server: FakeLLMServer) -> None:
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "llm.model": "fake-model"},
                         {"GATEWAY_KEY": "gw-key-5521"},
                         "llm:\n  auth_headers:\n    Ocp-Apim-Subscription-Key: ${GATEWAY_KEY}\n"
                         "    X-API-Version: '2024-01'\n")
    provider = OpenAICompatibleProvider(config)

    async def chat() -> None:
        async for _ in provider.chat([{"role": "user", "content": "hi"}], headers={"x-correlation-id": "corr-42"}):
            pass
        await provider.aclose()

    asyncio.run(chat())
    request = fake_server.chat_requests[-1]
    assert request.headers["ocp-apim-subscription-key"] == "gw-key-5521"
    assert request.headers["x-api-version"] == "2024-01"
    assert request.headers["x-correlation-id"] == "corr-42"
    assert "gw-key-5521" not in request.body.decode() and "X-API-Version" not in request.body.decode()


def test_user_provider_classes_plug_in_from_config(tmp_path: Path, fake_server: FakeLLMServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "corp_auth.py").write_text(
        "import httpx\n"
        "class CorpProvider:\n"
        "    def __init__(self, config):\n"
        "        self.model = config.llm.model\n"
        "    def generate_auth_token(self):\n"
        "        return 'corp-sso-' + self.model\n"
        "    def get_basic_credentials(self):\n"
        "        raise RuntimeError('vault unreachable')\n"
        "class CorpAuth(httpx.Auth):\n"
        "    def auth_flow(self, request):\n"
        "        request.headers['Authorization'] = 'Bearer corp-client-side'\n"
        "        yield request\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    flags = {"llm.base_url": fake_server.base_url, "llm.model": "m1"}

    sso = make_config(tmp_path, {**flags, "auth.provider": "corp_auth:CorpProvider"}, {"USE_SSO": "true"})
    with httpx.Client(**auth.http_client_kwargs(sso)) as client:
        client.get(fake_server.base_url + "/models")
    client_side = make_config(tmp_path, {**flags, "auth.provider": "corp_auth:CorpAuth"})
    with httpx.Client(**auth.http_client_kwargs(client_side)) as client:
        client.get(fake_server.base_url + "/models")
    assert [r.headers["authorization"] for r in fake_server.requests] == ["Bearer corp-sso-m1",
                                                                         "Bearer corp-client-side"]

    basic = make_config(tmp_path, {**flags, "auth.provider": "corp_auth:CorpProvider"},
                        {"SERVER_SIDE_TOKEN_REFRESH": "true"})
    with httpx.Client(**auth.http_client_kwargs(basic)) as client, pytest.raises(AuthenticationFailed) as raised:
        client.get(fake_server.base_url + "/models")
    assert str(raised.value) == "the authentication provider failed: RuntimeError: vault unreachable"

    wrong = make_config(tmp_path, {**flags, "auth.provider": "corp_auth:CorpProvider"})
    with pytest.raises(ConfigError, match="is not an httpx.Auth"):
        auth.http_client_kwargs(wrong)
    with pytest.raises(ConfigError, match="has no generate_auth_token"):
        auth.http_client_kwargs(make_config(tmp_path, {**flags, "auth.provider": "corp_auth:CorpAuth"},
                                            {"USE_SSO": "true"}))
    with pytest.raises(ConfigError, match="cannot import"):
        auth.http_client_kwargs(make_config(tmp_path, {**flags, "auth.provider": "no_such_module:X"}))


# -- secrets ---------------------------------------------------------------------------------------


def test_secrets_never_appear_in_output_errors_or_show_config(tmp_path: Path, fake_server: FakeLLMServer,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    secrets = {"sk-apikey-31337", CLIENT_SECRET, "rt-refresh-4242", "sso-token-9090", "gw-header-7070"}
    endpoint = TokenEndpoint(fake_server)
    said = f"{CLIENT_SECRET} rt-refresh-4242"
    refusal = reply.error(401, body={"error": "invalid_client", "error_description": said})
    endpoint.scripted += [refusal, refusal]  # the refresh token, then client credentials
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_url": endpoint.url,
                                    "auth.client_id": "corp-client", "auth.refresh_token": "rt-refresh-4242"},
                         {"AUTO_CODER_API_KEY": "sk-apikey-31337", "AUTO_CODER_CLIENT_SECRET": CLIENT_SECRET,
                          "SSO_TOKEN": "sso-token-9090"},
                         "llm:\n  auth_headers:\n    X-Gateway: gw-header-7070\n")
    printed = [config.show(), auth.auth_mode(config)]
    with httpx.Client(**auth.http_client_kwargs(config)) as client, pytest.raises(AuthenticationFailed) as raised:
        client.get(fake_server.base_url + "/models")
    printed += [str(raised.value), repr(raised.value)]
    captured = capsys.readouterr()
    everything = "\n".join([*printed, captured.out, captured.err])
    assert "invalid_client" in everything and "auth.client_secret = '<hidden>'" in everything
    for secret in secrets:
        assert secret not in everything


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie waiting for a parent that is not us counts as ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_until(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.timeout(60)
def test_a_token_command_past_its_timeout_is_killed_with_its_children(tmp_path: Path,
                                                                      fake_server: FakeLLMServer) -> None:
    pid_file = tmp_path / "child.pid"
    command = f"sleep 300 & echo $! > {shlex.quote(str(pid_file))}; echo partial-secret-42; sleep 300"
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_command": command,
                                    "auth.token_command_timeout": 1})
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as raised:
        AuthenticationProviderWithClientSideTokenRefresh(config).get_bearer_token()
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert "did not finish in 1 s (auth.token_command_timeout)" in message and "partial-secret-42" not in message
    assert wait_until(lambda: gone(int(pid_file.read_text())), 10), "the background child outlived the timeout"
    assert fake_server.requests == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("printer", ["yes secret-line-7 | head -c 3000000; sleep 300",
                                     "head -c 70000 /dev/zero | tr '\\0' x; sleep 300"])
def test_a_token_command_printing_too_much_is_stopped_without_echo(tmp_path: Path, fake_server: FakeLLMServer,
                                                                   printer: str) -> None:
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_command": printer})
    started = time.monotonic()
    with pytest.raises(AuthenticationFailed) as raised:
        AuthenticationProviderWithClientSideTokenRefresh(config).get_bearer_token()
    assert time.monotonic() - started < 10  # stopped at the cap, not at the 60 s timeout
    message = str(raised.value)
    assert "printed more than 64 KiB" in message
    assert "secret-line" not in message and "xxxx" not in message


@pytest.mark.timeout(60)
def test_a_token_printed_by_a_command_that_leaves_a_child_holding_its_output(tmp_path: Path,
                                                                              fake_server: FakeLLMServer) -> None:
    pid_file = tmp_path / "child.pid"
    command = f"sleep 300 & echo $! > {shlex.quote(str(pid_file))}; echo cmd-token-5"
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_command": command,
                                    "auth.token_command_timeout": 30})
    started = time.monotonic()
    assert AuthenticationProviderWithClientSideTokenRefresh(config).get_bearer_token() == "cmd-token-5"
    assert time.monotonic() - started < 10  # not the 30 s timeout
    assert wait_until(lambda: gone(int(pid_file.read_text())), 10)


def test_a_token_command_gets_no_standard_input(tmp_path: Path, fake_server: FakeLLMServer) -> None:
    command = "read answer; echo \"token-${answer:-none}\""  # a prompt gets end of input at once, never waits
    config = make_config(tmp_path, {"llm.base_url": fake_server.base_url, "auth.token_command": command,
                                    "auth.token_command_timeout": 20})
    assert AuthenticationProviderWithClientSideTokenRefresh(config).get_bearer_token() == "token-none"


@pytest.mark.parametrize("value", ["0", "nan", "inf", "-1"])
def test_token_command_timeout_must_be_finite_and_positive(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match="auth.token_command_timeout: expected a positive number of seconds"):
        make_config(tmp_path, {"auth.token_command_timeout": value})
