"""Text helpers shared by the core and the faces: one home each, so they cannot drift apart.

- `omit_middle` / `truncate`: a long text cut to its head and tail, with a marker saying how much was left out.
- `scrub`: the one scrubber for what leaves the process: known secret values and URL credentials hidden
  (built on `hide_secrets`, `hide_url_credentials`; `hide_credential_shapes` for what servers echo).
- `strip_ansi`: terminal colour and cursor codes removed.
- `clause`: another's sentence without its final period, to embed in ours.
- `exception_chain`: an exception and what caused it (`__cause__`, else `__context__`).
- `PYTHON_FENCE_LANGUAGES`: the labels of a Markdown code fence that mean Python.

Imports nothing heavy: faces and `%load_ext` use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

HIDDEN = "<hidden>"
# Shorter values are too likely to be ordinary words or digits to be replaced everywhere.
MIN_SECRET_LENGTH = 4

# CSI sequences (colours, cursor moves, `?`-private modes such as `\x1b[?25l`).
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")

# `Authorization` values and OpenAI-style keys, wherever a server or a library echoes them.
_CREDENTIAL_SHAPES = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;]+|\bsk-[A-Za-z0-9_\-]{6,}")

# The user information of a URL (`scheme://user:password@`): everything up to the authority's last `@`, so a
# password holding an `@` is matched whole.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^\s/?#@:]*)(?P<password>:[^\s/?#]*)?@")

# Fence labels that mean Python code ("" is an unlabelled fence, which models often use for Python).
PYTHON_FENCE_LANGUAGES = frozenset({"", "python", "python3", "py", "ipython", "ipython3"})


def omit_middle(head: str, tail: str, total: int, budget: int) -> str:
    """`budget` characters of a text of `total` characters, half from its `head` and half from its `tail`,
    with a marker saying how much was left out: the command's echo and early errors, and the final error."""
    head_size = budget // 2
    tail_size = budget - head_size
    omitted = total - head_size - tail_size
    return f"{head[:head_size]}\n\n... [{omitted:,} characters omitted] ...\n\n{tail[len(tail) - tail_size:]}"


def truncate(text: str, limit: int) -> str:
    """`text` itself if it fits in `limit` characters, else its head and tail (see `omit_middle`)."""
    return text if len(text) <= limit else omit_middle(text, text, len(text), limit)


