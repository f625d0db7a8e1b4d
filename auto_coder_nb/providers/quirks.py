"""What a server turned out not to accept, learnt from its errors and kept for the session: one object, so a request
body is built from what is known and a rejection that names a missing feature is answered by leaving it out."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

# What servers say when they refuse `tools` (Ollama, vLLM without auto tool choice, llama.cpp without --jinja...).
_NO_TOOL_SUPPORT = re.compile(
    r"(does not|doesn't|do not|don't|cannot) (support|use) (tools|tool[ _-]?(calling|calls|use)|function[ _-]?call)"
    r"|tools? (is|are) not supported|(tool|function)[ _-]?call(ing|s)? (is|are) not (supported|enabled|available)"
    r"|enable-auto-tool-choice|tool-call-parser|tools param requires|tool_choice param requires",
    re.IGNORECASE,
)
_NO_STRUCTURED_OUTPUT = re.compile(r"response_format|json_schema|structured output|grammar|guided", re.IGNORECASE)
_TOOLS_WITH_STREAM = re.compile(r"tools?\b.*\bstream|stream\w*\b.*\btools?\b", re.IGNORECASE)
_FEATURE_ERRORS = (400, 422, 500, 501)  # the statuses servers refuse an unknown field or feature with


@dataclass
class ServerQuirks:
    send_stream_options: bool = True  # stream_options.include_usage (usage at the end of a stream)
    send_tool_choice: bool = True  # false once the server rejected `tool_choice` (an answer-only request)
    stream_with_tools: bool = True  # false: a request with tools is sent without streaming
    structured_output: bool = True  # false: prompted steps are read from free text (no response_format)

    def learn(self, response: httpx.Response, body: dict[str, Any]) -> bool:
        """Learn from an error that names a feature the server lacks; True when the request should be resent."""
        if response.status_code not in _FEATURE_ERRORS:
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

    def sends(self, key: str) -> bool:
        """Whether an optional request field the server may lack (response_format, tool_choice) is sent."""
        return (key != "response_format" or self.structured_output) and (key != "tool_choice" or self.send_tool_choice)

    @staticmethod
    def refuses_tools(response: httpx.Response) -> bool:
        """Whether an error says the server (or this model) has no native tool calling."""
        return response.status_code in _FEATURE_ERRORS and bool(_NO_TOOL_SUPPORT.search(response.text))
