// Package loadgen is the scale benchmark behind `daemoneye bench scale`: a
// fresh customer CA, a center, two levels of proxies and N simulated
// agents, driven with synthetic process churn. The center and the proxies
// are the real binary (`daemoneye center`, `daemoneye proxy`) run as child
// processes with their own configuration files, certificates and data
// directories; the simulated agents live in this process, each the real
// store.Local and agent.Shipper with its own certificate, Pebble store,
// uplink WAL and QUIC/mTLS connection, obeying signed trace commands.
//
// After the load it waits for the tree to drain, stops every node, and
// checks in the center's batch store (opened read-only once the center has
// stopped) and SQL store that every (agent, seq) each shipper queued is
// there exactly once. CPU and memory come from /proc for each child, and
// from this process for the agents.
package loadgen

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Options shape one run.
type Options struct {
	// Bin is the daemoneye binary run as the center and the proxies.
	Bin string
	// BinEnv is added to the children's environment (a test that runs
	// itself as the binary says so here).
	BinEnv []string

	Dir      string        // working directory (CA, every node's data); must be empty or absent
	Agents   int           // simulated agents
	Top      int           // proxies under the center (level 1)
	Fanout   int           // proxies under each level-1 proxy (level 2); agents attach to level 2
	Rate     float64       // baseline events per second per agent
	Duration time.Duration // how long the load runs
	Drain    time.Duration // how long to wait for the tree to drain after the load
	// BatchMS is the simulated agents' agent.stream.batch_max_ms (0: the
	// default): each stores its events and cuts a bulk batch this often,
	// so the tree carries Agents * 1000 / BatchMS batches per second.
	BatchMS int

	AlertEvery   time.Duration // one exec from /tmp on a random agent this often (0: none)
	CmdEvery     time.Duration // one signed trace request (round trip) this often (0: none)
	TraceEvery   time.Duration // one trace event on agent 0 this often (0: none)
	LineageEvery time.Duration // lineage queries on the big host this often (0: only after the load)
	// BigHost is how many live processes agent 1 runs (10,000 for the
	// concept's "10k processes"): the center's lineage queries are timed
	// on it. 0: none.
	BigHost int

	CPUProfile string // this process's CPU profile (the simulated agents), load and drain
	ProfileDir string // the children's CPU profiles (center.prof, px0.prof, ...)

	Seed uint64       // churn randomness
	Log  *slog.Logger // the simulated agents' log; nil: discard
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
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Out == nil {
		o.Out = io.Discard
	}
}

// ErrLoss is returned (wrapped) when the center does not hold exactly what
// the agents queued.
var ErrLoss = errors.New("loss or duplicates at the center")

// operatorName is the generator's analyst at the center.
const operatorName = "loadgen-analyst"

type tree struct {
	dir string
	ca  *pki.CA
	log *slog.Logger
}

func (t *tree) issue(role pki.Role, name string) (config.TLS, error) {
	certPEM, keyPEM, err := t.ca.Issue(role, name, pki.IssueOptions{Loopback: role != pki.RoleOperator})
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

// raiseNoFile lifts the soft open-file limit to the hard one (root: to
// 1M): every simulated agent holds two Pebble stores and a UDP socket.
func raiseNoFile() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
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

// run is one run's state.
type run struct {
	o      Options
	t      *tree
	res    *Result
	env    []string
	center *node
	px1    []*node // under the center
	px2    []*node // under px1; agents attach here
	agents []*simAgent
	op     *operator
	db     *sql.DB // the center's SQL store, read-only
	m      *measures
	big    bigHost
}

// Run builds the tree, runs the load, drains, stops and checks. The result
// is returned even when the check fails (with an error wrapping ErrLoss).
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	if o.Bin == "" {
		return nil, errors.New("loadgen: the daemoneye binary (Options.Bin) is required")
	}
	if ents, err := os.ReadDir(o.Dir); err == nil && len(ents) > 0 {
		return nil, fmt.Errorf("loadgen: %s is not empty", o.Dir)
	}
	if o.ProfileDir != "" {
		if err := os.MkdirAll(o.ProfileDir, 0o755); err != nil {
			return nil, fmt.Errorf("loadgen: %w", err)
		}
	}
	r := &run{o: o, res: &Result{Options: o, Started: time.Now()}, env: childEnv(o.BinEnv), m: newMeasures()}
	r.res.LoadAvg[0] = loadAvg()
	nofile, err := raiseNoFile()
	if err != nil {
		return nil, fmt.Errorf("loadgen: raise RLIMIT_NOFILE: %w", err)
	}
	r.res.NoFile = nofile
	ca, err := pki.Init(filepath.Join(o.Dir, "pki"), "loadgen", 0)
	if err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	r.t = &tree{dir: o.Dir, ca: ca, log: o.Log}
	defer r.teardown()
	if err := r.main(ctx); err != nil {
		return nil, fmt.Errorf("loadgen: %w", err)
	}
	if r.res.Check != "" {
		return r.res, fmt.Errorf("loadgen: %w: %s", ErrLoss, r.res.Check)
	}
	return r.res, nil
}

