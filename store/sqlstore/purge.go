package sqlstore

// Retention: what the center's purge job removes from the SQL store.
//
// The unit is the batch, as in the batch store: a batch is due when it is
// older than its host's window, its age being that of its newest event by
// the agent's clock, but never newer than its arrival (an agent whose clock
// runs ahead cannot keep its events past the window). PurgeBatches removes
// the rows of a batch's events from every event table and keeps the
// batches row, marked with the ledger entry that recorded the purge: it is
// the idempotency guard (a replay of the batch is not ingested again) and
// it keeps the batch's Merkle root and event count. Each call is one short
// transaction, so the purge never holds the writer for long.
//
// Processes and links are derived rows: an exited process goes when none
// of its events and none of its children are left (a live process keeps
// its whole lineage); a link goes when both its connect and its accept are
// gone.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

// ErrPurged: retention removed the batch's events (BatchEvents).
var ErrPurged = errors.New("events removed by retention")

// DueBatch is a batch whose events retention may remove.
type DueBatch struct {
	Host   string
	Seq    uint64
	Age    int64 // Unix ns: min(newest event, arrival)
	Events int
}

// batchAge is the age of a batch, as the batches_due index has it.
const batchAge = `min(ts_end, ingested)`

// DueBatches returns up to limit batches of host older than cutoff (Unix
// ns) whose events are still stored, oldest first, starting after the batch
// after (the zero DueBatch: from the oldest). Paging by the last batch
// returned lets a caller skip batches it keeps without finding them again.
func (s *Store) DueBatches(ctx context.Context, host string, cutoff int64, after DueBatch, limit int) ([]DueBatch, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("sqlstore: due batches: limit %d", limit)
	}
	from, seq := int64(-1<<63), int64(-1<<63)
	if after != (DueBatch{}) {
		from, seq = after.Age, int64(after.Seq)
	}
	rows, err := s.ro.QueryContext(ctx, `SELECT seq, `+batchAge+`, events FROM batches INDEXED BY batches_due
		WHERE host = ?1 AND purged IS NULL AND `+batchAge+` < ?2 AND (`+batchAge+`, seq) > (?3, ?4)
		ORDER BY `+batchAge+`, seq LIMIT ?5`, host, cutoff, from, seq, limit)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: due batches of %s: %w", host, err)
	}
	defer rows.Close()
	var out []DueBatch
	for rows.Next() {
		b := DueBatch{Host: host}
		var s int64
		if err := rows.Scan(&s, &b.Age, &b.Events); err != nil {
			return nil, fmt.Errorf("sqlstore: due batches of %s: %w", host, err)
		}
		b.Seq = uint64(s)
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: due batches of %s: %w", host, err)
	}
	return out, nil
}

// PurgeCounts are the rows a purge removed.
type PurgeCounts struct {
	Batches int              // batches marked purged
	Events  int64            // event rows, all tables
	Tables  map[string]int64 // event rows by table
}

// Add sums o into c.
func (c *PurgeCounts) Add(o PurgeCounts) {
	c.Batches += o.Batches
	c.Events += o.Events
	for t, n := range o.Tables {
		if c.Tables == nil {
			c.Tables = map[string]int64{}
		}
		c.Tables[t] += n
	}
}

