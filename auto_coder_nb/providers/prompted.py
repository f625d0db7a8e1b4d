"""Prompted tool calling: tools for models without native function calling.

The tools and a strict step format go into the system prompt; each reply of the model is one step, a JSON
object that either calls a tool (`{"tool": NAME, "arguments": {...}}`) or answers the user
(`{"answer": "..."}`). Where the server supports structured output, `response_format` carries a JSON schema
that is a choice of one object per tool (its name as a constant, its real parameter schema) or an answer,
so even a tiny model can only produce a valid step. Elsewhere the step is parsed from free text (a JSON
object, a fenced JSON block, prose around it tolerated; prose alone is an answer).

History goes to the server without the `tool` role or `tool_calls` (servers without tool support reject
them): calls become the model's own JSON steps, results become user messages. What comes back is an
ordinary `Completion` with `ToolCall`s, so the agent loop does not know the mode. An invalid step is sent
back to the model with the exact problem once; it is never executed.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from .base import (
    MAX_ARGUMENT_DEPTH,
    TOO_DEEP,
    Completion,
    ProviderEvent,
    ProviderNotice,
    TextChunk,
    ToolCall,
    ToolDefinition,
    Usage,
    nested_deeper_than,
)

STEP_SCHEMA_NAME = "agent_step"
RESULT_PREFIX = "Result of {name}:"
# The heading of the system prompt's part that changes between projects and days (root, date, instructions):
# the tool section goes before it, so that a server's prompt cache keeps the whole unchanging prefix.
ENVIRONMENT_HEADING = "# Environment"
_FENCED = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
_ANSWER_START = re.compile(r'\{\s*"answer"\s*:\s*"')
_STEP_START = re.compile(r"```|^[ \t]*\{", re.MULTILINE)
_NAME_KEYS = ("tool", "name", "function")  # what models write for the tool's name, the first is the format's
_ARGUMENT_KEYS = ("arguments", "parameters", "args", "input")
_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str, "integer": int, "number": (int, float), "boolean": bool, "array": list, "object": dict,
    "null": type(None),
}

# Sends the prompted messages (with `extra` merged into the request body) and yields provider events.
Send = Callable[[list[dict[str, Any]], dict[str, Any]], AsyncGenerator[ProviderEvent, None]]


def step_schema(tools: list[ToolDefinition]) -> dict[str, Any]:
    """The JSON schema of one step: one object per tool, or an answer."""
    choices: list[dict[str, Any]] = [
        {"type": "object", "properties": {"tool": {"const": tool.name}, "arguments": _closed(_prompted(tool))},
         "required": ["tool", "arguments"], "additionalProperties": False}
        for tool in tools
    ]
    choices.append({"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"],
                    "additionalProperties": False})
    return {"anyOf": choices}


def response_format(tools: list[ToolDefinition]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": STEP_SCHEMA_NAME, "schema": step_schema(tools)}}


def _prompted(tool: ToolDefinition) -> dict[str, Any]:
    """The parameters a prompted step offers: without the optional ones the tool marks `rarely_needed`."""
    found = tool.parameters.get("properties")
    if not tool.rarely_needed or not isinstance(found, dict):
        return tool.parameters
    required = set(tool.parameters.get("required") or ())
    left_out = set(tool.rarely_needed) - required
    return {**tool.parameters, "properties": {name: schema for name, schema in found.items() if name not in left_out}}


def _closed(parameters: dict[str, Any]) -> dict[str, Any]:
    """A tool's parameter schema without room for unknown arguments (handlers take keywords): with a grammar,
    a small model would otherwise invent extra keys."""
    if parameters.get("type") == "object" and "additionalProperties" not in parameters:
        return {**parameters, "additionalProperties": False}
    return parameters


def system_section(tools: list[ToolDefinition]) -> str:
    """What the system prompt says about the tools and the step format."""
    lines = [
        "# How to act",
        "Every reply of yours is exactly one JSON object, nothing else:",
        '- to use a tool: {"tool": "<tool name>", "arguments": {<the arguments>}}',
        '- to answer the user (when you are done, or need no tool): {"answer": "<your answer, Markdown>"}',
        "Use one tool per reply. The result of a tool comes back in the next user message, starting with "
        f'"{RESULT_PREFIX.format(name="<tool name>")}". Then reply with the next step.',
        "",
        "# Tools",
    ]
    for tool in tools:
        lines += [f"## {tool.name}", _summary(tool.description), *_argument_lines(_prompted(tool)),
                  f"Example: {_example(tool)}", ""]
    return "\n".join(lines).rstrip()


def _summary(description: str) -> str:
    """The first paragraph of a tool's description: the full text is written for models trained on tool
    calling, and a long prompt is slow on small local models and confuses them; tool errors say the rest."""
    return description.strip().split("\n\n", 1)[0].strip()


def _example(tool: ToolDefinition) -> str:
    """A call of `tool` with its required arguments as placeholders: small models copy a shape best."""
    found = tool.parameters.get("properties")
    properties: dict[str, Any] = found if isinstance(found, dict) else {}
    placeholders: dict[str, Any] = {"string": "...", "integer": 1, "number": 1, "boolean": True, "array": [],
                                    "object": {}}
    arguments: dict[str, Any] = {}
    for name in tool.parameters.get("required") or ():
        schema: dict[str, Any] = properties[name] if isinstance(properties.get(name), dict) else {}
        kind = schema.get("type")
        arguments[name] = schema["enum"][0] if schema.get("enum") else placeholders.get(
            kind if isinstance(kind, str) else "string", "...")
    return _dumps({"tool": tool.name, "arguments": arguments})


def _argument_lines(parameters: dict[str, Any]) -> list[str]:
    properties = parameters.get("properties") if isinstance(parameters.get("properties"), dict) else None
    if properties is None:
        return [f"Arguments (JSON schema): {json.dumps(parameters, separators=(',', ':'))}"]
    if not properties:
        return ["Arguments: none ({})."]
    required = set(parameters.get("required") or ())
    lines = ["Arguments:"]
    for name, schema in properties.items():
        schema = schema if isinstance(schema, dict) else {}
        kind = schema.get("type", "any")
        kind = "/".join(kind) if isinstance(kind, list) else str(kind)
        if isinstance(schema.get("enum"), list):
            kind += " (one of " + ", ".join(_dumps(value) for value in schema["enum"]) + ")"
        need = "required" if name in required else "optional"
        about = f": {schema['description']}" if schema.get("description") else ""
        lines.append(f"- {name} ({kind}, {need}){about}")
    return lines


def to_prompted_messages(messages: list[dict[str, Any]], tools: list[ToolDefinition]) -> list[dict[str, Any]]:
    """The history as a server without tool support accepts it: the tool section in the system prompt, calls
    as the model's JSON steps, results as user messages, consecutive messages of one role merged."""
    section = system_section(tools)
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id -> tool name, for the results
    if not messages or messages[0].get("role") != "system":
        out.append({"role": "system", "content": section})
    for index, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role == "system":
            text = _with_section(content or "", section) if index == 0 else content or ""
            _append(out, "system", text)
        elif role == "assistant":
            calls = message.get("tool_calls") or []
            steps = []
            for call in calls:
                function = call.get("function") or {}
                names[call.get("id", "")] = function.get("name", "")
                steps.append(_dumps({"tool": function.get("name", ""), "arguments": _loads_object(
                    function.get("arguments"))}))
            _append(out, "assistant", "\n".join(steps) if steps else _dumps({"answer": content or ""}))
        elif role == "tool":
            name = names.get(message.get("tool_call_id", ""), "the tool")
            _append(out, "user", f"{RESULT_PREFIX.format(name=name)}\n{content}")
        else:
            _append(out, str(role), content)
    return out


