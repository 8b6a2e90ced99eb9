"""Hostile clients against real MCP upstreams: what the gateway authorises or redacts must
be exactly what the peer behind it reads and runs.

* `ts_gateway`: server `evil` is the official TypeScript SDK behind `express.json()`
  (tests/e2e/node/ts_server.mjs), which decodes a body by its declared charset and logs every
  tool it executes. Readers may call `evil/get_*` only.
* `param_gateway`: server `evil` is a Python SDK server (tests/e2e/param_server.py) with a
  tool whose `card` argument is mirrored into `Mcp-Param-Card`; `evil/pay*` arguments are
  masked for card numbers (`EVIL_REDACTION`); the official Python client calls it in the
  2026-07-28 era.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e_support import (
    INVALID_REQUEST,
    LEGACY_VERSION,
    NODE20,
    NODE_DIR,
    Gateway,
    Keys,
    Proc,
    Upstream,
    api_key,
    describe,
    jsonrpc_error,
    marker,
    modern_client,
    post,
    running_gateway,
    start_upstream,
    wait_tcp,
)

pytestmark = [pytest.mark.e2e, pytest.mark.hostile]

HERE = Path(__file__).resolve().parent
READER = api_key("e2e-reader-key")
ADMIN = api_key("e2e-admin-key")
CARD = "4111 1111 1111 1111"


class TsServer:
    def __init__(self, workdir: Path) -> None:
        self.log = workdir / "ts-tools.jsonl"
        port_file = workdir / "ts.port"
        self.proc = Proc.start(
            "ts-server",
            [NODE20, str(NODE_DIR / "ts_server.mjs"), "--port", "0", "--port-file", str(port_file), "--log", str(self.log)],
            workdir / "ts-server.out",
        )
        deadline = time.monotonic() + 30
        while not port_file.exists():
            if self.proc.popen.poll() is not None or time.monotonic() > deadline:
                self.proc.stop()
                pytest.fail(f"ts_server.mjs did not start:\n{self.proc.tail()}", pytrace=False)
            time.sleep(0.05)
        self.port = int(port_file.read_text().strip())
        assert wait_tcp("127.0.0.1", self.port, 15), self.proc.tail()
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    def executed(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ts_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TsServer]:
    server = TsServer(tmp_path_factory.mktemp("ts-server"))
    try:
        yield server
    finally:
        server.proc.stop()


@pytest.fixture(scope="module")
def ts_gateway(
    tmp_path_factory, keys: Keys, upstreams: dict[str, Upstream], ts_server: TsServer, runtime: str
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("ts-gateway")
    crm, docs = upstreams["crm"].url, upstreams["docs"].url
    with running_gateway(workdir, keys, crm, docs, evil_url=ts_server.url, runtime=runtime) as gw:
        yield gw


def utf7(text: str) -> str:
    """UTF-7 with every character outside [A-Za-z0-9_] encoded: ASCII that a UTF-8 reader takes
    literally and a UTF-7 reader decodes into `text`."""
    return "+" + base64.b64encode(text.encode("utf-16-be")).decode().rstrip("=") + "-"


def test_utf7_charset_cannot_smuggle_a_denied_tool(ts_gateway, ts_server):
    """The filter reads `get_x+ACIALAAi-name+ACIAOgAi-delete_customer` (allowed: `get_*`);
    express decodes the UTF-7 to `"get_x","name":"delete_customer"` and the TypeScript SDK,
    reading the last duplicate key, runs delete_customer. The charset is refused (415)."""
    name = "get_x" + utf7('","') + "name" + utf7('":"') + "delete_customer"
    assert name.isascii() and name.startswith("get_x+")
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name, "arguments": {}}})
    before = len(ts_server.executed())
    r = post(ts_gateway.url("evil"), body.encode(), READER,
             {"MCP-Protocol-Version": LEGACY_VERSION, "Content-Type": "application/json; charset=utf-7"})
    time.sleep(0.2)  # a forwarded call is executed before its answer; this is only slack
    ran = [e["tool"] for e in ts_server.executed()[before:]]
    assert "delete_customer" not in ran, f"the denied tool ran behind the gateway: {describe(r)}"
    assert ran == [], ran
    assert r.status_code == 415, describe(r)
    assert jsonrpc_error(r)["error"]["code"] == INVALID_REQUEST
    assert "utf-7" in jsonrpc_error(r)["error"]["message"]


def test_typescript_server_runs_what_the_gateway_allowed(ts_gateway, ts_server):
    """Premise: the same server runs an allowed call, with either spelling of a UTF-8 JSON
    content type, and the denied tool is refused by policy."""
    canary = marker()
    before = len(ts_server.executed())
    for content_type in ("application/json", "Application/JSON; charset=UTF-8"):
        body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "get_x", "arguments": {"id": canary}}}
        r = post(ts_gateway.url("evil"), body, READER, {"MCP-Protocol-Version": LEGACY_VERSION, "Content-Type": content_type})
        assert r.status_code == 200 and r.json()["result"]["content"][0]["text"] == "x", describe(r)
    executed = ts_server.executed()[before:]
    assert [(e["tool"], e["arguments"].get("id")) for e in executed] == [("get_x", canary)] * 2
    assert {e["headers"]["content-type"] for e in executed} == {"application/json"}


# --------------------------------------------------------------------------- Mcp-Param-* with a real 2026 peer


@pytest.fixture(scope="module")
def param_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    upstream = start_upstream("param", HERE / "param_server.py", tmp_path_factory.mktemp("param-server"))
    try:
        yield upstream
    finally:
        upstream.proc.stop()


@pytest.fixture(scope="module")
def param_gateway(
    tmp_path_factory, keys: Keys, upstreams: dict[str, Upstream], param_server: Upstream, runtime: str
) -> Iterator[Gateway]:
    workdir = tmp_path_factory.mktemp("param-gateway")
    crm, docs = upstreams["crm"].url, upstreams["docs"].url
    with running_gateway(workdir, keys, crm, docs, evil_url=param_server.url, runtime=runtime) as gw:
        yield gw


@pytest.mark.anyio
async def test_masked_argument_and_its_mirrored_header_agree_for_a_real_2026_peer(param_gateway, param_server):
    """The official Python client mirrors `card` into `Mcp-Param-Card`; the gateway masks the
    card in the arguments and must mask the header the same way: the number never reaches
    the upstream, and the upstream (which checks header against body) runs the call."""
    mark = param_server.log.mark()
    async with modern_client(param_gateway.url("evil"), ADMIN) as client:
        await client.list_tools()  # the client learns which argument is mirrored
        result = await client.call_tool("pay_invoice", {"card": CARD, "amount": 25})
    assert not result.is_error, result
    assert result.content[0].text == "charged 25 to [CREDIT_CARD]", result
    calls = param_server.log.calls(mark, method="tools/call")
    assert len(calls) == 1, calls
    entry = calls[0]["_entry"]
    assert entry["headers"].get("mcp-param-card") == "[CREDIT_CARD]", entry["headers"]
    # No part of the number reaches the upstream. Searched without the log's own timestamp:
    # its digits can hold any 4-digit fragment by chance (`1796306120.0411184`).
    seen = json.dumps({k: v for k, v in entry.items() if k != "ts"})
    for fragment in (CARD, CARD.replace(" ", "")):
        assert fragment not in seen, entry
