package center

import (
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"

	"github.com/evilbitlabs/daemoneye/capture"
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
		select {
		case b := <-c.urgentQ:
			c.ingestOne(ctx, b, true)
			continue
		default:
		}
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
			c.sqlBudget.Release(sqlWeight(b))
		}
	}
}

// sqlQueueEvents is how many decoded bulk events may wait for SQL ingest
// (about 1 KiB of heap each).
const sqlQueueEvents = 256 << 10

// sqlWeight is what a bulk batch takes of the SQL queue's budget.
func sqlWeight(b *wire.Batch) int64 { return int64(min(max(len(b.Events), 1), sqlQueueEvents)) }

// SetOnSQL sets what is called after each batch is in the SQL store (for
// measurements: the time an analyst can first see a batch).
func (c *Center) SetOnSQL(fn func(*wire.Batch)) { c.onSQL.Store(&fn) }

func (c *Center) ingestOne(ctx context.Context, b *wire.Batch, urgent bool) {
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
	if n > 0 {
		c.log.Info("reconciled the SQL store with the batch store", "batches", n)
	}
	return it.Error()
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