// PurgeBatches removes the events of host's batches seqs from every event
// table and marks the batches purged by mark (the index of the ledger
// entry that records the purge), in one transaction. Batches already
// purged or never ingested are skipped, so a purge interrupted and run
// again removes the same rows once.
func (s *Store) PurgeBatches(ctx context.Context, host string, seqs []uint64, mark int64) (PurgeCounts, error) {
	c := PurgeCounts{Tables: map[string]int64{}}
	if len(seqs) == 0 {
		return c, nil
	}
	list, err := seqJSON(seqs)
	if err != nil {
		return c, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		rows, err := tx.QueryContext(ctx, `UPDATE batches SET purged = ?3
			WHERE host = ?1 AND seq IN (SELECT value FROM json_each(?2)) AND purged IS NULL RETURNING seq`, host, list, mark)
		if err != nil {
			return err
		}
		var marked []uint64
		for rows.Next() {
			var seq int64
			if err := rows.Scan(&seq); err != nil {
				rows.Close()
				return err
			}
			marked = append(marked, uint64(seq))
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if len(marked) == 0 {
			return nil
		}
		c.Batches = len(marked)
		if list, err = seqJSON(marked); err != nil {
			return err
		}
		for _, t := range TraceTables {
			res, err := tx.ExecContext(ctx, `DELETE FROM `+t+` WHERE host = ?1 AND batch_seq IN (SELECT value FROM json_each(?2))`, host, list)
			if err != nil {
				return fmt.Errorf("%s: %w", t, err)
			}
			n, err := res.RowsAffected()
			if err != nil {
				return err
			}
			c.Tables[t] = n
			c.Events += n
		}
		return nil
	})
	if err != nil {
		return PurgeCounts{}, fmt.Errorf("sqlstore: purge batches of %s: %w", host, err)
	}
	s.ckpt.poke()
	return c, nil
}

func seqJSON(seqs []uint64) (string, error) {
	v := make([]int64, len(seqs))
	for i, s := range seqs {
		v[i] = int64(s)
	}
	b, err := json.Marshal(v)
	return string(b), err
}

// ProcCursor is where PurgeProcesses goes on: the last candidate it saw.
type ProcCursor struct {
	Exit int64
	ID   int64
}

// PurgeProcesses looks at up to limit process rows of host that exited
// before cutoff (Unix ns), oldest exit first, after cursor, and removes
// those with no event and no child left in the store. It returns how many
// it removed and the cursor to go on from; done when no candidate is left.
// A parent whose children go in the same call stays until the next pass.
func (s *Store) PurgeProcesses(ctx context.Context, host string, cutoff int64, cursor ProcCursor, limit int) (removed int64, next ProcCursor, done bool, err error) {
	if limit <= 0 {
		return 0, cursor, true, fmt.Errorf("sqlstore: purge processes: limit %d", limit)
	}
	if cursor == (ProcCursor{}) {
		cursor = ProcCursor{Exit: -1 << 63, ID: -1 << 63}
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		var ids []int64
		rows, err := tx.QueryContext(ctx, `SELECT id, exit_time FROM processes INDEXED BY processes_exited
			WHERE host = ?1 AND exit_time IS NOT NULL AND exit_time < ?2 AND (exit_time, id) > (?3, ?4)
			ORDER BY exit_time, id LIMIT ?5`, host, cutoff, cursor.Exit, cursor.ID, limit)
		if err != nil {
			return err
		}
		for rows.Next() {
			if err := rows.Scan(&next.ID, &next.Exit); err != nil {
				rows.Close()
				return err
			}
			ids = append(ids, next.ID)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if len(ids) < limit {
			done = true
		}
		if len(ids) == 0 {
			next = cursor
			return nil
		}
		list, err := json.Marshal(ids)
		if err != nil {
			return err
		}
		res, err := tx.ExecContext(ctx, `DELETE FROM processes WHERE id IN (
			SELECT p.id FROM processes p WHERE p.id IN (SELECT value FROM json_each(?1))
			AND NOT EXISTS (SELECT 1 FROM processes c WHERE c.host = p.host AND c.ppid = p.pid AND c.pstart = p.start)
			AND NOT EXISTS (SELECT 1 FROM process_events e WHERE e.host = p.host AND e.pid = p.pid AND e.start = p.start)
			AND NOT EXISTS (SELECT 1 FROM network_events e WHERE e.host = p.host AND e.pid = p.pid AND e.start = p.start)
			AND NOT EXISTS (SELECT 1 FROM file_events e WHERE e.host = p.host AND e.pid = p.pid AND e.start = p.start)
			AND NOT EXISTS (SELECT 1 FROM exe_hashes e WHERE e.host = p.host AND e.pid = p.pid AND e.start = p.start))`, string(list))
		if err != nil {
			return err
		}
		removed, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, cursor, false, fmt.Errorf("sqlstore: purge processes of %s: %w", host, err)
	}
	return removed, next, done, nil
}

// PurgeLinks removes up to limit links from host (traced connects to
// another enrolled host) whose connect and accept events are both gone,
// except those of the traces in keep. It returns how many it removed.
func (s *Store) PurgeLinks(ctx context.Context, host string, keep []string, limit int) (int64, error) {
	if keep == nil {
		keep = []string{}
	}
	ks, err := json.Marshal(keep)
	if err != nil {
		return 0, err
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var n int64
	err = s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `DELETE FROM links WHERE id IN (
			SELECT l.id FROM links l WHERE l.from_host = ?1
			AND (l.from_event IS NULL OR NOT EXISTS (SELECT 1 FROM network_events n WHERE n.id = l.from_event))
			AND (l.to_event IS NULL OR NOT EXISTS (SELECT 1 FROM network_events n WHERE n.id = l.to_event))
			AND l.trace_id NOT IN (SELECT value FROM json_each(?2))
			LIMIT ?3)`, host, string(ks), limit)
		if err != nil {
			return err
		}
		n, err = res.RowsAffected()
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("sqlstore: purge links of %s: %w", host, err)
	}
	return n, nil
}

