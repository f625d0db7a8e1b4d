"""Reading a configuration file safely: a regular file of bounded size, UTF-8, and YAML within limits on
aliases, values and nesting, every problem one ConfigError line naming the file. Files from a cloned project
are read before anyone trusts them, so nothing in one may exhaust memory or time."""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

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
