package treetest

// Issue 4's pipeline benchmarks (DESIGN "Performance targets"): sustained
// events/s agent -> proxy -> proxy -> center with durable WALs and signed
// batches, side by side with NATS JetStream (nats_test.go) on the same
// payloads, and trace-lane latency under a saturated bulk lane
// (latency_test.go). Run them with `make bench`; BENCHMARKS.md quotes them.

import (
	"context"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Sizes of the throughput run. The DESIGN target is 200k events/s, so the
// default run (4 agents x 500k events) lasts about 10 s at the target;
// PIPELINE_EVENTS overrides the events per agent.
const (
	pipelineAgents   = 4
	pipelinePerAgent = 500_000
	emitChunk        = 2000 // events per store append: the agent's batch_max_events
	pipelineTarget   = 200_000
)

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// cpuTime is this process's user+system CPU time. The machines are shared
// and noisy, so beside wall-clock events/s the benchmarks report events per
// CPU-second, which other load does not inflate.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// eventGen draws the parts of realistic events: execs of assorted tools
// with partly random argv, and connects.
type eventGen struct {
	rng   *rand.Rand
	tools []genTool
}

type genTool struct {
	exe  string
	argv func() []string
}

func newEventGen(seed uint64) *eventGen {
	g := &eventGen{rng: rand.New(rand.NewPCG(seed, 42))}
	rng := g.rng
	hex := g.hex
	g.tools = []genTool{
		{"/usr/bin/git", func() []string {
			return []string{"git", "-C", "/srv/build/" + hex(8), "fetch", "--depth=1", "origin", hex(40)}
		}},
		{"/usr/bin/curl", func() []string {
			return []string{"curl", "-fsSL", "--max-time", "10", fmt.Sprintf("https://updates.internal.example/v1/pkg/%d?arch=amd64&sig=%s", rng.IntN(1e6), hex(24))}
		}},
		{"/usr/lib/gcc/x86_64-linux-gnu/14/cc1", func() []string {
			return []string{"cc1", "-quiet", "-I", "include", "src/" + hex(6) + ".c", "-O2", "-o", "/tmp/cc" + hex(6) + ".s"}
		}},
		{"/usr/bin/python3.13", func() []string {
			return []string{"python3", "-m", "pytest", "-q", "tests/test_" + hex(5) + ".py", "-k", "not slow"}
		}},
		{"/bin/sh", func() []string { return []string{"sh", "-c", "test -f /run/lock/" + hex(10) + " || exit 1"} }},
		{"/usr/bin/ssh", func() []string {
			return []string{"ssh", "-o", "BatchMode=yes", "-p", fmt.Sprint(1024 + rng.IntN(60000)), "deploy@10.20." + fmt.Sprint(rng.IntN(255)) + "." + fmt.Sprint(rng.IntN(255)), "uptime"}
		}},
	}
	return g
}

func (g *eventGen) hex(k int) string {
	b := make([]byte, k)
	for i := range b {
		b[i] = "0123456789abcdef"[g.rng.IntN(16)]
	}
	return string(b)
}

// exec draws an exec of one of the tools and returns it with its comm.
func (g *eventGen) exec() (*capture.Exec, string) {
	tl := g.tools[g.rng.IntN(len(g.tools))]
	comm := tl.exe[strings.LastIndexByte(tl.exe, '/')+1:]
	return &capture.Exec{
		UID: 1000, GID: 1000, EUID: 1000, EGID: 1000,
		Exe:      tl.exe,
		Argv:     tl.argv(),
		Cwd:      "/srv/build/" + g.hex(8),
		CgroupID: 7321 + uint64(g.rng.IntN(50)),
		PidNS:    4026531836, NetNS: 4026531840, MntNS: 4026531841,
	}, comm[:min(len(comm), 15)]
}

func (g *eventGen) conn() *capture.Conn {
	return &capture.Conn{
		Proto: capture.ProtoTCP,
		Src:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 2, 3}), uint16(32768+g.rng.IntN(28000))),
		Dst:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 20, byte(g.rng.IntN(255)), byte(g.rng.IntN(255))}), 443),
	}
}

