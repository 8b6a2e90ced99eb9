"""Authentication at the gateway: JWT (RS256/ES256/HS256) and API keys; everything else is 401.

Rejections must carry `WWW-Authenticate: Bearer ... resource_metadata="..."` and
a JSON-RPC error (-32001), and must not reach the upstream.
"""

from __future__ import annotations

import time

import pytest

from e2e_support import (
    AUDIENCE,
    ISSUER_HS,
    ISSUER_JWKS,
    RESOURCE_METADATA,
    UNAUTHENTICATED,
    VISIBLE_TOOLS,
    api_key,
    api_key_sha256,
    bearer,
    describe,
    jsonrpc_error,
    legacy_body,
    marker,
    modern_body,
    modern_headers,
    post,
)

pytestmark = [pytest.mark.e2e, pytest.mark.auth]


def tools_list(gateway, server: str, creds: dict[str, str]):
    return post(gateway.url(server), modern_body("tools/list", {}, id=1), creds, modern_headers("tools/list"))


def visible(response) -> set[str]:
    assert response.status_code == 200, describe(response)
    return {tool["name"] for tool in response.json()["result"]["tools"]}


# --------------------------------------------------------------------------- accepted credentials


@pytest.mark.parametrize("alg", ["RS256", "ES256", "HS256"])
@pytest.mark.parametrize("role", ["reader", "admin"])
def test_jwt_accepted_and_roles_applied(alg, role, gateway, keys):
    response = tools_list(gateway, "docs", bearer(keys.token(f"user-{alg}", [role], alg=alg)))
    assert visible(response) == VISIBLE_TOOLS[(role, "docs")]


@pytest.mark.parametrize("role", ["reader", "admin"])
def test_api_key_accepted_and_roles_applied(role, gateway):
    assert visible(tools_list(gateway, "docs", api_key(f"e2e-{role}-key"))) == VISIBLE_TOOLS[(role, "docs")]


def test_expired_within_leeway_accepted(gateway, keys):
    """exp 10 s ago is inside the ~30 s clock-skew leeway."""
    now = int(time.time())
    token = keys.token("late", ["reader"], exp=now - 10, iat=now - 600, nbf=now - 600)
    assert visible(tools_list(gateway, "docs", bearer(token))) == VISIBLE_TOOLS[("reader", "docs")]


def test_audience_list_claim_accepted(gateway, keys):
    token = keys.token("multi-aud", ["reader"], aud=["someone-else", AUDIENCE])
    assert visible(tools_list(gateway, "docs", bearer(token))) == VISIBLE_TOOLS[("reader", "docs")]


# --------------------------------------------------------------------------- rejected credentials


def _bad_credentials(keys) -> dict[str, dict[str, str]]:
    now = int(time.time())
    return {
        "none": {},
        "empty-bearer": {"Authorization": "Bearer"},
        "not-a-jwt": bearer("not-a-jwt"),
        "basic-scheme": {"Authorization": "Basic ZTJlOmUyZS1hZG1pbi1rZXk="},
        "expired": bearer(keys.token("old", ["admin"], exp=now - 300, iat=now - 900, nbf=now - 900)),
        "not-yet-valid": bearer(keys.token("early", ["admin"], nbf=now + 300)),
        "wrong-audience": bearer(keys.token("x", ["admin"], aud="some-other-api")),
        "missing-audience": bearer(keys.token("x", ["admin"], aud=None)),
        "wrong-issuer": bearer(keys.token("x", ["admin"], iss="https://evil.example")),
        "hs256-claiming-jwks-issuer": bearer(keys.token("x", ["admin"], alg="HS256", iss=ISSUER_JWKS)),
        "rs256-claiming-hs-issuer": bearer(keys.token("x", ["admin"], alg="RS256", iss=ISSUER_HS)),
        "bad-signature": bearer(keys.forged_rs256()),
        "unknown-kid": bearer(keys.forged_rs256(kid="no-such-kid")),
        "tampered-payload": bearer(_tamper(keys.token("x", ["reader"]))),
        "alg-none": bearer(keys.alg_none()),
        "rs256-to-hs256-key-confusion": bearer(keys.hs256_with_rsa_public_key()),
        "hs256-wrong-secret": bearer(_hs256_wrong_secret(keys)),
        "wrong-api-key": api_key("e2e-admin-key-nope"),
        "api-key-hash-as-key": api_key(api_key_sha256("e2e-admin-key")),
    }


