"""Quotas and guardrails through a real Envoy (2 workers) and the wasm filter.

Upstreams: tests/e2e/quota_upstream.py in JSON mode (server `tools`, plus the `rl` and
`rl-empty` stand-ins for Envoy's ratelimit filter) and in SSE mode (server `stream`).

Limits under test (see REGISTRY below):
  fixed window  `exact`:   N/m on tools/hit, one counter for the tool (64 consumers race it)
  fixed window  `window`:  3/s on tools/echo_args for one consumer (Retry-After, reset)
  token bucket  `bucket`:  1/s burst 2 on stream/hit (refill)
  in flight:    2 open tools/call per consumer
  sizes:        arguments ≤ 256 bytes (echo_args: 4096), responses ≤ 1 MiB
  global rule   `fleet`:   the x-meshgate-rl-fleet header; the 429 comes from the stand-in.
                           Its rate_limit_service has no Redis and fails open, so Envoy's
                           ratelimit filter lets the call through to the stand-in (the real
                           service is tests/e2e/test_global_limits.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from e2e_support import (
    Upstream,
    api_key,
    api_key_yaml,
    base_headers,
    describe,
    jsonrpc_error,
    legacy_body,
    marker,
    modern_client,
    post,
    response_messages,
    start_gateway,
    start_upstream,
    stop_gateway,
    wait_outside_window_edge,
)

pytestmark = [pytest.mark.e2e, pytest.mark.quotas]

RATE_LIMITED = -32029
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
HERE = Path(__file__).resolve().parent
EXACT_LIMIT = 10
CLIENTS = 64
RACERS = [f"racer-{i:02d}" for i in range(CLIENTS)]
BUCKET_KEYS = ["bucket-key", "bucket-key-2", "bucket-key-3"]
SOLO_KEYS = ["window-key", *BUCKET_KEYS, "inflight-key", "sizes-key", "global-key", "sdk-key"]


def registry(json_url: str, sse_url: str) -> str:
    base = json_url.rsplit("/", 1)[0]
    keys = "\n".join(api_key_yaml(k, k, ["user"]) for k in RACERS + SOLO_KEYS)
    return f"""\
listener: {{ address: 127.0.0.1, port: 0 }}
admin: {{ port: 0 }}
servers:
  - name: tools
    url: {json_url}
    tools:
      - {{ name: echo_args, limits: {{ max_argument_bytes: 4096 }} }}
  - name: stream
    url: {sse_url}
  - name: rl
    url: {base}/ratelimited
  - name: rl-empty
    url: {base}/ratelimited-empty
auth:
  api_keys:
{keys}
policy:
  roles:
    user: {{ allow: ["*"] }}
limits:
  max_argument_bytes: 256
  max_in_flight_per_consumer: 2
  max_response_bytes: 1048576
quotas:
  - name: exact
    match: {{ tools: ["tools/hit"] }}
    quota: {EXACT_LIMIT}/m
    key: tool
  - name: window
    match: {{ tools: ["tools/echo_args"] }}
    quota: 3/s
  - name: bucket
    match: {{ tools: ["stream/hit"] }}
    rate: 1/s
    burst: 2
  - name: sdk
    match: {{ tools: ["stream/echo_args"] }}
    quota: 1/h
    key: consumer
  - name: fleet
    match: {{ tools: ["rl/*", "rl-empty/*"] }}
    quota: 100/m
    scope: global
rate_limit_service:
  # Nothing listens on port 1: meshgate answers OK (fail open) and the stand-in refuses.
  redis_url: redis://127.0.0.1:1/0
  failure_mode: allow
