package treetest

// Retention end to end on a real center (real SQLite, Pebble batch store,
// ledger, API): two sites with different windows; a purge interrupted at
// two points, a restart in between, then finished; what is due goes from
// SQL and from the batch store, nothing else does; neither a restart nor a
// rebuild of the SQL store brings it back; the ledger verifies and still
// extends the checkpoint taken before the purge; the forensic package of a
// partly purged trace verifies and says what was purged.
//
// Time: the events of the "old" batches are 50 s older than the others,
// and the purge's clock is set 7 days ahead less 30 s, so the dmz site's
// 7-day window falls between them. Nothing sleeps for days, and every
// batch is signed while its agent certificate is valid.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/cli"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// sealer signs batches as an agent of the tree's CA.
type sealer struct {
	name string
	key  ed25519.PrivateKey
	der  []byte
}

func (tr *Tree) sealer(name string) sealer {
	tr.T.Helper()
	certPEM, keyPEM, err := tr.CA.Issue(pki.RoleAgent, name, pki.IssueOptions{})
	if err != nil {
		tr.T.Fatal(err)
	}
	kp, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		tr.T.Fatal(err)
	}
	return sealer{name: name, key: kp.PrivateKey.(ed25519.PrivateKey), der: kp.Certificate[0]}
}

func (s sealer) take(t *testing.T, c *Center, lane wire.Lane, seq uint64, evs ...capture.Event) {
	t.Helper()
	sealed, err := wire.SealBatchCert(s.name, seq, evs, s.key, s.der, true)
	if err != nil {
		t.Fatal(err)
	}
	if nack := c.Ingest.Take(lane, s.name, seq, sealed); nack != nil {
		t.Fatalf("%s batch %d refused: %+v", s.name, seq, nack)
	}
}

