package transport

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Dispatcher moves commands down the tree from a proxy or the center. Each
// command is written to the durable outbox first, sent to the child that
// routes to its target, and kept until the agent acknowledges it (end to end)
// or it expires. A child that connects later receives what waits for its
// agents; unacknowledged commands are resent periodically, and agents drop
// duplicates by command id.
type Dispatcher struct {
	srv    *Server
	wal    *wal.WAL
	log    *slog.Logger
	resend time.Duration
	now    func() time.Time
	// Report sends an ack (or an expiry) back up; nil at the center, which
	// handles acks itself.
	report func(wire.CommandAck)

	mu       sync.Mutex
	lastSent map[string]time.Time // command id -> last send
}

// NewDispatcher routes through srv and keeps its outbox in w.
func NewDispatcher(srv *Server, w *wal.WAL, report func(wire.CommandAck), log *slog.Logger) *Dispatcher {
	return &Dispatcher{srv: srv, wal: w, log: log.With("component", "dispatch"), resend: 5 * time.Second,
		now: time.Now, report: report, lastSent: map[string]time.Time{}}
}

// Submit queues a command durably and tries to deliver it at once.
func (d *Dispatcher) Submit(ctx context.Context, c wire.Command) error {
	if c.Expires != 0 && d.now().UnixNano() > c.Expires {
		d.ack(wire.CommandAck{CommandID: c.CommandID, AgentID: c.Target, Status: wire.CommandExpired, Detail: "expired before it reached this node"})
		return nil
	}
	if err := d.wal.PutCommand(wal.Command{Target: c.Target, ID: c.CommandID, Expires: c.Expires, Data: c.Payload}); err != nil {
		return err
	}
	d.send(ctx, c)
	return nil
}

func (d *Dispatcher) send(ctx context.Context, c wire.Command) {
	child, ok := d.srv.Route(c.Target)
	if !ok {
		return // waits in the outbox for the agent's route to appear
	}
	if err := child.Send(ctx, c); err != nil {
		d.log.Warn("send command", "command", c.CommandID, "target", c.Target, "via", child.ID, "err", err)
		return
	}
	d.mu.Lock()
	d.lastSent[c.CommandID] = d.now()
	d.mu.Unlock()
}

// Acked handles an ack coming up from a child: a final answer (or the agent's
// acceptance) removes the command from the outbox; every ack is reported up.
func (d *Dispatcher) Acked(a wire.CommandAck) {
	if err := d.wal.DeleteCommand(a.AgentID, a.CommandID); err != nil {
		d.log.Warn("outbox delete", "command", a.CommandID, "err", err)
	}
	d.mu.Lock()
	delete(d.lastSent, a.CommandID)
	d.mu.Unlock()
	d.ack(a)
}

func (d *Dispatcher) ack(a wire.CommandAck) {
	if d.report != nil {
		d.report(a)
	}
}

// Flush sends what waits in the outbox: expired commands are answered as
// such, routed ones are (re)sent when not sent recently.
func (d *Dispatcher) Flush(ctx context.Context) {
	cmds, err := d.wal.Commands("")
	if err != nil {
		d.log.Warn("outbox", "err", err)
		return
	}
	now := d.now()
	for _, c := range cmds {
		if c.Expires != 0 && now.UnixNano() > c.Expires {
			d.wal.DeleteCommand(c.Target, c.ID)
			d.ack(wire.CommandAck{CommandID: c.ID, AgentID: c.Target, Status: wire.CommandExpired, Detail: "expired waiting for a route to the agent"})
			d.log.Warn("command expired in the outbox", "command", c.ID, "target", c.Target)
			continue
		}
		d.mu.Lock()
		last, sent := d.lastSent[c.ID]
		d.mu.Unlock()
		if sent && now.Sub(last) < d.resend {
			continue
		}
		d.send(ctx, wire.Command{CommandID: c.ID, Target: c.Target, Expires: c.Expires, Payload: c.Data})
	}
}

// Pending is the number of commands waiting in the outbox.
func (d *Dispatcher) Pending() int {
	cmds, _ := d.wal.Commands("")
	return len(cmds)
}

// Run flushes the outbox periodically until ctx ends.
func (d *Dispatcher) Run(ctx context.Context) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			d.Flush(ctx)
		}
	}
}
