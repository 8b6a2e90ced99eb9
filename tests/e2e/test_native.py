"""What only the native build (libmeshgate.so, an Envoy dynamic module) has to prove.

- A panic in any hook fails that request closed (HTTP 500, JSON-RPC error, nothing
  forwarded) while Envoy keeps serving: needs the test build of the module with the
  `fault-injection` feature (`make fault-module`), never the production one.
- Local quota counters live in process memory shared by every worker: exact across 2 workers
  under 64 concurrent clients.
- A policy edit pushed by ECDS while a long SSE tool call is in flight: that call finishes
  under the configuration it started with, the next call gets the new one.
- `envoy --mode validate` of a bootstrap that loads the module runs its `config_new`: a good
  configuration passes, a configuration the filter refuses fails with the filter's reason.
- Both builds, same traffic: the same audit lines field for field and the same Prometheus
  series.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from test_observability import prometheus
from e2e_support import (
    ENVOY,
    HS_SECRET_ENV,
    MESHGATE,
    NATIVE,
    REPO,
    Gateway,
    Keys,
    Upstream,
    api_key,
    complete_json_lines,
    is_denied,
    jsonrpc_error,
    legacy_body,
    legacy_handshake,
    legacy_headers,
    marker,
    post,
    registry_yaml,
    response_messages,
    running_gateway,
    start_gateway,
    stop_gateway,
    wait_outside_window_edge,
    write_test_registry,
)

pytestmark = [pytest.mark.e2e]

# The test build of the module: `make fault-module` (cargo feature `fault-injection`).
FAULT_MODULE = Path(
    os.environ.get("MESHGATE_NATIVE_FAULT", REPO / "target" / "fault-injection" / "debug" / "libmeshgate.so")
)
ADMIN = api_key("e2e-admin-key")
INTERNAL_ERROR = -32603


def tool_call(url: str, tool: str, arguments: dict[str, Any], creds: dict[str, str], headers: dict[str, str] | None = None,
              id: Any = 1, timeout: float = 15.0) -> httpx2.Response:
    return post(url, legacy_body("tools/call", {"name": tool, "arguments": arguments}, id=id), creds, headers, timeout)


# --------------------------------------------------------------------------- panics


def hook_name(hook: str) -> str:
    """`request-headers` -> `RequestHeaders`, as the module names its hooks in the log."""
    return "".join(part.capitalize() for part in hook.split("-"))


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream]) -> Iterator[Gateway]:
    if not FAULT_MODULE.exists():
        pytest.fail(f"{FAULT_MODULE} is missing: run `make fault-module`", pytrace=False)
    workdir = tmp_path_factory.mktemp("native-faults")
    registry = write_test_registry(workdir, keys, upstreams)
    registry.write_text(registry.read_text().replace("limits: {", "limits: { max_in_flight_per_consumer: 1,", 1))
    gw = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime="native", native=FAULT_MODULE)
    try:
        yield gw
    finally:
        stop_gateway(gw)


@pytest.mark.parametrize("hook", ["request-headers", "request-body", "response-headers"])
def test_a_panic_fails_the_request_closed_and_envoy_keeps_serving(faulty: Gateway, crm: Upstream, hook: str) -> None:
    url = faulty.url("docs")
    before = faulty.envoy_pid
    planted = marker()
    r = tool_call(url, "search_docs", {"query": planted}, ADMIN, {"x-meshgate-fault": f"panic-in-{hook}"})
    assert r.status_code == 500, f"{hook}: {r.status_code} {r.text}"
    assert jsonrpc_error(r)["error"]["code"] == INTERNAL_ERROR
    if hook.startswith("request"):
        assert not faulty.proc.output.read_text(errors="replace").count(planted), "nothing logged about the body"
    # Envoy's log has the panic and the refusal, through Envoy's own logger (its lines reach
    # meshgate's output a moment later).
    expected = [
        "meshgate: panic, the request fails closed",
        f"fault injected in {hook_name(hook)}",
        f"meshgate: {hook_name(hook)} failed; the request is refused (HTTP 500)",
    ]
    deadline = time.monotonic() + 10
    while True:
        output = faulty.proc.output.read_text(errors="replace")
        missing = [line for line in expected if line not in output]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not missing, f"not logged: {missing}\n{faulty.diagnostics()}"
    # Same Envoy, still serving: the next request is governed as usual.
    assert faulty.envoy_pid == before
    ok = tool_call(url, "search_docs", {"query": "envoy"}, ADMIN)
    assert ok.status_code == 200, ok.text
    assert is_denied(tool_call(url, "admin_reindex", {}, api_key("e2e-reader-key")))


def test_a_panic_after_the_response_started_cuts_it_off(faulty: Gateway) -> None:
    """The response headers are on their way: the stream is reset instead of answered."""
    try:
        r = tool_call(faulty.url("docs"), "search_docs", {"query": "envoy"}, ADMIN, {"x-meshgate-fault": "panic-in-response-body"})
    except httpx2.HTTPError:
        pass
    else:
        assert r.status_code == 500 or "result" not in r.text, f"the upstream's answer got through: {r.text}"
    assert tool_call(faulty.url("docs"), "search_docs", {"query": "envoy"}, ADMIN).status_code == 200


def test_a_panic_before_the_body_decision_forwards_nothing(faulty: Gateway, docs: Upstream) -> None:
    mark = docs.log.mark()
    planted = marker()
    for hook in ("request-headers", "request-body"):
        r = tool_call(faulty.url("docs"), "search_docs", {"query": planted}, ADMIN, {"x-meshgate-fault": f"panic-in-{hook}"})
        assert r.status_code == 500
    time.sleep(0.3)
    assert docs.log.containing(planted, mark) == [], "a request whose hook panicked reached the upstream"


def test_a_panic_at_stream_end_still_gives_the_in_flight_slot_back(faulty: Gateway) -> None:
    url = faulty.url("docs")
    # max_in_flight_per_consumer is 1: a slot that was never given back refuses every later call.
    for _ in range(3):
        r = tool_call(url, "search_docs", {"query": "envoy"}, ADMIN, {"x-meshgate-fault": "panic-in-stream-complete"})
        assert r.status_code == 200, r.text
    assert tool_call(url, "search_docs", {"query": "envoy"}, ADMIN).status_code == 200


# --------------------------------------------------------------------------- counters across workers

QUOTA = 100
CLIENTS = 64
CALLS = 2 * QUOTA


@pytest.fixture(scope="module")
def quota_gateway(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream]) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("native-quota")
    extra = f"quotas:\n  - {{ name: shared, match: {{ tools: [\"docs/search_docs\"] }}, quota: {QUOTA}/h, key: tool }}\n"
    with running_gateway(workdir, keys, upstreams["crm"].url, upstreams["docs"].url, extra, runtime="native") as gw:
        yield gw


def test_local_quota_is_exact_across_two_workers_and_64_clients(quota_gateway: Gateway) -> None:
    assert "concurrency: 2" in quota_gateway.registry.read_text(), "two workers share the counter"
    wait_outside_window_edge(3600, margin=60)
    url = quota_gateway.url("docs")

    def one(i: int) -> int:
        # One connection per call: Envoy spreads connections over its workers.
        return tool_call(url, "search_docs", {"query": f"q{i}"}, ADMIN, id=i, timeout=60).status_code

    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        statuses = list(pool.map(one, range(CALLS)))
    assert statuses.count(200) == QUOTA and statuses.count(429) == CALLS - QUOTA, sorted(set(statuses))
    # Both workers took part (Envoy's own per-worker connection counters).
    stats = httpx2.get(f"{quota_gateway.admin}/stats?filter=worker_.\\.downstream_cx_total", timeout=5).text
    per_worker = [int(v) for v in re.findall(r"worker_\d\.downstream_cx_total: (\d+)", stats)]
    assert len(per_worker) == 2 and all(n > 0 for n in per_worker), stats


# --------------------------------------------------------------------------- ECDS during a long call


def test_a_policy_pushed_during_a_long_sse_call_applies_to_the_next_call(
    tmp_path: Path, keys: Keys, upstreams: dict[str, Upstream]
) -> None:
    with running_gateway(tmp_path, keys, upstreams["crm"].url, upstreams["docs"].url, runtime="native") as gw:
        url = gw.url("crm")
        session = legacy_handshake(url, ADMIN)
        headers = legacy_headers(session)
        arguments = {"steps": 12, "delay": 0.5}
        result: dict[str, httpx2.Response] = {}

        def long_call() -> None:
            # With a progress token, every step is an SSE event on the way.
            params = {"name": "slow_report", "arguments": arguments, "_meta": {"progressToken": "long"}}
            result["r"] = post(url, legacy_body("tools/call", params, id="long"), ADMIN, headers, timeout=60)

        caller = threading.Thread(target=long_call)
        caller.start()
        time.sleep(1.0)  # the call is forwarded and streaming
        assert caller.is_alive(), "the call must still be in flight when the policy changes"
        text = gw.registry.read_text()
        gw.registry.write_text(text.replace('deny: ["crm/delete_*"]', 'deny: ["crm/delete_*", "crm/slow_report"]', 1))
        quick = {"steps": 1, "delay": 0.0}
        deadline = time.monotonic() + 10
        while not is_denied(tool_call(url, "slow_report", quick, ADMIN, headers, id="probe")):
            assert time.monotonic() < deadline, "the new policy never arrived"
            time.sleep(0.1)
        assert caller.is_alive(), "the new policy arrived while the long call was still in flight"
        caller.join(60)
        r = result["r"]
        assert r.status_code == 200, r.text
        messages = response_messages(r)
        final = [m for m in messages if m.get("id") == "long"]
        assert final and "result" in final[0], messages
        assert "report ready" in json.dumps(final[0]["result"]), final
        progress = [m for m in messages if m.get("method") == "notifications/progress"]
        assert len(progress) == arguments["steps"], "every event of the old exchange went through"
        # The next call is governed by the new policy.
        r = tool_call(url, "slow_report", quick, ADMIN, headers, id="after")
        assert is_denied(r), r.text


# --------------------------------------------------------------------------- envoy --mode validate


def bootstrap_of(registry: Path, workdir: Path, env: dict[str, str]) -> Path:
    out = subprocess.run(
        [str(MESHGATE), "bootstrap", "-r", str(registry), "--native-module", str(NATIVE), "--format", "json"],
        capture_output=True, text=True, timeout=30, check=False, env={**os.environ, **env},
    )
    assert out.returncode == 0, out.stderr
    bootstrap = workdir / "bootstrap.json"
    bootstrap.write_text(out.stdout)
    return bootstrap


def validate(bootstrap: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != HS_SECRET_ENV}
    return subprocess.run(
        [str(ENVOY), "--mode", "validate", "-l", "info", "-c", str(bootstrap)],
        capture_output=True, text=True, timeout=120, check=False, env={**base, **env},
    )


def test_envoy_validate_loads_the_module_and_runs_its_config_check(
    tmp_path: Path, keys: Keys, upstreams: dict[str, Upstream]
) -> None:
    registry = write_test_registry(tmp_path, keys, upstreams)
    registry.write_text(registry.read_text() + "filter: { runtime: native }\n")
    secret = {HS_SECRET_ENV: keys.hs_secret}
    bootstrap = bootstrap_of(registry, tmp_path, secret)
    assert NATIVE.name in bootstrap.read_text()
    ok = validate(bootstrap, secret)
    output = ok.stdout + ok.stderr
    assert ok.returncode == 0, output
    assert "Dynamic module ABI version v0.2.0 matched" in output, output
    # The same bootstrap, without the HS256 secret in Envoy's environment: the module's
    # config_new refuses it, and Envoy says why in the filter's words.
    refused = validate(bootstrap, {})
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0, output
    assert f"meshgate: configuration rejected: auth.jwt[1].hs256_secret_env: environment variable {HS_SECRET_ENV}" in output, output


# --------------------------------------------------------------------------- same traffic, same observability

OBSERVED = """\
observability:
  access_log: {{ path: {path} }}
  metrics: {{ consumer_label: true }}
