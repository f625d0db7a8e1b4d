"""The user's own Python objects named in the configuration ("package.module:name"): agent.tools and auth.provider,
imported from the folder of the config file that named them first."""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    from .config import Config


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


def load_provider_class(spec: str, folder: Path | None = None) -> type:
    """The class named by `auth.provider` ("package.module:Class"); `folder`: that of the file that named it."""
    cls = load_object(spec, "auth.provider", folder)
    if not isinstance(cls, type):
        raise ConfigError(f"auth.provider: {spec} is not a class")
    return cls


def instantiate(cls: type, config: Config) -> Any:
    """An instance of a user's provider class, given the Config if its constructor takes `config`."""
    try:
        takes_config = "config" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        takes_config = False
    return cls(config=config) if takes_config else cls()
