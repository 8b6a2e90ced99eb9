"""Virtual MCP servers (`virtual_servers`): one endpoint over tools of several servers.

Real Envoy, both filter builds (the `runtime` fixture), the example servers `crm` (stateful,
SSE answers) and `docs` (stateless, JSON answers) behind the virtual server `work`, spoken to
in the 2026-07-28 era with raw HTTP and with the official Python SDK client (`mode="auto"`:
`server/discover`, `tools/list` and `prompts/list` are answered by the filter from one
callout per backing server, merged, prefixed and filtered per caller).

What is checked is what the upstreams read (their request logs): the call reaches the right
server with its own tool name in the body and in `Mcp-Name`, nothing else of the body
changed, the internal routing header never arrives, and a client can never pick the backend
by sending that header itself.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from e2e_support import (
    FORBIDDEN,
    HEADER_MISMATCH,
    INVALID_REQUEST,
    UPSTREAM_UNAVAILABLE,
    Gateway,
    Keys,
    Upstream,
    api_key,
    jsonrpc_error,
    legacy_body,
    marker,
    modern_body,
    modern_client,
    modern_headers,
    pid_alive,
    post,
    response_messages,
    running_gateway,
    start_upstream,
)

pytestmark = pytest.mark.e2e

READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601
INTERNAL_ERROR = -32603
TARGET_HEADER = "x-meshgate-target"
RATE_LIMITED = -32029

VIRTUAL = """
virtual_servers:
  - name: work
    description: crm and the docs lookups
    servers: [crm]
    tools: ["docs/search_*", "docs/get_*"]
"""
# Redaction and a quota on the backing servers' tools: through the virtual server they apply
# exactly as on /mcp/<server> (the quota's counter is the same one).
GOVERNANCE = """redaction:
  - match: { tools: ["docs/get_*"] }
    detectors: [email]
    mode: mask
quotas:
  - name: gdpr-lookups
    match: { tools: ["crm/get_*"], roles: [gdpr-officer] }
    rate: 2/m
    burst: 2
    key: consumer
