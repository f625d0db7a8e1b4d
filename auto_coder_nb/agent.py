"""The agent loop: a user message in, a stream of events out.

One turn asks the model, runs the tools it calls (with approvals), feeds the results back, and
repeats until the model answers without tools. Every tool call gets exactly one tool message,
whatever happens, so the history is always one a strict server accepts.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Sequence
from contextlib import nullcontext, suppress
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .approvals import APPROVAL_ORDER, Allowance, ApprovalPolicy
from .config import DEFAULT_CONTEXT_WINDOW, AgentConfig
from .deadline import TurnDeadline
from .errors import AutoCoderError, ContextOverflow, StreamCutOff
from .events import (
    ApprovalRequest,
    ContextUsage,
    ErrorEvent,
    Event,
    Notice,
    ReasoningDelta,
    TextDelta,
    ToolCallStarted,
    ToolResult,
    TurnDone,
    UsageUpdate,
)
from .images import Image, ImageError, fit_image
from .interrupts import LoopRunner
from .providers.base import (
    MAX_ARGUMENT_DEPTH,
    TOO_DEEP,
    Completion,
    LLMProvider,
    ProviderNotice,
    ReasoningChunk,
    Retrying,
    TextChunk,
    ToolCall,
    ToolDefinition,
    Usage,
    nested_deeper_than,
)
from .site_policy import SitePolicy
from .state.conversation import INTERRUPTED, Conversation
from .text import escape_undecodable, scrub, with_review
from .tools.arguments import clamp_numbers, placeholder_problem
from .tools.registry import NothingToChange, ToolError, ToolOutput, ToolRegistry
from .tools.workspace import Workspace

REPEAT_LIMIT = 3
LOOP_PERIODS = (1, 2, 3)  # the loop guard catches the same call, or cycles of two or three calls, repeated
CUT_OFF_MARKER = "[the answer was cut off here: the stream ended before the server said it was complete]"
# Shorten the history when a request would pass this share of the window, down to the second.
SHORTEN_AT, SHORTEN_TO = 0.9, 0.7

TOO_MANY_CALLS = ("Not executed: the answer asked for more than {cap} tool calls, and only the first {cap} run. "
                  "Make the calls still needed in your next answer, fewer at a time.")

TRUNCATED_ARGUMENTS = (
    "Not executed: the arguments of this call were cut off because the answer reached the output "
    "token limit. Make the call again with shorter arguments (for example, write a large file in parts)."
)
CUT_OFF = ("The answer was cut off: it reached the output token limit (llm.max_tokens). Ask for the rest, "
           "or raise llm.max_tokens.")
TURN_TIMEOUT = ("Stopped: this turn ran for {seconds:g} s (agent.turn_timeout; time spent on approvals is not "
                "counted). Send a message to let it continue.")
STOPPED_AT_TIMEOUT = "stopped: the turn reached its time limit (agent.turn_timeout) before this call ran"
NOT_ANSWERED = ("Not executed: you repeated your steps and were asked to answer from the results you have; "
                "answer the user now.")
NO_VISION = ("Not sent: {model} does not accept images (llm.vision is {setting}). Set llm.vision: true "
             "(AUTO_CODER_VISION=1) if it is a vision model, or ask without the image.")


@dataclass(frozen=True)
class TurnOptions:
    """What one turn does differently from the session's settings (`%%autocoder -m ... --approval-mode ...`):
    passed to `Agent.run`, never swapped on the shared session, so a turn refused as busy changes nothing."""

    model: str | None = None
    approval_mode: str | None = None
    tool_calling: str | None = None  # auto | native | prompted | none (llm.tool_calling) for this turn


class TurnObserver(Protocol):
    """Sees every event of every turn as the face gets it, and each approval decision (the saved-conversation
    recorder, `history.py`). `take_warnings()` returns what the user must be told (once), shown as notices."""

    def event(self, event: Event) -> None: ...

    def approval(self, request: ApprovalRequest, allowed: bool, reason: str, always: bool) -> None: ...

    def take_warnings(self) -> list[str]: ...


class TurnHooks(Protocol):
    """Checkpoints each turn for a rewind and hears the end of it (`rewind.Turns`); `take_feedback()` gives what
    the user did to the agent's changes since the model last heard (a Revert), added to its next request."""

    def begin(self, message: str, workspace_mark: int | None) -> None:
        """The turn's message was just added to the conversation."""

    def end(self) -> None: ...

    def take_feedback(self) -> list[str]: ...

    def change_count(self) -> int:
        """How many notebook cell changes were recorded so far (see `changes_since`)."""

    def changes_since(self, count: int) -> list[Any]:
        """The cell changes recorded after the first `count` (what one tool call changed)."""


