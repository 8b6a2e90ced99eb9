"""A malicious (or merely quirky) MCP upstream whose answers are scripted per test, byte by byte.

The example servers are well-behaved SDK servers; a gateway must also hold against an
upstream that answers with a BOM, a declared charset, an id of another type, CR-only line
endings, a million tiny events, split writes, a reset mid-answer... This server speaks raw
HTTP/1.1 on a socket it owns, so a test decides every byte that Envoy (and behind it the
client) receives.

How a test uses it (the `scripted` and `hostile_gateway` fixtures in conftest.py):

    script = scripted.script(lambda req: json_response({"jsonrpc": "2.0", "id": req.id, "result": {...}}))
    r = post(hostile_gateway.url("evil"), body, creds, headers=script.headers)
    assert ...; assert script.requests == [...]   # what reached the upstream

Each script has an id; a request picks its script with the `x-e2e-script` header (the
gateway forwards it untouched). Requests without the header, or naming an unknown id, get
the default MCP handler (initialize, server/discover, notifications → 202, an empty
`tools/list`), so SDK clients can connect before the scripted part. A script is a callable
`(Request) -> Iterable[Action]`: bytes to send, pauses, a close or a reset. Every request
(whichever script answered it) is recorded in `ScriptedUpstream.requests` and in the
script's own `requests`, so a test can prove what was (not) forwarded.

Runs in a thread of the pytest process (its own asyncio loop); one per session.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SCRIPT_HEADER = "x-e2e-script"

# --------------------------------------------------------------------------- actions


@dataclass(frozen=True)
class Send:
    """Write these bytes (one `write` + drain: a separate TCP segment when followed by a pause)."""

    data: bytes


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Close:
    """Close the connection gracefully (FIN)."""


@dataclass(frozen=True)
class Reset:
    """Abort the connection (RST: SO_LINGER 0)."""


Action = Send | Pause | Close | Reset


# --------------------------------------------------------------------------- requests


@dataclass
class Request:
    """One HTTP request as the upstream received it."""

    method: str
    path: str
    headers: dict[str, str]  # lowercase names; repeated headers joined with ", "
    body: bytes
    received_at: float = field(default_factory=time.time)

    @property
    def message(self) -> Any:
        """The JSON body, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def id(self) -> Any:
        message = self.message
        return message.get("id") if isinstance(message, dict) else None

    @property
    def rpc_method(self) -> str | None:
        message = self.message
        return message.get("method") if isinstance(message, dict) else None

    @property
    def params(self) -> dict[str, Any]:
        message = self.message
        params = message.get("params") if isinstance(message, dict) else None
        return params if isinstance(params, dict) else {}


Handler = Callable[[Request], Iterable[Action]]

# --------------------------------------------------------------------------- response builders

REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
           503: "Service Unavailable"}


def head(status: int = 200, headers: Mapping[str, str] | None = None, *, close: bool = True) -> bytes:
    """A status line and headers, verbatim (a test sets `content-length` or
    `transfer-encoding` itself, or leaves both out: then the body ends with the connection)."""
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if close:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def json_response(message: Any, status: int = 200, content_type: str = "application/json",
                  headers: Mapping[str, str] | None = None, raw: bytes | None = None) -> list[Action]:
    """A complete JSON answer with a content-length. `raw` sends those bytes instead of `message`."""
    body = raw if raw is not None else json.dumps(message, separators=(",", ":")).encode()
    hdrs = {"content-type": content_type, "content-length": str(len(body)), **(headers or {})}
    return [Send(head(status, hdrs) + body), Close()]


def sse_event(data: str | bytes | Any, *, event: str | None = "message", id: str | None = None,
              eol: bytes = b"\n") -> bytes:
    """One SSE event. `data` that is not str/bytes is JSON-encoded; multi-line data becomes
    several `data:` lines; `eol` is the line ending used throughout (b"\\n", b"\\r\\n" or b"\\r")."""
    if not isinstance(data, (str, bytes)):
        data = json.dumps(data, separators=(",", ":"))
    if isinstance(data, str):
        data = data.encode()
    out = b""
    if event is not None:
        out += b"event: " + event.encode() + eol
    if id is not None:
        out += b"id: " + id.encode() + eol
    for line in data.split(b"\n"):
        out += b"data: " + line + eol
    return out + eol