def _with_section(system: str, section: str) -> str:
    """The system prompt with the tool section before its environment part (else at its end)."""
    at = system.find(f"\n\n{ENVIRONMENT_HEADING}\n")
    if at < 0:
        return f"{system}\n\n{section}" if system else section
    return f"{system[:at]}\n\n{section}{system[at:]}"


def _append(out: list[dict[str, Any]], role: str, content: Any) -> None:
    if out and out[-1]["role"] == role:
        out[-1]["content"] = _join(out[-1]["content"], content)
    else:
        out.append({"role": role, "content": content})


def _join(first: Any, second: Any) -> Any:
    if isinstance(first, str) and isinstance(second, str):
        return f"{first}\n\n{second}"
    return _parts(first) + _parts(second)  # content parts (images): keep them as parts


def _parts(content: Any) -> list[Any]:
    return list(content) if isinstance(content, list) else [{"type": "text", "text": content or ""}]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _loads_object(raw: Any) -> Any:
    if isinstance(raw, dict):
        return raw
    try:
        value = json.loads(raw or "{}")
    except (ValueError, RecursionError):
        return raw  # shown to the model as it wrote it
    return value


# -- reading a step --------------------------------------------------------------------------


@dataclass
class Step:
    """A parsed reply: a tool call, an answer, or a problem to send back. `prose` is text around the JSON."""

    prose: str = ""
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    answer: str | None = None
    problem: str | None = None

    @property
    def text(self) -> str:
        """What the user reads: the prose, then the answer."""
        return "\n\n".join(part for part in (self.prose, self.answer or "") if part)