// realisticEvents returns n events shaped like a busy build host's
// baseline (the same shape as transport/wire's benchmarks): mostly exec of
// assorted tools with partly random argv, with fork, exit and connect mixed
// in, each naming random processes. Seeded, so every run sees the same
// events; times start at t0.
func realisticEvents(seed uint64, n int, t0 int64) []capture.Event {
	g := newEventGen(seed)
	rng := g.rng
	evs := make([]capture.Event, n)
	now := t0
	for i := range evs {
		now += int64(rng.IntN(40_000))
		e := capture.Event{
			Time:   now,
			Proc:   capture.ProcKey{PID: uint32(20000 + rng.IntN(400000)), Start: 9_000_000 + uint64(rng.IntN(1e6))},
			Parent: capture.ProcKey{PID: uint32(1000 + rng.IntN(5000)), Start: 4_000_000 + uint64(rng.IntN(1e5))},
			Comm:   "make",
			Source: "ebpf",
		}
		switch r := rng.IntN(10); {
		case r == 0:
			e.Kind = capture.KindFork
		case r == 1:
			e.Kind = capture.KindExit
			e.Exit = &capture.Exit{Code: int32(rng.IntN(3))}
		case r == 2:
			e.Kind = capture.KindConnect
			e.Conn = g.conn()
		default:
			e.Kind = capture.KindExec
			e.Exec, e.Comm = g.exec()
		}
		evs[i] = e
	}
	return evs
}

// lifecycleEvents returns n events of processes as a host makes them: 64
// long-lived parents (build drivers, shells) fork children, each child
// execs once or twice (a shell, then a tool), connects now and then, and
// exits; up to 16 children are alive at once, their events interleaved.
// Every child is a new process: Proc start times are drawn from
// [9e6, 9e6+n) and parents' from [4e6, 4e6+64), so rekey can move a pool's
// children to new processes while its parents stay the same.
func lifecycleEvents(seed uint64, n int, t0 int64) []capture.Event {
	g := newEventGen(seed)
	rng := g.rng
	type child struct {
		key, parent capture.ProcKey
		left        int // events still to come; the last is its exit
		execs       int
	}
	var live []*child
	next := uint64(0)
	evs := make([]capture.Event, 0, n)
	now := t0
	for len(evs) < n {
		now += int64(rng.IntN(40_000))
		if len(live) < 16 && (len(live) == 0 || rng.IntN(4) == 0) {
			p := uint32(1000 + rng.IntN(64))
			c := &child{key: capture.ProcKey{PID: uint32(20000 + next%400000), Start: 9_000_000 + next},
				parent: capture.ProcKey{PID: p, Start: 4_000_000 + uint64(p-1000)}, execs: 1 + rng.IntN(2)}
			next++
			c.left = c.execs + 1 // its execs, then its exit
			if rng.IntN(10) < 3 {
				c.left++ // and a connect
			}
			live = append(live, c)
			evs = append(evs, capture.Event{Time: now, Kind: capture.KindFork, Proc: c.key, Parent: c.parent, Comm: "make", Source: "ebpf"})
			continue
		}
		i := rng.IntN(len(live))
		c := live[i]
		e := capture.Event{Time: now, Proc: c.key, Parent: c.parent, Comm: "make", Source: "ebpf"}
		switch {
		case c.left == 1:
			e.Kind = capture.KindExit
			e.Exit = &capture.Exit{Code: int32(rng.IntN(3))}
			live = append(live[:i], live[i+1:]...)
		case c.execs > 0:
			e.Kind = capture.KindExec
			e.Exec, e.Comm = g.exec()
			c.execs--
		default:
			e.Kind = capture.KindConnect
			e.Conn = g.conn()
		}
		c.left--
		evs = append(evs, e)
	}
	return evs
}

// eventPool is a few chunks of realistic events an emitter cycles through,
// so that generating random strings does not count as pipeline work (the
// sensor hands the agent ready events too).
//
// PIPELINE_SHAPE=random gives the shape this benchmark used before
// lifecycleEvents (realisticEvents, replayed unchanged every cycle), for
// comparisons with older figures.
func eventPool(seed uint64, chunks int) [][]capture.Event {
	gen := lifecycleEvents
	if randomShape {
		gen = realisticEvents
	}
	all := gen(seed, chunks*emitChunk, time.Now().UnixNano())
	out := make([][]capture.Event, chunks)
	for i := range out {
		out[i] = all[i*emitChunk : (i+1)*emitChunk]
	}
	return out
}

