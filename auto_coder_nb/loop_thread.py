"""An asyncio event loop on a daemon thread of its own.

For work that must neither wait on nor block the caller's loop: the kernel's turns, the notebook's collaboration
room, the doctor (called from inside IPython's running loop), each ACP session, the MCP servers' clients.
Daemon, so a request that will not end never keeps the process alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine
from contextlib import suppress
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, work: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(work, self.loop)

    def stop(self, within: float) -> None:
        """Cancel what still runs (a cancelled request closes its connection), then stop the loop; `within`
        seconds at most for each."""
        async def finish() -> None:
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        with suppress(BaseException):
            self.submit(finish()).result(timeout=within)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(within)
        if not self.thread.is_alive():
            self.loop.close()
