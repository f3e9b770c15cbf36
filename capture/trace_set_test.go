package capture

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lukechampine.com/blake3"
)

// fakeClock is a settable clock for traceSet.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time          { return c.t }
func (c *fakeClock) advance(d time.Duration) { c.t = c.t.Add(d) }

// harness is a traceSet with a fake clock and a consumer that refuses the
// events refuse says to.
type harness struct {
	clock  *fakeClock
	ts     *traceSet
	got    []Event
	refuse func(Event) bool
}

func newHarness(t *testing.T, p TracePolicy) *harness {
	t.Helper()
	h := &harness{clock: &fakeClock{t: time.Unix(1_700_000_000, 0)}}
	h.ts = newTraceSet(h.clock.now)
	h.ts.setPolicy(p)
	h.ts.running(func(ev Event) bool {
		if h.refuse != nil && h.refuse(ev) {
			return false
		}
		h.got = append(h.got, ev)
		return true
	})
	return h
}

func (h *harness) start(t *testing.T, spec TraceSpec) *traceState {
	t.Helper()
	h.ts.mu.Lock()
	defer h.ts.mu.Unlock()
	tr, err := h.ts.add(spec, ProcKey{PID: spec.RootPID, Start: 1})
	if err != nil {
		t.Fatal(err)
	}
	h.ts.noteLocked(tr, &TraceNote{What: "start"}, h.clock.now())
	return tr
}

func (h *harness) deliver(tr *traceState, ev Event, size int64, focused bool) verdict {
	h.ts.mu.Lock()
	defer h.ts.mu.Unlock()
	v, _ := h.ts.deliver(tr.tag, &ev, size, focused)
	return v
}

func (h *harness) trace(id string) []Event {
	var out []Event
	for _, ev := range h.got {
		if ev.TraceID == id {
			out = append(out, ev)
		}
	}
	return out
}

func fileEvent() Event { return Event{Kind: KindFileOpen, File: &FileOp{Path: "/x"}} }

// noCaps is a policy without caps, so that a test sets only the ones it
// is about.
var noCaps = TracePolicy{}

func TestTraceSetSeqWithoutGaps(t *testing.T) {
	h := newHarness(t, noCaps)
	tr := h.start(t, TraceSpec{TraceID: "T", RootPID: 5})
	n := 0
	h.refuse = func(Event) bool { n++; return n%3 == 0 } // every third send refused
	for i := 0; i < 30; i++ {
		h.deliver(tr, fileEvent(), 100, true)
	}
	evs := h.trace("T")
	for i, ev := range evs {
		if ev.TraceSeq != uint64(i+1) {
			t.Fatalf("event %d has seq %d, want %d", i, ev.TraceSeq, i+1)
		}
	}
	st := tr.status()
	if st.Events != uint64(len(evs)) || st.Dropped[DropBackpressure] == 0 || st.Bytes != int64(100*(st.Events-1-notes(evs, "sampled"))) {
		t.Errorf("status %+v after %d sent (%d notes), want the refused counted as backpressure and bytes of the kept", st, len(evs), notes(evs, ""))
	}
}

func notes(evs []Event, what string) uint64 {
	var n uint64
	for _, ev := range evs {
		if ev.Kind == KindTraceNote && (what == "" || ev.Note.What == what) {
			n++
		}
	}
	return n
}

func TestTraceSetRateSamples(t *testing.T) {
	h := newHarness(t, noCaps)
	tr := h.start(t, TraceSpec{TraceID: "T", RootPID: 5, MaxEventsPerSec: 10})
	kept := 0
	for i := 0; i < 50; i++ {
		if h.deliver(tr, fileEvent(), 10, true) == verdictTrace {
			kept++
		}
	}
	if kept != 10 {
		t.Errorf("kept %d of a burst of 50 at 10/s, want the 10 of the burst allowance", kept)
	}
	// A baseline event of the trace over the cap goes out untraced,
	// without its trace-only parts.
	ex := Event{Kind: KindExec, Exec: &Exec{Exe: "/bin/x", Env: []string{"A=1"}}}
	if v := h.deliver(tr, ex, 10, false); v != verdictBaseline || ex.Exec.Env != nil {
		t.Errorf("exec over the cap: verdict %v env %q, want baseline without env", v, ex.Exec.Env)
	}
	h.clock.advance(time.Second)
	if h.deliver(tr, fileEvent(), 10, true) != verdictTrace {
		t.Fatal("event after a second refused")
	}
	evs := h.trace("T")
	last, note := evs[len(evs)-1], evs[len(evs)-2]
	if last.Kind != KindFileOpen || note.Kind != KindTraceNote || note.Note.What != "sampled" ||
		note.Note.Reason != DropMaxEventsPerSec || note.Note.Dropped != 41 {
		t.Errorf("before the next kept event: %+v, want a sampled note for the 41 dropped", note.Note)
	}
}

