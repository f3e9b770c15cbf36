package rules

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
)

// packWith builds a one-rule pack around sql, with a fixture that expects
// nothing, running on runsOn.
func packWith(t *testing.T, sql, runsOn string) *Pack {
	t.Helper()
	src := fmt.Sprintf(`pack: p
version: "1"
rules:
  - id: r
    title: t
    severity: low
    attack: T1059
    runs_on: %s
    sql: |
%s
    fixtures:
      - name: empty
        expect: {count: 0}
`, runsOn, indent(sql, "      "))
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return p
}

func indent(s, by string) string {
	lines := strings.Split(s, "\n")
	for i, l := range lines {
		lines[i] = by + l
	}
	return strings.Join(lines, "\n")
}

func checkOne(t *testing.T, p *Pack) RuleReport {
	t.Helper()
	rep, err := Check(context.Background(), p, storeDDL(t))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	if len(rep.Rules) != 1 {
		t.Fatalf("report has %d rules", len(rep.Rules))
	}
	return rep.Rules[0]
}

func TestCheckRefuses(t *testing.T) {
	cases := []struct {
		name, sql, runsOn, want string
	}{
		{"insert", `INSERT INTO alerts (rule_id, severity, host, pid, start, time, last_time) SELECT 'x', 'low', host, pid, start, 0, 0 FROM new_process_events`, "center", "not INSERT"},
		{"update", `UPDATE processes SET exe = '' WHERE pid IN (SELECT pid FROM new_process_events)`, "center", "not UPDATE"},
		{"delete", `DELETE FROM process_events WHERE id IN (SELECT id FROM new_process_events)`, "center", "not DELETE"},
		{"attach", `ATTACH DATABASE '/tmp/x.db' AS x`, "center", "not ATTACH"},
		{"pragma", `PRAGMA writable_schema = 1`, "center", "not PRAGMA"},
		{"two statements", "SELECT host, pid, start FROM new_process_events; DELETE FROM processes", "center", "more than one statement"},
		{"semicolon in a string is fine but a second statement is not", "SELECT host, pid, start FROM new_process_events WHERE comm = ';'; SELECT 1", "center", "more than one statement"},
		{"cte that writes", "WITH x AS (SELECT 1) DELETE FROM processes WHERE pid IN (SELECT pid FROM new_process_events)", "center", "DELETE processes refused"},
		{"cte that inserts", "WITH x AS (SELECT host, pid, start FROM new_process_events) INSERT INTO hosts (agent_id, first_seen, last_seen) SELECT host, 0, 0 FROM x", "center", "INSERT hosts refused"},
		{"pragma function", "SELECT host, pid, start FROM new_process_events, pragma_writable_schema", "center", ""},
		{"load_extension", "SELECT host, pid, start FROM new_process_events WHERE load_extension('x') IS NULL", "center", "function load_extension refused"},
		{"unknown column", "SELECT host, pid, start, exe_path FROM new_process_events", "center", "unknown column exe_path"},
		{"unknown qualified column", "SELECT e.host, e.pid, e.start FROM new_process_events e WHERE e.commandline LIKE '%x%'", "center", "unknown column e.commandline"},
		{"unknown table", "SELECT p.host, p.pid, p.start FROM new_process_events e JOIN procs p ON p.pid = e.ppid", "center", "unknown table procs"},
		{"table the agent lacks", "SELECT e.host, e.pid, e.start FROM new_process_events e JOIN alerts a ON a.pid = e.pid", "agent", "agent schema: unknown table alerts"},
		{"missing required columns", "SELECT host, pid FROM new_process_events", "center", "lacks column(s) start"},
		{"required column twice", "SELECT host, pid, start, ppid AS pid FROM new_process_events", "center", `two columns named "pid"`},
		{"double-quoted identifier", `SELECT host, pid, start FROM new_process_events WHERE "exe_path" = 'x'`, "center", "double quotes are not allowed"},
		{"positional parameter", "SELECT host, pid, start FROM new_process_events WHERE id > ?", "center", "parameter ?"},
		{"unknown parameter", "SELECT host, pid, start FROM new_process_events WHERE id > :last", "center", "parameter :last"},
		{"not incremental", "SELECT host, pid, start FROM processes", "center", "reads none of new_process_events"},
		{"values", "VALUES (1)", "center", "not VALUES"},
		{"unterminated string", "SELECT host, pid, start FROM new_process_events WHERE comm = 'x", "center", "unterminated '"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rr := checkOne(t, packWith(t, c.sql, c.runsOn))
			if c.want == "" { // a read-only oddity that must simply not write
				return
			}
			if rr.OK() {
				t.Fatalf("rule passed; want a problem with %q", c.want)
			}
			if got := strings.Join(rr.Problems, "\n"); !strings.Contains(got, c.want) {
				t.Errorf("problems:\n%s\nwant one containing %q", got, c.want)
			}
		})
	}
}

