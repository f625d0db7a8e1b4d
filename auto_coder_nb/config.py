"""Configuration: defaults < config files < environment < flags, with the source of every value."""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .approvals import APPROVAL_MODES
from .config_files import load_yaml, parse_yaml, read_config_bytes
from .errors import ConfigError
from .site_policy import ALLOW_KEYS, ALLOW_LISTS, SITE_CONFIG, SITE_CONFIG_ENV, SitePolicy
from .text import hide_secrets, hide_url_credentials, show_controls, url_credentials
from .trust import ProjectFile, digest, is_trusted, store_path

DEFAULT_BASE_URL = "http://localhost:11434/v1"
DEFAULT_MODEL = "llama3.2"
CONFIG_FILENAME = ".auto-coder.yaml"
# How the model is asked to act: the server's own tool calling, steps described in the prompt, or plain chat.
TOOL_CALLING_MODES = ("auto", "native", "prompted", "none")


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
_MCP_SERVER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


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
        for section in _SECTIONS:
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


# Environment variables and the keys they set. OPENAI_API_KEY is a fallback, handled apart.
ENV_VARS = {
    "AUTO_CODER_BASE_URL": "llm.base_url",
    "AUTO_CODER_MODEL": "llm.model",
    "AUTO_CODER_API_KEY": "llm.api_key",
    "AUTO_CODER_APPROVAL_MODE": "agent.approval_mode",
    "AUTO_CODER_CA_BUNDLE": "llm.ca_bundle",
    "AUTO_CODER_VISION": "llm.vision",
    "AUTO_CODER_TOOL_CALLING": "llm.tool_calling",
    "AUTO_CODER_MAX_TOKENS": "llm.max_tokens",
    "USE_SSO": "auth.use_sso",
    "SERVER_SIDE_TOKEN_REFRESH": "auth.server_side_token_refresh",
    "SSO_TOKEN": "auth.sso_token",
    "AUTO_CODER_CLIENT_ID": "auth.client_id",
    "AUTO_CODER_CLIENT_SECRET": "auth.client_secret",
}

_SECTIONS = {"llm": LLMConfig, "agent": AgentConfig, "auth": AuthConfig, "history": HistoryConfig, "mcp": McpConfig}
MCP_SERVERS = "mcp.servers"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(
    flags: Mapping[str, Any] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    home: Path | None = None,
    trust_project: bool = False,
) -> Config:
    """Build the effective configuration. `flags` maps dotted keys ("llm.model") to values given on
    the command line or to a magic; None values are ignored. `trust_project` trusts the project's file for this
    load (--trust-project), else it is trusted only if recorded so (trust.py). Raises ConfigError with one
    readable line."""
    env = os.environ if env is None else env
    home = Path.home() if home is None else home
    cwd = Path.cwd() if cwd is None else cwd
    config = Config()
    _read_site_files(config, env)

    project = cwd / CONFIG_FILENAME
    candidates = [home / CONFIG_FILENAME, project]
    trusted = {(home / CONFIG_FILENAME).resolve()}  # the user's own file, and one named with --config
    if config_path is not None:
        explicit = Path(config_path).expanduser()
        if not explicit.is_file():
            raise ConfigError(_not_a_file(explicit, "config file"))
        candidates.append(explicit)
        trusted.add(explicit.resolve())
    seen: set[Path] = set()
    for path in candidates:
        resolved = path.resolve()
        if resolved in seen or not path.is_file():
            continue
        if path is project and path.is_symlink() and resolved in trusted:
            continue  # a link to the user's own (or --config) file: that file is read as itself, from its folder
        seen.add(resolved)
        if path is project and (resolved not in trusted or path.is_symlink()):
            settings = _read_project_file(config, path, env, store_path(env, home), trust_project)
        else:
            settings = _read_file(path, env, config.from_variables)
        for key, value in settings.items():
            _set(config, key, value, f"file {path}", where=str(path))
        config.files.append(path)

    if "llm.api_key" not in config.sources and env.get("OPENAI_API_KEY"):
        _set(config, "llm.api_key", env["OPENAI_API_KEY"], "env OPENAI_API_KEY", where="OPENAI_API_KEY")
    for var, key in ENV_VARS.items():
        if env.get(var):
            _check_expanded(var, env[var], env)
            _set(config, key, _parse_env(key, env[var]), f"env {var}", where=var)

    for key, value in (flags or {}).items():
        if value is not None:
            flag = f"--{key.split('.')[-1].replace('_', '-')}"
            _set(config, key, value, f"flag {flag}", where=flag)
    _check_site_allows(config)
    return config


