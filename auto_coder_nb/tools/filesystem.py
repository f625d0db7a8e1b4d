"""read_file, write_file, edit_file and list_directory, all scoped to one Workspace."""

from __future__ import annotations

import bisect
import codecs
import difflib
import functools
import inspect
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from ..providers.base import ToolDefinition
from .registry import NothingToChange, ToolError
from .workspace import Workspace

if TYPE_CHECKING:
    from ..cell_changes import CellChange

R = TypeVar("R")

DEFAULT_READ_LIMIT = 2000
MAX_LINE_CHARS = 2000
MAX_READ_OUTPUT_CHARS = 100_000
MAX_FILE_BYTES = 10 * 1024 * 1024
# What read_file keeps of one line of a big file: enough bytes for MAX_LINE_CHARS characters in any UTF-8.
MAX_LINE_BYTES = 4 * (MAX_LINE_CHARS + 1)
READ_CHUNK_BYTES = 1024 * 1024
MAX_LINE_SCAN_BYTES = 10 * 1024 * 1024  # how far one line of a window is followed to find its end
MAX_LIST_ENTRIES = 200
MAX_PREVIEW_LINES = 1000
SNIPPET_CONTEXT = 4
MAX_CLOSEST_CANDIDATES = 50
MAX_FUZZY_LINES = 2000
BINARY_SNIFF_BYTES = 8192
LINE_NUMBER_PREFIX = re.compile(r"^ *\d+\t")


# -- decoding: keep the file's own encoding, line endings and final newline --------------------


@dataclass
class TextFile:
    raw: bytes
    text: str
    encoding: str

    @property
    def crlf(self) -> bool:
        """Mostly CRLF: new lines written into this file get CRLF too."""
        crlf = self.text.count("\r\n")
        return crlf > 0 and crlf >= self.text.count("\n") - crlf

    def encode(self, text: str) -> bytes:
        return text.encode(self.encoding)


def decode(raw: bytes, shown_path: str) -> tuple[str, str]:
    """The text and the encoding to write it back with; ToolError for binary content."""
    if raw.startswith(codecs.BOM_UTF8):
        try:
            return raw.decode("utf-8-sig"), "utf-8-sig"
        except UnicodeDecodeError:
            pass
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            return raw.decode("utf-16"), "utf-16"
        except UnicodeDecodeError:
            pass
    if b"\x00" in raw[:BINARY_SNIFF_BYTES]:
        raise ToolError(f"{shown_path} is a binary file ({len(raw):,} bytes); read_file and edit_file only handle "
                        "text. Use run_command with a suitable tool (e.g. `file`, `xxd | head`) to inspect it.")
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        # Not UTF-8: latin-1 maps every byte, so the file round-trips unchanged on edit.
        return raw.decode("latin-1"), "latin-1"


def _split_lines(text: str) -> list[str]:
    """Lines as editors and `cat -n` count them: split on \\n only, a trailing \\r is part of the ending."""
    if not text:
        return []
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def _numbered(lines: list[str], first: int) -> str:
    return _number_rows([_cut_line(line) for line in lines], first)


def _number_rows(rows: list[str], first: int) -> str:
    return "\n".join(f"{number:>6}\t{row}" for number, row in enumerate(rows, first))


def _cut_line(line: str, length: int | None = None, unit: str = "characters") -> str:
    """`line`, or its first MAX_LINE_CHARS characters and a marker giving its whole `length` (default: its own)."""
    length = len(line) if length is None else length
    if length <= MAX_LINE_CHARS and len(line) <= MAX_LINE_CHARS:
        return line
    return f"{line[:MAX_LINE_CHARS]}… [line cut: {length:,} {unit} in all]"


