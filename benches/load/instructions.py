#!/usr/bin/env python3
"""Envoy instructions per request, counted by valgrind (issue 7): a repeatable A/B.

Wall-clock and CPU-time comparisons on this 2-core VM swing by tens of µs per request from
one run to the next (other tenants, wake-up costs), more than most single changes to the
filter are worth. Instruction counts do not: callgrind counts every instruction Envoy's
threads execute, JIT-compiled wasm included, and the count for a fixed number of identical
requests barely moves between runs whatever else the machine does.

For each configuration (run.py's keys, e.g. `bfcd`; `C`/`D` with `--wasm-b`) this starts
Envoy under `valgrind --tool=callgrind --instr-atstart=no` (start-up, V8's compilation
and the warm-up are not counted), sends `--warmup` checked requests, switches
instrumentation on with `callgrind_control`, sends `--requests` more (one keep-alive
connection, the Lua script's ~1 KB tools/call, every body checked), switches it off, and
reads the total.
It reports instructions per request and the difference to the first configuration.

  .venv/bin/python benches/load/instructions.py --only bcdgh   # bare, wasm (c, d), native (g, h)
  .venv/bin/python benches/load/instructions.py --only cC --wasm-b /tmp/old.wasm
  .venv/bin/python benches/load/instructions.py --only fPH --probe P:props=10 --probe H:header=4
  .venv/bin/python benches/load/instructions.py --only mv   # a call via a virtual server vs direct
  .venv/bin/python benches/load/instructions.py --only jxky # token exchange, cached (issue 18)

`m`/`v` send the same call in the 2026-07-28 era (routing headers, envelope in `_meta`) with
Meshgate native, RBAC only, on one registry: (m) to `/mcp/bench`, (v) as `bench__get_item`
through the virtual server `/mcp/v` over it.

`--probe KEY:OPS` adds the floor module (benches/wasm-floor) with the plugin configuration
`floor-probe:OPS`, which adds that many of one host operation per request: its difference
to (f) is the operation's cost in Envoy (the per-operation table in BENCHMARKS.md).

Under valgrind Envoy runs some 50x slower and needs a minute or two to start (V8 compiles
the module); the defaults take about 3 minutes per configuration. The counts include
Envoy's timers and V8's background tier-up, which is why several hundred requests are
measured; instruction counts say nothing about cache misses or host-call latency, so
speed claims still come from `make bench`.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (the load benchmark's helpers)

ENVOY_BINARY = run.ROOT / ".venv" / "lib" / "python3.11" / "site-packages" / "envoy" / "_bin" / "envoy"

# mcp.lua's request body (its `note` is 13 copies of the sentence): the same ~1 KB tools/call.
NOTE = "Customer asked about the delivery window and invoice copy. " * 13
BODY = ('{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"get_item","arguments":'
        '{"id":"c-001","fields":["name","status","owner","orders"],"include_history":false,'
        f'"note":"{NOTE}"}},"_meta":{{"progressToken":"bench-1"}}}}}}').encode()


# (m)/(v): the same tool call in the 2026-07-28 era (routing headers, per-request envelope),
# sent to the server's own endpoint (m) and, prefixed, through a virtual server over it (v).
# Same registry and bootstrap for both, so the difference is the virtual server's cost.
VIRTUAL_SERVER = "v"
MODERN_VERSION = "2026-07-28"
MODERN_CALLS = {"m": (run.ROUTE, "get_item"), "v": (f"/mcp/{VIRTUAL_SERVER}", f"{run.SERVER}__get_item")}


def modern_body(tool: str) -> bytes:
    """BODY as a 2026-07-28 request naming `tool` (same arguments, the envelope in `_meta`)."""
    return (BODY.decode()
            .replace('"name":"get_item"', json.dumps({"name": tool}, separators=(",", ":"))[1:-1], 1)
            .replace('"_meta":{"progressToken":"bench-1"}',
                     f'"_meta":{{"progressToken":"bench-1","io.modelcontextprotocol/protocolVersion":"{MODERN_VERSION}"}}', 1)
            .encode())


def request_of(config: run.Config) -> tuple[str, bytes, dict[str, str]]:
    """Path, body and extra headers of `config`'s request."""
    if config.key not in MODERN_CALLS:
        return run.ROUTE, BODY, {}
    path, tool = MODERN_CALLS[config.key]
    headers = {"mcp-protocol-version": MODERN_VERSION, "mcp-method": "tools/call", "mcp-name": tool}
    return path, modern_body(tool), headers


