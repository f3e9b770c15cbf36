package treetest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// BenchmarkTraceEventLatency: a real agent (eBPF) under a real proxy and
// center traces a shell that opens a file every 20 ms; latency is from the
// event's kernel timestamp to the moment the center has stored the batch
// holding it (same host, same clock). The baseline runs at the same time
// from the rest of the host, as it would.
func BenchmarkTraceEventLatency(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: real eBPF agent")
	}
	samples := 250
	for i := 0; i < b.N; i++ {
		tr := New(b)
		c := tr.NewCenter("center").Start()
		px := tr.NewProxy("px1", c.Cfg.Listen).Start()
		ag := tr.newRealAgent("host-l", px.Cfg.Listen)
		ag.Cfg.Stream.BatchMaxMS = 250 // the default baseline cut: trace events must not wait for it
		ag.Start()

		dir := b.TempDir()
		sh := exec.Command("/bin/bash", "-c", fmt.Sprintf("read go; for i in $(seq %d); do : > %s/f$i; sleep 0.02; done", samples, dir))
		stdin, _ := sh.StdinPipe()
		if err := sh.Start(); err != nil {
			b.Fatal(err)
		}
		pid := sh.Process.Pid
		start := procStart(b, pid)

		var (
			mu   sync.Mutex
			lat  []time.Duration
			want = fmt.Sprintf("tr-lat-%d", i)
		)
		c.Ingest.SetOnStored(func(bt *wire.Batch, _ wire.Lane) {
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			for _, e := range bt.Events {
				if e.TraceID == want && e.File != nil {
					lat = append(lat, now.Sub(time.Unix(0, e.Time)))
				}
			}
		})
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, ok, _ := c.SQL.Process(context.Background(), "host-l", uint32(pid), start); ok {
				break
			}
			if time.Now().After(deadline) {
				b.Fatal("shell never reached the center")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := c.RequestTrace(context.Background(), center.TraceRequest{TraceID: want, Host: "host-l", PID: uint32(pid), Start: start,
			Depth: 2, Flags: center.TraceFiles, InitiatedBy: "rule:latency-bench",
			Caps: center.TraceCaps{MaxDurationS: 600, MaxBytes: 64 << 20, MaxEPS: 5000}, Reason: "latency benchmark"}); err != nil {
			b.Fatal(err)
		}
		for len(c.Acks("trace-start-"+want+"@host-l")) == 0 {
			if time.Now().After(deadline.Add(30 * time.Second)) {
				b.Fatal("no answer to the trace command")
			}
			time.Sleep(20 * time.Millisecond)
		}
		fmt.Fprintln(stdin, "go")
		sh.Wait()
		deadline = time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			n := len(lat)
			mu.Unlock()
			// Each ": > f" is an open (create) traced; bash may add more.
			if n >= samples || time.Now().After(deadline) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		mu.Lock()
		s := slices.Clone(lat)
		mu.Unlock()
		slices.Sort(s)
		if len(s) == 0 {
			b.Fatal("no trace events arrived")
		}
		q := func(p float64) time.Duration { return s[min(len(s)-1, int(p*float64(len(s))))] }
		b.ReportMetric(float64(q(0.5).Microseconds())/1000, "p50-ms")
		b.ReportMetric(float64(q(0.99).Microseconds())/1000, "p99-ms")
		b.ReportMetric(float64(len(s)), "events")
		b.Logf("trace event latency agent -> proxy -> center stored: %d file events, p50 %v, p99 %v, max %v",
			len(s), q(0.5), q(0.99), s[len(s)-1])
		ag.Stop()
	}
}
