"""Checks of a call's arguments before anything runs: placeholders refused, out-of-range numbers clamped.

Small models copy the shape of an example with its placeholders (`{"path": "..."}`, `<path>`,
`/path/to/file`); running such a call creates a file named `...` or runs `...` as a command. A placeholder
is refused with a sentence that says what to send instead. A number outside the tool's `minimum` /
`maximum` is brought inside with a note rather than refused: the intent is plain, and a refusal costs a
whole model step.
"""

from __future__ import annotations

import re
from typing import Any

# A whole value that only stands for one: an ellipsis (any argument; ".." is a real path).
_ELLIPSIS = re.compile(r"\.{3,}|…+")
# Paths only (elsewhere `<br>`, `{1: 2}` or `[ -f x ]` are real values): <name>, {name}, [name], the textbook
# example path, "your_file".
_PLACEHOLDER_PATH = re.compile(r"<[^<>\n]{1,60}>|\{[^{}\n]{1,60}\}|\[[^\[\]\n]{1,60}\]"
                               r"|/?(path/to|your/path)(/.*)?|(your|the|some)[_ -]?(file|folder|directory|path)"
                               r"(\.\w+)?", re.IGNORECASE)
_PATH_NAMES = ("path", "file", "filename", "folder", "directory", "dir", "workdir", "cwd")


def placeholder_problem(tool: str, arguments: dict[str, Any], parameters: dict[str, Any]) -> str | None:
    """Why the call must not run because an argument is a placeholder, or None. Only string arguments the
    schema knows are looked at."""
    found = parameters.get("properties")
    properties: dict[str, Any] = found if isinstance(found, dict) else {}
    for name, value in arguments.items():
        if name not in properties or not isinstance(value, str):
            continue
        text = value.strip()
        if not _ELLIPSIS.fullmatch(text) and not (_is_path(name) and _PLACEHOLDER_PATH.fullmatch(text)):
            continue
        what = "path" if _is_path(name) else "value"
        return (f"Not run: {name} is {value!r}, a placeholder, not a real {what}. Call {tool} again with the actual "
                f"{what}" + (" (list_directory shows the files)." if what == "path" else "."))
    return None


def _is_path(name: str) -> bool:
    lowered = name.lower()
    return lowered in _PATH_NAMES or lowered.endswith(("_path", "_file", "_dir"))


def clamp_numbers(arguments: dict[str, Any], parameters: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """`arguments` with each number brought within its schema's minimum and maximum, and a note for each change."""
    found = parameters.get("properties")
    properties: dict[str, Any] = found if isinstance(found, dict) else {}
    clamped, notes = dict(arguments), []
    for name, value in arguments.items():
        schema = properties.get(name)
        if not isinstance(schema, dict) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        low, high = schema.get("minimum"), schema.get("maximum")
        if isinstance(low, (int, float)) and value < low:
            clamped[name] = low
            notes.append(f"({name} {value:g} raised to the minimum, {low:g})")
        elif isinstance(high, (int, float)) and value > high:
            clamped[name] = high
            notes.append(f"({name} {value:g} lowered to the maximum, {high:g})")
    return clamped, notes
