// Package wal is the store-and-forward queue of agents and proxies: one
// durable, ordered queue per lane on Pebble. A hop acknowledges what it
// received only after Append returns (the write is fsynced); the sender deletes
// an entry when the next hop acknowledges it and replays every entry still
// present after a reconnect or a crash.
//
// Group commit: appends are gathered and written in one Pebble batch with one
// fsync. Trace and alert appends commit at once (carrying any waiting bulk
// with them); bulk-only groups wait up to FsyncInterval so that a busy bulk
// lane pays one fsync per interval rather than one per batch.
package wal

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sys/unix"

	"github.com/evilbitlabs/daemoneye/store"
)

// Lanes are numbered as transport.Lane: 1 trace, 2 alert, 3 bulk.
const (
	LaneTrace = 1
	LaneAlert = 2
	LaneBulk  = 3
	maxLane   = 3
)

// ErrClosed is returned after Close.
var ErrClosed = errors.New("wal closed")

// ErrOverWatermark is returned when a bulk append would go above the high
// disk watermark. Trace and alert are still accepted.
var ErrOverWatermark = errors.New("disk above the high watermark: bulk refused")

// ErrDiskFull is returned, for every lane, when free space is below the hard
// reserve. Nothing is written: the sender keeps the data and retries later.
// Pebble treats a failed WAL write as fatal, so the WAL must never let it
// reach a full disk; this check runs before every group commit.
var ErrDiskFull = errors.New("disk nearly full: below the WAL's free-space reserve")

// Options tune a WAL.
type Options struct {
	// MemTableBytes is Pebble's memtable size; Pebble preallocates each WAL
	// file at 110% of it. Default 4 MiB.
	MemTableBytes int64
	// ReserveBytes is the free space below which every append is refused
	// (ErrDiskFull). Default: three memtables, enough for a WAL rotation and
	// a flush.
	ReserveBytes int64
	// FreeBytes reports the free space of the WAL's filesystem; statfs by
	// default (tests inject their own).
	FreeBytes     func() (int64, error)
	FsyncInterval time.Duration // longest a bulk append waits for its fsync; default 100ms
	// HighWatermark is the fraction of the filesystem in use (0..1) above
	// which bulk appends are refused; 0 means 0.90.
	HighWatermark float64
	// LowWatermark is where bulk is accepted again after going over; 0 means 0.85.
	LowWatermark float64
	// DiskUsage reports the used fraction of the filesystem holding the WAL;
	// statfs of the directory by default (tests inject their own).
	DiskUsage func() (float64, error)
}

// Entry is one queued record.
type Entry struct {
	Lane uint8
	ID   uint64 // per lane, increasing, never reused
	Time int64  // when appended, Unix ns
	Data []byte
}

type pending struct {
	lane uint8
	data []byte
	meta map[string][]byte
	done chan result
}

type result struct {
	id  uint64
	err error
}

// WAL is a set of durable lane queues.
type WAL struct {
	// life is held shared by every call that touches the database and
	// exclusively by Close: a call after Close gets ErrClosed, never a
	// closed Pebble (which panics).
	life   sync.RWMutex
	isShut bool

	db   *pebble.DB
	dir  string
	opts Options
	log  *slog.Logger

	mu     sync.Mutex
	cond   *sync.Cond
	queue  []pending
	urgent bool
	closed bool
	nextID [maxLane + 1]uint64
	// index mirrors each lane's entries (id, time, size) in memory, so
	// deletes and figures never read values back or step over tombstones.
	index   [maxLane + 1]laneIndex
	over    bool // above the high watermark
	commits uint64
	syncs   uint64
	// refusedFull counts appends refused for lack of disk space.
	refusedFull uint64
	done        chan struct{}
	werr        error // a failed commit: every later append fails with it
}

