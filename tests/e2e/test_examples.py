"""The shipped examples stay consistent: demo keys, token minting, example servers' request log."""

from __future__ import annotations

import json
import subprocess
import sys

import jwt
import pytest

from e2e_support import REPO, api_key_sha256

pytestmark = [pytest.mark.examples]

EXAMPLES = REPO / "examples"


def test_demo_jwks_matches_demo_private_key():
    """Tokens from examples/mint_token.py verify against examples/keys/jwks.json."""
    (key,) = json.loads((EXAMPLES / "keys" / "jwks.json").read_text())["keys"]
    token = subprocess.run(
        [sys.executable, str(EXAMPLES / "mint_token.py"), "--sub", "t", "--roles", "reader,admin"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.strip()
    assert jwt.get_unverified_header(token)["kid"] == key["kid"]
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(key))
    claims = jwt.decode(token, public, algorithms=["RS256"], audience="meshgate", issuer="https://idp.meshgate.example")
    assert claims["sub"] == "t" and claims["roles"] == ["reader", "admin"]


@pytest.mark.parametrize("plaintext", ["demo-reader-key", "demo-admin-key"])
def test_demo_api_key_hashes_in_registry(plaintext):
    """The plaintext keys documented in examples/registry.yaml hash to the sha256 values it lists."""
    assert api_key_sha256(plaintext) in (EXAMPLES / "registry.yaml").read_text()


@pytest.mark.parametrize("server", ["crm", "docs"])
def test_upstream_log_sees_credentials_and_garbage(server, upstreams):
    """Premise for the e2e assertions: hit directly, an upstream logs headers and even unparseable bodies."""
    import httpx2

    from e2e_support import forwarded_credential_headers, marker

    upstream = upstreams[server]
    canary = marker()
    mark = upstream.log.mark()
    response = httpx2.post(
        upstream.url,
        content=f'{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{canary}"'.encode(),
        headers={"Authorization": "Bearer direct", "Content-Type": "text/plain", "Accept": "application/json"},
        timeout=10,
    )
    assert response.status_code >= 400  # the SDK refuses it; the log must still have it
    entries = upstream.log.since(mark)
    assert upstream.log.containing(canary, mark), entries
    assert entries[-1].get("parse_error") is True
    assert ("authorization", "Bearer direct") in forwarded_credential_headers(entries)