def _as_int(value: Any, name: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise ToolError(f"{name} must be an integer, got {value!r}.")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ToolError(f"{name} must be an integer, got {value!r}.") from None
    if number != value and not isinstance(value, str):
        raise ToolError(f"{name} must be an integer, got {value!r}.")
    if number < minimum:
        raise ToolError(f"{name} must be at least {minimum}, got {number}.")
    return number


def _suggest_siblings(workspace: Workspace, path: Path) -> str:
    try:
        names = os.listdir(path.parent)
    except OSError:
        return ""
    close = difflib.get_close_matches(path.name, names, n=3, cutoff=0.6)
    if not close:
        return ""
    parent = workspace.relative(path.parent)
    shown = [name if parent == "." else f"{parent}/{name}" for name in close]
    return f" Did you mean: {', '.join(shown)}?"


def _not_found(workspace: Workspace, path: Path, shown: str, hint: str) -> ToolError:
    return ToolError(f"File not found: {shown}.{hint}{_suggest_siblings(workspace, path)}")


def _unified_diff(shown: str, before: str | None, after: str) -> str:
    def lines(text: str) -> list[str]:
        *complete, last = text.replace("\r\n", "\n").split("\n")
        result = [line + "\n" for line in complete]
        if last:
            result.append(last + "\n\\ No newline at end of file\n")
        return result

    old_name = "/dev/null" if before is None else f"a/{shown}"
    diff = list(difflib.unified_diff(lines(before or ""), lines(after), old_name, f"b/{shown}"))
    if not diff:
        return f"No change to {shown}."
    text = "".join(line if line.endswith("\n") else line + "\n" for line in diff)
    rows = text.splitlines()
    if len(rows) > MAX_PREVIEW_LINES:
        rows = rows[:MAX_PREVIEW_LINES] + [f"... {len(rows) - MAX_PREVIEW_LINES} more diff lines not shown"]
    return "\n".join(rows)


def _tool_errors(function: Callable[..., R]) -> Callable[..., R]:
    """Bad arguments and OS failures (permissions, full disk) become ToolErrors the model can read,
    in previews too, which run before any approval is asked."""
    signature = inspect.signature(function)
    name = function.__name__.removeprefix("preview_").removeprefix("review_")

    @functools.wraps(function)
    def wrapper(workspace: Workspace, *args: Any, **kwargs: Any) -> R:
        try:
            signature.bind(workspace, *args, **kwargs)
        except TypeError as exc:
            raise ToolError(f"Invalid arguments for {name}: {exc}.") from None
        try:
            return function(workspace, *args, **kwargs)
        except OSError as exc:
            where = workspace.relative(Path(exc.filename)) if exc.filename else ""
            raise ToolError(f"{name} failed: {exc.strerror or exc}{f': {where}' if where else ''}.") from None

    return wrapper


# -- read_file ---------------------------------------------------------------------------------


READ_FILE_DESCRIPTION = f"""Read a text file from the workspace.

- `path` is relative to the workspace root (an absolute path must lie inside the root).
- The result is in `cat -n` format: each line starts with its line number (right-aligned), then a TAB, then the \
line's content. The number and the TAB are NOT part of the file: never include them in `old_string` for \
edit_file or in content you write.
- By default reads up to {DEFAULT_READ_LIMIT} lines from the start. For long files, pass `offset` (1-based first \
line) and `limit` (number of lines) to read a window; when the result is partial it says which lines it shows \
out of how many.
- Lines longer than {MAX_LINE_CHARS} characters are cut, with a marker.
- Binary files, folders (use list_directory) and files above 10 MB read whole are refused; for big files read a \
window with offset/limit or search with run_command (grep).
- Read a file before editing it, so that old_string matches the current content exactly."""


@_tool_errors
def read_file(workspace: Workspace, path: str, offset: Any = None, limit: Any = None) -> str:
    resolved = workspace.resolve(path)
    shown = workspace.relative(resolved)
    first = _as_int(offset, "offset", 1) or 1
    count = _as_int(limit, "limit", 1) or DEFAULT_READ_LIMIT
    if resolved.is_dir():
        raise ToolError(f"{shown} is a folder, not a file. Use list_directory to see what it contains.")
    try:
        fd = workspace.open_file(resolved)
    except FileNotFoundError:
        raise _not_found(workspace, resolved, shown, "") from None
    with os.fdopen(fd, "rb") as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ToolError(f"{shown} is not a regular file (device, socket or pipe); read_file only reads files.")
        if info.st_size > MAX_FILE_BYTES:
            if offset is None and limit is None:
                raise ToolError(
                    f"{shown} is {info.st_size / 1024 / 1024:.1f} MB, above the 10 MB limit for reading a whole "
                    "file. Read a window with offset and limit (e.g. offset=1, limit=200), or search it with "
                    "run_command (grep -n)."
                )
            return _read_window_streaming(stream, shown, first, count)
        raw = workspace.edited(resolved, stream.read(MAX_FILE_BYTES))  # bounded even if the file grew since fstat
    text, encoding = decode(raw, shown)
    workspace.note_read(resolved, raw)
    del raw
    total = text.count("\n") + (0 if text.endswith("\n") else 1) if text else 0
    if total == 0:
        return f"{shown} is empty (0 lines)."
    if first > total:
        raise ToolError(f"offset {first} is past the end of {shown}, which has {total} line(s). "
                        f"Use an offset between 1 and {total}.")
    rows = _window(text, _line_start(text, first), count)
    last = first + len(rows) - 1
    body = _number_rows(rows, first)
    notes = []
    if first > 1 or last < total:
        more = f"; continue with offset={last + 1}" if last < total else ""
        notes.append(f"(showing lines {first}-{last} of {total}{more})")
    if encoding not in ("utf-8",):
        notes.append(f"(file encoding: {encoding}; edits keep it)")
    return body + ("\n" + "\n".join(notes) if notes else "")


def _line_start(text: str, number: int) -> int:
    """Index where line `number` (1-based) starts, found by bisection on newline counts: no list of lines is
    built, so a file of millions of short lines costs no more memory than its text."""
    if number == 1:
        return 0
    return bisect.bisect_left(range(len(text) + 1), number - 1, key=lambda end: text.count("\n", 0, end))


def _window(text: str, start: int, count: int) -> list[str]:
    """Up to `count` lines from `start`, each cut to MAX_LINE_CHARS, stopping early so one read cannot flood the
    model's context (at least one line is always shown)."""
    rows: list[str] = []
    used = 0
    while len(rows) < count and start < len(text):
        end = text.find("\n", start)
        following = len(text) if end == -1 else end + 1
        end = len(text) if end == -1 else end
        if end > start and text[end - 1] == "\r":
            end -= 1
        row = _cut_line(text[start:min(end, start + MAX_LINE_CHARS + 1)], end - start)
        used += len(row) + 8
        if used > MAX_READ_OUTPUT_CHARS and rows:
            break
        rows.append(row)
        start = following
    return rows


def _read_window_streaming(stream: BinaryIO, shown: str, first: int, count: int) -> str:
    """A window of a file above 10 MB, read line by line with at most MAX_LINE_BYTES kept of each line: memory
    stays bounded whatever the file (one 1 GB line, or tens of millions of lines)."""
    if b"\x00" in stream.read(BINARY_SNIFF_BYTES):
        raise ToolError(f"{shown} is a binary file; read_file only shows text.")
    stream.seek(0)
    lines_before = _skip_lines(stream, first - 1)
    rows: list[str] = []
    used = 0
    endless = False  # a line longer than MAX_LINE_SCAN_BYTES: its end (and what follows) was not looked for
    while len(rows) < count and not endless:
        line = _capped_line(stream)
        if line is None:
            break
        prefix, length = line
        text = prefix.decode("utf-8", errors="replace")
        endless = length is None
        if endless:
            row = f"{text[:MAX_LINE_CHARS]}… [line cut: more than {MAX_LINE_SCAN_BYTES:,} bytes]"
        else:
            row = _cut_line(text) if length == len(prefix) else _cut_line(text, length, unit="bytes")
        used += len(row) + 8
        if used > MAX_READ_OUTPUT_CHARS and rows:
            break
        rows.append(row)
    if not rows:
        raise ToolError(f"offset {first} is past the end of {shown}, which has {lines_before} line(s).")
    last = first + len(rows) - 1
    if endless:
        return (_number_rows(rows, first) + f"\n(showing lines {first}-{last}; line {last} is longer than "
                f"{MAX_LINE_SCAN_BYTES // 1024 // 1024} MB, so its end and the lines after it were not read: search "
                "the file with run_command (grep -n, or head -c / tail -c for bytes))")
    return (_number_rows(rows, first) + f"\n(showing lines {first}-{last}; the file is larger than 10 MB, so its "
            f"total line count was not computed; continue with offset={last + 1})")


def _skip_lines(stream: BinaryIO, lines: int) -> int:
    """Move past `lines` lines, counting newlines a chunk at a time; returns how many lines were passed (fewer at
    the end of the file, where a last line without a newline counts too)."""
    passed, last = 0, b"\n"
    while passed < lines:
        chunk = stream.read(READ_CHUNK_BYTES)
        if not chunk:
            return passed + (last != b"\n")
        found = chunk.count(b"\n")
        if passed + found < lines:
            passed, last = passed + found, chunk[-1:]
            continue
        position = -1
        for _ in range(lines - passed):
            position = chunk.index(b"\n", position + 1)
        stream.seek(position + 1 - len(chunk), os.SEEK_CUR)
        return lines
    return passed


def _capped_line(stream: BinaryIO) -> tuple[bytes, int | None] | None:
    """The next line's first MAX_LINE_BYTES bytes (without its line ending) and its whole length in bytes; the
    rest of a longer line is read in chunks and dropped, up to MAX_LINE_SCAN_BYTES in all (the length is None
    beyond: a 1 GB line costs the time of 10 MB). None at the end of the file."""
    data = stream.readline(MAX_LINE_BYTES)
    if not data:
        return None
    length, tail = len(data), data
    while not tail.endswith(b"\n"):  # a longer line (or the last one): count the rest without keeping it
        if length >= MAX_LINE_SCAN_BYTES:
            return data, None
        tail = stream.readline(READ_CHUNK_BYTES)
        if not tail:
            break
        length += len(tail)
    if tail.endswith(b"\n"):
        length -= 2 if tail.endswith(b"\r\n") else 1
    data = data.removesuffix(b"\n")
    if len(data) == length + 1 and data.endswith(b"\r"):
        data = data[:-1]
    return data, length


# -- write_file --------------------------------------------------------------------------------


WRITE_FILE_DESCRIPTION = """Create a file, or overwrite an existing one, with the given content.

- `path` is relative to the workspace root; missing parent folders are created (the result says so).
- `content` is the complete new content of the file, exactly as it should be on disk (no line-number prefixes).
- Overwriting replaces the whole file: to change part of an existing file prefer edit_file, and read the file \
first. If the file changed on disk since you last read it, the write is refused until you read it again.
- An existing file keeps its permissions, encoding and CRLF line endings. The write is atomic: it either fully \
happens or leaves the old file as it was. The user may be asked to approve it, seeing a diff."""


@dataclass
class _Plan:
    path: Path
    shown: str
    before: TextFile | None
    after: bytes
    after_text: str


def _load_text(workspace: Workspace, path: Path, shown: str) -> TextFile:
    if not path.is_file():
        raise ToolError(f"{shown} is not a regular file.")
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ToolError(f"{shown} is {size / 1024 / 1024:.1f} MB, above the 10 MB limit for changing a file with "
                        "these tools. Use run_command (e.g. sed) for it.")
    raw = workspace.read_bytes(path)
    text, encoding = decode(raw, shown)
    return TextFile(raw, text, encoding)


def _plan_write(workspace: Workspace, path: str, content: Any) -> _Plan:
    if not isinstance(content, str):
        raise ToolError(f"content must be a string with the whole file content, got {type(content).__name__}.")
    resolved = workspace.resolve(path, write=True)
    shown = workspace.relative(resolved)
    workspace.refuse_open_notebook(resolved)
    if resolved.is_dir():
        raise ToolError(f"{shown} is a folder; give the path of a file inside it.")
    before = None
    if resolved.exists():
        before = _load_text(workspace, resolved, shown)
        workspace.check_fresh(resolved, before.raw)
    text = content
    if before is not None and before.crlf and "\r\n" not in content:
        text = content.replace("\n", "\r\n")
    encoding = before.encoding if before is not None else "utf-8"
    try:
        data = text.encode(encoding)
    except UnicodeEncodeError:
        encoding = "utf-8"  # the new content cannot be stored in the old encoding: switch rather than lose text
        data = text.encode(encoding)
    return _Plan(resolved, shown, before, data, text)


@_tool_errors
def preview_write_file(workspace: Workspace, path: str, content: Any) -> str:
    plan = _plan_write(workspace, path, content)
    if _unchanged(plan):
        raise NothingToChange(_unchanged_message(plan))
    return _unified_diff(plan.shown, plan.before.text if plan.before else None, plan.after_text)


def _cells(plan: _Plan) -> list[CellChange]:
    """A notebook's change cell by cell, for the per-cell review (other files: none)."""
    from ..cell_changes import notebook_diff

    if not plan.path.name.endswith(".ipynb"):
        return []
    return notebook_diff(str(plan.path), plan.before.text if plan.before else "", plan.after_text)


@_tool_errors
def review_write_file(workspace: Workspace, path: str, content: Any) -> list[CellChange]:
    return _cells(_plan_write(workspace, path, content))


def _unchanged(plan: _Plan) -> bool:
    return plan.before is not None and plan.before.raw == plan.after


def _unchanged_message(plan: _Plan) -> str:
    return f"No change to {plan.shown}: it already has this content (nothing was written)."


@_tool_errors
def write_file(workspace: Workspace, path: str, content: Any) -> str:
    plan = _plan_write(workspace, path, content)
    if _unchanged(plan):
        return _unchanged_message(plan)
    try:
        created = workspace.make_parents(plan.path)
        workspace.atomic_write(plan.path, plan.after)
    except NotADirectoryError:
        raise ToolError(f"Cannot create {plan.shown}: a part of its folder path is an existing file.") from None
    lines = len(_split_lines(plan.after_text))
    verb = "Overwrote" if plan.before is not None else "Created"
    message = f"{verb} {plan.shown}: wrote {len(plan.after):,} bytes ({lines} line{'s' if lines != 1 else ''})."
    if created:
        message += f" Created folder(s): {', '.join(workspace.relative(folder) + '/' for folder in created)}."
    if plan.before is not None and plan.before.crlf and "\r\n" not in content:
        message += " Kept the file's CRLF line endings."
    return message


# -- edit_file ---------------------------------------------------------------------------------


EDIT_FILE_DESCRIPTION = """Replace exact text in an existing file.

- `old_string` must match the file's current content exactly, character for character, including indentation \
and blank lines (copy it from read_file output WITHOUT the line-number prefix and TAB). It is literal text, not a \
regular expression. CRLF and LF line endings count as the same; the file keeps its own line endings, encoding and \
final newline.
- By default `old_string` must occur exactly once. If it occurs several times the edit fails and lists the line \
numbers: include more surrounding lines to make it unique, or set `replace_all` to true to change every occurrence \
(e.g. renaming a variable).
- `new_string` replaces it (use an empty `new_string` to delete the text). It must differ from `old_string`.
- To create a file or replace all of it use write_file. Several changes to one file: call edit_file once per \
change.
- On success the result shows the changed region with line numbers. If the file changed on disk since you last \
read it, read it again first. The user may be asked to approve the change, seeing a diff."""


@dataclass
class _EditPlan(_Plan):
    count: int
    first_line: int
    last_line: int
    lines_changed: list[int]
    relaxed: bool


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _lines_of(text: str, indexes: list[int]) -> list[int]:
    """Line numbers of sorted indexes, in one pass over the text."""
    numbers, line, counted = [], 1, 0
    for index in indexes:
        line += text.count("\n", counted, index)
        counted = index
        numbers.append(line)
    return numbers


def _find_all(haystack: str, needle: str) -> list[int]:
    found, start = [], haystack.find(needle)
    while start != -1:
        found.append(start)
        start = haystack.find(needle, start + len(needle))
    return found


def _relaxed_match(text: str, old: str) -> list[tuple[int, int]]:
    """Spans of `text` equal to `old` when trailing whitespace on each line is ignored."""
    text_lines = text.split("\n")
    stripped_lines = [line.rstrip() for line in text_lines]
    stripped_text = "\n".join(stripped_lines)
    stripped_old = "\n".join(line.rstrip() for line in old.split("\n"))
    if not stripped_old.strip():
        return []
    starts = [0]
    for line in text_lines:
        starts.append(starts[-1] + len(line) + 1)
    stripped_starts = [0]
    for line in stripped_lines:
        stripped_starts.append(stripped_starts[-1] + len(line) + 1)

    def original(index: int, end: bool) -> int:
        row = bisect.bisect_right(stripped_starts, index) - 1
        column = index - stripped_starts[row]
        if end and column == len(stripped_lines[row]) and column > 0:
            column = len(text_lines[row])  # take the line's trailing whitespace with it
        return starts[row] + column

    return [(original(s, False), original(s + len(stripped_old), True))
            for s in _find_all(stripped_text, stripped_old)]


def _fuzzy_pool(lines: set[str], anchor: str) -> set[str]:
    """At most MAX_FUZZY_LINES lines to compare with difflib (slow on big files): those sharing a rare word."""
    if len(lines) <= MAX_FUZZY_LINES:
        return lines
    best: set[str] = set()
    for word in sorted(set(re.findall(r"\w{3,}", anchor)), key=len, reverse=True):
        having = {line for line in lines if word in line}
        if having and (not best or len(having) < len(best)):
            best = having
        if 0 < len(best) <= MAX_FUZZY_LINES:
            break
    return set(sorted(best)[:MAX_FUZZY_LINES])


def _closest_lines(lines: list[str], old: str) -> str:
    """The window of the file most like old_string, numbered, so the model can see what differs."""
    wanted = old.strip("\n").split("\n")
    anchors = [line.strip() for line in wanted if line.strip()]
    if not anchors or not lines:
        return ""
    stripped = [line.strip() for line in lines]
    close = set(difflib.get_close_matches(anchors[0], _fuzzy_pool(set(stripped), anchors[0]), n=5, cutoff=0.5))
    anchor_row = next(row for row, line in enumerate(wanted) if line.strip())
    # A bounded number of windows: a big file of repeated lines must not make an error slow.
    candidates = [index for index, line in enumerate(stripped) if line in close][:MAX_CLOSEST_CANDIDATES]
    best, best_ratio = -1, 0.0
    for index in candidates:
        start = max(0, index - anchor_row)
        window = "\n".join(lines[start:start + len(wanted)])
        ratio = difflib.SequenceMatcher(None, window, old).ratio()
        if ratio > best_ratio:
            best, best_ratio = start, ratio
    if best < 0:
        return ""
    start, end = max(0, best - 1), min(len(lines), best + len(wanted) + 1)
    return "\nThe most similar lines in the file are:\n" + _numbered(lines[start:end], start + 1)


def _plan_edit(workspace: Workspace, path: str, old_string: Any, new_string: Any, replace_all: Any) -> _EditPlan:
    if not isinstance(old_string, str) or not isinstance(new_string, str):
        raise ToolError("old_string and new_string must both be strings.")
    if old_string == "":
        raise ToolError("old_string is empty. Give the exact text to replace (include neighbouring lines to insert "
                        "text next to them); to create a file or rewrite it whole, use write_file.")
    if old_string == new_string:
        raise ToolError("old_string and new_string are identical: the edit would change nothing.")
    resolved = workspace.resolve(path, write=True)
    shown = workspace.relative(resolved)
    workspace.refuse_open_notebook(resolved)
    if resolved.is_dir():
        raise ToolError(f"{shown} is a folder, not a file.")
    if not resolved.exists():
        raise _not_found(workspace, resolved, shown, " To create a new file, use write_file.")
    before = _load_text(workspace, resolved, shown)
    workspace.check_fresh(resolved, before.raw)

    # Match on LF text; map the spans back onto the original text so untouched line endings stay as they were.
    text = before.text.replace("\r\n", "\n")
    old = old_string.replace("\r\n", "\n")
    new = new_string.replace("\r\n", "\n")
    crlf_at = _crlf_positions(before.text)
    relaxed = False
    spans = [(start, start + len(old)) for start in _find_all(text, old)]
    if not spans:
        spans = _relaxed_match(text, old)
        relaxed = bool(spans)
    if not spans:
        hint = ""
        if new and new in text:
            hint = (f"\nNote: new_string already appears in the file (line {_line_of(text, text.find(new))}); "
                    "the change may already be made.")
        if all(LINE_NUMBER_PREFIX.match(line) for line in old.split("\n") if line):
            hint += ("\nold_string looks like it includes read_file's line-number prefixes (number + TAB): "
                     "remove them, they are not part of the file.")
        raise ToolError(f"old_string was not found in {shown}. It must match the file exactly (whitespace "
                        "included, no line-number prefixes); read the file again and copy the text."
                        + _closest_lines(_split_lines(text), old) + hint)
    line_numbers = _lines_of(text, [start for start, _ in spans])
    if len(spans) > 1 and not _truthy(replace_all):
        listed = ", ".join(map(str, line_numbers[:20])) + (", ..." if len(spans) > 20 else "")
        kind = " (ignoring trailing whitespace)" if relaxed else ""
        raise ToolError(f"old_string occurs {len(spans)} times in {shown}{kind}, at lines {listed}. Include more "
                        "surrounding lines in old_string to pick exactly one, or set replace_all to true to replace "
                        "every occurrence.")
    replacement = new.replace("\n", "\r\n") if before.crlf else new
    pieces, done = [], 0
    for start, end in spans:
        start, end = _to_original(start, crlf_at), _to_original(end, crlf_at)
        pieces += [before.text[done:start], replacement]
        done = end
    result = "".join([*pieces, before.text[done:]])
    try:
        data = before.encode(result)
    except UnicodeEncodeError as exc:
        raise ToolError(f"new_string has characters that {shown}'s encoding ({before.encoding}) cannot store: "
                        f"{exc.object[exc.start:exc.end]!r}.") from None
    first_line = line_numbers[0]
    last_line = first_line + new.count("\n")
    return _EditPlan(resolved, shown, before, data, result, len(spans), first_line, last_line, line_numbers, relaxed)


def _crlf_positions(original: str) -> list[int]:
    """Indexes, in the LF-normalised text, of each newline that was CRLF in the original."""
    positions, removed, start = [], 0, original.find("\r\n")
    while start != -1:
        positions.append(start - removed)
        removed += 1
        start = original.find("\r\n", start + 2)
    return positions


def _to_original(index: int, crlf_positions: list[int]) -> int:
    return index + bisect.bisect_left(crlf_positions, index)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


@_tool_errors
def preview_edit_file(workspace: Workspace, path: str, old_string: Any, new_string: Any,
                      replace_all: Any = False) -> str:
    plan = _plan_edit(workspace, path, old_string, new_string, replace_all)
    assert plan.before is not None
    return _unified_diff(plan.shown, plan.before.text, plan.after_text)


@_tool_errors
def review_edit_file(workspace: Workspace, path: str, old_string: Any, new_string: Any,
                     replace_all: Any = False) -> list[CellChange]:
    return _cells(_plan_edit(workspace, path, old_string, new_string, replace_all))


@_tool_errors
def edit_file(workspace: Workspace, path: str, old_string: Any, new_string: Any, replace_all: Any = False) -> str:
    plan = _plan_edit(workspace, path, old_string, new_string, replace_all)
    workspace.atomic_write(plan.path, plan.after)
    lines = _split_lines(plan.after_text)
    start = max(1, plan.first_line - SNIPPET_CONTEXT)
    end = min(len(lines), plan.last_line + SNIPPET_CONTEXT)
    snippet = _numbered(lines[start - 1:end], start) if lines else "(the file is now empty)"
    if plan.count > 1:
        listed = ", ".join(map(str, plan.lines_changed[:20])) + (", ..." if plan.count > 20 else "")
        head = f"Edited {plan.shown}: replaced {plan.count} occurrences (at lines {listed} before the edit)."
    else:
        head = f"Edited {plan.shown}: replaced 1 occurrence."
    if plan.relaxed:
        head += " old_string matched only when ignoring trailing whitespace."
    return f"{head} The first change, lines {start}-{end}:\n{snippet}"


# -- what a write would change, for faces that show it as a diff (ACP) ---------------------------------


@dataclass
class FileChange:
    path: Path  # resolved
    before: str | None  # None: the file does not exist yet
    after: str


def planned_change(workspace: Workspace, tool: str, arguments: dict[str, Any]) -> FileChange | None:
    """What a write_file or edit_file call would change, planned as its preview and the call plan it; None for
    another tool, or a call that would fail or change nothing (the call itself says why)."""
    try:
        if tool == "write_file":
            plan = _plan_write(workspace, arguments["path"], arguments["content"])
        elif tool == "edit_file":
            plan = _plan_edit(workspace, arguments["path"], arguments["old_string"], arguments["new_string"],
                              arguments.get("replace_all", False))
        else:
            return None
    except (ToolError, KeyError, TypeError, OSError):
        return None
    if _unchanged(plan):
        return None
    return FileChange(plan.path, plan.before.text if plan.before is not None else None, plan.after_text)


# -- list_directory ----------------------------------------------------------------------------


LIST_DIRECTORY_DESCRIPTION = f"""List the entries of a folder in the workspace (not recursive).

- `path` is relative to the workspace root; omit it to list the root.
- Entries are sorted by name. Folders end with `/`, symbolic links with `@` (followed by `-> target`), files show \
their size. Hidden entries (names starting with a dot) are listed too.
- At most {MAX_LIST_ENTRIES} entries are shown, then a line says how many more there are; list a subfolder, or \
use run_command (e.g. `find . -name '*.py'`) to search."""


def _size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    for unit in ("KB", "MB", "GB", "TB"):
        size_f = size / 1024
        if size_f < 1024 or unit == "TB":
            return f"{size_f:.1f} {unit}"
        size = int(size_f)
    return f"{size} B"


def _describe(entry: os.DirEntry[str]) -> str:
    try:
        if entry.is_symlink():
            return f"{entry.name}@ -> {os.readlink(entry.path)}"
        if entry.is_dir(follow_symlinks=False):
            return f"{entry.name}/"
        info = entry.stat(follow_symlinks=False)
    except OSError as exc:
        return f"{entry.name}  (unreadable: {exc.strerror})"
    if stat.S_ISREG(info.st_mode):
        return f"{entry.name}  ({_size(info.st_size)})"
    kind = {stat.S_IFIFO: "pipe", stat.S_IFSOCK: "socket", stat.S_IFCHR: "device", stat.S_IFBLK: "device"}
    return f"{entry.name}  ({kind.get(stat.S_IFMT(info.st_mode), 'special file')})"


@_tool_errors
def list_directory(workspace: Workspace, path: str | None = None) -> str:
    resolved = workspace.resolve(path if path not in (None, "") else ".")
    shown = workspace.relative(resolved)
    if not resolved.exists():
        raise ToolError(f"Folder not found: {shown}.{_suggest_siblings(workspace, resolved)}")
    if not resolved.is_dir():
        raise ToolError(f"{shown} is a file, not a folder. Use read_file to read it.")
    try:
        with os.scandir(resolved) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except PermissionError:
        raise ToolError(f"Permission denied listing {shown}.") from None
    header = f"{shown}/ ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})" if shown != "." else \
        f"{workspace.root}/ ({len(entries)} entr{'y' if len(entries) == 1 else 'ies'})"
    if not entries:
        return header + "\n(empty folder)"
    rows = [_describe(entry) for entry in entries[:MAX_LIST_ENTRIES]]
    if len(entries) > MAX_LIST_ENTRIES:
        rows.append(f"... {len(entries) - MAX_LIST_ENTRIES} more entries not shown")
    return header + "\n" + "\n".join(rows)


# -- definitions -------------------------------------------------------------------------------


def filesystem_tools(workspace: Workspace) -> list[ToolDefinition]:
    def bind(function: Any) -> Any:
        return functools.partial(function, workspace)

    path = {"type": "string", "description": "File path, relative to the workspace root."}
    return [
        ToolDefinition(
            name="read_file",
            description=READ_FILE_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "path": path,
                    "offset": {"type": "integer", "minimum": 1,
                               "description": "1-based number of the first line to read. Default 1."},
                    "limit": {"type": "integer", "minimum": 1,
                              "description": f"Maximum number of lines to read. Default {DEFAULT_READ_LIMIT}."},
                },
                "required": ["path"],
            },
            handler=bind(read_file),
            kind="read",
            rarely_needed=("offset", "limit"),  # SmolLM2 added "limit": 1000000000000 to its reads
        ),
        ToolDefinition(
            name="write_file",
            description=WRITE_FILE_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "path": path,
                    "content": {"type": "string", "description": "The complete content to write to the file."},
                },
                "required": ["path", "content"],
            },
            handler=bind(write_file),
            kind="write",
            preview=bind(preview_write_file),
            review=bind(review_write_file),
        ),
        ToolDefinition(
            name="edit_file",
            description=EDIT_FILE_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "path": path,
                    "old_string": {"type": "string", "description": "The exact text to replace."},
                    "new_string": {"type": "string", "description": "The text to put in its place."},
                    "replace_all": {"type": "boolean", "default": False,
                                    "description": "Replace every occurrence of old_string. Default false."},
                },
                "required": ["path", "old_string", "new_string"],
            },
            handler=bind(edit_file),
            kind="write",
            preview=bind(preview_edit_file),
            review=bind(review_edit_file),
            rarely_needed=("replace_all",),
        ),
        ToolDefinition(
            name="list_directory",
            description=LIST_DIRECTORY_DESCRIPTION,
            parameters={
                "type": "object",
                "properties": {
                    "path": {"type": "string",
                             "description": "Folder path relative to the workspace root. Default: the root."},
                },
                "required": [],
            },
            handler=bind(list_directory),
            kind="read",
        ),
    ]
