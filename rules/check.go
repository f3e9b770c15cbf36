package rules

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Fixture defaults: what a fixture row gets for a required column it does
// not name, so fixtures only spell out what the rule looks at.
const (
	defaultFixtureHost = "host-1"
	fixtureEpoch       = int64(1_700_000_000) * int64(time.Second) // time of a fixture's first row
)

// checkTimeout bounds each statement Check runs.
const checkTimeout = 5 * time.Second

// Report is Check's verdict on a pack, rule by rule.
type Report struct {
	Pack  string
	Rules []RuleReport
}

// OK reports whether every rule passed.
func (r *Report) OK() bool {
	for _, rr := range r.Rules {
		if !rr.OK() {
			return false
		}
	}
	return true
}

// RuleReport is one rule's result.
type RuleReport struct {
	ID       string
	Line     int
	RunsOn   Target
	Problems []string // with the SQL: shape, read-only, columns
	Fixtures []FixtureReport
}

// OK reports whether the rule has no problem and every fixture passed.
func (r RuleReport) OK() bool {
	if len(r.Problems) > 0 {
		return false
	}
	for _, f := range r.Fixtures {
		if !f.OK() {
			return false
		}
	}
	return true
}

// FixtureReport is one fixture run on one target's schema.
type FixtureReport struct {
	Name     string
	Line     int
	Target   Target
	Got      []ProcessKey // distinct matches, in result order
	Problems []string
}

// OK reports whether the fixture passed.
func (f FixtureReport) OK() bool { return len(f.Problems) == 0 }

// Check validates every rule of a pack against the schemas it will run on
// (centerDDL for rules that run on the center, AgentSchema for rules that
// run on agents) and runs its fixtures:
//
//   - the SQL is one SELECT (or WITH ... SELECT) with only the since_/until_
//     parameters and reads a new_* view (see shapeSQL);
//   - it prepares on an in-memory database with the schema, under the
//     read-only authorizer: an unknown table or column, or anything that
//     would write (INSERT/UPDATE/DELETE even inside a WITH, ATTACH, PRAGMA,
//     CREATE...) is a problem naming the rule and what was refused;
//   - it returns host, pid and start;
//   - each fixture's rows go into a fresh database and the rule runs once
//     with every cursor at 0; the distinct (host, pid, start) it returns
//     must match the fixture's expectation;
//   - a rule has at least one fixture.
//
// The error is for Check being unable to work (a bad centerDDL); problems
// with the pack are in the Report.
func Check(ctx context.Context, p *Pack, centerDDL string) (*Report, error) {
	rep := &Report{Pack: p.Name}
	schemas := map[Target]string{Center: centerDDL, Agent: agentSchema}
	empty := map[Target]*memDB{}
	defer func() {
		for _, db := range empty {
			db.Close()
		}
	}()
	for _, t := range []Target{Center, Agent} {
		db, err := openMemDB(schemas[t])
		if err != nil {
			return nil, fmt.Errorf("rules: check: %s schema: %w", t, err)
		}
		empty[t] = db
	}
	for _, r := range p.Rules {
		rr := RuleReport{ID: r.ID, Line: r.Line, RunsOn: r.RunsOn}
		c, err := compile(p.Name, r)
		if err != nil {
			rr.Problems = append(rr.Problems, err.Error())
			rep.Rules = append(rep.Rules, rr)
			continue
		}
		if len(r.Fixtures) == 0 {
			rr.Problems = append(rr.Problems, "no fixtures: give at least one (rows and the expected matches)")
		}
		for _, t := range []Target{Center, Agent} {
			if r.RunsOn&t == 0 {
				continue
			}
			if err := staticCheck(ctx, c, empty[t]); err != nil {
				rr.Problems = append(rr.Problems, fmt.Sprintf("on the %s schema: %v", t, err))
				continue
			}
			for _, f := range r.Fixtures {
				rr.Fixtures = append(rr.Fixtures, runFixture(ctx, c, f, t, schemas[t]))
			}
		}
		rep.Rules = append(rep.Rules, rr)
	}
	return rep, nil
}

// staticCheck prepares and runs the rule on an empty database.
func staticCheck(ctx context.Context, c *compiled, db *memDB) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := limitConn(conn); err != nil {
		return err
	}
	_, _, err = c.evaluate(ctx, conn, marks{}, marks{}, 1, true)
	return describeSQLError(err)
}

var (
	noSuchRE = regexp.MustCompile(`no such (column|table|function): ([^\s()]+)`)
	sqliteRE = regexp.MustCompile(`^(?:SQL logic error|constraint failed): (.*?)(?: \(\d+\))?$`)
)

// describeSQLError rewrites SQLite's messages into a rule author's terms.
func describeSQLError(err error) error {
	if err == nil || errors.Is(err, ErrNotReadOnly) || errors.Is(err, ErrTimeout) {
		return err
	}
	msg := err.Error()
	if m := noSuchRE.FindStringSubmatch(msg); m != nil {
		switch m[1] {
		case "column":
			return fmt.Errorf("unknown column %s", m[2])
		case "table":
			return fmt.Errorf("unknown table %s", m[2])
		default:
			return fmt.Errorf("unknown function %s", m[2])
		}
	}
	if m := sqliteRE.FindStringSubmatch(msg); m != nil {
		return errors.New(m[1])
	}
	return err
}

type colInfo struct {
	name    string
	notNull bool
	hasDflt bool
	pk      bool
}

