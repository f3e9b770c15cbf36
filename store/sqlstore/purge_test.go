package sqlstore

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

func dueSeqs(t *testing.T, s *Store, host string, cutoff int64, page int) []uint64 {
	t.Helper()
	var out []uint64
	var after DueBatch
	for range 100 {
		bs, err := s.DueBatches(context.Background(), host, cutoff, after, page)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range bs {
			out = append(out, b.Seq)
		}
		if len(bs) < page {
			return out
		}
		after = bs[len(bs)-1]
	}
	t.Fatal("DueBatches did not end in 100 pages")
	return nil
}

// TestDueBatches: a batch's age is its newest event's, never later than
// its arrival; only host's unpurged batches older than the cutoff are due,
// oldest first, page by page.
func TestDueBatches(t *testing.T) {
	s := openTest(t) // arrival: 1_700_000_000 s
	arrival := time.Unix(1_700_000_000, 0).UnixNano()
	p := key(10, 10)
	ingest(t, s, "web-1", 1, exec(300, p, key(1, 1), "/bin/a"))
	ingest(t, s, "web-1", 2, exec(100, p, key(1, 1), "/bin/a"), exec(110, p, key(1, 1), "/bin/a"))
	ingest(t, s, "web-1", 3, exec(200, p, key(1, 1), "/bin/a"))
	ingest(t, s, "web-1", 4, exec(arrival+int64(time.Hour), p, key(1, 1), "/bin/a")) // the agent's clock runs ahead
	ingest(t, s, "db-1", 1, exec(100, p, key(1, 1), "/bin/a"))

	if got := dueSeqs(t, s, "web-1", 250, 10); !slices.Equal(got, []uint64{2, 3}) {
		t.Errorf("due before 250: %v, want [2 3] (oldest first)", got)
	}
	if got := dueSeqs(t, s, "web-1", arrival+1, 1); !slices.Equal(got, []uint64{2, 3, 1, 4}) {
		t.Errorf("due just after arrival, one per page: %v, want [2 3 1 4]: the ahead clock counts from arrival", got)
	}
	bs, err := s.DueBatches(context.Background(), "web-1", 250, DueBatch{}, 10)
	if err != nil || len(bs) != 2 || bs[0] != (DueBatch{Host: "web-1", Seq: 2, Age: 110, Events: 2}) {
		t.Errorf("DueBatches = %+v, %v; want seq 2 first, age 110 (its newest event), 2 events", bs, err)
	}
	if _, err := s.PurgeBatches(context.Background(), "web-1", []uint64{2}, 7); err != nil {
		t.Fatal(err)
	}
	if got := dueSeqs(t, s, "web-1", 250, 10); !slices.Equal(got, []uint64{3}) {
		t.Errorf("due after purging 2: %v, want [3]", got)
	}
	if _, err := s.DueBatches(context.Background(), "web-1", 250, DueBatch{}, 0); err == nil {
		t.Error("DueBatches with limit 0 succeeded")
	}
}