def counted(count: int, noun: str) -> str:
    """`1 prompt`, `2 prompts`: a count with its noun (regular plurals only)."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def clause(text: str) -> str:
    """`text` (what a server or a library said) without its closing period, to go inside a sentence of
    ours that adds its own: "... provided. Check" rather than "... provided.. Check"."""
    return text.rstrip().rstrip(".").rstrip()


def hide_secrets(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every known secret value replaced by `<hidden>`, the longest first (a secret that
    contains another is hidden whole)."""
    for secret in sorted({s for s in secrets if s and len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def hide_credential_shapes(text: str) -> str:
    """`text` with `Bearer ...` / `Basic ...` values and `sk-...` keys replaced: for what a server said,
    which may echo a credential this process never knew (a proxy's, another client's)."""
    return _CREDENTIAL_SHAPES.sub(lambda m: f"{m.group(1)} {HIDDEN}" if m.group(1) else HIDDEN, text)


def url_credentials(url: str | None) -> tuple[str, str]:
    """(user, password) of the first URL in `url` that carries them, as written; ("", "") if none."""
    match = _URL_USERINFO.search(url or "")
    if match is None:
        return "", ""
    return match.group("user"), (match.group("password") or "")[1:]


def hide_url_credentials(text: str) -> str:
    """`text` with the password of every URL hidden (`http://user:<hidden>@host`), and a user given without a
    password too (`https://<hidden>@host`: that is how tokens are put in URLs)."""
    def hide(match: re.Match[str]) -> str:
        if match.group("password") is None:
            return f"{match.group('scheme')}{HIDDEN}@" if match.group("user") else match.group(0)
        return f"{match.group('scheme')}{match.group('user')}:{HIDDEN}@"
    return _URL_USERINFO.sub(hide, text)


def scrub(text: str, secrets: Iterable[str | None]) -> str:
    """The scrubber for text that leaves the process (tool results, errors, outputs, summaries): every known
    secret value replaced, then every URL's credentials. `secrets` come from `Config.secret_values()` and
    `auth.secret_values()` (which adds the tokens fetched at run time)."""
    return hide_url_credentials(hide_secrets(text, secrets))


def strip_ansi(text: str) -> str:
    """`text` without terminal escape sequences (they only cost the model tokens and garble HTML)."""
    return ANSI_ESCAPE.sub("", text)


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """`exc`, then what caused it (`__cause__`, else `__context__`), and so on; each exception once."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    """Whether `exc` or anything in its cause chain is a `kind`."""
    return any(isinstance(link, kind) for link in exception_chain(exc))


# C0 controls but tab and line feed, DEL and C1, the Arabic letter mark, zero-width and direction marks,
# line/paragraph separators, bidi embeddings, overrides and isolates, word joiners, the BOM.
_HIDDEN_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2069\ufeff]")
_NAMED_ESCAPES = {"\r": "\\r", "\b": "\\b", "\f": "\\f", "\v": "\\v", "\x00": "\\0"}


def show_controls(text: str) -> str:
    """`text` with every character that could hide or reorder what is shown (terminal escapes, carriage
    returns, backspaces, bidi overrides, zero-width characters) written as a visible escape such as `\\x1b`,
    `\\r` or `\\u202e`: what the user approves is exactly what runs. Line breaks and tabs stay."""
    return _HIDDEN_CONTROLS.sub(lambda m: _NAMED_ESCAPES.get(m.group()) or _escape(m.group()), text)


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# -- the user message with the kernel context ---------------------------------------------------


_SURROGATE = re.compile("[\ud800-\udfff]")


def escape_undecodable(text: str) -> str:
    """`text` as it can be written as UTF-8 (to a file, to a server, to a terminal): the bytes of a file or folder
    name that is not valid UTF-8, which Python keeps as lone surrogates, as `\\xNN`; any other lone surrogate as
    `\\udNNN`. Text without them is returned as it is."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATE.sub(_escape_surrogate, text)
    return text


def _escape_surrogate(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"


def escaped_everywhere(value: Any) -> Any:
    """`value` (a message, a record) with `escape_undecodable` applied to every string in it; the very same object
    when nothing needed it (an image part keeps its identity)."""
    if isinstance(value, str):
        return escape_undecodable(value)
    if isinstance(value, dict):
        items = {key: escaped_everywhere(item) for key, item in value.items()}
        return value if all(items[key] is item for key, item in value.items()) else items
    if isinstance(value, list):
        elements = [escaped_everywhere(item) for item in value]
        return value if all(new is old for new, old in zip(elements, value, strict=True)) else elements
    return value


def compose_message(prompt: str, context: str) -> str:
    """The user message as sent: the prompt, then the kernel context if there is any."""
    if not context:
        return prompt
    return f"{prompt}\n\n<kernel-context>\n{context}\n</kernel-context>"


_CONTEXT_BLOCK = re.compile(r"\n\n<kernel-context>\n.*\n</kernel-context>\Z", re.DOTALL)
_REVIEW_BLOCK = re.compile(r"\A<user-review>\n.*?\n</user-review>\n\n", re.DOTALL)


def with_review(message: str, notes: list[str]) -> str:
    """The user message with what the user did to the agent's changes since (a Revert) before it, for the model."""
    if not notes:
        return message
    return "<user-review>\n" + "\n".join(notes) + "\n</user-review>\n\n" + message


def prompt_of(message: str) -> str:
    """What the user typed, from a message `compose_message` (and `with_review`) made: listings and transcripts
    show this."""
    return _CONTEXT_BLOCK.sub("", _REVIEW_BLOCK.sub("", message, count=1))
