"""One ACP session: a `Session` rooted at the client's cwd, running on a thread and event loop of its own.

Its own loop, because the file tools are synchronous and, with an editor attached, wait for the client's answer
(fs/read_text_file): they block this session only, while the connection's loop keeps reading (a session/cancel,
the other sessions' prompts).
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import Any

from ..approvals import APPROVAL_MODES, APPROVAL_ORDER
from ..history import SavedConversation, read_records, saved_approval_mode
from ..loop_thread import LoopThread
from ..session import Session
from .content import compose
from .files import ClientFiles
from .updates import TurnView, Updates, replay
from .wire import Connection

STOP_SECONDS = 10.0
MODE_NAMES = {
    "ask": ("Ask", "File changes and commands ask first."),
    "auto-edit": ("Auto-edit", "File changes are made without asking; commands ask first."),
    "full-auto": ("Full auto", "File changes and commands run without asking."),
    "read-only": ("Read-only", "File changes and commands are refused."),
}


class AcpSession:
    """The state of one ACP session. `prompt`, `load` and `close` run on its thread (`thread.submit`); `cancel`
    and the `running` flag belong to the connection's loop."""

    def __init__(self, session_id: str, session: Session, thread: LoopThread, connection: Connection,
                 files: ClientFiles | None) -> None:
        self.id = session_id
        self.session = session
        self.thread = thread
        self.connection = connection
        self.files = files
        self.updates = Updates(session_id, session, connection.notify)
        self.running = False  # a prompt is being answered (set and read on the connection's loop)
        self.cancelling = False
        self._task: asyncio.Task[Any] | None = None  # the running turn, on this session's loop

    def modes(self) -> dict[str, Any]:
        """The approval modes the site allows, and the current one."""
        policy = self.session.policy
        allowed = [mode for mode in APPROVAL_MODES
                   if policy.ceiling is None or APPROVAL_ORDER.index(mode) <= APPROVAL_ORDER.index(policy.ceiling)]
        return {"currentModeId": policy.effective(),
                "availableModes": [{"id": mode, "name": MODE_NAMES[mode][0], "description": MODE_NAMES[mode][1]}
                                   for mode in allowed]}

    # -- on this session's loop ---------------------------------------------------------------------

    async def prompt(self, blocks: Any) -> tuple[str, str | None]:
        """Answer one prompt: (stop reason, error message or None). RpcError for content it cannot take."""
        self._task = asyncio.current_task()
        try:
            if self.cancelling:
                return "cancelled", None
            prompt = compose(blocks, self.session)
            view = TurnView(self.updates, self._ask)
            for notice in prompt.notices:
                view.notice(notice)
            async with aclosing(self.session.agent.run(prompt.message, prompt.images)) as events:
                async for event in events:
                    await view.handle(event)
            self.updates.flush()
            return view.stop_reason, view.error
        except asyncio.CancelledError:
            if not self.cancelling:
                raise
            self.updates.flush()
            return "cancelled", None
        finally:
            self._task = None

    async def _ask(self, params: dict[str, Any]) -> Any:
        return await asyncio.wrap_future(self.connection.request_threadsafe("session/request_permission", params))

    async def load(self, saved: SavedConversation) -> None:
        """Continue a saved conversation in its approval mode, and show it to the client before answering."""
        mode = saved_approval_mode(read_records(saved.path))
        if mode in APPROVAL_MODES:
            assert mode is not None
            self.session.policy.mode = self.session.config.site.capped_mode(mode)
        self.session.resume(saved)
        await self.show_history()

    async def show_history(self) -> None:
        """The conversation so far as updates (session/load; again for a host that loads an open session)."""
        for update in replay(self.session.conversation.messages, self.session):
            self.updates.send(update)

    async def close(self) -> None:
        await self.session.aclose()

    def _cancel_task(self) -> None:
        if self._task is not None:
            self._task.cancel()

    # -- on the connection's loop -----------------------------------------------------------------

    def cancel(self) -> None:
        """Stop the running turn (session/cancel): its stream is closed, a running command killed, a pending
        permission or file request no longer waited for."""
        if not self.running:
            return
        self.cancelling = True
        if self.files is not None:
            self.files.cancel()
        self.thread.loop.call_soon_threadsafe(self._cancel_task)
