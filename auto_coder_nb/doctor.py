"""`auto-coder --doctor`: check, one step after the other, what it takes to work with the model.

Steps: configuration sources, the base URL reachable, TLS verified (with which bundle), authentication
accepted, the model listed by /models, a short streamed answer, a native tool call when asked for one, a
prompted one (the step format, with structured output where the server has it), and which
llm.tool_calling mode to use. Each
row says pass or fail and, when it fails, the next thing to try. Secrets never appear.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from . import auth, transport
from .bounded_http import SyncClient
from .config import DEFAULT_BASE_URL, Config, redact_url, url_secrets
from .errors import AutoCoderError, ProviderError, ToolsNotSupported
from .instructions import ProjectInstructions, load_instructions
from .providers.base import Completion, TextChunk, ToolDefinition
from .providers.capabilities import ModelCapabilities
from .providers.openai_errors import ServerErrors, parse_model_list
from .state.conversation import new_correlation_id
from .text import exception_chain, hide_secrets
from .trust import HOW_TO_TRUST

PASS, WARN, FAIL, SKIP, INFO = "PASS", "WARN", "FAIL", "SKIP", "info"
STEP_WIDTH = 20
TOOL_NAME = "get_current_time"
TOOL_PROMPT = f"Call the {TOOL_NAME} tool now, with timezone UTC. Do not answer with text."
ANSWER_PROMPT = "Reply with one short sentence: are you ready?"
MODELS_SHOWN = 8
TOOL_STEPS = ["tool call", "prompted tool call", "tool calling"]
PROXY_LOGIN_HINT = "put the proxy's user and password in its URL: http://user:password@host:port"


@dataclass
class Row:
    step: str
    result: str
    detail: str
    next: str = ""


def run_doctor(config: Config, write: Callable[[str], None], *,
               instructions: ProjectInstructions | None = None) -> bool:
    """Run every check and `write` the table, one line per call (no trailing newline; `print` fits).
    True only if every step passed (a warning passes). `instructions` are the project instructions a session
    loaded; by default those of agent.working_dir (or the current folder)."""
    if instructions is None:
        folder = Path(config.agent.working_dir or ".").expanduser()
        instructions = load_instructions(folder, folder, config.agent.instructions_files)
    doctor = _Doctor(config, write, instructions)
    return doctor.run()


class _Doctor:
    def __init__(self, config: Config, write: Callable[[str], None], instructions: ProjectInstructions) -> None:
        self.config = config
        self.instructions = instructions
        self._write = write
        self.rows: list[Row] = []
        self.headers = {"x-correlation-id": f"doctor-{new_correlation_id()}"}
        self.base_url = config.llm.base_url.rstrip("/")
        self.models_url = f"{self.base_url}/models"
        self.client_kwargs: dict[str, Any] = {}
        self.capabilities: ModelCapabilities | None = None  # asked only when llm.vision is unset

    # -- output --------------------------------------------------------------------------------

    def write(self, line: str) -> None:
        # Known values only: the URLs the doctor shows went through redact_url, and its hints show a URL shape.
        self._write(hide_secrets(line, self._secrets()))

    def _secrets(self) -> list[str]:
        proxy = self.client_kwargs.get("proxy") or self.config.llm.proxy
        return [*auth.secret_values(self.config), *url_secrets(proxy)]  # the proxy may come from HTTPS_PROXY

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.write(f"  {row.step:<{STEP_WIDTH}}  {row.result:<6}  {row.detail}")
        if row.next:
            self.write(f"  {'':<{STEP_WIDTH}}  {'':<6}  next: {row.next}")
        return row

    def skip(self, steps: list[str], because: str) -> None:
        for step in steps:
            self.add(Row(step, SKIP, f"skipped: {because}"))

    # -- the steps -----------------------------------------------------------------------------

    def run(self) -> bool:
        self.write(f"auto-coder doctor: {redact_url(self.base_url)}, model {self.config.llm.model}")
        self.write(f"  {'step':<{STEP_WIDTH}}  {'result':<6}  detail")
        self.check_site()
        self.check_project()
        self.check_tools()
        self.check_endpoint()
        self.check_mcp_servers()
        return self.summary()

    def check_site(self) -> None:
        """The administrator's site files, when there are any: what they lock and allow, and what they refused."""
        site = self.config.site
        if not site.files:
            return
        parts = [f"files: {', '.join(map(str, site.files))}"]
        if site.locked:
            parts.append(f"locked: {', '.join(site.locked)}")
        allows = [*site.allow, *(["max_approval_mode"] if site.max_approval_mode else [])]
        if allows:
            parts.append(f"allow: {', '.join(allows)}")
        if self.config.warnings:
            self.add(Row("site configuration", WARN, "; ".join([*parts, *self.config.warnings]),
                         "remove the locked settings from your own files, environment and flags"))
        else:
            self.add(Row("site configuration", PASS, "; ".join(parts)))

    def check_project(self) -> None:
        """The project's config file, when it wanted settings that need the user's trust: which were ignored."""
        project = self.config.project
        if project is None or not project.needs_trust:
            return
        ignored = "; ".join(f"{key} = {value}" for key, value in project.ignored.items())
        self.add(Row("project file", WARN, f"{project.path} is not trusted, so these settings were ignored (they "
                                           f"could run commands or send your credentials elsewhere): {ignored}",
                     f"to trust it: {HOW_TO_TRUST['any']}"))

    def check_tools(self) -> None:
        """The tools agent.tools names, imported as a session would (beside the config file that names them)."""
        if not self.config.agent.tools:
            return
        from .session import configured_tools

        source = self.config.sources.get("agent.tools", "default")
        try:
            tools = configured_tools(self.config)
        except AutoCoderError as error:
            folder = self.config.folders.get("agent.tools")
            where = f"in {folder}, beside the config file that names it, " if folder else ""
            self.add(Row("custom tools", FAIL, f"{error} (agent.tools from {source})",
                         f"put the module {where}or on PYTHONPATH, and check each 'module:name'"))
            return
        self.add(Row("custom tools", PASS, f"{', '.join(tool.name for tool in tools)} (agent.tools from {source})"))

    def check_endpoint(self) -> None:
        later = ["base URL reachable", "TLS verified", "authentication", "model listed", "streamed answer",
                 *TOOL_STEPS]
        if self.check_configuration().result == FAIL:
            self.skip(later, "fix the configuration first")
            return
        reach, tls = self.check_connection()
        if reach.result == FAIL or tls.result == FAIL:
            self.skip(later[2:], "needs a connection" if reach.result == FAIL else "needs TLS to be verified")
            return
        accepted, response = self.check_authentication()
        if accepted.result == FAIL:
            self.skip(later[3:], "authentication failed")
            return
        self.check_model(response)
        self.check_chat()

    def info(self, step: str, detail: str) -> None:
        """A line of the table that informs and is not a check."""
        self.write(f"  {step:<{STEP_WIDTH}}  {INFO:<6}  {detail}")

    def show_settings(self) -> None:
        """What the model is given besides the conversation: images, project instructions."""
        setting = self.config.llm.vision
        if setting is not None:
            self.info("vision", f"llm.vision is {str(setting).lower()}: images are "
                                f"{'sent' if setting else 'not sent'} to the model")
        elif self.capabilities is not None:
            reported = self.capabilities.vision
            said = {True: "reports vision", False: "reports no vision", None: "does not say"}[reported]
            self.info("vision", f"the server {said} for this model: images are {'sent' if reported else 'not sent'} "
                                "(set llm.vision to decide)")
        names = self.config.agent.instructions_files
        files = self.instructions.describe()
        self.info("instructions", "; ".join(files) if files else f"no {' or '.join(names)} found" if names else
                  "turned off (agent.instructions_files is [])")

    def summary(self) -> bool:
        self.show_settings()
        failed = [row.step for row in self.rows if row.result == FAIL]
        skipped = [row.step for row in self.rows if row.result == SKIP]
        if failed or skipped:
            also = f" ({len(skipped)} more could not run)" if skipped else ""
            self.write(f"{len(failed)} of {len(self.rows)} checks failed: {', '.join(failed)}{also}.")
        else:
            self.write(f"All {len(self.rows)} checks passed.")
        return not (failed or skipped)

    def check_configuration(self) -> Row:
        config = self.config
        files = ", ".join(str(path) for path in config.files) or "none"
        parts = [f"files: {files}"]
        for key in ("llm.base_url", "llm.model"):
            parts.append(f"{key.split('.')[1]} from {config.sources.get(key, 'default')}")
        parts.append(f"auth: {auth.auth_mode(config)}")
        if config.llm.auth_headers:
            parts.append(f"custom headers: {', '.join(config.llm.auth_headers)}")
        url = httpx.URL(config.llm.base_url)
        if url.scheme not in ("http", "https") or not url.host:
            return self.add(Row("configuration", FAIL, "; ".join(parts),
                                f"llm.base_url must be an http:// or https:// URL, got {config.llm.base_url!r}"))
        try:
            self.client_kwargs = auth.http_client_kwargs(config)
        except AutoCoderError as error:
            return self.add(Row("configuration", FAIL, "; ".join(parts), str(error)))
        proxy = self.client_kwargs.get("proxy")
        parts.append(f"proxy: {redact_url(proxy) if proxy else 'none'}")
        return self.add(Row("configuration", PASS, "; ".join(parts)))

    def check_connection(self) -> tuple[Row, Row]:
        """Reach /models without credentials: any HTTP answer means the server (and TLS) works."""
        kwargs = {key: value for key, value in self.client_kwargs.items() if key != "auth"}
        trust = transport.tls_trust(self.config)
        https = self.base_url.startswith("https:")
        route = f"via proxy {redact_url(kwargs['proxy'])}" if kwargs.get("proxy") else "direct"
        try:
            response = SyncClient(kwargs).get(self.models_url, headers=self.headers)  # within a deadline and a cap
        except httpx.HTTPError as exc:
            return self._connection_failure(exc, trust, https, route)
        if response.status_code == 407:
            reach = self.add(Row("base URL reachable", FAIL, f"the proxy wants credentials (HTTP 407, {route})",
                                 PROXY_LOGIN_HINT))
            return reach, self.add(Row("TLS verified", SKIP, "skipped: no connection"))
        reach = self.add(Row("base URL reachable", PASS, f"GET {self.models_url} answered HTTP "
                                                          f"{response.status_code} ({route})"))
        if not https:
            return reach, self.add(Row("TLS verified", PASS, "not used (the base URL is plain http)"))
        if trust.verify is False:
            return reach, self.add(Row("TLS verified", WARN, trust.source,
                                       "set llm.ca_bundle to your CA's PEM file and drop llm.verify: false"))
        return reach, self.add(Row("TLS verified", PASS, f"with {trust.source}"))

    def _connection_failure(self, exc: httpx.HTTPError, trust: transport.Trust, https: bool,
                            route: str) -> tuple[Row, Row]:
        problem = transport.certificate_problem(exc)
        if problem is not None:
            reach = self.add(Row("base URL reachable", PASS, f"connected ({route})"))
            return reach, self.add(Row("TLS verified", FAIL, f"{problem}; trusted CAs: {trust.source}",
                                       "if your network re-signs TLS with a private CA, set llm.ca_bundle to that "
                                       "CA's PEM file, add it to llm.extra_ca_certs, or set SSL_CERT_FILE"))
        if https and _is_ssl_error(exc):
            reach = self.add(Row("base URL reachable", PASS, f"connected ({route})"))
            return reach, self.add(Row("TLS verified", FAIL, f"TLS handshake failed: {exc}",
                                       "check that the server speaks https on this port (or use http://)"))
        if isinstance(exc, httpx.ProxyError):
            hint = PROXY_LOGIN_HINT if "407" in str(exc) else \
                "check HTTPS_PROXY / HTTP_PROXY / llm.proxy, or NO_PROXY for this host"
            row = Row("base URL reachable", FAIL, f"the proxy refused ({route}): {exc}", hint)
        elif isinstance(exc, httpx.TimeoutException):
            row = Row("base URL reachable", FAIL, f"timed out ({route})",
                      "check llm.base_url and your network; behind a corporate proxy set HTTPS_PROXY or llm.proxy")
        else:
            source = self.config.sources.get("llm.base_url", "default")
            hint = (f"check that the server runs and llm.base_url is right (from {source}); behind a proxy "
                    "set HTTPS_PROXY or llm.proxy")
            if self.config.llm.base_url.rstrip("/") == DEFAULT_BASE_URL.rstrip("/"):
                hint = ("this is the default URL: start Ollama (`ollama serve`), or point elsewhere with "
                        "AUTO_CODER_BASE_URL, llm.base_url in .auto-coder.yaml, or auto-coder --base-url")
            row = Row("base URL reachable", FAIL, f"{type(exc).__name__}: {exc or 'connection failed'} ({route})",
                      hint)
        reach = self.add(row)
        return reach, self.add(Row("TLS verified", SKIP, "skipped: no connection"))

    def check_authentication(self) -> tuple[Row, httpx.Response | None]:
        mode = auth.auth_mode(self.config)
        try:
            response = SyncClient(self.client_kwargs).get(self.models_url, headers=self.headers)
        except AutoCoderError as error:
            return self.add(Row("authentication", FAIL, f"{mode}: {error}", self._auth_advice())), None
        except httpx.HTTPError as exc:
            return self.add(Row("authentication", FAIL, f"{mode}: {type(exc).__name__}: {exc}",
                                "check auth.token_url and the network path to it")), None
        if response.status_code in (401, 403):
            said, _ = ServerErrors(self.config).server_message(response)
            return self.add(Row("authentication", FAIL, f"{mode}: HTTP {response.status_code}"
                                + (f": {said}" if said else ""), self._auth_advice())), response
        return self.add(Row("authentication", PASS, f"{mode}: accepted (HTTP {response.status_code})")), response

    def _auth_advice(self) -> str:
        config = self.config
        settings = config.auth
        if settings.use_sso:
            return "check SSO_TOKEN, or the device sign-in settings (auth.device_authorization_url, " \
                   "auth.token_url, auth.client_id, auth.scope)"
        if settings.server_side_token_refresh:
            return "check auth.client_id and auth.client_secret (AUTO_CODER_CLIENT_ID / AUTO_CODER_CLIENT_SECRET)"
        if settings.token_command:
            return "run auth.token_command yourself and check the token it prints is for this server"
        if settings.token_url:
            return "check auth.client_id, auth.client_secret, auth.scope and auth.token_url"
        if config.llm.api_key:
            source = config.sources.get("llm.api_key", "llm.api_key")
            return f"the key from {source} was refused: check it, or set AUTO_CODER_API_KEY or --api-key"
        return "the server wants credentials: set AUTO_CODER_API_KEY (or --api-key), USE_SSO=true, or auth.* settings"

    def check_model(self, response: httpx.Response | None) -> Row:
        model = self.config.llm.model
        if response is None or response.status_code == 404:
            return self.add(Row("model listed", WARN, "the server has no /models; the chat steps below check the "
                                                      f"model {model!r}"))
        try:
            models = parse_model_list(response)
        except ValueError:
            return self.add(Row("model listed", WARN, f"/models answered HTTP {response.status_code} without a "
                                                      "model list; the chat steps below check the model"))
        if model in models:
            return self.add(Row("model listed", PASS, f"{model!r} is among the {len(models)} models listed"))
        shown = ", ".join(models[:MODELS_SHOWN]) + (", ..." if len(models) > MODELS_SHOWN else "")
        return self.add(Row("model listed", FAIL, f"{model!r} is not among the {len(models)} models listed: "
                                                  f"{shown or 'none'}",
                            "set llm.model (or --model, AUTO_CODER_MODEL) to one of the listed models"))

    def check_chat(self) -> None:
        from .providers.openai_compatible import OpenAICompatibleProvider

        for row in _run(self._chat(OpenAICompatibleProvider(self.config, max_retries=0))):
            self.add(row)

    async def _chat(self, provider: Any) -> list[Row]:
        try:
            if self.config.llm.vision is None:
                self.capabilities = await provider.capabilities(headers=self.headers)
            answer = await self._streamed_answer(provider)
            if answer.result == FAIL:
                return [answer, *(Row(step, SKIP, "skipped: no answer") for step in TOOL_STEPS)]
            return [answer, *await self._tool_calling(provider)]
        finally:
            await provider.aclose()

    async def _streamed_answer(self, provider: Any) -> Row:
        chunks, completion = 0, Completion()
        try:
            async for event in provider.chat([{"role": "user", "content": ANSWER_PROMPT}], headers=self.headers):
                if isinstance(event, TextChunk):
                    chunks += 1
                elif isinstance(event, Completion):
                    completion = event
        except (ProviderError, AutoCoderError) as error:
            return Row("streamed answer", FAIL, str(error), _chat_advice(error))
        text = " ".join(completion.content.split())
        if not text:
            return Row("streamed answer", FAIL, "the model answered with no text"
                       + (" (only reasoning)" if completion.reasoning else ""),
                       "try another model, or check llm.max_tokens and llm.extra_params")
        shown = text if len(text) <= 60 else text[:57] + "..."
        return Row("streamed answer", PASS, f"{chunks} chunk{'s' if chunks != 1 else ''}: {shown!r}")

    async def _tool_calling(self, provider: Any) -> list[Row]:
        """Native tool calling, then prompted (structured output, else free text), then which mode to use."""
        configured = self.config.llm.tool_calling
        provider.tool_calling = "native"
        native, refused = await self._tool_call(provider, "tool call")
        provider.tool_calling = "prompted"
        prompted, _ = await self._tool_call(provider, "prompted tool call")
        if prompted.result == PASS:
            prompted.detail += (" (with structured output)" if provider.structured_output else
                                " (read from free text: the server refused structured output)")
        found = await provider.capabilities(headers=self.headers)
        works = {"native": native.result == PASS, "prompted": prompted.result == PASS}
        effective = configured
        if configured == "auto":
            effective = "prompted" if found.tools is False or refused else "native"
        for mode, row in (("native", native), ("prompted", prompted)):
            if not works[mode] and effective != mode and works.get(effective):
                row.result = WARN  # not needed: the mode in use works
        return [native, prompted, _mode_row(configured, effective, works, found.source)]

    async def _tool_call(self, provider: Any, step: str) -> tuple[Row, bool]:
        """The row of one tool-call check, and whether the server refused `tools` outright."""
        tool = ToolDefinition(
            name=TOOL_NAME, description="The current date and time in a timezone.",
            parameters={"type": "object", "properties": {"timezone": {"type": "string"}}, "required": []},
            handler=lambda **_: "",
        )
        completion = Completion()
        try:
            async for event in provider.chat([{"role": "user", "content": TOOL_PROMPT}], [tool], headers=self.headers):
                if isinstance(event, Completion):
                    completion = event
        except ToolsNotSupported as error:
            return Row(step, FAIL, f"the server refused tools: {error.server_message}",
                       "use prompted tool calling (llm.tool_calling: auto or prompted)"), True
        except (ProviderError, AutoCoderError) as error:
            return Row(step, FAIL, str(error), "check the server's logs; the message above is what it said"), False
        names = [call.name for call in completion.tool_calls]
        if TOOL_NAME in names:
            return Row(step, PASS, f"the model called {TOOL_NAME}"), False
        got = f"called {', '.join(names)}" if names else "answered with text instead"
        if step == "tool call":
            return Row(step, FAIL, f"asked to call {TOOL_NAME}, the model {got}",
                       "pick a model trained for tool calling, or enable it on the server (vLLM: "
                       "--enable-auto-tool-choice --tool-call-parser; llama.cpp: --jinja; Ollama: a model with "
                       "the tools capability), or use prompted tool calling"), False
        return Row(step, FAIL, f"asked to call {TOOL_NAME} in the prompted step format, the model {got}",
                   "a larger model may follow the step format; with a server that has structured output "
                   "(response_format) even small models do"), False

    def check_mcp_servers(self) -> None:
        """One row per configured MCP server: started here as a session would, its state and tool count."""
        if not self.config.mcp.servers:
            return
        from .session import start_mcp_servers
        from .tools.registry import ToolRegistry

        registry = ToolRegistry()
        servers = start_mcp_servers(self.config, registry, Path(self.config.agent.working_dir or ".").expanduser())
        assert servers is not None
        try:
            for server in servers.servers.values():
                step, where = f"mcp {server.name}", server.config.describe()
                if server.state == "running":
                    read = f", {len(server.read_tools)} marked read" if server.read_tools else ""
                    self.add(Row(step, PASS, f"{where}: running, {len(server.tools)} tools{read}"))
                elif server.state == "disabled":
                    self.add(Row(step, WARN, f"{where}: disabled"))
                else:
                    self.add(Row(step, FAIL, f"{where}: {server.state}: {server.detail}", _mcp_advice(server)))
        finally:
            servers.close()


