package treetest

import (
	"context"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Trace latency run: one trace batch every traceEvery for TRACE_SECONDS
// (default traceSeconds) while bulk agents keep the bulk lane saturated.
const (
	traceSeconds     = 10
	traceEvery       = 20 * time.Millisecond
	traceBatchEvents = 20
	traceBulkAgents  = 3
	traceTargetP99   = 100 * time.Millisecond
	// Each bulk source queues bulkPrefill batches of 2000 events before
	// the window (TRACE_PREFILL overrides it), and tops up to bulkBacklog
	// if it runs low.
	bulkPrefill = 250
	bulkBacklog = 32
)

// source is an agent-like node: an uplink over a durable WAL with an agent
// certificate of the tree's CA, as the agent's shipper has, into which the
// benchmark queues sealed batches on the lane it wants. The trace source
// exists because the shipper of roles/agent ships only bulk so far; the bulk
// sources skip the agent's local store so that the bulk lane can be kept
// full without spending the CPU on an ever-growing store.
type source struct {
	name string
	id   *transport.Identity
	wal  *wal.WAL
	up   *transport.Uplink
	pool []capture.Event
	seq  uint64

	mu   sync.Mutex
	sent map[uint64]time.Time // seq -> queued at
}

func newSource(tr *Tree, name, parent string, link transport.Options, poolSeed uint64) *source {
	tr.T.Helper()
	files := tr.Issue(pki.RoleAgent, name)
	dir := filepath.Join(tr.Dir, name)
	id, err := transport.LoadIdentity(files.Cert, files.Key, files.CA, filepath.Join(dir, "crl.pem"))
	if err != nil {
		tr.T.Fatal(err)
	}
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{FsyncInterval: 10 * time.Millisecond}, tr.Log)
	if err != nil {
		tr.T.Fatal(err)
	}
	up, err := transport.NewUplink(transport.UplinkConfig{
		NodeID: id.Name,
		Role:   wire.RoleAgent,
		Addrs:  []string{parent},
		TLS:    id.ClientTLS(pki.RoleProxy, pki.RoleCenter),
		WAL:    w,
		Agents: func() []string { return []string{id.Name} },
		Link:   link,
		Log:    tr.Log,
	})
	if err != nil {
		w.Close()
		tr.T.Fatal(err)
	}
	s := &source{name: name, id: id, wal: w, up: up, pool: realisticEvents(poolSeed, 8*emitChunk, time.Now().UnixNano()), sent: map[uint64]time.Time{}}
	runUntilCleanup(tr.T, name, up.Run, func() { w.Close() })
	return s
}

// send seals the source's next batch of n events and queues it on lane;
// a trace batch's latency runs from here.
func (s *source) send(lane uint8, n int) error {
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.mu.Unlock()
	off := int(seq*uint64(n)) % (len(s.pool) - n + 1)
	sealed, err := wire.SealBatchCert(s.name, seq, s.pool[off:off+n], s.id.Key(), s.id.CertDER(), true)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.sent[seq] = time.Now()
	s.mu.Unlock()
	if _, err := s.wal.Append(lane, sealed, nil); err != nil {
		return fmt.Errorf("%s: queue batch %d: %w", s.name, seq, err)
	}
	s.up.Kick()
	return nil
}

func (s *source) queuedAt(seq uint64) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	t, ok := s.sent[seq]
	return t, ok
}

func (s *source) backlog() int64 { return s.wal.Stats().Lanes[wal.LaneBulk].Entries }

func (s *source) waitConnected(tb testing.TB) {
	tb.Helper()
	for deadline := time.Now().Add(20 * time.Second); !s.up.Stats().Connected; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			tb.Fatalf("%s not connected after 20s", s.name)
		}
	}
}

// runUntilCleanup runs fn until the test's cleanup, then calls after.
func runUntilCleanup(tb testing.TB, what string, fn func(context.Context) error, after func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) {
				tb.Errorf("%s stopped with: %v", what, err)
			}
		case <-time.After(15 * time.Second):
			tb.Errorf("%s did not stop within 15s", what)
		}
		if after != nil {
			after()
		}
	})
}

// chainProxy is a store-and-forward proxy built from transport primitives,
// as roles/proxy builds one (WAL append before ack, forward, delete on the
// parent's ack), but with link options of our choosing: roles/proxy has no
// configuration for Options.NoPrio, and this benchmark needs priority off
// on every link to show what it buys.
type chainProxy struct {
	addr string
}

