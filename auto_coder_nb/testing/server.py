"""A scriptable OpenAI-compatible chat-completions server for tests and benchmarks.

Real HTTP/1.1 on 127.0.0.1 (keep-alive, chunked SSE) served from a background thread::

    with FakeLLMServer() as server:
        server.enqueue(reply.text("Hello", chunks=5))
        server.enqueue(reply.tool_call("read_file", {"path": "a.txt"}))
        ...  # point a client at server.base_url
        server.requests[-1].json["messages"]

Each POST to `.../chat/completions` takes the next reply from the queue; with an empty queue the
answer echoes the last message, unless that message asks "Call the NAME tool" and the request offers
that tool: then the answer is that tool call (so `auto-coder --doctor` passes without scripting).
Replies are JSON-able dicts, so another process can script a server
started with `python -m auto_coder_nb.testing.server --port N` through `POST /_script`.

`reply.endless(...)` streams until the client goes away (a model that never stops).
Options every reply accepts: `delay` (seconds before each chunk after the first), `drop_after`
(close the connection after that many chunks, without ending the body), `wait_for` + `wait_after`
(send `wait_after` chunks, then block until `server.release(name)` or `POST /_release`), `headers`,
`close_idle` (after this reply keep the connection open, then close it without an answer when the next
request arrives on it, as cpp-httplib does when its keep-alive timeout or count runs out).
`server.every_request = reply.dribble()` (or `reply.flood()`) answers every request on every path that way.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

Spec = dict[str, Any]
RouteHandler = Callable[["RecordedRequest"], Spec]

DEFAULT_MODEL = "fake-model"
DEFAULT_MODELS = ("fake-model", "fake-model-large")
RELEASE_TIMEOUT = 120.0  # a reply waiting for release never blocks a test run for ever
CREATED = 1_700_000_000


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _event(obj: Any) -> bytes:
    return f"data: {_dumps(obj)}\n\n".encode()


DONE = b"data: [DONE]\n\n"
# "Call the NAME tool": what a user (or the doctor) says to ask for one tool call.
_CALL_THE_TOOL = re.compile(r"\bcall the (\w+) tool\b", re.IGNORECASE)


def split_text(text: str, chunks: int) -> list[str]:
    """`text` cut into `chunks` pieces of nearly equal size (fewer if the text is shorter)."""
    chunks = max(1, min(chunks, len(text))) if text else 1
    size, extra = divmod(len(text), chunks)
    pieces, start = [], 0
    for i in range(chunks):
        end = start + size + (1 if i < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


class Replies:
    """Builders of reply specs (plain dicts). Use through the module-level `reply`."""

    @staticmethod
    def text(
        text: str,
        *,
        chunks: int = 1,
        reasoning: str = "",
        reasoning_field: str = "reasoning_content",
        finish_reason: str = "stop",
        usage: dict[str, int] | bool | None = None,
        **options: Any,
    ) -> Spec:
        """A text answer streamed in `chunks` pieces, after `reasoning` if given.

        `usage`: None computes it, False sends none, a dict sends those numbers. `cut_off=True` ends the
        stream cleanly right after the text, with no finish_reason, usage or [DONE] (a proxy that cut it).
        """
        return {"type": "text", "text": text, "chunks": chunks, "reasoning": reasoning,
                "reasoning_field": reasoning_field, "finish_reason": finish_reason, "usage": usage, **options}

    @staticmethod
    def tool_call(name: str, arguments: dict[str, Any] | str | None = None, *, id: str | None = None,
                  **options: Any) -> Spec:
        args = {} if arguments is None else arguments
        return Replies.tool_calls([{"name": name, "arguments": args, "id": id}], **options)

    @staticmethod
    def tool_calls(
        calls: Iterable[dict[str, Any]],
        *,
        content: str = "",
        fragments: int = 1,
        finish_reason: str = "tool_calls",
        usage: dict[str, int] | bool | None = None,
        **options: Any,
    ) -> Spec:
        """Tool calls in OpenAI's streaming shape: id and name once per index, then argument fragments.

        Each call is `{"name", "arguments" (dict or JSON text), "id" (optional)}`.
        """
        return {"type": "tool_calls", "calls": list(calls), "content": content, "fragments": fragments,
                "finish_reason": finish_reason, "usage": usage, **options}

    @staticmethod
    def chunks(chunks: Iterable[dict[str, Any]], *, done: bool = True, **options: Any) -> Spec:
        """Raw chunk objects, each sent as one `data:` event, then `[DONE]` unless `done=False`."""
        return {"type": "chunks", "chunks": list(chunks), "done": done, **options}

    @staticmethod
    def raw_sse(pieces: Iterable[str], *, status: int = 200, content_type: str = "text/event-stream",
                encoding: str = "utf-8", **options: Any) -> Spec:
        """The pieces exactly as given, each a separate write (with `delay`, separate network reads).

        With `encoding="latin-1"` each character stands for one byte, so a piece may end inside a
        multi-byte UTF-8 character.
        """
        return {"type": "raw_sse", "pieces": list(pieces), "status": status, "content_type": content_type,
                "encoding": encoding, **options}

    @staticmethod
    def error(status: int, message: str = "", *, code: str | None = None, type: str | None = None,
              body: Any = None, headers: dict[str, str] | None = None, **options: Any) -> Spec:
        """An HTTP error: `{"error": {message, type, code}}`, or `body` (JSON-able or text) as given."""
        if body is None:
            body = {"error": {"message": message or f"fake error {status}", "type": type or "server_error",
                              "code": code}}
        return {"type": "json", "status": status, "body": body, "headers": headers or {}, **options}

    @staticmethod
    def json_body(body: Any, *, status: int = 200, headers: dict[str, str] | None = None, **options: Any) -> Spec:
        """A JSON response whatever the request asked (for instance a whole completion to a streaming request)."""
        return {"type": "json", "status": status, "body": body, "headers": headers or {}, **options}

    @staticmethod
    def completion(content: str = "", *, tool_calls: list[dict[str, Any]] | None = None, reasoning: str = "",
                   finish_reason: str | None = None, usage: dict[str, int] | None = None,
                   model: str = DEFAULT_MODEL) -> dict[str, Any]:
        """A non-streaming `chat.completion` object (to wrap in `json_body`)."""
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if reasoning:
            message["reasoning_content"] = reasoning
        if tool_calls:
            message["tool_calls"] = [_tool_call_message(call, i) for i, call in enumerate(tool_calls)]
        body: dict[str, Any] = {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": 0, "message": message,
                         "finish_reason": finish_reason or ("tool_calls" if tool_calls else "stop")}],
        }
        if usage:
            body["usage"] = usage
        return body

    @staticmethod
    def endless(prefix: str = "", *, delay: float = 0.005, **options: Any) -> Spec:
        """A text answer that never ends: `prefix`, then words that never repeat ("w1 w2 w3 ..."), one chunk every
        `delay` seconds, ignoring `max_tokens`, until the client closes the connection (or RELEASE_TIMEOUT
        passes). A model that runs away inside a step, which no repetition check can see."""
        return {"type": "endless", "prefix": prefix, "delay": delay, **options}

    @staticmethod
    def dribble(*, interval: float = 2.0, status: int = 200, content_type: str = "application/json",
                head: bool = True, **options: Any) -> Spec:
        """A hostile server: the status line and headers at once (`head=False`: those too one byte at a time), then
        a body of one byte every `interval` seconds, for ever (until the client gives up or the server stops)."""
        return {"type": "dribble", "interval": interval, "status": status, "content_type": content_type,
                "head": head, **options}

    @staticmethod
    def flood(*, status: int = 200, content_type: str = "application/json", **options: Any) -> Spec:
        """A hostile server: a body without end, as fast as the client reads it (JSON that never closes)."""
        return {"type": "flood", "status": status, "content_type": content_type, **options}

    @staticmethod
    def prompted_call(name: str, arguments: dict[str, Any] | None = None, **options: Any) -> Spec:
        """A prompted-mode tool step, `{"tool": name, "arguments": {...}}`, as the text of the answer."""
        return Replies.text(_dumps({"tool": name, "arguments": arguments or {}}), **options)

    @staticmethod
    def prompted_answer(text: str, **options: Any) -> Spec:
        """A prompted-mode answer step, `{"answer": text}`, as the text of the answer."""
        return Replies.text(_dumps({"answer": text}), **options)


reply = Replies()

# How real servers refuse `tools` for a model or setup without tool calling: (status, body).
TOOL_REFUSALS: dict[str, tuple[int, Any]] = {
    "ollama": (400, {"error": {"message": "registry.ollama.ai/library/gemma2:2b does not support tools",
                               "type": "api_error", "param": None, "code": None}}),
    "vllm": (400, {"object": "error", "message": '"auto" tool choice requires --enable-auto-tool-choice and '
                                                '--tool-call-parser to be set', "type": "BadRequestError",
                   "param": None, "code": 400}),
    "llama.cpp": (500, {"error": {"code": 500, "message": "tools param requires --jinja flag",
                                  "type": "server_error"}}),
}
STRUCTURED_OUTPUT_REFUSAL = {"error": {"message": "Unsupported parameter: 'response_format' is not supported by this "
                                                  "server.", "type": "invalid_request_error",
                                       "param": "response_format", "code": None}}


def _arguments_text(arguments: Any) -> str:
    return arguments if isinstance(arguments, str) else _dumps(arguments)


def _tool_call_message(call: dict[str, Any], index: int) -> dict[str, Any]:
    return {"id": call.get("id") or f"call{index:05d}", "type": "function",
            "function": {"name": call["name"], "arguments": _arguments_text(call.get("arguments", {}))}}


def _usage(spec: Spec, request_json: dict[str, Any], completion_tokens: int) -> dict[str, int] | None:
    given = spec.get("usage")
    if given is False:
        return None
    if isinstance(given, dict):
        return given
    prompt_tokens = len(_dumps(request_json.get("messages", []))) // 4
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class _Stream:
    """The SSE body of a text or tool-call reply, encoded once (the usage chunk depends on the request)."""

    def __init__(self, spec: Spec) -> None:
        model = spec.get("model", DEFAULT_MODEL)
        head = f'data: {{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":{CREATED},' \
               f'"model":{_dumps(model)},"choices":[{{"index":0,"delta":'
        self.model = model
        self.head = head
        tail = ',"finish_reason":null}]}\n\n'
        events: list[bytes] = [f'{head}{{"role":"assistant","content":""}}{tail}'.encode()]
        if spec["type"] == "text":
            if spec.get("reasoning"):
                key = _dumps(spec.get("reasoning_field", "reasoning_content"))
                events += [f"{head}{{{key}:{_dumps(p)}}}{tail}".encode()
                           for p in split_text(spec["reasoning"], spec.get("chunks", 1))]
            events += [f'{head}{{"content":{_dumps(p)}}}{tail}'.encode()
                       for p in split_text(spec["text"], spec.get("chunks", 1)) if p]
            self.completion_tokens = len(events) - 1
        else:
            if spec.get("content"):
                events.append(f'{head}{{"content":{_dumps(spec["content"])}}}{tail}'.encode())
            for index, call in enumerate(spec["calls"]):
                first = {"index": index, "id": call.get("id") or f"call{index:05d}", "type": "function",
                         "function": {"name": call["name"], "arguments": ""}}
                events.append(f'{head}{{"tool_calls":[{_dumps(first)}]}}{tail}'.encode())
                for piece in split_text(_arguments_text(call.get("arguments", {})), spec.get("fragments", 1)):
                    fragment = {"index": index, "function": {"arguments": piece}}
                    events.append(f'{head}{{"tool_calls":[{_dumps(fragment)}]}}{tail}'.encode())
            self.completion_tokens = len(events) - 1
        self.cut_off = bool(spec.get("cut_off"))
        if not self.cut_off:
            finish = _dumps(spec.get("finish_reason", "stop"))
            events.append(f'{head}{{}},"finish_reason":{finish}}}]}}\n\n'.encode())
        self.events = events

    def pieces(self, spec: Spec, request_json: dict[str, Any]) -> list[bytes]:
        pieces = list(self.events)
        if self.cut_off:
            return pieces
        if (request_json.get("stream_options") or {}).get("include_usage"):
            usage = _usage(spec, request_json, self.completion_tokens)
            if usage is not None:
                pieces.append(_event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                                      "model": self.model, "choices": [], "usage": usage}))
        pieces.append(DONE)
        return pieces


def _completion_body(spec: Spec, request_json: dict[str, Any]) -> Any:
    """The non-streaming answer to a text or tool-call reply."""
    if spec["type"] == "text":
        body = reply.completion(spec["text"], reasoning=spec.get("reasoning", ""),
                                finish_reason=spec.get("finish_reason"), model=spec.get("model", DEFAULT_MODEL))
        tokens = spec.get("chunks", 1)
    else:
        body = reply.completion(spec.get("content", ""), tool_calls=spec["calls"],
                                finish_reason=spec.get("finish_reason"), model=spec.get("model", DEFAULT_MODEL))
        tokens = len(spec["calls"])
    usage = _usage(spec, request_json, tokens)
    if usage is not None:
        body["usage"] = usage
    return body


class _Prepared:
    """A queued reply with its SSE body encoded ahead of the request (so benchmarks measure the client)."""

    def __init__(self, spec: Spec) -> None:
        kind = spec.get("type")
        if kind not in ("text", "tool_calls", "chunks", "raw_sse", "json", "endless", "dribble", "flood"):
            raise ValueError(f"unknown reply type {kind!r}")
        self.spec = spec
        self.stream: _Stream | None = _Stream(spec) if kind in ("text", "tool_calls") else None
        self.fixed_pieces: list[bytes] | None = None
        if kind == "chunks":
            self.fixed_pieces = [_event(chunk) for chunk in spec["chunks"]] + ([DONE] if spec.get("done", True) else [])
        elif kind == "raw_sse":
            self.fixed_pieces = [piece.encode(spec.get("encoding", "utf-8")) for piece in spec["pieces"]]


@dataclass
class RecordedRequest:
    """One request the server received. Header names are lower case."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    @property
    def form(self) -> dict[str, str]:
        return dict(parse_qsl(self.body.decode("utf-8", "replace")))

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "query": self.query, "headers": self.headers,
                "body": self.body.decode("utf-8", "replace")}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    fake: FakeLLMServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer (Stop, a cancelled turn, a test's deadline) is what the tests do on
        # purpose; the default prints a traceback framed in dashes to stderr, outside any test's captured output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: no 40 ms delayed-ACK stall
    timeout = 300  # an idle keep-alive connection ends its thread eventually
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.fake.verbose:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(body)
                body += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("content-length") or 0)
        return self.rfile.read(length) if length else b""

    def _dispatch(self) -> None:
        fake = self.server.fake
        url = urlsplit(self.path)
        request = RecordedRequest(
            method=self.command, path=url.path, query=dict(parse_qsl(url.query)),
            headers={name.lower(): value for name, value in self.headers.items()}, body=self._read_body(),
        )
        if getattr(self, "close_idle", False):  # a kept-alive connection the server had already given up
            self._drop()
            return
        try:
            if url.path.startswith("/_"):
                self._control(request)
                return
            fake._record(request)
            handler = fake._routes.get((request.method, url.path))
            if fake.every_request is not None:
                self._send_spec(fake.every_request, request)
            elif handler is not None:
                try:
                    spec = handler(request)
                except Exception as exc:  # a broken test route should read as a 500, not a hung client
                    spec = reply.error(500, f"route handler failed: {exc!r}")
                self._send_spec(spec, request)
            elif not fake._authorized(request):
                self._send_json(401, {"error": {"message": "Incorrect API key provided.",
                                                "type": "invalid_request_error", "code": "invalid_api_key"}})
            elif request.method == "POST" and url.path in ("/v1/chat/completions", "/chat/completions"):
                refusal = fake._refusal(request)
                if refusal is not None:
                    self._send_json(*refusal)
                else:
                    self._send_prepared(fake._next_reply(request), request)
            elif request.method == "GET" and url.path in ("/v1/models", "/models"):
                self._send_json(200, {"object": "list", "data": [
                    {"id": model, "object": "model", "created": CREATED, "owned_by": "fake"} for model in fake.models
                ]})
            else:
                self._send_json(404, {"error": {"message": f"no route for {request.method} {url.path}",
                                                "type": "not_found_error", "code": None}})
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _control(self, request: RecordedRequest) -> None:
        fake = self.server.fake
        if request.path == "/_script" and request.method == "POST":
            specs = request.json
            try:
                fake.enqueue(*(specs if isinstance(specs, list) else [specs]))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                self._send_json(400, {"error": {"message": f"bad reply spec: {type(exc).__name__}: {exc}"}})
                return
            self._send_json(200, {"queued": fake.queued})
        elif request.path == "/_script" and request.method == "DELETE":
            fake.clear()
            self._send_json(200, {"queued": 0})
        elif request.path == "/_release" and request.method == "POST":
            fake.release((request.json or {}).get("name", ""))
            self._send_json(200, {})
        elif request.path == "/_requests" and request.method == "GET":
            self._send_json(200, [r.to_dict() for r in fake.requests])
        else:
            self._send_json(404, {"error": {"message": f"no control route {request.method} {request.path}"}})

    def _send_json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else _dumps(body)).encode()
        self.send_response(status)
        content_type = "application/json" if not isinstance(body, (str, bytes)) else "text/plain; charset=utf-8"
        for name, value in {"Content-Type": content_type, **(headers or {})}.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_spec(self, spec: Spec, request: RecordedRequest) -> None:
        self._send_prepared(_Prepared(spec), request)

    def _send_prepared(self, prepared: _Prepared, request: RecordedRequest) -> None:
        spec = prepared.spec
        self.close_idle = bool(spec.get("close_idle"))
        request_json = request.json if isinstance(request.json, dict) else {}
        if prepared.stream is not None and not request_json.get("stream"):
            self._send_json(spec.get("status", 200), _completion_body(spec, request_json), spec.get("headers"))
            return
        if spec["type"] in ("dribble", "flood"):
            self._hostile(spec)
            return
        if spec["type"] == "json":
            self._wait(spec, 0)
            self._send_json(spec.get("status", 200), spec.get("body"), spec.get("headers"))
            return
        if spec["type"] == "endless":
            self._stream_endless(spec)
            return
        pieces = prepared.stream.pieces(spec, request_json) if prepared.stream else prepared.fixed_pieces or []
        self._stream(spec, pieces)

    def _wait(self, spec: Spec, sent: int) -> None:
        if spec.get("wait_for") and spec.get("wait_after", 0) == sent:
            self.server.fake._event(spec["wait_for"]).wait(RELEASE_TIMEOUT)

    def _stream(self, spec: Spec, pieces: list[bytes]) -> None:
        self.send_response(spec.get("status", 200))
        headers = {"Content-Type": spec.get("content_type", "text/event-stream"), "Cache-Control": "no-cache",
                   **spec.get("headers", {})}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay, drop_after = spec.get("delay", 0.0), spec.get("drop_after")
        if not delay and drop_after is None and not spec.get("wait_for"):
            data = b"".join(pieces)  # the fast path: one HTTP chunk, one write
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data) if data else b"0\r\n\r\n")
            return
        for sent, piece in enumerate(pieces):
            self._wait(spec, sent)
            if drop_after is not None and sent >= drop_after:
                self._drop()
                return
            if delay and sent:
                time.sleep(delay)
            if piece:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        self._wait(spec, len(pieces))
        if drop_after is not None:
            self._drop()
            return
        self.wfile.write(b"0\r\n\r\n")

    def _stream_endless(self, spec: Spec) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        deadline = time.monotonic() + RELEASE_TIMEOUT
        pieces = [spec.get("prefix", "")] if spec.get("prefix") else []
        count = 0
        while time.monotonic() < deadline:
            if not pieces:
                count += 1
                pieces.append(f" w{count}")
            event = _event({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": CREATED,
                            "model": DEFAULT_MODEL, "choices": [{"index": 0, "delta": {"content": pieces.pop()},
                                                                 "finish_reason": None}]})
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))  # raises once the client has gone
            self.wfile.flush()
            time.sleep(spec.get("delay", 0.005))
        self._drop()

    def _hostile(self, spec: Spec) -> None:
        """Endless: a dribble of one byte per interval, or a flood; ends when the client leaves or the server stops."""
        self.close_connection = True
        head = (f"HTTP/1.1 {spec['status']} Hostile\r\nContent-Type: {spec['content_type']}\r\n"
                "Connection: close\r\n\r\n").encode()
        stopping = self.server.fake._stopping
        try:
            if spec["type"] == "flood":
                self.wfile.write(head + b'{"a": "')
                block = b"x" * 65536
                while not stopping.is_set():
                    self.wfile.write(block)
                return
            if spec.get("head", True):
                self.wfile.write(head)
                head = b""
            while True:
                byte, head = head[:1] or b" ", head[1:]
                self.wfile.write(byte)
                self.wfile.flush()
                if stopping.wait(spec["interval"]):
                    return
        except OSError:  # the client gave up: what a hostile server is for
            return

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class FakeLLMServer:
    """An OpenAI-compatible server on 127.0.0.1 that answers from a queue of scripted replies."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, require_authorization: str | None = None,
                 models: Iterable[str] = DEFAULT_MODELS, verbose: bool = False) -> None:
        self.host, self.port = host, port
        self.models = list(models)
        self.verbose = verbose
        # When set, built-in endpoints answer 401 unless the request carries these exact header values.
        self.required_headers: dict[str, str] = {}
        if require_authorization:
            self.require_authorization(require_authorization)
        # Emulate a server without tool calling: refuse `tools` as "ollama", "vllm" or "llama.cpp" does.
        self.refuse_tools: str | None = None
        # False: refuse `response_format` (a server without structured output).
        self.structured_output = True
        # When set, every request on every path (but the /_ control routes) gets this reply: a hostile server.
        self.every_request: Spec | None = None
        self.requests: list[RecordedRequest] = []
        self._queue: list[_Prepared] = []
        self._routes: dict[tuple[str, str], RouteHandler] = {}
        self._events: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()  # ends hostile replies
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeLLMServer:
        self._stopping.clear()
        self._httpd = _HTTPServer((self.host, self.port), _Handler)
        self._httpd.fake = self
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"FakeLLMServer:{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        with self._lock:
            for event in self._events.values():
                event.set()
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    # -- scripting ---------------------------------------------------------------------------

    def enqueue(self, *specs: Spec) -> None:
        """Queue replies for the next chat-completions requests, in order."""
        prepared = [_Prepared(spec) for spec in specs]
        with self._lock:
            self._queue.extend(prepared)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def clear(self) -> None:
        """Forget queued replies and recorded requests."""
        with self._lock:
            self._queue.clear()
            self.requests.clear()

    def route(self, method: str, path: str, handler: RouteHandler) -> None:
        """Answer `method path` with `handler(request) -> reply spec` (e.g. `reply.json_body(...)`)."""
        self._routes[(method.upper(), path)] = handler

    def require_authorization(self, value: str | None) -> None:
        """Answer 401 unless the Authorization header is exactly `value` (None: no check)."""
        if value is None:
            self.required_headers.pop("authorization", None)
        else:
            self.required_headers["authorization"] = value

    def release(self, name: str) -> None:
        """Let replies waiting on `wait_for=name` go on."""
        self._event(name).set()

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path.endswith("/chat/completions")]

    # -- used by the handler -----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _event(self, name: str) -> threading.Event:
        with self._lock:
            return self._events.setdefault(name, threading.Event())

    def _authorized(self, request: RecordedRequest) -> bool:
        return all(request.headers.get(name.lower()) == value for name, value in self.required_headers.items())

    def _refusal(self, request: RecordedRequest) -> tuple[int, Any] | None:
        """The error a chat request gets for what this server does not support, or None."""
        body = request.json if isinstance(request.json, dict) else {}
        if self.refuse_tools and body.get("tools"):
            return TOOL_REFUSALS[self.refuse_tools]
        if not self.structured_output and "response_format" in body:
            return 400, STRUCTURED_OUTPUT_REFUSAL
        return None

    def _next_reply(self, request: RecordedRequest) -> _Prepared:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
        return _Prepared(default_reply(request.json))


def default_reply(request_json: Any) -> Spec:
    """The answer when nothing is queued: a call of the tool the last user message asks for by name ("Call
    the get_current_time tool", as the doctor asks) when the request offers that tool, else `default_answer`.
    A request with `response_format` (prompted tool calling) gets the same as a prompted-mode step."""
    wanted = _asked_for_tool(request_json)
    if isinstance(request_json, dict) and request_json.get("response_format"):
        return reply.prompted_call(wanted) if wanted else reply.prompted_answer(default_answer(request_json))
    return reply.tool_call(wanted) if wanted else reply.text(default_answer(request_json))


def _last_message(request_json: Any) -> tuple[str | None, str | None]:
    """(role, text) of the request's last message."""
    messages = request_json.get("messages") if isinstance(request_json, dict) else None
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    content = last.get("content")
    if isinstance(content, list):  # content parts
        content = " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return last.get("role"), content if isinstance(content, str) else None


def _asked_for_tool(request_json: Any) -> str | None:
    role, text = _last_message(request_json)
    asked = _CALL_THE_TOOL.search(text or "") if role == "user" else None
    tools = request_json.get("tools") if isinstance(request_json, dict) else None
    offered = {tool.get("function", {}).get("name") for tool in tools or () if isinstance(tool, dict)}
    return asked.group(1) if asked and asked.group(1) in offered | _prompted_tools(request_json) else None


def _prompted_tools(request_json: Any) -> set[str]:
    """The tool names a prompted-mode step schema (`response_format`) allows."""
    try:
        choices = request_json["response_format"]["json_schema"]["schema"]["anyOf"]
        return {choice["properties"]["tool"]["const"] for choice in choices if "tool" in choice["properties"]}
    except (KeyError, TypeError):
        return set()


def default_answer(request_json: Any) -> str:
    """The deterministic text answer when nothing is queued: it echoes the last message."""
    _, last = _last_message(request_json)
    return f"You said: {last}" if last else "Hello from the fake server."


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m auto_coder_nb.testing.server", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    parser.add_argument("--require-authorization", metavar="VALUE", help='e.g. "Bearer sk-test"')
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = FakeLLMServer(args.host, args.port, require_authorization=args.require_authorization,
                           verbose=args.verbose).start()
    print(f"FakeLLMServer listening on {server.base_url}", flush=True)
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    try:
        stopped.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
