package rules

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Config tunes an Engine. Zero values take the defaults.
type Config struct {
	// Timeout bounds one rule's statement per run (default 2s). A rule
	// that runs longer is interrupted and the run counts as a failure.
	Timeout time.Duration
	// Interval between passes when nobody pokes (default 1s).
	Interval time.Duration
	// MaxFailures: after this many consecutive failed runs (errors or
	// timeouts) a rule is disabled until the engine is rebuilt (default 3).
	MaxFailures int
	// ChunkRows bounds the new rows of each event table one run of one
	// rule sees (default 50,000). A backlog (a new rule over an old store)
	// is worked through in chunks, one pass after another.
	ChunkRows int64
	// MaxMatches bounds the rows one run reads from a rule's result
	// (default 10,000); the rest of that chunk is not alerted on, and the
	// run says so in its error.
	MaxMatches int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	if c.Timeout <= 0 {
		c.Timeout = 2 * time.Second
	}
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.MaxFailures <= 0 {
		c.MaxFailures = 3
	}
	if c.ChunkRows <= 0 {
		c.ChunkRows = 50_000
	}
	if c.MaxMatches <= 0 {
		c.MaxMatches = 10_000
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// EngineOptions are what an Engine runs with.
type EngineOptions struct {
	// DB is where rules read. On the center: the store's read-only pool
	// (sqlstore.Store.ReadOnly), which refuses writes itself.
	DB *sql.DB
	// Target selects the rules that run here: Center or Agent.
	Target Target
	// Recorder keeps cursors, status and alert dedup; nil: a
	// MemoryRecorder. On the center: OpenRecorder(store.Path()).
	Recorder Recorder
	// OnAlert is called, from the engine's goroutine, once per new alert
	// (not for repeats). It should not block for long.
	OnAlert func(Alert)
	Log     *slog.Logger
	Config  Config

	// guarded: install the read-only authorizer around each rule (DB can
	// write: the agent's window).
	guarded bool
	// beforePass, if set, reports that the data under the cursors was
	// replaced (the agent's window was rebuilt): cursors restart at 0.
	beforePass func() bool
}

// RuleStatus is a rule's health, as Status reports it.
type RuleStatus struct {
	ID, Pack     string
	Runs         int64 // successful and failed
	Failures     int64 // all failed runs, timeouts included
	Timeouts     int64
	Consecutive  int   // failures since the last good run
	Matched      int64 // rows matched
	Alerts       int64 // new alerts raised
	LastRun      time.Time
	LastDuration time.Duration
	LastError    string
	Disabled     bool
	Cursors      map[string]int64
}

type ruleState struct {
	c      *compiled
	cur    marks
	loaded bool
	st     RuleStatus
}

// Engine evaluates rules incrementally: on each pass every active rule
// runs once over the rows added since its cursor, and its cursor advances
// to what it saw. See the package documentation for the contract.
type Engine struct {
	o     EngineOptions
	cfg   Config
	log   *slog.Logger
	poke  chan struct{}
	runMu sync.Mutex // one pass at a time

	mu    sync.Mutex // guards rules' status
	rules []*ruleState
}

// NewEngine builds an engine over the rules of packs that run on
// o.Target. Rule ids must be unique across the packs. A rule whose SQL is
// refused (shape, or it does not prepare on o.DB: an unknown column on this
// store's schema) starts disabled, with the reason in its status; the
// others run.
func NewEngine(ctx context.Context, o EngineOptions, packs ...*Pack) (*Engine, error) {
	if o.DB == nil {
		return nil, errors.New("rules: engine: no database")
	}
	if o.Target == 0 {
		o.Target = Center
	}
	if o.Recorder == nil {
		o.Recorder = NewMemoryRecorder(0)
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	e := &Engine{o: o, cfg: o.Config.withDefaults(), log: o.Log.With("component", "rules"), poke: make(chan struct{}, 1)}
	rs, err := e.build(ctx, packs)
	if err != nil {
		return nil, err
	}
	e.rules = rs
	return e, nil
}

// build compiles the rules of packs that run on the engine's target. Rule
// ids must be unique across the packs; a rule whose SQL is refused starts
// disabled, with the reason in its status.
func (e *Engine) build(ctx context.Context, packs []*Pack) ([]*ruleState, error) {
	var out []*ruleState
	seen := map[string]string{}
	for _, p := range packs {
		for _, r := range p.RulesFor(e.o.Target) {
			if other, dup := seen[r.ID]; dup {
				return nil, fmt.Errorf("rules: engine: rule %q is in packs %q and %q", r.ID, other, p.Name)
			}
			seen[r.ID] = p.Name
			rs := &ruleState{st: RuleStatus{ID: r.ID, Pack: p.Name}}
			c, err := compile(p.Name, r)
			if err == nil {
				c.pack = p.Name
				err = e.prepare(ctx, c)
			}
			if err != nil {
				rs.c = &compiled{Rule: r, pack: p.Name}
				rs.st.Disabled = true
				rs.st.LastError = err.Error()
				e.log.Error("rule refused", "rule", r.ID, "pack", p.Name, "err", err)
			} else {
				rs.c = c
			}
			out = append(out, rs)
		}
	}
	return out, nil
}

// prepare compiles the rule's statement on the engine's database, which
// catches what changed between Check and here: an older store without a
// column the rule names.
func (e *Engine) prepare(ctx context.Context, c *compiled) error {
	conn, err := e.o.DB.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if e.o.guarded {
		d, unguard, err := guard(conn)
		if err != nil {
			return err
		}
		defer unguard() //nolint:errcheck // the connection's next user sees the error if any
		st, err := conn.PrepareContext(ctx, c.query)
		if err != nil {
			return describeSQLError(explain(ctx, d, err))
		}
		return st.Close()
	}
	st, err := conn.PrepareContext(ctx, c.query)
	if err != nil {
		return describeSQLError(err)
	}
	return st.Close()
}

// Poke asks for a pass now (after an ingested batch). It never blocks.
func (e *Engine) Poke() {
	select {
	case e.poke <- struct{}{}:
	default:
	}
}

// Run evaluates rules every Interval and whenever poked, until ctx ends.
func (e *Engine) Run(ctx context.Context) error {
	t := time.NewTicker(e.cfg.Interval)
	defer t.Stop()
	for {
		pending, err := e.RunOnce(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			e.log.Warn("rule pass failed", "err", err)
		}
		if pending {
			continue // a backlog: next chunk right away
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case <-e.poke:
		}
	}
}

// RunOnce runs every active rule once over its new rows. pending reports
// that some rule stopped at its chunk bound and has more rows waiting.
// Rule failures are not errors here: they are counted in Status (and in
// the recorder); err is for the database being unusable or ctx ending.
func (e *Engine) RunOnce(ctx context.Context) (pending bool, err error) {
	e.runMu.Lock()
	defer e.runMu.Unlock()
	if e.o.beforePass != nil && e.o.beforePass() {
		e.mu.Lock()
		for _, rs := range e.rules {
			rs.cur, rs.loaded = marks{}, true
		}
		e.mu.Unlock()
	}
	var errs []error
	for _, rs := range e.rules {
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		e.mu.Lock()
		disabled := rs.st.Disabled
		e.mu.Unlock()
		if disabled {
			continue
		}
		more, err := e.runRule(ctx, rs)
		pending = pending || more
		if err != nil {
			errs = append(errs, err)
		}
	}
	return pending, errors.Join(errs...)
}

// runRule runs one rule. The error is for infrastructure (no connection,
// recorder failure); the rule's own failure is recorded, not returned.
func (e *Engine) runRule(ctx context.Context, rs *ruleState) (pending bool, err error) {
	c := rs.c
	if !rs.loaded {
		m, err := e.o.Recorder.Cursors(ctx, c.ID)
		if err != nil {
			return false, err
		}
		e.mu.Lock()
		rs.cur, rs.loaded = marksOf(m), true
		e.mu.Unlock()
	}
	e.mu.Lock()
	cur := rs.cur
	e.mu.Unlock()
	conn, err := e.o.DB.Conn(ctx)
	if err != nil {
		return false, fmt.Errorf("rules: %s: %w", c.ID, err)
	}
	defer conn.Close()
	if err := limitConn(conn); err != nil {
		return false, fmt.Errorf("rules: %s: %w", c.ID, err)
	}
	newest, err := maxIDs(ctx, conn)
	if err != nil {
		return false, fmt.Errorf("rules: %s: newest ids: %w", c.ID, err)
	}
	until := newest
	for i := range until {
		if until[i] < cur[i] {
			// The table was emptied and ids restarted (not with AUTOINCREMENT,
			// but a rebuilt store could): start over rather than stall.
			cur[i] = 0
		}
		if until[i]-cur[i] > e.cfg.ChunkRows {
			until[i] = cur[i] + e.cfg.ChunkRows
			pending = true
		}
	}
	if until == cur {
		return false, nil // nothing new
	}

	start := e.cfg.Now()
	qctx, cancel := context.WithTimeout(ctx, e.cfg.Timeout)
	ms, truncated, rerr := c.evaluate(qctx, conn, cur, until, e.cfg.MaxMatches, e.o.guarded)
	cancel()
	dur := e.cfg.Now().Sub(start)
	if ctx.Err() != nil {
		return false, ctx.Err() // shutting down: not the rule's fault
	}

	run := Run{RuleID: c.ID, Pack: c.pack, At: start, Duration: dur, Err: rerr, Matched: len(ms)}
	e.mu.Lock()
	rs.st.Runs++
	rs.st.LastRun, rs.st.LastDuration = start, dur
	if rerr != nil {
		rs.st.Failures++
		rs.st.Consecutive++
		if errors.Is(rerr, ErrTimeout) {
			rs.st.Timeouts++
		}
		rs.st.LastError = rerr.Error()
		if rs.st.Consecutive >= e.cfg.MaxFailures {
			rs.st.Disabled = true
			run.Disabled = true
		}
	}
	e.mu.Unlock()
	if rerr != nil {
		if run.Disabled {
			e.log.Error("rule disabled after consecutive failures", "rule", c.ID, "pack", c.pack,
				"failures", e.cfg.MaxFailures, "err", rerr)
		} else {
			e.log.Warn("rule failed", "rule", c.ID, "pack", c.pack, "err", rerr)
		}
		if _, err := e.o.Recorder.Record(ctx, run); err != nil {
			return false, err
		}
		return false, nil
	}

	now := e.cfg.Now().UnixNano()
	run.Cursors = until.Map()
	run.Alerts = make([]Alert, 0, len(ms))
	for _, m := range ms {
		a := Alert{RuleID: c.ID, Pack: c.pack, Title: c.Title, Severity: c.Severity, Technique: c.Attack,
			Process: m.key, Time: m.time, Context: m.context}
		if a.Time == 0 {
			a.Time = now
		}
		if t := c.Action.Trace; t != nil {
			a.Trace = &TraceRequest{Depth: t.Depth, Duration: t.Duration, Collect: t.Collect, InitiatedBy: "rule:" + c.ID}
		}
		run.Alerts = append(run.Alerts, a)
	}
	if truncated {
		run.Err = fmt.Errorf("more than %d matches in one run: the rest of this chunk was not alerted on", e.cfg.MaxMatches)
		e.log.Warn("rule matched too much", "rule", c.ID, "max", e.cfg.MaxMatches)
	}
	fresh, err := e.o.Recorder.Record(ctx, run)
	if err != nil {
		return false, err // cursor stays: the rows are evaluated again
	}
	e.mu.Lock()
	rs.cur = until
	rs.st.Consecutive = 0
	rs.st.Matched += int64(len(ms))
	rs.st.Alerts += int64(len(fresh))
	if run.Err != nil {
		rs.st.LastError = run.Err.Error()
	} else {
		rs.st.LastError = ""
	}
	e.mu.Unlock()
	if e.o.OnAlert != nil {
		for _, a := range fresh {
			e.o.OnAlert(a)
		}
	}
	return pending, nil
}

// Status reports every rule's health, in pack order.
func (e *Engine) Status() []RuleStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]RuleStatus, len(e.rules))
	for i, rs := range e.rules {
		out[i] = rs.st
		out[i].Cursors = rs.cur.Map()
	}
	return out
}

// minCursors is, per event table, the lowest cursor of the active rules:
// rows at or below it have been evaluated by every rule.
func (e *Engine) minCursors() marks {
	e.mu.Lock()
	defer e.mu.Unlock()
	var m marks
	first := true
	for _, rs := range e.rules {
		if rs.st.Disabled {
			continue
		}
		for i := range m {
			if first || rs.cur[i] < m[i] {
				m[i] = rs.cur[i]
			}
		}
		first = false
	}
	if first { // no active rule: everything counts as evaluated
		for i := range m {
			m[i] = 1<<63 - 1
		}
	}
	return m
}
