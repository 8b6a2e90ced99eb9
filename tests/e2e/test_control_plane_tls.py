"""An authenticated control plane against real Envoys (issue #16, item 2).

One `meshgate serve` with mTLS on its gRPC port (ADS and the rate-limit service share it:
a `scope: global` quota on `docs/search_*`, counted in a real redis-server, is decided over it),
HTTPS and a bearer token on its admin API, and the wasm filter module served over that HTTPS
API (pinned by SHA-256). Two Envoys bootstrapped by `meshgate bootstrap`: one without a client
certificate (refused: it never gets a listener), one with it (converges and governs a call,
running the module it fetched over HTTPS). That Envoy's listener has TLS with `source: envoy`
(Envoy reads and watches the certificate files itself) and an optional client certificate.
Every certificate is made in the test.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx2
import pytest

from e2e_support import MESHGATE, WASM, Keys, Proc, Upstream, free_port, require_artifacts
from global_limits_support import start_redis
from pki_support import Issued, Pki, client_context, presented_serial
from xds_support import (
    RegistrySpec,
    _listener,
    call,
    keys_jwks,
    launch_fleet_envoy,
    outcome,
    serve_until_ready,
    stop_quietly,
    wait_for,
    write_registry,
)

ADMIN_TOKEN = "e2e-admin-token-7f3a"
# Calls of docs/search_* the whole fleet may make (a global quota, decided by meshgate).
SEARCH_QUOTA = 3


@dataclass
class Plane:
    proc: Proc
    xds: str
    admin: str
    ca: Path
    fleet: Pki
    workdir: Path
    # The listener's certificate, read by Envoy from these files (`source: envoy`).
    listener_ca: Pki
    listener_cert: Issued

    def admin_get(self, path: str, token: str | None = ADMIN_TOKEN) -> httpx2.Response:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx2.get(f"{self.admin}{path}", headers=headers, verify=client_context(self.ca), timeout=5)


def start_serve(workdir: Path, registry: Path, args: list[str], name: str = "meshgate-tls") -> tuple[Proc, dict]:
    ready_file = workdir / f"{name}.ready.json"
    command = [str(MESHGATE), "serve", "--registry", str(registry), "--wasm", str(WASM), "--ready-file",
               str(ready_file), *args]
    return serve_until_ready(name, command, ready_file, workdir)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream]) -> Iterator[Plane]:
    require_artifacts()
    workdir = tmp_path_factory.mktemp("control-plane-tls")
    ca = Pki(workdir, "meshgate")
    fleet = Pki(workdir, "fleet")
    server = ca.issue("meshgate", dns=["localhost"], ips=["127.0.0.1"], server=True)
    token = workdir / "admin-token"
    token.write_text(ADMIN_TOKEN + "\n")
    keys_jwks(workdir, keys)
    registry = workdir / "registry.yaml"
    listener_ca = Pki(workdir, "listener")
    listener_cert = listener_ca.issue("listener", dns=["localhost"], ips=["127.0.0.1"], server=True)
    redis = start_redis(workdir)
    quota = (
        f"quotas:\n  - {{ name: search, match: {{ tools: ['docs/search_*'] }}, quota: {SEARCH_QUOTA}/h, scope: global }}\n"
        f"rate_limit_service: {{ redis_url: '{redis.url}', failure_mode: deny, timeout: 5s }}\n"
    )
    # The wasm build: its module is what Envoy downloads from meshgate over HTTPS.
    tls = (f"listener: {{ address: 127.0.0.1, port: 0, tls: {{ source: envoy, cert_file: {listener_cert.cert}, "
           f"key_file: {listener_cert.key}, client_ca_file: {fleet.ca_pem}, require_client_certificate: false }} }}")
    text = RegistrySpec(servers={"docs": upstreams["docs"].url}, runtime="wasm", extra=quota).render()
    assert text.count("listener: { address: 127.0.0.1, port: 0 }") == 1
    write_registry(registry, text.replace("listener: { address: 127.0.0.1, port: 0 }", tls))
    admin_port = free_port()
    proc, ready = start_serve(workdir, registry, [
        "--xds-listen", "127.0.0.1:0", "--admin-listen", f"127.0.0.1:{admin_port}",
        "--xds-tls-cert", str(server.cert), "--xds-tls-key", str(server.key), "--xds-client-ca", str(fleet.ca_pem),
        "--admin-tls-cert", str(server.cert), "--admin-tls-key", str(server.key), "--admin-token-file", str(token),
        "--wasm-url", f"https://127.0.0.1:{admin_port}/wasm/meshgate.wasm", "--wasm-url-ca", str(ca.ca_pem),
    ])
    try:
        assert ready["meshgate_admin"] == f"https://127.0.0.1:{admin_port}"
        yield Plane(proc, ready["xds"], ready["meshgate_admin"], ca.ca_pem, fleet, workdir, listener_ca, listener_cert)
    finally:
        proc.stop()
        redis.stop()


@dataclass
class Node:
    proc: Proc
    admin_file: Path


def start_node(plane: Plane, node_id: str, client: Issued | None) -> Node:
    args = [str(MESHGATE), "bootstrap", "--xds-address", plane.xds, "--node-id", node_id, "--admin-port", "0",
            "--format", "json", "--xds-ca", str(plane.ca)]
    if client:
        args += ["--xds-client-cert", str(client.cert), "--xds-client-key", str(client.key)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    bootstrap = plane.workdir / f"{node_id}.bootstrap.json"
    bootstrap.write_text(out.stdout)
    proc, admin_file = launch_fleet_envoy(node_id, bootstrap, plane.workdir)
    return Node(proc, admin_file)


def node_ids(plane: Plane) -> set[str]:
    nodes = plane.admin_get("/status").json()["nodes"]
    return {n.get("node_id") or n.get("id") for n in nodes} if isinstance(nodes, list) else set(nodes)


def test_envoy_without_client_certificate_is_refused_and_with_it_converges(plane: Plane) -> None:
    trusted = plane.fleet.issue("envoy-trusted", dns=["envoy-trusted.fleet"], client=True)
    refused = start_node(plane, "envoy-no-cert", None)
    accepted = start_node(plane, "envoy-with-cert", trusted)
    try:
        deadline = time.monotonic() + 60
        listener = None
        while listener is None:
            assert accepted.proc.popen.poll() is None, accepted.proc.tail()
            assert time.monotonic() < deadline, f"envoy-with-cert did not converge:\n{accepted.proc.tail()}"
            listener = _listener(accepted.admin_file)
            time.sleep(0.2)
        # It runs the wasm filter it fetched over HTTPS: a governed call is allowed, another
        # refused. The client certificate is optional on this listener: an API key without one works.
        url = f"https://localhost:{listener.rpartition(':')[2]}/mcp/docs"
        verify = client_context(plane.listener_ca.ca_pem)
        assert outcome(call(url, "admin_reindex", verify=verify)) == "denied"
        # The global quota is decided by meshgate's rate-limit service over the same mTLS
        # cluster (failure_mode deny: an unreachable service would refuse the first call too).
        results = [outcome(call(url, "search_docs", verify=verify)) for _ in range(SEARCH_QUOTA + 1)]
        assert results == ["allowed"] * SEARCH_QUOTA + ["HTTP 429"], results
        # `source: envoy`: Envoy watches the certificate files itself; a rotation is served
        # without a restart (and without meshgate reading anything).
        port = int(listener.rpartition(":")[2])
        assert presented_serial("127.0.0.1", port, verify) == plane.listener_cert.serial
        rotated = plane.listener_ca.issue("listener", dns=["localhost"], ips=["127.0.0.1"], server=True)
        wait_for("Envoy serves the rotated file", lambda: presented_serial("127.0.0.1", port, verify) == rotated.serial,
                 within=20)
        assert accepted.proc.popen.poll() is None
        # The Envoy without a certificate had as long and never got a listener (nor any config).
        assert refused.proc.popen.poll() is None, refused.proc.tail()
        wait_for("the refused Envoy's admin is up", refused.admin_file.exists)
        assert _listener(refused.admin_file) is None
        admin = refused.admin_file.read_text().strip()
        assert "mcp-docs" not in httpx2.get(f"http://{admin}/clusters", timeout=5).text
        connected = httpx2.get(f"http://{admin}/stats?filter=^control_plane.connected_state$", timeout=5).text
        assert connected.strip() == "control_plane.connected_state: 0", connected
        ids = node_ids(plane)
        assert "envoy-with-cert" in ids and "envoy-no-cert" not in ids, ids
    finally:
        stop_quietly(refused.proc, accepted.proc)


def test_admin_api_requires_its_token_but_probes_and_module_do_not(plane: Plane) -> None:
    for path in ("/status", "/registry", "/catalog", "/metrics"):
        assert plane.admin_get(path, token=None).status_code == 401, path
        assert plane.admin_get(path, token="wrong").status_code == 401, path
        assert plane.admin_get(path).status_code == 200, path
    assert plane.admin_get("/healthz", token=None).status_code == 200
    module = plane.admin_get("/wasm/meshgate.wasm", token=None)
    assert module.status_code == 200
    digest = hashlib.sha256(module.content).hexdigest()
    assert digest == hashlib.sha256(WASM.read_bytes()).hexdigest() == module.headers["x-sha256"]
    # Plain HTTP on the TLS port gets nothing useful.
    with pytest.raises(httpx2.HTTPError):
        httpx2.get(plane.admin.replace("https://", "http://") + "/status", timeout=5)


def test_plaintext_off_loopback_needs_an_explicit_opt_in(plane: Plane, tmp_path: Path) -> None:
    registry = plane.workdir / "registry.yaml"
    out = subprocess.run(
        [str(MESHGATE), "serve", "--registry", str(registry), "--wasm", str(WASM),
         "--xds-listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert out.returncode == 1
    assert "plaintext on a non-loopback address" in out.stderr and "--allow-plaintext" in out.stderr, out.stderr
    # With the opt-in it starts, and says so.
    ready_file = tmp_path / "ready.json"
    proc = Proc.start("meshgate-plain", [str(MESHGATE), "serve", "--registry", str(registry), "--wasm", str(WASM),
                                         "--xds-listen", "0.0.0.0:0", "--admin-listen", "127.0.0.1:0",
                                         "--allow-plaintext", "--ready-file", str(ready_file)],
                      tmp_path / "plain.out")
    try:
        deadline = time.monotonic() + 30
        while not ready_file.exists():
            assert proc.popen.poll() is None and time.monotonic() < deadline, proc.tail()
            time.sleep(0.05)
        assert "plaintext" in proc.output.read_text()
    finally:
        proc.stop()