redaction:
  - match: {{ tools: ["docs/get_doc"] }}
    detectors: [email]
quotas:
  - {{ name: once, match: {{ tools: ["docs/admin_reindex"] }}, quota: 1/h }}
"""

# Fields that say how long or when, not what: they differ between any two runs.
VARYING = {"start_time", "request_id", "duration_ms", "decision_us", "trace_id"}


@pytest.fixture(scope="module")
def both_builds(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream]) -> Iterator[dict[str, Gateway]]:
    gateways: dict[str, Gateway] = {}
    try:
        for runtime in ("native", "wasm"):
            workdir = tmp_path_factory.mktemp(f"observed-{runtime}")
            (workdir / "jwks.json").write_text(json.dumps(keys.jwks()))
            registry = workdir / "registry.yaml"
            extra = OBSERVED.format(path=workdir / "audit.log")
            registry.write_text(registry_yaml(upstreams["crm"].url, upstreams["docs"].url) + extra)
            gateways[runtime] = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
        yield gateways
    finally:
        for gw in gateways.values():
            stop_gateway(gw)


def same_traffic(gw: Gateway, keys: Keys) -> list[int]:
    docs, crm = gw.url("docs"), gw.url("crm")
    reader = api_key("e2e-reader-key")
    token = {"Authorization": f"Bearer {keys.token('alice', ['reader'])}"}
    wait_outside_window_edge(3600, margin=30)
    calls = [
        tool_call(docs, "search_docs", {"query": "envoy"}, ADMIN, id="a"),
        tool_call(docs, "search_docs", {"query": "envoy"}, token, id="b"),
        tool_call(crm, "delete_customer", {"id": "c-001"}, reader, id="c"),
        tool_call(docs, "search_docs", {"query": "x"}, {}, id="d"),
        tool_call(docs, "search_docs", {"query": "x"}, api_key("not-a-key"), id="e"),
        tool_call(docs, "get_doc", {"id": "support"}, ADMIN, id="f"),
        tool_call(docs, "admin_reindex", {}, ADMIN, id="g"),
        tool_call(docs, "admin_reindex", {}, ADMIN, id="h"),
        post(docs, b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":', ADMIN),
        post(docs, legacy_body("completion/complete", {"ref": {"type": "ref/prompt", "name": "x"},
                                                       "argument": {"name": "a", "value": "b"}}), ADMIN),
        httpx2.post(docs, content=b"{}", headers={"content-type": "text/plain", **ADMIN}, timeout=10),
        httpx2.request("PUT", docs, headers=ADMIN, timeout=10),
    ]
    return [r.status_code for r in calls]


def audit(gw: Gateway, count: int) -> list[dict[str, Any]]:
    path = gw.workdir / "audit.log"
    deadline = time.monotonic() + 15
    while True:
        lines = complete_json_lines(path.read_text()) if path.exists() else []
        if len(lines) >= count or time.monotonic() > deadline:
            kept = [{k: v for k, v in line.items() if k not in VARYING} for line in lines]
            for line in kept:
                if line.get("reason"):
                    line["reason"] = re.sub(r"retry in \d+ s", "retry in N s", line["reason"])
            return kept
        time.sleep(0.2)


def series(gw: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every meshgate Prometheus sample but the histogram's (its buckets depend on timing)."""
    return {k: v for k, v in prometheus(gw).items() if "decision_time_us" not in k[0]}