def parse_step(text: str, tools: list[ToolDefinition]) -> Step:
    """Read one step from a reply. Prose without any JSON object is an answer."""
    text = text.strip()
    if not text:
        return Step(problem="The reply was empty.")
    try:
        value, prose, error = _find_json(text)
        if value is None:
            if error is not None:
                return Step(prose=prose, problem=f"The reply is not valid JSON ({error}).")
            return Step(answer=text)
        return _check(value, prose, {tool.name: tool for tool in tools})
    except RecursionError:  # thousands of levels: the same rule as native calls
        return Step(problem=TOO_DEEP)


def _find_json(text: str) -> tuple[Any, str, str | None]:
    """The step object in `text`, the prose before it, and the JSON error if the reply tried and failed."""
    try:
        return json.loads(text), "", None
    except ValueError as exc:
        whole_error = f"{exc.msg}, character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
    if text.startswith(("{", "[")):
        return None, "", whole_error
    fence = _FENCED.search(text)
    if fence is not None:
        prose = text[:fence.start()].rstrip()
        try:
            return json.loads(fence.group(1)), prose, None
        except json.JSONDecodeError as exc:
            if fence.group(1).lstrip().startswith("{"):
                return None, prose, f"{exc.msg}, character {exc.pos} of the JSON block"
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        if isinstance(value, dict) and any(key in value for key in ("answer", *_NAME_KEYS)):
            return value, text[:match.start()].rstrip(), None
    if re.search(r'\{\s*"(tool|answer)"', text):
        return None, "", "a step object was started but is not complete"
    return None, text, None


def _check(value: Any, prose: str, tools: dict[str, ToolDefinition]) -> Step:
    if not isinstance(value, dict):
        return Step(prose=prose, problem="The step must be one JSON object, not " + _json_type(value) + ".")
    name = next((value[key] for key in _NAME_KEYS if key in value), None)
    if name is None:
        answer = value.get("answer")
        if isinstance(answer, str):
            return Step(prose=prose, answer=answer)
        if "answer" in value:
            return Step(prose=prose, problem='"answer" must be a string.')
        return Step(prose=prose, problem='The step needs either "tool" with "arguments", or "answer".')
    if not isinstance(name, str):
        return Step(prose=prose, problem='"tool" must be the name of a tool, as a string.')
    tool = tools.get(name)
    if tool is None:
        return Step(prose=prose, problem=f"Unknown tool {name!r}. Available tools: {', '.join(tools)}.")
    arguments: Any = next((value[key] for key in _ARGUMENT_KEYS if key in value), {})
    if isinstance(arguments, str):  # arguments as JSON text, as in native tool calls
        try:
            arguments = json.loads(arguments or "{}")
        except ValueError:
            return Step(prose=prose, problem='"arguments" must be a JSON object.')
    if not isinstance(arguments, dict):
        return Step(prose=prose, problem=f'"arguments" must be a JSON object, not {_json_type(arguments)}.')
    if nested_deeper_than(arguments, MAX_ARGUMENT_DEPTH):
        return Step(prose=prose, problem=TOO_DEEP)
    problem = schema_problem(_closed(tool.parameters), arguments, "arguments")
    if problem is not None:
        return Step(prose=prose, problem=f"Invalid arguments for {name}: {problem}.")
    return Step(prose=prose, tool=name, arguments=arguments)


