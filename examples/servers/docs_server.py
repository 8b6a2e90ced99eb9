"""Example docs MCP server: STATELESS streamable HTTP, plain JSON replies.

Run:  .venv/bin/python examples/servers/docs_server.py --port 9102
Endpoint: http://127.0.0.1:9102/mcp

Tools:     search_docs(query), get_doc(id), admin_reindex()
Resources: docs://index (static), docs://pages/{id} (template)

No sessions, and `json_response=True`: every reply is one application/json
body, so a gateway's response filtering is exercised on JSON here and on SSE
by the CRM server. Set MESHGATE_UPSTREAM_LOG=/path to log every request.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mcp.server.mcpserver import MCPServer  # noqa: E402
from mcp.server.mcpserver.exceptions import ToolError  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

DOCS = {
    "getting-started": "Run `make run`, then point an MCP client at http://127.0.0.1:10000/mcp/crm.",
    "policy": "Roles allow and deny tool names like crm/get_*; deny wins; anything not allowed is denied.",
    "envoy": "Meshgate runs as a proxy-wasm filter inside Envoy, in front of every registered MCP server.",
    # Personal data on purpose: the redaction examples and tests mask it at the gateway.
    "support": "Write to support@meshgate.example or call +44 20 7946 0958 (order ORD-2024-000123).",
}

reindex_count = 0

mcp = MCPServer("docs", instructions="Demo documentation search behind Meshgate.")


@mcp.tool()
def search_docs(query: str) -> list[str]:
    """Return the ids of documents whose id or text contains the query (case-insensitive)."""
    needle = query.lower()
    return [doc_id for doc_id, text in DOCS.items() if needle in doc_id or needle in text.lower()]


@mcp.tool()
def get_doc(id: str) -> str:
    """Return one document's text."""
    try:
        return DOCS[id]
    except KeyError:
        raise ToolError(f"no document with id {id!r}") from None


@mcp.tool()
def admin_reindex() -> str:
    """Rebuild the search index (administrative)."""
    global reindex_count
    reindex_count += 1
    return f"reindexed {len(DOCS)} documents (run {reindex_count})"


@mcp.resource("docs://index", mime_type="application/json")
def index() -> list[str]:
    """All document ids."""
    return sorted(DOCS)


@mcp.resource("docs://pages/{id}", mime_type="text/plain")
def page(id: str) -> str:
    """One document as a resource."""
    return DOCS.get(id, "")


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=9102)
    app = mcp.streamable_http_app(stateless_http=True, json_response=True, host=args.host)
    serve(app, "docs", args)


if __name__ == "__main__":
    main()
