// Package agent is the host role: it runs a capture Source, seeds the process
// table from /proc, caps and batches events into the local Pebble store, and
// answers read-only inspection requests on a unix socket in its data directory.
// Later stages ship the stored batches upstream and obey TraceCommands.
package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sync/errgroup"
	"golang.org/x/time/rate"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store"
)

// SocketName is the inspection socket inside the data directory.
const SocketName = "agent.sock"

// Agent is the running host role.
type Agent struct {
	cfg    config.Agent
	log    *slog.Logger
	store  *store.Local
	src    capture.Source
	ship   *Shipper    // nil when standalone
	tracer *tracer     // nil when standalone
	rules  *agentRules // nil when agent.rules.enabled is false

	ready     chan struct{} // closed once the table is seeded
	seeded    atomic.Int64  // processes seeded at start
	seedTime  atomic.Int64  // ns spent seeding
	stored    atomic.Uint64 // events written to the store
	rateLost  atomic.Uint64
	storeErrs atomic.Uint64

	revealMu sync.Mutex // serialises the reveal audit file
}

// New opens the data directory and the store, and picks the capture source.
func New(cfg config.Agent, log *slog.Logger) (*Agent, error) {
	log = log.With("component", "agent")
	if cfg.DataDir == "" {
		return nil, errors.New("agent: data_dir is empty")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("agent: create data dir: %w", err)
	}
	if _, ok := os.LookupEnv("GOMEMLIMIT"); !ok {
		// A soft limit keeps RSS bounded under bursts; the agent's target is
		// below 64 MiB and the Go runtime otherwise grows the heap freely.
		debug.SetMemoryLimit(48 << 20)
	}
	st, err := store.OpenLocal(filepath.Join(cfg.DataDir, "store"), store.LocalOptions{
		RetainAge:    cfg.Retention.MaxAge,
		RetainBytes:  int64(cfg.Retention.MaxBytes),
		ExitedRetain: cfg.Retention.ExitedAge,
	}, log)
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var ship *Shipper
	if !cfg.Standalone {
		if ship, err = NewShipper(cfg, st, nil, log); err != nil {
			st.Close()
			return nil, err
		}
	}
	src, err := OpenSource(cfg.Capture, sourceOptions(cfg), log)
	if err != nil {
		if ship != nil {
			ship.wal.Close()
		}
		st.Close()
		return nil, fmt.Errorf("agent: %w", err)
	}
	a := &Agent{cfg: cfg, log: log, store: st, src: src, ship: ship, ready: make(chan struct{})}
	if ship != nil {
		// Commands arrive only through the uplink: a standalone agent has
		// no one to take them from.
		a.tracer = newTracer(cfg.Trace, ship.id.Name, ship.id.Verifier, src, ship.wal, st, log)
		ship.handler = a.tracer.handle
		if p, ok := src.(interface{ SetTracePolicy(capture.TracePolicy) }); ok {
			p.SetTracePolicy(a.tracer.policy())
		}
	}
	return a, nil
}

func sourceOptions(cfg config.Agent) capture.Options {
	o := capture.DefaultOptions()
	o.ArgvMaxBytes = cfg.Baseline.ArgvMaxBytes
	o.RingBytes = int(cfg.Baseline.RingBytes)
	o.Scope = cfg.Scope
	if cfg.Baseline.ProcRoot != "" {
		o.ProcRoot = cfg.Baseline.ProcRoot
	}
	return o
}

// OpenSource returns the capture source for mode (auto, ebpf or proc). In auto
// mode it tries eBPF first and logs which source it picked and why.
func OpenSource(mode string, opts capture.Options, log *slog.Logger) (capture.Source, error) {
	switch mode {
	case "ebpf":
		return capture.NewEBPF(opts, log)
	case "proc":
		return capture.NewProc(opts, log)
	case "auto", "":
		s, err := capture.NewEBPF(opts, log)
		if err == nil {
			log.Info("capture source selected", "source", "ebpf", "reason", "eBPF programs loaded and attached")
			return s, nil
		}
		p, perr := capture.NewProc(opts, log)
		if perr != nil {
			return nil, fmt.Errorf("no capture source works here: ebpf: %v; proc: %w", err, perr)
		}
		log.Warn("capture source selected", "source", "proc", "reason", "eBPF unavailable: "+err.Error())
		return p, nil
	}
	return nil, fmt.Errorf("unknown capture mode %q (want auto, ebpf or proc)", mode)
}

// Source is the capture source in use.
func (a *Agent) Source() capture.Source { return a.src }

// Store is the agent's local store.
func (a *Agent) Store() *store.Local { return a.store }

// Ready is closed once the process table has been seeded from /proc.
func (a *Agent) Ready() <-chan struct{} { return a.ready }

