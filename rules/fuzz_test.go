package rules

import (
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse: a pack file is operator input and arrives from the center at
// agents; whatever it holds, Parse returns a pack or an error.
func FuzzParse(f *testing.F) {
	f.Add(DefaultPackBytes())
	seeds, _ := filepath.Glob("../testdata/rules/*.yaml")
	for _, s := range seeds {
		if b, err := os.ReadFile(s); err == nil {
			f.Add(b)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("fuzz.yaml", data)
		if err != nil {
			if p != nil {
				t.Fatal("pack and error both returned")
			}
			return
		}
		ids := map[string]bool{}
		for _, r := range p.Rules {
			if ids[r.ID] {
				t.Fatalf("duplicate id %q accepted", r.ID)
			}
			ids[r.ID] = true
			if !idRE.MatchString(r.ID) || !attackRE.MatchString(r.Attack) || r.RunsOn == 0 {
				t.Fatalf("invalid rule accepted: %+v", r)
			}
			// The SQL shaper must not panic on whatever the pack holds.
			_, _ = shapeSQL(r.SQL)
		}
	})
}

// FuzzShapeSQL: the lexer sees every rule's SQL.
func FuzzShapeSQL(f *testing.F) {
	for _, s := range []string{
		"SELECT host, pid, start FROM new_process_events",
		"WITH RECURSIVE a AS (SELECT 1) SELECT * FROM a, new_file_events",
		"SELECT ';' -- ;\n; /* ; */",
		"SELECT [x] FROM `y` WHERE \"z\" = :since_process_events",
		"SELECT 'unterminated",
		"/* unterminated",
		"SELECT $a::b, @c, ?1, :",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		out, err := shapeSQL(q)
		if err == nil && len(out) < len(incrementalCTEs) {
			t.Fatalf("shapeSQL(%q) = %q without the views", q, out)
		}
	})
}
