"""Which project config files the user trusts.

A project's `./.auto-coder.yaml` (the working folder's, or the notebook's folder in Jupyter) comes with the code
the user cloned, so until the user trusts it, `config.load_config` ignores its settings that could run commands or
send the user's credentials elsewhere (see `config.PROJECT_SAFE_KEYS`). Trust is recorded in the user's config
folder (`$XDG_CONFIG_HOME/auto-coder/trusted.json`, else `~/.config/auto-coder/trusted.json`; folder 0700, file
0600), keyed by the file's path (its folder resolved, a link not followed) and the sha256 of its content: a changed
file (a `git pull`) is untrusted again, and a link to a trusted file is not that file.
User (`~/.auto-coder.yaml`), site and explicit `--config` files are always trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .private import private_folder

STORE_NAME = "trusted.json"
# How to trust a project file, in each face's words.
HOW_TO_TRUST = {
    "cli": "run auto-coder --trust-project once (or /trust in the REPL)",
    "kernel": "run %autocoder --trust-project (or press Trust this folder in the chat panel)",
    "acp": "run auto-coder --trust-project once in that folder, then start a new session",
    "any": "auto-coder --trust-project, /trust in the REPL, %autocoder --trust-project in a notebook, or the chat "
           "panel's Trust this folder button",
}


def store_path(env: Mapping[str, str] | None = None, home: Path | None = None) -> Path:
    """Where trust is recorded: `$XDG_CONFIG_HOME/auto-coder/trusted.json`, else `~/.config/auto-coder/...`."""
    env = os.environ if env is None else env
    base = env.get("XDG_CONFIG_HOME") or str((Path.home() if home is None else home) / ".config")
    return Path(base).expanduser() / "auto-coder" / STORE_NAME


def digest(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def _read_store(store: Path) -> dict[str, Any]:
    """The recorded files ({resolved path: {"sha256": ..., "trusted_at": ...}}); empty when unreadable."""
    try:
        data = json.loads(store.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    files = data.get("files") if isinstance(data, dict) else None
    return files if isinstance(files, dict) else {}


def _key(path: Path) -> str:
    """The file as it is where it is: its folder resolved, but not the file itself. A repository's
    `.auto-coder.yaml` that is a link to a file the user trusted elsewhere is another file, trusted only if the
    user trusts it there (and its modules are imported from where the linked file lives)."""
    return str(path.absolute().parent.resolve() / path.name)


def is_trusted(path: Path, content_digest: str, store: Path) -> bool:
    entry = _read_store(store).get(_key(path))
    return isinstance(entry, dict) and entry.get("sha256") == content_digest


def record(path: Path, content_digest: str, store: Path) -> None:
    """Trust `path` with this content from now on (written atomically, readable by the user only). Raises OSError."""
    files = _read_store(store)
    files[_key(path)] = {"sha256": content_digest,
                                  "trusted_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    private_folder(store.parent)
    descriptor, temporary = tempfile.mkstemp(prefix=".trusted-", dir=store.parent)
    try:
        os.fchmod(descriptor, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            json.dump({"version": 1, "files": files}, out, indent=1, sort_keys=True)
        os.replace(temporary, store)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@dataclass
class ProjectFile:
    """The project's config file as `load_config` read it: whether it is trusted and, if not, the settings it
    wanted that were ignored (`ignored`: dotted key -> the value as shown, control characters escaped and
    secrets masked). `digest` is the sha256 of the content read, so trusting records exactly what was shown."""

    path: Path
    digest: str
    store: Path
    trusted: bool = False
    ignored: dict[str, str] = field(default_factory=dict)

    @property
    def needs_trust(self) -> bool:
        return not self.trusted and bool(self.ignored)

    def trust(self) -> None:
        """Record trust for the content that was read (a file changed since stays untrusted). Raises OSError."""
        record(self.path, self.digest, self.store)
        self.trusted = True

    def notice(self, face: str = "any") -> str:
        """One line naming the ignored settings and how to trust the file."""
        return (f"Ignored settings of the untrusted project file {self.path} (they could run commands or send your "
                f"credentials elsewhere): {', '.join(self.ignored)}. To trust this file, {HOW_TO_TRUST[face]}; "
                f"trust is kept in {self.store} until the file changes.")

    def not_applied_now(self) -> str:
        """What trusting cannot change in a running session (the workspace root is set when it starts)."""
        later = [key for key in ("agent.working_dir",) if key in self.ignored]
        return f" ({', '.join(later)} applies from the next start.)" if later else ""

    def after_trusting(self, now: ProjectFile | None, face: str) -> str:
        """What to say once this file was trusted and the configuration read again (`now`: the project file as
        read then). A file changed in between stays untrusted: what was shown is not what is there."""
        if now is not None and now.needs_trust:
            return f"{self.path} changed since it was read, so it is still not trusted. {now.notice(face)}"
        if not self.ignored:
            return f"Trusted {self.path}."
        applied = "; ".join(f"{key} = {value}" for key, value in self.ignored.items())
        return (f"Trusted {self.path} (kept in {self.store} until the file changes). Now applied: {applied}."
                + self.not_applied_now())

    def describe(self) -> list[str]:
        """For --show-config and the doctor: each ignored setting and why."""
        if not self.needs_trust:
            return []
        return [*(f"ignored {key} = {value}  (file {self.path}, not trusted)" for key, value in self.ignored.items()),
                f"not trusted: {self.path}: the settings above could run commands or send your credentials "
                f"elsewhere, so they were ignored; to trust this file: {HOW_TO_TRUST['any']}"]
