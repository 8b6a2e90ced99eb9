"""A real 2026-07-28 MCP upstream (Python SDK low-level `Server`, stateless JSON) that pages its
lists: `--tools N` tools `<prefix>NN`, as many resources `paged://<prefix>/items/NN` and one
template `paged://<prefix>/items/{n}`, `--page-size K` per page (the cursor is the next
offset); `--ttl-ms`/`--scope` are the lists' cache hints. Tools answer their own name, resources their URI, so a test sees what was reached.
Every request is logged (MESHGATE_UPSTREAM_LOG, see examples/servers/upstream.py): a test
counts how many list requests reached it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

from mcp import types  # noqa: E402
from mcp.server.caching import CacheHint  # noqa: E402
from mcp.server.lowlevel import Server  # noqa: E402
from mcp.shared.exceptions import MCPError  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

own = argparse.ArgumentParser(add_help=False)
own.add_argument("--prefix", default="p")
own.add_argument("--tools", type=int, default=5)
own.add_argument("--page-size", type=int, default=2)
own.add_argument("--ttl-ms", type=int, default=0, help="ttlMs of every list answer")
own.add_argument("--scope", default="private", choices=["private", "public"], help="cacheScope of every list answer")
OWN, rest = own.parse_known_args()
sys.argv = [sys.argv[0], *rest]

TOOLS = [f"{OWN.prefix}{i:02d}" for i in range(OWN.tools)]
URIS = [f"paged://{OWN.prefix}/items/{i:02d}" for i in range(OWN.tools)]


def page(items: list[Any], params: types.PaginatedRequestParams | None) -> tuple[list[Any], str | None]:
    cursor = params.cursor if params else None
    try:
        start = int(cursor) if cursor is not None else 0
    except ValueError:
        raise MCPError(code=-32602, message=f"invalid cursor {cursor!r}") from None
    if not 0 <= start <= len(items):
        raise MCPError(code=-32602, message=f"invalid cursor {cursor!r}")
    end = start + OWN.page_size
    return items[start:end], (str(end) if end < len(items) else None)


async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    names, next_cursor = page(TOOLS, params)
    tools = [types.Tool(name=n, description=f"tool {n}", input_schema={"type": "object"}) for n in names]
    return types.ListToolsResult(tools=tools, next_cursor=next_cursor)


async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
    if params.name not in TOOLS:
        raise MCPError(code=-32602, message=f"unknown tool {params.name}")
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"called {params.name}")])


async def list_resources(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
    uris, next_cursor = page(URIS, params)
    resources = [types.Resource(name=u.rsplit("/", 1)[1], uri=u, mime_type="text/plain") for u in uris]
    return types.ListResourcesResult(resources=resources, next_cursor=next_cursor)


async def list_templates(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListResourceTemplatesResult:
    template = types.ResourceTemplate(name="item", uri_template=f"paged://{OWN.prefix}/items/{{n}}")
    return types.ListResourceTemplatesResult(resource_templates=[template])


async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
    uri = str(params.uri)
    if not uri.startswith(f"paged://{OWN.prefix}/items/"):
        raise MCPError(code=-32602, message=f"unknown resource {uri}")
    return types.ReadResourceResult(contents=[types.TextResourceContents(uri=uri, mime_type="text/plain", text=f"read {uri}")])


server = Server(
    f"paged-{OWN.prefix}",
    on_list_tools=list_tools,
    on_call_tool=call_tool,
    on_list_resources=list_resources,
    on_list_resource_templates=list_templates,
    on_read_resource=read_resource,
    cache_hints={
        method: CacheHint(ttl_ms=OWN.ttl_ms, scope=OWN.scope)
        for method in ("tools/list", "resources/list", "resources/templates/list")
    },
)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=0)
    app = server.streamable_http_app(stateless_http=True, json_response=True, host=args.host)
    serve(app, f"paged-{OWN.prefix}", args)


if __name__ == "__main__":
    main()