func TestTraceSetAgentCap(t *testing.T) {
	h := newHarness(t, TracePolicy{AgentEventsPerSec: 10})
	a := h.start(t, TraceSpec{TraceID: "A", RootPID: 5})
	b := h.start(t, TraceSpec{TraceID: "B", RootPID: 6})
	kept := 0
	for i := 0; i < 20; i++ {
		for _, tr := range []*traceState{a, b} {
			if h.deliver(tr, fileEvent(), 1, true) == verdictTrace {
				kept++
			}
		}
	}
	// The start notes are not held to the cap.
	if kept != 10 || a.dropped[DropAgentEventsPerSec]+b.dropped[DropAgentEventsPerSec] != 30 {
		t.Errorf("kept %d of 40 across two traces at an agent cap of 10/s (dropped %v %v)", kept, a.dropped, b.dropped)
	}
}

func TestTraceSetMaxBytesStops(t *testing.T) {
	h := newHarness(t, noCaps)
	tr := h.start(t, TraceSpec{TraceID: "T", RootPID: 5, MaxBytes: 1000})
	var stoppedBy *traceState
	for i := 0; i < 20; i++ {
		ev := fileEvent()
		h.ts.mu.Lock()
		_, s := h.ts.deliver(tr.tag, &ev, 300, true)
		h.ts.mu.Unlock()
		if s != nil {
			stoppedBy = s
		}
	}
	if stoppedBy != tr || tr.active() || tr.reason != StopMaxBytes || tr.bytes != 900 {
		t.Fatalf("after 20 x 300 bytes with a cap of 1000: stopped %v reason %q bytes %d, want stopped for %s at 900", stoppedBy != nil, tr.reason, tr.bytes, StopMaxBytes)
	}
	evs := h.trace("T")
	last := evs[len(evs)-1]
	if len(evs) != 5 || last.Note == nil || last.Note.What != "stop" || last.Note.Reason != StopMaxBytes || last.Note.Events != 5 {
		t.Errorf("trace: start, 3 events, stop note; got %d events ending in %+v", len(evs), last.Note)
	}
	// After the stop, trace-only records are dropped, baseline ones pass.
	if v := h.deliver(tr, fileEvent(), 1, true); v != verdictDropped {
		t.Errorf("file record after the stop: %v, want dropped", v)
	}
	if v := h.deliver(tr, Event{Kind: KindExit}, 1, false); v != verdictBaseline {
		t.Errorf("exit after the stop: %v, want baseline", v)
	}
}

func TestTraceSetMaxDuration(t *testing.T) {
	h := newHarness(t, TracePolicy{MaxDuration: time.Minute})
	tr := h.start(t, TraceSpec{TraceID: "T", RootPID: 5, MaxDuration: time.Hour})
	if tr.spec.MaxDuration != time.Minute {
		t.Errorf("MaxDuration %v, want the policy's smaller minute", tr.spec.MaxDuration)
	}
	h.clock.advance(59 * time.Second)
	h.ts.mu.Lock()
	if got := h.ts.expired(); len(got) != 0 {
		t.Errorf("expired after 59s of 60: %d", len(got))
	}
	h.clock.advance(time.Second)
	got := h.ts.expired()
	h.ts.mu.Unlock()
	if len(got) != 1 || tr.reason != StopMaxDuration {
		t.Errorf("after 60s: expired %d, reason %q, want %s", len(got), tr.reason, StopMaxDuration)
	}
}

