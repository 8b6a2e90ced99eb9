"""Virtual MCP servers in the session-based era (2025-11-25): one sealed client session over
the backing servers' own sessions (`virtual_session_key_env`).

Real Envoy, both filter builds (the `runtime` fixture), three real SDK servers behind the
virtual server `hub`: `crm` (stateful, SSE answers), `docs` (stateless, JSON answers) and
`interact` (stateful, SSE; its `transfer` tool reports progress and asks the client for
confirmation by elicitation in the middle of the call). Clients: the official Python SDK
(`ClientSession`, 2025-11-25), raw HTTP for the attacks, and the MCP Inspector CLI.

What is checked is what the peers read: the backends' request logs (each gets its OWN
session id, never the client's; a stateless backend gets none; the answer to an
elicitation reaches the backend that asked, with its original id), and the client's
answers (errors with the request's id and the spec's HTTP status).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest

from e2e_support import (
    FORBIDDEN,
    HS_SECRET_ENV,
    INVALID_REQUEST,
    LEGACY_VERSION,
    Gateway,
    Keys,
    Proc,
    Upstream,
    UpstreamLog,
    api_key,
    free_port,
    http_client,
    inspector_cli,
    jsonrpc_error,
    legacy_body,
    modern_body,
    modern_headers,
    post,
    registry_yaml,
    response_messages,
    start_gateway,
    stop_gateway,
    ts_client,
    wait_tcp,
)

pytestmark = pytest.mark.e2e

READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
KEY_ENV = "MESHGATE_E2E_VIRTUAL_SESSION_KEY"
HERE = Path(__file__).resolve().parent

HUB = f"""
virtual_servers:
  - name: hub
    description: crm, the docs search and the interactive server
    servers: [crm, interact]
    tools: ["docs/search_*"]
    resources: ["crm/crm://*", "interact/interact://*"]
virtual_session_key_env: {KEY_ENV}
"""


def start_interact(workdir: Path, port: int) -> Upstream:
    """The interactive server on `port` (fixed, so a restart keeps its address)."""
    log = workdir / "upstream-interact.jsonl"
    port_file = workdir / "interact.port"
    port_file.unlink(missing_ok=True)
    proc = Proc.start(
        "interact",
        [str(Path(__import__("sys").executable)), str(HERE / "interactive_server.py"), "--port", str(port), "--port-file", str(port_file)],
        workdir / "upstream-interact.out",
        env={"MESHGATE_UPSTREAM_LOG": str(log)},
    )
    if not wait_tcp("127.0.0.1", port, 30):
        proc.stop()
        pytest.fail(f"interact did not start:\n{proc.tail()}", pytrace=False)
    return Upstream("interact", f"http://127.0.0.1:{port}/mcp", UpstreamLog(log), proc)


class Hub:
    """The gateway, the interactive server (restartable) and the logs of all three."""

    def __init__(
        self, gw: Gateway, interact: Upstream, workdir: Path, port: int, upstreams: dict[str, Upstream], env: dict[str, str]
    ):
        self.gw, self.interact, self.workdir, self.port, self.env = gw, interact, workdir, port, env
        self.crm, self.docs = upstreams["crm"], upstreams["docs"]

    @property
    def url(self) -> str:
        return f"http://{self.gw.listener}/mcp/hub"

    def restart_interact(self) -> None:
        self.interact.proc.stop()
        self.interact = start_interact(self.workdir, self.port)

    def logs(self) -> dict[str, UpstreamLog]:
        return {"crm": self.crm.log, "docs": self.docs.log, "interact": self.interact.log}

    def marks(self) -> dict[str, int]:
        return {name: log.mark() for name, log in self.logs().items()}

    def since(self, marks: dict[str, int]) -> dict[str, list[dict[str, Any]]]:
        return {name: log.since(marks[name]) for name, log in self.logs().items()}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], runtime: str) -> Iterator[Hub]:
    workdir = tmp_path_factory.mktemp(f"vsessions-{runtime}")
    port = free_port()
    interact = start_interact(workdir, port)
    (workdir / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
    registry = workdir / "registry.yaml"
    extra = f"  - name: interact\n    url: {interact.url}\n    timeout: 60s\n"
    base = registry_yaml(upstreams["crm"].url, upstreams["docs"].url, extra_servers=extra)
    # Admins may use interact's prompt and resources too (completion is governed by them).
    base = base.replace('prompts: { allow: ["crm/*"] }', 'prompts: { allow: ["crm/*", "interact/*"] }')
    base = base.replace('resources: { allow: ["crm/*"] }', 'resources: { allow: ["crm/*", "interact/*"] }')
    assert "interact/*" in base, "the e2e registry's admin grants changed"
    registry.write_text(base + HUB)
    env = {HS_SECRET_ENV: keys.hs_secret, KEY_ENV: secrets.token_urlsafe(48)}
    gw = start_gateway(registry, workdir, env=env, runtime=runtime)
    state = Hub(gw, interact, workdir, port, upstreams, env)
    try:
        yield state
    finally:
        stop_gateway(gw)
        state.interact.proc.stop()


def legacy_headers(session_id: str | None) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": LEGACY_VERSION}
    if session_id is not None:
        headers["Mcp-Session-Id"] = session_id
    return headers


def initialize(hub: Hub, creds: dict[str, str]) -> str:
    """A raw initialize + notifications/initialized; the client's session id."""
    body = legacy_body(
        "initialize",
        {"protocolVersion": LEGACY_VERSION, "capabilities": {"elicitation": {}}, "clientInfo": {"name": "raw", "version": "0"}},
        id="init",
    )
    response = post(hub.url, body, creds)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert result["protocolVersion"] == LEGACY_VERSION, result
    session_id = response.headers["mcp-session-id"]
    note = post(hub.url, legacy_body("notifications/initialized", id=None), creds, legacy_headers(session_id))
    assert note.status_code == 202, note.text
    return session_id


