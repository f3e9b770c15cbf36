package rules

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/url"
	"path/filepath"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the "sqlite" driver for OpenRecorder
)

// Alert is one rule's match on one process, deduplicated: a process alerts
// once per rule, later matches only count.
type Alert struct {
	ID        int64 // alerts.id when a SQLRecorder stored it; 0 otherwise
	RuleID    string
	Pack      string
	Title     string
	Severity  Severity
	Technique string // ATT&CK id
	Process   ProcessKey
	// Time is the match's time (Unix ns): the rule's time column when it
	// returns one, else when the engine found it.
	Time int64
	// Context holds the rule's other result columns (strings, int64,
	// float64 or nil).
	Context map[string]any
	// Trace is set when the rule's action asks for a focused trace; the
	// caller decides (policy, approvals) and starts it.
	Trace *TraceRequest
}

// TraceRequest is a rule's request for a focused trace on Alert.Process.
type TraceRequest struct {
	Depth       int
	Duration    time.Duration
	Collect     Collect
	InitiatedBy string // "rule:<id>", the traces.initiated_by convention
}

// Flags returns the traces.flags bits (bit 0 command lines, 1 network, 2
// file metadata, 3 memory).
func (t TraceRequest) Flags() uint32 { return uint32(t.Collect) }

// Run is what one evaluation of one rule produced, handed to a Recorder.
type Run struct {
	RuleID   string
	Pack     string
	At       time.Time
	Duration time.Duration
	Err      error // nil for a good run
	Disabled bool  // the engine disabled the rule after this run
	Matched  int   // rows matched (before dedup)
	// Cursors: the ids evaluated up to, per event table; nil when the run
	// failed (the cursor stays, the rows are evaluated again).
	Cursors map[string]int64
	Alerts  []Alert // one per matched row, in result order
}

// Recorder keeps what the engine must not lose across restarts: cursors,
// run status, and the alerts with their dedup. Record stores one run
// atomically (alerts, status and cursors together, so a crash cannot
// advance a cursor past alerts that were not stored) and returns the
// alerts that are new: the first for their (rule, host, pid, start).
type Recorder interface {
	Cursors(ctx context.Context, ruleID string) (map[string]int64, error)
	Record(ctx context.Context, r Run) (fresh []Alert, err error)
}

// SQLRecorder records into the center's SQL store: alerts (upserted on
// their UNIQUE (rule_id, host, pid, start), count and last_time bumped on a
// repeat), rule_runs and rule_cursors.
//
// It needs a connection that can write. sqlstore keeps its writer
// private, so OpenRecorder opens a second writer on the store's file, with
// the store's settings (WAL, busy_timeout, IMMEDIATE transactions); SQLite
// serializes it with the store's ingest on the file lock. Once sqlstore
// offers a writer, NewSQLRecorder takes it instead.
type SQLRecorder struct {
	db    *sql.DB
	owned bool
}

// OpenRecorder opens a writer on the sqlstore database at path.
func OpenRecorder(path string) (*SQLRecorder, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("rules: open recorder: %w", err)
	}
	q := url.Values{}
	for _, p := range []string{"busy_timeout(5000)", "foreign_keys(1)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	q.Set("_defensive", "1")
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return nil, fmt.Errorf("rules: open recorder: %w", err)
	}
	db.SetMaxOpenConns(1)
	var n int
	if err := db.QueryRow(`SELECT count(*) FROM sqlite_schema WHERE type = 'table' AND name IN ('alerts', 'rule_runs', 'rule_cursors')`).Scan(&n); err != nil {
		db.Close()
		return nil, fmt.Errorf("rules: open recorder %s: %w", abs, err)
	}
	if n != 3 {
		db.Close()
		return nil, fmt.Errorf("rules: open recorder %s: no alerts, rule_runs and rule_cursors tables (not a center store?)", abs)
	}
	return &SQLRecorder{db: db, owned: true}, nil
}

// NewSQLRecorder records through db, a writer on a sqlstore database.
func NewSQLRecorder(db *sql.DB) *SQLRecorder { return &SQLRecorder{db: db} }

// Close closes the writer OpenRecorder opened.
func (r *SQLRecorder) Close() error {
	if r.owned {
		return r.db.Close()
	}
	return nil
}

// Cursors reads rule_cursors.
func (r *SQLRecorder) Cursors(ctx context.Context, ruleID string) (map[string]int64, error) {
	rows, err := r.db.QueryContext(ctx, `SELECT tbl, last_id FROM rule_cursors WHERE rule_id = ?`, ruleID)
	if err != nil {
		return nil, fmt.Errorf("rules: cursors of %s: %w", ruleID, err)
	}
	defer rows.Close()
	out := map[string]int64{}
	for rows.Next() {
		var t string
		var id int64
		if err := rows.Scan(&t, &id); err != nil {
			return nil, fmt.Errorf("rules: cursors of %s: %w", ruleID, err)
		}
		out[t] = id
	}
	return out, rows.Err()
}

