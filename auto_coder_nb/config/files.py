"""A configuration file's settings: the file read safely (a regular file of bounded size, UTF-8, YAML within limits
on aliases, values and nesting; files from a cloned project are read before they are trusted, so nothing in one
may exhaust memory or time), then flattened to dotted keys with ${VAR}s expanded, and its MCP servers checked."""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..text import hide_secrets, show_controls
from .coercion import coerce
from .schema import (
    IDENTITY_KEYS,
    MCP_SERVER_FIELDS,
    MCP_SERVER_NAME,
    MCP_SERVERS,
    MCP_TRANSPORT_TYPES,
    SECTIONS,
    McpServerConfig,
    UnsetVariable,
)

if TYPE_CHECKING:  # PyYAML loads when a file is read, not when the package is imported (start-up time)
    import yaml

# Limits on a configuration file (a few lines in practice): what a hostile file (a cloned project's) could use to
# exhaust memory or time. Aliases are counted, and the size of the document with every alias expanded is too
# (ten aliases of ten aliases of ... make a billion nodes from a few hundred bytes).
MAX_CONFIG_BYTES = 256 * 1024
MAX_YAML_ALIASES = 100
MAX_YAML_DEPTH = 32
MAX_YAML_NODES = 10_000


class _YamlLimit(Exception):
    """A configuration file beyond one of the limits above."""


@functools.cache
def _limited_loader() -> type[yaml.SafeLoader]:
    import yaml

    class LimitedLoader(yaml.SafeLoader):
        """PyYAML's safe loader, refusing more than MAX_YAML_ALIASES aliases or MAX_YAML_NODES values, and nesting
        deeper than MAX_YAML_DEPTH, while it reads (the pure-Python parser takes seconds for a hundred thousand
        values)."""

        def __init__(self, stream: str) -> None:
            super().__init__(stream)
            self.aliases = 0
            self.depth = 0
            self.nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self.aliases += 1
                if self.aliases > MAX_YAML_ALIASES:
                    raise _YamlLimit(f"more than {MAX_YAML_ALIASES} aliases (*name); write the values out")
            self.nodes += 1
            if self.nodes > MAX_YAML_NODES:
                raise _YamlLimit(f"more than {MAX_YAML_NODES} values")
            self.depth += 1
            try:
                if self.depth > MAX_YAML_DEPTH:
                    raise _YamlLimit(f"nested more than {MAX_YAML_DEPTH} levels deep")
                return super().compose_node(parent, index)
            finally:
                self.depth -= 1

    return LimitedLoader


def _expanded_size(node: yaml.Node) -> int:
    """How many nodes `node` stands for with every alias expanded; _YamlLimit past MAX_YAML_NODES, or when an
    alias refers to a node that contains it (a structure that never ends)."""
    import yaml

    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (nodes, height)
    open_nodes: set[int] = set()

    def measure(node: yaml.Node, depth: int) -> tuple[int, int]:
        if id(node) in open_nodes:
            raise _YamlLimit("an alias refers to a node that contains it")
        known = sizes.get(id(node))
        if known is None:
            if depth > MAX_YAML_DEPTH:
                raise _YamlLimit(f"nested more than {MAX_YAML_DEPTH} levels deep once aliases are expanded")
            children: list[yaml.Node] = []
            if isinstance(node, yaml.SequenceNode):
                children = list(node.value)
            elif isinstance(node, yaml.MappingNode):
                children = [part for pair in node.value for part in pair]
            open_nodes.add(id(node))
            measured = [measure(child, depth + 1) for child in children]
            open_nodes.discard(id(node))
            known = sizes[id(node)] = (1 + sum(n for n, _ in measured), 1 + max((h for _, h in measured), default=0))
        if depth + known[1] > MAX_YAML_DEPTH + 1:
            raise _YamlLimit(f"nested more than {MAX_YAML_DEPTH} levels deep once aliases are expanded")
        if known[0] > MAX_YAML_NODES:
            raise _YamlLimit(f"more than {MAX_YAML_NODES} values once aliases are expanded")
        return known

    return measure(node, 1)[0]


