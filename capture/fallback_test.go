//go:build linux

package capture

import (
	"encoding/binary"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

func openProc(t *testing.T) Source {
	t.Helper()
	s, err := NewProc(DefaultOptions(), slog.New(slog.DiscardHandler))
	if err != nil {
		if errors.Is(err, ErrUnsupported) && os.Getenv("CI") == "" {
			t.Skipf("proc source unsupported here: %v", err)
		}
		t.Fatalf("NewProc: %v", err)
	}
	s.PollInterval = 100 * time.Millisecond
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func TestProcConformance(t *testing.T) {
	runConformance(t, openProc)
}

func TestDecodeWaitStatus(t *testing.T) {
	tests := []struct {
		st   uint32
		want Exit
	}{
		{0, Exit{}},
		{7 << 8, Exit{Code: 7}},
		{255 << 8, Exit{Code: 255}},
		{9, Exit{Signal: 9}},
		{11 | 0x80, Exit{Signal: 11, Core: true}},
	}
	for _, tc := range tests {
		if got := decodeWaitStatus(tc.st); *got != tc.want {
			t.Errorf("decodeWaitStatus(%#x) = %+v, want %+v", tc.st, *got, tc.want)
		}
	}
}

// connectorMsg builds one proc connector datagram.
func connectorMsg(what, cpu, seq uint32, ts uint64, data ...uint32) []byte {
	ne := binary.NativeEndian
	ev := make([]byte, procEvHdr+4*len(data))
	ne.PutUint32(ev, what)
	ne.PutUint32(ev[4:], cpu)
	ne.PutUint64(ev[8:], ts)
	for i, v := range data {
		ne.PutUint32(ev[procEvHdr+4*i:], v)
	}
	b := make([]byte, nlmsgHdrLen+cnMsgLen+len(ev))
	ne.PutUint32(b, uint32(len(b)))
	ne.PutUint16(b[4:], unix.NLMSG_DONE)
	c := b[nlmsgHdrLen:]
	ne.PutUint32(c, cnIdxProc)
	ne.PutUint32(c[4:], cnValProc)
	ne.PutUint32(c[8:], seq)
	ne.PutUint16(c[16:], uint16(len(ev)))
	copy(c[cnMsgLen:], ev)
	return b
}

func TestConnectorDecode(t *testing.T) {
	s := &ProcSource{starts: map[uint32]startEntry{}, log: slog.New(slog.DiscardHandler), boot: bootWallNs()}
	out := make(chan Event, 16)
	h := &connHandler{s: s, out: out, reader: newProcReader(t.TempDir(), 64, "", s.boot)}
	s.setStart(500, startEntry{ticks: 4242})

	// A thread exit, a leader exit of a known process, a killed unknown one.
	h.datagram(connectorMsg(procEventExit, 0, 10, 1, 501, 500, 0, 17, 1, 1))
	h.datagram(connectorMsg(procEventExit, 0, 11, 1, 500, 500, 3<<8, 17, 1, 1))
	h.datagram(connectorMsg(procEventExit, 1, 5, 1, 600, 600, 9, 17, 1, 1))
	// A thread fork is ignored; a process fork of a vanished child is kept
	// with an estimated start. Sequence 13 skips 12 on CPU 0.
	h.datagram(connectorMsg(procEventFork, 0, 13, 2e9, 1, 1, 701, 700))
	h.datagram(connectorMsg(procEventFork, 0, 14, 2e9, 1, 1, 700, 700))
	// Truncated and foreign messages.
	h.datagram([]byte{1, 2, 3})
	bad := connectorMsg(procEventFork, 0, 15, 1, 1)
	h.datagram(bad)

	var got []Event
	for len(out) > 0 {
		got = append(got, <-out)
	}
	if len(got) != 3 {
		t.Fatalf("got %d events, want 3: %+v", len(got), got)
	}
	if e := got[0]; e.Kind != KindExit || e.Proc != (ProcKey{500, 4242}) || *e.Exit != (Exit{Code: 3}) {
		t.Errorf("event 0 = %s, want exit 500@4242 code 3", fmtEvent(e))
	}
	if e := got[1]; e.Kind != KindExit || e.Proc.PID != 600 || *e.Exit != (Exit{Signal: 9}) {
		t.Errorf("event 1 = %s, want exit of 600 by signal 9", fmtEvent(e))
	}
	if e := got[2]; e.Kind != KindFork || e.Proc.PID != 700 || e.Parent.PID != 1 || e.Source != "proc" {
		t.Errorf("event 2 = %s, want fork of 700 from 1", fmtEvent(e))
	}
	if _, ok := s.lookupStart(500); ok {
		t.Error("start of exited 500 still in the table")
	}
	lost := s.Lost()
	if lost[LossSeqGap] != 1 || lost[LossDecode] != 2 || lost[LossRaced] != 2 {
		t.Errorf("Lost() = %v, want seq_gap 1, decode 2, raced 2", lost)
	}
}

func TestParseInetDiagMsg(t *testing.T) {
	b := make([]byte, inetDiagMsgLen)
	b[0], b[1] = unix.AF_INET6, tcpEstablished
	binary.BigEndian.PutUint16(b[4:], 443)
	binary.BigEndian.PutUint16(b[6:], 50000)
	src := netip.MustParseAddr("::ffff:10.0.0.1").As16()
	dst := netip.MustParseAddr("2001:db8::2").As16()
	copy(b[8:], src[:])
	copy(b[24:], dst[:])
	binary.NativeEndian.PutUint32(b[44:], 0xdeadbeef)
	binary.NativeEndian.PutUint32(b[48:], 1)
	binary.NativeEndian.PutUint32(b[68:], 12345)
	d, ok := parseInetDiagMsg(b)
	if !ok {
		t.Fatal("parseInetDiagMsg failed")
	}
	if d.local != netip.MustParseAddrPort("10.0.0.1:443") || d.remote != netip.MustParseAddrPort("[2001:db8::2]:50000") ||
		d.inode != 12345 || d.cookie != 1<<32|0xdeadbeef || d.state != tcpEstablished {
		t.Errorf("parseInetDiagMsg = %+v", d)
	}
	if _, ok := parseInetDiagMsg(b[:71]); ok {
		t.Error("short inet_diag_msg parsed")
	}
	b[0] = 99
	if _, ok := parseInetDiagMsg(b); ok {
		t.Error("unknown family parsed")
	}
	if ino, ok := parseSocketLink([]byte("socket:[77]")); !ok || ino != 77 {
		t.Errorf("parseSocketLink = %d %v", ino, ok)
	}
	for _, bad := range []string{"pipe:[77]", "socket:[]", "/dev/null", "socket:[99999999999]"} {
		if _, ok := parseSocketLink([]byte(bad)); ok {
			t.Errorf("parseSocketLink(%q) ok", bad)
		}
	}
}

func TestNewProcNotRoot(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("runs only as non-root")
	}
	if _, err := NewProc(DefaultOptions(), nil); !errors.Is(err, ErrUnsupported) {
		t.Errorf("NewProc as non-root: %v, want ErrUnsupported", err)
	}
}

// FuzzConnectorDatagram feeds arbitrary datagrams to the connector decoder:
// the kernel is trusted, but a decoder must not panic on a short read.
func FuzzConnectorDatagram(f *testing.F) {
	f.Add(connectorMsg(procEventFork, 0, 1, 1, 1, 1, 2, 2))
	f.Add(connectorMsg(procEventExit, 1, 2, 1, 2, 2, 7<<8, 17, 1, 1))
	f.Add(connectorMsg(procEventExec, 1, 3, 1, 2, 2))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, b []byte) {
		s := &ProcSource{starts: map[uint32]startEntry{}, log: slog.New(slog.DiscardHandler)}
		out := make(chan Event, 4)
		h := &connHandler{s: s, out: out, reader: newProcReader(dir, 64, "", 0)}
		h.datagram(b)
	})
}

