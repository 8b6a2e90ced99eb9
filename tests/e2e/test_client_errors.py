"""Errors clients understand: what the official MCP clients show for the gateway's answers.

Each real client — the Python SDK (2025-11-25 handshake and 2026-07-28), the TypeScript SDK
(Node 20) and the MCP Inspector CLI (Node 22, run as a user runs it) — is driven to

- a **policy denial**: the client must surface the gateway's JSON-RPC error (code -32003,
  its message), not "auth required" (MCP clients start OAuth on 401/403) and not an HTTP
  error around a raw body;
- an **upstream failure** (nothing listening, a reset before the answer, a route timeout,
  an HTML error page): a JSON-RPC error (code -32004) naming the server, never Envoy's
  `503 text/plain` ("Server returned an error response").

Raw-HTTP checks pin the answers themselves (status, id, code) and that 4xx protocol answers
of a live upstream pass untouched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from e2e_support import (
    FORBIDDEN,
    LEGACY_VERSION,
    POLICY_DENIED_STATUS,
    UPSTREAM_UNAVAILABLE,
    Gateway,
    Keys,
    Upstream,
    api_key,
    describe,
    free_port,
    inspector_cli,
    jsonrpc_error,
    legacy_body,
    legacy_session,
    modern_client,
    post,
    running_gateway,
    ts_client_calls,
)
from scripted_upstream import Close, Pause, Reset, ScriptedUpstream, Send, default_handler, head, json_response

pytestmark = [pytest.mark.e2e, pytest.mark.clients]

READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
LEGACY = {"MCP-Protocol-Version": LEGACY_VERSION}
SLOW_TIMEOUT_S = 2
DENIED_TOOL = "delete_customer"
DENIED_MESSAGE = 'tool "crm/delete_customer" is not allowed'
DENIED_RESOURCE = "file:///srv/private/salaries.csv"
TOOL = {"name": "get_report", "inputSchema": {"type": "object", "properties": {}}}


@pytest.fixture(scope="module")
def errors_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    keys: Keys,
    upstreams: dict[str, Upstream],
    scripted: ScriptedUpstream,
    runtime: str,
) -> Iterator[Gateway]:
    """The test registry plus `down` (nothing listens there) and `slow` (the scripted
    upstream behind a 2 s route timeout)."""
    dead = free_port()
    servers = (
        f"  - name: down\n    url: http://127.0.0.1:{dead}/mcp\n    health_check: {{ type: none }}\n"
        f"  - name: slow\n    url: {scripted.url}\n    timeout: {SLOW_TIMEOUT_S}s\n"
    )
    workdir = tmp_path_factory.mktemp("errors-gateway")
    with running_gateway(
        workdir,
        keys,
        upstreams["crm"].url,
        upstreams["docs"].url,
        evil_url=scripted.url,
        extra_servers=servers,
        runtime=runtime,
    ) as gw:
        yield gw


def failing_script(scripted: ScriptedUpstream, failure: str):
    """MCP for everything (one tool, `get_report`), and `failure` for its calls."""

    def handler(req):
        if req.rpc_method == "tools/list":
            return json_response({"jsonrpc": "2.0", "id": req.id, "result": {"tools": [TOOL]}})
        if req.rpc_method != "tools/call":
            return default_handler(req)
        if failure == "reset":
            return [Reset()]
        if failure == "html 502":
            page = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"
            return [Send(head(502, {"content-type": "text/html", "content-length": str(len(page))}) + page), Close()]
        if failure == "hang":
            return [Pause(SLOW_TIMEOUT_S * 3)]
        raise ValueError(failure)

    return scripted.script(handler)


def assert_unavailable(error: dict, server: str, context: str) -> None:
    assert error["code"] == UPSTREAM_UNAVAILABLE, f"{context}: {error}"
    assert f'MCP server "{server}"' in error["message"], f"{context}: {error}"


# --------------------------------------------------------------------------- raw answers


@pytest.mark.parametrize(
    "server,failure,words",
    [
        ("down", None, "is unavailable (HTTP 503)"),
        ("evil", "reset", "is unavailable (HTTP 503)"),
        ("evil", "html 502", "is unavailable (HTTP 502)"),
        ("slow", "hang", "did not answer in time (HTTP 504)"),
    ],
)
def test_upstream_failures_are_json_rpc_errors_for_the_request(errors_gateway, scripted, server, failure, words):
    """Envoy's local reply (unreachable, reset before headers, route timeout) and a live
    upstream's HTML error page: HTTP 200 with a JSON-RPC error carrying the request's id and
    naming the server (what every client shows as the call's error)."""
    headers = dict(LEGACY)
    if failure:
        headers.update(failing_script(scripted, failure).headers)
    r = post(errors_gateway.url(server), legacy_body("tools/call", {"name": "get_report"}, id=77), ADMIN, headers)
    assert r.status_code == 200, describe(r)
    assert r.headers["content-type"].startswith("application/json"), describe(r)
    body = jsonrpc_error(r)
    assert body["id"] == 77, describe(r)
    assert body["error"]["message"] == f'the MCP server "{server}" {words}; retry later', describe(r)
    assert_unavailable(body["error"], server, describe(r))


def test_notifications_keep_the_failure_status(errors_gateway):
    """No id to answer: the 5xx stays (clients ignore errors for notifications), with a
    JSON-RPC body instead of text."""
    r = post(errors_gateway.url("down"), legacy_body("notifications/initialized", id=None), ADMIN, LEGACY)
    assert r.status_code == 503, describe(r)
    body = jsonrpc_error(r)
    assert body["id"] is None
    assert_unavailable(body["error"], "down", describe(r))


def test_upstream_protocol_answers_pass(errors_gateway, scripted):
    """4xx answers are the upstream's own (404 ends a session): untouched; so is a JSON 5xx."""
    answers = {
        "404 text": [Send(head(404, {"content-type": "text/plain", "content-length": "9"}) + b"Not Found")],
        "500 json": json_response({"jsonrpc": "2.0", "id": 5, "error": {"code": -32603, "message": "boom"}}, status=500),
    }
    for name, actions in answers.items():
        script = scripted.script(actions)
        r = post(errors_gateway.url("evil"), legacy_body("ping", id=5), READER, {**LEGACY, **script.headers})
        expected = 404 if name.startswith("404") else 500
        assert r.status_code == expected, f"{name}: {describe(r)}"
        if expected == 404:
            assert r.text == "Not Found", describe(r)
        else:
            assert jsonrpc_error(r)["error"]["message"] == "boom", describe(r)


def test_policy_denial_status(errors_gateway):
    r = post(errors_gateway.url("crm"), legacy_body("tools/call", {"name": DENIED_TOOL, "arguments": {}}, id=3), READER, LEGACY)
    assert r.status_code == POLICY_DENIED_STATUS, describe(r)
    body = jsonrpc_error(r)
    assert (body["id"], body["error"]["code"]) == (3, FORBIDDEN), describe(r)
    assert "www-authenticate" not in r.headers, "a denial is not an authentication challenge"


# --------------------------------------------------------------------------- Python SDK


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_python_sdk_shows_the_gateways_errors(errors_gateway, scripted, era):
    from mcp.shared.exceptions import MCPError

    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(errors_gateway.url("crm"), READER) as client:
        with pytest.raises(MCPError) as denied:
            await client.call_tool(DENIED_TOOL, {"id": "c-001"})
    assert denied.value.error.code == FORBIDDEN, denied.value.error
    assert DENIED_MESSAGE in denied.value.error.message, denied.value.error

    script = failing_script(scripted, "reset")
    async with connect(errors_gateway.url("evil"), {**ADMIN, **script.headers}) as client:
        with pytest.raises(MCPError) as failed:
            await client.call_tool("get_report", {})
    assert_unavailable(failed.value.error.model_dump(), "evil", str(failed.value.error))

    with pytest.raises(Exception) as down:  # noqa: PT011 - the connect itself fails
        async with connect(errors_gateway.url("down"), ADMIN):
            pass
    assert 'MCP server "down" is unavailable' in repr(down.value) + str(getattr(down.value, "exceptions", "")), repr(down.value)


# --------------------------------------------------------------------------- TypeScript SDK


def test_typescript_sdk_shows_the_gateways_errors(errors_gateway, scripted):
    [denied] = ts_client_calls(errors_gateway.url("crm"), READER, [(DENIED_TOOL, {"id": "c-001"})])
    assert not denied["ok"], denied
    assert denied["error"]["name"] == "McpError", denied
    assert denied["error"]["code"] == FORBIDDEN, denied
    assert DENIED_MESSAGE in denied["error"]["message"], denied

    script = failing_script(scripted, "reset")
    [failed] = ts_client_calls(errors_gateway.url("evil"), {**ADMIN, **script.headers}, [("get_report", {})])
    assert (failed["ok"], failed["error"]["name"]) == (False, "McpError"), failed
    assert_unavailable(failed["error"], "evil", json.dumps(failed))

    [down] = ts_client_calls(errors_gateway.url("down"), ADMIN, [("get_report", {})])
    assert (down["stage"], down["error"]["name"]) == ("connect", "McpError"), down
    assert_unavailable(down["error"], "down", json.dumps(down))


# --------------------------------------------------------------------------- Inspector CLI


def test_inspector_cli_shows_the_gateways_errors(errors_gateway, scripted, tmp_path):
    """Run as a user runs it (no --stored-auth-only): a denial must not send it into OAuth.
    It lists tools before a call and refuses unlisted ones itself, so the denial here is a
    `resources/read` (the same policy refusal)."""
    code, out = inspector_cli(
        errors_gateway.url("evil"), READER, ["--method", "resources/read", "--uri", DENIED_RESOURCE], tmp_path
    )
    assert isinstance(out, dict) and "error" in out, out
    assert out["error"]["code"] != "auth_required", out
    assert f'resource "evil/{DENIED_RESOURCE}" is not allowed' in out["error"]["message"], out
    assert "status" not in out["error"], f"shown as an HTTP error: {out}"
    assert code != 0

    script = failing_script(scripted, "reset")
    creds = {**ADMIN, **script.headers}
    code, out = inspector_cli(errors_gateway.url("evil"), creds, ["--method", "tools/call", "--tool-name", "get_report"], tmp_path)
    assert isinstance(out, dict) and "error" in out, out
    assert 'MCP server "evil" is unavailable' in out["error"]["message"], out
    assert "status" not in out["error"], f"shown as an HTTP error: {out}"

    code, out = inspector_cli(errors_gateway.url("down"), ADMIN, ["--method", "tools/list"], tmp_path)
    assert isinstance(out, dict) and "error" in out, out
    assert out["error"]["code"] != "auth_required", out
    assert 'MCP server "down" is unavailable' in out["error"]["message"], out
