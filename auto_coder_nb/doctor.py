"""`auto-coder --doctor`: check, one step after the other, what it takes to work with the model.

Steps: configuration sources, the base URL reachable, TLS verified (with which bundle), authentication
accepted, the model listed by /models, a short streamed answer, a native tool call when asked for one, a
prompted one (the step format, with structured output where the server has it), and which
llm.tool_calling mode to use. Each
row says pass or fail and, when it fails, the next thing to try. Secrets never appear.

Every request has a deadline (the whole request, not each read) and every model request a small token cap, so
the doctor finishes whatever the server does; a step still waiting after a moment says what it waits for. Ctrl-C
(or a kernel interrupt) stops the request under way at once and raises KeyboardInterrupt, which each face turns
into one line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from . import auth, transport
from .config import DEFAULT_BASE_URL, DEFAULT_CONTEXT_WINDOW, Config, redact_url, url_secrets
from .errors import AutoCoderError, ProviderError, ToolsNotSupported
from .hub import hub_server
from .instructions import ProjectInstructions, load_instructions
from .loop_thread import LoopThread
from .private import privacy
from .providers.base import Completion, TextChunk, ToolDefinition
from .providers.capabilities import ModelCapabilities
from .providers.openai_errors import ServerErrors, parse_model_list
from .site_policy import SITE_CONFIG, SITE_CONFIG_ENV
from .state.conversation import new_correlation_id
from .text import MIN_SECRET_LENGTH, exception_chain, scrub
from .trust import HOW_TO_TRUST

if TYPE_CHECKING:
    from .live_notebook import LiveEditing

PASS, WARN, FAIL, SKIP, INFO = "PASS", "WARN", "FAIL", "SKIP", "info"
STEP_WIDTH = 20
TOOL_NAME = "get_current_time"
TOOL_PROMPT = f"Call the {TOOL_NAME} tool now, with timezone UTC. Do not answer with text."
ANSWER_PROMPT = "Reply with one short sentence: are you ready?"
MODELS_SHOWN = 8
REQUEST_DEADLINE = 30.0  # seconds for GET /models and the capability probe
AUTH_DEADLINE = 180.0  # fetching a token may include a sign-in in the browser
CHAT_DEADLINE = 120.0  # seconds for each model request: a CPU model may read the prompt for a while
ANSWER_TOKENS = 128  # the doctor's cap on each answer: one short sentence, or one tool call
WAIT_NOTICE_AFTER = 1.0  # a step still waiting after this many seconds says what it waits for
MAX_BODY = 1_048_576  # bytes of a /models answer read; the rest is left unread
CLOSE_WITHIN = 3.0  # seconds for what is still running to end after Ctrl-C
TOOL_STEPS = ["tool call", "prompted tool call", "tool calling"]
PROXY_LOGIN_HINT = "put the proxy's user and password in its URL, before the host: user:password@host:port"


@dataclass
class Row:
    step: str
    result: str
    detail: str
    next: str = ""


def run_doctor(config: Config, write: Callable[[str], None], *,
               instructions: ProjectInstructions | None = None, live: LiveEditing | None = None) -> bool:
    """Run every check and `write` the table, one line per call (no trailing newline; `print` fits).
    True only if every step passed (a warning passes). `instructions` are the project instructions a session
    loaded; by default those of agent.working_dir (or the current folder). `live`: the kernel's way to its open
    notebook, whose server, collaboration room and round trip are checked too."""
    if instructions is None:
        folder = Path(config.agent.working_dir or ".").expanduser()
        instructions = load_instructions(folder, folder, config.agent.instructions_files)
    doctor = _Doctor(config, write, instructions, live)
    try:
        return doctor.run()
    finally:
        doctor.runner.stop(CLOSE_WITHIN)


class _Doctor:
    def __init__(self, config: Config, write: Callable[[str], None], instructions: ProjectInstructions,
                 live: LiveEditing | None = None) -> None:
        self.config = config
        self.live = live
        self.instructions = instructions
        self._write = write
        self.rows: list[Row] = []
        self.headers = {"x-correlation-id": f"doctor-{new_correlation_id()}"}
        self.base_url = config.llm.base_url.rstrip("/")
        # Chat never sends user information written in the base URL (its auth wins), so the doctor does not either.
        self.models_url = str(httpx.URL(f"{self.base_url}/models").copy_with(username=None, password=None)) \
            if _is_http_url(self.base_url) else f"{self.base_url}/models"
        self.client_kwargs: dict[str, Any] = {}
        self.capabilities: ModelCapabilities | None = None  # what the server says of the model, once asked
        self.runner = _Runner()

    # -- output --------------------------------------------------------------------------------

    def write(self, line: str) -> None:
        # Known secrets, and the user information of every URL whatever its length (`pw` is no ordinary word here).
        self._write(scrub(line, self._secrets()))

    def _secrets(self) -> list[str]:
        proxy = self.client_kwargs.get("proxy") or self.config.llm.proxy
        live = self.live.secret_values() if self.live is not None else []  # the Jupyter server's token
        return [*auth.secret_values(self.config), *url_secrets(proxy), *live]  # the proxy may come from HTTPS_PROXY

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.write(f"  {row.step:<{STEP_WIDTH}}  {row.result:<6}  {row.detail}")
        if row.next:
            self.write(f"  {'':<{STEP_WIDTH}}  {'':<6}  next: {row.next}")
        return row

    def wait(self, step: str, what: str, work: Coroutine[Any, Any, Any], deadline: float) -> Any:
        """Run `work` on the doctor's loop within `deadline` seconds and return its result; after a moment a line
        says what the step waits for. TimeoutError when the deadline passes; Ctrl-C cancels it and propagates."""
        return self.runner.run(work, deadline, lambda: self.write(
            f"  {step:<{STEP_WIDTH}}  {'...':<6}  waiting for {what}; {deadline:g} s at most, Ctrl-C stops"))

    def skip(self, steps: list[str], because: str) -> None:
        for step in steps:
            self.add(Row(step, SKIP, f"skipped: {because}"))

    # -- the steps -----------------------------------------------------------------------------

    def run(self) -> bool:
        self.write(f"auto-coder doctor: {redact_url(self.base_url)}, model {self.config.llm.model}")
        self.write(f"  {'step':<{STEP_WIDTH}}  {'result':<6}  detail")
        self.check_site()
        self.check_hub()
        self.check_private_folders()
        self.check_command_lines()
        self.check_project()
        self.check_tools()
        self.check_endpoint()
        self.check_mcp_servers()
        self.check_live()
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

    def check_hub(self) -> None:
        """Under JupyterHub: whose server this is, and the site configuration every user there should have (a node
        without the site file would leave its users unlocked)."""
        server = hub_server()
        if server is None:
            return
        detail = f"running in {server.describe()}; its API token is kept out of commands and hidden"
        if self.config.site.files:
            self.add(Row("JupyterHub", PASS, f"{detail}; site files: {', '.join(map(str, self.config.site.files))}"))
        else:
            self.add(Row("JupyterHub", WARN, f"{detail}; no site configuration here ({SITE_CONFIG_ENV} is not set and "
                                             f"{SITE_CONFIG} does not exist on this node), so nothing is locked",
                         "if your administrator set one up, tell them it is missing on this node"))

    def check_command_lines(self) -> None:
        """A secret in a command line the product starts (an MCP server's args, auth.token_command) is readable by
        every user of the machine in /proc/*/cmdline: warn, naming where, never the value."""
        secrets = [value for value in auth.secret_values(self.config) if len(value) >= MIN_SECRET_LENGTH]
        lines = {f"mcp.servers.{name}.args": " ".join([server.command or "", *server.args])
                 for name, server in self.config.mcp.servers.items() if server.url is None}
        lines["auth.token_command"] = self.config.auth.token_command or ""
        exposed = [key for key, line in lines.items() if any(secret in line for secret in secrets)]
        if exposed:
            self.add(Row("command lines", WARN, f"a secret is on the command line of {', '.join(exposed)}: every user "
                                                "of this machine can read it (/proc/*/cmdline)",
                         "pass it in the server's env (or the token command's own environment) instead"))

    def check_private_folders(self) -> None:
        """Saved conversations and trust records are readable by this user only (homes are often 0755)."""
        from .history import data_dir
        from .trust import store_path

        folders = {"saved conversations": data_dir(), "trust records": store_path().parent}
        found = {what: (folder, *privacy(folder)) for what, folder in folders.items()}
        detail = "; ".join(f"{what} in {folder}: {state}" for what, (folder, _, state) in found.items())
        if all(private for _, private, _ in found.values()):
            self.info("private data", detail)
        else:
            self.add(Row("private data", WARN, detail, "run chmod 700 on the folders named, or remove those that "
                                                       "belong to another user"))

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
            response = self.wait("base URL reachable", f"an answer from GET {redact_url(self.models_url)}",
                                 self._get(kwargs), REQUEST_DEADLINE)
        except httpx.HTTPError as exc:
            return self._connection_failure(exc, trust, https, route)
        except TimeoutError:
            reach = self.add(Row("base URL reachable", FAIL, f"GET {redact_url(self.models_url)} did not answer "
                                 f"within {REQUEST_DEADLINE:g} s ({route})",
                                 "check that the server at llm.base_url is up and not overloaded"))
            return reach, self.add(Row("TLS verified", SKIP, "skipped: no answer"))
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
            response = self.wait("authentication", f"GET {redact_url(self.models_url)} with the credentials ({mode})",
                                 self._get(self.client_kwargs), AUTH_DEADLINE)
        except TimeoutError:
            return self.add(Row("authentication", FAIL, f"{mode}: no answer within {AUTH_DEADLINE:g} s",
                                self._auth_advice())), None
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

    async def _get(self, client_kwargs: dict[str, Any]) -> httpx.Response:
        """GET /models with these client settings; at most MAX_BODY bytes of the answer are read."""
        async with httpx.AsyncClient(**client_kwargs) as client:
            async with client.stream("GET", self.models_url, headers=self.headers) as response:
                body = bytearray()
                async for part in response.aiter_bytes():
                    body += part
                    if len(body) > MAX_BODY:
                        break
        # Decoded already: the copy must not say it is compressed, nor give the full length.
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
        return httpx.Response(response.status_code, headers=headers, content=bytes(body[:MAX_BODY]),
                              request=response.request)

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

        provider = OpenAICompatibleProvider(self.config, max_retries=0)
        _cap_tokens(provider, ANSWER_TOKENS)
        try:
            self.check_capabilities(provider)
            answer = self.add(self._model_step("streamed answer", "the model's answer (one short sentence, "
                                               f"{ANSWER_TOKENS} tokens at most)", self._streamed_answer(provider)))
            if answer.result == FAIL:
                self.skip(TOOL_STEPS, "no answer")
                return
            self._tool_calling(provider)
        finally:
            self.runner.run(provider.aclose(), REQUEST_DEADLINE, lambda: None)

    def check_capabilities(self, provider: Any) -> None:
        """What the server says about the model (once; the tool-calling steps use it too): the context window."""
        try:
            self.capabilities = self.wait("context window", "the server's model details", provider.capabilities(
                headers=self.headers), REQUEST_DEADLINE)
        except TimeoutError:
            self.capabilities = ModelCapabilities()
        setting = self.config.agent.context_window
        reported = self.capabilities.context_window
        if setting:
            source = self.config.sources.get("agent.context_window", "set in code")
            said = f"; the server says {reported}" if reported and reported != setting else ""
            self.info("context window", f"{setting} tokens (agent.context_window from {source}{said})")
        elif reported:
            self.info("context window", f"{reported} tokens ({self.capabilities.context_source})")
        else:
            self.info("context window", f"{DEFAULT_CONTEXT_WINDOW} tokens (the default: the server does not say; "
                                        "set agent.context_window to the model's)")

    def _model_step(self, step: str, what: str, work: Coroutine[Any, Any, Row]) -> Row:
        try:
            return self.wait(step, what, work, CHAT_DEADLINE)
        except TimeoutError:
            return _too_slow(step)

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
        if not text and completion.reasoning and completion.finish_reason == "length":
            return Row("streamed answer", WARN, f"{chunks} chunks of reasoning, then the doctor's cap of "
                                                f"{ANSWER_TOKENS} tokens was reached before the answer")
        if not text:
            return Row("streamed answer", FAIL, "the model answered with no text"
                       + (" (only reasoning)" if completion.reasoning else ""),
                       "try another model, or check llm.max_tokens and llm.extra_params")
        shown = text if len(text) <= 60 else text[:57] + "..."
        return Row("streamed answer", PASS, f"{chunks} chunk{'s' if chunks != 1 else ''}: {shown!r}")

    def _tool_calling(self, provider: Any) -> None:
        """Native tool calling, then prompted (structured output, else free text), then which mode to use."""
        configured = self.config.llm.tool_calling
        provider.tool_calling = "native"
        native, refused = self._tool_step(provider, "tool call")
        provider.tool_calling = "prompted"
        prompted, _ = self._tool_step(provider, "prompted tool call")
        if prompted.result == PASS:
            prompted.detail += (" (with structured output)" if provider.quirks.structured_output else
                                " (read from free text: the server refused structured output)")
        found = self.capabilities or ModelCapabilities()
        works = {"native": native.result == PASS, "prompted": prompted.result == PASS}
        effective = configured
        if configured == "auto":
            effective = "prompted" if found.tools is False or refused else "native"
        for mode, row in (("native", native), ("prompted", prompted)):
            if not works[mode] and effective != mode and works.get(effective):
                row.result = WARN  # not needed: the mode in use works
            self.add(row)
        self.add(_mode_row(configured, effective, works, found.source))

    def _tool_step(self, provider: Any, step: str) -> tuple[Row, bool]:
        what = f"the model's {'tool call' if step == 'tool call' else 'step in the prompted format'} " \
               f"({ANSWER_TOKENS} tokens at most)"
        try:
            return self.wait(step, what, self._tool_call(provider, step), CHAT_DEADLINE)
        except TimeoutError:
            return _too_slow(step), False

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


    def check_live(self) -> None:
        """Live editing of the open notebook: in a kernel, its server, notebook, collaboration room and round trip
        (a row each); elsewhere, whether the [live] extra is there."""
        from .live_notebook import missing_extra

        if self.live is None:
            missing = missing_extra()
            extra = "the [live] extra is installed" if missing is None else f"the [live] extra is missing ({missing})"
            self.info("live notebook", f"{extra}; %autocoder --doctor in a notebook checks its live editing")
            return
        for step, result, detail, advice in self.live.check().rows:
            if result == INFO:
                self.info(step, detail)
            else:
                self.add(Row(step, result, detail, advice))


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


