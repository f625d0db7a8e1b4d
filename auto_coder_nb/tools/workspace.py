"""The workspace: the one folder the tools work in, with atomic writes, per-turn checkpoints and undo.

Containment is decided on real paths (symlinks followed), component by component, so neither `..`,
a sibling folder sharing the root's name as a prefix, nor a symlink pointing out (dangling or not)
gets past it. `run_command` is not confined by this: approvals are what gate commands.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from ..config import CONFIG_FILENAME
from ..errors import ConfigError
from .registry import ToolError

MAX_UNDO_TURNS = 50
# Folders and files the file tools never write: history and our own settings (approval mode lives there).
PROTECTED_DIRS = {".git"}
PROTECTED_FILES = {CONFIG_FILENAME}


@dataclass
class _Snapshot:
    data: bytes | None  # None: the file did not exist
    mode: int | None


@dataclass
class _Turn:
    files: dict[Path, _Snapshot] = field(default_factory=dict)
    written: dict[Path, str] = field(default_factory=dict)  # hash of what the tools last wrote, per file
    created_dirs: list[Path] = field(default_factory=list)
    commands: int = 0

    @property
    def empty(self) -> bool:
        return not self.files and not self.created_dirs and not self.commands


class Workspace:
    """One root folder; every file tool resolves its paths through `resolve`."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        resolved = Path(root).expanduser().resolve()
        if not resolved.is_dir():
            raise ConfigError(f"working directory {resolved} does not exist or is not a folder")
        self.root = resolved
        self._turns: list[_Turn] = []
        self._read_hashes: dict[Path, str] = {}

    # -- paths ---------------------------------------------------------------------------------

    def resolve(self, path: str | os.PathLike[str], write: bool = False) -> Path:
        """The real path of `path` (relative to the root, or absolute inside it); ToolError outside it."""
        if not isinstance(path, (str, os.PathLike)):
            raise ToolError(f"path must be a string, got {type(path).__name__}.")
        text = os.fspath(path)
        if not isinstance(text, str) or not text.strip():
            raise ToolError("The path is empty. Give a path relative to the workspace root, e.g. 'src/main.py'.")
        if "\x00" in text:
            raise ToolError("The path contains a NUL character.")
        # Only "~" and "~/..." mean the home folder; "~draft.txt" is an ordinary name.
        candidate = Path(text).expanduser() if text == "~" or text.startswith("~/") else Path(text)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        # realpath follows every symlink, dangling ones included (their target is what a write would create).
        real = Path(os.path.realpath(candidate))
        if not real.is_relative_to(self.root):
            via = " (through a symbolic link)" if real != Path(os.path.normpath(candidate)) else ""
            raise ToolError(
                f"{text} is outside the workspace{via}: it resolves to {real}, and tools can only access "
                f"files under the workspace root {self.root}. Use a path inside the root."
            )
        if real.is_symlink():  # realpath stops on a loop and returns the link itself
            raise ToolError(f"{text} is a symbolic link that cannot be resolved (a loop of links).")
        if write:
            self._check_writable(text, real)
        return real

    def _check_writable(self, text: str, real: Path) -> None:
        parts = real.relative_to(self.root).parts
        if any(part in PROTECTED_DIRS for part in parts):
            raise ToolError(f"{text} is inside a protected folder ({', '.join(sorted(PROTECTED_DIRS))}); "
                            "the file tools do not write there.")
        if parts and parts[-1] in PROTECTED_FILES:
            raise ToolError(f"{text} holds auto-coder's own settings and is protected; ask the user to change it.")

    def relative(self, path: Path) -> str:
        """How a resolved path is shown to the model and the user: relative to the root."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return str(rel) if rel.parts else "."

    # -- turns, checkpoints and undo -----------------------------------------------------------

    def begin_turn(self) -> None:
        """Start a user turn: the changes from here on are undone together."""
        if not self._turns or not self._turns[-1].empty:
            self._turns.append(_Turn())
        del self._turns[:-MAX_UNDO_TURNS]

    def _turn(self) -> _Turn:
        if not self._turns:
            self._turns.append(_Turn())
        return self._turns[-1]

    def checkpoint(self, path: Path) -> None:
        """Remember a file's bytes (or that it did not exist) before its first change in this turn."""
        turn = self._turn()
        if path in turn.files:
            return
        try:
            mode = path.stat().st_mode & 0o7777
            turn.files[path] = _Snapshot(path.read_bytes(), mode)
        except FileNotFoundError:
            turn.files[path] = _Snapshot(None, None)

    def note_command(self) -> None:
        """A command ran in this turn: undo cannot revert what it did, and says so."""
        self._turn().commands += 1

    def make_parents(self, path: Path) -> list[Path]:
        """Create the missing folders above `path` (remembered for undo); returns the ones created."""
        missing = [parent for parent in reversed(path.parents) if not parent.exists()]
        for folder in missing:
            folder.mkdir()
            self._turn().created_dirs.append(folder)
        return missing

    def atomic_write(self, path: str | os.PathLike[str], data: bytes) -> None:
        """Checkpoint, then write through a temporary file in the same folder and rename it over the target.

        The file keeps its permission bits; if anything fails the old file is left as it was.
        """
        target = self.resolve(path, write=True)
        self.checkpoint(target)
        self.make_parents(target)
        _replace_file(target, data)
        self.note_read(target, data)
        self._turn().written[target] = _digest(data)

    def undo(self) -> str:
        """Restore the files changed in the last turn that changed any; a message says what was done."""
        commands = 0
        while self._turns and not self._turns[-1].files and not self._turns[-1].created_dirs:
            commands += self._turns.pop().commands
        if not self._turns:
            message = "Nothing to undo: no file was changed by a tool."
            return message + _commands_note(commands)
        turn = self._turns.pop()
        commands += turn.commands
        restored, removed, failed, overwritten = [], [], [], []
        for path, snapshot in reversed(turn.files.items()):
            if path in turn.written and _digest_of_file(path) != turn.written[path]:
                overwritten.append(self.relative(path))
            try:
                if snapshot.data is None:
                    if path.is_file() or path.is_symlink():
                        path.unlink()
                    removed.append(self.relative(path))
                else:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    _replace_file(path, snapshot.data, snapshot.mode)
                    restored.append(self.relative(path))
            except OSError as exc:
                failed.append(f"{self.relative(path)} ({exc.strerror or exc})")
        for folder in reversed(turn.created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty any more: something else put files there, keep them
        lines = []
        if restored:
            lines.append(f"Restored {len(restored)} file(s): {', '.join(sorted(restored))}.")
        if removed:
            lines.append(f"Removed {len(removed)} file(s) the turn created: {', '.join(sorted(removed))}.")
        if failed:
            lines.append(f"Could not restore: {', '.join(failed)}.")
        if overwritten:
            lines.append(f"{', '.join(sorted(overwritten))} had been changed again since that turn; "
                         "those later changes were undone too.")
        return " ".join(lines) + _commands_note(commands)

    # -- what the model has seen -----------------------------------------------------------------

    def note_read(self, path: Path, data: bytes) -> None:
        """Remember the content the model last saw of a file (by hash) to catch changes made behind its back."""
        self._read_hashes[path] = _digest(data)

    def check_fresh(self, path: Path, data: bytes) -> None:
        """ToolError if the file changed on disk since the model read or wrote it (never read: no check)."""
        seen = self._read_hashes.get(path)
        if seen is not None and seen != _digest(data):
            raise ToolError(
                f"{self.relative(path)} was modified since you last read it (by the user, a command or an undo). "
                "Read it again with read_file, then retry the change on its current content."
            )

    def forget_reads(self) -> None:
        self._read_hashes.clear()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _digest_of_file(path: Path) -> str | None:
    try:
        return _digest(path.read_bytes())
    except OSError:
        return None


def _commands_note(commands: int) -> str:
    if not commands:
        return ""
    return (f" Note: {commands} command(s) ran by run_command in the undone turn(s); "
            "their effects are not undone.")


def _replace_file(path: Path, data: bytes, mode: int | None = None) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`. An existing file keeps its
    mode; a new one gets the usual 0o666 less the umask, applied by the OS (reading the umask would mean
    setting it, which races with other threads)."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            pass
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if mode is not None:
            os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
