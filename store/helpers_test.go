package store

import (
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
)

var t0 = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)

func at(d time.Duration) int64 { return t0.Add(d).UnixNano() }

func pk(pid uint32, start uint64) capture.ProcKey { return capture.ProcKey{PID: pid, Start: start} }

func forkEv(child, parent capture.ProcKey, t int64) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindFork, Proc: child, Parent: parent, Source: "ebpf"}
}

func execEv(p, parent capture.ProcKey, t int64, exe string, argv ...string) capture.Event {
	comm := exe[strings.LastIndexByte(exe, '/')+1:]
	return capture.Event{Time: t, Kind: capture.KindExec, Proc: p, Parent: parent, Comm: comm, Source: "ebpf",
		Exec: &capture.Exec{UID: 1000, GID: 1000, EUID: 1000, EGID: 1000, Exe: exe, Argv: argv, Cwd: "/home/u"}}
}

func exitEv(p capture.ProcKey, t int64, code int32) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindExit, Proc: p, Exit: &capture.Exit{Code: code}, Source: "ebpf"}
}

func connEv(p capture.ProcKey, t int64, dst string) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindConnect, Proc: p, Source: "ebpf", Conn: &capture.Conn{
		Proto: capture.ProtoTCP, Src: netip.MustParseAddrPort("10.0.0.5:40000"), Dst: netip.MustParseAddrPort(dst)}}
}

// testLogger sends the store's warnings and errors to the test log.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(tlogWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

type tlogWriter struct{ t testing.TB }

func (w tlogWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func openTest(t testing.TB, dir string, opts LocalOptions) *Local {
	t.Helper()
	l, err := OpenLocal(dir, opts, testLogger(t))
	if err != nil {
		t.Fatalf("OpenLocal(%s): %v", dir, err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func mustAppend(t testing.TB, l *Local, evs ...capture.Event) (uint64, uint64) {
	t.Helper()
	first, last, err := l.Append(evs)
	if err != nil {
		t.Fatalf("Append(%d events): %v", len(evs), err)
	}
	return first, last
}

func mustProcess(t testing.TB, l *Local, k capture.ProcKey) capture.Process {
	t.Helper()
	p, ok, err := l.Process(k)
	if err != nil {
		t.Fatalf("Process(%s): %v", k, err)
	}
	if !ok {
		t.Fatalf("Process(%s): not in the table, want an entry", k)
	}
	return p
}

func keysOf(ps []capture.Process) string {
	var b strings.Builder
	for i, p := range ps {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.Key.String())
	}
	return b.String()
}

func seqsBySeq(t testing.TB, l *Local, from uint64) []uint64 {
	t.Helper()
	var out []uint64
	if err := l.EventsBySeq(from, func(ev capture.Event) bool { out = append(out, ev.Seq); return true }); err != nil {
		t.Fatalf("EventsBySeq(%d): %v", from, err)
	}
	return out
}

// workload generates a plausible event stream: a process tree that forks,
// execs, connects and exits, with pids reused.
type workload struct {
	rng   *rand.Rand
	live  []capture.ProcKey
	fresh []capture.ProcKey // forked, not yet exec'ed
	pid   uint32
	start uint64
	now   int64
}

func newWorkload(seed uint64) *workload {
	return &workload{rng: rand.New(rand.NewPCG(seed, 7)), live: []capture.ProcKey{pk(1, 1)}, pid: 1, start: 1, now: at(0)}
}

var argvPool = [][]string{
	{"/usr/bin/bash", "-c", "curl -s https://example.com/x | sh"},
	{"/usr/bin/python3", "-m", "http.server", "8080"},
	{"/usr/bin/ls", "-la", "/tmp/\xff\xfe"},
	{"/usr/sbin/sshd", "-D", "-o", "PermitRootLogin=no"},
	{"/usr/bin/git", "commit", "-m", "fix: the thing that broke the other thing"},
}

func (w *workload) next() capture.Event {
	w.now += int64(w.rng.IntN(50_000)) + 1
	switch r := w.rng.IntN(10); {
	case r < 3 || len(w.live) < 4:
		w.pid++
		if w.pid > 32768 {
			w.pid = 2 // pid reuse, with a new start time
		}
		w.start += uint64(w.rng.IntN(3)) + 1
		child := pk(w.pid, w.start)
		parent := w.live[w.rng.IntN(len(w.live))]
		w.live = append(w.live, child)
		w.fresh = append(w.fresh, child)
		return forkEv(child, parent, w.now)
	case r < 6 && len(w.fresh) > 0:
		p := w.fresh[0]
		w.fresh = w.fresh[1:]
		argv := argvPool[w.rng.IntN(len(argvPool))]
		return execEv(p, capture.ProcKey{}, w.now, argv[0], argv...)
	case r < 8:
		i := 1 + w.rng.IntN(len(w.live)-1) // pid 1 never exits
		p := w.live[i]
		w.live = append(w.live[:i], w.live[i+1:]...)
		for j, f := range w.fresh {
			if f == p {
				w.fresh = append(w.fresh[:j], w.fresh[j+1:]...)
				break
			}
		}
		return exitEv(p, w.now, int32(w.rng.IntN(3)))
	default:
		return connEv(w.live[w.rng.IntN(len(w.live))], w.now, "192.0.2.7:443")
	}
}

func (w *workload) batch(n int) []capture.Event {
	evs := make([]capture.Event, n)
	for i := range evs {
		evs[i] = w.next()
	}
	return evs
}

func mustAddrPort(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }
