"""Virtual servers: resources and paginated merged lists (`virtual_servers[].resources`,
combined cursors).

Real Envoy, both filter builds (`runtime`), one gateway per build for the whole module. The
backing servers are real Python SDK servers: `crm` (stateful, SSE answers) and `docs`
(stateless JSON) from the examples, and two low-level SDK servers that page every list two
items at a time (`paged_server.py`: `alpha` with 5 tools and resources, `beta` with 3).

- `paged` = alpha + beta, with their resources: the official client pages through the merged
  lists with the gateway's cursor, and each backend sees only the list requests it still has
  pages for (its own request log counts them).
- `cached` = gamma, whose lists say `ttlMs: 600000, cacheScope: public`: the gateway answers
  the same list again from its cache (gamma sees no request) until the configuration changes.
- `mixed` = crm's and docs' resources: merged and filtered per caller exactly as on
  `/mcp/crm` and `/mcp/docs`; `resources/read` routed by URI (never renamed) and governed as
  the backing server's own request.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from e2e_support import (
    FORBIDDEN,
    HS_SECRET_ENV,
    Gateway,
    Keys,
    Upstream,
    api_key,
    jsonrpc_error,
    modern_body,
    modern_client,
    modern_headers,
    post,
    registry_yaml,
    start_gateway,
    base_headers,
    start_upstream,
    stop_gateway,
)

pytestmark = pytest.mark.e2e

READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
INVALID_PARAMS = -32602
TESTS = Path(__file__).resolve().parent

VIRTUAL = """
virtual_servers:
  - name: paged
    servers: [alpha, beta]
    resources: ["alpha/paged://alpha/*", "beta/paged://beta/*"]
  - name: mixed
    tools: ["crm/get_*"]
    resources: ["crm/crm://*", "docs/docs://*"]
  - name: cached
    servers: [gamma]
