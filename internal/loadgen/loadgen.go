// Package loadgen is the scale benchmark behind `daemoneye bench scale`: it
// builds a whole tree in one process — a fresh customer CA, a center, two
// levels of proxies and N simulated agents — and drives it with synthetic
// process churn. Every node is the real role: the center and proxies are
// roles/center and roles/proxy with their real stores, and each simulated
// agent is the real store.Local and agent.Shipper (its own certificate,
// Pebble store, uplink WAL and QUIC/mTLS connection), fed by a churn model
// instead of a kernel sensor. After the load it waits for the tree to drain
// and checks at the center that every (agent, seq) each shipper queued was
// stored exactly once.
//
// Everything runs in one process so that the accounting can compare each
// shipper's counters with the center's batch store directly; the cost is
// that CPU and memory are reported for the whole process (center, proxies
// and agents together), not per role.
package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/roles/agent"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/roles/proxy"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Options shape one run.
type Options struct {
	Dir      string        // working directory (CA, every node's data); must be empty or absent
	Agents   int           // simulated agents
	Top      int           // proxies under the center (level 1)
	Fanout   int           // proxies under each level-1 proxy (level 2); agents attach to level 2
	Rate     float64       // baseline events per second per agent
	Duration time.Duration // how long the load runs
	Drain    time.Duration // how long to wait for the tree to drain after the load
	// BatchMS is the simulated agents' agent.stream.batch_max_ms (0: the
	// default): how often each cuts a bulk batch, so the batches per second
	// the tree carries (Agents * 1000 / BatchMS).
	BatchMS int

	AlertEvery time.Duration // one exec from /tmp on a random agent this often (0: none)
	CmdEvery   time.Duration // one command to a random agent this often (0: none)
	TraceEvery time.Duration // one trace event on agent 0 this often (0: none)

	CPUProfile string // also write the run's CPU profile here (labelled by role)

	Seed uint64       // churn randomness
	Log  *slog.Logger // nil: discard
	Out  io.Writer    // progress lines; nil: discard
}