class Agent:
    def __init__(
        self,
        provider: LLMProvider,
        tools: ToolRegistry,
        conversation: Conversation,
        policy: ApprovalPolicy,
        config: AgentConfig,
        workspace: Workspace | None = None,
        vision: bool | None = None,
    ) -> None:
        self.provider = provider
        self.tools = tools
        self.conversation = conversation
        self.policy = policy
        self.config = config
        self.workspace = workspace
        self.vision = vision  # llm.vision; None: as the server reports
        self.busy = False  # the magics and the panel share one agent; one turn at a time
        self._actions = {"refused": 0, "allowed": 0}  # of the running turn, reported in TurnDone
        self.observer: TurnObserver | None = None
        self.turns: TurnHooks | None = None  # checkpoints for a rewind (the session sets it)
        self.site: SitePolicy | None = None  # the administrator's allow-lists, for what a turn chooses itself
        # The secret values to hide in tool results and error messages (the session sets it: auth.secret_values).
        self.secrets: Callable[[], Iterable[str | None]] = tuple
        self._last_usage: Usage | None = None  # of the last request, for the context share
        self._deadline: TurnDeadline | None = None  # of the running turn: approvals pause it
        self._window: tuple[int, str] | None = None  # the context window of the last turn, and where it came from

    async def sees_images(self) -> bool:
        """Whether images are sent to the model: llm.vision when set, else what the server reports."""
        if self.vision is not None:
            return self.vision
        capabilities = await self.provider.capabilities(headers=self.conversation.headers)
        return bool(capabilities.vision)

    def no_vision_message(self, model: str | None = None) -> str:
        setting = "false" if self.vision is False else "not set and the server does not report vision"
        return NO_VISION.format(model=model or self.provider.model, setting=setting)

    async def context_window(self, model: str | None = None) -> tuple[int, str]:
        """The context window in tokens and where it came from: agent.context_window when set, else what the server
        reports for the model (asked once per model), else DEFAULT_CONTEXT_WINDOW."""
        if self.config.context_window:
            return self.config.context_window, "agent.context_window"
        found = await self.provider.capabilities(model, headers=self.conversation.headers)
        if found.context_window:
            return found.context_window, found.context_source
        return DEFAULT_CONTEXT_WINDOW, "default"

    def context_usage(self) -> ContextUsage:
        """How full the context window is: the last request as the server counted it, else an estimate."""
        usage = self._last_usage
        window = self.config.context_window or (self._window[0] if self._window else DEFAULT_CONTEXT_WINDOW)
        if usage is not None and usage.prompt_tokens:
            return ContextUsage(usage.prompt_tokens + usage.completion_tokens, window)
        schema_size = len(json.dumps([tool.schema() for tool in self.tools.definitions()]))
        return ContextUsage(self.conversation.estimate_tokens(schema_size), window, estimated=True)

    def _done(self, reason: str) -> TurnDone:
        return TurnDone(reason, self.context_usage(), self._actions["refused"], self._actions["allowed"])

    def _site_refusal(self, options: TurnOptions) -> str | None:
        """Why the site does not allow what this turn chose for itself (`-m`, `--tool-calling`): a locked setting
        changed, as the CLI refuses the same flag, or a model outside allow.models. (A turn's approval mode is capped
        instead: `_allowed_mode`.)"""
        if self.site is None:
            return None
        locked_by = self.site.locked_by("llm.tool_calling")
        if options.tool_calling not in (None, self.provider.tool_calling) and locked_by is not None:
            return (f"llm.tool_calling is locked by the administrator ({locked_by}), so {options.tool_calling!r} is "
                    "not used")
        return self.site.request_model_refusal(options.model, self.provider.model) if options.model else None

    def _allowed_mode(self, mode: str | None) -> str | None:
        """A turn's own approval mode, capped by the site: at allow.max_approval_mode, and at the configured mode when
        the site locks agent.approval_mode (a stricter one is always fine)."""
        if mode is None:
            return None
        mode = self.policy.effective(mode)
        if self.site is not None and self.site.locked_by("agent.approval_mode") is not None and \
                APPROVAL_ORDER.index(mode) > APPROVAL_ORDER.index(self.policy.mode):
            return self.policy.mode
        return mode

    async def run(self, message: str, images: Sequence[Image] = (),
                  options: TurnOptions | None = None) -> AsyncGenerator[Event, None]:
        """Run one user turn; `images` (attachments, already fitted) go with the message to a vision model.
        Errors arrive as ErrorEvent; cancellation leaves a consistent history.
        Every face goes through here, so the observer sees each turn whatever the face."""
        deadline = TurnDeadline(self.config.turn_timeout)
        turn = self._turn(message, images, options or TurnOptions(), deadline)
        events = self._within_deadline(turn, deadline)
        try:
            async for event in events:
                if isinstance(event, ErrorEvent):  # a server or a library may have echoed a credential
                    event.message = scrub(event.message, self.secrets())
                if self.observer is not None:
                    self.observer.event(event)
                    for warning in self.observer.take_warnings():
                        yield Notice(warning)
                yield event
        finally:
            await events.aclose()
            await turn.aclose()

    async def _within_deadline(self, turn: AsyncGenerator[Event, None],
                               deadline: TurnDeadline) -> AsyncGenerator[Event, None]:
        """The events of `turn`, ended with a notice once it has run for agent.turn_timeout (approvals paused)."""
        deadline.start()
        ended = False  # TurnDone was yielded: the turn only has to finish
        try:
            while ended or not deadline.expired:
                try:
                    with deadline.running():
                        event = await turn.__anext__()
                except StopAsyncIteration:
                    return
                except asyncio.CancelledError:
                    if not deadline.fired:
                        raise  # the user stopped the turn
                    deadline.swallow()
                    break
                ended = ended or isinstance(event, TurnDone)
                if isinstance(event, ApprovalRequest):
                    deadline.stop()  # the user's time, until the decision (the face may ask before resuming)
                yield event
            await turn.aclose()  # the history is repaired: open calls answered, the answer so far kept
            yield Notice(TURN_TIMEOUT.format(seconds=self.config.turn_timeout))
            yield self._done("turn_timeout")
        finally:
            deadline.stop()

    async def _turn(self, message: str, images: Sequence[Image], options: TurnOptions,
                    deadline: TurnDeadline) -> AsyncGenerator[Event, None]:
        if self.busy:
            yield ErrorEvent("Another request is still running in this session (in the chat panel or another "
                             "cell). Stop it or wait for it to finish, then ask again.")
            yield TurnDone("busy")
            return
        self.busy = True
        self._deadline = deadline
        self._actions = {"refused": 0, "allowed": 0}
        conversation = self.conversation
        turn_usage = Usage()
        calls_made: list[tuple[str, str]] = []  # (name, canonical arguments) of this turn's calls, for the loop guard
        last_step: list[tuple[str, str]] = []
        answer_only = False  # the model repeated itself: the next request lets it only answer
        partial: list[str] = []  # answer text streamed but not yet in the history
        began = False  # the turn was checkpointed (self.turns): it is ended however it ends
        try:
            refusal = self._site_refusal(options)
            if refusal is not None:
                yield ErrorEvent(f"Not sent: {refusal}.")
                yield self._done("error")
                return
            allowed_mode = self._allowed_mode(options.approval_mode)
            if allowed_mode != options.approval_mode:
                yield Notice(f"Approval mode {allowed_mode!r} instead of {options.approval_mode!r}: the site "
                             "configuration allows no more.")
                options = replace(options, approval_mode=allowed_mode)
            if images and not await self.sees_images():
                yield ErrorEvent(self.no_vision_message(options.model))
                yield self._done("error")
                return
            try:
                self._window = await self.context_window(options.model)
            except AutoCoderError:
                self._window = None  # the request itself says what is wrong (e.g. credentials not configured)
            conversation.repair()
            mark = self.workspace.begin_turn() if self.workspace is not None else None
            feedback = self.turns.take_feedback() if self.turns is not None else []
            conversation.add_user(with_review(message, feedback), images)
            if self.turns is not None:
                began = True
                self.turns.begin(message, mark)
            self._last_usage = None  # the context share is of this turn's requests (else estimated)
            for _ in range(self.config.max_iterations):
                for text in self.tools.take_notices():  # e.g. an MCP server that failed to start or stopped
                    yield Notice(text)
                after_tools = self.turns is not None and conversation.messages[-1]["role"] == "tool"
                feedback = self.turns.take_feedback() if self.turns is not None and after_tools else []
                if feedback:  # e.g. a Revert clicked while the turn runs: after the tool results, before asking
                    conversation.add_user(with_review("(The user did this while you worked.)", feedback))
                partial.clear()
                completion: Completion | None = None
                cut_off = False
                async for event in self._request(partial, options.model, options.tool_calling, answer_only):
                    if isinstance(event, Completion):
                        completion = event
                    else:
                        cut_off = cut_off or isinstance(event, ErrorEvent) and isinstance(event.error, StreamCutOff)
                        yield event
                if completion is None:  # the request failed and said so
                    self._close_answer(partial, CUT_OFF_MARKER if cut_off else "[the request failed]")
                    yield self._done("cut_off" if cut_off else "error")
                    return
                partial.clear()
                self._last_usage = completion.usage
                if completion.usage is not None:
                    turn_usage += completion.usage
                    conversation.usage += completion.usage
                    yield UsageUpdate(turn=turn_usage, session=conversation.usage)
                calls = completion.tool_calls
                conversation.add_assistant(completion.content, calls, completion.reasoning)
                if not calls:
                    if completion.finish_reason == "length":
                        yield Notice(CUT_OFF)
                    yield self._done("stop")
                    return
                # Asked to answer, it made a call of this turn again (a server that ignores tool_choice): stop here.
                # A new call runs: the model moved on.
                again = next((call for call in calls if (call.name, _canonical(call.arguments)) in calls_made),
                             None) if answer_only else None
                if again is not None:
                    conversation.repair(NOT_ANSWERED)
                    yield Notice(_loop_notice(calls_made, (again.name, _canonical(again.arguments))) or
                                 f"Stopped: the model repeated its steps, then called {again.name} again when "
                                 "it was asked to answer from the results it had.")
                    yield self._done("repeated_call")
                    return
                step_images: list[Image] = []
                cap = max(1, self.config.max_tool_calls_per_answer)
                if len(calls) > cap:
                    yield Notice(f"The model asked for {len(calls)} tool calls in one answer; only the first {cap} "
                                 "run (agent.max_tool_calls_per_answer).")
                step = [(call.name, _canonical(call.arguments)) for call in calls[:cap]]
                for call, key in zip(calls[:cap], step, strict=True):
                    stop = _loop_notice(calls_made, key)
                    if stop is not None:
                        conversation.repair(f"Not executed: the same calls were made {REPEAT_LIMIT} times in a row.")
                        yield Notice(stop)
                        yield self._done("repeated_call")
                        return
                    calls_made.append(key)
                    async for event in self._execute(call, step_images, options.approval_mode,
                                                     truncated=completion.finish_reason in ("length", "step_limit")):
                        yield event
                # The same step again, or the same two or three calls twice over: the results are in, so the model
                # answers next instead of asking again (small models repeat or alternate calls rather than answer).
                answer_only = step == last_step or _looping(calls_made, 2) is not None
                last_step = step
                conversation.repair(TOO_MANY_CALLS.format(cap=cap))
                conversation.add_images(step_images, "The images the tool calls above produced (the user saw them "
                                                     "too):")
            yield Notice(f"Stopped after {self.config.max_iterations} model requests in one turn "
                         "(agent.max_iterations). Send a message to let it continue.")
            yield self._done("max_iterations")
        except BaseException:
            # Cancelled (Stop, Ctrl-C, kernel interrupt, the time limit) or closed: keep what was said, answer
            # open calls.
            timed_out = self._deadline is not None and self._deadline.expired
            self._close_answer(partial, "[stopped at the turn's time limit]" if timed_out else "[interrupted]")
            conversation.repair(STOPPED_AT_TIMEOUT if timed_out else INTERRUPTED)
            raise
        finally:
            self.busy = False
            self._deadline = None
            if began and self.turns is not None:
                self.turns.end()

    def _close_answer(self, partial: list[str], marker: str) -> None:
        """Record the text the user saw of a cut-off answer, marked; after a bare user message, at least the
        marker, so the history keeps alternating user / assistant."""
        history = self.conversation.messages
        text = "".join(partial)
        if text or (history and history[-1]["role"] == "user"):
            self.conversation.add_assistant(f"{text}\n{marker}" if text else marker)

    async def _request(self, partial: list[str], model: str | None, tool_calling: str | None = None,
                       answer_only: bool = False) -> AsyncIterator[Event | Completion]:
        """Ask the model once, shortening the history first if needed; yields events, then a Completion."""
        conversation = self.conversation
        definitions = self.tools.definitions()
        schema_size = len(json.dumps([tool.schema() for tool in definitions]))
        window = self.config.context_window or (self._window[0] if self._window else DEFAULT_CONTEXT_WINDOW)
        for attempt in range(2):
            if conversation.images and not await self.sees_images():  # the model changed to one without vision
                conversation.drop_images()
            size = conversation.estimate_tokens(schema_size)
            # First keep under our own estimate of the window; after the server said it overflowed, halve.
            target = int(window * SHORTEN_TO) if attempt == 0 else size // 2
            if attempt == 1 or size > window * SHORTEN_AT:
                changed = conversation.shorten(target, schema_size)
                if changed:
                    yield Notice(f"The conversation was shortened to fit the model's context window: "
                                 f"{changed} older messages were trimmed.")
            try:
                async for item in self.provider.chat(conversation.messages, definitions, headers=conversation.headers,
                                                     model=model, tool_calling=tool_calling,
                                                     answer_only=answer_only):
                    if isinstance(item, TextChunk):
                        partial.append(item.text)
                        yield TextDelta(item.text)
                    elif isinstance(item, ReasoningChunk):
                        yield ReasoningDelta(item.text)
                    elif isinstance(item, (Retrying, ProviderNotice)):
                        yield Notice(item.message)
                    else:
                        yield item
                return
            except ContextOverflow as exc:
                if attempt == 0 and not partial:
                    continue
                yield ErrorEvent(str(exc), exc)
                return
            except AutoCoderError as exc:  # provider failures, and configuration met only at request time
                yield ErrorEvent(str(exc), exc)
                return

    async def _execute(self, call: ToolCall, images: list[Image], mode: str | None, *,
                       truncated: bool) -> AsyncIterator[Event]:
        """Run one call (asking first when the mode says so) and record its result. Images it produced are
        described in its text; for a vision model they are added to `images`, sent after the step."""
        arguments, problem = _parse_arguments(call.arguments)
        yield ToolCallStarted(call.id, call.name, arguments, call.arguments)
        result = ToolResult(call.id, call.name, "", is_error=True)
        try:
            if truncated:
                raise ToolError(TRUNCATED_ARGUMENTS)
            if problem is not None or arguments is None:
                raise ToolError(problem or "Invalid arguments.")
            tool = self.tools.get(call.name)
            if tool is None:
                raise ToolError(f"Unknown tool {call.name!r}. Available tools: {', '.join(self.tools.names())}.")
            placeholder = placeholder_problem(call.name, arguments, tool.parameters)
            if placeholder is not None:
                raise ToolError(placeholder)
            arguments, clamped = clamp_numbers(arguments, tool.parameters)
            allowance = Allowance.of(tool.name, tool.always_scope, arguments)
            decision = self.policy.decide(tool.kind, mode, allowance)
            if decision == "deny":
                self._actions["refused"] += 1
                raise ToolError(f"Refused: the approval mode is {mode or self.policy.mode!r}, which does not allow "
                                f"{call.name}. Tell the user what you would change instead.")
            request: ApprovalRequest | None = None
            if decision == "ask":
                cells = _review(tool, arguments)
                request = ApprovalRequest(call.id, call.name, tool.kind, arguments, _preview(tool, arguments),
                                          always_covers=allowance.describe(), cells=cells,
                                          can_run=tool.run_after is not None and any(c.runnable for c in cells))
                yield request
                # The user's time is not the turn's: the clock stopped when the request went out (a face may ask
                # before it resumes the turn) and goes on once the user has decided.
                with self._deadline.paused() if self._deadline is not None else nullcontext():
                    allowed, reason, always = await request.wait()
                if self.observer is not None:
                    self.observer.approval(request, allowed, reason, always)
                if always:
                    self.policy.allow_always(allowance)
                if not allowed:
                    self._actions["refused"] += 1
                    because = f" Reason: {reason}" if reason else ""
                    if cells:  # the per-cell review: the model hears which cells were rejected
                        named = "; ".join(change.describe() for change in cells)
                        raise ToolError(f"The user rejected your change to {named}: it was not made.{because}")
                    raise ToolError(f"The user denied this {call.name} call.{because}")
            if tool.kind != "read":
                self._actions["allowed"] += 1
            known = self.turns.change_count() if self.turns is not None else 0
            output = await self.tools.run(call.name, arguments)
            if self.turns is not None:
                result.cells = self.turns.changes_since(known)
            if request is not None and request.run_after and tool.run_after is not None:
                output = await _run_after(tool, arguments, output)
            result.output, result.is_error = "".join(f"{note}\n" for note in clamped) + output.text, False
            if output.images:
                result.images, notes = self._fit_images(output, call.name)
                sees = bool(result.images) and await self.sees_images()
                result.output += "".join(f"\n{note}" for note in notes)
                result.output += "".join(f"\n{_image_note(image, sees)}" for image in result.images)
                if sees:
                    images.extend(result.images)
        except NothingToChange as unchanged:
            result.output, result.is_error = str(unchanged), False
        except ToolError as exc:
            result.output = str(exc)
        # `env`, a config file, an error: never shown or sent; a file name that is not UTF-8, shown escaped.
        result.output = escape_undecodable(scrub(result.output, self.secrets()))
        self.conversation.add_tool_result(call.id, result.output)
        yield result


    def _fit_images(self, output: ToolOutput, tool: str) -> tuple[list[Image], list[str]]:
        """The images of a tool's output fitted to the budget, and a note for each one skipped."""
        fitted, notes = [], []
        for number, data in enumerate(output.images, 1):
            try:
                fitted.append(fit_image(data, f"{tool} image {number}", self.config.image_max_side))
            except ImageError as exc:
                notes.append(f"[image output skipped: {exc}]")
        return fitted, notes


