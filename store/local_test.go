package store

import (
	"bufio"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/evilbitlabs/daemoneye/capture"
)

func TestAppendAndIterate(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{})
	a := pk(100, 10)
	// Times deliberately out of seq order: a late event from another CPU.
	evs := []capture.Event{
		forkEv(a, pk(1, 1), at(1*time.Second)),                  // seq 1
		execEv(a, pk(1, 1), at(2*time.Second), "/usr/bin/true"), // seq 2
		connEv(a, at(5*time.Second), "192.0.2.1:80"),            // seq 3
		connEv(a, at(3*time.Second), "192.0.2.2:80"),            // seq 4
		exitEv(a, at(5*time.Second), 0),                         // seq 5
	}
	first, last := mustAppend(t, l, evs...)
	if first != 1 || last != 5 {
		t.Fatalf("Append assigned %d..%d, want 1..5", first, last)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Errorf("evs[%d].Seq = %d after Append, want %d", i, ev.Seq, i+1)
		}
	}
	if got := l.LastSeq(); got != 5 {
		t.Errorf("LastSeq() = %d, want 5", got)
	}

	bySeq := []struct {
		from uint64
		want []uint64
	}{
		{0, []uint64{1, 2, 3, 4, 5}},
		{1, []uint64{1, 2, 3, 4, 5}},
		{4, []uint64{4, 5}},
		{6, nil},
	}
	for _, c := range bySeq {
		if got := seqsBySeq(t, l, c.from); !slices.Equal(got, c.want) {
			t.Errorf("EventsBySeq(%d) = %v, want %v", c.from, got, c.want)
		}
	}

	byTime := []struct {
		name     string
		from, to time.Time
		want     []uint64
	}{
		{"all, open ends", time.Time{}, time.Time{}, []uint64{1, 2, 4, 3, 5}},
		{"from is inclusive", t0.Add(3 * time.Second), time.Time{}, []uint64{4, 3, 5}},
		{"to is exclusive", time.Time{}, t0.Add(3 * time.Second), []uint64{1, 2}},
		{"equal times in seq order", t0.Add(5 * time.Second), t0.Add(6 * time.Second), []uint64{3, 5}},
		{"empty window", t0.Add(10 * time.Second), t0.Add(20 * time.Second), nil},
		{"inverted window", t0.Add(20 * time.Second), t0, nil},
		{"zero-width window", t0.Add(5 * time.Second), t0.Add(5 * time.Second), nil},
		{"far past and future", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), []uint64{1, 2, 4, 3, 5}},
	}
	for _, c := range byTime {
		var got []uint64
		err := l.EventsByTime(c.from, c.to, func(ev capture.Event) bool { got = append(got, ev.Seq); return true })
		if err != nil {
			t.Fatalf("%s: EventsByTime: %v", c.name, err)
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: EventsByTime = %v, want %v", c.name, got, c.want)
		}
	}

	// fn returning false stops the walk.
	n := 0
	l.EventsBySeq(0, func(capture.Event) bool { n++; return n < 2 })
	if n != 2 {
		t.Errorf("EventsBySeq visited %d events after fn returned false at the 2nd, want 2", n)
	}

	// Events read back equal what was appended.
	var got []capture.Event
	l.EventsBySeq(0, func(ev capture.Event) bool { got = append(got, ev); return true })
	if !reflect.DeepEqual(got, evs) {
		t.Errorf("events read back differ:\n got %+v\nwant %+v", got, evs)
	}

	st, err := l.Stats()
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	if st.Events != 5 || st.FirstSeq != 1 || st.LastSeq != 5 || st.EventBytes == 0 {
		t.Errorf("Stats = %+v, want 5 events, seqs 1..5, nonzero bytes", st)
	}
	if st.LiveProcesses != 0 || st.ExitedProcesses != 1 {
		t.Errorf("Stats processes live=%d exited=%d, want 0 and 1", st.LiveProcesses, st.ExitedProcesses)
	}

	if f, l2, err := l.Append(nil); f != 0 || l2 != 0 || err != nil {
		t.Errorf("Append(nil) = %d, %d, %v; want 0, 0, nil", f, l2, err)
	}
}

func TestEventRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		ev   capture.Event
	}{
		{"non-UTF-8 argv", execEv(pk(7, 70), pk(1, 1), at(0), "/bin/\xffecho", "echo", "\xff", "caf\xe9", "")},
		{"non-UTF-8 comm and cwd", capture.Event{Time: at(1), Kind: capture.KindExec, Proc: pk(8, 80), Comm: "\xfe\xff",
			Exec: &capture.Exec{Exe: "/x", Cwd: "/tmp/\x80", TTY: "pts/3", ArgvTruncated: true, CgroupID: 1 << 40,
				PidNS: 4026531836, NetNS: 4026531840, MntNS: 4026531841}}},
		{"ipv4 conn", connEv(pk(9, 90), at(2), "203.0.113.9:8443")},
		{"ipv6 conn", capture.Event{Time: at(3), Kind: capture.KindAccept, Proc: pk(9, 90), Conn: &capture.Conn{
			Proto: capture.ProtoTCP, Src: netip.MustParseAddrPort("[2001:db8::1]:22"), Dst: netip.MustParseAddrPort("[fe80::1%eth0]:50000")}}},
		{"ipv4-mapped ipv6 and udp", capture.Event{Time: at(4), Kind: capture.KindClose, Proc: pk(9, 90), Conn: &capture.Conn{
			Proto: capture.ProtoUDP, Src: netip.MustParseAddrPort("[::ffff:10.1.2.3]:53"), Dst: netip.MustParseAddrPort("10.9.9.9:53")}}},
		{"zero addresses", capture.Event{Time: at(5), Kind: capture.KindClose, Proc: pk(9, 90), Conn: &capture.Conn{Proto: capture.ProtoTCP}}},
		{"exit by signal", capture.Event{Time: at(6), Kind: capture.KindExit, Proc: pk(9, 90), Exit: &capture.Exit{Code: -1, Signal: 9, Core: true}}},
		{"negative time", capture.Event{Time: -5, Kind: capture.KindFork, Proc: pk(10, 1), Parent: pk(1, 1)}},
	}
	l := openTest(t, t.TempDir(), LocalOptions{})
	for _, c := range cases {
		ev := c.ev
		first, _ := mustAppend(t, l, ev)
		ev.Seq = first
		var got capture.Event
		l.EventsBySeq(first, func(e capture.Event) bool { got = e; return false })
		if !reflect.DeepEqual(got, ev) {
			t.Errorf("%s: read back %+v, want %+v", c.name, got, ev)
		}
		if ev.Exec != nil && !reflect.DeepEqual(got.Exec.Argv, ev.Exec.Argv) {
			t.Errorf("%s: argv read back %q, want %q", c.name, got.Exec.Argv, ev.Exec.Argv)
		}
		if ev.Conn != nil && (got.Conn.Src != ev.Conn.Src || got.Conn.Dst != ev.Conn.Dst) {
			t.Errorf("%s: conn read back %s, want %s", c.name, got.Conn, ev.Conn)
		}
	}
	// The table keeps the raw argv too.
	p := mustProcess(t, l, pk(7, 70))
	if got, want := p.Exec.Argv[1], "\xff"; got != want {
		t.Errorf("table argv[1] = %q, want %q", got, want)
	}
}

