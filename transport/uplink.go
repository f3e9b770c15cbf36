package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// ProtocolVersion is the version spoken in Hello; ALPN already pins it.
const ProtocolVersion = 1

// UplinkConfig describes a node's connection to its parent.
type UplinkConfig struct {
	NodeID string
	Role   wire.Role
	// Addrs are the parents, primary first then fallbacks. The uplink moves
	// down the list when a parent fails and returns to the primary when it
	// answers again.
	Addrs []string
	TLS   *tls.Config
	WAL   *wal.WAL
	// Below lists this node and every node in its subtree: a parent that
	// finds itself here would close a cycle and refuses the link.
	Below func() []string
	// Agents lists the agents reachable through this node (itself, for an
	// agent), for the parent's routing table.
	Agents func() []string
	// OnFrame receives what the parent sends down: commands, CRLs, renewal
	// answers. It runs on the control reader; it must not block for long.
	OnFrame func(f wire.Frame)
	// Window bounds the batches in flight per lane (sent, not yet acked),
	// and WindowBytes their size: a lane never queues more on the link than
	// the parent can take soon.
	Window      int
	WindowBytes int
	// RetryPrimary is how often a node on a fallback parent tries the primary.
	RetryPrimary time.Duration
	Link         Options
	Log          *slog.Logger
	Limits       wire.Limits
}

// UplinkStats are the uplink's counters.
type UplinkStats struct {
	Connected bool
	Parent    string // address of the current parent
	Sent      [numLanes]uint64
	Acked     [numLanes]uint64
	// AckedEvents counts the events in acknowledged batches.
	AckedEvents [numLanes]uint64
	Rejected    uint64 // batches the parent refused for good (bad signature, malformed)
	Reconnects  uint64
	Link        Stats
}

// Uplink sends a node's WAL up to its parent and receives what comes down.
type Uplink struct {
	cfg UplinkConfig
	// kick wakes one lane's sender: a proxy gets a bulk batch per
	// millisecond or so, and waking the trace and alert senders for each
	// (a WAL scan apiece, for nothing) is CPU that trace work then waits for.
	kick [numLanes]chan struct{}

	mu      sync.Mutex
	link    *Link
	parent  string
	ctrlOut [][]byte // control frames waiting for a link

	sent, acked [numLanes]atomic.Uint64
	ackedEvents [numLanes]atomic.Uint64
	rejected    atomic.Uint64
	reconnects  atomic.Uint64
}

