"""Observability through real Envoy: scripted MCP traffic, then the operator's view of it —
Prometheus metrics from /stats/prometheus, one parsed audit-log JSON line per call, and
OpenTelemetry spans carrying the MCP tags (received by an in-process OTLP/gRPC receiver).

This module runs its own gateway: its registry has an `observability` section, a
redaction rule, a blocking rule and a quota. The whole module runs twice: with an OTel
collector (span tags read the audit fields before the stream ends, so the filter writes them
early and again in `on_log` where they changed) and with the audit file alone (the filter
writes each field once, in `on_log`): both must produce the same audit lines and metrics.
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from e2e_support import (
    POLICY_DENIED_STATUS,
    API_KEYS,
    REPO,
    HS_SECRET_ENV,
    ISSUER_JWKS,
    Gateway,
    Keys,
    Upstream,
    api_key,
    bearer,
    complete_json_lines,
    legacy_body,
    post,
    registry_yaml,
    start_gateway,
    stop_gateway,
    wait_outside_window_edge,
)
from otlp_receiver import OtlpReceiver

pytestmark = [pytest.mark.e2e]

ADMIN = api_key("e2e-admin-key")
READER = api_key("e2e-reader-key")
# JWT consumers are named <issuer>#<subject>; metric labels keep [A-Za-z0-9_-] (64 at most).
ALICE = f"{ISSUER_JWKS}#obs-alice"
ALICE_LABEL = re.sub(r"[^A-Za-z0-9_-]", "_", ALICE)[:64]

OBSERVABILITY = """
observability:
  access_log: {{ path: audit.log }}
{otel}  metrics: {{ consumer_label: true }}
  audit_values: ["docs/search_*"]
redaction:
  - match: {{ tools: ["docs/get_*"] }}
    detectors: [email, phone]
    mode: mask
  - match: {{ tools: ["crm/update_*"] }}
    detectors: [credit_card]
    mode: block
    direction: request
quotas:
  - name: reindex
    match: {{ tools: ["docs/admin_reindex"] }}
    quota: 1/h
"""

CARD = "4111 1111 1111 1111"


@dataclass
class Traffic:
    gateway: Gateway
    otlp: OtlpReceiver | None  # None: the audit file alone, no tracing
    # rid_key(x-request-id) -> (label, expected decision, response)
    calls: dict[str, tuple[str, str, httpx2.Response]]
    token: str


@pytest.fixture(scope="module", params=["otel", "file-only"])
def traffic(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    keys: Keys,
    upstreams: dict[str, Upstream],
    runtime: str,
) -> Iterator[Traffic]:
    workdir: Path = tmp_path_factory.mktemp(f"observability-{runtime}")
    (workdir / "jwks.json").write_text(json.dumps(keys.jwks()))
    otlp = OtlpReceiver().start() if request.param == "otel" else None
    otel = (
        f'  otel: {{ collector: "127.0.0.1:{otlp.port}", service_name: meshgate-e2e, access_log: true }}\n'
        if otlp
        else ""
    )
    registry = workdir / "registry.yaml"
    registry.write_text(registry_yaml(upstreams["crm"].url, upstreams["docs"].url) + OBSERVABILITY.format(otel=otel))
    gw = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
    token = keys.token("obs-alice", ["reader"])
    calls: dict[str, tuple[str, str, httpx2.Response]] = {}

    def send(label: str, decision: str, server: str, body: dict[str, Any], creds: dict[str, str] | None) -> None:
        # A UUID request id: Envoy derives the sampling decision from it.
        rid = str(uuid.uuid4())
        calls[rid[:14] + rid[15:]] = (label, decision, post(gw.url(server), body, creds, headers={"x-request-id": rid}))

    def call(label: str, decision: str, server: str, tool: str, args: dict[str, Any], creds: dict[str, str] | None) -> None:
        send(label, decision, server, legacy_body("tools/call", {"name": tool, "arguments": args}, id=label), creds)

    try:
        call("obs-allowed-1", "allowed", "docs", "search_docs", {"query": "support"}, ADMIN)
        call("obs-allowed-2", "allowed", "docs", "search_docs", {"query": "billing"}, bearer(token))
        call("obs-denied", "denied", "crm", "delete_customer", {"id": "c-001"}, READER)
        call("obs-unauth", "unauthenticated", "docs", "search_docs", {"query": "x"}, None)
        call("obs-bad-key", "unauthenticated", "docs", "search_docs", {"query": "x"}, api_key("not-a-key"))
        call("obs-redacted", "redacted", "docs", "get_doc", {"id": "support"}, ADMIN)
        call("obs-blocked", "blocked", "crm", "update_customer", {"id": "c-001", "email": CARD}, ADMIN)
        wait_outside_window_edge(3600, margin=10)  # `reindex` is 1/h: both calls in one window
        call("obs-quota-1", "allowed", "docs", "admin_reindex", {}, ADMIN)
        call("obs-quota-2", "rate_limited", "docs", "admin_reindex", {}, ADMIN)
        # A method the server does not implement: it answers with a JSON-RPC error. (Not
        # completion/complete: its ref names a prompt or resource, which the gateway governs.)
        send("obs-upstream-error", "error", "docs", legacy_body("logging/setLevel", {"level": "info"}, id=1), ADMIN)
        yield Traffic(gw, otlp, calls, token)
    finally:
        stop_gateway(gw)
        if otlp:
            otlp.stop()


EXPECTED_STATUS = {
    "allowed": 200,
    "denied": POLICY_DENIED_STATUS,
    "unauthenticated": 401,
    "redacted": 200,
    "blocked": POLICY_DENIED_STATUS,
    "rate_limited": 429,
    "error": 200,
}


def eventually(check: Any, timeout: float = 15.0) -> Any:
    """Retries `check` (which raises AssertionError until satisfied) for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def prometheus(gw: Gateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """`/stats/prometheus` samples of the meshgate families: (name, labels) -> value."""
    text = httpx2.get(f"{gw.admin}/stats/prometheus", timeout=10).text
    samples = {}
    for line in text.splitlines():
        m = re.match(r"^(meshgate_\w+)\{(.*)\} (\S+)$", line)
        if m:
            labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2)))
            samples[(m.group(1), labels)] = float(m.group(3))
    return samples


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def audit_lines(gw: Gateway) -> list[dict[str, Any]]:
    path = gw.workdir / "audit.log"
    return complete_json_lines(path.read_text()) if path.exists() else []


