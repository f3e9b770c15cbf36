package center

import (
	"runtime"
	"sync"

	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// cpuGate bounds how many bulk verifications run at once. Verification is
// the center's most CPU-hungry step per batch (signature, decompression,
// decoding a 2000-event batch takes milliseconds), and the server hands
// batches over as fast as children send them: one goroutine per batch, all
// runnable at once under a saturated bulk lane, put a trace batch's every
// step (its read from QUIC, its verification, its commit) at the back of a
// run queue many milliseconds long. Trace and alert batches do not take a
// slot: they are small and rare, and must never wait behind bulk. Waiting
// bulk batches are parked, not runnable, so they cost no CPU.
type cpuGate struct {
	mu    sync.Mutex
	free  int
	queue [2][]chan struct{} // waiting, by class, oldest first
	// passed counts the slots handed to verifications while SQL ingest
	// was waiting.
	passed int
}

// Classes of work behind the gate. Bulk verification comes before SQL
// ingest, since the pipeline's acks wait for it, but SQL (which rules and
// alerts wait for) is passed by at most sqlEvery verifications in a row:
// under a saturated bulk lane, a 2000-event batch verifies in ~5 ms and
// ingests into SQL in ~100 ms, so SQL keeps most of its speed and the
// center still verifies well ahead of the pipeline's rate.
const (
	gateVerify = 0
	gateSQL    = 1
	sqlEvery   = 8
)

// newCPUGate lets one bulk task fewer run than there are processors (at
// least one), so that one processor is usually left for urgent work and
// for the rest of the pipeline. Processors are the CPUs, not GOMAXPROCS:
// with more Ps than CPUs (which shortens the Go run queue that urgent work
// waits in) the bulk tasks must still leave a CPU free.
func newCPUGate() *cpuGate {
	return &cpuGate{free: max(1, min(runtime.GOMAXPROCS(0), runtime.NumCPU())-1)}
}

// acquire waits for a slot.
func (g *cpuGate) acquire(class int) {
	g.mu.Lock()
	if g.free > 0 {
		g.free--
		g.mu.Unlock()
		return
	}
	c := make(chan struct{})
	g.queue[class] = append(g.queue[class], c)
	g.mu.Unlock()
	<-c
}

// release hands the slot to the oldest verification waiting (unless SQL
// has been passed sqlEvery times), else to SQL ingest, or frees it.
func (g *cpuGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	next := gateVerify
	switch {
	case len(g.queue[gateVerify]) == 0:
		next = gateSQL
	case len(g.queue[gateSQL]) > 0 && g.passed >= sqlEvery:
		next = gateSQL
	}
	q := g.queue[next]
	if len(q) == 0 {
		g.free++
		return
	}
	if next == gateSQL {
		g.passed = 0
	} else if len(g.queue[gateSQL]) > 0 {
		g.passed++
	}
	c := q[0]
	q[0] = nil
	g.queue[next] = q[1:]
	close(c)
}

func (in *Ingest) cpu() *cpuGate {
	in.gateOnce.Do(func() { in.gate = newCPUGate() })
	return in.gate
}

// SQLSlot waits for the CPU gate before one batch's SQL ingest (after the
// bulk verifications waiting, up to sqlEvery of them) and returns its
// release.
func (in *Ingest) SQLSlot() (release func()) {
	g := in.cpu()
	g.acquire(gateSQL)
	return g.release
}

// Submit verifies a batch off the caller's goroutine (bulk through the CPU
// gate, trace and alert at once) and returns the verdict that commits it.
// The server awaits verdicts in lane order, so each lane is committed in
// the order it was received.
func (in *Ingest) Submit(lane wire.Lane, agentID string, seq uint64, sealed []byte) transport.Verdict {
	type verified struct {
		b    *wire.Batch
		nack *wire.Nack
	}
	done := make(chan verified, 1)
	go func() {
		if lane == wire.LaneBulk {
			g := in.cpu()
			g.acquire(gateVerify)
			defer g.release()
		}
		b, nack := in.Verify(lane, agentID, seq, sealed)
		done <- verified{b, nack}
	}()
	return func() *wire.Nack {
		v := <-done
		if v.nack != nil {
			return v.nack
		}
		return in.Commit(lane, v.b, sealed)
	}
}
