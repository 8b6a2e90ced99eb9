"""A malicious (or merely quirky) upstream, scripted byte by byte: what reaches the client.

Issue #13 items 2, 3, 6 and 9a. Server `evil` is the scripted upstream (scripted_upstream.py):
readers may see and call `evil/get_*` and prompts `evil/public_*`; responses from evil are
masked for e-mail and phone numbers. Every test writes the upstream's answer itself — BOMs,
charsets, ids of another type, CR-only line endings, floods of tiny events, split writes —
and checks what a client receives: raw, and through the official Python and TypeScript
clients, which accept all of these quirks. The rule under test: an answer the gateway
governs is read by it exactly as clients read it, or replaced by a JSON-RPC error for the
request (fail closed); and no answer takes a worker down.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx2
import pytest

from e2e_support import (
    api_key,
    base_headers,
    describe,
    legacy_body,
    legacy_session,
    modern_body,
    modern_headers,
    post,
    response_messages,
    sse_messages,
    ts_client,
)
from scripted_upstream import (
    Action,
    Pause,
    Request,
    Send,
    default_handler,
    head,
    json_response,
    sse_event,
    sse_response,
)

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
INTERNAL_ERROR = -32603

ALLOWED_TOOL = "get_weather"
DENIED_TOOL = "delete_everything"
PUBLIC_PROMPT = "public_greeting"
SECRET_PROMPT = "secret_exfiltrate"
EMAIL = "alice@example.com"
BOM = b"\xef\xbb\xbf"

TOOLS = [
    {"name": ALLOWED_TOOL, "inputSchema": {"type": "object"}},
    {"name": DENIED_TOOL, "inputSchema": {"type": "object"}},
]
PROMPTS = [{"name": PUBLIC_PROMPT}, {"name": SECRET_PROMPT}]


def rpc(rid: Any, result: dict[str, Any]) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": rid, "result": result}


def text_result(rid: Any, text: str, **extra: Any) -> dict[str, Any]:
    return rpc(rid, {"content": [{"type": "text", "text": text}], **extra})


def mcp(**attacks: Callable[[Request], Iterable[Action]]) -> Callable[[Request], Iterable[Action]]:
    """A script answering the JSON-RPC methods named (`tools_list=...` for tools/list) with
    an attack, and everything else like a plain MCP server (so SDK clients can connect)."""
    by_method = {name.replace("_", "/"): attack for name, attack in attacks.items()}

    def handler(req: Request) -> Iterable[Action]:
        attack = by_method.get(req.rpc_method or "")
        return attack(req) if attack else default_handler(req)

    return handler


def ts_lists(url: str, headers: dict[str, str], *operations: str) -> dict[str, dict[str, Any]]:
    """The official TypeScript client (`e2e_support.ts_client`) running `operations` (`tools`,
    `prompts`, `resources`, `call:<tool>`): what each one read (`result`) or raised (`error`)."""
    ops = [{"tool": op[5:]} if op.startswith("call:") else {"list": op} for op in operations]
    out = {line["op"]: line for line in ts_client(url, headers, ops) if line["op"] in (*operations, "connect")}
    assert "connect" not in out, f"TS client could not connect: {out['connect']}"
    return out


def assert_error_for(message: dict[str, Any], rid: Any, context: str = "") -> None:
    assert message.get("id") == rid, f"error not for the request: {message} {context}"
    assert "result" not in message, f"{message} {context}"
    assert message.get("error", {}).get("code") == INTERNAL_ERROR, f"{message} {context}"


def everything_decoded(body: bytes) -> str:
    """The body as any client may decode it: UTF-8 (BOM stripped), UTF-16 both ways."""
    return "\n".join(body.decode(enc, errors="ignore") for enc in ("utf-8-sig", "utf-16-le", "utf-16-be"))


# --------------------------------------------------------------------------- item 2: one answer, no crash


def tiny_event_flood(req: Request) -> list[Action]:
    """~300 KiB of `data: {}` events (a quadratic framer's worst case), then the answer."""
    flood = b"data: {}\n\n" * 30_000
    chunks = [flood[i : i + 65536] for i in range(0, len(flood), 65536)]
    answer = sse_event(rpc(req.id, {"tools": TOOLS}))
    return sse_response(*chunks, answer)


def many_data_lines(req: Request) -> list[Action]:
    """One event of 60 000 `data:` lines: not one JSON message."""
    return sse_response(b"data: x\n" * 60_000 + b"\n", sse_event(text_result(req.id, "after")))


def deep_nesting(req: Request) -> list[Action]:
    depth = 200_000
    raw = b'{"jsonrpc":"2.0","id":%s,"result":{"content":[],"structuredContent":{"a":%s%s}}}' % (
        json.dumps(req.id).encode(),
        b"[" * depth,
        b"]" * depth,
    )
    return json_response(None, raw=raw)


def tiny_strings(req: Request) -> list[Action]:
    """A result of ~150 000 one-letter strings (and an e-mail at the end)."""
    return json_response(text_result(req.id, "ok", structuredContent={"a": ["x"] * 150_000 + [EMAIL]}))


def escape_run(req: Request) -> list[Action]:
    return json_response(text_result(req.id, "\n\\\"\t" * 100_000 + f" {EMAIL}"))


def test_pathological_answers_are_answered_and_no_worker_crashes(hostile_gateway, scripted):
    """Item 2: 256 KiB+ of tiny SSE events made framing quadratic and exhausted the wasm VM,
    after which every later request on that worker got 503 until Envoy restarted. Each
    pathological answer is now governed in linear time, and every worker keeps serving."""
    url = hostile_gateway.url("evil")
    flood = scripted.script(mcp(tools_list=tiny_event_flood))
    started = time.monotonic()
    r = post(url, legacy_body("tools/list", id=41), READER, headers=flood.headers, timeout=60)
    elapsed = time.monotonic() - started
    assert r.status_code == 200, describe(r)
    assert DENIED_TOOL not in r.text
    answer = [m for m in response_messages(r) if m.get("id") == 41]
    assert answer and [t["name"] for t in answer[-1]["result"]["tools"]] == [ALLOWED_TOOL], describe(r)
    assert elapsed < 20, f"a 300 KiB flood of tiny events took {elapsed:.1f}s"

    for shape in (many_data_lines, deep_nesting, tiny_strings, escape_run):
        script = scripted.script(mcp(tools_call=shape))
        started = time.monotonic()
        r = post(url, legacy_body("tools/call", {"name": ALLOWED_TOOL, "arguments": {}}, id=42), READER,
                 headers=script.headers, timeout=60)
        elapsed = time.monotonic() - started
        assert r.status_code == 200, f"{shape.__name__}: {describe(r)}"
        # An answer for the request (deep nesting is passed whole: too deep for json.loads).
        assert b'"id":42' in r.content, f"{shape.__name__}: no answer: {describe(r)}"
        assert EMAIL not in r.text, shape.__name__
        assert elapsed < 20, f"{shape.__name__} took {elapsed:.1f}s"

    # Every later request, on fresh connections (spread over both workers), is served.
    for i in range(24):
        ping = post(url, legacy_body("ping", id=i), READER)
        assert ping.status_code == 200 and ping.json().get("id") == i, f"request {i} after the attacks: {describe(ping)}"
        listed = post(hostile_gateway.url("docs"), modern_body("tools/list", {}, id=i), READER, modern_headers("tools/list"))
        assert listed.status_code == 200, f"docs request {i} after the attacks: {describe(listed)}"


# --------------------------------------------------------------------------- item 3: list answers


def id_variants(rid: int) -> dict[str, Any]:
    return {"another-number": rid + 1, "same-number-as-string": str(rid), "same-number-as-float": float(rid),
            "null": None}


@pytest.mark.parametrize("variant", ["another-number", "same-number-as-string", "same-number-as-float", "null"])
@pytest.mark.parametrize("framing", ["json", "sse"])
def test_list_answer_with_another_id_is_refused(hostile_gateway, scripted, variant, framing):
    """Item 3: a list answer whose id differs from the request's (5 vs 6, "5", 5.0) passed
    unfiltered; the TypeScript client matches it by Number(id), the Python client takes any
    response on the stream. It is replaced by an error for the request."""

    def answer(req: Request) -> list[Action]:
        message = rpc(id_variants(req.id)[variant], {"tools": TOOLS})
        return json_response(message) if framing == "json" else sse_response(sse_event(message))

    script = scripted.script(mcp(tools_list=answer))
    r = post(hostile_gateway.url("evil"), legacy_body("tools/list", id=5), READER, headers=script.headers)
    assert DENIED_TOOL not in r.text, describe(r)
    messages = response_messages(r)
    assert len(messages) == 1, describe(r)
    assert_error_for(messages[0], 5, describe(r))


@pytest.mark.parametrize("split", [False, True])
def test_list_answer_after_a_bom_is_filtered(hostile_gateway, scripted, split):
    """Item 3: an SSE list answer starting with a UTF-8 BOM passed unfiltered (the gateway
    read the first field as "\\ufeffdata"); the TypeScript client strips the BOM and reads
    it. The BOM is stripped, even when it arrives a byte at a time, and the list filtered."""

    def answer(req: Request) -> list[Action]:
        event = sse_event(rpc(req.id, {"tools": TOOLS}), event=None)
        chunks = [BOM[:1], BOM[1:2], BOM[2:] + event[:7], event[7:]] if split else [BOM + event]
        return sse_response(*chunks, pause=0.05)

    script = scripted.script(mcp(tools_list=answer))
    r = post(hostile_gateway.url("evil"), legacy_body("tools/list", id=6), READER, headers=script.headers)
    assert r.status_code == 200, describe(r)
    assert DENIED_TOOL not in everything_decoded(r.content), describe(r)
    assert not r.content.startswith(BOM)
    [message] = sse_messages(r.text)
    assert [t["name"] for t in message["result"]["tools"]] == [ALLOWED_TOOL]


def utf7_smuggled_list(rid: Any) -> bytes:
    """A list answer that is one allowed tool when read as UTF-8 and, when read as UTF-7,
    also the denied one: the UTF-7 view decodes a `+...-` run inside the allowed name into
    `","inputSchema":{}},{"name":"delete_everything`."""
    hidden = f'","inputSchema":{{}}}},{{"name":"{DENIED_TOOL}'
    run = b"+" + base64.b64encode(hidden.encode("utf-16-be")).rstrip(b"=") + b"-"
    return b'{"jsonrpc":"2.0","id":%s,"result":{"tools":[{"name":"get_x%s","inputSchema":{}}]}}' % (
        json.dumps(rid).encode(),
        run,
    )


@pytest.mark.parametrize("charset", ["utf-16", "UTF-16LE", '"utf-7"'])
def test_list_answer_in_another_charset_is_refused(hostile_gateway, scripted, charset):
    """Item 3: an SSE list answer declaring another charset passed unfiltered: in UTF-16 the
    gateway found no event in it, in UTF-7 it read an allowed name where the Python client
    (which decodes a stream by its declared charset) reads a denied tool too. A governed
    answer declaring any charset but utf-8 is refused."""
    encoding = charset.strip('"').lower()

    def answer(req: Request) -> list[Action]:
        if encoding == "utf-7":
            body = b"event: message\ndata: " + utf7_smuggled_list(req.id) + b"\n\n"
        else:
            body = sse_event(rpc(req.id, {"tools": TOOLS})).decode().encode(encoding)
        return sse_response(body, content_type=f"text/event-stream; charset={charset}")

    script = scripted.script(mcp(tools_list=answer))
    r = post(hostile_gateway.url("evil"), legacy_body("tools/list", id=7), READER, headers=script.headers)
    assert DENIED_TOOL not in everything_decoded(r.content) + r.content.decode("utf-7", errors="ignore"), describe(r)
    assert r.headers.get("content-type", "").startswith("application/json"), describe(r)
    assert_error_for(r.json(), 7, describe(r))
    assert "charset" in r.json()["error"]["message"]


def get_stream(url: str, credentials: dict[str, str], script_headers: dict[str, str]) -> httpx2.Response:
    headers = {"Accept": "text/event-stream", "MCP-Protocol-Version": "2025-11-25", **credentials, **script_headers}
    return httpx2.get(url, headers=headers, timeout=15)


@pytest.mark.parametrize("content_type", ["text/event-stream", "application/json", None])
def test_replayed_answers_on_the_get_stream_are_filtered_whole(hostile_gateway, scripted, content_type):
    """Item 3: a result replayed on the GET stream (a resumed stream) carrying more than one
    list array had only the first filtered; and a GET answer not labelled as SSE passed
    unread, although the TypeScript client reads any successful GET body as SSE."""
    replay = rpc(9, {"tools": TOOLS, "prompts": PROMPTS})
    extra = {} if content_type is None else {"content-type": content_type}
    body = sse_event(replay)
    actions = [Send(head(200, {**extra, "content-length": str(len(body))}) + body)]
    script = scripted.script(lambda req: actions if req.method == "GET" else default_handler(req))
    r = get_stream(hostile_gateway.url("evil"), READER, script.headers)
    assert r.status_code == 200, describe(r)
    assert DENIED_TOOL not in r.text and SECRET_PROMPT not in r.text, describe(r)
    [message] = sse_messages(r.text)
    assert [t["name"] for t in message["result"]["tools"]] == [ALLOWED_TOOL]
    assert [p["name"] for p in message["result"]["prompts"]] == [PUBLIC_PROMPT]


def test_get_stream_in_another_charset_is_refused(hostile_gateway, scripted):
    body = sse_event(rpc(9, {"prompts": PROMPTS})).decode().encode("utf-16")
    actions = sse_response(body, content_type="text/event-stream; charset=utf-16")
    script = scripted.script(lambda req: actions if req.method == "GET" else default_handler(req))
    r = get_stream(hostile_gateway.url("evil"), READER, script.headers)
    assert SECRET_PROMPT not in everything_decoded(r.content), describe(r)


# --------------------------------------------------------------------------- item 6: redaction


def call_evil(gateway, script, rid: int = 11) -> httpx2.Response:
    body = legacy_body("tools/call", {"name": ALLOWED_TOOL, "arguments": {}}, id=rid)
    return post(gateway.url("evil"), body, READER, headers=script.headers)


def test_nan_does_not_turn_off_decoding(hostile_gateway, scripted):
    """Item 6: a result with NaN/Infinity (which the Python client accepts) made the
    redactor fall back to a raw scan that does not decode `\\u0040`, so the address leaked.
    What the redactor cannot read exactly is refused."""
    raw = (b'{"jsonrpc":"2.0","id":11,"result":{"content":[{"type":"text","text":"mail alice\\u0040example.com"}],'
           b'"structuredContent":{"score":NaN,"max":Infinity,"min":-Infinity}}}')
    script = scripted.script(mcp(tools_call=lambda req: json_response(None, raw=raw)))
    r = call_evil(hostile_gateway, script)
    decoded = json.dumps(json.loads(r.text))  # Python's json reads NaN, and decodes \u0040
    assert EMAIL not in decoded and "alice" not in decoded, describe(r)
    assert_error_for(r.json(), 11, describe(r))


@pytest.mark.parametrize("quirk", ["bom", "bom-split", "charset-utf-16", "json-bom"])
def test_quirky_framing_does_not_hide_values_from_redaction(hostile_gateway, scripted, quirk):
    """Item 6: a BOM before an SSE answer, or a non-UTF-8 charset, hid the answer from the
    redactor while clients read it (the TypeScript client strips a BOM; the Python client
    decodes by charset). A JSON body with a BOM (which the TypeScript client strips) is
    governed too, and the BOM removed."""

    def answer(req: Request) -> list[Action]:
        # The BOM right before `data:`, as the first line of the stream.
        event = sse_event(text_result(req.id, f"write to {EMAIL}"), event=None)
        if quirk == "bom":
            return sse_response(BOM + event)
        if quirk == "bom-split":
            return sse_response(BOM[:2], BOM[2:] + event, pause=0.05)
        if quirk == "charset-utf-16":
            return sse_response(event.decode().encode("utf-16"), content_type="text/event-stream; charset=utf-16")
        # JSON that is not JSON until its BOM is stripped, with an escaped address.
        raw = json.dumps(text_result(req.id, "write to alice\\u0040example.com")).replace("\\\\", "\\")
        return json_response(None, raw=BOM + raw.encode())

    script = scripted.script(mcp(tools_call=answer))
    r = call_evil(hostile_gateway, script)
    assert EMAIL not in everything_decoded(r.content), describe(r)
    # What a client reads: the body without a BOM, as SSE or JSON, strings decoded.
    body = r.content.decode("utf-8-sig", errors="replace")
    read = sse_messages(body) if "event-stream" in r.headers.get("content-type", "") else [json.loads(body)]
    assert EMAIL not in json.dumps(read), describe(r)
    assert not r.content.startswith(BOM), describe(r)
    [message] = response_messages(r)
    assert message["id"] == 11, describe(r)
    if quirk == "charset-utf-16":
        assert_error_for(message, 11)
    else:
        assert message["result"]["content"][0]["text"] == "write to [EMAIL]", describe(r)


def test_resource_links_are_redacted(hostile_gateway, scripted):
    """Item 6: `resource_link` blocks (name, title, description, uri) and other text a
    client shows (annotations, _meta) were not redacted."""
    link = {"type": "resource_link", "uri": f"mailto:{EMAIL}", "name": f"{EMAIL} card", "title": f"Card of {EMAIL}",
            "description": f"reach {EMAIL} or +44 20 7946 0958", "annotations": {"audience": ["user"]},
            "_meta": {"owner": EMAIL}}
    script = scripted.script(mcp(tools_call=lambda req: json_response(rpc(req.id, {"content": [link]}))))
    r = call_evil(hostile_gateway, script)
    assert r.status_code == 200, describe(r)
    assert EMAIL not in r.text and "7946" not in r.text, describe(r)
    block = r.json()["result"]["content"][0]
    assert block["name"] == "[EMAIL] card" and block["description"] == "reach [EMAIL] or [PHONE]", block


# --------------------------------------------------------------------------- item 9a: CR line endings


def test_cr_only_answer_is_delivered_while_the_stream_stays_open(hostile_gateway, scripted):
    """Item 9a: an event ending in `\\r\\r` at the end of a chunk was held back waiting for a
    byte that may be an `\\n`: the client never got its answer while the stream stayed open."""

    def answer(req: Request) -> list[Action]:
        event = sse_event(text_result(req.id, f"hi {EMAIL}"), eol=b"\r")
        return sse_response(event, b"", pause=8)  # the stream stays open 8 s after the answer

    script = scripted.script(mcp(tools_call=answer))
    body = legacy_body("tools/call", {"name": ALLOWED_TOOL, "arguments": {}}, id=12)
    got = b""
    normal = lambda raw: raw.decode(errors="replace").replace("\r\n", "\n").replace("\r", "\n")  # noqa: E731
    with httpx2.stream("POST", hostile_gateway.url("evil"), json=body, timeout=httpx2.Timeout(5.0),
                       headers={**base_headers(READER), **script.headers}) as r:
        assert r.status_code == 200
        try:
            for chunk in r.iter_raw():
                got += chunk
                if normal(got).endswith("\n\n") and sse_messages(normal(got)):
                    break
        except httpx2.ReadTimeout:
            pass  # nothing more came: the check below says what was missing
    text = normal(got)
    assert text.endswith("\n\n"), f"the answer's event was not completed: {got!r}"
    [message] = sse_messages(text)
    assert message["id"] == 12 and message["result"]["content"][0]["text"] == "hi [EMAIL]", got


@pytest.mark.anyio
async def test_rewritten_cr_only_answer_reaches_the_python_client(hostile_gateway, scripted):
    """Item 9a: a redacted event with CR-only line endings at the end of the stream lost its
    blank line, so the Python client never got its answer."""

    def answer(req: Request) -> list[Action]:
        return sse_response(sse_event(text_result(req.id, f"hi {EMAIL}"), eol=b"\r"))

    script = scripted.script(mcp(tools_call=answer))
    async with legacy_session(hostile_gateway.url("evil"), {**READER, **script.headers}) as session:
        result = await session.call_tool(ALLOWED_TOOL, {})
    assert not result.is_error
    assert [block.text for block in result.content] == ["hi [EMAIL]"]


# --------------------------------------------------------------------------- real clients


@pytest.mark.anyio
async def test_python_client_sees_no_denied_tool_and_no_redacted_value(hostile_gateway, scripted):
    """Through the official Python client (2025-11-25): a list answer with another id on
    the SSE stream (the client takes any response there as the answer), a result with NaN
    and an escaped address, and resource links with addresses."""
    from mcp import MCPError

    lists: list[Request] = []

    def listed(req: Request) -> list[Action]:
        # The first list is the attack; later ones (the client lists tools again to check
        # results against their schemas) answer honestly, and the gateway filters them.
        lists.append(req)
        rid = req.id + 100 if len(lists) == 1 else req.id
        return sse_response(sse_event(rpc(rid, {"tools": TOOLS})))

    def called(req: Request) -> list[Action]:
        name = req.params.get("name")
        if name == "get_scores":
            raw = ('{"jsonrpc":"2.0","id":%s,"result":{"content":[{"type":"text","text":"alice\\u0040example.com"}],'
                   '"structuredContent":{"score":NaN}}}' % json.dumps(req.id)).encode()
            return json_response(None, raw=raw)
        link = {"type": "resource_link", "uri": f"mailto:{EMAIL}", "name": EMAIL, "title": EMAIL, "description": EMAIL}
        return json_response(rpc(req.id, {"content": [link]}))

    script = scripted.script(mcp(tools_list=listed, tools_call=called))
    seen: list[str] = []
    async with legacy_session(hostile_gateway.url("evil"), {**READER, **script.headers}) as session:
        try:
            tools = await session.list_tools()
            seen += [t.name for t in tools.tools]
        except MCPError as e:
            seen.append(f"error: {e}")
        try:
            scores = await session.call_tool("get_scores", {})
            seen.append(repr(scores))
        except MCPError as e:
            seen.append(f"error: {e}")
        links = await session.call_tool("get_links", {})
        seen.append(repr(links))
    everything = "\n".join(seen)
    assert DENIED_TOOL not in everything, everything
    assert EMAIL not in everything and "alice" not in everything, everything
    assert "[EMAIL]" in seen[-1], everything


def test_typescript_client_sees_no_denied_tool_or_prompt(hostile_gateway, scripted):
    """Through the official TypeScript client (Node 20): a tools/list answer whose id is the
    request's number as a string (the client matches by Number(id)), and a prompts/list
    answer after a BOM (the client strips it)."""

    def listed(req: Request) -> list[Action]:
        return json_response(rpc(str(req.id), {"tools": TOOLS}))

    def prompts(req: Request) -> list[Action]:
        return sse_response(BOM + sse_event(rpc(req.id, {"prompts": PROMPTS})))

    def called(req: Request) -> list[Action]:
        return sse_response(BOM + sse_event(text_result(req.id, f"write to {EMAIL}")))

    script = scripted.script(mcp(tools_list=listed, prompts_list=prompts, tools_call=called))
    out = ts_lists(hostile_gateway.url("evil"), {**READER, **script.headers}, "tools", "prompts", f"call:{ALLOWED_TOOL}")
    everything = json.dumps(out)
    assert DENIED_TOOL not in everything and SECRET_PROMPT not in everything, everything
    assert EMAIL not in everything, everything
    assert [p["name"] for p in out["prompts"]["result"]["prompts"]] == [PUBLIC_PROMPT], everything
    assert "error" in out["tools"], everything
    assert out[f"call:{ALLOWED_TOOL}"]["result"]["content"][0]["text"] == "write to [EMAIL]", everything
