//go:build linux

package capture

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"
)

// The /proc fallback: processes from the netlink proc connector (fork, exec
// and exit as the kernel reports them, details read from /proc at once) and
// TCP sockets from polling sock_diag. It needs root in the initial pid and
// user namespace and nothing else: no eBPF, no tracefs, no new files.

// DefaultPollInterval is how often the fallback lists TCP sockets.
const DefaultPollInterval = 250 * time.Millisecond

// connectorRcvBuf is the receive buffer asked for the connector socket: an
// exec storm produces events faster than /proc can be read for each.
const connectorRcvBuf = 16 << 20

// Proc connector ABI (linux/connector.h, linux/cn_proc.h).
const (
	cnIdxProc = 1
	cnValProc = 1

	procCnMcastListen = 1
	procCnMcastIgnore = 2

	procEventNone = 0x00000000
	procEventFork = 0x00000001
	procEventExec = 0x00000002
	procEventComm = 0x00000200
	procEventExit = 0x80000000

	nlmsgHdrLen = 16 // struct nlmsghdr
	cnMsgLen    = 20 // struct cn_msg without data
	procEvHdr   = 16 // what, cpu, timestamp_ns of struct proc_event
)

// Source-specific loss cause: events the kernel numbered but that never
// reached us (per-CPU sequence gaps), counted exactly, unlike ENOBUFS.
const LossSeqGap = "seq_gap"

// ProcSource is the Source built on the proc connector, /proc and sock_diag.
type ProcSource struct {
	// PollInterval is how often TCP sockets are listed; set it before Run.
	// Zero means DefaultPollInterval.
	PollInterval time.Duration

	opts Options
	log  *slog.Logger
	boot int64 // wall clock ns at boot

	cn      *os.File // proc connector socket, non-blocking, in the netpoller
	cnRaw   syscall.RawConn
	pending [][]byte // datagrams read while waiting for the subscription ack
	diag    *netlink.Conn
	scope   *scopeFilter // nil: the whole machine

	running   atomic.Bool
	closed    atomic.Bool
	closeOnce sync.Once
	closeErr  error

	startsMu sync.Mutex
	starts   map[uint32]startEntry // tgid -> start ticks of the live process

	lostOverrun, lostRaced, lostBackpressure, lostDecode, lostGap atomic.Uint64
}

// startEntry is what the fallback remembers of a live process, so that its
// exit can be reported with the right key and comm after it is gone.
type startEntry struct {
	ticks     uint64
	comm      string
	parent    ProcKey // from the fork event, for an exec /proc was too late for
	estimated bool    // from the fork event's timestamp, /proc was too late
}

// NewProc opens the fallback source. It subscribes to the proc connector at
// once (and checks the kernel acknowledged), so events are queued from now
// on even before Run. The error wraps ErrUnsupported when this host cannot
// run it: not root, no connector, or not in the initial namespaces.
func NewProc(opts Options, log *slog.Logger) (*ProcSource, error) {
	if log == nil {
		log = slog.Default()
	}
	if opts.ProcRoot == "" {
		opts.ProcRoot = "/proc"
	}
	if opts.ArgvMaxBytes <= 0 {
		opts.ArgvMaxBytes = DefaultOptions().ArgvMaxBytes
	}
	if euid := os.Geteuid(); euid != 0 {
		return nil, fmt.Errorf("proc source needs root, running as uid %d: %w", euid, ErrUnsupported)
	}
	sc, err := ParseScope(opts.Scope)
	if err != nil {
		return nil, fmt.Errorf("proc source: %w", err)
	}
	s := &ProcSource{
		PollInterval: DefaultPollInterval,
		opts:         opts,
		log:          log.With("component", "capture", "source", "proc"),
		boot:         bootWallNs(),
		starts:       make(map[uint32]startEntry),
		scope:        newScopeFilter(sc, opts.ProcRoot),
	}
	if err := s.openConnector(); err != nil {
		return nil, fmt.Errorf("proc connector: %w: %w", err, ErrUnsupported)
	}
	diag, err := dialSockDiag(sc)
	if err != nil {
		s.cn.Close()
		return nil, fmt.Errorf("sock_diag: %w: %w", err, ErrUnsupported)
	}
	s.diag = diag
	return s, nil
}

// Name is "proc".
func (s *ProcSource) Name() string { return "proc" }

