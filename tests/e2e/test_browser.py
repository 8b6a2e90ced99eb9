"""Browser-facing protections: Host and Origin checks (DNS rebinding, cross-site pages) and
opt-in CORS answered by Envoy's CORS filter.

The route rewrites `Host` to the upstream's, so an upstream's own DNS-rebinding check never
sees the client's: the gateway checks both itself, on a loopback listener accepting only
loopback Host names and loopback origins by default, and refuses anything else with 403 and
a JSON-RPC error before it reaches the upstream. Browser clients need CORS: preflights are
answered by Envoy when a policy allows the origin, refused otherwise.

The official conformance suite's `dns-rebinding-protection` scenario runs through the
gateway in front of the example docs server (anonymous access: the scenario expects an
unauthenticated localhost server to accept a valid request).
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from e2e_support import (
    CATALOG_USER_AGENT,
    CONFORMANCE_CLI,
    FORBIDDEN,
    LEGACY_VERSION,
    NODE20,
    NODE22,
    NODE_DIR,
    POLICY_DENIED_STATUS,
    UNAUTHENTICATED,
    Gateway,
    Keys,
    Proc,
    Upstream,
    api_key,
    describe,
    jsonrpc_error,
    legacy_body,
    post,
    require_node_peers,
    running_gateway,
    start_gateway,
    stop_gateway,
    wait_tcp,
)
from scripted_upstream import ScriptedUpstream, json_response

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
LEGACY = {"MCP-Protocol-Version": LEGACY_VERSION}
APP_ORIGIN = "https://app.example.com"
KIOSK_ORIGIN = "https://kiosk.example.com"
# Pages served from this machine (the real browser's page in `test_a_real_browser_...`).
LOCAL_PAGES = "http://localhost:*"


def port_of(url: str) -> int:
    return urllib.parse.urlsplit(url).port or 80


def tool_call(name: str, id: int = 1) -> dict:
    return legacy_body("tools/call", {"name": name, "arguments": {}}, id=id)


def ok_script(scripted: ScriptedUpstream):
    return scripted.script(
        lambda req: json_response({"jsonrpc": "2.0", "id": req.id, "result": {"content": [{"type": "text", "text": "ok"}]}})
    )


def preflight(url: str, origin: str, headers: str = "authorization, content-type, mcp-session-id") -> httpx2.Response:
    return httpx2.request(
        "OPTIONS",
        url,
        headers={"Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": headers},
        timeout=15,
    )


# --------------------------------------------------------------------------- Host and Origin


def test_dns_rebinding_requests_are_refused_and_never_forwarded(hostile_gateway, scripted):
    """A page on evil.example.com rebinds its name to 127.0.0.1: the browser sends the
    gateway the attacker's Host (and, but on same-origin GETs, its Origin). Refused with a
    JSON-RPC error without id (nothing was read), whatever the credentials, and never
    forwarded: 403 for a foreign Origin (MCP's rule, whatever else is wrong), 421 for a
    foreign Host with no Origin."""
    script = ok_script(scripted)
    url = hostile_gateway.url("evil")
    port = port_of(url)
    attacks = {
        "rebinding, no port": ({"Host": "evil.example.com", "Origin": "http://evil.example.com"}, 403),
        "rebinding, gateway port": ({"Host": f"evil.example.com:{port}", "Origin": f"http://evil.example.com:{port}"}, 403),
        "foreign Host, no Origin (a same-origin request)": ({"Host": f"rebind.127.0.0.1.nip.io:{port}"}, 421),
        "foreign Host, loopback Origin": ({"Host": f"rebind.example.com:{port}", "Origin": "http://localhost:3000"}, 421),
        "loopback Host, foreign Origin (a cross-site page)": (
            {"Host": f"127.0.0.1:{port}", "Origin": "https://evil.example.com"},
            403,
        ),
        "Origin null (sandboxed frame)": ({"Origin": "null"}, 403),
        "loopback lookalike": (
            {"Host": f"localhost.evil.example.com:{port}", "Origin": f"http://localhost.evil.example.com:{port}"},
            403,
        ),
    }
    for name, (headers, status) in attacks.items():
        for creds in (READER, {}):
            r = post(url, tool_call("get_record"), creds, {**LEGACY, **script.headers, **headers})
            assert r.status_code == status, f"{name}: {describe(r)}"
            body = jsonrpc_error(r)
            assert body["id"] is None, f"{name}: {describe(r)}"
            assert body["error"]["code"] == FORBIDDEN, f"{name}: {describe(r)}"
            assert "is not allowed" in body["error"]["message"], f"{name}: {describe(r)}"
    assert script.requests == [], f"forwarded: {[r.headers.get('host') for r in script.requests]}"


def test_loopback_clients_and_pages_pass(hostile_gateway, scripted):
    """SDK clients (no Origin) and pages served from this machine (loopback origins) pass."""
    script = ok_script(scripted)
    url = hostile_gateway.url("evil")
    port = port_of(url)
    for headers in (
        {},
        {"Host": f"localhost:{port}"},
        {"Host": f"localhost:{port}", "Origin": "http://localhost:6274"},
        {"Origin": "http://127.0.0.1:5173"},
    ):
        r = post(url, tool_call("get_record"), READER, {**LEGACY, **script.headers, **headers})
        assert r.status_code == 200, f"{headers}: {describe(r)}"
        assert r.json().get("result"), describe(r)
    assert len(script.requests) == 4


def test_preflight_is_refused_without_cors(gateway, crm):
    """No CORS configured: a browser cannot call the gateway cross-origin. The preflight
    (which carries no credentials) is refused by the filter — 401 from a loopback page, 403
    from a foreign one — with no CORS headers."""
    mark = crm.log.mark()
    url = gateway.url("crm")
    local = preflight(url, "http://localhost:6274")
    assert local.status_code == 401, describe(local)
    foreign = preflight(url, APP_ORIGIN)
    assert foreign.status_code == 403, describe(foreign)
    for r in (local, foreign):
        assert "access-control-allow-origin" not in r.headers, describe(r)
    assert crm.log.since(mark) == [], "a preflight reached the upstream"


# --------------------------------------------------------------------------- CORS


@pytest.fixture(scope="module")
def cors_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    keys: Keys,
    upstreams: dict[str, Upstream],
    scripted: ScriptedUpstream,
    runtime: str,
) -> Iterator[Gateway]:
    """The test registry with a listener CORS policy for APP_ORIGIN, and server `kiosk` (the
    scripted upstream) with its own policy for KIOSK_ORIGIN (with credentials)."""
    kiosk = (
        f"  - name: kiosk\n    url: {scripted.url}\n"
        f'    cors: {{ allow_origins: ["{KIOSK_ORIGIN}", "{LOCAL_PAGES}"], allow_credentials: true, max_age: 1m }}\n'
    )
    listener = f', cors: {{ allow_origins: ["{APP_ORIGIN}"], max_age: 2m }}'
    workdir = tmp_path_factory.mktemp("cors-gateway")
    with running_gateway(
        workdir,
        keys,
        upstreams["crm"].url,
        upstreams["docs"].url,
        evil_url=scripted.url,
        extra_servers=kiosk,
        listener_extra=listener,
        runtime=runtime,
    ) as gw:
        yield gw


def forwarded(scripted) -> list:
    """What reached the scripted upstream through the gateway (meshgate's own `/catalog`
    discovery calls it directly: not part of it)."""
    return [r for r in scripted.requests if not r.headers.get("user-agent", "").startswith(CATALOG_USER_AGENT)]


def test_preflight_is_answered_by_envoy_for_allowed_origins(cors_gateway, scripted):
    """An allowed origin's preflight is answered before the filter (which refuses OPTIONS):
    the methods and MCP headers a browser client needs, never forwarded."""
    before = len(forwarded(scripted))
    evil = cors_gateway.url("evil")
    r = preflight(evil, APP_ORIGIN, "authorization, content-type, mcp-session-id, mcp-protocol-version, mcp-method, mcp-name")
    assert r.status_code == 200, describe(r)
    assert r.headers["access-control-allow-origin"] == APP_ORIGIN
    methods = {m.strip() for m in r.headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "DELETE"} <= methods, r.headers
    allowed = {h.strip().lower() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "mcp-session-id", "mcp-protocol-version", "mcp-method", "mcp-name"} <= allowed
    assert r.headers["access-control-max-age"] == "120"
    assert "access-control-allow-credentials" not in r.headers or r.headers["access-control-allow-credentials"] != "true"

    # A server's own policy replaces the listener's on its route.
    kiosk = cors_gateway.url("kiosk")
    r = preflight(kiosk, KIOSK_ORIGIN)
    assert r.status_code == 200, describe(r)
    assert r.headers["access-control-allow-origin"] == KIOSK_ORIGIN
    assert r.headers["access-control-allow-credentials"] == "true"
    assert r.headers["access-control-max-age"] == "60"
    for url, origin in ((evil, KIOSK_ORIGIN), (kiosk, APP_ORIGIN), (evil, "https://evil.example.com")):
        r = preflight(url, origin)
        assert r.status_code == 403, f"{origin} → {url}: {describe(r)}"
        assert "access-control-allow-origin" not in r.headers, describe(r)
    assert len(forwarded(scripted)) == before, "a preflight reached the upstream"


def test_cors_answers_are_readable_by_the_browser(cors_gateway, scripted):
    """Actual requests from an allowed origin: the upstream's answer and the gateway's own
    errors (401 challenge, policy denial) carry the CORS headers, with the MCP response
    headers exposed. The origin passes the Origin check on the routes its policy covers."""
    script = scripted.script(
        lambda req: json_response(
            {"jsonrpc": "2.0", "id": req.id, "result": {"content": [{"type": "text", "text": "ok"}]}},
            headers={"mcp-session-id": "s-1"},
        )
    )
    url = cors_gateway.url("evil")
    browser = {**LEGACY, **script.headers, "Origin": APP_ORIGIN}
    answered = post(url, tool_call("get_record", 1), READER, browser)
    denied = post(url, tool_call("delete_everything", 2), READER, browser)
    unauthenticated = post(url, tool_call("get_record", 3), {}, browser)
    assert answered.status_code == 200 and answered.json()["result"], describe(answered)
    assert denied.status_code == POLICY_DENIED_STATUS and jsonrpc_error(denied)["error"]["code"] == FORBIDDEN
    assert unauthenticated.status_code == 401 and jsonrpc_error(unauthenticated)["error"]["code"] == UNAUTHENTICATED
    for r in (answered, denied, unauthenticated):
        assert r.headers.get("access-control-allow-origin") == APP_ORIGIN, describe(r)
        exposed = {h.strip().lower() for h in r.headers.get("access-control-expose-headers", "").split(",")}
        assert {"mcp-session-id", "www-authenticate", "mcp-protocol-version"} <= exposed, r.headers
    assert len(script.requests) == 1, "only the allowed call is forwarded"
    # The kiosk's origin is not allowed on evil (its policy covers kiosk only).
    r = post(url, tool_call("get_record", 4), READER, {**browser, "Origin": KIOSK_ORIGIN})
    assert r.status_code == 403, describe(r)
    r = post(cors_gateway.url("kiosk"), tool_call("anything", 5), ADMIN, {**browser, "Origin": KIOSK_ORIGIN})
    assert r.status_code == 200, describe(r)
    assert len(script.requests) == 2


# --------------------------------------------------------------------------- a real browser

BROWSER_PAGE = """<!doctype html><html><body><pre id="out">pending</pre><script>
const spec = SPEC;
async function call(target) {
  try {
    const r = await fetch(target.url, {method: "POST", headers: target.headers, body: JSON.stringify(target.body)});
    return {status: r.status, body: await r.text(), session: r.headers.get("mcp-session-id")};
  } catch (e) {
    return {error: String(e)};
  }
}
(async () => {
  const out = {};
  for (const [name, target] of Object.entries(spec)) out[name] = await call(target);
  document.getElementById("out").textContent = JSON.stringify(out);
})();
</script></body></html>"""


def browser_fetch(spec: dict, workdir: Path) -> dict:
    """Serves a page on http://localhost:<port> whose script POSTs each `spec` entry
    (`{url, headers, body}`) with `fetch`, loads it in headless Chromium and returns what the
    page saw: `{status, body, session}` (the exposed `Mcp-Session-Id`) or `{error}` when the
    browser refused (a failed preflight)."""
    import http.server
    import json
    import threading

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.fail("Chromium missing (run `make browser-deps`)", pytrace=False)
    page = BROWSER_PAGE.replace("SPEC", json.dumps(spec)).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        done = subprocess.run(
            [
                str(chromium), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={workdir / 'chromium'}", "--virtual-time-budget=15000", "--dump-dom",
                f"http://localhost:{server.server_address[1]}/",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
    finally:
        server.shutdown()
    found = re.search(r'<pre id="out">(.*?)</pre>', done.stdout, re.S)
    assert found and found.group(1) != "pending", f"the page did not finish: {done.stdout[-1500:]} {done.stderr[-1500:]}"
    import html

    return json.loads(html.unescape(found.group(1)))


def test_a_real_browser_page_uses_the_gateway_only_where_cors_allows_it(cors_gateway, scripted, tmp_path):
    """Headless Chromium on a page of http://localhost:<port>: with the `kiosk` server's CORS
    policy (which allows local pages) its preflight passes, the call goes through, its answer
    and the exposed `Mcp-Session-Id` are readable, and a denied call shows the gateway's
    JSON-RPC error. On `evil` (no policy for local pages) the browser's preflight is refused
    and nothing reaches the upstream."""
    script = scripted.script(
        lambda req: json_response(
            {"jsonrpc": "2.0", "id": req.id, "result": {"content": [{"type": "text", "text": "from kiosk"}]}},
            headers={"mcp-session-id": "kiosk-session"},
        )
    )
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": LEGACY_VERSION,
        **READER,
        **script.headers,
    }
    spec = {
        "kiosk": {"url": cors_gateway.url("kiosk"), "headers": {**headers, **ADMIN}, "body": tool_call("get_record", 1)},
        "denied": {"url": cors_gateway.url("kiosk"), "headers": headers, "body": tool_call("get_record", 2)},
        "evil": {"url": cors_gateway.url("evil"), "headers": headers, "body": tool_call("get_record", 3)},
    }
    seen = browser_fetch(spec, tmp_path)
    assert seen["kiosk"].get("status") == 200, seen
    assert "from kiosk" in seen["kiosk"]["body"] and seen["kiosk"]["session"] == "kiosk-session", seen
    denied = seen["denied"]
    assert denied.get("status") == POLICY_DENIED_STATUS, seen
    assert f'"code":{FORBIDDEN}' in denied["body"] and "kiosk/get_record" in denied["body"], seen
    assert "error" in seen["evil"] and "status" not in seen["evil"], f"the browser read an answer it may not: {seen}"
    assert [r.id for r in script.requests] == [1], "only the allowed call reached the upstream"


# --------------------------------------------------------------------------- conformance suite


CONFORMANCE_SCENARIO = "dns-rebinding-protection"


@pytest.fixture(scope="module")
def ts_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The TypeScript SDK's own localhost server (`node/ts_localhost_server.mjs`): its DNS-rebinding
    protection checks only `Host`, which the gateway's route rewrites to the upstream's."""
    require_node_peers()
    workdir = tmp_path_factory.mktemp("ts-server")
    port_file = workdir / "port"
    proc = Proc.start("ts-server", [NODE20, str(NODE_DIR / "ts_localhost_server.mjs"), str(port_file)], workdir / "ts-server.out")
    try:
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ts_localhost_server.mjs did not start:\n{proc.tail()}", pytrace=False)
            time.sleep(0.05)
        port = int(port_file.read_text())
        assert wait_tcp("127.0.0.1", port, 10)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def anonymous_gateway(
    tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, Upstream], ts_upstream: str, runtime: str
) -> Iterator[Gateway]:
    """The scenario's setting: localhost MCP servers without authentication (Meshgate with
    anonymous access in front of the Python example docs server and the TypeScript server)."""
    workdir = tmp_path_factory.mktemp("anonymous-gateway")
    registry = workdir / "registry.yaml"
    registry.write_text(
        f"""\
listener: {{ address: 127.0.0.1, port: 0 }}
admin: {{ port: 0 }}
servers:
  - name: docs
    url: {upstreams["docs"].url}
  - name: ts
    url: {ts_upstream}
auth:
  anonymous: {{ consumer: anonymous, roles: [guest] }}
policy:
  roles:
    guest: {{ allow: ["*"] }}
envoy: {{ concurrency: 1, log_level: warn }}
"""
    )
    gw = start_gateway(registry, workdir, runtime=runtime)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def run_conformance(url: str, workdir: Path) -> tuple[int, dict[str, str], str]:
    """The conformance suite's server scenario against `url`: exit code, `{check: status}`
    as it prints them, and its output."""
    require_node_peers()
    done = subprocess.run(
        [str(NODE22), str(CONFORMANCE_CLI), "server", "--url", url, "--scenario", CONFORMANCE_SCENARIO],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "NO_COLOR": "1", "FORCE_COLOR": "0"},
    )
    output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    checks = dict(re.findall(r"\[([a-z0-9-]+)\s*\]\s+(SUCCESS|FAILURE|WARNING)", output))
    return done.returncode, checks, output


@pytest.mark.parametrize("server", ["docs", "ts"])
def test_conformance_dns_rebinding_scenario_passes_through_the_gateway(anonymous_gateway, upstreams, ts_upstream, server, tmp_path):
    """The conformance scenario that failed through the gateway and passed direct: a foreign
    Host/Origin must get a 4xx, a localhost one a 2xx. The TypeScript server checks only
    `Host`, which the route rewrites: its own protection can never fire behind the gateway,
    so only the gateway's check makes the scenario pass there."""
    direct = upstreams["docs"].url if server == "docs" else ts_upstream
    for name, url in (("direct", direct), ("through the gateway", anonymous_gateway.url(server))):
        workdir = tmp_path / name.replace(" ", "-")
        workdir.mkdir()
        code, statuses, output = run_conformance(url, workdir)
        assert statuses == {
            "localhost-host-rebinding-rejected": "SUCCESS",
            "localhost-host-valid-accepted": "SUCCESS",
        }, f"{server} {name}: {statuses}\n{output[-3000:]}"
        assert code == 0, f"{server} {name}: exit {code}\n{output[-3000:]}"