// Open opens or creates the WAL in dir.
func Open(dir string, opts Options, log *slog.Logger) (*WAL, error) {
	if opts.FsyncInterval <= 0 {
		opts.FsyncInterval = 100 * time.Millisecond
	}
	if opts.HighWatermark <= 0 {
		opts.HighWatermark = 0.90
	}
	if opts.LowWatermark <= 0 || opts.LowWatermark > opts.HighWatermark {
		opts.LowWatermark = opts.HighWatermark - 0.05
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("wal: %w", err)
	}
	if opts.DiskUsage == nil {
		opts.DiskUsage = func() (float64, error) { u, _, err := diskSpace(dir); return u, err }
	}
	if opts.FreeBytes == nil {
		opts.FreeBytes = func() (int64, error) { _, f, err := diskSpace(dir); return f, err }
	}
	if opts.MemTableBytes <= 0 {
		opts.MemTableBytes = 4 << 20
	}
	if opts.ReserveBytes <= 0 {
		opts.ReserveBytes = 3 * opts.MemTableBytes
	}
	log = log.With("component", "wal")
	db, err := pebble.Open(dir, &pebble.Options{
		Logger:        store.PebbleLogger(log),
		EventListener: store.PebbleEvents(log),
		MemTableSize:  uint64(opts.MemTableBytes),
		// The commit pipeline syncs only when we ask; we ask once per group.
		BytesPerSync: 1 << 20,
	})
	if err != nil {
		return nil, fmt.Errorf("wal: open %s: %w", dir, err)
	}
	w := &WAL{db: db, dir: dir, opts: opts, log: log, done: make(chan struct{})}
	w.cond = sync.NewCond(&w.mu)
	if err := w.load(); err != nil {
		db.Close()
		return nil, err
	}
	go w.committer()
	go w.reclaimer()
	return w, nil
}

// reclaimer compacts the queues while the disk is above the high watermark:
// acknowledged entries are deleted with tombstones, and only a compaction
// gives their space back, so without it a drained WAL could stay "full"
// and keep refusing bulk forever.
func (w *WAL) reclaimer() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-w.done:
			return
		case <-t.C:
		}
		w.mu.Lock()
		over := w.over
		w.mu.Unlock()
		if !over || w.enter() != nil {
			continue
		}
		if err := w.db.Compact(context.Background(), []byte{'q'}, []byte{'r'}, false); err != nil {
			w.log.Warn("compact to reclaim disk", "err", err)
		}
		w.leave()
		w.mu.Lock()
		w.overWatermark() // re-evaluate now, not at the next bulk append
		w.mu.Unlock()
	}
}

// Keys: 'q' lane id -> time(8) data ; 'm' name -> meta value.
func entryKey(lane uint8, id uint64) []byte {
	k := make([]byte, 10)
	k[0] = 'q'
	k[1] = lane
	binary.BigEndian.PutUint64(k[2:], id)
	return k
}

func laneBounds(lane uint8) (lo, hi []byte) {
	return []byte{'q', lane}, []byte{'q', lane + 1}
}

func metaKey(name string) []byte { return append([]byte{'m'}, name...) }

// idKey persists the last id handed out per lane, so ids are never reused
// even when the lane has been emptied.
func idKey(lane uint8) []byte { return []byte{'i', lane} }

func (w *WAL) load() error {
	for lane := uint8(1); lane <= maxLane; lane++ {
		if v, closer, err := w.db.Get(idKey(lane)); err == nil {
			w.nextID[lane] = binary.BigEndian.Uint64(v) + 1
			closer.Close()
		} else if !errors.Is(err, pebble.ErrNotFound) {
			return fmt.Errorf("wal: read ids: %w", err)
		} else {
			w.nextID[lane] = 1
		}
		lo, hi := laneBounds(lane)
		it, err := w.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
		if err != nil {
			return fmt.Errorf("wal: %w", err)
		}
		for it.First(); it.Valid(); it.Next() {
			k, v := it.Key(), it.Value()
			if len(k) != 10 || len(v) < 8 {
				continue // Scan reports malformed entries to whoever reads them
			}
			w.index[lane].add(binary.BigEndian.Uint64(k[2:]), int64(binary.BigEndian.Uint64(v)), int64(len(v)))
		}
		if err := it.Close(); err != nil {
			return fmt.Errorf("wal: scan lane %d: %w", lane, err)
		}
	}
	return nil
}

