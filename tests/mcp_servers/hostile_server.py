"""An MCP stdio server that misbehaves on purpose, written by hand (no SDK: it must be able to do what the SDK would
not). Its options, any of them:

  --tools N          list N tools (one page), named tool_0 ... tool_{N-1}
  --deep N           one more tool, `deep`, whose input schema is nested N levels deep
  --huge MB          the tool `dump` answers a text of MB megabytes: HEAD, filler, TAIL
  --junk             write lines that are not MCP on stdout: at start and before each answer
  --child PIDFILE    start a child process (in the server's process group) and write its pid to PIDFILE
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

parser = argparse.ArgumentParser()
parser.add_argument("--tools", type=int, default=1)
parser.add_argument("--deep", type=int, default=0)
parser.add_argument("--huge", type=int, default=0)
parser.add_argument("--junk", action="store_true")
parser.add_argument("--child")
options = parser.parse_args()
out = sys.stdout.buffer


def send(message: dict[str, object]) -> None:
    out.write(json.dumps(message).encode() + b"\n")
    out.flush()


def junk() -> None:
    if options.junk:
        out.write(b"Starting the hostile server... ready!\n\x1b[31mnot json\x1b[0m\n")
        out.flush()


def tools() -> bytes:
    """The listing's tools as JSON text (a schema thousands deep is more than json.dumps goes)."""
    listed: list[dict[str, object]] = [
        {"name": f"tool_{n}", "description": f"Tool number {n}.",
         "inputSchema": {"type": "object", "properties": {"x": {"type": "string"}}}}
        for n in range(options.tools)]
    listed.append({"name": "dump", "description": "A big text.", "inputSchema": {"type": "object"}})
    text = json.dumps(listed).encode()
    if options.deep:
        level = b'{"type": "object", "properties": {"a": '
        schema = level * options.deep + b'{"type": "string"}' + b"}}" * options.deep
        text = text[:-1] + b', {"name": "deep", "description": "Deep arguments.", "inputSchema": ' + schema + b"}]"
    return text


def answer(request: dict[str, object]) -> None:
    method, ident = request.get("method"), request.get("id")
    if ident is None:
        return  # a notification
    junk()
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": ident, "result": {
            "protocolVersion": request["params"]["protocolVersion"],  # type: ignore[index]
            "capabilities": {"tools": {}}, "serverInfo": {"name": "hostile", "version": "1"}}})
    elif method == "tools/list":
        out.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(ident).encode() + b', "result": {"tools": ' + tools()
                  + b"}}\n")
        out.flush()
    elif method == "tools/call":
        name = request["params"]["name"]  # type: ignore[index]
        if name == "dump":
            filler = b"x" * (1024 * 1024)
            out.write(b'{"jsonrpc": "2.0", "id": ' + json.dumps(ident).encode()
                      + b', "result": {"content": [{"type": "text", "text": "HEAD\\n')
            for _ in range(options.huge):
                out.write(filler)
            out.write(b'\\nTAIL"}], "isError": false}}\n')
            out.flush()
        else:
            send({"jsonrpc": "2.0", "id": ident, "result": {"content": [{"type": "text", "text": f"{name} ran"}]}})
    else:
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": f"no method {method}"}})


if options.child:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    with open(options.child, "w") as stream:
        stream.write(str(child.pid))
junk()
for line in sys.stdin:
    answer(json.loads(line))
