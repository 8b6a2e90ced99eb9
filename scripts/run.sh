#!/usr/bin/env bash
# The demo: the example MCP servers, then Meshgate (`meshgate up`: the control plane and one
# Envoy with the filter) in front of them. Usually started as `make run`, which installs what
# the demo needs and builds first; this script expects the builds to exist.
#
#   scripts/run.sh [--admin-port N] [--registry FILE]
#
# Environment (each also a flag above):
#   MESHGATE_ADMIN_PORT   meshgate's admin API port on 127.0.0.1 (default 18001)
#   MESHGATE_REGISTRY     the registry to serve (default examples/registry.yaml); the listener,
#                         Envoy admin and example server ports are the registry's
#   MESHGATE_RUN_DIR      where logs, the ready file and the PID file go (default .run)
#
# Output: a short banner once everything is ready, then one line per live registry change.
# Everything else goes to log files in the run folder ($RUN_DIR/meshgate.log: meshgate and
# Envoy, including the audit lines; $RUN_DIR/<server>.log: each example server).
#
# Stopping: Ctrl-C, SIGTERM or SIGHUP to this script (or `make stop`, which sends SIGTERM to
# the PID in $RUN_DIR/run.pid) stops the gateway, then the servers, and exits 0 once every
# process it started has exited. It exits 1 when something fails to start or meshgate dies.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
ADMIN_PORT=${MESHGATE_ADMIN_PORT:-18001}
REGISTRY=${MESHGATE_REGISTRY:-examples/registry.yaml}
RUN_DIR=${MESHGATE_RUN_DIR:-.run}
while [[ $# -gt 0 ]]; do
  case $1 in
    --admin-port) ADMIN_PORT=${2:?--admin-port needs a port}; shift 2 ;;
    --registry) REGISTRY=${2:?--registry needs a file}; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY="$ROOT/.venv/bin/python"
MESHGATE="$ROOT/target/release/meshgate"
WASM="$ROOT/target/wasm32-wasip1/release/meshgate_wasm.wasm"
NATIVE="$ROOT/target/release/libmeshgate.so"
ENVOY="$ROOT/.venv/bin/envoy"
READY="$RUN_DIR/ready.json"
LOG="$RUN_DIR/meshgate.log"
PID_FILE="$RUN_DIR/run.pid"

fail() { echo "run.sh: $*" >&2; exit 1; }

for f in "$PY" "$MESHGATE" "$NATIVE" "$WASM" "$ENVOY"; do
  [[ -e "$f" ]] || fail "missing $f (start the demo with \`make run\`, which builds it)"
done
[[ -f "$REGISTRY" ]] || fail "no registry at $REGISTRY"

# The ports this run needs, from the registry itself: listener, Envoy admin, and each server
# that is one of the example servers (examples/servers/<name>_server.py) on 127.0.0.1.
PLAN=$("$PY" - "$REGISTRY" <<'PY'
import sys, urllib.parse, yaml
registry = yaml.safe_load(open(sys.argv[1]))
print("listener", registry["listener"]["port"])
print("envoy_admin", (registry.get("admin") or {}).get("port", 0))
for server in registry.get("servers", []):
    url = urllib.parse.urlsplit(server.get("url") or "")
    print("server", server["name"], url.port or 0, url.hostname or "")
for virtual in registry.get("virtual_servers") or []:
    print("virtual", virtual["name"])
PY
) || fail "cannot read $REGISTRY (run \`.venv/bin/meshgate validate --registry $REGISTRY\` for details)"

LISTENER_PORT=$(awk '$1 == "listener" {print $2}' <<<"$PLAN")
ENVOY_ADMIN_PORT=$(awk '$1 == "envoy_admin" {print $2}' <<<"$PLAN")
SERVERS=()
while read -r _ name port host; do
  if [[ -f "examples/servers/${name}_server.py" && $host == 127.0.0.1 && $port != 0 ]]; then
    SERVERS+=("$name:$port")
  fi
done < <(grep '^server ' <<<"$PLAN")

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in "$LISTENER_PORT" "$ENVOY_ADMIN_PORT" "$ADMIN_PORT" "${SERVERS[@]##*:}"; do
  [[ $port == 0 ]] && continue
  if port_busy "$port"; then
    fail "127.0.0.1:$port is already in use (another \`make run\`? \`make stop\` ends it). Or pick other ports: MESHGATE_ADMIN_PORT for the admin API, the registry for the rest."
  fi
done

mkdir -p "$RUN_DIR"
rm -f "$READY"
: >"$LOG"
echo $$ >"$PID_FILE"
PIDS=()
STOPPING=0

cleanup() {
  local status=$?
  trap - EXIT INT TERM HUP
  local pid i
  # Reverse order: the announcer, the gateway, then the servers behind it.
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
    kill -TERM "${PIDS[i]}" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -f "$PID_FILE"
  if [[ $STOPPING == 1 ]]; then
    echo "Stopped: gateway and example servers (logs kept in $RUN_DIR/)."
    exit 0
  fi
  exit "$status"
}
trap cleanup EXIT
trap 'STOPPING=1; exit 0' INT TERM HUP

