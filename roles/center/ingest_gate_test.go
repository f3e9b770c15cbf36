package center

import (
	"testing"
	"time"
)

// The gate lets no more than its slots run, and a freed slot goes to the
// oldest waiting verification before any SQL ingest, whatever came first.
func TestCPUGateOrder(t *testing.T) {
	g := &cpuGate{free: 1}
	g.acquire(gateVerify) // the one slot
	order := make(chan string, 3)
	started := make(chan struct{}, 3)
	wait := func(class int, name string) {
		go func() {
			started <- struct{}{}
			g.acquire(class)
			order <- name
			g.release()
		}()
		<-started
		// Wait until it is queued, so the arrival order is known.
		for {
			g.mu.Lock()
			n := len(g.queue[gateVerify]) + len(g.queue[gateSQL])
			g.mu.Unlock()
			if n > 0 && (name != "verify-2" || n == 3) && (name != "verify-1" || n == 2) {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	wait(gateSQL, "sql")
	wait(gateVerify, "verify-1")
	wait(gateVerify, "verify-2")
	select {
	case got := <-order:
		t.Fatalf("%s ran while the only slot was held", got)
	default:
	}
	g.release()
	for _, want := range []string{"verify-1", "verify-2", "sql"} {
		if got := <-order; got != want {
			t.Fatalf("ran %s, want %s", got, want)
		}
	}
	if g.free != 1 {
		t.Fatalf("%d slots free after everyone released, want 1", g.free)
	}
}
