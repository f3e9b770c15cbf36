// Package transport is the link between two DaemonEye nodes: one QUIC
// connection with mutual TLS 1.3 (certificates from the customer CA, checked by
// transport/pki), one stream per lane (trace, alert, bulk) plus a control
// stream. Events flow up (agent -> proxy -> ... -> center) and commands flow
// down over the same links. Frames are opaque here; transport/wire encodes them.
//
// quic-go schedules streams with data round-robin (or by RFC 9218 urgency),
// which alone would let bulk delay trace. So the sender decides what to write:
// one writer goroutine per link hands QUIC at most 64 KiB at a time, always from
// the most urgent lane that has data, except that bulk gets one write after
// every BulkFloor writes of other lanes so it cannot starve.
package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// ALPN names the protocol and its version; a peer speaking another version
// fails the handshake instead of misreading frames.
const ALPN = "daemoneye/1"

// Lane is a stream of a link. Lower values are more urgent.
type Lane uint8

const (
	LaneControl Lane = 0
	LaneTrace   Lane = 1
	LaneAlert   Lane = 2
	LaneBulk    Lane = 3
	numLanes         = 4
)

var laneNames = [numLanes]string{"control", "trace", "alert", "bulk"}

func (l Lane) String() string {
	if int(l) < numLanes {
		return laneNames[l]
	}
	return fmt.Sprintf("lane(%d)", l)
}

// ParseLane reads a lane name.
func ParseLane(s string) (Lane, error) {
	for i, n := range laneNames {
		if n == s {
			return Lane(i), nil
		}
	}
	return 0, fmt.Errorf("unknown lane %q", s)
}

// Limits and defaults of a link.
const (
	MaxWrite         = 64 << 10 // bytes handed to QUIC per write
	DefaultMaxFrame  = 4 << 20  // largest frame a reader accepts
	DefaultQueue     = 8 << 20  // bytes queued per lane before Send blocks
	DefaultBulkFloor = 8        // bulk gets one write after this many others
	bulkWriteSlice   = 20 * time.Millisecond
)

// ErrFrameTooLarge is returned for frames above the reader's limit.
var ErrFrameTooLarge = errors.New("frame too large")

// ErrClosed is returned by Send after the link is closed.
var ErrClosed = errors.New("link closed")

// Options tune a link.
type Options struct {
	MaxFrame  int  // default DefaultMaxFrame
	Queue     int  // default DefaultQueue
	BulkFloor int  // default DefaultBulkFloor
	NoPrio    bool // send in arrival order across lanes (benchmarks: what priority buys)
	// Log receives one line per peer refused at the handshake, saying why.
	Log *slog.Logger
}

func (o *Options) defaults() {
	if o.MaxFrame <= 0 {
		o.MaxFrame = DefaultMaxFrame
	}
	if o.Queue <= 0 {
		o.Queue = DefaultQueue
	}
	if o.BulkFloor <= 0 {
		o.BulkFloor = DefaultBulkFloor
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
}

// withRefusalLog makes a failed peer verification leave a log line that
// names the peer and the reason (another CA, expired, revoked, wrong role).
func withRefusalLog(c *tls.Config, log *slog.Logger, side string) *tls.Config {
	verify := c.VerifyConnection
	if verify == nil {
		return c
	}
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		err := verify(cs)
		if err != nil {
			peer := "no certificate"
			if len(cs.PeerCertificates) > 0 {
				peer = cs.PeerCertificates[0].Subject.String()
			}
			log.Warn("peer refused at handshake", "component", "transport", "side", side, "peer", peer, "reason", pki.Describe(err))
		}
		return err
	}
	return c
}

// QUICConfig is the QUIC configuration every link uses.
func QUICConfig() *quic.Config {
	return &quic.Config{
		HandshakeIdleTimeout:           5 * time.Second,
		MaxIdleTimeout:                 15 * time.Second,
		KeepAlivePeriod:                3 * time.Second,
		MaxIncomingStreams:             numLanes,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     16 << 20,
	}
}

