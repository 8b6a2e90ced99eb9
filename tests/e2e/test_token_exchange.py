"""The caller's own identity upstream: OAuth 2.0 Token Exchange (RFC 8693) through real Envoy.

Topology (both filter builds, Envoy with 2 workers):

    pytest ──▶ Envoy + meshgate filter ──▶ docs_server.py (logs every request's headers)
                      │ callout (cluster meshgate-token-<server>;
                      │ Envoy's credential_injector adds client_secret_basic from SDS)
                      ▼
               token_endpoint.py (in this process: checks grant type, subject token and
               type, audience, resource, client authentication; counts calls; fails on
               command; issues opaque tokens with per-user scopes)

Servers in the registry: `docs` (exchange), `mixed` (exchange, API-key callers get the
static credential), `down` (token endpoint on a closed port), `wrongclient` (a wrong
client secret). Every test uses its own users, so the caches of earlier tests (shared by
the whole Envoy) never answer for it.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from e2e_support import (
    AUDIENCE,
    ISSUER_JWKS,
    Gateway,
    Keys,
    Upstream,
    api_key,
    api_key_yaml,
    base_headers,
    bearer,
    describe,
    is_catalog_discovery,
    legacy_session,
    modern_client,
    jsonrpc_error,
    legacy_body,
    marker,
    post,
    start_gateway,
    start_upstream,
    stop_gateway,
)
from pki_support import Issued, Pki
from token_endpoint import TokenEndpoint


def astuple_issued(issued: Issued) -> tuple[Path, Path]:
    return issued.cert, issued.key

pytestmark = [pytest.mark.e2e]

UPSTREAM_UNAVAILABLE = -32004
CLIENT_ID = "meshgate e2e/client"  # a space and a slash: form-encoded in client_secret_basic
CLIENT_SECRET = "s3cret:with+special&chars"
WRONG_SECRET = "not-the-secret"
STATIC_CREDENTIAL = "static-service-credential-e2e"
TOKEN_AUDIENCE = "docs-api"
RESOURCE = "https://docs.e2e.test/mcp"
BOT_KEY = "exchange-bot-key"
ENV = {"E2E_IDP_SECRET": CLIENT_SECRET, "E2E_WRONG_SECRET": WRONG_SECRET, "E2E_STATIC": STATIC_CREDENTIAL}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry(
    docs_url: str, crm_url: str, endpoint: TokenEndpoint, down_port: int, secure: TokenEndpoint, rotating: TokenEndpoint
) -> str:
    client = "{ client_id: " + json.dumps(CLIENT_ID) + ", secret_env: E2E_IDP_SECRET }"
    target = f'audience: {TOKEN_AUDIENCE}\n        resource: ["{RESOURCE}"]'
    return f"""\
listener: {{ address: 127.0.0.1, port: 0 }}
admin: {{ port: 0 }}
servers:
  - name: docs
    url: {docs_url}
    credentials:
      exchange:
        token_endpoint: {endpoint.url}
        client_auth: {client}
        {target}
        scope: docs.read docs.write
        timeout: 1s
  - name: crm
    url: {crm_url}
    timeout: 60s
    credentials:
      exchange:
        token_endpoint: {endpoint.url}
        client_auth: {client}
        {target}
        scope: docs.read
  - name: mixed
    url: {docs_url}
    credentials:
      value_env: E2E_STATIC
      prefix: "Bearer "
      exchange:
        token_endpoint: {endpoint.url}
        client_auth: {client}
        {target}
        scope: docs.read
        api_key_consumers: static
  - name: down
    url: {docs_url}
    credentials:
      exchange:
        token_endpoint: http://127.0.0.1:{down_port}/oauth2/token
        client_auth: {client}
        {target}
        timeout: 1s
  - name: secure
    url: {docs_url}
    credentials:
      exchange:
        token_endpoint: {secure.url}
        tls: {{ ca_file: idp-ca.pem }}
        client_auth: {client}
        {target}
  - name: untrusted
    url: {docs_url}
    credentials:
      exchange:
        token_endpoint: {secure.url}
        tls: {{ ca_file: rogue-ca.pem }}
        client_auth: {client}
        {target}
  - name: rotating
    url: {docs_url}
    credentials:
      exchange:
        token_endpoint: {rotating.url}
        client_auth: {{ client_id: {json.dumps(CLIENT_ID)}, secret_file: idp.secret }}
        {target}
  - name: wrongclient
    url: {docs_url}
    credentials:
      exchange:
        token_endpoint: {endpoint.url}
        client_auth: {{ client_id: {json.dumps(CLIENT_ID)}, secret_env: E2E_WRONG_SECRET }}
        {target}
