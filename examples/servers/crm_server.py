"""Example CRM MCP server: STATEFUL streamable HTTP (Mcp-Session-Id), SSE replies.

Run:  .venv/bin/python examples/servers/crm_server.py --port 9101
Endpoint: http://127.0.0.1:9101/mcp

Tools:     get_customer(id), list_customers(), update_customer(id, ...),
           delete_customer(id), slow_report(steps, delay) (streams progress)
Resources: crm://stats (static), crm://customers/{id} (template)
Prompts:   summarize_customer(id)

Data is in memory and reset on restart. Set MESHGATE_UPSTREAM_LOG=/path to log
every request this server receives (see upstream.py).
"""

from __future__ import annotations

import sys
import uuid
from collections import deque
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mcp.server.mcpserver import Context, MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore  # noqa: E402
from mcp.types import JSONRPCMessage  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

SEED = {
    "c-001": {"id": "c-001", "name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"},
    "c-002": {"id": "c-002", "name": "Grace Hopper", "email": "grace@example.com", "tier": "silver"},
    "c-003": {"id": "c-003", "name": "Alan Turing", "email": "alan@example.com", "tier": "bronze"},
}

customers: dict[str, dict[str, str]] = {key: dict(value) for key, value in SEED.items()}

mcp = MCPServer("crm", instructions="Demo CRM behind Meshgate. Customer ids look like c-001.")


def _customer(customer_id: str) -> dict[str, str]:
    try:
        return customers[customer_id]
    except KeyError:
        raise ToolError(f"no customer with id {customer_id!r}") from None


@mcp.tool()
def get_customer(id: str) -> dict[str, str]:
    """Get one customer by id (e.g. c-001)."""
    return _customer(id)


@mcp.tool()
def list_customers() -> list[dict[str, str]]:
    """List all customers."""
    return list(customers.values())


@mcp.tool()
def update_customer(id: str, name: str | None = None, email: str | None = None, tier: str | None = None) -> dict[str, str]:
    """Update fields of an existing customer; omitted fields are left unchanged."""
    customer = _customer(id)
    for field, value in (("name", name), ("email", email), ("tier", tier)):
        if value is not None:
            customer[field] = value
    return customer


@mcp.tool()
def delete_customer(id: str) -> str:
    """Delete a customer. Destructive: policy should keep this away from most callers."""
    _customer(id)
    del customers[id]
    return f"deleted {id}"


@mcp.tool()
async def slow_report(steps: int = 5, delay: float = 0.5, ctx: Context | None = None) -> str:
    """Build a report slowly, reporting progress after each step (streams over SSE)."""
    steps = max(1, min(steps, 100))
    delay = max(0.0, min(delay, 10.0))
    for step in range(1, steps + 1):
        await anyio.sleep(delay)
        if ctx is not None:
            await ctx.report_progress(step, steps, f"step {step}/{steps}")
    return f"report ready: {len(customers)} customers, {steps} steps"


@mcp.resource("crm://stats", mime_type="application/json")
def stats() -> dict[str, int]:
    """Customer counts."""
    tiers: dict[str, int] = {}
    for customer in customers.values():
        tiers[customer["tier"]] = tiers.get(customer["tier"], 0) + 1
    return {"customers": len(customers), **tiers}


@mcp.resource("crm://customers/{id}", mime_type="application/json")
def customer_record(id: str) -> dict[str, str]:
    """One customer record."""
    return _customer(id)


@mcp.prompt()
def summarize_customer(id: str) -> str:
    """Ask the model to summarize a customer."""
    customer = customers.get(id, {"id": id, "name": "unknown"})
    return f"Summarize this customer for an account review: {customer}"


class MemoryEventStore(EventStore):
    """Resumability (`--resumable`): the last `per_stream` events of each SSE stream, so a
    client can reconnect with `Last-Event-ID`. With a store the SDK primes every stream with
    an event that has an id and empty data."""

    def __init__(self, per_stream: int = 256) -> None:
        self.per_stream = per_stream
        self.streams: dict[str, deque[tuple[str, JSONRPCMessage | None]]] = {}
        self.stream_of: dict[str, str] = {}

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        events = self.streams.setdefault(stream_id, deque())
        if len(events) == self.per_stream:
            self.stream_of.pop(events.popleft()[0], None)
        event_id = uuid.uuid4().hex
        events.append((event_id, message))
        self.stream_of[event_id] = stream_id
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream_id = self.stream_of.get(last_event_id)
        if stream_id is None:
            return None
        after = False
        for event_id, message in list(self.streams.get(stream_id, ())):
            if after and message is not None:
                await send_callback(EventMessage(message, event_id))
            after = after or event_id == last_event_id
        return stream_id


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=9101, resumable=True)
    # Stateful (session ids) with the SDK's default SSE replies.
    app = mcp.streamable_http_app(
        stateless_http=False,
        json_response=False,
        host=args.host,
        event_store=MemoryEventStore() if args.resumable else None,
    )
    serve(app, "crm", args)


if __name__ == "__main__":
    main()
