package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// fingerprint is everything a refused statement must leave as it was: the
// schema, user_version, row counts, the connection's journal mode and the
// files in the database's directory.
func fingerprint(t *testing.T, s *Store) string {
	t.Helper()
	var b strings.Builder
	var v int
	var mode, schema string
	if err := s.db.QueryRow("PRAGMA user_version").Scan(&v); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		t.Fatal(err)
	}
	if err := s.db.QueryRow("SELECT group_concat(type || ' ' || name || ' ' || coalesce(sql, ''), char(10)) FROM sqlite_schema").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(&b, "user_version %d journal %s\n%s\n", v, mode, schema)
	for _, tbl := range []string{"hosts", "processes", "process_events", "network_events", "operators", "alerts"} {
		var n int
		if err := s.db.QueryRow("SELECT count(*) FROM " + tbl).Scan(&n); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s %d\n", tbl, n)
	}
	var exe string
	if err := s.db.QueryRow("SELECT group_concat(exe) FROM processes").Scan(&exe); err != nil {
		t.Fatal(err)
	}
	b.WriteString(exe + "\n")
	ents, err := os.ReadDir(filepath.Dir(s.Path()))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	b.WriteString(strings.Join(names, " "))
	return b.String()
}

func TestQueryRefusesWrites(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	ingest(t, s, "web-1", 7, columnsBatch()...)
	dir := filepath.Dir(s.Path())
	before := fingerprint(t, s)

	for _, tc := range []struct{ name, sql string }{
		{"INSERT", `INSERT INTO hosts (agent_id, first_seen, last_seen) VALUES ('evil', 1, 1)`},
		{"INSERT RETURNING", `INSERT INTO operators (id, created) VALUES ('mallory', 1) RETURNING id`},
		{"REPLACE", `REPLACE INTO hosts (agent_id, first_seen, last_seen) VALUES ('web-1', 1, 1)`},
		{"UPDATE", `UPDATE processes SET exe = '/bin/innocent'`},
		{"DELETE", `DELETE FROM process_events`},
		{"DELETE after a comment", "/* just a select */ -- really\nDELETE FROM process_events"},
		{"ATTACH DATABASE", `ATTACH DATABASE '` + filepath.Join(dir, "evil.db") + `' AS evil`},
		{"PRAGMA writable_schema=1", `PRAGMA writable_schema=1`},
		{"PRAGMA query_only=0", `PRAGMA query_only=0`},
		{"PRAGMA journal_mode=DELETE", `PRAGMA journal_mode=DELETE`},
		{"WITH ... INSERT", `WITH x AS (SELECT 1) INSERT INTO operators (id, created) SELECT 'mallory', 1 FROM x`},
		{"WITH ... DELETE", `WITH x AS (SELECT 1) DELETE FROM hosts WHERE agent_id IN (SELECT 'web-1' FROM x)`},
		{"CREATE TABLE", `CREATE TABLE evil (a)`},
		{"CREATE TEMP TABLE", `CREATE TEMP TABLE evil (a)`},
		{"CREATE TEMP TRIGGER", `CREATE TEMP TRIGGER evil AFTER INSERT ON hosts BEGIN SELECT 1; END`},
		{"CREATE VIEW", `CREATE VIEW evil AS SELECT 1`},
		{"DROP TABLE", `DROP TABLE alerts`},
		{"ALTER TABLE", `ALTER TABLE hosts ADD COLUMN evil TEXT`},
		{"VACUUM INTO", `VACUUM INTO '` + filepath.Join(dir, "copy.db") + `'`},
		{"VACUUM", `VACUUM`},
		{"load_extension", `SELECT load_extension('` + filepath.Join(dir, "evil.so") + `')`},
		{"load_extension in a WITH", `WITH x AS (SELECT load_extension('/nonexistent')) SELECT * FROM x`},
		{"two statements", `SELECT 1; DELETE FROM hosts`},
		{"REINDEX", `REINDEX`},
		{"ANALYZE", `ANALYZE`},
		{"SAVEPOINT", `SAVEPOINT x`},
		{"EXPLAIN DELETE", `EXPLAIN DELETE FROM hosts`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, _, err := s.Query(ctx, tc.sql, nil, 10, time.Second)
			if !errors.Is(err, ErrNotReadOnly) {
				t.Errorf("Query(%s): %v, want ErrNotReadOnly", tc.sql, err)
			} else {
				t.Logf("Query: %v", err)
			}
			// The same statement straight on the read-only pool, past the
			// classifier: the authorizer and mode=ro must hold on their own.
			rows, err := s.ReadOnly().QueryContext(ctx, tc.sql)
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				rows.Close()
			}
			if err == nil {
				t.Errorf("ReadOnly().Query(%s) succeeded", tc.sql)
			}
			if after := fingerprint(t, s); after != before {
				t.Fatalf("%s changed the database:\n%s\nthen\n%s", tc.name, before, after)
			}
		})
	}
}

