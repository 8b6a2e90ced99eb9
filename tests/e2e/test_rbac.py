"""Policy enforcement: denied calls never reach the upstream; list results are filtered per role.

Policy under test (tests/e2e/e2e_support.py registry_yaml):
  reader:        allow crm/get_*, crm/list_*, docs/search_*, docs/get_*
  admin:         allow *, deny crm/delete_*; resources crm/*; prompts crm/*
  gdpr-officer:  allow crm/get_*, crm/delete_customer
"""

from __future__ import annotations

import pytest
from mcp.shared.exceptions import MCPError

from e2e_support import (
    POLICY_DENIED_STATUS,
    FORBIDDEN,
    VISIBLE_TOOLS,
    api_key,
    bearer,
    describe,
    jsonrpc_error,
    legacy_body,
    legacy_handshake,
    legacy_headers,
    legacy_session,
    marker,
    modern_body,
    modern_client,
    modern_headers,
    post,
    response_messages,
)

pytestmark = [pytest.mark.e2e, pytest.mark.rbac]


def assert_forbidden(response, request_id, needle: str) -> None:
    assert response.status_code == POLICY_DENIED_STATUS, f"expected {POLICY_DENIED_STATUS}, got {describe(response)}"
    body = jsonrpc_error(response)
    assert body["error"]["code"] == FORBIDDEN, describe(response)
    assert body.get("id") == request_id and type(body.get("id")) is type(request_id), (
        f"error must echo the request id {request_id!r}: {describe(response)}"
    )
    assert needle in body["error"]["message"], f"message should name {needle!r}: {describe(response)}"


# --------------------------------------------------------------------------- denied calls, SDK clients


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
@pytest.mark.parametrize(
    "who",
    [
        pytest.param(("e2e-reader-key", "reader"), id="reader-not-allowed"),
        pytest.param(("e2e-admin-key", "admin"), id="admin-explicit-deny"),
        pytest.param(("e2e-admin-gdpr-key", "admin+gdpr"), id="deny-wins-over-allow"),
    ],
)
async def test_denied_delete_via_sdk(era, who, gateway, crm):
    key, _ = who
    victim = marker()  # unique argument: if it ever shows up upstream, the call was forwarded
    mark = crm.log.mark()
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(gateway.url("crm"), api_key(key)) as client:
        with pytest.raises(MCPError) as excinfo:
            await client.call_tool("delete_customer", {"id": victim})
        # The session survives a denial: an allowed call still works afterwards.
        after = await client.call_tool("get_customer", {"id": "c-001"})
        assert not after.is_error
    assert excinfo.value.error.code == FORBIDDEN, f"got {excinfo.value.error!r}"
    assert "delete_customer" in excinfo.value.error.message, excinfo.value.error.message
    assert not crm.log.containing(victim), f"denied call reached upstream: {crm.log.containing(victim)}"
    assert not crm.log.calls(mark, "tools/call", "delete_customer")


@pytest.mark.anyio
async def test_gdpr_officer_may_delete(gateway, crm):
    """Control for the deny tests: the one role allowed to delete can, so denials are policy, not breakage."""
    mark = crm.log.mark()
    async with modern_client(gateway.url("crm"), api_key("e2e-gdpr-key")) as client:
        result = await client.call_tool("delete_customer", {"id": "c-does-not-exist"})
    # The upstream answers with a tool error (no such customer) - the point is that it was asked.
    assert result.is_error
    assert len(crm.log.calls(mark, "tools/call", "delete_customer")) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_reader_denied_docs_admin_tool(era, gateway, docs, keys):
    """Default deny on the stateless JSON server, with an HS256 token."""
    mark = docs.log.mark()
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(gateway.url("docs"), bearer(keys.token("carol", ["reader"], alg="HS256"))) as client:
        with pytest.raises(MCPError) as excinfo:
            await client.call_tool("admin_reindex", {})
    assert excinfo.value.error.code == FORBIDDEN
    assert "admin_reindex" in excinfo.value.error.message
    assert not docs.log.calls(mark, "tools/call", "admin_reindex")


# --------------------------------------------------------------------------- denied calls, raw HTTP


@pytest.mark.parametrize("request_id", [4242, "req-denied-1"])
def test_denied_raw_modern_echoes_id(request_id, gateway, crm):
    victim = marker()
    response = post(
        gateway.url("crm"),
        modern_body("tools/call", {"name": "delete_customer", "arguments": {"id": victim}}, id=request_id),
        api_key("e2e-reader-key"),
        modern_headers("tools/call", "delete_customer"),
    )
    assert_forbidden(response, request_id, "delete_customer")
    assert not crm.log.containing(victim)


def test_denied_raw_legacy_without_session(gateway, crm):
    """Denial happens at the gateway, before the upstream could even complain about the missing session."""
    victim = marker()
    response = post(
        gateway.url("crm"),
        legacy_body("tools/call", {"name": "delete_customer", "arguments": {"id": victim}}, id=77),
        api_key("e2e-admin-key"),
        {"MCP-Protocol-Version": "2025-11-25"},
    )
    assert_forbidden(response, 77, "delete_customer")
    assert not crm.log.containing(victim)


