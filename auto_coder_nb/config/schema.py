"""What can be configured: the sections and their fields (each documented where defined), defaults, which keys
are secret and how values are shown masked, and the effective `Config` with its --show-config listing."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from ..errors import ConfigError
from ..site_policy import SitePolicy
from ..text import hide_secrets, hide_url_credentials, url_credentials
from ..trust import ProjectFile

DEFAULT_BASE_URL = "http://localhost:11434/v1"
DEFAULT_MODEL = "llama3.2"
CONFIG_FILENAME = ".auto-coder.yaml"
# How the model is asked to act: the server's own tool calling, steps described in the prompt, or plain chat.
TOOL_CALLING_MODES = ("auto", "native", "prompted", "none")
# Sent with prompted steps when llm.extra_params sets no temperature: small models copy arguments badly when
# sampling at a server's default (0.8 for llama.cpp).
PROMPTED_TEMPERATURE = 0


@dataclass(frozen=True)
class UnsetVariable:
    """A setting written with a ${VAR} that is not set (`api_key: ${MY_GATEWAY_KEY}`). Not an error by itself: a later
    file, variable or flag may set the key; only where the value is used (a request, a session, an MCP server, the
    doctor) is it one, naming the file, the key and the variable."""

    file: Path
    key: str  # where the variable is: the setting, or inside it ("llm.auth_headers.X-Key")
    variable: str

    def message(self) -> str:
        return f"{self.file}: {self.key}: environment variable {self.variable} is not set"

    def describe(self) -> str:
        """For --show-config: unset, and why."""
        return f"unset: ${{{self.variable}}} is not set"


@dataclass
class LLMConfig:
    """The model endpoint (`llm:` in the config file)."""

    base_url: str = DEFAULT_BASE_URL  # OpenAI-compatible API root, usually ending in /v1
    model: str = DEFAULT_MODEL  # sent as `model` in every request
    api_key: str | None = None  # sent as `Authorization: Bearer`; secret (also OPENAI_API_KEY)
    auth_headers: dict[str, str] = field(default_factory=dict)  # extra headers on every request; values secret
    extra_params: dict[str, Any] = field(default_factory=dict)  # merged into each request body (temperature...)
    timeout: float = 120.0  # seconds the server may go without sending progress before the request fails
    ca_bundle: str | None = None  # PEM file of the CAs that verify the server (instead of certifi's)
    extra_ca_certs: list[str] = field(default_factory=list)  # PEM files trusted in addition to the bundle
    verify: bool = True  # false turns TLS certificate checks off (unsafe)
    proxy: str | None = None  # http://[user:password@]host:port; else HTTPS_PROXY / HTTP_PROXY / ALL_PROXY
    vision: bool | None = None  # whether the model sees images; unset: what the server reports, else no
    tool_calling: str = "auto"  # auto | native | prompted | none: how the model is asked to use tools
    max_tokens: int | None = 4096  # sent on every request, so a model that repeats itself stops; null: the server's
    # Cap on a prompted answer; read-only calls and the answer after a repeated step get less (prompted.StepLimits).
    step_max_tokens: int = 512
    # Who is asking, told to the gateway so a team's usage is attributed and limited per person; usually
    # ${JUPYTERHUB_USER} in a hub's site file. Not a secret (a ${VAR} here is not hidden), at most 256 characters.
    user: str | None = None
    user_header: str | None = None  # the HTTP header that carries llm.user on every request (X-User, say)
    user_field: bool = False  # also send llm.user as the OpenAI `user` field of every request body


DEFAULT_CONTEXT_WINDOW = 32768  # tokens, when neither agent.context_window nor the server says


@dataclass
class AgentConfig:
    """How the agent works (`agent:` in the config file)."""

    approval_mode: str = "ask"  # ask | auto-edit | full-auto | read-only (approvals.APPROVAL_MODES)
    max_iterations: int = 50  # model calls per turn before the turn stops
    # Tool calls run from one answer; the rest are answered "not executed" (a runaway model can send thousands).
    max_tool_calls_per_answer: int = 64
    command_timeout: float = 120.0  # run_command's default timeout, in seconds
    turn_timeout: float = 1800.0  # seconds one turn may take in all (approvals not counted); then it stops
    # Tokens the model holds; older history is shortened to fit. Unset: what the server reports, else 32768.
    context_window: int | None = None
    system_prompt: str | None = None  # replaces the built-in system prompt
    working_dir: str | None = None  # the workspace root (default: the current or the notebook's folder)
    tools: list[str] = field(default_factory=list)  # "module:name" of your ToolDefinitions, for every face
    image_max_side: int = 1024  # images sent to a vision model are downscaled to this many pixels at most
    max_images: int = 3  # images kept in the history; older ones become a short text
    # Project instruction files read into the system prompt, the first found in each folder; [] for none.
    instructions_files: list[str] = field(default_factory=lambda: ["AGENTS.md", "CLAUDE.md"])


@dataclass
class AuthConfig:
    """Where credentials come from (`auth:` in the config file); see auth.py for how a mode is chosen."""

    provider: str | None = None  # "module:Class" of a user's own authentication provider
    use_sso: bool = False  # Bearer token from SSO_TOKEN or the device sign-in (USE_SSO)
    server_side_token_refresh: bool = False  # Basic client_id:client_secret; the gateway refreshes tokens
    sso_token: str | None = None  # a ready SSO bearer token (SSO_TOKEN); secret
    device_authorization_url: str | None = None  # OAuth device sign-in endpoint (RFC 8628)
    token_url: str | None = None  # OAuth token endpoint (device sign-in, client credentials, refresh)
    client_id: str | None = None  # OAuth client (AUTO_CODER_CLIENT_ID)
    client_secret: str | None = None  # OAuth client secret (AUTO_CODER_CLIENT_SECRET); secret
    scope: str | None = None  # OAuth scope asked for
    refresh_token: str | None = None  # OAuth refresh token for token_url; secret
    token_command: str | None = None  # shell command printing a token (or JSON with access_token, expires_in)
    token_lifetime: float = 3600.0  # seconds a token_command token is used when it says no expiry
    token_command_timeout: float = 60.0  # seconds token_command may run; then it is killed with its children


@dataclass
class HistoryConfig:
    enabled: bool = True  # keep every conversation on disk (history.py), to resume and export
    retention_days: int = 30  # saved conversations untouched for longer are removed at start-up


@dataclass
class McpServerConfig:
    """One MCP server, an entry of the usual `mcpServers` shape: `command` (with `args`, `env`, `cwd`) starts a
    stdio server, `url` (with `headers`) reaches a streamable-HTTP one. Its tools ask like commands unless the
    config marks them read: `read_only` for every tool of the server, `read_tools` for some by name."""

    command: str | None = None
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    url: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    read_only: bool = False
    read_tools: list[str] = field(default_factory=list)
    timeout: float = 120.0  # seconds for one tool call
    startup_timeout: float = 30.0
    disabled: bool = False
    # Values the config took from ${VAR}: hidden wherever this server's settings or errors are shown.
    secrets: list[str] = field(default_factory=list, repr=False)
    # A ${VAR} of its settings that is not set: the server is not started, and says why.
    unset: UnsetVariable | None = None

    def describe(self) -> str:
        """How this server is reached, for --show-config and the doctor; env and header values hidden."""
        if self.url is not None:
            where = f"http {redact_url(self.url)}"
            if self.headers:
                where += f" headers {', '.join(self.headers)}"
        else:
            where = "stdio " + " ".join([self.command or "", *self.args])
            if self.env:
                where += f" env {', '.join(self.env)}"
        marks = [name for name, on in (("read_only", self.read_only), ("disabled", self.disabled)) if on]
        if self.read_tools:
            marks.append(f"read_tools {', '.join(self.read_tools)}")
        if self.unset is not None:
            marks.append(self.unset.describe())
        return hide_secrets(where + (f" ({'; '.join(marks)})" if marks else ""), self.secrets)


MCP_SERVER_FIELDS = tuple(f.name for f in fields(McpServerConfig) if f.name not in ("secrets", "unset"))
MCP_TRANSPORT_TYPES = {"stdio": "stdio", "http": "http", "streamable-http": "http", "streamableHttp": "http"}
MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class McpConfig:
    servers: dict[str, McpServerConfig] = field(default_factory=dict)


@dataclass
class Config:
    """The effective configuration; `load_config()` builds it."""

    llm: LLMConfig = field(default_factory=LLMConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    mcp: McpConfig = field(default_factory=McpConfig)
    # "llm.model" -> "default" | "file /path" | "env AUTO_CODER_MODEL" | "flag --model"
    sources: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    # Every value a config file took from the environment with ${VAR}: secrets too, wherever they ended up.
    from_variables: set[str] = field(default_factory=set)
    site: SitePolicy = field(default_factory=SitePolicy)  # the administrator's locks and allow-lists
    # Settings refused because the site locks them: said once (a notice in the first turn, --show-config).
    warnings: list[str] = field(default_factory=list)
    # The project's ./.auto-coder.yaml, when one was read: trusted or not, and what it wanted that was ignored.
    project: ProjectFile | None = None
    # "agent.tools" -> the folder of the config file that set it: its modules are imported from there first.
    folders: dict[str, Path] = field(default_factory=dict)
    # Settings whose ${VAR} is not set ("llm.api_key" -> where): at their default, an error where they are used.
    unset: dict[str, UnsetVariable] = field(default_factory=dict)

    def require(self, keys: Iterable[str]) -> None:
        """ConfigError naming file, key and variable if one of `keys` (about to be used) has an unset ${VAR}."""
        for key in keys:
            if key in self.unset:
                raise ConfigError(self.unset[key].message())

    def secret_values(self) -> list[str]:
        """Every secret this configuration holds, to hide wherever text leaves the process (saved files,
        output): keys, tokens, header values, URL and proxy passwords, and values taken from ${VAR}."""
        llm, auth = self.llm, self.auth
        values = [llm.api_key, *llm.auth_headers.values(), auth.client_secret, auth.sso_token, auth.refresh_token,
                  *url_secrets(llm.base_url), *url_secrets(llm.proxy), *self.from_variables]
        for server in self.mcp.servers.values():
            values += [*server.env.values(), *server.headers.values(), *url_secrets(server.url)]
        return [value for value in values if value]

    def show(self) -> str:
        """The effective configuration, one `key = value  (source)` line each, secrets masked."""
        lines = []
        for section in SECTIONS:
            if section == "mcp":
                continue  # one line per server, below
            for f in fields(getattr(self, section)):
                key = f"{section}.{f.name}"
                value = mask(key, getattr(getattr(self, section), f.name))
                source = self.sources.get(key) or " ".join(("default", DEFAULT_NOTES.get(key, ""))).strip()
                shown = f"<{self.unset[key].describe()}>" if key in self.unset else repr(value)
                lines.append(f"{key} = {shown}  ({self._marked(key, source)})")
        for name, server in self.mcp.servers.items():
            key = f"{MCP_SERVERS}.{name}"
            lines.append(f"{key} = {server.describe()}  ({self._marked(key, self.sources.get(key, 'default'))})")
        if not self.mcp.servers:
            lines.append(f"{MCP_SERVERS} = {{}}  ({self._marked(MCP_SERVERS, 'default')})")
        if "temperature" not in self.llm.extra_params:
            lines.append(f"llm.extra_params.temperature = <not set: prompted steps are sent {PROMPTED_TEMPERATURE}>"
                         "  (default)")
        ignored = self.project.describe() if self.project is not None else []
        return "\n".join([*lines, *self.site.describe(), *(f"warning: {text}" for text in self.warnings), *ignored])

    def _marked(self, key: str, source: str) -> str:
        return f"{source}, locked" if self.site.locked_by(key) is not None else source


# What an unset value means, where None alone would not say.
DEFAULT_NOTES = {"llm.vision": "= as the server reports, else false",
                 "agent.context_window": f"= as the server reports, else {DEFAULT_CONTEXT_WINDOW}"}

SECRET_KEYS = {"llm.api_key", "auth.client_secret", "auth.refresh_token", "auth.sso_token"}


def mask(key: str, value: Any) -> Any:
    """Hide secrets: whole values of secret keys, and every custom header value (they carry tokens)."""
    if value in (None, "", {}):
        return value
    if key in SECRET_KEYS:
        return "<hidden>"
    if key == "llm.auth_headers":
        return {name: "<hidden>" for name in value}
    if key in ("llm.proxy", "llm.base_url"):
        return redact_url(value)
    return value


def redact_url(url: str) -> str:
    """`url` with its password hidden (http://user:<hidden>@host), or its user when it has no password
    (a token put in the URL): proxy and base URLs may carry them."""
    return hide_url_credentials(url)


def url_secrets(url: str | None) -> list[str]:
    """The credentials in `url`, as written and percent-decoded: the password, or the user if it has none."""
    user, password = url_credentials(url)
    secret = password or user
    return [secret, unquote(secret)] if secret else []


# Settings that say who is asking: not secrets, so a ${VAR} they take (${JUPYTERHUB_USER}) is not hidden.
IDENTITY_KEYS = ("llm.user", "llm.user_header")

# Settings naming Python objects ("module:name"): imported from the folder of the file that set them first.
MODULE_KEYS = ("agent.tools", "auth.provider")

SECTIONS = {"llm": LLMConfig, "agent": AgentConfig, "auth": AuthConfig, "history": HistoryConfig, "mcp": McpConfig}
MCP_SERVERS = "mcp.servers"


def field_type(key: str) -> str:
    """The type of `key`'s field as its dataclass writes it ("int | None"); KeyError for a key no section has."""
    section, name = key.split(".", 1)
    for f in fields(SECTIONS[section]):
        if f.name == name:
            return str(f.type)
    raise KeyError(key)
