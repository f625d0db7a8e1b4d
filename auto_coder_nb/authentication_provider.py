"""Where credentials come from.

- `AuthenticationProvider.generate_auth_token()`: the SSO bearer token (USE_SSO=true). `SSO_TOKEN` if
  set, otherwise a real OAuth 2.0 device authorization flow (RFC 8628), cached until it expires.
- `AuthenticationProvider.get_basic_credentials()`: base64 `client_id:client_secret` for gateways that
  refresh tokens on the server side (SERVER_SIDE_TOKEN_REFRESH=true).
- `AuthenticationProviderWithClientSideTokenRefresh`: an `httpx.Auth` that sends the API key, or a
  token from `auth.token_command` or from `auth.token_url` (client credentials / refresh token), renews
  it shortly before it expires, and on a 401 renews it once and retries the request once.

Use your own class without editing the package: `auth.provider: "my_module:MyProvider"` in the config
file. It needs the same methods (an `httpx.Auth` subclass for the client-side mode); its constructor
gets the `Config` if it takes a `config` argument.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .bounded_http import SyncClient
from .config import AuthConfig, Config, load_config
from .errors import AuthenticationFailed, ConfigError, ConnectionFailed
from .text import hide_secrets
from .transport import certificate_problem, transport_kwargs

DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEFAULT_POLL_INTERVAL = 5.0  # RFC 8628 section 3.2
SLOW_DOWN_STEP = 5.0  # RFC 8628 section 3.5
EXPIRY_MARGIN = 60.0  # renew this long before expiry (at most a tenth of the token's lifetime)
MAX_TOKEN_LIFETIME = 86400.0  # a longer stated lifetime is taken as a day: renewed daily, and on a 401 before that
MAX_POLL_INTERVAL = 60.0  # a device flow's stated polling interval, at most
TOKEN_OUTPUT_LIMIT = 64 * 1024  # a token, or JSON with one: more is not a token command's output
TOKEN_ERRORS_KEPT = 4096  # the end of its standard error, for the message when it fails
TOKEN_COMMAND_GRACE = 1.0  # seconds a background process may hold the output open after the shell exited


# Every token fetched in this process (SSO, token endpoints, token_command): secrets like the configuration's,
# hidden wherever text leaves the process (see auth.secret_values).
_fetched_tokens: set[str] = set()


def fetched_tokens() -> list[str]:
    """The access and refresh tokens fetched so far in this process."""
    return list(_fetched_tokens)


def basic_credentials(auth: AuthConfig) -> str | None:
    """base64 of `client_id:client_secret`, or None if either is unset."""
    if not (auth.client_id and auth.client_secret):
        return None
    return base64.b64encode(f"{auth.client_id}:{auth.client_secret}".encode()).decode("ascii")


@dataclass
class Token:
    value: str
    expires_at: float | None = None  # on the provider's clock; None: until the server rejects it
    refresh_token: str | None = None

    def __post_init__(self) -> None:
        _fetched_tokens.update(token for token in (self.value, self.refresh_token) if token)

    def fresh(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True)
class DeviceCode:
    """What the user needs to finish a device sign-in. (The device code itself stays private.)"""

    user_code: str
    verification_uri: str
    verification_uri_complete: str | None = None
    expires_in: float = 600.0

    def message(self) -> str:
        text = f"To sign in, open {self.verification_uri} and enter the code {self.user_code}"
        if self.verification_uri_complete:
            text += f" (or open {self.verification_uri_complete})"
        return text + f". The code expires in {int(self.expires_in // 60)} minutes."


def print_device_code(code: DeviceCode) -> None:
    """Default way to show the sign-in code: standard error (visible in a terminal and in notebook output)."""
    print(code.message(), file=sys.stderr, flush=True)


# How providers made without `show_device_code` show the sign-in code. A face may replace it.
device_code_display: Callable[[DeviceCode], None] = print_device_code


def post_form(client: SyncClient, url: str, form: dict[str, str | None]) -> httpx.Response:
    """POST to an OAuth token (or device authorization) endpoint; empty fields are left out."""
    data = {name: value for name, value in form.items() if value}
    return client.post(url, data=data, headers={"Accept": "application/json"})


def _oauth_error(response: httpx.Response) -> tuple[str, str]:
    """(error code, description) of an OAuth error response; both may be empty."""
    try:
        body = response.json()
    except ValueError:
        return "", ""
    if not isinstance(body, dict):
        return "", ""
    return str(body.get("error") or ""), str(body.get("error_description") or "")


def parse_token_response(response: httpx.Response, *, now: float, what: str,
                         secrets: Iterable[str | None]) -> Token:
    """The token from a successful token endpoint response; AuthenticationFailed with a safe message otherwise."""
    if response.status_code == 200:
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("access_token"), str) and body["access_token"]:
            refresh = body.get("refresh_token")
            return Token(body["access_token"], _expiry(body.get("expires_in"), now),
                         refresh if isinstance(refresh, str) and refresh else None)
        raise AuthenticationFailed(f"{what}: the token endpoint answered without an access_token",
                                   status=response.status_code)
    raise token_error(response, what=what, secrets=secrets)


def token_error(response: httpx.Response, *, what: str, secrets: Iterable[str | None]) -> AuthenticationFailed:
    """A readable, secret-free error for a token endpoint's refusal."""
    code, description = _oauth_error(response)
    detail = " ".join(part for part in (code, description and f"({description})") if part)
    message = f"{what}: the token endpoint {response.request.url.copy_with(query=None)} refused it " \
              f"(HTTP {response.status_code}{': ' + detail if detail else ''})"
    return AuthenticationFailed(hide_secrets(message, secrets), status=response.status_code)


