"""The registry drives running Envoys live: `meshgate serve` + Envoys bootstrapped only with its address.

Every scenario runs twice, once per ADS variant: state of the world (`api_type: GRPC`,
module wasm from a local file) and Delta (`api_type: DELTA_GRPC`, module fetched from
meshgate's admin API and checked against its SHA-256). Upstreams are the session's real
SDK servers (crm: stateful, SSE; docs: stateless, JSON); each test restores the registry
it changed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx2
import pytest

from e2e_support import ISSUER_JWKS, bearer, free_port, marker, pid_alive
from xds_support import (
    CONVERGE_WITHIN,
    ControlPlane,
    EnvoyNode,
    RegistrySpec,
    Traffic,
    call,
    keys_jwks,
    kill,
    outcome,
    registry_edit,
    start_control_plane,
    start_envoy,
    stop_quietly,
    wait_for,
    write_registry,
)

pytestmark = [pytest.mark.e2e]

# Envoy reconnects to a restarted control plane with a backoff capped at 2 s.
RESYNC_WITHIN = CONVERGE_WITHIN + 4.0


@pytest.fixture(scope="module", params=["sotw", "delta"], ids=["sotw-native", "delta-wasm"])
def xds(request, tmp_path_factory, keys, upstreams) -> Iterator[SimpleNamespace]:
    api = request.param
    workdir = tmp_path_factory.mktemp(f"xds-{api}")
    keys_jwks(workdir, keys)
    # Both builds, one per ADS variant: state of the world runs native (loaded by name from
    # Envoy's module search path), delta runs wasm (fetched from meshgate).
    base = RegistrySpec(servers={"docs": upstreams["docs"].url}, runtime="native" if api == "sotw" else "wasm")
    registry = workdir / "registry.yaml"
    write_registry(registry, base.render())
    admin_port = free_port()
    # Delta also exercises remote module delivery: Envoy fetches the filter from meshgate.
    wasm_url = f"http://127.0.0.1:{admin_port}/wasm/meshgate.wasm" if api == "delta" else None
    plane = start_control_plane(registry, workdir, admin_port=admin_port, wasm_url=wasm_url)
    env = SimpleNamespace(api=api, workdir=workdir, registry=registry, base=base, plane=plane, envoy=None)
    try:
        env.envoy = start_envoy(plane, f"envoy-{api}-a", api, workdir)
        yield env
    finally:
        stop_quietly(*[p for p in (env.envoy.proc if env.envoy else None, env.plane.proc) if p is not None])


def docs_search_ok(envoy: EnvoyNode) -> bool:
    return outcome(call(envoy.url("docs"), "search_docs", arguments={"query": "envoy"})) == "allowed"


def test_serves_the_registry_with_catalog_and_metadata(xds):
    plane: ControlPlane = xds.plane
    envoy: EnvoyNode = xds.envoy
    assert docs_search_ok(envoy)
    # Envoy serves a config before meshgate has necessarily read its ACK: poll for the ACKs.
    wait_for("Envoy's ACKs reach /status",
             lambda: set(plane.status()["nodes"][envoy.node_id]["acked"]) >= {"clusters", "listeners", "routes", "extension_configs"})
    status = plane.status()
    node = status["nodes"][envoy.node_id]
    assert node["streams"] == 1 and node["api"] == xds.api, status
    assert node["last_nack"] is None, status
    assert set(node["acked"]) >= {"clusters", "listeners", "routes", "extension_configs"}, status
    # The catalog: docs' real tools, asked of the server by meshgate, then the declared one.
    wait_for("meshgate has listed docs' tools", lambda: plane.get("/catalog").json()["servers"][0]["discovery"]["status"] == "ok")
    (docs,) = plane.get("/catalog").json()["servers"]
    assert (docs["name"], docs["path"]) == ("docs", "/mcp/docs"), docs
    assert [(t["name"], t["source"]) for t in docs["tools"]] == [
        ("search_docs", "server"), ("get_doc", "server"), ("admin_reindex", "server"), ("probe_docs", "registry"),
    ], docs
    assert docs["tools"][3]["description"] == "declared for the catalog"
    assert docs["tools"][0]["description"], docs
    document = httpx2.get(f"http://{envoy.listener}/.well-known/oauth-protected-resource/mcp/docs", timeout=5)
    assert document.status_code == 200
    assert document.headers["content-type"] == "application/json"
    assert document.json() == {
        "resource": "https://gw.xds.test/mcp/docs",
        "authorization_servers": [ISSUER_JWKS],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp.tools"],
    }


def test_add_and_remove_a_server_while_traffic_flows(xds, crm):
    envoy: EnvoyNode = xds.envoy
    pid = envoy.pid
    crm_call = lambda: call(envoy.url("crm"), "get_customer", key="e2e-admin-key", arguments={"id": "c-002"})  # noqa: E731
    assert crm_call().status_code == 404
    with_crm = dataclasses.replace(xds.base, servers={**xds.base.servers, "crm": crm.url})
    with Traffic(envoy.url("docs"), "search_docs", {"query": "envoy"}) as traffic:
        write_registry(xds.registry, with_crm.render())
        added = wait_for("the new /mcp/crm route answers", lambda: outcome(crm_call()) == "allowed", within=CONVERGE_WITHIN)
        assert "Grace Hopper" in crm_call().text
        write_registry(xds.registry, xds.base.render())
        removed = wait_for("the removed /mcp/crm route is gone", lambda: crm_call().status_code == 404,
                           within=CONVERGE_WITHIN)
        time.sleep(0.3)  # a little traffic after the removal too
    assert traffic.ok > 0, "no background traffic completed"
    assert not traffic.failures, f"traffic to docs failed during the changes: {traffic.failures[:5]}"
    assert envoy.pid == pid and pid_alive(pid), "Envoy was restarted"
    print(f"[{xds.api}] add visible after {added:.2f}s, removal after {removed:.2f}s; "
          f"{traffic.ok} docs calls meanwhile, none failed")


def test_a_policy_edit_applies_to_the_next_call(xds):
    envoy: EnvoyNode = xds.envoy
    get_doc = lambda: outcome(call(envoy.url("docs"), "get_doc", arguments={"id": "policy"}))  # noqa: E731
    assert get_doc() == "denied"
    widened = dataclasses.replace(xds.base, reader_allow=["docs/search_*", "docs/get_*"])
    with registry_edit(xds.registry, widened.render()):
        wait_for("reader may call docs/get_doc", lambda: get_doc() == "allowed")
    wait_for("reader is denied docs/get_doc again", lambda: get_doc() == "denied")


def test_an_invalid_edit_is_refused_and_the_old_config_keeps_serving(xds):
    plane: ControlPlane = xds.plane
    envoy: EnvoyNode = xds.envoy
    version = plane.status()["version"]
    pushes = plane.status()["pushes_total"]
    text = xds.base.render()
    broken = text.replace("policy:", "polcy_typo: {}\npolicy:", 1)
    line = broken.splitlines().index("polcy_typo: {}") + 1
    with registry_edit(xds.registry, broken):
        wait_for("/status shows the error", lambda: plane.status()["last_error"] is not None)
        status = plane.status()
        assert status["version"] == version
        errors = status["last_error"]["errors"]
        # File, line, path and reason; the list of valid keys that follows grows with the registry.
        prefix = f"{xds.registry}:{line}: polcy_typo: unknown field `polcy_typo`, expected one of "
        assert len(errors) == 1 and errors[0].startswith(prefix), status["last_error"]
        assert "policy" in errors[0][len(prefix) :].split(", "), status["last_error"]
        assert docs_search_ok(envoy), "the last good configuration keeps serving"
        assert plane.status()["pushes_total"] == pushes, "nothing was pushed"
    wait_for("the error clears once the file is fixed", lambda: plane.status()["last_error"] is None)
    assert "refused" in plane.output()


def test_a_nack_is_reported_with_envoys_words_and_not_resent(xds):
    """A CA bundle meshgate accepts (it has the PEM marker) but Envoy cannot load."""
    plane: ControlPlane = xds.plane
    envoy: EnvoyNode = xds.envoy
    (xds.workdir / "bad-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n")
    bad = dataclasses.replace(
        xds.base, servers={**xds.base.servers, "tls-bad": "https://127.0.0.1:9/mcp"}
    ).render().replace(
        "    url: https://127.0.0.1:9/mcp\n",
        "    url: https://127.0.0.1:9/mcp\n    tls: { ca_file: bad-ca.pem, sni: tls.example.com }\n",
    )
    before = plane.status()["nacks_total"]
    with registry_edit(xds.registry, bad):
        wait_for("Envoy's NACK shows on /status",
                 lambda: plane.status()["nacks_total"] > before, within=5)
        status = plane.status()
        nack = status["nodes"][envoy.node_id]["last_nack"]
        assert nack["resource_type"] == "clusters", nack
        assert "mcp-tls-bad" in nack["message"] or "certificate" in nack["message"].lower(), nack
        pushes = status["pushes_total"]
        time.sleep(1.0)
        assert plane.status()["pushes_total"] == pushes, "meshgate resent after a NACK"
        assert docs_search_ok(envoy)
        assert "envoy rejected the update" in plane.output()
    wait_for("a good registry is accepted again",
             lambda: plane.status()["nodes"][envoy.node_id]["acked"].get("clusters") == plane.status()["version"],
             within=5)


def test_upstream_credentials_are_injected_and_rotated(xds, docs, keys):
    plane: ControlPlane = xds.plane
    envoy: EnvoyNode = xds.envoy
    token = xds.workdir / "docs.token"
    token.write_text("first-upstream-secret-1234\n")
    spec = dataclasses.replace(
        xds.base,
        credentials={"docs": {"header": "authorization", "prefix": "Bearer ", "value_file": "docs.token"}},
    )

    def upstream_saw(value: str) -> bool:
        canary = marker()
        client = bearer(keys.token("alice", ["reader"]))  # the client's own credential
        response = call(envoy.url("docs"), "search_docs", arguments={"query": canary}, key=None,
                        headers=client)
        if response.status_code != 200:
            return False
        entries = docs.log.containing(canary)
        assert len(entries) == 1, entries
        headers = entries[0]["headers"]
        assert "x-api-key" not in headers, headers
        assert keys.token("alice", ["reader"]).split(".")[0] not in headers.get("authorization", ""), headers
        return headers.get("authorization") == f"Bearer {value}"

    with registry_edit(xds.registry, spec.render()):
        wait_for("the upstream sees the injected credential", lambda: upstream_saw("first-upstream-secret-1234"))
        token.write_text("second-upstream-secret-5678\n")
        wait_for("the rotated credential reaches the upstream", lambda: upstream_saw("second-upstream-secret-5678"))
        dump = envoy.config_dump()
        assert "upstream-secret" not in dump, "Envoy's /config_dump shows the secret"
        assert '"[redacted]"' in dump
        for path in ("/registry", "/status", "/catalog"):
            assert "upstream-secret" not in plane.get(path).text, path
    wait_for("without credentials again, nothing is injected", lambda: upstream_gets_no_authorization(envoy, docs))
    assert "upstream-secret" not in plane.output()
    assert "upstream-secret" not in envoy.proc.output.read_text(errors="replace")


def upstream_gets_no_authorization(envoy: EnvoyNode, docs) -> bool:
    canary = marker()
    if call(envoy.url("docs"), "search_docs", arguments={"query": canary}).status_code != 200:
        return False
    entries = docs.log.containing(canary)
    return len(entries) == 1 and "authorization" not in entries[0]["headers"]


def test_envoy_keeps_serving_while_meshgate_restarts_and_resyncs(xds):
    envoy: EnvoyNode = xds.envoy
    old: ControlPlane = xds.plane
    pid = envoy.pid
    xds_port = int(old.xds.rsplit(":", 1)[1])
    admin_port = int(old.admin.rsplit(":", 1)[1])
    kill(old.proc)
    # Control plane gone: the data plane does not care.
    for _ in range(5):
        assert docs_search_ok(envoy)
        time.sleep(0.1)
    # An edit while it is down is applied after it comes back.
    widened = dataclasses.replace(xds.base, reader_allow=["docs/search_*", "docs/get_*"])
    write_registry(xds.registry, widened.render())
    wasm_url = next((a for a in old.args if a.startswith("http://")), None)
    xds.plane = start_control_plane(xds.registry, xds.workdir, name="meshgate-serve-2",
                                    xds_port=xds_port, admin_port=admin_port, wasm_url=wasm_url)
    try:
        took = wait_for(
            "the edit made while meshgate was down reaches Envoy",
            lambda: outcome(call(envoy.url("docs"), "get_doc", arguments={"id": "policy"})) == "allowed",
            within=RESYNC_WITHIN,
        )
        print(f"[{xds.api}] resynced {took:.2f}s after restart")
        node = xds.plane.status()["nodes"][envoy.node_id]
        assert node["streams"] == 1, node
        assert envoy.pid == pid and pid_alive(pid)
    finally:
        write_registry(xds.registry, xds.base.render())
    wait_for("back to the base policy",
             lambda: outcome(call(envoy.url("docs"), "get_doc", arguments={"id": "policy"})) == "denied")


def test_two_envoys_converge(xds):
    plane: ControlPlane = xds.plane
    second = start_envoy(plane, f"envoy-{xds.api}-b", xds.api, xds.workdir)
    try:
        assert docs_search_ok(second)
        def filter_versions() -> set[str | None]:
            nodes = plane.status()["nodes"]
            return {nodes[node]["acked"].get("extension_configs") for node in (xds.envoy.node_id, second.node_id)}

        # The base filter: what both ACK before the edit (the new Envoy got the current one).
        wait_for("both Envoys ACK the base filter", lambda: len(filter_versions()) == 1 and None not in filter_versions())
        (base_version,) = filter_versions()
        widened = dataclasses.replace(xds.base, reader_allow=["docs/search_*", "docs/get_*"])
        with registry_edit(xds.registry, widened.render()):
            for envoy in (xds.envoy, second):
                wait_for(f"{envoy.node_id} applies the edit",
                         lambda envoy=envoy: outcome(call(envoy.url("docs"), "get_doc", arguments={"id": "policy"})) == "allowed")
        for envoy in (xds.envoy, second):
            wait_for(f"{envoy.node_id} reverts",
                     lambda envoy=envoy: outcome(call(envoy.url("docs"), "get_doc", arguments={"id": "policy"})) == "denied")
        nodes = plane.status()["nodes"]
        assert nodes[xds.envoy.node_id]["streams"] == 1 and nodes[second.node_id]["streams"] == 1, nodes

        # Envoy may apply a config before meshgate has read its ACK: poll until both ACKed the
        # reverted filter, whose version (a content hash) is the base one again.
        wait_for("both Envoys ACK the reverted filter", lambda: filter_versions() == {base_version})
    finally:
        stop_quietly(second.proc)
