"""run_cell's runner in the kernel: a notebook cell's source run as the user's run would (IPython syntax, history,
an execution number, `_` and `Out`, post-execute hooks such as matplotlib's inline figures), its outputs caught
as nbformat outputs for the notebook document instead of going to the cell that is running (the magic's, or
none for the panel).

The kernel protocol has no message that asks the frontend to run a cell, and a request on the kernel's own
connection would wait for the running cell to end. So the source runs here, nested, through
`shell.run_cell`; ipykernel's display hooks (`register_hook`, a hook that returns None stops the message)
catch displays and results, the standard streams are swapped for the run, and the traceback is caught where
IPython lets subclasses show it elsewhere (`_showtraceback`). Must be called on the kernel's main thread.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from .text import scrub
from .tools.notebook import CellRun

IMAGE_TYPES = ("image/png", "image/jpeg")
TEXT_TYPES = ("text/plain", "text/html", "text/markdown", "text/latex")


class _Outputs:
    """The run's outputs in order, as nbformat output dicts, secrets hidden."""

    def __init__(self, secrets: Iterable[str | None]) -> None:
        self.secrets = list(secrets)
        self.items: list[dict[str, Any]] = []
        self._clear_on_next = False
        self._display_ids: dict[str, list[int]] = {}

    def _add(self, output: dict[str, Any]) -> None:
        if self._clear_on_next:
            self.items.clear()
            self._display_ids.clear()
            self._clear_on_next = False
        self.items.append(output)

    def stream(self, name: str, text: str) -> None:
        if not text:
            return
        text = scrub(text, self.secrets)
        last = self.items[-1] if self.items and not self._clear_on_next else None
        if last is not None and last.get("output_type") == "stream" and last.get("name") == name:
            last["text"] += text
        else:
            self._add({"output_type": "stream", "name": name, "text": text})

    def message(self, msg: dict[str, Any]) -> None:
        """A display_data, update_display_data, execute_result or clear_output message of the run."""
        kind = msg.get("header", {}).get("msg_type") or msg.get("msg_type")
        content = msg.get("content", {})
        if kind == "clear_output":
            if content.get("wait"):
                self._clear_on_next = True
            else:
                self.items.clear()
                self._display_ids.clear()
            return
        data = {mime: scrub(value, self.secrets) if mime in TEXT_TYPES and isinstance(value, str) else value
                for mime, value in (content.get("data") or {}).items()}
        display_id = (content.get("transient") or {}).get("display_id")
        if kind == "update_display_data":
            for index in self._display_ids.get(display_id or "", []):
                self.items[index]["data"] = data
                self.items[index]["metadata"] = content.get("metadata") or {}
            return
        output: dict[str, Any] = {"output_type": "execute_result" if kind == "execute_result" else "display_data",
                                  "data": data, "metadata": content.get("metadata") or {}}
        if kind == "execute_result":
            output["execution_count"] = None  # filled in with the run's number at the end
        self._add(output)
        if display_id:
            self._display_ids.setdefault(display_id, []).append(len(self.items) - 1)

    def error(self, name: str, value: str, traceback: list[str]) -> None:
        self._add({"output_type": "error", "ename": name, "evalue": scrub(value, self.secrets),
                   "traceback": [scrub(line, self.secrets) for line in traceback]})

    def images(self) -> list[bytes]:
        from .images import decode_output

        found = []
        for output in self.items:
            for mime in IMAGE_TYPES:
                value = (output.get("data") or {}).get(mime)
                if isinstance(value, str):
                    found.append(decode_output(value))
        return found


class _Stream(io.TextIOBase):
    """sys.stdout or sys.stderr during the run."""

    encoding = "utf-8"

    def __init__(self, name: str, outputs: _Outputs) -> None:
        self.name_ = name
        self.outputs = outputs

    def write(self, text: str) -> int:
        self.outputs.stream(self.name_, text)
        return len(text)

    def writable(self) -> bool:
        return True


def run_cell_captured(shell: Any, source: str, secrets: Iterable[str | None] = ()) -> CellRun:
    """Run `source` in `shell` as a cell of its own; returns its outputs and execution count."""
    outputs = _Outputs(secrets)
    with _captured(shell, outputs):
        result = shell.run_cell(source, store_history=True)
    count = getattr(result, "execution_count", None)
    for output in outputs.items:
        if output["output_type"] == "execute_result":
            output["execution_count"] = count
    return CellRun(outputs.items, count, outputs.images())


@contextlib.contextmanager
def _captured(shell: Any, outputs: _Outputs) -> Iterator[None]:
    def hook(msg: dict[str, Any]) -> None:
        outputs.message(msg)
        return None  # handled: not sent to the frontend

    def show_traceback(etype: type, evalue: BaseException, stb: list[str]) -> None:
        outputs.error(etype.__name__, str(evalue), list(stb))

    hooked = [owner for owner in (shell.display_pub, shell.displayhook) if hasattr(owner, "register_hook")]
    saved_streams = sys.stdout, sys.stderr
    saved_traceback = vars(shell).get("_showtraceback")
    for owner in hooked:
        owner.register_hook(hook)
    sys.stdout, sys.stderr = _Stream("stdout", outputs), _Stream("stderr", outputs)  # type: ignore[assignment]
    shell._showtraceback = show_traceback  # IPython's place for showing tracebacks elsewhere
    try:
        yield
    finally:
        if saved_traceback is None:
            del shell._showtraceback
        else:
            shell._showtraceback = saved_traceback
        sys.stdout, sys.stderr = saved_streams
        for owner in hooked:
            owner.unregister_hook(hook)