func FuzzInetDiagMsg(f *testing.F) {
	f.Add(make([]byte, inetDiagMsgLen))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseInetDiagMsg(b)
	})
}

// TestProcExecStorm checks that a burst of short-lived processes is fully
// reported: a fork and an exit for every child, with matching keys.
func TestProcExecStorm(t *testing.T) {
	testenv.NeedRoot(t)
	c := startCollector(t, openProc)
	const n = 2000
	ch := startChild(t, exec.Command("/bin/sh", "-c",
		"read x; i=0; while [ $i -lt "+strconv.Itoa(n)+" ]; do /bin/true; i=$((i+1)); done"), false)
	begin := time.Now()
	_ = ch.stdin.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = ch.wait()
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute): // a loaded host runs execs slowly
		t.Fatalf("%d execs took over 2 minutes", n)
	}
	took := time.Since(begin)
	// Wait for the sh's own exit: events arrive in order.
	c.waitFor(t, "exit of the storm's sh", []uint32{ch.pid}, func(ev Event) bool {
		return ev.Kind == KindExit && ev.Proc.PID == ch.pid
	})
	forks := make(map[ProcKey]bool)
	for _, ev := range c.all(func(ev Event) bool { return ev.Kind == KindFork && ev.Parent.PID == ch.pid }) {
		forks[ev.Proc] = true
	}
	exits := 0
	for _, ev := range c.all(func(ev Event) bool { return ev.Kind == KindExit }) {
		if forks[ev.Proc] {
			exits++
		}
	}
	execs := len(c.all(func(ev Event) bool { return ev.Kind == KindExec && forks[ev.Proc] }))
	t.Logf("%d execs in %v (%.0f/s): %d forks, %d execs, %d exits seen; lost %v",
		n, took, float64(n)/took.Seconds(), len(forks), execs, exits, c.src.Lost())
	if len(forks) != n || exits != n || execs != n {
		t.Errorf("saw %d forks, %d execs, %d exits with matching keys; want %d of each", len(forks), execs, exits, n)
	}
}

