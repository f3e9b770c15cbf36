package rules

import (
	"context"
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

var agentKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

// center is a real center store with the rule engine's recorder on it.
type center struct {
	st   *sqlstore.Store
	rec  *SQLRecorder
	path string
}

func openCenter(t *testing.T) *center {
	t.Helper()
	path := filepath.Join(t.TempDir(), "center.db")
	st, err := sqlstore.Open(path, nil)
	if err != nil {
		t.Fatalf("sqlstore.Open: %v", err)
	}
	rec, err := OpenRecorder(path)
	if err != nil {
		t.Fatalf("OpenRecorder: %v", err)
	}
	t.Cleanup(func() {
		rec.Close()
		st.Close()
	})
	return &center{st: st, rec: rec, path: path}
}

// ingest seals a batch as an agent would and stores it as the center does.
func (c *center) ingest(t *testing.T, agent string, seq uint64, events ...capture.Event) {
	t.Helper()
	for i := range events {
		events[i].Seq = seq*1000 + uint64(i)
	}
	raw, err := wire.SealBatch(agent, seq, events, agentKey, false)
	if err != nil {
		t.Fatalf("SealBatch: %v", err)
	}
	b, err := wire.OpenBatch(raw, agentKey.Public().(ed25519.PublicKey), wire.DefaultLimits())
	if err != nil {
		t.Fatalf("OpenBatch: %v", err)
	}
	if err := c.st.IngestBatch(context.Background(), b); err != nil {
		t.Fatalf("IngestBatch: %v", err)
	}
}

func (c *center) count(t *testing.T, q string, args ...any) int {
	t.Helper()
	var n int
	if err := c.st.ReadOnly().QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func key(pid uint32, start uint64) capture.ProcKey { return capture.ProcKey{PID: pid, Start: start} }

func fork(t int64, child, parent capture.ProcKey, comm string) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindFork, Proc: child, Parent: parent, Comm: comm, Source: "ebpf"}
}

func exec(t int64, p, parent capture.ProcKey, uid uint32, exe string, argv ...string) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindExec, Proc: p, Parent: parent, Comm: filepath.Base(exe), Source: "ebpf",
		Exec: &capture.Exec{UID: uid, GID: uid, EUID: uid, EGID: uid, Exe: exe, Argv: argv, Cwd: "/"}}
}

// alerts collects OnAlert calls.
type alerts struct {
	mu sync.Mutex
	as []Alert
}

func (a *alerts) add(al Alert) {
	a.mu.Lock()
	a.as = append(a.as, al)
	a.mu.Unlock()
}

func (a *alerts) take() []Alert {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := a.as
	a.as = nil
	return out
}

