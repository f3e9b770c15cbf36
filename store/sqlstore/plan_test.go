package sqlstore

import (
	"strings"
	"testing"
)

// TestLineagePlans pins the lineage queries to index searches: a scan of
// processes in either walk turns a millisecond query into a host-sized one.
func TestLineagePlans(t *testing.T) {
	s := openTest(t)
	for name, q := range map[string]string{"ancestors": ancestorsSQL, "descendants": descendantsSQL} {
		rows, err := s.ro.Query("EXPLAIN QUERY PLAN "+q, "h", 1, 1, 10, 10)
		if err != nil {
			t.Fatal(err)
		}
		var plan []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, detail)
		}
		rows.Close()
		all := strings.Join(plan, "\n")
		for _, line := range plan {
			if strings.HasPrefix(line, "SCAN") && !strings.HasPrefix(line, "SCAN anc") && !strings.HasPrefix(line, "SCAN d") &&
				line != "SCAN CONSTANT ROW" {
				t.Errorf("%s plan scans a table:\n%s", name, all)
			}
			if strings.HasPrefix(line, "SEARCH") && !strings.Contains(line, "pid=?") && !strings.Contains(line, "ppid=?") {
				t.Errorf("%s plan searches by host alone:\n%s", name, all)
			}
		}
	}
}

// TestTracePlans pins the trace and link queries to their indexes: each
// runs per trace or per ingested batch, over tables that only grow.
func TestTracePlans(t *testing.T) {
	s := openTest(t)
	plan := func(q string, args ...any) string {
		t.Helper()
		rows, err := s.db.Query("EXPLAIN QUERY PLAN "+q, args...)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var id, parent, notused int
			var detail string
			if err := rows.Scan(&id, &parent, &notused, &detail); err != nil {
				t.Fatal(err)
			}
			out = append(out, detail)
		}
		return strings.Join(out, "\n")
	}
	queries := map[string]struct {
		sql  string
		args []any
	}{
		"trace batches": {traceBatchesSQL, []any{"t"}},
		"open links":    {`SELECT ` + linkCols + ` FROM links WHERE to_host = ? AND to_event IS NULL AND time BETWEEN ? AND ?`, []any{"h", 0, 1}},
		"find accept": {`SELECT id, pid, start FROM network_events
			WHERE dst_ip = ?1 AND dst_port = ?2 AND host = ?3 AND kind = 'accept' AND proto = ?4
			  AND src_ip = ?5 AND src_port = ?6 AND time BETWEEN ?7 - ?8 AND ?7 + ?8
			ORDER BY abs(time - ?7), id LIMIT 1`, []any{"a", 1, "h", 6, "b", 2, 0, 1}},
	}
	for _, tbl := range TraceTables {
		d := `SELECT * FROM ` + tbl + ` WHERE trace_id = ?`
		queries["trace events "+tbl] = struct {
			sql  string
			args []any
		}{d, []any{"t"}}
	}
	for name, q := range queries {
		p := plan(q.sql, q.args...)
		for _, line := range strings.Split(p, "\n") {
			if strings.HasPrefix(line, "SCAN") && !strings.Contains(line, "USING") && !strings.HasPrefix(line, "SCAN CONSTANT") {
				t.Errorf("%s scans a table:\n%s", name, p)
			}
		}
		if !strings.Contains(p, "INDEX") {
			t.Errorf("%s uses no index:\n%s", name, p)
		}
	}
}