// TestReadOnlyLayers takes the authorizer away from one connection and
// checks that mode=ro and query_only still refuse a write to the main
// database: the layers do not depend on each other.
func TestReadOnlyLayers(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	ingest(t, s, "web-1", 7, columnsBatch()...)
	before := fingerprint(t, s)
	conn, err := s.ReadOnly().Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.Raw(func(dc any) error { return dc.(sqlite.AuthorizerRegisterer).RegisterAuthorizer(nil) }); err != nil {
		t.Fatal(err)
	}
	defer setPolicy(conn, nil) //nolint:errcheck // the pool is closed with the test
	for _, q := range []string{
		`UPDATE processes SET exe = 'x'`,
		`PRAGMA query_only = 0`, // succeeds: a PRAGMA cannot stop its own undoing ...
		`DELETE FROM hosts`,     // ... but mode=ro still holds
	} {
		_, err := conn.ExecContext(ctx, q)
		if strings.HasPrefix(q, "PRAGMA") {
			continue
		}
		if code := sqliteCode(err); code != sqlite3.SQLITE_READONLY {
			t.Errorf("%s without the authorizer: %v (code %d), want SQLITE_READONLY", q, err, code)
		}
	}
	if after := fingerprint(t, s); after != before {
		t.Fatalf("database changed:\n%s\nthen\n%s", before, after)
	}
}