def test_both_builds_answer_log_and_count_the_same_traffic_alike(both_builds: dict[str, Gateway], keys: Keys) -> None:
    statuses = {runtime: same_traffic(gw, keys) for runtime, gw in both_builds.items()}
    assert statuses["native"] == statuses["wasm"], statuses
    lines = {runtime: audit(gw, len(statuses[runtime])) for runtime, gw in both_builds.items()}
    assert len(lines["native"]) == len(statuses["native"]), lines["native"]
    for native, wasm in zip(lines["native"], lines["wasm"], strict=True):
        # The one field Envoy fills differently: its details of a filter's local reply are
        # `dynamic_module` for a module and empty for proxy-wasm (whose SDK passes none).
        details = (native.pop("response_code_details"), wasm.pop("response_code_details"))
        assert details[0] == details[1] or details == ("dynamic_module", ""), details
        assert native == wasm, f"audit lines differ:\nnative: {native}\nwasm:   {wasm}"

    def counted() -> None:
        got = {runtime: series(gw) for runtime, gw in both_builds.items()}
        assert got["native"] and got["native"] == got["wasm"], (
            f"only native: {sorted(set(got['native']) - set(got['wasm']))}\n"
            f"only wasm: {sorted(set(got['wasm']) - set(got['native']))}"
        )

    deadline = time.monotonic() + 15  # wasm counters reach Envoy once a second
    while True:
        try:
            counted()
            return
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