def _image_note(image: Image, sent: bool) -> str:
    if sent:
        return f"[image output {image.describe()}; shown to the user, and to you in the next message]"
    return f"[image output {image.describe()}; shown to the user (this model does not receive images)]"


def _preview(tool: ToolDefinition, arguments: dict[str, Any]) -> str:
    """What the user approves: the tool's own preview (a diff, a command), else the arguments."""
    if tool.preview is None:
        return json.dumps(arguments, indent=2)
    try:
        return tool.preview(**arguments)
    except (ToolError, NothingToChange):
        raise
    except TypeError as exc:
        raise ToolError(f"Invalid arguments for {tool.name}: {exc}") from exc
    except Exception as exc:  # a custom tool's preview must not crash the turn
        raise ToolError(f"{tool.name} failed before it ran: {type(exc).__name__}: {exc}") from exc


def _review(tool: ToolDefinition, arguments: dict[str, Any]) -> list[Any]:
    """The cells a notebook tool's call would change, for the per-cell review (none for other tools)."""
    if tool.review is None:
        return []
    try:
        return tool.review(**arguments)
    except (ToolError, NothingToChange):
        raise
    except Exception as exc:  # like a preview: the turn goes on, the model reads why
        raise ToolError(f"{tool.name} failed before it ran: {type(exc).__name__}: {exc}") from exc