// hopClock records when each trace batch reached each chain proxy, to
// split its latency by hop.
type hopClock struct {
	mu sync.Mutex
	at map[string]map[uint64]time.Time // node -> seq -> arrived
}

func (h *hopClock) mark(node string, seq uint64) {
	now := time.Now()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.at[node] == nil {
		h.at[node] = map[uint64]time.Time{}
	}
	h.at[node][seq] = now
}

func (h *hopClock) get(node string, seq uint64) (time.Time, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t, ok := h.at[node][seq]
	return t, ok
}

func startChainProxy(tr *Tree, name, parent string, link transport.Options, window int, hops *hopClock) *chainProxy {
	tr.T.Helper()
	files := tr.Issue(pki.RoleProxy, name)
	dir := filepath.Join(tr.Dir, name)
	id, err := transport.LoadIdentity(files.Cert, files.Key, files.CA, filepath.Join(dir, "crl.pem"))
	if err != nil {
		tr.T.Fatal(err)
	}
	w, err := wal.Open(filepath.Join(dir, "wal"), wal.Options{FsyncInterval: 10 * time.Millisecond}, tr.Log)
	if err != nil {
		tr.T.Fatal(err)
	}
	var up *transport.Uplink
	srv, err := transport.NewServer(transport.ServerConfig{
		NodeID: id.Name,
		Listen: "127.0.0.1:0",
		TLS:    id.ServerTLS(pki.RoleAgent, pki.RoleProxy),
		OnBatch: func(_ *transport.Child, lane wire.Lane, info wire.Info, sealed []byte) transport.Verdict {
			if lane == wire.LaneTrace {
				hops.mark(name, info.Seq)
			}
			pend := w.AppendAsync(uint8(lane), sealed, nil)
			return func() *wire.Nack {
				if _, err := pend.Wait(); err != nil {
					return &wire.Nack{Lane: lane, AgentID: info.AgentID, Seq: info.Seq, Code: wire.NackOverWatermark, Reason: err.Error()}
				}
				up.Kick()
				return nil
			}
		},
		Link: link,
		Log:  tr.Log,
	})
	if err != nil {
		w.Close()
		tr.T.Fatal(err)
	}
	up, err = transport.NewUplink(transport.UplinkConfig{
		NodeID: id.Name,
		Role:   wire.RoleProxy,
		Addrs:  []string{parent},
		TLS:    id.ClientTLS(pki.RoleProxy, pki.RoleCenter),
		WAL:    w,
		Below:  srv.Below,
		Agents: srv.Agents,
		Window: window,
		Link:   link,
		Log:    tr.Log,
	})
	if err != nil {
		w.Close()
		tr.T.Fatal(err)
	}
	runUntilCleanup(tr.T, name, func(ctx context.Context) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { return srv.Run(gctx) })
		g.Go(func() error { return up.Run(gctx) })
		return g.Wait()
	}, func() { w.Close() })
	return &chainProxy{addr: srv.Addr()}
}

