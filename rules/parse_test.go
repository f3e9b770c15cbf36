package rules

import (
	"errors"
	"strings"
	"testing"
	"time"
)

const minimalRule = `
  - id: r1
    title: t
    severity: high
    attack: T1059.004
    sql: SELECT host, pid, start FROM new_process_events
`

func TestParseMinimal(t *testing.T) {
	p, err := Parse("p.yaml", []byte("pack: p\nversion: '1'\nrules:"+minimalRule))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	r := p.Rules[0]
	if r.ID != "r1" || r.Severity != SeverityHigh || r.Attack != "T1059.004" || r.RunsOn != Center || r.Action.Trace != nil {
		t.Errorf("rule = %+v", r)
	}
	if r.Line != 4 || r.SQLLine != 8 {
		t.Errorf("rule line %d sql line %d, want 4 and 8", r.Line, r.SQLLine)
	}
}

func TestParseFull(t *testing.T) {
	src := `format: 1
pack: my-pack
version: 2.1.0
rules:
  - id: r1
    title: t
    severity: critical
    attack: T1059
    runs_on: both
    sql: |
      SELECT host, pid, start
      FROM new_process_events
    action:
      alert: true
      trace: {depth: 3, duration: 90s, collect: [cmdlines, files]}
    fixtures:
      - name: f
        rows:
          process_events:
            - &ev {kind: exec, pid: 1, start: 2, argv: [sh, -c, "a b"], time: 2024-01-02T03:04:05Z, ok: true}
            - {<<: *ev, pid: 3}
        expect: {count: 2, matches: [{pid: 1, start: 2}, {host: h, pid: 3, start: 2}]}
`
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	r := p.Rules[0]
	if r.RunsOn != Center|Agent {
		t.Errorf("runs_on = %v, want center,agent", r.RunsOn)
	}
	if r.SQLLine != 11 {
		t.Errorf("sql line %d, want 11", r.SQLLine)
	}
	tr := r.Action.Trace
	if tr == nil || tr.Depth != 3 || tr.Duration != 90*time.Second || tr.Collect != CollectCmdlines|CollectFiles {
		t.Fatalf("trace = %+v", tr)
	}
	f := r.Fixtures[0]
	if f.Count == nil || *f.Count != 2 || len(f.Matches) != 2 || f.Matches[0].Host != defaultFixtureHost || f.Matches[1].Host != "h" {
		t.Errorf("expect = %v %+v", f.Count, f.Matches)
	}
	rows := f.Tables[0].Rows
	if len(rows) != 2 {
		t.Fatalf("rows = %+v", rows)
	}
	got := map[string]any{}
	for i, c := range rows[0].Cols {
		got[c] = rows[0].Vals[i]
	}
	want := map[string]any{"kind": "exec", "pid": int64(1), "start": int64(2), "argv": `["sh","-c","a b"]`,
		"cmdline": "sh -c a b", "time": time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano(), "ok": int64(1)}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("row column %s = %#v, want %#v", k, got[k], v)
		}
	}
	merged := map[string]any{}
	for i, c := range rows[1].Cols {
		merged[c] = rows[1].Vals[i]
	}
	if merged["pid"] != int64(3) || merged["kind"] != "exec" {
		t.Errorf("merged row = %v", merged)
	}
}