def _expiry(expires_in: Any, now: float) -> float | None:
    """When a token stated to last `expires_in` seconds is renewed; None (unknown: used until the server rejects it,
    then renewed) when `expires_in` is missing or no usable number."""
    lifetime = seconds(expires_in)
    if lifetime is None:
        return None
    lifetime = min(lifetime, MAX_TOKEN_LIFETIME)
    return now + lifetime - min(EXPIRY_MARGIN, lifetime / 10)


def seconds(value: Any) -> float | None:
    """A duration a server stated (a number, or a numeric string), or None when it is none: missing, not a number,
    not finite, not positive."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: a JSON integer of hundreds of digits
        return None
    return number if math.isfinite(number) and number > 0 else None


@contextmanager
def endpoint_client(config: Config, url: str, what: str) -> Iterator[SyncClient]:
    """A client for an OAuth endpoint, with the TLS and proxy settings for its own host, each request within a
    deadline and a size cap; failing to reach it is a ConnectionFailed that names the endpoint (not the model URL
    the request was for)."""
    try:
        yield SyncClient(transport_kwargs(config, url))
    except httpx.HTTPError as exc:
        problem = certificate_problem(exc)
        reason = f"its TLS certificate is not trusted ({problem}); set llm.ca_bundle, llm.extra_ca_certs or " \
                 "SSL_CERT_FILE" if problem else str(exc) or type(exc).__name__
        raise ConnectionFailed(f"{what}: could not reach {url}: {reason}") from None


class AuthenticationProvider:
    """SSO bearer tokens and basic credentials, from configuration (see the module docstring)."""

    def __init__(
        self,
        config: Config | None = None,
        *,
        show_device_code: Callable[[DeviceCode], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config if config is not None else load_config()
        self.show_device_code = show_device_code
        self._clock = clock
        self._sleep = sleep
        self._token: Token | None = None
        self._lock = threading.Lock()  # two requests at once must not start two sign-ins

    def generate_auth_token(self) -> str | None:
        """The SSO bearer token: SSO_TOKEN, or a cached device-flow token, renewed when it expires."""
        auth = self.config.auth
        if auth.sso_token:
            return auth.sso_token
        with self._lock:
            now = self._clock()
            if self._token is not None and self._token.fresh(now):
                return self._token.value
            missing = [name for name in ("device_authorization_url", "token_url", "client_id")
                       if not getattr(auth, name)]
            if missing:
                names = ", ".join(f"auth.{name}" for name in missing)
                raise ConfigError(f"USE_SSO is on but there is no token: set SSO_TOKEN, or set {names} "
                                  "for the device sign-in")
            with endpoint_client(self.config, auth.token_url or "", "SSO sign-in") as client:
                self._token = self._refresh(client) or self._device_flow(client)
            return self._token.value

    def get_basic_credentials(self) -> str | None:
        """base64 of `client_id:client_secret` (auth.client_id / auth.client_secret), or None if unset."""
        return basic_credentials(self.config.auth)

    def forget_token(self) -> None:
        """Treat the cached token as expired (the server rejected it): the next call renews it with its
        refresh token if it has one, else signs in again."""
        with self._lock:
            if self._token is not None:
                self._token.expires_at = float("-inf")

    @property
    def _secrets(self) -> list[str | None]:
        auth = self.config.auth
        token = self._token
        return [auth.client_secret, auth.sso_token, auth.refresh_token,
                token.value if token else None, token.refresh_token if token else None]

    def _refresh(self, client: SyncClient) -> Token | None:
        """A new token from the expired one's refresh token, so the user need not sign in again."""
        refresh_token = self._token.refresh_token if self._token else None
        if not refresh_token:
            return None
        auth = self.config.auth
        response = post_form(client, auth.token_url or "", {
            "grant_type": "refresh_token", "refresh_token": refresh_token,
            "client_id": auth.client_id, "client_secret": auth.client_secret, "scope": auth.scope,
        })
        try:
            token = parse_token_response(response, now=self._clock(), what="SSO token refresh", secrets=self._secrets)
        except AuthenticationFailed:
            return None  # the refresh token expired too: sign in again
        token.refresh_token = token.refresh_token or refresh_token
        return token

    def _device_flow(self, client: SyncClient) -> Token:
        """RFC 8628: ask for a device code, show the user code, poll the token endpoint until sign-in ends."""
        auth = self.config.auth
        response = post_form(client, auth.device_authorization_url or "", {
            "client_id": auth.client_id, "scope": auth.scope,
        })
        try:
            body = response.json() if response.status_code == 200 else None
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(isinstance(body.get(k), str) for k in
                                                  ("device_code", "user_code", "verification_uri")):
            code, description = _oauth_error(response)
            detail = f": {code} {description}".rstrip() if code else ""
            raise AuthenticationFailed(hide_secrets(
                f"SSO sign-in: the device authorization endpoint {auth.device_authorization_url} answered "
                f"HTTP {response.status_code} without a device code{detail}", self._secrets),
                status=response.status_code)
        expires_in = min(seconds(body.get("expires_in")) or 600.0, MAX_TOKEN_LIFETIME)
        show = self.show_device_code or device_code_display
        show(DeviceCode(body["user_code"], body["verification_uri"], body.get("verification_uri_complete"), expires_in))
        interval = min(seconds(body.get("interval")) or DEFAULT_POLL_INTERVAL, MAX_POLL_INTERVAL)
        deadline = self._clock() + expires_in
        poll = {"grant_type": DEVICE_CODE_GRANT, "device_code": body["device_code"],
                "client_id": auth.client_id, "client_secret": auth.client_secret}
        while True:
            if self._clock() >= deadline:
                raise AuthenticationFailed("SSO sign-in: the code expired before sign-in finished; try again")
            self._sleep(interval)
            response = post_form(client, auth.token_url or "", poll)
            if response.status_code == 200:
                return parse_token_response(response, now=self._clock(), what="SSO sign-in", secrets=self._secrets)
            code, _ = _oauth_error(response)
            if code == "authorization_pending":
                continue
            if code == "slow_down":
                interval += SLOW_DOWN_STEP
                continue
            if code == "expired_token":
                raise AuthenticationFailed("SSO sign-in: the code expired before sign-in finished; try again")
            if code == "access_denied":
                raise AuthenticationFailed("SSO sign-in was denied; try again, or ask your administrator "
                                           "whether your account may use this client")
            raise token_error(response, what="SSO sign-in", secrets=self._secrets)


