//go:build linux && amd64

package capture

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
)

// BenchmarkTraceExecStorm measures what a focused trace costs, with the
// sensor attached throughout, in pairs of small storms run back to back
// (see BenchmarkExecStorm/paired for why pairs):
//
//	lineage    the storm's processes are traced (this process is the
//	           root, depth 1, files, network, env and exe hashes on, no
//	           caps) versus the same storm untraced: what a traced
//	           lineage pays.
//	elsewhere  the storm is untraced while a trace runs on another
//	           process versus no trace at all: what the rest of the host
//	           pays while a trace runs (the traced-map lookup on the
//	           syscalls a trace records).
//
// Each reports the median per-pair ratios of wall and CPU time (this
// process, its reader and its reaped children, where the kernel-side
// programs run) and, for lineage, the trace events per traced exec.
func BenchmarkTraceExecStorm(b *testing.B) {
	src := openEBPF(b, DefaultOptions())
	src.SetTracePolicy(TracePolicy{}) // no caps: the full cost is measured
	// Run-time stats (BPF_STATS_RUN_TIME = 0) give the kernel-side cost
	// per program run, free of the wall clock's noise on a shared VM.
	if stats, err := ebpf.EnableStats(0); err == nil {
		defer stats.Close()
	}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 1<<16)
	var traced atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); _ = src.Run(ctx, out) }()
	go func() {
		defer wg.Done()
		for {
			select {
			case ev := <-out:
				if ev.TraceID != "" {
					traced.Add(1)
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }()

	n := 0
	b.Run("lineage", func(b *testing.B) {
		var id string
		var events, execs uint64
		var before uint64
		toggle := func(on bool) {
			if on {
				n++
				id = fmt.Sprintf("B-lineage-%d", n)
				spec := TraceSpec{TraceID: id, RootPID: uint32(os.Getpid()), Depth: 1,
					CollectFiles: true, CollectNetwork: true, CollectCmdlines: true, HashExecs: true}
				if err := src.StartTrace(spec); err != nil {
					b.Fatal(err)
				}
				before = traced.Load()
				return
			}
			if id != "" {
				_ = src.StopTrace(id, "bench")
				events += traced.Load() - before
				execs += traceHalf
				id = ""
			}
		}
		tracePairs(b, src, toggle)
		var dropped uint64
		for _, st := range src.Traces() {
			for _, d := range st.Dropped {
				dropped += d
			}
		}
		b.ReportMetric(float64(events)/float64(max(execs, 1)), "trace_events/exec")
		b.ReportMetric(float64(dropped), "trace_dropped")
		b.ReportMetric(float64(src.Lost()[LossRingFull]), "ring_lost")
	})

	b.Run("elsewhere", func(b *testing.B) {
		sleeper := exec.Command("/bin/sleep", "3600")
		if err := sleeper.Start(); err != nil {
			b.Fatal(err)
		}
		defer func() { _ = sleeper.Process.Kill(); _ = sleeper.Wait() }()
		var id string
		toggle := func(on bool) {
			if on {
				n++
				id = fmt.Sprintf("B-elsewhere-%d", n)
				spec := TraceSpec{TraceID: id, RootPID: uint32(sleeper.Process.Pid), Depth: -1,
					CollectFiles: true, CollectNetwork: true, CollectCmdlines: true, HashExecs: true}
				if err := src.StartTrace(spec); err != nil {
					b.Fatal(err)
				}
				return
			}
			if id != "" {
				_ = src.StopTrace(id, "bench")
				id = ""
			}
		}
		tracePairs(b, src, toggle)
	})
}

// programRun is a program's cumulative run time and run count.
type programRun struct{ NS, Runs uint64 }

// traceHalf is the number of execs in one half of a pair.
const traceHalf = stormBatch / 4

// tracePairs runs pairs of storms, one with toggle(true) in effect and one
// with toggle(false), alternating which goes first, 8 pairs per iteration
// so that even -benchtime=1x gives a median.
func tracePairs(b *testing.B, src *EBPFSource, toggle func(on bool)) {
	workers := runtime.GOMAXPROCS(0)
	var wall, cpu []float64
	var onTotal, offTotal time.Duration
	// Kernel-side run time and runs per program, for each half.
	type progCost struct{ ns, runs [2]uint64 }
	costs := map[string]*progCost{}
	snapshot := func() map[string]programRun {
		m := map[string]programRun{}
		for _, name := range src.progs {
			if st, err := src.coll.Programs[name].Stats(); err == nil {
				m[name] = programRun{uint64(st.Runtime), st.RunCount}
			}
		}
		return m
	}
	// Wall time is the storm's; CPU time runs on until the reader has
	// drained what the storm produced (it polls the ring every
	// ringPollInterval), hashing included, so the trace's userspace work
	// is counted. Both halves wait alike.
	timed := func(on bool) (time.Duration, time.Duration) {
		toggle(on)
		k0 := snapshot()
		start, cpu0 := time.Now(), cpuTime()
		execStorm(b, traceHalf, workers, nil)
		w := time.Since(start)
		k1 := snapshot()
		time.Sleep(3 * ringPollInterval)
		c := cpuTime() - cpu0
		toggle(false)
		half := 0
		if on {
			half = 1
		}
		for name, r1 := range k1 {
			pc := costs[name]
			if pc == nil {
				pc = &progCost{}
				costs[name] = pc
			}
			pc.ns[half] += r1.NS - k0[name].NS
			pc.runs[half] += r1.Runs - k0[name].Runs
		}
		return w, c
	}
	pair := 0
	for b.Loop() {
		for p := 0; p < 8; p++ {
			var onW, onC, offW, offC time.Duration
			if pair%2 == 0 {
				offW, offC = timed(false)
				onW, onC = timed(true)
			} else {
				onW, onC = timed(true)
				offW, offC = timed(false)
			}
			pair++
			onTotal += onW
			offTotal += offW
			wall = append(wall, float64(onW)/float64(offW))
			cpu = append(cpu, float64(onC)/float64(offC))
		}
	}
	for _, name := range []string{"handle_sys_exit", "handle_exec", "handle_fork"} {
		pc := costs[name]
		if pc == nil || pc.runs[0] == 0 || pc.runs[1] == 0 {
			continue
		}
		off := float64(pc.ns[0]) / float64(pc.runs[0])
		on := float64(pc.ns[1]) / float64(pc.runs[1])
		short := strings.TrimPrefix(name, "handle_")
		b.ReportMetric(off, short+"_ns/run_off")
		b.ReportMetric(on, short+"_ns/run_on")
	}
	b.ReportMetric(median(wall), "median_on/off")
	b.ReportMetric(median(cpu), "median_cpu_on/off")
	b.ReportMetric(float64(onTotal)/float64(offTotal), "sum_on/off")
	b.ReportMetric(float64(pair), "pairs")
}
