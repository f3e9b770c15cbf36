package store

import (
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/evilbitlabs/daemoneye/capture"
)

// retainChunk bounds the keys one retention batch deletes, and so the memory
// Retain needs however far behind it is.
const retainChunk = 1 << 15

// RetainStats says what one Retain call deleted.
type RetainStats struct {
	EventsByAge  int    `json:"events_by_age"`  // older than RetainAge
	EventsBySize int    `json:"events_by_size"` // oldest, to get under RetainBytes
	EventBytes   uint64 `json:"event_bytes"`    // summed size of the deleted event values
	Processes    int    `json:"processes"`      // exited longer than ExitedRetain ago
	// ProcessesKept were due but still have children in the table; they stay
	// so that a live process keeps its whole lineage.
	ProcessesKept int `json:"processes_kept"`
}

// Retain deletes events older than RetainAge, then the oldest events until the
// stored event bytes are at most RetainBytes, then process entries that exited
// more than ExitedRetain before now (except those with children still in the
// table). It runs in batches of bounded size.
func (l *Local) Retain(now time.Time) (RetainStats, error) {
	var st RetainStats
	if err := l.enter(true); err != nil {
		return st, err
	}
	defer l.leave()
	l.wmu.Lock()
	defer l.wmu.Unlock()

	cutoff := unixNano(now.Add(-l.opts.RetainAge))
	for {
		n, err := l.retainEventsChunk(cutoff, &st)
		if err != nil {
			return st, err
		}
		if n < retainChunk {
			break
		}
	}
	pcut := unixNano(now.Add(-l.opts.ExitedRetain))
	var resume []byte
	for {
		next, err := l.retainProcsChunk(pcut, resume, &st)
		if err != nil {
			return st, err
		}
		if next == nil {
			break
		}
		resume = next
	}
	if st.EventsByAge+st.EventsBySize+st.Processes > 0 {
		l.log.Debug("retention", "events_by_age", st.EventsByAge, "events_by_size", st.EventsBySize,
			"event_bytes", st.EventBytes, "processes", st.Processes, "processes_kept", st.ProcessesKept)
	}
	return st, nil
}

// retainEventsChunk deletes up to retainChunk events from the old end of the
// time index and returns how many it deleted.
func (l *Local) retainEventsChunk(cutoff int64, st *RetainStats) (int, error) {
	it, err := l.db.NewIter(spaceBounds(spaceTime))
	if err != nil {
		return 0, fmt.Errorf("retain: %w", err)
	}
	var (
		seqs           []uint64
		freed          uint64
		byAge, bySize  int
		lastKey        []byte
		remainingBytes = l.bytes
	)
scan:
	for it.First(); it.Valid() && len(seqs) < retainChunk; it.Next() {
		t, seq, ok := parseTimeKey(it.Key())
		if !ok {
			continue
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return 0, fmt.Errorf("retain: %w", err)
		}
		size, n := binary.Uvarint(v)
		if n <= 0 {
			size = 0 // unreadable size: count nothing rather than underflow
		}
		switch {
		case t < cutoff:
			byAge++
		case remainingBytes > uint64(l.opts.RetainBytes):
			bySize++
		default:
			break scan
		}
		seqs = append(seqs, seq)
		freed += size
		remainingBytes -= min(size, remainingBytes)
		lastKey = append(lastKey[:0], it.Key()...)
	}
	if err := it.Close(); err != nil {
		return 0, fmt.Errorf("retain: %w", err)
	}
	if len(seqs) == 0 {
		return 0, nil
	}
	b := l.db.NewBatch()
	defer b.Close()
	// The deleted entries are a prefix of the time index: one range tombstone.
	if err := b.DeleteRange([]byte{spaceTime}, append(lastKey, 0), nil); err != nil {
		return 0, fmt.Errorf("retain: %w", err)
	}
	if err := l.deleteSeqs(b, seqs); err != nil {
		return 0, err
	}
	events := l.events - min(uint64(len(seqs)), l.events)
	bytes := l.bytes - min(freed, l.bytes)
	b.Set(metaEvents, putUint64(events), nil)
	b.Set(metaBytes, putUint64(bytes), nil)
	if err := b.Commit(l.wo); err != nil {
		return 0, fmt.Errorf("retain %d events: %w", len(seqs), err)
	}
	l.events, l.bytes = events, bytes
	st.EventsByAge += byAge
	st.EventsBySize += bySize
	st.EventBytes += freed
	return len(seqs), nil
}

// deleteSeqs deletes the events with the given seqs. Events are usually
// stored in time order, so the seqs form long runs with no surviving event
// between them; each run becomes one range tombstone instead of a point
// tombstone per event.
func (l *Local) deleteSeqs(b *pebble.Batch, seqs []uint64) error {
	sort.Slice(seqs, func(i, j int) bool { return seqs[i] < seqs[j] })
	it, err := l.db.NewIter(&pebble.IterOptions{
		LowerBound: eventKey(seqs[0]),
		UpperBound: eventKey(seqs[len(seqs)-1] + 1),
	})
	if err != nil {
		return fmt.Errorf("retain: %w", err)
	}
	emit := func(lo, hi uint64) error {
		if lo == hi {
			return b.Delete(eventKey(lo), nil)
		}
		return b.DeleteRange(eventKey(lo), eventKey(hi+1), nil)
	}
	lo, hi := seqs[0], seqs[0]
	it.SeekGE(eventKey(lo))
	it.Next()
	for _, s := range seqs[1:] {
		if s == hi {
			continue // duplicate in the index; cannot happen, costs nothing
		}
		if it.Valid() && nextIs(it.Key(), s) {
			// The next surviving key is the next one to delete: extend the run.
			hi = s
			it.Next()
			continue
		}
		if err := emit(lo, hi); err != nil {
			it.Close()
			return fmt.Errorf("retain: %w", err)
		}
		lo, hi = s, s
		it.SeekGE(eventKey(s))
		it.Next()
	}
	if err := emit(lo, hi); err != nil {
		it.Close()
		return fmt.Errorf("retain: %w", err)
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("retain: %w", err)
	}
	return nil
}

