"""Hostile and malformed input: rejected at the gateway with the right status + JSON-RPC error, never forwarded.

Every request carries valid credentials (so only the body/header checks are
under test) and a unique marker; afterwards the upstream log must contain
neither the marker nor any new POST.
"""

from __future__ import annotations

import json
import posixpath
import socket
import time
import urllib.parse
from dataclasses import dataclass, field

import httpx2
import pytest

from e2e_support import (
    FORBIDDEN,
    HEADER_MISMATCH,
    INVALID_REQUEST,
    LEGACY_VERSION,
    MAX_REQUEST_BYTES,
    PARSE_ERROR,
    POLICY_DENIED_STATUS,
    api_key,
    base_headers,
    describe,
    gzip,
    h2c_post,
    jsonrpc_error,
    legacy_body,
    marker,
    modern_body,
    modern_headers,
    post,
    response_messages,
)
from scripted_upstream import json_response, sse_event, sse_response

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

READER = api_key("e2e-reader-key")
LEGACY = {"MCP-Protocol-Version": "2025-11-25"}
INVALID_PARAMS = -32602
METHOD_NOT_FOUND = -32601


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
    # A BOM or a UTF-16/32 body: Python's json.loads(bytes) detects and decodes them, the filter
    # reads UTF-8 only. Refused, whatever the charset says.
    "body-utf8-bom": Case(b"\xef\xbb\xbf" + CALL.encode(), {400}, PARSE_OR_INVALID),
    "body-utf16-bom": Case(CALL.encode("utf-16"), {400}, PARSE_OR_INVALID),
    "body-utf16-be": Case(CALL.encode("utf-16-be"), {400}, PARSE_OR_INVALID),
    "body-utf16-le": Case(CALL.encode("utf-16-le"), {400}, PARSE_OR_INVALID),
    "body-utf32-le": Case(CALL.encode("utf-32-le"), {400}, PARSE_OR_INVALID),
    "body-utf16-declared": Case(CALL.encode("utf-16"), {415}, None,
                                headers={**LEGACY, "Content-Type": "application/json; charset=utf-16"}),
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


# =========================================================================== issue #13: hostile clients
#
# The cases below run against `hostile_gateway`, whose server `evil` is the scripted upstream
# (scripted_upstream.py): it records every request it receives, so each test proves what did
# (not) reach it. Readers may call `evil/get_*`, read `evil/file:///srv/public/*` and use
# prompts `evil/public_*`; auditors may read every evil resource but
# `evil/file:///srv/private/*`; admins may use everything on evil, whose `pay*` arguments are
# masked for card numbers.

AUDITOR = api_key("e2e-auditor-key")
ADMIN = api_key("e2e-admin-key")
CARD = "4111 1111 1111 1111"


