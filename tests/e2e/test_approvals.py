"""Human approval for dangerous tools (issue #17) through real Envoy, both filter builds.

The registry guards `crm/update_customer` and `crm/delete_customer` with `approvals[]`
rules approved by the `admin` role. A guarded call without an approval is never forwarded:
the caller gets JSON-RPC -32042 (MCP's URL-elicitation-required error) whose data carries
the approval id and the page's URL. A real headless Chromium (Debian's `chromium`, driven
over the DevTools pipe) opens that URL, signs in with an approver's API key, sees the
request and approves it; the caller's retry then goes through exactly once. Rejections
come back with the approver's reason; forged, foreign, replayed and expired ids are
refused; other arguments need their own approval; with meshgate unreachable guarded calls
fail closed while other calls pass. One gateway (and its own CRM upstream) per build.
"""

from __future__ import annotations

import json
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest

from e2e_support import (
    HS_SECRET_ENV,
    Gateway,
    Keys,
    Upstream,
    api_key,
    describe,
    jsonrpc_error,
    legacy_body,
    legacy_handshake,
    legacy_headers,
    legacy_session,
    modern_body,
    modern_headers,
    post,
    registry_yaml,
    start_gateway,
    start_upstream,
    stop_gateway,
)
from headless_chromium import CHROMIUM, HeadlessChromium

APPROVAL_REQUIRED = -32042
FORBIDDEN = -32003
CALLER_KEY = "e2e-admin-gdpr-key"  # consumer e2e-admin-gdpr: roles admin + gdpr-officer
CALLER = api_key(CALLER_KEY)
APPROVER_KEY = "e2e-admin-key"  # consumer e2e-admin: role admin

APPROVALS = """
approvals:
  - name: destructive
    match: { tools: ["crm/update_customer"] }
    approvers: { roles: [admin] }
    ttl: 2m
    show_arguments: true
  - name: short-lived
    match: { tools: ["crm/delete_customer"] }
    approvers: { roles: [admin] }
    ttl: 3s
"""


@dataclass
class Setup:
    gateway: Gateway
    crm: Upstream
    page: str

    def crm_url(self) -> str:
        return self.gateway.url("crm")


