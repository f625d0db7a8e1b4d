"""Saved conversations: one append-only JSONL file per conversation, written as it happens.

Where: `$AUTO_CODER_DATA_DIR`, else `$XDG_DATA_HOME/auto-coder`, else `~/.local/share/auto-coder`, in
`sessions/` (both folders 0700, files 0600: `private.py`). A conversation's id is its correlation id, and its file is
`sessions/<id>.jsonl`. Every line is one record `{"v": SCHEMA_VERSION, "t": "<UTC time>", "type": ...}`:

    start      first line: correlation_id, working_dir, notebook, model, base_url (password hidden), approval_mode
    resumed    the same fields, when a later session continues the conversation
    approval_mode  the session's approval mode changed ("mode"; an ACP client's session/set_mode)
    message    a message of the history exactly as the model gets it ("message"), with "model" on user ones
    text       a piece of the answer as it streams (only needed when the process dies mid-answer)
    tool_call, tool_result, approval, notice, error, usage, shortened, turn_done
    turn       a turn began (its number), after its user message: where a rewind goes back to
    cell_change  a cell the agent changed (`cell_changes.CellChange.record()`: the cell before and after)
    rewind     the conversation went back to before turn N: later messages and cell changes no longer count

`Recorder` writes them: it observes the conversation (messages) and the agent (events), so every face is
recorded without doing anything. Known secrets are replaced before anything is written. `rebuild()` turns
the records back into a history a strict server accepts, even from a file cut off by a crash.
"""

from __future__ import annotations

import difflib
import itertools
import json
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import AutoCoderError
from .events import (
    ApprovalRequest,
    ErrorEvent,
    Event,
    Notice,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
    UsageUpdate,
)
from .private import open_private, private_folder
from .state.conversation import Conversation, new_correlation_id
from .text import escape_undecodable, hide_credential_shapes, hide_secrets, prompt_of, scrub, show_controls

if TYPE_CHECKING:
    from .cell_changes import CellChange

SCHEMA_VERSION = 1
SUFFIX = ".jsonl"
INTERRUPTED = "[interrupted]"  # what the agent appends to an answer cut off mid-stream
SHORT_ID = 8
LISTED = 20  # conversations a listing shows unless asked for more
MORE_HINT = "--sessions N shows N, --all every one"
CLOSEST_SHOWN = 5  # saved conversations listed when an id matches none
IMAGE_NOT_SAVED = "[an image was here: saved conversations keep no images]"
MAX_CELL_RECORD = 256 * 1024  # a cell_change record bigger than this is saved without the cells' outputs


class HistoryError(AutoCoderError):
    """A saved conversation that cannot be found or used (an unknown id, a file that is not one)."""


def data_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("AUTO_CODER_DATA_DIR"):
        return Path(env["AUTO_CODER_DATA_DIR"]).expanduser()
    base = Path(env["XDG_DATA_HOME"]).expanduser() if env.get("XDG_DATA_HOME") else Path.home() / ".local" / "share"
    return base / "auto-coder"


def sessions_dir(env: Mapping[str, str] | None = None) -> Path:
    return data_dir(env) / "sessions"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# -- reading -------------------------------------------------------------------------------------------

class Records(list[dict[str, Any]]):
    """The records of a conversation file; `damaged`: how many of its lines were left out."""

    damaged = 0


def read_records(path: Path) -> Records:
    """The records of a conversation file. Lines that are not whole records (the last one torn by a crash,
    or an earlier torn line a resumed session wrote after, a damaged line) are left out and counted. Raises
    HistoryError for a file that is not a saved conversation (unreadable, no start record or a damaged one, a
    newer schema)."""
    try:
        with open(path, "rb") as stream:
            lines = stream.read().split(b"\n")
    except OSError as exc:
        raise HistoryError(f"{show_controls(path.name)}: cannot read: {exc.strerror}") from None
    records = Records(record for record in map(_parse_line, lines) if record is not None)
    records.damaged = sum(1 for line in lines if line.strip()) - len(records)
    _check_start(path, records[0] if records else None)
    return records