def schema_problem(schema: Any, value: Any, where: str) -> str | None:
    """The first way `value` breaks `schema` (the JSON Schema subset tool parameters use), or None. Numbers out
    of range are not a problem here: the agent brings them within range, with a note."""
    if not isinstance(schema, dict):
        return None
    for combinator in ("anyOf", "oneOf"):
        if isinstance(schema.get(combinator), list):
            problems = [schema_problem(choice, value, where) for choice in schema[combinator]]
            if all(problems):
                return problems[0]
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds] if isinstance(kinds, str) else []
    if kinds and not any(_has_type(value, kind) for kind in kinds):
        return f"{where} must be {' or '.join(_article(kind) for kind in kinds)}, not {_json_type(value)}"
    if "const" in schema and value != schema["const"]:
        return f"{where} must be {_dumps(schema['const'])}"
    if isinstance(schema.get("enum"), list) and value not in schema["enum"]:
        return f"{where} must be one of {', '.join(_dumps(v) for v in schema['enum'])}"
    if isinstance(value, dict):
        properties: dict[str, Any] = schema["properties"] if isinstance(schema.get("properties"), dict) else {}
        missing = [key for key in schema.get("required") or [] if key not in value]
        if missing:
            return f"{where} lacks the required {', '.join(missing)}"
        if schema.get("additionalProperties") is False:
            unknown = [key for key in value if key not in properties]
            if unknown:
                takes = ", ".join(properties) or "nothing"
                return f"{where} has unknown {', '.join(unknown)} (it takes {takes})"
        for key, item in value.items():
            problem = schema_problem(properties.get(key), item, f"{where}.{key}")
            if problem:
                return problem
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            problem = schema_problem(schema["items"], item, f"{where}[{index}]")
            if problem:
                return problem
    return None


def _has_type(value: Any, kind: str) -> bool:
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    expected = _JSON_TYPES.get(kind)
    return expected is None or isinstance(value, expected)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    for kind in ("null", "integer", "number", "string", "array", "object"):
        if isinstance(value, _JSON_TYPES[kind]):
            return "null" if kind == "null" else _article(kind)
    return type(value).__name__


def _article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


# -- streaming the answer as it is decoded ----------------------------------------------------


class AnswerStream:
    """Turns the text of a step, as it streams, into the answer's text as soon as it is decoded.

    A JSON step that starts `{"answer": "` streams its string (escapes decoded); a tool step streams nothing;
    a reply that starts with prose streams the prose until something looks like the start of a JSON step.
    Trailing whitespace is held back, so what was streamed is always a prefix of `Step.text`.
    """

    def __init__(self) -> None:
        self.buffer = ""
        self.emitted = ""
        self._mode = "detect"  # detect, answer, prose, quiet
        self._at = 0  # how far the buffer has been read in answer or prose mode
        self._held = ""  # whitespace waiting for what follows

    def feed(self, text: str) -> str:
        self.buffer += text
        if self._mode == "detect":
            self._detect()
        out = ""
        if self._mode == "answer":
            out = self._decode_answer()
        elif self._mode == "prose":
            out = self._read_prose()
        self.emitted += out
        return out

    def _detect(self) -> None:
        stripped = self.buffer.lstrip()
        if not stripped:
            return
        start = len(self.buffer) - len(stripped)
        if stripped[0] == "{":
            match = _ANSWER_START.match(stripped)
            if match is not None:
                self._mode, self._at = "answer", start + match.end()
            elif not _could_be_answer_start(stripped):
                self._mode = "quiet"
        elif stripped[0] in "`[":
            self._mode = "quiet"
        else:
            self._mode, self._at = "prose", start

    def _decode_answer(self) -> str:
        pieces = []
        buffer, at = self.buffer, self._at
        while at < len(buffer):
            char = buffer[at]
            if char == '"':
                self._mode = "quiet"  # the string ended; whatever follows is not answer text
                break
            if char != "\\":
                end = at
                while end < len(buffer) and buffer[end] not in '"\\':
                    end += 1
                pieces.append(buffer[at:end])
                at = end
                continue
            length = _escape_length(buffer, at)
            if length is None:
                break  # the escape is not complete yet
            try:
                pieces.append(json.loads(f'"{buffer[at:at + length]}"'))
            except ValueError:
                pieces.append(buffer[at:at + length])
            at += length
        self._at = at
        return self._hold_trailing_space("".join(pieces), final=self._mode != "answer")

    def _read_prose(self) -> str:
        # A fence or a brace opening a line starts a JSON step: stop before it, for good.
        stop = _STEP_START.search(self.buffer, self._at)
        text = self.buffer[self._at:stop.start() if stop is not None else None]
        if stop is not None:
            self._mode = "quiet"
        elif text.endswith(("`", "``")):
            keep = len(text) - len(text.rstrip("`"))
            text = text[:-keep]
        self._at += len(text)
        return self._hold_trailing_space(text, final=self._mode == "quiet")

    def _hold_trailing_space(self, text: str, *, final: bool) -> str:
        text = self._held + text
        if final:
            self._held = ""
            return text.rstrip()
        body = text.rstrip()
        self._held = text[len(body):]
        return body


