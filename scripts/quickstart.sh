#!/usr/bin/env bash
# Set up everything (apt packages, venv, VM assets) and run the main job: start clawpot-server,
# create a VM, run a command in it, list it, delete it, stop the server.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
"$ROOT/scripts/bootstrap.sh"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
CLAWPOT="$ROOT/.venv/bin/clawpot"
RUN_DIR="$(mktemp -d /tmp/clawpot-quickstart.XXXXXX)"
SOCKET="unix:$RUN_DIR/clawpot.sock"
SERVER_PID=""

cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" && wait "$SERVER_PID" || true
  fi
  rm -rf "$RUN_DIR"
}
trap cleanup EXIT

step "starting clawpot-server on $SOCKET (log: $RUN_DIR/server.log)"
"$ROOT/.venv/bin/clawpot-server" --listen "$SOCKET" --stop-vms-on-exit >"$RUN_DIR/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 100); do
  [[ -S "$RUN_DIR/clawpot.sock" ]] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$RUN_DIR/server.log"; exit 1; }
  sleep 0.1
done

export CLAWPOT_SERVER="$SOCKET"
step "clawpot create --vcpus 2 --memory 512"
VM_ID="$("$CLAWPOT" create --vcpus 2 --memory 512)"
echo "$VM_ID"
step "clawpot list"
"$CLAWPOT" list
step "clawpot exec $VM_ID -- uname -a"
"$CLAWPOT" exec "$VM_ID" -- uname -a
step "clawpot delete $VM_ID"
"$CLAWPOT" delete "$VM_ID"
"$CLAWPOT" list
step "done"