func TestParseErrorsHaveLines(t *testing.T) {
	head := "pack: p\nversion: '1'\nrules:\n"
	cases := []struct {
		name string
		src  string
		line int
		want string
	}{
		{"yaml syntax", "pack: p\nversion: 1: 2\n", 2, "mapping values are not allowed"},
		{"unknown top key", "pack: p\nversion: '1'\nrulez: []\n", 3, `unknown key "rulez"`},
		{"missing rules", "pack: p\nversion: '1'\n", 1, `missing "rules"`},
		{"bad pack name", "pack: My Pack\nversion: '1'\nrules:" + minimalRule, 1, "pack name"},
		{"newer format", "format: 2\n" + head + minimalRule[1:], 1, "format 2"},
		{"unknown rule key", head + minimalRule[1:] + "    sevrity: low\n", 9, `rule "r1": unknown key "sevrity" (did you mean "severity"?)`},
		{"unknown far key", head + minimalRule[1:] + "    level: low\n", 9, `unknown key "level" (allowed: id, title`},
		{"repeated key", head + minimalRule[1:] + "    title: again\n", 9, `key "title" repeated (first at line 5)`},
		{"bad severity", head + strings.Replace(minimalRule[1:], "high", "urgent", 1), 6, `severity "urgent"`},
		{"bad attack", head + strings.Replace(minimalRule[1:], "T1059.004", "T59", 1), 7, `attack "T59"`},
		{"missing sql", head + strings.Replace(minimalRule[1:], "    sql: SELECT host, pid, start FROM new_process_events\n", "", 1), 4, `missing "sql"`},
		{"bad id", head + strings.Replace(minimalRule[1:], "r1", "R 1", 1), 4, `rule id "R 1"`},
		{"duplicate id", head + minimalRule[1:] + minimalRule[1:], 9, `rule id "r1" repeated (first at line 4)`},
		{"bad runs_on", head + minimalRule[1:] + "    runs_on: [center, cloud]\n", 9, `runs_on "cloud"`},
		{"alert false", head + minimalRule[1:] + "    action: {alert: false}\n", 9, "false is not supported"},
		{"trace no depth", head + minimalRule[1:] + "    action:\n      trace: {duration: 1m}\n", 10, `missing "depth"`},
		{"trace long", head + minimalRule[1:] + "    action:\n      trace: {depth: 1, duration: 48h}\n", 10, "trace.duration"},
		{"trace deep", head + minimalRule[1:] + "    action:\n      trace: {depth: 100, duration: 1m}\n", 10, "trace.depth 100"},
		{"bad collect", head + minimalRule[1:] + "    action:\n      trace: {depth: 1, duration: 1m, collect: [env]}\n", 10, `collect "env"`},
		{"fixture no expect", head + minimalRule[1:] + "    fixtures:\n      - name: f\n", 10, `missing "expect"`},
		{"fixture bad key", head + minimalRule[1:] + "    fixtures:\n      - {name: f, expect: {count: 0}, input: {}}\n", 10, `unknown key "input"`},
		{"match no start", head + minimalRule[1:] + "    fixtures:\n      - expect: {matches: [{pid: 1}]}\n", 10, "names pid and start"},
		{"rows not a list", head + minimalRule[1:] + "    fixtures:\n      - expect: {count: 0}\n        rows: {processes: {pid: 1}}\n", 11, "want a list"},
		{"title not string", head + strings.Replace(minimalRule[1:], "title: t", "title: [a]", 1), 5, "title: want a string"},
		{"empty", "", 0, "empty file"},
		{"not a mapping", "- a\n", 1, "want a mapping"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(c.src))
			var pe *ParseError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPack) {
				t.Fatalf("Parse error = %v, want a *ParseError", err)
			}
			found := false
			for _, p := range pe.Problems {
				if strings.Contains(p.Msg, c.want) && p.Line == c.line {
					found = true
				}
			}
			if !found {
				t.Errorf("want a problem at line %d containing %q; got:\n%v", c.line, c.want, err)
			}
		})
	}
}

func TestParseAliasBomb(t *testing.T) {
	var b strings.Builder
	b.WriteString("pack: p\nversion: '1'\nrules:\n  - id: r\n    title: t\n    severity: low\n    attack: T1000\n    sql: x\n    fixtures:\n      - expect: {count: 0}\n        rows:\n          a0: &a0 [{x: 1}, {x: 1}, {x: 1}, {x: 1}, {x: 1}, {x: 1}, {x: 1}, {x: 1}, {x: 1}, {x: 1}]\n")
	for i := 1; i < 9; i++ {
		b.WriteString("          a" + string(rune('0'+i)) + ": &a" + string(rune('0'+i)) + " [")
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			b.WriteString("*a" + string(rune('0'+i-1)))
		}
		b.WriteString("]\n")
	}
	start := time.Now()
	_, err := Parse("bomb.yaml", []byte(b.String()))
	if err == nil {
		t.Fatal("alias bomb parsed")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("alias bomb took %v", d)
	}
}

func TestParseTooBig(t *testing.T) {
	_, err := Parse("big.yaml", make([]byte, MaxPackBytes+1))
	if !errors.Is(err, ErrPack) {
		t.Errorf("err = %v, want ErrPack", err)
	}
}