// Record stores a run in one transaction.
func (r *SQLRecorder) Record(ctx context.Context, run Run) (fresh []Alert, err error) {
	tx, err := r.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("rules: record %s: %w", run.RuleID, err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var lastErr any
	if run.Err != nil {
		msg := run.Err.Error()
		if run.Disabled {
			msg = "disabled: " + msg
		}
		lastErr = msg
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO rule_runs (rule_id, pack, last_run, last_ns, last_error, runs, matches)
		VALUES (?, ?, ?, ?, ?, 1, ?)
		ON CONFLICT (rule_id) DO UPDATE SET pack = excluded.pack, last_run = excluded.last_run,
			last_ns = excluded.last_ns, last_error = excluded.last_error,
			runs = runs + 1, matches = matches + excluded.matches`,
		run.RuleID, run.Pack, run.At.UnixNano(), run.Duration.Nanoseconds(), lastErr, run.Matched); err != nil {
		return nil, fmt.Errorf("rules: record %s: rule_runs: %w", run.RuleID, err)
	}
	for t, id := range run.Cursors {
		if _, err := tx.ExecContext(ctx, `INSERT INTO rule_cursors (rule_id, tbl, last_id) VALUES (?, ?, ?)
			ON CONFLICT (rule_id, tbl) DO UPDATE SET last_id = max(last_id, excluded.last_id)`, run.RuleID, t, id); err != nil {
			return nil, fmt.Errorf("rules: record %s: rule_cursors: %w", run.RuleID, err)
		}
	}
	if len(run.Alerts) > 0 {
		st, err := tx.PrepareContext(ctx, `INSERT INTO alerts (rule_id, severity, technique, host, pid, start, time, last_time, count, context)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1, ?)
			ON CONFLICT (rule_id, host, pid, start) DO UPDATE SET count = count + 1, last_time = max(last_time, excluded.last_time)
			RETURNING id, count`)
		if err != nil {
			return nil, fmt.Errorf("rules: record %s: alerts: %w", run.RuleID, err)
		}
		defer st.Close()
		for _, a := range run.Alerts {
			ctxJSON, err := contextJSON(a.Context)
			if err != nil {
				return nil, fmt.Errorf("rules: record %s: %w", run.RuleID, err)
			}
			var id, count int64
			if err := st.QueryRowContext(ctx, a.RuleID, string(a.Severity), a.Technique, a.Process.Host,
				int64(a.Process.PID), int64(a.Process.Start), a.Time, a.Time, ctxJSON).Scan(&id, &count); err != nil {
				return nil, fmt.Errorf("rules: record %s: alert %s: %w", run.RuleID, a.Process, err)
			}
			if count == 1 {
				a.ID = id
				fresh = append(fresh, a)
			}
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, fmt.Errorf("rules: record %s: commit: %w", run.RuleID, err)
	}
	return fresh, nil
}

func contextJSON(m map[string]any) (string, error) {
	if len(m) == 0 {
		return "{}", nil
	}
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("alert context: %w", err)
	}
	return string(b), nil
}

// DefaultMemoryDedup is how many (rule, process) keys a MemoryRecorder
// remembers.
const DefaultMemoryDedup = 1 << 16

type alertKey struct {
	rule string
	ProcessKey
}

// MemoryRecorder keeps cursors and the alert dedup in memory: for the agent
// (whose alerts go upstream, where the center's alerts table dedups again)
// and for an engine without a store. The dedup remembers the last max
// keys (oldest forgotten first), so its memory is bounded; a process
// forgotten and matched again alerts again.
type MemoryRecorder struct {
	mu      sync.Mutex
	cursors map[string]map[string]int64
	seen    map[alertKey]struct{}
	order   []alertKey // ring of seen keys, for eviction
	next    int
	max     int
}

// NewMemoryRecorder remembers up to max alert keys (<= 0: DefaultMemoryDedup).
func NewMemoryRecorder(max int) *MemoryRecorder {
	if max <= 0 {
		max = DefaultMemoryDedup
	}
	return &MemoryRecorder{cursors: map[string]map[string]int64{}, seen: map[alertKey]struct{}{}, max: max}
}

// Cursors returns the rule's cursors.
func (m *MemoryRecorder) Cursors(_ context.Context, ruleID string) (map[string]int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]int64{}
	for t, id := range m.cursors[ruleID] {
		out[t] = id
	}
	return out, nil
}

// Record keeps the cursors and returns the alerts not seen before.
func (m *MemoryRecorder) Record(_ context.Context, run Run) ([]Alert, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if run.Cursors != nil {
		c := m.cursors[run.RuleID]
		if c == nil {
			c = map[string]int64{}
			m.cursors[run.RuleID] = c
		}
		for t, id := range run.Cursors {
			c[t] = max(c[t], id)
		}
	}
	var fresh []Alert
	for _, a := range run.Alerts {
		k := alertKey{a.RuleID, a.Process}
		if _, ok := m.seen[k]; ok {
			continue
		}
		if len(m.order) < m.max {
			m.order = append(m.order, k)
		} else {
			delete(m.seen, m.order[m.next])
			m.order[m.next] = k
			m.next = (m.next + 1) % m.max
		}
		m.seen[k] = struct{}{}
		fresh = append(fresh, a)
	}
	return fresh, nil
}

// resetCursors forgets every cursor (the agent's window was rebuilt).
func (m *MemoryRecorder) resetCursors() {
	m.mu.Lock()
	m.cursors = map[string]map[string]int64{}
	m.mu.Unlock()
}
