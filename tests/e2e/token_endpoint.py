"""A real OAuth 2.0 Token Exchange endpoint (RFC 8693) for the e2e suite, in this process.

It checks what RFC 8693 and RFC 6749 require of a request and answers as an authorization
server does:
- client authentication: `client_secret_basic` (RFC 6749 §2.3.1: id and secret
  form-urlencoded, joined by `:`, base64) — else 401 `invalid_client`;
- `grant_type=urn:ietf:params:oauth:grant-type:token-exchange` — else `unsupported_grant_type`;
- `subject_token` + `subject_token_type`: the token type it is configured for, and a JWT it
  verifies (signature with the suite's RSA key, issuer, audience, expiry) — else
  `invalid_request` / `invalid_grant`;
- `audience` and every `resource` (RFC 8707) exactly as configured — else `invalid_target`;
- `scope`: each requested scope must be one the user may get (`user_scopes`) — the issued
  token carries the requested scopes the user has (narrower when the user has fewer), and
  `invalid_scope` when none of them.

Each issued token is opaque (`ut-<sub>-<n>-<random>`) and remembered with its user and
scopes, so a test can read which user and scopes an upstream request carried. Calls are
counted per user. `fail` makes the next answers fail on command: `invalid_grant`,
`invalid_scope`, `server_error` (HTTP 500) or `slow` (answers after `slow_seconds`).
"""

from __future__ import annotations

import base64
import json
import secrets
import ssl
import threading
import time
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"


@dataclass
class Issued:
    sub: str
    scope: str
    audience: str
    resources: list[str]


@dataclass
class TokenEndpoint:
    """Configuration and what happened; `serve()` starts it on a free loopback port."""

    client_id: str
    client_secret: str
    verify_key: Any  # the RSA public key subject tokens are signed with
    issuer: str
    jwt_audience: str
    audience: str
    resources: list[str]
    user_scopes: dict[str, set[str]]
    default_scopes: set[str] = field(default_factory=set)
    subject_token_type: str = ACCESS_TOKEN_TYPE
    expires_in: int = 300
    lifetimes: dict[str, int] = field(default_factory=dict)
    slow_seconds: float = 3.0
    # What failed for which user: {"sub": "invalid_grant"}; "*" fails everyone.
    failures: dict[str, str] = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    rejected: list[str] = field(default_factory=list)
    issued: dict[str, Issued] = field(default_factory=dict)
    subject_tokens_seen: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    tls: bool = False

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        if self.tls:
            return f"https://localhost:{self.port}/oauth2/token"
        return f"http://127.0.0.1:{self.port}/oauth2/token"

    def serve(self, certificate: tuple[Path, Path] | None = None) -> TokenEndpoint:
        """Starts serving; with `certificate` (cert, key PEM files), over TLS only."""
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length)
                status, answer = endpoint.answer(self.path, dict(self.headers.items()), body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("cache-control", "no-store")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if certificate is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(str(certificate[0]), str(certificate[1]))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.tls = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def count(self, sub: str) -> int:
        with self.lock:
            return self.calls[sub]

    def who(self, authorization: str) -> Issued | None:
        """The user and scopes of an upstream request's `Authorization: Bearer …`."""
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        with self.lock:
            return self.issued.get(token)

    def _refuse(self, why: str, status: int, error: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.rejected.append(why)
        return status, {"error": error, "error_description": why}

    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        headers = {k.lower(): v for k, v in headers.items()}
        if path != "/oauth2/token":
            return 404, {"error": "not_found"}
        expected = base64.b64encode(
            f"{urllib.parse.quote_plus(self.client_id)}:{urllib.parse.quote_plus(self.client_secret)}".encode()
        ).decode()
        if headers.get("authorization") != f"Basic {expected}":
            return self._refuse("client authentication failed", 401, "invalid_client")
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self._refuse("not a form", 400, "invalid_request")
        form = urllib.parse.parse_qs(body.decode(), keep_blank_values=True, strict_parsing=True)
        one = lambda name: (form.get(name) or [None])[0]  # noqa: E731
        if one("grant_type") != GRANT_TYPE:
            return self._refuse(f"grant_type {one('grant_type')}", 400, "unsupported_grant_type")
        subject_token, subject_type = one("subject_token"), one("subject_token_type")
        if not subject_token or subject_type != self.subject_token_type:
            return self._refuse(f"subject_token_type {subject_type}", 400, "invalid_request")
        if one("requested_token_type") not in (None, ACCESS_TOKEN_TYPE):
            return self._refuse("requested_token_type", 400, "invalid_request")
        try:
            claims = jwt.decode(
                subject_token, self.verify_key, algorithms=["RS256"], audience=self.jwt_audience, issuer=self.issuer
            )
        except jwt.PyJWTError as e:
            return self._refuse(f"subject token: {e}", 400, "invalid_grant")
        sub = str(claims["sub"])
        with self.lock:
            self.calls[sub] += 1
            self.subject_tokens_seen.append(subject_token)
            failure = self.failures.get(sub) or self.failures.get("*")
        if form.get("audience") != [self.audience]:
            return self._refuse(f"audience {form.get('audience')}", 400, "invalid_target")
        if sorted(form.get("resource", [])) != sorted(self.resources):
            return self._refuse(f"resource {form.get('resource')}", 400, "invalid_target")
        if failure == "slow":
            time.sleep(self.slow_seconds)
        elif failure == "server_error":
            return 500, {"error": "server_error"}
        elif failure in ("invalid_grant", "invalid_scope"):
            return 400, {"error": failure, "error_description": f"refused on command for {subject_token}"}
        requested = set((one("scope") or "").split())
        allowed = self.user_scopes.get(sub, self.default_scopes)
        granted = requested & allowed if requested else allowed
        if not granted:
            return 400, {"error": "invalid_scope", "error_description": "none of the requested scopes"}
        with self.lock:
            n = sum(1 for i in self.issued.values() if i.sub == sub) + 1
            token = f"ut-{sub}-{n}-{secrets.token_hex(8)}"
            scope = " ".join(sorted(granted))
            self.issued[token] = Issued(sub, scope, one("audience") or "", form.get("resource", []))
            lifetime = self.lifetimes.get(sub, self.expires_in)
        return 200, {
            "access_token": token,
            "issued_token_type": ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