async def _run_after(tool: ToolDefinition, arguments: dict[str, Any], output: ToolOutput) -> ToolOutput:
    """Accept & Run: the changed cell runs now; its output follows the change's result."""
    assert tool.run_after is not None
    try:
        ran = tool.run_after(**arguments)
        if inspect.isawaitable(ran):
            ran = await ran
    except ToolError as exc:
        return ToolOutput(f"{output.text}\nThe user chose Accept & Run, but the cell did not run: {exc}", output.images)
    ran = ran if isinstance(ran, ToolOutput) else ToolOutput(str(ran))
    return ToolOutput(f"{output.text}\nThe user chose Accept & Run; the cell ran:\n{ran.text}",
                      [*output.images, *ran.images])


def _parse_arguments(raw: str) -> tuple[dict[str, Any] | None, str | None]:
    """Arguments as a dict, or None and the error to send back. Never guess `{}` for bad JSON."""
    if not raw.strip():
        return {}, None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        return None, (f"Invalid JSON in the tool arguments ({exc.msg} at position {exc.pos}). "
                      "Send the call again with the arguments as one valid JSON object.")
    except RecursionError:
        return None, TOO_DEEP
    if not isinstance(value, dict):
        return None, "The tool arguments must be a JSON object. Send the call again with an object."
    if nested_deeper_than(value, MAX_ARGUMENT_DEPTH):
        return None, TOO_DEEP
    return value, None