// Run captures until ctx ends, then drains what it holds and closes.
func (a *Agent) Run(ctx context.Context) error {
	defer a.close()
	events := make(chan capture.Event, a.cfg.Baseline.QueueEvents)

	// The source starts before the /proc scan so that nothing happening
	// during the scan is missed; its events wait in the queue meanwhile.
	srcCtx, stopSrc := context.WithCancel(context.Background())
	srcDone := make(chan error, 1)
	go func() { srcDone <- a.src.Run(srcCtx, events) }()
	stopSource := func() error {
		stopSrc()
		return <-srcDone
	}

	procs, err := a.seed()
	if err != nil {
		stopSource()
		return err
	}
	if a.cfg.Rules.Enabled {
		host := a.cfg.ID
		if a.ship != nil {
			host = a.ship.AgentID()
		}
		if a.rules, err = a.startRules(ctx, host, events); err != nil {
			stopSource()
			return fmt.Errorf("agent: rules: %w", err)
		}
		if err := a.rules.eng.Seed(procs); err != nil {
			a.log.Warn("rule window seed", "err", err)
		}
	}
	if err := a.shipSeed(procs); err != nil {
		stopSource()
		return err
	}
	procs = nil // the table is in the store now
	sock, err := a.listenSocket()
	if err != nil {
		stopSource()
		return err
	}
	if a.tracer != nil {
		a.tracer.resume(events)
	}
	close(a.ready) // seeded and answering on its socket
	g, gctx := errgroup.WithContext(ctx)
	if a.tracer != nil {
		g.Go(func() error { return a.tracer.run(gctx) })
	}
	if a.ship != nil {
		g.Go(func() error { return a.reportHealth(gctx) })
	}
	if a.rules != nil {
		g.Go(func() error { return a.rules.run(gctx, a.log) })
	}
	g.Go(func() error { return a.pipeline(gctx, events, stopSource) })
	g.Go(func() error { return a.serveSocket(gctx, sock) })
	if a.cfg.Metrics.Listen != "" {
		g.Go(func() error { return a.serveMetrics(gctx) })
	}
	g.Go(func() error { return a.retention(gctx) })
	if a.ship != nil {
		g.Go(func() error { return a.ship.Run(gctx) })
	}
	return g.Wait()
}

func (a *Agent) close() {
	if c, ok := a.src.(io.Closer); ok {
		if err := c.Close(); err != nil {
			a.log.Warn("close capture source", "err", err)
		}
	}
	if err := a.store.Close(); err != nil {
		a.log.Warn("close store", "err", err)
	}
	os.Remove(filepath.Join(a.cfg.DataDir, SocketName))
}

func (a *Agent) seed() ([]capture.Process, error) {
	start := time.Now()
	procs, err := capture.SeedOptions(sourceOptions(a.cfg))
	if err != nil {
		return nil, fmt.Errorf("agent: seed process table: %w", err)
	}
	if err := a.store.Seed(procs); err != nil {
		return nil, fmt.Errorf("agent: seed process table: %w", err)
	}
	d := time.Since(start)
	a.seeded.Store(int64(len(procs)))
	a.seedTime.Store(int64(d))
	a.log.Info("process table seeded", "processes", len(procs), "took", d.Round(time.Millisecond), "source", a.src.Name())
	return procs, nil
}

