"""A filter failure is never permanent: a crashed wasm VM fails one request, closed, with a
JSON-RPC 503, and the next requests get a fresh VM (Envoy's `FAIL_RELOAD` policy).

Before, the plugin's fail-closed policy left a crashed VM answering 503 to every later
request on that worker until Envoy restarted. To crash a VM on purpose this module builds a
test variant of the filter (cargo feature `test-crash-trigger`, cargo profile `crash-test`:
its own output folder, never the production module; about 2 minutes cold, cached after): a
request carrying `x-meshgate-test-crash: <callback>` aborts the VM in that callback.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from e2e_support import (
    LEGACY_VERSION,
    REPO,
    Gateway,
    Keys,
    Upstream,
    api_key,
    describe,
    jsonrpc_error,
    legacy_body,
    marker,
    post,
    running_gateway,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

READER = api_key("e2e-reader-key")
LEGACY = {"MCP-Protocol-Version": LEGACY_VERSION}
CRASH_HEADER = "x-meshgate-test-crash"
INTERNAL_ERROR = -32603
CRASH_PROFILE = "crash-test"
CRASH_WASM = REPO / "target" / "wasm32-wasip1" / CRASH_PROFILE / "meshgate_wasm.wasm"
# Enough new connections that both Envoy workers (concurrency 2) serve some of them.
LATER_REQUESTS = 40


@pytest.fixture(scope="module")
def crash_wasm() -> Path:
    """The filter with the crash trigger, built (or found up to date) by cargo under its own
    profile: the production module (`release`) is never touched."""
    cmd = [
        "cargo", "build", "--profile", CRASH_PROFILE, "--target", "wasm32-wasip1", "-p", "meshgate-wasm",
        "--features", "test-crash-trigger",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1100)
    if done.returncode != 0 or not CRASH_WASM.exists():
        pytest.fail(f"building the crash-trigger filter failed:\n{done.stderr[-3000:]}", pytrace=False)
    return CRASH_WASM


@pytest.fixture(scope="module")
def crash_gateway(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], crash_wasm: Path
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("crash-gateway")
    # The wasm build only: a trapped VM is what FAIL_RELOAD recovers from. The native build's
    # panics are caught per request (tests/e2e/test_native.py).
    crm, docs = upstreams["crm"].url, upstreams["docs"].url
    with running_gateway(workdir, keys, crm, docs, wasm=crash_wasm, runtime="wasm") as gw:
        yield gw


def search(url: str, text: str, crash: str | None = None, id: int = 1) -> httpx2.Response:
    headers = dict(LEGACY)
    if crash:
        headers[CRASH_HEADER] = crash
    body = legacy_body("tools/call", {"name": "search_docs", "arguments": {"query": text}}, id=id)
    return post(url, body, READER, headers)


def assert_all_later_requests_succeed(url: str, context: str) -> None:
    """Every worker serves again: each request on a new connection (so both workers get
    some), each answered by the upstream."""
    for i in range(LATER_REQUESTS):
        r = search(url, f"envoy {i}", id=100 + i)
        assert r.status_code == 200 and "result" in r.json(), f"{context}: request {i} after the crash: {describe(r)}"


def wait_reloaded(url: str) -> float:
    """A failed VM is reloaded on the next request after a short backoff (≤ 100 ms the first
    time): the first success comes quickly. Returns how long it took."""
    start = time.monotonic()
    while True:
        r = search(url, "envoy")
        if r.status_code == 200:
            return time.monotonic() - start
        assert time.monotonic() - start < 5, f"no fresh VM within 5 s: {describe(r)}"
        time.sleep(0.05)


@pytest.mark.parametrize("callback", ["request-headers", "response-headers"])
def test_a_crashed_vm_fails_one_request_with_a_json_rpc_503_and_is_reloaded(crash_gateway, docs, callback):
    url = crash_gateway.url("docs")
    assert search(url, "envoy").status_code == 200

    canary = marker()
    mark = docs.log.mark()
    crashed = search(url, canary, crash=callback, id=7)
    assert crashed.status_code == 503, describe(crashed)
    assert crashed.headers["content-type"].startswith("application/json"), describe(crashed)
    assert crashed.headers.get("retry-after") == "1", describe(crashed)
    body = jsonrpc_error(crashed)
    assert body["id"] is None and body["error"]["code"] == INTERNAL_ERROR, describe(crashed)
    assert "filter failed" in body["error"]["message"], describe(crashed)
    forwarded = docs.log.containing(canary)
    if callback == "request-headers":
        assert not forwarded, "a request whose filter crashed before deciding reached the upstream"
    else:
        assert len(docs.log.since(mark)) >= 1  # decided and forwarded; the answer's filter crashed

    took = wait_reloaded(url)
    assert_all_later_requests_succeed(url, callback)
    print(f"[{callback}] first success {took:.3f}s after the crash")


def test_a_crash_after_the_answer_started_ends_only_that_stream(crash_gateway, docs):
    """A VM that fails while the response body streams cannot change the status already
    sent: that one stream is reset (the client sees a broken answer); nothing else is."""
    url = crash_gateway.url("docs")
    try:
        r = search(url, "envoy", crash="response-body", id=9)
        broken = r.status_code != 200 or "result" not in r.text
    except httpx2.HTTPError:
        broken = True
    assert broken, "the crash did not happen: the test proves nothing"
    wait_reloaded(url)
    assert_all_later_requests_succeed(url, "response-body")


def test_the_production_module_has_no_crash_trigger(gateway, docs):
    """The header means nothing to the real filter."""
    r = search(gateway.url("docs"), "envoy", crash="request-headers")
    assert r.status_code == 200 and "result" in r.json(), describe(r)