def site_files(env: Mapping[str, str]) -> list[Path]:
    """The site configuration files: /etc/auto-coder/config.yaml if it exists, then each file named in
    $AUTO_CODER_SITE_CONFIG (colon-separated), which must exist."""
    found = [SITE_CONFIG] if SITE_CONFIG.is_file() else []
    _check_expanded(SITE_CONFIG_ENV, env.get(SITE_CONFIG_ENV, ""), env)
    for name in filter(None, env.get(SITE_CONFIG_ENV, "").split(os.pathsep)):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{SITE_CONFIG_ENV}: {_not_a_file(path, 'site configuration file')}")
        found.append(path)
    return found


def _check_expanded(var: str, value: str, env: Mapping[str, str]) -> None:
    """An environment variable is used as it is, so a ${NAME} in its value is one nobody expanded (JupyterHub's
    `c.Spawner.environment` passes values as written): a ConfigError naming both, never a literal ${NAME} sent."""
    found = _VAR.search(value)
    if found is None:
        return
    name = found.group(1)
    state = "is not set either" if name not in env else "is set, but a variable's value is not expanded"
    raise ConfigError(f"{var} is {show_controls(repr(value))}: ${{{name}}} was never expanded ({name} {state}). "
                      f"Environment variables are used as they are (JupyterHub's c.Spawner.environment passes its "
                      f"values as written): set the value itself, or write ${{{name}}} in a config file, where it is "
                      f"expanded")


def _not_a_file(path: Path, what: str) -> str:
    """Why `path`, named explicitly, cannot be read as a configuration file."""
    if path.is_dir():
        return f"{what} {path} is a folder; give the path of a YAML file"
    if path.exists():
        return f"{what} {path} is not a regular file"
    return f"{what} {path} does not exist"


def _read_site_files(config: Config, env: Mapping[str, str]) -> None:
    """Site files, before the user's: ordinary settings (source "site PATH"), plus `locked:` and `allow:`."""
    site = config.site
    for path in site_files(env):
        data = load_yaml(path)
        if isinstance(data, dict):
            data = dict(data)
            _read_locks(site, data.pop("locked", None), path)
            _read_allows(site, data.pop("allow", None), path)
        for key, value in _flatten(data, path, env, config.from_variables, site=True).items():
            _set(config, key, value, f"site {path}", where=str(path))
        site.files.append(path)


def _read_locks(site: SitePolicy, locked: Any, path: Path) -> None:
    if locked is None:
        return
    if not isinstance(locked, list) or not all(isinstance(key, str) for key in locked):
        raise ConfigError(f"{path}: locked: expected a list of dotted keys, like [llm.base_url, agent.approval_mode]")
    for key in locked:
        section, _, name = key.partition(".")
        known = section in _SECTIONS and (not name or key == MCP_SERVERS or key.startswith(f"{MCP_SERVERS}.")
                                           or name in {f.name for f in fields(_SECTIONS[section])})
        if not known:
            raise ConfigError(f"{path}: locked: unknown key {key!r}; lock a section (llm) or a key (llm.model)")
        site.locked[key] = path


def _read_allows(site: SitePolicy, allow: Any, path: Path) -> None:
    if allow is None:
        return
    if not isinstance(allow, dict):
        raise ConfigError(f"{path}: allow: expected a mapping with {', '.join(ALLOW_KEYS)}")
    for name, value in allow.items():
        if name == "max_approval_mode":
            if value not in APPROVAL_MODES:
                raise ConfigError(f"{path}: allow.max_approval_mode: expected one of {', '.join(APPROVAL_MODES)}, "
                                  f"got {value!r}")
            site.max_approval_mode = value
        elif name in ALLOW_LISTS:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ConfigError(f"{path}: allow.{name}: expected a list of {ALLOW_LISTS[name]}")
            site.allow[name] = list(value)
        else:
            raise ConfigError(f"{path}: allow: unknown list {name!r}; known: {', '.join(ALLOW_KEYS)}")
        site.allow_files[name] = path


