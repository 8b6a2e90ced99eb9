"""Test MCP server for the quota and guardrail scenarios (tests/e2e/test_quotas.py).

Run:  .venv/bin/python tests/e2e/quota_upstream.py --mode json|sse --port 0 --port-file F

Stateless streamable HTTP (official Python SDK) at /mcp; `--mode json` answers with
application/json bodies, `--mode sse` with one SSE stream per call.

Tools:  hit(n) -> "ok n"         a fast call to count
        slow(seconds) -> "done"  holds the call open (in-flight limit)
        big(size) -> "x" * size  an oversized result (response guardrail)
        echo_args(pad) -> len    a call with large arguments (argument guardrail)

Besides MCP, two raw endpoints stand in for Envoy's `ratelimit` filter refusing a call
(Meshgate's filter sees exactly what it would see from that filter's local reply):
  POST /ratelimited        -> 429, x-envoy-ratelimited: true, retry-after: 7,
                              x-meshgate-limit-rule: fleet, a plain-text body
  POST /ratelimited-empty  -> the same with an empty body, x-ratelimit-reset: 5, no retry-after
Every request is logged (headers included) to MESHGATE_UPSTREAM_LOG, as the example servers do.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

from mcp.server.mcpserver import MCPServer  # noqa: E402
from starlette.types import ASGIApp, Receive, Scope, Send  # noqa: E402

from upstream import serve  # noqa: E402

mcp = MCPServer("quota-test", instructions="Counts calls for Meshgate's quota tests.")


@mcp.tool()
def hit(n: int = 0) -> str:
    """A fast call."""
    return f"ok {n}"


@mcp.tool()
async def slow(seconds: float = 30.0) -> str:
    """Hold the call open."""
    await anyio.sleep(max(0.0, min(seconds, 120.0)))
    return "done"


@mcp.tool()
def big(size: int = 5_000_000) -> str:
    """An oversized result."""
    return "x" * max(0, min(size, 50_000_000))


@mcp.tool()
def echo_args(pad: str = "") -> int:
    """Large arguments in, their length out."""
    return len(pad)


class RateLimitedStandIn:
    """Answers /ratelimited* like Envoy's ratelimit filter would; everything else goes to MCP."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if not path.startswith("/ratelimited"):
            await self.app(scope, receive, send)
            return
        while (await receive()).get("more_body"):
            pass
        if path == "/ratelimited-empty":
            headers = [(b"x-envoy-ratelimited", b"true"), (b"x-ratelimit-reset", b"5"), (b"content-length", b"0")]
            body = b""
        else:
            body = b"over the limit"
            headers = [
                (b"x-envoy-ratelimited", b"true"),
                (b"retry-after", b"7"),
                (b"x-meshgate-limit-rule", b"fleet"),
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
            ]
        await send({"type": "http.response.start", "status": 429, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mode", choices=["json", "sse"], required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--port-file")
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args()
    app = mcp.streamable_http_app(stateless_http=True, json_response=args.mode == "json", host=args.host)
    serve(RateLimitedStandIn(app), f"quota-{args.mode}", args)


if __name__ == "__main__":
    main()