func TestStringsAreByteStrings(t *testing.T) {
	b, err := EncodeEvent(&capture.Event{Kind: capture.KindExec, Comm: "sh", Exec: &capture.Exec{Exe: "/bin/sh", Argv: []string{"sh"}}})
	if err != nil {
		t.Fatal(err)
	}
	// Major type 3 (text string) headers for short strings are 0x60..0x77;
	// none may appear. Byte strings are 0x40..0x57.
	for _, s := range []string{"sh", "/bin/sh"} {
		text := append([]byte{0x60 + byte(len(s))}, s...)
		if strings.Contains(string(b), string(text)) {
			t.Errorf("encoding %x holds %q as a text string, want a byte string", b, s)
		}
		bytes := append([]byte{0x40 + byte(len(s))}, s...)
		if !strings.Contains(string(b), string(bytes)) {
			t.Errorf("encoding %x lacks %q as a byte string", b, s)
		}
	}
}

func TestSeqPersistsAndIsNeverReused(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLocal(dir, LocalOptions{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(1)
	mustAppend(t, l, w.batch(10)...)
	if err := l.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	l = openTest(t, dir, LocalOptions{})
	if got := l.LastSeq(); got != 10 {
		t.Fatalf("LastSeq after reopen = %d, want 10", got)
	}
	if first, last := mustAppend(t, l, w.batch(5)...); first != 11 || last != 15 {
		t.Fatalf("Append after reopen assigned %d..%d, want 11..15", first, last)
	}
	// Retention removes every event; the counter must not go back.
	st, err := l.Retain(t0.Add(365 * 24 * time.Hour))
	if err != nil {
		t.Fatalf("Retain: %v", err)
	}
	if st.EventsByAge != 15 {
		t.Errorf("Retain deleted %d events by age, want 15", st.EventsByAge)
	}
	if got := seqsBySeq(t, l, 0); len(got) != 0 {
		t.Errorf("events left after retaining all: %v", got)
	}
	l.Close()

	l = openTest(t, dir, LocalOptions{})
	ss, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if ss.Events != 0 || ss.EventBytes != 0 || ss.FirstSeq != 0 || ss.LastSeq != 15 {
		t.Errorf("Stats after retaining all and reopening = %+v, want 0 events, 0 bytes, first 0, last 15", ss)
	}
	if first, _ := mustAppend(t, l, w.batch(1)...); first != 16 {
		t.Errorf("Append after retaining all assigned seq %d, want 16", first)
	}
}

func TestProcessTransitions(t *testing.T) {
	init1 := pk(1, 1)
	shell := pk(200, 20)
	child := pk(300, 30)
	shellExec := execEv(shell, init1, at(0), "/usr/bin/bash", "bash", "-l")

	type want struct {
		key       capture.ProcKey
		parent    capture.ProcKey
		exe       string
		comm      string
		execed    bool
		startTime int64
		exitTime  int64
		exit      *capture.Exit
	}
	cases := []struct {
		name    string
		batches [][]capture.Event
		want    []want
		live    int64
		exited  int64
	}{
		{
			name: "fork, exec, exit",
			batches: [][]capture.Event{
				{shellExec},
				{forkEv(child, shell, at(1))},
				{execEv(child, shell, at(2), "/usr/bin/curl", "curl", "x")},
				{exitEv(child, at(3), 7)},
			},
			want: []want{
				{key: shell, parent: init1, exe: "/usr/bin/bash", comm: "bash", execed: true, startTime: at(0)},
				{key: child, parent: shell, exe: "/usr/bin/curl", comm: "curl", execed: true, startTime: at(1), exitTime: at(3), exit: &capture.Exit{Code: 7}},
			},
			live: 1, exited: 1,
		},
		{
			name: "fork without exec keeps the parent's image",
			batches: [][]capture.Event{
				{shellExec},
				{forkEv(child, shell, at(1))},
			},
			want: []want{
				{key: child, parent: shell, exe: "/usr/bin/bash", comm: "bash", execed: false, startTime: at(1)},
			},
			live: 2,
		},
		{
			name:    "fork, exec and exit in one batch",
			batches: [][]capture.Event{{shellExec, forkEv(child, shell, at(1)), execEv(child, shell, at(2), "/usr/bin/id", "id"), exitEv(child, at(3), 0)}},
			want: []want{
				{key: child, parent: shell, exe: "/usr/bin/id", comm: "id", execed: true, startTime: at(1), exitTime: at(3), exit: &capture.Exit{Code: 0}},
			},
			live: 1, exited: 1,
		},
		{
			name:    "exec without a seen fork creates the entry",
			batches: [][]capture.Event{{execEv(child, shell, at(2), "/usr/bin/id", "id")}},
			want: []want{
				{key: child, parent: shell, exe: "/usr/bin/id", comm: "id", execed: true, startTime: at(2)},
			},
			live: 1,
		},
		{
			name:    "exec applied before its fork keeps the exec",
			batches: [][]capture.Event{{shellExec}, {execEv(child, capture.ProcKey{}, at(2), "/usr/bin/id", "id")}, {forkEv(child, shell, at(1))}},
			want: []want{
				{key: child, parent: shell, exe: "/usr/bin/id", comm: "id", execed: true, startTime: at(2)},
			},
			live: 2,
		},
		{
			name:    "exit of an unknown process records it",
			batches: [][]capture.Event{{exitEv(child, at(3), 1)}},
			want:    []want{{key: child, exitTime: at(3), exit: &capture.Exit{Code: 1}}},
			exited:  1,
		},
		{
			name:    "duplicate exit keeps the first",
			batches: [][]capture.Event{{forkEv(child, shell, at(1))}, {exitEv(child, at(3), 1)}, {exitEv(child, at(4), 2)}},
			want:    []want{{key: child, parent: shell, startTime: at(1), exitTime: at(3), exit: &capture.Exit{Code: 1}}},
			exited:  1,
		},
		{
			name:    "connect, accept and close leave the table alone",
			batches: [][]capture.Event{{shellExec}, {connEv(shell, at(5), "192.0.2.1:443"), {Time: at(6), Kind: capture.KindClose, Proc: child, Conn: &capture.Conn{}}}},
			want: []want{
				{key: shell, parent: init1, exe: "/usr/bin/bash", comm: "bash", execed: true, startTime: at(0)},
			},
			live: 1,
		},
	}
	// Without the live cache every lookup goes to Pebble (the path of
	// processes the cache has no room for).
	for _, c := range cases {
		for _, cache := range []int{0, -1} {
			name := c.name
			if cache < 0 {
				name += " (no live cache)"
			}
			t.Run(name, func(t *testing.T) {
				l := openTest(t, t.TempDir(), LocalOptions{liveCacheBytes: cache})
				for _, b := range c.batches {
					mustAppend(t, l, b...)
				}
				for _, w := range c.want {
					p := mustProcess(t, l, w.key)
					if p.Parent != w.parent {
						t.Errorf("%s: Parent = %s, want %s", w.key, p.Parent, w.parent)
					}
					if p.Exec.Exe != w.exe {
						t.Errorf("%s: Exe = %q, want %q", w.key, p.Exec.Exe, w.exe)
					}
					if p.Comm != w.comm {
						t.Errorf("%s: Comm = %q, want %q", w.key, p.Comm, w.comm)
					}
					if p.Execed != w.execed {
						t.Errorf("%s: Execed = %v, want %v", w.key, p.Execed, w.execed)
					}
					if p.StartTime != w.startTime {
						t.Errorf("%s: StartTime = %d, want %d", w.key, p.StartTime, w.startTime)
					}
					if p.ExitTime != w.exitTime {
						t.Errorf("%s: ExitTime = %d, want %d", w.key, p.ExitTime, w.exitTime)
					}
					if !reflect.DeepEqual(p.Exit, w.exit) {
						t.Errorf("%s: Exit = %+v, want %+v", w.key, p.Exit, w.exit)
					}
					live, ok, err := l.LiveByPID(w.key.PID)
					if err != nil {
						t.Fatal(err)
					}
					if wantLive := w.exitTime == 0; ok != wantLive || (ok && live.Key != w.key) {
						t.Errorf("LiveByPID(%d) = %s, %v; want live=%v", w.key.PID, live.Key, ok, wantLive)
					}
				}
				st, err := l.Stats()
				if err != nil {
					t.Fatal(err)
				}
				if st.LiveProcesses != c.live || st.ExitedProcesses != c.exited {
					t.Errorf("Stats live=%d exited=%d, want %d and %d", st.LiveProcesses, st.ExitedProcesses, c.live, c.exited)
				}
				checkIndexes(t, l)
			})
		}
	}
}

// checkIndexes verifies that the live, exited and children indexes and the
// counters agree with the process table.
func checkIndexes(t testing.TB, l *Local) {
	t.Helper()
	all, err := l.Processes(true)
	if err != nil {
		t.Fatalf("Processes(true): %v", err)
	}
	live, err := l.Processes(false)
	if err != nil {
		t.Fatalf("Processes(false): %v", err)
	}
	var wantLive []capture.Process
	var exited int64
	kids := map[capture.ProcKey][]capture.ProcKey{}
	for _, p := range all {
		if p.Alive() {
			wantLive = append(wantLive, p)
		} else {
			exited++
		}
		if !p.Parent.IsZero() {
			kids[p.Parent] = append(kids[p.Parent], p.Key)
		}
	}
	if keysOf(live) != keysOf(wantLive) {
		t.Errorf("live index holds [%s], table's live entries are [%s]", keysOf(live), keysOf(wantLive))
	}
	// Every live index key names an entry; a live value (with the entry's
	// parent) means live, and an exit record stands for an entry stored
	// without its exit.
	byKey := map[capture.ProcKey]capture.Process{}
	for _, p := range all {
		byKey[p.Key] = p
	}
	it, err := l.db.NewIter(spaceBounds(spaceLive))
	if err != nil {
		t.Fatal(err)
	}
	records := map[capture.ProcKey]bool{}
	for it.First(); it.Valid(); it.Next() {
		k := getProcKey(it.Key()[1:])
		v, _ := it.ValueAndErr()
		p, ok := byKey[k]
		stored, _, _ := getEntry(l.db, k)
		switch {
		case !ok:
			t.Errorf("live index key %s names no entry", k)
		case isLive(v) && (!p.Alive() || getProcKey(v[1:]) != p.Parent):
			t.Errorf("live index says %s is live with parent %s, its entry says exit time %d, parent %s", k, getProcKey(v[1:]), p.ExitTime, p.Parent)
		case !isLive(v) && (p.Alive() || stored.ExitTime != 0):
			t.Errorf("live index holds an exit record for %s, whose stored entry has exit time %d", k, stored.ExitTime)
		}
		if !isLive(v) {
			records[k] = true
		}
	}
	it.Close()
	for _, p := range all {
		if stored, _, _ := getEntry(l.db, p.Key); !p.Alive() && stored.ExitTime == 0 && !records[p.Key] {
			t.Errorf("%s exited, but neither its entry nor the live index holds the exit", p.Key)
		}
	}
	if n, err := countSpace(l.db, spaceExited); err != nil || n != exited {
		t.Errorf("exited index holds %d keys (%v), table has %d exited entries", n, err, exited)
	}
	var childKeys int64
	for parent, want := range kids {
		got, err := l.Children(parent)
		if err != nil {
			t.Fatal(err)
		}
		var gotKeys []capture.ProcKey
		for _, c := range got {
			gotKeys = append(gotKeys, c.Key)
		}
		if !slices.Equal(gotKeys, want) {
			t.Errorf("Children(%s) = %v, want %v", parent, gotKeys, want)
		}
		childKeys += int64(len(want))
	}
	if n, err := countSpace(l.db, spaceChildren); err != nil || n != childKeys {
		t.Errorf("children index holds %d keys (%v), want %d", n, err, childKeys)
	}
	st, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.LiveProcesses != int64(len(wantLive)) || st.ExitedProcesses != exited {
		t.Errorf("Stats live=%d exited=%d, table has %d and %d", st.LiveProcesses, st.ExitedProcesses, len(wantLive), exited)
	}
}

// TestExitRecords covers processes that exit in a later batch than the one
// that stored their entry: the exit goes into the live index key, and every
// later change must see it there.
func TestExitRecords(t *testing.T) {
	t.Run("live cache", func(t *testing.T) { testExitRecords(t, 0) })
	t.Run("no live cache", func(t *testing.T) { testExitRecords(t, -1) })
}

func testExitRecords(t *testing.T, cache int) {
	init1, a, b, c := pk(1, 1), pk(10, 100), pk(20, 200), pk(30, 300)
	now := t0.Add(time.Hour)
	dir := t.TempDir()
	l := openTest(t, dir, LocalOptions{Now: func() time.Time { return now }, liveCacheBytes: cache})
	mustAppend(t, l, execEv(init1, capture.ProcKey{}, at(0), "/sbin/init"),
		forkEv(a, init1, at(1)), execEv(a, init1, at(1), "/usr/bin/make"),
		execEv(b, capture.ProcKey{}, at(2), "/usr/bin/cc"), // its fork was missed
		forkEv(c, init1, at(3)))
	noStatus := exitEv(a, at(4), 0)
	noStatus.Exit = nil
	mustAppend(t, l, noStatus, exitEv(b, at(5), 1), exitEv(c, at(6), 2))
	checkAgainstReplay(t, l)

	// A late status fills the missing one; a late fork gives b its parent.
	mustAppend(t, l, exitEv(a, at(7), 3), forkEv(b, a, at(2)))
	if p := mustProcess(t, l, a); p.ExitTime != at(4) || p.Exit == nil || p.Exit.Code != 3 {
		t.Errorf("a after a late status: exit %d %+v, want %d with code 3", p.ExitTime, p.Exit, at(4))
	}
	if p := mustProcess(t, l, b); p.Parent != a || p.ExitTime != at(5) || p.Exit == nil || p.Exit.Code != 1 {
		t.Errorf("b after a late fork: parent %s exit %d %+v, want parent %s, exit %d code 1", p.Parent, p.ExitTime, p.Exit, a, at(5))
	}
	if kids, _ := l.Children(a); keysOf(kids) != "20@200" {
		t.Errorf("Children(a) = [%s], want [20@200]", keysOf(kids))
	}
	checkIndexes(t, l)

	// /proc still shows c: seeding brings it back to life.
	if err := l.Seed([]capture.Process{{Key: init1, Execed: true, StartTime: at(0)}, {Key: c, Parent: init1, StartTime: at(3)}}); err != nil {
		t.Fatal(err)
	}
	if p, ok, _ := l.LiveByPID(c.PID); !ok || p.Key != c || p.ExitTime != 0 || p.Exit != nil {
		t.Errorf("LiveByPID(%d) after Seed = %s %v exit %d %+v, want %s live", c.PID, p.Key, ok, p.ExitTime, p.Exit, c)
	}
	checkIndexes(t, l)

	// The counters and the live cache come back from the indexes.
	want, _ := l.Stats()
	l.Close()
	l = openTest(t, dir, LocalOptions{liveCacheBytes: cache})
	if got, _ := l.Stats(); got.LiveProcesses != want.LiveProcesses || got.ExitedProcesses != want.ExitedProcesses {
		t.Errorf("after reopen live=%d exited=%d, want %d and %d", got.LiveProcesses, got.ExitedProcesses, want.LiveProcesses, want.ExitedProcesses)
	}
	if n := len(l.table.live.m); cache >= 0 && int64(n) != want.LiveProcesses {
		t.Errorf("live cache holds %d entries after reopen, want %d", n, want.LiveProcesses)
	}
	mustAppend(t, l, exitEv(c, at(8), 0))
	st, err := l.Retain(t0.Add(3 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 3 { // a, b and c; init1 never exited
		t.Errorf("Retain deleted %d processes, want 3", st.Processes)
	}
	if n, _ := countSpace(l.db, spaceLive); n != 1 {
		t.Errorf("live index holds %d keys after retention, want 1 (init)", n)
	}
	checkIndexes(t, l)
}

func TestLineage(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{})
	init1, a, b, c, d := pk(1, 1), pk(10, 100), pk(20, 200), pk(30, 300), pk(40, 400)
	mustAppend(t, l,
		execEv(init1, capture.ProcKey{}, at(0), "/sbin/init"),
		forkEv(a, init1, at(1)), execEv(a, init1, at(1), "/usr/sbin/sshd"),
		forkEv(b, a, at(2)), execEv(b, a, at(2), "/usr/bin/bash"),
		forkEv(c, b, at(3)), execEv(c, b, at(3), "/usr/bin/python3"),
		forkEv(d, b, at(4)),
	)
	// The intermediate parent exits; its child and grandchild remain.
	mustAppend(t, l, exitEv(b, at(5), 0))

	cases := []struct {
		name string
		got  func() ([]capture.Process, error)
		want string
	}{
		{"ancestors of grandchild through exited parent", func() ([]capture.Process, error) { return l.Ancestors(c) }, "20@200 10@100 1@1"},
		{"ancestors of init", func() ([]capture.Process, error) { return l.Ancestors(init1) }, ""},
		{"ancestors of unknown", func() ([]capture.Process, error) { return l.Ancestors(pk(99, 9)) }, ""},
		{"children of exited parent", func() ([]capture.Process, error) { return l.Children(b) }, "30@300 40@400"},
		{"descendants of a", func() ([]capture.Process, error) { return l.Descendants(a, 0) }, "20@200 30@300 40@400"},
		{"descendants depth 1", func() ([]capture.Process, error) { return l.Descendants(a, 1) }, "20@200"},
		{"descendants of leaf", func() ([]capture.Process, error) { return l.Descendants(d, 5) }, ""},
	}
	for _, tc := range cases {
		ps, err := tc.got()
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := keysOf(ps); got != tc.want {
			t.Errorf("%s = [%s], want [%s]", tc.name, got, tc.want)
		}
	}
	if p := mustProcess(t, l, d); p.Exec.Exe != "/usr/bin/bash" || p.Execed {
		t.Errorf("forked-only child: Exe %q Execed %v, want the parent's /usr/bin/bash and false", p.Exec.Exe, p.Execed)
	}
}

func TestAncestorsCycleAndUnknownStart(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{})
	x, y, z := pk(50, 5), pk(60, 6), pk(70, 7)
	// A corrupt or hostile snapshot: x and y are each other's parent.
	if err := l.Seed([]capture.Process{
		{Key: x, Parent: y}, {Key: y, Parent: x},
		// z names its parent by pid only, as a source that cannot read the
		// parent's start time does.
		{Key: z, Parent: capture.ProcKey{PID: 50}},
	}); err != nil {
		t.Fatal(err)
	}
	anc, err := l.Ancestors(x)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(anc); got != "60@6" {
		t.Errorf("Ancestors in a cycle = [%s], want [60@6]", got)
	}
	anc, err = l.Ancestors(z)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(anc); got != "50@5 60@6" {
		t.Errorf("Ancestors via a pid-only parent = [%s], want [50@5 60@6]", got)
	}
	desc, err := l.Descendants(x, 100)
	if err != nil {
		t.Fatal(err)
	}
	if got := keysOf(desc); got != "60@6" {
		t.Errorf("Descendants in a cycle = [%s], want [60@6]", got)
	}
}

func TestPIDReuse(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{})
	old, cur := pk(4242, 1000), pk(4242, 2000)
	mustAppend(t, l, forkEv(old, pk(1, 1), at(0)), execEv(old, pk(1, 1), at(0), "/usr/bin/old"), exitEv(old, at(1), 0))
	mustAppend(t, l, forkEv(cur, pk(1, 1), at(2)), execEv(cur, pk(1, 1), at(2), "/usr/bin/new"))

	if p := mustProcess(t, l, old); p.Exec.Exe != "/usr/bin/old" || p.Alive() {
		t.Errorf("old incarnation: Exe %q alive %v, want /usr/bin/old and exited", p.Exec.Exe, p.Alive())
	}
	if p := mustProcess(t, l, cur); p.Exec.Exe != "/usr/bin/new" || !p.Alive() {
		t.Errorf("new incarnation: Exe %q alive %v, want /usr/bin/new and alive", p.Exec.Exe, p.Alive())
	}
	p, ok, err := l.LiveByPID(4242)
	if err != nil || !ok || p.Key != cur {
		t.Errorf("LiveByPID(4242) = %s, %v, %v; want %s", p.Key, ok, err, cur)
	}
	// A missed exit leaves two live incarnations: the newer one wins.
	mid := pk(4242, 1500)
	mustAppend(t, l, forkEv(mid, pk(1, 1), at(3)))
	if p, ok, _ := l.LiveByPID(4242); !ok || p.Key != cur {
		t.Errorf("LiveByPID(4242) with two live incarnations = %s, %v; want the newer %s", p.Key, ok, cur)
	}
	all, _ := l.Processes(true)
	if got, want := keysOf(all), "4242@1000 4242@1500 4242@2000"; got != want {
		t.Errorf("Processes(true) = [%s], want [%s] (incarnations adjacent, by start)", got, want)
	}
	if _, ok, _ := l.LiveByPID(7); ok {
		t.Error("LiveByPID(7) found a process, want none")
	}
}

func TestSeed(t *testing.T) {
	now := t0.Add(time.Hour)
	l := openTest(t, t.TempDir(), LocalOptions{Now: func() time.Time { return now }})
	init1, a, gone, fresh := pk(1, 1), pk(10, 100), pk(20, 200), pk(30, 300)
	// State left by a previous agent run.
	mustAppend(t, l,
		execEv(init1, capture.ProcKey{}, at(0), "/sbin/init"),
		forkEv(a, pk(5, 50), at(1)), execEv(a, pk(5, 50), at(1), "/usr/sbin/cron"),
		forkEv(gone, init1, at(2)),
	)
	snapshot := []capture.Process{
		{Key: init1, Comm: "systemd", Exec: capture.Exec{Exe: "/usr/lib/systemd/systemd"}, Execed: true, StartTime: at(0)},
		// a was reparented to init after pid 5 died; /proc says ppid 1.
		{Key: a, Parent: init1, Comm: "cron", Exec: capture.Exec{Exe: "/usr/sbin/cron"}, Execed: true, StartTime: at(1)},
		{Key: fresh, Parent: init1, Comm: "sshd", Exec: capture.Exec{Exe: "/usr/sbin/sshd", Argv: []string{"sshd", "\xff"}}, Execed: true, StartTime: at(3)},
		// A process listed twice (a racy /proc walk): one entry, the first.
		{Key: fresh, Parent: init1, Comm: "dup", Exec: capture.Exec{Exe: "/dup"}, StartTime: at(3)},
	}
	if err := l.Seed(snapshot); err != nil {
		t.Fatalf("Seed: %v", err)
	}
	cases := []struct {
		key      capture.ProcKey
		seeded   bool
		exitTime int64
		parent   capture.ProcKey
		exe      string
	}{
		{init1, true, 0, capture.ProcKey{}, "/usr/lib/systemd/systemd"},
		{a, true, 0, pk(5, 50), "/usr/sbin/cron"},
		{gone, false, now.UnixNano(), init1, "/sbin/init"},
		{fresh, true, 0, init1, "/usr/sbin/sshd"},
	}
	for _, c := range cases {
		p := mustProcess(t, l, c.key)
		if p.Seeded != c.seeded || p.ExitTime != c.exitTime || p.Parent != c.parent || p.Exec.Exe != c.exe {
			t.Errorf("%s after Seed: seeded=%v exit=%d parent=%s exe=%q; want seeded=%v exit=%d parent=%s exe=%q",
				c.key, p.Seeded, p.ExitTime, p.Parent, p.Exec.Exe, c.seeded, c.exitTime, c.parent, c.exe)
		}
		if c.exitTime != 0 && p.Exit != nil {
			t.Errorf("%s marked exited by Seed has Exit %+v, want nil (status unknown)", c.key, p.Exit)
		}
	}
	checkIndexes(t, l)
}

func TestSeed10kFast(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{})
	procs := seedProcs(10_000)
	start := time.Now()
	if err := l.Seed(procs); err != nil {
		t.Fatal(err)
	}
	d := time.Since(start)
	// The target is well under 1 s; leave room for a loaded CI machine.
	if d > 2*time.Second {
		t.Errorf("Seed of 10,000 processes took %v, want well under 1s", d)
	}
	st, _ := l.Stats()
	if st.LiveProcesses != 10_000 {
		t.Errorf("live processes after seeding 10,000 = %d", st.LiveProcesses)
	}
	t.Logf("seeded 10,000 processes in %v", d)
}

