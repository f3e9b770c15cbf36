package sqlstore

import (
	"context"
	"database/sql"
	"log/slog"
	"net/url"
	"time"
)

// Checkpoints. In WAL mode a commit appends the changed pages to the WAL
// file; a checkpoint copies them back into the database file and syncs it.
// By default SQLite checkpoints inside the commit that takes the WAL past
// 1000 pages, which under a steady ingest is nearly every batch: the
// ingest goroutine then waits for page copies and two fsyncs it has no need
// to wait for (see the package doc on durability).
//
// So the writer's automatic checkpoint is raised to a backstop
// (walBackstopPages) and a checkpointer goroutine on its own connection runs
// PASSIVE checkpoints instead, at most every checkpointEvery after a
// commit. PASSIVE never waits for a lock and never blocks the writer or
// the readers; running it less often than every commit also copies a page
// that several batches changed once. If it falls behind (a reader holding
// an old snapshot keeps it from finishing), the WAL grows to the backstop
// and the writer checkpoints inline again, as before.
const (
	checkpointEvery  = 200 * time.Millisecond
	walBackstopPages = 16384 // 64 MiB of 4 KiB pages
)

type checkpointer struct {
	db     *sql.DB
	log    *slog.Logger
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

func startCheckpointer(abs string, log *slog.Logger) (*checkpointer, error) {
	q := url.Values{}
	for _, p := range []string{"busy_timeout(5000)", "synchronous(NORMAL)"} {
		q.Add("_pragma", p)
	}
	db, err := sql.Open("sqlite", fileURI(abs, q))
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxIdleTime(0)
	db.SetConnMaxLifetime(0)
	ctx, cancel := context.WithCancel(context.Background())
	c := &checkpointer{db: db, log: log, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
	go c.run(ctx)
	return c, nil
}

// poke says a transaction committed; it never blocks.
func (c *checkpointer) poke() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

func (c *checkpointer) run(ctx context.Context) {
	defer close(c.done)
	var last time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		}
		if wait := checkpointEvery - time.Since(last); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
		}
		last = time.Now()
		var busy, logFrames, done int
		err := c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &done)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("checkpoint failed", "err", err)
		}
	}
}

// close stops the goroutine and closes its connection. The writer, closed
// last, checkpoints what is left.
func (c *checkpointer) close() error {
	c.cancel()
	<-c.done
	return c.db.Close()
}