// shipSeed stores one exec event (source "seed") per user process found
// running at start, so the center learns the processes that predate the
// agent (a web server started at boot) and its lineage reaches them. Kernel
// threads (no executable) are left out. Called before the pipeline runs:
// the store has one writer.
func (a *Agent) shipSeed(procs []capture.Process) error {
	now := time.Now().UnixNano()
	batch := make([]capture.Event, 0, a.cfg.Stream.BatchMaxEvents)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		if _, _, err := a.store.Append(batch); err != nil {
			return fmt.Errorf("agent: store the seeded processes: %w", err)
		}
		a.stored.Add(uint64(len(batch)))
		batch = batch[:0]
		return nil
	}
	for i := range procs {
		p := &procs[i]
		if p.Exec.Exe == "" {
			continue
		}
		x := p.Exec
		t := p.StartTime
		if t == 0 {
			t = now
		}
		batch = append(batch, capture.Event{Time: t, Kind: capture.KindExec, Proc: p.Key, Parent: p.Parent, Comm: p.Comm,
			Source: "seed", Exec: &x})
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// traceFlushDelay is the longest a trace event waits in the pipeline
// before it is stored and handed to the uplink: a few events gather into
// one store append, and the trace lane's latency stays far below the
// baseline's batch_max_ms.
const traceFlushDelay = 10 * time.Millisecond

// pipeline caps the baseline event rate and writes batches to the store.
// Exits and closes are never rate-limited: they are bounded by the forks and
// connects that were let through, and dropping them would leave the table
// wrong. Trace events have their own caps (capture applies them).
func (a *Agent) pipeline(ctx context.Context, events chan capture.Event, stopSource func() error) error {
	max := a.cfg.Baseline.MaxEventsPerSec
	lim := rate.NewLimiter(rate.Limit(max), max)
	batch := make([]capture.Event, 0, a.cfg.Stream.BatchMaxEvents)
	traceTimer := time.NewTimer(time.Hour)
	traceTimer.Stop()
	defer traceTimer.Stop()
	var traceDue <-chan time.Time // armed while a trace event waits
	flush := func() {
		if len(batch) == 0 {
			return
		}
		if _, _, err := a.store.Append(batch); err != nil {
			a.storeErrs.Add(1)
			a.log.Error("store events", "events", len(batch), "err", err)
		} else {
			a.stored.Add(uint64(len(batch)))
			if a.ship != nil {
				a.ship.Kick()
			}
			if a.rules != nil {
				a.rules.offer(batch)
			}
		}
		batch = batch[:0]
	}
	add := func(ev capture.Event) {
		// Trace events passed their trace's own caps in capture; dropping
		// one here would leave a gap in its TraceSeq.
		if ev.TraceID == "" && ev.Kind != capture.KindExit && ev.Kind != capture.KindClose && ev.Kind != capture.KindAlert && !lim.Allow() {
			a.rateLost.Add(1)
			return
		}
		batch = append(batch, ev)
		if len(batch) >= cap(batch) {
			flush()
		} else if ev.TraceID != "" && traceDue == nil {
			// Trace events ride the trace lane: they wait for the next
			// batch_max_ms tick only as long as traceFlushDelay.
			traceTimer.Reset(traceFlushDelay)
			traceDue = traceTimer.C
		}
	}
	tick := time.NewTicker(time.Duration(a.cfg.Stream.BatchMaxMS) * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case ev := <-events:
			add(ev)
		case <-traceDue:
			traceDue = nil
			flush()
		case <-tick.C:
			flush()
		case <-ctx.Done():
			// Drain: stop the source, then store what it already queued.
			err := stopSource()
			for {
				select {
				case ev := <-events:
					add(ev)
					continue
				default:
				}
				break
			}
			flush()
			if err != nil && !errors.Is(err, context.Canceled) {
				return fmt.Errorf("capture source: %w", err)
			}
			return nil
		}
	}
}

func (a *Agent) retention(ctx context.Context) error {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			st, err := a.store.Retain(now)
			if err != nil {
				a.log.Warn("retention", "err", err)
				continue
			}
			a.log.Debug("retention", "stats", fmt.Sprintf("%+v", st))
		}
	}
}

// Lost returns every loss counter: the source's and the agent's own.
func (a *Agent) Lost() map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range a.src.Lost() {
		out[k] += v
	}
	out[capture.LossRateLimit] += a.rateLost.Load()
	return out
}

func (a *Agent) serveMetrics(ctx context.Context) error {
	reg := prometheus.NewRegistry()
	reg.MustRegister(&lostCollector{a: a})
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	ln, err := net.Listen("tcp", a.cfg.Metrics.Listen)
	if err != nil {
		// Health figures are not worth failing the sensor for.
		a.log.Warn("metrics listener unavailable", "listen", a.cfg.Metrics.Listen, "err", err)
		return nil
	}
	return serveHTTP(ctx, ln, &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second})
}

// serveHTTP serves until ctx ends, then shuts down gracefully.
func serveHTTP(ctx context.Context, ln net.Listener, srv *http.Server) error {
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

var (
	lostDesc   = prometheus.NewDesc("daemoneye_capture_lost_events_total", "Events lost by the agent, by cause.", []string{"cause", "source"}, nil)
	storedDesc = prometheus.NewDesc("daemoneye_agent_events_stored_total", "Events written to the local store.", nil, nil)
	seededDesc = prometheus.NewDesc("daemoneye_agent_seeded_processes", "Processes read from /proc at start.", nil, nil)
	storeErr   = prometheus.NewDesc("daemoneye_agent_store_errors_total", "Failed writes to the local store.", nil, nil)
)

type lostCollector struct{ a *Agent }

func (c *lostCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- lostDesc
	ch <- storedDesc
	ch <- seededDesc
	ch <- storeErr
}

func (c *lostCollector) Collect(ch chan<- prometheus.Metric) {
	for cause, n := range c.a.Lost() {
		ch <- prometheus.MustNewConstMetric(lostDesc, prometheus.CounterValue, float64(n), cause, c.a.src.Name())
	}
	ch <- prometheus.MustNewConstMetric(storedDesc, prometheus.CounterValue, float64(c.a.stored.Load()))
	ch <- prometheus.MustNewConstMetric(seededDesc, prometheus.GaugeValue, float64(c.a.seeded.Load()))
	ch <- prometheus.MustNewConstMetric(storeErr, prometheus.CounterValue, float64(c.a.storeErrs.Load()))
}