"""
GDPR = api_key("e2e-gdpr-key")


@pytest.fixture(scope="module")
def virtual_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], runtime: str
) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp(f"virtual-{runtime}")
    crm, docs = upstreams["crm"].url, upstreams["docs"].url
    # A CORS policy puts Envoy's CORS filter first: it selects the route on the client's own
    # headers before Meshgate decides, so the route cache must really be cleared for the
    # filter's choice to count (the header-injection tests prove it is).
    cors = ", cors: { allow_origins: ['https://app.example.com'] }"
    with running_gateway(workdir, keys, crm, docs, VIRTUAL + GOVERNANCE, listener_extra=cors, runtime=runtime) as gw:
        yield gw


def work_url(gw: Gateway) -> str:
    return f"http://{gw.listener}/mcp/work"


def call(gw: Gateway, tool: str, args: dict[str, Any], creds: dict[str, str], id: Any = 1, extra: dict[str, str] | None = None):
    headers = {**modern_headers("tools/call", tool), **(extra or {})}
    body = modern_body("tools/call", {"name": tool, "arguments": args}, id=id)
    return post(work_url(gw), body, creds, headers=headers)


def result_text(response) -> str:
    messages = [m for m in response_messages(response) if "result" in m or "error" in m]
    assert len(messages) == 1, response.text
    assert "result" in messages[0], response.text
    return json.dumps(messages[0]["result"])


def only_post(upstream: Upstream, mark: int) -> dict[str, Any]:
    posts = upstream.log.posts_since(mark)
    assert len(posts) == 1, f"{upstream.name} saw {len(posts)} POSTs: {posts}"
    return posts[0]


@pytest.mark.parametrize(
    ("tool", "server", "own", "args", "expect"),
    [
        ("crm__get_customer", "crm", "get_customer", {"id": "c-002"}, "Grace Hopper"),
        ("docs__search_docs", "docs", "search_docs", {"query": "envoy"}, "envoy"),
    ],
)
def test_a_call_reaches_its_server_under_its_own_name(virtual_gateway, upstreams, tool, server, own, args, expect):
    upstream = upstreams[server]
    other = upstreams["docs" if server == "crm" else "crm"]
    mark, other_mark = upstream.log.mark(), other.log.mark()
    tag = marker()
    response = call(virtual_gateway, tool, {**args, "note": tag} if server == "docs" else args, READER, id=tag)
    assert response.status_code == 200, response.text
    assert expect in result_text(response)

    entry = only_post(upstream, mark)
    assert entry["name"] == own and entry["method"] == "tools/call", entry
    assert entry["headers"].get("mcp-name") == own, entry["headers"]
    assert TARGET_HEADER not in entry["headers"], "the internal routing header reached the upstream"
    assert "x-api-key" not in entry["headers"], "client credentials reached the upstream"
    # Only the name changed: the forwarded body is the sent one with params.name replaced.
    sent = modern_body("tools/call", {"name": tool, "arguments": {**args, "note": tag} if server == "docs" else args}, id=tag)
    expected = json.dumps(sent, separators=(",", ":")).replace(f'"name":"{tool}"', f'"name":"{own}"', 1)
    assert entry["body"] == expected
    assert other.log.posts_since(other_mark) == [], "the other server saw the call"


def test_the_same_name_in_the_arguments_is_left_alone(virtual_gateway, docs):
    mark = docs.log.mark()
    response = call(virtual_gateway, "docs__search_docs", {"query": "docs__search_docs"}, READER)
    assert response.status_code == 200, response.text
    entry = only_post(docs, mark)
    body = json.loads(entry["body"])
    assert body["params"]["name"] == "search_docs"
    assert body["params"]["arguments"] == {"query": "docs__search_docs"}


@pytest.mark.parametrize(
    "injected",
    [
        {TARGET_HEADER: "docs"},
        {"X-Meshgate-Target": "docs"},
        {TARGET_HEADER: "crm, docs"},
    ],
)
def test_a_client_cannot_choose_the_backend(virtual_gateway, crm, docs, injected):
    """The attack: a client sends the internal routing header itself."""
    crm_mark, docs_mark = crm.log.mark(), docs.log.mark()
    response = call(virtual_gateway, "crm__get_customer", {"id": "c-001"}, READER, extra=injected)
    assert response.status_code == 200, response.text
    assert "Ada Lovelace" in result_text(response)
    entry = only_post(crm, crm_mark)
    assert TARGET_HEADER not in entry["headers"]
    assert docs.log.posts_since(docs_mark) == [], "the injected header routed the call to docs"


def test_an_injected_header_on_a_refused_request_reaches_nobody(virtual_gateway, crm, docs):
    crm_mark, docs_mark = crm.log.mark(), docs.log.mark()
    for target in ("crm", "docs"):
        # Not exposed (admin_reindex is not selected), a method not answered here, a legacy call.
        refused = [
            call(virtual_gateway, "docs__admin_reindex", {}, ADMIN, extra={TARGET_HEADER: target}),
            post(
                work_url(virtual_gateway),
                modern_body("logging/setLevel", {"level": "info"}, id=5),
                READER,
                headers={**modern_headers("logging/setLevel"), TARGET_HEADER: target},
            ),
            post(
                work_url(virtual_gateway),
                legacy_body("tools/call", {"name": "get_customer", "arguments": {"id": "c-001"}}),
                READER,
                headers={TARGET_HEADER: target},
            ),
        ]
        for response in refused:
            jsonrpc_error(response)
    assert crm.log.posts_since(crm_mark) == [] and docs.log.posts_since(docs_mark) == []
    # A discovery request is answered from callouts the filter builds itself: the client's
    # header is in none of them.
    for target in ("crm", "docs"):
        headers = {**modern_headers("tools/list"), TARGET_HEADER: target}
        listed = post(work_url(virtual_gateway), modern_body("tools/list", {}, id=6), READER, headers=headers)
        assert "result" in listed.json(), listed.text
    callouts = crm.log.posts_since(crm_mark) + docs.log.posts_since(docs_mark)
    assert len(callouts) == 4, callouts
    assert all(TARGET_HEADER not in entry["headers"] for entry in callouts), callouts


def test_rbac_applies_to_the_underlying_tool(virtual_gateway, crm):
    """A virtual server never widens the policy: readers may not delete, via any endpoint."""
    mark = crm.log.mark()
    response = call(virtual_gateway, "crm__delete_customer", {"id": "c-001"}, READER, id="del-1")
    body = jsonrpc_error(response)
    assert body["id"] == "del-1"
    assert body["error"]["code"] == FORBIDDEN
    assert "crm/delete_customer" in body["error"]["message"]
    # Admins are denied delete_* too (deny wins), exactly as on /mcp/crm.
    body = jsonrpc_error(call(virtual_gateway, "crm__delete_customer", {"id": "c-001"}, ADMIN))
    assert body["error"]["code"] == FORBIDDEN
    assert crm.log.posts_since(mark) == []


def test_redaction_applies_to_the_underlying_tool(virtual_gateway):
    text = result_text(call(virtual_gateway, "docs__get_doc", {"id": "support"}, READER))
    assert "[EMAIL]" in text and "support@meshgate.example" not in text, text


def test_a_quota_counts_calls_on_every_endpoint_together(virtual_gateway):
    """One call via /mcp/crm and one via the virtual server use up the burst of 2; the next,
    on either endpoint, is refused (-32029)."""
    body = modern_body("tools/call", {"name": "get_customer", "arguments": {"id": "c-001"}})
    direct = post(virtual_gateway.url("crm"), body, GDPR, headers=modern_headers("tools/call", "get_customer"))
    assert "Ada Lovelace" in result_text(direct)
    assert "Ada Lovelace" in result_text(call(virtual_gateway, "crm__get_customer", {"id": "c-001"}, GDPR))
    refused = call(virtual_gateway, "crm__get_customer", {"id": "c-001"}, GDPR, id="q-3")
    assert refused.status_code == 429, refused.text
    body = jsonrpc_error(refused)
    assert (body["id"], body["error"]["code"]) == ("q-3", RATE_LIMITED)


def test_the_selection_narrows_what_the_policy_allows(virtual_gateway, docs):
    mark = docs.log.mark()
    body = jsonrpc_error(call(virtual_gateway, "docs__admin_reindex", {}, ADMIN, id=7))
    assert (body["id"], body["error"]["code"]) == (7, INVALID_PARAMS)
    assert "not exposed" in body["error"]["message"]
    assert docs.log.posts_since(mark) == []


def test_an_unknown_prefix_lists_the_valid_ones(virtual_gateway):
    response = call(virtual_gateway, "billing__charge", {}, READER, id=8)
    body = jsonrpc_error(response)
    assert (body["id"], body["error"]["code"]) == (8, INVALID_PARAMS)
    assert "crm__, docs__" in body["error"]["message"]


def test_headers_must_match_the_exposed_name(virtual_gateway, crm):
    mark = crm.log.mark()
    # The backend's own name in Mcp-Name while the body names the exposed one.
    headers = modern_headers("tools/call", "get_customer")
    body = modern_body("tools/call", {"name": "crm__get_customer", "arguments": {"id": "c-001"}}, id=3)
    response = post(work_url(virtual_gateway), body, READER, headers=headers)
    assert response.status_code == 400
    assert jsonrpc_error(response)["error"]["code"] == HEADER_MISMATCH
    assert crm.log.posts_since(mark) == []


@pytest.mark.parametrize("method", ["logging/setLevel", "resources/subscribe"])
def test_what_is_not_supported_yet_is_a_json_rpc_error(virtual_gateway, method):
    params = {"uri": "crm://customers/c-001"} if method == "resources/subscribe" else {"level": "info"}
    response = post(work_url(virtual_gateway), modern_body(method, params, id="m-1"), READER, headers=modern_headers(method))
    body = jsonrpc_error(response)
    assert (body["id"], body["error"]["code"]) == ("m-1", METHOD_NOT_FOUND)
    assert "virtual server \"work\"" in body["error"]["message"]


def test_resources_outside_the_selection_are_neither_listed_nor_read(virtual_gateway, crm):
    """`work` selects no resources: its resource lists are empty (no backend is asked) and a
    read of a real crm resource is not routed (-32602 with the id; resources are covered in
    test_virtual_lists.py)."""
    mark = crm.log.mark()
    for method, key in (("resources/list", "resources"), ("resources/templates/list", "resourceTemplates")):
        response = post(work_url(virtual_gateway), modern_body(method, {}, id="l"), ADMIN, headers=modern_headers(method))
        assert response.status_code == 200, response.text
        assert response.json()["result"][key] == []
    uri = "crm://customers/c-001"
    body = modern_body("resources/read", {"uri": uri}, id="m-1")
    error = jsonrpc_error(post(work_url(virtual_gateway), body, ADMIN, headers=modern_headers("resources/read", uri)))
    assert (error["id"], error["error"]["code"]) == ("m-1", INVALID_PARAMS)
    assert "not exposed" in error["error"]["message"]
    assert crm.log.posts_since(mark) == []


def test_a_list_cursor_is_refused_clearly(virtual_gateway):
    body = modern_body("tools/list", {"cursor": "abc"}, id="c-1")
    error = jsonrpc_error(post(work_url(virtual_gateway), body, ADMIN, headers=modern_headers("tools/list")))
    assert (error["id"], error["error"]["code"]) == ("c-1", INVALID_PARAMS)
    assert "cursor" in error["error"]["message"]


async def sdk_lists(url: str, creds: dict[str, str]) -> tuple[list[Any], list[Any]]:
    async with modern_client(url, creds) as client:
        return (await client.list_tools()).tools, (await client.list_prompts()).prompts


# What `work` selects of docs (`docs/search_*`, `docs/get_*`); all of crm.
def selected(server: str, name: str) -> bool:
    return server == "crm" or name.startswith(("search_", "get_"))


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["reader", "admin"])
async def test_the_sdk_client_discovers_lists_and_calls_through_the_virtual_server(virtual_gateway, crm, docs, who):
    """The official client in the 2026-07-28 era: the merged list is exactly the prefixed
    union of what the same caller sees on /mcp/crm and /mcp/docs (narrowed by the
    selection), every field kept; then a call through it reaches crm."""
    creds = READER if who == "reader" else ADMIN
    gw = virtual_gateway
    marks = crm.log.mark(), docs.log.mark()
    tools, prompts = await sdk_lists(work_url(gw), creds)
    # One callout per backing server for each discovery request (discover, tools, prompts).
    assert len(crm.log.posts_since(marks[0])) == 3, crm.log.posts_since(marks[0])
    assert len(docs.log.posts_since(marks[1])) == 2, docs.log.posts_since(marks[1])
    expected = []
    expected_prompts = []
    for server in ("crm", "docs"):
        own_tools, own_prompts = await sdk_lists(gw.url(server), creds)
        expected += [(f"{server}__{t.name}", t) for t in own_tools if selected(server, t.name)]
        expected_prompts += [(f"{server}__{p.name}", p) for p in own_prompts if server == "crm"]
    assert [t.name for t in tools] == [name for name, _ in expected]
    for tool, (_, own) in zip(tools, expected):
        assert tool.model_dump(exclude={"name"}) == own.model_dump(exclude={"name"}), tool.name
    assert [p.name for p in prompts] == [name for name, _ in expected_prompts]
    names = {t.name for t in tools}
    if who == "reader":
        assert "crm__get_customer" in names and "crm__update_customer" not in names, names
    else:
        assert {"crm__get_customer", "crm__update_customer"} <= names and "crm__delete_customer" not in names, names
    async with modern_client(work_url(gw), creds) as client:
        result = await client.call_tool("crm__get_customer", {"id": "c-002"})
    assert not result.is_error, result
    assert "Grace Hopper" in result.content[0].text


def test_discovery_answers_merged_capabilities_with_cache_hints(virtual_gateway):
    response = post(work_url(virtual_gateway), modern_body("server/discover", {}, id="d"), READER, headers=modern_headers("server/discover"))
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert (result["resultType"], result["cacheScope"], result["supportedVersions"]) == ("complete", "private", ["2026-07-28"])
    assert set(result["capabilities"]) == {"tools", "prompts"}, result
    assert isinstance(result["ttlMs"], int)
    listed = post(work_url(virtual_gateway), modern_body("tools/list", {}, id="l"), READER, headers=modern_headers("tools/list"))
    result = listed.json()["result"]
    assert (result["resultType"], result["cacheScope"]) == ("complete", "private")


def test_the_session_based_era_is_refused_clearly(virtual_gateway):
    response = post(work_url(virtual_gateway), legacy_body("initialize", {"protocolVersion": "2025-11-25"}, id=1), READER)
    body = jsonrpc_error(response)
    assert (body["id"], body["error"]["code"]) == (1, INVALID_REQUEST)
    assert "2026-07-28" in body["error"]["message"]
    for method in ("GET", "DELETE"):
        answer = httpx2.request(method, work_url(virtual_gateway), headers={**READER, "Accept": "text/event-stream"})
        assert answer.status_code == 405, answer.text
        jsonrpc_error(answer)


def test_prompts_are_routed(virtual_gateway, crm):
    mark = crm.log.mark()
    headers = modern_headers("prompts/get", "crm__summarize_customer")
    body = modern_body("prompts/get", {"name": "crm__summarize_customer", "arguments": {"id": "c-001"}}, id=4)
    response = post(work_url(virtual_gateway), body, ADMIN, headers=headers)
    assert response.status_code == 200, response.text
    assert "c-001" in result_text(response)
    entry = only_post(crm, mark)
    assert (entry["name"], entry["headers"].get("mcp-name")) == ("summarize_customer", "summarize_customer")


def test_the_real_servers_are_unchanged_beside_it(virtual_gateway, crm):
    """`/mcp/crm` ignores the routing header: its route matches on the path alone."""
    mark = crm.log.mark()
    headers = {**modern_headers("tools/call", "get_customer"), TARGET_HEADER: "docs"}
    body = modern_body("tools/call", {"name": "get_customer", "arguments": {"id": "c-001"}})
    response = post(virtual_gateway.url("crm"), body, READER, headers=headers)
    assert response.status_code == 200, response.text
    assert TARGET_HEADER not in only_post(crm, mark)["headers"]


def wait_until(what: str, check, within: float = 20.0) -> None:
    """Polls `check` until it holds (the registry is reloaded by content hash, then pushed over
    xDS); fails naming `what` otherwise. Not a measurement: only a bound on waiting."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within}s")
        time.sleep(0.1)


