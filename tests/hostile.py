"""Model and server text that tries to become live HTML or script (issue 24 item 1), shared by the tests that show
it: cell outputs in a kernel and in JupyterLab / Notebook 7, the chat panel, and exports. Each payload would set
`window.__pwned` or `document.body.dataset.pwned` if it ran; a test checks that both stay unset and that none of
the elements or links below exists in the page."""

from __future__ import annotations

ANSWER = (
    "Here is the plan.\n\n"
    "<img src=x onerror=\"document.body.dataset.pwned='img'\">\n\n"
    "<script>window.__pwned = 'script'</script>\n\n"
    "<iframe src=\"javascript:parent.__pwned='iframe'\"\n"
    "  srcdoc=\"<script>parent.__pwned='srcdoc'</script>\"></iframe>\n\n"
    "<style>body { background: rgb(255, 0, 0) !important; }</style>\n\n"
    "<svg><animate onbegin=\"window.__pwned='svg'\" attributeName=\"x\" dur=\"1s\"/></svg>\n\n"
    "[click me](javascript:window.__pwned='link') or <a href=\"javascript:window.__pwned='a'\">this</a>.\n\n"
    "[ref link][1]\n\n[1]: javascript:window.__pwned='ref'\n\n"
    "<details open ontoggle=\"window.__pwned='details'\"><summary>x</summary>y</details>\n\n"
    "The end: `<b>inline code</b>` stays code.\n"
)
ERROR_BODY = ("Bad request: <img src=x onerror=\"document.body.dataset.pwned='error'\">"
              "<script>window.__pwned='e'</script>")
# What must not exist in the rendered output (CSS selectors).
LIVE = ("img", "script", "iframe", "style", "svg", "animate", "details[ontoggle]", "a[href^='javascript']",
        "[onerror]", "[onload]")
# Text that shows when the payload is displayed as text.
SHOWN_AS_TEXT = "<img src=x onerror="

# Tags our own HTML uses (the renderer in auto_coder_nb.markdown, the cell output's frames).
OUR_TAGS = {"div", "p", "br", "strong", "em", "del", "code", "pre", "a", "ul", "ol", "li", "blockquote", "hr",
            "table", "thead", "tbody", "tr", "th", "td", "h1", "h2", "h3", "h4", "h5", "h6", "details", "summary",
            "span", "b"}


def assert_inert_html(text: str) -> None:
    """`text`, parsed as a browser would, holds only our own tags, no event handler and no link but http(s)."""
    from html.parser import HTMLParser

    found: list[tuple[str, list[tuple[str, str | None]]]] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            found.append((tag, attrs))

    Tags().feed(text)
    assert {tag for tag, _ in found} <= OUR_TAGS, {tag for tag, _ in found} - OUR_TAGS
    for tag, attributes in found:
        for name, value in attributes:
            assert not name.startswith("on"), (tag, name, value)
            if name in ("href", "src", "action", "formaction", "srcdoc"):
                assert (value or "").startswith(("http://", "https://")), (tag, name, value)
