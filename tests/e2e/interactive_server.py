"""Interactive MCP test server: STATEFUL streamable HTTP, SSE replies, a tool that reports
progress and asks the client for confirmation (elicitation) in the middle of its call.

Run:  .venv/bin/python tests/e2e/interactive_server.py --port 9103
Tools: transfer(amount) — elicits {confirm: bool}, reports progress 1/3, 2/3, 3/3, then
       answers "transferred <amount>" or "transfer of <amount> declined".
       whoami() — "interact".
Set MESHGATE_UPSTREAM_LOG=/path to log every request it receives (examples/servers/upstream.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

from typing import Annotated  # noqa: E402

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult  # noqa: E402
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve  # noqa: E402
from pydantic import BaseModel  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

mcp = MCPServer("interact", instructions="Asks before it acts.")


class Confirmation(BaseModel):
    confirm: bool


def ask(amount: int) -> Elicit[Confirmation]:
    """The confirmation question: asked mid-call (2025-11-25) or through `input_required`
    and the client's retry (2026-07-28), as the SDK's resolvers do in each era."""
    return Elicit(f"Transfer {amount}?", Confirmation)


@mcp.tool()
async def transfer(
    amount: int, answer: Annotated[ElicitationResult[Confirmation], Resolve(ask)], ctx: Context
) -> str:
    """Transfer an amount after the user confirms it."""
    confirmed = isinstance(answer, AcceptedElicitation) and answer.data.confirm
    for step, what in ((1, "checking"), (2, "moving"), (3, "done")):
        await ctx.report_progress(step, 3, what)
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