var randomShape = os.Getenv("PIPELINE_SHAPE") == "random"

// rekey moves a pool chunk from cycle from to cycle to: its children
// become new processes and its times move on by span (the pool's) per
// cycle, so that every time the pool comes round its events are new ones,
// as a host's are. Replayed as they were, the same exited processes would
// come again, which costs a store reads a real host never causes (their
// entries are on disk, not in the live cache, and the key filter cannot
// rule them out). lifecycleEvents draws children's start times below
// 9e6+n, so steps of 1e7 never collide; parents keep theirs.
func rekey(evs []capture.Event, from, to uint64, span int64) {
	if from == to || randomShape {
		return
	}
	d := (to - from) * 10_000_000
	for i := range evs {
		evs[i].Proc.Start += d
		evs[i].Time += int64(to-from) * span
	}
}

// labeled runs fn under the pprof label node=name.
func labeled(name string, fn func()) {
	pprof.Do(context.Background(), pprof.Labels("node", name), func(context.Context) { fn() })
}

// emit stores events in an agent's store, as the sensor does, and wakes
// its shipper. Unlike Agent.Emit it returns errors, so it may run on any
// goroutine.
func emit(a *Agent, evs []capture.Event) error {
	if _, _, err := a.Store.Append(evs); err != nil {
		return fmt.Errorf("%s: store append: %w", a.Name, err)
	}
	a.Ship.Kick()
	return nil
}

// storedCounter counts what the center stored, through SetOnStored.
type storedCounter struct {
	events  atomic.Int64
	batches atomic.Int64
	target  atomic.Int64 // events; reaching it closes done
	once    sync.Once
	done    chan struct{}
	at      atomic.Int64 // when the target was reached, Unix ns
}

func newStoredCounter(c *Center) *storedCounter {
	sc := &storedCounter{done: make(chan struct{})}
	sc.target.Store(1 << 62)
	c.Ingest.SetOnStored(func(b *wire.Batch, _ wire.Lane) {
		sc.batches.Add(1)
		if sc.events.Add(int64(len(b.Events))) >= sc.target.Load() {
			sc.once.Do(func() {
				sc.at.Store(time.Now().UnixNano())
				close(sc.done)
			})
		}
	})
	return sc
}

// waitConnected waits until every agent has a link to its proxy and the
// center has the whole chain below it.
func waitConnected(tb testing.TB, c *Center, agents ...*Agent) {
	tb.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		ok := true
		for _, a := range agents {
			if !a.Ship.Stats().Uplink.Connected {
				ok = false
			}
		}
		if ok && len(c.Agents()) >= len(agents) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("tree not connected after 20s (center sees %v)", c.Agents())
		}
	}
}

// pipelineResult is one throughput run.
type pipelineResult struct {
	events  int64
	batches int64
	wall    time.Duration
	cpu     time.Duration
	// Until the center's SQL store had every batch (0: not measured).
	sqlWall, sqlCPU time.Duration
	bytes           int64
	sealed          map[string][][]byte // per agent, in seq order: the NATS side publishes these
}

func (r pipelineResult) rate() float64    { return float64(r.events) / r.wall.Seconds() }
func (r pipelineResult) cpuRate() float64 { return float64(r.events) / r.cpu.Seconds() }