def rid_key(request_id: str | None) -> str | None:
    """Envoy packs the trace decision into the 15th character of a UUID request id."""
    return None if request_id is None else request_id[:14] + request_id[15:]


def test_traffic_got_the_expected_answers(traffic: Traffic) -> None:
    for label, decision, r in traffic.calls.values():
        assert r.status_code == EXPECTED_STATUS[decision], f"{label}: {r.status_code} {r.text}"
    upstream_error = next(r for label, _, r in traffic.calls.values() if label == "obs-upstream-error")
    assert upstream_error.json()["error"]["code"] == -32601


def test_metrics_carry_labels_with_exact_counts(traffic: Traffic) -> None:
    tool_calls = {
        ("docs", "search_docs", "allowed", "e2e-admin"): 1,
        ("docs", "search_docs", "allowed", ALICE_LABEL): 1,
        ("crm", "delete_customer", "denied", "e2e-reader"): 1,
        ("docs", "get_doc", "redacted", "e2e-admin"): 1,
        ("crm", "update_customer", "blocked", "e2e-admin"): 1,
        ("docs", "admin_reindex", "allowed", "e2e-admin"): 1,
        ("docs", "admin_reindex", "rate_limited", "e2e-admin"): 1,
    }

    def check() -> dict:
        samples = prometheus(traffic.gateway)
        for (server, tool, decision, consumer), n in tool_calls.items():
            got = sample(samples, "meshgate_tool_calls", server=server, tool=tool, decision=decision, consumer=consumer)
            assert got == n, f"tool_calls {server}/{tool} {decision} {consumer}: {got}"
        found = {k for k in samples if k[0] == "meshgate_tool_calls"}
        assert len(found) == len(tool_calls), sorted(found)
        requests = {
            ("tools_call", "allowed"): 3,
            ("tools_call", "denied"): 1,
            ("tools_call", "redacted"): 1,
            ("tools_call", "blocked"): 1,
            ("tools_call", "rate_limited"): 1,
            ("none", "unauthenticated"): 2,
            ("logging_setLevel", "error"): 1,
        }
        for (method, decision), n in requests.items():
            got = sample(samples, "meshgate_requests", method=method, decision=decision)
            assert got == n, f"requests {method} {decision}: {got}"
        assert sample(samples, "meshgate_redactions", server="docs", tool="get_doc", detector="email") == 2
        assert sample(samples, "meshgate_redactions", server="docs", tool="get_doc", detector="phone") == 2
        assert sample(samples, "meshgate_upstream_errors", server="docs", code="-32601") == 1
        # The histogram appears after a stats flush.
        assert sample(samples, "meshgate_decision_time_us_count", method="tools_call") == 7
        assert sample(samples, "meshgate_decision_time_us_bucket", method="tools_call", le="+Inf") == 7
        return samples

    eventually(check)


