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

// BenchmarkAppendExecStorm measures Append on the agent's exec-storm shape:
// one parent forks, execs and reaps a short-lived child over and over, and
// each 50 ms batch (about 75 execs at 1,500 execs/s) holds all three events
// of most of its children.
func BenchmarkAppendExecStorm(b *testing.B) {
	const execs = 75
	l := openTest(b, b.TempDir(), LocalOptions{})
	parent := pk(4000, 1000)
	w := newWorkload(7)
	mustAppend(b, l, execEv(parent, pk(1, 1), w.now, "/usr/bin/go", "go", "test", "-bench", "ExecStorm"))
	pid, start := uint32(5000), uint64(2000)
	evs := make([]capture.Event, 0, 3*execs)
	var total, cpu time.Duration
	n := 0
	for b.Loop() {
		b.StopTimer()
		evs = evs[:0]
		for range execs {
			pid++
			if pid > 4_000_000 {
				pid = 5000
			}
			start++
			child := pk(pid, start)
			w.now += 600_000
			evs = append(evs, forkEv(child, parent, w.now),
				execEv(child, parent, w.now+200_000, "/bin/true", "/bin/true"),
				exitEv(child, w.now+500_000, 0))
		}
		b.StartTimer()
		t, c := time.Now(), cpuTime()
		if _, _, err := l.Append(evs); err != nil {
			b.Fatal(err)
		}
		total += time.Since(t)
		cpu += cpuTime() - c
		n += len(evs)
	}
	if n == 0 {
		return
	}
	b.ReportMetric(float64(n)/total.Seconds(), "events/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/1e3/float64(n), "cpu-us/event")
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
