"""A raw JSON-RPC client for `auto-coder --acp` (no SDK): it starts the agent as a subprocess, keeps every byte the
agent writes to stdout, and lets a test send exactly what it wants (malformed lines included)."""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from auto_coder_nb.testing.server import FakeLLMServer

WAIT = 60.0  # a guard against a hung agent, not a measure of speed

Answer = Callable[[dict[str, Any]], Any]


def agent_env(server: FakeLLMServer, home: Path, **extra: str) -> dict[str, str]:
    """The environment of an agent talking to `server`, with `home` as its home folder (its ~/.auto-coder.yaml)."""
    return {**os.environ, "HOME": str(home), "AUTO_CODER_BASE_URL": server.base_url, "AUTO_CODER_MODEL": "m",
            **extra}


class RawAgent:
    """`auto-coder --acp` as a subprocess. Requests the agent sends (permissions, files) are answered by
    `answer(message) -> result` when it returns something other than None; else they wait in `requests`."""

    def __init__(self, env: dict[str, str], cwd: Path, args: tuple[str, ...] = (), answer: Answer | None = None):
        self.process = subprocess.Popen([sys.executable, "-m", "auto_coder_nb", "--acp", *args], cwd=cwd, env=env,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.answer = answer
        self.stdout: list[bytes] = []  # every line the agent wrote to stdout, as written
        self.stderr: list[bytes] = []
        self.seen: list[dict[str, Any]] = []  # every message taken from the queue, in order
        self.requests: list[dict[str, Any]] = []  # the agent's requests left unanswered
        self._inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self._ids = itertools.count(1)
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.stdout.append(line)
            try:
                self._inbox.put(json.loads(line))
            except ValueError:
                self._inbox.put({"unparsable": line.decode(errors="replace")})
        self._inbox.put({"eof": True})

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    # -- sending ---------------------------------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        self.send_raw(json.dumps(message).encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(data)
        self.process.stdin.flush()

    def request(self, method: str, params: Any) -> int:
        number = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": number, "method": method, "params": params})
        return number

    def reply(self, request: dict[str, Any], result: Any) -> None:
        self.send({"jsonrpc": "2.0", "id": request["id"], "result": result})

    def call(self, method: str, params: Any) -> dict[str, Any]:
        """Send a request and return the agent's whole response (with `result` or `error`)."""
        number = self.request(method, params)
        return self.wait_for(lambda message: message.get("id") == number and "method" not in message)

    # -- receiving -------------------------------------------------------------------------------------------

    def wait_for(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The next message `wanted` accepts (answering or keeping the agent's requests on the way)."""
        while True:
            try:
                message = self._inbox.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"the agent said nothing for {WAIT:g} s; stderr: {self.stderr_text()}") from None
            if message.get("eof"):
                raise AssertionError(f"the agent closed stdout; stderr: {self.stderr_text()}")
            self.seen.append(message)
            if "method" in message and "id" in message:
                result = self.answer(message) if self.answer is not None else None
                if result is not None:
                    self.reply(message, result)
                else:
                    self.requests.append(message)
            if wanted(message):
                return message

    def updates(self, session_id: str, kind: str | None = None) -> list[dict[str, Any]]:
        """The session/update payloads seen so far for `session_id` (of `kind` only, if given)."""
        return [message["params"]["update"] for message in self.seen
                if message.get("method") == "session/update" and message["params"]["sessionId"] == session_id
                and (kind is None or message["params"]["update"]["sessionUpdate"] == kind)]

    def text(self, session_id: str) -> str:
        return "".join(update["content"]["text"] for update in self.updates(session_id, "agent_message_chunk"))

    def stderr_text(self) -> str:
        return b"".join(self.stderr).decode(errors="replace")[-3000:]

    # -- the usual steps ---------------------------------------------------------------------------------------

    def initialize(self, fs: bool = False) -> dict[str, Any]:
        capabilities = {"fs": {"readTextFile": fs, "writeTextFile": fs}, "terminal": False}
        return self.call("initialize", {"protocolVersion": 1, "clientCapabilities": capabilities})["result"]

    def new_session(self, cwd: Path, mcp_servers: list[dict[str, Any]] | None = None) -> str:
        response = self.call("session/new", {"cwd": str(cwd), "mcpServers": mcp_servers or []})
        assert "result" in response, response
        return str(response["result"]["sessionId"])

    def prompt(self, session_id: str, text: str) -> dict[str, Any]:
        return self.call("session/prompt", {"sessionId": session_id, "prompt": [{"type": "text", "text": text}]})

    def close(self) -> int:
        """Close stdin (the client goes away) and return the agent's exit code."""
        assert self.process.stdin is not None
        if not self.process.stdin.closed:
            self.process.stdin.close()
        try:
            return self.process.wait(WAIT)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> RawAgent:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process.poll() is None:
            self.close()


def allow(option: str) -> Answer:
    """An `answer` choosing `option` for every permission request."""
    def answer(message: dict[str, Any]) -> Any:
        if message["method"] == "session/request_permission":
            return {"outcome": {"outcome": "selected", "optionId": option}}
        return None
    return answer