def raw_request(url: str, method: str, headers: list[tuple[str, str]], body: bytes = b"",
                content_length: bool = True) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request over a plain socket, headers exactly as given (repeats, odd
    framing): what a hostile client can send and an HTTP library would tidy up."""
    parsed = urllib.parse.urlsplit(url)
    head = [f"{method} {parsed.path} HTTP/1.1", f"Host: {parsed.hostname}", "Connection: close"]
    if content_length and body:
        head.append(f"Content-Length: {len(body)}")
    head += [f"{k}: {v}" for k, v in headers]
    request = "\r\n".join(head).encode("latin-1") + b"\r\n\r\n" + body
    with socket.create_connection((parsed.hostname, parsed.port), timeout=15) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    response_headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        response_headers[name.strip().lower()] = value.strip()
    if "chunked" in response_headers.get("transfer-encoding", ""):
        decoded = b""
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0] or b"0", 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
        rest = decoded
    return int(lines[0].split()[1]), response_headers, rest


def scripted_ok(req) -> list:
    """A scripted answer for any request: an empty result (the upstream would have run it)."""
    return json_response({"jsonrpc": "2.0", "id": req.id, "result": {"content": []}})


def error_of(body: bytes) -> dict:
    message = json.loads(body)
    assert message.get("jsonrpc") == "2.0" and isinstance(message.get("error"), dict), body[:300]
    return message["error"]


# --------------------------------------------------------------------------- item 1: request charset

GET_X = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_x","arguments":{"id":"MARK"}}}'

# Content-Type headers that declare anything but one UTF-8 JSON reading of the body.
REPRESENTATION_CASES: dict[str, list[tuple[str, str]]] = {
    "charset-utf-7": [("Content-Type", "application/json; charset=utf-7")],
    "charset-utf-7-quoted-upper": [("Content-Type", 'application/json; charset="UTF-7"')],
    "charset-param-name-upper": [("Content-Type", "application/json; CHARSET=utf-7")],
    "charset-utf-16": [("Content-Type", "application/json; charset=utf-16")],
    "charset-utf-32": [("Content-Type", "application/json; charset=utf-32")],
    "charset-latin-1": [("Content-Type", "application/json; charset=iso-8859-1")],
    "charset-utf-8-then-utf-7": [("Content-Type", "application/json; charset=utf-8; charset=utf-7")],
    "charset-after-other-param": [("Content-Type", "application/json; x=1; charset=utf-7")],
    "two-content-types": [("Content-Type", "application/json"), ("Content-Type", "application/json; charset=utf-7")],
    "content-type-list": [("Content-Type", "application/json, text/plain; charset=utf-7")],
    "two-content-encodings": [("Content-Type", "application/json"), ("Content-Encoding", "identity"),
                              ("Content-Encoding", "gzip")],
}


@pytest.mark.parametrize("case_id", list(REPRESENTATION_CASES))
def test_request_representation_other_than_utf8_json_is_refused(case_id, hostile_gateway, scripted):
    """The filter reads the body as UTF-8: anything that lets an upstream read it otherwise
    (a charset, several types, an encoding) is refused with 415, never forwarded."""
    script = scripted.script(scripted_ok)
    canary = marker()
    headers = [("x-api-key", "e2e-reader-key"), ("Accept", "application/json, text/event-stream"),
               ("MCP-Protocol-Version", LEGACY_VERSION), *script.headers.items(), *REPRESENTATION_CASES[case_id]]
    status, _, body = raw_request(hostile_gateway.url("evil"), "POST", headers, GET_X.replace("MARK", canary).encode())
    assert status == 415, (case_id, status, body[:300])
    assert error_of(body)["code"] == INVALID_REQUEST, body[:300]
    assert script.requests == [], f"{case_id}: forwarded {[r.headers.get('content-type') for r in script.requests]}"


# Framings a front end and a back end could split differently (request smuggling). Envoy's
# HTTP/1 codec refuses them before the filter runs; checked here so it stays that way.
FRAMING_CASES: dict[str, tuple[list[tuple[str, str]], bool]] = {
    "chunked-and-content-length": ([("Transfer-Encoding", "chunked"), ("Content-Length", "4")], True),
    "gzip-then-chunked": ([("Transfer-Encoding", "gzip, chunked")], True),
    "chunked-twice": ([("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")], True),
    "identity": ([("Transfer-Encoding", "identity"), ("Content-Length", "LEN")], False),
    "xchunked": ([("Transfer-Encoding", "xchunked")], True),
}


@pytest.mark.parametrize("case_id", list(FRAMING_CASES))
def test_ambiguous_request_framing_is_refused(case_id, hostile_gateway, scripted):
    framing, chunked = FRAMING_CASES[case_id]
    script = scripted.script(scripted_ok)
    call = GET_X.replace("MARK", marker()).encode()
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(call), call) if chunked else call
    headers = [("x-api-key", "e2e-reader-key"), ("Accept", "application/json, text/event-stream"),
               ("Content-Type", "application/json"), *script.headers.items(),
               *[(k, str(len(body)) if v == "LEN" else v) for k, v in framing]]
    status, _, answer = raw_request(hostile_gateway.url("evil"), "POST", headers, body, content_length=False)
    assert status >= 400, (case_id, status, answer[:300])
    assert script.requests == [], f"{case_id}: forwarded"


def test_equivalent_content_types_are_forwarded_as_the_canonical_one(hostile_gateway, scripted):
    """A spelling the filter accepts is forwarded as exactly `application/json`: no upstream
    ever sees a parameter the filter did not read."""
    script = scripted.script(scripted_ok)
    for declared in ('Application/JSON; Charset="UTF-8"; foo=bar', "application/json;charset=utf-8"):
        r = post(hostile_gateway.url("evil"), GET_X.replace("MARK", marker()).encode(), READER,
                 {**LEGACY, **script.headers, "Content-Type": declared})
        assert r.status_code == 200, describe(r)
    assert [req.headers.get("content-type") for req in script.requests] == ["application/json"] * 2


# --------------------------------------------------------------------------- item 5: bodies on GET and DELETE


@pytest.mark.parametrize("method", ["GET", "DELETE"])
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_get_and_delete_with_a_body_are_refused(method, framing, hostile_gateway, scripted):
    """A GET or DELETE carrying a JSON-RPC body would reach the upstream unread."""
    script = scripted.script(scripted_ok)
    canary = marker()
    body = json.dumps(legacy_body("tools/call", {"name": "delete_customer", "arguments": {"id": canary}})).encode()
    headers = [("x-api-key", "e2e-reader-key"), ("Accept", "application/json, text/event-stream"),
               ("Content-Type", "application/json"), *script.headers.items()]
    if framing == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    status, _, answer = raw_request(hostile_gateway.url("evil"), method, headers, body, content_length=framing != "chunked")
    assert status == 400, (status, answer[:300])
    error = error_of(answer)
    assert error["code"] == INVALID_REQUEST and "must not carry a body" in error["message"], error
    assert script.requests == [], f"forwarded: {[r.body[:80] for r in script.requests]}"


def test_get_without_a_body_still_opens_the_stream(hostile_gateway, scripted):
    """Premise: the refusal is about the body, not about GET."""
    script = scripted.script(sse_response(b": ready\n\n"))
    r = httpx2.get(hostile_gateway.url("evil"), headers={**READER, "Accept": "text/event-stream", **script.headers},
                   timeout=15)
    assert r.status_code == 200, describe(r)
    assert [req.method for req in script.requests] == ["GET"]


# --------------------------------------------------------------------------- item 4: resource URIs

SECRET_FILES = {"/srv/private/x": "TOP-SECRET-private-x", "/srv/public/a.txt": "public-a"}


def file_server(req) -> list:
    """An upstream that resolves file URIs as file servers do: percent-decoding, backslashes
    as separators, path normalisation (`..`, `.`, `//`)."""
    uri = req.params.get("uri", "")
    path = urllib.parse.unquote(urllib.parse.unquote(urllib.parse.urlsplit(uri.replace("\\", "/")).path))
    path = posixpath.normpath(path)
    text = SECRET_FILES.get(path, f"no such file {path}")
    return json_response({"jsonrpc": "2.0", "id": req.id,
                          "result": {"contents": [{"uri": uri, "mimeType": "text/plain", "text": text}]}})


# Spellings a reader's allow rule `evil/file:///srv/public/*` matches as raw text, each of
# which a normalising upstream reads as /srv/private/x.
CLIMBING_URIS = [
    "file:///srv/public/../private/x",
    "file:///srv/public/%2e%2e/private/x",
    "file:///srv/public/%2E%2E/private/x",
    "file:///srv/public/.%2e/private/x",
    "file:///srv/public/..%2fprivate/x",
    "file:///srv/public/..%2Fprivate%2Fx",
    "file:///srv/public/..%5cprivate%5cx",
    "file:///srv/public/..\\private\\x",
    "file:///srv/public//../private/x",
    "file:///srv/public/./../private/x",
    "file:///srv/public/a/../../private/x",
    "file:///srv/public/..;/private/x",
    "file:///srv/public/%252e%252e/private/x",
    "file:///srv/public/.\t./private/x",
]

# Spellings of /srv/private/x that an auditor's deny rule `evil/file:///srv/private/*` does
# not match as raw text, each of which a normalising upstream reads as that file.
DENY_DODGING_URIS = [
    "FILE:///srv/private/x",
    "file://localhost/srv/private/x",
    "file://LOCALHOST/srv/private/x",
    "file:/srv/private/x",
    "file:///srv/%70rivate/x",
    "file:///srv/privat%65/x",
    "file:////srv/private/x",
    "file:///srv/public/../private/x",
]


def read_resource(gateway, creds: dict[str, str], uri: str, script, id: int = 1):
    return post(gateway.url("evil"), legacy_body("resources/read", {"uri": uri}, id=id), creds,
                {**LEGACY, **script.headers})


@pytest.mark.parametrize("uri", CLIMBING_URIS)
def test_resource_uris_cannot_climb_out_of_an_allowed_path(uri, hostile_gateway, scripted):
    script = scripted.script(file_server)
    r = read_resource(hostile_gateway, READER, uri, script, id=41)
    assert "TOP-SECRET" not in r.text, f"{uri} read the private file: {describe(r)}"
    assert r.status_code == 400, describe(r)
    error = jsonrpc_error(r)
    assert (error["id"], error["error"]["code"]) == (41, INVALID_PARAMS), describe(r)
    assert script.requests == [], f"{uri} reached the upstream"


@pytest.mark.parametrize("uri", DENY_DODGING_URIS)
def test_resource_deny_rules_hold_against_every_spelling(uri, hostile_gateway, scripted):
    script = scripted.script(file_server)
    r = read_resource(hostile_gateway, AUDITOR, uri, script, id=42)
    assert "TOP-SECRET" not in r.text, f"{uri} read the denied file: {describe(r)}"
    assert r.status_code in (400, POLICY_DENIED_STATUS), describe(r)
    assert jsonrpc_error(r)["error"]["code"] in (INVALID_PARAMS, FORBIDDEN), describe(r)
    assert script.requests == [], f"{uri} reached the upstream"


def test_canonical_resource_uris_still_work(hostile_gateway, scripted):
    """Premise: readers read public files; equivalent spellings are matched, not refused,
    and are forwarded as the client wrote them."""
    script = scripted.script(file_server)
    for uri in ("file:///srv/public/a.txt", "file://localhost/srv/%70ublic/a.txt"):
        r = read_resource(hostile_gateway, READER, uri, script)
        assert r.status_code == 200 and "public-a" in r.text, describe(r)
    assert [req.params["uri"] for req in script.requests] == ["file:///srv/public/a.txt", "file://localhost/srv/%70ublic/a.txt"]
    # The auditor's deny rule leaves other files alone.
    assert read_resource(hostile_gateway, AUDITOR, "file:///srv/public/a.txt", script).status_code == 200


def test_resource_lists_hide_items_spelled_around_the_policy(hostile_gateway, scripted):
    """`resources/list` items are matched as reads are: a private file listed under a public
    spelling is removed."""
    items = [{"uri": "file:///srv/public/a.txt", "name": "a"},
             {"uri": "file:///srv/public/../private/x", "name": "x"},
             {"uri": "file:///srv/public/%2e%2e/private/y", "name": "y"}]
    script = scripted.script(lambda req: json_response({"jsonrpc": "2.0", "id": req.id, "result": {"resources": items}}))
    r = post(hostile_gateway.url("evil"), legacy_body("resources/list", {}, id=5), READER, {**LEGACY, **script.headers})
    assert r.status_code == 200, describe(r)
    assert [i["name"] for i in r.json()["result"]["resources"]] == ["a"], describe(r)


# --------------------------------------------------------------------------- item 5: methods that name targets

# (method, params, who) that name something the caller may not use.
UNGOVERNED_CASES: dict[str, tuple[str, dict, dict[str, str]]] = {
    "completion-ref-prompt": ("completion/complete", {"ref": {"type": "ref/prompt", "name": "secret_plan"},
                                                      "argument": {"name": "q", "value": ""}}, READER),
    "completion-ref-resource": ("completion/complete", {"ref": {"type": "ref/resource", "uri": "file:///srv/private/{name}"},
                                                        "argument": {"name": "name", "value": ""}}, READER),
    "subscribe-private": ("resources/subscribe", {"uri": "file:///srv/private/x"}, READER),
    "unsubscribe-private": ("resources/unsubscribe", {"uri": "file:///srv/private/x"}, READER),
    "subscribe-climbing": ("resources/subscribe", {"uri": "file:///srv/public/../private/x"}, READER),
    "subscribe-deny-dodging": ("resources/subscribe", {"uri": "file://localhost/srv/private/x"}, AUDITOR),
}


@pytest.mark.parametrize("case_id", list(UNGOVERNED_CASES))
def test_methods_that_name_a_target_are_governed(case_id, hostile_gateway, scripted):
    method, params, creds = UNGOVERNED_CASES[case_id]
    script = scripted.script(scripted_ok)
    r = post(hostile_gateway.url("evil"), legacy_body(method, params, id=51), creds, {**LEGACY, **script.headers})
    assert r.status_code in (400, POLICY_DENIED_STATUS), describe(r)
    error = jsonrpc_error(r)
    assert error["id"] == 51 and error["error"]["code"] in (FORBIDDEN, INVALID_PARAMS), describe(r)
    assert script.requests == [], f"{case_id} reached the upstream"


def test_modern_subscriptions_name_only_allowed_resources(hostile_gateway, scripted):
    script = scripted.script(scripted_ok)
    params = {"notifications": {"resourcesListChanged": True,
                                "resourceSubscriptions": ["file:///srv/public/a.txt", "file:///srv/private/x"]}}
    r = post(hostile_gateway.url("evil"), modern_body("subscriptions/listen", params, id=52), READER,
             {**modern_headers("subscriptions/listen"), **script.headers})
    assert r.status_code == POLICY_DENIED_STATUS, describe(r)
    assert jsonrpc_error(r)["error"]["code"] == FORBIDDEN
    assert script.requests == []


def test_allowed_targets_of_those_methods_pass(hostile_gateway, scripted):
    """Premise: completions for a prompt the caller may use, and subscriptions to readable
    resources, are forwarded."""
    script = scripted.script(lambda req: json_response({"jsonrpc": "2.0", "id": req.id,
                                                         "result": {"completion": {"values": []}}}))
    for method, params in [
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "public_summary"}, "argument": {"name": "q", "value": ""}}),
        ("completion/complete", {"ref": {"type": "ref/resource", "uri": "file:///srv/public/{name}"},
                                 "argument": {"name": "name", "value": ""}}),
        ("resources/subscribe", {"uri": "file:///srv/public/a.txt"}),
    ]:
        r = post(hostile_gateway.url("evil"), legacy_body(method, params), READER, {**LEGACY, **script.headers})
        assert r.status_code == 200, describe(r)
    assert [req.rpc_method for req in script.requests] == ["completion/complete", "completion/complete", "resources/subscribe"]


TASK_CASES: dict[str, tuple[str, dict]] = {
    "tasks-get": ("tasks/get", {"taskId": "t-1"}),
    "tasks-result": ("tasks/result", {"taskId": "t-1"}),
    "tasks-list": ("tasks/list", {}),
    "tasks-cancel": ("tasks/cancel", {"taskId": "t-1"}),
    "tasks-update": ("tasks/update", {"taskId": "t-1", "inputResponses": {}}),
    "task-augmented-call": ("tools/call", {"name": "get_x", "arguments": {}, "task": {"ttl": 60000}}),
}


@pytest.mark.parametrize("case_id", list(TASK_CASES))
def test_tasks_are_refused(case_id, hostile_gateway, scripted):
    """A task's result is fetched by task id alone, which the gateway cannot bind to the
    caller and tool that created it: it could carry another caller's, or a denied tool's,
    output past that tool's redaction. Tasks are refused, never forwarded."""
    method, params = TASK_CASES[case_id]
    script = scripted.script(scripted_ok)
    r = post(hostile_gateway.url("evil"), legacy_body(method, params, id=53), READER, {**LEGACY, **script.headers})
    assert r.status_code == 400, describe(r)
    error = jsonrpc_error(r)
    assert (error["id"], error["error"]["code"]) == (53, METHOD_NOT_FOUND), describe(r)
    assert "not supported through the gateway" in error["error"]["message"]
    assert script.requests == []


