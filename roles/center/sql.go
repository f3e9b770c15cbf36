package center

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// ingestSQL feeds durable batches into the SQL store: trace and alert
// batches first (an analyst is waiting for them, and a saturated bulk lane
// can queue a thousand batches, minutes of SQL work, ahead of them), bulk
// in the order it was committed. The batch store (Pebble) is the record;
// SQL is derived from it, so a failure here is retried and, after a crash,
// reconcile catches up.
func (c *Center) ingestSQL(ctx context.Context) error {
	for {
		c.drainUrgent(ctx)
		select {
		case <-ctx.Done():
			// What is still queued is in the batch store already; the
			// next start's reconcile ingests it. Draining here could take
			// minutes under load and hold up the stop.
			return nil
		case b := <-c.urgentQ:
			c.ingestOne(ctx, b, true)
		case b := <-c.ingestQ:
			c.ingestOne(ctx, b, false)
			c.sqlBudget.Release(c.sqlWeight(b))
		case <-c.catchUp:
			if err := c.catchUpSQL(ctx); err != nil {
				c.log.Error("SQL catch-up from the batch store", "err", err)
			}
		}
	}
}

// sqlQueueEvents is how many decoded bulk events may wait in memory for
// SQL ingest (center.sql_queue_events).
func (c *Center) sqlQueueEvents() int {
	if c.cfg.SQLQueueEvents < 1 {
		return config.DefaultSQLQueueEvents
	}
	return c.cfg.SQLQueueEvents
}

// sqlWeight is what a bulk batch takes of the SQL queue's budget.
func (c *Center) sqlWeight(b *wire.Batch) int64 {
	return int64(min(max(len(b.Events), 1), c.sqlQueueEvents()))
}

// SetOnSQL sets what is called after each batch is in the SQL store (for
// measurements: the time an analyst can first see a batch).
func (c *Center) SetOnSQL(fn func(*wire.Batch)) { c.onSQL.Store(&fn) }

// drainUrgent ingests the trace and alert batches waiting, if any.
func (c *Center) drainUrgent(ctx context.Context) {
	for ctx.Err() == nil {
		select {
		case b := <-c.urgentQ:
			c.ingestOne(ctx, b, true)
		default:
			return
		}
	}
}

// catchUpKick asks the SQL ingester to read pending batches back from the
// batch store.
func (c *Center) catchUpKick() {
	select {
	case c.catchUp <- struct{}{}:
	default:
	}
}

// catchUpBatches is how many pending batches one catch-up round ingests
// before the ingester looks at its queues again (trace first).
const catchUpBatches = 32

// catchUpSQL ingests pending batches (stored, not yet in SQL, not held in
// the queue) from the batch store, a round at a time, and asks for another
// round while any are left. A batch the queue still holds may be taken
// here first; ingestOne then finds it in SQL and skips it.
func (c *Center) catchUpSQL(ctx context.Context) error {
	it, err := c.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'q'}, UpperBound: []byte{'r'}})
	if err != nil {
		return err
	}
	var keys [][]byte
	for it.First(); it.Valid() && len(keys) < catchUpBatches+1; it.Next() {
		keys = append(keys, append([]byte(nil), it.Key()[1:]...))
	}
	if err := it.Close(); err != nil {
		return err
	}
	if len(keys) > catchUpBatches {
		keys = keys[:catchUpBatches]
		defer c.catchUpKick() // more after this round
	}
	for _, key := range keys {
		if ctx.Err() != nil {
			return nil
		}
		c.drainUrgent(ctx) // a round is seconds of work: trace first
		k := key[1:]
		if len(k) < 9 || k[len(k)-9] != 0 {
			return fmt.Errorf("malformed pending batch key %q", key)
		}
		agent, seq := string(k[:len(k)-9]), binary.BigEndian.Uint64(k[len(k)-8:])
		v, closer, err := c.db.Get(key)
		if errors.Is(err, pebble.ErrNotFound) {
			c.donePending(key)
			continue
		} else if err != nil {
			return err
		}
		sealed := append([]byte(nil), v...)
		closer.Close()
		if store.Purged(sealed) {
			c.donePending(key)
			continue
		}
		b, nack := c.Ingest.Verify(wire.LaneBulk, agent, seq, sealed)
		if nack != nil {
			c.log.Error("pending batch no longer verifies", "agent", agent, "seq", seq, "reason", nack.Reason)
			c.donePending(key)
			continue
		}
		c.ingestOne(ctx, b, false)
	}
	return nil
}

