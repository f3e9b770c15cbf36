#!/usr/bin/env bash
# make demo-standalone: run the agent standalone with
# its embedded defaults, start a small process family, and show what the agent
# recorded: the live process tree and one lineage, arguments masked.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/bin/daemoneye
DEMO=$PWD/.demo
DATA=$DEMO/agent
mkdir -p "$DATA"

if [ "$(id -u)" != 0 ]; then
  echo "make demo runs the eBPF sensor and needs root" >&2
  exit 1
fi

# Stop a previous run's agent, if any.
if [ -f "$DEMO/agent.pid" ] && kill -0 "$(cat "$DEMO/agent.pid")" 2>/dev/null; then
  kill "$(cat "$DEMO/agent.pid")"; sleep 1
fi

echo "== starting the agent (standalone, data in $DATA, log in $DEMO/agent.log)"
"$BIN" agent --standalone --data-dir "$DATA" --set agent.metrics.listen=127.0.0.1:0 >"$DEMO/agent.log" 2>&1 &
AGENT=$!
echo $AGENT > "$DEMO/agent.pid"
cleanup() { kill "$AGENT" 2>/dev/null || true; wait "$AGENT" 2>/dev/null || true; kill "${FAMILY:-}" 2>/dev/null || true; }
trap cleanup EXIT

for i in $(seq 1 50); do
  [ -S "$DATA/agent.sock" ] && break
  sleep 0.2
done
[ -S "$DATA/agent.sock" ] || { echo "agent did not start:"; cat "$DEMO/agent.log"; exit 1; }
grep -m1 'capture source selected' "$DEMO/agent.log" || true
grep -m1 'process table seeded' "$DEMO/agent.log" || true

echo "== a process family appears: bash -> (sleep, sh -> sleep)"
bash -c 'sleep 30 & sh -c "sleep 31; true" & wait' &
FAMILY=$!
sleep 1.5

echo
echo "== daemoneye agent ps --tree (arguments masked by default)"
"$BIN" agent ps --tree --data-dir "$DATA" > "$DEMO/ps.txt"
head -60 "$DEMO/ps.txt"
echo "(full tree: $DEMO/ps.txt)"
echo
echo "== daemoneye agent lineage $FAMILY"
"$BIN" agent lineage "$FAMILY" --data-dir "$DATA"
echo
echo "== the same, revealed with a reason (recorded in $DATA/audit.log)"
"$BIN" agent lineage "$FAMILY" --data-dir "$DATA" --reveal --reason "demo: show the reveal path"
echo
echo "== agent status"
"$BIN" agent status --data-dir "$DATA"
echo
echo "Where to look: the agent log $DEMO/agent.log, its store $DATA/store, reveal audit $DATA/audit.log."
echo "Run it again any time; 'make demo-clean' removes $DEMO."