func (o *Options) defaults() {
	if o.Agents <= 0 {
		o.Agents = 10
	}
	o.Top = max(o.Top, 1)
	o.Fanout = max(o.Fanout, 1)
	if o.Rate <= 0 {
		o.Rate = 20
	}
	if o.Duration <= 0 {
		o.Duration = 10 * time.Second
	}
	if o.Drain <= 0 {
		o.Drain = 5 * time.Minute
	}
	if o.Log == nil {
		o.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// ErrLoss is returned (wrapped) when the center does not hold exactly what
// the agents queued.
var ErrLoss = errors.New("loss or duplicates at the center")

type runner struct {
	cancel context.CancelFunc
	done   chan error
}

func start(run func(context.Context) error) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	return r
}

func (r *runner) stop() error {
	r.cancel()
	select {
	case err := <-r.done:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("did not stop within 30s")
	}
}

type tree struct {
	dir string
	ca  *pki.CA
	log *slog.Logger
}

func (t *tree) issue(role pki.Role, name string) (config.TLS, error) {
	certPEM, keyPEM, err := t.ca.Issue(role, name, pki.IssueOptions{Loopback: true})
	if err != nil {
		return config.TLS{}, err
	}
	dir := filepath.Join(t.dir, "certs")
	if err := pki.WriteKeyPair(dir, name, certPEM, keyPEM); err != nil {
		return config.TLS{}, err
	}
	return config.TLS{
		Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"),
		CA: filepath.Join(t.ca.Dir(), pki.CACertFile), RenewCheckMS: 60000,
	}, nil
}

func freeAddr() (string, error) {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.LocalAddr().String(), nil
}

// raiseNoFile lifts the soft open-file limit to the hard one: every
// simulated agent holds two Pebble stores and a UDP socket.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	// Root may raise the hard limit too; otherwise take the hard limit.
	want := syscall.Rlimit{Cur: max(rl.Max, 1<<20), Max: max(rl.Max, 1<<20)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err == nil {
		return want.Cur, nil
	}
	rl.Cur = rl.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	return rl.Cur, nil
}

// simAgent is one simulated host: the real store and shipper.
type simAgent struct {
	name   string
	st     *store.Local
	ship   *agent.Shipper
	run    *runner
	inject chan injected
	churn  *churn

	emitted atomic.Uint64 // events appended to the store
	errs    atomic.Uint64
}

// Run builds the tree, runs the load, drains and checks. The result is
// returned even when the check fails (with an error wrapping ErrLoss).
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	// This goroutine's own work (polling, accounting) is the generator's.
	pprof.SetGoroutineLabels(roleCtx(ctx, "loadgen"))
	defer pprof.SetGoroutineLabels(ctx)
	res := &Result{Options: o, Started: time.Now()}
	if ents, err := os.ReadDir(o.Dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("loadgen: %s is not empty", o.Dir)
	}
	nofile, err := raiseNoFile()
	if err != nil {
		return nil, fmt.Errorf("loadgen: raise RLIMIT_NOFILE: %w", err)
	}
	res.NoFile = nofile
	ca, err := pki.Init(filepath.Join(o.Dir, "pki"), "loadgen", 0)
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	t := &tree{dir: o.Dir, ca: ca, log: o.Log}
	var runners []struct {
		name string
		r    *runner
	}
	stopAll := func() {
		for i := len(runners) - 1; i >= 0; i-- {
			if err := runners[i].r.stop(); err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintf(o.Out, "stop %s: %v\n", runners[i].name, err)
			}
		}
		runners = nil
	}
	defer stopAll()

	// Center.
	cc := config.Default().Center
	if cc.Listen, err = freeAddr(); err != nil {
		return nil, err
	}
	cc.DataDir = filepath.Join(o.Dir, "center")
	if cc.TLS, err = t.issue(pki.RoleCenter, "center"); err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	cc.CADir = ca.Dir()
	cc.API.Listen = ""
	var cn *center.Center
	asRole("center", func() { cn, err = center.New(cc, o.Log) })
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	m := newMeasures()
	cn.OnCommandAck = m.ack
	cn.Ingest.SetOnStored(m.stored)
	runners = append(runners, struct {
		name string
		r    *runner
	}{"center", startAs("center", cn.Run)})

	// Proxies: Top under the center, Fanout under each of those.
	newProxy := func(name, parent string) (string, error) {
		pc := config.Default().Proxy
		var err error
		if pc.Listen, err = freeAddr(); err != nil {
			return "", err
		}
		pc.Upstream = parent
		pc.WALPath = filepath.Join(o.Dir, name, "wal")
		pc.Metrics.Listen = ""
		if pc.TLS, err = t.issue(pki.RoleProxy, name); err != nil {
			return "", err
		}
		var px *proxy.Proxy
		asRole("proxy", func() { px, err = proxy.New(pc, o.Log) })
		if err != nil {
			return "", fmt.Errorf("proxy %s: %w", name, err)
		}
		runners = append(runners, struct {
			name string
			r    *runner
		}{name, startAs("proxy", px.Run)})
		return px.Addr(), nil
	}
	var leaves []string
	for i := range o.Top {
		addr, err := newProxy(fmt.Sprintf("px%d", i), cn.Addr())
		if err != nil {
			return nil, fmt.Errorf("loadgen: %w", err)
		}
		for j := range o.Fanout {
			leaf, err := newProxy(fmt.Sprintf("px%d-%d", i, j), addr)
			if err != nil {
				return nil, fmt.Errorf("loadgen: %w", err)
			}
			leaves = append(leaves, leaf)
		}
	}
	res.Proxies = o.Top * (1 + o.Fanout)

	// Agents, spread over the level-2 proxies.
	res.RSSTree = rss()
	startAgents := time.Now()
	agents := make([]*simAgent, o.Agents)
	for i := range agents {
		var a *simAgent
		asRole("agent", func() {
			a, err = newSimAgent(t, fmt.Sprintf("ag%05d", i), leaves[i%len(leaves)], o.BatchMS, o.Seed+uint64(i))
		})
		if err != nil {
			for _, b := range agents[:i] {
				b.stop()
			}
			return nil, fmt.Errorf("loadgen: agent %d of %d: %w", i, o.Agents, err)
		}
		agents[i] = a
	}
	defer func() {
		for _, a := range agents {
			a.stop()
		}
	}()
	// Wait for every agent's route to reach the center, so the commands
	// measured below do not wait for a connection.
	for len(cn.Agents()) < o.Agents {
		if time.Since(startAgents) > 2*time.Minute {
			return nil, fmt.Errorf("loadgen: only %d of %d agents reachable at the center after 2m", len(cn.Agents()), o.Agents)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		time.Sleep(100 * time.Millisecond)
	}
	res.StartAgents = time.Since(startAgents)
	res.RSSAgents = rss()
	fmt.Fprintf(o.Out, "tree up: center, %d proxies, %d agents connected in %s\n", res.Proxies, o.Agents, res.StartAgents.Round(time.Millisecond))

	// Load. The CPU profile splits the process's CPU by role.
	var prof bytes.Buffer
	profiling := pprof.StartCPUProfile(&prof) == nil
	stopProfile := func() {
		if !profiling {
			return
		}
		profiling = false
		pprof.StopCPUProfile()
		if o.CPUProfile != "" {
			if err := os.WriteFile(o.CPUProfile, prof.Bytes(), 0o644); err != nil {
				fmt.Fprintf(o.Out, "write CPU profile: %v\n", err)
			}
		}
		if byRole, err := profileByRole(prof.Bytes()); err == nil {
			res.RoleCPU = byRole
		}
	}
	defer stopProfile()
	cpu0 := cpuTime()
	loadStart := time.Now()
	lctx, lcancel := context.WithTimeout(ctx, o.Duration)
	var wg sync.WaitGroup
	for i, a := range agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pprof.SetGoroutineLabels(roleCtx(lctx, "agent")) // the sensor's share of the agent
			a.emit(lctx, o.Rate, time.Duration(i)*100*time.Millisecond/time.Duration(len(agents)))
		}()
	}
	wg.Add(3)
	// (these goroutines inherit this one's role label, loadgen)
	go func() { defer wg.Done(); m.alertProbes(lctx, cn, agents, o.AlertEvery, o.Seed) }()
	go func() { defer wg.Done(); m.commands(lctx, cn, agents, o.CmdEvery, o.Seed) }()
	go func() { defer wg.Done(); m.traceProbe(lctx, agents[0], o.TraceEvery) }()
	tick := time.NewTicker(10 * time.Second)
	for done := false; !done; {
		select {
		case <-lctx.Done():
			done = true
		case <-tick.C:
			progress(o.Out, time.Since(loadStart), cn, agents)
		}
	}
	tick.Stop()
	lcancel()
	wg.Wait()
	res.Load = time.Since(loadStart)
	res.LoadCPU = cpuTime() - cpu0
	res.RSSAfterLoad = rss()
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	// Drain: kick every shipper so that what was stored is cut now, then
	// wait until the center has stored as many batches as were queued.
	for _, a := range agents {
		a.ship.Kick()
	}
	time.Sleep(time.Second) // a full ticker period for the last cuts
	drainStart := time.Now()
	var want uint64
	for {
		want = 0
		for _, a := range agents {
			want += a.ship.Stats().Batches
		}
		got, _, _ := cn.Ingest.Counts()
		if got >= want || time.Since(drainStart) > o.Drain {
			break
		}
		if n := time.Since(drainStart); n.Truncate(200*time.Millisecond)%(10*time.Second) == 0 && n > time.Second {
			progress(o.Out, time.Since(loadStart), cn, agents)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		time.Sleep(200 * time.Millisecond)
	}
	res.DrainTime = time.Since(drainStart)
	// Give late alert and command measurements a moment, then read them.
	time.Sleep(2 * time.Second)
	res.TotalCPU = cpuTime() - cpu0
	stopProfile()
	m.finish(ctx, cn, res)

	if err := check(cn, agents, res); err != nil {
		res.Check = err.Error()
	}
	res.Disk = diskUsage(o.Dir, o.Agents)
	res.HWM = hwm()
	sqlEvents(ctx, cn, res)
	if res.Check != "" {
		return res, fmt.Errorf("loadgen: %w: %s", ErrLoss, res.Check)
	}
	return res, nil
}

