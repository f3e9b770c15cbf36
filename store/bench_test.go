package store

import (
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
)

// BenchmarkAppend measures Append with batches of 2000 events of a realistic
// mix (fork, exec with argv, exit, connect), process table updates included.
func BenchmarkAppend(b *testing.B) {
	const batch = 2000
	l := openTest(b, b.TempDir(), LocalOptions{})
	w := newWorkload(42)
	evs := make([]capture.Event, batch)
	var total, cpu time.Duration
	for b.Loop() {
		b.StopTimer()
		for j := range evs {
			evs[j] = w.next()
		}
		b.StartTimer()
		start, c := time.Now(), cpuTime()
		if _, _, err := l.Append(evs); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		cpu += cpuTime() - c
	}
	n := b.N
	if n == 0 {
		return
	}
	b.ReportMetric(float64(n*batch)/total.Seconds(), "events/s")
	// CPU of the whole process (Pebble's flushes and compactions included)
	// per event: steadier than wall time on a shared machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(n*batch), "cpu-us/event")
	st, _ := l.Stats()
	b.ReportMetric(float64(st.EventBytes)/float64(st.Events), "B/event")
	reportMemory(b)
}

// BenchmarkSeed10k seeds 10,000 processes at agent start: "cold" into an
// empty store, "restart" into the table a previous run left (10,000 entries,
// of which half are gone and must be marked exited, and half new ones).
func BenchmarkSeed10k(b *testing.B) {
	for _, restart := range []bool{false, true} {
		name := "cold"
		if restart {
			name = "restart"
		}
		b.Run(name, func(b *testing.B) {
			old := seedProcs(10_000)
			procs := seedProcs(10_000)
			for j := range procs[:5000] {
				procs[j].Key.Start++
			}
			var total, cpu time.Duration
			for b.Loop() {
				b.StopTimer()
				l, err := OpenLocal(b.TempDir(), LocalOptions{}, testLogger(b))
				if err != nil {
					b.Fatal(err)
				}
				if restart {
					if err := l.Seed(old); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				start, c := time.Now(), cpuTime()
				if err := l.Seed(procs); err != nil {
					b.Fatal(err)
				}
				total += time.Since(start)
				cpu += cpuTime() - c
				b.StopTimer()
				l.Close()
				b.StartTimer()
			}
			b.ReportMetric(float64(b.N*len(procs))/total.Seconds(), "procs/s")
			b.ReportMetric(total.Seconds()*1000/float64(b.N), "ms/seed")
			b.ReportMetric(cpu.Seconds()*1000/float64(b.N), "cpu-ms/seed")
			reportMemory(b)
		})
	}
}

// cpuTime is the user+system CPU time of this process so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportMemory reports the Go heap in use and the process RSS, against the
// agent's 64 MiB RSS target.
func reportMemory(b *testing.B) {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	b.ReportMetric(float64(ms.HeapInuse)/(1<<20), "heap-MiB")
	if s, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, line := range strings.Split(string(s), "\n") {
			if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
				if kb, err := strconv.Atoi(f[1]); err == nil {
					b.ReportMetric(float64(kb)/1024, "peakRSS-MiB")
				}
			}
		}
	}
}
