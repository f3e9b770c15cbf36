package sqlstore

import (
	"context"
	"database/sql"
	"log/slog"
	"net/url"
	"sync"
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
// that several batches changed once.
//
// The WAL file starts over (instead of growing) only at a write that finds
// every frame copied back, which a checkpoint running beside a busy writer
// rarely leaves behind. So once the WAL holds walRestartPages, the
// checkpointer copies the bulk without the writer's lock, then the few
// frames committed meanwhile with it held: the writer waits for that tail
// only, and its next transaction rewinds the WAL. If all this falls behind
// (a reader holding an old snapshot keeps checkpoints from finishing), the
// WAL grows to the backstop and the writer checkpoints inline, as before.
const (
	checkpointEvery  = 200 * time.Millisecond
	walRestartPages  = 4096  // 16 MiB of 4 KiB pages
	walBackstopPages = 16384 // 64 MiB
)

type checkpointer struct {
	db     *sql.DB
	wmu    *sync.Mutex // the Store's writer lock
	log    *slog.Logger
	kick   chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

func startCheckpointer(abs string, wmu *sync.Mutex, log *slog.Logger) (*checkpointer, error) {
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
	c := &checkpointer{db: db, wmu: wmu, log: log, kick: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{})}
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
		logFrames, done, err := c.checkpoint(ctx)
		if err == nil && logFrames >= walRestartPages && done < logFrames {
			c.wmu.Lock()
			_, _, err = c.checkpoint(ctx)
			c.wmu.Unlock()
		}
		if err != nil && ctx.Err() == nil {
			c.log.Warn("checkpoint failed", "err", err)
		}
	}
}

// checkpoint runs a PASSIVE checkpoint: the WAL's size in frames and how
// many of them are now copied back.
func (c *checkpointer) checkpoint(ctx context.Context) (logFrames, done int, err error) {
	var busy int
	err = c.db.QueryRowContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)").Scan(&busy, &logFrames, &done)
	return logFrames, done, err
}

// close stops the goroutine and closes its connection. The writer, closed
// last, checkpoints what is left.
func (c *checkpointer) close() error {
	c.cancel()
	<-c.done
	return c.db.Close()
}
