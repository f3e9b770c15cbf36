package loadgen

import (
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
)

// TestChurnLineage checks that the churn model keeps real lineage: every
// fork is from a live parent, every exec, connect and exit is of a live
// process, and the live set stays bounded.
func TestChurnLineage(t *testing.T) {
	c := newChurn(1)
	live := map[uint32]bool{}
	for _, r := range roots {
		live[r.key.PID] = true
	}
	var evs []capture.Event
	for range 5000 {
		evs = c.step(int64(len(evs)), evs[:0])
		for _, ev := range evs {
			switch ev.Kind {
			case capture.KindFork:
				if !live[ev.Parent.PID] {
					t.Fatalf("fork from %d, which is not alive", ev.Parent.PID)
				}
				live[ev.Proc.PID] = true
			case capture.KindExec, capture.KindConnect:
				if !live[ev.Proc.PID] {
					t.Fatalf("%s by %d, which is not alive", ev.Kind, ev.Proc.PID)
				}
			case capture.KindExit:
				if !live[ev.Proc.PID] {
					t.Fatalf("exit of %d, which is not alive", ev.Proc.PID)
				}
				delete(live, ev.Proc.PID)
			}
		}
	}
	if len(live) > maxLive {
		t.Fatalf("%d live processes, want at most %d", len(live), maxLive)
	}
}

// TestBigHostLineage checks the big host's tree: n processes, each with a
// parent seen before it, and the deepest one's depth right.
func TestBigHostLineage(t *testing.T) {
	const n = 10000
	h := newBigHost(newChurn(3), n, 1)
	if len(h.events) != n {
		t.Fatalf("%d events, want %d", len(h.events), n)
	}
	depth := map[capture.ProcKey]int{}
	for i, r := range roots {
		depth[r.key] = min(i, 1)
	}
	for _, ev := range h.events {
		d, ok := depth[ev.Parent]
		if !ok {
			t.Fatalf("process %v has parent %v, which does not exist before it", ev.Proc, ev.Parent)
		}
		if _, dup := depth[ev.Proc]; dup {
			t.Fatalf("process %v twice", ev.Proc)
		}
		depth[ev.Proc] = d + 1
	}
	if depth[h.deep] != h.depth || h.depth < 5 {
		t.Fatalf("deepest process %v at depth %d, recorded %d (want >= 5)", h.deep, depth[h.deep], h.depth)
	}
}

// TestBenchReport reads benchmark output of several packages (a log line
// that looks like a result among them) and checks the report's rows: the
// figure beside its target, the same-run reference and the ratio.
func TestBenchReport(t *testing.T) {
	raw := `goos: linux
pkg: github.com/evilbitlabs/daemoneye/roles/agent
BenchmarkExecStorm/ebpf-2         	       1	4000000 ns/op	       710000 ns/exec-on	 682000 ns/exec-off	 4.1 %slowdown	 0 execs-missed	 1500 execs/s-off
    agent_bench_test.go:120: BenchmarkExecStorm rounds 5 of 4000
pkg: github.com/evilbitlabs/daemoneye/roles/treetest
BenchmarkPipelineThroughput-2   	       1	1 ns/op	 64600 events/s	 9430000 nats-events/s	 0.0069 daemoneye/nats
BenchmarkPipelineThroughput-2   	       1	1 ns/op	 70000 events/s	 9000000 nats-events/s	 0.0078 daemoneye/nats
BenchmarkPipelineThroughput-2   	       1	1 ns/op	 50000 events/s	 9500000 nats-events/s	 0.0053 daemoneye/nats
BenchmarkTraceLatency/proxies=real/prio=on-2 1 1 ns/op 90 p99-ms
BenchmarkTraceLatency/proxies=chain/prio=off-2 1 1 ns/op 900 p99-ms
pkg: github.com/evilbitlabs/daemoneye/ui
BenchmarkTraceView1000-2   	2026/11/25 02:41:14 http2: server: error reading preface from client
       5	1448457913 ns/op	      1458 ms-to-paint	       989.4 ms-to-ready	      1002 nodes
`
	res := &Result{Options: Options{Agents: 100, Rate: 10, BatchMS: 1000, Duration: time.Minute}, Load: time.Minute,
		Batches: 10, Events: 100, SQLRows: 100, Alert: Latency{Seen: 1, P50: 100 * time.Millisecond, P99: 600 * time.Millisecond}}
	raw += res.BenchLine() + "\n"
	runs, err := ParseBench(strings.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if len(runs) != 8 {
		t.Fatalf("%d results, want 8: %+v", len(runs), runs)
	}
	var out strings.Builder
	WriteBenchReport(&out, runs, "test run", time.Unix(0, 0))
	report := out.String()
	for _, want := range []string{
		"| 3 | exec storm, whole agent on vs off: slowdown (%) | 4.10 | < 3 % | **MISSED** | agent off, ns/exec: 682000 | — | 1 |",
		"| 4 | pipeline agent -> proxy -> proxy -> center, events/s | 64600 | >= 200,000 | **MISSED** | NATS JetStream, same batches, events/s: 9430000 | 0.0069 | 3 |",
		"| 4 | trace lane p99 through two proxies, bulk saturated (ms) | 90.0 | < 100 ms | met | priority lanes off (chain of proxies), p99 ms: 900 | 0.1 | 1 |",
		"| 10 | scale: batches lost at the center [agents=100/rate=10/batch-ms=1000/duration=1m0s] | 0 | 0 | met |",
		"| 10 | scale: exec -> alert p99 (ms, from the store append) [agents=100/rate=10/batch-ms=1000/duration=1m0s] | 600 | < 500 ms | **MISSED** |",
		"- agent start with 10,000 live processes: table seeded (ms)",
		"| 10 | trace view with 1,000 processes: to first paint in the browser (ms) | 1458 | usable (< 2 s) | met |",
	} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks\n%s\nreport:\n%s", want, report)
		}
	}
}