def test_one_audit_line_per_call_with_the_right_fields(traffic: Traffic) -> None:
    def complete() -> list[dict[str, Any]]:
        lines = [line for line in audit_lines(traffic.gateway) if rid_key(line.get("request_id")) in traffic.calls]
        assert len(lines) == len(traffic.calls), f"{len(lines)} of {len(traffic.calls)} audit lines"
        return lines

    lines = eventually(complete)
    assert len({line["request_id"] for line in lines}) == len(lines), "one line per call"
    for line in lines:
        label, decision, response = traffic.calls[rid_key(line["request_id"])]
        assert line["decision"] == decision, (label, line)
        assert line["response_code"] == response.status_code, (label, line)
        if traffic.otlp:
            assert re.fullmatch(r"[0-9a-f]{32}", line["trace_id"] or ""), (label, line)
        else:
            assert line["trace_id"] is None, (label, line)
        assert isinstance(line["duration_ms"], int) and isinstance(line["bytes_sent"], int), line
        assert line["start_time"].endswith("Z"), line
        assert line["decision_us"] is not None and int(line["decision_us"]) >= 0, line
        if decision != "unauthenticated":
            assert line["mcp"]["server"] in ("crm", "docs") and line["consumer"], (label, line)
        if decision in ("denied", "blocked", "rate_limited", "unauthenticated", "error"):
            assert line["reason"], (label, line)
            assert line["jsonrpc_error_code"] == str(response.json()["error"]["code"]), (label, line)
        else:
            assert line["reason"] is None and line["jsonrpc_error_code"] is None, (label, line)
    by_label = {traffic.calls[rid_key(line["request_id"])][0]: line for line in lines}
    allowed = by_label["obs-allowed-2"]
    assert (allowed["consumer"], allowed["roles"], allowed["mcp"]) == (
        ALICE,
        "reader",
        {"method": "tools/call", "server": "docs", "kind": "tool", "target": "search_docs"},
    )
    assert allowed["upstream_status"] == "200" and allowed["response_code_details"] == "via_upstream"
    redacted = by_label["obs-redacted"]
    assert (redacted["redactions"], redacted["redacted_total"]) == ("email=2,phone=2", "4"), redacted
    # Argument values only for the opted-in tool.
    assert by_label["obs-allowed-1"]["arguments"] == '{"query":"support"}', by_label["obs-allowed-1"]
    for label, line in by_label.items():
        if not label.startswith("obs-allowed"):
            assert line["arguments"] is None, (label, line)
    assert by_label["obs-quota-1"]["quota"] == "charged:reindex"
    assert by_label["obs-quota-2"]["quota"] == "limited:reindex"
    assert by_label["obs-unauth"]["consumer"] is None and by_label["obs-unauth"]["mcp"]["server"] == "docs"
    error = by_label["obs-upstream-error"]
    assert (error["upstream_jsonrpc_error_code"], error["mcp"]["method"]) == ("-32601", "logging/setLevel")


#: Audit fields whose values the gateway generates, not the caller: masked before short
#: fragments of secrets are searched for, so that a random id cannot look like a leak.
GENERATED_AUDIT_VALUE = re.compile(
    r'"(request_id|trace_id|start_time|decision_us|duration_ms|bytes_received|bytes_sent)":("[^"]*"|-?\d+|null)'
)


