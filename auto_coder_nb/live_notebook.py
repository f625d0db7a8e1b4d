"""Live editing: the shared document of the notebook the user has open, through its Jupyter server's
real-time collaboration room (jupyter-collaboration where the server runs; the `[live]` extra in the kernel:
pycrdt, jupyter-ydoc and websockets, imported only when a room is joined).

`LiveEditing` is the kernel's way in: it finds the server and the kernel's notebook (`jupyter_server`), joins
that notebook's room and hands out `LiveNotebook`s (a `NotebookDocument`). The room client runs on its own
thread and event loop (`RoomLoop`): on the kernel's loop, a change made during a magic's turn would reach the
browser only when the cell ends. The Y document is touched on that thread only; callers wait for it a few
seconds at most, and a server that is gone, refuses the token or never syncs gives one clear line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .jupyter_server import JupyterServer, NoCollaboration, ServerError, find_server
from .tools.notebook_document import HOW_TO_GO_LIVE, Cell, CellList, NotebookDocument, NotLive
from .tools.registry import ToolError

CONNECT_TIMEOUT = 5.0  # joining a room and its first sync
CALL_TIMEOUT = 5.0  # one read or change of the document
MAX_MESSAGE = 512 * 1024 * 1024  # a notebook's first sync may be large (5 MB cells, many outputs)
EXTRA_MODULES = ("pycrdt", "jupyter_ydoc", "websockets")
T = TypeVar("T")


class RoomError(ToolError):
    """The room is gone or did not answer in time: the change may not have been made."""


def missing_extra() -> str | None:
    """The first module of the `[live]` extra this Python lacks, or None."""
    import importlib.util

    return next((name for name in EXTRA_MODULES if importlib.util.find_spec(name) is None), None)


class RoomLoop:
    """One thread with its own event loop for every room of the process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="auto-coder-room", daemon=True)
        self.thread.start()

    def run(self, coroutine: Any, timeout: float, what: str) -> Any:
        """Run `coroutine` on the room loop and wait for it, `timeout` seconds at most (RoomError then)."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("RoomLoop.run called from the room thread itself")
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RoomError(f"{what} took more than {timeout:g} s; the notebook may not have it.") from None


_room_loop: RoomLoop | None = None
_room_loop_lock = threading.Lock()


def room_loop() -> RoomLoop:
    global _room_loop
    with _room_loop_lock:
        if _room_loop is None:
            _room_loop = RoomLoop()
        return _room_loop


class Room:
    """One connection to one notebook's room. Its coroutines run on the room loop; `run` is for other threads."""

    def __init__(self, url: str, headers: Mapping[str, str], path: str, room_id: str) -> None:
        self.url, self.headers, self.path, self.room_id = url, dict(headers), path, room_id
        self.closed: str | None = None  # why the room can no longer be used
        self._pending: list[bytes] = []  # updates made here, not yet sent
        self._remote = False  # applying the server's update: not ours to send back
        self._synced = asyncio.Event()
        self._socket: Any = None
        self._receiver: asyncio.Task[None] | None = None

    async def open(self, timeout: float) -> None:
        """Connect and sync: after this the document is the room's (an unsynced client sees an empty notebook)."""
        from jupyter_ydoc import YNotebook
        from pycrdt import Doc
        from websockets.asyncio.client import connect

        self.doc: Any = Doc()
        self.notebook: Any = YNotebook(ydoc=self.doc)
        self._socket = await asyncio.wait_for(
            connect(self.url, additional_headers=self.headers, proxy=None, max_size=MAX_MESSAGE,
                    open_timeout=timeout, user_agent_header="auto-coder-nb"), timeout)
        self.doc.observe(self._local_update)
        self._receiver = asyncio.ensure_future(self._receive())
        await self.sync(timeout)

    async def sync(self, timeout: float) -> float:
        """Exchange states with the server once; returns the seconds it took (the doctor's round trip)."""
        from pycrdt import create_sync_message

        started = time.perf_counter()
        self._synced.clear()
        await self._socket.send(create_sync_message(self.doc))
        await asyncio.wait_for(self._synced.wait(), timeout)
        return time.perf_counter() - started

    def _local_update(self, event: Any) -> None:
        if not self._remote:
            from pycrdt import create_update_message

            self._pending.append(create_update_message(event.update))

    async def _receive(self) -> None:
        from pycrdt import YMessageType, YSyncMessageType, handle_sync_message

        try:
            async for message in self._socket:
                if not isinstance(message, bytes) or len(message) < 2 or message[0] != YMessageType.SYNC:
                    continue  # awareness (who else is here) is not needed to edit
                self._remote = True
                try:
                    reply = handle_sync_message(message[1:], self.doc)
                finally:
                    self._remote = False
                if message[1] == YSyncMessageType.SYNC_STEP2:
                    self._synced.set()
                if reply is not None:
                    await self._socket.send(reply)
            self.closed = "the Jupyter server closed the notebook's room"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a dropped connection, a message pycrdt cannot read: this room is done
            self.closed = f"the connection to the notebook's room was lost ({type(exc).__name__})"

    async def call(self, function: Callable[[Any], T], write: bool) -> T:
        """`function(notebook)` on the room loop; a write is one transaction, sent before this returns."""
        if self.closed:
            raise RoomError(f"{self.closed}; read the notebook again.")
        if not write:
            return function(self.notebook)
        try:
            with self.doc.transaction(origin="auto-coder"):
                result = function(self.notebook)
        finally:
            await self._flush()
        return result

    async def _flush(self) -> None:
        while self._pending:
            message = self._pending.pop(0)
            try:
                await self._socket.send(message)
            except Exception as exc:
                self.closed = f"the connection to the notebook's room was lost ({type(exc).__name__})"
                raise RoomError(f"{self.closed} before the change reached the server; read the notebook again "
                                "before retrying.") from None

    async def close(self) -> None:
        self.closed = self.closed or "closed"
        if self._receiver is not None:
            self._receiver.cancel()
        if self._socket is not None:
            try:
                await asyncio.wait_for(self._socket.close(), 2.0)
            except Exception:  # closing a connection that is already gone
                pass

    def run(self, function: Callable[[Any], T], write: bool) -> T:
        """`call` from another thread, CALL_TIMEOUT seconds at most."""
        return room_loop().run(self.call(function, write), CALL_TIMEOUT,  # type: ignore[no-any-return]
                               "Changing the live notebook" if write else "Reading the live notebook")