@pytest.mark.parametrize("framing", ["json", "sse"])
@pytest.mark.parametrize("era", ["legacy", "modern"])
def test_a_server_advertising_tasks_is_not_believed(framing, era, hostile_gateway, scripted):
    """Tasks are refused, so the `tasks` capability a server advertises is withheld from its
    `initialize` (2025-11-25) or `server/discover` (2026-07-28) answer, in a JSON body or an
    SSE event, every other byte as the server sent it: what the client is told is what the
    gateway carries."""
    capabilities = '{"tools":{"listChanged":true},"tasks":{"list":{},"requests":{"tools":{"call":{}}}},"logging":{}}'

    def answer(req):
        text = f'{{"jsonrpc":"2.0","id":{json.dumps(req.id)},"result":{{"protocolVersion":"2025-11-25","capabilities":{capabilities},"serverInfo":{{"name":"evil","version":"1.0"}}}}}}'
        if framing == "sse":
            return sse_response(sse_event(text))
        return json_response(None, raw=text.encode())

    script = scripted.script(answer)
    if era == "legacy":
        init = {"protocolVersion": LEGACY_VERSION, "capabilities": {}, "clientInfo": {"name": "c", "version": "0"}}
        r = post(hostile_gateway.url("evil"), legacy_body("initialize", init, id=71), READER, {**LEGACY, **script.headers})
    else:
        r = post(hostile_gateway.url("evil"), modern_body("server/discover", {}, id=71), READER,
                 {**modern_headers("server/discover"), **script.headers})
    assert r.status_code == 200, describe(r)
    messages = response_messages(r)
    assert len(messages) == 1, describe(r)
    assert messages[0]["result"]["capabilities"] == {"tools": {"listChanged": True}, "logging": {}}, describe(r)
    expected = '"capabilities":{"tools":{"listChanged":true},"logging":{}}'
    assert expected in r.text, describe(r)
    assert len(script.requests) == 1


