//go:build linux

package capture

import (
	"context"
	"encoding/binary"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TCP sockets for the fallback: sock_diag lists the established and
// listening TCP sockets of this network namespace; a socket that appears
// between two listings is a connect or an accept, one that disappears is a
// close. Its owner is the process holding an fd "socket:[inode]".

// inet_diag ABI (linux/inet_diag.h).
const (
	inetDiagReqLen = 56 // struct inet_diag_req_v2
	inetDiagMsgLen = 72 // struct inet_diag_msg

	tcpEstablished = 1
	tcpListen      = 10
)

// diagSock is one socket from a sock_diag listing.
type diagSock struct {
	state  uint8
	local  netip.AddrPort
	remote netip.AddrPort
	inode  uint32
	cookie uint64
}

// parseInetDiagMsg decodes a struct inet_diag_msg. Addresses of IPv4
// sockets and v4-mapped IPv6 addresses come back as plain IPv4.
func parseInetDiagMsg(b []byte) (diagSock, bool) {
	if len(b) < inetDiagMsgLen {
		return diagSock{}, false
	}
	var d diagSock
	fam := b[0]
	d.state = b[1]
	sport := binary.BigEndian.Uint16(b[4:])
	dport := binary.BigEndian.Uint16(b[6:])
	var src, dst netip.Addr
	switch fam {
	case unix.AF_INET:
		src = netip.AddrFrom4([4]byte(b[8:12]))
		dst = netip.AddrFrom4([4]byte(b[24:28]))
	case unix.AF_INET6:
		src = netip.AddrFrom16([16]byte(b[8:24])).Unmap()
		dst = netip.AddrFrom16([16]byte(b[24:40])).Unmap()
	default:
		return diagSock{}, false
	}
	d.local = netip.AddrPortFrom(src, sport)
	d.remote = netip.AddrPortFrom(dst, dport)
	ne := binary.NativeEndian
	d.cookie = uint64(ne.Uint32(b[44:])) | uint64(ne.Uint32(b[48:]))<<32
	d.inode = ne.Uint32(b[68:])
	return d, true
}

// dumpTCP lists the established and listening TCP sockets of one family.
func dumpTCP(c *netlink.Conn, family uint8) ([]diagSock, error) {
	req := make([]byte, inetDiagReqLen)
	req[0] = family
	req[1] = unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(req[4:], 1<<tcpEstablished|1<<tcpListen)
	msgs, err := c.Execute(netlink.Message{
		Header: netlink.Header{Type: unix.SOCK_DIAG_BY_FAMILY, Flags: netlink.Request | netlink.Dump},
		Data:   req,
	})
	if err != nil {
		return nil, err
	}
	socks := make([]diagSock, 0, len(msgs))
	for _, m := range msgs {
		if d, ok := parseInetDiagMsg(m.Data); ok {
			socks = append(socks, d)
		}
	}
	return socks, nil
}

// trackedSock is an established socket the tracker has seen.
type trackedSock struct {
	kind     Kind // KindConnect or KindAccept; 0 for sockets open at start
	conn     Conn
	owner    ProcKey
	comm     string
	inode    uint32
	lastSeen uint64 // poll generation
}

// sockTracker diffs successive listings. Used by one goroutine.
type sockTracker struct {
	s      *ProcSource
	reader *procReader
	socks  map[uint64]*trackedSock // by socket cookie
	gen    uint64
	hot    []uint32 // pids that owned sockets recently: looked at first
	link   []byte
	errLog time.Time
}

func (s *ProcSource) runSockets(ctx context.Context, out chan<- Event) error {
	t := &sockTracker{
		s:      s,
		reader: newProcReader(s.opts.ProcRoot, 1, "", s.boot),
		socks:  make(map[uint64]*trackedSock),
		link:   make([]byte, 64),
	}
	interval := s.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	// The first good listing is the baseline: what was open before.
	baseline := !t.poll(out, true)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if t.poll(out, baseline) {
				baseline = false
			}
		}
	}
}

// poll lists sockets once and reports what changed; a baseline poll only
// learns the sockets already open. It reports whether the listing worked.
func (t *sockTracker) poll(out chan<- Event, baseline bool) bool {
	var all []diagSock
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		socks, err := dumpTCP(t.s.diag, fam)
		if err != nil {
			if time.Since(t.errLog) > time.Minute {
				t.errLog = time.Now()
				t.s.log.Warn("list TCP sockets", "family", fam, "err", err)
			}
			return false // a partial listing would look like closes
		}
		all = append(all, socks...)
	}
	t.apply(all, out, baseline, time.Now().UnixNano())
	return true
}