func (r *run) say(format string, args ...any) { fmt.Fprintf(r.o.Out, format+"\n", args...) }

func (r *run) main(ctx context.Context) error {
	o, res := r.o, r.res
	if err := r.startTree(ctx); err != nil {
		return err
	}
	res.Idle = r.roleUsage()
	if err := r.startAgents(ctx); err != nil {
		return err
	}
	res.Connected = r.roleUsage()
	if err := r.startLongTrace(ctx); err != nil {
		return err
	}

	// Load.
	stopProfile, err := r.profile()
	if err != nil {
		return err
	}
	defer stopProfile()
	before := r.roleUsage()
	loadStart := time.Now()
	lctx, lcancel := context.WithTimeout(ctx, o.Duration)
	var wg sync.WaitGroup
	for i, a := range r.agents {
		wg.Go(func() { a.emit(lctx, o.Rate, a.period*time.Duration(i)/time.Duration(len(r.agents))) })
	}
	wg.Go(func() { r.m.alertProbes(lctx, r.db, r.agents, o.AlertEvery, o.Seed) })
	wg.Go(func() { r.m.traceRoundTrips(lctx, r.op, r.agents, o.CmdEvery) })
	wg.Go(func() { r.m.traceProbe(lctx, r.agents[0], o.TraceEvery) })
	if len(r.big.events) > 0 && o.LineageEvery > 0 {
		wg.Go(func() { r.m.lineageProbe(lctx, r.op, r.agents[1].name, r.big, o.LineageEvery, "under load") })
	}
	tick := time.NewTicker(10 * time.Second)
	for done := false; !done; {
		select {
		case <-lctx.Done():
			done = true
		case <-tick.C:
			r.progress(ctx, time.Since(loadStart))
		}
	}
	tick.Stop()
	lcancel()
	wg.Wait()
	res.Load = time.Since(loadStart)
	afterLoad := r.roleUsage()
	res.LoadUse = afterLoad.minus(before)
	if err := ctx.Err(); err != nil {
		return err
	}

	// Drain: kick every shipper so that what was stored is cut now, then
	// wait until the center's SQL store holds as many batches as the
	// agents queued.
	for _, a := range r.agents {
		a.ship.Kick()
	}
	time.Sleep(time.Second)
	drainStart := time.Now()
	lastProgress := time.Now()
	for {
		want := r.queued()
		got, _, err := r.sqlBatches(ctx)
		if err == nil && got >= want {
			break
		}
		if time.Since(drainStart) > o.Drain {
			r.say("drain: gave up after %s (center SQL holds %d of %d batches)", o.Drain, got, want)
			break
		}
		if time.Since(lastProgress) >= 10*time.Second {
			r.progress(ctx, time.Since(loadStart))
			lastProgress = time.Now()
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
	res.DrainTime = time.Since(drainStart)
	res.DrainUse = r.roleUsage().minus(afterLoad)
	stopProfile()

	// Late measurements, then what the center recorded, then queries on
	// an idle tree.
	r.m.waitAlerts(ctx, r.db, 10*time.Second)
	r.waitRoundTrips(ctx, 30*time.Second)
	if err := r.m.centerTimes(ctx, r.db, res); err != nil {
		return fmt.Errorf("read the center's times: %w", err)
	}
	if len(r.big.events) > 0 {
		for range 20 {
			r.m.queryLineage(ctx, r.op, r.agents[1].name, r.big, "idle")
		}
		if err := r.m.centerTimes(ctx, r.db, res); err != nil {
			return err
		}
	}
	res.Final = r.roleUsage()
	res.LoadAvg[1] = loadAvg()
	res.Disk = diskUsage(r.o.Dir)

	// Stop everything, then check.
	if err := r.stopAll(); err != nil {
		r.say("stop: %v", err)
		res.StopErrors = err.Error()
	}
	res.Disk.AfterStop = du(filepath.Join(o.Dir, "center"))
	if err := r.check(ctx); err != nil {
		return err
	}
	return nil
}

// startTree starts the center and the proxies and waits until they listen.
func (r *run) startTree(ctx context.Context) error {
	o := r.o
	c := &node{name: "center", role: "center", dir: filepath.Join(o.Dir, "center")}
	var err error
	if c.listen, err = freeAddr(); err != nil {
		return err
	}
	if c.api, err = freeTCP(); err != nil {
		return err
	}
	tc, err := r.t.issue(pki.RoleCenter, "center")
	if err != nil {
		return err
	}
	c.cfgPath, c.logPath = filepath.Join(c.dir, "daemoneye.yaml"), filepath.Join(o.Dir, "logs", "center.log")
	if err := writeConfig(c.cfgPath, fmt.Sprintf(`center:
  listen: %q
  data_dir: %q
  ca_dir: %q
  api:
    listen: %q
    two_person_traces: false
  metrics:
    listen: ""
  tls:
    cert: %q
    key: %q
    ca: %q
    renew_check_ms: 60000
log:
  level: warn
`, c.listen, c.dir, r.t.ca.Dir(), c.api, tc.Cert, tc.Key, tc.CA)); err != nil {
		return err
	}
	if err := r.addOperator(ctx, c.dir); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(c.logPath), 0o700); err != nil {
		return err
	}
	if err := c.start(o.Bin, r.env, r.wrap("center")); err != nil {
		return err
	}
	r.center = c
	if err := c.waitTCP(ctx, c.api, 2*time.Minute); err != nil {
		return err
	}
	if r.db, err = openSQL(filepath.Join(c.dir, "center.db")); err != nil {
		return err
	}
	oc, err := r.t.issue(pki.RoleOperator, operatorName)
	if err != nil {
		return err
	}
	if r.op, err = newOperator(operatorName, oc.Cert, oc.Key, oc.CA, c.api); err != nil {
		return err
	}

	newProxy := func(name, parent string, level int) (*node, error) {
		p := &node{name: name, role: "proxy", level: level, dir: filepath.Join(o.Dir, name)}
		var err error
		if p.listen, err = freeAddr(); err != nil {
			return nil, err
		}
		if p.metrics, err = freeTCP(); err != nil {
			return nil, err
		}
		tc, err := r.t.issue(pki.RoleProxy, name)
		if err != nil {
			return nil, err
		}
		p.cfgPath, p.logPath = filepath.Join(p.dir, "daemoneye.yaml"), filepath.Join(o.Dir, "logs", name+".log")
		if err := writeConfig(p.cfgPath, fmt.Sprintf(`proxy:
  listen: %q
  upstream: %q
  wal_path: %q
  metrics:
    listen: %q
  tls:
    cert: %q
    key: %q
    ca: %q
    renew_check_ms: 60000
log:
  level: warn
`, p.listen, parent, filepath.Join(p.dir, "wal"), p.metrics, tc.Cert, tc.Key, tc.CA)); err != nil {
			return nil, err
		}
		if err := p.start(o.Bin, r.env, r.wrap(name)); err != nil {
			return nil, err
		}
		return p, nil
	}
	for i := range o.Top {
		p, err := newProxy(fmt.Sprintf("px%d", i), c.listen, 1)
		if err != nil {
			return err
		}
		r.px1 = append(r.px1, p)
		for j := range o.Fanout {
			q, err := newProxy(fmt.Sprintf("px%d-%d", i, j), p.listen, 2)
			if err != nil {
				return err
			}
			r.px2 = append(r.px2, q)
		}
	}
	for _, p := range r.proxies() {
		if err := p.waitTCP(ctx, p.metrics, 2*time.Minute); err != nil {
			return err
		}
	}
	r.res.Proxies = len(r.px1) + len(r.px2)
	r.say("tree up: center (pid %d) and %d proxies (%d under the center, %d under those), each its own process",
		c.cmd.Process.Pid, r.res.Proxies, len(r.px1), len(r.px2))
	return nil
}

// wrap is what runs a child under `daemoneye bench profile` when the
// children's profiles are asked for.
func (r *run) wrap(name string) []string {
	if r.o.ProfileDir == "" {
		return nil
	}
	return []string{"bench", "profile", "--out", filepath.Join(r.o.ProfileDir, name+".prof")}
}

// addOperator registers the generator's analyst in the center's data
// directory before it starts, as `daemoneye operator add` does (the center
// moves the audit entry into its ledger at start).
func (r *run) addOperator(ctx context.Context, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	s, err := sqlstore.Open(filepath.Join(dir, "center.db"), nil)
	if err != nil {
		return err
	}
	defer s.Close()
	ops, err := center.OpenOperators(s.Path())
	if err != nil {
		return err
	}
	defer ops.Close()
	_, err = ops.Add(ctx, center.NewOperator{ID: operatorName, Name: "scale benchmark", Role: center.RoleAnalyst}, "loadgen", nil)
	return err
}

func (r *run) proxies() []*node { return append(append([]*node{}, r.px1...), r.px2...) }

// startAgents starts the simulated agents, spread over the level-2
// proxies, and waits until the center can route to each and its SQL store
// knows each one's running processes.
func (r *run) startAgents(ctx context.Context) error {
	o := r.o
	t0 := time.Now()
	r.agents = make([]*simAgent, 0, o.Agents)
	for i := range o.Agents {
		bigN := 0
		if i == 1 {
			bigN = o.BigHost
		}
		a, err := newSimAgent(r.t, fmt.Sprintf("ag%05d", i), r.px2[i%len(r.px2)].listen, o.BatchMS, o.Seed+uint64(i), bigN)
		if err != nil {
			return fmt.Errorf("agent %d of %d: %w", i, o.Agents, err)
		}
		r.agents = append(r.agents, a)
		if bigN > 0 {
			r.big = a.big
		}
		if (i+1)%200 == 0 {
			r.say("  %d agents started (%s)", i+1, time.Since(t0).Round(time.Millisecond))
		}
	}
	r.res.StartAgents = time.Since(t0)
	// Routable: the level-1 proxies announce every agent below them to the
	// center.
	for {
		routed := 0
		for _, p := range r.px1 {
			if m, err := scrape(ctx, p.metrics); err == nil {
				routed += int(m["daemoneye_proxy_routed_agents"])
			}
		}
		if routed >= o.Agents {
			break
		}
		if time.Since(t0) > 5*time.Minute {
			return fmt.Errorf("only %d of %d agents routable at the center after 5m", routed, o.Agents)
		}
		if err := r.alive(); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.res.Routable = time.Since(t0)
	// Known: each agent's first batch (its running processes) is in SQL.
	for {
		got, err := r.sqlHosts(ctx)
		if err == nil && got >= o.Agents {
			break
		}
		if time.Since(t0) > 10*time.Minute {
			return fmt.Errorf("the center's SQL store knows %d of %d agents after 10m", got, o.Agents)
		}
		if err := r.alive(); err != nil {
			return err
		}
		time.Sleep(200 * time.Millisecond)
	}
	r.res.Known = time.Since(t0)
	r.say("agents: %d started in %s, routable at the center after %s, their processes in its SQL store after %s",
		o.Agents, r.res.StartAgents.Round(time.Millisecond), r.res.Routable.Round(time.Millisecond), r.res.Known.Round(time.Millisecond))
	return nil
}

// startLongTrace starts the trace that runs on agent 0 for the whole load
// (its events measure the trace lane) and waits for the agent to obey it.
func (r *run) startLongTrace(ctx context.Context) error {
	if r.o.TraceEvery <= 0 {
		return nil
	}
	dur := r.o.Duration + r.o.Drain + 10*time.Minute
	if err := r.op.startTrace(ctx, longTraceID, r.agents[0].name, roots[3].key, dur); err != nil {
		return fmt.Errorf("start the trace on %s: %w", r.agents[0].name, err)
	}
	for t0 := time.Now(); ; time.Sleep(50 * time.Millisecond) {
		if id, ok := r.agents[0].traceOf(); ok && id == longTraceID {
			return nil
		}
		if time.Since(t0) > 2*time.Minute {
			return fmt.Errorf("%s did not start trace %s within 2m (refused %d)", r.agents[0].name, longTraceID, r.agents[0].refused.Load())
		}
		if err := r.alive(); err != nil {
			return err
		}
	}
}

// alive fails once a child has exited.
func (r *run) alive() error {
	for _, n := range append([]*node{r.center}, r.proxies()...) {
		if n != nil && n.exited() {
			return fmt.Errorf("%s exited: %v\n%s", n.name, n.exitErr(), n.tail())
		}
	}
	return nil
}

// queued is the batches the agents have queued so far.
func (r *run) queued() uint64 {
	var n uint64
	for _, a := range r.agents {
		n += a.ship.Stats().Batches
	}
	return n
}

// sqlBatches counts the batches (and their events) in the center's SQL store.
func (r *run) sqlBatches(ctx context.Context) (batches, events uint64, err error) {
	err = r.db.QueryRowContext(ctx, `SELECT count(*), coalesce(sum(events), 0) FROM batches`).Scan(&batches, &events)
	return batches, events, err
}

// sqlHosts counts the hosts with at least one batch in the SQL store.
func (r *run) sqlHosts(ctx context.Context) (int, error) {
	var n int
	err := r.db.QueryRowContext(ctx, `SELECT count(DISTINCT host) FROM batches`).Scan(&n)
	return n, err
}

// waitRoundTrips waits a little for the last trace requests' answers.
func (r *run) waitRoundTrips(ctx context.Context, within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		r.m.mu.Lock()
		sent := len(r.m.traceSent)
		r.m.mu.Unlock()
		var done int
		if err := r.db.QueryRowContext(ctx, `SELECT count(*) FROM traces WHERE trace_id LIKE 'loadgen-rt-%' AND started IS NOT NULL`).Scan(&done); err != nil || done >= sent {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// progress prints where the batches are: queued by the agents, waiting in
// the proxies' WALs, in the center's SQL store.
func (r *run) progress(ctx context.Context, at time.Duration) {
	var emitted, queued, waiting uint64
	for _, a := range r.agents {
		s := a.ship.Stats()
		emitted += a.emitted.Load()
		queued += s.Batches
		for _, l := range s.Queue.Lanes {
			waiting += uint64(l.Entries)
		}
	}
	var inProxies float64
	for _, p := range r.proxies() {
		if m, err := scrape(ctx, p.metrics); err == nil {
			inProxies += m["daemoneye_proxy_queue_batches"]
		}
	}
	b, e, _ := r.sqlBatches(ctx)
	u := r.roleUsage()
	r.say("%5.0fs: agents stored %d events, queued %d batches (%d not yet acked); in proxy WALs %.0f; center SQL %d batches, %d events; RSS center %s, proxies %s, agents %s; load %s",
		at.Seconds(), emitted, queued, waiting, inProxies, b, e, mib(u.Center.RSS), mib(u.Proxies().RSS), mib(u.Agents.RSS), loadAvg())
}

// profile starts this process's CPU profile when asked for; the returned
// stop may be called more than once.
func (r *run) profile() (func(), error) {
	if r.o.CPUProfile == "" {
		return func() {}, nil
	}
	f, err := os.Create(r.o.CPUProfile)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			pprof.StopCPUProfile()
			f.Close()
		})
	}, nil
}

// stopAll stops the agents, then the proxies (level 2 first), then the
// center, each draining as on SIGTERM.
func (r *run) stopAll() error {
	var errs []error
	var wg sync.WaitGroup
	var mu sync.Mutex
	for _, a := range r.agents {
		wg.Go(func() {
			if err := a.stop(); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for _, level := range [][]*node{r.px2, r.px1} {
		for _, p := range level {
			wg.Go(func() {
				if err := p.stop(time.Minute); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
	}
	if r.db != nil {
		r.db.Close()
		r.db = nil
	}
	if r.center != nil {
		if err := r.center.stop(2 * time.Minute); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// teardown stops whatever still runs (an error path) and closes handles.
func (r *run) teardown() {
	for _, a := range r.agents {
		a.stop()
	}
	for _, p := range append(r.px2, r.px1...) {
		p.stop(30 * time.Second)
	}
	if r.db != nil {
		r.db.Close()
	}
	if r.center != nil {
		r.center.stop(time.Minute)
	}
	if r.op != nil {
		r.op.Close()
	}
}

// loadAvg is the 1, 5 and 15 minute load averages, as /proc/loadavg says.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func rand64(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)) }