def read_config_bytes(path: Path) -> bytes:
    """A configuration file's content: a regular file (not a folder, a FIFO or a device, which could block or
    never end) of at most MAX_CONFIG_BYTES."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise ConfigError(f"{path}: is a folder, not a configuration file")
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        try:
            content = file.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(content) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a configuration file is a few lines")
    return content


def parse_yaml(path: Path, content: bytes) -> Any:
    """The YAML document in `content` (UTF-8, within the limits above), or a one-line ConfigError naming `path`."""
    if len(content) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a configuration file is a few lines")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1} cannot be decoded); save it as UTF-8") \
            from None
    import yaml

    loader: yaml.SafeLoader | None = None
    try:
        loader = _limited_loader()(text)
        node = loader.get_single_node()
        if node is None:
            return None
        _expanded_size(node)
        return loader.construct_document(node)
    except _YamlLimit as exc:
        raise ConfigError(f"{path}: refused: {exc}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{path}: malformed YAML: character U+{exc.character:04X} at position {exc.position + 1} "
                          "is not allowed (a control character)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(exc, "problem", None) or "invalid YAML").split())
        raise ConfigError(f"{path}: malformed YAML{at}: {problem}") from None
    except RecursionError:  # the limits above should make this impossible; never a traceback
        raise ConfigError(f"{path}: refused: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def load_yaml(path: Path) -> Any:
    return parse_yaml(path, read_config_bytes(path))


# ${VAR} or ${VAR:-default} in a file's value: the environment's value (a secret, unless IDENTITY_KEYS).
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def check_expanded(var: str, value: str, env: Mapping[str, str]) -> None:
    """An environment variable is used as it is, so a ${NAME} in its value is one nobody expanded (JupyterHub's
    `c.Spawner.environment` passes values as written): a ConfigError naming both, never a literal ${NAME} sent."""
    found = VARIABLE.search(value)
    if found is None:
        return
    name = found.group(1)
    state = "is not set either" if name not in env else "is set, but a variable's value is not expanded"
    raise ConfigError(f"{var} is {show_controls(repr(value))}: ${{{name}}} was never expanded ({name} {state}). "
                      f"Environment variables are used as they are (JupyterHub's c.Spawner.environment passes its "
                      f"values as written): set the value itself, or write ${{{name}}} in a config file, where it is "
                      f"expanded")


def not_a_file(path: Path, what: str) -> str:
    """Why `path`, named explicitly, cannot be read as a configuration file."""
    if path.is_dir():
        return f"{what} {path} is a folder; give the path of a YAML file"
    if path.exists():
        return f"{what} {path} is not a regular file"
    return f"{what} {path} does not exist"


def read_file(path: Path, env: Mapping[str, str], taken: set[str]) -> dict[str, Any]:
    """A trusted file's settings (the user's own, --config's): read, flattened, ${VAR}s expanded."""
    return flatten(load_yaml(path), path, env, taken)


def takes_variables(value: Any) -> bool:
    if isinstance(value, str):
        return VARIABLE.search(value) is not None
    if isinstance(value, dict):
        return any(takes_variables(item) for item in [*value.keys(), *value.values()])
    if isinstance(value, list):
        return any(takes_variables(item) for item in value)
    return False


def flatten(data: Any, path: Path, env: Mapping[str, str], taken: set[str], site: bool = False) -> dict[str, Any]:
    """A file's settings as dotted keys, ${VAR}s expanded; `site` files may also hold locked and allow."""
    sections = [*SECTIONS, *(("locked", "allow") if site else ())]
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
        if section not in SECTIONS:
            raise ConfigError(f"{path}: unknown section {section!r}; expected one of {', '.join(sections)}{hint}")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: {section}: expected a mapping of settings")
        if section == "mcp":
            flat.update(mcp_servers(values, path, env, taken))
            continue
        for key, value in values.items():
            missing: list[tuple[str, str]] = []
            # Who is asking is no secret: a user name hidden everywhere would garble paths and outputs.
            used = set() if f"{section}.{key}" in IDENTITY_KEYS else taken
            flat[f"{section}.{key}"] = expand(value, f"{section}.{key}", path, env, used, missing)
            if missing:  # an error only where the value is used, unless a later file, variable or flag sets it
                flat[f"{section}.{key}"] = UnsetVariable(path, *missing[0])
    return flat


def expand(value: Any, key: str, path: Path, env: Mapping[str, str], taken: set[str],
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
        return VARIABLE.sub(repl, value)
    if isinstance(value, dict):
        return {k: expand(v, f"{key}.{k}", path, env, taken, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, key, path, env, taken, missing) for v in value]
    return value


def mcp_servers(values: dict[str, Any], path: Path, env: Mapping[str, str],
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
    if not MCP_SERVER_NAME.match(name):
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
    settings = expand(settings, key, path, env, taken, missing)
    server = McpServerConfig(secrets=sorted(taken), unset=UnsetVariable(path, *missing[0]) if missing else None)
    for field_name, value in settings.items():
        kind_name = str(next(f.type for f in fields(McpServerConfig) if f.name == field_name))
        try:
            setattr(server, field_name, coerce(value, kind_name, f"{key}.{field_name}", str(path)))
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