wait_port() {
  local port=$1 what=$2 log=$3
  for _ in $(seq 150); do
    port_busy "$port" && return 0
    sleep 0.1
  done
  fail "$what did not start listening on $port; see $log"
}

for entry in "${SERVERS[@]}"; do
  name=${entry%%:*}
  port=${entry##*:}
  MESHGATE_UPSTREAM_LOG="$RUN_DIR/upstream-$name.jsonl" \
    "$PY" "examples/servers/${name}_server.py" --port "$port" >"$RUN_DIR/$name.log" 2>&1 &
  PIDS+=($!)
done
for entry in "${SERVERS[@]}"; do
  wait_port "${entry##*:}" "the ${entry%%:*} server" "$RUN_DIR/${entry%%:*}.log"
done

echo "Starting Meshgate (meshgate up, Envoy with the filter); log: $LOG"
"$MESHGATE" up --registry "$REGISTRY" --ready-file "$READY" --envoy "$ENVOY" --native-module "$NATIVE" \
  --wasm "$WASM" --admin-listen "127.0.0.1:$ADMIN_PORT" >>"$LOG" 2>&1 &
MESHGATE_PID=$!
PIDS+=("$MESHGATE_PID")

for _ in $(seq 600); do
  [[ -s "$READY" ]] && break
  if ! kill -0 "$MESHGATE_PID" 2>/dev/null; then
    echo "run.sh: meshgate exited before it was ready; the end of $LOG:" >&2
    tail -n 20 "$LOG" >&2
    exit 1
  fi
  sleep 0.1
done
[[ -s "$READY" ]] || fail "meshgate not ready after 60s; see $LOG"

# One line per live registry change, read from meshgate's log.
announce() {
  local line version added removed
  while IFS= read -r line; do
    case $line in
      *"registry reloaded"*)
        version=$(sed -n 's/.* version=\([^ ]*\).*/\1/p' <<<"$line")
        added=$(sed -n 's/.* added=\([^ ]*\).*/\1/p' <<<"$line")
        removed=$(sed -n 's/.* removed=\([^ ]*\).*/\1/p' <<<"$line")
        line="live: registry applied (version ${version:0:12})"
        [[ -n $added ]] && line+="; added /mcp/${added//,/, /mcp/}"
        [[ -n $removed ]] && line+="; removed /mcp/${removed//,/, /mcp/}"
        echo "$line"
        ;;
      *"registry edited, resources unchanged"*) echo "live: registry edited, nothing to change" ;;
      *"registry edit refused"*)
        IFS= read -r line || true
        echo "live: registry edit refused, still serving the last good one: ${line% file=*}"
        ;;
      *"registry file is gone"*) echo "live: registry file is gone, still serving the last good one" ;;
    esac
  done < <(tail -n 0 -F --pid=$$ "$LOG" 2>/dev/null)
}
announce &
PIDS+=($!)

LISTENER="http://127.0.0.1:$LISTENER_PORT"
ADMIN="http://127.0.0.1:$ADMIN_PORT"
ROUTES=$("$PY" - "$READY" <<'PY'
import json, sys
ready = json.load(open(sys.argv[1]))
for name, url in ready["servers"].items():
    print(f"    {url}")
PY
)
while read -r _ name; do
  ROUTES+=$'\n'"    $LISTENER/mcp/$name  (virtual server)"
done < <(grep '^virtual ' <<<"$PLAN")

cat <<EOF

Meshgate is up. Registry: $REGISTRY (edits apply live).

  MCP endpoints:
$ROUTES
  meshgate admin:   $ADMIN/status  (also /catalog, /registry, /metrics)
  Envoy admin:      http://127.0.0.1:$ENVOY_ADMIN_PORT/stats/prometheus
  logs:             $LOG (gateway, audit lines), $RUN_DIR/<server>.log

Try it from another terminal:

  # a reader lists the tools it may see and calls one (the official MCP SDK client):
  .venv/bin/python examples/client.py --url $LISTENER/mcp/crm --api-key demo-reader-key
  # an admin may not delete customers: JSON-RPC error -32003
  .venv/bin/python examples/client.py --url $LISTENER/mcp/crm --api-key demo-admin-key --call delete_customer --args '{"id":"c-001"}'
  # no credentials: HTTP 401
  curl -sS -w '\\nHTTP %{http_code}\\n' $LISTENER/mcp/docs -H 'content-type: application/json' -d '{}'
  # a page from a foreign web origin: HTTP 403
  curl -sS -w '\\nHTTP %{http_code}\\n' $LISTENER/mcp/docs -H 'origin: https://evil.example' -H 'x-api-key: demo-reader-key' -H 'content-type: application/json' -d '{}'
  # every server's tools, as discovered from the servers:
  curl -sS $ADMIN/catalog

Ctrl-C or \`make stop\` stops everything.
EOF

# meshgate exits 0 only when asked to stop (Ctrl-C reaches the whole process group, so it
# may see the signal before this script's trap runs); anything else is a failure.
status=0
wait "$MESHGATE_PID" || status=$?
if [[ $status == 0 || $STOPPING == 1 ]]; then
  STOPPING=1
  exit 0
fi
echo "run.sh: meshgate exited with status $status; the end of $LOG:" >&2
tail -n 5 "$LOG" >&2
exit 1
