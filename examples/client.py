"""Minimal MCP client (official Python SDK) for trying Meshgate by hand.

    .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --api-key demo-reader-key
    .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --api-key demo-admin-key \\
        --call delete_customer --args '{"id": "c-001"}'          # denied by policy (-32003)
    .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/docs \\
        --token "$(.venv/bin/python examples/mint_token.py --sub alice --roles reader)" --mode legacy

Lists the tools the caller may see, then calls one (`--call`, or a harmless
default) and prints the result. `--mode auto` (default) speaks 2026-07-28 when
the server does; `--mode legacy` forces the 2025-11-25 initialize handshake.
"""

from __future__ import annotations

import argparse
import json
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
            try:
                result = await client.call_tool(tool, arguments, progress_callback=on_progress)
            except MCPError as exc:
                print(f"error {exc.error.code}: {exc.error.message}")
                return 2
            for block in result.content:
                print(f"  {getattr(block, 'text', block)}")
            return 1 if result.is_error else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:10000/mcp/crm", help="MCP endpoint behind Meshgate")
    parser.add_argument("--api-key", help="send x-api-key (e.g. demo-reader-key)")
    parser.add_argument("--token", help="send Authorization: Bearer TOKEN (see examples/mint_token.py)")
    parser.add_argument("--mode", default="auto", choices=["auto", "legacy"], help="protocol negotiation")
    parser.add_argument("--call", help="tool to call (default: a harmless read)")
    parser.add_argument("--args", help="tool arguments as a JSON object")
    args = parser.parse_args()
    sys.exit(anyio.run(run, args))


if __name__ == "__main__":
    main()