def test_no_secret_or_pii_in_any_audit_line(traffic: Traffic) -> None:
    def flushed() -> str:
        # File writes are buffered (about a second): wait until every call's line is there.
        lines = [line for line in audit_lines(traffic.gateway) if rid_key(line.get("request_id")) in traffic.calls]
        assert len(lines) == len(traffic.calls), f"{len(lines)} of {len(traffic.calls)} audit lines"
        return (traffic.gateway.workdir / "audit.log").read_text()

    text = eventually(flushed)
    secrets = [*API_KEYS, "not-a-key", traffic.token, traffic.token.split(".")[1], CARD,
               "support@meshgate.example", "+44 20 7946 0958"]
    for secret in secrets:
        assert secret not in text, f"{secret[:12]}... leaked into the audit log"
    # Fragments of the card and the phone number, searched for with the values the gateway
    # generates (random request and trace ids, timestamps, timings, sizes) masked out:
    # a random UUID contains "7946" often enough to fail one run in a few hundred.
    masked = GENERATED_AUDIT_VALUE.sub(r'"\1":"*"', text)
    assert masked.count('"request_id":"*"') == len(text.splitlines()), masked
    for fragment in ("4111", "7946"):
        assert fragment not in masked, f"{fragment} leaked into the audit log: {masked}"
    assert "Bearer" not in text and '"arguments":"{\\"id' not in text


@pytest.mark.parametrize("traffic", ["otel"], indirect=True)
def test_spans_carry_mcp_tags(traffic: Traffic) -> None:
    def spans() -> dict[str, dict[str, Any]]:
        found = {rid_key(s["attributes"].get("guid:x-request-id")): s for s in traffic.otlp.spans}
        missing = [traffic.calls[r][0] for r in traffic.calls if r not in found]
        assert not missing, f"no span yet for {missing}"
        return found

    found = eventually(spans, timeout=20)
    for rid, (label, decision, _) in traffic.calls.items():
        span = found[rid]
        assert span["resource"].get("service.name") == "meshgate-e2e", span
        attrs = span["attributes"]
        assert attrs.get("meshgate.decision") == decision, (label, attrs)
    tagged = found[next(r for r in traffic.calls if traffic.calls[r][0] == "obs-denied")]["attributes"]
    assert (tagged["mcp.method"], tagged["mcp.tool"], tagged["meshgate.consumer"]) == (
        "tools/call",
        "delete_customer",
        "e2e-reader",
    ), tagged


@pytest.mark.parametrize("traffic", ["otel"], indirect=True)
def test_otel_access_log_records_match_the_file(traffic: Traffic) -> None:
    def records() -> dict[str, dict[str, Any]]:
        got = {rid_key(r["attributes"].get("request_id")): r["attributes"] for r in traffic.otlp.logs}
        assert all(rid in got for rid in traffic.calls), f"{len(got)} OTel audit records"
        return got

    got = eventually(records, timeout=20)
    for rid, (label, decision, _) in traffic.calls.items():
        assert got[rid]["decision"] == decision, (label, got[rid])


@pytest.mark.parametrize("traffic", ["otel"], indirect=True)
@pytest.mark.skipif(not os.environ.get("MESHGATE_DASHBOARD_OUT"), reason="set MESHGATE_DASHBOARD_OUT=docs/dashboard.png")
def test_render_dashboard_from_real_traffic(traffic: Traffic) -> None:
    """Not an assertion: more scripted traffic, then the dashboard panels rendered from the
    real scrape (how docs/dashboard.png is produced). Runs last: it changes the counts."""
    sys.path.insert(0, str(REPO / "examples" / "observability"))
    import render_dashboard

    gw = traffic.gateway
    rng = random.Random(6)
    plan = [
        (40, "docs", "search_docs", {"query": "support"}, ADMIN),
        (25, "docs", "search_docs", {"query": "billing"}, bearer(traffic.token)),
        (12, "docs", "get_doc", {"id": "support"}, ADMIN),
        (6, "crm", "delete_customer", {"id": "c-001"}, READER),
        (4, "crm", "update_customer", {"id": "c-001", "email": CARD}, ADMIN),
        (5, "docs", "search_docs", {"query": "x"}, api_key("not-a-key")),
        (3, "docs", "admin_reindex", {}, ADMIN),
        (8, "docs", "admin_reindex", {}, READER),
    ]
    calls = [(server, tool, args, creds) for n, server, tool, args, creds in plan for _ in range(n)]
    rng.shuffle(calls)
    for i, (server, tool, args, creds) in enumerate(calls):
        post(gw.url(server), legacy_body("tools/call", {"name": tool, "arguments": args}, id=i), creds)
    time.sleep(6)  # histograms appear after a stats flush
    scrape = httpx2.get(f"{gw.admin}/stats/prometheus?filter=meshgate", timeout=10).text
    assert "meshgate_tool_calls" in scrape
    render_dashboard.render(render_dashboard.parse(scrape), REPO / os.environ["MESHGATE_DASHBOARD_OUT"])
