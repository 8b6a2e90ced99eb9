"""Allowed calls through Meshgate with the official Python SDK clients.

Both protocol eras (2025-11-25 handshake, 2026-07-28 per-request) against
both upstream shapes (stateful+SSE crm, stateless+JSON docs). Each test also
reads the upstream log: the call really arrived, and without the client's
credentials.
"""

from __future__ import annotations

import json

import pytest

from e2e_support import api_key, bearer, forwarded_credential_headers, legacy_session, modern_client

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]


def _text(result) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_crm_allowed_call(era, gateway, crm, keys):
    """Reader (RS256 JWT) reads a customer from the stateful server."""
    creds = bearer(keys.token("alice", ["reader"]))
    mark = crm.log.mark()
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(gateway.url("crm"), creds) as client:
        result = await client.call_tool("get_customer", {"id": "c-002"})
    assert not result.is_error, _text(result)
    assert "Grace Hopper" in _text(result)

    calls = crm.log.calls(mark, "tools/call", "get_customer")
    assert len(calls) == 1, f"upstream saw {len(calls)} get_customer calls: {crm.log.since(mark)}"
    leaked = forwarded_credential_headers(crm.log.since(mark))
    assert not leaked, f"client credentials reached the upstream: {leaked}"


@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_docs_allowed_call(era, gateway, docs):
    """Reader (API key) searches the stateless server."""
    creds = api_key("e2e-reader-key")
    mark = docs.log.mark()
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(gateway.url("docs"), creds) as client:
        result = await client.call_tool("search_docs", {"query": "envoy"})
    assert not result.is_error, _text(result)
    assert "envoy" in _text(result)

    calls = docs.log.calls(mark, "tools/call", "search_docs")
    assert len(calls) == 1, f"upstream saw {len(calls)} search_docs calls: {docs.log.since(mark)}"
    leaked = forwarded_credential_headers(docs.log.since(mark))
    assert not leaked, f"client credentials reached the upstream: {leaked}"


async def test_admin_can_update_and_read_back(gateway, crm):
    """A write allowed to admin goes through and its effect is visible on the next read."""
    creds = api_key("e2e-admin-key")
    async with modern_client(gateway.url("crm"), creds) as client:
        updated = await client.call_tool("update_customer", {"id": "c-003", "tier": "platinum"})
        assert not updated.is_error, _text(updated)
        read = await client.call_tool("get_customer", {"id": "c-003"})
    assert "platinum" in _text(read)


async def test_admin_reads_resource_and_prompt(gateway, crm):
    """resources/read and prompts/get allowed by the admin role's resources/prompts rules."""
    creds = api_key("e2e-admin-key")
    mark = crm.log.mark()
    async with legacy_session(gateway.url("crm"), creds) as session:
        stats = await session.read_resource("crm://stats")
        prompt = await session.get_prompt("summarize_customer", {"id": "c-001"})
    body = json.loads(stats.contents[0].text)
    assert body["customers"] >= 1
    assert "Ada Lovelace" in prompt.messages[0].content.text
    assert crm.log.calls(mark, "resources/read", "crm://stats")
    assert crm.log.calls(mark, "prompts/get", "summarize_customer")


async def test_upstream_never_receives_client_credentials(gateway, crm, docs, keys):
    """Authorization and x-api-key are stripped before forwarding, in both eras, on both servers."""
    marks = {up.name: up.log.mark() for up in (crm, docs)}
    for creds in (bearer(keys.token("bob", ["reader"], alg="ES256")), api_key("e2e-reader-key")):
        for up, tool, args in ((crm, "list_customers", {}), (docs, "get_doc", {"id": "policy"})):
            async with legacy_session(gateway.url(up.name), creds) as session:
                assert not (await session.call_tool(tool, args)).is_error
            async with modern_client(gateway.url(up.name), creds) as client:
                assert not (await client.call_tool(tool, args)).is_error
    for up in (crm, docs):
        entries = up.log.since(marks[up.name])
        assert len(up.log.calls(marks[up.name], "tools/call")) == 4, f"{up.name}: calls missing from upstream log"
        leaked = forwarded_credential_headers(entries)
        assert not leaked, f"{up.name} received client credentials: {leaked}"