"""


@pytest.fixture(scope="module")
def paged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Upstream]]:
    workdir = tmp_path_factory.mktemp("paged-upstreams")
    started: dict[str, Upstream] = {}
    try:
        for name, count, hints in (("alpha", 5, []), ("beta", 3, []), ("gamma", 2, ["--ttl-ms", "600000", "--scope", "public"])):
            args = ["--prefix", name, "--tools", str(count), "--page-size", "2", *hints]
            started[name] = start_upstream(name, TESTS / "paged_server.py", workdir, args)
        yield started
    finally:
        for upstream in started.values():
            upstream.proc.stop()


@pytest.fixture(scope="module")
def lists_gateway(
    tmp_path_factory: pytest.TempPathFactory,
    keys: Keys,
    upstreams: dict[str, Upstream],
    paged: dict[str, Upstream],
    runtime: str,
) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp(f"virtual-lists-{runtime}")
    (workdir / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
    extra_servers = "".join(f"  - name: {n}\n    url: {u.url}\n" for n, u in paged.items())
    registry = registry_yaml(upstreams["crm"].url, upstreams["docs"].url, extra_servers=extra_servers)
    # Admins may read crm's and the paged servers' resources; readers only beta's.
    admin_resources = 'resources: { allow: ["crm/*"] }'
    assert admin_resources in registry
    registry = registry.replace(admin_resources, 'resources: { allow: ["crm/*", "alpha/*", "beta/*"] }')
    reader_tools = 'allow: ["crm/get_*", "crm/list_*", "docs/search_*", "docs/get_*"]'
    assert reader_tools in registry
    registry = registry.replace(reader_tools, reader_tools + '\n      resources: { allow: ["beta/*"] }')
    path = workdir / "registry.yaml"
    path.write_text(registry + VIRTUAL)
    gw = start_gateway(path, workdir, env={HS_SECRET_ENV: keys.hs_secret}, runtime=runtime)
    try:
        yield gw
    finally:
        stop_gateway(gw)


def url(gw: Gateway, name: str) -> str:
    return f"http://{gw.listener}/mcp/{name}"


def raw_list(gw: Gateway, virtual: str, method: str, creds: dict[str, str], cursor: Any = None, id: Any = "l"):
    params = {} if cursor is None else {"cursor": cursor}
    return post(url(gw, virtual), modern_body(method, params, id=id), creds, headers=modern_headers(method))


def list_cursors(upstream: Upstream, mark: int, method: str) -> list[str | None]:
    """The `params.cursor` of every `method` request the upstream received since `mark`."""
    bodies = [json.loads(c["_entry"]["body"]) for c in upstream.log.calls(mark, method=method)]
    return [b.get("params", {}).get("cursor") for b in bodies]


# ---------------------------------------------------------------------------------- pagination


@pytest.mark.anyio
async def test_the_sdk_client_pages_through_merged_tools_of_two_paged_backends(lists_gateway, paged):
    """alpha has 5 tools, beta 3, both 2 per page: pages of 4, 3 and 1 tools; the third page
    asks alpha only. Every tool exactly once, prefixed, in backing-server order per page."""
    alpha, beta = paged["alpha"], paged["beta"]
    marks = alpha.log.mark(), beta.log.mark()
    pages: list[list[str]] = []
    cursor = None
    async with modern_client(url(lists_gateway, "paged"), ADMIN) as client:
        while True:
            result = await client.list_tools(cursor=cursor, cache_mode="bypass")
            pages.append([t.name for t in result.tools])
            cursor = result.next_cursor
            if cursor is None:
                break
            assert len(pages) < 10, pages
    assert pages == [
        ["alpha__alpha00", "alpha__alpha01", "beta__beta00", "beta__beta01"],
        ["alpha__alpha02", "alpha__alpha03", "beta__beta02"],
        ["alpha__alpha04"],
    ]
    # Each backend was asked once per page it had, with its own cursor.
    alpha_cursors = list_cursors(alpha, marks[0], "tools/list")
    beta_cursors = list_cursors(beta, marks[1], "tools/list")
    assert (alpha_cursors, beta_cursors) == ([None, "2", "4"], [None, "2"]), (alpha_cursors, beta_cursors)


@pytest.mark.anyio
@pytest.mark.parametrize(("who", "expected"), [("admin", 8), ("reader", 3)])
async def test_merged_resources_page_and_are_filtered_per_caller(lists_gateway, who, expected):
    """Readers may read beta's resources only: their pages never show alpha's."""
    creds = ADMIN if who == "admin" else READER
    uris: list[str] = []
    cursor = None
    async with modern_client(url(lists_gateway, "paged"), creds) as client:
        for _ in range(10):
            result = await client.list_resources(cursor=cursor, cache_mode="bypass")
            uris += [str(r.uri) for r in result.resources]
            cursor = result.next_cursor
            if cursor is None:
                break
        templates = (await client.list_resource_templates(cache_mode="bypass")).resource_templates
        assert cursor is None
        # URIs are not renamed: what is listed is read through the same endpoint.
        read = await client.read_resource(uris[-1])
    assert len(uris) == expected and len(set(uris)) == expected, uris
    assert all(u.startswith("paged://beta/") for u in uris) or who == "admin", uris
    assert read.contents[0].text == f"read {uris[-1]}"
    want_templates = ["paged://alpha/items/{n}", "paged://beta/items/{n}"] if who == "admin" else ["paged://beta/items/{n}"]
    assert [t.uri_template for t in templates] == want_templates


def tamper(cursor: str) -> str:
    body = json.loads(base64.urlsafe_b64decode(cursor.removeprefix("mgv1.") + "=="))
    body["p"].append(["crm", "1"])
    return "mgv1." + base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")


@pytest.mark.parametrize("bad", ["garbage", "not-base64", "other-list", "other-server", "number"])
def test_a_bad_cursor_gets_invalid_params_with_the_request_id(lists_gateway, bad):
    first = raw_list(lists_gateway, "paged", "tools/list", ADMIN).json()["result"]
    cursor = first["nextCursor"]
    sent: Any = {
        "garbage": "abc",
        "not-base64": "mgv1.%%%",
        "other-list": cursor,  # sent to prompts/list below
        "other-server": tamper(cursor),  # names crm, which paged does not list tools of
        "number": 5,
    }[bad]
    method = "prompts/list" if bad == "other-list" else "tools/list"
    body = jsonrpc_error(raw_list(lists_gateway, "paged", method, ADMIN, cursor=sent, id=f"bad-{bad}"))
    assert (body["id"], body["error"]["code"]) == (f"bad-{bad}", INVALID_PARAMS), body
    assert "cursor" in body["error"]["message"]


def test_merged_lists_carry_cache_hints_and_the_last_page_no_cursor(lists_gateway):
    response = raw_list(lists_gateway, "paged", "resources/list", ADMIN)
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    assert (result["resultType"], result["cacheScope"], result["ttlMs"]) == ("complete", "private", 0)
    assert result["nextCursor"].startswith("mgv1.")
    last = raw_list(lists_gateway, "paged", "resources/templates/list", ADMIN).json()["result"]
    assert "nextCursor" not in last, last


# ----------------------------------------------------------------------------------- resources


@pytest.mark.anyio
@pytest.mark.parametrize("who", ["admin", "reader"])
async def test_merged_resources_are_what_each_caller_sees_on_the_servers_own_endpoints(lists_gateway, who):
    """`mixed` selects all of crm's and docs' resources: the merged lists are exactly the
    union of what the same caller lists on /mcp/crm and /mcp/docs (admins may read crm's,
    readers nothing), every field kept, URIs unchanged."""
    creds = ADMIN if who == "admin" else READER
    async with modern_client(url(lists_gateway, "mixed"), creds) as client:
        resources = (await client.list_resources(cache_mode="bypass")).resources
        templates = (await client.list_resource_templates(cache_mode="bypass")).resource_templates
    own_resources: list[Any] = []
    own_templates: list[Any] = []
    for server in ("crm", "docs"):
        async with modern_client(url(lists_gateway, server), creds) as client:
            own_resources += (await client.list_resources(cache_mode="bypass")).resources
            own_templates += (await client.list_resource_templates(cache_mode="bypass")).resource_templates
    assert [r.model_dump() for r in resources] == [r.model_dump() for r in own_resources]
    assert [t.model_dump() for t in templates] == [t.model_dump() for t in own_templates]
    if who == "admin":
        assert {str(r.uri) for r in resources} == {"crm://stats"}, resources
        assert [t.uri_template for t in templates] == ["crm://customers/{id}"]
    else:
        assert resources == [] and templates == []


def read(gw: Gateway, uri: str, creds: dict[str, str], id: Any = "r"):
    body = modern_body("resources/read", {"uri": uri}, id=id)
    return post(url(gw, "mixed"), body, creds, headers=modern_headers("resources/read", uri))


@pytest.mark.anyio
async def test_a_read_is_routed_by_its_uri_to_its_server(lists_gateway, crm):
    mark = crm.log.mark()
    async with modern_client(url(lists_gateway, "mixed"), ADMIN) as client:
        through = await client.read_resource("crm://customers/c-001")
    async with modern_client(url(lists_gateway, "crm"), ADMIN) as client:
        direct = await client.read_resource("crm://customers/c-001")
    assert through.model_dump() == direct.model_dump()
    reads = crm.log.calls(mark, method="resources/read")
    assert [r.get("name") for r in reads] == ["crm://customers/c-001"] * 2, reads
    # The internal routing header never reaches the server.
    assert all("x-meshgate-target" not in r["_entry"]["headers"] for r in reads)


@pytest.mark.parametrize(
    ("uri", "creds", "code", "says"),
    [
        ("crm://stats", READER, FORBIDDEN, "crm://stats"),  # crm's RBAC: readers read nothing of crm
        ("docs://index", ADMIN, FORBIDDEN, "docs://index"),  # docs' RBAC: no one reads docs' resources
        ("paged://alpha/items/00", ADMIN, INVALID_PARAMS, "not exposed"),  # not selected by mixed
        ("crm://customers/../stats", ADMIN, INVALID_PARAMS, "dot segment"),
        ("crm://customers/a%2Fb", ADMIN, INVALID_PARAMS, "percent-encoded"),
    ],
)
def test_a_read_is_governed_as_on_the_servers_own_endpoint_or_refused(lists_gateway, crm, docs, uri, creds, code, says):
    marks = crm.log.mark(), docs.log.mark()
    body = jsonrpc_error(read(lists_gateway, uri, creds, id="refused"))
    assert (body["id"], body["error"]["code"]) == ("refused", code), body
    assert says in body["error"]["message"], body
    assert not crm.log.posts_since(marks[0]) and not docs.log.posts_since(marks[1])


def test_discovery_offers_resources_when_selected(lists_gateway):
    headers = modern_headers("server/discover")
    for virtual, want in (("mixed", {"tools", "resources"}), ("paged", {"tools", "resources"})):
        response = post(url(lists_gateway, virtual), modern_body("server/discover", {}, id="d"), ADMIN, headers=headers)
        assert response.status_code == 200, response.text
        assert set(response.json()["result"]["capabilities"]) == want, response.text


# ------------------------------------------------------------------------------------- caching


def wait_until(what: str, check, within: float = 20.0) -> None:
    """Polls `check` until it holds (a registry edit is reloaded, then pushed over xDS)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within}s")
        time.sleep(0.1)


