package wire

import (
	"testing"
)

const benchEvents = 2000

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
			for b.Loop() {
				s, err := SealBatch("agent-0001", 1, evs, testKey, compress)
				if err != nil {
					b.Fatal(err)
				}
				size = len(s)
			}
			b.ReportMetric(float64(benchEvents*b.N)/b.Elapsed().Seconds(), "events/s")
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
			for b.Loop() {
				if _, err := OpenBatch(sealed, pub, Limits{}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(benchEvents*b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

func BenchmarkPeekBatch(b *testing.B) {
	sealed := mustSeal(b, "agent-0001", 1, execEvents(benchEvents), true)
	for b.Loop() {
		if _, _, err := PeekBatch(sealed); err != nil {
			b.Fatal(err)
		}
	}
}