@pytest.fixture(scope="module")
def approvals(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], runtime: str) -> Iterator[Setup]:
    workdir = tmp_path_factory.mktemp(f"approvals-{runtime}")
    # Its own CRM: approved calls change customers, which other modules read.
    crm = start_upstream("crm-approvals", "crm_server.py", workdir)
    gateway = None
    try:
        (workdir / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
        registry = workdir / "registry.yaml"
        # gdpr-officer callers may delete; the admin role approves (and, as a caller, updates).
        registry.write_text(registry_yaml(crm.url, upstreams["docs"].url) + APPROVALS)
        gateway = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
        page = f"{gateway.ready['meshgate_admin']}/approvals"
        yield Setup(gateway, crm, page)
    finally:
        if gateway is not None:
            stop_gateway(gateway)
        crm.proc.stop()


_ids = iter(range(1000, 10**6))


_sessions: dict[tuple[str, str], str | None] = {}


def session_headers(setup: Setup, credentials: dict[str, str]) -> dict[str, str]:
    """The 2025-11-25 session of this consumer with the CRM (one handshake per gateway and consumer)."""
    key = (setup.crm_url(), repr(sorted(credentials.items())))
    if key not in _sessions:
        _sessions[key] = legacy_handshake(setup.crm_url(), credentials)
    return legacy_headers(_sessions[key])


def call(setup: Setup, tool: str, arguments: dict[str, Any], credentials: dict[str, str] = CALLER, approval: str | None = None) -> httpx2.Response:
    headers = session_headers(setup, credentials)
    if approval is not None:
        headers["x-meshgate-approval"] = approval
    return post(setup.crm_url(), legacy_body("tools/call", {"name": tool, "arguments": arguments}, id=next(_ids)), credentials, headers)


def pending(response: httpx2.Response) -> dict[str, Any]:
    """The approval data of a call refused for want of an approval."""
    assert response.status_code == 200, describe(response)
    error = jsonrpc_error(response)["error"]
    assert error["code"] == APPROVAL_REQUIRED, describe(response)
    data = error["data"]
    approval = data["approval"]
    assert approval["status"] == "pending" and approval["id"].startswith("ap_"), data
    # The same URL is offered as a URL-mode elicitation (MCP 2025-11-25).
    assert data["elicitations"] == [
        {"mode": "url", "elicitationId": approval["id"], "url": approval["url"], "message": error["message"]}
    ], data
    assert approval["id"] in error["message"] and approval["url"] in error["message"], error["message"]
    return approval


def result_text(response: httpx2.Response) -> str:
    assert response.status_code == 200, describe(response)
    body = response.json() if response.headers.get("content-type", "").startswith("application/json") else None
    if body is None:
        # An SSE answer: the last data line is the result.
        data = [line[5:].strip() for line in response.text.splitlines() if line.startswith("data:")]
        body = json.loads(data[-1])
    assert "result" in body, describe(response)
    return body["result"]["content"][0]["text"]


def forwarded(setup: Setup, mark: int, tool: str) -> list[dict[str, Any]]:
    return setup.crm.log.calls(mark, method="tools/call", name=tool)


class PageClient:
    """The approval page over plain HTTP (for the tests that are not about the browser)."""

    def __init__(self, setup: Setup, key: str) -> None:
        self.setup = setup
        self.http = httpx2.Client(timeout=10, follow_redirects=False)
        signed = self.http.post(f"{setup.page}/sign-in", data={"credential": key})
        assert signed.status_code == 303, describe(signed)
        cookie = signed.headers.get("set-cookie", "")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie, cookie
        self.cookie = cookie.split(";")[0]

    def page(self) -> str:
        response = self.http.get(self.setup.page, headers={"cookie": self.cookie})
        assert response.status_code == 200, describe(response)
        return response.text

    def csrf(self) -> str:
        match = re.search(r'name="csrf" value="([0-9a-f]+)"', self.page())
        assert match, "no CSRF token on the page"
        return match.group(1)

    def decide(self, approval_id: str, decision: str, reason: str = "", csrf: str | None = None) -> httpx2.Response:
        form = {"id": approval_id, "decision": decision, "reason": reason, "csrf": self.csrf() if csrf is None else csrf}
        return self.http.post(f"{self.setup.page}/decide", data=form, headers={"cookie": self.cookie})

    def error_after(self, response: httpx2.Response) -> str:
        location = response.headers.get("location", "")
        return urllib.parse.parse_qs(urllib.parse.urlsplit(location).query).get("error", [""])[0]


def meshgate_log(setup: Setup) -> str:
    return setup.gateway.proc.output.read_text(errors="replace")


def audit_events(setup: Setup, approval_id: str) -> list[str]:
    return [m for line in meshgate_log(setup).splitlines() if approval_id in line for m in re.findall(r"event=approval_(\w+)", line)]


def test_a_person_approves_in_a_real_browser_and_the_retry_goes_through_once(approvals: Setup, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.fail("/usr/bin/chromium is missing: run `make browser-deps`", pytrace=False)
    arguments = {"id": "c-001", "tier": "platinum"}
    mark = approvals.crm.log.mark()
    approval = pending(call(approvals, "update_customer", arguments))
    assert forwarded(approvals, mark, "update_customer") == [], "a guarded call reached the upstream unapproved"
    assert approval["url"] == f"{approvals.page}?id={approval['id']}"

    with HeadlessChromium(tmp_path) as browser:
        browser.open(approval["url"])
        browser.wait_for("document.querySelector('#sign-in')", what="the sign-in form")
        browser.fill("#sign-in input[name=credential]", APPROVER_KEY)
        browser.click("#sign-in button")
        row = f"document.getElementById({approval['id']!r})"
        state = browser.wait_for(f"{row} && {row}.dataset.state", what="the request on the page")
        assert state == "pending"
        text = browser.evaluate(f"{row}.innerText")
        # Who wants to call what, with the arguments (the rule shows them).
        assert "e2e-admin-gdpr" in text and "crm/update_customer" in text and "platinum" in text, text
        assert browser.evaluate("document.getElementById('who').innerText") == "e2e-admin"
        browser.click(f"#approve-{approval['id']}")
        browser.wait_for(f"{row} && {row}.dataset.state === 'approved'", what="the approval")
        assert "e2e-admin" in browser.evaluate(f"{row}.innerText")

        first = call(approvals, "update_customer", arguments)
        assert "platinum" in result_text(first)
        assert len(forwarded(approvals, mark, "update_customer")) == 1

        second = call(approvals, "update_customer", arguments)
        again = pending(second)
        assert again["id"] != approval["id"], "a single-use approval was used twice"
        assert len(forwarded(approvals, mark, "update_customer")) == 1, "the second retry reached the upstream"
        # The page refreshes by itself: the used approval and the new request show up.
        browser.wait_for(f"{row} && {row}.dataset.state === 'used'", timeout=15, what="the page refresh")
        new_row = f"document.getElementById({again['id']!r})"
        browser.wait_for(f"{new_row} && {new_row}.dataset.state === 'pending'", timeout=15, what="the new request")

    events = audit_events(approvals, approval["id"])
    assert events == ["requested", "approved", "used"], events
    log = meshgate_log(approvals)
    assert "platinum" not in log, "an argument value reached meshgate's log"
    metrics = httpx2.get(f"{approvals.gateway.ready['meshgate_admin']}/metrics", timeout=10).text
    for event in ("requested", "approved", "used"):
        assert re.search(rf'meshgate_approval_events_total{{rule="destructive",event="{event}"}} [1-9]', metrics), metrics


@pytest.mark.anyio
async def test_the_python_sdk_sees_the_approval_url_in_the_error(approvals: Setup) -> None:
    from mcp import MCPError, UrlElicitationRequiredError  # noqa: PLC0415

    async with legacy_session(approvals.crm_url(), CALLER) as session:
        with pytest.raises(MCPError) as raised:
            await session.call_tool("update_customer", {"id": "c-002", "tier": "sdk"})
    error = raised.value
    assert error.code == APPROVAL_REQUIRED, repr(error)
    assert approvals.page in str(error), str(error)
    # The SDK's own reader of URL-elicitation errors finds the approval page in it.
    elicitation = UrlElicitationRequiredError.from_error(error.error).elicitations[0]
    assert elicitation.url.startswith(f"{approvals.page}?id=ap_") and elicitation.mode == "url"
    assert elicitation.elicitation_id == error.data["approval"]["id"]


def test_a_rejection_returns_the_reason_and_the_call_stays_refused(approvals: Setup) -> None:
    arguments = {"id": "c-002", "tier": "rejected-tier"}
    mark = approvals.crm.log.mark()
    approval = pending(call(approvals, "update_customer", arguments))
    page = PageClient(approvals, APPROVER_KEY)
    assert approval["id"] in page.page()
    decided = page.decide(approval["id"], "reject", "not <b>during</b> the freeze")
    assert decided.status_code == 303 and not page.error_after(decided), describe(decided)
    refused = call(approvals, "update_customer", arguments)
    error = jsonrpc_error(refused)["error"]
    assert error["code"] == FORBIDDEN and "not <b>during</b> the freeze" in error["message"], error
    assert error["data"]["approval"] == {
        "id": approval["id"],
        "status": "rejected",
        "rule": "destructive",
        "approver": "e2e-admin",
        "reason": "not <b>during</b> the freeze",
    }
    assert forwarded(approvals, mark, "update_customer") == []
    # The page escapes what it shows.
    assert "not &lt;b&gt;during&lt;/b&gt; the freeze" in page.page()
    assert audit_events(approvals, approval["id"]) == ["requested", "rejected"]


def test_other_arguments_need_their_own_approval(approvals: Setup) -> None:
    page = PageClient(approvals, APPROVER_KEY)
    approval = pending(call(approvals, "update_customer", {"id": "c-003", "tier": "gold"}))
    assert page.decide(approval["id"], "approve").status_code == 303
    mark = approvals.crm.log.mark()
    other = pending(call(approvals, "update_customer", {"id": "c-003", "tier": "bronze"}))
    assert other["id"] != approval["id"]
    # The same arguments in another order and spelling are the same call.
    same = post(
        approvals.crm_url(),
        b'{"jsonrpc":"2.0","id":77,"method":"tools/call","params":{"arguments":{"tier":"gold","id":"c-003"},"name":"update_customer"}}',
        CALLER,
        session_headers(approvals, CALLER),
    )
    assert "gold" in result_text(same)
    assert len(forwarded(approvals, mark, "update_customer")) == 1


def test_forged_foreign_replayed_and_expired_ids_are_refused(approvals: Setup) -> None:
    page = PageClient(approvals, APPROVER_KEY)
    arguments = {"id": "c-001", "tier": "silver"}
    mark = approvals.crm.log.mark()

    def refused(response: httpx2.Response, why: str) -> None:
        error = jsonrpc_error(response)["error"]
        assert error["code"] == FORBIDDEN and why in error["message"], error

    refused(call(approvals, "update_customer", arguments, approval="ap_" + "0" * 32), "unknown approval id")
    approval = pending(call(approvals, "update_customer", arguments))
    assert page.decide(approval["id"], "approve").status_code == 303
    # Another consumer presenting it, or other arguments under it: refused, and not used up.
    refused(call(approvals, "update_customer", arguments, credentials=api_key("e2e-admin-key"), approval=approval["id"]), "another call")
    refused(call(approvals, "update_customer", {**arguments, "tier": "x"}, approval=approval["id"]), "another call")
    assert "silver" in result_text(call(approvals, "update_customer", arguments, approval=approval["id"]))
    refused(call(approvals, "update_customer", arguments, approval=approval["id"]), "already used")
    assert len(forwarded(approvals, mark, "update_customer")) == 1

    # Deciding a forged id on the page fails too; nothing was approved by it.
    decided = page.decide("ap_" + "1" * 32, "approve")
    assert "no approval request" in page.error_after(decided)

    # `short-lived` approvals last 3 s.
    gdpr = api_key("e2e-gdpr-key")
    short = pending(call(approvals, "delete_customer", {"id": "c-002"}, credentials=gdpr))
    assert page.decide(short["id"], "approve").status_code == 303
    time.sleep(3.5)
    refused(call(approvals, "delete_customer", {"id": "c-002"}, credentials=gdpr, approval=short["id"]), "expired")
    assert forwarded(approvals, mark, "delete_customer") == []
    # Each expiry is one audit line (meshgate looks every 5 s).
    deadline = time.monotonic() + 15
    while "expired" not in audit_events(approvals, short["id"]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert audit_events(approvals, short["id"]) == ["requested", "approved", "expired"]


def test_approvers_cannot_approve_their_own_calls_and_forms_need_the_csrf_token(approvals: Setup) -> None:
    approval = pending(call(approvals, "update_customer", {"id": "c-001", "tier": "self"}))
    own = PageClient(approvals, CALLER_KEY)  # e2e-admin-gdpr holds admin: an approver, but the caller
    assert "your own request" in own.page()
    decided = own.decide(approval["id"], "approve")
    assert "own request" in own.error_after(decided), describe(decided)
    other = PageClient(approvals, APPROVER_KEY)
    forged = other.decide(approval["id"], "approve", csrf="0" * 64)
    assert forged.status_code == 403
    no_session = httpx2.post(f"{approvals.page}/decide", data={"id": approval["id"], "decision": "approve", "csrf": "x"}, timeout=10)
    assert no_session.status_code == 401
    # A GET changes nothing; the request is still pending.
    assert f'id="{approval["id"]}" data-state="pending"' in other.page()
    # Consumers without an approver role cannot sign in; neither can a bad key.
    http = httpx2.Client(timeout=10)
    for key, why in (("e2e-reader-key", "holds no approver role"), ("not-a-key", "unknown API key")):
        signed = http.post(f"{approvals.page}/sign-in", data={"credential": key}, follow_redirects=False)
        assert signed.status_code == 303 and "set-cookie" not in signed.headers
        assert why in urllib.parse.unquote(signed.headers["location"]), signed.headers["location"]


def test_unreachable_meshgate_fails_guarded_calls_closed_and_leaves_others_alone(approvals: Setup) -> None:
    mark = approvals.crm.log.mark()
    pid = approvals.gateway.proc.pid
    os.kill(pid, signal.SIGSTOP)  # meshgate stops answering; Envoy keeps running
    try:
        started = time.monotonic()
        guarded = call(approvals, "update_customer", {"id": "c-001", "tier": "down"})
        assert time.monotonic() - started < 10
        error = jsonrpc_error(guarded)["error"]
        assert guarded.status_code == 503 and "approval" in error["message"], describe(guarded)
        assert forwarded(approvals, mark, "update_customer") == []
        unguarded = call(approvals, "get_customer", {"id": "c-001"})
        assert "c-001" in result_text(unguarded)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_decisions_hold_across_replicas_sharing_redis(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream]) -> None:
    """Two `meshgate up` (two control planes, two Envoys) on one registry with
    `rate_limit_service`: a request made through one is approved on the other's page, and the
    single-use approval is used once across both. Store behaviour, not the filter's: the
    native build only."""
    from global_limits_support import start_redis  # noqa: PLC0415

    workdir = tmp_path_factory.mktemp("approvals-redis")
    redis = start_redis(workdir)
    crm = start_upstream("crm-approvals-redis", "crm_server.py", workdir)
    gateways: list[Gateway] = []
    try:
        for name in ("a", "b"):
            folder = workdir / name
            folder.mkdir()
            (folder / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
            registry = folder / "registry.yaml"
            registry.write_text(
                registry_yaml(crm.url, upstreams["docs"].url) + APPROVALS + f"rate_limit_service: {{ redis_url: {redis.url} }}\n"
            )
            gateways.append(start_gateway(registry, folder, env={HS_SECRET_ENV: keys.hs_secret}, runtime="native"))
        replica = [Setup(gw, crm, f"{gw.ready['meshgate_admin']}/approvals") for gw in gateways]
        arguments = {"id": "c-001", "tier": "shared"}
        mark = crm.log.mark()
        approval = pending(call(replica[0], "update_customer", arguments))
        assert redis.keys(f"meshgate:approval:req:{approval['id']}") != []
        # The other replica knows the request, and decides it.
        page = PageClient(replica[1], APPROVER_KEY)
        assert approval["id"] in page.page()
        assert page.decide(approval["id"], "approve").status_code == 303
        assert "shared" in result_text(call(replica[0], "update_customer", arguments))
        again = pending(call(replica[1], "update_customer", arguments))
        assert again["id"] != approval["id"]
        assert len(forwarded(replica[0], mark, "update_customer")) == 1
    finally:
        for gw in gateways:
            stop_gateway(gw)
        crm.proc.stop()
        redis.stop()


def test_approvers_sign_in_with_a_jwt_as_the_filter_reads_it(approvals: Setup, keys: Keys) -> None:
    page = PageClient(approvals, keys.token("night-shift", ["admin"]))
    assert "#night-shift</b>" in page.page()
    # A token the filter would refuse is refused here too.
    http = httpx2.Client(timeout=10)
    for token, why in ((keys.forged_rs256("night-shift", ["admin"]), "sign-in refused"), (keys.alg_none("x", ["admin"]), "sign-in refused")):
        signed = http.post(f"{approvals.page}/sign-in", data={"credential": token}, follow_redirects=False)
        assert signed.status_code == 303 and "set-cookie" not in signed.headers
        assert why in urllib.parse.unquote(signed.headers["location"]), signed.headers["location"]


def test_a_2026_07_28_call_is_guarded_the_same_way(approvals: Setup) -> None:
    page = PageClient(approvals, APPROVER_KEY)
    body = modern_body("tools/call", {"name": "update_customer", "arguments": {"id": "c-003", "tier": "modern"}})
    headers = modern_headers("tools/call", "update_customer")
    mark = approvals.crm.log.mark()
    approval = pending(post(approvals.crm_url(), body, CALLER, headers))
    assert forwarded(approvals, mark, "update_customer") == []
    assert page.decide(approval["id"], "approve").status_code == 303
    assert "modern" in result_text(post(approvals.crm_url(), body, CALLER, headers))
    assert len(forwarded(approvals, mark, "update_customer")) == 1
    pending(post(approvals.crm_url(), body, CALLER, headers))