envoy: {{ concurrency: 2, log_level: warn }}
"""


def start_test_upstream(mode: str, workdir: Path) -> Upstream:
    return start_upstream(f"quota-{mode}", HERE / "quota_upstream.py", workdir, ["--mode", mode])


@pytest.fixture(scope="module")
def quota_upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Upstream]]:
    workdir = tmp_path_factory.mktemp("quota-upstreams")
    started: dict[str, Upstream] = {}
    try:
        started["json"] = start_test_upstream("json", workdir)
        started["sse"] = start_test_upstream("sse", workdir)
        yield started
    finally:
        for upstream in started.values():
            upstream.proc.stop()


@pytest.fixture(scope="module")
def qgw(tmp_path_factory: pytest.TempPathFactory, quota_upstreams: dict[str, Upstream], runtime: str):
    workdir = tmp_path_factory.mktemp(f"quota-gateway-{runtime}")
    path = workdir / "registry.yaml"
    path.write_text(registry(quota_upstreams["json"].url, quota_upstreams["sse"].url))
    gw = start_gateway(path, workdir, runtime=runtime)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def call_body(tool: str, arguments: dict | None = None, id: int | str = 1) -> dict:
    return legacy_body("tools/call", {"name": tool, "arguments": arguments or {}}, id=id)


def assert_rate_limited(response: httpx2.Response, request_id, limit: str) -> int:
    """Checks a 429 JSON-RPC -32029 answer naming `limit`; returns its Retry-After."""
    assert response.status_code == 429, describe(response)
    body = jsonrpc_error(response)
    assert body["id"] == request_id, describe(response)
    assert body["error"]["code"] == RATE_LIMITED, describe(response)
    if limit != "in_flight":
        assert f'"{limit}"' in body["error"]["message"], describe(response)
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert body["error"]["data"] == {"limit": limit, "retry_after_secs": retry_after}, describe(response)
    return retry_after


# --------------------------------------------------------------------------- exactness under concurrency


def test_concurrent_clients_get_exactly_n_admissions(qgw, quota_upstreams):
    """64 clients (one consumer each) race a shared fixed window of N across 2 Envoy workers."""
    upstream = quota_upstreams["json"]
    tag = marker()
    mark = upstream.log.mark()
    wait_outside_window_edge(60, margin=8)

    async def one(i: int) -> httpx2.Response:
        headers = base_headers(api_key(RACERS[i]))
        # A fresh client (own connection) per caller, so Envoy spreads them over its workers.
        async with httpx2.AsyncClient(timeout=30) as client:
            body = call_body("hit", {"n": i, "tag": tag}, id=i)
            return await client.post(qgw.url("tools"), content=json.dumps(body), headers=headers)

    async def race() -> list[httpx2.Response]:
        return await asyncio.gather(*(one(i) for i in range(CLIENTS)))

    responses = asyncio.run(race())
    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    assert len(admitted) == EXACT_LIMIT, [describe(r) for r in refused if r.status_code != 429][:3]
    for i, r in enumerate(responses):
        if r.status_code != 200:
            retry = assert_rate_limited(r, i, "exact")
            assert retry <= 60
            assert "retry in" in jsonrpc_error(r)["error"]["message"]
    assert len(refused) == CLIENTS - EXACT_LIMIT
    forwarded = [c for c in upstream.log.calls(mark, "tools/call", "hit") if tag in c["_entry"]["body"]]
    assert len(forwarded) == EXACT_LIMIT, f"upstream saw {len(forwarded)} calls, expected exactly {EXACT_LIMIT}"


# --------------------------------------------------------------------------- windows and buckets over time


def test_retry_after_is_honoured_and_the_window_resets(qgw, quota_upstreams):
    url = qgw.url("tools")
    # Four calls must be decided inside one epoch-aligned 1 s window. Start right after a
    # second boundary; on a machine slow enough that they straddle the next one, try again
    # in a fresh second (refusals are not charged, and a new second is a new window).
    for _attempt in range(3):
        time.sleep(1 - time.time() % 1 + 0.02)
        started = time.time()
        statuses = [post(url, call_body("echo_args", {"pad": "a"}, id=n), api_key("window-key")).status_code for n in range(3)]
        refused = post(url, call_body("echo_args", {"pad": "a"}, id=99), api_key("window-key"))
        if int(time.time()) == int(started):
            break
    else:
        pytest.fail("four calls never fitted in one second")
    assert statuses == [200, 200, 200]
    retry_after = assert_rate_limited(refused, 99, "window")
    assert retry_after == 1
    time.sleep(retry_after)
    again = post(url, call_body("echo_args", {"pad": "a"}, id=100), api_key("window-key"))
    assert again.status_code == 200, describe(again)


def test_token_bucket_refills(qgw):
    url = qgw.url("stream")
    # 1 token per second, burst 2: call 3 is refused iff it comes within 1 s of call 1, and
    # call 5 iff within 2 s. When the machine is too slow for that, start over with a fresh
    # key (a fresh bucket) instead of asserting on timing the test did not get.
    for key in BUCKET_KEYS:
        t0 = time.monotonic()
        first = [post(url, call_body("hit", id=n), api_key(key)).status_code for n in range(2)]
        assert first == [200, 200]
        refused = post(url, call_body("hit", id=3), api_key(key))
        if time.monotonic() - t0 >= 1.0:
            continue
        assert assert_rate_limited(refused, 3, "bucket") == 1
        assert "burst 2" in jsonrpc_error(refused)["error"]["message"]
        time.sleep(1.1)  # one token is back, the next is a second away
        assert post(url, call_body("hit", id=4), api_key(key)).status_code == 200
        fifth = post(url, call_body("hit", id=5), api_key(key)).status_code
        if time.monotonic() - t0 >= 2.0:
            continue
        assert fifth == 429
        return
    pytest.fail(f"no bucket round fitted its timing in {len(BUCKET_KEYS)} tries")


# --------------------------------------------------------------------------- in-flight calls


def test_in_flight_slots_are_released_when_clients_reset(qgw, quota_upstreams):
    url = qgw.url("tools")
    headers = base_headers(api_key("inflight-key"))

    async def scenario() -> None:
        async def hold(i: int) -> None:
            async with httpx2.AsyncClient(timeout=60) as client:
                await client.post(url, content=json.dumps(call_body("slow", {"seconds": 30}, id=i)), headers=headers)

        holders = [asyncio.create_task(hold(i)) for i in range(2)]
        upstream = quota_upstreams["json"]
        mark = upstream.log.mark()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(upstream.log.calls(mark, "tools/call", "slow")) < 2:
            await asyncio.sleep(0.1)  # both calls are open upstream
        async with httpx2.AsyncClient(timeout=10) as client:
            third = await client.post(url, content=json.dumps(call_body("hit", id=3)), headers=headers)
        assert_rate_limited(third, 3, "in_flight")
        assert "2 concurrent calls" in jsonrpc_error(third)["error"]["message"]
        # The clients give up: their connections are reset mid-call.
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        deadline = time.monotonic() + 5
        while True:
            async with httpx2.AsyncClient(timeout=10) as client:
                fourth = await client.post(url, content=json.dumps(call_body("echo_args", {"pad": "x"}, id=4)), headers=headers)
            if fourth.status_code == 200 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert fourth.status_code == 200, f"in-flight slots not released after resets: {describe(fourth)}"

    asyncio.run(scenario())


# --------------------------------------------------------------------------- size guardrails


@pytest.mark.parametrize("server", ["tools", "stream"])
def test_oversized_tool_result_becomes_a_clean_error(server, qgw):
    response = post(qgw.url(server), call_body("big", {"size": 5_000_000}, id=41), api_key("sizes-key"), timeout=60)
    messages = response_messages(response)
    assert messages, describe(response)
    final = messages[-1]
    assert final.get("id") == 41 and final["error"]["code"] == INTERNAL_ERROR, describe(response)
    assert "1048576-byte limit" in final["error"]["message"]
    assert len(response.content) < 10_000, "the oversized result must not be forwarded"
    # The stream still parses as whole messages only.
    assert all("jsonrpc" in m for m in messages)


def test_argument_size_guardrail_refuses_before_the_upstream(qgw, quota_upstreams):
    upstream = quota_upstreams["json"]
    tag = marker()
    mark = upstream.log.mark()
    response = post(qgw.url("tools"), call_body("hit", {"pad": tag + "x" * 1000}, id=51), api_key("sizes-key"))
    assert response.status_code == 413, describe(response)
    body = jsonrpc_error(response)
    assert body["id"] == 51 and body["error"]["code"] == INVALID_PARAMS
    assert "256-byte limit" in body["error"]["message"]
    assert not upstream.log.containing(tag, mark), "an oversized call reached the upstream"
    # echo_args overrides the limit per tool (4096 bytes).
    ok = post(qgw.url("tools"), call_body("echo_args", {"pad": "y" * 1000}, id=52), api_key("sizes-key"))
    assert ok.status_code == 200, describe(ok)


# --------------------------------------------------------------------------- global rules (filter side)


def test_global_rule_header_is_set_and_spoofed_ones_removed(qgw, quota_upstreams):
    upstream = quota_upstreams["json"]
    mark = upstream.log.mark()
    response = post(
        qgw.url("rl"),
        call_body("anything", id="g-1"),
        api_key("global-key"),
        {"x-meshgate-rl-fleet": "someone-else", "x-meshgate-consumer": "admin"},
    )
    assert_rate_limited(response, "g-1", "fleet")
    assert response.headers["retry-after"] == "7"
    assert "over the limit" not in response.text
    assert "100/m" in jsonrpc_error(response)["error"]["message"]
    entries = [e for e in upstream.log.since(mark) if e.get("path") == "/ratelimited"]
    assert len(entries) == 1, entries
    sent = entries[0]["headers"]
    # The filter's header is read by Envoy's ratelimit filter and removed by the route; the
    # descriptor value it carried is checked through meshgate's service in
    # test_global_limits.py. Spoofed ones never get anywhere.
    assert not any(h.lower().startswith("x-meshgate-") for h in sent), sent


def test_global_refusal_without_body_uses_ratelimit_reset(qgw):
    response = post(qgw.url("rl-empty"), call_body("anything", id=7), api_key("global-key"))
    assert response.status_code == 429, describe(response)
    body = jsonrpc_error(response)
    assert body["id"] == 7 and body["error"]["code"] == RATE_LIMITED
    assert response.headers["retry-after"] == "5"


# --------------------------------------------------------------------------- official SDK client


@pytest.mark.anyio
async def test_sdk_client_sees_the_rate_limit_error(qgw, quota_upstreams):
    """`sdk` allows one stream/echo_args call per hour for this consumer: the second is -32029."""
    wait_outside_window_edge(3600, margin=10)
    async with modern_client(qgw.url("stream"), api_key("sdk-key")) as client:
        first = await client.call_tool("echo_args", {"pad": "abc"})
        assert not first.is_error
        with pytest.raises(MCPError) as excinfo:
            await client.call_tool("echo_args", {"pad": "abc"})
    assert excinfo.value.error.code == RATE_LIMITED, repr(excinfo.value.error)
    assert '"sdk"' in excinfo.value.error.message and "retry in" in excinfo.value.error.message



# --------------------------------------------------------------------------- bounded counters

CAPPED_REGISTRY = """\
listener: {{ address: 127.0.0.1, port: 0 }}
admin: {{ port: 0 }}
servers:
  - name: tools
    url: {url}
