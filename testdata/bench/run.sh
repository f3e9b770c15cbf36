#!/usr/bin/env bash
# make bench: run every benchmark of the project and keep the raw output in
# .bench/ (BENCHMARKS.md quotes the figures with this command). Needs root:
# the capture benchmarks use the real kernel.
set -euo pipefail
cd "$(dirname "$0")/../.."
GO=${GO:-go}
OUT=.bench
mkdir -p "$OUT"
export DAEMONEYE_BIN=$PWD/bin/daemoneye
stamp=$(date -u +%Y%m%dT%H%M%SZ)
report="$OUT/bench-$stamp.txt"
{
  echo "# daemoneye benchmarks, $(date -u), $(uname -r), $(nproc) cores, commit $(git rev-parse --short HEAD 2>/dev/null || echo ?)"
  # Storage and codecs first (quick), then the kernel-facing ones.
  $GO test -run '^$' -bench . -benchtime "${BENCHTIME:-1x}" -timeout 30m ./store/... ./transport/... 2>&1
  $GO test -run '^$' -bench 'Seed' -benchtime 1x -timeout 10m ./capture/ 2>&1
  $GO test -run '^$' -bench 'ExecStorm' -benchtime 1x -timeout 20m -v ./capture/ 2>&1 | grep -v '^=== RUN'
  $GO test -run '^$' -bench . -benchtime 1x -timeout 20m -v ./roles/agent/ 2>&1 | grep -v '^=== RUN'
  # The tree: pipeline throughput beside NATS JetStream, trace latency
  # under a saturated bulk lane (BENCHCOUNT repetitions, side by side). The
  # pipeline waits for the center's SQL store too (minutes; PIPELINE_SQL=0
  # skips that part).
  bash testdata/bench/nats.sh
  $GO test -run '^$' -bench . -benchtime 1x -count "${BENCHCOUNT:-1}" -timeout 90m -v ./roles/treetest/ 2>&1 | grep -v '^=== RUN'
  # Scale (issue 10): simulated agents (real stores, certificates, QUIC)
  # through two levels of proxies; zero loss checked at the center. A
  # failed check is reported and does not stop the rest of the report.
  "$DAEMONEYE_BIN" bench scale --agents "${SCALE_AGENTS:-100}" --rate 10 --batch-ms 1000 --duration "${SCALE_DURATION:-2m}" 2>&1 || echo "bench scale: FAILED (exit $?)"
} | tee "$report"
echo
echo "report: $report"
