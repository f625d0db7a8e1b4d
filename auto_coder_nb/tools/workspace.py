"""The workspace: the one folder the tools work in, with atomic writes, per-turn checkpoints and undo.

Containment is decided on real paths (symlinks followed), component by component, so neither `..`,
a sibling folder sharing the root's name as a prefix, nor a symlink pointing out (dangling or not)
gets past it. Then every read, write and delete walks that real path again from the root, one folder
at a time, without following symbolic links (`O_NOFOLLOW`, `dir_fd`): a folder swapped for a link
between the check and the change is refused, never written through. `run_command` is not confined by
this: approvals are what gate commands.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..config import CONFIG_FILENAME
from ..errors import ConfigError
from .registry import ToolError

MAX_UNDO_TURNS = 50
# Folders and files the file tools never write: history and our own settings (approval mode lives there).
PROTECTED_DIRS = {".git"}
PROTECTED_FILES = {CONFIG_FILENAME}
# Undo keeps a file's content changed after the turn beside it, under this suffix (then -2, -3, ...).
KEPT_SUFFIX = ".before-undo"
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class Editor(Protocol):
    """An editor that holds the workspace's files (an ACP client offering fs/read_text_file and fs/write_text_file):
    UTF-8 text files are read from it and written through it, after the workspace's own checks, so the model sees
    unsaved changes and the editor tracks the agent's edits. Called from the thread running the tool."""

    def read_text(self, path: Path) -> str | None:
        """The text the editor has for `path`, or None to read the disk."""

    def write_text(self, path: Path, text: str) -> bool:
        """Write `text` to `path` through the editor; False to write the disk. Raises ToolError if it refused."""


class PathChanged(ToolError):
    """A folder or file on a checked path became a symbolic link before the change: nothing went through it."""


@dataclass
class _Snapshot:
    data: bytes | None  # None: the file did not exist
    mode: int | None


