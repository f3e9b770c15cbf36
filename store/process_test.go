package store

import (
	"math/rand/v2"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// TestNewKeysNeverLies checks newKeys' one promise: a key it calls absent
// was never added. Starts mostly grow, with some older keys (exits of
// long-lived processes, events from other CPUs) mixed in.
func TestNewKeysNeverLies(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := newNewKeys(100, 64)
	added := map[capture.ProcKey]bool{}
	start := uint64(100)
	for i := range 20_000 {
		start += uint64(rng.IntN(3))
		k := pk(uint32(rng.IntN(1000)), start)
		if rng.IntN(10) == 0 {
			k.Start -= min(k.Start, uint64(rng.IntN(500)))
		}
		n.add(k)
		added[k] = true
		if i%97 == 0 {
			for a := range added {
				if n.absent(a) {
					t.Fatalf("after %d adds: absent(%s) = true, but it was added (ceil %d)", i+1, a, n.ceil)
				}
			}
		}
		if len(n.recent) > n.max || len(n.order) > n.max {
			t.Fatalf("newKeys holds %d keys (ring %d), max %d", len(n.recent), len(n.order), n.max)
		}
	}
	// And it does rule out the keys that matter: new ones.
	if k := pk(1, start+1); !n.absent(k) {
		t.Errorf("absent(%s) = false for a start after every key added (ceil %d)", k, n.ceil)
	}
}