def test_live_edits_apply_without_an_envoy_restart(virtual_gateway):
    """Add a virtual server, add a server to it, then edit the policy: each applies to the
    next call, and Envoy is the same process throughout. Runs last; restores the registry."""
    registry = virtual_gateway.registry
    original = registry.read_text()
    envoy_pid = virtual_gateway.envoy_pid
    url = f"http://{virtual_gateway.listener}/mcp/live"

    def live_call(tool: str, args: dict[str, Any]):
        body = modern_body("tools/call", {"name": tool, "arguments": args})
        return post(url, body, READER, headers=modern_headers("tools/call", tool))

    def error_code(response) -> int | None:
        try:
            body = response.json()
        except ValueError:
            return None
        return body.get("error", {}).get("code") if isinstance(body, dict) else None

    def succeeds(response) -> bool:
        return response.status_code == 200 and error_code(response) is None and "result" in response.text

    try:
        # 1. A new virtual server over crm only.
        registry.write_text(original.replace(VIRTUAL, VIRTUAL + "  - { name: live, servers: [crm] }\n"))
        wait_until("the new virtual server routes", lambda: succeeds(live_call("crm__get_customer", {"id": "c-001"})))
        assert error_code(live_call("docs__search_docs", {"query": "envoy"})) == INVALID_PARAMS
        # 2. docs joins it: its route on /mcp/live appears.
        registry.write_text(original.replace(VIRTUAL, VIRTUAL + "  - { name: live, servers: [crm, docs] }\n"))
        wait_until("docs joins the virtual server", lambda: succeeds(live_call("docs__search_docs", {"query": "envoy"})))
        # 3. A policy edit: readers lose docs/search_* through every endpoint.
        reader_line = '      allow: ["crm/get_*", "crm/list_*", "docs/search_*", "docs/get_*"]\n'
        assert reader_line in original
        edited = original.replace(reader_line, reader_line + '      deny: ["docs/search_*"]\n')
        registry.write_text(edited.replace(VIRTUAL, VIRTUAL + "  - { name: live, servers: [crm, docs] }\n"))
        wait_until(
            "the policy edit denies the call",
            lambda: error_code(live_call("docs__search_docs", {"query": "envoy"})) == FORBIDDEN,
        )
        assert error_code(call(virtual_gateway, "docs__search_docs", {"query": "envoy"}, READER)) == FORBIDDEN
        assert virtual_gateway.envoy_pid == envoy_pid and pid_alive(envoy_pid)
    finally:
        registry.write_text(original)
        # Restored when /mcp/live is gone again (the filter answers 404 for unknown paths).
        wait_until("the registry is restored", lambda: live_call("crm__get_customer", {"id": "c-001"}).status_code == 404)