def sse_response(*chunks: bytes, content_type: str = "text/event-stream", status: int = 200,
                 headers: Mapping[str, str] | None = None, pause: float = 0.0, chunked: bool = True,
                 end: bool = True) -> list[Action]:
    """An SSE answer written as `chunks` (each a separate write, `pause` seconds apart).
    `chunked` frames the body with chunked transfer-encoding (Envoy then sees the writes as
    they come); otherwise the body ends with the connection. `end=False` leaves the stream
    open (the connection is held until the test's gateway gives up)."""
    hdrs = {"content-type": content_type, "cache-control": "no-cache", **(headers or {})}
    if chunked:
        hdrs["transfer-encoding"] = "chunked"
    actions: list[Action] = [Send(head(status, hdrs))]
    for i, chunk in enumerate(chunks):
        if i and pause:
            actions.append(Pause(pause))
        if not chunk:
            continue
        actions.append(Send(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk))
    if not end:
        actions.append(Pause(3600))
        return actions
    if chunked:
        actions.append(Send(b"0\r\n\r\n"))
    actions.append(Close())
    return actions


def accepted() -> list[Action]:
    return [Send(head(202, {"content-length": "0"})), Close()]


def default_handler(req: Request) -> list[Action]:
    """Just enough MCP for an SDK client to connect in either protocol era."""
    method, rid = req.rpc_method, req.id
    if req.method != "POST":
        return [Send(head(405, {"allow": "POST", "content-length": "0"})), Close()]
    if method is None or rid is None:
        return accepted()
    if method == "initialize":
        result = {"protocolVersion": req.params.get("protocolVersion", "2025-11-25"),
                  "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
                  "serverInfo": {"name": "scripted", "version": "0"}}
    elif method == "server/discover":
        result = {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}, "resources": {}, "prompts": {}},
                  "serverInfo": {"name": "scripted", "version": "0"}}
    elif method in ("tools/list", "prompts/list", "resources/list", "resources/templates/list"):
        key = {"tools/list": "tools", "prompts/list": "prompts", "resources/list": "resources",
               "resources/templates/list": "resourceTemplates"}[method]
        result = {key: []}
    else:
        result = {}
    return json_response({"jsonrpc": "2.0", "id": rid, "result": result})


# --------------------------------------------------------------------------- scripts


@dataclass
class Script:
    id: str
    handler: Handler
    requests: list[Request] = field(default_factory=list)

    @property
    def headers(self) -> dict[str, str]:
        """The request header that selects this script."""
        return {SCRIPT_HEADER: self.id}


class ScriptedUpstream:
    """The server. `url` is what a registry names; `script()` registers an answer."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._scripts: dict[str, Script] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, name="scripted-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("scripted upstream did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def script(self, handler: Handler | Iterable[Action]) -> Script:
        """Registers `handler` (or a fixed list of actions, for every request) under a new id."""
        fn: Handler = handler if callable(handler) else (lambda _req, actions=list(handler): actions)
        script = Script(f"s{next(self._ids)}", fn)
        with self._lock:
            self._scripts[script.id] = script
        return script

    def stop(self) -> None:
        def _close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(_close)
        self._thread.join(5)

    # -- internals

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 22)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                req = await _read_request(reader)
                if req is None:
                    return
                with self._lock:
                    self.requests.append(req)
                    script = self._scripts.get(req.headers.get(SCRIPT_HEADER, ""))
                    if script is not None:
                        script.requests.append(req)
                handler = script.handler if script is not None else default_handler
                try:
                    actions = list(handler(req))
                except Exception as exc:  # a broken test script answers 500, visibly
                    body = f"scripted upstream: script failed: {exc!r}".encode()
                    actions = [Send(head(500, {"content-type": "text/plain", "content-length": str(len(body))}) + body),
                               Close()]
                ended = await _play(actions, writer)
                if ended:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _play(actions: Iterable[Action], writer: asyncio.StreamWriter) -> bool:
    """Plays a script; True when the connection is finished (closed or reset)."""
    for action in actions:
        if isinstance(action, Send):
            writer.write(action.data)
            await writer.drain()
        elif isinstance(action, Pause):
            await asyncio.sleep(action.seconds)
        elif isinstance(action, Close):
            writer.close()
            return True
        elif isinstance(action, Reset):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return True
    return False


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """One HTTP/1.1 request (content-length or chunked body); None at a clean end of the connection."""
    try:
        raw_head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise
        return None
    lines = raw_head.decode("latin-1").split("\r\n")
    method, path, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                # Trailers, then the blank line.
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            body += await reader.readexactly(size)
            await reader.readexactly(2)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    return Request(method, path, headers, body)


@contextlib.contextmanager
def scripted_upstream() -> Iterator[ScriptedUpstream]:
    upstream = ScriptedUpstream()
    try:
        yield upstream
    finally:
        upstream.stop()