func TestTraceSetLimitsAndIDs(t *testing.T) {
	h := newHarness(t, noCaps)
	var trs []*traceState
	for i := 0; i < maxTraces; i++ {
		trs = append(trs, h.start(t, TraceSpec{TraceID: "T" + string(rune('A'+i)), RootPID: 5}))
	}
	h.ts.mu.Lock()
	_, err := h.ts.add(TraceSpec{TraceID: "one-more", RootPID: 5}, ProcKey{})
	if !errors.Is(err, ErrTraceLimit) {
		t.Errorf("trace %d: %v, want ErrTraceLimit", maxTraces+1, err)
	}
	_, err = h.ts.add(TraceSpec{TraceID: "TA", RootPID: 5}, ProcKey{})
	if !errors.Is(err, ErrTraceExists) {
		t.Errorf("running id again: %v, want ErrTraceExists", err)
	}
	_, err = h.ts.add(TraceSpec{RootPID: 5}, ProcKey{})
	if !errors.Is(err, ErrTraceSpec) {
		t.Errorf("no id: %v, want ErrTraceSpec", err)
	}
	// A stopped trace's slot is free only once the kernel let go of it,
	// and a new trace never reuses a tag.
	h.ts.stopLocked(trs[3], "test", h.clock.now())
	_, err = h.ts.add(TraceSpec{TraceID: "next", RootPID: 5}, ProcKey{})
	h.ts.mu.Unlock()
	if !errors.Is(err, ErrTraceLimit) {
		t.Errorf("slot reused before the kernel released it: %v", err)
	}
	h.ts.kernelReleased(trs[3])
	h.ts.mu.Lock()
	next, err := h.ts.add(TraceSpec{TraceID: "next", RootPID: 5}, ProcKey{})
	h.ts.mu.Unlock()
	if err != nil || next.tag == trs[3].tag || next.tag%maxTraces != trs[3].tag%maxTraces {
		t.Errorf("new trace: %v, tag %d, want the freed slot %d under a new tag", err, next.tag, trs[3].tag%maxTraces)
	}
}

func TestTraceSetPendingBeforeRun(t *testing.T) {
	clock := &fakeClock{t: time.Unix(1, 0)}
	ts := newTraceSet(clock.now)
	ts.mu.Lock()
	tr, err := ts.add(TraceSpec{TraceID: "T", RootPID: 5}, ProcKey{PID: 5})
	if err != nil {
		t.Fatal(err)
	}
	ts.noteLocked(tr, &TraceNote{What: "start"}, clock.now())
	ts.mu.Unlock()
	var got []Event
	ts.running(func(ev Event) bool { got = append(got, ev); return true })
	if len(got) != 1 || got[0].TraceSeq != 1 || got[0].Note.What != "start" {
		t.Errorf("delivered at Run start: %+v, want the start note as seq 1", got)
	}
}

func TestEffectiveSpec(t *testing.T) {
	p := TracePolicy{MaxEventsPerSec: 100, MaxBytes: 1000, MaxDuration: time.Hour, MaxMemSnippetBytes: 64}
	for _, tc := range []struct {
		name       string
		spec, want TraceSpec
		memOK      bool
	}{
		{"policy fills zero caps", TraceSpec{}, TraceSpec{MaxEventsPerSec: 100, MaxBytes: 1000, MaxDuration: time.Hour, EnvMaxBytes: DefaultEnvMaxBytes}, false},
		{"smaller command caps win", TraceSpec{MaxEventsPerSec: 10, MaxBytes: 10, MaxDuration: time.Second, EnvMaxBytes: 99},
			TraceSpec{MaxEventsPerSec: 10, MaxBytes: 10, MaxDuration: time.Second, EnvMaxBytes: 99}, false},
		{"larger command caps lose", TraceSpec{MaxEventsPerSec: 1e6, MaxBytes: 1e9, MaxDuration: 1e6 * time.Hour, EnvMaxBytes: 1 << 20},
			TraceSpec{MaxEventsPerSec: 100, MaxBytes: 1000, MaxDuration: time.Hour, EnvMaxBytes: envCapBytes}, false},
		{"snippets off by policy", TraceSpec{MemSnippetBytes: 32}, TraceSpec{MaxEventsPerSec: 100, MaxBytes: 1000, MaxDuration: time.Hour, EnvMaxBytes: DefaultEnvMaxBytes}, false},
		{"snippets capped", TraceSpec{MemSnippetBytes: 4096}, TraceSpec{MaxEventsPerSec: 100, MaxBytes: 1000, MaxDuration: time.Hour, EnvMaxBytes: DefaultEnvMaxBytes, MemSnippetBytes: 64}, true},
		{"snippets default off", TraceSpec{}, TraceSpec{MaxEventsPerSec: 100, MaxBytes: 1000, MaxDuration: time.Hour, EnvMaxBytes: DefaultEnvMaxBytes}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := p
			p.MemSnippets = tc.memOK
			if got := effectiveSpec(tc.spec, p); got != tc.want {
				t.Errorf("effectiveSpec = %+v, want %+v", got, tc.want)
			}
		})
	}
}