// TestProcOverrun overflows the connector socket on purpose: the source
// must count the loss (ENOBUFS and the sequence gap) and keep going.
func TestProcOverrun(t *testing.T) {
	testenv.NeedRoot(t)
	src := openProc(t).(*ProcSource)
	// The smallest buffer the kernel allows holds a handful of messages.
	_ = src.cnRaw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 1)
	})
	for range 100 { // nobody reads yet: the socket overflows
		if err := exec.Command("/bin/true").Run(); err != nil {
			t.Fatal(err)
		}
	}
	_ = src.cnRaw.Control(func(fd uintptr) {
		_ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, connectorRcvBuf)
	})
	c := startCollector(t, func(*testing.T) Source { return src }) // waits until events flow again
	// The sequence gap is counted only on a CPU with a message delivered
	// before the loss, so it may or may not show; the overrun must.
	if lost := c.src.Lost(); lost[LossOverrun] == 0 {
		t.Errorf("Lost() = %v after overflowing the socket, want overrun counted", lost)
	}
}

func TestSockTrackerDiff(t *testing.T) {
	root := t.TempDir() // no processes: owners stay unknown
	s := &ProcSource{opts: Options{ProcRoot: root}, starts: map[uint32]startEntry{}, log: slog.New(slog.DiscardHandler)}
	tr := &sockTracker{s: s, reader: newProcReader(root, 1, "", 0), socks: map[uint64]*trackedSock{}, link: make([]byte, 64)}
	out := make(chan Event, 16)
	ap := netip.MustParseAddrPort
	est := func(cookie uint64, inode uint32, l, r string) diagSock {
		return diagSock{state: tcpEstablished, local: ap(l), remote: ap(r), inode: inode, cookie: cookie}
	}
	lis := func(l string) diagSock { return diagSock{state: tcpListen, local: ap(l), inode: 1, cookie: 999} }
	drain := func() []Event {
		var evs []Event
		for len(out) > 0 {
			evs = append(evs, <-out)
		}
		return evs
	}

	old := est(1, 10, "10.0.0.1:22", "10.0.0.9:40000")
	tr.apply([]diagSock{lis("0.0.0.0:22"), old}, out, true, 1)
	if evs := drain(); len(evs) != 0 {
		t.Fatalf("baseline listing reported %d events, want none", len(evs))
	}

	conn := est(2, 11, "10.0.0.1:50000", "10.0.0.7:443") // connect: no listener on 50000
	acc := est(3, 12, "10.0.0.1:22", "10.0.0.8:41000")   // accept: wildcard listener on 22
	acc6 := est(4, 13, "[::1]:8080", "[::1]:41000")      // accept: exact listener
	queued := est(5, 0, "10.0.0.1:22", "10.0.0.8:41001") // not accepted yet
	tr.apply([]diagSock{lis("0.0.0.0:22"), lis("[::1]:8080"), old, conn, acc, acc6, queued}, out, false, 2)
	got := map[netip.AddrPort]Kind{}
	for _, ev := range drain() {
		got[ev.Conn.Dst] = ev.Kind
		if ev.Time != 2 || ev.Conn.Proto != ProtoTCP {
			t.Errorf("event %s: time %d proto %d, want 2 and TCP", fmtEvent(ev), ev.Time, ev.Conn.Proto)
		}
	}
	want := map[netip.AddrPort]Kind{conn.remote: KindConnect, acc.remote: KindAccept, acc6.remote: KindAccept}
	if len(got) != len(want) {
		t.Errorf("got events %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("connection to %s: kind %v, want %v", k, got[k], v)
		}
	}

	// The queued socket is accepted; the connect and the old socket close.
	queued.inode = 14
	tr.apply([]diagSock{lis("0.0.0.0:22"), acc, acc6, queued}, out, false, 3)
	evs := drain()
	kinds := map[Kind]int{}
	for _, ev := range evs {
		kinds[ev.Kind]++
	}
	if kinds[KindAccept] != 1 || kinds[KindClose] != 1 || len(evs) != 2 {
		t.Errorf("third listing: %d events %v, want one accept and one close (none for the baseline socket)", len(evs), kinds)
	}
}
