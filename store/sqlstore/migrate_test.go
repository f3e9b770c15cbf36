package sqlstore

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// schemaShape describes a database's schema by what SQLite reports of it
// (pragma_table_list, table_xinfo, index_list, index_xinfo, foreign keys,
// partial index conditions, CHECK constraints), not by its CREATE text,
// which ALTER TABLE rewrites: a migrated database and a new one must have
// the same shape, not the same text.
func schemaShape(t *testing.T, db *sql.DB) string {
	t.Helper()
	var b strings.Builder
	q := func(query string, args ...any) [][]string {
		rows, err := db.Query(query, args...)
		if err != nil {
			t.Fatalf("%s: %v", query, err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		var out [][]string
		for rows.Next() {
			vals := make([]sql.NullString, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			row := make([]string, len(vals))
			for i, v := range vals {
				row[i] = fmt.Sprint(v.String, map[bool]string{false: "∅"}[v.Valid])
			}
			out = append(out, row)
		}
		return out
	}
	space := regexp.MustCompile(`\s+`)
	checkRE := regexp.MustCompile(`CHECK \(`)
	for _, tr := range q(`SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite\_%' ESCAPE '\' ORDER BY name`) {
		tbl := tr[0]
		fmt.Fprintf(&b, "table %s %v\n", tbl, q(`SELECT type, ncol, wr, strict FROM pragma_table_list WHERE name = ?`, tbl))
		for _, c := range q(`SELECT cid, name, type, "notnull", dflt_value, pk, hidden FROM pragma_table_xinfo(?) ORDER BY cid`, tbl) {
			fmt.Fprintf(&b, "  col %v\n", c)
		}
		// CHECK expressions, balanced parentheses, in a stable order.
		text := space.ReplaceAllString(stripSQLComments(tr[1]), " ")
		var checks []string
		for _, loc := range checkRE.FindAllStringIndex(text, -1) {
			depth, i := 0, loc[1]-1
			for ; i < len(text); i++ {
				if text[i] == '(' {
					depth++
				} else if text[i] == ')' {
					if depth--; depth == 0 {
						break
					}
				}
			}
			checks = append(checks, text[loc[0]:i+1])
		}
		sort.Strings(checks)
		fmt.Fprintf(&b, "  checks %q\n", checks)
		for _, fk := range q(`SELECT "table", "from", "to", on_update, on_delete FROM pragma_foreign_key_list(?) ORDER BY "from"`, tbl) {
			fmt.Fprintf(&b, "  fk %v\n", fk)
		}
		var idx []string
		for _, ix := range q(`SELECT name, "unique", origin, partial FROM pragma_index_list(?)`, tbl) {
			name := ix[0]
			if ix[2] != "c" {
				name = "(" + ix[2] + ")" // automatic indexes are named after the table they were created in
			}
			cols := q(`SELECT name, "desc", coll FROM pragma_index_xinfo(?) WHERE key ORDER BY seqno`, ix[0])
			where := ""
			if ix[3] == "1" {
				s := q(`SELECT sql FROM sqlite_schema WHERE type = 'index' AND name = ?`, ix[0])
				if len(s) == 1 {
					if i := strings.Index(s[0][0], " WHERE "); i >= 0 {
						where = space.ReplaceAllString(s[0][0][i:], " ")
					}
				}
			}
			idx = append(idx, fmt.Sprintf("  index %s unique=%s %v%s\n", name, ix[1], cols, where))
		}
		sort.Strings(idx)
		b.WriteString(strings.Join(idx, ""))
	}
	return b.String()
}

func openRaw(t *testing.T, path string) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db
}

// TestMigrationPath: a database created at version 1 and migrated has the
// shape of a new one, and so does one built by replaying every migration.
func TestMigrationPath(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	fresh := openRaw(t, filepath.Join(dir, "fresh.db"))
	if _, _, err := migrate(ctx, fresh); err != nil {
		t.Fatal(err)
	}
	want := schemaShape(t, fresh)
	if !strings.Contains(want, "table trace_notes") || !strings.Contains(want, "col [0 id INTEGER 0 ∅ 1 0]") {
		t.Fatalf("new schema lacks trace_notes or processes.id:\n%s", want)
	}
	for from := 1; from < len(migrations); from++ {
		db := openRaw(t, filepath.Join(dir, fmt.Sprintf("v%d.db", from)))
		if _, to, err := migrateTo(ctx, db, from, false); err != nil || to != from {
			t.Fatalf("to version %d: %d, %v", from, to, err)
		}
		if f, to, err := migrate(ctx, db); err != nil || f != from || to != len(migrations) {
			t.Fatalf("migrate from %d: %d -> %d, %v", from, f, to, err)
		}
		if got := schemaShape(t, db); got != want {
			t.Errorf("migrated from version %d, the schema differs from a new one:\n%s", from, lineDiff(got, want))
		}
	}
	chain := openRaw(t, filepath.Join(dir, "chain.db"))
	if _, _, err := migrateTo(ctx, chain, len(migrations), false); err != nil {
		t.Fatal(err)
	}
	if got := schemaShape(t, chain); got != want {
		t.Errorf("every migration from 0, the schema differs from a new one:\n%s", lineDiff(got, want))
	}
}

func lineDiff(got, want string) string {
	g, w := strings.Split(got, "\n"), strings.Split(want, "\n")
	in := func(l []string) map[string]bool {
		m := map[string]bool{}
		for _, s := range l {
			m[s] = true
		}
		return m
	}
	gm, wm := in(g), in(w)
	var b strings.Builder
	for _, s := range g {
		if !wm[s] {
			fmt.Fprintf(&b, "- got  %s\n", s)
		}
	}
	for _, s := range w {
		if !gm[s] {
			fmt.Fprintf(&b, "+ want %s\n", s)
		}
	}
	return b.String()
}

// TestMigrationV1Data: a version 1 database holding a batch as version 1
// stored it (trace events whole in raw_events, processes WITHOUT ROWID)
// opens migrated: the trace events move to their tables, the unknown kind
// stays raw with its trace columns, the batch still rebuilds to the root
// the agent signed, and ingest goes on.
func TestMigrationV1Data(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "center.db")
	p := key(700, 9000)
	events := []capture.Event{
		{Seq: 1, Time: 1000, Kind: capture.KindFork, Proc: p, Parent: key(1, 1), Comm: "sh", Source: "ebpf"},
		traced("tr", 1, fileEv(1100, p, capture.KindFileOpen, capture.FileOp{Path: "/etc/shadow", Flags: 0, Inode: 9, Result: 3})),
		traced("tr", 2, capture.Event{Time: 1200, Kind: capture.KindExecHash, Proc: p, Source: "ebpf",
			Hashes: &capture.Hashes{SHA256: digestSHA, Path: "/bin/sh"}, Mem: &capture.MemSnippet{Addr: 64, Data: []byte("ELF")}}),
		traced("tr", 3, capture.Event{Time: 1300, Kind: capture.Kind(42), Proc: p}),
		traced("tr", 4, capture.Event{Time: 1400, Kind: capture.KindTraceNote, Proc: p, Note: &capture.TraceNote{What: "stop", Reason: "lineage_exited"}}),
	}
	b := sealed(t, "web-1", 1, events)

	db := openRaw(t, path)
	if _, _, err := migrateTo(ctx, db, 1, false); err != nil {
		t.Fatal(err)
	}
	// What version 1's IngestBatch wrote for b.
	stmts := []struct {
		q    string
		args []any
	}{
		{`INSERT INTO batches (host, seq, ts_start, ts_end, events, root, ingested) VALUES ('web-1', 1, ?, ?, ?, ?, 1)`,
			[]any{b.TSStart, b.TSEnd, len(events), b.Root[:]}},
		{`INSERT INTO hosts (agent_id, first_seen, last_seen, last_event) VALUES ('web-1', 1, 1, ?)`, []any{b.TSEnd}},
		{`INSERT INTO process_events (host, batch_seq, idx, seq, time, kind, pid, start, ppid, pstart, comm, source)
			VALUES ('web-1', 1, 0, 1, 1000, 'fork', 700, 9000, 1, 1, 'sh', 'ebpf')`, nil},
		{`INSERT INTO processes (host, pid, start, ppid, pstart, comm, start_time) VALUES ('web-1', 700, 9000, 1, 1, 'sh', 1000)`, nil},
	}
	for i := 1; i < len(events); i++ {
		enc, err := wire.EncodeEvent(events[i])
		if err != nil {
			t.Fatal(err)
		}
		stmts = append(stmts, struct {
			q    string
			args []any
		}{`INSERT INTO raw_events (host, batch_seq, idx, time, kind, event) VALUES ('web-1', 1, ?, ?, ?, ?)`,
			[]any{i, events[i].Time, int64(events[i].Kind), enc}})
	}
	for _, st := range stmts {
		if _, err := db.Exec(st.q, st.args...); err != nil {
			t.Fatalf("%s: %v", st.q, err)
		}
	}
	db.Close()

	s, err := Open(path, testLogger())
	if err != nil {
		t.Fatalf("open a version 1 database: %v", err)
	}
	defer s.Close()
	var v int
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil || v != len(migrations) {
		t.Fatalf("user_version %d, %v; want %d", v, err, len(migrations))
	}
	for tbl, want := range map[string]int{"process_events": 1, "processes": 1, "file_events": 1, "exe_hashes": 1,
		"mem_snippets": 1, "trace_notes": 1, "raw_events": 1} {
		if n := count(t, s, tbl); n != want {
			t.Errorf("%s: %d rows after the migration, want %d", tbl, n, want)
		}
	}
	raw := rowMap(t, s, `SELECT idx, kind, trace_id, trace_seq FROM raw_events`)
	if !reflect.DeepEqual(raw, map[string]any{"idx": int64(3), "kind": int64(42), "trace_id": "tr", "trace_seq": int64(3)}) {
		t.Errorf("raw_events row %v, want the kind-42 event with its trace columns", raw)
	}
	if got := rowMap(t, s, `SELECT id, comm, start_time FROM processes`); got["id"] != int64(1) || got["comm"] != "sh" {
		t.Errorf("processes row %v after the migration", got)
	}
	checkRebuild(t, s, b)
	evs, err := s.TraceEvents(ctx, "tr")
	if err != nil || len(evs) != 4 {
		t.Fatalf("TraceEvents = %+v, %v; want 4", evs, err)
	}
	// Ingest goes on, into the migrated tables.
	b2 := ingest(t, s, "web-1", 2, exec(2000, p, key(1, 1), "/bin/ls", "ls"),
		traced("tr", 5, fileEv(2100, p, capture.KindFileUnlink, capture.FileOp{Path: "/tmp/x"})))
	checkRebuild(t, s, b2)
	if got := rowMap(t, s, `SELECT exe, execed FROM processes WHERE pid = 700`); got["exe"] != "/bin/ls" || got["execed"] != int64(1) {
		t.Errorf("process after an exec on the migrated table: %v", got)
	}
	if refs, err := s.TraceBatches(ctx, "tr"); err != nil || !reflect.DeepEqual(refs, []BatchRef{{"web-1", 1}, {"web-1", 2}}) {
		t.Errorf("TraceBatches = %v, %v", refs, err)
	}
}
