"""A `session/prompt`'s content blocks as the agent's message: text, images as attachments, resource links named,
embedded resources as context, everything within the context budget (a notice says what was cut)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ..images import Image, ImageError, fit_image
from ..session import Session
from ..state.conversation import CHARS_PER_TOKEN
from ..text import scrub, truncate
from .wire import invalid_params

# A prompt's text and context together take at most this share of the model's context window.
PROMPT_SHARE = 0.5
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


@dataclass
class Prompt:
    message: str
    images: list[Image] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


def compose(blocks: Any, session: Session) -> Prompt:
    """The message for `session.agent.run`. Raises RpcError (invalid params) for content it cannot take."""
    if not isinstance(blocks, list) or not blocks:
        raise invalid_params("prompt must be a non-empty list of content blocks")
    budget = int(session.agent.context_usage().window * CHARS_PER_TOKEN * PROMPT_SHARE)
    prompt = Prompt("")
    words: list[str] = []
    context: list[tuple[str, str]] = []  # (uri, text) of embedded resources
    for number, block in enumerate(blocks, 1):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise invalid_params(f"prompt block {number} is not a content block (an object with a type)")
        kind = block["type"]
        if kind == "text":
            words.append(_string(block, "text", number))
        elif kind == "image":
            prompt.images.append(_image(_decoded(block, "data", number), block.get("uri") or f"image {number}",
                                        session))
        elif kind == "resource_link":
            path = _local_path(_string(block, "uri", number))
            mime = str(block.get("mimeType") or "")
            if path is not None and (mime.startswith("image/") or path.suffix.lower() in IMAGE_SUFFIXES):
                try:
                    prompt.images.append(session.attach_file(str(path)))
                except ImageError as exc:
                    raise invalid_params(str(exc)) from None
            else:
                words.append(f"[Attached: {_shown(block['uri'], path, session)}]")
        elif kind == "resource":
            resource = block.get("resource")
            if not isinstance(resource, dict) or not isinstance(resource.get("uri"), str):
                raise invalid_params(f"prompt block {number}: resource needs an object with a uri")
            if isinstance(resource.get("text"), str):
                context.append((resource["uri"], resource["text"]))
            elif str(resource.get("mimeType") or "").startswith("image/"):
                prompt.images.append(_image(_decoded(resource, "blob", number), resource["uri"], session))
            else:
                words.append(f"[Attached: {resource['uri']} (binary content, not included)]")
        else:
            raise invalid_params(f"prompt block {number}: {kind!r} content is not supported (text, image, "
                                 "resource_link and resource are)")
    text = "\n".join(words)
    if len(text) > budget:
        prompt.notices.append(f"Your message was cut to {budget:,} of its {len(text):,} characters to fit the "
                              "model's context window.")
        text = truncate(text, budget)
    parts, left = [text], budget - len(text)
    for uri, body in context:
        if len(body) > left:
            prompt.notices.append(f"{uri} was cut to {max(left, 0):,} of its {len(body):,} characters to fit the "
                                  "model's context window." if left > 0 else
                                  f"{uri} was left out: the message already fills the share of the context window "
                                  "a prompt may take.")
            if left <= 0:
                continue
            body = truncate(body, left)
        left -= len(body)
        parts.append(f'<resource uri="{uri}">\n{body}\n</resource>')
    prompt.message = scrub("\n\n".join(part for part in parts if part), session.secret_values())
    if not prompt.message.strip() and not prompt.images:
        raise invalid_params("the prompt has no text, image or resource")
    return prompt


def _string(block: dict[str, Any], key: str, number: int) -> str:
    value = block.get(key)
    if not isinstance(value, str):
        raise invalid_params(f"prompt block {number}: {key} must be a string")
    return value


def _decoded(block: dict[str, Any], key: str, number: int) -> bytes:
    try:
        return base64.b64decode(_string(block, key, number), validate=True)
    except (binascii.Error, ValueError):
        raise invalid_params(f"prompt block {number}: {key} is not base64") from None


def _image(data: bytes, source: str, session: Session) -> Image:
    try:
        return fit_image(data, source, session.agent.config.image_max_side)
    except ImageError as exc:
        raise invalid_params(str(exc)) from None


def _local_path(uri: str) -> Path | None:
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if not parsed.scheme and uri.startswith("/"):
        return Path(uri)
    return None


def _shown(uri: str, path: Path | None, session: Session) -> str:
    """A linked file as the model should name it to read_file: relative to the workspace when inside it."""
    if path is None:
        return uri
    root = session.workspace.root
    try:
        return str(path.resolve().relative_to(root))
    except (ValueError, OSError):
        return str(path)
