"""A highly available control plane: two `meshgate serve` replicas reading one registry.

  redis-server ◀── replica A ◀──┬── Envoy HA (bootstrap naming A and B) ◀── clients
               ◀── replica B ◀──┘
                   A ◀── Envoy a,  B ◀── Envoy b   (one replica each: the global count)

- The replicas publish the same version (a content hash), before and after an edit.
- Global rate limits stay exact when two replicas decide: Redis holds the only count.
- The replica Envoy HA is connected to is killed (SIGKILL) while calls flow: no call fails,
  Envoy reconnects to the other replica, and an edit made afterwards reaches it from there.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import httpx2
import pytest

from e2e_support import describe, legacy_body, post, wait_outside_window_edge
from global_limits_support import CONSUMERS, metrics, registry, start_quota_upstream, start_redis
from xds_support import (
    ControlPlane,
    Traffic,
    call,
    kill,
    outcome,
    start_control_plane,
    start_envoy,
    stop_quietly,
    wait_for,
    write_registry,
)

pytestmark = [pytest.mark.e2e, pytest.mark.quotas]

LIMIT = 12
# Envoy's health check marks a dead replica within about a second; its ADS backoff is
# capped at 2 s. A correctness bound with room for a loaded machine, not a speed target.
FAILOVER_WITHIN = 15.0


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory, runtime: str) -> Iterator[SimpleNamespace]:
    workdir = tmp_path_factory.mktemp(f"ha-{runtime}")
    env = SimpleNamespace(workdir=workdir, runtime=runtime, redis=None, upstream=None, replicas=[], envoys=[])
    try:
        env.redis = start_redis(workdir)
        env.upstream = start_quota_upstream(workdir)
        env.registry = workdir / "registry.yaml"
        env.text = registry(env.upstream.url, env.redis.url, LIMIT) + f"filter: {{ runtime: {runtime} }}\n"
        write_registry(env.registry, env.text)
        env.replicas = [start_control_plane(env.registry, workdir, name=f"meshgate-{n}") for n in ("a", "b")]
        yield env
    finally:
        stop_quietly(*[e.proc for e in env.envoys])
        stop_quietly(*[r.proc for r in env.replicas])
        if env.upstream is not None:
            stop_quietly(env.upstream.proc)
        if env.redis is not None:
            env.redis.stop()


def versions(replicas: list[ControlPlane]) -> list[str]:
    return [r.status()["version"] for r in replicas]


def test_replicas_publish_identical_versions(ha):
    a, b = ha.replicas
    assert a.ready["version"] == b.ready["version"]
    assert versions(ha.replicas) == [a.ready["version"]] * 2
    assert a.status()["resources"] == b.status()["resources"]
    edited = ha.text.replace('user: { allow: ["*"] }', 'user: { allow: ["*"], deny: ["tools/big"] }')
    assert edited != ha.text
    try:
        write_registry(ha.registry, edited)
        wait_for("both replicas load the edit", lambda: a.ready["version"] not in versions(ha.replicas)
                 and len(set(versions(ha.replicas))) == 1)
    finally:
        write_registry(ha.registry, ha.text)
    wait_for("both replicas are back on the first version", lambda: versions(ha.replicas) == [a.ready["version"]] * 2)


def hit(url: str, consumer: str, id: int) -> httpx2.Response:
    return post(url, legacy_body("tools/call", {"name": "hit", "arguments": {"n": id}}, id=id), {"x-api-key": consumer},
                timeout=20)


def test_global_limit_is_exact_across_replicas(ha):
    a, b = ha.replicas
    # One Envoy per replica: each replica decides the calls of its own Envoy.
    envoys = [start_envoy(plane, f"envoy-ha-{n}", "sotw", ha.workdir) for plane, n in ((a, "a"), (b, "b"))]
    ha.envoys += envoys
    wait_outside_window_edge(3600, margin=30)
    before = [metrics(r.admin) for r in ha.replicas]

    def one(i: int) -> httpx2.Response:
        return hit(envoys[i % 2].url("tools"), CONSUMERS[i % len(CONSUMERS)], 3000 + i)

    with ThreadPoolExecutor(max_workers=16) as pool:
        responses = list(pool.map(one, range(3 * LIMIT)))
    statuses = [r.status_code for r in responses]
    assert statuses.count(200) == LIMIT, [describe(r) for r in responses if r.status_code not in (200, 429)]
    assert statuses.count(429) == 2 * LIMIT, statuses
    ok = 'meshgate_ratelimit_requests_total{rule="fleet",decision="ok"}'
    over = 'meshgate_ratelimit_requests_total{rule="fleet",decision="over_limit"}'
    after = [metrics(r.admin) for r in ha.replicas]
    decided = [after[i].get(ok, 0) + after[i].get(over, 0) - before[i].get(ok, 0) - before[i].get(over, 0)
               for i in range(2)]
    # Each replica decided its own Envoy's calls; together, exactly the limit was admitted.
    assert decided == [3 * LIMIT / 2, 3 * LIMIT / 2], decided
    assert sum(after[i].get(ok, 0) - before[i].get(ok, 0) for i in range(2)) == LIMIT
    assert ha.redis.keys("meshgate:rl:*") == ["meshgate:rl:fleet:w3600:tools/hit"]
    stop_quietly(*[e.proc for e in envoys])


def connected_to(replicas: list[ControlPlane], node_id: str) -> list[int]:
    """Indexes of the replicas `node_id` has an open ADS stream to."""
    out = []
    for i, replica in enumerate(replicas):
        try:
            node = replica.status()["nodes"].get(node_id)
        except (httpx2.HTTPError, OSError):
            continue
        if node and node["streams"] > 0:
            out.append(i)
    return out


def test_envoy_fails_over_when_its_replica_dies(ha):
    a, b = ha.replicas
    envoy = start_envoy(a, "envoy-ha", "delta", ha.workdir, replicas=(b,))
    ha.envoys.append(envoy)
    wait_for("Envoy has one ADS stream", lambda: len(connected_to(ha.replicas, envoy.node_id)) == 1)
    (first,) = connected_to(ha.replicas, envoy.node_id)
    dead, survivor = ha.replicas[first], ha.replicas[1 - first]
    echo = lambda: outcome(call(envoy.url("tools"), "echo_args", key=CONSUMERS[0], arguments={"pad": "x"}))  # noqa: E731
    assert echo() == "allowed"
    with Traffic(envoy.url("tools"), "echo_args", {"pad": "x"}, key=CONSUMERS[0]) as traffic:
        ok_before = traffic.ok
        wait_for("traffic flows", lambda: traffic.ok > ok_before + 3)
        kill(dead.proc)
        took = wait_for("Envoy reconnects to the other replica",
                        lambda: survivor.status()["nodes"].get(envoy.node_id, {}).get("streams", 0) > 0,
                        within=FAILOVER_WITHIN, step=0.1)
        ok_at_failover = traffic.ok
        wait_for("traffic keeps flowing", lambda: traffic.ok > ok_at_failover + 3)
    assert traffic.ok > 0
    assert not traffic.failures, f"calls failed while the replica died: {traffic.failures[:5]}"
    # An edit made now reaches Envoy through the surviving replica only.
    edited = ha.text.replace('user: { allow: ["*"] }', 'user: { allow: ["*"], deny: ["tools/echo_args"] }')
    assert edited != ha.text
    try:
        write_registry(ha.registry, edited)
        wait_for("the edit reaches Envoy through the survivor", lambda: echo() == "denied", within=FAILOVER_WITHIN)
        version = survivor.status()["version"]
        wait_for("Envoy ACKs the survivor's new version",
                 lambda: version in survivor.status()["nodes"][envoy.node_id]["acked"].values())
    finally:
        write_registry(ha.registry, ha.text)
    print(f"[{ha.runtime}] failover after {took:.2f}s; {traffic.ok} calls meanwhile, none failed")
