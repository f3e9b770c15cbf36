package wire

import (
	"syscall"
	"testing"
	"time"
)

// benchEvents is the agent's default batch_max_events.
const benchEvents = 2000

// cpuTime is this process's user+system CPU time. The benchmark machines
// are shared, so alongside wall-clock events/s we report events per
// CPU-second, which other load does not inflate.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportRate(b *testing.B, cpu0 time.Duration) {
	events := float64(benchEvents * b.N)
	b.ReportMetric(events/b.Elapsed().Seconds(), "events/s")
	if cpu := cpuTime() - cpu0; cpu > 0 {
		b.ReportMetric(events/cpu.Seconds(), "events/cpu-s")
	}
}

func BenchmarkSealBatch(b *testing.B) {
	for _, compress := range []bool{true, false} {
		name := "zstd"
		if !compress {
			name = "plain"
		}
		b.Run(name, func(b *testing.B) {
			evs := execEvents(benchEvents)
			var size int
			b.ReportAllocs()
			cpu0 := cpuTime()
			for b.Loop() {
				s, err := SealBatch("agent-0001", 1, evs, testKey, compress)
				if err != nil {
					b.Fatal(err)
				}
				size = len(s)
			}
			reportRate(b, cpu0)
			b.ReportMetric(float64(size)/benchEvents, "B/event")
		})
	}
}

func BenchmarkOpenBatch(b *testing.B) {
	for _, compress := range []bool{true, false} {
		name := "zstd"
		if !compress {
			name = "plain"
		}
		b.Run(name, func(b *testing.B) {
			sealed := mustSeal(b, "agent-0001", 1, execEvents(benchEvents), compress)
			pub := testPub()
			b.ReportAllocs()
			b.SetBytes(int64(len(sealed)))
			cpu0 := cpuTime()
			for b.Loop() {
				if _, err := OpenBatch(sealed, pub, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, cpu0)
		})
	}
}

// BenchmarkOpenBatchParallel opens on every CPU at once, as a center with
// several links does.
func BenchmarkOpenBatchParallel(b *testing.B) {
	sealed := mustSeal(b, "agent-0001", 1, execEvents(benchEvents), true)
	pub := testPub()
	cpu0 := cpuTime()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := OpenBatch(sealed, pub, Limits{}); err != nil {
				b.Error(err)
				return
			}
		}
	})
	reportRate(b, cpu0)
}

func BenchmarkPeekBatch(b *testing.B) {
	sealed := mustSeal(b, "agent-0001", 1, execEvents(benchEvents), true)
	for b.Loop() {
		if _, _, err := PeekBatch(sealed); err != nil {
			b.Fatal(err)
		}
	}
}