// raw does an API request and returns the body as is.
func (o *operator) raw(t *testing.T, method, path string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, o.base+path, nil)
	resp, err := o.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func sqlCount(t *testing.T, c *Center, q string, args ...any) int {
	t.Helper()
	var n int
	if err := c.SQL.ReadOnly().QueryRow(q, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

// batchRows counts the rows of a batch in every event table.
func batchRows(t *testing.T, c *Center, host string, seq uint64) int {
	t.Helper()
	n := 0
	for _, tb := range []string{"process_events", "network_events", "file_events", "exe_hashes", "trace_notes", "mem_snippets", "raw_events"} {
		n += sqlCount(t, c, `SELECT count(*) FROM `+tb+` WHERE host = ? AND batch_seq = ?`, host, int64(seq))
	}
	return n
}

func TestRetentionPurge(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center")
	apiAddr := freeTCP(t)
	c.Cfg.API.Listen = apiAddr
	c.Cfg.API.TwoPersonTraces = false
	c.Cfg.Retention = config.Retention{Window: config.Period(90 * 24 * time.Hour), Sites: map[string]config.Period{"dmz": config.Period(7 * 24 * time.Hour)},
		Every: config.Period(time.Hour), KeepOpenTraces: true}
	c.Start()
	ctx := context.Background()
	addOperator(t, c, "ana", center.RoleAnalyst)
	ana := tr.newOperator("ana", apiAddr)

	web, db := tr.sealer("web-1"), tr.sealer("db-1")
	base := time.Now()
	oldT, newT := base.Add(-50*time.Second).UnixNano(), base.Add(-5*time.Second).UnixNano()
	purgeNow := base.Add(7*24*time.Hour - 30*time.Second) // dmz cutoff: base-30s
	ex := func(at int64, p capture.ProcKey, exe string) capture.Event {
		return capture.Event{Time: at, Kind: capture.KindExec, Proc: p, Parent: capture.ProcKey{PID: 1, Start: 1}, Source: "ebpf",
			Exec: &capture.Exec{Exe: exe, Argv: []string{exe, "--token=s3cret"}}}
	}
	traced := func(id string, seq uint64, at int64, p capture.ProcKey, kind capture.Kind) capture.Event {
		e := capture.Event{Time: at, Kind: kind, Proc: p, Source: "ebpf", TraceID: id, TraceSeq: seq}
		switch kind {
		case capture.KindExecHash:
			e.Hashes = &capture.Hashes{Path: "/usr/bin/ssh", SHA256: strings.Repeat("5a", 32)}
			e.Mem = &capture.MemSnippet{Addr: 0x4000, Data: []byte("\x7fELF")}
		case capture.KindFileOpen:
			e.File = &capture.FileOp{Path: "/root/.ssh/id_ed25519", Result: 3}
		case capture.KindConnect:
			e.Conn = &capture.Conn{Proto: capture.ProtoTCP}
		case capture.KindTraceNote:
			e.Note = &capture.TraceNote{What: "stop", Reason: "lineage_exited"}
		}
		return e
	}

	// Baselines: the processes the traces will follow, and noise.
	root1, root2, root3 := capture.ProcKey{PID: 4242, Start: 99}, capture.ProcKey{PID: 5252, Start: 77}, capture.ProcKey{PID: 3131, Start: 55}
	gone, alive := capture.ProcKey{PID: 6000, Start: 60}, capture.ProcKey{PID: 7000, Start: 70}
	web.take(t, c, wire.LaneBulk, 1, ex(oldT, root1, "/bin/bash"), ex(oldT, root2, "/bin/sh"), ex(oldT, root3, "/bin/zsh"))
	db.take(t, c, wire.LaneBulk, 1, ex(oldT, capture.ProcKey{PID: 900, Start: 9}, "/usr/sbin/sshd"))
	eventually(t, 10*time.Second, "the roots at the center", func() bool {
		return sqlCount(t, c, `SELECT count(*) FROM processes WHERE host = 'web-1'`) == 3
	})
	for host, site := range map[string]string{"web-1": "dmz", "db-1": ""} {
		if err := c.SQL.UpsertHost(ctx, sqlstore.Host{AgentID: host, SiteTag: site}); err != nil {
			t.Fatal(err)
		}
	}
	startTrace := func(p capture.ProcKey) string {
		t.Helper()
		code, out := ana.do(t, "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": p.PID, "start": p.Start, "reason": "retention test"})
		tj, _ := out["trace"].(map[string]any)
		id, _ := tj["trace_id"].(string)
		if code/100 != 2 || id == "" {
			t.Fatalf("trace start: %d %v", code, out)
		}
		return id
	}
	t1, t2, t3 := startTrace(root1), startTrace(root2), startTrace(root3)

	// t1: two old events, two recent (the last ends it), and two on db-1
	// (default site). t2 stays open. t3 ends but goes under legal hold.
	web.take(t, c, wire.LaneTrace, 2, traced(t1, 1, oldT, root1, capture.KindFileOpen), traced(t1, 2, oldT, root1, capture.KindExecHash))
	web.take(t, c, wire.LaneTrace, 3, traced(t2, 1, oldT, root2, capture.KindFileOpen))
	web.take(t, c, wire.LaneTrace, 4, traced(t1, 3, newT, root1, capture.KindConnect), traced(t1, 4, newT, root1, capture.KindTraceNote))
	web.take(t, c, wire.LaneBulk, 5, ex(oldT, gone, "/bin/true"),
		capture.Event{Time: oldT + 1, Kind: capture.KindExit, Proc: gone, Source: "ebpf", Exit: &capture.Exit{}}, ex(oldT, alive, "/bin/sleep"))
	web.take(t, c, wire.LaneTrace, 6, traced(t3, 1, oldT, root3, capture.KindFileOpen), traced(t3, 2, oldT, root3, capture.KindTraceNote))
	web.take(t, c, wire.LaneBulk, 7, ex(oldT, capture.ProcKey{PID: 8000, Start: 80}, "/bin/ls"))
	db.take(t, c, wire.LaneTrace, 2, traced(t1, 1, oldT, root3, capture.KindFileOpen), traced(t1, 2, oldT, root3, capture.KindConnect))
	eventually(t, 15*time.Second, "every batch in SQL and t1, t3 ended", func() bool {
		return sqlCount(t, c, `SELECT count(*) FROM batches`) == 9 &&
			sqlCount(t, c, `SELECT count(*) FROM traces WHERE trace_id IN (?, ?) AND state = 'stopped'`, t1, t3) == 2 &&
			traceLeaves(t, c.Ledger, t1) == 6
	})

	// Before: t1's package proves its 6 events; a checkpoint to hold the
	// ledger to afterwards.
	export := func() (ledger.PackageReport, map[string]any, []byte) {
		t.Helper()
		code, pkg := ana.raw(t, "GET", "/api/v1/traces/"+t1+"/export?reason=retention+test+export")
		if code != http.StatusOK {
			t.Fatalf("export: %d %s", code, pkg)
		}
		rep, err := ledger.VerifyPackage(pkg, tr.CA.Certificate())
		if err != nil {
			t.Fatalf("the package does not verify: %v", err)
		}
		var meta map[string]any
		if err := json.Unmarshal(rep.Metadata, &meta); err != nil {
			t.Fatal(err)
		}
		return rep, meta, pkg
	}
	before, meta, _ := export()
	if before.Events != 6 || len(before.Hosts) != 2 || meta["retention"] != nil {
		t.Fatalf("package before the purge: %d events on %d hosts, retention %v; want 6 on 2, none", before.Events, len(before.Hosts), meta["retention"])
	}
	seen, err := c.Ledger.Checkpoint()
	if err != nil {
		t.Fatal(err)
	}

	// The SQL ingester starts after the reconciliation: a new batch in SQL
	// means the reconciliation is over.
	dbSeq := uint64(2)
	settled := func() {
		t.Helper()
		dbSeq++
		db.take(t, c, wire.LaneBulk, dbSeq, ex(time.Now().UnixNano(), capture.ProcKey{PID: 901, Start: 9}, "/bin/true"))
		eventually(t, 15*time.Second, "the center's start settled", func() bool {
			ok, err := c.SQL.HasBatch(ctx, "db-1", dbSeq)
			return ok && err == nil
		})
	}
	// Legal hold on t3 takes a configuration change: a restart.
	c.Stop()
	c.Cfg.Retention.Hold = []string{t3}
	c.Start()
	settled()

	// 1. Interrupted after the first chunk's batch store step (Pebble
	// emptied, SQL not yet).
	pctx, cancel := context.WithCancel(ctx)
	var steps []string
	_, err = c.Purge(pctx, center.PurgeOptions{Now: purgeNow, ChunkBatches: 1, Progress: func(p center.PurgeProgress) {
		steps = append(steps, fmt.Sprintf("%s/%v %s", p.Host, p.Chunk, p.Step))
		if p.Step == center.StepBatchStore {
			cancel()
		}
	}})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("interrupted purge: %v, want context.Canceled", err)
	}
	if want := []string{"web-1/[1] recorded", "web-1/[1] batch store"}; !slices.Equal(steps, want) {
		t.Fatalf("steps %q, want %q (the oldest batch first)", steps, want)
	}
	if sealed, ok, err := c.Ingest.Batch("web-1", 1); err != nil || !ok || !store.Purged(sealed) {
		t.Fatalf("web-1/1 in the batch store after the interruption: %d bytes, %v, %v; want emptied", len(sealed), ok, err)
	}
	if n := batchRows(t, c, "web-1", 1); n != 3 {
		t.Fatalf("web-1/1 has %d SQL rows after the interruption, want 3 (SQL had not been reached)", n)
	}
	// A restart in that state: reconciliation must neither fail on the
	// emptied batch nor lose the rows it has.
	c.Stop()
	c.Start()
	settled()
	if n := batchRows(t, c, "web-1", 1); n != 3 {
		t.Fatalf("web-1/1 has %d SQL rows after a restart, want 3", n)
	}

	// 2. Interrupted as the second chunk is recorded.
	pctx, cancel = context.WithCancel(ctx)
	chunks := 0
	_, err = c.Purge(pctx, center.PurgeOptions{Now: purgeNow, ChunkBatches: 1, Progress: func(p center.PurgeProgress) {
		if p.Step == center.StepRecorded {
			if chunks++; chunks == 2 {
				cancel()
			}
		}
	}})
	cancel()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("second interrupted purge: %v, want context.Canceled", err)
	}

	// 3. Run to the end, then once more: nothing left to do.
	res, err := c.Purge(ctx, center.PurgeOptions{Now: purgeNow, ChunkBatches: 2})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("last pass: %+v", res)
	res2, err := c.Purge(ctx, center.PurgeOptions{Now: purgeNow})
	if err != nil || len(res2) != 2 || res2[0].Site != "" || res2[1].Site != "dmz" || res2[0].Batches+res2[1].Batches != 0 || res2[1].Held != 2 {
		t.Errorf("pass after the end: %+v, %v; want both sites, nothing purged, 2 dmz batches held", res2, err)
	}

	// What went and what stayed.
	purged := []uint64{1, 2, 5, 7}
	keptWeb := map[uint64]string{3: "t2 is open", 4: "recent", 6: "t3 is under legal hold"}
	for _, seq := range purged {
		if n := batchRows(t, c, "web-1", seq); n != 0 {
			t.Errorf("web-1/%d: %d SQL rows left, want none", seq, n)
		}
		if sealed, ok, err := c.Ingest.Batch("web-1", seq); err != nil || !ok || !store.Purged(sealed) {
			t.Errorf("web-1/%d in the batch store: %d bytes (stored %v, %v), want the key kept and the value emptied", seq, len(sealed), ok, err)
		}
	}
	check := func(host string, seq uint64, why string) {
		t.Helper()
		if n := batchRows(t, c, host, seq); n == 0 {
			t.Errorf("%s/%d (%s) lost its SQL rows", host, seq, why)
		}
		sealed, ok, err := c.Ingest.Batch(host, seq)
		if err != nil || !ok || store.Purged(sealed) {
			t.Errorf("%s/%d (%s) lost its sealed batch", host, seq, why)
			return
		}
		if _, nack := c.Ingest.Verify(0, host, seq, sealed); nack != nil {
			t.Errorf("%s/%d (%s) no longer verifies: %s", host, seq, why, nack.Reason)
		}
	}
	for seq, why := range keptWeb {
		check("web-1", seq, why)
	}
	check("db-1", 1, "default site, 90 days")
	check("db-1", 2, "default site, 90 days")
	var marks []int64
	for _, m := range rowsOf(t, c, `SELECT purged FROM batches WHERE host = 'web-1' AND purged IS NOT NULL ORDER BY seq`) {
		marks = append(marks, m.(int64))
	}
	if len(marks) != len(purged) {
		t.Errorf("%d batches marked purged, want %d", len(marks), len(purged))
	}
	for _, m := range marks {
		if rec, err := c.Ledger.Entry(m); err != nil || rec.Kind != center.AuditRetentionPurge || !strings.Contains(string(rec.Payload), `"site":"dmz"`) {
			t.Errorf("a batch is marked by ledger entry %d: %+v, %v; want a retention.purge entry of site dmz", m, rec, err)
		}
	}
	if n := sqlCount(t, c, `SELECT count(*) FROM processes WHERE host = 'web-1' AND pid = 6000`); n != 0 {
		t.Errorf("the exited process whose events went is still in the process table")
	}
	if n := sqlCount(t, c, `SELECT count(*) FROM processes WHERE host = 'web-1' AND pid IN (4242, 7000)`); n != 2 {
		t.Errorf("%d of the live processes left, want both (live processes are kept)", n)
	}
	if n := sqlCount(t, c, `SELECT count(*) FROM processes WHERE host = 'db-1' AND pid = 900`); n != 1 {
		t.Errorf("db-1 lost its process (%d left), want it kept (default site)", n)
	}
	// Since the restart: three passes, which removed what the first
	// (interrupted before SQL) had not: 4 batches, 10 rows (3 + 2 events
	// and a memory snippet + 3 + 1).
	st := c.RetentionStatus()
	if st.Passes != 3 || st.Batches != int64(len(purged)) || st.Events != 10 || st.Processes != 1 || st.LastEnd.IsZero() || st.LastError != "" {
		t.Errorf("retention status %+v; want 3 passes, %d batches, 10 event rows, 1 process", st, len(purged))
	}
	runs, err := c.SQL.RetentionRuns(ctx, 100)
	var dmz []sqlstore.RetentionRun
	for _, r := range runs {
		if r.Site == "dmz" {
			dmz = append(dmz, r)
		}
	}
	if err != nil || len(runs) != 8 || len(dmz) != 4 {
		t.Fatalf("retention runs %+v, %v; want 8, 4 of dmz", runs, err)
	}
	for k, r := range dmz { // newest first
		if interrupted := k >= 2; interrupted != (r.Error != "") || interrupted != r.Finished.IsZero() {
			t.Errorf("dmz run %d: finished %v, error %q; want the two oldest interrupted (with an error), the others finished", r.ID, r.Finished, r.Error)
		}
	}
	if r := dmz[3]; r.Bytes == 0 || r.Batches != 0 {
		t.Errorf("the first interrupted run recorded %d bytes, %d batches; want bytes (the batch store was emptied) and no batch (SQL was not reached)", r.Bytes, r.Batches)
	}

	// The package of t1 now: web-1's old events went (declared), db-1's
	// and the recent ones are proven as before.
	after, meta, pkg := export()
	if after.Events != 4 {
		t.Errorf("package after the purge proves %d events, want 4 (web-1 trace_seq 3-4, db-1 1-2)", after.Events)
	}
	for _, h := range after.Hosts {
		switch h.Host {
		case "web-1":
			if h.Events != 2 || h.FirstTraceSeq != 3 || len(h.Missing) != 1 || h.Missing[0] != (ledger.SeqRange{First: 1, Last: 2}) {
				t.Errorf("web-1 in the package: %+v; want trace_seq 3-4, 1-2 missing", h)
			}
		case "db-1":
			if h.Events != 2 || len(h.Missing) != 0 {
				t.Errorf("db-1 in the package: %+v; want its 2 events", h)
			}
		}
	}
	ret, _ := meta["retention"].(map[string]any)
	pj, _ := json.Marshal(ret)
	for _, want := range []string{`"host":"web-1"`, `"trace_seq":"1-2"`, `"events":2`, `"batches":"2"`, `"site":"dmz"`, `"window":"7d"`} {
		if !strings.Contains(string(pj), want) {
			t.Errorf("trace.json's retention section lacks %s: %s", want, pj)
		}
	}
	var proven []string
	for _, a := range after.Actions {
		if a.Kind == center.AuditRetentionPurge {
			proven = append(proven, string(a.Payload))
		}
	}
	if len(proven) == 0 || !strings.Contains(strings.Join(proven, " "), t1) {
		t.Errorf("the package proves no retention.purge entry naming %s: %q", t1, proven)
	}
	if after.EventsInLedger != 4 {
		t.Errorf("%d of the package's events recorded in the ledger, want 4", after.EventsInLedger)
	}
	// `daemoneye verify` says it too.
	pkgFile := filepath.Join(t.TempDir(), "t1.dpkg")
	if err := os.WriteFile(pkgFile, pkg, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errb strings.Builder
	if code := cli.Main(ctx, []string{"daemoneye", "verify", pkgFile, "--ca", filepath.Join(tr.CA.Dir(), pki.CACertFile)}, cli.Build{}, &out, &errb, nil); code != 0 {
		t.Fatalf("daemoneye verify: exit %d: %s", code, errb.String())
	}
	for _, want := range []string{"VERIFIED", "NOT PROVEN: trace_seq 1-2 (the center declares it never received them, or retention removed them: see purged)",
		"purged       web-1: 2 events (trace_seq 1-2) removed by retention", `site "dmz", window 7d`} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("daemoneye verify lacks %q:\n%s", want, out.String())
		}
	}
	// Admins (and analysts) see every pass in the store.
	if code, out := ana.do(t, "POST", "/api/v1/query", map[string]any{"sql": "SELECT site, batches, events, finished IS NOT NULL AS done FROM retention_runs WHERE site = 'dmz' ORDER BY id"}); code != http.StatusOK ||
		!strings.Contains(fmt.Sprint(out), "dmz") {
		t.Errorf("query of retention_runs: %d %v", code, out)
	}

	// The hold lifted, t3 goes whole: its package proves no event and says
	// which went.
	c.Stop()
	c.Cfg.Retention.Hold = nil
	c.Start()
	settled()
	if res, err := c.Purge(ctx, center.PurgeOptions{Now: purgeNow}); err != nil || res[1].Batches != 1 || res[1].Held != 1 {
		t.Fatalf("purge without the hold: %+v, %v; want t3's batch purged, t2's held", res, err)
	}
	purged = append(purged, 6)
	delete(keptWeb, 6)
	code, pkg := ana.raw(t, "GET", "/api/v1/traces/"+t3+"/export?reason=retention+test+export")
	if code != http.StatusOK {
		t.Fatalf("export of a trace retention emptied: %d %s", code, pkg)
	}
	rep3, err := ledger.VerifyPackage(pkg, tr.CA.Certificate())
	if err != nil {
		t.Fatalf("the package of a trace retention emptied does not verify: %v", err)
	}
	if rep3.Events != 0 || rep3.Batches != 0 || !strings.Contains(string(rep3.Metadata), `"trace_seq":"1-2"`) {
		t.Errorf("package of t3: %d events in %d batches, trace.json %s; want none, and trace_seq 1-2 declared purged", rep3.Events, rep3.Batches, rep3.Metadata)
	}

	// Replays of purged batches are replays: nothing comes back.
	sealed, err := wire.SealBatchCert("web-1", 2, []capture.Event{traced(t1, 1, oldT, root1, capture.KindFileOpen)}, web.key, web.der, true)
	if err != nil {
		t.Fatal(err)
	}
	if nack := c.Ingest.Take(wire.LaneTrace, "web-1", 2, sealed); nack == nil || nack.Code != wire.NackReplay {
		t.Errorf("replay of a purged batch: %+v, want a replay nack", nack)
	}

	// A restart does not bring anything back, and the ledger verifies
	// offline, extending the checkpoint taken before the purge.
	c.Stop()
	v, err := ledger.LoadVerifier(filepath.Join(c.Cfg.DataDir, "ledger.key.vkey"))
	if err != nil {
		t.Fatal(err)
	}
	lrep, err := ledger.Verify(ctx, filepath.Join(c.Cfg.DataDir, "ledger"), v, ledger.VerifyOptions{Seen: [][]byte{seen}})
	if err != nil {
		t.Fatalf("ledger verify after the purge: %v", err)
	}
	if lrep.Seen != 1 || lrep.Kinds[center.AuditRetentionPurge] == 0 || lrep.Kinds[center.AuditRetentionPass] == 0 || lrep.Kinds[ledger.KindTraceEvent] != 9 || lrep.Purged != 0 {
		t.Errorf("ledger report %+v; want the pre-purge checkpoint extended, retention entries, and all 9 trace.event leaves kept whole", lrep)
	}
	c.Start()
	settled()
	for _, seq := range purged {
		if n := batchRows(t, c, "web-1", seq); n != 0 {
			t.Errorf("after a restart web-1/%d has %d SQL rows again", seq, n)
		}
	}

	// A rebuild: the SQL store lost, recreated from the batch store.
	c.Stop()
	for _, f := range []string{"center.db", "center.db-wal", "center.db-shm"} {
		if err := os.Remove(filepath.Join(c.Cfg.DataDir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	c.Start()
	settled()
	for _, seq := range purged {
		if n := batchRows(t, c, "web-1", seq); n != 0 {
			t.Errorf("after a rebuild web-1/%d has %d SQL rows again", seq, n)
		}
	}
	for seq := range keptWeb {
		if n := batchRows(t, c, "web-1", seq); n == 0 {
			t.Errorf("after a rebuild web-1/%d is missing", seq)
		}
	}
	if n := sqlCount(t, c, `SELECT count(*) FROM batches`); n != 2+int(dbSeq) {
		t.Errorf("after a rebuild %d batches in SQL, want %d (web-1 3, 4 and db-1's %d)", n, 2+dbSeq, dbSeq)
	}
}

func rowsOf(t *testing.T, c *Center, q string, args ...any) []any {
	t.Helper()
	rows, err := c.SQL.ReadOnly().Query(q, args...)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []any
	for rows.Next() {
		var v any
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

// traceLeaves counts the ledger's trace.event entries of a trace.
func traceLeaves(t *testing.T, l *ledger.Ledger, id string) int {
	t.Helper()
	n := 0
	for i := range l.Size() {
		rec, err := l.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Kind == ledger.KindTraceEvent && strings.Contains(string(rec.Payload), `"trace_id":"`+id+`"`) {
			n++
		}
	}
	return n
}

// TestRetentionSchedule: the running center purges on its own, every
// center.retention.every.
func TestRetentionSchedule(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center")
	// Below the configuration's minimum window (a test needs a window its
	// agent certificate outlives; config validation is Load's).
	c.Cfg.Retention = config.Retention{Window: config.Period(30 * time.Second), Every: config.Period(time.Second)}
	c.Start()
	web := tr.sealer("web-1")
	old := time.Now().Add(-50 * time.Second).UnixNano()
	web.take(t, c, wire.LaneBulk, 1, capture.Event{Time: old, Kind: capture.KindExec, Proc: capture.ProcKey{PID: 10, Start: 1},
		Exec: &capture.Exec{Exe: "/bin/true"}})
	eventually(t, 20*time.Second, "the scheduled purge", func() bool {
		st := c.RetentionStatus()
		return st.Batches == 1 && !st.Running
	})
	if sealed, ok, err := c.Ingest.Batch("web-1", 1); err != nil || !ok || !store.Purged(sealed) {
		t.Errorf("web-1/1 after the scheduled purge: %d bytes, %v, %v; want emptied", len(sealed), ok, err)
	}
	if n := batchRows(t, c, "web-1", 1); n != 0 {
		t.Errorf("web-1/1 has %d rows after the scheduled purge", n)
	}
}

// TestRetentionSiteKept: the fleet registry keeps a host's site when the
// host reconnects before reporting its health again (windows go by site; a
// site lost for a moment would purge by the default window).
func TestRetentionSiteKept(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	ag := tr.NewAgent("sim-1", c.Cfg.Listen).Start() // a simulated agent: no health reports
	ctx := context.Background()
	host := func() sqlstore.Host {
		hs, err := c.SQL.Hosts(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, h := range hs {
			if h.AgentID == "sim-1" {
				return h
			}
		}
		return sqlstore.Host{}
	}
	eventually(t, 20*time.Second, "the agent in the fleet registry", func() bool { return host().AgentID != "" })
	// What its health report would have said.
	if err := c.SQL.UpsertHost(ctx, sqlstore.Host{AgentID: "sim-1", SiteTag: "dmz"}); err != nil {
		t.Fatal(err)
	}
	seen := host().LastSeen
	ag.Stop()
	ag.Start()
	eventually(t, 20*time.Second, "the registry updated for the reconnect", func() bool { return host().LastSeen.After(seen) })
	if h := host(); h.SiteTag != "dmz" {
		t.Errorf("after a reconnect the host's site is %q, want dmz kept", h.SiteTag)
	}
}