# --------------------------------------------------------------------------- item 7: routing and Mcp-Param-* headers


def test_mirrored_card_number_is_masked_in_its_header_too(hostile_gateway, scripted):
    """`evil/pay*` arguments are masked for card numbers: the `Mcp-Param-Card` header that
    mirrors the argument must carry the masked value, never the number, and still agree
    with the body for an upstream that validates them."""
    script = scripted.script(scripted_ok)
    body = modern_body("tools/call", {"name": "pay_invoice", "arguments": {"card": CARD, "amount": 25}}, id=61)
    r = post(hostile_gateway.url("evil"), body, ADMIN,
             {**modern_headers("tools/call", "pay_invoice"), "Mcp-Param-Card": CARD, "Mcp-Param-Amount": "25",
              **script.headers})
    assert r.status_code == 200, describe(r)
    [req] = script.requests
    forwarded = json.dumps(req.headers) + req.body.decode()
    # The whole number, spaced or not: a 4-digit fragment can occur by chance in a request id.
    for fragment in (CARD, CARD.replace(" ", "")):
        assert fragment not in forwarded, f"card number reached the upstream: {forwarded}"
    assert req.params["arguments"]["card"] == "[CREDIT_CARD]"
    assert (req.headers.get("mcp-param-card"), req.headers.get("mcp-param-amount")) == ("[CREDIT_CARD]", "25")


