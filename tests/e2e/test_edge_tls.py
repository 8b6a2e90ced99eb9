"""The production listener against a real Envoy, both filter builds (issue #16, item 1).

One gateway per build (`meshgate up`) whose registry turns on `listener.tls` with a client CA
(mTLS required), maps client certificates to consumers (`auth.mtls`: a SPIFFE ID to role
`reader`, a DNS SAN to role `admin`), trusts the connection's peer as the client address
(`use_remote_address`) and opens the stats/readiness listener. Every certificate is made in
the test (pki_support). What is checked is what a client sees: handshakes refused, JSON-RPC
answers, the certificate served, what the upstream received.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import httpx2
import pytest

from e2e_support import (
    API_KEYS,
    HS_SECRET_ENV,
    UNAUTHENTICATED,
    Gateway,
    Keys,
    Upstream,
    base_headers,
    free_port,
    jsonrpc_error,
    modern_body,
    modern_headers,
    pid_alive,
    registry_yaml,
    start_gateway,
    stop_gateway,
)
from pki_support import Issued, Pki, client_context, presented_serial
from xds_support import outcome, wait_for

PLANNER_ID = "spiffe://mesh.e2e/ns/agents/sa/planner"
STRANGER_ID = "spiffe://mesh.e2e/ns/agents/sa/stranger"
OPS_DNS = "ops.mesh.e2e"


@dataclass
class Edge:
    gateway: Gateway
    server_ca: Pki
    server: Issued
    clients: dict[str, Issued]
    stats_port: int

    @property
    def port(self) -> int:
        return int(self.gateway.listener.rpartition(":")[2])

    def context(self, client: str | None) -> ssl.SSLContext:
        return client_context(self.server_ca.ca_pem, self.clients[client] if client else None)

    def call(self, client: str | None, tool: str, extra_headers: dict[str, str] | None = None,
             credentials: dict[str, str] | None = None) -> httpx2.Response:
        server, name = tool.split("/")
        headers = base_headers(credentials)
        headers.update(modern_headers("tools/call", name))
        headers.update(extra_headers or {})
        body = modern_body("tools/call", {"name": name, "arguments": {"customer_id": "c-1"}})
        with httpx2.Client(verify=self.context(client), timeout=15) as http:
            return http.post(self.gateway.url(server), json=body, headers=headers)


def edge_registry(crm_url: str, docs_url: str, server: Issued, clients_ca: Pki, admin_port: int,
                  stats_port: int) -> str:
    """The e2e registry with the production edge turned on (see the module docs)."""
    listener_extra = (
        f", tls: {{ cert_file: {server.cert.name}, key_file: {server.key.name}, "
        f"client_ca_file: {clients_ca.ca_pem.name} }}, use_remote_address: true"
    )
    text = registry_yaml(crm_url, docs_url, listener_extra=listener_extra)
    mtls = (
        "  mtls:\n"
        f"    - {{ spiffe_id: '{PLANNER_ID}', consumer: planner, roles: [reader] }}\n"
        f"    - {{ dns_san: {OPS_DNS}, consumer: ops, roles: [admin] }}\n"
    )
    for before, after in [
        ("admin: { port: 0 }", f"admin: {{ port: {admin_port} }}"),
        ("  resource_metadata:", f"{mtls}  resource_metadata:"),
    ]:
        assert text.count(before) == 1, before
        text = text.replace(before, after)
    return text + f"stats: {{ port: {stats_port} }}\n"


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream],
         runtime: str) -> Iterator[Edge]:
    workdir = tmp_path_factory.mktemp(f"edge-tls-{runtime}")
    server_ca = Pki(workdir, "gateway")
    clients_ca = Pki(workdir, "agents")
    rogue_ca = Pki(workdir, "rogue")
    server = server_ca.issue("gateway", dns=["localhost"], ips=["127.0.0.1"], server=True)
    clients = {
        "planner": clients_ca.issue("planner", uris=[PLANNER_ID], client=True),
        "ops": clients_ca.issue("ops", dns=[OPS_DNS], client=True),
        # Verified, but mapped to nobody.
        "stranger": clients_ca.issue("stranger", uris=[STRANGER_ID], client=True),
        # The planner's SPIFFE ID, signed by a CA the gateway does not trust.
        "rogue": rogue_ca.issue("rogue-planner", uris=[PLANNER_ID], client=True),
    }
    stats_port, admin_port = free_port(), free_port()
    (workdir / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
    registry = workdir / "registry.yaml"
    registry.write_text(edge_registry(upstreams["crm"].url, upstreams["docs"].url, server, clients_ca,
                                      admin_port, stats_port))
    gw = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
    try:
        # A refused handshake below must be TLS refusing, not plain HTTP on a TLS port.
        assert gw.url("crm").startswith("https://"), gw.ready
        yield Edge(gw, server_ca, server, clients, stats_port)
    finally:
        stop_gateway(gw)


def _handshake_refused(edge: Edge, client: str | None) -> bool:
    try:
        response = edge.call(client, "crm/get_customer")
    except (httpx2.ConnectError, httpx2.ReadError, httpx2.RemoteProtocolError) as e:
        # TLS 1.3: the server's verdict on the client certificate arrives as an alert
        # after the client's side of the handshake.
        text = repr(e) + repr(e.__cause__) + repr(e.__context__)
        return any(alert in text.upper() for alert in ("ALERT", "CERTIFICATE", "SSL"))
    pytest.fail(f"{client or 'no certificate'}: expected the handshake to fail, got HTTP {response.status_code}")


def test_wrong_ca_and_missing_client_certificate_are_refused(edge: Edge, crm: Upstream) -> None:
    mark = crm.log.mark()
    assert _handshake_refused(edge, "rogue"), "a certificate from an untrusted CA"
    assert _handshake_refused(edge, None), "no client certificate while mTLS is required"
    # Nothing reached the upstream.
    assert crm.log.since(mark) == []
    # A client that does not trust the gateway's CA refuses it too (the listener serves our cert).
    with pytest.raises((httpx2.ConnectError, ssl.SSLError)):
        with httpx2.Client(verify=client_context(edge.clients["rogue"].cert), timeout=5) as http:
            http.get(edge.gateway.url("crm"))


def test_spiffe_id_and_dns_san_map_to_consumers_and_roles(edge: Edge, crm: Upstream) -> None:
    # reader may get_*, not update_*; admin may update_*.
    assert outcome(edge.call("planner", "crm/get_customer")) == "allowed"
    assert outcome(edge.call("planner", "crm/update_customer")) == "denied"
    assert outcome(edge.call("ops", "crm/update_customer")) == "allowed"
    # A verified certificate that maps to nobody is refused, not anonymous.
    refused = edge.call("stranger", "crm/get_customer")
    assert refused.status_code == 401, refused.text
    error = jsonrpc_error(refused)["error"]
    assert error["code"] == UNAUTHENTICATED and "auth.mtls" in error["message"], error
    # An explicit credential decides over the certificate (an admin API key on the planner's connection).
    admin_key = next(key for key, (_, roles) in API_KEYS.items() if "admin" in roles)
    assert outcome(edge.call("planner", "crm/update_customer", credentials={"x-api-key": admin_key})) == "allowed"


def test_forged_client_cert_header_is_ignored(edge: Edge, crm: Upstream) -> None:
    forged = {"x-forwarded-client-cert": f"Hash=00;URI=spiffe://mesh.e2e/x;DNS={OPS_DNS}"}
    # The planner claims the ops identity in a header: still a reader.
    mark = crm.log.mark()
    assert outcome(edge.call("planner", "crm/update_customer", forged)) == "denied"
    assert outcome(edge.call("planner", "crm/get_customer", forged)) == "allowed"
    # The upstream saw Envoy's statement about the connection, not the forgery, and the
    # client address Envoy observed (use_remote_address).
    seen = [e["headers"] for e in crm.log.since(mark) if e.get("http_method") == "POST"]
    assert seen, "the allowed call reached the upstream"
    xfcc = seen[-1].get("x-forwarded-client-cert", "")
    assert f"URI={PLANNER_ID}" in xfcc and OPS_DNS not in xfcc, xfcc
    # Envoy sets x-envoy-external-address only under use_remote_address (the peer is the client).
    assert seen[-1].get("x-envoy-external-address") == "127.0.0.1", seen
    # A stranger's connection with a forged planner header is still a stranger.
    forged_planner = {"x-forwarded-client-cert": f"Hash=00;URI={PLANNER_ID}"}
    assert edge.call("stranger", "crm/get_customer", forged_planner).status_code == 401


def test_stats_listener_serves_prometheus_and_ready_only(edge: Edge) -> None:
    base = f"http://127.0.0.1:{edge.stats_port}"
    ready = httpx2.get(f"{base}/ready", timeout=5)
    assert ready.status_code == 200 and "LIVE" in ready.text, ready.text
    metrics = httpx2.get(f"{base}/stats/prometheus", timeout=5)
    assert metrics.status_code == 200 and "envoy_server_live" in metrics.text
    # The admin's other paths stay unreachable from here; so do non-GET methods.
    for path in ("/config_dump", "/clusters", "/quitquitquit", "/stats"):
        assert httpx2.get(f"{base}{path}", timeout=5).status_code == 404, path
    assert httpx2.post(f"{base}/ready", timeout=5).status_code == 404


def test_rotated_certificate_is_served_without_a_restart(edge: Edge) -> None:
    context = edge.context("planner")
    before = presented_serial("127.0.0.1", edge.port, context)
    assert before == edge.server.serial
    envoy_pid = edge.gateway.envoy_pid
    # A long-lived client connection opened before the rotation keeps working through it.
    with httpx2.Client(verify=context, timeout=15) as http:
        headers = {**base_headers(None), **modern_headers("tools/call", "get_customer")}
        body = modern_body("tools/call", {"name": "get_customer", "arguments": {"customer_id": "c-1"}})
        assert outcome(http.post(edge.gateway.url("crm"), json=body, headers=headers)) == "allowed"
        rotated = edge.server_ca.issue("gateway", dns=["localhost"], ips=["127.0.0.1"], server=True)
        wait_for("the rotated certificate is served",
                 lambda: presented_serial("127.0.0.1", edge.port, context) == rotated.serial, within=20)
        assert outcome(http.post(edge.gateway.url("crm"), json=body, headers=headers)) == "allowed"
    assert pid_alive(envoy_pid) and edge.gateway.envoy_pid == envoy_pid
    assert outcome(edge.call("planner", "crm/get_customer")) == "allowed"