# --------------------------------------------------------------------------- a configuration the module refuses


def test_a_configuration_the_module_refuses_is_nacked_and_the_last_good_one_keeps_serving(
    tmp_path: Path, keys: Keys, upstreams: dict[str, Upstream]
) -> None:
    """meshgate and the module run one validator, so only Envoy's own environment can make
    them disagree: here an HS256 secret meshgate has and the Envoy host does not."""
    from xds_support import (
        RegistrySpec,
        call,
        keys_jwks,
        start_control_plane,
        start_envoy,
        stop_quietly,
        wait_for,
        write_registry,
    )

    keys_jwks(tmp_path, keys)
    base = RegistrySpec(servers={"docs": upstreams["docs"].url}, runtime="native")
    registry = tmp_path / "registry.yaml"
    write_registry(registry, base.render())
    plane = start_control_plane(registry, tmp_path, env={HS_SECRET_ENV: keys.hs_secret})
    envoy = None
    try:
        envoy = start_envoy(plane, "envoy-native-nack", "sotw", tmp_path)
        refused = lambda: is_denied(call(envoy.url("docs"), "get_doc", arguments={"id": "support"}))  # noqa: E731
        wait_for("the first policy serves", refused)
        hs_issuer = f"    - {{ issuer: https://hs.native.test, audiences: [m], hs256_secret_env: {HS_SECRET_ENV} }}\n"
        edited = base.render().replace("  api_keys:\n", hs_issuer + "  api_keys:\n", 1)
        edited = edited.replace('reader: { allow: ["docs/search_*"] }', 'reader: { allow: ["docs/search_*", "docs/get_*"] }', 1)
        assert edited != base.render()
        before = plane.status()["nacks_total"]
        write_registry(registry, edited)
        wait_for("Envoy's NACK shows on /status", lambda: plane.status()["nacks_total"] > before)
        nack = plane.status()["nodes"][envoy.node_id]["last_nack"]
        assert nack["resource_type"] == "extension_configs", nack
        # The module said why, in Envoy's log.
        assert f"meshgate: configuration rejected: auth.jwt[1].hs256_secret_env: environment variable {HS_SECRET_ENV}" in (
            envoy.proc.output.read_text(errors="replace")
        ), envoy.proc.tail()
        # The last good configuration keeps serving: get_doc is still refused.
        time.sleep(0.5)
        assert refused()
        assert call(envoy.url("docs"), "search_docs", arguments={"query": "envoy"}).status_code == 200
    finally:
        stop_quietly(*[p for p in (envoy.proc if envoy else None, plane.proc) if p is not None])