// donePending clears a batch's pending mark (not synced: a lost delete
// only makes the next catch-up find it in SQL).
func (c *Center) donePending(batchKey []byte) {
	if err := c.db.Delete(pendingKey(batchKey), pebble.NoSync); err != nil {
		c.log.Warn("clear pending SQL mark", "err", err)
	}
}

func (c *Center) ingestOne(ctx context.Context, b *wire.Batch, urgent bool) {
	key := batchKey(b.AgentID, b.Seq)
	if has, err := c.SQL.HasBatch(ctx, b.AgentID, b.Seq); err == nil && has {
		c.donePending(key) // taken by a catch-up round already
		return
	}
	for attempt := 0; attempt < 5; attempt++ {
		release := func() {}
		if !urgent {
			// CPU-heavy: after bulk verification, never before trace. A
			// trace or alert batch, like its verification, takes no slot.
			release = c.Ingest.SQLSlot()
		}
		err := c.SQL.IngestBatch(ctx, b)
		release()
		if err == nil {
			c.donePending(key)
			if fn := c.onSQL.Load(); fn != nil {
				(*fn)(b)
			}
			if err := c.traceEvents(ctx, b); err != nil {
				c.log.Error("trace events of a batch", "agent", b.AgentID, "seq", b.Seq, "err", err)
			}
			c.agentAlerts(ctx, b.AgentID, b.Events)
			if c.cfg.Traces.AutoFollow && hasConnections(b) {
				// A link appears with a traced connect and becomes
				// followable with its accept: other batches cannot
				// change what there is to follow.
				c.followLinks(ctx)
			}
			if c.Rules != nil {
				c.Rules.Poke()
			}
			return
		}
		c.log.Warn("SQL ingest", "agent", b.AgentID, "seq", b.Seq, "attempt", attempt+1, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Duration(attempt+1) * 200 * time.Millisecond):
		}
	}
	c.log.Error("SQL ingest gave up; the next start reconciles it from the batch store", "agent", b.AgentID, "seq", b.Seq)
}

// reconcile ingests every stored batch the SQL store lacks (a crash between
// the two writes, or a new SQL store on an old batch store).
func (c *Center) reconcile(ctx context.Context) error {
	it, err := c.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'b'}, UpperBound: []byte{'c'}})
	if err != nil {
		return fmt.Errorf("center: reconcile: %w", err)
	}
	defer it.Close()
	var n int
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) < 9 {
			continue
		}
		agent, seq := string(k[:len(k)-9]), binary.BigEndian.Uint64(k[len(k)-8:])
		if store.Purged(it.Value()) {
			continue // retention removed its events (retention.go)
		}
		has, err := c.SQL.HasBatch(ctx, agent, seq)
		if err != nil {
			return fmt.Errorf("center: reconcile: %w", err)
		}
		if has {
			continue
		}
		sealed := append([]byte(nil), it.Value()...)
		b, nack := c.Ingest.Verify(0, agent, seq, sealed)
		if nack != nil {
			c.log.Error("reconcile: stored batch no longer verifies", "agent", agent, "seq", seq, "reason", nack.Reason)
			continue
		}
		if err := c.SQL.IngestBatch(ctx, b); err != nil {
			return fmt.Errorf("center: reconcile %s/%d: %w", agent, seq, err)
		}
		if err := c.traceEvents(ctx, b); err != nil {
			return fmt.Errorf("center: reconcile %s/%d: %w", agent, seq, err)
		}
		n++
	}
	if err := it.Error(); err != nil {
		return err
	}
	if n > 0 {
		c.log.Info("reconciled the SQL store with the batch store", "batches", n)
	}
	// Every stored batch is in SQL now: no pending marks are left to honour.
	if err := c.db.DeleteRange([]byte{'q'}, []byte{'r'}, pebble.Sync); err != nil {
		return fmt.Errorf("center: reconcile: %w", err)
	}
	return nil
}

// hasConnections reports whether b holds a connect or an accept.
func hasConnections(b *wire.Batch) bool {
	for i := range b.Events {
		if k := b.Events[i].Kind; k == capture.KindConnect || k == capture.KindAccept {
			return true
		}
	}
	return false
}