def modern_configs(workdir: Path, upstream_port: int) -> list[run.Config]:
    """(m) and (v): Meshgate native, RBAC only, on a registry that adds the virtual server."""
    registry = workdir / "registry-virtual.yaml"
    text = run.registry_yaml(run.free_port(), run.free_port(), upstream_port, full=False, runtime="native")
    registry.write_text(text + f"virtual_servers:\n  - {{ name: {VIRTUAL_SERVER}, servers: [{run.SERVER}] }}\n")
    bootstrap = run.meshgate_bootstrap(registry, {})
    return [
        run.Config("m", "Envoy + Meshgate native, RBAC only, 2026-07-28 call to /mcp/bench", bootstrap=bootstrap,
                   governed=True),
        run.Config("v", "(m) through the virtual server /mcp/v (bench__get_item)", bootstrap=bootstrap,
                   governed=True),
    ]


# (j)/(x), (k)/(y): a JWT caller, RBAC only, without and with token exchange for the server
# (issue 18). With it, every counted call is a cache hit: the exchange happens once, in the
# warm-up (the token server below counts its calls and the run checks it saw exactly one).
EXCHANGE_CONFIGS = {"j": ("native", False), "x": ("native", True), "k": ("wasm", False), "y": ("wasm", True)}
UPSTREAM_TOKEN = "bench-upstream-token"