def _could_be_answer_start(text: str) -> bool:
    """Whether `text` may still grow into `{"answer": "`."""
    compact = re.sub(r"\s+", "", text)
    return '{"answer":"'.startswith(compact) or compact.startswith('{"answer"')


def _escape_length(buffer: str, at: int) -> int | None:
    """Length of the escape sequence at `at` (a backslash), or None while it is incomplete."""
    if at + 1 >= len(buffer):
        return None
    if buffer[at + 1] != "u":
        return 2
    if at + 6 > len(buffer):
        return None
    code = buffer[at + 2:at + 6]
    if re.fullmatch(r"[dD][89abAB][0-9a-fA-F]{2}", code):  # a high surrogate: its pair follows
        if at + 12 > len(buffer):
            return None
        return 12 if buffer[at + 6:at + 8] == "\\u" else 6
    return 6


# -- one model request in prompted mode --------------------------------------------------------


# A call of a read-only tool is a path or a name: SmolLM2 wrote paths like "lisst_directory_a_rgument_a_..." until
# the limit, so such a call gets at most this many tokens.
READ_CALL_TOKENS = 128
# The answer after a repeated step: the model wanted another call and may only answer, and SmolLM2 then wrote
# garbage ("1234567890123...") to the limit; its answer so far is kept, cut here.
ANSWER_ONLY_TOKENS = 128


@dataclass(frozen=True)
class StepLimits:
    """Tokens one step may take. `step` (llm.step_max_tokens): a prompted answer; `content` (llm.max_tokens): a
    call of a tool that writes or runs something, whose arguments may be a whole file; a read-only call gets
    READ_CALL_TOKENS and an answer-only step ANSWER_ONLY_TOKENS, never more than the others. None: no limit.
    A prompted request asks for `content` (the server cannot know the kind in advance); the kind's own limit is
    kept while the step streams."""

    step: int | None = None
    content: int | None = None

    def _below(self, cap: int) -> int:
        return min(limit for limit in (cap, self.step, self.content) if limit is not None)

    @property
    def read_call(self) -> int:
        return self._below(READ_CALL_TOKENS)

    @property
    def answer_only(self) -> int:
        return self._below(ANSWER_ONLY_TOKENS)

    def request(self, answer_only: bool) -> int | None:
        """The max_tokens to send."""
        return self.answer_only if answer_only else self.content


STEP_CUT = ("The model's reply was cut off at {tokens} tokens, the limit of a prompted step that writes no file "
            f"content (an answer: llm.step_max_tokens; a read-only call: {READ_CALL_TOKENS}; the answer after a "
            f"repeated step: {ANSWER_ONLY_TOKENS}); a tool call in it was not run. Ask for the rest, or raise "
            "llm.step_max_tokens.")
# The name of the tool a step calls, as soon as it has streamed (also in free text, after prose).
_CALLED_TOOL = re.compile(r'"(?:tool|name|function)"\s*:\s*"([^"\\]+)"')