// Append queues data on lane and returns once it is durable. meta entries
// (a cursor, a sequence counter) are written in the same atomic batch.
func (w *WAL) Append(lane uint8, data []byte, meta map[string][]byte) (uint64, error) {
	return w.AppendAsync(lane, data, meta).Wait()
}

// Pending is an append in flight.
type Pending struct{ c chan result }

// Wait blocks until the append is durable (or failed) and returns its id.
func (p Pending) Wait() (uint64, error) {
	r := <-p.c
	p.c <- r // Wait may be called again
	return r.id, r.err
}

// AppendAsync queues an append and returns at once. Appends become durable in
// the order they were queued, so a receiver can pipeline many and acknowledge
// them in order as each Wait returns.
func (w *WAL) AppendAsync(lane uint8, data []byte, meta map[string][]byte) Pending {
	done := make(chan result, 1)
	fail := func(err error) Pending {
		done <- result{err: err}
		return Pending{done}
	}
	if lane < 1 || lane > maxLane {
		return fail(fmt.Errorf("wal: bad lane %d", lane))
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return fail(ErrClosed)
	}
	if w.werr != nil {
		return fail(w.werr)
	}
	if lane == LaneBulk && w.overWatermark() {
		return fail(ErrOverWatermark)
	}
	w.queue = append(w.queue, pending{lane: lane, data: data, meta: meta, done: done})
	if lane != LaneBulk {
		w.urgent = true
	}
	w.cond.Broadcast()
	return Pending{done}
}

// overWatermark is checked with hysteresis; the caller holds w.mu.
func (w *WAL) overWatermark() bool {
	used, err := w.opts.DiskUsage()
	if err != nil {
		return false // cannot tell: do not refuse on a guess
	}
	if w.over && used < w.opts.LowWatermark {
		w.over = false
		w.log.Info("disk back under the low watermark: accepting bulk", "used", used)
	} else if !w.over && used >= w.opts.HighWatermark {
		w.over = true
		w.log.Warn("disk above the high watermark: refusing bulk", "used", used)
	}
	return w.over
}

// OverWatermark reports whether bulk is being refused.
func (w *WAL) OverWatermark() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.overWatermark()
}

func (w *WAL) committer() {
	defer close(w.done)
	last := time.Now()
	for {
		w.mu.Lock()
		for len(w.queue) == 0 && !w.closed {
			w.cond.Wait()
		}
		if len(w.queue) == 0 && w.closed {
			w.mu.Unlock()
			return
		}
		// Bulk-only groups wait for the interval to gather more.
		if !w.urgent && !w.closed {
			if wait := w.opts.FsyncInterval - time.Since(last); wait > 0 {
				t := time.AfterFunc(wait, func() {
					w.mu.Lock()
					w.urgent = true
					w.cond.Broadcast()
					w.mu.Unlock()
				})
				for !w.urgent && !w.closed {
					w.cond.Wait()
				}
				t.Stop()
			}
		}
		group := w.queue
		w.queue = nil
		w.urgent = false
		ids := w.nextID
		w.mu.Unlock()

		results := make([]result, len(group))
		var groupBytes int64
		for _, p := range group {
			groupBytes += int64(len(p.data)) + 64
		}
		if free, err := w.opts.FreeBytes(); err == nil && free < w.opts.ReserveBytes+groupBytes {
			w.log.Warn("disk nearly full: refusing appends", "free", free, "reserve", w.opts.ReserveBytes, "refused", len(group))
			w.mu.Lock()
			w.refusedFull += uint64(len(group))
			w.mu.Unlock()
			for _, p := range group {
				p.done <- result{err: ErrDiskFull}
			}
			continue
		}
		b := w.db.NewBatch()
		now := time.Now().UnixNano()
		var added [maxLane + 1]int64
		type addedEntry struct {
			lane     uint8
			id, size uint64
		}
		entries := make([]addedEntry, 0, len(group))
		for i, p := range group {
			id := ids[p.lane]
			ids[p.lane]++
			v := make([]byte, 8+len(p.data))
			binary.BigEndian.PutUint64(v, uint64(now))
			copy(v[8:], p.data)
			b.Set(entryKey(p.lane, id), v, nil)
			for k, mv := range p.meta {
				b.Set(metaKey(k), mv, nil)
			}
			results[i].id = id
			added[p.lane]++
			entries = append(entries, addedEntry{p.lane, id, uint64(len(v))})
		}
		for lane := uint8(1); lane <= maxLane; lane++ {
			if added[lane] > 0 {
				var v [8]byte
				binary.BigEndian.PutUint64(v[:], ids[lane]-1)
				b.Set(idKey(lane), v[:], nil)
			}
		}
		err := b.Commit(pebble.Sync)
		b.Close()
		last = time.Now()

		w.mu.Lock()
		w.commits++
		if err != nil {
			err = fmt.Errorf("wal: commit: %w", err)
			w.log.Error("wal commit failed: refusing further appends", "err", err)
			w.werr = err
		} else {
			w.syncs++
			w.nextID = ids
			for _, e := range entries {
				w.index[e.lane].add(e.id, now, int64(e.size))
			}
		}
		w.cond.Broadcast()
		w.mu.Unlock()
		for i, p := range group {
			if err != nil {
				results[i] = result{err: err}
			}
			p.done <- results[i]
		}
	}
}

