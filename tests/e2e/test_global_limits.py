"""Global quotas across a fleet: one `meshgate serve` + Redis, two Envoys sharing one limit.

  redis-server ◀── meshgate serve (ADS + RateLimitService) ◀──┬── Envoy A ◀── clients
                                                              └── Envoy B ◀── clients

The registry has a `scope: global` fixed window of N calls to `tools/hit` (key: tool).
Meshgate's filter tags each call with `x-meshgate-rl-fleet`; Envoy's `ratelimit` filter asks
meshgate, which counts in Redis. Concurrent calls spread over both Envoys are admitted
exactly N times in total; the rest get 429 + JSON-RPC -32029 from the filter. With Redis
stopped, `failure_mode: deny` refuses (429, -32029, `Retry-After: 1`) and meshgate counts
store errors in /metrics; with meshgate itself gone, Envoy's
`failure_mode_deny` answers 503 with a JSON-RPC body.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx2
import pytest

from e2e_support import describe, jsonrpc_error, legacy_body, post, wait_outside_window_edge
from global_limits_support import (
    CONSUMERS,
    metrics,
    registry,
    start_quota_upstream,
    start_redis,
)
from xds_support import kill, start_control_plane, start_envoy, stop_quietly, write_registry

pytestmark = [pytest.mark.e2e, pytest.mark.quotas]

LIMIT = 12
RATE_LIMITED = -32029
INTERNAL_ERROR = -32603


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, runtime: str) -> Iterator[SimpleNamespace]:
    workdir = tmp_path_factory.mktemp(f"global-limits-{runtime}")
    env = SimpleNamespace(workdir=workdir, redis=None, upstream=None, plane=None, envoys=[])
    try:
        env.redis = start_redis(workdir)
        env.upstream = start_quota_upstream(workdir)
        env.registry = workdir / "registry.yaml"
        write_registry(env.registry, registry(env.upstream.url, env.redis.url, LIMIT) + f"filter: {{ runtime: {runtime} }}\n")
        env.plane = start_control_plane(env.registry, workdir)
        env.envoys = [start_envoy(env.plane, f"envoy-global-{n}", "sotw", workdir) for n in ("a", "b")]
        yield env
    finally:
        stop_quietly(*[e.proc for e in env.envoys])
        if env.plane is not None:
            stop_quietly(env.plane.proc)
        if env.upstream is not None:
            stop_quietly(env.upstream.proc)
        if env.redis is not None:
            env.redis.stop()


def hit(url: str, consumer: str, id: int) -> httpx2.Response:
    return post(url, legacy_body("tools/call", {"name": "hit", "arguments": {"n": id}}, id=id), {"x-api-key": consumer},
                timeout=20)


def fire(fleet: SimpleNamespace, count: int, first_id: int) -> list[httpx2.Response]:
    """`count` concurrent calls, alternating between the two Envoys and the consumers."""
    def one(i: int) -> httpx2.Response:
        envoy = fleet.envoys[i % 2]
        return hit(envoy.url("tools"), CONSUMERS[i % len(CONSUMERS)], first_id + i)

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(one, range(count)))


def assert_rate_limited(response: httpx2.Response) -> dict:
    assert response.status_code == 429, describe(response)
    body = jsonrpc_error(response)
    assert body["error"]["code"] == RATE_LIMITED, describe(response)
    assert body["error"]["data"]["limit"] == "fleet", describe(response)
    assert int(response.headers["retry-after"]) >= 1, describe(response)
    return body


def test_envoys_run_the_ratelimit_filter_and_descriptors(fleet):
    for envoy in fleet.envoys:
        dump = envoy.config_dump()
        assert "envoy.filters.http.ratelimit" in dump
        assert '"domain": "meshgate"' in dump
        assert '"cluster_name": "meshgate-xds"' in dump
        assert '"header_name": "x-meshgate-rl-fleet"' in dump
        assert '"descriptor_value": "fleet"' in dump
        assert '"failure_mode_deny": true' in dump


def test_two_envoys_share_one_global_window(fleet):
    wait_outside_window_edge(3600, margin=30)
    mark = fleet.upstream.log.mark()
    before = metrics(fleet.plane.admin)
    responses = fire(fleet, 3 * LIMIT, first_id=1000)
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(admitted) == LIMIT, [describe(r) for r in responses if r.status_code not in (200, 429)]
    for response in refused:
        assert_rate_limited(response)
    # Both Envoys admitted and refused some: the count is really shared.
    per_envoy = {0: 0, 1: 0}
    for i, response in enumerate(responses):
        if response.status_code == 200:
            per_envoy[i % 2] += 1
    assert sum(per_envoy.values()) == LIMIT
    # Only admitted calls reached the upstream, and without the descriptor header.
    calls = fleet.upstream.log.calls(mark, method="tools/call", name="hit")
    assert len(calls) == LIMIT, calls
    for call in calls:
        headers = {k.lower() for k in call["_entry"].get("headers", {})}
        assert not any(h.startswith("x-meshgate-") for h in headers), headers
    after = metrics(fleet.plane.admin)
    ok = 'meshgate_ratelimit_requests_total{rule="fleet",decision="ok"}'
    over = 'meshgate_ratelimit_requests_total{rule="fleet",decision="over_limit"}'
    assert after.get(ok, 0) - before.get(ok, 0) == LIMIT, after
    assert after.get(over, 0) - before.get(over, 0) == 2 * LIMIT, after
    # Calls without the rule's header (initialize, tools/list, ...) never reach meshgate.
    assert after.get("meshgate_ratelimit_unknown_rule_total", 0) == 0, after
    # Still refused afterwards, from either Envoy.
    for envoy in fleet.envoys:
        assert_rate_limited(hit(envoy.url("tools"), CONSUMERS[0], 9999))
    # A client cannot pick its own counter: the filter drops client-sent x-meshgate-* headers,
    # so a spoofed descriptor is still charged to (and refused by) the real one.
    spoofed = post(fleet.envoys[0].url("tools"), legacy_body("tools/call", {"name": "hit", "arguments": {}}, id=5),
                   {"x-api-key": CONSUMERS[0], "x-meshgate-rl-fleet": "someone-else"}, timeout=20)
    assert_rate_limited(spoofed)
    # One counter in Redis: the rule's fixed window for the tool (key: tool).
    assert fleet.redis.keys("meshgate:rl:*") == ["meshgate:rl:fleet:w3600:tools/hit"]


def test_redis_down_fails_closed_and_is_counted(fleet):
    errors = "meshgate_ratelimit_store_errors_total"
    closed = 'meshgate_ratelimit_requests_total{rule="fleet",decision="failed_closed"}'
    before = metrics(fleet.plane.admin)
    fleet.redis.stop()
    try:
        mark = fleet.upstream.log.mark()
        for n, envoy in enumerate(fleet.envoys):
            response = hit(envoy.url("tools"), CONSUMERS[1], 2000 + n)
            body = assert_rate_limited(response)
            assert body["id"] == 2000 + n
            # meshgate's answer carries `retry-after: 1` and `x-meshgate-limit-error:
            # store-unavailable`; the filter keeps both and says the limit could not be checked.
            assert response.headers["retry-after"] == "1", describe(response)
            assert response.headers["x-meshgate-limit-error"] == "store-unavailable", describe(response)
            assert "could not be checked" in body["error"]["message"], body
        assert fleet.upstream.log.calls(mark, method="tools/call") == []
        after = metrics(fleet.plane.admin)
        assert after[errors] - before.get(errors, 0) == 2, after
        assert after[closed] - before.get(closed, 0) == 2, after
    finally:
        fleet.redis.start()
    # A fresh Redis (same port, empty): meshgate's pooled connections to the old one are
    # discarded unused, so the very next call is counted and admitted.
    again = hit(fleet.envoys[0].url("tools"), CONSUMERS[2], 3000)
    assert again.status_code == 200, describe(again)


def test_unreachable_meshgate_is_a_json_rpc_503(fleet):
    """Envoy's own failure path (`failure_mode_deny` + the local-reply mapper): last, it kills meshgate."""
    kill(fleet.plane.proc)
    response = hit(fleet.envoys[1].url("tools"), CONSUMERS[3], 4000)
    assert response.status_code == 503, describe(response)
    body = jsonrpc_error(response)
    assert body["error"]["code"] == INTERNAL_ERROR, describe(response)
    assert "rate limit service unavailable" in body["error"]["message"], describe(response)
    # Calls the global rule does not cover never ask meshgate: initialize still works.
    init = post(fleet.envoys[1].url("tools"), legacy_body("initialize", {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}),
        {"x-api-key": CONSUMERS[3]}, timeout=20)
    assert init.status_code == 200, describe(init)
