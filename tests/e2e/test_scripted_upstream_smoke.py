"""The scripted upstream itself, through the hostile gateway: a scripted answer reaches the
client byte for byte where the gateway has nothing to govern, and every request is recorded."""

from __future__ import annotations

import pytest

from e2e_support import api_key, legacy_body, post
from scripted_upstream import json_response, sse_event, sse_response

pytestmark = [pytest.mark.e2e]

ADMIN = api_key("e2e-admin-key")


def test_scripted_json_answer_reaches_the_client(hostile_gateway, scripted):
    script = scripted.script(lambda req: json_response({"jsonrpc": "2.0", "id": req.id, "result": {"ok": req.id}}))
    r = post(hostile_gateway.url("evil"), legacy_body("ping", id=41), ADMIN, headers=script.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"jsonrpc": "2.0", "id": 41, "result": {"ok": 41}}
    assert [req.rpc_method for req in script.requests] == ["ping"]
    assert "x-api-key" not in script.requests[0].headers


def test_scripted_sse_split_writes_reach_the_client(hostile_gateway, scripted):
    event = sse_event({"jsonrpc": "2.0", "id": 7, "result": {}})
    script = scripted.script(sse_response(event[:9], event[9:], pause=0.05))
    r = post(hostile_gateway.url("evil"), legacy_body("ping", id=7), ADMIN, headers=script.headers)
    assert r.status_code == 200, r.text
    assert r.content == event