// runFixture loads a fixture into a fresh database and runs the rule.
func runFixture(ctx context.Context, c *compiled, f Fixture, t Target, ddl string) FixtureReport {
	fr := FixtureReport{Name: f.Name, Line: f.Line, Target: t}
	fail := func(format string, args ...any) FixtureReport {
		fr.Problems = append(fr.Problems, fmt.Sprintf(format, args...))
		return fr
	}
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	db, err := openMemDB(ddl)
	if err != nil {
		return fail("open database: %v", err)
	}
	defer db.Close()
	conn, err := db.Conn(ctx)
	if err != nil {
		return fail("open database: %v", err)
	}
	defer conn.Close()

	for _, ft := range f.Tables {
		rows, err := conn.QueryContext(ctx, `SELECT name, "notnull", dflt_value IS NOT NULL, pk > 0 FROM pragma_table_info(?)`, ft.Table)
		if err != nil {
			return fail("line %d: table %s: %v", ft.Line, ft.Table, err)
		}
		var cols []colInfo
		for rows.Next() {
			var ci colInfo
			if err := rows.Scan(&ci.name, &ci.notNull, &ci.hasDflt, &ci.pk); err != nil {
				rows.Close()
				return fail("line %d: table %s: %v", ft.Line, ft.Table, err)
			}
			cols = append(cols, ci)
		}
		rows.Close()
		if len(cols) == 0 {
			return fail("line %d: no table %s in the %s schema", ft.Line, ft.Table, t)
		}
		for i, row := range ft.Rows {
			names, vals := slices.Clone(row.Cols), slices.Clone(row.Vals)
			for _, n := range names {
				if !slices.ContainsFunc(cols, func(ci colInfo) bool { return ci.name == n }) {
					return fail("line %d: table %s has no column %s", row.Line, ft.Table, n)
				}
			}
			for _, ci := range cols {
				if slices.Contains(names, ci.name) || !ci.notNull || ci.hasDflt {
					continue
				}
				var v any
				switch ci.name {
				case "host":
					v = defaultFixtureHost
				case "batch_seq":
					v = int64(1)
				case "idx":
					v = int64(i)
				case "seq":
					v = int64(i + 1)
				case "time":
					v = fixtureEpoch + int64(i)*int64(time.Millisecond)
				default:
					if ci.pk && ci.name == "id" {
						continue
					}
					return fail("line %d: a %s row needs column %s", row.Line, ft.Table, ci.name)
				}
				names, vals = append(names, ci.name), append(vals, v)
			}
			q := fmt.Sprintf("INSERT INTO %s (%s) VALUES (%s)", ft.Table, strings.Join(names, ", "),
				strings.TrimSuffix(strings.Repeat("?, ", len(names)), ", "))
			if _, err := conn.ExecContext(ctx, q, vals...); err != nil {
				return fail("line %d: insert into %s: %v", row.Line, ft.Table, describeSQLError(err))
			}
		}
	}
	until, err := maxIDs(ctx, conn)
	if err != nil {
		return fail("%v", err)
	}
	if err := limitConn(conn); err != nil {
		return fail("%v", err)
	}
	ms, truncated, err := c.evaluate(ctx, conn, marks{}, until, 100_000, true)
	if err != nil {
		return fail("run: %v", describeSQLError(err))
	}
	if truncated {
		return fail("run: more than 100000 matches")
	}
	seen := map[ProcessKey]bool{}
	for _, m := range ms {
		if !seen[m.key] {
			seen[m.key] = true
			fr.Got = append(fr.Got, m.key)
		}
	}
	if f.Count != nil && len(fr.Got) != *f.Count {
		fail("matched %d process(es) %s, want %d", len(fr.Got), keyList(fr.Got), *f.Count)
	}
	if f.Matches != nil {
		want := map[ProcessKey]bool{}
		for _, k := range f.Matches {
			want[k] = true
			if !seen[k] {
				fail("did not match %s", k)
			}
		}
		for _, k := range fr.Got {
			if !want[k] {
				fail("matched %s, which the fixture does not expect", k)
			}
		}
	}
	return fr
}

func keyList(ks []ProcessKey) string {
	if len(ks) == 0 {
		return "[]"
	}
	s := make([]string, len(ks))
	for i, k := range ks {
		s[i] = k.String()
	}
	return "[" + strings.Join(s, " ") + "]"
}

// Format writes the report as `rules check` prints it: one line per rule,
// PASS or FAIL, then the reasons.
func (r *Report) Format(source string) string {
	var b strings.Builder
	pass, fail := 0, 0
	for _, rr := range r.Rules {
		verdict := "PASS"
		if !rr.OK() {
			verdict = "FAIL"
			fail++
		} else {
			pass++
		}
		nf := 0
		for _, f := range rr.Fixtures {
			if f.OK() {
				nf++
			}
		}
		fmt.Fprintf(&b, "%s %s (%s:%d, runs on %s, %d/%d fixture runs passed)\n", verdict, rr.ID, source, rr.Line, rr.RunsOn, nf, len(rr.Fixtures))
		for _, p := range rr.Problems {
			fmt.Fprintf(&b, "    %s\n", p)
		}
		for _, f := range rr.Fixtures {
			for _, p := range f.Problems {
				fmt.Fprintf(&b, "    fixture %q (line %d, %s schema): %s\n", f.Name, f.Line, f.Target, p)
			}
		}
	}
	fmt.Fprintf(&b, "%d rule(s) passed, %d failed\n", pass, fail)
	return b.String()
}