// Link is an established connection with its four lane streams.
type Link struct {
	conn    *quic.Conn
	streams [numLanes]*quic.Stream
	opts    Options
	peer    *x509.Certificate

	mu      sync.Mutex
	cond    *sync.Cond
	queues  [numLanes][][]byte
	queued  [numLanes]int
	order   []Lane // arrival order, used only with NoPrio
	closed  bool
	sinceBk int

	bytesOut, bytesIn   atomic.Uint64
	framesOut, framesIn atomic.Uint64
	done                chan struct{}
	closeOnce           sync.Once
	err                 error
}

// Dial connects to addr and opens the lanes. tlsConf must come from
// pki.Verifier.TLSConfig (mutual TLS 1.3, ALPN set).
func Dial(ctx context.Context, addr string, tlsConf *tls.Config, opts Options) (*Link, error) {
	opts.defaults()
	conn, err := quic.DialAddr(ctx, addr, withRefusalLog(withALPN(tlsConf), opts.Log, "client"), QUICConfig())
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	l, err := newLink(conn, opts)
	if err != nil {
		conn.CloseWithError(1, "setup failed")
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	for i := range l.streams {
		s, err := conn.OpenStreamSync(ctx)
		if err != nil {
			l.fail(err)
			return nil, fmt.Errorf("dial %s: open %s lane: %w", addr, Lane(i), err)
		}
		// The first byte names the lane, so the acceptor need not rely on
		// the order in which streams become visible.
		if _, err := s.Write([]byte{byte(i)}); err != nil {
			l.fail(err)
			return nil, fmt.Errorf("dial %s: open %s lane: %w", addr, Lane(i), err)
		}
		l.streams[i] = s
	}
	l.start()
	return l, nil
}

func withALPN(c *tls.Config) *tls.Config {
	c = c.Clone()
	c.NextProtos = []string{ALPN}
	c.MinVersion = tls.VersionTLS13
	return c
}

func newLink(conn *quic.Conn, opts Options) (*Link, error) {
	opts.defaults()
	l := &Link{conn: conn, opts: opts, done: make(chan struct{})}
	l.cond = sync.NewCond(&l.mu)
	if cs := conn.ConnectionState().TLS; len(cs.PeerCertificates) > 0 {
		l.peer = cs.PeerCertificates[0]
	}
	if l.peer == nil {
		return nil, errors.New("peer presented no certificate")
	}
	return l, nil
}

// Listener accepts links.
type Listener struct {
	ln   *quic.Listener
	opts Options
}

// Listen listens for links on a UDP address.
func Listen(addr string, tlsConf *tls.Config, opts Options) (*Listener, error) {
	opts.defaults()
	ln, err := quic.ListenAddr(addr, withRefusalLog(withALPN(tlsConf), opts.Log, "server"), QUICConfig())
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return &Listener{ln: ln, opts: opts}, nil
}

// Addr is the address the listener is bound to.
func (ln *Listener) Addr() string { return ln.ln.Addr().String() }

// Close stops accepting; established links stay up.
func (ln *Listener) Close() error { return ln.ln.Close() }

// Accept waits for a peer, completes the handshake and its lanes. A peer that
// fails certificate checks never gets here: the TLS handshake refuses it.
func (ln *Listener) Accept(ctx context.Context) (*Link, error) {
	conn, err := ln.ln.Accept(ctx)
	if err != nil {
		return nil, err
	}
	l, err := newLink(conn, ln.opts)
	if err != nil {
		conn.CloseWithError(1, err.Error())
		return nil, err
	}
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for n := 0; n < numLanes; n++ {
		s, err := conn.AcceptStream(actx)
		if err != nil {
			l.fail(err)
			return nil, fmt.Errorf("accept lanes from %s: %w", conn.RemoteAddr(), err)
		}
		var b [1]byte
		s.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.ReadFull(s, b[:]); err != nil || int(b[0]) >= numLanes || l.streams[b[0]] != nil {
			l.fail(errors.New("bad lane preamble"))
			return nil, fmt.Errorf("accept lanes from %s: bad lane preamble", conn.RemoteAddr())
		}
		s.SetReadDeadline(time.Time{})
		l.streams[b[0]] = s
	}
	l.start()
	return l, nil
}

func (l *Link) start() {
	for i, s := range l.streams {
		// Second line of defence behind our own scheduler.
		s.SetPriority(int8(i), false)
	}
	go l.writer()
	go func() {
		// The peer closing the connection ends the link on this side too.
		<-l.conn.Context().Done()
		l.fail(fmt.Errorf("connection closed: %w", context.Cause(l.conn.Context())))
	}()
}

// Peer is the peer's verified certificate.
func (l *Link) Peer() *x509.Certificate { return l.peer }

// RemoteAddr is the peer's address.
func (l *Link) RemoteAddr() string { return l.conn.RemoteAddr().String() }

// RTT is QUIC's smoothed round-trip estimate.
func (l *Link) RTT() time.Duration { return l.conn.ConnectionStats().SmoothedRTT }

// Done is closed when the link has failed or been closed.
func (l *Link) Done() <-chan struct{} { return l.done }

// Err is why the link ended.
func (l *Link) Err() error {
	select {
	case <-l.done:
		return l.err
	default:
		return nil
	}
}

// Stats are a link's counters.
type Stats struct {
	BytesOut, BytesIn, FramesOut, FramesIn uint64
	Queued                                 [numLanes]int
	RTT                                    time.Duration
}

// Stats returns the link's counters.
func (l *Link) Stats() Stats {
	l.mu.Lock()
	q := l.queued
	l.mu.Unlock()
	return Stats{
		BytesOut: l.bytesOut.Load(), BytesIn: l.bytesIn.Load(),
		FramesOut: l.framesOut.Load(), FramesIn: l.framesIn.Load(),
		Queued: q, RTT: l.RTT(),
	}
}

// Send queues one frame on a lane. It blocks while the lane's queue is full,
// which is how a slow receiver slows its sender, until ctx ends.
func (l *Link) Send(ctx context.Context, lane Lane, frame []byte) error {
	if int(lane) >= numLanes {
		return fmt.Errorf("send: %v", lane)
	}
	if len(frame) > l.opts.MaxFrame {
		return fmt.Errorf("send %d bytes on %v: %w", len(frame), lane, ErrFrameTooLarge)
	}
	buf := make([]byte, 4+len(frame))
	binary.BigEndian.PutUint32(buf, uint32(len(frame)))
	copy(buf[4:], frame)

	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for !l.closed && l.queued[lane] > 0 && l.queued[lane]+len(buf) > l.opts.Queue {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		l.cond.Wait()
	}
	if l.closed {
		return ErrClosed
	}
	l.queues[lane] = append(l.queues[lane], buf)
	l.queued[lane] += len(buf)
	if l.opts.NoPrio {
		l.order = append(l.order, lane)
	}
	l.cond.Broadcast()
	return nil
}

// pick chooses the lane to write next; the caller holds l.mu.
func (l *Link) pick() (Lane, bool) {
	if l.opts.NoPrio {
		for len(l.order) > 0 {
			ln := l.order[0]
			if len(l.queues[ln]) > 0 {
				return ln, true
			}
			l.order = l.order[1:]
		}
		return 0, false
	}
	if len(l.queues[LaneBulk]) > 0 && l.sinceBk >= l.opts.BulkFloor {
		l.sinceBk = 0
		return LaneBulk, true
	}
	for ln := Lane(0); ln < numLanes; ln++ {
		if len(l.queues[ln]) > 0 {
			if ln == LaneBulk {
				l.sinceBk = 0
			} else {
				l.sinceBk++
			}
			return ln, true
		}
	}
	return 0, false
}

func (l *Link) writer() {
	for {
		l.mu.Lock()
		var lane Lane
		var ok bool
		for {
			if l.closed {
				l.mu.Unlock()
				return
			}
			if lane, ok = l.pick(); ok {
				break
			}
			l.cond.Wait()
		}
		head := l.queues[lane][0]
		n := min(len(head), MaxWrite)
		chunk := head[:n]
		l.mu.Unlock()

		st := l.streams[lane]
		if lane == LaneBulk && !l.opts.NoPrio {
			// A bulk stream blocked on flow control (a slow parent) must
			// not hold the writer: give up after a moment, keep what was
			// written, and pick again so trace and alert go first.
			st.SetWriteDeadline(time.Now().Add(bulkWriteSlice))
		}
		w, err := st.Write(chunk)
		if lane == LaneBulk && !l.opts.NoPrio {
			st.SetWriteDeadline(time.Time{})
		}
		if err != nil {
			var ne net.Error
			if !errors.As(err, &ne) || !ne.Timeout() {
				l.fail(fmt.Errorf("write %v lane: %w", lane, err))
				return
			}
		}
		n = w
		l.bytesOut.Add(uint64(n))

		l.mu.Lock()
		if n == len(head) {
			l.queues[lane][0] = nil
			l.queues[lane] = l.queues[lane][1:]
			l.framesOut.Add(1)
			if l.opts.NoPrio && len(l.order) > 0 {
				l.order = l.order[1:]
			}
		} else {
			l.queues[lane][0] = head[n:]
		}
		l.queued[lane] -= n
		l.cond.Broadcast()
		l.mu.Unlock()
	}
}

// Receive reads frames from one lane and hands each to fn, in order, until
// the link ends or fn returns an error. fn may block: that stops reading the
// lane, QUIC flow control fills, and the sender slows down.
func (l *Link) Receive(lane Lane, fn func(frame []byte) error) error {
	s := l.streams[lane]
	var hdr [4]byte
	for {
		if _, err := io.ReadFull(s, hdr[:]); err != nil {
			l.fail(fmt.Errorf("read %v lane: %w", lane, err))
			return l.Err()
		}
		n := binary.BigEndian.Uint32(hdr[:])
		if int64(n) > int64(l.opts.MaxFrame) {
			err := fmt.Errorf("read %v lane: %d bytes: %w", lane, n, ErrFrameTooLarge)
			l.failCode(2, err)
			return err
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(s, buf); err != nil {
			l.fail(fmt.Errorf("read %v lane: %w", lane, err))
			return l.Err()
		}
		l.bytesIn.Add(uint64(n) + 4)
		l.framesIn.Add(1)
		if err := fn(buf); err != nil {
			return err
		}
	}
}

func (l *Link) fail(err error) { l.failCode(0, err) }

func (l *Link) failCode(code quic.ApplicationErrorCode, err error) {
	l.closeOnce.Do(func() {
		l.mu.Lock()
		l.closed = true
		l.err = err
		l.cond.Broadcast()
		l.mu.Unlock()
		msg := "closed"
		if err != nil {
			msg = err.Error()
		}
		l.conn.CloseWithError(code, msg)
		close(l.done)
	})
}

// Flush waits until every queued frame has been handed to QUIC, or ctx ends.
func (l *Link) Flush(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() {
		l.mu.Lock()
		l.cond.Broadcast()
		l.mu.Unlock()
	})
	defer stop()
	l.mu.Lock()
	defer l.mu.Unlock()
	for {
		empty := true
		for _, q := range l.queued {
			if q > 0 {
				empty = false
			}
		}
		if empty {
			return nil
		}
		if l.closed {
			return ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		l.cond.Wait()
	}
}

// Close ends the link.
func (l *Link) Close() error {
	l.fail(ErrClosed)
	return nil
}