// progress prints where the events are: stored by the agents, queued in
// their uplink WALs, stored at the center.
func progress(w io.Writer, at time.Duration, cn *center.Center, agents []*simAgent) {
	var emitted, queued, queuedEv, waiting uint64
	for _, a := range agents {
		s := a.ship.Stats()
		emitted += a.emitted.Load()
		queued += s.Batches
		queuedEv += s.Events
		for _, l := range s.Queue.Lanes {
			waiting += uint64(l.Entries)
		}
	}
	b, e, _ := cn.Ingest.Counts()
	fds, _ := os.ReadDir("/proc/self/fd")
	fmt.Fprintf(w, "%5.0fs: agents stored %d events, queued %d batches (%d events, %d not yet acked); center stored %d batches, %d events; rss %s, fds %d\n",
		at.Seconds(), emitted, queued, queuedEv, waiting, b, e, mib(rss()), len(fds))
}

func newSimAgent(t *tree, name, parent string, batchMS int, seed uint64) (*simAgent, error) {
	ac := config.Default().Agent
	ac.DataDir = filepath.Join(t.dir, "agents", name)
	ac.ProxyHint = parent
	if batchMS > 0 {
		ac.Stream.BatchMaxMS = batchMS
	}
	var err error
	if ac.TLS, err = t.issue(pki.RoleAgent, name); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(ac.DataDir, 0o700); err != nil {
		return nil, err
	}
	st, err := store.OpenLocal(filepath.Join(ac.DataDir, "store"), store.LocalOptions{}, t.log)
	if err != nil {
		return nil, err
	}
	sh, err := agent.NewShipper(ac, st, nil, t.log)
	if err != nil {
		st.Close()
		return nil, err
	}
	a := &simAgent{name: name, st: st, ship: sh, inject: make(chan injected, 16), churn: newChurn(seed)}
	a.run = startAs("agent", sh.Run)
	return a, nil
}