def cached_list(client: httpx2.Client, gw: Gateway, creds: dict[str, str], id: str) -> dict[str, Any]:
    headers = {**base_headers(creds), **modern_headers("tools/list")}
    body = json.dumps(modern_body("tools/list", {}, id=id)).encode()
    response = client.post(url(gw, "cached"), content=body, headers=headers, timeout=15)
    assert response.status_code == 200, response.text
    return response.json()


def test_a_cached_merged_list_makes_no_callout_until_the_configuration_changes(lists_gateway, paged):
    """One connection (one Envoy worker: the wasm build keeps a cache per worker). Runs last:
    it edits the registry (and restores it)."""
    gamma = paged["gamma"]
    with httpx2.Client() as client:
        mark = gamma.log.mark()
        first = cached_list(client, lists_gateway, ADMIN, "one")
        assert len(list_cursors(gamma, mark, "tools/list")) == 1
        assert [t["name"] for t in first["result"]["tools"]] == ["gamma__gamma00", "gamma__gamma01"]
        assert 0 < first["result"]["ttlMs"] <= 600000
        again = cached_list(client, lists_gateway, ADMIN, "two")
        assert len(list_cursors(gamma, mark, "tools/list")) == 1, "the second list made a callout"
        assert again["id"] == "two"
        assert again["result"]["tools"] == first["result"]["tools"]
        assert 0 < again["result"]["ttlMs"] <= first["result"]["ttlMs"]
        # Other roles: another entry (readers may not call gamma's tools: an empty list).
        assert cached_list(client, lists_gateway, READER, "three")["result"]["tools"] == []
        assert len(list_cursors(gamma, mark, "tools/list")) == 2
    # A configuration change (a new virtual server) starts with an empty cache.
    registry = lists_gateway.registry
    original = registry.read_text()
    try:
        assert VIRTUAL in original
        registry.write_text(original.replace(VIRTUAL, VIRTUAL + "  - { name: later, servers: [gamma] }\n"))
        later = f"http://{lists_gateway.listener}/mcp/later"
        wait_until(
            "the registry edit applies",
            lambda: post(later, modern_body("tools/list", {}), ADMIN, headers=modern_headers("tools/list")).status_code == 200,
        )
        mark = gamma.log.mark()
        with httpx2.Client() as client:
            cached_list(client, lists_gateway, ADMIN, "four")
        assert len(list_cursors(gamma, mark, "tools/list")) == 1, "the new configuration answered from an old cache"
    finally:
        registry.write_text(original)
