"""Folders and files only their owner can read: where saved conversations, trust records and the REPL's history go.

They live in the user's home, which other users can often read: Debian creates homes 0755, and a JupyterHub puts
every user on one host. So each of the product's own folders is made 0700 (a missing parent too, as the XDG base
directory spec asks) and each file 0600. An existing folder or file that others can read is tightened; one that
belongs to someone else (so it cannot be, and its owner can read what is written there) is refused with
`NotPrivate`, an OSError whose message says what to do. Nothing is ever written where others can read it.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600
POSIX = hasattr(os, "geteuid")  # elsewhere (Windows) a home is private by its ACLs, and modes mean little


class NotPrivate(OSError):
    """A folder or file that cannot be made private to this user; `strerror` says why and what to do."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(errno.EPERM, f"{path} {why}", str(path))


def private_folder(path: Path) -> Path:
    """`path` as a folder only this user can open: made 0700 (with its missing parents), or tightened to 0700 when
    others may read it. Raises NotPrivate when it belongs to another user or is not a folder, OSError when it
    cannot be made."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # made meanwhile (another kernel of the same user): checked below
            pass
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise NotPrivate(path, "is not a folder")
    _own(path, info, FOLDER_MODE)
    return path


def open_private(path: Path, flags: int) -> int:
    """Open (or create, with O_CREAT in `flags`) `path` as a file only this user can read: created 0600, an existing
    one tightened to 0600. Its folder must already be private (`private_folder`). Raises NotPrivate for a file of
    another user or a link, else OSError as os.open."""
    fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), FILE_MODE)
    try:
        _own(path, os.fstat(fd), FILE_MODE, fd)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _own(path: Path, info: os.stat_result, mode: int, fd: int | None = None) -> None:
    if not POSIX:
        return
    if info.st_uid != os.geteuid():
        raise NotPrivate(path, f"belongs to another user (uid {info.st_uid}), who can read what is written there: "
                               f"remove it, or point AUTO_CODER_DATA_DIR / XDG_DATA_HOME elsewhere")
    if info.st_mode & 0o077:
        try:
            os.fchmod(fd, mode) if fd is not None else os.chmod(path, mode)
        except OSError as exc:
            raise NotPrivate(path, f"is readable by other users (mode {stat.S_IMODE(info.st_mode):04o}) and cannot "
                                   f"be made private ({exc.strerror}): run chmod {mode:o} {path}") from None


def privacy(path: Path) -> tuple[bool, str]:
    """Whether `path` (a folder of the product's) is private, in words, for the doctor: (True, "private (0700)"),
    (True, "not made yet (will be 0700)"), or (False, what is wrong)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return True, f"not made yet (will be {FOLDER_MODE:04o})"
    except OSError as exc:
        return False, f"cannot be read ({exc.strerror})"
    mode = stat.S_IMODE(info.st_mode)
    if not POSIX:
        return True, "kept in your home"
    if info.st_uid != os.geteuid():
        return False, f"belongs to another user (uid {info.st_uid}, mode {mode:04o})"
    if mode & 0o077:
        return False, f"readable by other users (mode {mode:04o}); made {FOLDER_MODE:04o} on the next write"
    return True, f"private ({mode:04o})"