def _check_site_allows(config: Config) -> None:
    """The effective endpoint and model must be allowed (a configuration error naming where they came from); an
    approval mode above the site's maximum is lowered to it, with a warning (from a flag it is an error)."""
    site = config.site
    for key, refusal in (("llm.base_url", site.base_url_refusal(config.llm.base_url)),
                         ("llm.model", site.model_refusal(config.llm.model))):
        if refusal is not None and key not in config.unset:  # unset: an error where it is used
            raise ConfigError(f"{key} from {config.sources.get(key, 'default')}: {refusal}")
    mode = config.agent.approval_mode
    refusal = site.mode_refusal(mode)
    if refusal is not None:
        source = config.sources.get("agent.approval_mode", "default")
        if source.startswith("flag "):
            raise ConfigError(f"{source.removeprefix('flag ')}: {refusal}")
        config.agent.approval_mode = site.capped_mode(mode)
        config.warnings.append(f"agent.approval_mode from {source}: {refusal}; using {config.agent.approval_mode!r}")


def load_object(spec: str, key: str, folder: Path | None = None) -> Any:
    """The object named by a "package.module:name" setting, or a ConfigError naming `key`. `folder` is that of the
    config file that named it (`Config.folders`): a module there (team_tools.py beside .auto-coder.yaml) is found
    without PYTHONPATH."""
    module_name, _, name = spec.partition(":")
    if not module_name or not name:
        raise ConfigError(f"{key}: expected 'module:name', got {spec!r}")
    try:
        module = _import_beside(module_name, folder)
    except ImportError as exc:
        raise ConfigError(f"{key}: cannot import {module_name}: {exc}") from None
    except Exception as exc:  # the module itself fails (a syntax error, an exception at import)
        raise ConfigError(f"{key}: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    try:
        return getattr(module, name)
    except AttributeError:
        raise ConfigError(f"{key}: {module_name} has no {name}") from None


def _import_beside(module_name: str, folder: Path | None) -> Any:
    """Import `module_name`, from `folder` first when its top-level module or package is there. The folder stays
    on sys.path (last) afterwards, so the module's own later imports of its neighbours work."""
    top = module_name.partition(".")[0]
    if folder is None or not ((folder / f"{top}.py").is_file() or (folder / top).is_dir()):
        return importlib.import_module(module_name)
    entry = str(folder)
    sys.path.insert(0, entry)
    try:
        importlib.invalidate_caches()
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(entry)
        if entry not in sys.path:
            sys.path.append(entry)


def _read_file(path: Path, env: Mapping[str, str], taken: set[str]) -> dict[str, Any]:
    return _flatten(load_yaml(path), path, env, taken)


# What a project file may set before the user trusts it: settings that neither run anything nor change where
# requests (and the user's credentials) go. Everything else, including keys added later, needs trust.
PROJECT_SAFE_KEYS = frozenset({
    "llm.model", "llm.extra_params", "llm.timeout", "llm.vision", "llm.tool_calling", "llm.max_tokens",
    "agent.max_iterations", "agent.max_tool_calls_per_answer", "agent.command_timeout", "agent.context_window",
    "agent.image_max_side", "agent.max_images", "agent.instructions_files", "history.enabled",
})
# The llm.extra_params an untrusted project file may set: sampling, nothing that steers what is asked.
PROJECT_SAFE_PARAMS = frozenset({
    "temperature", "top_p", "top_k", "min_p", "typical_p", "presence_penalty", "frequency_penalty",
    "repetition_penalty", "repeat_penalty", "seed", "stop", "max_tokens", "max_completion_tokens",
})
# What the product itself puts in every request: llm.extra_params never replaces it, from any file.
PRODUCT_PARAMS = ("model", "messages", "tools", "tool_choice", "stream", "response_format")
_PRODUCT_PARAM_HINTS = {"model": "set llm.model instead", "stream": "answers always stream where the server can"}
# The instruction files an untrusted project file may choose among (agent.instructions_files): the documented ones.
PROJECT_SAFE_INSTRUCTIONS = ("AGENTS.md", "CLAUDE.md")
# Approval modes an untrusted project file may choose: none allows more than asking.
PROJECT_SAFE_APPROVAL_MODES = ("ask", "read-only")
# Settings naming Python objects ("module:name"): imported from the folder of the file that set them first.
MODULE_KEYS = ("agent.tools", "auth.provider")


def _read_project_file(config: Config, path: Path, env: Mapping[str, str], store: Path,
                       trusted: bool) -> dict[str, Any]:
    """The project's file: read once (the content hashed is the content used); unless the user trusts it, the
    settings it may not set untrusted are left out and listed in `config.project`."""
    content = read_config_bytes(path)
    project = ProjectFile(path, digest(content), store)
    project.trusted = trusted or is_trusted(path, project.digest, store)
    config.project = project
    data = parse_yaml(path, content)
    if not project.trusted:
        data, left_out = _leave_out_untrusted(data, project, config.site)
        # Checked all the same (a broken file is an error, trusted or not), never applied nor expanded.
        for key, value in _flatten(left_out, path, {}, set()).items():
            if not key.startswith(f"{MCP_SERVERS}."):
                _coerce(value, _field_type(key), key, str(path))
    return _flatten(data, path, env, config.from_variables)


def _leave_out_untrusted(data: Any, project: ProjectFile, site: SitePolicy) -> tuple[Any, dict[str, Any]]:
    """`data` without the settings that need trust (recorded in `project.ignored`), and those left out that take
    nothing from the environment (to be checked). Unknown sections and keys stay, to be refused as in any file;
    settings the site locks stay too, to be refused as locked (trust would not change them)."""
    left_out: dict[str, Any] = {}
    if not isinstance(data, dict):
        return data, left_out
    kept: dict[Any, Any] = {}
    for section, values in data.items():
        if section not in _SECTIONS or not isinstance(values, dict):
            kept[section] = values
            continue
        if section == "mcp":
            servers = values.get("servers")
            kept[section] = {key: value for key, value in values.items() if key != "servers"}
            if isinstance(servers, dict):
                locked = {name: raw for name, raw in servers.items() if site.locked_by(f"{MCP_SERVERS}.{name}")}
                if locked:
                    kept[section]["servers"] = locked
                for name, raw in servers.items():
                    if name not in locked:
                        project.ignored[f"{MCP_SERVERS}.{name}"] = _shown_server(raw)
                        if not _takes_variables(raw):
                            left_out.setdefault("mcp", {}).setdefault("servers", {})[name] = raw
            elif servers is not None:
                kept[section]["servers"] = servers  # not a mapping: the usual error
            continue
        known = {f.name for f in fields(_SECTIONS[section])}
        kept[section] = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted == "llm.extra_params" and isinstance(value, dict) and site.locked_by(dotted) is None \
                    and not _takes_variables(value):
                allowed, untrusted = _safe_params(value)
                if allowed or not untrusted:
                    kept[section][key] = allowed
                for name, item in untrusted.items():
                    project.ignored[f"{dotted}.{name}"] = _shown_value(dotted, item)
                    left_out.setdefault(section, {}).setdefault(key, {})[name] = item
                continue
            if key not in known or site.locked_by(dotted) is not None or _safe_in_project(dotted, value):
                kept[section][key] = value
            else:
                project.ignored[dotted] = _shown_value(dotted, value)
                if not _takes_variables(value):
                    left_out.setdefault(section, {})[key] = value
    return kept, left_out


def _safe_in_project(key: str, value: Any) -> bool:
    if _takes_variables(value):  # ${VAR}: the user's environment would go into requests
        return False
    if key == "agent.approval_mode":
        return value in PROJECT_SAFE_APPROVAL_MODES
    if key == "agent.instructions_files":  # the documented names only: `.env` would go to the model
        names = [value] if isinstance(value, str) else value
        return isinstance(names, list) and all(name in PROJECT_SAFE_INSTRUCTIONS for name in names)
    return key in PROJECT_SAFE_KEYS


def _without_product_params(config: Config, params: dict[str, Any], where: str) -> dict[str, Any]:
    """`params` without the keys the product sets itself (`PRODUCT_PARAMS`), each refused with one line."""
    for name in PRODUCT_PARAMS:
        if name in params:
            hint = _PRODUCT_PARAM_HINTS.get(name, "auto-coder sets it for each request")
            config.warnings.append(f"{where}: llm.extra_params.{name} is refused: auto-coder sets {name} itself "
                                   f"({hint})")
    return {name: value for name, value in params.items() if name not in PRODUCT_PARAMS}


def _safe_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """An untrusted project file's llm.extra_params split into those it may set (sampling, and the product's own
    keys, which `_set` refuses in any file) and those that need trust."""
    allowed = PROJECT_SAFE_PARAMS.union(PRODUCT_PARAMS)
    return ({name: value for name, value in params.items() if name in allowed},
            {name: value for name, value in params.items() if name not in allowed})


def _takes_variables(value: Any) -> bool:
    if isinstance(value, str):
        return _VAR.search(value) is not None
    if isinstance(value, dict):
        return any(_takes_variables(item) for item in [*value.keys(), *value.values()])
    if isinstance(value, list):
        return any(_takes_variables(item) for item in value)
    return False


def _shown_value(key: str, value: Any) -> str:
    """A setting's value for the trust question and notices: secrets masked, control characters escaped."""
    if key == "llm.auth_headers" and not isinstance(value, dict):
        return "<hidden>"
    if key in ("llm.proxy", "llm.base_url") and not isinstance(value, str):
        return show_controls(repr(value))
    return show_controls(repr(mask(key, value)))


def _shown_server(raw: Any) -> str:
    """An MCP server entry as written (not yet checked): what it runs or reaches; env and header values hidden."""
    if not isinstance(raw, dict):
        return show_controls(repr(raw))
    if raw.get("url") is not None:
        where = f"url {redact_url(str(raw['url']))}"
        if isinstance(raw.get("headers"), dict):
            where += f" headers {', '.join(map(str, raw['headers']))}"
    else:
        args = raw.get("args")
        args = args if isinstance(args, list) else []
        where = "command " + " ".join(map(str, [raw.get("command", ""), *args]))
        if isinstance(raw.get("env"), dict):
            where += f" env {', '.join(map(str, raw['env']))}"
    return show_controls(where)


def _flatten(data: Any, path: Path, env: Mapping[str, str], taken: set[str], site: bool = False) -> dict[str, Any]:
    """A file's settings as dotted keys, ${VAR}s expanded; `site` files may also hold locked and allow."""
    sections = [*_SECTIONS, *(("locked", "allow") if site else ())]
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with sections {', '.join(sections)}")
    flat: dict[str, Any] = {}
    for section, values in data.items():
        if section in ("locked", "allow"):
            hint = "; locked and allow belong in a site file (/etc/auto-coder/config.yaml or $AUTO_CODER_SITE_CONFIG)"
        else:
            hint = ""
        if section not in _SECTIONS:
            raise ConfigError(f"{path}: unknown section {section!r}; expected one of {', '.join(sections)}{hint}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of settings")
        if section == "mcp":
            flat.update(_mcp_servers(values, path, env, taken))
            continue
        for key, value in values.items():
            missing: list[tuple[str, str]] = []
            # Who is asking is no secret: a user name hidden everywhere would garble paths and outputs.
            used = set() if f"{section}.{key}" in IDENTITY_KEYS else taken
            flat[f"{section}.{key}"] = _expand(value, f"{section}.{key}", path, env, used, missing)
            if missing:  # an error only where the value is used, unless a later file, variable or flag sets it
                flat[f"{section}.{key}"] = UnsetVariable(path, *missing[0])
    return flat


def _expand(value: Any, key: str, path: Path, env: Mapping[str, str], taken: set[str],
            missing: list[tuple[str, str]]) -> Any:
    """Replace ${VAR} (or ${VAR:-default}) in strings from the environment; the values used go in `taken`. A
    variable that is not set (and has no default) stays as written, and (key, variable) goes in `missing`."""
    if isinstance(value, str):
        def repl(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                taken.add(env[name])
                return env[name]
            if default is not None:
                return default
            missing.append((key, name))
            return m.group(0)
        return _VAR.sub(repl, value)
    if isinstance(value, dict):
        return {k: _expand(v, f"{key}.{k}", path, env, taken, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, key, path, env, taken, missing) for v in value]
    return value


def _mcp_servers(values: dict[str, Any], path: Path, env: Mapping[str, str],
                 taken: set[str]) -> dict[str, McpServerConfig]:
    """The `mcp:` section as one `mcp.servers.NAME` entry per server (a later file replaces a server of the
    same name and keeps the others)."""
    unknown = [key for key in values if key != "servers"]
    if unknown:
        raise ConfigError(f"{path}: unknown key 'mcp.{unknown[0]}'; known keys in mcp: servers")
    servers = values.get("servers") or {}
    if not isinstance(servers, dict):
        raise ConfigError(f"{path}: {MCP_SERVERS}: expected a mapping of server names to settings")
    found = {f"{MCP_SERVERS}.{name}": _mcp_server(str(name), raw, path, env) for name, raw in servers.items()}
    for server in found.values():
        taken.update(server.secrets)
    return found


def _mcp_server(name: str, raw: Any, path: Path, env: Mapping[str, str]) -> McpServerConfig:
    key = f"{MCP_SERVERS}.{name}"
    if not _MCP_SERVER_NAME.match(name):
        raise ConfigError(f"{path}: {key}: a server name uses letters, digits, _ and - (it prefixes its tools' "
                          "names)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping with command (stdio) or url (streamable HTTP)")
    settings = dict(raw)
    kind = settings.pop("type", None)
    for field_name in settings:
        if field_name not in MCP_SERVER_FIELDS:
            raise ConfigError(f"{path}: {key}: unknown field {field_name!r}; known fields: type, "
                              f"{', '.join(MCP_SERVER_FIELDS)}")
    if kind is not None and kind not in MCP_TRANSPORT_TYPES:
        raise ConfigError(f"{path}: {key}.type: expected one of {', '.join(MCP_TRANSPORT_TYPES)}, got {kind!r}"
                          + (" (SSE servers are not supported: use the server's streamable-HTTP URL)"
                             if kind == "sse" else ""))
    has_command, has_url = settings.get("command") is not None, settings.get("url") is not None
    if has_command == has_url:
        raise ConfigError(f"{path}: {key}: " + ("give command or url, not both" if has_command else
                                                "missing command (a stdio server) or url (a streamable-HTTP server)"))
    transport = "stdio" if has_command else "http"
    if kind is not None and MCP_TRANSPORT_TYPES[kind] != transport:
        raise ConfigError(f"{path}: {key}: type {kind} needs " + ("command" if kind == "stdio" else "url"))
    for stdio_only in ("args", "env", "cwd"):
        if transport == "http" and stdio_only in settings:
            raise ConfigError(f"{path}: {key}.{stdio_only}: only for a stdio server (with command)")
    if transport == "stdio" and "headers" in settings:
        raise ConfigError(f"{path}: {key}.headers: only for a streamable-HTTP server (with url)")
    taken: set[str] = set()
    missing: list[tuple[str, str]] = []
    settings = _expand(settings, key, path, env, taken, missing)
    server = McpServerConfig(secrets=sorted(taken), unset=UnsetVariable(path, *missing[0]) if missing else None)
    for field_name, value in settings.items():
        kind_name = str(next(f.type for f in fields(McpServerConfig) if f.name == field_name))
        try:
            setattr(server, field_name, _coerce(value, kind_name, f"{key}.{field_name}", str(path)))
        except ConfigError as exc:
            if server.unset is None:  # else a ${VAR} left as written may be what is wrong: said when it starts
                raise ConfigError(hide_secrets(str(exc), server.secrets)) from None
    if server.unset is not None:
        return server  # not started (McpServers says why); its ${VAR}s stay as written
    if server.command is not None and not server.command.strip():
        raise ConfigError(f"{path}: {key}.command: expected a program to run, got an empty string")
    if server.url is not None and not server.url.startswith(("http://", "https://")):
        raise ConfigError(f"{path}: {key}.url: expected a URL starting with http:// or https://")
    return server


def _parse_env(key: str, raw: str) -> Any:
    """An environment variable's text for `key`: true/false words for a switch (null too where it may be unset);
    anything else as given, for _coerce to read or refuse like a flag's text (numbers only when plain)."""
    kind = _field_type(key)
    if kind.startswith("bool"):
        word = raw.strip().lower()
        if word in ("1", "true", "yes", "on"):
            return True
        if word in ("0", "false", "no", "off"):
            return False
        if "None" in kind and word in ("null", "none"):
            return None
    return raw


def _field_type(key: str) -> str:
    section, name = key.split(".", 1)
    for f in fields(_SECTIONS[section]):
        if f.name == name:
            return str(f.type)
    raise KeyError(key)


def _set(config: Config, key: str, value: Any, source: str, *, where: str) -> None:
    locked_by = config.site.locked_by(key)
    if locked_by is not None and not source.startswith("site "):
        refusal = f"{key} is locked by the administrator ({locked_by})"
        if source.startswith("flag "):
            raise ConfigError(f"{where}: {refusal}")
        config.warnings.append(f"{where}: {refusal}; the site's value is kept")
        return
    if key.startswith(f"{MCP_SERVERS}."):
        config.mcp.servers[key.removeprefix(f"{MCP_SERVERS}.")] = value
        config.sources[key] = source
        return
    section, _, name = key.partition(".")
    try:
        kind = _field_type(key)
    except KeyError:
        known = ", ".join(f.name for f in fields(_SECTIONS[section]))
        raise ConfigError(f"{where}: unknown key {key!r}; known keys in {section}: {known}") from None
    if isinstance(value, UnsetVariable):  # the default meanwhile, never an earlier file's value
        setattr(getattr(config, section), name, getattr(_SECTIONS[section](), name))
        config.sources[key] = source
        config.unset[key] = value
        return
    value = _coerce(value, kind, key, where)
    if key == "llm.extra_params":
        value = _without_product_params(config, value, where)
    setattr(getattr(config, section), name, value)
    config.sources[key] = source
    if key in MODULE_KEYS:
        if source.startswith(("file ", "site ")):
            config.folders[key] = Path(where).resolve().parent  # where the file lives, not where a link to it is
        else:
            config.folders.pop(key, None)
    config.unset.pop(key, None)


# Settings that say who is asking: not secrets, so a ${VAR} they take (${JUPYTERHUB_USER}) is not hidden.
IDENTITY_KEYS = ("llm.user", "llm.user_header")
MAX_USER_CHARS = 256
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)
# Headers the client sets itself: a user header may not replace them.
RESERVED_HEADERS = {"authorization", "content-type", "content-length", "host", "x-correlation-id",
                    "proxy-authorization", "transfer-encoding", "connection", "accept"}


def _check_identity(key: str, value: str) -> str | None:
    """What is wrong with llm.user or llm.user_header, as `expected ...`, else None."""
    if key == "llm.user":
        if not value.strip() or len(value) > MAX_USER_CHARS or not value.isprintable():
            return f"a user name of 1 to {MAX_USER_CHARS} printable characters"
    elif not _HEADER_NAME.fullmatch(value) or value.lower() in RESERVED_HEADERS:
        return "an HTTP header name (letters, digits, -) other than " + ", ".join(sorted(RESERVED_HEADERS))
    return None


# Numbers given as text (always, from the environment and flags; quoted in a file) are read only when they are
# written plainly: digits, and for seconds a decimal point. "1e3", "inf", "nan", "0x10", "1_000", "30s" are refused.
_WHOLE_NUMBER = re.compile(r"[0-9]+")
_DECIMAL_NUMBER = re.compile(r"[0-9]+(\.[0-9]*)?|\.[0-9]+")
DAY = 86400.0
# The largest value of each number setting (each must be above 0): beyond is surely a mistake, and some would
# overflow where they are used (a timer, a date).
NUMBER_LIMITS: dict[str, float] = {
    "llm.timeout": DAY,
    "llm.max_tokens": 10_000_000,
    "agent.max_iterations": 100_000,
    "agent.max_tool_calls_per_answer": 100_000,
    "agent.command_timeout": DAY,
    "agent.context_window": 100_000_000,
    "agent.image_max_side": 16_384,
    "agent.max_images": 1_000,
    "auth.token_lifetime": 365 * DAY,
    "auth.token_command_timeout": 3600.0,
    "history.retention_days": 36_500,
    f"{MCP_SERVERS}.*.timeout": DAY,
    f"{MCP_SERVERS}.*.startup_timeout": DAY,
}


def _number_range(key: str) -> float:
    if key.startswith(f"{MCP_SERVERS}."):
        key = f"{MCP_SERVERS}.*.{key.rsplit('.', 1)[-1]}"
    return NUMBER_LIMITS.get(key, 1e9)  # a new number setting belongs in the table (tests/test_config.py checks)


def _check_json(value: Any, key: str, where: str) -> None:
    """`value` must travel as JSON (it goes into every request body): strings, finite numbers, true/false, null,
    lists and mappings with string keys; not NaN or infinity, not a date."""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                raise ConfigError(f"{where}: {key}: keys must be strings, got {name!r}")
            _check_json(item, f"{key}.{name}", where)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, key, where)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: {key}: expected a finite number (JSON has no {value!r}), got {value!r}")
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise ConfigError(f"{where}: {key}: expected a JSON value (text, number, true/false, null, list, mapping), "
                          f"got {type(value).__name__} {str(value)!r}")