def test_a_call_to_a_backend_that_is_down_names_the_server(tmp_path, keys, upstreams, runtime):
    """A backing server killed while the gateway runs: its calls get a JSON-RPC error naming
    it (with the request's id); the other backing server keeps answering."""
    spare = start_upstream("spare", "docs_server.py", tmp_path)
    try:
        extra_servers = f"  - name: spare\n    url: {spare.url}\n"
        virtual = "\nvirtual_servers:\n  - { name: pair, servers: [spare], tools: ['docs/search_*'] }\n"
        crm, docs = upstreams["crm"].url, upstreams["docs"].url
        (tmp_path / "gw").mkdir()
        with running_gateway(
            tmp_path / "gw", keys, crm, docs, virtual, extra_servers=extra_servers, runtime=runtime
        ) as gw:
            url = f"http://{gw.listener}/mcp/pair"

            def pair_call(tool: str, id: str):
                body = modern_body("tools/call", {"name": tool, "arguments": {"query": "envoy"}}, id=id)
                return post(url, body, ADMIN, headers=modern_headers("tools/call", tool))

            assert "result" in pair_call("spare__search_docs", "up").text
            spare.proc.stop()
            body = jsonrpc_error(pair_call("spare__search_docs", "down"))
            assert (body["id"], body["error"]["code"]) == ("down", UPSTREAM_UNAVAILABLE), body
            assert "spare" in body["error"]["message"]
            assert "result" in pair_call("docs__search_docs", "other").text
    finally:
        spare.proc.stop()


