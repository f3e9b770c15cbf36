package rules

import (
	"context"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

const reloadPack = `format: 1
pack: site
version: "%V"
rules:
  - id: marker-exec
    title: %T
    severity: low
    attack: T1204.002
    runs_on: [agent]
    sql: |
      SELECT e.host, e.pid, e.start, e.exe FROM new_process_events e
      WHERE e.kind = 'exec' AND e.exe GLOB '%G'
`

func sitePack(t *testing.T, version, title, glob string) *Pack {
	t.Helper()
	src := strings.NewReplacer("%V", version, "%T", title, "%G", glob).Replace(reloadPack)
	p, err := Parse("site.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A pack loaded into a running agent engine runs at once; replacing it
// keeps an unchanged rule's cursor (no second alert on old rows) and takes
// its new title; a changed rule runs with its new SQL; dropping the pack
// stops its rules.
func TestSetPacks(t *testing.T) {
	ctx := context.Background()
	got := &alerts{}
	a := newAgent(t, AgentConfig{}, got, mustDefault(t))
	n := len(a.Engine().Status())
	feed := func(pid uint32, exe string) {
		t.Helper()
		if err := a.Feed([]capture.Event{exec(int64(pid)*1e9, key(pid, uint64(pid)), key(1, 1), 0, exe, exe)}); err != nil {
			t.Fatal(err)
		}
		if err := a.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	feed(100, "/opt/marker-a") // before the pack: nothing
	if err := a.SetPacks(ctx, mustDefault(t), sitePack(t, "1", "first title", "*/marker-*")); err != nil {
		t.Fatal(err)
	}
	if len(a.Engine().Status()) != n+1 {
		t.Fatalf("%d rules after adding a pack, want %d", len(a.Engine().Status()), n+1)
	}
	feed(101, "/opt/marker-b")
	m := byRule(got.take())
	// A new rule starts at the window's beginning: it also sees pid 100.
	if len(m["marker-exec"]) != 2 || m["marker-exec"][0].Title != "first title" {
		t.Fatalf("marker alerts after the pack arrived: %+v", m["marker-exec"])
	}

	// Same SQL, new title: the cursor stays, the title changes.
	if err := a.SetPacks(ctx, mustDefault(t), sitePack(t, "2", "second title", "*/marker-*")); err != nil {
		t.Fatal(err)
	}
	feed(102, "/opt/marker-c")
	m = byRule(got.take())
	if len(m["marker-exec"]) != 1 || m["marker-exec"][0].Process.PID != 102 || m["marker-exec"][0].Title != "second title" {
		t.Fatalf("after a new title: %+v, want one alert for pid 102 with the new title", m["marker-exec"])
	}
	for _, s := range a.Engine().Status() {
		if s.ID == "marker-exec" && s.Runs < 2 {
			t.Errorf("counters lost across SetPacks: %+v", s)
		}
	}

	// New SQL: it matches what it matches now.
	if err := a.SetPacks(ctx, mustDefault(t), sitePack(t, "3", "third", "*/other-*")); err != nil {
		t.Fatal(err)
	}
	feed(103, "/opt/marker-d")
	feed(104, "/opt/other-e")
	m = byRule(got.take())
	if len(m["marker-exec"]) != 1 || m["marker-exec"][0].Process.PID != 104 {
		t.Fatalf("after new SQL: %+v, want pid 104 only", m["marker-exec"])
	}

	// Dropped: the rule stops.
	if err := a.SetPacks(ctx, mustDefault(t)); err != nil {
		t.Fatal(err)
	}
	feed(105, "/opt/other-f")
	if as := byRule(got.take())["marker-exec"]; len(as) != 0 {
		t.Fatalf("a dropped pack's rule alerted: %+v", as)
	}

	// Duplicate rule ids: refused, the engine keeps what it had.
	before := len(a.Engine().Status())
	p1, p2 := sitePack(t, "4", "x", "*"), sitePack(t, "4", "x", "*")
	p2.Name = "site-copy"
	if err := a.SetPacks(ctx, p1, p2); err == nil || !strings.Contains(err.Error(), "marker-exec") {
		t.Errorf("SetPacks with a duplicate rule id: %v", err)
	}
	if len(a.Engine().Status()) != before {
		t.Errorf("a refused SetPacks changed the rules")
	}
}