def _parse_line(line: bytes) -> dict[str, Any] | None:
    """A record, or None for a line that is none: torn by a crash, damaged, or a message no history can hold."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        return None
    return record if record["type"] != "message" or well_formed(record.get("message")) else None


def well_formed(message: Any) -> bool:
    """Whether a saved message can go back into a history a strict server accepts: a known role, text (or text and
    image parts) for content, tool calls with string ids, names and arguments, a tool result naming its call."""
    if not isinstance(message, dict) or message.get("role") not in ("system", "user", "assistant", "tool"):
        return False
    content = message.get("content")
    if not (content is None or isinstance(content, str)
            or isinstance(content, list) and all(isinstance(part, dict) for part in content)):
        return False
    if message["role"] == "tool":
        return isinstance(message.get("tool_call_id"), str) and isinstance(content, str)
    calls = message.get("tool_calls")
    if calls is None:
        return True
    return isinstance(calls, list) and all(
        isinstance(call, dict) and isinstance(call.get("id"), str) and isinstance(call.get("function"), dict)
        and isinstance(call["function"].get("name"), str) and isinstance(call["function"].get("arguments"), str)
        for call in calls)


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list (a message with images)."""
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict)
                         and part.get("type") == "text")
    return content if isinstance(content, str) else ""


def without_images(message: dict[str, Any]) -> dict[str, Any]:
    """`message` with its images replaced by a note: saved files stay small and hold text only."""
    content = message.get("content")
    if not isinstance(content, list):
        return message
    parts = [part if part.get("type") != "image_url" else {"type": "text", "text": IMAGE_NOT_SAVED}
             for part in content]
    return {**message, "content": parts}


def _check_start(path: Path, record: dict[str, Any] | None) -> dict[str, Any]:
    if record is None or record.get("type") != "start" or not isinstance(record.get("correlation_id"), str):
        raise HistoryError(f"{show_controls(path.name)} is not a saved conversation")
    if not _VALID_ID.fullmatch(record["correlation_id"]):  # it becomes a request header and is printed
        raise HistoryError(f"{show_controls(path.name)} is damaged: its conversation id "
                           f"{record['correlation_id'][:80]!r} is not one auto-coder writes")
    version = record.get("v")
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise HistoryError(f"{show_controls(path.name)} was written by a newer auto-coder (schema {version})")
    return record


def _first_records(path: Path, until_type: str, limit: int = 200) -> Iterator[dict[str, Any]]:
    """The records up to the first of `until_type`, without reading a long file whole."""
    with open(path, "rb") as stream:
        for number, line in enumerate(stream):
            record = _parse_line(line)
            if record is not None:
                yield record
                if record["type"] == until_type or number >= limit:
                    return


@dataclass
class SavedConversation:
    """What a listing shows of one saved conversation."""

    id: str  # the correlation id
    path: Path
    started: str
    updated: float  # the file's modification time: its last record
    working_dir: str
    notebook: str | None
    model: str
    first_prompt: str

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    @property
    def when(self) -> str:
        """When it was last active, in local time."""
        return datetime.fromtimestamp(self.updated).strftime("%Y-%m-%d %H:%M")

    def line(self) -> str:
        """One line of a listing: short id, when, where, first prompt."""
        where = show_controls(self.notebook or self.working_dir)
        prompt = " ".join(self.first_prompt.split())
        prompt = show_controls(prompt if len(prompt) <= 60 else prompt[:59] + "…")
        return f"{self.short_id}  {self.when}  {where}  {prompt}"


# A conversation id as auto-coder writes them (a UUID; kernels and tests may use other plain words): printable
# ASCII with no spaces, since it is sent as the x-correlation-id header and printed in listings.
_VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


def _likeness(typed: str, conversation_id: str) -> tuple[int, float]:
    """How close a typed id is to a saved one: the length of their common start, then their similarity (a typo
    in the middle); equal for every id when nothing matches, so the stable sort keeps the newest first."""
    typed = typed.lower()
    common = len(os.path.commonprefix([typed, conversation_id]))
    return common, difflib.SequenceMatcher(None, typed, conversation_id[:max(len(typed), SHORT_ID)]).ratio()


