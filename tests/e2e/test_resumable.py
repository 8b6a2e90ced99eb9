"""An upstream with resumability on (the SDK's event store): every SSE stream starts with a
priming event, an `id` and empty data, before the JSON-RPC messages.

The gateway must pass that event through untouched (it is not a message) and still filter
the list reply and redact results that follow it, for both protocol eras.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from e2e_support import (
    Gateway,
    Keys,
    Upstream,
    api_key,
    base_headers,
    legacy_body,
    legacy_handshake,
    legacy_headers,
    legacy_session,
    modern_client,
    running_gateway,
    start_upstream,
)

pytestmark = [pytest.mark.anyio, pytest.mark.e2e]

READER = api_key("e2e-reader-key")
REDACTION = """
redaction:
  - match: { tools: ["crm/*"] }
    detectors: [email]
    mode: mask
"""


@pytest.fixture(scope="module")
def resumable(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, upstreams: dict[str, Upstream], runtime: str
) -> Iterator[Gateway]:
    workdir: Path = tmp_path_factory.mktemp(f"resumable-{runtime}")
    crm = start_upstream("crm-resumable", "crm_server.py", workdir, ["--resumable"])
    try:
        with running_gateway(workdir, keys, crm.url, upstreams["docs"].url, REDACTION, runtime=runtime) as gw:
            yield gw
    finally:
        crm.proc.stop()


def test_the_priming_event_passes_and_the_list_is_filtered(resumable):
    url = resumable.url("crm")
    session = legacy_handshake(url, READER)
    headers = {**base_headers(READER), **legacy_headers(session)}
    response = httpx2.post(url, json=legacy_body("tools/list", id=7), headers=headers, timeout=15)
    assert response.status_code == 200, response.text
    events = [e for e in response.text.replace("\r\n", "\n").split("\n\n") if e.strip()]
    # The upstream really primes the stream: an event with an id and nothing but empty data.
    first = dict(line.split(":", 1) for line in events[0].split("\n") if ":" in line)
    assert "id" in first and first.get("data", "").strip() == "", events
    messages = [json.loads(line[5:]) for e in events[1:] for line in e.split("\n") if line.startswith("data:")]
    reply = next(m for m in messages if m.get("id") == 7)
    names = {tool["name"] for tool in reply["result"]["tools"]}
    assert "get_customer" in names and "delete_customer" not in names, names


@pytest.mark.parametrize("era", ["legacy-2025-11-25", "modern-2026-07-28"])
async def test_sdk_clients_list_and_call_through_a_resumable_upstream(era, resumable):
    connect = legacy_session if era.startswith("legacy") else modern_client
    async with connect(resumable.url("crm"), READER) as client:
        listed = await client.list_tools()
        names = {tool.name for tool in listed.tools}
        assert "get_customer" in names and "delete_customer" not in names, names
        result = await client.call_tool("get_customer", {"id": "c-002"})
    text = "\n".join(getattr(block, "text", "") for block in result.content)
    assert not result.is_error and "Grace Hopper" in text, text
    assert "[EMAIL]" in text and "@" not in text, text


def test_a_replayed_list_on_the_get_stream_is_filtered_too(resumable):
    """Resuming with `Last-Event-ID` replays the stream's events on a GET, the reply to
    `tools/list` included. The gateway cannot see which request a replayed response
    answers; it filters a list result by its shape, so the reader's resumed stream carries
    the same filtered list, not the upstream's whole one (with `delete_customer`)."""
    url = resumable.url("crm")
    session = legacy_handshake(url, READER)
    headers = {**base_headers(READER), **legacy_headers(session)}
    listed = httpx2.post(url, json=legacy_body("tools/list", id=7), headers=headers, timeout=15)
    assert listed.status_code == 200, listed.text
    priming_id = next(line[3:].strip() for line in listed.text.splitlines() if line.startswith("id:"))

    replay_headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    replay_headers.update({"Accept": "text/event-stream", "Last-Event-ID": priming_id})
    replayed: list[dict] = []
    with httpx2.stream("GET", url, headers=replay_headers, timeout=httpx2.Timeout(10, read=5)) as stream:
        assert stream.status_code == 200, stream.read()
        try:
            for line in stream.iter_lines():
                if line.startswith("data:") and line[5:].strip():
                    replayed.append(json.loads(line[5:]))
                    if any(m.get("id") == 7 for m in replayed):
                        break
        except httpx2.ReadTimeout:
            pass
    answer = next((m for m in replayed if m.get("id") == 7), None)
    assert answer is not None, f"the upstream replayed nothing for id 7: {replayed}"
    assert "delete_customer" not in json.dumps(replayed), replayed
    names = {tool["name"] for tool in answer["result"]["tools"]}
    assert "get_customer" in names and "delete_customer" not in names, answer