def test_reader_denied_resource_read(gateway, crm):
    mark = crm.log.mark()
    response = post(
        gateway.url("crm"),
        modern_body("resources/read", {"uri": "crm://customers/c-001"}, id=9),
        api_key("e2e-reader-key"),
        modern_headers("resources/read", "crm://customers/c-001"),
    )
    assert_forbidden(response, 9, "crm://customers/c-001")
    assert not crm.log.calls(mark, "resources/read")


def test_reader_denied_prompt(gateway, crm):
    mark = crm.log.mark()
    response = post(
        gateway.url("crm"),
        modern_body("prompts/get", {"name": "summarize_customer", "arguments": {"id": "c-001"}}, id=10),
        api_key("e2e-reader-key"),
        modern_headers("prompts/get", "summarize_customer"),
    )
    assert_forbidden(response, 10, "summarize_customer")
    assert not crm.log.calls(mark, "prompts/get")


# --------------------------------------------------------------------------- authenticated, no roles


@pytest.mark.anyio
async def test_consumer_without_roles_can_connect_but_call_nothing(gateway, crm):
    """initialize, ping, notifications and */list pass for any authenticated consumer; calls are default-deny."""
    creds = api_key("e2e-norole-key")
    mark = crm.log.mark()
    async with legacy_session(gateway.url("crm"), creds) as session:
        await session.send_ping()
        assert (await session.list_tools()).tools == []
        assert (await session.list_prompts()).prompts == []
        with pytest.raises(MCPError) as excinfo:
            await session.call_tool("get_customer", {"id": "c-001"})
    assert excinfo.value.error.code == FORBIDDEN
    async with modern_client(gateway.url("crm"), creds) as client:  # server/discover passes too
        assert (await client.list_tools()).tools == []
    seen = {c["method"] for c in crm.log.calls(mark)}
    assert {"initialize", "notifications/initialized", "ping", "tools/list", "server/discover"} <= seen, seen
    assert not crm.log.calls(mark, "tools/call")


# --------------------------------------------------------------------------- list filtering


@pytest.mark.anyio
@pytest.mark.parametrize("role", ["reader", "admin"])
@pytest.mark.parametrize("server", ["crm", "docs"])
@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_tools_list_filtered_sdk(era, server, role, gateway, upstreams):
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(gateway.url(server), api_key(f"e2e-{role}-key")) as client:
        listed = await client.list_tools()
    names = {tool.name for tool in listed.tools}
    assert names == VISIBLE_TOOLS[(role, server)], f"{role} on {server}: saw {sorted(names)}"


@pytest.mark.parametrize("role", ["reader", "admin"])
def test_tools_list_filtered_sse_response(role, gateway, crm):
    """Legacy crm replies to tools/list as text/event-stream: the filter must rewrite inside the SSE frame."""
    url = gateway.url("crm")
    creds = api_key(f"e2e-{role}-key")
    session_id = legacy_handshake(url, creds)
    mark = crm.log.mark()
    response = post(url, legacy_body("tools/list", {}, id=31), creds, legacy_headers(session_id))
    assert response.status_code == 200, describe(response)
    assert response.headers.get("content-type", "").startswith("text/event-stream"), (
        f"test premise: stateful crm should answer SSE: {describe(response)}"
    )
    messages = [m for m in response_messages(response) if m.get("id") == 31]
    assert len(messages) == 1, describe(response)
    names = {tool["name"] for tool in messages[0]["result"]["tools"]}
    assert names == VISIBLE_TOOLS[(role, "crm")], f"{role}: saw {sorted(names)}"
    assert crm.log.calls(mark, "tools/list"), "tools/list should reach the upstream (filtering is on the response)"


@pytest.mark.parametrize("role", ["reader", "admin"])
def test_tools_list_filtered_json_response(role, gateway, docs):
    """Stateless docs replies application/json; filtered result must still be valid JSON with a correct length."""
    response = post(
        gateway.url("docs"), modern_body("tools/list", {}, id=32), api_key(f"e2e-{role}-key"), modern_headers("tools/list")
    )
    assert response.status_code == 200, describe(response)
    assert response.headers.get("content-type", "").startswith("application/json"), describe(response)
    body = response.json()
    assert body["id"] == 32
    names = {tool["name"] for tool in body["result"]["tools"]}
    assert names == VISIBLE_TOOLS[(role, "docs")], f"{role}: saw {sorted(names)}"


@pytest.mark.anyio
async def test_resources_and_prompts_lists_filtered(gateway, crm):
    """reader has no resource/prompt rules: lists pass but come back empty; admin sees crm's."""
    async with modern_client(gateway.url("crm"), api_key("e2e-reader-key")) as client:
        reader_resources = {str(r.uri) for r in (await client.list_resources()).resources}
        reader_prompts = {p.name for p in (await client.list_prompts()).prompts}
    async with modern_client(gateway.url("crm"), api_key("e2e-admin-key")) as client:
        admin_resources = {str(r.uri) for r in (await client.list_resources()).resources}
        admin_prompts = {p.name for p in (await client.list_prompts()).prompts}
    assert reader_resources == set(), reader_resources
    assert reader_prompts == set(), reader_prompts
    assert "crm://stats" in admin_resources, admin_resources
    assert admin_prompts == {"summarize_customer"}, admin_prompts
