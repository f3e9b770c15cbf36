package rules

import (
	"context"
	"slices"
	"testing"
)

// TestAgentSchemaMatchesStore: the agent's copy of the schema must have the
// center's columns, in the same order with the same types and constraints,
// or a rule checked against one would break on the other.
func TestAgentSchemaMatchesStore(t *testing.T) {
	ctx := context.Background()
	center, err := openMemDB(storeDDL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer center.Close()
	agent, err := openMemDB(AgentSchema())
	if err != nil {
		t.Fatal(err)
	}
	defer agent.Close()
	cols := func(db *memDB, table string) []string {
		rows, err := db.QueryContext(ctx, `SELECT name || ' ' || type || ' ' || "notnull" || ' ' || coalesce(dflt_value, '-') || ' ' || pk
			FROM pragma_table_info(?)`, table)
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var s string
			rows.Scan(&s)
			out = append(out, s)
		}
		return out
	}
	for _, table := range agentTables {
		c, a := cols(center, table), cols(agent, table)
		if len(c) == 0 || !slices.Equal(c, a) {
			t.Errorf("table %s:\n center %q\n agent  %q", table, c, a)
		}
	}
}

func TestShapeSQLMergesCTEs(t *testing.T) {
	q, err := shapeSQL("with recursive x(n) as (select 1) select host, pid, start from new_process_events, x")
	if err != nil {
		t.Fatal(err)
	}
	want := "with recursive " + incrementalCTEs + ",\n x(n) as (select 1) select host, pid, start from new_process_events, x"
	if q != want {
		t.Errorf("shapeSQL =\n%s\nwant\n%s", q, want)
	}
}