def _tamper(token: str) -> str:
    """Swap in a payload granting admin, keep the original signature."""
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["admin"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256_wrong_secret(keys) -> str:
    import jwt

    claims = keys.claims("x", ["admin"], ISSUER_HS)
    return jwt.encode(claims, "definitely-not-the-secret-000000000000", algorithm="HS256")


BAD_CREDENTIAL_CASES = [
    "none",
    "empty-bearer",
    "not-a-jwt",
    "basic-scheme",
    "expired",
    "not-yet-valid",
    "wrong-audience",
    "missing-audience",
    "wrong-issuer",
    "hs256-claiming-jwks-issuer",
    "rs256-claiming-hs-issuer",
    "bad-signature",
    "unknown-kid",
    "tampered-payload",
    "alg-none",
    "rs256-to-hs256-key-confusion",
    "hs256-wrong-secret",
    "wrong-api-key",
    "api-key-hash-as-key",
]


@pytest.mark.parametrize("case", BAD_CREDENTIAL_CASES)
@pytest.mark.parametrize("server", ["crm", "docs"])
def test_bad_credentials_rejected(case, server, gateway, upstreams, keys):
    creds = _bad_credentials(keys)[case]
    canary = marker()
    body = legacy_body(
        "initialize",
        {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": canary, "version": "0"}},
        id=5,
    )
    response = post(gateway.url(server), body, creds)

    assert response.status_code == 401, f"{case}: expected 401, got {describe(response)}"
    challenge = response.headers.get("www-authenticate", "")
    assert challenge.lower().startswith("bearer"), f"{case}: WWW-Authenticate={challenge!r}"
    assert f'resource_metadata="{RESOURCE_METADATA}"' in challenge, f"{case}: WWW-Authenticate={challenge!r}"
    error = jsonrpc_error(response)
    assert error["error"]["code"] == UNAUTHENTICATED, f"{case}: {describe(response)}"
    time.sleep(0.05)
    assert not upstreams[server].log.containing(canary), f"{case}: unauthenticated request reached {server}"


def test_unauthenticated_modern_tools_call_not_forwarded(gateway, crm):
    canary = marker()
    response = post(
        gateway.url("crm"),
        modern_body("tools/call", {"name": "get_customer", "arguments": {"id": canary}}, id=6),
        {},
        modern_headers("tools/call", "get_customer"),
    )
    assert response.status_code == 401, describe(response)
    assert jsonrpc_error(response)["error"]["code"] == UNAUTHENTICATED
    assert not crm.log.containing(canary)


def test_get_stream_requires_credentials(gateway, crm):
    """The legacy GET SSE stream is also behind authentication."""
    import httpx2

    mark = crm.log.mark()
    response = httpx2.get(gateway.url("crm"), headers={"Accept": "text/event-stream"}, timeout=10)
    assert response.status_code == 401, describe(response)
    assert "resource_metadata=" in response.headers.get("www-authenticate", "")
    assert not [e for e in crm.log.since(mark) if e.get("http_method") == "GET"]


# --------------------------------------------------------------------------- consumers are namespaced by issuer


TWIN_QUOTA = """
quotas:
  - name: twins
    match: { tools: ["docs/search_*"] }
    quota: 1/h
    key: consumer
"""


@pytest.fixture(scope="module")
def twin_gateway(tmp_path_factory, keys, upstreams, runtime):
    """The test registry (two JWT issuers) with a 1/h quota per consumer on docs/search_*."""
    from e2e_support import running_gateway

    workdir = tmp_path_factory.mktemp("twin-gateway")
    crm, docs = upstreams["crm"].url, upstreams["docs"].url
    with running_gateway(workdir, keys, crm, docs, extra=TWIN_QUOTA, runtime=runtime) as gw:
        yield gw


def test_same_subject_from_two_issuers_is_two_consumers(twin_gateway, keys, docs):
    """Two identity providers' users with the same `sub` must not share a quota (nor
    in-flight slots, nor an audit identity): one's call does not spend the other's."""
    sub = marker()
    search = {"name": "search_docs", "arguments": {"query": "policy"}}
    first = post(twin_gateway.url("docs"), legacy_body("tools/call", search, id=1), bearer(keys.token(sub, ["reader"])))
    assert first.status_code == 200, describe(first)
    # The same issuer and subject again: its one call an hour is spent (the premise).
    again = post(twin_gateway.url("docs"), legacy_body("tools/call", search, id=2), bearer(keys.token(sub, ["reader"])))
    assert again.status_code == 429, describe(again)
    twin = post(twin_gateway.url("docs"), legacy_body("tools/call", search, id=3),
                bearer(keys.token(sub, ["reader"], alg="HS256")))
    assert twin.status_code == 200, f"the other issuer's {sub} was charged to the first one's quota: {describe(twin)}"
