"""Hostile and malformed input: rejected at the gateway with the right status + JSON-RPC error, never forwarded.

Every request carries valid credentials (so only the body/header checks are
under test) and a unique marker; afterwards the upstream log must contain
neither the marker nor any new POST.
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from dataclasses import dataclass, field

import httpx2
import pytest

from e2e_support import (
    POLICY_DENIED_STATUS,
    HEADER_MISMATCH,
    INVALID_REQUEST,
    MAX_REQUEST_BYTES,
    PARSE_ERROR,
    api_key,
    base_headers,
    describe,
    gzip,
    h2c_post,
    jsonrpc_error,
    marker,
    modern_body,
    modern_headers,
    post,
)

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

READER = api_key("e2e-reader-key")
LEGACY = {"MCP-Protocol-Version": "2025-11-25"}


@dataclass
class Case:
    body: str | bytes  # "MARK" is replaced by a unique marker
    status: set[int]
    codes: set[int] | None  # required JSON-RPC error codes; None = status only
    headers: dict[str, str] = field(default_factory=lambda: dict(LEGACY))
    gzip: bool = False

    def render(self, mark: str) -> bytes:
        raw = self.body if isinstance(self.body, bytes) else self.body.encode()
        raw = raw.replace(b"MARK", mark.encode())
        return gzip(raw) if self.gzip else raw


CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{"id":"MARK"}}}'
PARSE_OR_INVALID = {PARSE_ERROR, INVALID_REQUEST}

CASES: dict[str, Case] = {
    # --- not JSON
    "malformed-json-truncated": Case(CALL[:-3], {400}, {PARSE_ERROR}),
    "malformed-json-trailing-garbage": Case(CALL + "}{", {400}, {PARSE_ERROR}),
    "malformed-json-single-quotes": Case(CALL.replace('"', "'"), {400}, {PARSE_ERROR}),
    "empty-body": Case("", {400}, PARSE_OR_INVALID),
    # --- JSON, not JSON-RPC
    "jsonrpc-version-1.0": Case(CALL.replace('"2.0"', '"1.0"'), {400}, {INVALID_REQUEST}),
    "jsonrpc-missing-version": Case(CALL.replace('"jsonrpc":"2.0",', ""), {400}, {INVALID_REQUEST}),
    "jsonrpc-missing-method": Case('{"jsonrpc":"2.0","id":1,"params":{"x":"MARK"}}', {400}, {INVALID_REQUEST}),
    "jsonrpc-method-not-string": Case('{"jsonrpc":"2.0","id":1,"method":42,"params":{"x":"MARK"}}', {400}, {INVALID_REQUEST}),
    "jsonrpc-id-is-object": Case('{"jsonrpc":"2.0","id":{"x":"MARK"},"method":"tools/list"}', {400}, {INVALID_REQUEST}),
    "jsonrpc-top-level-string": Case('"MARK"', {400}, {INVALID_REQUEST}),
    "jsonrpc-params-not-structured": Case('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":"MARK"}', {400}, {INVALID_REQUEST}),
    # --- governed methods without an id (a notification) cannot be authorized: refused
    "notification-tools-call": Case(
        '{"jsonrpc":"2.0","method":"tools/call","params":{"name":"delete_customer","arguments":{"id":"MARK"}}}',
        {400},
        {INVALID_REQUEST},
    ),
    "notification-resources-read": Case(
        '{"jsonrpc":"2.0","method":"resources/read","params":{"uri":"crm://customers/MARK"}}', {400}, {INVALID_REQUEST}
    ),
    # --- batches are rejected outright
    "batch-array": Case(
        '[{"jsonrpc":"2.0","id":1,"method":"tools/list"},'
        '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"delete_customer","arguments":{"id":"MARK"}}}]',
        {400},
        {INVALID_REQUEST},
    ),
    "batch-single-element": Case("[" + CALL + "]", {400}, {INVALID_REQUEST}),
    "batch-empty": Case("[]", {400}, {INVALID_REQUEST}),
    # --- duplicate keys: a first-wins gateway and a last-wins upstream would disagree
    "duplicate-tool-name": Case(
        '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        '"params":{"name":"get_customer","name":"delete_customer","arguments":{"id":"MARK"}}}',
        {400},
        PARSE_OR_INVALID,
    ),
    "duplicate-tool-name-escaped-key": Case(
        '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        '"params":{"name":"get_customer","na\\u006de":"delete_customer","arguments":{"id":"MARK"}}}',
        {400},
        PARSE_OR_INVALID,
    ),
    "duplicate-method": Case(
        '{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call",'
        '"params":{"name":"delete_customer","arguments":{"id":"MARK"}}}',
        {400},
        PARSE_OR_INVALID,
    ),
    "duplicate-params": Case(
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_customer","arguments":{"id":"x"}},'
        '"params":{"name":"delete_customer","arguments":{"id":"MARK"}}}',
        {400},
        PARSE_OR_INVALID,
    ),
    "duplicate-key-deep-in-arguments": Case(
        '{"jsonrpc":"2.0","id":1,"method":"tools/call",'
        '"params":{"name":"get_customer","arguments":{"id":"c-001","id":"MARK"}}}',
        {400},
        PARSE_OR_INVALID,
    ),
    # --- encoding
    "non-utf8-bytes": Case(CALL.encode().replace(b"MARK", b"MARK\xff\xfe"), {400}, None),
    "non-utf8-overlong-slash": Case(CALL.encode().replace(b"MARK", b"MARK\xc0\xaf"), {400}, None),
    "content-encoding-gzip": Case(CALL, {415}, None, headers={**LEGACY, "Content-Encoding": "gzip"}, gzip=True),
    "content-type-text-plain": Case(CALL, {415}, None, headers={**LEGACY, "Content-Type": "text/plain"}),
    "content-type-form": Case(CALL, {415}, None, headers={**LEGACY, "Content-Type": "application/x-www-form-urlencoded"}),
    # --- tool name of the wrong type: either malformed (400) or unauthorizable (denied), never forwarded
    "tool-name-not-string": Case(
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["delete_customer"],"arguments":{"id":"MARK"}}}',
        {400, POLICY_DENIED_STATUS},
        None,
    ),
}


def _modern_call(name: str, mark: str) -> str:
    return json.dumps(modern_body("tools/call", {"name": name, "arguments": {"id": mark}}, id=1), separators=(",", ":"))


MODERN_CASES: dict[str, Case] = {
    # The header says an allowed tool, the body a denied one: an RBAC bypass if the gateway trusts the header.
    "mcp-name-disagrees-with-body": Case(
        _modern_call("delete_customer", "MARK"), {400}, {HEADER_MISMATCH}, headers=modern_headers("tools/call", "get_customer")
    ),
    "mcp-method-disagrees-with-body": Case(
        _modern_call("delete_customer", "MARK"), {400}, {HEADER_MISMATCH}, headers=modern_headers("tools/list")
    ),
    "mcp-name-missing-on-tools-call": Case(
        _modern_call("get_customer", "MARK"), {400}, {HEADER_MISMATCH}, headers=modern_headers("tools/call")
    ),
    # The version header must agree with the 2026-07-28 per-request envelope in the body.
    "protocol-version-header-disagrees-with-envelope": Case(
        _modern_call("get_customer", "MARK"),
        {400},
        {HEADER_MISMATCH},
        headers={**modern_headers("tools/call", "get_customer"), "MCP-Protocol-Version": "2025-11-25"},
    ),
}


def assert_not_forwarded(upstream, mark_count: int, canary: str) -> None:
    time.sleep(0.1)  # a forwarded request is logged before the upstream answers; this is only slack
    leaked = upstream.log.containing(canary)
    assert not leaked, f"rejected request reached {upstream.name}: {leaked}"
    posts = upstream.log.posts_since(mark_count)
    assert not posts, f"{upstream.name} received POSTs during a rejected request: {posts}"


def run_case(case_id: str, case: Case, server: str, gateway, upstreams) -> None:
    upstream = upstreams[server]
    canary = marker()
    before = upstream.log.mark()
    headers = base_headers(READER)
    headers.update(case.headers)
    response = httpx2.post(gateway.url(server), content=case.render(canary), headers=headers, timeout=15)
    assert response.status_code in case.status, f"{case_id}: expected {sorted(case.status)}, got {describe(response)}"
    if case.codes is not None:
        error = jsonrpc_error(response)
        assert error["error"]["code"] in case.codes, f"{case_id}: expected code in {case.codes}: {describe(response)}"
    assert_not_forwarded(upstream, before, canary)


@pytest.mark.parametrize("server", ["crm", "docs"])
def test_control_valid_request_is_forwarded(server, gateway, upstreams):
    """Premise check: the same shape of request, well-formed, does reach the upstream log."""
    upstream = upstreams[server]
    canary = marker()
    tool = "get_customer" if server == "crm" else "get_doc"
    response = post(
        gateway.url(server),
        modern_body("tools/call", {"name": tool, "arguments": {"id": canary}}),
        READER,
        modern_headers("tools/call", tool),
    )
    assert response.status_code == 200, describe(response)
    assert upstream.log.containing(canary), f"{server}: valid request not in upstream log"


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON"])
def test_json_content_type_variants_accepted(content_type, gateway, docs):
    """415 is for non-JSON media types; parameters and case do not make JSON something else."""
    canary = marker()
    response = post(
        gateway.url("docs"),
        modern_body("tools/call", {"name": "search_docs", "arguments": {"query": canary}}),
        READER,
        {**modern_headers("tools/call", "search_docs"), "Content-Type": content_type},
    )
    assert response.status_code == 200, describe(response)
    assert docs.log.containing(canary)


@pytest.mark.parametrize("server", ["crm", "docs"])
@pytest.mark.parametrize("case_id", list(CASES))
def test_hostile_legacy_body(case_id, server, gateway, upstreams):
    run_case(case_id, CASES[case_id], server, gateway, upstreams)


@pytest.mark.parametrize("server", ["crm", "docs"])
@pytest.mark.parametrize("case_id", list(MODERN_CASES))
def test_modern_header_body_mismatch(case_id, server, gateway, upstreams):
    run_case(case_id, MODERN_CASES[case_id], server, gateway, upstreams)


@pytest.mark.parametrize("server", ["crm", "docs"])
def test_oversized_body_rejected(server, gateway, upstreams):
    upstream = upstreams[server]
    canary = marker()
    before = upstream.log.mark()
    padding = "x" * (MAX_REQUEST_BYTES + 4096)
    body = modern_body("tools/call", {"name": "get_customer", "arguments": {"id": canary, "pad": padding}})
    response = post(gateway.url(server), body, READER, modern_headers("tools/call", "get_customer"))
    assert response.status_code == 413, describe(response)
    jsonrpc_error(response)
    assert_not_forwarded(upstream, before, canary)


@pytest.mark.parametrize("server", ["crm", "docs"])
def test_oversized_chunked_body_rejected(server, gateway, upstreams):
    """No Content-Length: the limit must be enforced on the bytes actually streamed."""
    upstream = upstreams[server]
    canary = marker()
    before = upstream.log.mark()
    raw = json.dumps(
        modern_body("tools/call", {"name": "get_customer", "arguments": {"id": canary, "pad": "y" * (MAX_REQUEST_BYTES * 2)}})
    ).encode()
    chunks = [raw[i : i + 4096] for i in range(0, len(raw), 4096)]
    headers = base_headers(READER)
    headers.update(modern_headers("tools/call", "get_customer"))
    response = httpx2.post(gateway.url(server), content=iter(chunks), headers=headers, timeout=15)
    assert response.status_code == 413, describe(response)
    jsonrpc_error(response)
    assert_not_forwarded(upstream, before, canary)


def test_body_just_under_limit_is_forwarded(gateway, docs):
    """The limit is a limit, not a rejection of large-ish bodies."""
    canary = marker()
    body = modern_body("tools/call", {"name": "search_docs", "arguments": {"query": canary}})
    overhead = len(json.dumps(body, separators=(",", ":")))
    body["params"]["arguments"]["query"] = canary + "z" * (MAX_REQUEST_BYTES - overhead - 64)
    response = post(gateway.url("docs"), body, READER, modern_headers("tools/call", "search_docs"))
    assert response.status_code == 200, describe(response)
    assert docs.log.containing(canary)


def raw_post(url: str, headers: dict[str, str], extra: bytes, body: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 POST over a plain socket, so a header can carry bytes no HTTP client
    library would send (obs-text: HTTP allows any byte from 0x80 up in a field value)."""
    parsed = urllib.parse.urlsplit(url)
    head = [f"POST {parsed.path} HTTP/1.1", f"Host: {parsed.hostname}", "Connection: close",
            f"Content-Length: {len(body)}"] + [f"{k}: {v}" for k, v in headers.items()]
    request = "\r\n".join(head).encode() + b"\r\n" + extra + b"\r\n" + body
    with socket.create_connection((parsed.hostname, parsed.port), timeout=15) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def test_non_utf8_header_bytes_neither_crash_the_filter_nor_authenticate(gateway, docs):
    """A Latin-1 byte in a header value once made the filter's VM trap: one request turned
    every later request on that worker into a 503. Now such a value is read leniently: an
    unrelated header passes through, a mangled credential is refused, and the gateway keeps
    serving."""
    url = gateway.url("docs")
    canary = marker()
    body = json.dumps(modern_body("tools/call", {"name": "search_docs", "arguments": {"query": canary}})).encode()
    headers = {**base_headers(READER), **modern_headers("tools/call", "search_docs")}

    status, answer = raw_post(url, headers, b"X-Note: caf\xe9 cr\xe8me\r\n", body)
    assert status == 200, answer[:300]
    assert docs.log.containing(canary), "the request with a Latin-1 header did not reach the upstream"

    refused_canary = marker()
    refused_body = json.dumps(
        modern_body("tools/call", {"name": "search_docs", "arguments": {"query": refused_canary}})).encode()
    without_key = {k: v for k, v in headers.items() if k.lower() != "x-api-key"}
    before = docs.log.mark()
    status, answer = raw_post(url, without_key, b"X-Api-Key: e2e-reader-key\xe9\r\n", refused_body)
    assert status == 401, answer[:300]
    assert json.loads(answer)["error"]["code"] == -32001
    assert_not_forwarded(docs, before, refused_canary)

    after = marker()
    response = post(url, modern_body("tools/call", {"name": "search_docs", "arguments": {"query": after}}), READER,
                    modern_headers("tools/call", "search_docs"))
    assert response.status_code == 200, describe(response)
    assert docs.log.containing(after)