func TestCheckAccepts(t *testing.T) {
	for name, sql := range map[string]string{
		"with recursive": `WITH RECURSIVE anc (host, pid, start, depth) AS (
	SELECT e.host, e.ppid, e.pstart, 1 FROM new_process_events e WHERE e.kind = 'exec' AND e.comm = 'bash'
	UNION ALL
	SELECT p.host, p.ppid, p.pstart, a.depth + 1 FROM anc a JOIN processes p ON p.host = a.host AND p.pid = a.pid AND p.start = a.start
	WHERE a.depth < 8
)
SELECT host, pid, start FROM anc WHERE pid IS NOT NULL`,
		"comments and trailing semicolon": "-- leading comment\n/* block; with a semicolon */ SELECT host, pid, start FROM new_process_events -- why\n;",
		"named bounds":                    "SELECT host, pid, start FROM process_events WHERE id > :since_process_events AND id <= :until_process_events AND id IN (SELECT id FROM new_process_events)",
		"network and files":               "SELECT n.host, n.pid, n.start FROM new_network_events n UNION SELECT f.host, f.pid, f.start FROM new_file_events f",
	} {
		t.Run(name, func(t *testing.T) {
			rr := checkOne(t, packWith(t, sql, "both"))
			if !rr.OK() {
				t.Errorf("rule refused: %v %+v", rr.Problems, rr.Fixtures)
			}
		})
	}
}

func TestCheckFixtures(t *testing.T) {
	src := `pack: p
version: "1"
rules:
  - id: bash
    title: t
    severity: low
    attack: T1059
    runs_on: both
    sql: SELECT host, pid, start FROM new_process_events WHERE comm = 'bash'
    fixtures:
      - name: right
        rows:
          process_events:
            - {kind: exec, pid: 1, start: 1, comm: bash}
            - {kind: exec, pid: 1, start: 1, comm: bash}
            - {kind: exec, pid: 2, start: 1, comm: sh}
        expect: {count: 1, matches: [{pid: 1, start: 1}]}
      - name: wrong count
        rows:
          process_events:
            - {kind: exec, pid: 1, start: 1, comm: bash}
        expect: {count: 2}
      - name: wrong match
        rows:
          process_events:
            - {kind: exec, pid: 1, start: 1, comm: bash}
        expect: {matches: [{pid: 9, start: 9}]}
      - name: bad column
        rows:
          process_events:
            - {kind: exec, pid: 1, start: 1, command: bash}
        expect: {count: 0}
      - name: bad table
        rows:
          procs:
            - {pid: 1}
        expect: {count: 0}
      - name: constraint
        rows:
          process_events:
            - {kind: spawn, pid: 1, start: 1}
        expect: {count: 0}
      - name: missing key column
        rows:
          processes:
            - {pid: 1}
        expect: {count: 0}
  - id: nofix
    title: t
    severity: low
    attack: T1059
    sql: SELECT host, pid, start FROM new_process_events
`
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Check(context.Background(), p, storeDDL(t))
	if err != nil {
		t.Fatal(err)
	}
	if rep.OK() {
		t.Fatal("report OK, want failures")
	}
	out := rep.Format("p.yaml")
	for _, want := range []string{
		"FAIL bash (p.yaml:4, runs on center,agent, 2/14 fixture runs passed)",
		`fixture "wrong count" (line 18, center schema): matched 1 process(es) [host-1/1@1], want 2`,
		`fixture "wrong match" (line 23, agent schema): did not match host-1/9@9`,
		`matched host-1/1@1, which the fixture does not expect`,
		`fixture "bad column" (line 28, center schema): line 31: table process_events has no column command`,
		`no table procs in the center schema`,
		`fixture "constraint" (line 38, center schema): line 41: insert into process_events: CHECK constraint failed`,
		`a processes row needs column start`,
		"FAIL nofix (p.yaml:48, runs on center, 0/0 fixture runs passed)",
		"no fixtures",
		"0 rule(s) passed, 2 failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}

func TestBrokenPackReport(t *testing.T) {
	data, err := os.ReadFile("../testdata/rules/broken.yaml")
	if err != nil {
		t.Fatal(err)
	}
	p, err := Parse("broken.yaml", data)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := Check(context.Background(), p, storeDDL(t))
	if err != nil {
		t.Fatal(err)
	}
	out := rep.Format("broken.yaml")
	for _, want := range []string{
		"FAIL writes (broken.yaml:6,", "rule sql is not read-only: DELETE processes refused",
		"FAIL typo (broken.yaml:12,", "on the center schema: unknown column e.cmd_line", "on the agent schema: unknown column e.cmd_line",
		"FAIL no-start (broken.yaml:19,", "lacks column(s) start",
		"FAIL wrong-fixture (broken.yaml:25,", `fixture "expects sh" (line 31, center schema): matched 0 process(es) [], want 1`,
		"PASS good (broken.yaml:36,",
		"1 rule(s) passed, 4 failed",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