func nextIs(key []byte, seq uint64) bool {
	cur, ok := seqOfEventKey(key)
	return ok && cur == seq
}

// retainProcsChunk deletes entries that exited before cutoff, reading up to
// retainChunk of them from the exited index starting after resume. It returns
// where the next chunk starts, or nil when the index is done.
func (l *Local) retainProcsChunk(cutoff int64, resume []byte, st *RetainStats) ([]byte, error) {
	lower := []byte{spaceExited}
	if resume != nil {
		lower = resume
	}
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: lower, UpperBound: exitedPrefix(cutoff)})
	if err != nil {
		return nil, fmt.Errorf("retain processes: %w", err)
	}
	type cand struct {
		key    capture.ProcKey
		parent capture.ProcKey
		xkey   []byte
	}
	var (
		cands []cand
		index = map[capture.ProcKey]int{}
		next  []byte
	)
	for it.First(); it.Valid(); it.Next() {
		if len(cands) == retainChunk {
			next = append([]byte(nil), it.Key()...)
			break
		}
		k := it.Key()
		if len(k) != 1+8+procKeyLen {
			continue
		}
		c := cand{key: getProcKey(k[9:]), xkey: append([]byte(nil), k...)}
		if v, err := it.ValueAndErr(); err == nil && len(v) == procKeyLen {
			c.parent = getProcKey(v)
		}
		index[c.key] = len(cands)
		cands = append(cands, c)
	}
	if err := it.Close(); err != nil {
		return nil, fmt.Errorf("retain processes: %w", err)
	}
	if len(cands) == 0 {
		return nil, nil
	}

	// An entry may go only when every child it has in the table goes too,
	// so a live process never loses an ancestor. 0 unknown, 1 deletable,
	// 2 kept, 3 being decided (a cycle: treat as deletable).
	state := make([]uint8, len(cands))
	kids := make([][]int, len(cands))
	for i, c := range cands {
		cit, err := l.db.NewIter(prefixBounds(procSpaceKey(spaceChildren, c.key)))
		if err != nil {
			return nil, fmt.Errorf("retain processes: %w", err)
		}
		for cit.First(); cit.Valid(); cit.Next() {
			j, ok := index[getProcKey(cit.Key()[1+procKeyLen:])]
			if !ok {
				state[i] = 2 // a child that is alive or not yet due
				break
			}
			kids[i] = append(kids[i], j)
		}
		if err := cit.Close(); err != nil {
			return nil, fmt.Errorf("retain processes: %w", err)
		}
	}
	var decide func(i int) bool
	decide = func(i int) bool {
		switch state[i] {
		case 1, 3:
			return true
		case 2:
			return false
		}
		state[i] = 3
		for _, j := range kids[i] {
			if !decide(j) {
				state[i] = 2
				return false
			}
		}
		state[i] = 1
		return true
	}

	b := l.db.NewBatch()
	defer b.Close()
	deleted, kept := 0, 0
	for i, c := range cands {
		if !decide(i) {
			kept++
			continue
		}
		b.Delete(procSpaceKey(spaceProc, c.key), nil)
		// The live index key holds the exit if the entry was stored
		// before the process exited; a blind delete is cheaper than a
		// read to find out.
		b.Delete(procSpaceKey(spaceLive, c.key), nil)
		b.Delete(c.xkey, nil)
		if !c.parent.IsZero() {
			b.Delete(childKey(c.parent, c.key), nil)
		}
		deleted++
	}
	if deleted > 0 {
		if err := b.Commit(l.wo); err != nil {
			return nil, fmt.Errorf("retain %d processes: %w", deleted, err)
		}
		l.exited -= int64(deleted)
	}
	st.Processes += deleted
	st.ProcessesKept += kept
	return next, nil
}

// Stats are the store's figures.
type Stats struct {
	Events          uint64 `json:"events"`
	EventBytes      uint64 `json:"event_bytes"` // summed size of stored event values
	FirstSeq        uint64 `json:"first_seq"`   // 0 when no event is stored
	LastSeq         uint64 `json:"last_seq"`    // last seq assigned, stored or not
	LiveProcesses   int64  `json:"live_processes"`
	ExitedProcesses int64  `json:"exited_processes"`
	DiskBytes       uint64 `json:"disk_bytes"` // Pebble's files, all key spaces
}

// Stats returns the store's figures.
func (l *Local) Stats() (Stats, error) {
	if err := l.enter(false); err != nil {
		return Stats{}, err
	}
	defer l.leave()
	l.wmu.Lock()
	st := Stats{
		Events: l.events, EventBytes: l.bytes, LastSeq: l.lastSeq,
		LiveProcesses: l.live, ExitedProcesses: l.exited,
	}
	l.wmu.Unlock()
	first, ok, err := l.edgeSeq(l.db, true)
	if err != nil {
		return st, err
	}
	if ok {
		st.FirstSeq = first
	}
	st.DiskBytes = l.db.Metrics().DiskSpaceUsage()
	return st, nil
}
