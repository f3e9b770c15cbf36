package loadgen

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

// FuzzParseBench feeds the report's reader arbitrary benchmark output: it
// must not panic, and what it reads must write a report.
func FuzzParseBench(f *testing.F) {
	f.Add("pkg: x\nBenchmarkA-2 1 5 ns/op 3.5 p99-ms\n")
	f.Add("BenchmarkScale/agents=10 \t1\t100 ns/op\t0 lost-batches\n")
	f.Add("Benchmark 1 2\nBenchmarkX-2 1 NaN x\n    log line BenchmarkY 3 4 z\n")
	f.Fuzz(func(t *testing.T, raw string) {
		runs, err := ParseBench(strings.NewReader(raw))
		if err != nil {
			return
		}
		var out bytes.Buffer
		WriteBenchReport(&out, runs, "fuzz", time.Unix(0, 0))
		if !strings.Contains(out.String(), "# DaemonEye benchmark report") {
			t.Fatal("no report header")
		}
	})
}

// FuzzParseMetrics feeds the proxies' metrics reader arbitrary text.
func FuzzParseMetrics(f *testing.F) {
	f.Add("# HELP x y\ndaemoneye_proxy_routed_agents 12\ndaemoneye_proxy_queue_batches{lane=\"bulk\"} 3\n")
	f.Add("a{b=\"c d\"} 1e3\nbad line\n{ 2\n")
	f.Fuzz(func(t *testing.T, text string) {
		m, err := parseMetrics(strings.NewReader(text))
		if err != nil {
			return
		}
		for k := range m {
			if strings.ContainsAny(k, "{ ") {
				t.Fatalf("metric name %q keeps its labels", k)
			}
		}
	})
}