def tools_list(hub: Hub, creds: dict[str, str], session_id: str | None, id: Any = "l") -> httpx2.Response:
    return post(hub.url, legacy_body("tools/list", {}, id=id), creds, legacy_headers(session_id))


def backend_session(entries: list[dict[str, Any]]) -> set[str | None]:
    return {e["headers"].get("mcp-session-id") for e in entries}


# --------------------------------------------------------------------------- the SDK client


@pytest.mark.anyio
async def test_the_sdk_client_initializes_lists_and_calls_every_backend(hub):
    """The official client in the 2025-11-25 era, end to end: one initialize answered by the
    filter, a merged list, a call to each server (stateful SSE, stateless JSON), and the
    interactive tool whose progress and elicitation cross the gateway both ways."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import ElicitResult

    asked: list[str] = []
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return ElicitResult(action="accept", content={"confirm": True})

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append((done, total, message))

    marks = hub.marks()
    async with http_client(ADMIN) as http:
        async with streamable_http_client(hub.url, http_client=http) as (read, write):
            async with ClientSession(read, write, elicitation_callback=on_elicit) as session:
                init = await session.initialize()
                assert init.protocol_version == LEGACY_VERSION
                assert init.server_info.name == "hub"
                assert init.capabilities.tools is not None
                tools = (await session.list_tools()).tools
                names = [t.name for t in tools]
                assert {"crm__get_customer", "docs__search_docs", "interact__transfer", "interact__whoami"} <= set(names), names
                assert "docs__get_doc" not in names and "crm__delete_customer" not in names, names
                crm = await session.call_tool("crm__get_customer", {"id": "c-002"})
                assert not crm.is_error and "Grace Hopper" in crm.content[0].text, crm
                docs = await session.call_tool("docs__search_docs", {"query": "envoy"})
                assert not docs.is_error and "envoy" in docs.content[0].text.lower(), docs
                moved = await session.call_tool("interact__transfer", {"amount": 42}, progress_callback=on_progress)
                assert not moved.is_error and moved.content[0].text == "transferred 42", moved
    assert asked == ["Transfer 42?"]
    assert [p[0] for p in progress] == [1, 2, 3], progress

    seen = hub.since(marks)
    # Every backend got the initialize and the client's notifications/initialized.
    for name in ("crm", "docs", "interact"):
        methods = [e.get("method") for e in seen[name] if e["http_method"] == "POST"]
        assert methods[:2] == ["initialize", "notifications/initialized"], (name, methods)
    # Stateful backends see their own session id on everything after initialize; the
    # stateless one sees none; nobody ever sees the client's sealed id.
    for name in ("crm", "interact"):
        later = [e for e in seen[name] if e.get("method") != "initialize" and e["http_method"] == "POST"]
        ids = backend_session(later)
        assert len(ids) == 1 and None not in ids, (name, ids)
        assert not next(iter(ids)).startswith("mgs1."), ids
    assert backend_session([e for e in seen["docs"] if e["http_method"] == "POST"]) == {None}
    # Calls reached their server under the own name.
    assert [e["name"] for e in seen["crm"] if e.get("method") == "tools/call"] == ["get_customer"]
    assert [e["name"] for e in seen["docs"] if e.get("method") == "tools/call"] == ["search_docs"]
    # The elicitation answer reached interact with its own (integer) request id.
    answers = [m for e in seen["interact"] for m in e.get("messages", []) if m.get("response")]
    assert len(answers) == 1 and isinstance(answers[0]["id"], int), answers
    # The client's session ended with DELETE: each stateful backend saw its own.
    for name in ("crm", "interact"):
        deletes = [e for e in seen[name] if e["http_method"] == "DELETE"]
        assert len(deletes) == 1, (name, seen[name])


@pytest.mark.anyio
async def test_the_modern_client_answers_an_elicitation_through_the_virtual_server(hub):
    """2026-07-28: the server asks through the call's result (`input_required`) and the client
    retries the same call with its answers; the retry is routed like any call."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import ElicitResult

    asked: list[str] = []

    async def on_elicit(context, params):
        asked.append(params.message)
        return ElicitResult(action="accept", content={"confirm": True})

    marks = hub.marks()
    async with http_client(ADMIN) as http:
        transport = streamable_http_client(hub.url, http_client=http)
        async with Client(transport, mode="auto", elicitation_callback=on_elicit) as client:
            assert client.protocol_version == "2026-07-28"
            result = await client.call_tool("interact__transfer", {"amount": 5})
    assert not result.is_error and result.content[0].text == "transferred 5", result
    assert asked == ["Transfer 5?"]
    calls = [e for e in hub.interact.log.since(marks["interact"]) if e.get("method") == "tools/call"]
    assert calls and all(c["name"] == "transfer" for c in calls), calls


