"""A real 2026-07-28 MCP upstream (Python SDK `MCPServer`, stateless JSON) with a tool whose
argument is mirrored into an HTTP header: `pay_invoice(card, amount)` marks `card` with
`x-mcp-header: Card`, so a modern client sends it again as `Mcp-Param-Card`, and this
server refuses a call whose header and body disagree (400, -32020), as the spec requires.

Every request is logged (MESHGATE_UPSTREAM_LOG, see examples/servers/upstream.py), headers
included, and each executed call returns the card it was given, so a test can see what the
tool really received.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

from mcp.server.mcpserver import MCPServer  # noqa: E402
from pydantic import Field  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

mcp = MCPServer("param-e2e")


@mcp.tool()
def pay_invoice(card: Annotated[str, Field(json_schema_extra={"x-mcp-header": "Card"})], amount: int = 0) -> str:
    """Pay an invoice with a card (the card is mirrored into the Mcp-Param-Card header)."""
    return f"charged {amount} to {card}"


@mcp.tool()
def get_x() -> str:
    """Nothing mirrored."""
    return "x"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=0)
    app = mcp.streamable_http_app(stateless_http=True, json_response=True, host=args.host)
    serve(app, "param", args)


if __name__ == "__main__":
    main()