def summarize(path: Path) -> SavedConversation:
    """A listing entry from the start of a file; HistoryError if it is not a saved conversation."""
    try:
        head = list(_first_records(path, "message"))
        updated = path.stat().st_mtime
    except OSError as exc:
        raise HistoryError(f"{path.name}: cannot read: {exc.strerror}") from None
    start = _check_start(path, head[0] if head else None)
    prompt = next((prompt_of(message_text(r["message"].get("content"))) for r in head
                   if r["type"] == "message" and isinstance(r.get("message"), dict)
                   and r["message"].get("role") == "user"), "")
    return SavedConversation(
        id=start["correlation_id"], path=path, started=str(start.get("t", "")), updated=updated,
        working_dir=str(start.get("working_dir") or ""), notebook=start.get("notebook") or None,
        model=str(start.get("model") or ""), first_prompt=prompt,
    )


def _listing_lines(entries: Iterable[Path]) -> list[str]:
    """Listing lines of these conversation files, escaped (a damaged one by its name)."""
    lines = []
    for entry in entries:
        try:
            lines.append(show_controls(summarize(entry).line()))
        except HistoryError:
            lines.append(f"{show_controls(entry.name)} (damaged)")
    return lines


class ConversationStore:
    """The folder of saved conversations. `warn` hears about files it skips."""

    def __init__(self, folder: Path | None = None, warn: Callable[[str], None] | None = None) -> None:
        self.folder = folder or sessions_dir()
        # Made private before the first write: the data folder too, where the store is the default one.
        self._private = [self.folder] if folder else [data_dir(), self.folder]
        self.warn = warn or (lambda text: None)

    def make_private(self) -> None:
        """Create (or tighten) the store's folders 0700; NotPrivate (an OSError) when one belongs to someone else."""
        for folder in self._private:
            private_folder(folder)

    def path_for(self, conversation_id: str) -> Path:
        return self.folder / f"{conversation_id}{SUFFIX}"

    def files(self) -> list[Path]:
        """The conversation files, the most recently active first: only their names and times are read."""
        try:
            entries = [entry for entry in self.folder.iterdir() if not entry.name.startswith(".")]
        except FileNotFoundError:
            return []
        except OSError as exc:
            self.warn(f"Cannot read the saved conversations in {self.folder}: {exc.strerror}")
            return []
        dated = []
        for entry in entries:
            try:
                dated.append((entry.stat().st_mtime, entry))
            except OSError:
                continue  # removed meanwhile
        return [entry for _, entry in sorted(dated, key=lambda pair: pair[0], reverse=True)]

    def saved(self, *, working_dir: str | os.PathLike[str] | None = None,
              notebook: str | os.PathLike[str] | None = None) -> Iterator[SavedConversation]:
        """The saved conversations, the most recently active first, each file read as the iteration reaches it;
        only those of `notebook`, or else of `working_dir`, when one is given. Other files are skipped with a
        warning."""
        where = escape_undecodable(str(notebook if notebook is not None else working_dir or ""))
        for entry in self.files():
            try:
                if entry.suffix != SUFFIX or not entry.is_file():
                    raise HistoryError(f"{entry.name} is not a saved conversation")
                saved = summarize(entry)
            except HistoryError as exc:
                self.warn(f"Skipped {show_controls(str(self.folder / entry.name))}: {exc}")
                continue
            # names are saved escaped (escape_undecodable): compared the same way
            if notebook is not None and saved.notebook != where:
                continue
            if notebook is None and working_dir is not None and saved.working_dir != where:
                continue
            yield saved

    def list(self) -> list[SavedConversation]:
        """Every saved conversation, the most recently active first (reads every file: see `saved`)."""
        return list(self.saved())

    def find(self, prefix: str) -> SavedConversation:
        """The conversation whose id is or starts with `prefix`; HistoryError listing the closest ones (whatever
        `prefix` holds: empty, not an id, control characters) when none or several do. Files are named by their
        ids, so only the matching ones (or the closest, for the error) are read."""
        files = [entry for entry in self.files() if entry.suffix == SUFFIX]
        prefix = prefix.strip()
        matches = ([entry for entry in files if entry.stem == prefix]
                   or [entry for entry in files if prefix and entry.stem.startswith(prefix)])
        if len(matches) == 1:
            saved = summarize(matches[0])
            if saved.id == matches[0].stem:
                return saved
            matches = []
        shown = repr(prefix)  # escaped: a control character in an id must not reach the terminal raw
        if not files:
            raise HistoryError(f"No saved conversation {shown}: none are saved in {self.folder}.")
        if matches:
            raise HistoryError(f"{shown} matches {len(matches)} saved conversations: give more of the id. They are:"
                               + "".join(f"\n  {line}" for line in _listing_lines(matches[:CLOSEST_SHOWN])))
        closest = sorted(files, key=lambda entry: _likeness(prefix, entry.stem), reverse=True)[:CLOSEST_SHOWN]
        more = f"\n  ... and {len(files) - len(closest)} more (--sessions lists them)" if len(files) > len(closest) \
            else ""
        raise HistoryError(f"No saved conversation {shown}. The closest:"
                           + "".join(f"\n  {line}" for line in _listing_lines(closest)) + more)

    def listing(self, count: int | None = LISTED, *, working_dir: str | os.PathLike[str] | None = None,
                notebook: str | os.PathLike[str] | None = None, more: str = MORE_HINT) -> str:
        """What `--sessions` shows: one line per conversation, newest first; the newest `count` (None: all), then
        how many more there are and `more`, how to see them. With `working_dir` or `notebook`, only those of that
        folder or notebook."""
        found = self.saved(working_dir=working_dir, notebook=notebook)
        shown = list(itertools.islice(found, count)) if count is not None else list(found)
        place = f" for {show_controls(str(notebook or working_dir))}" if notebook or working_dir else ""
        if not shown:
            return f"No saved conversations{place} in {self.folder}."
        lines = [entry.line() for entry in shown]
        if count is not None and len(shown) == count:
            if place:  # counting the rest would read every file
                if next(found, None) is not None:
                    lines.append(f"(older ones{place} not shown: {more})")
            elif (rest := len(self.files()) - count) > 0:
                lines.append(f"({rest:,} older not shown: {more})")
        return "\n".join(lines)

    def choose(self, conversation_id: str | None, *, working_dir: str | os.PathLike[str] | None = None,
               notebook: str | os.PathLike[str] | None = None) -> SavedConversation:
        """The conversation `conversation_id` names (an id or a unique prefix; "" names none), else (None) the newest
        for the notebook (if given) or the working folder. HistoryError if there is none."""
        if conversation_id is not None:
            return self.find(conversation_id)
        saved = self.latest(working_dir=working_dir, notebook=notebook)
        if saved is None:
            raise HistoryError(f"No saved conversation for {notebook or working_dir} in {self.folder}.")
        return saved

    def latest(self, *, working_dir: str | os.PathLike[str] | None = None,
               notebook: str | os.PathLike[str] | None = None) -> SavedConversation | None:
        """The most recently active conversation of this notebook (if given), else of this working folder: files
        are read newest first until it is found."""
        return next(self.saved(working_dir=working_dir, notebook=notebook), None)

    def remove_older_than(self, days: int) -> int:
        """Delete conversations untouched for more than `days` days; returns how many went."""
        limit = time.time() - days * 86400
        removed = 0
        try:
            entries = list(self.folder.glob(f"*{SUFFIX}"))
        except OSError:
            return 0
        for entry in entries:
            try:
                if entry.stat().st_mtime < limit:
                    entry.unlink()
                    removed += 1
            except OSError:
                continue  # gone already (another process), or not ours to remove: not worth a warning
        return removed


