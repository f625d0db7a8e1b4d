"""How the HTTP clients reach a server: TLS trust, CA bundles, proxies, certificate diagnosis.

`transport_kwargs(config, url)` is what `httpx.Client` / `httpx.AsyncClient` need to reach `url` (the
model, or an OAuth endpoint), before any authentication:

- verify: an SSL context trusting `llm.ca_bundle`, else SSL_CERT_FILE, else REQUESTS_CA_BUNDLE, else
  certifi; `llm.extra_ca_certs` are added by `update_certifi()`. `llm.verify: false` turns checks off.
- proxy: `llm.proxy`, else HTTPS_PROXY / HTTP_PROXY / ALL_PROXY, unless NO_PROXY names the host.
- timeout: `llm.timeout` to read, CONNECT_TIMEOUT to connect.

Authentication lives in `auth.py` (which mode) and `authentication_provider.py` (where credentials come from).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import certifi
import httpx

from .config import Config, load_config, redact_url
from .errors import ConfigError
from .text import exception_chain

APP_NAME = "auto-coder-nb"
CONNECT_TIMEOUT = 10.0
DEFAULT_PORTS = {"http": 80, "https": 443}

_warned_unverified: set[str] = set()


# -- TLS -----------------------------------------------------------------------------------------


@dataclass
class Trust:
    """What verifies server certificates: `verify` for httpx and, in words, where it came from."""

    verify: ssl.SSLContext | bool
    source: str
    cafile: str | None = None


def user_cache_dir() -> Path:
    """The per-user cache folder of this package (XDG on Linux, Library/Caches on macOS, LOCALAPPDATA)."""
    if sys.platform == "win32":
        root = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        root = Path.home() / "Library" / "Caches"
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / APP_NAME


def update_certifi(extra_ca_certs: Iterable[str] | None = None, *, base: str | None = None,
                   cache_dir: Path | None = None) -> str:
    """A CA bundle file: `base` (certifi's by default) followed by the extra PEM certificates.

    Written once into the user's cache folder, named by its content, and never into certifi's own
    file. With no extra certificates (given, or `llm.extra_ca_certs` from the configuration) the base
    bundle is returned as is.
    """
    extras = list(extra_ca_certs) if extra_ca_certs is not None else load_config().llm.extra_ca_certs
    base = base or certifi.where()
    if not extras:
        return base
    parts = [_read_pem(base, "CA bundle")]
    parts += [_read_pem(path, "llm.extra_ca_certs") for path in extras]
    data = "\n".join(part.strip() + "\n" for part in parts).encode()
    folder = cache_dir or user_cache_dir()
    target = folder / f"ca-bundle-{hashlib.sha256(data).hexdigest()[:16]}.pem"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        temporary = target.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(data)
        os.replace(temporary, target)  # atomic: another process may be writing the same bundle
    return str(target)


def _read_pem(path: str, setting: str) -> str:
    try:
        text = Path(path).expanduser().read_text(encoding="ascii", errors="replace")
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path}: {exc.strerror}") from None
    if "-----BEGIN CERTIFICATE-----" not in text:
        raise ConfigError(f"{setting}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")
    return text


def tls_trust(config: Config, env: Mapping[str, str] | None = None) -> Trust:
    """Which CAs verify the server: llm.ca_bundle > SSL_CERT_FILE > REQUESTS_CA_BUNDLE > certifi,
    plus llm.extra_ca_certs merged by update_certifi()."""
    env = os.environ if env is None else env
    if not config.llm.verify:
        return Trust(False, "verification OFF (llm.verify: false)")
    if config.llm.ca_bundle:
        base, source = str(Path(config.llm.ca_bundle).expanduser()), "llm.ca_bundle"
    elif env.get("SSL_CERT_FILE"):
        base, source = env["SSL_CERT_FILE"], "SSL_CERT_FILE"
    elif env.get("REQUESTS_CA_BUNDLE"):
        base, source = env["REQUESTS_CA_BUNDLE"], "REQUESTS_CA_BUNDLE"
    else:
        base, source = certifi.where(), "certifi"
    if source != "certifi" and not Path(base).is_file():
        raise ConfigError(f"{source}: CA bundle {base} does not exist")
    cafile, described = base, f"{source} {base}"
    if config.llm.extra_ca_certs:
        cafile = update_certifi(config.llm.extra_ca_certs, base=base)
        count = len(config.llm.extra_ca_certs)
        described = f"{source} + {count} llm.extra_ca_certs, merged in {cafile}"
    try:
        context = ssl.create_default_context(cafile=cafile)
    except ssl.SSLError as exc:
        raise ConfigError(f"{source}: {cafile} is not a usable CA bundle ({exc.reason or exc})") from None
    return Trust(context, described, cafile)


def _warn_unverified(config: Config) -> None:
    if config.llm.base_url in _warned_unverified:
        return
    _warned_unverified.add(config.llm.base_url)
    print(f"auto-coder: warning: TLS certificate verification is OFF for {redact_url(config.llm.base_url)} "
          "(llm.verify: false); anyone on the network path can read and change this traffic. "
          "Set llm.ca_bundle to your CA's PEM file instead.", file=sys.stderr, flush=True)


def tls_failure_message(exc: BaseException, config: Config) -> str | None:
    """If `exc` (or its cause) is a failed certificate check, a message saying what to set; else None."""
    reason = certificate_problem(exc)
    if reason is None:
        return None
    try:
        trusted = tls_trust(config).source
    except ConfigError as error:
        trusted = str(error)
    return (f"TLS certificate verification failed for {redact_url(config.llm.base_url)}: {reason}. "
            f"Trusted CAs: {trusted}. If your network re-signs TLS with a private CA (a corporate proxy or "
            "gateway), set llm.ca_bundle to that CA's PEM file, or add it to llm.extra_ca_certs (kept with "
            "certifi's), or set SSL_CERT_FILE; llm.verify: false turns checking off (unsafe).")


def certificate_problem(exc: BaseException | None) -> str | None:
    """Why the server's certificate was refused, if that is what `exc` (or what caused it) says."""
    for link in exception_chain(exc):
        if isinstance(link, ssl.SSLCertVerificationError):
            return link.verify_message or str(link)
        if "CERTIFICATE_VERIFY_FAILED" in str(link):
            return str(link).split("] ", 1)[-1]
    return None


# -- proxies -------------------------------------------------------------------------------------


def proxy_for(url: str, config: Config, env: Mapping[str, str] | None = None) -> str | None:
    """The proxy to reach `url` through: none if NO_PROXY names its host, else llm.proxy, else
    HTTPS_PROXY (https) / HTTP_PROXY (http), else ALL_PROXY (each also in lower case)."""
    env = os.environ if env is None else env
    target = httpx.URL(url)
    if _bypassed(target, _env(env, "no_proxy")):
        return None
    proxy = config.llm.proxy or _env(env, f"{target.scheme}_proxy") or _env(env, "all_proxy")
    if not proxy:
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _env(env: Mapping[str, str], name: str) -> str | None:
    return env.get(name) or env.get(name.upper()) or None


def _bypassed(url: httpx.URL, no_proxy: str | None) -> bool:
    """NO_PROXY as curl reads it: `*`, host names (also matching subdomains), host:port, IPs and CIDRs."""
    host = url.host.lower()
    for entry in (no_proxy or "").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if port.isdigit() and int(port) != (url.port or DEFAULT_PORTS.get(url.scheme)):
            continue
        name = name.lstrip("*").lstrip(".")
        if host == name or host.endswith("." + name) or _in_network(host, name):
            return True
    return False


def _in_network(host: str, entry: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")) in ipaddress.ip_network(entry.strip("[]"), strict=False)
    except ValueError:
        return False


# -- client keyword arguments --------------------------------------------------------------------


def transport_kwargs(config: Config, url: str) -> dict[str, Any]:
    """verify, proxy and timeout for a client that talks to `url` (the model, or a token endpoint).
    trust_env is off because this function already applied the environment's settings."""
    trust = tls_trust(config)
    if trust.verify is False:
        _warn_unverified(config)
    return {
        "verify": trust.verify,
        "proxy": proxy_for(url, config),
        "trust_env": False,
        "timeout": httpx.Timeout(config.llm.timeout, connect=CONNECT_TIMEOUT),
    }