def test_the_server_request_id_names_the_backend_and_is_restored_exactly(hub):
    """Raw: the elicitation request on the call's SSE answer carries an id naming `interact`;
    the client's answer with that id reaches interact with the original id and JSON type."""
    session_id = initialize(hub, ADMIN)
    marks = hub.marks()
    body = legacy_body("tools/call", {"name": "interact__transfer", "arguments": {"amount": 7}}, id=70)
    with httpx2.Client(timeout=30) as client:
        headers = {**ADMIN, **legacy_headers(session_id), "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        with client.stream("POST", hub.url, content=json.dumps(body), headers=headers) as stream:
            assert stream.status_code == 200
            request = None
            buffer = ""
            chunks = stream.iter_text()
            for chunk in chunks:
                buffer += chunk
                complete, _, buffer = buffer.rpartition("\n")
                for line in complete.split("\n"):
                    if line.startswith("data:"):
                        message = json.loads(line[5:].strip())
                        if message.get("method") == "elicitation/create":
                            request = message
                if request:
                    break
            assert request is not None
            assert isinstance(request["id"], str) and request["id"].startswith("mg1.interact.n."), request
            answer = {"jsonrpc": "2.0", "id": request["id"], "result": {"action": "decline"}}
            sent = post(hub.url, answer, ADMIN, legacy_headers(session_id))
            assert sent.status_code == 202, sent.text
            rest = buffer + "".join(chunks)
    assert "transfer of 7 declined" in rest, rest
    forwarded = [e for e in hub.interact.log.since(marks["interact"]) if any(m.get("response") for m in e.get("messages", []))]
    assert len(forwarded) == 1
    original = json.loads(forwarded[0]["body"])
    assert original["id"] == int(request["id"].rsplit(".", 1)[1]) and original["result"] == {"action": "decline"}
    assert hub.crm.log.since(marks["crm"]) == [] and hub.docs.log.since(marks["docs"]) == []


@pytest.mark.parametrize("id", ["mg1.nobody.n.1", "mg1.docs-x.s.a", "mg1.interact.n.1.5", 12, "plain"])
def test_an_answer_that_names_no_backend_is_refused(hub, id):
    session_id = initialize(hub, ADMIN)
    marks = hub.marks()
    answer = {"jsonrpc": "2.0", "id": id, "result": {"action": "decline"}}
    response = post(hub.url, answer, ADMIN, legacy_headers(session_id))
    error = jsonrpc_error(response)
    assert (response.status_code, error["id"], error["error"]["code"]) == (400, id, INVALID_REQUEST), response.text
    assert all(not entries for entries in hub.since(marks).values())


# --------------------------------------------------------------------------- the sealed id


def test_another_consumer_replaying_the_id_is_refused(hub):
    session_id = initialize(hub, ADMIN)
    marks = hub.marks()
    response = tools_list(hub, READER, session_id, id="replay")
    error = jsonrpc_error(response)
    assert (response.status_code, error["id"], error["error"]["code"]) == (403, "replay", FORBIDDEN), response.text
    assert "another consumer" in error["error"]["message"]
    call = post(
        hub.url,
        legacy_body("tools/call", {"name": "crm__get_customer", "arguments": {"id": "c-001"}}, id=5),
        READER,
        legacy_headers(session_id),
    )
    assert call.status_code == 403 and jsonrpc_error(call)["id"] == 5
    assert all(not entries for entries in hub.since(marks).values()), "a replayed id reached a backend"
    # The owner still uses it.
    assert "crm__get_customer" in tools_list(hub, ADMIN, session_id).text


def _flip(session_id: str, at: int) -> str:
    c = session_id[at]
    return session_id[:at] + ("B" if c != "B" else "C") + session_id[at + 1 :]


@pytest.mark.parametrize("how", ["flipped-early", "flipped-late", "truncated", "forged", "backend-style"])
def test_a_tampered_or_forged_id_is_unknown(hub, how):
    session_id = initialize(hub, ADMIN)
    bad = {
        "flipped-early": _flip(session_id, 8),
        "flipped-late": _flip(session_id, len(session_id) - 3),
        "truncated": session_id[:-6],
        "forged": "mgs1." + secrets.token_urlsafe(len(session_id) * 3 // 4),
        "backend-style": secrets.token_hex(16),
    }[how]
    marks = hub.marks()
    response = tools_list(hub, ADMIN, bad, id="t")
    error = jsonrpc_error(response)
    assert (response.status_code, error["id"], error["error"]["code"]) == (404, "t", INVALID_REQUEST), response.text
    assert all(not entries for entries in hub.since(marks).values())


def test_a_request_without_the_id_is_a_bad_request(hub):
    response = tools_list(hub, ADMIN, None, id="n")
    error = jsonrpc_error(response)
    assert (response.status_code, error["id"]) == (400, "n"), response.text


def test_delete_ends_every_backend_session(hub):
    session_id = initialize(hub, ADMIN)
    # The backends' own ids, as they saw them on the client's first list.
    marks = hub.marks()
    assert tools_list(hub, ADMIN, session_id).status_code == 200
    own = {name: backend_session(entries) for name, entries in hub.since(marks).items()}
    assert own["docs"] == {None} and None not in own["crm"] | own["interact"], own
    marks = hub.marks()
    ended = httpx2.delete(hub.url, headers={**ADMIN, **legacy_headers(session_id)}, timeout=15)
    assert ended.status_code == 200, ended.text
    seen = hub.since(marks)
    for name in ("crm", "interact"):
        deletes = [e for e in seen[name] if e["http_method"] == "DELETE"]
        assert [backend_session([e]) for e in deletes] == [own[name]], (name, seen[name])
    assert seen["docs"] == []
    # The backends forgot those sessions: the id now gets 404 (initialize again).
    again = tools_list(hub, ADMIN, session_id, id="after")
    assert again.status_code == 404 and jsonrpc_error(again)["id"] == "after", again.text
    # DELETE with another consumer's id ends nothing.
    other = initialize(hub, ADMIN)
    marks = hub.marks()
    refused = httpx2.delete(hub.url, headers={**READER, **legacy_headers(other)}, timeout=15)
    assert refused.status_code == 403, refused.text
    assert all(not entries for entries in hub.since(marks).values())


def test_a_session_works_on_another_envoy_with_the_same_key(hub, tmp_path):
    """No shared state: a second gateway (another Envoy, started after the session was
    issued) with the same key serves the session; with another key the id is unknown (404)."""
    session_id = initialize(hub, ADMIN)
    for name in ("registry.yaml", "jwks.json"):
        (tmp_path / name).write_text((hub.workdir / name).read_text())
    for key, expected in ((hub.env[KEY_ENV], 200), (secrets.token_urlsafe(48), 404)):
        workdir = tmp_path / str(expected)
        workdir.mkdir()
        for name in ("registry.yaml", "jwks.json"):
            (workdir / name).write_text((tmp_path / name).read_text())
        other = start_gateway(workdir / "registry.yaml", workdir, env={**hub.env, KEY_ENV: key}, runtime=hub.gw.runtime)
        try:
            assert other.envoy_pid != hub.gw.envoy_pid
            url = f"http://{other.listener}/mcp/hub"
            body = legacy_body("tools/call", {"name": "crm__get_customer", "arguments": {"id": "c-001"}}, id="x")
            response = post(url, body, ADMIN, legacy_headers(session_id))
            assert response.status_code == expected, response.text
            if expected == 200:
                assert "Ada Lovelace" in response.text
            else:
                assert jsonrpc_error(response)["id"] == "x"
        finally:
            stop_gateway(other)


@pytest.mark.anyio
async def test_a_backend_restart_makes_the_client_initialize_again(hub):
    """interact restarts (its sessions are gone): the next call through the old session gets
    the JSON-RPC error of a 404, and a new session works."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared.exceptions import MCPError

    async with http_client(ADMIN) as http:
        async with streamable_http_client(hub.url, http_client=http, terminate_on_close=False) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert (await session.call_tool("interact__whoami", {})).content[0].text == "interact"
                await anyio.to_thread.run_sync(hub.restart_interact)
                with pytest.raises(MCPError) as failed:
                    await session.call_tool("interact__whoami", {})
                assert "interact" in str(failed.value) and "initialize" in str(failed.value), failed.value
                # The other backends of that session still answer.
                assert "Ada" in (await session.call_tool("crm__get_customer", {"id": "c-001"})).content[0].text
    async with http_client(ADMIN) as http:
        async with streamable_http_client(hub.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                assert (await session.call_tool("interact__whoami", {})).content[0].text == "interact"


@pytest.mark.anyio
async def test_the_sdk_client_reads_resources_and_completes_through_the_virtual_server(hub):
    """2025-11-25, the official client: the merged capabilities offer resources, prompts and
    completions (each backend offers them); resources and templates are listed merged and a
    read is routed by URI; a completion reaches the server its reference names, under the
    prompt's own name, and a template completion by its URI."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client
    from mcp.types import PromptReference, ResourceTemplateReference

    marks = hub.marks()
    async with http_client(ADMIN) as http:
        async with streamable_http_client(hub.url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                init = await session.initialize()
                caps = init.capabilities
                assert caps.resources is not None and caps.prompts is not None and caps.completions is not None, caps
                resources = [str(r.uri) for r in (await session.list_resources()).resources]
                assert "crm://stats" in resources, resources
                templates = [t.uri_template for t in (await session.list_resource_templates()).resource_templates]
                assert {"crm://customers/{id}", "interact://accounts/{account}"} <= set(templates), templates
                stats = await session.read_resource("crm://stats")
                assert '"customers"' in stats.contents[0].text, stats
                prompt = await session.complete(PromptReference(type="ref/prompt", name="interact__plan"), {"name": "account", "value": "acme"})
                assert prompt.completion.values == ["acme-eu", "acme-us"], prompt
                template = await session.complete(
                    ResourceTemplateReference(type="ref/resource", uri="interact://accounts/{account}"), {"name": "account", "value": "g"}
                )
                assert template.completion.values == ["globex"], template
                assert (await session.send_ping()) is not None
    seen = hub.since(marks)
    completions = [json.loads(e["body"]) for e in seen["interact"] if e.get("method") == "completion/complete"]
    assert [c["params"]["ref"] for c in completions] == [
        {"type": "ref/prompt", "name": "plan"},
        {"type": "ref/resource", "uri": "interact://accounts/{account}"},
    ], completions
    # The argument value is the client's, byte for byte; the read went to crm only.
    assert completions[0]["params"]["argument"] == {"name": "account", "value": "acme"}
    assert [e["name"] for e in seen["crm"] if e.get("method") == "resources/read"] == ["crm://stats"]
    assert not [e for e in seen["interact"] if e.get("method") == "resources/read"]


def test_a_completion_is_governed_as_on_the_servers_own_endpoint(hub):
    """The reader holds no prompt grant: refused through the virtual server exactly as on
    /mcp/interact, and the backend never sees it; an unknown prefix names the valid ones."""
    session_id = initialize(hub, READER)
    marks = hub.marks()
    complete = legacy_body(
        "completion/complete", {"ref": {"type": "ref/prompt", "name": "interact__plan"}, "argument": {"name": "account", "value": "a"}}, id=41
    )
    refused = post(hub.url, complete, READER, legacy_headers(session_id))
    error = jsonrpc_error(refused)
    assert error["id"] == 41 and error["error"]["code"] == FORBIDDEN, error
    complete["params"]["ref"]["name"] = "hr__plan"
    unknown = jsonrpc_error(post(hub.url, complete, READER, legacy_headers(session_id)))
    assert unknown["id"] == 41 and "interact__" in unknown["error"]["message"], unknown
    assert not [e for e in hub.since(marks)["interact"] if e.get("method") == "completion/complete"]


def test_a_modern_ping_and_completion_are_answered(hub):
    """2026-07-28: `ping` is answered by the virtual server itself (with `resultType`), and a
    completion is routed by its reference without a session."""
    ping = post(hub.url, modern_body("ping", {}, id=5), ADMIN, modern_headers("ping"))
    assert ping.status_code == 200, ping.text
    assert ping.json() == {"jsonrpc": "2.0", "id": 5, "result": {"resultType": "complete"}}
    params = {"ref": {"type": "ref/prompt", "name": "interact__plan"}, "argument": {"name": "account", "value": "acme-u"}}
    answer = post(hub.url, modern_body("completion/complete", params, id=6), ADMIN, modern_headers("completion/complete"))
    messages = response_messages(answer)
    assert messages[-1]["id"] == 6 and messages[-1]["result"]["completion"]["values"] == ["acme-us"], messages


def test_the_typescript_client_reports_the_ended_session_and_a_new_one_works(hub, tmp_path):
    """The official TypeScript SDK, one session: interact restarts between two calls; the
    second call surfaces the 404 (the SDK's `StreamableHTTPError` with code 404 and the
    filter's JSON-RPC message), the other backends of the session still answer, and a new session
    (a new client) calls interact again."""
    ready, resume = tmp_path / "ts-ready", tmp_path / "ts-resume"
    operations = [
        {"tool": "interact__whoami"},
        {"pause": {"ready": str(ready), "resume": str(resume)}},
        {"tool": "interact__whoami"},
        {"tool": "crm__get_customer", "arguments": {"id": "c-001"}},
    ]
    lines: list[dict[str, Any]] = []
    client = threading.Thread(target=lambda: lines.extend(ts_client(hub.url, ADMIN, operations, timeout=120)))
    client.start()
    try:
        deadline = time.monotonic() + 60
        while not ready.exists() and client.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ready.exists(), "the TypeScript client never reached its pause"
        hub.restart_interact()
    finally:
        resume.touch()
        client.join(150)
    calls = [line for line in lines if line["op"] != "onerror"]
    assert [c["op"] for c in calls] == ["call:interact__whoami"] * 2 + ["call:crm__get_customer"], lines
    assert calls[0]["ok"] and calls[0]["result"]["content"][0]["text"] == "interact", calls[0]
    ended = calls[1]
    assert not ended["ok"] and (ended["error"]["name"], ended["error"]["code"]) == ("StreamableHTTPError", 404), ended
    assert "interact" in ended["error"]["message"] and "initialize" in ended["error"]["message"], ended
    assert calls[2]["ok"] and "Ada" in calls[2]["result"]["content"][0]["text"], calls[2]
    again = [line for line in ts_client(hub.url, ADMIN, [{"tool": "interact__whoami"}]) if line["op"] != "onerror"]
    assert again[0]["ok"] and again[0]["result"]["content"][0]["text"] == "interact", again


def test_get_is_not_offered_and_modern_clients_still_work(hub):
    response = httpx2.get(hub.url, headers={**ADMIN, "Accept": "text/event-stream"}, timeout=15)
    assert response.status_code == 405 and "DELETE" in response.headers.get("allow", ""), response.text
    jsonrpc_error(response)


# --------------------------------------------------------------------------- MCP Inspector CLI


def inspector(hub: Hub, args: list[str], home: Path) -> tuple[int, Any]:
    """`inspector_cli`, its output read as the (pretty-printed) JSON document it prints."""
    code, out = inspector_cli(hub.url, ADMIN, args, home)
    if isinstance(out, str) and "{" in out:
        try:
            out, _ = json.JSONDecoder().raw_decode(out[out.index("{") :])
        except ValueError:
            pass
    return code, out


def test_the_inspector_cli_lists_and_calls_through_the_virtual_server(hub, tmp_path):
    code, listed = inspector(hub, ["--method", "tools/list"], tmp_path)
    assert code == 0 and isinstance(listed, dict), listed
    names = [t["name"] for t in listed["tools"]]
    assert {"crm__get_customer", "docs__search_docs", "interact__whoami"} <= set(names), names
    marks = hub.marks()
    code, called = inspector(hub, ["--method", "tools/call", "--tool-name", "crm__get_customer", "--tool-arg", "id=c-003"], tmp_path)
    assert code == 0 and isinstance(called, dict), called
    assert "Alan Turing" in json.dumps(called), called
    calls = [e for e in hub.crm.log.since(marks["crm"]) if e.get("method") == "tools/call"]
    assert [c["name"] for c in calls] == ["get_customer"]
    assert None not in backend_session(calls)
