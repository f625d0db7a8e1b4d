"""The site's configuration files (an administrator's): /etc/auto-coder/config.yaml and $AUTO_CODER_SITE_CONFIG, read
before the user's, with their `locked:` keys and `allow:` lists (a `SitePolicy`), and the check that the effective
endpoint, model and approval mode are allowed."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..approvals import APPROVAL_MODES
from ..errors import ConfigError
from ..site_policy import ALLOW_KEYS, ALLOW_LISTS, SITE_CONFIG, SITE_CONFIG_ENV, SitePolicy
from .files import check_expanded, flatten, load_yaml, not_a_file
from .schema import MCP_SERVERS, SECTIONS, Config


def site_files(env: Mapping[str, str]) -> list[Path]:
    """The site configuration files: /etc/auto-coder/config.yaml if it exists, then each file named in
    $AUTO_CODER_SITE_CONFIG (colon-separated), which must exist."""
    found = [SITE_CONFIG] if SITE_CONFIG.is_file() else []
    check_expanded(SITE_CONFIG_ENV, env.get(SITE_CONFIG_ENV, ""), env)
    for name in filter(None, env.get(SITE_CONFIG_ENV, "").split(os.pathsep)):
        path = Path(name).expanduser()
        if not path.is_file():
            raise ConfigError(f"{SITE_CONFIG_ENV}: {not_a_file(path, 'site configuration file')}")
        found.append(path)
    return found


def read_site_files(config: Config, env: Mapping[str, str]) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Site files, before the user's: each file's ordinary settings (for the source "site PATH"), after its
    `locked:` and `allow:` went into `config.site`. The caller sets each file's settings before the next is read."""
    site = config.site
    for path in site_files(env):
        data = load_yaml(path)
        if isinstance(data, dict):
            data = dict(data)
            _read_locks(site, data.pop("locked", None), path)
            _read_allows(site, data.pop("allow", None), path)
        yield path, flatten(data, path, env, config.from_variables, site=True)
        site.files.append(path)


def _read_locks(site: SitePolicy, locked: Any, path: Path) -> None:
    if locked is None:
        return
    if not isinstance(locked, list) or not all(isinstance(key, str) for key in locked):
        raise ConfigError(f"{path}: locked: expected a list of dotted keys, like [llm.base_url, agent.approval_mode]")
    for key in locked:
        section, _, name = key.partition(".")
        known = section in SECTIONS and (not name or key == MCP_SERVERS or key.startswith(f"{MCP_SERVERS}.")
                                         or name in {f.name for f in fields(SECTIONS[section])})
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


def check_site_allows(config: Config) -> None:
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