class _StepWatch:
    """Counts a streaming step's tokens (one per delta, or four characters each when a server sends several in
    one delta) and says when it passes the limit of its kind."""

    def __init__(self, limits: StepLimits, tools: list[ToolDefinition], answer_only: bool) -> None:
        self.limits, self.answer_only = limits, answer_only
        self.writers = {tool.name for tool in tools if tool.kind != "read"}
        self.deltas = 0
        self.characters = 0

    @property
    def tokens(self) -> int:
        return max(self.deltas, self.characters // 4)

    def passed(self, text: str, buffer: str) -> str | None:
        """After `text` streamed (the step so far: `buffer`): "step" or "content" when that limit is passed."""
        self.deltas += 1
        self.characters += len(text)
        if self.tokens <= min(self.limits.read_call, self.limits.answer_only):
            return None  # below every limit: no need to look at the step
        kind, limit = self._limit(buffer)
        return kind if limit is not None and self.tokens > limit else None

    def _limit(self, buffer: str) -> tuple[str, int | None]:
        """The kind of the step so far, and its limit."""
        if self.answer_only:
            return "step", self.limits.answer_only
        called = _CALLED_TOOL.search(buffer)
        if called is None:  # an answer (or prose before a step)
            return "step", self.limits.step
        if called.group(1) in self.writers:
            return "content", self.limits.content
        return "step", self.limits.read_call


async def prompted_chat(
    send: Send,
    messages: list[dict[str, Any]],
    tools: list[ToolDefinition],
    *,
    structured: bool,
    new_call_id: Callable[[], str],
    answer_only: bool = False,
    limits: StepLimits = StepLimits(),
) -> AsyncIterator[ProviderEvent]:
    """One step of the model: the answer streams as it is decoded, then one Completion. An invalid step is
    answered to the model with its exact problem once (the repair is not kept in the history). `answer_only`:
    the schema allows only an answer (the tools stay described, their results stay in the history). A step
    past its limit (`limits`) is stopped there: its text is kept, a call in it is not run."""
    prompt = to_prompted_messages(messages, tools)
    extra: dict[str, Any] = {"response_format": response_format([] if answer_only else tools)} if structured else {}
    cap = limits.request(answer_only)
    if cap is not None:
        extra["max_tokens"] = cap
    usage: Usage | None = None
    step = Step()
    completion = Completion()
    stream = AnswerStream()
    for repair in range(2):
        stream = AnswerStream()
        completion = Completion()
        watch = _StepWatch(limits, tools, answer_only)
        passed: str | None = None
        async with aclosing(send(prompt, extra)) as events:  # leaving early closes the stream: the server stops
            async for event in events:
                if isinstance(event, TextChunk):
                    text = stream.feed(event.text)
                    if text:
                        yield TextChunk(text)
                    passed = watch.passed(event.text, stream.buffer)
                    if passed is not None:
                        completion = Completion(stream.buffer, finish_reason="length")
                        break
                elif isinstance(event, Completion):
                    completion = event
                else:
                    yield event
        if completion.usage is not None:
            usage = completion.usage if usage is None else usage + completion.usage
        if completion.finish_reason == "repetition":  # cut by the provider's guard, which said so: keep the answer
            yield Completion(stream.emitted, completion.reasoning, [], "repetition", usage)  # so far, run nothing
            return
        if completion.finish_reason == "length":
            # Stopped by us at the step limit, or by the server at the step limit it was sent (answer-only).
            if passed == "step" or passed is None and answer_only:
                yield ProviderNotice(STEP_CUT.format(tokens=limits.answer_only if passed is None else watch.tokens))
                cut = _cut_off(completion, stream, tools, usage, new_call_id)
                yield Completion(cut.content, cut.reasoning, cut.tool_calls, "step_limit", usage)
                return
            yield _cut_off(completion, stream, tools, usage, new_call_id)
            return
        step = parse_step(completion.content, tools)
        if step.problem is None:
            break
        if repair == 0:
            prompt = [*prompt, {"role": "assistant", "content": completion.content},
                      {"role": "user", "content": f"Your reply is not a valid step: {step.problem} Nothing was "
                                                  "run. Reply again with exactly one JSON object, as described."}]
    if step.problem is not None:
        yield ProviderNotice(f"The model's reply was not a valid step, twice; nothing was run. The problem: "
                             f"{step.problem}")
        yield Completion(stream.emitted, completion.reasoning, [], "invalid_step", usage)
        return
    text = step.text
    if text.startswith(stream.emitted) and len(text) > len(stream.emitted):
        yield TextChunk(text[len(stream.emitted):])
    elif not text.startswith(stream.emitted):  # what streamed was prose the step does not keep: keep both
        text = stream.emitted + (f"\n\n{step.answer}" if step.answer else "")
        if step.answer:
            yield TextChunk(f"\n\n{step.answer}")
    calls = [ToolCall(new_call_id(), step.tool, _dumps(step.arguments or {}))] if step.tool else []
    yield Completion(text, completion.reasoning, calls, "tool_calls" if calls else completion.finish_reason, usage)


def _cut_off(completion: Completion, stream: AnswerStream, tools: list[ToolDefinition], usage: Usage | None,
             new_call_id: Callable[[], str]) -> Completion:
    """A step cut by the token limit: a tool call with its cut arguments (the agent refuses to run it and
    says why), or the answer text decoded so far."""
    match = re.match(r'\s*\{\s*"tool"\s*:\s*"([^"]+)"\s*,\s*"arguments"\s*:\s*', completion.content)
    if match is not None and match.group(1) in {tool.name for tool in tools}:
        call = ToolCall(new_call_id(), match.group(1), completion.content[match.end():])
        return Completion(stream.emitted, completion.reasoning, [call], "length", usage)
    return Completion(stream.emitted, completion.reasoning, [], "length", usage)
