"""TLS and proxies for real: a TLS front with a private CA (trustme) before the test server, and
proxy.py on loopback between the client and the server."""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import httpx
import pytest
import trustme

from auto_coder_nb import auth
from auto_coder_nb.config import Config, load_config
from auto_coder_nb.errors import ConfigError, TLSError
from auto_coder_nb.providers.base import Completion
from auto_coder_nb.providers.openai_compatible import OpenAICompatibleProvider
from auto_coder_nb.testing.server import FakeLLMServer, reply
from auto_coder_nb.testing.tls_front import TLSFront

PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


@pytest.fixture(autouse=True)
def plain_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """None of the machine's proxy or CA settings; the user cache folder inside the test's tmp_path."""
    for name in (*PROXY_VARS, "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def make_config(tmp_path: Path, base_url: str, **flags: Any) -> Config:
    return load_config({"llm.base_url": base_url, **{f"llm.{k}": v for k, v in flags.items()}},
                       env={}, cwd=tmp_path, home=tmp_path / "home")


def get_models(config: Config) -> httpx.Response:
    with httpx.Client(**auth.http_client_kwargs(config)) as client:
        return client.get(config.llm.base_url + "/models")


def chat(config: Config) -> str:
    """One streamed answer through OpenAICompatibleProvider (the async client the agent uses)."""
    provider = OpenAICompatibleProvider(config, max_retries=0)

    async def run() -> str:
        try:
            async for event in provider.chat([{"role": "user", "content": "hi"}]):
                if isinstance(event, Completion):
                    return event.content
        finally:
            await provider.aclose()
        return ""

    return asyncio.run(run())


# -- a TLS front with a private CA -------------------------------------------------------------------


@dataclass
class TLSSetup:
    server: FakeLLMServer
    front: TLSFront
    ca_file: Path  # the private CA's certificate (PEM)


@pytest.fixture
def tls(tmp_path: Path, fake_server: FakeLLMServer) -> Iterator[TLSSetup]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    ca_file = tmp_path / "corporate-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    front = TLSFront(fake_server.port, context)
    yield TLSSetup(fake_server, front, ca_file)
    front.close()


def test_private_ca_is_refused_by_default_and_the_error_says_what_to_set(tmp_path: Path, tls: TLSSetup) -> None:
    config = make_config(tmp_path, tls.front.base_url)
    assert auth.tls_trust(config).source == f"certifi {certifi.where()}"
    with pytest.raises(httpx.ConnectError) as raised:
        get_models(config)
    message = auth.tls_failure_message(raised.value, config)
    assert message is not None
    assert "certificate" in message and "llm.ca_bundle" in message and "llm.extra_ca_certs" in message
    assert "SSL_CERT_FILE" in message and "certifi" in message
    with pytest.raises(TLSError) as from_chat:  # the agent's path gives the same advice
        chat(config)
    assert str(from_chat.value) == message
    assert tls.server.requests == []


def test_ca_bundle_replaces_certifi(tmp_path: Path, tls: TLSSetup) -> None:
    tls.server.enqueue(reply.text("over TLS", chunks=2))
    config = make_config(tmp_path, tls.front.base_url, ca_bundle=str(tls.ca_file))
    assert auth.tls_trust(config).source == f"llm.ca_bundle {tls.ca_file}"
    assert get_models(config).status_code == 200
    assert chat(config) == "over TLS"


def test_extra_ca_certs_are_merged_with_certifi_by_update_certifi(tmp_path: Path, tls: TLSSetup) -> None:
    config = make_config(tmp_path, tls.front.base_url, extra_ca_certs=[str(tls.ca_file)])
    trust = auth.tls_trust(config)
    assert trust.cafile is not None and Path(trust.cafile).parent == tmp_path / "cache" / "auto-coder-nb"
    merged = Path(trust.cafile).read_text()
    assert merged.startswith(Path(certifi.where()).read_text().strip())
    assert tls.ca_file.read_text().strip() in merged
    assert "1 llm.extra_ca_certs" in trust.source
    assert get_models(config).status_code == 200
    assert auth.update_certifi([str(tls.ca_file)]) == trust.cafile  # the same content, the same file
    assert Path(certifi.where()).read_text() != merged  # certifi's own file is left alone


@pytest.mark.parametrize("variable", ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"])
def test_ca_bundle_environment_variables_are_honoured(tmp_path: Path, tls: TLSSetup,
                                                      monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, str(tls.ca_file))
    config = make_config(tmp_path, tls.front.base_url)
    assert auth.tls_trust(config).source == f"{variable} {tls.ca_file}"
    assert get_models(config).status_code == 200


def test_llm_ca_bundle_wins_over_ssl_cert_file(tmp_path: Path, tls: TLSSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls.ca_file))
    config = make_config(tmp_path, tls.front.base_url, ca_bundle=certifi.where())
    with pytest.raises(httpx.ConnectError):
        get_models(config)


def test_verify_false_works_and_warns(tmp_path: Path, tls: TLSSetup, capsys: pytest.CaptureFixture[str]) -> None:
    config = make_config(tmp_path, tls.front.base_url, verify=False)
    assert get_models(config).status_code == 200
    err = capsys.readouterr().err
    assert "verification is OFF" in err and "llm.ca_bundle" in err


def test_update_certifi_checks_its_inputs(tmp_path: Path) -> None:
    assert auth.update_certifi([]) == certifi.where()
    with pytest.raises(ConfigError, match="cannot read"):
        auth.update_certifi([str(tmp_path / "missing.pem")])
    not_pem = tmp_path / "notes.txt"
    not_pem.write_text("hello")
    with pytest.raises(ConfigError, match="no PEM certificate"):
        auth.update_certifi([str(not_pem)])
    with pytest.raises(ConfigError, match="does not exist"):
        auth.tls_trust(make_config(tmp_path, "https://example.invalid/v1", ca_bundle=str(tmp_path / "nope.pem")))


# -- proxies -------------------------------------------------------------------------------------


@dataclass
class Proxy:
    url: str
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def logged(self, text: str, within: float = 10.0) -> bool:
        """Whether `text` shows in the access log; proxy.py writes a tunnel's line when it closes, a moment
        after the client has gone, so wait for it."""
        deadline = time.monotonic() + within
        while text not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def start_proxy(folder: Path, *extra: str) -> Iterator[Proxy]:
    """proxy.py on 127.0.0.1 in its own process; its access log shows what went through it."""
    folder.mkdir(parents=True, exist_ok=True)
    port_file, log = folder / "port", folder / "proxy.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "proxy", "--hostname", "127.0.0.1", "--port", "0", "--port-file", str(port_file),
         "--num-acceptors", "1", "--num-workers", "1", "--threaded", "--log-file", str(log), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(300):  # it writes the port file once it listens
            if port_file.is_file() and port_file.read_text().strip():
                break
            if process.poll() is not None:
                pytest.fail(f"proxy.py exited with {process.returncode}; see {log}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        yield Proxy(f"http://127.0.0.1:{port}", log)
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(tmp_path_factory.mktemp("proxy"))


@pytest.fixture(scope="module")
def proxy_with_login(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from start_proxy(tmp_path_factory.mktemp("proxy-login"), "--basic-auth", "corp:proxy-pass-8080")


def went_through_proxy(server: FakeLLMServer) -> list[bool]:
    return ["proxy.py" in request.headers.get("via", "") for request in server.requests]


def test_http_proxy_from_the_environment(tmp_path: Path, fake_server: FakeLLMServer, proxy: Proxy,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    config = make_config(tmp_path, fake_server.base_url)
    fake_server.enqueue(reply.text("via the proxy", chunks=3))
    assert auth.proxy_for(config.llm.base_url, config) == proxy.url
    assert get_models(config).status_code == 200
    assert chat(config) == "via the proxy"
    assert went_through_proxy(fake_server) == [True, True]


def test_https_proxy_tunnels_tls(tmp_path: Path, tls: TLSSetup, proxy: Proxy,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", proxy.url)
    tls.server.enqueue(reply.text("tunnelled"))
    config = make_config(tmp_path, tls.front.base_url, ca_bundle=str(tls.ca_file))
    assert chat(config) == "tunnelled"
    assert proxy.logged(f"CONNECT 127.0.0.1:{tls.front.port}"), proxy.log_text()


def test_llm_proxy_from_config(tmp_path: Path, fake_server: FakeLLMServer, proxy: Proxy) -> None:
    config = make_config(tmp_path, fake_server.base_url, proxy=proxy.url.removeprefix("http://"))
    assert get_models(config).status_code == 200
    assert went_through_proxy(fake_server) == [True]


def test_no_proxy_bypasses_the_proxy(tmp_path: Path, fake_server: FakeLLMServer, proxy: Proxy,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    config = make_config(tmp_path, fake_server.base_url, proxy=proxy.url)
    assert auth.proxy_for(config.llm.base_url, config) is None
    assert get_models(config).status_code == 200
    assert went_through_proxy(fake_server) == [False]


def test_proxy_credentials_work_and_never_show(tmp_path: Path, fake_server: FakeLLMServer, proxy_with_login: Proxy,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    without = make_config(tmp_path, fake_server.base_url, proxy=proxy_with_login.url)
    assert get_models(without).status_code == 407
    login_url = proxy_with_login.url.replace("http://", "http://corp:proxy-pass-8080@")
    config = make_config(tmp_path, fake_server.base_url, proxy=login_url)
    assert get_models(config).status_code == 200
    assert went_through_proxy(fake_server) == [True]
    shown = [auth.redact_url(login_url), config.show()]
    print(*shown)
    assert "corp:<hidden>@" in shown[0]
    assert "proxy-pass-8080" not in "\n".join(shown) + capsys.readouterr().out


@pytest.mark.parametrize(("no_proxy", "url", "bypassed"), [
    ("*", "https://api.example.com/v1", True),
    ("example.com", "https://api.example.com/v1", True),
    (".example.com", "https://api.example.com/v1", True),
    ("*.example.com", "https://example.com/v1", True),
    ("ample.com", "https://api.example.com/v1", False),
    ("10.0.0.0/8", "http://10.1.2.3:8000/v1", True),
    ("10.0.0.0/8", "http://11.1.2.3:8000/v1", False),
    ("gateway:8443", "https://gateway:8443/v1", True),
    ("gateway:8443", "https://gateway/v1", False),
    ("", "https://gateway/v1", False),
])
def test_no_proxy_rules(tmp_path: Path, no_proxy: str, url: str, bypassed: bool) -> None:
    config = make_config(tmp_path, url)
    env = {"HTTPS_PROXY": "http://proxy:3128", "http_proxy": "proxy:3128", "NO_PROXY": no_proxy}
    expected = None if bypassed else "http://proxy:3128"
    assert auth.proxy_for(url, config, env) == expected


def test_token_endpoint_and_model_each_get_their_own_proxy_route(tmp_path: Path, fake_server: FakeLLMServer,
                                                                 proxy: Proxy, monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway inside the network (NO_PROXY) with its identity provider outside (through the proxy)."""
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    fake_server.route("POST", "/oauth/token", lambda request: reply.json_body(
        {"access_token": "tok-routed", "expires_in": 3600}))
    fake_server.require_authorization("Bearer tok-routed")
    config = load_config({"llm.base_url": fake_server.base_url, "auth.client_id": "corp",
                          "auth.client_secret": "corp-secret-77",
                          "auth.token_url": f"http://localhost:{fake_server.port}/oauth/token"},
                         env={}, cwd=tmp_path, home=tmp_path / "home")
    assert get_models(config).status_code == 200
    assert [(r.path, "proxy.py" in r.headers.get("via", "")) for r in fake_server.requests] == [
        ("/oauth/token", True), ("/v1/models", False)]
