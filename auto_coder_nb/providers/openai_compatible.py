"""The OpenAI-compatible chat-completions provider: httpx, streaming SSE by default.

Streaming and non-streaming answers go through one normaliser (`_Assembler`), so the agent sees the
same `Completion` either way. Quirks of real servers are tolerated rather than trusted: tool-call
fragments without `index`, `id`/`name` repeated on every fragment, arguments sent as JSON objects,
`finish_reason: "stop"` after tool calls, usage-only chunks, error objects inside a 200 stream.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import string
import threading
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx

from .. import auth
from ..bounded_http import bounded_client
from ..config import PRODUCT_PARAMS, PROMPTED_TEMPERATURE, Config
from ..errors import (
    BadRequest,
    ConfigError,
    ConnectionFailed,
    ConnectionRefused,
    HostNotFound,
    ProviderError,
    RateLimited,
    RequestTimeout,
    StreamCutOff,
    StreamError,
    ToolsNotSupported,
)
from ..text import caused_by
from .base import (
    Completion,
    LLMProvider,
    ProviderEvent,
    ProviderNotice,
    ReasoningChunk,
    Retrying,
    TextChunk,
    ToolCall,
    ToolDefinition,
    Usage,
)
from .capabilities import ModelCapabilities, probe_capabilities
from .known_servers import KnownServers
from .openai_errors import ServerErrors, parse_model_list, retry_after_seconds, safe_url
from .prompted import STEP_CUT, StepLimits, prompted_chat
from .repetition import REPETITION_NOTICE, RepetitionGuard
from .sse import MAX_EVENT_BYTES, EventTooLarge, SSEParser

MAX_RETRIES = 4
MERGE_ABOVE = 32  # deltas arriving in one network read beyond this many are merged
RETRY_BASE_DELAY = 0.5
MAX_RETRY_DELAY = 60.0

_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner, without json.loads' checks
_PLAIN_DELTA_KEYS = frozenset({"content", "role"})
_ID_ALPHABET = string.ascii_letters + string.digits
# What servers say when they refuse `tools` (Ollama, vLLM without auto tool choice, llama.cpp without --jinja...).
_NO_TOOL_SUPPORT = re.compile(
    r"(does not|doesn't|do not|don't|cannot) (support|use) (tools|tool[ _-]?(calling|calls|use)|function[ _-]?call)"
    r"|tools? (is|are) not supported|(tool|function)[ _-]?call(ing|s)? (is|are) not (supported|enabled|available)"
    r"|enable-auto-tool-choice|tool-call-parser|tools param requires|tool_choice param requires",
    re.IGNORECASE,
)
_NO_STRUCTURED_OUTPUT = re.compile(r"response_format|json_schema|structured output|grammar|guided", re.IGNORECASE)
NO_TOOLS_NOTICE = ("Tool calling is off (llm.tool_calling: none): the model answers in plain chat and cannot read, "
                   "change or run anything.")
NO_STRUCTURED_OUTPUT_NOTICE = ("The server does not accept structured output (response_format): the model's "
                               "steps are read from its free text for the rest of the session.")
NO_TOOLS_NOTE = "No tools are available in this conversation: answer from what the user wrote."
TOOLS_HINT = ("Set llm.tool_calling to auto or prompted (--tool-calling, AUTO_CODER_TOOL_CALLING) to describe the "
              "tools in the prompt instead.")
_TOOLS_WITH_STREAM = re.compile(r"tools?\b.*\bstream|stream\w*\b.*\btools?\b", re.IGNORECASE)


def mint_tool_call_id() -> str:
    """Nine letters and digits: the only shape every server accepts (Mistral insists on it)."""
    return "".join(random.choices(_ID_ALPHABET, k=9))


class OpenAICompatibleProvider(LLMProvider):
    """Talks to `{base_url}/chat/completions` and `{base_url}/models`.

    One `httpx.AsyncClient` per event loop, made on first use there: the magics and the chat panel
    share a provider but run turns on different loops, and a client is bound to its loop.
    Before each retry of a chat request it yields `Retrying("rate limited (429), retrying in 2.0 s (1/4)")`.
    """

    def __init__(
        self,
        config: Config,
        *,
        stream: bool | None = None,
        max_retries: int = MAX_RETRIES,
        retry_base_delay: float = RETRY_BASE_DELAY,
    ) -> None:
        self.config = config
        self.model = config.llm.model
        self.base_url = config.llm.base_url.rstrip("/")
        # What the product sets itself never comes from extra_params (load_config refuses it; set in code, too).
        self.extra_params = {k: v for k, v in config.llm.extra_params.items() if k not in PRODUCT_PARAMS}
        self.stream = True if stream is None else stream
        self.errors = ServerErrors(config)
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.tool_calling = config.llm.tool_calling
        self.max_tokens = config.llm.max_tokens
        # What the server turned out not to accept; learnt from its errors, kept for the session.
        self.send_stream_options = True
        self.send_tool_choice = True  # false once the server rejected `tool_choice` (an answer-only request)
        self.stream_with_tools = True
        self.structured_output = True
        self._modes: dict[str, str] = {}  # auto's choice per model: native or prompted
        self._capabilities: dict[str, ModelCapabilities] = {}  # what the server said, per model
        self.known = KnownServers()  # what servers said, across runs: notices said once, --show-config
        self._said_no_tools = False
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._clients_lock = threading.Lock()

    # -- clients -------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            client = self._clients.get(loop)
            if client is None or client.is_closed:
                client = self._clients[loop] = bounded_client(auth.http_client_kwargs(self.config))
        return client

    async def aclose(self) -> None:
        """Close the client of the running loop (clients of other loops are closed from their own loop)."""
        with self._clients_lock:
            client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # -- chat ----------------------------------------------------------------------------

    async def chat(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolDefinition] | None = None,
        *,
        headers: dict[str, str] | None = None,
        model: str | None = None,
        tool_calling: str | None = None,
        answer_only: bool = False,
    ) -> AsyncIterator[ProviderEvent]:
        """One model request in the tool-calling mode of `llm.tool_calling`, or `tool_calling` for this request
        only (auto decides once per model). `answer_only` keeps the tools in view but lets the model only answer:
        `tool_choice: none` natively, an answer-only step schema when prompted."""
        model = model or self.model
        setting = tool_calling or self.tool_calling
        mode = setting if tools else "native"
        if mode == "auto":
            mode, notice = await self._auto_mode(model, headers)
            if notice:
                yield ProviderNotice(notice)
        if mode == "none" or not tools:
            if mode == "none" and not self._said_no_tools:
                self._said_no_tools = True
                yield ProviderNotice(NO_TOOLS_NOTICE)
            async for event in self._exchange(_with_note(messages, NO_TOOLS_NOTE) if mode == "none" else messages,
                                              None, headers, model):
                yield event
            return
        if mode == "prompted":
            async for event in self._prompted(messages, tools, headers, model, answer_only):
                yield event
            return
        try:
            if answer_only:
                async for event in self._answer_only(messages, tools, headers, model):
                    yield event
                return
            async for event in self._exchange(messages, tools, headers, model):
                yield event
        except ToolsNotSupported as refusal:
            if setting != "auto":
                raise
            self._modes[model] = "prompted"  # the refusal came before any answer: nothing was shown yet
            said = f" ({refusal.server_message})" if refusal.server_message else ""
            notice = self._switch_notice(model, f"the server refused native tool calls{said}")
            if notice:
                yield ProviderNotice(notice)
            async for event in self._prompted(messages, tools, headers, model, answer_only):
                yield event

    async def _auto_mode(self, model: str, headers: dict[str, str] | None) -> tuple[str, str]:
        """native or prompted for `model`, and the notice when that is news: from the server's capabilities when
        it states them, else native until the server refuses tools."""
        mode = self._modes.get(model)
        if mode is not None:
            return mode, ""
        found = await self.capabilities(model, headers=headers)
        if found.tools is False:
            self._modes[model] = "prompted"
            return "prompted", self._switch_notice(model, f"{found.source or 'the server'} says it has no native "
                                                          "tool calling")
        self._modes[model] = "native"
        return "native", ""

    def _switch_notice(self, model: str, why: str) -> str:
        """One line, said once per server and model (remembered across runs), else ""."""
        notice = f"Model {model}: {why}; its tools are described in the prompt instead (llm.tool_calling: auto)."
        return notice if self.known.first_time(self.base_url, model, notice) else ""

    async def _answer_only(self, messages: list[dict[str, Any]], tools: list[ToolDefinition],
                           headers: dict[str, str] | None, model: str) -> AsyncIterator[ProviderEvent]:
        """The native request after a repeated step: `tool_choice: none`, capped hard (StepLimits.answer_only)."""
        extra: dict[str, Any] = {"tool_choice": "none"}
        if not self._user_caps_tokens():
            extra["max_tokens"] = self._limits().answer_only
        async for event in self._exchange(messages, tools, headers, model, extra):
            if isinstance(event, Completion) and event.finish_reason == "length" and "max_tokens" in extra:
                yield ProviderNotice(STEP_CUT.format(tokens=extra["max_tokens"]))
                event = Completion(event.content, event.reasoning, event.tool_calls, "step_limit", event.usage)
            yield event

    def _limits(self) -> StepLimits:
        return StepLimits(self.config.llm.step_max_tokens, self.max_tokens)

    def _user_caps_tokens(self) -> bool:
        """Whether llm.extra_params sets the token limit itself (it wins over ours)."""
        return bool({"max_tokens", "max_completion_tokens"} & self.extra_params.keys())

    async def _prompted(self, messages: list[dict[str, Any]], tools: list[ToolDefinition],
                        headers: dict[str, str] | None, model: str,
                        answer_only: bool = False) -> AsyncIterator[ProviderEvent]:
        # Small models copy arguments badly at a server's default temperature: a low one unless the user set one.
        own = {} if "temperature" in self.extra_params else {"temperature": PROMPTED_TEMPERATURE}
        user_caps = self._user_caps_tokens()

        def send(prompt: list[dict[str, Any]], extra: dict[str, Any]) -> AsyncGenerator[ProviderEvent, None]:
            if user_caps:
                extra = {key: value for key, value in extra.items() if key != "max_tokens"}
            return self._exchange(prompt, None, headers, model, {**own, **extra})

        async for event in prompted_chat(send, messages, tools, structured=self.structured_output,
                                         new_call_id=mint_tool_call_id, answer_only=answer_only,
                                         limits=self._limits()):
            yield event

    async def _exchange(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolDefinition] | None,
        headers: dict[str, str] | None,
        model: str,
        extra: dict[str, Any] | None = None,
    ) -> AsyncGenerator[ProviderEvent, None]:
        """One request (retried when worth it) as it goes on the wire: streamed events, then one Completion."""
        client = self._client()
        url = f"{self.base_url}/chat/completions"
        retries = 0
        fresh_retry = False
        while True:
            body = self._request_body(messages, tools, model, extra)
            started = False
            retry_after: float | None = None
            try:
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code >= 300:
                        await response.aread()
                        if self._adapt_to_rejection(response, body):
                            if "response_format" in body and not self.structured_output:
                                yield ProviderNotice(NO_STRUCTURED_OUTPUT_NOTICE)
                            continue
                        retry_after = retry_after_seconds(response.headers)
                        error = self.errors.status_error(response, model=body["model"])
                        if body.get("tools") and _refuses_tools(response):
                            raise ToolsNotSupported(f"{str(error).rstrip('.')}. {TOOLS_HINT}",
                                                    status=response.status_code,
                                                    server_message=self.errors.server_message(response)[0])
                        raise error
                    async for event in self._read_answer(response):
                        started = True
                        yield event
                    return
            except ProviderError as error:
                failure = error
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                if not started and not fresh_retry and _server_gave_up_connection(exc):
                    # A kept-alive connection the server closed just as we reused it (llama-server after
                    # its keep-alive timeout or count): it never answered, so ask again at once on a new
                    # connection without telling the user, as browsers and urllib3 do. Once only.
                    fresh_retry = True
                    continue
                failure = self.errors.transport_error(exc, url, started)
            if started or not failure.retryable or retries >= self._retry_limit(failure):
                raise failure from None
            retries += 1
            delay, notice = self._retry_notice(failure, retries, retry_after)
            yield Retrying(notice)
            await asyncio.sleep(delay)

    def _request_body(self, messages: list[dict[str, Any]], tools: list[ToolDefinition] | None,
                      model: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        refusal = self.config.site.request_model_refusal(model, self.config.llm.model)
        if refusal is not None:  # the site's lock and allow-list hold for what is sent, whatever chose the model
            raise ConfigError(refusal)
        body: dict[str, Any] = {**self.extra_params, "model": model, "messages": messages}
        if self.max_tokens is not None and not {"max_tokens", "max_completion_tokens"} & body.keys():
            body["max_tokens"] = self.max_tokens
        for key, value in (extra or {}).items():
            if (key != "response_format" or self.structured_output) and (key != "tool_choice" or self.send_tool_choice):
                body[key] = value
        if tools:
            body["tools"] = [tool.schema() for tool in tools]
        if self.config.llm.user_field and self.config.llm.user:  # after extra_params: a locked identity wins
            body["user"] = self.config.llm.user
        streaming = self.stream and (self.stream_with_tools or not tools)
        body["stream"] = streaming
        if streaming and self.send_stream_options:
            body["stream_options"] = {"include_usage": True}
        return body

    def _adapt_to_rejection(self, response: httpx.Response, body: dict[str, Any]) -> bool:
        """Learn from an error that names a feature the server lacks; True when the request should be resent."""
        if response.status_code not in (400, 422, 500, 501):
            return False
        text = response.text
        if "stream_options" in body and ("stream_options" in text or "include_usage" in text):
            self.send_stream_options = False
            return True
        if "tool_choice" in body and "tool_choice" in text:
            self.send_tool_choice = False  # the request is still answered; only the hint to answer is lost
            return True
        if body.get("stream") and body.get("tools") and _TOOLS_WITH_STREAM.search(text):
            self.stream_with_tools = False  # e.g. older llama-server: 500 "Cannot use tools with stream"
            return True
        if "response_format" in body and _NO_STRUCTURED_OUTPUT.search(text):
            self.structured_output = False  # prompted mode parses steps from free text from now on
            return True
        return False

    async def _read_answer(self, response: httpx.Response) -> AsyncIterator[ProviderEvent]:
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
            idle_limit = self.config.llm.timeout
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

    # -- models --------------------------------------------------------------------------

    async def capabilities(self, model: str | None = None, *,
                           headers: dict[str, str] | None = None) -> ModelCapabilities:
        """What the server says `model` (default: the configured one) can do, asked once per model."""
        model = model or self.model
        if model not in self._capabilities:
            found = await probe_capabilities(self._client(), self.base_url, model, headers=headers)
            if found is None:
                return ModelCapabilities()
            self._capabilities[model] = found
            self.known.remember(self.base_url, model, found)
        return self._capabilities[model]

    async def list_models(self, *, headers: dict[str, str] | None = None) -> list[str]:
        client = self._client()
        url = f"{self.base_url}/models"
        retries = 0
        while True:
            retry_after: float | None = None
            try:
                response = await client.get(url, headers=headers)
                if response.status_code < 300:
                    try:
                        return parse_model_list(response)
                    except ValueError:
                        raise BadRequest(f"{safe_url(url)} did not answer with a model list: "
                                         f"{self.errors.snippet(response.text)}") from None
                retry_after = retry_after_seconds(response.headers)
                failure = self.errors.status_error(response, listing=True)
            except ProviderError as error:
                failure = error
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                failure = self.errors.transport_error(exc, url, started=False)
            if not failure.retryable or retries >= self._retry_limit(failure):
                raise failure from None
            retries += 1
            await asyncio.sleep(self.retry_delay(retries, retry_after))

    # -- retries and errors --------------------------------------------------------------

    def _retry_limit(self, failure: ProviderError) -> int:
        # A refused connection or an unknown host is one quick retry (a server starting up, a DNS hiccup);
        # four would make every typo cost 7 s.
        quick = isinstance(failure, (ConnectionRefused, HostNotFound))
        return min(1, self.max_retries) if quick else self.max_retries

    def retry_delay(self, retries: int, retry_after: float | None = None) -> float:
        """Seconds before retry number `retries` (1-based): the server's wish, else exponential backoff
        with up to 25% jitter; never more than a minute."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_DELAY)
        backoff = self.retry_base_delay * 2 ** (retries - 1)
        return min(backoff * (1 - 0.25 * random.random()), MAX_RETRY_DELAY)

    def _retry_notice(self, failure: ProviderError, retries: int, retry_after: float | None) -> tuple[float, str]:
        """The delay before retry number `retries`, and the sentence that tells the user."""
        delay = self.retry_delay(retries, retry_after)
        reason = "rate limited (429)" if isinstance(failure, RateLimited) else _short_reason(failure)
        notice = f"{reason}, retrying in {delay:.1f} s ({retries}/{self._retry_limit(failure)})"
        return delay, notice


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


def _server_gave_up_connection(exc: Exception) -> bool:
    """Whether a request failed before any answer byte because the server closed the connection under it."""
    if isinstance(exc, httpx.RemoteProtocolError):
        return "without sending a response" in str(exc)
    if isinstance(exc, (httpx.ReadError, httpx.WriteError)):
        return caused_by(exc, ConnectionResetError) or caused_by(exc, BrokenPipeError)
    return False


def _refuses_tools(response: httpx.Response) -> bool:
    return response.status_code in (400, 422, 500, 501) and bool(_NO_TOOL_SUPPORT.search(response.text))


def _with_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """`messages` with `note` added to the system prompt (or as one)."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


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


def _short_reason(error: ProviderError) -> str:
    if error.status is not None:
        return f"server error ({error.status})"
    if isinstance(error, ConnectionRefused):
        return "connection refused"
    if isinstance(error, HostNotFound):
        return "host not found"
    return "connection failed" if isinstance(error, ConnectionFailed) else type(error).__name__