# -- rebuilding ------------------------------------------------------------------------------------

def _is_message(record: dict[str, Any]) -> bool:
    message = record.get("message")
    return record["type"] == "message" and isinstance(message, dict) and message.get("role") in (
        "user", "assistant", "tool")


@dataclass
class Replay:
    """A saved conversation read back: `messages` (what `rebuild` returns), how many of them came from message
    records (the rest close a turn a crash left open), where each turn began among them, and the cell changes
    (records) of the turns that were not rewound."""

    messages: list[dict[str, Any]]
    saved: int
    turn_starts: dict[int, int]
    cell_changes: list[dict[str, Any]]
    damaged: int = 0  # lines of the file left out (set by Recorder.resume)
    forked_from: str | None = None  # resumed as a copy, another session writing the original (Recorder.resume)


def replay(records: Iterable[dict[str, Any]]) -> Replay:
    """Read the records in order, applying rewinds: an answer cut off by a crash is kept with a marker, tool calls
    left without a result get one, and the history ends with an assistant or tool message."""
    conversation = Conversation()
    partial: list[str] = []
    starts: dict[int, int] = {}
    changes: list[dict[str, Any]] = []
    for record in records:
        kind, number = record["type"], record.get("turn")
        if _is_message(record):
            message = record["message"]
            if message["role"] == "tool":
                if message["tool_call_id"] not in conversation.pending_tool_calls():
                    continue  # no call waits for it (two writers, a damaged file): strict servers refuse it
            else:
                conversation.repair()  # calls left open before the next message (a process that died meanwhile)
            conversation.messages.append(message)
            partial.clear()
        elif kind == "text" and isinstance(record.get("text"), str):
            partial.append(record["text"])
        elif kind == "turn_done":
            partial.clear()
        elif kind == "turn" and isinstance(number, int) and conversation.messages:
            starts[number] = len(conversation.messages) - 1  # the user message just before
        elif kind == "cell_change" and isinstance(number, int):
            changes.append(record)
        elif kind == "rewind" and isinstance(number, int) and number in starts:
            del conversation.messages[starts[number]:]
            partial.clear()
            starts = {turn: start for turn, start in starts.items() if turn < number}
            changes = [change for change in changes if change["turn"] < number]
    saved = len(conversation.messages)
    if partial:  # the process died while the answer streamed
        conversation.add_assistant("".join(partial) + "\n" + INTERRUPTED)
    conversation.repair()
    if conversation.messages and conversation.messages[-1]["role"] == "user":
        conversation.add_assistant(INTERRUPTED)
    return Replay(conversation.messages, saved, starts, changes)