class LiveNotebook(NotebookDocument):
    """The shared document of an open notebook: changes show in every browser at once; the server saves them."""

    live = True

    def __init__(self, path: Path, room: Room) -> None:
        self.path = path
        self.room = room

    def read(self, look: Callable[[CellList], T]) -> T:
        return self.room.run(lambda notebook: look(_YCells(notebook)), write=False)

    def change(self, edit: Callable[[CellList], T]) -> T:
        # Every edit checks its arguments before changing anything: a Y transaction cannot be rolled back.
        return self.room.run(lambda notebook: edit(_YCells(notebook)), write=True)


class _YCells(CellList):
    """CellList over a jupyter_ydoc YNotebook (on the room thread)."""

    def __init__(self, notebook: Any) -> None:
        self.notebook = notebook
        self.ycells = notebook.ycells

    def __len__(self) -> int:
        return len(self.ycells)

    def cell(self, index: int) -> Cell:
        return Cell.from_dict(self.ycells[index].to_py())

    def ids(self) -> list[str]:
        return [str(ycell.get("id", "")) for ycell in self.ycells]

    def insert(self, index: int, cell: Cell) -> None:
        self.ycells.insert(index, self.notebook.create_ycell(cell.to_dict()))

    def delete(self, index: int) -> None:
        del self.ycells[index]

    def move(self, index: int, to_index: int) -> None:
        # Yjs in the browser has no move: a copy with the same id takes the cell's place, as JupyterLab does.
        copy = self.notebook.create_ycell(self.cell(index).to_dict())
        del self.ycells[index]
        self.ycells.insert(to_index, copy)

    def put(self, index: int, cell: Cell) -> None:
        self.notebook.set_ycell(index, self.notebook.create_ycell(cell.to_dict()))

    def set_source(self, index: int, source: str) -> None:
        text = self.ycells[index]["source"]
        old = str(text)
        if old == source:
            return
        # Only the changed middle is replaced, so the user's cursor elsewhere in the cell stays where it was.
        # pycrdt counts Text positions in UTF-8 bytes.
        start = 0
        limit = min(len(old), len(source))
        while start < limit and old[start] == source[start]:
            start += 1
        end = 0
        while end < limit - start and old[-1 - end] == source[-1 - end]:
            end += 1
        begin = len(old[:start].encode("utf-8"))
        stop = len(old[:len(old) - end].encode("utf-8"))
        if stop > begin:
            del text[begin:stop]
        inserted = source[start:len(source) - end]
        if inserted:
            text.insert(begin, inserted)

    def set_outputs(self, index: int, outputs: list[dict[str, Any]], execution_count: int | None,
                    running: bool) -> None:
        from pycrdt import Array, Map, Text

        ycell = self.ycells[index]
        youtputs = ycell.get("outputs")
        if not isinstance(youtputs, Array):
            youtputs = ycell["outputs"] = Array()
        youtputs.clear()
        for output in outputs:
            output = dict(output)
            if output.get("output_type") == "stream":
                text = output.get("text", "")
                output["text"] = Text("".join(text) if isinstance(text, list) else str(text))
            youtputs.append(Map(output))
        ycell["execution_count"] = execution_count
        ycell["execution_state"] = "running" if running else "idle"

    def set_metadata(self, index: int, key: str, value: Any) -> None:
        metadata = self.ycells[index]["metadata"]
        if key in metadata:
            del metadata[key]  # replacing a value in place is not supported by every pycrdt
        if value is not None:
            metadata[key] = value

    def notebook_metadata(self) -> dict[str, Any]:
        from pycrdt import Map

        meta = self.notebook.ydoc.get("meta", type=Map).get("metadata")
        return dict(meta.to_py() or {}) if meta is not None else {}