def _mcp_advice(server: Any) -> str:
    if server.config.unset is not None:
        return f"set {server.config.unset.variable} in the environment, or change {server.config.unset.key}"
    if server.state == "refused":
        return "the site configuration does not allow this server: ask your administrator"
    if "pip install" in server.detail:
        return 'pip install "auto-coder-nb[mcp]"'
    if server.config.url is not None:
        return f"check mcp.servers.{server.name}.url and .headers, and that the server runs"
    return f"run the command of mcp.servers.{server.name} yourself and read what it says"


def _mode_row(configured: str, effective: str, works: dict[str, bool], source: str) -> Row:
    """Which tool-calling mode this server and model need, against what llm.tool_calling makes of it."""
    setting = f"llm.tool_calling: {configured}"
    if configured == "auto":
        why = f" ({source} says it has no native tool calling)" if source and effective == "prompted" else ""
        setting += f" uses {effective}{why}"
    if effective == "none":
        return Row("tool calling", PASS, f"{setting}: plain chat, the model uses no tools")
    if works[effective]:
        return Row("tool calling", PASS, f"{setting}, which works here")
    other = "prompted" if effective == "native" else "native"
    if works[other]:
        return Row("tool calling", FAIL, f"{setting}, which does not work here; {other} does",
                   f"set llm.tool_calling: {other} (--tool-calling {other}, AUTO_CODER_TOOL_CALLING={other})")
    return Row("tool calling", FAIL, "neither native nor prompted tool calling worked with this model",
               "try a larger model, or set llm.tool_calling: none for plain chat without tools")


def _chat_advice(error: AutoCoderError) -> str:
    from .errors import AuthenticationFailed, ModelNotFound, RequestTimeout

    if isinstance(error, ModelNotFound):
        return "set llm.model (or --model, AUTO_CODER_MODEL) to a model the server has"
    if isinstance(error, AuthenticationFailed):
        return "/models accepted the credentials but chat did not: check the key's permissions for this model"
    if isinstance(error, RequestTimeout):
        return "the model may still be loading: try again, or raise llm.timeout"
    return "check the server's logs; the message above is what it said"


def _is_ssl_error(exc: BaseException | None) -> bool:
    return any(isinstance(link, ssl.SSLError) or "SSL" in str(link) for link in exception_chain(exc))


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine on a private loop in a worker thread: the caller may sit inside a running loop (IPython)."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="auto-coder-doctor") as pool:
        return pool.submit(asyncio.run, coroutine).result()
