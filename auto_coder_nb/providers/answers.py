"""Reading one answer of the chat-completions endpoint: a whole JSON completion or an SSE stream, normalised by one
assembler (`_Assembler`) so the agent sees the same `Completion` either way.

Quirks of real servers are tolerated rather than trusted: tool-call fragments without `index`, `id`/`name` repeated on
every fragment, arguments sent as JSON objects, `finish_reason: "stop"` after tool calls, usage-only chunks, error
objects inside a 200 stream, keep-alives without progress, an answer that repeats itself without end.
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx

from ..errors import RequestTimeout, StreamCutOff, StreamError
from .base import Completion, ProviderEvent, ProviderNotice, ReasoningChunk, TextChunk, ToolCall, Usage
from .openai_errors import ServerErrors, safe_url
from .repetition import REPETITION_NOTICE, RepetitionGuard
from .sse import MAX_EVENT_BYTES, EventTooLarge, SSEParser

MERGE_ABOVE = 32  # deltas arriving in one network read beyond this many are merged

_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner, without json.loads' checks
_PLAIN_DELTA_KEYS = frozenset({"content", "role"})
_ID_ALPHABET = string.ascii_letters + string.digits


def mint_tool_call_id() -> str:
    """Nine letters and digits: the only shape every server accepts (Mistral insists on it)."""
    return "".join(random.choices(_ID_ALPHABET, k=9))


class AnswerReader:
    """Reads the answers of the server at `base_url`; its error bodies and error objects go through `errors`."""

    def __init__(self, base_url: str, errors: ServerErrors) -> None:
        self.base_url = base_url
        self.errors = errors

    async def read(self, response: httpx.Response, idle_limit: float) -> AsyncIterator[ProviderEvent]:
        """The answer in `response` as events, then one Completion; `idle_limit`: seconds a stream may send nothing but
        keep-alives or empty deltas (llm.timeout)."""
        assembler = _Assembler()
        if "json" in response.headers.get("content-type", ""):
            # A whole completion: asked for (stream=False) or sent although streaming was asked for.
            text = await self._read_whole(response)
            whole = self._parse_json(text)
            if not isinstance(whole, dict) or not ("choices" in whole or "error" in whole):
                raise StreamError(f"the server at {safe_url(self.base_url)} did not answer like an OpenAI-compatible "
                                  f"API: {self.errors.snippet(text)}")
            for event in assembler.feed(whole, self.errors.raise_stream_error):
                yield event
        else:
            parser = SSEParser()
            reads = response.aiter_bytes()
            finished = ended = False
            pending: list[str] = []  # text of one kind, merged within a crowded read
            pending_kind: type[TextChunk | ReasoningChunk] = TextChunk
            # Keep-alive comments and empty deltas reset httpx's read timeout; this one only counts progress.
            last_progress = time.monotonic()
            runaway = _RunawayWatch()
            while not ended:
                try:
                    read = await anext(reads, None)
                except httpx.HTTPError:
                    if not finished and assembler.finish_reason is None:
                        raise
                    read = None  # the answer is whole: a server that then drops the connection only stops its reuse
                ended = read is None
                try:
                    datas = parser.close() if read is None else parser.feed(read)
                except EventTooLarge as exc:
                    raise StreamError(f"the server at {safe_url(self.base_url)} sent an answer that cannot be read: "
                                      f"{exc}") from None
                progress = assembler.progress
                # One read holding many events means the consumer fell behind (or the server sends in
                # bursts): merging them shows the same text with far fewer events for the faces to render.
                merge = len(datas) > MERGE_ABOVE
                for data in datas:
                    if finished or data == b"[DONE]":
                        finished = True  # what follows [DONE] is only read so that the connection can be reused
                        continue
                    text = data.decode("utf-8", "replace")
                    try:  # the C scanner alone: json.loads adds checks that cost as much as the parse
                        chunk, end = _scan_json(text, 0)
                    except StopIteration:
                        end = -1
                    except RecursionError:
                        raise self._too_deep() from None
                    if end != len(text):  # surrounding spaces or not JSON: let the full parser decide
                        chunk = self._parse_json(text)
                    choices = chunk.get("choices") if type(chunk) is dict else None
                    # The hot path: one plain text delta, no usage, no finish.
                    if choices and len(choices) == 1 and chunk.get("usage") is None:
                        choice = choices[0]
                        delta = choice.get("delta")
                        if delta and choice.get("finish_reason") is None and delta.keys() <= _PLAIN_DELTA_KEYS:
                            content = delta.get("content")
                            assembler.received = True
                            if not content:
                                continue
                            assembler.content.append(content)
                            assembler.progress += 1
                            if not merge:
                                yield TextChunk(content)
                                continue
                            if pending and pending_kind is not TextChunk:
                                yield pending_kind("".join(pending))
                                pending = []
                            pending_kind = TextChunk
                            pending.append(content)
                            continue
                    for event in assembler.feed(chunk, self.errors.raise_stream_error):
                        if not merge:
                            yield event
                            continue
                        if pending and type(event) is not pending_kind:
                            yield pending_kind("".join(pending))
                            pending = []
                        pending_kind = type(event)
                        pending.append(event.text)
                if pending:
                    yield pending_kind("".join(pending))
                    pending = []
                if not finished and assembler.finish_reason is None and runaway.tripped(assembler):
                    # Stop reading (leaving the block closes the connection, so the server stops generating too);
                    # an answer that ended already is kept whole.
                    await reads.aclose()  # type: ignore[attr-defined]  # now, not when collected (as the loop closes)
                    yield ProviderNotice(REPETITION_NOTICE)
                    completion = assembler.completion()
                    yield Completion(completion.content, completion.reasoning, [], "repetition", completion.usage)
                    return
                now = time.monotonic()
                if finished or assembler.progress != progress:
                    last_progress = now
                elif now - last_progress > idle_limit:
                    stalled = RequestTimeout(f"the server at {safe_url(self.base_url)} sent nothing but keep-alives "
                                             f"or empty deltas for {idle_limit:g} s (llm.timeout)")
                    stalled.retryable = False  # the user already waited the whole timeout
                    raise stalled
            if assembler.received and not finished and assembler.finish_reason is None:
                raise StreamCutOff(f"the answer from {safe_url(self.base_url)} was cut off: the stream ended without "
                                   "a finish_reason or [DONE], so it may be incomplete")
        if not assembler.received:
            raise StreamError(f"the server at {safe_url(self.base_url)} closed the connection without an answer")
        yield assembler.completion()

    async def _read_whole(self, response: httpx.Response) -> str:
        """A JSON body, read up to the size the SSE parser allows one event."""
        parts: list[bytes] = []
        size = 0
        async for part in response.aiter_bytes():
            size += len(part)
            if size > MAX_EVENT_BYTES:
                raise StreamError(f"the server at {safe_url(self.base_url)} sent an answer that cannot be read: "
                                  f"larger than {MAX_EVENT_BYTES / 1048576:g} MiB")
            parts.append(part)
        return b"".join(parts).decode(response.encoding or "utf-8", "replace")

    def _parse_json(self, text: str) -> Any:
        try:
            return json.loads(text)
        except ValueError:
            raise StreamError(f"the server at {safe_url(self.base_url)} sent something that is not JSON: "
                              f"{self.errors.snippet(text)}") from None
        except RecursionError:
            raise self._too_deep() from None

    def _too_deep(self) -> StreamError:
        return StreamError(f"the server at {safe_url(self.base_url)} sent a chunk nested too deeply to read "
                           "(JSON lists or objects thousands of levels deep)")


class _PartialCall:
    __slots__ = ("id", "name", "arguments")

    def __init__(self, id: str | None, name: str) -> None:
        self.id = id
        self.name = name
        self.arguments: list[str] = []


class _Assembler:
    """Builds one Completion from chunks (streaming) or from a whole completion (the same code)."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.calls: list[_PartialCall] = []
        self.calls_by_index: dict[Any, _PartialCall] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.received = False
        self.progress = 0  # bumped by every chunk that adds something: a stream of empty deltas is stalled

    def feed(self, chunk: Any, on_error: Callable[[Any], None]) -> list[TextChunk | ReasoningChunk]:
        if not isinstance(chunk, dict):
            raise StreamError(f"unexpected chunk: {str(chunk)[:200]}")
        if chunk.get("error"):
            on_error(chunk["error"])
        self.received = True
        if isinstance(chunk.get("usage"), dict):
            self.usage = _parse_usage(chunk["usage"])
            self.progress += 1
        events: list[TextChunk | ReasoningChunk] = []
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            whole = choice.get("message")
            delta = whole if isinstance(whole, dict) else choice.get("delta") or {}
            reasoning = _reasoning_text(delta)
            if reasoning:
                self.reasoning.append(reasoning)
                events.append(ReasoningChunk(reasoning))
            text = delta.get("content")
            if isinstance(text, list):  # content parts
                text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
            if text:
                self.content.append(text)
                events.append(TextChunk(text))
            for position, fragment in enumerate(delta.get("tool_calls") or ()):
                if isinstance(fragment, dict):
                    # In a whole message every entry is a whole call, whatever its index says.
                    self._add_fragment(fragment, position if whole is not None else fragment.get("index"))
                    self.progress += 1
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.progress += 1
        self.progress += len(events)
        return events

    def _add_fragment(self, fragment: dict[str, Any], index: Any) -> None:
        function = fragment.get("function") or {}
        call_id = fragment.get("id") or None
        name = function.get("name") or ""
        call = self._call_for(index, call_id, name)
        if call_id and not call.id:
            call.id = call_id
        if name and name != call.name:
            # Repeated names are ignored (no "read_fileread_file"); a name streamed in pieces is joined.
            call.name = name if not call.name else (call.name + name if not call.arguments else call.name)
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif arguments is not None:  # a JSON object where a string belongs: re-serialise it
            try:
                call.arguments = [json.dumps(arguments, ensure_ascii=False)]
            except RecursionError:  # the agent answers the call with an error the model can read
                call.arguments = ["(arguments nested too deeply to re-serialise)"]

    def _call_for(self, index: Any, call_id: str | None, name: str) -> _PartialCall:
        last = self.calls[-1] if self.calls else None
        if index is not None:
            call = self.calls_by_index.get(index)
            # A gateway may reuse an index for the next call: a new id with a new name after complete arguments.
            if call is not None and not (call_id and call.id and call_id != call.id and name and _complete(call)):
                return call
        elif call_id is not None:
            known = next((c for c in self.calls if c.id == call_id), None)
            if known is not None:
                return known
            if last is not None and not name:
                return last  # the id changed between fragments of one call
        elif last is not None and not (name and _complete(last)):
            return last
        call = _PartialCall(call_id, name)
        self.calls.append(call)
        if index is not None:
            self.calls_by_index[index] = call
        return call

    def completion(self) -> Completion:
        tool_calls = []
        for call in self.calls:
            arguments = "".join(call.arguments)
            tool_calls.append(ToolCall(call.id or mint_tool_call_id(), call.name, arguments if arguments.strip()
                                       else "{}"))
        finish_reason = self.finish_reason
        if tool_calls and finish_reason != "length":
            finish_reason = "tool_calls"  # whatever the server said: tool-call deltas make it a tool turn
        return Completion("".join(self.content), "".join(self.reasoning), tool_calls, finish_reason, self.usage)