func TestTokenBucket(t *testing.T) {
	now := time.Unix(0, 0)
	b := newTokenBucket(4, now)
	n := 0
	for i := 0; i < 10; i++ {
		if b.take(now) {
			n++
		}
	}
	if n != 4 {
		t.Errorf("burst: %d of 10 at 4/s, want 4", n)
	}
	if b.take(now.Add(200 * time.Millisecond)) {
		t.Error("a token after 200ms at 4/s")
	}
	if !b.take(now.Add(300 * time.Millisecond)) {
		t.Error("no token after 300ms at 4/s")
	}
	if unlimited := newTokenBucket(0, now); !unlimited.take(now) {
		t.Error("a zero rate refused")
	}
}

func TestProcSourceRefusesTraces(t *testing.T) {
	var tr Tracer = &ProcSource{}
	if err := tr.StartTrace(TraceSpec{TraceID: "T", RootPID: 1}); !errors.Is(err, ErrTraceUnsupported) {
		t.Errorf("StartTrace on the proc source = %v, want ErrTraceUnsupported", err)
	}
	if err := tr.StopTrace("T", ""); !errors.Is(err, ErrTraceUnsupported) {
		t.Errorf("StopTrace on the proc source = %v, want ErrTraceUnsupported", err)
	}
	if got := tr.Traces(); got != nil {
		t.Errorf("Traces on the proc source = %v, want none", got)
	}
}

func TestHashReader(t *testing.T) {
	data := []byte(strings.Repeat("daemoneye", 100_000))
	res := hashReader(strings.NewReader(string(data)), make([]byte, 4096), 1<<30)
	s2 := sha256.Sum256(data)
	b3 := blake3.Sum256(data)
	if res.err != "" || res.sha256 != hex.EncodeToString(s2[:]) || res.blake3 != hex.EncodeToString(b3[:]) {
		t.Errorf("hashReader = %+v, want sha256 %x blake3 %x", res, s2, b3)
	}
	if res := hashReader(strings.NewReader(string(data)), make([]byte, 4096), 100); res.err == "" || res.sha256 != "" {
		t.Errorf("over the limit: %+v, want an error and no digest", res)
	}
}

