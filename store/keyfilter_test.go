package store

import (
	"math/rand/v2"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// The filter never calls a key it was given absent, however far it grew,
// and calls most keys it was not given absent.
func TestKeyFilter(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	f := newKeyFilter(0)
	var in []capture.ProcKey
	for range 5 * keyFilterFirst { // several parts
		k := capture.ProcKey{PID: uint32(rng.IntN(1 << 22)), Start: rng.Uint64N(1 << 40)}
		f.add(k)
		in = append(in, k)
	}
	if len(f.parts) < 3 {
		t.Fatalf("%d parts after %d keys; want the filter to have grown", len(f.parts), len(in))
	}
	for _, k := range in {
		if f.absent(k) {
			t.Fatalf("key %v was added but the filter calls it absent", k)
		}
	}
	falsePos := 0
	const probes = 100_000
	for range probes {
		k := capture.ProcKey{PID: uint32(1<<22 + rng.IntN(1<<22)), Start: rng.Uint64N(1 << 40)}
		if !f.absent(k) {
			falsePos++
		}
	}
	if falsePos > probes/20 {
		t.Errorf("%d of %d keys never added pass the filter; want a few percent at most", falsePos, probes)
	}

	// Past its bound it knows no key absent.
	full := &keyFilter{complete: true}
	full.grow(keyFilterMaxKeys + 1)
	if full.complete || full.absent(capture.ProcKey{PID: 1, Start: 1}) {
		t.Error("a filter over its bound still answers absent")
	}
}