// OpenTraces lists the traces that have not ended: pending, approved or
// active.
func (s *Store) OpenTraces(ctx context.Context) ([]string, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT trace_id FROM traces WHERE state IN ('pending', 'approved', 'active') ORDER BY trace_id`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open traces: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, fmt.Errorf("sqlstore: open traces: %w", err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: open traces: %w", err)
	}
	return out, nil
}

// PurgedBatches returns, of the batches named, those whose events
// retention removed, each with the ledger index of the entry that recorded
// the purge.
func (s *Store) PurgedBatches(ctx context.Context, refs []BatchRef) (map[BatchRef]int64, error) {
	out := map[BatchRef]int64{}
	if len(refs) == 0 {
		return out, nil
	}
	type ref struct {
		H string `json:"h"`
		S int64  `json:"s"`
	}
	list := make([]ref, len(refs))
	for i, r := range refs {
		list[i] = ref{r.Host, int64(r.Seq)}
	}
	b, err := json.Marshal(list)
	if err != nil {
		return nil, err
	}
	rows, err := s.ro.QueryContext(ctx, `SELECT b.host, b.seq, b.purged FROM json_each(?1) j
		JOIN batches b ON b.host = j.value ->> '$.h' AND b.seq = j.value ->> '$.s'
		WHERE b.purged IS NOT NULL`, string(b))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: purged batches: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			r         BatchRef
			seq, mark int64
		)
		if err := rows.Scan(&r.Host, &seq, &mark); err != nil {
			return nil, fmt.Errorf("sqlstore: purged batches: %w", err)
		}
		r.Seq = uint64(seq)
		out[r] = mark
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: purged batches: %w", err)
	}
	return out, nil
}

// RetentionRun is one retention pass over a site (the retention_runs row).
type RetentionRun struct {
	ID        int64
	Site      string
	Window    time.Duration
	Cutoff    time.Time
	Started   time.Time
	Finished  time.Time // zero while running or if interrupted
	Batches   int64
	Events    int64
	Bytes     int64
	Processes int64
	Links     int64
	Held      int64
	Error     string
}

// BeginRetentionRun records the start of a pass and returns its id.
func (s *Store) BeginRetentionRun(ctx context.Context, site string, window time.Duration, cutoff, started time.Time) (int64, error) {
	s.wmu.Lock()
	defer s.wmu.Unlock()
	var id int64
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		return tx.QueryRowContext(ctx, `INSERT INTO retention_runs (site, window_s, cutoff, started) VALUES (?, ?, ?, ?) RETURNING id`,
			site, int64(window/time.Second), cutoff.UnixNano(), started.UnixNano()).Scan(&id)
	})
	if err != nil {
		return 0, fmt.Errorf("sqlstore: begin retention run: %w", err)
	}
	return id, nil
}

// UpdateRetentionRun stores a pass's figures (and its end, once Finished
// is set). It runs even when ctx is done: an interrupted pass records what
// it did.
func (s *Store) UpdateRetentionRun(ctx context.Context, r RetentionRun) error {
	ctx = context.WithoutCancel(ctx)
	var fin, msg any
	if !r.Finished.IsZero() {
		fin = r.Finished.UnixNano()
	}
	if r.Error != "" {
		msg = r.Error
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	err := s.inTx(ctx, func(tx *sql.Tx) error {
		res, err := tx.ExecContext(ctx, `UPDATE retention_runs SET finished = ?, batches = ?, events = ?, bytes = ?, processes = ?,
			links = ?, held = ?, error = ? WHERE id = ?`, fin, r.Batches, r.Events, r.Bytes, r.Processes, r.Links, r.Held, msg, r.ID)
		if err != nil {
			return err
		}
		if n, err := res.RowsAffected(); err != nil || n == 0 {
			return errors.Join(err, fmt.Errorf("no run %d", r.ID))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("sqlstore: update retention run: %w", err)
	}
	return nil
}

// RetentionRuns returns the last n passes, newest first.
func (s *Store) RetentionRuns(ctx context.Context, n int) ([]RetentionRun, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT id, site, window_s, cutoff, started, finished, batches, events, bytes, processes,
		links, held, coalesce(error, '') FROM retention_runs ORDER BY id DESC LIMIT ?`, n)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: retention runs: %w", err)
	}
	defer rows.Close()
	var out []RetentionRun
	for rows.Next() {
		var (
			r                       RetentionRun
			window, cutoff, started int64
			finished                sql.NullInt64
		)
		if err := rows.Scan(&r.ID, &r.Site, &window, &cutoff, &started, &finished, &r.Batches, &r.Events, &r.Bytes,
			&r.Processes, &r.Links, &r.Held, &r.Error); err != nil {
			return nil, fmt.Errorf("sqlstore: retention runs: %w", err)
		}
		r.Window, r.Cutoff, r.Started, r.Finished = time.Duration(window)*time.Second, time.Unix(0, cutoff), time.Unix(0, started), fromNano(finished)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: retention runs: %w", err)
	}
	return out, nil
}