// The cache: a miss is hashed once by a worker, later requests for the same
// (dev, inode, ctime, size) are answered from it, in flight or done.
func TestExeHasherCache(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(path, []byte("not really a binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []Event
	delivered := make(chan struct{}, 16)
	h := newExeHasher(func(tag uint32, ev Event) {
		mu.Lock()
		got = append(got, ev)
		mu.Unlock()
		delivered <- struct{}{}
	})
	open := func() (*os.File, error) { return os.Open(path) }
	tmpl := func(pid uint32) Event {
		return Event{Kind: KindExecHash, Proc: ProcKey{PID: pid}, Hashes: &Hashes{Path: path}}
	}
	id := fileID{dev: 1, ino: 2, ctime: 3, size: 19}
	// Two requests before any worker runs: one job, one waiter.
	if ev := h.request(7, tmpl(1), id, open); ev != nil {
		t.Fatalf("first request answered at once: %+v", ev)
	}
	if ev := h.request(7, tmpl(2), id, open); ev != nil {
		t.Fatalf("request while hashing answered at once: %+v", ev)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { h.run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	for i := 0; i < 2; i++ {
		select {
		case <-delivered:
		case <-time.After(5 * time.Second):
			t.Fatal("hash not delivered")
		}
	}
	ev := h.request(7, tmpl(3), id, open)
	if ev == nil || !ev.Hashes.Cached {
		t.Fatalf("request after the hash: %+v, want an immediate cached answer", ev)
	}
	want := sha256.Sum256([]byte("not really a binary"))
	mu.Lock()
	all := append(got, *ev)
	mu.Unlock()
	for i, e := range all {
		if e.Hashes.SHA256 != hex.EncodeToString(want[:]) || e.Hashes.Cached != (e.Proc.PID != 1) {
			t.Errorf("answer %d for pid %d: %+v, want the digest, cached for all but the first", i, e.Proc.PID, *e.Hashes)
		}
	}
	if h.misses.Load() != 1 || h.hits.Load() != 2 || h.opens.Load() != 1 {
		t.Errorf("misses %d hits %d opens %d, want 1, 2 and 1: a hit opens nothing", h.misses.Load(), h.hits.Load(), h.opens.Load())
	}
	// A new version of the file (another ctime) is hashed again.
	id.ctime++
	if ev := h.request(7, tmpl(4), id, open); ev != nil {
		t.Errorf("changed file answered from the cache: %+v", ev.Hashes)
	}
	<-delivered
	// A file that cannot be opened is answered at once, with why.
	id.ctime++
	ev = h.request(7, tmpl(5), id, func() (*os.File, error) { return nil, os.ErrNotExist })
	if ev == nil || ev.Hashes.Error == "" || ev.Hashes.SHA256 != "" {
		t.Errorf("unopenable file: %+v, want an immediate error", ev)
	}
}

func TestDecodeFileAndSockRecords(t *testing.T) {
	var d recordDecoder
	rec := func(kind byte, flags byte, path, path2, base, base2 string) []byte {
		b := make([]byte, fileData)
		b[hdrKind] = kind
		b[hdrFlags] = flags
		recordOrder.PutUint32(b[hdrTrace:], 9)
		recordOrder.PutUint64(b[fileResult:], uint64(^uint64(1))) // -2
		recordOrder.PutUint64(b[fileIno:], 77)
		recordOrder.PutUint32(b[fileDev:], 8<<20|1)
		for _, f := range []struct {
			off int
			s   string
		}{{filePathLen, path}, {filePath2Len, path2}, {fileBaseLen, base}, {fileBase2Len, base2}} {
			recordOrder.PutUint16(b[f.off:], uint16(len(f.s)))
		}
		return append(b, path+path2+base+base2...)
	}
	for _, tc := range []struct {
		name      string
		b         []byte
		kind      Kind
		path, to  string
		wantUnrdb bool
	}{
		{"absolute open", rec(evKindOpen, 0, "/etc/passwd", "", "", ""), KindFileOpen, "/etc/passwd", "", false},
		{"relative rename", rec(evKindRename, 0, "a", "../b", "/tmp/d", "/"), KindFileRename, "/tmp/d/a", "/../b", false},
		{"cut base", rec(evKindUnlink, evfBaseTrunc, "x", "", "/deep/dir", ""), KindFileUnlink, ".../deep/dir/x", "", false},
		{"unreadable", rec(evKindOpen, evfPathFault, "", "", "", ""), KindFileOpen, "", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev Event
			if err := d.decode(tc.b, &ev); err != nil {
				t.Fatal(err)
			}
			f := ev.File
			if ev.Kind != tc.kind || f.Path != tc.path || f.Path2 != tc.to || f.PathUnread != tc.wantUnrdb || f.Result != -2 || f.Inode != 77 || d.tag != 9 || !d.focused {
				t.Errorf("decoded %v %+v tag %d, want %v %q -> %q", ev.Kind, *f, d.tag, tc.kind, tc.path, tc.to)
			}
			if f.Dev != 8<<8|1 {
				t.Errorf("dev %#x, want stat's encoding of 8:1 (%#x)", f.Dev, 8<<8|1)
			}
		})
	}

	b := make([]byte, sockSize)
	b[hdrKind] = evKindConnRes
	recordOrder.PutUint64(b[sockResult:], uint64(^uint64(110))) // -111
	recordOrder.PutUint32(b[sockDomain:], 2)
	recordOrder.PutUint32(b[sockType:], 1|0x800) // SOCK_STREAM|SOCK_NONBLOCK
	recordOrder.PutUint32(b[sockProto:], 6)
	recordOrder.PutUint16(b[sockFamily:], afInet)
	recordOrder.PutUint16(b[sockDport:], 80)
	copy(b[sockDaddr:], []byte{10, 0, 0, 1})
	var ev Event
	if err := d.decode(b, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != KindConnect || ev.Sock.Result != -111 || ev.Sock.Type != 1 || ev.Conn.Dst.String() != "10.0.0.1:80" || ev.Conn.Proto != ProtoTCP {
		t.Errorf("connect result decoded as %v %+v %v", ev.Kind, *ev.Sock, ev.Conn)
	}
	if err := d.decode(b[:sockSize-1], &ev); err == nil {
		t.Error("short socket record decoded")
	}
}