func mustDefault(t *testing.T) *Pack {
	t.Helper()
	p, err := Default()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func newCenterEngine(t *testing.T, c *center, got *alerts, cfg Config, packs ...*Pack) *Engine {
	t.Helper()
	e, err := NewEngine(context.Background(), EngineOptions{DB: c.st.ReadOnly(), Target: Center, Recorder: c.rec,
		OnAlert: got.add, Config: cfg}, packs...)
	if err != nil {
		t.Fatalf("NewEngine: %v", err)
	}
	for _, s := range e.Status() {
		if s.Disabled {
			t.Fatalf("rule %s disabled at start: %s", s.ID, s.LastError)
		}
	}
	return e
}

func runOnce(t *testing.T, e *Engine) {
	t.Helper()
	for {
		pending, err := e.RunOnce(context.Background())
		if err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
		if !pending {
			return
		}
	}
}

func byRule(as []Alert) map[string][]Alert {
	m := map[string][]Alert{}
	for _, a := range as {
		m[a.RuleID] = append(m[a.RuleID], a)
	}
	return m
}

func TestEngineIncrementalOnStore(t *testing.T) {
	c := openCenter(t)
	got := &alerts{}
	e := newCenterEngine(t, c, got, Config{}, mustDefault(t))
	apache, worker := key(100, 10), key(101, 11)

	// Round 1: apache's worker runs a shell.
	c.ingest(t, "web-1", 1,
		exec(1e9, apache, key(1, 1), 0, "/usr/sbin/apache2", "/usr/sbin/apache2", "-k", "start"),
		fork(2e9, worker, apache, "apache2"),
		fork(3e9, key(200, 20), worker, "apache2"),
		exec(4e9, key(200, 20), worker, 33, "/usr/bin/dash", "sh", "-c", "id; uname -a"),
	)
	runOnce(t, e)
	first := byRule(got.take())
	if len(first) != 1 || len(first["webserver-spawns-shell"]) != 1 {
		t.Fatalf("round 1 alerts = %v, want one webserver-spawns-shell", first)
	}
	a := first["webserver-spawns-shell"][0]
	if a.Process != (ProcessKey{"web-1", 200, 20}) || a.Severity != SeverityHigh || a.Technique != "T1505.003" || a.ID == 0 || a.Time != 4e9 {
		t.Errorf("alert = %+v", a)
	}
	if a.Context["parent_comm"] != "apache2" || a.Context["cmdline"] != "sh -c id; uname -a" {
		t.Errorf("alert context = %v", a.Context)
	}
	if tr := a.Trace; tr == nil || tr.Depth != 4 || tr.Duration != 30*time.Minute || tr.Flags() != 7 || tr.InitiatedBy != "rule:webserver-spawns-shell" {
		t.Errorf("trace request = %+v", a.Trace)
	}

	// A pass with nothing new reads nothing and raises nothing.
	runOnce(t, e)
	if as := got.take(); len(as) != 0 {
		t.Fatalf("idle pass alerted: %v", as)
	}

	// Round 2: the same shell execs again (same process: counted, not a
	// new alert), a second shell appears, and www-data edits its crontab.
	c.ingest(t, "web-1", 2,
		exec(5e9, key(200, 20), worker, 33, "/usr/bin/bash", "bash", "-c", "id"),
		fork(6e9, key(201, 21), worker, "apache2"),
		exec(7e9, key(201, 21), worker, 33, "/usr/bin/bash", "bash"),
		exec(8e9, key(202, 22), key(201, 21), 33, "/usr/bin/crontab", "crontab", "/tmp/c"),
	)
	runOnce(t, e)
	second := byRule(got.take())
	if len(second["webserver-spawns-shell"]) != 1 || second["webserver-spawns-shell"][0].Process.PID != 201 {
		t.Errorf("round 2 webserver alerts = %v, want only pid 201", second["webserver-spawns-shell"])
	}
	if len(second["web-user-schedules-job"]) != 1 {
		t.Errorf("round 2 crontab alerts = %v", second["web-user-schedules-job"])
	}
	if n := c.count(t, `SELECT count FROM alerts WHERE rule_id = 'webserver-spawns-shell' AND pid = 200`); n != 2 {
		t.Errorf("alerts.count for pid 200 = %d, want 2 (matched twice, alerted once)", n)
	}
	if n := c.count(t, `SELECT count(*) FROM alerts`); n != 3 {
		t.Errorf("alerts rows = %d, want 3", n)
	}

	// Cursors and runs are in the store; a new engine on the same store
	// resumes there and alerts on nothing old.
	if n := c.count(t, `SELECT last_id FROM rule_cursors WHERE rule_id = 'webserver-spawns-shell' AND tbl = 'process_events'`); n != 8 {
		t.Errorf("stored cursor = %d, want 8", n)
	}
	if n := c.count(t, `SELECT runs FROM rule_runs WHERE rule_id = 'webserver-spawns-shell'`); n != 2 {
		t.Errorf("stored runs = %d, want 2 (idle passes do not run)", n)
	}
	got2 := &alerts{}
	e2 := newCenterEngine(t, c, got2, Config{}, mustDefault(t))
	runOnce(t, e2)
	if as := got2.take(); len(as) != 0 {
		t.Errorf("restarted engine alerted again: %v", as)
	}
}

func TestEngineChunks(t *testing.T) {
	c := openCenter(t)
	got := &alerts{}
	e := newCenterEngine(t, c, got, Config{ChunkRows: 3}, mustDefault(t))
	var evs []capture.Event
	for i := range uint32(10) {
		evs = append(evs, exec(int64(i+1)*1e9, key(300+i, 1), key(1, 1), 0, "/dev/shm/x"))
	}
	c.ingest(t, "h", 1, evs...)
	pending, err := e.RunOnce(context.Background())
	if err != nil || !pending {
		t.Fatalf("first pass: pending %v err %v, want a backlog", pending, err)
	}
	if n := len(got.take()); n != 3 {
		t.Errorf("first chunk alerted %d, want 3", n)
	}
	runOnce(t, e)
	if n := len(got.take()); n != 7 {
		t.Errorf("rest alerted %d, want 7", n)
	}
}

const failingPack = `pack: bad
version: "1"
rules:
  - id: bad-json
    title: errors at run time on any row
    severity: low
    attack: T1059
    sql: SELECT host, pid, start FROM new_process_events WHERE json_extract(comm, '$.x') IS NULL
  - id: forever
    title: never finishes
    severity: low
    attack: T1059
    sql: |
      WITH RECURSIVE c (x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c)
      SELECT e.host, e.pid, e.start FROM new_process_events e, c WHERE c.x < 0
  - id: fine
    title: works
    severity: low
    attack: T1059
    sql: SELECT host, pid, start FROM new_process_events WHERE comm = 'bash'
`

func TestEngineFailuresAndTimeouts(t *testing.T) {
	p, err := Parse("bad.yaml", []byte(failingPack))
	if err != nil {
		t.Fatal(err)
	}
	c := openCenter(t)
	got := &alerts{}
	e := newCenterEngine(t, c, got, Config{Timeout: 100 * time.Millisecond, MaxFailures: 3}, p)
	c.ingest(t, "h", 1, exec(1e9, key(5, 5), key(1, 1), 0, "/usr/bin/bash", "bash"))
	start := time.Now()
	for i := 0; i < 5; i++ {
		if _, err := e.RunOnce(context.Background()); err != nil {
			t.Fatalf("RunOnce: %v", err)
		}
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("five passes took %v: the time limit did not cut the runaway rule", d)
	}
	st := map[string]RuleStatus{}
	for _, s := range e.Status() {
		st[s.ID] = s
	}
	bad, forever, fine := st["bad-json"], st["forever"], st["fine"]
	if !bad.Disabled || bad.Runs != 3 || bad.Failures != 3 || !strings.Contains(bad.LastError, "malformed JSON") {
		t.Errorf("bad-json status = %+v, want disabled after 3 failures", bad)
	}
	if !forever.Disabled || forever.Timeouts != 3 || !strings.Contains(forever.LastError, ErrTimeout.Error()) {
		t.Errorf("forever status = %+v, want disabled after 3 timeouts", forever)
	}
	if fine.Disabled || fine.Runs != 1 || fine.Alerts != 1 || fine.Cursors["process_events"] != 1 {
		t.Errorf("fine status = %+v", fine)
	}
	if as := got.take(); len(as) != 1 || as[0].RuleID != "fine" {
		t.Errorf("alerts = %v", as)
	}
	// The failures are in the store for the UI, the disabling said so.
	var lastErr string
	var runs int
	if err := c.st.ReadOnly().QueryRow(`SELECT last_error, runs FROM rule_runs WHERE rule_id = 'forever'`).Scan(&lastErr, &runs); err != nil {
		t.Fatal(err)
	}
	if runs != 3 || !strings.HasPrefix(lastErr, "disabled: ") {
		t.Errorf("rule_runs for forever: runs %d last_error %q", runs, lastErr)
	}
	if n := c.count(t, `SELECT count(*) FROM rule_cursors WHERE rule_id = 'forever'`); n != 0 {
		t.Errorf("a failing rule's cursor advanced (%d rows)", n)
	}
}

func TestEngineRefusesBadRuleAtStart(t *testing.T) {
	// Shape is fine, but the rule names a column this store does not have:
	// it starts disabled with the reason, the others run.
	p := &Pack{Name: "p", Rules: []Rule{
		{ID: "old", Title: "t", Severity: SeverityLow, RunsOn: Center, SQL: "SELECT host, pid, start FROM new_process_events WHERE container_id = 'x'"},
		{ID: "ok", Title: "t", Severity: SeverityLow, RunsOn: Center, SQL: "SELECT host, pid, start FROM new_process_events"},
		{ID: "agent-only", Title: "t", Severity: SeverityLow, RunsOn: Agent, SQL: "SELECT host, pid, start FROM new_process_events"},
	}}
	c := openCenter(t)
	e, err := NewEngine(context.Background(), EngineOptions{DB: c.st.ReadOnly(), Recorder: c.rec}, p)
	if err != nil {
		t.Fatal(err)
	}
	st := e.Status()
	if len(st) != 2 {
		t.Fatalf("status = %+v, want the two center rules", st)
	}
	if !st[0].Disabled || !strings.Contains(st[0].LastError, "unknown column container_id") || st[1].Disabled {
		t.Errorf("status = %+v", st)
	}
	if _, err := NewEngine(context.Background(), EngineOptions{DB: c.st.ReadOnly()}, p, p); err == nil {
		t.Error("two packs with the same rule ids were accepted")
	}
}

func TestEngineRunAndPoke(t *testing.T) {
	c := openCenter(t)
	got := make(chan Alert, 10)
	e, err := NewEngine(context.Background(), EngineOptions{DB: c.st.ReadOnly(), Recorder: c.rec,
		OnAlert: func(a Alert) { got <- a }, Config: Config{Interval: time.Hour}}, mustDefault(t))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	c.ingest(t, "h", 1, exec(1e9, key(7, 7), key(1, 1), 0, "/tmp/dropper"))
	e.Poke()
	select {
	case a := <-got:
		if a.RuleID != "exec-from-temp-dir" {
			t.Errorf("alert = %+v", a)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no alert after Poke (the interval is an hour)")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not end with its context")
	}
}

func TestEngineCancelIsNotAFailure(t *testing.T) {
	p, err := Parse("bad.yaml", []byte(failingPack))
	if err != nil {
		t.Fatal(err)
	}
	c := openCenter(t)
	e := newCenterEngine(t, c, &alerts{}, Config{Timeout: time.Minute}, p)
	c.ingest(t, "h", 1, exec(1e9, key(5, 5), key(1, 1), 0, "/usr/bin/bash", "bash"))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := e.RunOnce(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("RunOnce = %v, want the context's error", err)
	}
	for _, s := range e.Status() {
		if s.ID == "forever" && (s.Failures != 0 || s.Disabled) {
			t.Errorf("shutdown counted against the rule: %+v", s)
		}
	}
}

func TestEngineContextValues(t *testing.T) {
	p := &Pack{Name: "p", Rules: []Rule{{ID: "ctx", Title: "t", Severity: SeverityLow, RunsOn: Center,
		SQL: "SELECT host, pid, start, 1e999 AS inf, exe, argv, NULL AS absent, CAST('b' AS BLOB) AS blob FROM new_process_events"}}}
	c := openCenter(t)
	got := &alerts{}
	e := newCenterEngine(t, c, got, Config{}, p)
	c.ingest(t, "h", 1, exec(1e9, key(5, 5), key(1, 1), 0, "/usr/bin/x", "x", "y"))
	runOnce(t, e)
	as := got.take()
	if len(as) != 1 {
		t.Fatalf("alerts = %v", as)
	}
	want := map[string]any{"inf": "+Inf", "exe": "/usr/bin/x", "argv": `["x","y"]`, "absent": nil, "blob": "b"}
	for k, v := range want {
		if as[0].Context[k] != v {
			t.Errorf("context[%s] = %#v, want %#v", k, as[0].Context[k], v)
		}
	}
	var stored string
	if err := c.st.ReadOnly().QueryRow(`SELECT context FROM alerts`).Scan(&stored); err != nil || !strings.Contains(stored, `"inf":"+Inf"`) {
		t.Errorf("stored context = %s (%v)", stored, err)
	}
}

func TestCheckAgainstLiveStoreSchema(t *testing.T) {
	c := openCenter(t)
	ddl, err := SchemaFromDB(context.Background(), c.st.ReadOnly())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Check(context.Background(), mustDefault(t), ddl)
	if err != nil || !rep.OK() {
		t.Fatalf("default pack on the live schema: %v\n%s", err, rep.Format("default"))
	}
}