// TestPurgeBatches: every event table loses the batch's rows, the batch
// row stays marked (so neither a replay nor a second purge changes
// anything), other batches and hosts keep theirs.
func TestPurgeBatches(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	p := key(700, 9000)
	all := func(h string) []capture.Event {
		return []capture.Event{
			exec(1000, p, key(1, 1), "/bin/sh", "sh", "-c", "secret"),
			traced("tr", 1, fileEv(1100, p, capture.KindFileOpen, capture.FileOp{Path: "/etc/shadow", Result: 3})),
			traced("tr", 2, capture.Event{Time: 1200, Kind: capture.KindExecHash, Proc: p, Source: "ebpf",
				Hashes: &capture.Hashes{SHA256: digestSHA, Path: "/bin/sh"}, Mem: &capture.MemSnippet{Addr: 64, Data: []byte("ELF")}}),
			traced("tr", 3, capture.Event{Time: 1300, Kind: capture.Kind(42), Proc: p}),
			traced("tr", 4, conn(1350, capture.KindConnect, p, "10.0.0.7:40000", "192.0.2.1:443")),
			traced("tr", 5, capture.Event{Time: 1400, Kind: capture.KindTraceNote, Proc: p, Note: &capture.TraceNote{What: "stop", Reason: "lineage_exited"}}),
		}
	}
	b1 := ingest(t, s, "web-1", 1, all("web-1")...)
	ingest(t, s, "web-1", 2, exec(5000, key(701, 9001), p, "/bin/ls", "ls"))
	ingest(t, s, "db-1", 1, all("db-1")...)
	rows := func(host string, seq int) map[string]int {
		out := map[string]int{}
		for _, tb := range TraceTables {
			var n int
			if err := s.ro.QueryRow(`SELECT count(*) FROM `+tb+` WHERE host = ? AND batch_seq = ?`, host, seq).Scan(&n); err != nil {
				t.Fatal(err)
			}
			out[tb] = n
		}
		return out
	}
	for tb, n := range rows("web-1", 1) {
		if n == 0 {
			t.Fatalf("before the purge web-1/1 has no %s row: the test does not cover every table", tb)
		}
	}

	if tr, err := s.BatchTraces(ctx, "web-1", []uint64{1, 2}); err != nil || len(tr) != 1 || tr["tr"] != 5 {
		t.Errorf("BatchTraces = %v, %v; want 5 events of trace tr", tr, err)
	}
	c, err := s.PurgeBatches(ctx, "web-1", []uint64{1, 99}, 42)
	if err != nil {
		t.Fatal(err)
	}
	if c.Batches != 1 || c.Events != 7 {
		t.Errorf("purge counts %+v, want 1 batch and 7 rows (6 events and a memory snippet)", c)
	}
	for tb, n := range rows("web-1", 1) {
		if n != 0 {
			t.Errorf("after the purge web-1/1 still has %d %s rows", n, tb)
		}
	}
	for _, h := range []struct {
		host string
		seq  int
	}{{"web-1", 2}, {"db-1", 1}} {
		if r := rows(h.host, h.seq); r["process_events"] == 0 {
			t.Errorf("%s/%d lost its rows: %v", h.host, h.seq, r)
		}
	}
	if m := rowMap(t, s, `SELECT purged, events, hex(root) AS root FROM batches WHERE host = 'web-1' AND seq = 1`); m["purged"] != int64(42) || m["events"] != int64(6) ||
		!strings.EqualFold(m["root"].(string), hexOf(b1.Root[:])) {
		t.Errorf("batch row after the purge: %v, want purged 42, its 6 events and root kept", m)
	}
	if _, _, err := s.BatchEvents(ctx, "web-1", 1); !errors.Is(err, ErrPurged) || !strings.Contains(err.Error(), "ledger entry 42") {
		t.Errorf("BatchEvents of a purged batch: %v, want ErrPurged naming entry 42", err)
	}
	if ok, err := s.HasBatch(ctx, "web-1", 1); !ok || err != nil {
		t.Errorf("HasBatch of a purged batch = %v, %v; want true (so the center does not ingest it again)", ok, err)
	}
	// A replay, and the same purge again, change nothing.
	if err := s.IngestBatch(ctx, b1); err != nil {
		t.Fatal(err)
	}
	if again, err := s.PurgeBatches(ctx, "web-1", []uint64{1}, 43); err != nil || again.Batches != 0 || again.Events != 0 {
		t.Errorf("second purge = %+v, %v; want nothing", again, err)
	}
	for tb, n := range rows("web-1", 1) {
		if n != 0 {
			t.Errorf("after a replay web-1/1 has %d %s rows again", n, tb)
		}
	}
	if m := rowMap(t, s, `SELECT purged FROM batches WHERE host = 'web-1' AND seq = 1`); m["purged"] != int64(42) {
		t.Errorf("mark after a second purge: %v, want the first (42)", m["purged"])
	}

	got, err := s.PurgedBatches(ctx, []BatchRef{{"web-1", 1}, {"web-1", 2}, {"db-1", 1}, {"nobody", 1}})
	if err != nil || len(got) != 1 || got[BatchRef{"web-1", 1}] != 42 {
		t.Errorf("PurgedBatches = %v, %v; want only web-1/1 by entry 42", got, err)
	}
}