auth:
  api_keys:
{keys}
policy:
  roles:
    user: {{ allow: ["tools/*"] }}
limits:
  max_local_counters: 2
quotas:
  - name: per-tool
    match: {{ tools: ["tools/*"] }}
    quota: 1/h
    key: consumer_tool
envoy: {{ concurrency: 2, log_level: warn }}
"""


@pytest.fixture(scope="module")
def capped_gw(tmp_path_factory: pytest.TempPathFactory, quota_upstreams: dict[str, Upstream], runtime: str):
    workdir = tmp_path_factory.mktemp(f"capped-gateway-{runtime}")
    path = workdir / "registry.yaml"
    keys = "\n".join(api_key_yaml(k, k, ["user"]) for k in ["capped-a", "capped-b"])
    path.write_text(CAPPED_REGISTRY.format(url=quota_upstreams["json"].url, keys=keys))
    gw = start_gateway(path, workdir, runtime=runtime)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def test_counters_are_bounded_and_new_keys_share_the_overflow(capped_gw):
    """Tool names are the caller's text: each new one would be a shared-data key Envoy never
    frees. Past `limits.max_local_counters`, new keys share their rule's overflow counter
    (fail closed), while counters that exist keep counting on their own."""
    url = capped_gw.url("tools")
    wait_outside_window_edge(3600, margin=10)

    def status(key: str, tool: str, id: int) -> int:
        return post(url, call_body(tool, id=id), api_key(key)).status_code

    # Two counters fill the cap; each admits its one call per hour.
    assert status("capped-a", "echo_args", 1) == 200
    assert status("capped-a", "hit", 2) == 200
    # New keys (a long random-looking name too) go to the one overflow counter: the first
    # is admitted, the next refused, whoever asks.
    assert status("capped-a", "get_" + "z" * 5000, 3) == 200
    refused = post(url, call_body("another_new_tool", id=4), api_key("capped-b"))
    assert assert_rate_limited(refused, 4, "per-tool") >= 1
    # The existing counters still refuse on their own count, not the overflow's.
    assert_rate_limited(post(url, call_body("echo_args", id=5), api_key("capped-a")), 5, "per-tool")