// Blind lists what polling /proc and sock_diag cannot see.
func (s *ProcSource) Blind() []string {
	return []string{
		BlindShortLivedConnections,
		BlindExactConnectTime,
		BlindExecArgvOfShortLived,
		BlindAcceptConnectAmbiguity,
		BlindConnectionsOpenAtStart,
		BlindOtherNetNS,
		BlindUDP,
	}
}

// Lost returns the events lost so far, per cause. LossRaced counts events
// sent with less detail because the process was gone before /proc was read.
func (s *ProcSource) Lost() map[string]uint64 {
	m := make(map[string]uint64)
	for _, c := range []struct {
		name string
		n    *atomic.Uint64
	}{
		{LossOverrun, &s.lostOverrun},
		{LossRaced, &s.lostRaced},
		{LossBackpressure, &s.lostBackpressure},
		{LossDecode, &s.lostDecode},
		{LossSeqGap, &s.lostGap},
	} {
		if v := c.n.Load(); v > 0 {
			m[c.name] = v
		}
	}
	return m
}

// Close unsubscribes from the connector and closes the sockets. Call it
// after Run has returned.
func (s *ProcSource) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		_ = s.sendMcastOp(procCnMcastIgnore, rand.Uint32())
		s.closeErr = errors.Join(s.cn.Close(), s.diag.Close())
	})
	return s.closeErr
}

// Run reports events until ctx ends.
func (s *ProcSource) Run(ctx context.Context, out chan<- Event) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("proc source: Run called twice")
	}
	if s.closed.Load() {
		return errors.New("proc source: Run after Close")
	}
	s.seedStarts()
	if s.scope != nil {
		// After the subscription, like seedStarts: a process is either
		// placed here or seen forking.
		if err := s.scope.load(); err != nil {
			return fmt.Errorf("proc source: scope %s: %w", s.scope.sc, err)
		}
	}
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.runConnector(gctx, out) })
	g.Go(func() error { return s.runSockets(gctx, out) })
	err := g.Wait()
	if ctx.Err() != nil || s.closed.Load() {
		return nil
	}
	return err
}

func (s *ProcSource) emit(out chan<- Event, ev Event) {
	if s.scope != nil && !s.scope.admit(&ev) {
		return
	}
	ev.Source = "proc"
	select {
	case out <- ev:
	default:
		s.lostBackpressure.Add(1)
	}
}

// dialSockDiag opens the sock_diag socket. sock_diag lists the sockets of
// the socket's own network namespace: with a netns scope the socket is made
// in the scope's namespace, so the scope's connections are the ones listed.
func dialSockDiag(sc Scope) (*netlink.Conn, error) {
	if sc.Kind != ScopeNetNS {
		return netlink.Dial(unix.NETLINK_SOCK_DIAG, nil)
	}
	ns, err := os.Open(sc.Path)
	if err != nil {
		return nil, err
	}
	defer ns.Close()
	return netlink.Dial(unix.NETLINK_SOCK_DIAG, &netlink.Config{NetNS: int(ns.Fd())})
}

// openConnector binds to the proc connector group, subscribes, and waits
// for the kernel's acknowledgement: the kernel silently ignores requests
// from outside the initial pid and user namespaces.
func (s *ProcSource) openConnector() error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_CONNECTOR)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, connectorRcvBuf); err != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, connectorRcvBuf)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: cnIdxProc}); err != nil {
		unix.Close(fd)
		return fmt.Errorf("bind: %w", err)
	}
	s.cn = os.NewFile(uintptr(fd), "proc-connector")
	if s.cnRaw, err = s.cn.SyscallConn(); err != nil {
		s.cn.Close()
		return err
	}
	seq := rand.Uint32()
	if err := s.sendMcastOp(procCnMcastListen, seq); err != nil {
		s.cn.Close()
		return fmt.Errorf("subscribe: %w", err)
	}
	if err := s.awaitAck(seq, 2*time.Second); err != nil {
		_ = s.sendMcastOp(procCnMcastIgnore, rand.Uint32())
		s.cn.Close()
		return err
	}
	return nil
}

// sendMcastOp sends a PROC_CN_MCAST_LISTEN or _IGNORE request.
func (s *ProcSource) sendMcastOp(op, seq uint32) error {
	msg := make([]byte, nlmsgHdrLen+cnMsgLen+4)
	ne := binary.NativeEndian
	ne.PutUint32(msg[0:], uint32(len(msg)))
	ne.PutUint16(msg[4:], unix.NLMSG_DONE)
	ne.PutUint32(msg[8:], seq)
	ne.PutUint32(msg[12:], 0)
	c := msg[nlmsgHdrLen:]
	ne.PutUint32(c[0:], cnIdxProc)
	ne.PutUint32(c[4:], cnValProc)
	ne.PutUint32(c[8:], seq)
	ne.PutUint32(c[12:], seq) // ack: the kernel answers with ack+1
	ne.PutUint16(c[16:], 4)
	ne.PutUint32(c[cnMsgLen:], op)
	var serr error
	err := s.cnRaw.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	if err != nil {
		return err
	}
	return serr
}