func (a *simAgent) stop() {
	if a == nil || a.run == nil {
		return
	}
	a.run.stop()
	a.run = nil
	a.st.Close()
}

// check compares what each shipper queued with what the center stored:
// per agent, exactly the batch seqs 1..queued, none shed on the way, and
// the center's event count equal to the events the shippers sealed.
func check(cn *center.Center, agents []*simAgent, res *Result) error {
	stored, err := cn.Ingest.Stored()
	if err != nil {
		return err
	}
	var problems []string
	for _, a := range agents {
		s := a.ship.Stats()
		res.Batches += s.Batches
		res.Events += s.Events
		res.Emitted += a.emitted.Load()
		res.ShedBatches += s.Dropped
		seqs := stored[a.name]
		ok := uint64(len(seqs)) == s.Batches
		for i, q := range seqs {
			if q != uint64(i+1) {
				ok = false
				break
			}
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: queued batches 1..%d, center has %d (first %v)", a.name, s.Batches, len(seqs), seqs[:min(len(seqs), 3)]))
		}
		if s.Dropped > 0 {
			problems = append(problems, fmt.Sprintf("%s: %d bulk batches shed", a.name, s.Dropped))
		}
		if s.Events != a.emitted.Load() {
			problems = append(problems, fmt.Sprintf("%s: %d events stored, %d shipped", a.name, a.emitted.Load(), s.Events))
		}
		if e := a.errs.Load(); e > 0 {
			problems = append(problems, fmt.Sprintf("%s: %d store errors", a.name, e))
		}
	}
	for name := range stored {
		if !slices.ContainsFunc(agents, func(a *simAgent) bool { return a.name == name }) {
			problems = append(problems, "center holds batches of unknown agent "+name)
		}
	}
	b, e, replays := cn.Ingest.Counts()
	res.CenterBatches, res.CenterEvents, res.CenterReplays = b, e, replays
	if b != res.Batches {
		problems = append(problems, fmt.Sprintf("center stored %d batches, agents queued %d", b, res.Batches))
	}
	if e != res.Events {
		problems = append(problems, fmt.Sprintf("center stored %d events, agents shipped %d", e, res.Events))
	}
	if rej := cn.Ingest.Rejected(); len(rej) > 0 {
		problems = append(problems, fmt.Sprintf("center rejected batches: %v", rej))
	}
	if len(problems) > 10 {
		problems = append(problems[:10], fmt.Sprintf("and %d more", len(problems)-10))
	}
	if len(problems) > 0 {
		return errors.New(fmt.Sprint(problems))
	}
	return nil
}

// sqlEvents counts the process events the center's SQL store holds.
func sqlEvents(ctx context.Context, cn *center.Center, res *Result) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var n int64
	if err := cn.SQL.ReadOnly().QueryRowContext(ctx, `SELECT count(*) FROM process_events`).Scan(&n); err == nil {
		res.SQLProcessEvents = n
	}
}

func rand64(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
