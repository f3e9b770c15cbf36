package loadgen

// The check, once every node has stopped: the center's batch store (its
// Pebble database, opened read-only) must hold exactly the batch seqs
// 1..n of each agent that queued n, its SQL store the same batches and
// every event once, and nothing may have been shed or refused on the way.

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"

	"github.com/cockroachdb/pebble/v2"

	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

func (r *run) check(ctx context.Context) error {
	res := r.res
	var problems []string
	queued := map[string]uint64{}
	for _, a := range r.agents {
		s := a.ship.Stats()
		queued[a.name] = s.Batches
		res.Batches += s.Batches
		res.Events += s.Events
		res.Emitted += a.emitted.Load()
		res.ShedBatches += s.Dropped
		res.TraceStarted += a.started.Load()
		res.TraceRefused += a.refused.Load()
		if s.Dropped > 0 {
			problems = append(problems, fmt.Sprintf("%s: %d bulk batches shed", a.name, s.Dropped))
		}
		if s.Events != a.emitted.Load() {
			problems = append(problems, fmt.Sprintf("%s: %d events stored, %d shipped", a.name, a.emitted.Load(), s.Events))
		}
		if e := a.errs.Load(); e > 0 {
			problems = append(problems, fmt.Sprintf("%s: %d store errors", a.name, e))
		}
	}

	// The batch store.
	stored, events, err := readBatchStore(filepath.Join(r.o.Dir, "center", "batches"))
	if err != nil {
		return fmt.Errorf("read the center's batch store: %w", err)
	}
	res.StoreEvents = events
	for name, seqs := range stored {
		res.StoreBatches += uint64(len(seqs))
		if _, ok := queued[name]; !ok {
			problems = append(problems, "the batch store holds batches of unknown agent "+name)
		}
	}
	for _, a := range r.agents {
		seqs, n := stored[a.name], queued[a.name]
		ok := uint64(len(seqs)) == n
		for i, q := range seqs {
			if q != uint64(i+1) {
				ok = false
				break
			}
		}
		if !ok {
			problems = append(problems, fmt.Sprintf("%s: queued batches 1..%d, the batch store has %d (first %v)", a.name, n, len(seqs), seqs[:min(len(seqs), 3)]))
			have := map[uint64]bool{}
			for _, q := range seqs {
				have[q] = true
			}
			for q := uint64(1); q <= n; q++ {
				if !have[q] {
					res.LostBatches++
				}
			}
		}
	}
	if res.StoreEvents != res.Events {
		problems = append(problems, fmt.Sprintf("the batch store holds %d events, the agents shipped %d", res.StoreEvents, res.Events))
	}

	// The SQL store.
	db, err := openSQL(filepath.Join(r.o.Dir, "center", "center.db"))
	if err != nil {
		return err
	}
	defer db.Close()
	rows, err := db.QueryContext(ctx, `SELECT host, count(*), min(seq), max(seq), sum(events) FROM batches GROUP BY host`)
	if err != nil {
		return fmt.Errorf("read the center's SQL store: %w", err)
	}
	seen := map[string]bool{}
	for rows.Next() {
		var host string
		var n, lo, hi, ev uint64
		if err := rows.Scan(&host, &n, &lo, &hi, &ev); err != nil {
			rows.Close()
			return err
		}
		seen[host] = true
		res.SQLBatches += n
		res.SQLEvents += ev
		if q, ok := queued[host]; !ok {
			problems = append(problems, "SQL holds batches of unknown agent "+host)
		} else if n != q || lo != 1 || hi != q {
			problems = append(problems, fmt.Sprintf("%s: queued batches 1..%d, SQL has %d (%d..%d)", host, q, n, lo, hi))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for name, q := range queued {
		if !seen[name] && q > 0 {
			problems = append(problems, fmt.Sprintf("%s: queued %d batches, SQL has none", name, q))
		}
	}
	// Every event is one row of one of these tables.
	if err := db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM process_events) + (SELECT count(*) FROM network_events)
		+ (SELECT count(*) FROM trace_notes)`).Scan(&res.SQLRows); err != nil {
		return err
	}
	if res.SQLEvents != res.Events || res.SQLRows != res.Events {
		problems = append(problems, fmt.Sprintf("SQL: %d events in its batches, %d event rows; the agents shipped %d", res.SQLEvents, res.SQLRows, res.Events))
	}

	// Refusals on the way: each is logged (warn) by the node that refused.
	res.Refused = countLines(r.center.logPath, "batch refused")
	for _, p := range r.proxies() {
		res.Rejected += countLines(p.logPath, "parent refused a batch for good")
	}
	if res.Refused > 0 || res.Rejected > 0 {
		problems = append(problems, fmt.Sprintf("%d batches refused at the center, %d upstream of a proxy (see the logs in %s)",
			res.Refused, res.Rejected, filepath.Join(r.o.Dir, "logs")))
	}
	if len(problems) > 10 {
		problems = append(problems[:10], fmt.Sprintf("and %d more", len(problems)-10))
	}
	if len(problems) > 0 {
		res.Check = fmt.Sprint(problems)
	}
	return nil
}

// readBatchStore lists every (agent, seq) in the center's batch store and
// counts the events of the batches.
func readBatchStore(dir string) (map[string][]uint64, uint64, error) {
	db, err := pebble.Open(dir, &pebble.Options{ReadOnly: true, Logger: store.PebbleLogger(slog.New(slog.DiscardHandler))})
	if err != nil {
		return nil, 0, err
	}
	defer db.Close()
	it, err := db.NewIter(&pebble.IterOptions{LowerBound: []byte{'b'}, UpperBound: []byte{'c'}})
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	out := map[string][]uint64{}
	var events uint64
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) < 9 || k[len(k)-9] != 0 {
			return nil, 0, fmt.Errorf("malformed batch key %q", it.Key())
		}
		agent := string(k[:len(k)-9])
		seq := binary.BigEndian.Uint64(k[len(k)-8:])
		info, err := wire.PeekInfo(it.Value())
		if err != nil {
			return nil, 0, fmt.Errorf("batch %s/%d: %w", agent, seq, err)
		}
		if info.AgentID != agent || info.Seq != seq {
			return nil, 0, fmt.Errorf("batch stored as %s/%d says %s/%d", agent, seq, info.AgentID, info.Seq)
		}
		out[agent] = append(out[agent], seq)
		events += uint64(info.Events)
	}
	for _, s := range out {
		if !slices.IsSorted(s) {
			return nil, 0, errors.New("batch keys out of order")
		}
	}
	return out, events, it.Error()
}

// countLines counts the lines of a log holding s.
func countLines(path, s string) int {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n := 0
	for line := range bytes.Lines(b) {
		if bytes.Contains(line, []byte(s)) {
			n++
		}
	}
	return n
}