// runPipeline builds agents -> px2 -> px1 -> center, lets every agent emit
// perAgent realistic events as fast as its store takes them, and measures
// from the first emit to the last event stored (fsynced) at the center.
func runPipeline(b *testing.B, agents, perAgent int) pipelineResult {
	b.Helper()
	tr := New(b)
	// Each node runs under a pprof label that every goroutine it starts
	// inherits, so a CPU profile of this benchmark splits by node:
	// go tool pprof -tags treetest.test cpu.prof
	var c *Center
	labeled("center", func() { c = tr.NewCenter("center").Start() })
	var px1, px2 *Proxy
	labeled("proxy", func() { px1 = tr.NewProxy("px1", c.Cfg.Listen).Start() })
	labeled("proxy", func() { px2 = tr.NewProxy("px2", px1.Cfg.Listen).Start() })
	var as []*Agent
	pools := make([][][]capture.Event, agents)
	spans := make([]int64, agents)
	for i := range agents {
		labeled("agent", func() { as = append(as, tr.NewAgent(fmt.Sprintf("agent-%d", i), px2.Cfg.Listen).Start()) })
		pools[i] = eventPool(uint64(i+1), 8)
		last := pools[i][len(pools[i])-1]
		spans[i] = last[len(last)-1].Time - pools[i][0][0].Time + 40_000
	}
	sc := newStoredCounter(c)
	waitConnected(b, c, as...)

	// Warm up every link and store with one batch per agent.
	for i, a := range as {
		if err := emit(a, pools[i][0]); err != nil {
			b.Fatal(err)
		}
	}
	if m := WaitAll(c, 30*time.Second, as...); m != "" {
		b.Fatalf("warm-up not delivered: %s", m)
	}
	warm := sc.events.Load()
	warmBatches := sc.batches.Load()
	chunks := max(1, perAgent/emitChunk)
	total := warm + int64(agents*chunks*emitChunk)
	sc.target.Store(total)

	cpu0 := cpuTime()
	start := time.Now()
	errc := make(chan error, agents)
	for i, a := range as {
		go pprof.Do(context.Background(), pprof.Labels("node", "sensor"), func(context.Context) {
			at := make([]uint64, len(pools[i])) // the cycle each chunk is keyed for
			for k := range chunks {
				// Chunk 0 was the warm-up: start after it.
				n := k + 1
				chunk := pools[i][n%len(pools[i])]
				rekey(chunk, at[n%len(pools[i])], uint64(n/len(pools[i])), spans[i])
				at[n%len(pools[i])] = uint64(n / len(pools[i]))
				if err := emit(a, chunk); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		})
	}
	for range agents {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
	emitted := time.Since(start)
	select {
	case <-sc.done:
	case <-time.After(150 * time.Second):
		b.Fatalf("after 150s the center stored %d of %d events: %s", sc.events.Load(), total, Missing(c, as...))
	}
	end := time.Unix(0, sc.at.Load())
	res := pipelineResult{
		events:  total - warm,
		batches: sc.batches.Load() - warmBatches,
		wall:    end.Sub(start),
		cpu:     cpuTime() - cpu0,
		sealed:  map[string][][]byte{},
	}
	// The center's SQL store is derived from the batch store and fed
	// behind it (its queue holds 1024 batches, more than this run has), so
	// "stored" above does not wait for it. Sustained, the pipeline can go
	// no faster than SQL ingest: wait for it too, and report both.
	if os.Getenv("PIPELINE_SQL") != "0" {
		res.sqlWall, res.sqlCPU = waitSQL(b, c, as, start, cpu0)
	}
	for _, a := range as {
		if d := a.Ship.Stats().Dropped; d != 0 {
			b.Fatalf("%s shed %d bulk batches: the run is not lossless", a.Name, d)
		}
	}
	if _, _, replays := c.Ingest.Counts(); replays != 0 {
		b.Logf("replays dropped at the center: %d", replays)
	}
	// The sealed batches as stored, for the NATS run: byte for byte what
	// the agents signed and the proxies forwarded.
	stored, err := c.Ingest.Stored()
	if err != nil {
		b.Fatal(err)
	}
	for agent, seqs := range stored {
		for _, seq := range seqs[1:] { // seq 1 is the warm-up batch
			sealed, ok, err := c.Ingest.Batch(agent, seq)
			if err != nil || !ok {
				b.Fatalf("read back %s/%d: %v", agent, seq, err)
			}
			res.bytes += int64(len(sealed))
			res.sealed[agent] = append(res.sealed[agent], sealed)
		}
	}
	b.Logf("daemoneye: %d events in %d batches (%.0f B/event sealed), emitted in %v, all stored after %v (%.1f CPU-µs/event), in SQL after %v (%.1f CPU-µs/event); on disk: %s",
		res.events, res.batches, float64(res.bytes)/float64(res.events), emitted.Round(time.Millisecond), res.wall.Round(time.Millisecond),
		float64(res.cpu.Microseconds())/float64(res.events), res.sqlWall.Round(time.Millisecond), float64(res.sqlCPU.Microseconds())/float64(res.events),
		diskUse(tr.Dir, "agent-0/store", "agent-0/wal", "px2/wal", "px1/wal", "center/batches"))
	return res
}

// waitSQL waits until the center's SQL store holds every agent's last
// batch (SQL ingests in commit order) and returns the wall and CPU time
// since start.
func waitSQL(b *testing.B, c *Center, as []*Agent, start time.Time, cpu0 time.Duration) (time.Duration, time.Duration) {
	b.Helper()
	stored, err := c.Ingest.Stored()
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	for deadline := time.Now().Add(10 * time.Minute); ; time.Sleep(50 * time.Millisecond) {
		all := true
		for _, a := range as {
			seqs := stored[a.Name]
			has, err := c.SQL.HasBatch(ctx, a.Name, seqs[len(seqs)-1])
			if err != nil {
				b.Fatal(err)
			}
			all = all && has
		}
		if all {
			return time.Since(start), cpuTime() - cpu0
		}
		if time.Now().After(deadline) {
			b.Fatal("the SQL store has not ingested every batch after 10 minutes")
		}
	}
}

// diskUse says how many bytes each of the dirs under root holds.
func diskUse(root string, dirs ...string) string {
	var out []string
	for _, d := range dirs {
		var n int64
		filepath.WalkDir(filepath.Join(root, d), func(_ string, e fs.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if fi, err := e.Info(); err == nil {
					n += fi.Size()
				}
			}
			return nil
		})
		out = append(out, fmt.Sprintf("%s %d MB", d, n>>20))
	}
	return strings.Join(out, ", ")
}

// BenchmarkPipelineThroughput measures sustained events/s through
// agent -> proxy -> proxy -> center (durable WALs, signed batches, center
// verifies and fsyncs each batch), then, in the same iteration so the two
// see the same machine load, NATS JetStream with the same sealed batches
// (file storage, acked async publishes). With -count N the pairs alternate.
// Without nats-server (and CI unset) the NATS half is skipped with a
// message and only our figures are reported; with CI set that fails.
func BenchmarkPipelineThroughput(b *testing.B) {
	perAgent := envInt("PIPELINE_EVENTS", pipelinePerAgent)
	bin, natsErr := natsBinary()
	if natsErr != nil {
		if os.Getenv("CI") != "" {
			b.Fatalf("%v (CI is set, so this fails instead of skipping the comparison)", natsErr)
		}
		b.Logf("SKIP NATS JetStream comparison: %v", natsErr)
	}
	var ours, theirs pipelineResult
	for range b.N {
		r := runPipeline(b, pipelineAgents, perAgent)
		ours.events += r.events
		ours.wall += r.wall
		ours.cpu += r.cpu
		ours.bytes += r.bytes
		ours.sqlWall += r.sqlWall
		ours.sqlCPU += r.sqlCPU
		if natsErr == nil {
			n := benchNATS(b, bin, r.sealed, r.events)
			theirs.events += n.events
			theirs.wall += n.wall
			theirs.cpu += n.cpu
		}
	}
	b.ReportMetric(ours.rate(), "events/s")
	b.ReportMetric(ours.cpuRate(), "events/cpu-s")
	b.ReportMetric(ours.rate()/pipelineTarget, "x-target")
	b.ReportMetric(float64(ours.bytes)/float64(ours.events), "B/event")
	b.ReportMetric(float64(ours.cpu.Microseconds())/float64(ours.events), "cpu-us/event")
	if ours.sqlWall > 0 {
		b.ReportMetric(float64(ours.events)/ours.sqlWall.Seconds(), "sql-events/s")
		b.ReportMetric(float64(ours.sqlCPU.Microseconds())/float64(ours.events), "sql-cpu-us/event")
	}
	if natsErr == nil {
		b.ReportMetric(theirs.rate(), "nats-events/s")
		b.ReportMetric(theirs.cpuRate(), "nats-events/cpu-s")
		b.ReportMetric(ours.rate()/theirs.rate(), "daemoneye/nats")
		b.ReportMetric(ours.cpuRate()/theirs.cpuRate(), "daemoneye/nats-cpu")
		b.Logf("daemoneye %.0f events/s (%.2f x the %d target) vs NATS JetStream %.0f events/s: ratio %.4f; per CPU-second %.0f vs %.0f: ratio %.4f",
			ours.rate(), ours.rate()/pipelineTarget, pipelineTarget, theirs.rate(), ours.rate()/theirs.rate(), ours.cpuRate(), theirs.cpuRate(), ours.cpuRate()/theirs.cpuRate())
	}
}
