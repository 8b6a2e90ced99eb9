"""`meshgate up` runs the control plane in-process: registry edits reach its Envoy live; https upstreams.

The rest of the suite (conftest's session gateway) covers `up`'s unchanged contract; this
file covers what xDS adds to it.
"""

from __future__ import annotations

import re

import httpx2
import pytest

from e2e_support import UPSTREAM_UNAVAILABLE, pid_alive, start_gateway, stop_gateway
from xds_support import (
    RegistrySpec,
    call,
    outcome,
    keys_jwks,
    make_tls_material,
    start_tls_docs_server,
    stop_quietly,
    wait_for,
    write_registry,
)

pytestmark = [pytest.mark.e2e, pytest.mark.lifecycle]


def test_up_applies_edits_live_and_verifies_https_upstreams(tmp_path, keys, upstreams, runtime):
    keys_jwks(tmp_path, keys)
    tls = make_tls_material(tmp_path)
    tls_proc, tls_port = start_tls_docs_server(tmp_path, tls)
    secure_url = f"https://localhost:{tls_port}/mcp"
    base = RegistrySpec(
        servers={"docs": upstreams["docs"].url, "secure": secure_url},
        reader_allow=["docs/search_*", "secure/search_*"],
        runtime=runtime,
    )
    with_ca = base.render().replace(
        f"    url: {secure_url}\n", f"    url: {secure_url}\n    tls: {{ ca_file: ca.pem }}\n"
    )
    registry = tmp_path / "registry.yaml"
    write_registry(registry, with_ca)
    gateway = start_gateway(registry, tmp_path, runtime=runtime)
    try:
        ready = gateway.ready
        assert re.fullmatch(r"127\.0\.0\.1:\d+", ready["xds"]), ready
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ready["meshgate_admin"]), ready
        status = httpx2.get(f"{ready['meshgate_admin']}/status", timeout=5).json()
        assert status["nodes"]["meshgate-up"]["streams"] == 1, status

        # https upstream: SNI localhost, certificate checked against the registry's CA.
        secure = lambda: outcome(call(gateway.url("secure"), "search_docs", arguments={"query": "envoy"}))  # noqa: E731
        assert secure() == "allowed"

        # A live edit: another server appears behind the same Envoy.
        envoy_pid = gateway.envoy_pid
        crm_url = f"http://{gateway.listener}/mcp/crm"
        crm = lambda: outcome(call(crm_url, "get_customer", key="e2e-admin-key", arguments={"id": "c-001"}))  # noqa: E731
        assert crm() == "HTTP 404"
        with_crm = with_ca.replace("servers:\n", f"servers:\n  - name: crm\n    url: {upstreams['crm'].url}\n", 1)
        write_registry(registry, with_crm)
        wait_for("crm answers through `up`'s Envoy", lambda: crm() == "allowed")
        assert gateway.envoy_pid == envoy_pid and pid_alive(envoy_pid)

        # Trusting another CA instead: the upstream's certificate is refused (fail closed), and
        # the client is told the server is unavailable (a JSON-RPC error, not Envoy's text 503).
        write_registry(registry, with_crm.replace("tls: { ca_file: ca.pem }", "tls: { ca_file: other-ca.pem }"))
        wait_for("an untrusted upstream certificate is refused", lambda: secure() == f"error {UPSTREAM_UNAVAILABLE}")
        write_registry(registry, with_crm)
        wait_for("trusted again", lambda: secure() == "allowed")
    finally:
        stop_gateway(gateway)
        stop_quietly(tls_proc)