func hexOf(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// TestPurgeProcesses: an exited process goes once none of its events and
// none of its children are left; a live child keeps its exited ancestors;
// a chain goes leaves first over passes.
func TestPurgeProcesses(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	root, mid, leaf, live := key(10, 1), key(11, 2), key(12, 3), key(20, 4)
	ingest(t, s, "web-1", 1,
		exec(100, root, key(1, 1), "/bin/sh"), fork(110, mid, root), fork(120, leaf, mid), fork(130, live, root),
		exit(200, leaf, 0), exit(210, mid, 0), exit(220, root, 0))
	ingest(t, s, "web-1", 2, exit(300, key(30, 5), 0)) // exited, its exit event still stored
	pass := func(cutoff int64) int64 {
		t.Helper()
		var total int64
		var cur ProcCursor
		for range 100 {
			n, next, done, err := s.PurgeProcesses(ctx, "web-1", cutoff, cur, 2)
			if err != nil {
				t.Fatal(err)
			}
			total += n
			if done {
				return total
			}
			cur = next
		}
		t.Fatal("PurgeProcesses did not end in 100 calls")
		return 0
	}
	if n := pass(1000); n != 0 {
		t.Errorf("with every event stored, %d processes went; want none", n)
	}
	if _, err := s.PurgeBatches(ctx, "web-1", []uint64{1}, 1); err != nil {
		t.Fatal(err)
	}
	if n := pass(1000); n != 1 {
		t.Errorf("first pass removed %d, want 1 (the leaf: mid has a child, root a live one)", n)
	}
	if n := pass(1000); n != 1 {
		t.Errorf("second pass removed %d, want 1 (mid)", n)
	}
	if n := pass(1000); n != 0 {
		t.Errorf("third pass removed %d, want 0: root keeps its live child's lineage", n)
	}
	var left []int64
	for _, m := range rowMaps(t, s, `SELECT pid FROM processes WHERE host = 'web-1' ORDER BY pid`) {
		left = append(left, m["pid"].(int64))
	}
	if !slices.Equal(left, []int64{10, 20, 30}) {
		t.Errorf("processes left: %v, want root 10, its live child 20, and 30 whose exit is stored", left)
	}
	if n := pass(150); n != 0 {
		t.Errorf("with a cutoff before any exit, %d went", n)
	}
}

// TestPurgeLinks: a link goes when its connect and accept are gone, unless
// its trace is kept.
func TestPurgeLinks(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	if err := s.SetHostAddresses(ctx, "web-1", []string{"10.0.0.5"}); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHostAddresses(ctx, "app-1", []string{"10.0.0.7"}); err != nil {
		t.Fatal(err)
	}
	client, server := key(200, 5000), key(300, 6000)
	ingest(t, s, "app-1", 1, traced("tr-1", 1, conn(1_000_000, capture.KindConnect, client, "10.0.0.7:40000", "10.0.0.5:8080")))
	ingest(t, s, "app-1", 2, traced("tr-2", 1, conn(1_000_000, capture.KindConnect, client, "10.0.0.7:40001", "10.0.0.5:8080")))
	ingest(t, s, "web-1", 1, conn(1_000_500, capture.KindAccept, server, "10.0.0.5:8080", "10.0.0.7:40000"))
	if count(t, s, "links") != 2 {
		t.Fatalf("%d links, want 2", count(t, s, "links"))
	}
	if _, err := s.PurgeBatches(ctx, "app-1", []uint64{1, 2}, 1); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeLinks(ctx, "app-1", nil, 100); err != nil || n != 1 {
		t.Errorf("with the accept of tr-1 stored: PurgeLinks = %d, %v; want 1 (tr-2, never accepted)", n, err)
	}
	if _, err := s.PurgeBatches(ctx, "web-1", []uint64{1}, 2); err != nil {
		t.Fatal(err)
	}
	if n, err := s.PurgeLinks(ctx, "app-1", []string{"tr-1"}, 100); err != nil || n != 0 {
		t.Errorf("tr-1 kept: PurgeLinks = %d, %v; want 0", n, err)
	}
	if n, err := s.PurgeLinks(ctx, "app-1", nil, 100); err != nil || n != 1 {
		t.Errorf("both ends gone: PurgeLinks = %d, %v; want 1", n, err)
	}
}

func TestRetentionRunsAndSites(t *testing.T) {
	ctx := context.Background()
	s := openTest(t)
	for host, site := range map[string]string{"web-1": "dmz", "web-2": "dmz", "db-1": ""} {
		if err := s.UpsertHost(ctx, Host{AgentID: host, SiteTag: site}); err != nil {
			t.Fatal(err)
		}
	}
	sites, err := s.HostsBySite(ctx)
	if err != nil || !slices.Equal(sites["dmz"], []string{"web-1", "web-2"}) || !slices.Equal(sites[""], []string{"db-1"}) {
		t.Errorf("HostsBySite = %v, %v", sites, err)
	}
	start := time.Unix(1_700_000_000, 0)
	id, err := s.BeginRetentionRun(ctx, "dmz", 7*24*time.Hour, start.Add(-7*24*time.Hour), start)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel() // an interrupted pass still records what it did
	want := RetentionRun{ID: id, Site: "dmz", Window: 7 * 24 * time.Hour, Cutoff: start.Add(-7 * 24 * time.Hour), Started: start,
		Batches: 3, Events: 30, Bytes: 999, Processes: 2, Links: 1, Held: 4, Error: "context canceled"}
	if err := s.UpdateRetentionRun(cctx, want); err != nil {
		t.Fatal(err)
	}
	runs, err := s.RetentionRuns(ctx, 5)
	if err != nil || len(runs) != 1 {
		t.Fatalf("RetentionRuns = %+v, %v", runs, err)
	}
	got := runs[0]
	if got.ID != want.ID || got.Site != want.Site || got.Window != want.Window || !got.Cutoff.Equal(want.Cutoff) || !got.Started.Equal(want.Started) ||
		!got.Finished.IsZero() || got.Batches != 3 || got.Events != 30 || got.Bytes != 999 || got.Processes != 2 || got.Links != 1 || got.Held != 4 || got.Error != want.Error {
		t.Errorf("run = %+v, want %+v", got, want)
	}
	if err := s.UpdateRetentionRun(ctx, RetentionRun{ID: id + 1}); err == nil {
		t.Error("UpdateRetentionRun of no run succeeded")
	}
}

// TestPurgePlans: the purge's reads use their indexes (a full scan of a
// big table would hold the purge for minutes).
func TestPurgePlans(t *testing.T) {
	s := openTest(t)
	for _, c := range []struct{ q, want string }{
		{`SELECT seq FROM batches WHERE host = 'a' AND purged IS NULL AND ` + batchAge + ` < 5 AND (` + batchAge + `, seq) > (1, 2)
			ORDER BY ` + batchAge + `, seq LIMIT 3`, "USING INDEX batches_due"},
		{`SELECT id FROM processes WHERE host = 'a' AND exit_time IS NOT NULL AND exit_time < 5 ORDER BY exit_time, id LIMIT 3`, "INDEX processes_exited"},
		{`DELETE FROM file_events WHERE host = 'a' AND batch_seq IN (SELECT value FROM json_each('[1]'))`, "INDEX sqlite_autoindex_file_events_1 (host=? AND batch_seq=?)"},
	} {
		rows, err := s.db.Query("EXPLAIN QUERY PLAN " + c.q) // the writer: the read-only pool refuses to plan a DELETE
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, unused int
			var detail string
			if err := rows.Scan(&id, &parent, &unused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		if p := strings.Join(plan, "; "); !strings.Contains(p, c.want) {
			t.Errorf("plan of %s:\n%s\nwant %s", c.q, p, c.want)
		}
	}
}

// BenchmarkPurgeBatches purges SQLSTORE_PURGE_BATCHES (default 50) batches
// of 2000 fleet events, SQLSTORE_PURGE_CHUNK (default 3) batches per
// PurgeBatches (6000 events: the center's chunk bound is 5000 events, at
// least one batch): it reports rows removed per second and the longest
// chunk, which is how long the purge holds the writer (and so the ingest)
// at a time. Run with -benchtime 1x.
func BenchmarkPurgeBatches(b *testing.B) {
	nb := envInt("SQLSTORE_PURGE_BATCHES", 50)
	const per = 2000
	chunk := envInt("SQLSTORE_PURGE_CHUNK", 3)
	g := newFleetGen("host-00", 1)
	batches := make([]*wire.Batch, nb)
	for i := range batches {
		batches[i] = g.batch(uint64(i+1), per)
	}
	ctx := context.Background()
	for b.Loop() {
		b.StopTimer()
		s := openTest(b)
		for _, bt := range batches {
			if err := s.IngestBatch(ctx, bt); err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
		var (
			rows      int64
			total     time.Duration
			longest   time.Duration
			procsGone int64
		)
		for i := 0; i < nb; i += chunk {
			seqs := make([]uint64, 0, chunk)
			for j := i; j < min(i+chunk, nb); j++ {
				seqs = append(seqs, uint64(j+1))
			}
			t0 := time.Now()
			c, err := s.PurgeBatches(ctx, "host-00", seqs, 1)
			if err != nil {
				b.Fatal(err)
			}
			d := time.Since(t0)
			total += d
			longest = max(longest, d)
			rows += c.Events
		}
		var cur ProcCursor
		for {
			n, next, done, err := s.PurgeProcesses(ctx, "host-00", 1<<62, cur, 1000)
			if err != nil {
				b.Fatal(err)
			}
			procsGone += n
			if done {
				break
			}
			cur = next
		}
		b.ReportMetric(float64(rows)/total.Seconds(), "rows/s")
		b.ReportMetric(float64(longest.Microseconds())/1e3, "max-chunk-ms")
		b.ReportMetric(float64(procsGone), "processes")
	}
}
