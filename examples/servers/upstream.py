"""Shared plumbing for the example MCP servers: request log + uvicorn runner.

The request log exists so end-to-end tests can prove what Meshgate did *not*
forward: every HTTP request that reaches an example server (headers included,
so a test can check the client's `Authorization` never arrives) is written as
one JSON line to the file named by `MESHGATE_UPSTREAM_LOG`, before the MCP SDK
sees it. The body is captured whole and replayed to the SDK unchanged, so the
log also records requests the SDK itself would reject (bad content type, bad
JSON) - exactly the ones a gateway must stop.

One line per HTTP request:

    {"ts": 1700000000.1, "server": "crm", "http_method": "POST", "path": "/mcp",
     "headers": {"content-type": "application/json", ...},
     "body": "<request body, utf-8 with replacement chars>", "body_sha256": "...",
     "messages": [{"method": "tools/call", "id": 3, "name": "get_customer"}],
     "method": "tools/call", "name": "get_customer"}

`messages` has one entry per JSON-RPC message in the body (a batch gives
several); `name` is the tool/prompt name or the resource URI. `method` and
`name` are repeated at the top level when the body holds exactly one message.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOG_ENV = "MESHGATE_UPSTREAM_LOG"

# Params key that names the target of a name-bearing MCP method.
_NAME_KEYS = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}


def summarize(message: Any) -> dict[str, Any]:
    """Method, id and target name of one decoded JSON-RPC message."""
    if not isinstance(message, dict):
        return {"invalid": True}
    summary: dict[str, Any] = {"method": message.get("method"), "id": message.get("id")}
    params = message.get("params")
    key = _NAME_KEYS.get(str(message.get("method")))
    if key is not None and isinstance(params, dict):
        summary["name"] = params.get(key)
    if "result" in message or "error" in message:
        summary["response"] = True
    return summary


class UpstreamLog:
    """Appends one JSON line per request; safe to call from any task or thread."""

    def __init__(self, path: str | None, server: str) -> None:
        self._path = path
        self._server = server
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._path is not None

    def write(self, scope: Scope, body: bytes | None) -> None:
        if self._path is None:
            return
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope.get("headers", []):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        entry: dict[str, Any] = {
            "ts": time.time(),
            "server": self._server,
            "http_method": scope.get("method"),
            "path": scope.get("path"),
            "headers": headers,
        }
        if body is not None:
            entry["body"] = body.decode("utf-8", errors="replace")
            entry["body_sha256"] = hashlib.sha256(body).hexdigest()
            try:
                decoded = json.loads(body)
            except ValueError:
                entry["messages"] = []
                entry["parse_error"] = True
            else:
                items = decoded if isinstance(decoded, list) else [decoded]
                entry["messages"] = [summarize(item) for item in items]
                if not isinstance(decoded, list):
                    entry["method"] = entry["messages"][0].get("method")
                    entry["name"] = entry["messages"][0].get("name")
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock, open(self._path, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()


class RequestLogMiddleware:
    """ASGI middleware: log each HTTP request (whole body for POST), then pass it on."""

    def __init__(self, app: ASGIApp, log: UpstreamLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.log.enabled:
            await self.app(scope, receive, send)
            return
        if scope.get("method") != "POST":
            self.log.write(scope, None)
            await self.app(scope, receive, send)
            return

        chunks: list[bytes] = []
        pending: list[Message] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                # Client went away mid-body: log what arrived, let the app see the disconnect.
                pending.append(message)
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        self.log.write(scope, body)

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            if pending:
                return pending.pop(0)
            return await receive()

        await self.app(scope, replay, send)


def parse_args(description: str, default_port: int, resumable: bool = False) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=default_port, help=f"port to bind, 0 = any free port (default: {default_port})"
    )
    parser.add_argument("--port-file", help="write the bound port here once listening (useful with --port 0)")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")
    if resumable:
        parser.add_argument("--resumable", action="store_true",
                            help="keep recent SSE events in memory so clients can resume (Last-Event-ID)")
    return parser.parse_args()


def serve(app: ASGIApp, server_name: str, args: argparse.Namespace) -> None:
    """Bind first (so --port 0 works and the port is known), then hand the socket to uvicorn."""
    log = UpstreamLog(os.environ.get(LOG_ENV) or None, server_name)
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)
    port = sock.getsockname()[1]
    config = uvicorn.Config(RequestLogMiddleware(app, log), log_level=args.log_level, lifespan="on")
    server = uvicorn.Server(config)
    if args.port_file:
        # Written after bind+listen: a reader that sees the port can connect.
        tmp = f"{args.port_file}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{port}\n")
        os.replace(tmp, args.port_file)
    print(f"{server_name}: listening on http://{args.host}:{port}/mcp", file=sys.stderr, flush=True)
    server.run(sockets=[sock])