// enter guards a database call; leave must follow when it returns nil.
func (w *WAL) enter() error {
	w.life.RLock()
	if w.isShut {
		w.life.RUnlock()
		return ErrClosed
	}
	return nil
}

func (w *WAL) leave() { w.life.RUnlock() }

// Meta returns a value written with Append's meta.
func (w *WAL) Meta(name string) ([]byte, bool, error) {
	if err := w.enter(); err != nil {
		return nil, false, err
	}
	defer w.leave()
	v, closer, err := w.db.Get(metaKey(name))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("wal: meta %s: %w", name, err)
	}
	defer closer.Close()
	return append([]byte(nil), v...), true, nil
}

// SetMeta writes a value durably, outside any append.
func (w *WAL) SetMeta(name string, value []byte) error {
	if err := w.enter(); err != nil {
		return err
	}
	defer w.leave()
	if err := w.db.Set(metaKey(name), value, pebble.Sync); err != nil {
		return fmt.Errorf("wal: meta %s: %w", name, err)
	}
	return nil
}

// Scan calls fn for each entry of lane with ID >= from, in order, until fn
// returns false.
func (w *WAL) Scan(lane uint8, from uint64, fn func(Entry) bool) error {
	if err := w.enter(); err != nil {
		return err
	}
	defer w.leave()
	return w.scan(lane, from, fn)
}

func (w *WAL) scan(lane uint8, from uint64, fn func(Entry) bool) error {
	lo, hi := laneBounds(lane)
	if from > 0 {
		lo = entryKey(lane, from)
	}
	it, err := w.db.NewIter(&pebble.IterOptions{LowerBound: lo, UpperBound: hi})
	if err != nil {
		return fmt.Errorf("wal: %w", err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		k, v := it.Key(), it.Value()
		if len(k) != 10 || len(v) < 8 {
			return fmt.Errorf("wal: lane %d: malformed entry %x", lane, k)
		}
		e := Entry{
			Lane: lane, ID: binary.BigEndian.Uint64(k[2:]),
			Time: int64(binary.BigEndian.Uint64(v)), Data: append([]byte(nil), v[8:]...),
		}
		if !fn(e) {
			break
		}
	}
	return it.Error()
}

// Delete removes acknowledged entries. It does not fsync: if the deletion is
// lost in a crash, the entry is sent again and the receiver drops the
// duplicate.
func (w *WAL) Delete(lane uint8, ids ...uint64) error {
	if len(ids) == 0 {
		return nil
	}
	if err := w.enter(); err != nil {
		return err
	}
	defer w.leave()
	b := w.db.NewBatch()
	defer b.Close()
	w.mu.Lock()
	var gone []uint64
	for _, id := range ids {
		if w.index[lane].remove(id) {
			gone = append(gone, id) // a duplicate ack or id finds nothing to remove
		}
	}
	w.mu.Unlock()
	for _, id := range gone {
		b.Delete(entryKey(lane, id), nil)
	}
	if err := b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("wal: delete: %w", err)
	}
	return nil
}