auth:
  jwt:
    - issuer: {ISSUER_JWKS}
      audiences: [{AUDIENCE}]
      jwks_file: jwks.json
  api_keys:
{api_key_yaml("exchange-bot", BOT_KEY, ["reader"])}
policy:
  roles:
    reader: {{ allow: ["*"] }}
observability:
  access_log: {{ path: audit.log }}
envoy: {{ concurrency: 2, log_level: info }}
"""


@dataclass
class Setup:
    gateway: Gateway
    endpoint: TokenEndpoint
    secure: TokenEndpoint  # the same, over TLS (server `secure`; `untrusted` trusts another CA)
    rotating: TokenEndpoint  # server `rotating`, whose client secret is the file idp.secret
    upstream: Upstream
    crm: Upstream
    keys: Keys
    runtime: str

    def user(self, name: str, scopes: set[str] | None = None) -> tuple[str, str]:
        """A fresh user (sub, JWT) of this test, with `scopes` at the token endpoint."""
        sub = f"{name}-{self.runtime}-{marker()}"
        if scopes is not None:
            self.endpoint.user_scopes[sub] = scopes
        return sub, self.keys.token(sub=sub, roles=["reader"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, keys: Keys, runtime: str) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp(f"exchange-{runtime}")

    def token_endpoint() -> TokenEndpoint:
        return TokenEndpoint(
            client_id=CLIENT_ID,
            client_secret=CLIENT_SECRET,
            verify_key=keys.rsa.public_key(),
            issuer=ISSUER_JWKS,
            jwt_audience=AUDIENCE,
            audience=TOKEN_AUDIENCE,
            resources=[RESOURCE],
            user_scopes={},
            default_scopes={"docs.read", "docs.write"},
        )

    endpoint = token_endpoint().serve()
    idp_ca = Pki(workdir, "idp")
    Pki(workdir, "rogue")
    secure = token_endpoint().serve(astuple_issued(idp_ca.issue("idp", dns=["localhost"], server=True)))
    rotating = token_endpoint().serve()
    (workdir / "idp.secret").write_text(CLIENT_SECRET + "\n")
    upstream = start_upstream(f"exchange-docs-{runtime}", "docs_server.py", workdir)
    crm = start_upstream(f"exchange-crm-{runtime}", "crm_server.py", workdir)
    gw = None
    try:
        (workdir / "jwks.json").write_text(json.dumps(keys.jwks()))
        path = workdir / "registry.yaml"
        path.write_text(registry(upstream.url, crm.url, endpoint, closed_port(), secure, rotating))
        gw = start_gateway(path, workdir, env=ENV, runtime=runtime)
        yield Setup(gw, endpoint, secure, rotating, upstream, crm, keys, runtime)
    finally:
        if gw is not None:
            stop_gateway(gw)
        upstream.proc.stop()
        crm.proc.stop()
        endpoint.stop()
        secure.stop()
        rotating.stop()


def call(gw: Gateway, server: str, credentials: dict[str, str], tag: str, id: int = 1) -> httpx2.Response:
    body = legacy_body("tools/call", {"name": "search_docs", "arguments": {"query": tag}}, id=id)
    return post(gw.url(server), body, credentials, timeout=20)


def reached(setup: Setup, tag: str) -> list[dict]:
    """The upstream requests that carried `tag` (tools/call bodies)."""
    return setup.upstream.log.containing(tag)


def assert_refused_upstream_credential(response: httpx2.Response, server: str, request_id: int = 1) -> str:
    assert response.status_code == 200, describe(response)
    body = jsonrpc_error(response)
    assert body["id"] == request_id, describe(response)
    assert body["error"]["code"] == UPSTREAM_UNAVAILABLE, describe(response)
    message = body["error"]["message"]
    assert message.startswith(f'the upstream credential for server "{server}" could not be obtained: '), message
    return message


def prometheus(gw: Gateway) -> dict[tuple[str, frozenset], float]:
    text = httpx2.get(f"{gw.admin}/stats/prometheus", timeout=10).text
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^(meshgate_\w+)\{(.*)\} (\S+)$", line)
        if m:
            samples[(m.group(1), frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2))))] = float(m.group(3))
    return samples


def token_metric(gw: Gateway, server: str, outcome: str) -> float:
    return prometheus(gw).get(
        ("meshgate_upstream_token", frozenset({("server", server), ("outcome", outcome)})), 0.0
    )


def eventually(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)


# --------------------------------------------------------------------------- per-user tokens


def test_two_users_get_their_own_upstream_tokens_with_their_own_scopes(setup: Setup) -> None:
    alice, alice_jwt = setup.user("alice", {"docs.read", "docs.write"})
    bob, bob_jwt = setup.user("bob", {"docs.read"})
    seen = {}
    for sub, token in ((alice, alice_jwt), (bob, bob_jwt)):
        tag = marker()
        response = call(setup.gateway, "docs", bearer(token), tag)
        assert response.status_code == 200 and "error" not in response.text, describe(response)
        [entry] = reached(setup, tag)
        authorization = entry["headers"]["authorization"]
        issued = setup.endpoint.who(authorization)
        assert issued is not None, f"the upstream got a token the endpoint never issued: {authorization[:20]}…"
        assert issued.sub == sub
        assert issued.audience == TOKEN_AUDIENCE and issued.resources == [RESOURCE]
        seen[sub] = (authorization, issued.scope)
        # The user's own token never reaches the upstream, in any header or the body.
        assert token not in json.dumps(entry), "the caller's JWT reached the upstream"
    assert seen[alice][0] != seen[bob][0]
    assert seen[alice][1] == "docs.read docs.write"
    assert seen[bob][1] == "docs.read"
    # The endpoint saw exactly the callers' JWTs as subject tokens (and checked them).
    assert alice_jwt in setup.endpoint.subject_tokens_seen and bob_jwt in setup.endpoint.subject_tokens_seen


@pytest.mark.anyio
async def test_the_official_sdk_works_through_token_exchange_in_both_eras(setup: Setup) -> None:
    """A real peer: a session (initialize, the GET stream, calls, DELETE) on the
    session-based `crm` and a 2026-07-28 client on `docs`; every request the upstreams get
    carries the user's exchanged token, one exchange per server."""
    ivy, ivy_jwt = setup.user("ivy")
    crm_mark = len(setup.crm.log.all_entries())
    async with legacy_session(setup.gateway.url("crm"), bearer(ivy_jwt)) as session:
        tools = await session.list_tools()
        assert "get_customer" in [t.name for t in tools.tools]
        result = await session.call_tool("get_customer", {"id": "c-001"})
        assert not result.is_error, result
    async with modern_client(setup.gateway.url("docs"), bearer(ivy_jwt)) as client:
        result = await client.call_tool("search_docs", {"query": "exchange"})
        assert not result.is_error, result
    crm_entries = [e for e in setup.crm.log.all_entries()[crm_mark:] if not is_catalog_discovery(e)]
    methods = {e.get("http_method") for e in crm_entries}
    assert "POST" in methods, methods
    for entry in crm_entries:
        issued = setup.endpoint.who(entry["headers"].get("authorization", ""))
        assert issued is not None and issued.sub == ivy, (entry.get("http_method"), entry["headers"].keys())
        assert ivy_jwt not in json.dumps(entry)
    assert setup.endpoint.count(ivy) == 2, "one exchange per server for the whole session"


