"""A small MCP server for the tests, written with the official SDK: `python notes_server.py` serves stdio;
`python notes_server.py --http` serves streamable HTTP on 127.0.0.1 (a free port, printed as `PORT n` on stdout)
and, when MCP_TEST_TOKEN is set, answers 401 to requests without `Authorization: Bearer <token>`."""

from __future__ import annotations

import os
import socket
import sys
import time

from mcp.server.mcpserver import MCPServer

app = MCPServer("notes")
NOTES: list[str] = []


@app.tool()
def add_note(text: str) -> str:
    """Keep a note."""
    NOTES.append(text)
    return f"noted ({len(NOTES)} notes)"


@app.tool()
def list_notes() -> str:
    """The notes kept so far."""
    return "\n".join(NOTES) or "no notes"


@app.tool()
def crash() -> str:
    """Stop the server process at once, in the middle of the call."""
    print("notes server: crashing on purpose", file=sys.stderr, flush=True)
    os._exit(3)


@app.tool()
def slow(seconds: float) -> str:
    """Answer after `seconds`."""
    time.sleep(seconds)
    return "finally"


@app.tool()
def huge(size: int) -> str:
    """A text of `size` characters: a head line, filler, a tail line."""
    return "HEAD\n" + "x" * size + "\nTAIL"


@app.tool()
def fail() -> str:
    """Always raises."""
    raise ValueError("the notes store is locked")


def serve_http() -> None:
    import uvicorn
    from starlette.responses import PlainTextResponse

    token = os.environ.get("MCP_TEST_TOKEN")
    inner = app.streamable_http_app()

    async def guarded(scope, receive, send):  # type: ignore[no-untyped-def]
        if token and scope["type"] == "http":
            headers = dict(scope["headers"])
            if headers.get(b"authorization", b"").decode() != f"Bearer {token}":
                await PlainTextResponse("unauthorized", status_code=401)(scope, receive, send)
                return
        await inner(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(guarded, log_level="warning", lifespan="on"))
    server.run(sockets=[sock])


if __name__ == "__main__":
    if "--http" in sys.argv:
        serve_http()
    else:
        app.run()
