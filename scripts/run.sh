#!/usr/bin/env bash
# Start the demo: both example MCP servers, then Meshgate (Envoy + wasm filter) in front of them.
# Usually invoked as `make run` (which installs and builds first). Ctrl-C stops everything.
#
# Everything this script starts is tracked by PID and stopped on exit; logs go to .run/.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PY="$ROOT/.venv/bin/python"
MESHGATE="$ROOT/target/release/meshgate"
WASM="$ROOT/target/wasm32-wasip1/release/meshgate_wasm.wasm"
# The registry's filter.runtime is native (the default): Envoy loads this module.
NATIVE="$ROOT/target/release/libmeshgate.so"
ENVOY="$ROOT/.venv/bin/envoy"
REGISTRY="$ROOT/examples/registry.yaml"
RUN_DIR="$ROOT/.run"
READY="$RUN_DIR/ready.json"

for f in "$PY" "$MESHGATE" "$NATIVE" "$WASM" "$ENVOY"; do
  [[ -e "$f" ]] || { echo "run.sh: missing $f (run \`make run\`, not this script directly)" >&2; exit 1; }
done

# The demo registry uses fixed ports; fail early and clearly if one is taken.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 9101 9102 10000 9901; do
  if port_busy "$port"; then
    echo "run.sh: 127.0.0.1:$port is already in use (another \`make run\`?). Stop it or edit examples/registry.yaml." >&2
    exit 1
  fi
done

mkdir -p "$RUN_DIR"
rm -f "$READY"
PIDS=()

cleanup() {
  trap - EXIT INT TERM
  local pid
  # Reverse order: gateway first, then the servers behind it.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    pid=${PIDS[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "run.sh: stopped."
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_server() {
  local name=$1 port=$2
  MESHGATE_UPSTREAM_LOG="$RUN_DIR/upstream-$name.jsonl" \
    "$PY" "examples/servers/${name}_server.py" --port "$port" >"$RUN_DIR/$name.log" 2>&1 &
  PIDS+=($!)
  echo "run.sh: started $name server (pid $!) on http://127.0.0.1:$port/mcp, log $RUN_DIR/$name.log"
}

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 150); do
    port_busy "$port" && return 0
    sleep 0.1
  done
  echo "run.sh: $what did not start listening on $port" >&2
  exit 1
}

start_server crm 9101
start_server docs 9102
wait_port 9101 "crm server"
wait_port 9102 "docs server"

"$MESHGATE" up --registry "$REGISTRY" --ready-file "$READY" --envoy "$ENVOY" --native-module "$NATIVE" --wasm "$WASM" &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")

for _ in $(seq 600); do
  [[ -s "$READY" ]] && break
  kill -0 "$MESHGATE_PID" 2>/dev/null || { echo "run.sh: meshgate exited before it was ready" >&2; exit 1; }
  sleep 0.1
done
[[ -s "$READY" ]] || { echo "run.sh: meshgate not ready after 60s" >&2; exit 1; }

# Where an operator looks: every address of this run, one per line (the ports meshgate's
# control plane and Envoy's admin got are the OS's picks).
ADDRESSES=$(.venv/bin/python - "$READY" <<'PY'
import json, sys
ready = json.load(open(sys.argv[1]))
def url(value, path=""):
    value = str(value)
    return (value if "://" in value else f"http://{value}") + path
print(f"  MCP listener:        {url(ready['listener'])}/mcp/<server>")
print(f"  meshgate admin API:  {url(ready['meshgate_admin'], '/status')}  (also /registry, /catalog, /metrics)")
print(f"  Envoy admin:         {url(ready['admin'], '/stats/prometheus')}  (Envoy pid {ready['envoy_pid']})")
print(f"  xDS (ADS):           {ready['xds']}")
PY
) || ADDRESSES="  (addresses: $(cat "$READY"))"

cat <<EOF

Meshgate is up.
$ADDRESSES

Try it from another terminal:

  # list tools (reader sees get_*/list_* only) and call one, official MCP SDK client:
  .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --api-key demo-reader-key
  # denied by policy (admin may not delete; JSON-RPC error -32003):
  .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --api-key demo-admin-key --call delete_customer --args '{"id":"c-001"}'
  # JWT instead of an API key, progress notifications streamed through the filter:
  .venv/bin/python examples/client.py --url http://127.0.0.1:10000/mcp/crm --mode legacy \\
      --token "\$(.venv/bin/python examples/mint_token.py --sub alice --roles admin)" --call slow_report --args '{"steps":5,"delay":0.5}'
  # raw HTTP (2026-07-28 style request):
  curl -sS http://127.0.0.1:10000/mcp/docs -H 'x-api-key: demo-reader-key' \\
      -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' \\
      -H 'mcp-protocol-version: 2026-07-28' -H 'mcp-method: tools/list' \\
      -d '{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}'

What reached the upstreams: $RUN_DIR/upstream-crm.jsonl, $RUN_DIR/upstream-docs.jsonl
Ctrl-C to stop.
EOF

wait "$MESHGATE_PID"