// NewUplink checks the configuration.
func NewUplink(cfg UplinkConfig) (*Uplink, error) {
	if cfg.NodeID == "" || len(cfg.Addrs) == 0 || cfg.TLS == nil || cfg.WAL == nil {
		return nil, errors.New("uplink: node id, parent addresses, TLS and WAL are required")
	}
	if cfg.Window <= 0 {
		cfg.Window = 256
	}
	if cfg.WindowBytes <= 0 {
		cfg.WindowBytes = 4 << 20
	}
	if cfg.RetryPrimary <= 0 {
		cfg.RetryPrimary = 10 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Limits == (wire.Limits{}) {
		cfg.Limits = wire.DefaultLimits()
	}
	if cfg.Below == nil {
		cfg.Below = func() []string { return []string{cfg.NodeID} }
	}
	if cfg.Agents == nil {
		cfg.Agents = func() []string { return nil }
	}
	cfg.Log = cfg.Log.With("component", "uplink", "node", cfg.NodeID)
	cfg.Link.Log = cfg.Log
	u := &Uplink{cfg: cfg}
	for i := range u.kick {
		u.kick[i] = make(chan struct{}, 1)
	}
	return u, nil
}

// Kick tells the uplink the WAL has new entries, on any lane.
func (u *Uplink) Kick() {
	for _, ln := range []Lane{LaneTrace, LaneAlert, LaneBulk} {
		u.KickLane(ln)
	}
}

// KickLane tells the uplink one lane of the WAL has new entries.
func (u *Uplink) KickLane(ln Lane) {
	if int(ln) >= numLanes {
		return
	}
	select {
	case u.kick[ln] <- struct{}{}:
	default:
	}
}

// SendControl sends a frame up the control lane (command acks, announces,
// renewal requests). Without a link it waits, in memory, for the next one.
func (u *Uplink) SendControl(f wire.Frame) error {
	b, err := wire.AppendFrame(nil, f)
	if err != nil {
		return err
	}
	body := b[4:] // the link adds its own length prefix
	u.mu.Lock()
	l := u.link
	if l == nil {
		if len(u.ctrlOut) < 10000 {
			u.ctrlOut = append(u.ctrlOut, body)
		}
		u.mu.Unlock()
		return nil
	}
	u.mu.Unlock()
	return l.Send(context.Background(), LaneControl, body)
}

// Stats returns the uplink's counters.
func (u *Uplink) Stats() UplinkStats {
	u.mu.Lock()
	l, parent := u.link, u.parent
	u.mu.Unlock()
	st := UplinkStats{Connected: l != nil, Parent: parent, Rejected: u.rejected.Load(), Reconnects: u.reconnects.Load()}
	for i := range st.Sent {
		st.Sent[i] = u.sent[i].Load()
		st.Acked[i] = u.acked[i].Load()
		st.AckedEvents[i] = u.ackedEvents[i].Load()
	}
	if l != nil {
		st.Link = l.Stats()
	}
	return st
}

// Run keeps a link to a parent until ctx ends.
func (u *Uplink) Run(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for ctx.Err() == nil {
		idx, l, err := u.connect(ctx)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			u.cfg.Log.Warn("no parent reachable", "err", err, "retry_in", backoff)
			select {
			case <-ctx.Done():
			case <-time.After(backoff + rand.N(backoff/2)):
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 200 * time.Millisecond
		err = u.session(ctx, idx, l)
		u.mu.Lock()
		u.link = nil
		u.mu.Unlock()
		l.Close()
		if ctx.Err() == nil {
			u.reconnects.Add(1)
			u.cfg.Log.Warn("link to parent ended", "parent", u.cfg.Addrs[idx], "err", err)
		}
	}
	return nil
}

// connect tries the parents in order and returns the first that accepts.
func (u *Uplink) connect(ctx context.Context) (int, *Link, error) {
	var errs []error
	for i, addr := range u.cfg.Addrs {
		l, err := u.dial(ctx, addr)
		if err == nil {
			if i > 0 {
				u.cfg.Log.Warn("connected to a fallback parent", "parent", addr, "primary", u.cfg.Addrs[0])
			} else {
				u.cfg.Log.Info("connected to parent", "parent", addr)
			}
			return i, l, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return 0, nil, errors.Join(errs...)
}

// dial connects and completes the Hello exchange.
func (u *Uplink) dial(ctx context.Context, addr string) (*Link, error) {
	dctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	l, err := Dial(dctx, addr, u.cfg.TLS, u.cfg.Link)
	if err != nil {
		return nil, err
	}
	hello := wire.Hello{NodeID: u.cfg.NodeID, Role: u.cfg.Role, Version: ProtocolVersion, Hops: u.cfg.Below(), Agents: u.cfg.Agents()}
	if err := sendFrame(dctx, l, LaneControl, hello); err != nil {
		l.Close()
		return nil, fmt.Errorf("hello to %s: %w", addr, err)
	}
	ackc := make(chan error, 1)
	go func() {
		ackc <- l.Receive(LaneControl, func(b []byte) error {
			f, err := wire.DecodeFrame(b, u.cfg.Limits)
			if err != nil {
				return err
			}
			ack, ok := f.(*wire.HelloAck)
			if !ok {
				return fmt.Errorf("expected HelloAck, got %v", f.Type())
			}
			if ack.Code != wire.HelloOK {
				return fmt.Errorf("parent %s refused us: %s", ack.NodeID, ack.Reason)
			}
			return errHelloDone
		})
	}()
	select {
	case err := <-ackc:
		if !errors.Is(err, errHelloDone) {
			l.Close()
			return nil, fmt.Errorf("hello to %s: %w", addr, err)
		}
	case <-dctx.Done():
		l.Close()
		return nil, fmt.Errorf("hello to %s: %w", addr, dctx.Err())
	}
	return l, nil
}

var errHelloDone = errors.New("hello done")

func sendFrame(ctx context.Context, l *Link, lane Lane, f wire.Frame) error {
	b, err := wire.AppendFrame(nil, f)
	if err != nil {
		return err
	}
	return l.Send(ctx, lane, b[4:])
}

// inflight is one sent, unacknowledged batch.
type inflight struct {
	id      uint64
	agentID string
	seq     uint64
	events  int
	size    int
}

// laneState is the sender's view of one lane during one session.
type laneState struct {
	mu       sync.Mutex
	next     uint64 // next WAL id to send
	inflight []inflight
	bytes    int       // sum of inflight sizes
	paused   time.Time // no sending before this (parent over its watermark)
}

// session runs one link until it fails, ctx ends, or the primary comes back.
func (u *Uplink) session(ctx context.Context, idx int, l *Link) error {
	sctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	// Nothing of this session may touch the WAL after it returns: the
	// owner closes the WAL once Run is done.
	defer func() {
		cancel()
		l.Close()
		wg.Wait()
	}()
	var lanes [numLanes]*laneState
	for i := range lanes {
		lanes[i] = &laneState{}
	}
	u.mu.Lock()
	u.link, u.parent = l, u.cfg.Addrs[idx]
	pendingCtrl := u.ctrlOut
	u.ctrlOut = nil
	u.mu.Unlock()
	for _, b := range pendingCtrl {
		if err := l.Send(sctx, LaneControl, b); err != nil {
			return err
		}
	}

	errc := make(chan error, 5)
	// One wake channel per lane: an ack or nack wakes its lane.
	var wake [numLanes]chan struct{}
	for i := range wake {
		wake[i] = make(chan struct{}, 1)
	}
	pokeLane := func(ln Lane) {
		if int(ln) >= numLanes { // a lane the parent made up
			return
		}
		select {
		case wake[ln] <- struct{}{}:
		default:
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		errc <- l.Receive(LaneControl, func(b []byte) error { return u.control(b, lanes, pokeLane) })
	}()
	// One sender per lane: a bulk lane blocked on a full link queue (a slow
	// parent) must not hold trace batches back. A sender sleeps until
	// something can change what it may send: an append (every appender
	// kicks its lane once the entry is durable), an ack or nack (room in
	// the window), or the end of a pause. It does not poll the WAL: an
	// idle node's senders cost nothing, which is what lets one host carry
	// many of them (the scale benchmark's simulated agents) and keeps a
	// real agent quiet.
	for _, ln := range []Lane{LaneTrace, LaneAlert, LaneBulk} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// A timer, stopped while nothing is pending: the end of a
			// pause, or the safety net below.
			timer := time.NewTimer(senderSafetyNet)
			defer timer.Stop()
			for {
				if err := u.fill(sctx, l, ln, lanes[ln]); err != nil {
					errc <- err
					return
				}
				// The safety net rescans a lane now and then in case an
				// appender forgot to kick; the kicks are what deliver.
				wait := senderSafetyNet
				st := lanes[ln]
				st.mu.Lock()
				if d := time.Until(st.paused); d > 0 {
					wait = d
				}
				st.mu.Unlock()
				timer.Reset(wait)
				select {
				case <-sctx.Done():
					errc <- nil
					return
				case <-wake[ln]:
				case <-u.kick[ln]:
				case <-timer.C:
				}
				timer.Stop()
			}
		}()
	}
	var retry <-chan time.Time
	if idx > 0 {
		t := time.NewTicker(u.cfg.RetryPrimary)
		defer t.Stop()
		retry = t.C
	}
	for {
		select {
		case err := <-errc:
			return err
		case <-l.Done():
			return l.Err()
		case <-ctx.Done():
			return nil
		case <-retry:
			// Back to the primary once it answers; what is in flight here is
			// replayed there from the WAL, and the center drops duplicates.
			pl, err := u.dial(ctx, u.cfg.Addrs[0])
			if err != nil {
				continue
			}
			pl.Close()
			u.cfg.Log.Info("primary parent is back: switching", "primary", u.cfg.Addrs[0], "from", u.cfg.Addrs[idx])
			return errSwitchPrimary
		}
	}
}

var errSwitchPrimary = errors.New("returning to the primary parent")

// senderSafetyNet is how often an idle lane sender looks at its WAL lane
// without being woken. Appenders kick (Kick, KickLane); this only bounds
// the delay should one not.
const senderSafetyNet = 5 * time.Second

// fill sends WAL entries of one lane until its window is full.
func (u *Uplink) fill(ctx context.Context, l *Link, ln Lane, st *laneState) error {
	st.mu.Lock()
	if time.Now().Before(st.paused) {
		st.mu.Unlock()
		return nil
	}
	room := u.cfg.Window - len(st.inflight)
	roomBytes := u.cfg.WindowBytes - st.bytes
	from := st.next
	st.mu.Unlock()
	if room <= 0 || roomBytes <= 0 {
		return nil
	}
	var batch []wal.Entry
	if err := u.cfg.WAL.Scan(uint8(ln), from, func(e wal.Entry) bool {
		batch = append(batch, e)
		roomBytes -= len(e.Data)
		return len(batch) < room && roomBytes > 0
	}); err != nil {
		return err
	}
	for _, e := range batch {
		info, err := wire.PeekInfo(e.Data)
		if err != nil {
			// Our own WAL holds something unreadable: drop it rather than
			// block the lane forever, and say so.
			u.cfg.Log.Error("dropping unreadable WAL entry", "lane", ln, "id", e.ID, "err", err)
			u.rejected.Add(1)
			u.cfg.WAL.Delete(uint8(ln), e.ID)
			st.mu.Lock()
			st.next = e.ID + 1
			st.mu.Unlock()
			continue
		}
		st.mu.Lock()
		st.inflight = append(st.inflight, inflight{id: e.ID, agentID: info.AgentID, seq: info.Seq, events: info.Events, size: len(e.Data)})
		st.bytes += len(e.Data)
		st.next = e.ID + 1
		st.mu.Unlock()
		if err := sendFrame(ctx, l, ln, wire.BatchFrame{Lane: wire.Lane(ln), Sealed: e.Data}); err != nil {
			return err
		}
		u.sent[ln].Add(1)
	}
	return nil
}

// control handles one frame from the parent.
func (u *Uplink) control(b []byte, lanes [numLanes]*laneState, poke func(Lane)) error {
	f, err := wire.DecodeFrame(b, u.cfg.Limits)
	if err != nil {
		return fmt.Errorf("from parent: %w", err)
	}
	switch m := f.(type) {
	case *wire.Ack:
		u.settle(Lane(m.Lane), lanes, m.AgentID, m.Seq, true)
		poke(Lane(m.Lane))
	case *wire.Nack:
		ln := Lane(m.Lane)
		switch m.Code {
		case wire.NackReplay:
			u.settle(ln, lanes, m.AgentID, m.Seq, true)
		case wire.NackBadSignature, wire.NackMalformed:
			u.cfg.Log.Error("parent refused a batch for good", "lane", ln, "agent", m.AgentID, "seq", m.Seq, "code", m.Code, "reason", m.Reason)
			u.rejected.Add(1)
			u.settle(ln, lanes, m.AgentID, m.Seq, false)
		default:
			// Over the parent's watermark or an agent it cannot verify yet:
			// keep the batch, pause the lane, resend from it later.
			if int(ln) < numLanes && ln != LaneControl {
				st := lanes[ln]
				st.mu.Lock()
				for i, x := range st.inflight {
					if x.agentID == m.AgentID && x.seq == m.Seq {
						st.next = x.id
						for _, y := range st.inflight[i:] {
							st.bytes -= y.size
						}
						st.inflight = st.inflight[:i]
						break
					}
				}
				st.paused = time.Now().Add(2 * time.Second)
				st.mu.Unlock()
				u.cfg.Log.Warn("parent deferred a batch; lane paused", "lane", ln, "code", m.Code, "reason", m.Reason)
			}
		}
		poke(ln)
	default:
		if u.cfg.OnFrame != nil {
			u.cfg.OnFrame(f)
		}
	}
	return nil
}

// settle removes an acknowledged (or refused) batch from flight and the WAL.
func (u *Uplink) settle(ln Lane, lanes [numLanes]*laneState, agentID string, seq uint64, acked bool) {
	if int(ln) >= numLanes || ln == LaneControl {
		return
	}
	st := lanes[ln]
	st.mu.Lock()
	var id uint64
	var events int
	found := false
	for i, x := range st.inflight {
		if x.agentID == agentID && x.seq == seq {
			id, events, found = x.id, x.events, true
			st.bytes -= x.size
			st.inflight = append(st.inflight[:i], st.inflight[i+1:]...)
			break
		}
	}
	st.mu.Unlock()
	if !found {
		return // an ack from a previous session, already settled
	}
	if err := u.cfg.WAL.Delete(uint8(ln), id); err != nil {
		u.cfg.Log.Error("delete acknowledged batch", "lane", ln, "id", id, "err", err)
	}
	if acked {
		u.acked[ln].Add(1)
		u.ackedEvents[ln].Add(uint64(events))
	}
}
