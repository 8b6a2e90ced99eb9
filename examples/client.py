"""Minimal MCP client (official Python SDK) for trying Meshgate by hand.

    .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --api-key demo-reader-key
    .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --api-key demo-admin-key \\
        --call delete_customer --args '{"id": "c-001"}'          # denied by policy (-32003)
    .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/docs \\
        --token "$(.venv/bin/python examples/mint_token.py --sub alice --roles reader)" --mode legacy

Lists the tools the caller may see, then calls one (`--call`, or a harmless
default) and prints the result. `--mode auto` (default) speaks 2026-07-28 when
the server does; `--mode legacy` forces the 2025-11-25 initialize handshake.

Failures are one line on stderr, never a traceback: `error <code>: <message>` for a
JSON-RPC error (the gateway's refusals carry the reason), `error: ...` when the
gateway cannot be reached or answers something else. Exit status: 0 success, 1 the
tool reported an error result, 2 a JSON-RPC error, 3 no usable answer.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

# Harmless calls to make when --call is not given, in order of preference.
DEFAULT_CALLS: dict[str, dict[str, Any]] = {
    "list_customers": {},
    "get_customer": {"id": "c-001"},
    "search_docs": {"query": "envoy"},
}


async def run(args: argparse.Namespace) -> int:
    headers: dict[str, str] = {}
    if args.api_key:
        headers["x-api-key"] = args.api_key
    if args.token:
        headers["authorization"] = f"Bearer {args.token}"
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout) as http:
        async with Client(streamable_http_client(args.url, http_client=http), mode=args.mode) as client:
            print(f"connected: protocol {client.protocol_version}")
            tools = await client.list_tools()
            names = [tool.name for tool in tools.tools]
            print(f"tools visible to this caller ({len(names)}): {', '.join(names) or '-'}")

            tool = args.call or next((name for name in DEFAULT_CALLS if name in names), None)
            if tool is None:
                print("nothing to call (pass --call TOOL --args JSON)")
                return 0
            arguments = json.loads(args.args) if args.args else DEFAULT_CALLS.get(tool, {})

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                print(f"  progress {progress}/{total}: {message}")

            print(f"calling {tool}({json.dumps(arguments)})")
            result = await client.call_tool(tool, arguments, progress_callback=on_progress)
            for block in result.content:
                print(f"  {compact(getattr(block, 'text', block))}")
            return 1 if result.is_error else 0


def compact(text: object) -> str:
    """A JSON text on one line; anything else as it is."""
    try:
        return json.dumps(json.loads(str(text)))
    except ValueError:
        return str(text)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups, which anyio's task groups raise."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


def jsonrpc_error(text: str) -> tuple[int, str] | None:
    """`(code, message)` of a JSON-RPC error in a JSON or SSE body, if there is one."""
    candidates = [text] + [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    for candidate in candidates:
        try:
            error = json.loads(candidate).get("error")
        except (ValueError, AttributeError):
            continue
        if isinstance(error, dict) and isinstance(error.get("code"), int):
            return error["code"], str(error.get("message", ""))
    return None


def describe(exc: BaseException, url: str) -> tuple[str, int]:
    """One line for a failure, and the exit status."""
    found = leaves(exc)
    for leaf in found:
        if isinstance(leaf, MCPError):
            return f"error {leaf.error.code}: {leaf.error.message}", 2
    for leaf in found:
        if isinstance(leaf, httpx2.HTTPStatusError):
            response = leaf.response
            try:
                body = response.text
            except Exception:  # noqa: BLE001 - a streamed body that was never read
                body = ""
            parsed = jsonrpc_error(body)
            if parsed:
                return f"error {parsed[0]}: {parsed[1]} (HTTP {response.status_code})", 2
            return f"error: HTTP {response.status_code} from {url}", 3
    for leaf in found:
        if isinstance(leaf, (httpx2.ConnectError, ConnectionError)):
            return f"error: cannot connect to {url} (is the gateway running? `make run`)", 3
        if isinstance(leaf, httpx2.TimeoutException):
            return f"error: no answer from {url} in time", 3
    leaf = found[0] if found else exc
    return f"error: {type(leaf).__name__}: {leaf}".splitlines()[0], 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:10000/mcp/crm", help="MCP endpoint behind Meshgate")
    parser.add_argument("--api-key", help="send x-api-key (e.g. demo-reader-key)")
    parser.add_argument("--token", help="send Authorization: Bearer TOKEN (see examples/mint_token.py)")
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="protocol negotiation")
    parser.add_argument("--call", help="tool to call (default: a harmless read)")
    parser.add_argument("--args", help="tool arguments as a JSON object")
    args = parser.parse_args()
    # The SDK logs transport failures with tracebacks; the one line below says it all.
    logging.disable(logging.CRITICAL)
    try:
        status = anyio.run(run, args)
    except KeyboardInterrupt:
        status = 130
    except BaseException as exc:  # noqa: BLE001 - every failure becomes one line
        if isinstance(exc, SystemExit):
            raise
        line, status = describe(exc, args.url)
        sys.stdout.flush()
        print(line, file=sys.stderr)
    sys.exit(status)


if __name__ == "__main__":
    main()