ROUTING_MISMATCH_CASES: dict[str, tuple[dict, dict[str, str]]] = {
    # A header that names a value the body does not carry: whoever routes on it is fooled.
    "param-not-in-arguments": (
        modern_body("tools/call", {"name": "get_x", "arguments": {"region": "eu"}}, id=62),
        {**modern_headers("tools/call", "get_x"), "Mcp-Param-Region": "us"},
    ),
    "param-on-a-list": (modern_body("tools/list", {}, id=62), {**modern_headers("tools/list"), "Mcp-Param-Region": "eu"}),
    "param-bad-base64": (
        modern_body("tools/call", {"name": "get_x", "arguments": {"region": "eu"}}, id=62),
        {**modern_headers("tools/call", "get_x"), "Mcp-Param-Region": "=?base64?ZX*=?="},
    ),
    "name-on-a-method-that-names-nothing": (
        modern_body("tools/list", {}, id=62), {**modern_headers("tools/list"), "Mcp-Name": "delete_customer"},
    ),
    "method-on-a-response": ({"jsonrpc": "2.0", "id": 62, "result": {}}, {"Mcp-Method": "tools/call"}),
    "name-on-a-response": ({"jsonrpc": "2.0", "id": 62, "result": {}}, {"Mcp-Name": "delete_customer"}),
    "name-on-a-notification": (
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"MCP-Protocol-Version": LEGACY_VERSION, "Mcp-Name": "delete_customer"},
    ),
}


@pytest.mark.parametrize("case_id", list(ROUTING_MISMATCH_CASES))
def test_routing_headers_the_body_contradicts_are_refused(case_id, hostile_gateway, scripted):
    body, headers = ROUTING_MISMATCH_CASES[case_id]
    script = scripted.script(scripted_ok)
    r = post(hostile_gateway.url("evil"), body, ADMIN, {**headers, **script.headers})
    assert r.status_code == 400, describe(r)
    assert jsonrpc_error(r)["error"]["code"] == HEADER_MISMATCH, describe(r)
    assert script.requests == [], f"{case_id} reached the upstream"