func (s *ProcSource) recv(buf []byte) (int, error) {
	var n int
	var rerr error
	err := s.cnRaw.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return 0, err
	}
	return n, rerr
}

func (s *ProcSource) awaitAck(seq uint32, d time.Duration) error {
	if err := s.cn.SetReadDeadline(time.Now().Add(d)); err != nil {
		return err
	}
	defer s.cn.SetReadDeadline(time.Time{})
	buf := make([]byte, 1<<16)
	for range 4096 {
		n, err := s.recv(buf)
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return errors.New("no acknowledgement from the kernel: not in the initial pid and user namespace, or CONFIG_PROC_EVENTS is off")
		}
		if errors.Is(err, unix.ENOBUFS) {
			s.lostOverrun.Add(1)
			continue
		}
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		found, ackErr := false, uint32(0)
		eachConnectorMsg(buf[:n], func(cn, ev []byte) {
			ne := binary.NativeEndian
			// Recent kernels renumber the ack's seq; its ack field is ours+1.
			if ne.Uint32(ev) == procEventNone && ne.Uint32(cn[12:]) == seq+1 && len(ev) >= procEvHdr+4 {
				found, ackErr = true, ne.Uint32(ev[procEvHdr:])
			}
		})
		if found {
			if ackErr != 0 {
				return fmt.Errorf("subscription refused: %w", syscall.Errno(ackErr))
			}
			return nil
		}
		s.pending = append(s.pending, append([]byte(nil), buf[:n]...))
	}
	return errors.New("no acknowledgement among 4096 messages")
}

// eachConnectorMsg calls f with the cn_msg header and the proc_event of
// every proc connector message in a datagram; other messages are skipped.
func eachConnectorMsg(b []byte, f func(cn, ev []byte)) (malformed bool) {
	ne := binary.NativeEndian
	for len(b) >= nlmsgHdrLen {
		l := int(ne.Uint32(b))
		if l < nlmsgHdrLen || l > len(b) {
			return true
		}
		payload := b[nlmsgHdrLen:l]
		if next := (l + 3) &^ 3; next < len(b) {
			b = b[next:]
		} else {
			b = nil
		}
		if len(payload) < cnMsgLen {
			malformed = true
			continue
		}
		if ne.Uint32(payload) != cnIdxProc || ne.Uint32(payload[4:]) != cnValProc {
			continue
		}
		dl := int(ne.Uint16(payload[16:]))
		if dl < procEvHdr || cnMsgLen+dl > len(payload) {
			malformed = true
			continue
		}
		f(payload[:cnMsgLen], payload[cnMsgLen:cnMsgLen+dl])
	}
	return malformed || len(b) != 0
}

// seedStarts records the start time of every live process, so that exits
// of processes born before the agent carry the right key. It runs after the
// subscription, so a process is either listed here or seen forking.
func (s *ProcSource) seedStarts() {
	pids, err := listPids(s.opts.ProcRoot)
	if err != nil {
		s.log.Warn("list processes for start times", "err", err)
		return
	}
	r := newProcReader(s.opts.ProcRoot, 1, "", s.boot)
	for _, pid := range pids {
		if st, err := r.readStat(pid); err == nil {
			s.startsMu.Lock()
			if _, ok := s.starts[uint32(pid)]; !ok {
				s.starts[uint32(pid)] = startEntry{ticks: st.Start, comm: string(st.Comm)}
			}
			s.startsMu.Unlock()
		}
	}
}

// clockOffsets returns what to add to a CLOCK_MONOTONIC time (the
// connector's timestamps) to get wall clock and boot time.
func clockOffsets() (toWall, toBoot int64) {
	var mono, rt, bt unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &mono)
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &rt)
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &bt)
	return rt.Nano() - mono.Nano(), bt.Nano() - mono.Nano()
}