@dataclass
class BlockingCall:
    """Yielded by an auth flow to run slow or blocking work (a command, a sign-in) the right way for the
    client: directly for a sync client, in a worker thread for an async one, so the event loop keeps going."""

    function: Callable[[], Any]


class FlowAuth(httpx.Auth):
    """Runs one `auth_flow` generator for sync and async clients. Besides requests, the flow may yield
    `BlockingCall`s (token fetches, commands, sign-ins): run directly for a sync client, in a worker
    thread for an async one. Responses are handed back unread, so streamed answers stream."""

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()  # a request retried after a 401 is sent again with its body
        flow = self.auth_flow(request)
        step: Any = next(flow)
        while True:
            sent: Any = step.function() if isinstance(step, BlockingCall) else (yield step)
            try:
                step = flow.send(sent)
            except StopIteration:
                return

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = self.auth_flow(request)
        step: Any = next(flow)
        while True:
            sent: Any = await asyncio.to_thread(step.function) if isinstance(step, BlockingCall) else (yield step)
            try:
                step = flow.send(sent)
            except StopIteration:
                return


class ProviderHeaderAuth(FlowAuth):
    """`Authorization: <scheme> <value>` with the value asked of a provider method on every request
    (the provider caches). Used for the SSO (Bearer) and server-side refresh (Basic) modes.

    With `forget` (the provider's `forget_token`), a 401 drops the value and, if the provider then
    gives a different one, the request is retried once.
    """

    def __init__(self, get_value: Callable[[], str | None], scheme: str, missing: str,
                 forget: Callable[[], None] | None = None) -> None:
        self._get_value = get_value
        self._scheme = scheme
        self._missing = missing
        self._forget = forget

    def auth_flow(self, request: httpx.Request) -> Generator[Any, Any, None]:
        value = yield BlockingCall(self._value)
        request.headers["Authorization"] = f"{self._scheme} {value}"
        response = yield request
        if response.status_code != 401 or self._forget is None:
            return
        yield BlockingCall(self._forget)
        renewed = yield BlockingCall(self._value)
        if renewed != value:
            request.headers["Authorization"] = f"{self._scheme} {renewed}"
            yield request

    def _value(self) -> str:
        try:
            value = self._get_value()
        except (AuthenticationFailed, ConnectionFailed, ConfigError):
            raise
        except Exception as exc:  # a user's provider: report it as what it is, an authentication failure
            raise AuthenticationFailed(f"the authentication provider failed: {type(exc).__name__}: {exc}") from exc
        if not value:  # nothing to send: a setting is missing, which no retry can fix
            raise ConfigError(self._missing)
        return value


