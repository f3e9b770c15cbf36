package center

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/sink"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// The egress gate. Sinks are configured in center.sinks, but a configured
// sink stays off until an admin asked to enable it (POST
// /api/v1/sinks/{name}/enable, recorded in the ledger) and a second
// operator approved the request (POST /api/v1/approvals/{id}, the same
// two-person rule as traces). The approval names the sink's configuration
// digest, so a changed destination needs a new approval. With no sink
// configured the gate starts nothing: the center opens no outbound
// connection.
//
// Approvals use subject_kind 'export' (a sink is a standing export) with
// subject_id "sink:NAME@DIGEST".

// sinkPoll is how often the gate looks for new approvals and new rows.
const sinkPoll = time.Second

// AuditSinkRequest and AuditSinkEnabled are the ledger kinds of the gate.
const (
	AuditSinkRequest = "sink.request"
	AuditSinkEnabled = "sink.enabled"
)

// SinkGate runs the approved sinks and feeds them what the center records.
type SinkGate struct {
	cfgs  []config.Sink
	sql   *sqlstore.Store
	audit Auditor
	log   *slog.Logger

	mu      sync.Mutex
	running map[string]*sink.Sink

	// cursors: the last alert and event row ids offered, the last trace
	// row seen, and the last state of each trace that may still change.
	alertID  int64
	evIDs    map[string]int64
	traceRow int64
	traces   map[string]string
}

func newSinkGate(cfgs []config.Sink, sq *sqlstore.Store, audit Auditor, log *slog.Logger) *SinkGate {
	return &SinkGate{cfgs: cfgs, sql: sq, audit: audit, log: log.With("component", "sinks"), running: map[string]*sink.Sink{},
		evIDs: map[string]int64{}, traces: map[string]string{}}
}

// SinkGate is the center's egress gate (the API's sink routes).
func (c *Center) SinkGate() *SinkGate { return c.sinks }

// SinkSubject is the approval subject that enables cfg.
func SinkSubject(cfg config.Sink) string { return "sink:" + cfg.Name + "@" + sink.Digest(cfg) }

