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