@pytest.mark.parametrize("how", ["killed", "closed-port", "silent"])
def test_a_backend_down_during_discovery_is_left_out_in_bounded_time(tmp_path, keys, upstreams, runtime, how):
    """A backing server that is down (killed while the gateway runs, a port nothing listens
    on, or one that accepts and never answers): discovery still answers within the callout
    bound (5 s) with the other backends' tools; the omission is logged and counted."""
    spare = start_upstream("spare", "docs_server.py", tmp_path)
    silent = socket.socket()
    try:
        url = spare.url
        if how == "closed-port":
            spare.proc.stop()
        if how == "silent":
            # Connections complete in the kernel's backlog; nothing ever reads or answers.
            silent.bind(("127.0.0.1", 0))
            silent.listen(64)
            url = f"http://127.0.0.1:{silent.getsockname()[1]}/mcp"
        extra_servers = f"  - name: spare\n    url: {url}\n"
        virtual = "\nvirtual_servers:\n  - { name: pair, servers: [spare], tools: ['docs/search_*'] }\n"
        (tmp_path / "gw").mkdir()
        with running_gateway(
            tmp_path / "gw", keys, upstreams["crm"].url, upstreams["docs"].url, virtual, extra_servers=extra_servers, runtime=runtime
        ) as gw:
            pair = f"http://{gw.listener}/mcp/pair"

            def names() -> list[str]:
                response = post(pair, modern_body("tools/list", {}, id="l"), ADMIN, headers=modern_headers("tools/list"))
                assert response.status_code == 200, response.text
                return [t["name"] for t in response.json()["result"]["tools"]]

            if how == "killed":
                assert "spare__search_docs" in names()
                spare.proc.stop()
            started = time.monotonic()
            assert names() == ["docs__search_docs"]
            assert time.monotonic() - started < 8.0

            def counted() -> bool:
                stats = httpx2.get(f"{gw.admin}/stats?filter=fan_out_omissions", timeout=5).text
                return any("spare" in line and not line.rstrip().endswith(": 0") for line in stats.splitlines())

            # Counters reach Envoy's stats at the next metrics flush.
            wait_until("the omission of spare counted in meshgate.fan_out_omissions", counted)
    finally:
        spare.proc.stop()
        silent.close()
