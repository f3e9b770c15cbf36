package store

import (
	"math/rand/v2"
	"reflect"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// TestNewKeysNeverLies checks newKeys' one promise: a key it calls absent
// was never added. Starts mostly grow, with some older keys (exits of
// long-lived processes, events from other CPUs) mixed in.
func TestNewKeysNeverLies(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	n := newNewKeys(100, 64)
	added := map[capture.ProcKey]bool{}
	start := uint64(100)
	for i := range 20_000 {
		start += uint64(rng.IntN(3))
		k := pk(uint32(rng.IntN(1000)), start)
		if rng.IntN(10) == 0 {
			k.Start -= min(k.Start, uint64(rng.IntN(500)))
		}
		n.add(k)
		added[k] = true
		if i%97 == 0 {
			for a := range added {
				if n.absent(a) {
					t.Fatalf("after %d adds: absent(%s) = true, but it was added (ceil %d)", i+1, a, n.ceil)
				}
			}
		}
		if len(n.recent) > n.max || len(n.order) > n.max {
			t.Fatalf("newKeys holds %d keys (ring %d), max %d", len(n.recent), len(n.order), n.max)
		}
	}
	// And it does rule out the keys that matter: new ones.
	if k := pk(1, start+1); !n.absent(k) {
		t.Errorf("absent(%s) = false for a start after every key added (ceil %d)", k, n.ceil)
	}
}

// TestLiveCacheIsInvisible appends the same perturbed event stream (events
// swapped within a batch, some seen a batch late, exits first reported
// without a status) to stores with a full, a tiny and no live cache: the
// cache and the partial entries read from the live index when it misses
// must never show in the table.
func TestLiveCacheIsInvisible(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	w := newWorkload(11)
	stores := []*Local{
		openTest(t, t.TempDir(), LocalOptions{}),
		openTest(t, t.TempDir(), LocalOptions{liveCacheBytes: 4 << 10}),
		openTest(t, t.TempDir(), LocalOptions{liveCacheBytes: -1}),
	}
	var late []capture.Event
	for range 40 {
		in := append(late, w.batch(300)...)
		late = nil
		for j := range len(in) - 1 {
			if rng.IntN(8) == 0 {
				in[j], in[j+1] = in[j+1], in[j]
			}
		}
		var evs []capture.Event
		for _, ev := range in {
			switch {
			case rng.IntN(30) == 0:
				late = append(late, ev)
				continue
			case ev.Kind == capture.KindExit && rng.IntN(5) == 0:
				late = append(late, ev)
				ev.Exit = nil
			}
			evs = append(evs, ev)
		}
		for _, l := range stores {
			mustAppend(t, l, append([]capture.Event(nil), evs...)...)
		}
		want, err := stores[0].Processes(true)
		if err != nil {
			t.Fatal(err)
		}
		wantSt, _ := stores[0].Stats()
		for i, l := range stores[1:] {
			got, err := l.Processes(true)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("store %d: table differs from the one with a full live cache (%d vs %d entries)", i+1, len(got), len(want))
			}
			if st, _ := l.Stats(); st.LiveProcesses != wantSt.LiveProcesses || st.ExitedProcesses != wantSt.ExitedProcesses {
				t.Fatalf("store %d: live=%d exited=%d, want %d and %d", i+1, st.LiveProcesses, st.ExitedProcesses, wantSt.LiveProcesses, wantSt.ExitedProcesses)
			}
		}
	}
	for _, l := range stores {
		checkIndexes(t, l)
	}
}

// TestForkInheritsImageAtFork: a forked child runs its parent's image as it
// was at the fork, whatever the parent does later in the same batch, and
// whether the parent's image is at hand (live cache) or must be read.
func TestForkInheritsImageAtFork(t *testing.T) {
	init1, p, c, g := pk(1, 1), pk(7, 70), pk(8, 80), pk(9, 90)
	shExec := execEv(p, init1, at(0), "/bin/sh", "sh")
	noComm := func(ev capture.Event) capture.Event { ev.Comm = ""; return ev }
	cases := []struct {
		name   string
		batch2 []capture.Event
		key    capture.ProcKey
		exe    string
		comm   string
	}{
		{"parent execs after the fork", []capture.Event{noComm(forkEv(c, p, at(1))), execEv(p, init1, at(2), "/usr/bin/new")}, c, "/bin/sh", "sh"},
		{"grandchild of a child that execs", []capture.Event{noComm(forkEv(c, p, at(1))), noComm(forkEv(g, c, at(2))), execEv(c, p, at(3), "/usr/bin/x")}, g, "/bin/sh", "sh"},
		{"exec without comm keeps the inherited comm", []capture.Event{noComm(forkEv(c, p, at(1))), noComm(execEv(c, p, at(2), "/usr/bin/x"))}, c, "/usr/bin/x", "sh"},
		{"exec without image keeps the inherited image", []capture.Event{noComm(forkEv(c, p, at(1))), {Time: at(2), Kind: capture.KindExec, Proc: c, Comm: "renamed"}}, c, "/bin/sh", "renamed"},
		{"child exits without exec", []capture.Event{noComm(forkEv(c, p, at(1))), exitEv(c, at(2), 0)}, c, "/bin/sh", "sh"},
		{"parent known by pid only", []capture.Event{noComm(forkEv(c, pk(7, 0), at(1)))}, c, "/bin/sh", "sh"},
		{"parent exits after the fork", []capture.Event{noComm(forkEv(c, p, at(1))), exitEv(p, at(2), 0)}, c, "/bin/sh", "sh"},
		{"parent unknown at the fork, forked later", []capture.Event{noComm(forkEv(g, pk(5, 50), at(2))), forkEv(pk(5, 50), p, at(1))}, g, "", ""},
	}
	for _, tc := range cases {
		for _, cache := range []int{0, -1} {
			name := tc.name
			if cache < 0 {
				name += " (no live cache)"
			}
			t.Run(name, func(t *testing.T) {
				l := openTest(t, t.TempDir(), LocalOptions{liveCacheBytes: cache})
				mustAppend(t, l, shExec)
				mustAppend(t, l, tc.batch2...)
				got := mustProcess(t, l, tc.key)
				if got.Exec.Exe != tc.exe || got.Comm != tc.comm {
					t.Errorf("%s: exe %q comm %q, want %q and %q", tc.key, got.Exec.Exe, got.Comm, tc.exe, tc.comm)
				}
				checkIndexes(t, l)
			})
		}
	}
}