# --------------------------------------------------------------------------- cache


def test_one_exchange_per_user_and_server_also_under_32_concurrent_calls(setup: Setup) -> None:
    carol, carol_jwt = setup.user("carol")
    tag = marker()
    hits_before = token_metric(setup.gateway, "docs", "cache_hit")

    async def one(i: int) -> httpx2.Response:
        # A client (connection) per call, so Envoy spreads them over both workers.
        async with httpx2.AsyncClient(timeout=30) as client:
            body = legacy_body("tools/call", {"name": "search_docs", "arguments": {"query": f"{tag}-{i}"}}, id=i)
            return await client.post(setup.gateway.url("docs"), content=json.dumps(body), headers=base_headers(bearer(carol_jwt)))

    async def race() -> list[httpx2.Response]:
        return await asyncio.gather(*(one(i) for i in range(32)))

    responses = asyncio.run(race())
    for r in responses:
        assert r.status_code == 200 and "error" not in r.text, describe(r)
    assert setup.endpoint.count(carol) == 1, f"{setup.endpoint.count(carol)} exchanges for 32 concurrent calls"
    entries = reached(setup, tag)
    assert len(entries) == 32
    assert len({e["headers"]["authorization"] for e in entries}) == 1
    # Later calls are cache hits: still one exchange.
    for i in range(5):
        assert call(setup.gateway, "docs", bearer(carol_jwt), f"{tag}-later-{i}").status_code == 200
    assert setup.endpoint.count(carol) == 1
    # The same user on another server is another exchange (own audience/scope, own cache key).
    assert call(setup.gateway, "mixed", bearer(carol_jwt), f"{tag}-mixed").status_code == 200
    assert setup.endpoint.count(carol) == 2

    def counted() -> None:
        assert token_metric(setup.gateway, "docs", "cache_hit") - hits_before >= 36
        assert token_metric(setup.gateway, "docs", "exchanged") >= 1

    eventually(counted)


