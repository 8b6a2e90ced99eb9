"""PII redaction through real Envoy: the official SDK client sees masked values in SSE
(stateful crm) and JSON (stateless docs) results, and a blocked argument never reaches
the upstream.

This module runs its own gateway: the session gateway's registry has no redaction rules.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import (
    POLICY_DENIED_STATUS,
    Gateway,
    Keys,
    Upstream,
    api_key,
    base_headers,
    h2c_post,
    jsonrpc_error,
    legacy_body,
    legacy_session,
    marker,
    modern_body,
    modern_client,
    modern_headers,
    post,
    running_gateway,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

ADMIN = api_key("e2e-admin-key")

REDACTION = """
redaction:
  - match: { tools: ["crm/*", "docs/get_*"] }
    detectors: [email, phone]
    mode: mask
  - match: { tools: ["crm/update_*"] }
    detectors: [credit_card]
    mode: block
    direction: request
  - match: { tools: ["docs/search_*"] }
    detectors: [email]
    mode: mask
    direction: request
"""


@pytest.fixture(scope="module")
def redacting_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], runtime: str
) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp(f"redacting-gateway-{runtime}")
    with running_gateway(workdir, keys, upstreams["crm"].url, upstreams["docs"].url, REDACTION, runtime=runtime) as gw:
        yield gw


def _text(result) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_sse_tool_result_is_redacted(era, redacting_gateway):
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(redacting_gateway.url("crm"), ADMIN) as client:
        result = await client.call_tool("get_customer", {"id": "c-002"})
    text = _text(result)
    assert "Grace Hopper" in text, text
    assert "grace@example.com" not in text and "[EMAIL]" in text, text
    structured = json.dumps(result.structured_content)
    assert "grace@example.com" not in structured and "[EMAIL]" in structured, structured


async def test_json_tool_result_is_redacted_and_ids_survive(redacting_gateway, docs):
    async with legacy_session(redacting_gateway.url("docs"), ADMIN) as client:
        result = await client.call_tool("get_doc", {"id": "support"})
        other = await client.call_tool("search_docs", {"query": "support"})
    text = _text(result)
    assert "support@meshgate.example" not in text and "[EMAIL]" in text, text
    assert "+44 20 7946 0958" not in text and "[PHONE]" in text, text
    assert "ORD-2024-000123" in text, f"an order id must survive: {text}"
    # search_docs is outside the rule's scope: untouched.
    assert "support" in _text(other)


def test_blocked_argument_never_reaches_the_upstream(redacting_gateway, crm):
    canary = marker()
    mark = crm.log.mark()
    body = legacy_body(
        "tools/call",
        {"name": "update_customer", "arguments": {"id": "c-001", "name": canary, "email": "4111 1111 1111 1111"}},
        id=41,
    )
    response = post(redacting_gateway.url("crm"), body, ADMIN)
    assert response.status_code == POLICY_DENIED_STATUS, response.text
    reply = jsonrpc_error(response)
    error = reply["error"]
    assert reply["id"] == 41, reply
    assert error["code"] == -32003 and "credit_card" in error["message"], error
    assert "4111" not in response.text
    assert not crm.log.containing(canary, mark), "a blocked call reached the upstream"
    # The same call without the card goes through.
    ok = post(redacting_gateway.url("crm"), legacy_body("tools/call", {"name": "update_customer", "arguments": {"id": "c-001", "tier": "gold"}}, id=42), ADMIN)
    assert ok.status_code in (200, 400, 404), ok.text  # stateful server may want a session; it was forwarded
    assert crm.log.calls(mark, "tools/call", "update_customer"), "the allowed call was not forwarded"


@pytest.mark.parametrize("transport", ["http1", "h2c-with-trailers"])
def test_request_arguments_are_masked_before_the_upstream(transport, redacting_gateway, docs):
    """A `direction: request` mask rewrites the arguments the upstream receives; with
    trailers the rewrite happens when the trailers end the request."""
    canary = marker()
    body = modern_body("tools/call", {"name": "search_docs", "arguments": {"query": f"{canary} ada@example.org"}})
    headers = {**base_headers(ADMIN), **modern_headers("tools/call", "search_docs")}
    if transport == "http1":
        response = post(redacting_gateway.url("docs"), body, ADMIN, modern_headers("tools/call", "search_docs"))
        status = response.status_code
    else:
        status, _ = h2c_post(redacting_gateway.url("docs"), headers, json.dumps(body).encode(), [("x-checksum", "0")])
    assert status == 200
    seen = docs.log.containing(canary)
    assert seen, "the call did not reach the upstream"
    text = json.dumps(seen)
    assert "ada@example.org" not in text and "[EMAIL]" in text, text