@dataclass
class LiveCheck:
    """What the doctor shows about live editing, one row per step: (step, result, detail, next)."""

    rows: list[tuple[str, str, str, str]]


class LiveEditing:
    """The kernel's live opener (`Notebooks(live=...)`): for the notebook this kernel belongs to, a LiveNotebook
    on its room; None for any other path; NotLive when it is that notebook but the room cannot be used.

    Asks the server which notebook the kernel has at every call (a rename is seen at once); keeps one room open
    for the kernel's life and joins it again when the server closed it."""

    def __init__(self, kernel_id: str | None, environ: Mapping[str, str] | None = None,
                 open_notebook: Callable[[], Path | None] = lambda: None) -> None:
        """`open_notebook()`: the notebook the frontend says is open, for when the server cannot be asked."""
        self.kernel_id = kernel_id
        self.environ = environ
        self.frontend_notebook = open_notebook
        self._server: JupyterServer | None = None
        self._searched = False  # looked for the server (found or not): the search is not repeated
        self._room: Room | None = None
        self._open_path: Path | None = None  # the kernel's notebook when last asked, to recognise a rename
        self._lock = threading.Lock()

    def server(self) -> JupyterServer | None:
        if not self._searched:
            info = find_server(self.environ, self.kernel_id)
            self._server = JupyterServer(info) if info is not None else None
            self._searched = True
        return self._server

    def secret_values(self) -> list[str]:
        """The server's token, hidden wherever the session's secrets are (found now if need be, so that a
        JupyterHub token in the kernel's environment is hidden from run_code before live editing was used)."""
        server = self.server()
        return [server.info.token] if server is not None and server.info.token else []

    def open_notebook(self) -> tuple[JupyterServer, str, Path] | None:
        """(server, path relative to its root, local path) of this kernel's notebook, or None (no server, or no
        notebook session for this kernel). Raises ServerError."""
        server = self.server()
        if server is None or not self.kernel_id:
            return None
        relative = server.notebook_of_kernel(self.kernel_id)
        if relative is None:
            return None
        return server, relative, server.local_path(relative, self.environ)

    def __call__(self, target: Path) -> LiveNotebook | None:
        with self._lock:
            try:
                found = self.open_notebook()
            except ServerError as exc:
                known = self._open_path or self.frontend_notebook()
                if known is not None and _same(target, known):
                    raise NotLive(target, f"cannot be reached live: {exc}.") from None
                return None
            if found is None:
                return None
            server, relative, local = found
            if not _same(target, local):
                if self._open_path is not None and _same(target, self._open_path):
                    raise ToolError(f"The open notebook {target.name} was renamed to {relative}: use that path.")
                return None
            self._open_path = local
            return LiveNotebook(local, self._join(server, relative, local))

    def _join(self, server: JupyterServer, relative: str, local: Path) -> Room:
        """The open room of the notebook, joined now if needed. Raises NotLive."""
        missing = missing_extra()
        if missing is not None:
            raise NotLive(local, f"this kernel lacks {missing} (the [live] extra), so it cannot be edited live.",
                          HOW_TO_GO_LIVE)
        try:
            room_id, session_id = server.collaboration_room(relative)
        except NoCollaboration as exc:
            raise NotLive(local, f"{exc}.", HOW_TO_GO_LIVE) from None
        except ServerError as exc:
            raise NotLive(local, f"cannot be reached live: {exc}.") from None
        if self._room is not None and self._room.room_id == room_id and not self._room.closed:
            self._room.path = relative
            return self._room
        self.close()
        room = Room(server.room_url(room_id, session_id), server.headers, relative, room_id)
        try:
            room_loop().run(room.open(CONNECT_TIMEOUT), CONNECT_TIMEOUT + 1, "Joining the notebook's room")
        except (RoomError, asyncio.TimeoutError, TimeoutError):
            self._close_room(room)
            raise NotLive(local, f"cannot be edited live: its collaboration room did not sync within "
                          f"{CONNECT_TIMEOUT:g} s.") from None
        except Exception as exc:  # refused by the server (403), connection reset...
            self._close_room(room)
            raise NotLive(local, server.hide(f"cannot be edited live: joining its collaboration room failed "
                                             f"({type(exc).__name__}: {exc}).")) from None
        self._room = room
        return room

    def close(self) -> None:
        if self._room is not None:
            self._close_room(self._room)
            self._room = None

    @staticmethod
    def _close_room(room: Room) -> None:
        try:
            room_loop().run(room.close(), 3.0, "Leaving the notebook's room")
        except RoomError:
            pass

    def check(self) -> LiveCheck:
        """The doctor's rows: server found, the kernel's notebook, collaboration, room joined, round trip."""
        rows: list[tuple[str, str, str, str]] = []
        missing = missing_extra()
        rows.append(("live extra", "PASS" if missing is None else "WARN",
                     "pycrdt, jupyter-ydoc and websockets importable" if missing is None else f"{missing} missing",
                     "" if missing is None else 'pip install "auto-coder-nb[live]" in the kernel\'s environment'))
        server = self.server()
        if server is None:
            rows.append(("jupyter server", "info", "none found for this kernel (VS Code, nbclient, terminal IPython, "
                         "or a remote kernel: set AUTO_CODER_JUPYTER_URL and AUTO_CODER_JUPYTER_TOKEN)", ""))
            return LiveCheck(rows)
        rows.append(("jupyter server", "PASS", f"{server.info.url} (from {server.info.found_by})", ""))
        try:
            found = self.open_notebook()
        except ServerError as exc:
            rows.append(("notebook", "FAIL", str(exc), "check that the Jupyter server still runs"))
            return LiveCheck(rows)
        if found is None:
            rows.append(("notebook", "info", "the server has no notebook session for this kernel", ""))
            return LiveCheck(rows)
        _, relative, local = found
        rows.append(("notebook", "PASS", relative, ""))
        started = time.perf_counter()
        try:
            document = self(local)
        except ToolError as exc:
            reason = exc.reason if isinstance(exc, NotLive) else str(exc)
            how_to = exc.how_to if isinstance(exc, NotLive) else ""
            rows.append(("live editing", "WARN", reason, how_to))
            return LiveCheck(rows)
        assert document is not None
        joined = time.perf_counter() - started
        rows.append(("collaboration room", "PASS", f"joined and synced in {joined * 1000:.0f} ms", ""))
        try:
            trip = room_loop().run(document.room.sync(CALL_TIMEOUT), CALL_TIMEOUT + 1, "A round trip to the room")
            rows.append(("round trip", "PASS", f"{trip * 1000:.1f} ms (one state exchange with the room)", ""))
        except (RoomError, asyncio.TimeoutError, TimeoutError):
            rows.append(("round trip", "FAIL", f"no answer within {CALL_TIMEOUT:g} s", ""))
        return LiveCheck(rows)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b

