package agent

import (
	"context"
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// CommandHandler executes a command that reached this agent and says how it
// went. Until focused tracing lands, the agent accepts and acknowledges.
type CommandHandler func(ctx context.Context, c wire.Command) (wire.CommandStatus, string)

// Shipper cuts the local store's events into signed batches, queues them in
// the uplink WAL and keeps a link to the agent's proxy.
type Shipper struct {
	cfg     config.Agent
	log     *slog.Logger
	id      *transport.Identity
	st      *store.Local
	wal     *wal.WAL
	up      *transport.Uplink
	renew   *transport.Renewer
	handler CommandHandler
	// onRulePacks receives the rule pack sets the center pushes (nil:
	// ignored, the agent runs no rules).
	onRulePacks func(*wire.RulePacks)

	kick       chan struct{}
	shipped    atomic.Uint64 // events sealed into batches
	batches    atomic.Uint64
	dropped    atomic.Uint64 // bulk batches shed under pressure
	commands   atomic.Uint64
	dupCommand atomic.Uint64
}

// NewShipper opens the uplink WAL; the agent id is its certificate's name.
func NewShipper(cfg config.Agent, st *store.Local, handler CommandHandler, log *slog.Logger) (*Shipper, error) {
	id, err := transport.LoadIdentity(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA, filepath.Join(cfg.DataDir, "crl.pem"))
	if err != nil {
		return nil, fmt.Errorf("agent uplink: %w", err)
	}
	if id.Role != pki.RoleAgent {
		return nil, fmt.Errorf("agent uplink: certificate is for a %s, not an agent", id.Role)
	}
	if cfg.ProxyHint == "" {
		return nil, fmt.Errorf("agent uplink: agent.proxy_hint is not set (or run --standalone)")
	}
	log = log.With("component", "shipper", "agent", id.Name)
	w, err := wal.Open(filepath.Join(cfg.DataDir, "wal"), wal.Options{
		FsyncInterval: time.Duration(cfg.Stream.FsyncIntervalMS) * time.Millisecond,
	}, log)
	if err != nil {
		return nil, fmt.Errorf("agent uplink: %w", err)
	}
	if handler == nil {
		handler = func(context.Context, wire.Command) (wire.CommandStatus, string) {
			return wire.CommandDone, "acknowledged"
		}
	}
	s := &Shipper{cfg: cfg, log: log, id: id, st: st, wal: w, handler: handler, kick: make(chan struct{}, 1)}
	s.up, err = transport.NewUplink(transport.UplinkConfig{
		NodeID:       id.Name,
		Role:         wire.RoleAgent,
		Addrs:        append([]string{cfg.ProxyHint}, cfg.ProxyFallback...),
		TLS:          id.ClientTLS(pki.RoleProxy, pki.RoleCenter),
		WAL:          w,
		Agents:       func() []string { return []string{id.Name} },
		OnFrame:      s.fromParent,
		RetryPrimary: time.Duration(cfg.RetryPrimaryMS) * time.Millisecond,
		Log:          log,
	})
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("agent uplink: %w", err)
	}
	s.renew = transport.NewRenewer(id, cfg.TLS.Cert, cfg.TLS.Key, time.Duration(cfg.TLS.RenewCheckMS)*time.Millisecond,
		func(f wire.Frame) error { return s.up.SendControl(f) }, log)
	return s, nil
}

// AgentID is the id this agent ships under.
func (s *Shipper) AgentID() string { return s.id.Name }

// Kick says new events are in the store.
func (s *Shipper) Kick() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// Run ships until ctx ends.
func (s *Shipper) Run(ctx context.Context) error {
	defer s.wal.Close()
	upDone := make(chan error, 1)
	go func() { upDone <- s.up.Run(ctx) }()
	go s.renew.Run(ctx)
	t := time.NewTicker(time.Duration(s.cfg.Stream.BatchMaxMS) * time.Millisecond)
	defer t.Stop()
	for {
		if err := s.cut(); err != nil {
			s.log.Error("cut batches", "err", err)
		}
		select {
		case <-ctx.Done():
			s.cut() // what was stored before the stop
			return <-upDone
		case <-s.kick:
		case <-t.C:
		}
	}
}