def _coerce(value: Any, kind: str, key: str, where: str) -> Any:
    def wrong(expected: str) -> ConfigError:
        shown = "<hidden>" if key in SECRET_KEYS or key.endswith((".env", ".headers")) else repr(value)
        return ConfigError(f"{where}: {key}: expected {expected}, got {shown}")

    optional = "None" in kind
    if value is None:
        if optional:
            return None
        raise wrong("a value")
    if kind.startswith("str"):
        if not isinstance(value, str):
            raise wrong("a string")
        if key == "agent.approval_mode" and value not in APPROVAL_MODES:
            raise wrong("one of " + ", ".join(APPROVAL_MODES))
        if key == "llm.tool_calling" and value not in TOOL_CALLING_MODES:
            raise wrong("one of " + ", ".join(TOOL_CALLING_MODES))
        if key == "llm.model" and not value.strip():
            raise wrong("a model name")
        if key == "llm.base_url" and not value.startswith(("http://", "https://")):
            raise wrong("a URL starting with http:// or https://, like http://localhost:11434/v1")
        problem = _check_identity(key, value) if key in IDENTITY_KEYS else None
        if problem is not None:
            raise wrong(problem)
        return value
    if kind.startswith("bool"):
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise wrong("true or false")
        return value
    if kind.startswith("int"):
        if optional and isinstance(value, str) and value.strip().lower() in ("null", "none"):
            return None  # from a flag or the environment, where there is no YAML null
        if isinstance(value, str) and _WHOLE_NUMBER.fullmatch(value.strip()):
            value = int(value)
        highest = _number_range(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= highest:
            raise wrong("a positive whole number" + (" or null" if optional else "") + f" (at most {highest:,})")
        return value
    if kind == "float":
        number: float | None = None
        if isinstance(value, str) and _DECIMAL_NUMBER.fullmatch(value.strip()):
            number = float(value)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        highest = _number_range(key)
        if number is None or not math.isfinite(number) or not 0 < number <= highest:
            raise wrong(f"a positive number of seconds (at most {highest:,g})")
        return number
    if kind.startswith("dict[str, str]"):
        if not isinstance(value, dict) or not all(isinstance(v, (str, int, float)) for v in value.values()):
            raise wrong("a mapping of header names to string values")
        return {str(k): str(v) for k, v in value.items()}
    if kind.startswith("dict"):
        if not isinstance(value, dict):
            raise wrong("a mapping")
        if key == "llm.extra_params":
            _check_json(value, key, where)
        return dict(value)
    if kind.startswith("list"):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise wrong("a list of strings")
        return list(value)
    raise AssertionError(f"unhandled type {kind} for {key}")