def test_request_trailers_do_not_skip_the_body_decision(gateway, crm):
    """With trailers, Envoy ends the request with the trailers callback, not with a last
    body chunk: the filter must still decide on the whole body before anything is sent."""
    headers = {**base_headers(READER), **modern_headers("tools/call", "delete_customer")}
    trailers = [("x-checksum", "0")]
    denied = marker()
    before = crm.log.mark()
    body = json.dumps(modern_body("tools/call", {"name": "delete_customer", "arguments": {"id": denied}})).encode()
    status, answer = h2c_post(gateway.url("crm"), headers, body, trailers)
    assert status == POLICY_DENIED_STATUS, answer[:300]
    assert json.loads(answer)["error"]["code"] == -32003, answer[:300]
    assert_not_forwarded(crm, before, denied)

    # The same shape, allowed: decided on the body read at the trailers, then forwarded.
    allowed = marker()
    headers = {**base_headers(READER), **modern_headers("tools/call", "get_customer")}
    body = json.dumps(modern_body("tools/call", {"name": "get_customer", "arguments": {"id": allowed}})).encode()
    status, answer = h2c_post(gateway.url("crm"), headers, body, trailers)
    assert status == 200, answer[:300]
    assert crm.log.containing(allowed), "the allowed request with trailers did not reach the upstream"