func TestQueryReads(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	ingest(t, s, "web-1", 7, columnsBatch()...)

	cols, rows, trunc, err := s.Query(ctx, `-- lineage of curl
		SELECT pid, exe, argv, start_time FROM processes WHERE host = ? AND pid >= ? ORDER BY pid`,
		[]any{"web-1", 100}, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cols, ",") != "pid,exe,argv,start_time" || trunc || len(rows) != 3 {
		t.Fatalf("Query: cols %v truncated %v rows %v", cols, trunc, rows)
	}
	if rows[1][0] != int64(200) || rows[1][1] != "/usr/bin/curl" || rows[1][2] != nil {
		t.Errorf("row 1 = %v, want pid 200 /usr/bin/curl and argv masked (nil)", rows[1])
	}
	for _, q := range []string{
		`VALUES (1), (2)`,
		`WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 5) SELECT sum(x) FROM c`,
		`SELECT name FROM pragma_table_info('processes')`,
		`SELECT "x;y", '--', [a;b] FROM (SELECT 1 AS "x;y", 2 AS [a;b]);`,
		`select json_extract(health, '$.cpu') from hosts`,
	} {
		if _, _, _, err := s.Query(ctx, q, nil, 0, 0); err != nil {
			t.Errorf("Query(%s): %v", q, err)
		}
	}

	// Row limit.
	count := `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 50) SELECT x FROM c`
	if _, rows, trunc, err := s.Query(ctx, count, nil, 10, 0); err != nil || len(rows) != 10 || !trunc {
		t.Errorf("50 rows with maxRows 10: %d rows, truncated %v, %v; want 10, true", len(rows), trunc, err)
	}
	if _, rows, trunc, err := s.Query(ctx, count, nil, 50, 0); err != nil || len(rows) != 50 || trunc {
		t.Errorf("50 rows with maxRows 50: %d rows, truncated %v, %v; want 50, false", len(rows), trunc, err)
	}

	// Time limit: a statement that would run for minutes is stopped.
	start := time.Now()
	_, _, _, err = s.Query(ctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000)
		SELECT count(*) FROM c`, nil, 0, 200*time.Millisecond)
	took := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("long query: %v, want context.DeadlineExceeded", err)
	}
	if took > 2*time.Second {
		t.Errorf("long query stopped after %v, want about 200ms", took)
	}
	t.Logf("long query: %v after %v", err, took)
	// The pool is fine afterwards.
	if _, rows, _, err := s.Query(ctx, `SELECT count(*) FROM processes`, nil, 0, 0); err != nil || rows[0][0] != int64(3) {
		t.Errorf("query after a timeout: %v %v", rows, err)
	}

	// A caller's cancellation ends it too.
	cctx, cancel := context.WithCancel(ctx)
	time.AfterFunc(50*time.Millisecond, cancel)
	if _, _, _, err := s.Query(cctx, `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c`,
		nil, 0, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled query: %v, want context.Canceled", err)
	}
}

// TestSandboxMasks: command lines, environments and alert contexts read
// as NULL in the sandbox, however they are reached (a column, *, a
// function, a view, a condition), and the pool's own readers still see them.
func TestSandboxMasks(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	ingest(t, s, "web-1", 7, columnsBatch()...)
	var plain string
	if err := s.ReadOnly().QueryRowContext(ctx, `SELECT argv FROM processes WHERE pid = 200`).Scan(&plain); err != nil || !strings.Contains(plain, "curl") {
		t.Fatalf("the pool's own read of argv: %q, %v", plain, err)
	}
	for _, c := range []struct {
		q      string
		masked string
	}{
		{`SELECT argv FROM processes WHERE pid = 200`, "processes.argv"},
		{`SELECT * FROM processes WHERE pid = 200`, "processes.argv,processes.cmdline"},
		{`SELECT json_extract(argv, '$[1]') FROM process_events WHERE pid = 200`, "process_events.argv"},
		{`SELECT upper(cmdline), env FROM process_events WHERE pid = 200`, "process_events.cmdline,process_events.env"},
		{`WITH x AS (SELECT cmdline AS c FROM processes) SELECT c FROM x WHERE c IS NOT NULL OR 1`, "processes.cmdline"},
		{`SELECT context FROM alerts`, "alerts.context"},
	} {
		res, err := s.Sandbox(ctx, c.q, nil, 0, 0)
		if err != nil {
			t.Fatalf("%s: %v", c.q, err)
		}
		if got := strings.Join(res.Masked, ","); got != c.masked {
			t.Errorf("%s: masked %q, want %q", c.q, got, c.masked)
		}
		for _, row := range res.Rows {
			for i, v := range row {
				if str, ok := v.(string); ok && (strings.Contains(str, "curl") && res.Cols[i] != "exe" && res.Cols[i] != "comm") {
					t.Errorf("%s: column %s shows %q", c.q, res.Cols[i], str)
				}
			}
		}
	}
	// A condition on a masked column matches nothing.
	res, err := s.Sandbox(ctx, `SELECT pid FROM processes WHERE cmdline LIKE '%curl%'`, nil, 0, 0)
	if err != nil || len(res.Rows) != 0 {
		t.Errorf("condition on a masked column: %v rows, %v; want none", res.Rows, err)
	}
	// And the pool is unchanged afterwards (the connection's policy reset).
	for range 4 {
		if err := s.ReadOnly().QueryRowContext(ctx, `SELECT argv FROM processes WHERE pid = 200`).Scan(&plain); err != nil || !strings.Contains(plain, "curl") {
			t.Fatalf("after a sandbox query, the pool reads argv as %q, %v", plain, err)
		}
	}
}

func TestClassify(t *testing.T) {
	for q, ok := range map[string]bool{
		"SELECT 1":                            true,
		"  select 1 ;  ":                      true,
		"SELECT 1;;":                          true,
		"SELECT ';DELETE FROM x'":             true,
		`SELECT "a;b" FROM t`:                 true,
		"SELECT 1 -- ; DELETE\n":              true,
		"SELECT 1 /* ; DELETE */":             true,
		"/* c */ WITH x AS (SELECT 1) SELECT": true,
		"VALUES (1)":                          true,
		"SELECT 1; DELETE FROM t":             false,
		"SELECT 1; -- x\n SELECT 2":           false,
		"SELECT 'it''s'; DELETE FROM t":       false,
		"DELETE FROM t":                       false,
		"PRAGMA table_info(t)":                false,
		"":                                    false,
		" -- only a comment":                  false,
		"SELECT 1\x00; DELETE FROM t":         false,
		"(SELECT 1)":                          false,
		"EXPLAIN SELECT 1":                    false,
	} {
		err := classify(q)
		if (err == nil) != ok {
			t.Errorf("classify(%q) = %v, want ok=%v", q, err, ok)
		}
		if err != nil && !errors.Is(err, ErrNotReadOnly) {
			t.Errorf("classify(%q) = %v, not ErrNotReadOnly", q, err)
		}
	}
}