# --------------------------------------------------------------------------- a live switch between builds


def filter_type(gw: Gateway) -> str:
    """The `@type` of the filter Envoy runs now (ECDS, from Envoy's own config dump)."""
    dump = httpx2.get(f"{gw.admin}/config_dump?resource=ecds_filters", timeout=10).text
    found = re.findall(r'"@type": "type\.googleapis\.com/envoy\.extensions\.filters\.http\.(\w+)\.v3\.', dump)
    return found[0] if found else ""


def test_filter_runtime_switches_live_and_every_call_stays_governed(
    tmp_path: Path, keys: Keys, upstreams: dict[str, Upstream]
) -> None:
    with running_gateway(tmp_path, keys, upstreams["crm"].url, upstreams["docs"].url, runtime="native") as gw:
        docs, reader = gw.url("docs"), api_key("e2e-reader-key")
        envoy_pid = gw.envoy_pid
        assert filter_type(gw) == "dynamic_modules"
        for old, new, expected in (("native", "wasm", "wasm"), ("wasm", "native", "dynamic_modules")):
            text = gw.registry.read_text()
            gw.registry.write_text(text.replace(f"filter: {{ runtime: {old} }}", f"filter: {{ runtime: {new} }}", 1))
            deadline = time.monotonic() + 30
            while filter_type(gw) != expected:
                # Governed all along: allowed calls pass, refused ones are refused.
                assert tool_call(docs, "search_docs", {"query": "envoy"}, reader).status_code == 200
                assert is_denied(tool_call(docs, "admin_reindex", {}, reader))
                assert time.monotonic() < deadline, f"Envoy still runs {filter_type(gw)!r}, not {expected!r}"
                time.sleep(0.2)
            assert tool_call(docs, "search_docs", {"query": "envoy"}, reader).status_code == 200
            assert is_denied(tool_call(docs, "admin_reindex", {}, reader))
        assert gw.envoy_pid == envoy_pid, "one Envoy throughout: the switch is an ECDS update"