// HostsBySite groups the hosts of the fleet registry by site tag ("" for
// hosts that reported none).
func (s *Store) HostsBySite(ctx context.Context) (map[string][]string, error) {
	rows, err := s.ro.QueryContext(ctx, `SELECT agent_id, site_tag FROM hosts ORDER BY site_tag, agent_id`)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: hosts by site: %w", err)
	}
	defer rows.Close()
	out := map[string][]string{}
	for rows.Next() {
		var host, site string
		if err := rows.Scan(&host, &site); err != nil {
			return nil, fmt.Errorf("sqlstore: hosts by site: %w", err)
		}
		out[site] = append(out[site], host)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: hosts by site: %w", err)
	}
	return out, nil
}

// BatchTraces counts, per trace, the events of host's batches seqs that
// belong to a trace: what a purge of them takes from each trace.
func (s *Store) BatchTraces(ctx context.Context, host string, seqs []uint64) (map[string]int, error) {
	out := map[string]int{}
	if len(seqs) == 0 {
		return out, nil
	}
	list, err := seqJSON(seqs)
	if err != nil {
		return nil, err
	}
	parts := make([]string, len(TraceTables))
	for i, t := range TraceTables {
		if t == "mem_snippets" {
			parts[i] = `SELECT NULL, 0 WHERE 0` // a snippet's event has its own row elsewhere
			continue
		}
		parts[i] = `SELECT trace_id, count(*) FROM ` + t + ` WHERE host = ?1 AND batch_seq IN (SELECT value FROM json_each(?2))
			AND trace_id IS NOT NULL GROUP BY trace_id`
	}
	rows, err := s.ro.QueryContext(ctx, strings.Join(parts, "\nUNION ALL\n"), host, list)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: traces of batches of %s: %w", host, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			id sql.NullString
			n  int
		)
		if err := rows.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("sqlstore: traces of batches of %s: %w", host, err)
		}
		if id.Valid {
			out[id.String] += n
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: traces of batches of %s: %w", host, err)
	}
	return out, nil
}
