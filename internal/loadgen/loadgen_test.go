package loadgen

import (
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// TestChurnLineage checks that the churn model keeps real lineage: every
// fork is from a live parent, every exec, connect and exit is of a live
// process, and the live set stays bounded.
func TestChurnLineage(t *testing.T) {
	c := newChurn(1)
	live := map[uint32]bool{}
	for _, r := range roots {
		live[r.key.PID] = true
	}
	var evs []capture.Event
	for range 5000 {
		evs = c.step(int64(len(evs)), evs[:0])
		for _, ev := range evs {
			switch ev.Kind {
			case capture.KindFork:
				if !live[ev.Parent.PID] {
					t.Fatalf("fork from %d, which is not alive", ev.Parent.PID)
				}
				live[ev.Proc.PID] = true
			case capture.KindExec, capture.KindConnect:
				if !live[ev.Proc.PID] {
					t.Fatalf("%s by %d, which is not alive", ev.Kind, ev.Proc.PID)
				}
			case capture.KindExit:
				if !live[ev.Proc.PID] {
					t.Fatalf("exit of %d, which is not alive", ev.Proc.PID)
				}
				delete(live, ev.Proc.PID)
			}
		}
	}
	if len(live) > maxLive {
		t.Fatalf("%d live processes, want at most %d", len(live), maxLive)
	}
}

// TestBigHostLineage checks the big host's tree: n processes, each with a
// parent seen before it, and the deepest one's depth right.
func TestBigHostLineage(t *testing.T) {
	const n = 10000
	h := newBigHost(newChurn(3), n, 1)
	if len(h.events) != n {
		t.Fatalf("%d events, want %d", len(h.events), n)
	}
	depth := map[capture.ProcKey]int{}
	for i, r := range roots {
		depth[r.key] = min(i, 1)
	}
	for _, ev := range h.events {
		d, ok := depth[ev.Parent]
		if !ok {
			t.Fatalf("process %v has parent %v, which does not exist before it", ev.Proc, ev.Parent)
		}
		if _, dup := depth[ev.Proc]; dup {
			t.Fatalf("process %v twice", ev.Proc)
		}
		depth[ev.Proc] = d + 1
	}
	if depth[h.deep] != h.depth || h.depth < 5 {
		t.Fatalf("deepest process %v at depth %d, recorded %d (want >= 5)", h.deep, depth[h.deep], h.depth)
	}
}