def test_expiry_triggers_a_new_exchange(setup: Setup) -> None:
    dave, dave_jwt = setup.user("dave")
    # 2 s lifetime, shorter than the 30 s refresh skew: used for half of it (1 s).
    setup.endpoint.lifetimes[dave] = 2
    tag = marker()
    assert call(setup.gateway, "docs", bearer(dave_jwt), f"{tag}-1").status_code == 200
    assert call(setup.gateway, "docs", bearer(dave_jwt), f"{tag}-2").status_code == 200
    assert setup.endpoint.count(dave) == 1
    time.sleep(1.3)
    assert call(setup.gateway, "docs", bearer(dave_jwt), f"{tag}-3").status_code == 200
    assert setup.endpoint.count(dave) == 2
    tokens = [reached(setup, f"{tag}-{i}")[0]["headers"]["authorization"] for i in (1, 2, 3)]
    assert tokens[0] == tokens[1] != tokens[2]


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("failure", ["invalid_grant", "invalid_scope", "server_error"])
def test_a_refusing_token_endpoint_fails_the_call_closed(setup: Setup, failure: str) -> None:
    erin, erin_jwt = setup.user(f"erin-{failure}")
    setup.endpoint.failures[erin] = failure
    tag = marker()
    response = call(setup.gateway, "docs", bearer(erin_jwt), tag, id=7)
    message = assert_refused_upstream_credential(response, "docs", 7)
    assert f"({failure})" in message, message
    assert erin_jwt not in response.text and "refused on command" not in response.text
    assert reached(setup, tag) == [], "nothing reaches the upstream"
    # Fixed at the IdP: the next call makes a new exchange and goes through.
    del setup.endpoint.failures[erin]
    assert call(setup.gateway, "docs", bearer(erin_jwt), f"{tag}-again").status_code == 200
    assert len(reached(setup, f"{tag}-again")) == 1


def test_a_slow_token_endpoint_is_bounded_by_the_timeout(setup: Setup) -> None:
    frank, frank_jwt = setup.user("frank")
    setup.endpoint.failures[frank] = "slow"  # answers after 3 s; the registry's timeout is 1 s
    tag = marker()
    started = time.monotonic()
    response = call(setup.gateway, "docs", bearer(frank_jwt), tag)
    elapsed = time.monotonic() - started
    message = assert_refused_upstream_credential(response, "docs")
    assert "did not answer" in message, message  # native: Envoy's 504; wasm: no answer
    assert elapsed < 2.5, f"the call waited {elapsed:.1f} s"
    assert reached(setup, tag) == []


def test_an_unreachable_token_endpoint_and_a_wrong_client_secret_fail_closed(setup: Setup) -> None:
    grace, grace_jwt = setup.user("grace")
    tag = marker()
    message = assert_refused_upstream_credential(call(setup.gateway, "down", bearer(grace_jwt), tag), "down")
    assert "unreachable" in message or "did not answer" in message, message
    response = call(setup.gateway, "wrongclient", bearer(grace_jwt), f"{tag}-wrong")
    message = assert_refused_upstream_credential(response, "wrongclient")
    assert "(invalid_client)" in message, message
    assert WRONG_SECRET not in response.text and CLIENT_SECRET not in response.text
    assert "client authentication failed" in setup.endpoint.rejected
    assert reached(setup, tag) == [] and reached(setup, f"{tag}-wrong") == []


