"""Markdown to HTML, small and safe: everything from the model (or a server) is escaped, links only go to http(s)
URLs. The one renderer of model text as HTML, for every face that shows HTML: the chat panel and the magics' cell
output. `inert_markdown` keeps Markdown as Markdown for exports, with its raw HTML and unsafe links made text.

Answers stream, so the panel splits the text into finished blocks (`take_blocks`), renders them once, and
re-renders an open rest on each update."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_RULE = re.compile(r"^ {0,3}([-*_])(\s*\1){2,}\s*$")
_ITEM = re.compile(r"^(\s*)([-*+]|\d{1,9}[.)])\s+(.*)$")
_QUOTE = re.compile(r"^ {0,3}>\s?(.*)$")
_TABLE_RULE = re.compile(r"^\s*\|?\s*:?-{2,}:?\s*(\|\s*:?-{2,}:?\s*)*\|?\s*$")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^\s)]+)\)")
_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__")
_EMPHASIS = re.compile(r"(?<![\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])|(?<![\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])")
_STRIKE = re.compile(r"~~(?=\S)(.+?)(?<=\S)~~")


def inline_html(text: str) -> str:
    """Inline Markdown (code, links, bold, italic, strike) of one piece of text, HTML-escaped."""
    spans: list[str] = []

    def keep(html_text: str) -> str:
        spans.append(html_text)
        return f"\x00{len(spans) - 1}\x00"

    text = text.replace("\x00", "")
    text = _CODE_SPAN.sub(lambda m: keep(f"<code>{html.escape(m.group(2).strip())}</code>"), text)
    text = html.escape(text)
    text = _LINK.sub(lambda m: keep(f'<a href="{m.group(2)}" target="_blank" rel="noopener noreferrer">'
                                    f"{m.group(1)}</a>"), text)
    text = _STRONG.sub(lambda m: f"<strong>{m.group(1) or m.group(2)}</strong>", text)
    text = _EMPHASIS.sub(lambda m: f"<em>{m.group(1) or m.group(2)}</em>", text)
    text = _STRIKE.sub(r"<del>\1</del>", text)
    return re.sub("\x00(\\d+)\x00", lambda m: spans[int(m.group(1))], text)


def markdown_html(text: str) -> str:
    """A whole Markdown text to HTML (blocks, then their inline parts). Unclosed fences run to the end."""
    parts: list[str] = []
    for block in split_blocks(text):
        if block.language is not None:
            parts.append(f'<pre><code>{html.escape(block.text)}</code></pre>')
        else:
            parts.append(block_html(block.text))
    return "".join(parts)


@dataclass
class Block:
    text: str
    language: str | None = None  # not None for a fenced code block (then `text` is the code)


def opens_fence(text: str) -> bool:
    """Whether `text` begins with a code fence (its block ends only at the closing fence)."""
    return _FENCE.match(text) is not None


def split_blocks(text: str) -> list[Block]:
    blocks, rest = take_blocks(text)
    if rest.strip():
        fence = _FENCE.match(rest)
        if fence:
            body = rest.split("\n", 1)[1] if "\n" in rest else ""
            blocks.append(Block(body, fence.group(2)))
        else:
            blocks.append(Block(rest))
    return blocks


def take_blocks(text: str) -> tuple[list[Block], str]:
    """Split off the finished blocks of `text`; return them and the unfinished rest.

    A text block ends at a blank line or where a fence opens; a code block ends at its closing fence.
    Only complete lines are looked at, so the rest may keep growing.
    """
    lines = text.split("\n")
    blocks: list[Block] = []
    start, fence, language = 0, "", ""
    for i, line in enumerate(lines[:-1]):
        if fence:
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                blocks.append(Block("\n".join(lines[start + 1:i]), language))
                start, fence = i + 1, ""
            continue
        opened = _FENCE.match(line)
        if opened or not line.strip():
            if any(piece.strip() for piece in lines[start:i]):
                blocks.append(Block("\n".join(lines[start:i])))
            start = i if opened else i + 1
            if opened:
                fence, language = opened.group(1), opened.group(2)
    return blocks, "\n".join(lines[start:])


def block_html(text: str) -> str:
    """One text block: headings, rules, lists, quotes, tables and paragraphs (soft breaks kept)."""
    lines = text.split("\n")
    if len(lines) >= 2 and "|" in lines[0] and _TABLE_RULE.match(lines[1]):
        return _table_html(lines)
    out: list[str] = []
    paragraph: list[str] = []
    lists: list[tuple[int, str]] = []  # open lists: (indent, tag)
    quote: list[str] = []

    def close_paragraph() -> None:
        if paragraph:
            out.append("<p>" + "<br>".join(inline_html(line.strip()) for line in paragraph) + "</p>")
            paragraph.clear()

    def close_lists(indent: int = -1) -> None:
        while lists and lists[-1][0] > indent:
            out.append(f"</li></{lists.pop()[1]}>")

    def close_quote() -> None:
        if quote:
            out.append(f"<blockquote>{block_html(chr(10).join(quote))}</blockquote>")
            quote.clear()

    for line in lines:
        quoted = _QUOTE.match(line)
        if quoted:
            close_paragraph()
            close_lists()
            quote.append(quoted.group(1))
            continue
        close_quote()
        heading, item = _HEADING.match(line), _ITEM.match(line)
        if heading:
            close_paragraph()
            close_lists()
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline_html(heading.group(2))}</h{level}>")
        elif _RULE.match(line):
            close_paragraph()
            close_lists()
            out.append("<hr>")
        elif item:
            close_paragraph()
            indent, marker, body = len(item.group(1).expandtabs(4)), item.group(2), item.group(3)
            tag = "ol" if marker[0].isdigit() else "ul"
            close_lists(indent)
            if lists and lists[-1][0] == indent:
                out.append("</li>")
                if lists[-1][1] != tag:
                    out.append(f"</{lists.pop()[1]}>")
            if not lists or lists[-1][0] < indent:
                start = f' start="{int(marker[:-1])}"' if tag == "ol" and int(marker[:-1]) != 1 else ""
                out.append(f"<{tag}{start}>")
                lists.append((indent, tag))
            out.append(f"<li>{inline_html(body)}")
        elif not line.strip():
            close_paragraph()
        elif lists:
            out.append("<br>" + inline_html(line.strip()))  # continuation of a list item
        else:
            paragraph.append(line)
    close_quote()
    close_lists()
    close_paragraph()
    return "".join(out)


def _table_html(lines: list[str]) -> str:
    def cells(line: str) -> list[str]:
        return [inline_html(cell.strip()) for cell in line.strip().strip("|").split("|")]

    head = "".join(f"<th>{cell}</th>" for cell in cells(lines[0]))
    rows = ["".join(f"<td>{cell}</td>" for cell in cells(line)) for line in lines[2:] if line.strip()]
    body = "".join(f"<tr>{row}</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# -- Markdown kept as Markdown, for exports ----------------------------------------------------------

_ANY_FENCE = re.compile(r"^\s*(`{3,}|~{3,})")
_CODE_SPANS = re.compile(r"(`+)(.+?)\1")
_INLINE_LINK = re.compile(r"\]\(\s*(\S*)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S*)")
# Where a link may go: the web, mail, a place in the page, a relative path. Not `javascript:`, `data:`, or a scheme
# hidden by an entity (`java&#115;cript:`).
_SAFE_DESTINATION = re.compile(r"(?i)<?(https?://|mailto:|#|/|\.{1,2}/|[^\s:&%/?#<]+([/?#)]|$))")


def inert_markdown(text: str) -> str:
    """`text` as Markdown still (headings, emphasis, code, http links read as before), but its raw HTML shown as text
    and its links to other schemes made plain text: for exports, which nbconvert, editors and Jupyter render with
    HTML live. Fenced code blocks and code spans are left exactly as written (they are shown as code anyway)."""
    lines, fence = [], ""
    for line in text.split("\n"):
        opened = _ANY_FENCE.match(line)
        if fence:
            if opened and opened.group(1)[0] == fence[0] and len(opened.group(1)) >= len(fence) \
                    and not line.strip().strip(fence[0]):
                fence = ""
            lines.append(line)
        elif opened:
            fence = opened.group(1)
            lines.append(line)
        else:
            lines.append(_inert_line(line))
    return "\n".join(lines)


def _inert_line(line: str) -> str:
    reference = _REFERENCE.match(line)
    if reference and not _SAFE_DESTINATION.match(reference.group(1)):
        line = "\\" + line
    pieces = []
    position = 0
    for span in _CODE_SPANS.finditer(line):
        pieces.append(_inert_text(line[position:span.start()]))
        pieces.append(span.group(0))
        position = span.end()
    pieces.append(_inert_text(line[position:]))
    return "".join(pieces)


def _inert_text(text: str) -> str:
    text = _INLINE_LINK.sub(lambda m: m.group(0) if _SAFE_DESTINATION.match(m.group(1)) else "]\\(" + m.group(1),
                            text)
    return text.replace("<", "&lt;")