// DropOldest deletes the n oldest entries of lane (an agent under pressure
// sheds bulk this way) and returns how many it deleted.
func (w *WAL) DropOldest(lane uint8, n int) (int, error) {
	if lane < 1 || lane > maxLane {
		return 0, fmt.Errorf("wal: bad lane %d", lane)
	}
	w.mu.Lock()
	ids := w.index[lane].oldestIDs(n)
	w.mu.Unlock()
	return len(ids), w.Delete(lane, ids...)
}

// LaneStats describe one lane.
type LaneStats struct {
	Entries int64
	Bytes   int64
	Oldest  time.Duration // age of the oldest entry; 0 when empty
}

// Stats describe the WAL.
type Stats struct {
	Lanes       map[uint8]LaneStats
	DiskBytes   int64
	Commits     uint64
	Over        bool
	RefusedFull uint64 // appends refused for lack of disk space
}

// Stats returns queue depth and age per lane and the disk the WAL uses.
func (w *WAL) Stats() Stats {
	if err := w.enter(); err != nil {
		return Stats{Lanes: map[uint8]LaneStats{}}
	}
	defer w.leave()
	w.mu.Lock()
	defer w.mu.Unlock()
	st := Stats{Lanes: map[uint8]LaneStats{}, Commits: w.commits, Over: w.over, RefusedFull: w.refusedFull}
	now := time.Now().UnixNano()
	for lane := uint8(1); lane <= maxLane; lane++ {
		x := &w.index[lane]
		ls := LaneStats{Entries: int64(len(x.live)), Bytes: x.bytes}
		if t, ok := x.oldestTime(); ok {
			ls.Oldest = time.Duration(now - t)
		}
		st.Lanes[lane] = ls
	}
	m := w.db.Metrics()
	st.DiskBytes = int64(m.DiskSpaceUsage())
	return st
}

// Close stops accepting, commits what is queued, and closes the database.
func (w *WAL) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	w.cond.Broadcast()
	w.mu.Unlock()
	<-w.done
	w.life.Lock()
	defer w.life.Unlock()
	w.isShut = true
	return w.db.Close()
}

// diskSpace returns the used fraction and the free bytes of dir's filesystem.
func diskSpace(dir string) (used float64, free int64, err error) {
	var s unix.Statfs_t
	if err := unix.Statfs(dir, &s); err != nil {
		return 0, 0, err
	}
	free = int64(s.Bavail) * int64(s.Bsize)
	if s.Blocks == 0 {
		return 0, free, nil
	}
	return 1 - float64(s.Bavail)/float64(s.Blocks), free, nil
}

type entryMeta struct{ time, size int64 }

// laneIndex is the in-memory mirror of one lane: ids in append order (with
// deleted ones dropped lazily from the front) and the live entries.
type laneIndex struct {
	ids   []uint64
	live  map[uint64]entryMeta
	bytes int64
}

func (x *laneIndex) add(id uint64, t, size int64) {
	if x.live == nil {
		x.live = map[uint64]entryMeta{}
	}
	x.ids = append(x.ids, id)
	x.live[id] = entryMeta{t, size}
	x.bytes += size
}

func (x *laneIndex) remove(id uint64) bool {
	m, ok := x.live[id]
	if !ok {
		return false
	}
	delete(x.live, id)
	x.bytes -= m.size
	x.trim()
	return true
}

// trim drops deleted ids from the front, so the oldest is ids[0].
func (x *laneIndex) trim() {
	i := 0
	for i < len(x.ids) {
		if _, ok := x.live[x.ids[i]]; ok {
			break
		}
		i++
	}
	if i > 0 {
		x.ids = x.ids[i:]
	}
	if len(x.ids) == 0 {
		x.ids = nil // let the backing array go
	}
}

func (x *laneIndex) oldestTime() (int64, bool) {
	if len(x.ids) == 0 {
		return 0, false
	}
	return x.live[x.ids[0]].time, true
}

func (x *laneIndex) oldestIDs(n int) []uint64 {
	var out []uint64
	for _, id := range x.ids {
		if len(out) >= n {
			break
		}
		if _, ok := x.live[id]; ok {
			out = append(out, id)
		}
	}
	return out
}