func (s *ProcSource) runConnector(ctx context.Context, out chan<- Event) error {
	stop := context.AfterFunc(ctx, func() { _ = s.cn.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	h := &connHandler{s: s, out: out, reader: newProcReader(s.opts.ProcRoot, s.opts.ArgvMaxBytes, cgroup2Mount(s.opts.ProcRoot), s.boot)}
	for _, m := range s.pending {
		h.datagram(m)
	}
	s.pending = nil
	buf := make([]byte, 1<<16)
	for {
		n, err := s.recv(buf)
		if ctx.Err() != nil || s.closed.Load() {
			return nil
		}
		switch {
		case err == nil:
			h.datagram(buf[:n])
		case errors.Is(err, unix.ENOBUFS):
			// The socket overflowed: events are lost (the sequence gaps
			// say how many); carry on.
			if s.lostOverrun.Add(1) == 1 {
				s.log.Warn("proc connector overrun: events lost")
			}
		case errors.Is(err, unix.EINTR):
		default:
			return fmt.Errorf("read proc connector: %w", err)
		}
	}
}

// connHandler turns connector messages into events. It is used by the
// connector goroutine only.
type connHandler struct {
	s       *ProcSource
	out     chan<- Event
	reader  *procReader
	lastSeq []uint32 // per CPU; lastSeq[cpu]-1 is the last seen sequence
	toWall  int64
	toBoot  int64
}

func (h *connHandler) datagram(b []byte) {
	h.toWall, h.toBoot = clockOffsets()
	if eachConnectorMsg(b, h.event) {
		h.s.lostDecode.Add(1)
	}
}

func (h *connHandler) event(cn, ev []byte) {
	ne := binary.NativeEndian
	what, cpu := ne.Uint32(ev), ne.Uint32(ev[4:])
	// Acknowledgements (ours or another listener's) take a sequence number
	// on recent kernels; older ones send them with cpu -1 and the
	// requester's own seq, outside the numbering.
	if what != procEventNone || cpu != 1<<32-1 {
		h.checkSeq(cpu, ne.Uint32(cn[8:]))
	}
	if what == procEventNone {
		return
	}
	ts := int64(ne.Uint64(ev[8:]))
	d := ev[procEvHdr:]
	switch what {
	case procEventFork:
		if len(d) < 16 {
			h.s.lostDecode.Add(1)
			return
		}
		h.fork(ts, ne.Uint32(d[4:]), ne.Uint32(d[8:]), ne.Uint32(d[12:]))
	case procEventExec:
		if len(d) < 8 {
			h.s.lostDecode.Add(1)
			return
		}
		h.exec(ts, ne.Uint32(d[4:]))
	case procEventExit:
		if len(d) < 24 {
			h.s.lostDecode.Add(1)
			return
		}
		pid, tgid := ne.Uint32(d), ne.Uint32(d[4:])
		if pid != tgid {
			return // a thread, not the thread group leader
		}
		h.exit(ts, tgid, ne.Uint32(d[8:]), ne.Uint32(d[20:]))
	case procEventComm:
		if len(d) < 24 {
			h.s.lostDecode.Add(1)
			return
		}
		if pid, tgid := ne.Uint32(d), ne.Uint32(d[4:]); pid == tgid {
			comm := d[8:24]
			if i := bytes.IndexByte(comm, 0); i >= 0 {
				comm = comm[:i]
			}
			h.s.setComm(tgid, string(comm))
		}
	}
}

// checkSeq counts gaps in the kernel's per-CPU message sequence.
func (h *connHandler) checkSeq(cpu, seq uint32) {
	if cpu >= 1<<14 {
		return
	}
	if int(cpu) >= len(h.lastSeq) {
		h.lastSeq = append(h.lastSeq, make([]uint32, int(cpu)+1-len(h.lastSeq))...)
	}
	if last := h.lastSeq[cpu]; last != 0 {
		if gap := seq - last; gap != 0 && gap < 1<<24 {
			h.s.lostGap.Add(uint64(gap))
		}
	}
	h.lastSeq[cpu] = seq + 1
}

func (h *connHandler) wall(ts int64) int64 { return ts + h.toWall }

func (h *connHandler) fork(ts int64, parentTgid, childPid, childTgid uint32) {
	if childPid != childTgid {
		return // a new thread
	}
	s := h.s
	ev := Event{Time: h.wall(ts), Kind: KindFork, Proc: ProcKey{PID: childTgid}}
	if st, err := h.reader.readStat(int(childTgid)); err == nil {
		ev.Proc.Start = st.Start
		ev.Comm = string(st.Comm)
		s.setStart(childTgid, startEntry{ticks: st.Start, comm: ev.Comm})
	} else {
		// Gone already: the kernel stamped the event just after setting
		// the child's start time, so the stamp in ticks is the start time
		// but for the rare tick boundary between the two.
		s.lostRaced.Add(1)
		ev.Proc.Start = uint64(ts+h.toBoot) / (1e9 / clockTicks)
		s.setStart(childTgid, startEntry{ticks: ev.Proc.Start, estimated: true})
	}
	ev.Parent = ProcKey{PID: parentTgid, Start: s.startOf(h.reader, parentTgid)}
	s.startsMu.Lock()
	if e, ok := s.starts[childTgid]; ok && e.ticks == ev.Proc.Start {
		e.parent = ev.Parent
		s.starts[childTgid] = e
	}
	s.startsMu.Unlock()
	s.emit(h.out, ev)
}

func (h *connHandler) exec(ts int64, tgid uint32) {
	s := h.s
	known, haveKnown := s.lookupStart(tgid)
	p, err := h.reader.read(int(tgid))
	if err == nil && haveKnown && !known.estimated && known.ticks != p.Key.Start {
		err = ErrProcessGone // the pid was reused before we got here
	}
	if err != nil {
		s.lostRaced.Add(1)
		s.emit(h.out, Event{Time: h.wall(ts), Kind: KindExec, Proc: ProcKey{PID: tgid, Start: known.ticks},
			Parent: known.parent, Exec: &Exec{}})
		return
	}
	if !p.Execed {
		s.lostRaced.Add(1) // a zombie by now: no argv to read
	}
	s.setStart(tgid, startEntry{ticks: p.Key.Start, comm: p.Comm})
	if p.Parent.PID != 0 {
		p.Parent.Start = s.startOf(h.reader, p.Parent.PID)
	}
	s.emit(h.out, Event{Time: h.wall(ts), Kind: KindExec, Proc: p.Key, Parent: p.Parent, Comm: p.Comm, Exec: &p.Exec})
}

func (h *connHandler) exit(ts int64, tgid, status, parentTgid uint32) {
	s := h.s
	ev := Event{Time: h.wall(ts), Kind: KindExit, Proc: ProcKey{PID: tgid}, Exit: decodeWaitStatus(status)}
	s.startsMu.Lock()
	e, ok := s.starts[tgid]
	delete(s.starts, tgid)
	s.startsMu.Unlock()
	if ok {
		ev.Proc.Start, ev.Comm = e.ticks, e.comm
	} else if st, err := h.reader.readStat(int(tgid)); err == nil {
		ev.Proc.Start, ev.Comm = st.Start, string(st.Comm) // a zombie not yet reaped
	} else {
		s.lostRaced.Add(1)
	}
	if parentTgid != 0 {
		ev.Parent = ProcKey{PID: parentTgid, Start: s.startOf(h.reader, parentTgid)}
	}
	s.emit(h.out, ev)
}

// decodeWaitStatus decodes the raw wait status the connector reports as
// exit_code: the exit code in bits 8-15, or the signal in bits 0-6 and the
// core dump flag in bit 7.
func decodeWaitStatus(st uint32) *Exit {
	if sig := st & 0x7f; sig != 0 {
		return &Exit{Signal: int32(sig), Core: st&0x80 != 0}
	}
	return &Exit{Code: int32(st>>8) & 0xff}
}

func (s *ProcSource) setStart(pid uint32, e startEntry) {
	s.startsMu.Lock()
	s.starts[pid] = e
	s.startsMu.Unlock()
}

func (s *ProcSource) setComm(pid uint32, comm string) {
	s.startsMu.Lock()
	if e, ok := s.starts[pid]; ok {
		e.comm = comm
		s.starts[pid] = e
	}
	s.startsMu.Unlock()
}

func (s *ProcSource) lookupStart(pid uint32) (startEntry, bool) {
	s.startsMu.Lock()
	defer s.startsMu.Unlock()
	e, ok := s.starts[pid]
	return e, ok
}

// startOf returns pid's start time from the table, else from /proc, else 0.
func (s *ProcSource) startOf(r *procReader, pid uint32) uint64 {
	if pid == 0 {
		return 0
	}
	if e, ok := s.lookupStart(pid); ok {
		return e.ticks
	}
	st, err := r.readStat(int(pid))
	if err != nil {
		return 0
	}
	s.startsMu.Lock()
	if _, ok := s.starts[pid]; !ok {
		s.starts[pid] = startEntry{ticks: st.Start, comm: string(st.Comm)}
	}
	s.startsMu.Unlock()
	return st.Start
}
