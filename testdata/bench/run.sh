#!/usr/bin/env bash
# make bench: run every benchmark of the project, keep the raw output in
# .bench/, and write ONE report, bench-report.md: each figure beside its
# target and beside the reference measured in the same run (the agent off,
# NATS JetStream, priority lanes off). Needs root (the capture and agent
# benchmarks use the real kernel) and about 25 minutes on a quiet 2-core
# machine. A failing benchmark is reported and does not stop the others.
#
# Knobs: BENCHCOUNT (repetitions of the tree benchmarks, default 1),
# SCALE_AGENTS (1000), SCALE_DURATION (2m), SCALE_BIG_HOST (10000),
# UI_BENCHTIME (5x), and the tree benchmarks' own (PIPELINE_EVENTS,
# PIPELINE_SQL, TRACE_SECONDS, EXEC_ALERT_SECONDS, NATS_ROUNDS; see
# BENCHMARKS.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
OUT=.bench
mkdir -p "$OUT"
export DAEMONEYE_BIN=$PWD/bin/daemoneye
if [[ ! -x $DAEMONEYE_BIN ]]; then
  echo "bench: $DAEMONEYE_BIN is missing (make bench builds it)" >&2
  exit 1
fi
stamp=$(date -u +%Y%m%dT%H%M%SZ)
raw="$OUT/bench-$stamp.txt"
report=bench-report.md
started=$SECONDS

# step NAME COMMAND...: run one benchmark command, its output into the raw
# file (and the terminal), with how long it took.
step() {
  local name=$1
  shift
  local t0=$SECONDS
  echo "=== bench step: $name"
  "$@" 2>&1 | grep -v -e '^=== RUN' -e '^=== PAUSE' -e '^=== CONT'
  local rc=${PIPESTATUS[0]}
  echo "=== bench step: $name: $((SECONDS - t0)) s, exit $rc"
}

header="$(uname -r), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), load average at the start $(cut -d' ' -f1-3 /proc/loadavg)"
{
  echo "# daemoneye benchmarks, $(date -u), $header"
  # Storage, codecs, ledger: quick. The store's own batch counts are the
  # ones BENCHMARKS.md quotes.
  step store-append $GO test -run '^$' -bench 'Append$' -benchtime 300x -timeout 10m ./store/
  step store-storm $GO test -run '^$' -bench 'AppendExecStorm' -benchtime 4000x -timeout 10m ./store/
  step store-seed $GO test -run '^$' -bench 'Seed10k' -timeout 10m ./store/
  step sqlstore $GO test -run '^$' -bench . -benchtime 1x -timeout 20m ./store/sqlstore/
  step wal $GO test -run '^$' -bench . -benchtime 2s -timeout 10m ./store/wal/
  step wire $GO test -run '^$' -bench . -benchtime 1s -timeout 10m ./transport/...
  step ledger $GO test -run '^$' -bench . -benchtime 1s -timeout 10m ./ledger/
  # The kernel-facing ones: the sensor alone (paired on/off), traced vs
  # untraced storms, the /proc scan, then the whole agent on vs off and its
  # start with 10,000 live processes.
  step capture-storms $GO test -run '^$' -bench 'ExecStorm' -benchtime 10x -timeout 20m ./capture/
  step capture-decode $GO test -run '^$' -bench 'Decode|ReadProcess|Seed10k' -timeout 10m ./capture/
  step agent $GO test -run '^$' -bench . -benchtime 1x -timeout 20m ./roles/agent/
  # The tree: pipeline throughput beside NATS JetStream on the same sealed
  # batches, trace latency under a saturated bulk lane with priority on and
  # off, trace event latency, center ingest, exec -> alert.
  step nats-install bash testdata/bench/nats.sh
  step tree $GO test -run '^$' -bench . -benchtime 1x -count "${BENCHCOUNT:-1}" -timeout 60m ./roles/treetest/
  # The UI: the trace view with 1,000 traced processes in headless Chromium.
  step ui $GO test -run '^$' -bench TraceView1000 -benchtime "${UI_BENCHTIME:-5x}" -timeout 10m ./ui/
  # Scale (issue 10): simulated agents (real stores, certificates, QUIC,
  # signed trace commands) through two levels of proxies run as child
  # processes of this binary; zero loss and duplicates checked at the
  # center; one agent with 10,000 live processes for the lineage figures.
  step scale "$DAEMONEYE_BIN" bench scale --agents "${SCALE_AGENTS:-1000}" --rate 2 --batch-ms 10000 \
    --duration "${SCALE_DURATION:-2m}" --big-host "${SCALE_BIG_HOST:-10000}"
  echo "# load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - started)) s in all"
} | tee "$raw"

echo
"$DAEMONEYE_BIN" bench report --out "$report" --header "Run $stamp: $header; load average at the end $(cut -d' ' -f1-3 /proc/loadavg); $((SECONDS - started)) s in all; raw output $raw." "$raw"
echo "raw output: $raw"
if grep -q '^=== bench step: .*exit [1-9]' "$raw"; then
  echo "steps that failed (their figures are missing from the report or flagged):"
  grep '^=== bench step: .*exit [1-9]' "$raw"
  exit 1
fi