// Run starts sinks as they are approved and feeds them until ctx ends.
func (g *SinkGate) Run(ctx context.Context) error {
	if len(g.cfgs) == 0 {
		return nil
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	t := time.NewTicker(sinkPoll)
	defer t.Stop()
	for {
		for _, cfg := range g.cfgs {
			if g.sink(cfg.Name) != nil {
				continue
			}
			s, err := g.enable(ctx, cfg)
			if err != nil {
				g.log.Warn("sink not started", "sink", cfg.Name, "err", err)
				continue
			}
			if s != nil {
				wg.Go(func() {
					if err := s.Run(ctx); err != nil {
						g.log.Error("sink stopped", "sink", cfg.Name, "err", err)
					}
				})
			}
		}
		if g.anyRunning() {
			if err := g.feed(ctx); err != nil && ctx.Err() == nil {
				g.log.Warn("sink feed", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (g *SinkGate) sink(name string) *sink.Sink {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.running[name]
}

func (g *SinkGate) anyRunning() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.running) > 0
}

// enable returns a new sink when its configuration has an approved
// request, nil while it has none.
func (g *SinkGate) enable(ctx context.Context, cfg config.Sink) (*sink.Sink, error) {
	var (
		id                      int64
		requestedBy, approvedBy string
	)
	err := g.sql.ReadOnly().QueryRowContext(ctx, `SELECT id, requested_by, decided_by FROM approvals
		WHERE subject_kind = 'export' AND subject_id = ? AND decision = 'approved' ORDER BY id DESC LIMIT 1`,
		SinkSubject(cfg)).Scan(&id, &requestedBy, &approvedBy)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	s, err := sink.New(cfg, g.log)
	if err != nil {
		return nil, err
	}
	if len(g.evIDs) == 0 && !g.anyRunning() {
		// Export starts from now: rows stored before the first sink was
		// enabled are not sent.
		if err := g.startCursors(ctx); err != nil {
			return nil, err
		}
	}
	if err := g.audit.Audit(ctx, AuditSinkEnabled, "center", map[string]any{"sink": cfg.Name, "type": cfg.Type,
		"subject": SinkSubject(cfg), "approval_id": id, "requested_by": requestedBy, "approved_by": approvedBy}); err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	g.mu.Lock()
	g.running[cfg.Name] = s
	g.mu.Unlock()
	g.log.Info("sink enabled", "sink", cfg.Name, "type", cfg.Type, "approval", id, "approved_by", approvedBy)
	return s, nil
}

func (g *SinkGate) startCursors(ctx context.Context) error {
	ro := g.sql.ReadOnly()
	if err := ro.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM alerts`).Scan(&g.alertID); err != nil {
		return err
	}
	for _, tb := range sqlstore.EventTables {
		var n int64
		if err := ro.QueryRowContext(ctx, `SELECT coalesce(max(id), 0) FROM `+tb).Scan(&n); err != nil {
			return err
		}
		g.evIDs[tb] = n
	}
	rows, err := ro.QueryContext(ctx, `SELECT rowid, trace_id, state FROM traces`)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		var (
			row    int64
			id, st string
		)
		if err := rows.Scan(&row, &id, &st); err != nil {
			return err
		}
		g.traceRow = max(g.traceRow, row)
		if !traceFinal(st) {
			g.traces[id] = st
		}
	}
	return rows.Err()
}

// traceFinal reports whether a trace in state st can change no more.
func traceFinal(st string) bool {
	switch st {
	case "stopped", "expired", "refused", "failed":
		return true
	}
	return false
}

func (g *SinkGate) offer(r sink.Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range g.running {
		s.Offer(r) // never waits: a full queue drops and counts
	}
}

// feed offers what was stored since the last poll: new alerts, traces
// whose state changed, and new trace events (masked by sink's records).
func (g *SinkGate) feed(ctx context.Context) error {
	ro := g.sql.ReadOnly()
	rows, err := ro.QueryContext(ctx, `SELECT id, rule_id, severity, technique, host, pid, start, time, last_time, count,
		context, state, coalesce(trace_id, '') FROM alerts WHERE id > ? ORDER BY id LIMIT 5000`, g.alertID)
	if err != nil {
		return err
	}
	for rows.Next() {
		var a sink.Alert
		if err := rows.Scan(&a.ID, &a.RuleID, &a.Severity, &a.Technique, &a.Host, &a.PID, &a.Start, &a.Time, &a.LastTime,
			&a.Count, &a.Context, &a.State, &a.TraceID); err != nil {
			rows.Close()
			return err
		}
		g.alertID = a.ID
		g.offer(sink.AlertRecord(a))
	}
	if err := rows.Close(); err != nil {
		return err
	}

	// Traces: new rows, and those whose state could still change.
	open, err := json.Marshal(slices.Collect(maps.Keys(g.traces)))
	if err != nil {
		return err
	}
	rows, err = ro.QueryContext(ctx, `SELECT rowid, trace_id, host, pid, start, depth, state, created, coalesce(started, 0),
		coalesce(stopped, 0), initiated_by, coalesce(alert_id, 0) FROM traces
		WHERE rowid > ? OR trace_id IN (SELECT value FROM json_each(?))`, g.traceRow, string(open))
	if err != nil {
		return err
	}
	for rows.Next() {
		var (
			t   sink.Trace
			row int64
		)
		if err := rows.Scan(&row, &t.TraceID, &t.Host, &t.PID, &t.Start, &t.Depth, &t.State, &t.Created, &t.Started, &t.Stopped,
			&t.InitiatedBy, &t.AlertID); err != nil {
			rows.Close()
			return err
		}
		g.traceRow = max(g.traceRow, row)
		if last, seen := g.traces[t.TraceID]; !seen || last != t.State {
			g.offer(sink.TraceRecord(t))
		}
		if traceFinal(t.State) {
			delete(g.traces, t.TraceID)
		} else {
			g.traces[t.TraceID] = t.State
		}
	}
	if err := rows.Close(); err != nil {
		return err
	}

	// New trace events: which rows are new, then those rows' batches of
	// each trace rebuilt and flattened (TraceEventsIn), filtered to the rows.
	type loc struct {
		host     string
		batchSeq uint64
		idx      int
	}
	fresh := map[string]map[loc]bool{}
	for _, tb := range sqlstore.EventTables {
		rows, err := ro.QueryContext(ctx, `SELECT id, trace_id, host, batch_seq, idx FROM `+tb+`
			WHERE id > ? AND trace_id IS NOT NULL ORDER BY id LIMIT 5000`, g.evIDs[tb])
		if err != nil {
			return err
		}
		for rows.Next() {
			var (
				id, bs int64
				tid    string
				l      loc
			)
			if err := rows.Scan(&id, &tid, &l.host, &bs, &l.idx); err != nil {
				rows.Close()
				return err
			}
			l.batchSeq = uint64(bs)
			g.evIDs[tb] = id
			if fresh[tid] == nil {
				fresh[tid] = map[loc]bool{}
			}
			fresh[tid][l] = true
		}
		if err := rows.Close(); err != nil {
			return err
		}
	}
	for tid, locs := range fresh {
		batches := map[sqlstore.BatchRef]bool{}
		for l := range locs {
			batches[sqlstore.BatchRef{Host: l.host, Seq: l.batchSeq}] = true
		}
		evs, err := g.sql.TraceEventsIn(ctx, tid, slices.Collect(maps.Keys(batches)))
		if err != nil {
			return err
		}
		for _, e := range evs {
			if locs[loc{e.Host, e.BatchSeq, e.Idx}] {
				g.offer(sink.TraceEventRecord(e))
			}
		}
	}
	return nil
}

// sinkView is a configured sink as the API shows it.
type sinkView struct {
	Name    string      `json:"name"`
	Type    string      `json:"type"`
	Subject string      `json:"subject"` // what an approval must name
	State   string      `json:"state"`   // off, pending, enabled
	Stats   *sink.Stats `json:"stats,omitempty"`
}

// Views lists the configured sinks with their state and counters.
func (g *SinkGate) Views(ctx context.Context) ([]sinkView, error) {
	out := []sinkView{}
	for _, cfg := range g.cfgs {
		v := sinkView{Name: cfg.Name, Type: cfg.Type, Subject: SinkSubject(cfg), State: "off"}
		if s := g.sink(cfg.Name); s != nil {
			st := s.Stats()
			v.State, v.Stats = "enabled", &st
		} else {
			var n int
			if err := g.sql.ReadOnly().QueryRowContext(ctx, `SELECT count(*) FROM approvals WHERE subject_kind = 'export'
				AND subject_id = ? AND decision IN ('pending', 'approved')`, v.Subject).Scan(&n); err != nil {
				return nil, err
			}
			if n > 0 {
				v.State = "pending"
			}
		}
		out = append(out, v)
	}
	return out, nil
}

func (g *SinkGate) config(name string) (config.Sink, bool) {
	for _, c := range g.cfgs {
		if c.Name == name {
			return c, true
		}
	}
	return config.Sink{}, false
}

// ---- API

// sinkGater is what the sink routes need of the center.
type sinkGater interface{ SinkGate() *SinkGate }

func (a *API) gate() (*SinkGate, error) {
	sg, ok := a.center.(sinkGater)
	if !ok || sg.SinkGate() == nil {
		return nil, errorf(http.StatusNotFound, "this center has no sinks")
	}
	return sg.SinkGate(), nil
}

func (a *API) listSinks(w http.ResponseWriter, r *http.Request, _ *principal) error {
	g, err := a.gate()
	if err != nil {
		return err
	}
	vs, err := g.Views(r.Context())
	if err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"sinks": vs})
	return nil
}

type enableSinkReq struct {
	Reason string `json:"reason"`
}

// enableSink records an admin's request to enable a configured sink; it
// takes effect once another operator approves it.
func (a *API) enableSink(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req enableSinkReq
	if err := decode(r, &req); err != nil {
		return err
	}
	reason, err := checkReason("enabling a sink", req.Reason)
	if err != nil {
		return err
	}
	g, err := a.gate()
	if err != nil {
		return err
	}
	cfg, ok := g.config(r.PathValue("name"))
	if !ok {
		return errorf(http.StatusNotFound, "no sink %q in center.sinks", r.PathValue("name"))
	}
	subject := SinkSubject(cfg)
	var id int64
	err = a.change(r.Context(), AuditSinkRequest, p, func(tx *sql.Tx) (map[string]any, error) {
		var n int
		if err := tx.QueryRowContext(r.Context(), `SELECT count(*) FROM approvals WHERE subject_kind = 'export' AND subject_id = ?
			AND decision IN ('pending', 'approved')`, subject).Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			return nil, errorf(http.StatusConflict, "sink %s is already requested or enabled (%s)", cfg.Name, subject)
		}
		res, err := tx.ExecContext(r.Context(), `INSERT INTO approvals (subject_kind, subject_id, requested_by, requested_at, reason)
			VALUES ('export', ?, ?, ?, ?)`, subject, p.ID, a.now().UnixNano(), reason)
		if err != nil {
			return nil, err
		}
		if id, err = res.LastInsertId(); err != nil {
			return nil, err
		}
		return map[string]any{"sink": cfg.Name, "type": cfg.Type, "subject": subject, "approval_id": id, "reason": reason}, nil
	})
	if err != nil {
		return err
	}
	a.reply(w, http.StatusAccepted, map[string]any{"sink": cfg.Name, "subject": subject, "approval_id": id, "state": "pending"})
	return nil
}
