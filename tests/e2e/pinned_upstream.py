"""A Python SDK (mcp==2.3.0) MCP server whose tool definitions change while it runs.

The tools are read from the JSON file named by `PINNED_TOOLS_FILE` on every `tools/list`
and `tools/call` (`{"tools": [<Tool definition as the protocol spells it>, ...]}`), so a
test edits a description, widens a schema, renames a tool or plants invisible Unicode by
rewriting the file. A call answers `called <name>`. Stateful streamable HTTP with SSE
replies (the SDK default); every request is logged like the example servers' (upstream.py).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "servers"))

import mcp_types as types  # noqa: E402
from mcp.server.lowlevel.server import Server  # noqa: E402

from upstream import parse_args, serve  # noqa: E402

TOOLS_FILE = Path(os.environ["PINNED_TOOLS_FILE"])


def definitions() -> list[dict]:
    return json.loads(TOOLS_FILE.read_text(encoding="utf-8"))["tools"]


async def list_tools(ctx, params) -> types.ListToolsResult:  # noqa: ANN001
    return types.ListToolsResult(tools=[types.Tool.model_validate(t) for t in definitions()])


async def call_tool(ctx, params: types.CallToolRequestParams) -> types.CallToolResult:  # noqa: ANN001
    if not any(t["name"] == params.name for t in definitions()):
        return types.CallToolResult(content=[types.TextContent(type="text", text=f"no tool {params.name}")], is_error=True)
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"called {params.name}")])


def main() -> None:
    args = parse_args(__doc__.splitlines()[0], default_port=9105)
    server = Server("pinned", on_list_tools=list_tools, on_call_tool=call_tool)
    app = server.streamable_http_app(stateless_http=False, json_response=False, host=args.host)
    serve(app, os.environ.get("PINNED_NAME", "pinned"), args)


if __name__ == "__main__":
    main()
