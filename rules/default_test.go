package rules

import (
	"context"
	"database/sql"
	"strings"
	"sync"
	"testing"
)

var (
	schemaOnce sync.Once
	schemaDDL  string
	schemaErr  error
)

// storeDDL is the center store's schema, built once per test binary.
func storeDDL(t testing.TB) string {
	t.Helper()
	schemaOnce.Do(func() { schemaDDL, schemaErr = StoreSchema(context.Background()) })
	if schemaErr != nil {
		t.Fatalf("StoreSchema: %v", schemaErr)
	}
	return schemaDDL
}

func TestDefaultPackPassesCheck(t *testing.T) {
	p, err := Default()
	if err != nil {
		t.Fatalf("Default: %v", err)
	}
	rep, err := Check(context.Background(), p, storeDDL(t))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	t.Log("\n" + rep.Format(p.Source))
	if !rep.OK() {
		t.Fatalf("default pack fails its own fixtures")
	}
}

// TestDefaultPackPlans: every default rule reads its new rows by rowid
// range and reaches other big tables only through their keys, so a run
// costs the same on a day-old store as on a year-old one.
func TestDefaultPackPlans(t *testing.T) {
	db, err := openMemDB(storeDDL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	args := []any{}
	for _, tb := range eventTables {
		args = append(args, sql.Named("since_"+tb, 0), sql.Named("until_"+tb, 0))
	}
	for _, r := range mustDefault(t).Rules {
		c, err := compile("default", r)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := db.QueryContext(context.Background(), "EXPLAIN QUERY PLAN "+c.query, args...)
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
		if len(plan) == 0 || !strings.Contains(plan[0], "USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)") {
			t.Errorf("%s: first step %q, want a rowid range over new rows", r.ID, plan)
		}
		for _, step := range plan {
			if strings.HasPrefix(step, "SCAN ") && !strings.Contains(step, "VIRTUAL TABLE") {
				t.Errorf("%s: full scan %q in plan %q", r.ID, step, plan)
			}
		}
	}
}