def _looping(calls: Sequence[tuple[str, str]], repeats: int) -> int | None:
    """The length of the cycle (one call, or two or three different ones) that `calls` end with, repeated
    `repeats` times over; None when they do not."""
    for period in LOOP_PERIODS:
        span = period * repeats
        if len(calls) < span:
            break
        block = calls[-period:]
        if period > 1 and len(set(block)) == 1:
            continue  # the same call repeated: period 1 says so
        if all(calls[-span + index] == block[index % period] for index in range(span)):
            return period
    return None


def _loop_notice(calls_made: list[tuple[str, str]], call: tuple[str, str]) -> str | None:
    """What stops the turn when `call` would make the same call, or cycle of calls, REPEAT_LIMIT times over;
    None when it would not."""
    period = _looping([*calls_made, call], REPEAT_LIMIT)
    if period is None:
        return None
    if period == 1:
        return f"Stopped: the model called {call[0]} with the same arguments {REPEAT_LIMIT} times in a row."
    names = ", ".join(name for name, _ in [*calls_made, call][-period:])
    return f"Stopped: the model called {names} in a cycle, with the same arguments, {REPEAT_LIMIT} times over."


def _canonical(raw: str) -> str:
    with suppress(ValueError, RecursionError):
        return json.dumps(json.loads(raw), sort_keys=True)
    return raw


def iterate_sync(events: AsyncGenerator[Event, None], loop: asyncio.AbstractEventLoop) -> Generator[Event, None, None]:
    """Drive a turn from synchronous code on `loop`. Ctrl-C cancels the turn and propagates as KeyboardInterrupt
    (while the loop waits, SIGINT cancels the step at its await point: see `interrupts.LoopRunner`); a consumer
    that stops early (Ctrl-C at an approval prompt) closes the turn, so its history is repaired at once."""
    with LoopRunner(loop) as runner:
        try:
            while True:
                try:
                    event = runner.run(events.__anext__())
                except StopAsyncIteration:
                    return
                yield event
        finally:
            with suppress(BaseException):
                runner.run(events.aclose())