// latencyResult is one trace latency run.
type latencyResult struct {
	lat        []time.Duration    // sorted
	hops       [3][]time.Duration // chain only: source->px2, px2->px1, px1->center commit
	sql        []time.Duration    // sorted: source to the center's SQL store, where analysts see it
	bulkRate   float64            // bulk events/s stored during the window
	dryPercent float64            // % of trace sends when no bulk agent had a backlog
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// runTraceLatency builds bulk sources + a trace source -> px2 -> px1 ->
// center, saturates the bulk lane and measures each trace batch from its
// WAL append at the source to its commit at the center.
//
// With mixed, the trace source also sends bulk, as a traced host does: its
// trace batches then share its link, its uplink and its agent's lock at the
// center with its own bulk backlog.
func runTraceLatency(b *testing.B, realProxies, mixed bool, link transport.Options, window int) latencyResult {
	b.Helper()
	tr := New(b)
	c := tr.NewCenter("center").Start()
	var px2Addr string
	hops := &hopClock{at: map[string]map[uint64]time.Time{}}
	if realProxies {
		px1 := tr.NewProxy("px1", c.Cfg.Listen).Start()
		px2Addr = tr.NewProxy("px2", px1.Cfg.Listen).Start().Cfg.Listen
	} else {
		px1 := startChainProxy(tr, "px1", c.Cfg.Listen, link, window, hops)
		px2Addr = startChainProxy(tr, "px2", px1.addr, link, window, hops).addr
	}
	src := newSource(tr, "tracer", px2Addr, link, 99)
	var bulk []*source
	for i := range traceBulkAgents {
		bulk = append(bulk, newSource(tr, fmt.Sprintf("bulk-%d", i), px2Addr, link, uint64(100+i)))
	}
	if mixed {
		bulk = append(bulk, src)
	}

	var (
		mu        sync.Mutex
		lat       []time.Duration
		hopLat    [3][]time.Duration
		bulkStore atomic.Int64
		unknown   atomic.Int64
		traceSeqs sync.Map // seqs of the trace batches stored: src may send bulk too
	)
	c.Ingest.SetOnStored(func(bt *wire.Batch, lane wire.Lane) {
		now := time.Now()
		if lane != wire.LaneTrace {
			bulkStore.Add(int64(len(bt.Events)))
			return
		}
		t0, ok := src.queuedAt(bt.Seq)
		if !ok || bt.AgentID != src.name {
			unknown.Add(1)
			return
		}
		traceSeqs.Store(bt.Seq, true)
		mu.Lock()
		lat = append(lat, now.Sub(t0))
		if t2, ok := hops.get("px2", bt.Seq); ok {
			if t1, ok := hops.get("px1", bt.Seq); ok {
				hopLat[0] = append(hopLat[0], t2.Sub(t0))
				hopLat[1] = append(hopLat[1], t1.Sub(t2))
				hopLat[2] = append(hopLat[2], now.Sub(t1))
			}
		}
		mu.Unlock()
	})
	var sqlLat []time.Duration
	c.SetOnSQL(func(bt *wire.Batch) {
		if bt.AgentID != src.name {
			return
		}
		if _, ok := traceSeqs.Load(bt.Seq); !ok {
			return
		}
		if t0, ok := src.queuedAt(bt.Seq); ok {
			now := time.Now()
			mu.Lock()
			sqlLat = append(sqlLat, now.Sub(t0))
			mu.Unlock()
		}
	})
	src.waitConnected(b)
	for _, s := range bulk {
		s.waitConnected(b)
	}

	// Saturate bulk: each bulk source queues a backlog that outlasts the
	// window (sealing it up front, so that sealing does not compete with
	// the pipeline while we measure), then tops it up if it runs low.
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	prefill := envInt("TRACE_PREFILL", bulkPrefill)
	errc := make(chan error, 2*len(bulk))
	var filled sync.WaitGroup
	for _, s := range bulk {
		wg.Add(1)
		filled.Add(1)
		go func() {
			defer wg.Done()
			for range prefill {
				if err := s.send(wal.LaneBulk, emitChunk); err != nil {
					errc <- err
					filled.Done()
					return
				}
			}
			filled.Done()
			for ctx.Err() == nil {
				if s.backlog() >= bulkBacklog {
					time.Sleep(2 * time.Millisecond)
					continue
				}
				if err := s.send(wal.LaneBulk, emitChunk); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	filled.Wait()
	for deadline := time.Now().Add(60 * time.Second); bulkStore.Load() < int64(10*emitChunk); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			b.Fatalf("bulk does not flow: %d bulk events stored after 60s", bulkStore.Load())
		}
	}

	n := int(time.Duration(envInt("TRACE_SECONDS", traceSeconds)) * time.Second / traceEvery)
	bulk0, t0 := bulkStore.Load(), time.Now()
	dry := 0
	tick := time.NewTicker(traceEvery)
	for range n {
		<-tick.C
		select {
		case err := <-errc:
			b.Fatal(err)
		default:
		}
		if !slices.ContainsFunc(bulk, func(s *source) bool { return s.backlog() > 0 }) {
			dry++
		}
		if err := src.send(wal.LaneTrace, traceBatchEvents); err != nil {
			b.Fatal(err)
		}
	}
	tick.Stop()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		got, inSQL := len(lat), len(sqlLat)
		mu.Unlock()
		if got >= n && inSQL >= n {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("after 60s the center stored %d and its SQL store holds %d of %d trace batches", got, inSQL, n)
		}
	}
	res := latencyResult{
		bulkRate:   float64(bulkStore.Load()-bulk0) / time.Since(t0).Seconds(),
		dryPercent: 100 * float64(dry) / float64(n),
	}
	if u := unknown.Load(); u != 0 {
		b.Fatalf("%d trace batches stored that the source did not send", u)
	}
	mu.Lock()
	res.lat = slices.Sorted(slices.Values(lat))
	res.sql = slices.Sorted(slices.Values(sqlLat))
	for i := range hopLat {
		res.hops[i] = slices.Sorted(slices.Values(hopLat[i]))
	}
	mu.Unlock()
	return res
}

// BenchmarkTraceLatency measures trace-lane latency (source WAL append to
// center commit) through two proxies while bulk agents keep the bulk lane
// saturated: with the real proxies, then with proxies built from transport
// primitives with priority on and with priority off (Options.NoPrio) on
// every link, to show what priority buys. Target: p99 < 100 ms.
func BenchmarkTraceLatency(b *testing.B) {
	for _, v := range []struct {
		name        string
		realProxies bool
		link        transport.Options
		window      int
		procs       int  // GOMAXPROCS for the run; 0 leaves it alone
		mixed       bool // the trace source sends bulk too
	}{
		{"proxies=real/prio=on", true, transport.Options{}, 0, 0, false},
		// The traced host streams bulk as well (as in bench scale).
		{"proxies=real/prio=on/mixed", true, transport.Options{}, 0, 0, true},
		{"proxies=chain/prio=on", false, transport.Options{}, 0, 0, false},
		{"proxies=chain/prio=off", false, transport.Options{NoPrio: true}, 0, 0, false},
		// Diagnostic: the same chain with a small uplink window (batches in
		// flight per lane), which bounds how long the uplink's one sender
		// goroutine can block on a full bulk lane.
		{"proxies=chain/prio=on/window=8", false, transport.Options{}, 8, 0, false},
		// Every node of this tree runs in this one process, so they share
		// one Go scheduler with GOMAXPROCS (2 here) processors: a trace
		// batch waits at every step in one run queue with the goroutines
		// of all eight nodes. Deployed, each node is its own process with
		// its own GOMAXPROCS and the kernel shares the cores between them.
		// procs=16 (two per node) approximates that on the same two cores.
		{"proxies=real/prio=on/procs=16", true, transport.Options{}, 0, 16, false},
		{"proxies=chain/prio=on/procs=16", false, transport.Options{}, 0, 16, false},
		{"proxies=chain/prio=off/procs=16", false, transport.Options{NoPrio: true}, 0, 16, false},
	} {
		b.Run(v.name, func(b *testing.B) {
			if v.procs > 0 {
				defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(v.procs))
			}
			var all, inSQL []time.Duration
			var hops [3][]time.Duration
			var bulkRate, dry float64
			for range b.N {
				r := runTraceLatency(b, v.realProxies, v.mixed, v.link, v.window)
				all = append(all, r.lat...)
				inSQL = append(inSQL, r.sql...)
				for i := range hops {
					hops[i] = append(hops[i], r.hops[i]...)
				}
				bulkRate += r.bulkRate / float64(b.N)
				dry += r.dryPercent / float64(b.N)
			}
			slices.Sort(all)
			p50, p99 := quantile(all, 0.50), quantile(all, 0.99)
			b.ReportMetric(ms(p50), "p50-ms")
			b.ReportMetric(ms(quantile(all, 0.90)), "p90-ms")
			b.ReportMetric(ms(p99), "p99-ms")
			b.ReportMetric(ms(all[len(all)-1]), "max-ms")
			b.ReportMetric(float64(p99)/float64(traceTargetP99), "p99/target")
			b.ReportMetric(bulkRate, "bulk-events/s")
			b.ReportMetric(dry, "bulk-dry-%")
			slices.Sort(inSQL)
			b.ReportMetric(ms(quantile(inSQL, 0.50)), "sql-p50-ms")
			b.ReportMetric(ms(quantile(inSQL, 0.99)), "sql-p99-ms")
			b.Logf("%s: %d trace batches of %d events, p50 %.1f ms, p99 %.1f ms (target < %v), max %.1f ms; in the center's SQL store p50 %.1f ms, p99 %.1f ms; bulk %.0f events/s meanwhile",
				v.name, len(all), traceBatchEvents, ms(p50), ms(p99), traceTargetP99, ms(all[len(all)-1]), ms(quantile(inSQL, 0.5)), ms(quantile(inSQL, 0.99)), bulkRate)
			if len(hops[0]) > 0 {
				for i := range hops {
					slices.Sort(hops[i])
				}
				b.Logf("%s: per hop p50/p99 ms: source->px2 %.1f/%.1f, px2->px1 %.1f/%.1f, px1->center stored %.1f/%.1f", v.name,
					ms(quantile(hops[0], .5)), ms(quantile(hops[0], .99)), ms(quantile(hops[1], .5)), ms(quantile(hops[1], .99)),
					ms(quantile(hops[2], .5)), ms(quantile(hops[2], .99)))
			}
		})
	}
}
