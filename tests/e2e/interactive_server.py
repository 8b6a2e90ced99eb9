"""Interactive MCP test server: STATEFUL streamable HTTP, SSE replies, a tool that reports
progress and asks the client for confirmation (elicitation) in the middle of its call.

Run:  .venv/bin/python tests/e2e/interactive_server.py --port 9103
Tools: transfer(amount) — elicits {confirm: bool}, reports progress 1/3, 2/3, 3/3, then
       answers "transferred <amount>" or "transfer of <amount> declined".
       whoami() — "interact".
Prompt: plan(account) — "Plan for <account>". Resource template: interact://accounts/{account}.
Completion (prompt `plan` and the template, argument `account`): the ACCOUNTS starting with the
typed value, so a test sees which server answered and with which reference name.
Set MESHGATE_UPSTREAM_LOG=/path to log every request it receives (examples/servers/upstream.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

from typing import Annotated  # noqa: E402

from mcp.server.elicitation import AcceptedElicitation, ElicitationResult  # noqa: E402
from mcp.server.mcpserver import Context, Elicit, MCPServer, Resolve  # noqa: E402
from mcp.types import Completion, PromptReference, ResourceTemplateReference  # noqa: E402
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


ACCOUNTS = ["acme-eu", "acme-us", "globex"]


@mcp.prompt()
def plan(account: str) -> str:
    """Ask the model for an account plan."""
    return f"Plan for {account}"


@mcp.resource("interact://accounts/{account}", mime_type="text/plain")
def account_record(account: str) -> str:
    """One account, by name."""
    return f"account {account}"


@mcp.completion()
async def complete(ref, argument, context) -> Completion | None:
    """Accounts starting with the typed value, for `plan` and the accounts template only."""
    known = (isinstance(ref, PromptReference) and ref.name == "plan") or (
        isinstance(ref, ResourceTemplateReference) and ref.uri == "interact://accounts/{account}"
    )
    if not known or argument.name != "account":
        return None
    return Completion(values=[a for a in ACCOUNTS if a.startswith(argument.value)])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=9103)
    app = mcp.streamable_http_app(stateless_http=False, json_response=False, host=args.host)
    serve(app, "interact", args)


if __name__ == "__main__":
    main()