func u64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func be(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

// shipLanes are the lanes the shipper fills, each with the WAL metadata
// key of its cursor (the last event seq shipped on it). Trace and alert
// events go in their own batches ahead of the baseline.
var shipLanes = []struct {
	lane   uint8
	cursor string
}{{wal.LaneTrace, "trace_cursor"}, {wal.LaneAlert, "alert_cursor"}, {wal.LaneBulk, "cursor"}}

// Indexes into shipLanes.
const (
	shipTrace = iota
	shipAlert
	shipBulk
)

// laneOf is the shipLanes index of the lane a stored event travels on.
func laneOf(ev *store.RawEvent) int {
	switch {
	case ev.TraceID != "":
		return shipTrace
	case ev.Kind == capture.KindAlert:
		return shipAlert
	}
	return shipBulk
}

// cut seals every stored event not yet shipped into batches of at most
// batch_max_events: trace events into their own batches on the trace lane,
// agent alerts on the alert lane, the rest on the bulk lane. The cursors
// (last event seq shipped per lane; the bulk one, "cursor", is where
// reading resumes) and the batch seq are written in the same atomic WAL
// append as each batch, so a crash never skips events, never ships one
// twice and never reuses a batch seq.
func (s *Shipper) cut() error {
	// Events are shipped only once durable in the local store: otherwise a
	// power loss could hand their seqs out again after the cursor moved past
	// them, and the new events would never be shipped.
	durable := s.st.LastSeq()
	if err := s.st.Flush(); err != nil {
		return err
	}
	for {
		// Before each read: a long backlog takes many rounds, and trace
		// events stored meanwhile must not wait for all of them.
		if err := s.sendUrgent(&durable); err != nil {
			return err
		}
		var cursors [3]uint64
		for i, l := range shipLanes {
			v, _, err := s.wal.Meta(l.cursor)
			if err != nil {
				return err
			}
			cursors[i] = u64(v)
		}
		bseq, _, err := s.wal.Meta("batch_seq")
		if err != nil {
			return err
		}
		batchSeq := u64(bseq)
		var byLane [3]rawBatch
		var last uint64
		n := 0
		// Stored events are their canonical encoding: they are sealed as
		// stored, without decoding and encoding each one again.
		if err := s.st.RawEventsBySeq(cursors[shipBulk]+1, func(ev store.RawEvent) bool {
			last = ev.Seq
			if l := laneOf(&ev); ev.Seq > cursors[l] { // not shipped before a crash
				byLane[l].add(&ev)
			}
			n++
			return n < s.cfg.Stream.BatchMaxEvents
		}); err != nil {
			return err
		}
		if n == 0 {
			return nil
		}
		s.makeRoom()
		final := -1 // the last lane with a batch: its append moves the read cursor
		for i := range byLane {
			if byLane[i].len() > 0 {
				final = i
			}
		}
		queued := false
		for i, l := range shipLanes {
			evs := &byLane[i]
			if evs.len() == 0 {
				continue
			}
			batchSeq++
			m := map[string][]byte{l.cursor: be(evs.lastSeq), "batch_seq": be(batchSeq)}
			if i == final {
				m["cursor"] = be(last) // reading resumes after everything read here
			} else {
				// Another lane's batch still has to be queued: reading
				// resumes where it started if we stop in between (the
				// lane cursors skip what was queued).
				m["cursor"] = be(cursors[shipBulk])
			}
			if err := s.queue(l.lane, batchSeq, evs, m); err != nil {
				return err
			}
			queued = true
		}
		if !queued {
			// Only events shipped before a crash: move past them.
			if err := s.wal.SetMeta("cursor", be(last)); err != nil {
				return err
			}
		}
		if n < s.cfg.Stream.BatchMaxEvents {
			return nil
		}
	}
}

// sendUrgent sends the urgent events stored so far ahead of the reader,
// flushing the store first when some are newer than durable (the last seq
// known durable, which it moves on).
func (s *Shipper) sendUrgent(durable *uint64) error {
	floor, urgent := s.st.Urgent()
	if len(urgent) == 0 {
		return nil
	}
	if urgent[len(urgent)-1].Seq > *durable {
		last := s.st.LastSeq()
		if err := s.st.Flush(); err != nil {
			return err
		}
		*durable = last
	}
	for len(urgent) > 0 && urgent[len(urgent)-1].Seq > *durable {
		urgent = urgent[:len(urgent)-1] // stored after the flush: next round
	}
	return s.cutUrgent(floor, urgent)
}

// cutUrgent sends trace and alert events ahead of the baseline not read
// yet: under a bulk backlog (a busy host, a slow uplink) the reader below
// reaches a trace event only after every bulk event stored before it,
// which is seconds to minutes of the trace lane's latency. It applies once
// the reader has passed floor, since the store lists every urgent event
// above floor and nothing below it. Each batch moves only its lane's
// cursor: the reader skips what was sent here when it gets there (and
// after a crash, reading resumes where it was).
func (s *Shipper) cutUrgent(floor uint64, urgent []store.UrgentRef) error {
	if len(urgent) == 0 {
		return nil
	}
	v, _, err := s.wal.Meta("cursor")
	if err != nil {
		return err
	}
	if u64(v) < floor {
		return nil
	}
	for _, l := range []int{shipTrace, shipAlert} {
		cv, _, err := s.wal.Meta(shipLanes[l].cursor)
		if err != nil {
			return err
		}
		cursor := u64(cv)
		var evs rawBatch
		flush := func() error {
			if evs.len() == 0 {
				return nil
			}
			bseq, _, err := s.wal.Meta("batch_seq")
			if err != nil {
				return err
			}
			seq := u64(bseq) + 1
			m := map[string][]byte{shipLanes[l].cursor: be(evs.lastSeq), "batch_seq": be(seq)}
			if err := s.queue(shipLanes[l].lane, seq, &evs, m); err != nil {
				return err
			}
			evs = rawBatch{}
			return nil
		}
		for _, u := range urgent {
			if u.Seq <= cursor || u.Alert != (l == shipAlert) {
				continue
			}
			if _, err := s.st.RawEventAt(u.Seq, func(ev store.RawEvent) { evs.add(&ev) }); err != nil {
				return err
			}
			if evs.len() >= s.cfg.Stream.BatchMaxEvents {
				if err := flush(); err != nil {
					return err
				}
			}
		}
		if err := flush(); err != nil {
			return err
		}
	}
	// What each lane has sent is no longer needed in the list.
	var done [2]uint64
	for i, l := range []int{shipTrace, shipAlert} {
		cv, _, err := s.wal.Meta(shipLanes[l].cursor)
		if err != nil {
			return err
		}
		done[i] = u64(cv)
	}
	s.st.ForgetUrgent(done[0], done[1])
	return nil
}

// rawBatch gathers stored event encodings for one batch: copied into one
// buffer (the store's are valid only during its callback), with the time
// span the batch header needs.
type rawBatch struct {
	buf     []byte
	ends    []int
	lo, hi  int64
	lastSeq uint64
}

func (b *rawBatch) add(ev *store.RawEvent) {
	if len(b.ends) == 0 {
		b.lo, b.hi = ev.Time, ev.Time
	}
	b.lo, b.hi = min(b.lo, ev.Time), max(b.hi, ev.Time)
	b.buf = append(b.buf, ev.CBOR...)
	b.ends = append(b.ends, len(b.buf))
	b.lastSeq = ev.Seq
}

func (b *rawBatch) len() int { return len(b.ends) }

// leaves are the events' encodings, in order.
func (b *rawBatch) leaves() [][]byte {
	out := make([][]byte, len(b.ends))
	from := 0
	for i, end := range b.ends {
		out[i] = b.buf[from:end:end]
		from = end
	}
	return out
}

// queue seals evs as batch seq and appends it to lane with meta.
func (s *Shipper) queue(lane uint8, seq uint64, evs *rawBatch, meta map[string][]byte) error {
	// One snapshot of the certificate: a renewal may swap it meanwhile.
	cert := s.id.Holder.Load()
	sealed, err := wire.SealBatchCertRaw(s.id.Name, seq, evs.leaves(), evs.lo, evs.hi, cert.PrivateKey.(ed25519.PrivateKey), cert.Certificate[0], true)
	if err != nil {
		return err
	}
	if _, err := s.wal.Append(lane, sealed, meta); err != nil {
		return fmt.Errorf("queue batch %d on the %s lane: %w", seq, wire.Lane(lane), err)
	}
	s.shipped.Add(uint64(evs.len()))
	s.batches.Add(1)
	s.up.KickLane(transport.Lane(lane))
	return nil
}

// makeRoom sheds the oldest bulk batches while the uplink queue is above its
// cap: under pressure the baseline gives way, never trace or alert.
func (s *Shipper) makeRoom() {
	for i := 0; i < 1000; i++ {
		st := s.wal.Stats()
		if st.Lanes[wal.LaneBulk].Bytes <= int64(s.cfg.Stream.MaxQueueBytes) {
			return
		}
		n, err := s.wal.DropOldest(wal.LaneBulk, 1)
		if err != nil || n == 0 {
			return
		}
		s.dropped.Add(uint64(n))
		s.log.Warn("uplink queue full: dropped oldest bulk batches", "dropped", n, "queued_bytes", st.Lanes[wal.LaneBulk].Bytes)
	}
}

// fromParent handles commands, CRLs and rule packs coming down.
func (s *Shipper) fromParent(f wire.Frame) {
	switch m := f.(type) {
	case *wire.Command:
		s.command(*m)
	case *wire.CRL:
		if _, err := s.id.ApplyCRL(m.DER); err != nil {
			s.log.Error("CRL from parent refused", "err", err)
		}
	case *wire.RulePacks:
		if s.onRulePacks != nil {
			s.onRulePacks(m)
		}
	case *wire.RenewResponse:
		if m.NodeID == s.id.Name {
			if err := s.renew.Handle(*m); err != nil {
				s.log.Error("certificate renewal", "err", err)
			}
		}
	}
}

func (s *Shipper) command(c wire.Command) {
	ack := wire.CommandAck{CommandID: c.CommandID, AgentID: s.id.Name}
	key := "cmd:" + c.CommandID
	if prev, ok, _ := s.wal.Meta(key); ok {
		// Delivered again (a resend or a replay through another proxy):
		// answer as before, do not run it twice.
		s.dupCommand.Add(1)
		ack.Status = wire.CommandStatus(prev[0])
		ack.Detail = "duplicate delivery: " + string(prev[1:])
		s.up.SendControl(ack)
		return
	}
	switch {
	case c.Target != s.id.Name:
		ack.Status, ack.Detail = wire.CommandRejected, "command for "+c.Target+" reached "+s.id.Name
	case c.Expires != 0 && time.Now().UnixNano() > c.Expires:
		ack.Status, ack.Detail = wire.CommandExpired, "arrived after its expiry"
	default:
		ack.Status, ack.Detail = s.handler(context.Background(), c)
	}
	s.commands.Add(1)
	if err := s.wal.SetMeta(key, append([]byte{byte(ack.Status)}, ack.Detail...)); err != nil {
		s.log.Error("record command", "command", c.CommandID, "err", err)
	}
	s.up.SendControl(ack)
}

// ShipperStats are the uplink's figures.
type ShipperStats struct {
	Events, Batches, Dropped, Commands, Duplicates, Renewals uint64
	Uplink                                                   transport.UplinkStats
	Queue                                                    wal.Stats
}

// Stats returns the shipper's figures.
func (s *Shipper) Stats() ShipperStats {
	return ShipperStats{
		Events: s.shipped.Load(), Batches: s.batches.Load(), Dropped: s.dropped.Load(),
		Commands: s.commands.Load(), Duplicates: s.dupCommand.Load(), Renewals: s.renew.Renewals(),
		Uplink: s.up.Stats(), Queue: s.wal.Stats(),
	}
}
