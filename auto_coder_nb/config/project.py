"""The project's ./.auto-coder.yaml before the user trusts it: read once (the bytes hashed are the bytes parsed), only
the settings that neither run anything nor send requests elsewhere kept (an allow-list), the rest listed in
`config.project` (a `trust.ProjectFile`) and never expanded; and what llm.extra_params may never set, in any file."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..site_policy import SitePolicy
from ..text import show_controls
from ..trust import ProjectFile, digest, is_trusted
from .coercion import coerce
from .files import flatten, parse_yaml, read_config_bytes, takes_variables
from .schema import MCP_SERVERS, SECTIONS, Config, field_type, mask, redact_url

# What a project file may set before the user trusts it: settings that neither run anything nor change where
# requests (and the user's credentials) go. Everything else, including keys added later, needs trust.
PROJECT_SAFE_KEYS = frozenset({
    "llm.model", "llm.extra_params", "llm.timeout", "llm.vision", "llm.tool_calling", "llm.max_tokens",
    "agent.max_iterations", "agent.max_tool_calls_per_answer", "agent.command_timeout", "agent.context_window",
    "agent.image_max_side", "agent.max_images", "agent.instructions_files", "history.enabled",
    "llm.step_max_tokens", "agent.turn_timeout",
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


def read_project_file(config: Config, path: Path, env: Mapping[str, str], store: Path,
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
        for key, value in flatten(left_out, path, {}, set()).items():
            if not key.startswith(f"{MCP_SERVERS}."):
                coerce(value, field_type(key), key, str(path))
    return flatten(data, path, env, config.from_variables)


def _leave_out_untrusted(data: Any, project: ProjectFile, site: SitePolicy) -> tuple[Any, dict[str, Any]]:
    """`data` without the settings that need trust (recorded in `project.ignored`), and those left out that take
    nothing from the environment (to be checked). Unknown sections and keys stay, to be refused as in any file;
    settings the site locks stay too, to be refused as locked (trust would not change them)."""
    left_out: dict[str, Any] = {}
    if not isinstance(data, dict):
        return data, left_out
    kept: dict[Any, Any] = {}
    for section, values in data.items():
        if section not in SECTIONS or not isinstance(values, dict):
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
                        if not takes_variables(raw):
                            left_out.setdefault("mcp", {}).setdefault("servers", {})[name] = raw
            elif servers is not None:
                kept[section]["servers"] = servers  # not a mapping: the usual error
            continue
        known = {f.name for f in fields(SECTIONS[section])}
        kept[section] = {}
        for key, value in values.items():
            dotted = f"{section}.{key}"
            if dotted == "llm.extra_params" and isinstance(value, dict) and site.locked_by(dotted) is None \
                    and not takes_variables(value):
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
                if not takes_variables(value):
                    left_out.setdefault(section, {})[key] = value
    return kept, left_out


def _safe_in_project(key: str, value: Any) -> bool:
    if takes_variables(value):  # ${VAR}: the user's environment would go into requests
        return False
    if key == "agent.approval_mode":
        return value in PROJECT_SAFE_APPROVAL_MODES
    if key == "agent.instructions_files":  # the documented names only: `.env` would go to the model
        names = [value] if isinstance(value, str) else value
        return isinstance(names, list) and all(name in PROJECT_SAFE_INSTRUCTIONS for name in names)
    return key in PROJECT_SAFE_KEYS


def without_product_params(config: Config, params: dict[str, Any], where: str) -> dict[str, Any]:
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
