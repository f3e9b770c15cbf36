package sqlstore

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

func keysOf(ps []Process) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s/%d@%d:%d", p.Host, p.Key.PID, p.Key.Start, p.Depth)
	}
	return b.String()
}

func TestLineage(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	none := capture.ProcKey{}
	initK, sshd, bash := key(1, 1), key(500, 100), key(600, 200)
	old, c1, c2, gc := key(700, 300), key(800, 310), key(801, 320), key(900, 330)
	reused, rc := key(700, 5000), key(810, 5010)
	ingest(t, s, "h", 1,
		exec(10, initK, none, "/sbin/init"),
		fork(20, sshd, initK), exec(21, sshd, initK, "/usr/sbin/sshd"),
		fork(30, bash, sshd), exec(31, bash, sshd, "/bin/bash"),
		fork(40, old, bash), exec(41, old, bash, "/usr/bin/make"),
		fork(50, c1, old), fork(60, c2, old), fork(70, gc, c1),
	)
	// pid 700 ends and comes back as a different process under init.
	ingest(t, s, "h", 2,
		exit(80, gc, 0), exit(81, c1, 0), exit(82, c2, 0), exit(83, old, 0),
		fork(90, reused, initK), exec(91, reused, initK, "/usr/bin/python3"), fork(95, rc, reused),
	)
	// Same keys on another host: never mixed in.
	ingest(t, s, "g", 1, fork(40, old, bash), fork(50, key(999, 999), old))

	for _, tc := range []struct {
		name string
		got  func() ([]Process, error)
		want string
	}{
		{"ancestors of the grandchild", func() ([]Process, error) { return s.Ancestors(ctx, "h", 900, 330) },
			"h/800@310:1 h/700@300:2 h/600@200:3 h/500@100:4 h/1@1:5"},
		{"ancestors of the reused pid's child", func() ([]Process, error) { return s.Ancestors(ctx, "h", 810, 5010) },
			"h/700@5000:1 h/1@1:2"},
		{"ancestors of init", func() ([]Process, error) { return s.Ancestors(ctx, "h", 1, 1) }, ""},
		{"ancestors of an unknown process", func() ([]Process, error) { return s.Ancestors(ctx, "h", 4242, 1) }, ""},
		{"ancestors on the other host", func() ([]Process, error) { return s.Ancestors(ctx, "g", 999, 999) },
			"g/700@300:1"}, // 600@200 is not known on g
		{"descendants of the first incarnation", func() ([]Process, error) { return s.Descendants(ctx, "h", 700, 300, 0) },
			"h/800@310:1 h/801@320:1 h/900@330:2"},
		{"descendants of the second incarnation", func() ([]Process, error) { return s.Descendants(ctx, "h", 700, 5000, 0) },
			"h/810@5010:1"},
		{"descendants one level down", func() ([]Process, error) { return s.Descendants(ctx, "h", 700, 300, 1) },
			"h/800@310:1 h/801@320:1"},
		{"descendants of init", func() ([]Process, error) { return s.Descendants(ctx, "h", 1, 1, 0) },
			"h/500@100:1 h/700@5000:1 h/600@200:2 h/810@5010:2 h/700@300:3 h/800@310:4 h/801@320:4 h/900@330:5"},
		{"descendants on the other host", func() ([]Process, error) { return s.Descendants(ctx, "g", 700, 300, 0) },
			"g/999@999:1"},
	} {
		got, err := tc.got()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if k := keysOf(got); k != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, k, tc.want)
		}
	}

	// Rows carry the process, not just its key.
	anc, _ := s.Ancestors(ctx, "h", 900, 330)
	if anc[1].Exec.Exe != "/usr/bin/make" || anc[1].ExitTime != 83 || anc[0].Exec.Exe != "/usr/bin/make" || anc[0].Execed {
		t.Errorf("ancestor rows: %+v / %+v, want make (exited at 83) and its forked, not execed child", anc[1], anc[0])
	}
}

func TestLineageCycle(t *testing.T) {
	s := openTest(t)
	ctx := context.Background()
	a, b, c := key(10, 1), key(20, 2), key(30, 3)
	// A corrupt or hostile report: a -> b -> c -> a, and a self-parent.
	ingest(t, s, "h", 1, fork(1, a, c), fork(2, b, a), fork(3, c, b), fork(4, key(40, 4), key(40, 4)))
	anc, err := s.Ancestors(ctx, "h", 10, 1)
	if err != nil {
		t.Fatal(err)
	}
	if k := keysOf(anc); k != "h/30@3:1 h/20@2:2" {
		t.Errorf("ancestors in a cycle: %s, want the cycle once", k)
	}
	desc, err := s.Descendants(ctx, "h", 10, 1, MaxDepth)
	if err != nil {
		t.Fatal(err)
	}
	if k := keysOf(desc); k != "h/20@2:1 h/30@3:2" {
		t.Errorf("descendants in a cycle: %s, want the cycle once", k)
	}
	if anc, err := s.Ancestors(ctx, "h", 40, 4); err != nil || len(anc) != 0 {
		t.Errorf("ancestors of a self-parent: %s %v, want none", keysOf(anc), err)
	}
}
