"""Project instructions: AGENTS.md (or CLAUDE.md) files read into the system prompt.

From the project's top folder down to the folder the user works in (the working directory, or the
notebook's folder), the first file of `agent.instructions_files` found in each folder is read; outer
files come first, so a nearer one can refine them. The top folder is the git repository root around the
working folder, else the workspace root when the working folder is inside it, else the working folder.
The search goes up only through folders the user owns that others cannot write to, and never above the home
folder: a `.git` and an AGENTS.md planted in a shared folder above (/tmp) are not the user's project. A file that
is a link leading outside the project is not read (a link to a private file, or to /proc/self/environ).
The whole text is capped: a cut says so, where it happened.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

INSTRUCTIONS_LIMIT = 32 * 1024  # bytes of instructions put in the system prompt at most


@dataclass
class ProjectInstructions:
    """`text` goes into the system prompt; `files` are those read (with their sizes); `problems` say what
    could not be read; `cut` says whether the limit was reached."""

    text: str = ""
    files: list[tuple[Path, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    cut: bool = False

    def describe(self, relative_to: Path | None = None) -> list[str]:
        """One line per file read (and per problem), for --show-context and the doctor."""
        lines = [f"{_shown(path, relative_to)} ({size} bytes)" for path, size in self.files]
        if self.cut:
            lines.append(f"(cut at {INSTRUCTIONS_LIMIT // 1024} KiB: the rest was not sent)")
        return lines + self.problems


def instruction_folders(working: Path, workspace_root: Path, home: Path | None = None) -> list[Path]:
    """The folders searched, outermost first, ending with `working`."""
    working, workspace_root = working.resolve(), workspace_root.resolve()
    home = (Path.home() if home is None else home).resolve()
    reachable = [working]
    for folder in working.parents:
        if (folder != home and home.is_relative_to(folder)) or not _users_own(folder):
            break  # above the home folder, or a folder others can put files in
        reachable.append(folder)
    top = next((folder for folder in reachable if (folder / ".git").exists()), None)
    if top is None:
        top = workspace_root if workspace_root in reachable else working
    return [folder for folder in reversed(reachable) if folder.is_relative_to(top)]


def _users_own(folder: Path) -> bool:
    """Owned by the user running this and not writable by everyone: what is in it is the user's."""
    try:
        info = folder.stat()
    except OSError:
        return False
    return info.st_uid == os.getuid() and not info.st_mode & stat.S_IWOTH


def load_instructions(
    working: Path, workspace_root: Path, names: list[str], limit: int = INSTRUCTIONS_LIMIT, *,
    home: Path | None = None,
) -> ProjectInstructions:
    """Read the instruction files for `working` (see the module's docstring); never reads more than `limit`."""
    found = ProjectInstructions()
    if not names:
        return found
    blocks: list[str] = []
    left = limit
    folders = instruction_folders(working, workspace_root, home)
    for folder in folders:
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            continue
        if left <= 0:
            found.cut = True
            break
        real = path.resolve()
        if not real.is_relative_to(folders[0]):
            found.problems.append(f"{path}: not read: it is a link to a file outside the project")
            continue
        try:
            data, size = _read_regular(real, left + 1)
        except OSError as exc:
            found.problems.append(f"{path}: not read: {exc.strerror or exc}")
            continue
        if len(data) > left:
            data, found.cut = data[:left], True
        text = data.decode("utf-8", errors="replace")
        found.files.append((path, size))
        note = (f"\n[... {path.name} cut here: the project instructions are limited to {limit // 1024} KiB ...]"
                if found.cut else "")
        blocks.append(f"## {_shown(path, workspace_root)}\n\n{text.rstrip()}{note}")
        left -= len(data)
        if found.cut:
            break
    if blocks:
        found.text = ("# Project instructions\n\nThe user's project gives these instructions (outer folders "
                      "first; a nearer file refines an outer one). Follow them.\n\n" + "\n\n".join(blocks))
    return found


def _shown(path: Path, relative_to: Path | None) -> str:
    if relative_to is not None:
        try:
            return str(path.relative_to(relative_to.resolve()))
        except ValueError:
            pass
    return str(path)


def _read_regular(path: Path, limit: int) -> tuple[bytes, int]:
    """At most `limit` bytes of the regular file at the resolved `path` (no link followed), and its size."""
    descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        return handle.read(limit), info.st_size