// apply diffs one complete listing against the last and reports the new
// and vanished established sockets.
func (t *sockTracker) apply(all []diagSock, out chan<- Event, baseline bool, now int64) {
	t.gen++

	listeners := make(map[netip.AddrPort]bool)
	listenPorts := make(map[uint16]bool) // ports with a wildcard listener
	for _, d := range all {
		if d.state != tcpListen {
			continue
		}
		if d.local.Addr().IsUnspecified() {
			listenPorts[d.local.Port()] = true
		}
		listeners[d.local] = true
	}

	var fresh []*trackedSock
	for _, d := range all {
		if d.state != tcpEstablished {
			continue
		}
		if ts, ok := t.socks[d.cookie]; ok {
			ts.lastSeen = t.gen
			continue
		}
		if d.inode == 0 {
			continue // in an accept queue: no process holds it yet
		}
		ts := &trackedSock{
			conn:     Conn{Proto: ProtoTCP, Src: d.local, Dst: d.remote},
			inode:    d.inode,
			lastSeen: t.gen,
		}
		t.socks[d.cookie] = ts
		if baseline {
			continue
		}
		// An accepted socket shares its local address and port with a
		// listener; a connected one has its own (ephemeral) port.
		ts.kind = KindConnect
		if listeners[d.local] || listenPorts[d.local.Port()] {
			ts.kind = KindAccept
		}
		fresh = append(fresh, ts)
	}

	if len(fresh) > 0 {
		t.resolveOwners(fresh)
		for _, ts := range fresh {
			if ts.owner.IsZero() {
				t.s.lostRaced.Add(1)
			}
			c := ts.conn
			t.s.emit(out, Event{Time: now, Kind: ts.kind, Proc: ts.owner, Comm: ts.comm, Conn: &c})
		}
	}

	for cookie, ts := range t.socks {
		if ts.lastSeen == t.gen {
			continue
		}
		delete(t.socks, cookie)
		if ts.kind == 0 {
			continue // open before we started: we never reported it
		}
		c := ts.conn
		t.s.emit(out, Event{Time: now, Kind: KindClose, Proc: ts.owner, Comm: ts.comm, Conn: &c})
	}
}

// resolveOwners finds the process holding each new socket by reading fd
// links, first of recent owners, then of every process, and stops as soon
// as all are found.
func (t *sockTracker) resolveOwners(fresh []*trackedSock) {
	want := make(map[uint32]*trackedSock, len(fresh))
	for _, ts := range fresh {
		want[ts.inode] = ts
	}
	scan := func(pid uint32) {
		if len(want) == 0 {
			return
		}
		for _, ino := range t.socketInodes(pid) {
			if ts, ok := want[ino]; ok {
				ts.owner = ProcKey{PID: pid}
				if st, err := t.reader.readStat(int(pid)); err == nil {
					ts.owner.Start, ts.comm = st.Start, string(st.Comm)
				} else {
					ts.owner.Start = t.s.startOf(t.reader, pid)
				}
				delete(want, ino)
				t.noteHot(pid)
			}
		}
	}
	for _, pid := range slices.Clone(t.hot) {
		scan(pid)
	}
	if len(want) == 0 {
		return
	}
	pids, err := listPids(t.s.opts.ProcRoot)
	if err != nil {
		return
	}
	// Newer processes first: a new connection more often belongs to one.
	slices.SortFunc(pids, func(a, b int) int { return b - a })
	for _, pid := range pids {
		if len(want) == 0 {
			return
		}
		scan(uint32(pid))
	}
}

// noteHot remembers pid as a recent socket owner (at most 64).
func (t *sockTracker) noteHot(pid uint32) {
	if i := slices.Index(t.hot, pid); i >= 0 {
		t.hot = slices.Delete(t.hot, i, i+1)
	}
	t.hot = append(t.hot, pid)
	if len(t.hot) > 64 {
		t.hot = t.hot[1:]
	}
}

// socketInodes returns the inodes of the sockets pid has open.
func (t *sockTracker) socketInodes(pid uint32) []uint32 {
	dir := t.s.opts.ProcRoot + "/" + strconv.FormatUint(uint64(pid), 10) + "/fd"
	f, err := os.Open(dir)
	if err != nil {
		return nil
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return nil
	}
	var inodes []uint32
	dfd := int(f.Fd())
	for _, n := range names {
		m, err := unix.Readlinkat(dfd, n, t.link)
		if err != nil {
			continue
		}
		if ino, ok := parseSocketLink(t.link[:m]); ok {
			inodes = append(inodes, ino)
		}
	}
	return inodes
}

// parseSocketLink parses an fd link target "socket:[12345]".
func parseSocketLink(b []byte) (uint32, bool) {
	kind, ino, ok := parseNSLink(b)
	if !ok || string(kind) != "socket" || ino > 1<<32-1 {
		return 0, false
	}
	return uint32(ino), true
}
