"""The OpenAI-compatible chat-completions provider: httpx, streaming SSE by default.

What this module decides: the tool-calling mode, the request body, and the loop of one request. The answer is read
by `answers.AnswerReader` (streamed or whole, one normaliser), a failure is retried as `retry.RetryPolicy` says, and
what the server turned out not to accept is kept in `quirks.ServerQuirks`.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import httpx

from .. import auth
from ..bounded_http import bounded_client
from ..config import PRODUCT_PARAMS, PROMPTED_TEMPERATURE, Config
from ..errors import BadRequest, ConfigError, ProviderError, ToolsNotSupported
from .answers import AnswerReader, mint_tool_call_id
from .base import (
    Completion,
    LLMProvider,
    ProviderEvent,
    ProviderNotice,
    Retrying,
    ToolDefinition,
)
from .capabilities import ModelCapabilities, probe_capabilities
from .known_servers import KnownServers
from .openai_errors import ServerErrors, parse_model_list, retry_after_seconds, safe_url
from .prompted import STEP_CUT, StepLimits, prompted_chat
from .quirks import ServerQuirks
from .retry import MAX_RETRIES, RETRY_BASE_DELAY, RetryPolicy, server_gave_up_connection

NO_TOOLS_NOTICE = ("Tool calling is off (llm.tool_calling: none): the model answers in plain chat and cannot read, "
                   "change or run anything.")
NO_STRUCTURED_OUTPUT_NOTICE = ("The server does not accept structured output (response_format): the model's "
                               "steps are read from its free text for the rest of the session.")
NO_TOOLS_NOTE = "No tools are available in this conversation: answer from what the user wrote."
TOOLS_HINT = ("Set llm.tool_calling to auto or prompted (--tool-calling, AUTO_CODER_TOOL_CALLING) to describe the "
              "tools in the prompt instead.")


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
        self.reader = AnswerReader(self.base_url, self.errors)
        self.retry = RetryPolicy(max_retries, retry_base_delay)
        self.quirks = ServerQuirks()  # what the server turned out not to accept, kept for the session
        self.tool_calling = config.llm.tool_calling
        self.max_tokens = config.llm.max_tokens
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

        async for event in prompted_chat(send, messages, tools, structured=self.quirks.structured_output,
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
                        if self.quirks.learn(response, body):
                            if "response_format" in body and not self.quirks.structured_output:
                                yield ProviderNotice(NO_STRUCTURED_OUTPUT_NOTICE)
                            continue
                        retry_after = retry_after_seconds(response.headers)
                        error = self.errors.status_error(response, model=body["model"])
                        if body.get("tools") and self.quirks.refuses_tools(response):
                            raise ToolsNotSupported(f"{str(error).rstrip('.')}. {TOOLS_HINT}",
                                                    status=response.status_code,
                                                    server_message=self.errors.server_message(response)[0])
                        raise error
                    async for event in self.reader.read(response, self.config.llm.timeout):
                        started = True
                        yield event
                    return
            except ProviderError as error:
                failure = error
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                if not started and not fresh_retry and server_gave_up_connection(exc):
                    # A kept-alive connection the server closed just as we reused it (llama-server after
                    # its keep-alive timeout or count): it never answered, so ask again at once on a new
                    # connection without telling the user, as browsers and urllib3 do. Once only.
                    fresh_retry = True
                    continue
                failure = self.errors.transport_error(exc, url, started)
            if started or not self.retry.allows(failure, retries):
                raise failure from None
            retries += 1
            delay = self.retry.delay(retries, retry_after)
            yield Retrying(self.retry.notice(failure, retries, delay))
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
            if self.quirks.sends(key):
                body[key] = value
        if tools:
            body["tools"] = [tool.schema() for tool in tools]
        if self.config.llm.user_field and self.config.llm.user:  # after extra_params: a locked identity wins
            body["user"] = self.config.llm.user
        streaming = self.stream and (self.quirks.stream_with_tools or not tools)
        body["stream"] = streaming
        if streaming and self.quirks.send_stream_options:
            body["stream_options"] = {"include_usage": True}
        return body

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
            if not self.retry.allows(failure, retries):
                raise failure from None
            retries += 1
            await asyncio.sleep(self.retry.delay(retries, retry_after))


def _with_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """`messages` with `note` added to the system prompt (or as one)."""
    if messages and messages[0].get("role") == "system" and isinstance(messages[0].get("content"), str):
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]