func seedProcs(n int) []capture.Process {
	procs := make([]capture.Process, n)
	for i := range procs {
		pid := uint32(i + 1)
		parent := capture.ProcKey{}
		if pid > 1 {
			parent = pk(pid/2, uint64(pid/2)*10)
		}
		procs[i] = capture.Process{
			Key: pk(pid, uint64(pid)*10), Parent: parent, Comm: "worker",
			Exec: capture.Exec{UID: 1000, Exe: "/usr/bin/worker", Argv: []string{"/usr/bin/worker", "--id", strconv.Itoa(i), "--config=/etc/worker.conf"},
				Cwd: "/", CgroupID: 1234, PidNS: 4026531836, NetNS: 4026531840, MntNS: 4026531841},
			StartTime: at(time.Duration(i) * time.Millisecond), Execed: true,
		}
	}
	return procs
}

func TestRetainEvents(t *testing.T) {
	// Ten events one minute apart, each the same size.
	mk := func() []capture.Event {
		var evs []capture.Event
		for i := range 10 {
			evs = append(evs, connEv(pk(9, 9), at(time.Duration(i)*time.Minute), "192.0.2.1:80"))
		}
		return evs
	}
	sample := mk()[0]
	sample.Seq = 1
	enc, _ := EncodeEvent(&sample)
	size := int64(len(enc))

	cases := []struct {
		name      string
		opts      LocalOptions
		now       time.Time
		byAge     int
		bySize    int
		remaining []uint64
	}{
		{"nothing due", LocalOptions{RetainAge: time.Hour}, t0.Add(10 * time.Minute), 0, 0, []uint64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}},
		{"by age", LocalOptions{RetainAge: 5 * time.Minute}, t0.Add(10 * time.Minute), 5, 0, []uint64{6, 7, 8, 9, 10}},
		{"by age, cutoff inclusive of the newest kept", LocalOptions{RetainAge: 5 * time.Minute}, t0.Add(9*time.Minute + 30*time.Second), 5, 0, []uint64{6, 7, 8, 9, 10}},
		{"by size", LocalOptions{RetainAge: time.Hour, RetainBytes: 3 * size}, t0.Add(10 * time.Minute), 0, 7, []uint64{8, 9, 10}},
		{"by size, just over", LocalOptions{RetainAge: time.Hour, RetainBytes: 3*size - 1}, t0.Add(10 * time.Minute), 0, 8, []uint64{9, 10}},
		{"age then size", LocalOptions{RetainAge: 5 * time.Minute, RetainBytes: 2 * size}, t0.Add(10 * time.Minute), 5, 3, []uint64{9, 10}},
		{"everything", LocalOptions{RetainAge: time.Minute}, t0.Add(time.Hour), 10, 0, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			l := openTest(t, t.TempDir(), c.opts)
			mustAppend(t, l, mk()...)
			st, err := l.Retain(c.now)
			if err != nil {
				t.Fatalf("Retain: %v", err)
			}
			if st.EventsByAge != c.byAge || st.EventsBySize != c.bySize {
				t.Errorf("Retain deleted %d by age and %d by size, want %d and %d", st.EventsByAge, st.EventsBySize, c.byAge, c.bySize)
			}
			if want := uint64(c.byAge+c.bySize) * uint64(size); st.EventBytes != want {
				t.Errorf("Retain freed %d bytes, want %d", st.EventBytes, want)
			}
			if got := seqsBySeq(t, l, 0); !slices.Equal(got, c.remaining) {
				t.Errorf("events left = %v, want %v", got, c.remaining)
			}
			var byTime []uint64
			l.EventsByTime(time.Time{}, time.Time{}, func(ev capture.Event) bool { byTime = append(byTime, ev.Seq); return true })
			if !slices.Equal(byTime, c.remaining) {
				t.Errorf("time index left = %v, want %v", byTime, c.remaining)
			}
			ss, _ := l.Stats()
			if ss.Events != uint64(len(c.remaining)) || ss.EventBytes != uint64(len(c.remaining))*uint64(size) {
				t.Errorf("Stats after retain: %d events, %d bytes; want %d and %d", ss.Events, ss.EventBytes, len(c.remaining), len(c.remaining)*int(size))
			}
			// A second pass has nothing left to do.
			if st, _ := l.Retain(c.now); st.EventsByAge+st.EventsBySize != 0 {
				t.Errorf("second Retain deleted %+v, want nothing", st)
			}
		})
	}
}

