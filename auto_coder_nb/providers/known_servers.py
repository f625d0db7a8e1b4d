"""What servers said about their models, remembered across runs: `servers.json` in the data folder (beside the
saved conversations, 0600).

Per server (its URL without credentials or query) and model: the capabilities it reported last and when, which
`--show-config` shows (the context window in use, and where it came from), and the notices already given about
it, so that a notice such as "this model has no native tool calling" is said once, not on every run. The
session still asks the server each time; this file never decides anything. An unreadable or damaged file is
taken as empty, and one that cannot be written only means a notice may be said again.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import suppress
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

from ..config import DEFAULT_CONTEXT_WINDOW, Config
from ..text import show_controls
from .capabilities import ModelCapabilities, plausible_window
from .openai_errors import safe_url

FILENAME = "servers.json"
MAX_BYTES = 1_048_576  # a larger file is not ours to read whole: taken as empty
MAX_ENTRIES = 200  # server and model pairs kept, the most recently seen


class KnownServers:
    def __init__(self, path: Path | None = None) -> None:
        if path is None:
            from ..history import data_dir

            path = data_dir() / FILENAME
        self.path = path

    def recall(self, base_url: str, model: str) -> dict[str, Any] | None:
        """What was last remembered of `model` at `base_url`: {"seen": UTC time, "capabilities": {...}}."""
        entry = self._read().get(_key(base_url, model))
        return entry if isinstance(entry, dict) and isinstance(entry.get("capabilities"), dict) else None

    def remember(self, base_url: str, model: str, capabilities: ModelCapabilities) -> None:
        """Note what the server reported (written only when it changed)."""
        entries = self._read()
        entry = entries.get(_key(base_url, model))
        entry = entry if isinstance(entry, dict) else {}
        if entry.get("capabilities") == asdict(capabilities):
            return
        from ..history import now

        entries[_key(base_url, model)] = {**entry, "seen": now(), "capabilities": asdict(capabilities)}
        self._write(entries)

    def first_time(self, base_url: str, model: str, notice: str) -> bool:
        """Whether `notice` about `model` at `base_url` is news (and from now on, remembered as said). True when the
        file cannot be written either: then it is said, as before there was a file."""
        entries = self._read()
        entry = entries.get(_key(base_url, model))
        entry = entry if isinstance(entry, dict) else {}
        said = entry.get("told")
        told: list[Any] = said if isinstance(said, list) else []
        digest = hashlib.sha256(notice.encode()).hexdigest()[:16]
        if digest in told:
            return False
        entries[_key(base_url, model)] = {**entry, "told": [*told, digest][-20:]}
        self._write(entries)
        return True

    def _read(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as stream:
                data = stream.read(MAX_BYTES + 1)
            found = json.loads(data) if len(data) <= MAX_BYTES else None
        except (OSError, ValueError, RecursionError):
            return {}
        entries = found.get("servers") if isinstance(found, dict) else None
        return entries if isinstance(entries, dict) else {}

    def _write(self, entries: dict[str, Any]) -> None:
        if len(entries) > MAX_ENTRIES:  # keep the most recently seen (entries without a time go first)
            newest = sorted(entries.items(), key=lambda item: str(item[1].get("seen", "")) if isinstance(item[1], dict)
                            else "")[-MAX_ENTRIES:]
            entries = dict(newest)
        temporary = self.path.with_name(f".{FILENAME}.{os.getpid()}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                json.dump({"v": 1, "servers": entries}, stream, indent=1)
            os.replace(temporary, self.path)  # readers see the old file or the new one, never half of one
        except OSError:
            with suppress(OSError):
                temporary.unlink()


def _key(base_url: str, model: str) -> str:
    try:
        return f"{safe_url(base_url.rstrip('/'))} {model}"
    except httpx.InvalidURL:  # nothing is sent to such a URL; keep its entry apart, without what it holds
        return f"(invalid URL) {model}"


def describe_context_window(config: Config, known: KnownServers | None = None) -> str:
    """The context window in use and where it comes from, for --show-config (which asks no server): the setting,
    else what the server last reported (each session asks it again), else the default."""
    if config.agent.context_window:
        source = config.sources.get("agent.context_window", "set in code")
        return f"context window in use: {config.agent.context_window} tokens (agent.context_window from {source})"
    entry = (known or KnownServers()).recall(config.llm.base_url, config.llm.model)
    if entry is None:
        return (f"context window in use: {DEFAULT_CONTEXT_WINDOW} tokens until the server is asked (not asked yet "
                "for this model: each session asks on its first request, --doctor asks now)")
    reported = plausible_window(entry["capabilities"].get("context_window"))
    seen = show_controls(str(entry.get("seen", "?")))
    if reported is None:
        return (f"context window in use: {DEFAULT_CONTEXT_WINDOW} tokens (the default: the server reported none "
                f"for this model, {seen})")
    source = show_controls(str(entry["capabilities"].get("context_source") or "the server"))
    return f"context window in use: {reported} tokens ({source}, as last reported {seen}; each session asks again)"
