"""`load_config`: defaults < site files < the user's file < the project's (trusted or not) < --config < environment
< flags, with the source of every value; `_set` is the one place a value is checked, coerced and refused when the
site locks its key."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..trust import store_path
from .coercion import coerce, parse_env
from .files import check_expanded, not_a_file, read_file
from .project import read_project_file, without_product_params
from .schema import CONFIG_FILENAME, MCP_SERVERS, MODULE_KEYS, SECTIONS, Config, UnsetVariable, field_type
from .site import check_site_allows, read_site_files

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
    for path, settings in read_site_files(config, env):
        for key, value in settings.items():
            _set(config, key, value, f"site {path}", where=str(path))

    project = cwd / CONFIG_FILENAME
    candidates = [home / CONFIG_FILENAME, project]
    trusted = {(home / CONFIG_FILENAME).resolve()}  # the user's own file, and one named with --config
    if config_path is not None:
        explicit = Path(config_path).expanduser()
        if not explicit.is_file():
            raise ConfigError(not_a_file(explicit, "config file"))
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
            settings = read_project_file(config, path, env, store_path(env, home), trust_project)
        else:
            settings = read_file(path, env, config.from_variables)
        for key, value in settings.items():
            _set(config, key, value, f"file {path}", where=str(path))
        config.files.append(path)

    if "llm.api_key" not in config.sources and env.get("OPENAI_API_KEY"):
        _set(config, "llm.api_key", env["OPENAI_API_KEY"], "env OPENAI_API_KEY", where="OPENAI_API_KEY")
    for var, key in ENV_VARS.items():
        if env.get(var):
            check_expanded(var, env[var], env)
            _set(config, key, parse_env(key, env[var]), f"env {var}", where=var)

    for key, value in (flags or {}).items():
        if value is not None:
            flag = f"--{key.split('.')[-1].replace('_', '-')}"
            _set(config, key, value, f"flag {flag}", where=flag)
    check_site_allows(config)
    return config


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
        kind = field_type(key)
    except KeyError:
        known = ", ".join(f.name for f in fields(SECTIONS[section]))
        raise ConfigError(f"{where}: unknown key {key!r}; known keys in {section}: {known}") from None
    if isinstance(value, UnsetVariable):  # the default meanwhile, never an earlier file's value
        setattr(getattr(config, section), name, getattr(SECTIONS[section](), name))
        config.sources[key] = source
        config.unset[key] = value
        return
    value = coerce(value, kind, key, where)
    if key == "llm.extra_params":
        value = without_product_params(config, value, where)
    setattr(getattr(config, section), name, value)
    config.sources[key] = source
    if key in MODULE_KEYS:
        if source.startswith(("file ", "site ")):
            config.folders[key] = Path(where).resolve().parent  # where the file lives, not where a link to it is
        else:
            config.folders.pop(key, None)
    config.unset.pop(key, None)