// Events out of time order make the deleted seqs non-contiguous; the
// survivors in between must stay.
func TestRetainInterleaved(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{RetainAge: 10 * time.Minute})
	var evs []capture.Event
	for i := range 100 {
		d := time.Duration(i) * time.Second
		if i%7 == 3 {
			d = time.Hour // late-arriving but new
		}
		evs = append(evs, connEv(pk(9, 9), at(d), "192.0.2.1:80"))
	}
	mustAppend(t, l, evs...)
	st, err := l.Retain(t0.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	var want []uint64
	for i := range 100 {
		if i%7 == 3 {
			want = append(want, uint64(i+1))
		}
	}
	if st.EventsByAge != 100-len(want) {
		t.Errorf("Retain deleted %d, want %d", st.EventsByAge, 100-len(want))
	}
	if got := seqsBySeq(t, l, 0); !slices.Equal(got, want) {
		t.Errorf("survivors = %v, want %v", got, want)
	}
}

func TestRetainProcesses(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{ExitedRetain: time.Hour})
	init1, shell, job, worker, done := pk(1, 1), pk(10, 10), pk(20, 20), pk(30, 30), pk(40, 40)
	mustAppend(t, l,
		execEv(init1, capture.ProcKey{}, at(0), "/sbin/init"),
		forkEv(shell, init1, at(1)), forkEv(job, shell, at(2)), forkEv(worker, job, at(3)),
		forkEv(done, init1, at(4)),
		// done and the intermediate job exit early; worker (job's child) lives on.
		exitEv(done, at(5), 0), exitEv(job, at(6), 0),
	)
	st, err := l.Retain(t0.Add(30 * time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 0 {
		t.Errorf("Retain before ExitedRetain deleted %d processes, want 0", st.Processes)
	}

	st, err = l.Retain(t0.Add(2 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 1 || st.ProcessesKept != 1 {
		t.Errorf("Retain deleted %d and kept %d processes, want 1 (done) and 1 (job, parent of a live worker)", st.Processes, st.ProcessesKept)
	}
	if _, ok, _ := l.Process(done); ok {
		t.Error("exited process still in the table after ExitedRetain")
	}
	if anc, _ := l.Ancestors(worker); keysOf(anc) != "20@20 10@10 1@1" {
		t.Errorf("worker's lineage after retention = [%s], want [20@20 10@10 1@1]", keysOf(anc))
	}
	checkIndexes(t, l)

	// Once the worker has exited and is due too, both go in one pass.
	mustAppend(t, l, exitEv(worker, at(3*time.Hour), 0))
	st, err = l.Retain(t0.Add(5 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if st.Processes != 2 || st.ProcessesKept != 0 {
		t.Errorf("Retain deleted %d and kept %d, want 2 and 0", st.Processes, st.ProcessesKept)
	}
	if kids, _ := l.Children(shell); len(kids) != 0 {
		t.Errorf("Children(shell) = [%s] after its children were retained, want none", keysOf(kids))
	}
	checkIndexes(t, l)
	all, _ := l.Processes(true)
	if got := keysOf(all); got != "1@1 10@10" {
		t.Errorf("table after retention = [%s], want [1@1 10@10]", got)
	}
}

// Retention over more than one chunk.
func TestRetainManyChunks(t *testing.T) {
	if testing.Short() {
		t.Skip("writes 100k events")
	}
	l := openTest(t, t.TempDir(), LocalOptions{RetainAge: time.Hour, ExitedRetain: time.Minute})
	w := newWorkload(3)
	for range 50 {
		mustAppend(t, l, w.batch(2000)...)
	}
	before, _ := l.Stats()
	st, err := l.Retain(time.Unix(0, w.now).Add(2 * time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if st.EventsByAge != 100_000 {
		t.Errorf("Retain deleted %d events, want 100000", st.EventsByAge)
	}
	if st.Processes+st.ProcessesKept != int(before.ExitedProcesses) {
		t.Errorf("Retain looked at %d+%d exited processes, want %d", st.Processes, st.ProcessesKept, before.ExitedProcesses)
	}
	after, _ := l.Stats()
	if after.Events != 0 || after.EventBytes != 0 || after.ExitedProcesses != int64(st.ProcessesKept) {
		t.Errorf("Stats after retaining all: %+v", after)
	}
	checkIndexes(t, l)
}

func TestReadOnlyAndLock(t *testing.T) {
	dir := t.TempDir()
	l, err := OpenLocal(dir, LocalOptions{}, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	mustAppend(t, l, execEv(pk(5, 5), pk(1, 1), at(0), "/bin/sleep", "sleep", "9"))

	// In this process the writer holds the lock.
	if _, err := OpenLocalReadOnly(dir); !errors.Is(err, ErrLocked) {
		t.Errorf("OpenLocalReadOnly beside a writer in this process: err = %v, want ErrLocked", err)
	}
	if _, err := OpenLocal(dir, LocalOptions{}, nil); !errors.Is(err, ErrLocked) {
		t.Errorf("second OpenLocal: err = %v, want ErrLocked", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// Another process (standing in for the running agent) holds the lock.
	helper := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
	helper.Env = append(os.Environ(), "STORE_HELPER=lock", "STORE_DIR="+dir)
	stdin, _ := helper.StdinPipe()
	stdout, _ := helper.StdoutPipe()
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stdout)
	if !sc.Scan() || sc.Text() != "ready" {
		t.Fatalf("helper did not open the store: %q", sc.Text())
	}
	_, err = OpenLocalReadOnly(dir)
	if !errors.Is(err, ErrLocked) {
		t.Errorf("OpenLocalReadOnly while another process writes: err = %v, want ErrLocked", err)
	}
	if err != nil && !strings.Contains(err.Error(), "socket") {
		t.Errorf("ErrLocked message %q does not point to the agent's socket", err)
	}
	stdin.Close()
	if err := helper.Wait(); err != nil {
		t.Fatalf("helper: %v", err)
	}

	// Nobody holds it: a read-only open works and refuses writes.
	ro, err := OpenLocalReadOnly(dir)
	if err != nil {
		t.Fatalf("OpenLocalReadOnly on an idle store: %v", err)
	}
	if p, ok, err := ro.LiveByPID(5); err != nil || !ok || p.Exec.Exe != "/bin/sleep" {
		t.Errorf("read-only LiveByPID(5) = %+v, %v, %v", p, ok, err)
	}
	if got := seqsBySeq(t, ro, 0); len(got) != 2 {
		t.Errorf("read-only store sees seqs %v, want [1 2] (one from the helper)", got)
	}
	if _, _, err := ro.Append([]capture.Event{exitEv(pk(5, 5), at(1), 0)}); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Append on a read-only store: err = %v, want ErrReadOnly", err)
	}
	if _, err := ro.Retain(t0); !errors.Is(err, ErrReadOnly) {
		t.Errorf("Retain on a read-only store: err = %v, want ErrReadOnly", err)
	}
	if err := ro.Close(); err != nil {
		t.Fatal(err)
	}

	if _, err := OpenLocalReadOnly(filepath.Join(dir, "nope")); err == nil || errors.Is(err, ErrLocked) {
		t.Errorf("OpenLocalReadOnly on a missing dir: err = %v, want a not-found error", err)
	}
	empty := t.TempDir()
	if _, err := OpenLocalReadOnly(empty); err == nil || errors.Is(err, ErrLocked) {
		t.Errorf("OpenLocalReadOnly on an empty dir: err = %v, want an error that is not ErrLocked", err)
	}
}

func TestClosed(t *testing.T) {
	l, err := OpenLocal(t.TempDir(), LocalOptions{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, _, err := l.Append([]capture.Event{forkEv(pk(2, 2), pk(1, 1), 1)}); !errors.Is(err, ErrClosed) {
		t.Errorf("Append after Close: %v, want ErrClosed", err)
	}
	if _, _, err := l.Process(pk(2, 2)); !errors.Is(err, ErrClosed) {
		t.Errorf("Process after Close: %v, want ErrClosed", err)
	}
	if _, err := l.Stats(); !errors.Is(err, ErrClosed) {
		t.Errorf("Stats after Close: %v, want ErrClosed", err)
	}
}

// TestHelperProcess is run as a child process by other tests.
func TestHelperProcess(t *testing.T) {
	dir := os.Getenv("STORE_DIR")
	switch os.Getenv("STORE_HELPER") {
	case "lock":
		l, err := OpenLocal(dir, LocalOptions{}, nil)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		l.Append([]capture.Event{connEv(pk(5, 5), at(1), "192.0.2.1:1")})
		fmt.Println("ready")
		bufio.NewReader(os.Stdin).ReadString('\n') // until the parent closes stdin
		l.Close()
		os.Exit(0)
	case "crash":
		// Append forever, reporting each seq once it is durable, until killed.
		l, err := OpenLocal(dir, LocalOptions{}, nil)
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		w := newWorkload(uint64(os.Getpid()))
		for i := 0; ; i++ {
			_, last, err := l.Append(w.batch(1 + i%500))
			if err != nil {
				fmt.Println("error", err)
				os.Exit(1)
			}
			if i%3 == 0 {
				if err := l.Flush(); err != nil {
					fmt.Println("error", err)
					os.Exit(1)
				}
				fmt.Println("durable", last)
			}
		}
	}
}

// TestCrashKill kills a writing process with SIGKILL and checks that the
// store reopens with every event reported durable, and with the process
// table agreeing exactly with the events that survived.
func TestCrashKill(t *testing.T) {
	dir := t.TempDir()
	for round := range 3 {
		helper := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$")
		helper.Env = append(os.Environ(), "STORE_HELPER=crash", "STORE_DIR="+dir)
		stdout, _ := helper.StdoutPipe()
		helper.Stderr = os.Stderr
		if err := helper.Start(); err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(stdout)
		var durable uint64
		for n := 0; n < 20+round*15 && sc.Scan(); n++ {
			f := strings.Fields(sc.Text())
			if len(f) != 2 || f[0] != "durable" {
				t.Fatalf("helper said %q", sc.Text())
			}
			durable, _ = strconv.ParseUint(f[1], 10, 64)
		}
		helper.Process.Signal(syscall.SIGKILL)
		helper.Wait()
		if durable == 0 {
			t.Fatal("helper reported nothing durable")
		}

		l, err := OpenLocal(dir, LocalOptions{}, testLogger(t))
		if err != nil {
			t.Fatalf("round %d: reopen after SIGKILL: %v", round, err)
		}
		if got := l.LastSeq(); got < durable {
			t.Errorf("round %d: LastSeq %d after crash, but %d was reported durable", round, got, durable)
		}
		checkAgainstReplay(t, l)
		l.Close()
	}
}

// TestCrashUnsynced simulates power loss with Pebble's crashable in-memory
// filesystem: unsynced writes are kept or dropped at random. Whatever
// survives, events and table must agree, and what was flushed must be there.
func TestCrashUnsynced(t *testing.T) {
	for trial := range 8 {
		mem := vfs.NewCrashableMem()
		opts := LocalOptions{fs: mem}
		l, err := OpenLocal("/db", opts, testLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		w := newWorkload(uint64(trial))
		var flushed uint64
		for i := range 30 {
			_, last := mustAppend(t, l, w.batch(50+i*10)...)
			if i == 10 || i == 20 {
				if err := l.Flush(); err != nil {
					t.Fatal(err)
				}
				flushed = last
			}
		}
		crashed := mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: []int{0, 50, 90, 99, 100, 30, 70, 95}[trial], RNG: rand.New(rand.NewPCG(uint64(trial), 1))})
		l.Close()

		opts.fs = crashed
		l, err = OpenLocal("/db", opts, testLogger(t))
		if err != nil {
			t.Fatalf("trial %d: reopen after crash: %v", trial, err)
		}
		if got := l.LastSeq(); got < flushed {
			t.Errorf("trial %d: LastSeq %d after crash, want >= flushed %d", trial, got, flushed)
		}
		checkAgainstReplay(t, l)
		// Numbering continues after whatever survived.
		last := l.LastSeq()
		if first, _ := mustAppend(t, l, w.batch(1)...); first != last+1 {
			t.Errorf("trial %d: Append after crash got seq %d, want %d", trial, first, last+1)
		}
		t.Logf("trial %d: %d unsynced%%, flushed %d, survived %d", trial, []int{0, 50, 90, 99, 100, 30, 70, 95}[trial], flushed, last)
		l.Close()
	}
}

// checkAgainstReplay checks that l's seqs are 1..LastSeq without holes, its
// counters match its events, and its process table equals the table built by
// replaying those same events into a fresh store.
func checkAgainstReplay(t *testing.T, l *Local) {
	t.Helper()
	var evs []capture.Event
	var bytes uint64
	err := l.EventsBySeq(0, func(ev capture.Event) bool {
		evs = append(evs, ev)
		b, _ := EncodeEvent(&ev)
		bytes += uint64(len(b))
		return true
	})
	if err != nil {
		t.Fatalf("EventsBySeq: %v", err)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d: a hole or a reordering after crash", i, ev.Seq)
		}
	}
	if got := l.LastSeq(); got != uint64(len(evs)) {
		t.Errorf("LastSeq %d, but %d events survived", got, len(evs))
	}
	st, err := l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Events != uint64(len(evs)) || st.EventBytes != bytes {
		t.Errorf("counters say %d events / %d bytes, store holds %d / %d", st.Events, st.EventBytes, len(evs), bytes)
	}
	if n, _ := countSpace(l.db, spaceTime); n != int64(len(evs)) {
		t.Errorf("time index holds %d keys, want %d", n, len(evs))
	}

	ref, err := OpenLocal("/ref", LocalOptions{fs: vfs.NewMem()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ref.Close()
	if len(evs) > 0 {
		for i := range evs {
			evs[i].Seq = 0
		}
		if _, _, err := ref.Append(evs); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := l.Processes(true)
	want, _ := ref.Processes(true)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("process table (%d entries) differs from a replay of its %d events (%d entries)", len(got), len(evs), len(want))
	}
	checkIndexes(t, l)
}

// TestConcurrentUse runs writers, readers and retention together (for -race)
// and checks that the indexes still agree afterwards.
func TestConcurrentUse(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{RetainAge: 20 * time.Millisecond, ExitedRetain: 20 * time.Millisecond})
	w := newWorkload(9)
	var now atomic.Int64 // the workload's clock, for the retention goroutine
	now.Store(w.now)
	done := make(chan struct{})
	errs := make(chan error, 3)
	go func() {
		defer close(done)
		for range 40 {
			if _, _, err := l.Append(w.batch(300)); err != nil {
				errs <- err
				return
			}
			now.Store(w.now)
		}
	}()
	reader := func() {
		for {
			select {
			case <-done:
				errs <- nil
				return
			default:
			}
			var last uint64
			err := l.EventsBySeq(0, func(ev capture.Event) bool {
				if ev.Seq <= last {
					t.Errorf("EventsBySeq went from %d to %d", last, ev.Seq)
				}
				last = ev.Seq
				return true
			})
			if err == nil {
				var ps []capture.Process
				if ps, err = l.Processes(false); err == nil && len(ps) > 0 {
					_, err = l.Ancestors(ps[len(ps)-1].Key)
				}
			}
			if err == nil {
				_, err = l.Stats()
			}
			if err != nil {
				errs <- err
				return
			}
		}
	}
	go reader()
	go func() {
		for {
			select {
			case <-done:
				errs <- nil
				return
			default:
			}
			if _, err := l.Retain(time.Unix(0, now.Load())); err != nil {
				errs <- err
				return
			}
		}
	}()
	<-done
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Retain(time.Unix(0, now.Load())); err != nil {
		t.Fatal(err)
	}
	if st, _ := l.Stats(); st.Events >= 40*300 || st.LastSeq != 40*300 {
		t.Errorf("after retention: %d events, last seq %d; want fewer than %d and %d", st.Events, st.LastSeq, 40*300, 40*300)
	}
	checkIndexes(t, l)
}
