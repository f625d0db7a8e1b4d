"""Project instructions: AGENTS.md (or CLAUDE.md) files read into the system prompt.

From the project's top folder down to the folder the user works in (the working directory, or the
notebook's folder), the first file of `agent.instructions_files` found in each folder is read; outer
files come first, so a nearer one can refine them. The top folder is the git repository root around the
working folder, else the workspace root when the working folder is inside it, else the working folder.
The whole text is capped: a cut says so, where it happened.
"""

from __future__ import annotations

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


def instruction_folders(working: Path, workspace_root: Path) -> list[Path]:
    """The folders searched, outermost first, ending with `working`."""
    working, workspace_root = working.resolve(), workspace_root.resolve()
    top = next((folder for folder in (working, *working.parents) if (folder / ".git").exists()), None)
    if top is None:
        top = workspace_root if working.is_relative_to(workspace_root) else working
    return [folder for folder in reversed((working, *working.parents)) if folder.is_relative_to(top)]


def load_instructions(
    working: Path, workspace_root: Path, names: list[str], limit: int = INSTRUCTIONS_LIMIT
) -> ProjectInstructions:
    """Read the instruction files for `working` (see the module's docstring); never reads more than `limit`."""
    found = ProjectInstructions()
    if not names:
        return found
    blocks: list[str] = []
    left = limit
    for folder in instruction_folders(working, workspace_root):
        path = next((folder / name for name in names if (folder / name).is_file()), None)
        if path is None:
            continue
        if left <= 0:
            found.cut = True
            break
        try:
            with path.open("rb") as handle:
                data = handle.read(left + 1)
        except OSError as exc:
            found.problems.append(f"{path}: not read: {exc.strerror or exc}")
            continue
        size = path.stat().st_size
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