class _RunawayWatch:
    """Whether the answer or the reasoning streamed so far ends in the same text repeated over and over."""

    def __init__(self) -> None:
        self.guards = {"content": RepetitionGuard(), "reasoning": RepetitionGuard()}
        self.seen = {"content": 0, "reasoning": 0}  # pieces of each already fed

    def tripped(self, assembler: _Assembler) -> bool:
        for name, guard in self.guards.items():
            pieces: list[str] = getattr(assembler, name)
            new, self.seen[name] = pieces[self.seen[name]:], len(pieces)
            if new and guard.feed("".join(new)):
                return True
        return False


def _complete(call: _PartialCall) -> bool:
    if not call.arguments:
        return False
    try:
        json.loads("".join(call.arguments))
    except (ValueError, RecursionError):
        return False
    return True


def _reasoning_text(delta: dict[str, Any]) -> str:
    value = delta.get("reasoning_content") or delta.get("reasoning")
    if isinstance(value, dict):
        value = value.get("text") or value.get("content")
    return value if isinstance(value, str) else ""


def _parse_usage(data: dict[str, Any]) -> Usage:
    prompt = int(data.get("prompt_tokens") or 0)
    completion = int(data.get("completion_tokens") or 0)
    return Usage(prompt, completion, int(data.get("total_tokens") or prompt + completion))