def _is_http_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


def _cap_tokens(provider: Any, tokens: int) -> None:
    """At most `tokens` per answer, also where llm.extra_params sets its own cap (kept when smaller)."""
    provider.max_tokens = tokens
    for key in ("max_tokens", "max_completion_tokens"):
        value = provider.extra_params.get(key)
        if key in provider.extra_params and not (isinstance(value, int) and 0 < value < tokens):
            provider.extra_params[key] = tokens


def _too_slow(step: str) -> Row:
    return Row(step, FAIL, f"no complete answer within {CHAT_DEADLINE:g} s (the doctor caps each answer at "
                           f"{ANSWER_TOKENS} tokens)",
               "the model may still be loading, or the server be overloaded: try again, or read the server's log")


class _Runner(LoopThread):
    """The doctor's loop: the caller may sit inside a running loop (IPython), and Ctrl-C must end a check at once."""

    def __init__(self) -> None:
        super().__init__("auto-coder-doctor")

    def run(self, work: Coroutine[Any, Any, Any], deadline: float, waiting: Callable[[], None]) -> Any:
        """`work`'s result, within `deadline` seconds (else TimeoutError). `waiting()` is called once if it takes
        more than a moment. On KeyboardInterrupt the work is cancelled (its connection closed) before it
        propagates."""
        future = self.submit(asyncio.wait_for(work, deadline))
        try:
            try:
                return future.result(timeout=WAIT_NOTICE_AFTER)
            except concurrent.futures.TimeoutError:
                if future.done():
                    raise TimeoutError from None  # the deadline passed (a deadline shorter than the notice)
            waiting()
            return future.result()
        except (concurrent.futures.TimeoutError, asyncio.TimeoutError):  # wait_for's deadline (3.10 has its own)
            raise TimeoutError from None
        except BaseException:
            future.cancel()  # cancels the task on the loop; stop() waits until it has ended
            raise
