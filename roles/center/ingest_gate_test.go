package center

import (
	"fmt"
	"slices"
	"testing"
	"time"
)

// queueGate queues goroutines on a gate whose one slot is held, in the
// order given, each recording its name once it gets the slot (and then
// releasing it).
func queueGate(t *testing.T, g *cpuGate, order chan<- string, waiters ...struct {
	class int
	name  string
}) {
	t.Helper()
	for i, w := range waiters {
		go func() {
			g.acquire(w.class)
			order <- w.name
			g.release()
		}()
		// Wait until it is queued, so that the arrival order is known.
		for {
			g.mu.Lock()
			n := len(g.queue[gateVerify]) + len(g.queue[gateSQL])
			g.mu.Unlock()
			if n == i+1 {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
}

type waiter = struct {
	class int
	name  string
}

func drain(t *testing.T, order <-chan string, n int) []string {
	t.Helper()
	var got []string
	for range n {
		got = append(got, <-order)
	}
	return got
}

// The gate lets no more than its slots run, and a freed slot goes to the
// oldest waiting verification before SQL ingest, whatever came first.
func TestCPUGateOrder(t *testing.T) {
	g := &cpuGate{free: 1}
	g.acquire(gateVerify) // the one slot
	order := make(chan string, 3)
	queueGate(t, g, order, waiter{gateSQL, "sql"}, waiter{gateVerify, "verify-1"}, waiter{gateVerify, "verify-2"})
	select {
	case got := <-order:
		t.Fatalf("%s ran while the only slot was held", got)
	default:
	}
	g.release()
	if got, want := drain(t, order, 3), []string{"verify-1", "verify-2", "sql"}; !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
	if g.free != 1 {
		t.Fatalf("%d slots free after everyone released, want 1", g.free)
	}
}

// SQL ingest is passed by at most sqlEvery verifications in a row.
func TestCPUGateSQLNotStarved(t *testing.T) {
	g := &cpuGate{free: 1}
	g.acquire(gateVerify)
	const n = sqlEvery + 4
	order := make(chan string, n+1)
	ws := []waiter{{gateSQL, "sql"}}
	var want []string
	for i := range n {
		name := fmt.Sprintf("verify-%d", i)
		ws = append(ws, waiter{gateVerify, name})
		want = append(want, name)
		if i == sqlEvery-1 {
			want = append(want, "sql")
		}
	}
	queueGate(t, g, order, ws...)
	g.release()
	if got := drain(t, order, n+1); !slices.Equal(got, want) {
		t.Fatalf("ran %v, want %v", got, want)
	}
}