def rebuild(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The history the records describe, ready to send (see `replay`)."""
    return replay(records).messages


def saved_approval_mode(records: Iterable[dict[str, Any]]) -> str | None:
    """The approval mode a saved conversation was last in (start, resumed and approval_mode records), if saved."""
    mode = None
    for record in records:
        if record["type"] == "approval_mode":
            value = record.get("mode")
        elif record["type"] in ("start", "resumed"):
            value = record.get("approval_mode")
        else:
            continue
        if isinstance(value, str):
            mode = value
    return mode


# -- writing ---------------------------------------------------------------------------------------

class Recorder:
    """Writes the conversation of one session as it happens; a `ConversationObserver` and a `TurnObserver`.

    The file is created with the first record of a conversation (so nothing is written for a session that
    never talks) and a new one begins after `clear()`. If the folder cannot be written, one warning is
    given (`take_warnings`) and the conversation goes on unsaved. A `paused` recorder writes nothing until
    the next conversation begins.
    `describe()` gives the session's working_dir, notebook, model and base_url; `secrets()` the values
    to hide."""

    def __init__(self, store: ConversationStore, conversation: Conversation,
                 describe: Callable[[], dict[str, Any]], secrets: Callable[[], Iterable[str | None]],
                 paused: bool = False) -> None:
        self.store = store
        self.conversation = conversation
        self.describe = describe
        self.secrets = secrets
        self.path: Path | None = None
        self._fd: int | None = None
        self._failed = False
        self._paused = paused
        self._warnings: list[str] = []
        self._streamed = ""  # answer text seen but not yet written (it may end inside a secret)
        self._forked_from: str | None = None  # the conversation this one copies (another session was writing it)
        conversation.observer = self

    # ConversationObserver
    def message_added(self, message: dict[str, Any]) -> None:
        record: dict[str, Any] = {"type": "message", "message": without_images(message)}
        if message.get("role") == "user":
            record["model"] = self.describe().get("model")
        self._streamed = ""  # an answer's message holds its whole text
        self._write(record)

    def cleared(self) -> None:
        self.close()
        self._paused = False

    def shortened(self, changed: int) -> None:
        self._write({"type": "shortened", "changed": changed})

    # TurnObserver
    def event(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self._stream_text(event.text)
        elif isinstance(event, ToolCallStarted):
            self._write({"type": "tool_call", "call_id": event.call_id, "name": event.name})
        elif isinstance(event, ToolResult):
            self._write({"type": "tool_result", "call_id": event.call_id, "name": event.name,
                         "is_error": event.is_error})
        elif isinstance(event, UsageUpdate):
            self._write({"type": "usage", "turn": asdict(event.turn), "session": asdict(event.session)})
        elif isinstance(event, Notice):
            self._write({"type": "notice", "text": event.text})
        elif isinstance(event, ErrorEvent):
            self._write({"type": "error", "text": event.message})
        elif isinstance(event, TurnDone):
            self._streamed = ""
            self._write({"type": "turn_done", "reason": event.reason})

    def approval(self, request: ApprovalRequest, allowed: bool, reason: str, always: bool) -> None:
        self._write({"type": "approval", "call_id": request.call_id, "tool": request.tool, "allowed": allowed,
                     "reason": reason, "always": always})

    def take_warnings(self) -> list[str]:
        warnings, self._warnings = self._warnings, []
        return warnings

    def approval_mode_changed(self, mode: str) -> None:
        """A face changed the session's approval mode: saved once the conversation has begun (its start record
        carries the mode of that moment), so loading the conversation restores it (`saved_approval_mode`)."""
        if any(message["role"] == "user" for message in self.conversation.messages):
            self._write({"type": "approval_mode", "mode": mode})

    # resuming
    def resume(self, saved: SavedConversation) -> Replay:
        """Continue `saved` in this session: its history and correlation id, further records in its file.
        What `replay` added to close a turn a crash left open is written too, so the file stays one history.
        Returns the replay (turns and cell changes, for rewinding; `damaged`, `forked_from`).
        A conversation another session writes (it resumed it first, or began it) has one writer: this session
        continues a copy of it instead, under a new id, in a file of its own."""
        records = read_records(saved.path)
        replayed = replay(records)
        replayed.damaged = records.damaged
        self.close()
        self._paused = False
        try:
            self._open(saved.path)
        except ConversationBusy:
            self.conversation.restore(replayed.messages, new_correlation_id())
            self._forked_from = replayed.forked_from = saved.id
            for message in self.conversation.messages:
                if message["role"] != "system":
                    self._write({"type": "message", "message": message})
            return replayed
        except OSError:
            pass  # written unsaved, with the warning _write gives
        self.conversation.restore(replayed.messages, saved.id)
        self._write({"type": "resumed", "correlation_id": saved.id, **self.describe()})
        for message in replayed.messages[replayed.saved:]:
            self._write({"type": "message", "message": message})
        return replayed

    # TurnsObserver (rewind.py)
    def turn_began(self, number: int) -> None:
        self._write({"type": "turn", "turn": number})

    def cell_changed(self, change: CellChange) -> None:
        record = {"type": "cell_change", **change.record()}
        if len(json.dumps(record, ensure_ascii=False)) > MAX_CELL_RECORD:  # big outputs (images): the cells without
            for side in ("before", "after"):
                if isinstance(record.get(side), dict) and "outputs" in record[side]:
                    record[side] = {**record[side], "outputs": [], "execution_count": None}
            record["outputs_dropped"] = True
        self._write(record)

    def rewound(self, number: int) -> None:
        self._write({"type": "rewind", "turn": number})

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # and with it the lock: another session may now continue this conversation
        self._fd, self.path, self._streamed, self._forked_from = None, None, "", None

    # the file
    def _stream_text(self, text: str) -> None:
        """Write the streamed answer, holding back an end that may be the start of a secret (a secret split
        across two pieces must not be written half by half)."""
        secrets = [s for s in self.secrets() if s]
        pending = hide_secrets(self._streamed + text, secrets)
        keep = max((_secret_start_at_end(pending, secret) for secret in secrets), default=0)
        ready, self._streamed = pending[:len(pending) - keep], pending[len(pending) - keep:]
        if ready:
            self._write({"type": "text", "text": ready})

    def _write(self, record: dict[str, Any]) -> None:
        if self._failed or self._paused:
            return
        try:
            if self._fd is None:
                self._open()
            assert self._fd is not None
            os.write(self._fd, self._line(record))
        except OSError as exc:
            self._failed = True
            self.close()
            self._warnings.append(f"Conversations are not being saved: cannot write to {self.store.folder} "
                                  f"({exc.strerror or exc}). This conversation goes on unsaved.")

    def _open(self, path: Path | None = None) -> None:
        """Open the conversation's file for appending (made first if new), holding its writer's lock for as long
        as it is open; ConversationBusy if another session holds it."""
        self.store.make_private()
        path = path or self.path or self.store.path_for(self.conversation.correlation_id)
        if not path.exists():
            self._create(path)
        fd = open_private(path, os.O_RDWR | os.O_APPEND)  # a file an older version left 0644 is tightened
        try:
            if not _lock(fd):
                raise ConversationBusy(path.stem)
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")  # a line torn by a crash stays apart from what follows
        except BaseException:
            os.close(fd)
            raise
        self._fd, self.path = fd, path

    def _create(self, path: Path) -> None:
        """The file with its start record, appearing whole: a listing in another process never sees it empty."""
        forked = {"forked_from": self._forked_from} if self._forked_from else {}
        start = self._line({"type": "start", "correlation_id": self.conversation.correlation_id, **self.describe(),
                            **forked})
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden: listings skip it
        fd = open_private(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            os.write(fd, start)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)  # unlike a rename, never replaces a file made meanwhile: append to that one
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            os.replace(temporary, path)
            return
        os.unlink(temporary)

    def _line(self, record: dict[str, Any]) -> bytes:
        return (json.dumps(stamped(record, self.secrets()), ensure_ascii=False) + "\n").encode("utf-8")


class ConversationBusy(HistoryError):
    """Another session writes this conversation (it holds the lock on its file)."""


def _lock(fd: int) -> bool:
    """Take the writer's lock of a conversation file (released when `fd` closes, or the process ends); False when
    another open file holds it, in this process or another. True where there are no such locks (Windows)."""
    try:
        import fcntl
    except ImportError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:  # a file system without locks: one writer cannot be made sure of there
        return True
    return True


def _secret_start_at_end(text: str, secret: str) -> int:
    """How many characters at the end of `text` are the beginning of `secret` (0 if none)."""
    for size in range(min(len(secret) - 1, len(text)), 0, -1):
        if text.endswith(secret[:size]):
            return size
    return 0


def stamped(record: dict[str, Any], secrets: Iterable[str | None]) -> dict[str, Any]:
    """`record` as saved: with the schema version and the time, and every secret in it hidden."""
    known = list(secrets)
    return _scrub({"v": SCHEMA_VERSION, "t": now(), **record},
                  lambda text: hide_credential_shapes(scrub(escape_undecodable(text), known)))


def records_of(conversation: Conversation, description: dict[str, Any],
               secrets: Iterable[str | None]) -> list[dict[str, Any]]:
    """The records a conversation that was not saved would have (for an export): its start and messages."""
    known = list(secrets)
    start = {"type": "start", "correlation_id": conversation.correlation_id, **description}
    return [stamped(start, known)] + [stamped({"type": "message", "message": without_images(message)}, known)
                                      for message in conversation.messages if message["role"] != "system"]


def _scrub(value: Any, hide: Callable[[str], str]) -> Any:
    """`value` with `hide` applied to every string in it (a secret can be anywhere: a prompt, a tool result)."""
    if isinstance(value, str):
        return hide(value)
    if isinstance(value, dict):
        return {key: _scrub(item, hide) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(item, hide) for item in value]
    return value