class AuthenticationProviderWithClientSideTokenRefresh(FlowAuth):
    """Bearer auth for clients that renew their own tokens.

    The token comes from `auth.token_command`, else `auth.token_url` (a refresh-token grant when there is
    a refresh token, else client credentials), else the API key (sent as is). No source at all sends no
    Authorization header, which local servers accept.
    """

    def __init__(self, config: Config | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config if config is not None else load_config()
        self._clock = clock
        self._token: Token | None = None
        self._refresh_token = self.config.auth.refresh_token
        self._lock = threading.Lock()  # concurrent requests with an expired token renew it once

    @property
    def renews(self) -> bool:
        """Whether this auth fetches tokens itself (rather than sending a fixed key or nothing)."""
        return bool(self.config.auth.token_command or self.config.auth.token_url)

    def get_bearer_token(self, *, rejected: str | None = None) -> str:
        """The current token, fetched or renewed first if needed. `rejected`: a token the server refused,
        renewed even if it has not expired (unless another request renewed it already)."""
        with self._lock:
            token = self._token
            if token is None or not token.fresh(self._clock()) or token.value == rejected:
                token = self._token = self._run_token_command() if self.config.auth.token_command \
                    else self._fetch_token()
            return token.value

    def auth_flow(self, request: httpx.Request) -> Generator[Any, Any, None]:
        if not self.renews:
            if self.config.llm.api_key:
                request.headers["Authorization"] = f"Bearer {self.config.llm.api_key}"
            yield request
            return
        token = yield BlockingCall(self.get_bearer_token)
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        # Rejected before its time (revoked, clock skew): renew once, retry once.
        token = yield BlockingCall(lambda: self.get_bearer_token(rejected=token))
        request.headers["Authorization"] = f"Bearer {token}"
        yield request

    @property
    def _secrets(self) -> list[str | None]:
        auth = self.config.auth
        return [auth.client_secret, auth.refresh_token, self._refresh_token, self.config.llm.api_key,
                self._token.value if self._token else None]

    def _fetch_token(self) -> Token:
        """From auth.token_url, with its own client: the token endpoint may need another proxy than the model."""
        auth = self.config.auth
        url = auth.token_url or ""
        with endpoint_client(self.config, url, "token request") as client:
            if self._refresh_token:
                response = post_form(client, url, {
                    "grant_type": "refresh_token", "refresh_token": self._refresh_token,
                    "client_id": auth.client_id, "client_secret": auth.client_secret, "scope": auth.scope,
                })
                try:
                    token = parse_token_response(response, now=self._clock(), what="token refresh",
                                                 secrets=self._secrets)
                except AuthenticationFailed:
                    if not auth.client_secret:
                        raise
                else:
                    self._refresh_token = token.refresh_token or self._refresh_token
                    return token
            if not (auth.client_id and auth.client_secret):
                raise ConfigError("auth.token_url is set but auth.client_id and auth.client_secret (or "
                                  "AUTO_CODER_CLIENT_ID / AUTO_CODER_CLIENT_SECRET, or auth.refresh_token) are not")
            response = post_form(client, url, {
                "grant_type": "client_credentials", "client_id": auth.client_id,
                "client_secret": auth.client_secret, "scope": auth.scope,
            })
        token = parse_token_response(response, now=self._clock(), what="client credentials", secrets=self._secrets)
        self._refresh_token = token.refresh_token or self._refresh_token
        return token

    def _run_token_command(self) -> Token:
        """Run auth.token_command; it prints a token, or JSON with access_token / accessToken and expires_in."""
        command = self.config.auth.token_command or ""
        returncode, stdout, stderr = run_token_command(command, self.config.auth.token_command_timeout)
        try:
            output = stdout.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise AuthenticationFailed("auth.token_command printed bytes that are not UTF-8 text; it must print only "
                                       "the token (or JSON with access_token)") from None
        if returncode != 0 or not output:
            said = hide_secrets(stderr.decode("utf-8", "replace").strip()[-300:], [*self._secrets, output])
            problem = f"exited with status {returncode}" if returncode else "printed no token"
            raise AuthenticationFailed(f"auth.token_command {problem}" + (f": {said}" if said else ""))
        now = self._clock()
        lifetime: Any = self.config.auth.token_lifetime
        if output.startswith("{"):  # JSON may span lines (az account get-access-token does)
            try:
                body = json.loads(output)
            except ValueError:
                body = {}
            value = body.get("access_token") or body.get("accessToken") if isinstance(body, dict) else None
            if not isinstance(value, str) or not value:
                raise AuthenticationFailed("auth.token_command printed JSON without access_token")
            output, lifetime = value, body.get("expires_in", lifetime)
        if not output.isprintable():
            # Several lines or control characters: not a token (a banner, a prompt, an error). Not echoed: it
            # may hold the token.
            raise AuthenticationFailed("auth.token_command must print only the token, on one line of printable "
                                       "characters (or JSON with access_token); it printed "
                                       f"{len(output.splitlines())} line(s), or control characters")
        return Token(output, _expiry(lifetime, now))


def run_token_command(command: str, timeout: float) -> tuple[int, bytes, bytes]:
    """Run auth.token_command in a shell of its own process group: (exit status, output, the end of its errors).

    Standard input is empty (a prompt would wait for ever). Past `timeout` seconds, or past TOKEN_OUTPUT_LIMIT bytes
    of output, the whole group is killed (the shell and whatever it started) and AuthenticationFailed says so without
    the output, which may hold a token. Once the shell has exited, a process it left in the background that still
    holds the output open gets TOKEN_COMMAND_GRACE seconds, then is killed too."""
    process = subprocess.Popen(command, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, start_new_session=True)
    assert process.stdout is not None and process.stderr is not None
    output, errors = bytearray(), bytearray()
    buffers = {process.stdout.fileno(): output, process.stderr.fileno(): errors}
    deadline = time.monotonic() + timeout
    exited_at: float | None = None
    try:
        with selectors.DefaultSelector() as selector:
            for stream in (process.stdout, process.stderr):
                selector.register(stream, selectors.EVENT_READ)
            while selector.get_map():
                now = time.monotonic()
                if now >= deadline:
                    raise AuthenticationFailed(f"auth.token_command did not finish in {timeout:g} s "
                                               "(auth.token_command_timeout); it was stopped with every process it "
                                               "started")
                if exited_at is None and process.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at >= TOKEN_COMMAND_GRACE:
                    break  # the shell is done; what it left running in the background holds the output open
                for key, _ in selector.select(min(deadline - now, 0.1)):
                    chunk = os.read(key.fd, 65536)
                    if not chunk:
                        selector.unregister(key.fileobj)
                        continue
                    buffer = buffers[key.fd]
                    buffer += chunk
                    if buffer is output and len(output) > TOKEN_OUTPUT_LIMIT:
                        raise AuthenticationFailed(f"auth.token_command printed more than {TOKEN_OUTPUT_LIMIT // 1024} "
                                                   "KiB; it must print only the token (or JSON with access_token); "
                                                   "it was stopped")
                    if buffer is errors and len(errors) > TOKEN_ERRORS_KEPT:
                        del errors[:-TOKEN_ERRORS_KEPT]
            if selector.get_map():
                _kill_group(process)  # left in the background holding the output: the command is done, so is it
        try:
            returncode = process.wait(max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:  # it closed its output but runs on
            raise AuthenticationFailed(f"auth.token_command did not finish in {timeout:g} s "
                                       "(auth.token_command_timeout); it was stopped with every process it "
                                       "started") from None
    except BaseException:
        _kill_group(process)
        process.wait()
        raise
    finally:
        process.stdout.close()
        process.stderr.close()
    return returncode, bytes(output), bytes(errors)


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the process group `process` leads (start_new_session made its pid the group id), if any is left."""
    killpg = getattr(os, "killpg", None)
    try:
        if killpg is not None:
            killpg(process.pid, signal.SIGKILL)
        else:  # no process groups (Windows): the shell alone
            process.kill()
    except (ProcessLookupError, PermissionError):
        pass  # all gone already