@dataclass
class _Turn:
    mark: int  # numbers the turns of this workspace in order: `undo_since(mark)` goes back to before it
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
        self._marks = itertools.count(1)
        self._read_hashes: dict[Path, str] = {}
        # The notebook open in the user's editor, when a face knows it (the kernel does): never rewritten on disk.
        self.open_notebook: Callable[[], Path | None] = lambda: None
        self.editor: Editor | None = None  # set by a face whose client holds the files (ACP)

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

    def is_open_notebook(self, real: Path) -> bool:
        current = self.open_notebook()
        return current is not None and os.path.realpath(current) == os.fspath(real)

    def refuse_open_notebook(self, real: Path) -> None:
        """ToolError for the notebook open in the user's editor: a rewrite on disk would fight the editor's copy."""
        if self.is_open_notebook(real):
            raise ToolError(
                f"{self.relative(real)} is the notebook open in the user's editor: it is not rewritten on disk (the "
                "editor would overwrite the change, or the user's unsaved work would be lost). Use edit_notebook "
                "(a cell at a time: with live editing any cell of it, else a new cell below the current one), and "
                "tell the user what to change."
            )

    def relative(self, path: Path) -> str:
        """How a resolved path is shown to the model and the user: relative to the root."""
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return str(path)
        return str(rel) if rel.parts else "."

    # -- reading and writing without following links --------------------------------------------

    @contextmanager
    def _folder(self, path: Path, created: list[Path] | None = None) -> Iterator[int]:
        """A descriptor of the folder holding `path` (a real path under the root), reached from the root one
        component at a time without following symbolic links. With `created`, missing folders are made and
        appended to it. PathChanged if a component is a link now; NotADirectoryError if it is a file."""
        parts = path.relative_to(self.root).parts
        if not parts:
            raise ToolError("The workspace root is a folder, not a file.")
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, name in enumerate(parts[:-1], 1):
                if created is not None:
                    try:
                        os.mkdir(name, dir_fd=fd)
                        created.append(self.root.joinpath(*parts[:depth]))
                    except FileExistsError:
                        pass
                try:
                    inner = os.open(name, _FOLDER_FLAGS, dir_fd=fd)
                except NotADirectoryError:
                    if stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise self._changed(path) from None
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path)) from None
                except FileNotFoundError:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path)) from None
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def _changed(self, path: Path) -> PathChanged:
        return PathChanged(
            f"{self.relative(path)}: a folder or file on this path was replaced by a symbolic link after the path "
            "was checked, so nothing was read or written through it. Look at what changed, then retry."
        )

    def _open_leaf(self, folder: int, path: Path, flags: int, mode: int = 0o666) -> int:
        try:
            return os.open(path.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=folder)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._changed(path) from None
            raise type(exc)(exc.errno, exc.strerror, str(path)) from None

    def open_file(self, path: Path) -> int:
        """A read-only descriptor of the regular file at `path` (resolved), opened without following links.
        O_NONBLOCK: opening a pipe must not wait for a writer; the caller checks the kind with fstat."""
        with self._folder(path) as folder:
            return self._open_leaf(folder, path, os.O_RDONLY | os.O_NONBLOCK)

    def read_bytes(self, path: Path) -> bytes:
        fd = self.open_file(path)
        with os.fdopen(fd, "rb") as stream:
            if not stat.S_ISREG(os.fstat(stream.fileno()).st_mode):
                raise ToolError(f"{self.relative(path)} is not a regular file.")
            return self.edited(path, stream.read())

    def edited(self, path: Path, raw: bytes) -> bytes:
        """`raw`, the file's bytes on disk, or what the editor holds for it (unsaved changes included) when one is
        attached and the file is UTF-8 text."""
        if self.editor is None or _utf8_text(raw) is None:
            return raw
        text = self.editor.read_text(path)
        return raw if text is None else text.encode("utf-8")

    def _read_at(self, folder: int, path: Path) -> tuple[bytes, int] | None:
        """Bytes and permission bits of a file in `folder`, or None if it does not exist."""
        try:
            fd = self._open_leaf(folder, path, os.O_RDONLY | os.O_NONBLOCK)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, "rb") as stream:
            info = os.fstat(stream.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
            return stream.read(), stat.S_IMODE(info.st_mode)

    def _replace_at(self, folder: int, path: Path, data: bytes, mode: int | None = None) -> None:
        """Write `data` to a new temporary file in `folder`, then rename it over `path`'s name. An existing
        file keeps its mode; a new one gets the usual 0o666 less the umask, applied by the OS (reading the
        umask would mean setting it, which races with other threads). No temporary file survives a failure."""
        if mode is None:
            with suppress(FileNotFoundError):
                info = os.stat(path.name, dir_fd=folder, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    raise self._changed(path)
                mode = stat.S_IMODE(info.st_mode)
        temporary = f".{path.name}.{secrets.token_hex(4)}.tmp"
        fd = os.open(temporary, _NEW_FILE_FLAGS, 0o666, dir_fd=folder)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                if mode is not None:
                    os.fchmod(stream.fileno(), mode)
                os.fsync(stream.fileno())
            os.replace(temporary, path.name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            with suppress(FileNotFoundError):
                os.unlink(temporary, dir_fd=folder)
            raise

    # -- turns, checkpoints and undo -----------------------------------------------------------

    def begin_turn(self) -> int:
        """Start a user turn: the changes from here on are undone together. Returns the turn's mark, for
        `undo_since` (a rewind)."""
        if not self._turns or not self._turns[-1].empty:
            self._turns.append(_Turn(next(self._marks)))
        del self._turns[:-MAX_UNDO_TURNS]
        return self._turns[-1].mark

    def _turn(self) -> _Turn:
        if not self._turns:
            self._turns.append(_Turn(next(self._marks)))
        return self._turns[-1]

    def checkpoint(self, path: Path) -> None:
        """Remember a file's bytes (or that it did not exist) before its first change in this turn."""
        turn = self._turn()
        if path in turn.files:
            return
        try:
            with self._folder(path) as folder:
                found = self._read_at(folder, path)
        except FileNotFoundError:  # a folder above it is missing too
            found = None
        turn.files[path] = _Snapshot(*found) if found is not None else _Snapshot(None, None)

    def note_command(self) -> None:
        """A command ran in this turn: undo cannot revert what it did, and says so."""
        self._turn().commands += 1

    def make_parents(self, path: Path) -> list[Path]:
        """Create the missing folders above `path` (remembered for undo); returns the ones created."""
        created = self._turn().created_dirs
        known = len(created)
        with self._folder(path, created):
            pass
        return created[known:]

    def atomic_write(self, path: str | os.PathLike[str], data: bytes) -> None:
        """Checkpoint, then write through a temporary file in the same folder and rename it over the target.

        The file keeps its permission bits; if anything fails the old file is left as it was. The folders on
        the way are opened without following links, so a folder swapped for a link since the check is refused.
        """
        target = self.resolve(path, write=True)
        self.refuse_open_notebook(target)
        self.checkpoint(target)
        turn = self._turn()
        with self._folder(target, turn.created_dirs) as folder:
            text = _utf8_text(data) if self.editor is not None else None
            if text is None or self.editor is None or not self.editor.write_text(target, text):
                self._replace_at(folder, target, data)
        self.note_read(target, data)
        turn.written[target] = _digest(data)

    def undo(self) -> str:
        """Restore the files changed in the last turn that changed any; a message says what was done.

        Each path is checked again: one that now leads elsewhere through a symbolic link is left alone. A file
        whose content is no longer what the turn left (edited since by the user or a command) is restored too,
        but its current content is first kept beside it as `<name>.before-undo`, so no later work is lost."""
        commands = 0
        while self._turns and not self._turns[-1].files and not self._turns[-1].created_dirs:
            commands += self._turns.pop().commands
        if not self._turns:
            message = "Nothing to undo: no file was changed by a tool."
            return message + _commands_note(commands)
        turn = self._turns.pop()
        report = _UndoReport()
        self._undo_turn(turn, report)
        return report.message() + _commands_note(commands + turn.commands)

    def undo_since(self, mark: int) -> str:
        """Undo the turn `mark` (from `begin_turn`) and every later one, newest first, as `undo` does each: files
        changed since are kept as `<name>.before-undo`. Returns what was done ("" when no file was changed)."""
        turns = [turn for turn in self._turns if turn.mark >= mark]
        del self._turns[len(self._turns) - len(turns):]
        report = _UndoReport()
        for turn in reversed(turns):
            self._undo_turn(turn, report)
        commands = sum(turn.commands for turn in turns)
        if not report.any and not commands:
            return ""
        return (report.message() if report.any else "No file was changed.") + _commands_note(commands)

    def changed_outside(self, mark: int) -> list[str]:
        """The files the turns since `mark` changed that were changed by someone else afterwards (the user, a
        command): between two of those turns, or after the last. Undoing them would replace that work."""
        left: dict[Path, str | None] = {}  # the digest of what the turns left in each file (None: no file)
        found: list[str] = []
        for turn in (turn for turn in self._turns if turn.mark >= mark):
            for path, snapshot in turn.files.items():
                before = None if snapshot.data is None else _digest(snapshot.data)
                if path in left and left[path] != before:
                    found.append(f"{self.relative(path)} (changed between two turns)")
                left[path] = turn.written.get(path, before)
        for path, digest in left.items():
            try:
                now = None if self._moved(path) else self.read_bytes(path)
            except (OSError, ToolError):
                now = None
            if (None if now is None else _digest(now)) != digest:
                found.append(f"{self.relative(path)} (changed since the agent wrote it)")
        return list(dict.fromkeys(found))

    def _undo_turn(self, turn: _Turn, report: _UndoReport) -> None:
        for path, snapshot in reversed(turn.files.items()):
            shown = self.relative(path)
            moved = self._moved(path)
            if moved:
                report.refused.append(f"{shown} ({moved})")
                continue
            expected = turn.written.get(path) or (None if snapshot.data is None else _digest(snapshot.data))
            try:
                self._undo_file(path, snapshot, expected, report)
            except PathChanged:
                report.refused.append(f"{shown} (a folder on its path became a symbolic link)")
            except OSError as exc:
                report.failed.append(f"{shown} ({exc.strerror or exc})")
        for folder in reversed(turn.created_dirs):
            with suppress(OSError, ToolError):  # not empty any more (something else put files there): keep it
                with self._folder(folder) as parent:
                    os.rmdir(folder.name, dir_fd=parent)

    def _moved(self, path: Path) -> str | None:
        """Why a checkpointed path must not be touched now, or None: it resolves elsewhere than it did."""
        try:
            now = self.resolve(path)
        except ToolError:
            return "it now leads outside the workspace through a symbolic link; not touched"
        if now != path:
            return f"it now leads to {self.relative(now)} through a symbolic link; not touched"
        return None

    def _undo_file(self, path: Path, snapshot: _Snapshot, expected: str | None, report: _UndoReport) -> None:
        shown = self.relative(path)
        try:
            with self._folder(path, None if snapshot.data is None else []) as folder:
                current = self._read_at(folder, path)
                if current is not None and _digest(current[0]) != expected:
                    kept = self._keep(folder, path, *current)
                    report.kept.append(f"{shown} -> {self.relative(path.with_name(kept))}")
                if snapshot.data is None:
                    if current is not None:
                        os.unlink(path.name, dir_fd=folder)
                    report.done(shown, removed=True)
                else:
                    self._replace_at(folder, path, snapshot.data, snapshot.mode)
                    report.done(shown, removed=False)
        except FileNotFoundError:
            if snapshot.data is not None:
                raise
            report.done(shown, removed=True)  # its folder is gone too: nothing left to remove

    def keep_beside(self, path: Path, data: bytes, suffix: str) -> str:
        """Save `data` as a new file beside `path` (resolved), named `<name><suffix>` (then `-2`, `-3`, ... after
        it), never replacing a file; returns its path as shown. Not a change of any turn: undo leaves it alone."""
        with self._folder(path, []) as folder:
            return self.relative(path.with_name(self._keep(folder, path, data, 0o600, suffix)))

    def _keep(self, folder: int, path: Path, data: bytes, mode: int, suffix: str = KEPT_SUFFIX) -> str:
        """Save `data` as a new file beside `path` named `<name>.before-undo` (or -2, -3, ...); returns the name."""
        for number in itertools.count(1):
            name = f"{path.name}{suffix}" + (f"-{number}" if number > 1 else "")
            try:
                fd = os.open(name, _NEW_FILE_FLAGS, mode, dir_fd=folder)
            except FileExistsError:
                continue
            try:
                with os.fdopen(fd, "wb") as stream:
                    stream.write(data)
            except BaseException:
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=folder)
                raise
            return name
        raise AssertionError("unreachable")

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


@dataclass
class _UndoReport:
    restored: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def done(self, path: str, *, removed: bool) -> None:
        """`path` was restored or removed; undoing several turns (newest first), the oldest turn's outcome stands."""
        for outcome in (self.restored, self.removed):
            if path in outcome:
                outcome.remove(path)
        (self.removed if removed else self.restored).append(path)

    @property
    def any(self) -> bool:
        return any((self.restored, self.removed, self.kept, self.refused, self.failed))

    def message(self) -> str:
        lines = []
        if self.restored:
            lines.append(f"Restored {len(self.restored)} file(s): {', '.join(sorted(self.restored))}.")
        if self.removed:
            lines.append(f"Removed {len(self.removed)} file(s) the turn created: {', '.join(sorted(self.removed))}.")
        if self.kept:
            lines.append("Changed since that turn (by you or a command), so their current content was kept: "
                         f"{', '.join(sorted(self.kept))}.")
        if self.refused:
            lines.append(f"Not restored: {', '.join(self.refused)}.")
        if self.failed:
            lines.append(f"Could not restore: {', '.join(self.failed)}.")
        return " ".join(lines) or "Nothing left to undo in that turn."


def _utf8_text(data: bytes) -> str | None:
    """`data` as text if it is UTF-8 without NUL bytes (what an editor's text buffer round-trips), else None."""
    if b"\x00" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _commands_note(commands: int) -> str:
    if not commands:
        return ""
    return (f" Note: {commands} command(s) ran by run_command in the undone turn(s); "
            "their effects are not undone.")
