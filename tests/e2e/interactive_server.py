"""Interactive MCP test server: STATEFUL streamable HTTP, SSE replies, a tool that reports
progress and asks the client for confirmation (elicitation) in the middle of its call.

Run:  .venv/bin/python tests/e2e/interactive_server.py --port 9103
Tools: transfer(amount) — progress 1/3, elicits {confirm: bool}, progress 2/3 and 3/3, then
       answers "transferred <amount>" or "transfer of <amount> declined".
       whoami() — "interact".
Set MESHGATE_UPSTREAM_LOG=/path to log every request it receives (examples/servers/upstream.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

mcp = MCPServer("interact", instructions="Asks before it acts.")


class Confirmation(BaseModel):
    confirm: bool


@mcp.tool()
async def transfer(amount: int, ctx: Context) -> str:
    """Transfer an amount after the user confirms it."""
    await ctx.report_progress(1, 3, "checking")
    answer = await ctx.elicit(f"Transfer {amount}?", schema=Confirmation)
    await ctx.report_progress(2, 3, "asked")
    confirmed = answer.action == "accept" and answer.data.confirm
    await ctx.report_progress(3, 3, "done")
    return f"transferred {amount}" if confirmed else f"transfer of {amount} declined"


@mcp.tool()
def whoami() -> str:
    """The server's name."""
    return "interact"


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=9103)
    app = mcp.streamable_http_app(stateless_http=False, json_response=False, host=args.host)
    serve(app, "interact", args)


if __name__ == "__main__":
    main()