class TokenServer:
    """A minimal token endpoint for the bench: every exchange gets the same long-lived token."""

    def __init__(self) -> None:
        import http.server
        import threading

        server_self = self
        self.calls = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("content-length") or 0))
                server_self.calls += 1
                ok = self.headers.get("authorization", "").startswith("Basic ")
                body = json.dumps({"access_token": UPSTREAM_TOKEN, "token_type": "Bearer", "expires_in": 3600}
                                  if ok else {"error": "invalid_client"}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.port = self.server.server_address[1]

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def exchange_configs(workdir: Path, upstream_port: int, secret: str, token_port: int) -> list[run.Config]:
    """(j)/(k): native/wasm, a JWT caller, RBAC only; (x)/(y): the same with token exchange for
    the server (the static bootstrap refuses `credentials`, so the exchange is added to the
    rendered bootstrap as the control plane renders it: the filter's `token_exchanges`, the
    token endpoint's cluster whose upstream `credential_injector` adds client_secret_basic
    from a secret, here a static one)."""
    env = {run.HS_ENV: secret}
    now = int(time.time())
    token = run.jwt_hs256(secret, {"iss": run.ISSUER, "aud": "meshgate", "sub": "bench-user", "roles": ["caller"],
                                   "iat": now, "exp": now + 6 * 3600})
    allow = ", ".join(f'"{run.SERVER}/{p}*"' for p in run.ALLOWED_PREFIXES)
    configs = []
    for key, (runtime, exchange) in EXCHANGE_CONFIGS.items():
        registry = workdir / f"registry-{key}.yaml"
        registry.write_text("\n".join([
            f"filter: {{ runtime: {runtime} }}",
            f"listener: {{ address: 127.0.0.1, port: {run.free_port()} }}",
            f"admin: {{ port: {run.free_port()} }}",
            "servers:",
            f"  - name: {run.SERVER}",
            f"    url: http://127.0.0.1:{upstream_port}/mcp",
            "auth:",
            "  jwt:",
            f"    - {{ issuer: {run.ISSUER}, audiences: [meshgate], hs256_secret_env: {run.HS_ENV} }}",
            "policy:",
            "  roles:",
            f"    caller: {{ allow: [{allow}] }}",
        ]) + "\n")
        bootstrap = run.meshgate_bootstrap(registry, env)
        if exchange:
            add_token_exchange(bootstrap, runtime, token_port)
        label = f"Envoy + Meshgate {runtime}, JWT + RBAC" + (", token exchange (cached)" if exchange else "")
        configs.append(run.Config(key, label, bootstrap=bootstrap, env=env, token=token, governed=True))
    return configs


def add_token_exchange(bootstrap: dict, runtime: str, token_port: int) -> None:
    filter_config = run.hcm_of(bootstrap)["http_filters"][0]["typed_config"]
    holder = filter_config["filter_config"] if runtime == "native" else filter_config["config"]["configuration"]
    config = json.loads(holder["value"])
    config["token_exchanges"] = {run.SERVER: {
        "cluster": "meshgate-token-bench", "path": "/token", "authority": f"127.0.0.1:{token_port}",
        "audience": "bench", "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
        "timeout_ms": 2000, "refresh_skew_secs": 30, "cache_entries": 4096,
    }}
    holder["value"] = json.dumps(config)
    injector = {
        "name": "envoy.filters.http.credential_injector",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.credential_injector.v3.CredentialInjector",
            "overwrite": True,
            "credential": {"name": "envoy.http.injected_credentials.generic", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.http.injected_credentials.generic.v3.Generic",
                "credential": {"name": "bench-token-client"}, "header": "authorization",
                "header_value_prefix": "Basic "}},
        },
    }
    bootstrap["static_resources"].setdefault("secrets", []).append(
        {"name": "bench-token-client", "generic_secret": {"secret": {"inline_string": "YmVuY2g6c2VjcmV0"}}})
    bootstrap["static_resources"]["clusters"].append({
        "name": "meshgate-token-bench", "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": "meshgate-token-bench", "endpoints": [{"lb_endpoints": [{"endpoint": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": token_port}}}}]}]},
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http_protocol_options": {}},
            "http_filters": [injector, {"name": "envoy.filters.http.upstream_codec", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.upstream_codec.v3.UpstreamCodec"}}],
        }},
    })


def checked_requests(url: str, config: run.Config, n: int) -> None:
    """`n` POSTs of BODY on one keep-alive connection; every answer checked like mcp.lua does."""
    parsed = re.match(r"http://([^:/]+):(\d+)(/.*)", url)
    if parsed is None:
        raise SystemExit(f"unexpected URL {url}")
    host, port = parsed.group(1), int(parsed.group(2))
    path, body, extra = request_of(config)
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream", **extra}
    if config.token:
        headers["authorization"] = f"Bearer {config.token}"
    conn = http.client.HTTPConnection(host, port, timeout=60)
    try:
        for _ in range(n):
            conn.request("POST", path, body=body, headers=headers)
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
            ok = response.status == 200 and "meshgate-bench-ok" in text
            if config.expect == "masked":
                ok = ok and "[EMAIL]" in text and "alice@example.com" not in text
            else:
                ok = ok and "alice@example.com" in text
            if not ok:
                raise SystemExit(f"({config.key}) failed the check: {response.status} {text[:300]}")
    finally:
        conn.close()


def split_by_object(path: Path, requests: int) -> dict[str, float]:
    """Instructions per request by where they ran, from `callgrind_annotate`: the Envoy
    binary (stripped: no finer split), JIT code (anonymous mappings: V8's compiled wasm and
    call stubs), the allocator (anonymous code inside the binary's mapping, low addresses)
    and libc."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", str(path)], capture_output=True, text=True,
                         check=False).stdout
    split: dict[str, float] = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S+?:(\S+) \[(.*)\]$", line)
        if m is None:
            continue
        count, function, obj = int(m.group(1).replace(",", "")), m.group(2), m.group(3)
        if obj == "???":
            address = int(function, 16) if function.startswith("0x") else 0
            where = "JIT" if address >= 1 << 32 else "allocator"
        elif obj.endswith("/envoy"):
            where = "Envoy binary"
        elif "libc" in obj:
            where = "libc"
        else:
            where = "other"
        split[where] = split.get(where, 0.0) + count / requests
    return split


def probe_config(floor: run.Config, key: str, ops: str) -> run.Config:
    """The floor's bootstrap with the plugin configuration `floor-probe:<ops>`."""
    bootstrap = run.relocated(floor.bootstrap or {})
    for f in run.hcm_of(bootstrap)["http_filters"]:
        if f["name"] == "envoy.filters.http.wasm":
            f["typed_config"]["config"]["configuration"]["value"] = f"floor-probe:{ops}"
    return run.Config(key, f"floor + {ops}", bootstrap=bootstrap)


def callgrind_control(*args: str) -> None:
    out = subprocess.run(["callgrind_control", *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"callgrind_control {' '.join(args)} failed:\n{out.stdout}{out.stderr}")


def counted(config: run.Config, workdir: Path, args: argparse.Namespace) -> float:
    """Instructions per request of `config` (Envoy under callgrind)."""
    assert config.bootstrap is not None
    path = workdir / f"envoy-{config.key}.json"
    path.write_text(json.dumps(config.bootstrap, indent=1))
    port = config.bootstrap["static_resources"]["listeners"][0]["address"]["socket_address"]["port_value"]
    admin = config.bootstrap["admin"]["address"]["socket_address"]["port_value"]
    url = f"http://127.0.0.1:{port}{run.ROUTE}"
    out_file = workdir / f"callgrind-{config.key}.out"
    envoy = run.start(f"valgrind-{config.key}", [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out_file}",
        str(ENVOY_BINARY), "-c", str(path), "--concurrency", "1", "--disable-hot-restart",
        "--base-id", str(int.from_bytes(os.urandom(2), "big") + 1000), "--log-level", "warn",
    ], workdir, env=config.env)
    try:
        def ready() -> bool:
            with run.urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=5) as r:
                return r.status == 200

        run.wait_until(f"Envoy ({config.key}) under valgrind", ready, args.start_timeout, envoy)
        def answering() -> bool:
            if config.key not in MODERN_CALLS:
                return run.probe(url, config.token, config.expect)
            try:
                checked_requests(url, config, 1)
            except (SystemExit, OSError):
                return False
            return True

        run.wait_until(f"({config.key}) answering", answering, 120, envoy)
        checked_requests(url, config, args.warmup)
        callgrind_control("--instr=on", str(envoy.pid))
        started = time.monotonic()
        checked_requests(url, config, args.requests)
        callgrind_control("--instr=off", str(envoy.pid))
        print(f"   ({config.key}) {args.requests} requests counted in {time.monotonic() - started:.0f} s", flush=True)
    finally:
        envoy.stop()  # SIGTERM: Envoy exits cleanly and callgrind writes its totals
    # The parts callgrind wrote (the file itself at exit, `<file>.N` per dump): instructions
    # are only counted while instrumentation is on, so their sum is the measured window's.
    parts = [p for p in workdir.iterdir() if p.name == out_file.name or p.name.startswith(out_file.name + ".")]
    totals = [int(line.split()[1]) for p in parts for line in p.read_text().splitlines() if line.startswith("totals:")]
    if not totals or sum(totals) == 0:
        raise SystemExit(f"callgrind counted nothing in {[p.name for p in parts]}")
    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        for part in parts:
            shutil.copy(part, args.keep / part.name)
    if args.split:
        split = split_by_object(out_file, args.requests)
        print("   (" + config.key + ") " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(split.items())), flush=True)
    return sum(totals) / args.requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="bcdgh", help="run.py configuration keys, first = baseline (default bcdgh)")
    parser.add_argument("--wasm-b", type=Path, default=None, help="adds (C)/(D): (c)/(d) with this module")
    parser.add_argument("--requests", type=int, default=400, help="requests counted (default 400)")
    parser.add_argument("--warmup", type=int, default=200, help="requests before counting (default 200)")
    parser.add_argument("--probe", action="append", default=[], metavar="KEY:OPS",
                        help="adds configuration KEY: the floor (f) with the probe configuration OPS, e.g. "
                             "'P:props=10' (benches/wasm-floor); repeatable")
    parser.add_argument("--split", action="store_true",
                        help="also print each configuration's instructions per request by object (Envoy binary, "
                             "JIT, allocator, libc)")
    parser.add_argument("--keep", type=Path, default=None,
                        help="copy callgrind's output files here (for callgrind_annotate)")
    parser.add_argument("--start-timeout", type=float, default=600, help="seconds for Envoy to start under valgrind")
    args = parser.parse_args()
    for tool in ("valgrind", "callgrind_control"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (make system-deps)")
    if not ENVOY_BINARY.exists():
        raise SystemExit(f"missing {ENVOY_BINARY} (make venv)")

    with tempfile.TemporaryDirectory(prefix="meshgate-instructions-") as tmp:
        workdir = Path(tmp)
        ready = workdir / "upstream.ready"
        upstream = run.start("upstream", [str(run.UPSTREAM), "--ready-file", str(ready)], workdir)
        try:
            run.wait_until("the upstream's ready file", ready.exists, 10, upstream)
            port = json.loads(ready.read_text())["port"]
            secret = base64.urlsafe_b64encode(os.urandom(36)).decode()
            configs = {c.key: c for c in run.build_configs(workdir, port, secret, args.wasm_b)}
            if any(key in MODERN_CALLS for key in args.only):
                configs.update({c.key: c for c in modern_configs(workdir, port)})
            token_server = TokenServer() if any(key in EXCHANGE_CONFIGS for key in args.only) else None
            if token_server is not None:
                configs.update({c.key: c for c in exchange_configs(workdir, port, secret, token_server.port)})
            for spec in args.probe:
                key, _, ops = spec.partition(":")
                if len(key) != 1 or key in configs or not ops:
                    raise SystemExit(f"--probe {spec!r}: want KEY:OPS with a new one-letter KEY")
                configs[key] = probe_config(configs["f"], key, ops)
            per_request: dict[str, float] = {}
            for key in args.only:
                config = configs[key]
                if config.bootstrap is None:
                    raise SystemExit(f"({key}) has no Envoy to count")
                print(f"== ({key}) {config.label}", flush=True)
                exchanges_before = token_server.calls if token_server is not None else 0
                per_request[key] = counted(config, workdir, args)
                if key in EXCHANGE_CONFIGS and EXCHANGE_CONFIGS[key][1]:
                    made = token_server.calls - exchanges_before if token_server is not None else 0
                    if made != 1:
                        raise SystemExit(f"({key}) made {made} token exchanges; want exactly 1 (the warm-up's)")
                    print(f"   ({key}) one token exchange (in the warm-up); every counted call a cache hit", flush=True)
        finally:
            upstream.stop()
            if token_server is not None:
                token_server.stop()

    base = args.only[0]
    print(f"\nEnvoy instructions per request (callgrind, {args.requests} requests after {args.warmup} of warm-up, "
          "one keep-alive connection)")
    for key, n in per_request.items():
        delta = "" if key == base else f"  ({n - per_request[base]:+,.0f} vs ({base}))"
        print(f"({key}) {configs[key].label}: {n:,.0f}{delta}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
