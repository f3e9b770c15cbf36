package ledger

import (
	"context"
	"fmt"
	"sync"
	"testing"
)

func benchEntries(n int) []Entry {
	batch := make([]Entry, n)
	for i := range batch {
		batch[i] = Entry{Kind: KindTraceEvent, Actor: "agent-0042", Time: t0,
			Payload: []byte(fmt.Sprintf(`{"trace":"t-1","seq":%d,"op":"openat","path":"/etc/shadow","pid":4242}`, i))}
	}
	return batch
}

// BenchmarkAppend: durable appends (fsync before return), one entry per
// call and 1000 per AppendBatch. Reports entries/s.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{1, 1000} {
		b.Run(fmt.Sprintf("batch=%d", size), func(b *testing.B) {
			l := open(b, b.TempDir(), newKeys(b, testOrigin), Options{})
			batch := benchEntries(size)
			b.ResetTimer()
			for range b.N {
				if _, err := l.AppendBatch(batch); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*size)/b.Elapsed().Seconds(), "entries/s")
		})
	}
}

// BenchmarkAppendConcurrent: 16 goroutines calling Append one entry at a
// time; group commit shares the fsyncs.
func BenchmarkAppendConcurrent(b *testing.B) {
	l := open(b, b.TempDir(), newKeys(b, testOrigin), Options{})
	e := benchEntries(1)[0]
	const workers = 16
	b.ResetTimer()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < b.N; i += workers {
				if _, err := l.Append(e); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkVerify: a full Verify of a 100k-entry ledger. Reports entries/s.
func BenchmarkVerify(b *testing.B) {
	dir := b.TempDir()
	k := newKeys(b, testOrigin)
	l := open(b, dir, k, Options{})
	batch := benchEntries(1000)
	for range 100 {
		if _, err := l.AppendBatch(batch); err != nil {
			b.Fatal(err)
		}
	}
	l.Close()
	b.ResetTimer()
	for range b.N {
		if _, err := Verify(context.Background(), dir, k.v, VerifyOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*100_000)/b.Elapsed().Seconds(), "entries/s")
}
