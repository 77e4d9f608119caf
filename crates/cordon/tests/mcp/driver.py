"""A real MCP client (the official Python SDK, `mcp`) driving `cordon mcp flags`
for crates/cordon/tests/mcp.rs.

    driver.py stdio CORDON_BINARY -- ARGS...   launch `CORDON_BINARY ARGS...` and talk over stdio
    driver.py http URL                         connect to a streamable HTTP endpoint (http://.../mcp)

Writes one line {"event": "started", "server": {...}} after the MCP handshake, then
answers each JSON line on stdin with one JSON line on stdout, in order:

    {"cmd": "list_tools"}                        -> {"ok": true, "tools": [{name, description, inputSchema}]}
    {"cmd": "call", "tool": T, "arguments": {}}  -> {"ok": true, "isError": bool, "structured": ..., "text": "..."}
                                                    or, for a protocol error,
                                                    {"ok": false, "code": N, "error": "message"}
    {"cmd": "quit"}                              -> {"ok": true}, then exit
"""

import json
import sys

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError


def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve(session):
    init = await session.initialize()
    say({"event": "started", "server": init.server_info.model_dump(mode="json")})
    stdin = anyio.wrap_file(sys.stdin)
    async for line in stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        cmd = req["cmd"]
        if cmd == "quit":
            say({"ok": True})
            return
        try:
            if cmd == "list_tools":
                tools = await session.list_tools()
                say({"ok": True, "tools": [
                    {"name": t.name, "description": t.description, "inputSchema": t.input_schema}
                    for t in tools.tools
                ]})
            elif cmd == "call":
                result = await session.call_tool(req["tool"], req.get("arguments") or {})
                text = "".join(getattr(c, "text", "") for c in result.content)
                say({"ok": True, "isError": bool(result.is_error),
                     "structured": result.structured_content, "text": text})
            else:
                say({"ok": False, "code": 0, "error": f"unknown driver command {cmd!r}"})
        except MCPError as e:
            say({"ok": False, "code": e.code, "error": e.message})


async def main():
    mode = sys.argv[1]
    if mode == "stdio":
        binary, args = sys.argv[2], sys.argv[4:]
        params = StdioServerParameters(command=binary, args=args)
        async with stdio_client(params) as (read, write):
            async with ClientSession(read, write) as session:
                await serve(session)
    elif mode == "http":
        async with streamable_http_client(sys.argv[2]) as (read, write):
            async with ClientSession(read, write) as session:
                await serve(session)
    else:
        raise SystemExit(f"usage: driver.py stdio BINARY -- ARGS... | http URL (not {mode!r})")


anyio.run(main)