def test_api_key_consumers_are_refused_or_get_the_static_fallback(setup: Setup) -> None:
    tag = marker()
    response = call(setup.gateway, "docs", api_key(BOT_KEY), tag)
    assert response.status_code == 200, describe(response)
    error = jsonrpc_error(response)["error"]
    assert "needs the caller's bearer token" in error["message"], error
    assert reached(setup, tag) == []
    response = call(setup.gateway, "mixed", api_key(BOT_KEY), f"{tag}-mixed")
    assert response.status_code == 200 and "error" not in response.text, describe(response)
    [entry] = reached(setup, f"{tag}-mixed")
    assert entry["headers"]["authorization"] == f"Bearer {STATIC_CREDENTIAL}"
    assert "x-api-key" not in entry["headers"]


def test_the_token_endpoint_is_reached_over_verified_tls(setup: Setup) -> None:
    judy, judy_jwt = setup.user("judy")
    tag = marker()
    response = call(setup.gateway, "secure", bearer(judy_jwt), tag)
    assert response.status_code == 200 and "error" not in response.text, describe(response)
    [entry] = reached(setup, tag)
    issued = setup.secure.who(entry["headers"]["authorization"])
    assert issued is not None and issued.sub == judy
    assert setup.secure.count(judy) == 1
    # The same endpoint with a CA that did not sign its certificate: no exchange, fail closed.
    response = call(setup.gateway, "untrusted", bearer(judy_jwt), f"{tag}-untrusted")
    message = assert_refused_upstream_credential(response, "untrusted")
    assert "unreachable" in message, message
    assert setup.secure.count(judy) == 1, "nothing reached the endpoint over an unverified connection"
    assert reached(setup, f"{tag}-untrusted") == []


# --------------------------------------------------------------------------- secrets


def test_a_rotated_client_secret_file_applies_live(setup: Setup) -> None:
    """The IdP rotates meshgate's client secret; once `idp.secret` holds the new one, the
    next exchange authenticates with it (SDS, same Envoy), and the old one is refused."""
    envoy_pid = setup.gateway.envoy_pid
    kim, kim_jwt = setup.user("kim")
    tag = marker()
    assert call(setup.gateway, "rotating", bearer(kim_jwt), f"{tag}-before").status_code == 200
    assert len(reached(setup, f"{tag}-before")) == 1
    new_secret = f"rotated-{marker()}"
    setup.rotating.client_secret = new_secret
    try:
        # Another user (no cached token): the old secret is refused now.
        lee, lee_jwt = setup.user("lee")
        message = assert_refused_upstream_credential(call(setup.gateway, "rotating", bearer(lee_jwt), tag), "rotating")
        assert "(invalid_client)" in message
        (setup.gateway.workdir / "idp.secret").write_text(new_secret + "\n")

        def rotated() -> None:
            user, token = setup.user("mia")
            response = call(setup.gateway, "rotating", bearer(token), f"{tag}-{user}")
            assert response.status_code == 200 and "error" not in response.text, describe(response)

        eventually(rotated, timeout=20)
        assert setup.gateway.envoy_pid == envoy_pid
        dump = httpx2.get(f"{setup.gateway.admin}/config_dump", timeout=10).text
        assert new_secret not in dump
    finally:
        setup.rotating.client_secret = CLIENT_SECRET
        (setup.gateway.workdir / "idp.secret").write_text(CLIENT_SECRET + "\n")




def test_no_secret_or_token_in_config_dump_logs_or_audit(setup: Setup) -> None:
    henry, henry_jwt = setup.user("henry")
    tag = marker()
    assert call(setup.gateway, "docs", bearer(henry_jwt), tag).status_code == 200
    [entry] = reached(setup, tag)
    upstream_token = entry["headers"]["authorization"].removeprefix("Bearer ")
    dump = httpx2.get(f"{setup.gateway.admin}/config_dump?include_eds", timeout=10).text
    # The token endpoint's cluster carries the injector; the filter config holds no secret.
    assert "meshgate-token-docs" in dump
    for secret in (CLIENT_SECRET, WRONG_SECRET, STATIC_CREDENTIAL, upstream_token, henry_jwt):
        assert secret not in dump, "a secret is in /config_dump"
    basic = __import__("base64").b64encode(CLIENT_SECRET.encode()).decode()
    assert basic not in dump

    def logged() -> None:
        audit = (setup.gateway.workdir / "audit.log").read_text()
        assert henry in audit, "the exchange's audit line is written"

    eventually(logged)
    texts = [
        (setup.gateway.workdir / "audit.log").read_text(),
        (setup.gateway.workdir / "meshgate.out").read_text(errors="replace"),
    ]
    for text in texts:
        for secret in (CLIENT_SECRET, upstream_token, henry_jwt):
            assert secret not in text
