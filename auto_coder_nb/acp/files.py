"""The workspace's files through the ACP client (`Workspace.editor`): fs/read_text_file and fs/write_text_file.

The file tools are synchronous and run on the session's own thread, so they wait here for the client's answer
while the connection's loop (another thread) keeps reading; `cancel()` (session/cancel) ends a wait at once.
"""

from __future__ import annotations

import concurrent.futures
import threading
from pathlib import Path
from typing import Any

from ..tools.registry import ToolError
from .wire import Connection, RpcError

ANSWER_SECONDS = 30.0


class ClientFiles:
    """`Workspace.editor` for a client that offers `fs.readTextFile` and/or `fs.writeTextFile`."""

    def __init__(self, connection: Connection, session_id: str, *, read: bool, write: bool) -> None:
        self.connection = connection
        self.session_id = session_id
        self.read = read
        self.write = write
        self._waiting: set[concurrent.futures.Future[Any]] = set()
        self._lock = threading.Lock()

    def read_text(self, path: Path) -> str | None:
        if not self.read:
            return None
        try:
            result = self._call("fs/read_text_file", {"sessionId": self.session_id, "path": str(path)})
        except RpcError:
            return None  # the editor has no such buffer or will not read it: the disk is the truth
        content = result.get("content") if isinstance(result, dict) else None
        return content if isinstance(content, str) else None

    def write_text(self, path: Path, text: str) -> bool:
        if not self.write:
            return False
        try:
            self._call("fs/write_text_file", {"sessionId": self.session_id, "path": str(path), "content": text})
        except RpcError as exc:
            raise ToolError(f"The editor refused to write {path}: {exc.message}") from None
        return True

    def cancel(self) -> None:
        """Stop every wait (from any thread): the turn is being cancelled."""
        with self._lock:
            waiting = list(self._waiting)
        for future in waiting:
            future.cancel()

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        future = self.connection.request_threadsafe(method, params)
        with self._lock:
            self._waiting.add(future)
        try:
            return future.result(ANSWER_SECONDS)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ToolError(f"The editor did not answer {method} within {ANSWER_SECONDS:g} s.") from None
        except concurrent.futures.CancelledError:
            raise ToolError("Stopped: the turn was cancelled.") from None
        finally:
            with self._lock:
                self._waiting.discard(future)
