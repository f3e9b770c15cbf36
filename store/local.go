package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/evilbitlabs/daemoneye/capture"
)

// Defaults for LocalOptions left zero.
const (
	DefaultRetainAge    = 7 * 24 * time.Hour
	DefaultRetainBytes  = 1 << 30
	DefaultExitedRetain = time.Hour
)

// Pebble memory: the agent's whole RSS target is below 64 MiB, so the block
// cache and memtables are kept small. Pebble reserves the memory of live and
// flushing memtables out of the block cache, so CacheSize must cover both:
// with a plain 8 MiB CacheSize the two queued 4 MiB memtables left no room
// for blocks at all (hit rate under 1%, and Append 5x slower).
const (
	cacheBytes     = 8 << 20
	memTableBytes  = 4 << 20
	memTableQueued = 2 // Pebble's MemTableStopWritesThreshold default
	maxOpenFiles   = 256
	// liveCacheBytes bounds the in-memory copy of live process entries:
	// about 20,000 processes at ~400 bytes each (struct, map slot, strings).
	liveCacheBytes = 8 << 20
	// newKeysMax bounds the keys kept to tell a new process from a known one
	// without a read (under 1 MiB): at 1,500 forks a second, 10 seconds.
	newKeysMax = 1 << 14
)

// Compaction. The process table and its children and live indexes are keyed
// by pid, so each flush scatters their changes over the whole key range, and
// merging them into the level below rewrites all of it (the events and the
// time index, in contrast, only ever grow at the end). With Pebble's default
// of compacting L0 at 4 sublevels, rewriting the table was half of the
// store's CPU; letting 16 flushes' worth collect first cuts that rewriting by
// about 2.5x, at the cost of reads looking through more L0 files (Append
// reads the table only for processes missing from the live cache).
const (
	l0CompactionThreshold = 16
	l0StopWritesThreshold = 48 // Pebble's default ratio to the above is 3
)

// Bounds on queries that walk the process graph, so that a corrupt or cyclic
// table cannot make one request unbounded.
const (
	maxAncestors   = 4096
	maxDescendants = 1 << 16
	defaultDepth   = 64
)

var (
	// ErrLocked is returned by OpenLocal and OpenLocalReadOnly when another
	// process (normally the running agent) holds the store. Pebble locks the
	// directory exclusively even for a read-only open.
	ErrLocked = errors.New("store is locked by a running agent: query the agent through its socket instead")
	// ErrReadOnly is returned by writes on a store opened with OpenLocalReadOnly.
	ErrReadOnly = errors.New("store is open read-only")
	// ErrClosed is returned by any call after Close.
	ErrClosed = errors.New("store is closed")
)

// LocalOptions configure a Local store. Zero fields take the defaults.
type LocalOptions struct {
	// RetainAge is how long events are kept (DefaultRetainAge).
	RetainAge time.Duration
	// RetainBytes bounds the summed size of stored event values
	// (DefaultRetainBytes). Indexes, the process table and Pebble's own
	// overhead come on top; see Stats.DiskBytes for the real footprint.
	RetainBytes int64
	// ExitedRetain is how long an exited process stays in the table
	// (DefaultExitedRetain).
	ExitedRetain time.Duration
	// Sync makes every Append wait for fsync. Without it an Append is
	// durable only after the next Flush (the agent group-commits with Flush
	// before it ships events upstream).
	Sync bool
	// Now is the clock for what has no time of its own (Seed marking
	// processes exited). Defaults to time.Now.
	Now func() time.Time

	// fs replaces the filesystem in tests (a crashable in-memory FS).
	fs vfs.FS
	// liveCacheBytes replaces liveCacheBytes in tests (negative: no cache,
	// so that every lookup goes to Pebble).
	liveCacheBytes int
}

func (o LocalOptions) withDefaults() LocalOptions {
	if o.RetainAge <= 0 {
		o.RetainAge = DefaultRetainAge
	}
	if o.RetainBytes <= 0 {
		o.RetainBytes = DefaultRetainBytes
	}
	if o.ExitedRetain <= 0 {
		o.ExitedRetain = DefaultExitedRetain
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.fs == nil {
		o.fs = vfs.Default
	}
	return o
}

// Local is the agent's event store and process table on Pebble. It is safe
// for concurrent use; writes are serialized.
type Local struct {
	dir      string
	opts     LocalOptions
	log      *slog.Logger
	db       *pebble.DB
	lock     *pebble.Lock
	wo       *pebble.WriteOptions
	readOnly bool

	// rw is held shared by every call and exclusively by Close, so no call
	// ever touches a closed Pebble (which panics).
	rw     sync.RWMutex
	closed bool

	// wmu serializes writers: Append, Seed and Retain read the table, decide,
	// and write, and the counters below must follow exactly.
	wmu     sync.Mutex
	lastSeq uint64
	events  uint64 // stored events
	bytes   uint64 // summed size of stored event values
	live    int64  // entries in the live index
	exited  int64  // entries in the exited index
	table   *tableMem
	tx      *tableTx      // Append's, reused
	scratch appendScratch // Append's, reused

	// The trace and alert events stored since open (urgent.go).
	urgentMu    sync.Mutex
	urgent      []UrgentRef
	urgentFloor uint64
}

// OpenLocal opens (creating it if needed) the store in dir for writing.
func OpenLocal(dir string, opts LocalOptions, log *slog.Logger) (*Local, error) {
	return openLocal(dir, opts, log, false)
}

// OpenLocalReadOnly opens the store in dir for inspection by another process
// (the CLI while the agent is stopped).
//
// Pebble v2 takes the directory's LOCK file (an exclusive fcntl lock) on every
// Open, ReadOnly included, so a read-only open cannot run beside the agent:
// it fails with ErrLocked and the caller should ask the agent through its
// socket instead. While a read-only open holds the store the agent cannot
// start either, so inspectors should Close promptly.
func OpenLocalReadOnly(dir string) (*Local, error) {
	return openLocal(dir, LocalOptions{}, nil, true)
}

func openLocal(dir string, opts LocalOptions, log *slog.Logger, readOnly bool) (*Local, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "store")
	opts = opts.withDefaults()
	fsys := opts.fs
	if readOnly {
		if _, err := fsys.Stat(dir); err != nil {
			return nil, fmt.Errorf("open store %s: %w", dir, err)
		}
	} else if err := fsys.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create store dir: %w", err)
	}
	// Taking the lock ourselves lets us tell "someone else has it" apart
	// from every other failure; Pebble then reuses it through Options.Lock.
	lock, err := pebble.LockDirectory(dir, fsys)
	if err != nil {
		if lockHeld(err) {
			return nil, fmt.Errorf("open store %s: %w", dir, ErrLocked)
		}
		return nil, fmt.Errorf("lock store %s: %w", dir, err)
	}
	po := &pebble.Options{
		FS:                          fsys,
		Lock:                        lock,
		ReadOnly:                    readOnly,
		ErrorIfNotExists:            readOnly,
		CacheSize:                   cacheBytes + memTableQueued*memTableBytes,
		MemTableSize:                memTableBytes,
		MemTableStopWritesThreshold: memTableQueued,
		FlushSplitBytes:             1 << 20,
		L0CompactionThreshold:       l0CompactionThreshold,
		L0StopWritesThreshold:       l0StopWritesThreshold,
		MaxOpenFiles:                maxOpenFiles,
		FormatMajorVersion:          pebble.FormatNewest,
		Logger:                      pebbleLogger{log.With("engine", "pebble")},
		EventListener:               eventListener(log.With("engine", "pebble")),
	}
	// Bloom filters: a lookup of an absent process (a child whose fork the
	// live cache and newKeys cannot rule out) would otherwise read a data
	// block of every L0 table and level.
	for i := range po.Levels {
		po.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	po.Experimental.SpanPolicyFunc = spacePolicy
	db, err := pebble.Open(dir, po)
	if err != nil {
		lock.Close()
		if readOnly && errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("open store %s: no store there: %w", dir, err)
		}
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	l := &Local{dir: dir, opts: opts, log: log, db: db, lock: lock, readOnly: readOnly, wo: pebble.NoSync}
	if opts.Sync {
		l.wo = pebble.Sync
	}
	if err := l.load(); err != nil {
		db.Close()
		lock.Close()
		return nil, fmt.Errorf("open store %s: %w", dir, err)
	}
	l.urgentFloor = l.lastSeq // the urgent list knows only what is stored from now on
	log.Debug("store opened", "dir", dir, "read_only", readOnly, "last_seq", l.lastSeq,
		"events", l.events, "event_bytes", l.bytes, "live", l.live, "exited", l.exited)
	return l, nil
}

// spacePolicy ends every sstable at a key space boundary, so that a table
// holds one space. Events and their time index only grow at the end: kept
// apart from the process table, their new tables overlap nothing below and
// stay out of the table's compactions, which otherwise spanned every space
// and rewrote the events with it.
func spacePolicy(start []byte) (pebble.SpanPolicy, []byte, error) {
	if len(start) == 0 || start[0] == 0xff {
		return pebble.SpanPolicy{}, nil, nil
	}
	return pebble.SpanPolicy{}, []byte{start[0] + 1}, nil
}

// lockHeld reports whether err from locking means another holder. Within
// one process Pebble refuses a second lock itself; across processes fcntl
// fails with EAGAIN or EACCES.
func lockHeld(err error) bool {
	return errors.Is(err, syscall.EAGAIN) || errors.Is(err, syscall.EACCES) ||
		strings.Contains(err.Error(), "lock held by current process")
}

// load reads the counters and checks the layout version.
func (l *Local) load() error {
	v, err := l.getMeta(metaVersion)
	switch {
	case errors.Is(err, pebble.ErrNotFound):
		if !l.readOnly {
			if err := l.db.Set(metaVersion, putUint64(formatVersion), pebble.Sync); err != nil {
				return fmt.Errorf("write format version: %w", err)
			}
		}
	case err != nil:
		return fmt.Errorf("read format version: %w", err)
	case v != formatVersion:
		return fmt.Errorf("store format version %d, this build reads %d", v, formatVersion)
	}
	for _, m := range []struct {
		key []byte
		dst *uint64
	}{{metaLastSeq, &l.lastSeq}, {metaEvents, &l.events}, {metaBytes, &l.bytes}} {
		v, err := l.getMeta(m.key)
		if err != nil && !errors.Is(err, pebble.ErrNotFound) {
			return fmt.Errorf("read %s: %w", m.key[1:], err)
		}
		*m.dst = v
	}
	// The counter and the events are written in one batch, so they agree;
	// taking the larger of the two still guards against ever reusing a seq.
	if last, ok, err := l.edgeSeq(l.db, false); err != nil {
		return err
	} else if ok && last > l.lastSeq {
		l.log.Warn("seq counter behind stored events", "counter", l.lastSeq, "last_event", last)
		l.lastSeq = last
	}
	// Every table entry is in the live or the exited index, so these scans
	// also find the newest start in the table. Live index keys with an exit
	// record are exited (and in the exited index): not counted as live.
	// The same scans fill the filter of every key in the table.
	liveMax, exitedMax := uint64(0), uint64(0)
	all := newKeyFilter(0)
	if l.live, liveMax, err = scanIndex(l.db, spaceLive, 1, isLive, all.add); err != nil {
		return err
	}
	if l.exited, exitedMax, err = scanIndex(l.db, spaceExited, 1+8, nil, all.add); err != nil {
		return err
	}
	liveBytes := liveCacheBytes
	if l.opts.liveCacheBytes != 0 {
		liveBytes = max(l.opts.liveCacheBytes, 0)
	}
	l.table = &tableMem{live: newLiveCache(liveBytes), keys: newNewKeys(max(liveMax, exitedMax), newKeysMax)}
	l.table.keys.all = all
	l.tx = newTableTx(l.db, l.table, l.opts.Now)
	if !l.readOnly {
		return l.table.live.fill(l.db)
	}
	return nil
}

// scanIndex counts the keys of a process index whose procKey starts at
// offset (those whose value passes count, if not nil), hands each procKey
// to each, and returns the largest start among all its keys.
func scanIndex(r pebble.Reader, space byte, offset int, count func([]byte) bool, each func(capture.ProcKey)) (n int64, maxStart uint64, err error) {
	it, err := r.NewIter(spaceBounds(space))
	if err != nil {
		return 0, 0, err
	}
	for it.First(); it.Valid(); it.Next() {
		if k := it.Key(); len(k) == offset+procKeyLen {
			pk := getProcKey(k[offset:])
			maxStart = max(maxStart, pk.Start)
			each(pk)
		}
		if count != nil {
			v, err := it.ValueAndErr()
			if err != nil {
				it.Close()
				return 0, 0, fmt.Errorf("scan %c keys: %w", space, err)
			}
			if !count(v) {
				continue
			}
		}
		n++
	}
	if err := it.Close(); err != nil {
		return 0, 0, fmt.Errorf("count %c keys: %w", space, err)
	}
	return n, maxStart, nil
}

func (l *Local) getMeta(key []byte) (uint64, error) {
	v, closer, err := l.db.Get(key)
	if err != nil {
		return 0, err
	}
	defer closer.Close()
	return readUint64(v)
}

func countSpace(r pebble.Reader, space byte) (int64, error) {
	it, err := r.NewIter(spaceBounds(space))
	if err != nil {
		return 0, err
	}
	var n int64
	for it.First(); it.Valid(); it.Next() {
		n++
	}
	if err := it.Close(); err != nil {
		return 0, fmt.Errorf("count %c keys: %w", space, err)
	}
	return n, nil
}

func spaceBounds(space byte) *pebble.IterOptions {
	return &pebble.IterOptions{LowerBound: []byte{space}, UpperBound: []byte{space + 1}}
}

func prefixBounds(p []byte) *pebble.IterOptions {
	return &pebble.IterOptions{LowerBound: p, UpperBound: prefixEnd(p)}
}

// edgeSeq returns the first (or last) stored event seq.
func (l *Local) edgeSeq(r pebble.Reader, first bool) (uint64, bool, error) {
	it, err := r.NewIter(spaceBounds(spaceEvent))
	if err != nil {
		return 0, false, err
	}
	var ok bool
	if first {
		ok = it.First()
	} else {
		ok = it.Last()
	}
	var seq uint64
	if ok {
		seq, ok = seqOfEventKey(it.Key())
	}
	if err := it.Close(); err != nil {
		return 0, false, fmt.Errorf("read event bounds: %w", err)
	}
	return seq, ok, nil
}

// Close releases the store. Calls after Close return ErrClosed.
func (l *Local) Close() error {
	l.rw.Lock()
	defer l.rw.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	err := l.db.Close()
	if lerr := l.lock.Close(); err == nil && lerr != nil {
		err = lerr
	}
	if err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// enter takes the shared lock for one call.
func (l *Local) enter(write bool) error {
	l.rw.RLock()
	if l.closed {
		l.rw.RUnlock()
		return ErrClosed
	}
	if write && l.readOnly {
		l.rw.RUnlock()
		return ErrReadOnly
	}
	return nil
}

func (l *Local) leave() { l.rw.RUnlock() }

// Flush makes every Append so far durable (fsync of the write-ahead log).
// Callers that ship seqs upstream must Flush first: after a crash an
// unsynced Append is lost together with its seq, and the seq is handed out
// again.
func (l *Local) Flush() error {
	if err := l.enter(true); err != nil {
		return err
	}
	defer l.leave()
	if err := l.db.LogData(nil, pebble.Sync); err != nil {
		return fmt.Errorf("sync store: %w", err)
	}
	return nil
}

// LastSeq returns the last seq assigned (0 before the first Append).
func (l *Local) LastSeq() uint64 {
	l.wmu.Lock()
	defer l.wmu.Unlock()
	return l.lastSeq
}

// Append stores evs under consecutive new seqs, sets each event's Seq in
// place, and applies them to the process table, all in one atomic batch: after
// a crash either the events and their table changes are both there or
// neither is. It returns the first and last seq assigned (0, 0 for none).
func (l *Local) Append(evs []capture.Event) (first, last uint64, err error) {
	if len(evs) == 0 {
		return 0, 0, nil
	}
	if err := l.enter(true); err != nil {
		return 0, 0, err
	}
	defer l.leave()
	l.wmu.Lock()
	defer l.wmu.Unlock()

	tx, s := l.tx, &l.scratch
	tx.reset()
	s.reset()
	first = l.lastSeq + 1
	for i := range evs {
		// Encoded from a copy, so that evs is left alone should Append fail.
		s.ev = evs[i]
		s.ev.Seq = first + uint64(i)
		from := s.vals.Len()
		s.vals.Write(capture.AppendCBOR(s.vals.AvailableBuffer(), &s.ev))
		s.ends = append(s.ends, s.vals.Len())
		s.times = append(s.times, timeRef{at: orderedTime(s.ev.Time), seq: s.ev.Seq, size: uint64(s.vals.Len() - from)})
		if err := tx.apply(&s.ev); err != nil {
			return 0, 0, fmt.Errorf("append seq %d: %w", s.ev.Seq, err)
		}
	}
	last = first + uint64(len(evs)) - 1
	added := uint64(s.vals.Len())
	if err := tx.stage(); err != nil {
		return 0, 0, fmt.Errorf("append: %w", err)
	}
	// Every key space goes in as one ascending run, the spaces in key
	// order (c e l m p t x): see tableTx.stage.
	size := s.vals.Len() + len(evs)*(4+9+4+17+2) + tx.batchBytes() + 64
	b := l.db.NewBatchWithSize(size)
	defer b.Close()
	if err := tx.putChildren(b); err != nil {
		return 0, 0, fmt.Errorf("append: %w", err)
	}
	var (
		ekey [9]byte
		tkey [17]byte
		tval [binary.MaxVarintLen64]byte
	)
	ekey[0], tkey[0] = spaceEvent, spaceTime
	vals, from := s.vals.Bytes(), 0
	for i, end := range s.ends {
		binary.BigEndian.PutUint64(ekey[1:], first+uint64(i))
		if err := b.Set(ekey[:], vals[from:end], nil); err != nil {
			return 0, 0, fmt.Errorf("append: %w", err)
		}
		from = end
	}
	if err := tx.putLive(b); err != nil {
		return 0, 0, fmt.Errorf("append: %w", err)
	}
	b.Set(metaBytes, putUint64(l.bytes+added), nil)
	b.Set(metaEvents, putUint64(l.events+uint64(len(evs))), nil)
	b.Set(metaLastSeq, putUint64(last), nil)
	if err := tx.putProcs(b); err != nil {
		return 0, 0, fmt.Errorf("append: %w", err)
	}
	// Times are nearly sorted already (events from different CPUs are a
	// little out of order).
	slices.SortFunc(s.times, func(a, b timeRef) int {
		if c := cmp.Compare(a.at, b.at); c != 0 {
			return c
		}
		return cmp.Compare(a.seq, b.seq)
	})
	for _, t := range s.times {
		binary.BigEndian.PutUint64(tkey[1:], t.at)
		binary.BigEndian.PutUint64(tkey[9:], t.seq)
		n := binary.PutUvarint(tval[:], t.size)
		if err := b.Set(tkey[:], tval[:n], nil); err != nil {
			return 0, 0, fmt.Errorf("append: %w", err)
		}
	}
	if err := tx.putExited(b); err != nil {
		return 0, 0, fmt.Errorf("append: %w", err)
	}
	if err := b.Commit(l.wo); err != nil {
		return 0, 0, fmt.Errorf("append %d events: %w", len(evs), err)
	}
	tx.committed()
	tx.forget()
	s.ev = capture.Event{} // holds no caller's memory between calls
	l.lastSeq = last
	l.noteUrgent(evs, first)
	l.events += uint64(len(evs))
	l.bytes += added
	l.live += tx.dLive
	l.exited += tx.dExited
	for i := range evs {
		evs[i].Seq = first + uint64(i)
	}
	return first, last, nil
}

// appendScratch is what Append reuses from one call to the next (under
// Local.wmu), so that a batch allocates next to nothing of its own.
type appendScratch struct {
	ev    capture.Event
	vals  bytes.Buffer // the event encodings, one after another
	ends  []int        // where each event's encoding ends in vals
	times []timeRef
}

// timeRef is one time index entry.
type timeRef struct {
	at   uint64 // orderedTime
	seq  uint64
	size uint64 // of the event's encoding
}

// maxKeptScratch bounds the buffers kept between Appends; a batch far larger
// than usual leaves its buffers to the collector.
const maxKeptScratch = 4 << 20

func (s *appendScratch) reset() {
	if s.vals.Cap() > maxKeptScratch {
		s.vals, s.ends, s.times = bytes.Buffer{}, nil, nil
	}
	s.vals.Reset()
	s.ends, s.times = s.ends[:0], s.times[:0]
}

// EventsBySeq calls fn for each stored event with Seq >= from, in seq order,
// until fn returns false. fn must not call Close.
func (l *Local) EventsBySeq(from uint64, fn func(capture.Event) bool) error {
	if err := l.enter(false); err != nil {
		return err
	}
	defer l.leave()
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(from), UpperBound: []byte{spaceEvent + 1}})
	if err != nil {
		return fmt.Errorf("events by seq: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return fmt.Errorf("events by seq: %w", err)
		}
		ev, err := DecodeEvent(v)
		if err != nil {
			seq, _ := seqOfEventKey(it.Key())
			it.Close()
			return fmt.Errorf("seq %d: %w", seq, err)
		}
		if !fn(ev) {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("events by seq: %w", err)
	}
	return nil
}

// RawEvent is a stored event as stored. Its encoding is the event's
// canonical CBOR, the bytes transport/wire's EncodeEvent makes of it (the
// Merkle leaf a shipper seals), and beside it the fields a shipper cuts
// batches by.
type RawEvent struct {
	Seq     uint64
	Time    int64
	Kind    capture.Kind
	TraceID string
	// CBOR is valid only until fn returns: copy what you keep.
	CBOR []byte
}

// eventHead is what RawEventsBySeq reads of an event: capture.PeekCBOR
// when the event is as stored (canonical), else the decoder, which skips
// the other fields without building them.
type eventHead struct {
	Time    int64        `cbor:"2,keyasint"`
	Kind    capture.Kind `cbor:"3,keyasint"`
	TraceID string       `cbor:"11,keyasint,omitempty"`
}

// rawEvent reads the head of a stored event.
func rawEvent(seq uint64, v []byte) (RawEvent, error) {
	var h eventHead
	var peeked bool
	var err error
	if len(v) > maxValueBytes {
		err = fmt.Errorf("value of %d bytes exceeds %d", len(v), maxValueBytes)
	} else if h.Time, h.Kind, h.TraceID, peeked = capture.PeekCBOR(v); !peeked {
		h = eventHead{}
		err = decMode.Unmarshal(v, &h)
	}
	if err != nil {
		return RawEvent{}, fmt.Errorf("seq %d: decode event: %w", seq, err)
	}
	return RawEvent{Seq: seq, Time: h.Time, Kind: h.Kind, TraceID: h.TraceID, CBOR: v}, nil
}

// RawEventsBySeq is EventsBySeq without decoding each event: it hands fn
// the stored encoding and the event's time and trace id.
func (l *Local) RawEventsBySeq(from uint64, fn func(RawEvent) bool) error {
	if err := l.enter(false); err != nil {
		return err
	}
	defer l.leave()
	it, err := l.db.NewIter(&pebble.IterOptions{LowerBound: eventKey(from), UpperBound: []byte{spaceEvent + 1}})
	if err != nil {
		return fmt.Errorf("events by seq: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		seq, ok := seqOfEventKey(it.Key())
		if !ok {
			it.Close()
			return fmt.Errorf("events by seq: malformed key %x", it.Key())
		}
		v, err := it.ValueAndErr()
		if err != nil {
			it.Close()
			return fmt.Errorf("events by seq: %w", err)
		}
		ev, err := rawEvent(seq, v)
		if err != nil {
			it.Close()
			return err
		}
		if !fn(ev) {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("events by seq: %w", err)
	}
	return nil
}

// EventsByTime calls fn for each stored event with from <= Time < to, in
// time order (seq order among equal times), until fn returns false. A zero
// from or to leaves that end open. fn must not call Close.
func (l *Local) EventsByTime(from, to time.Time, fn func(capture.Event) bool) error {
	if err := l.enter(false); err != nil {
		return err
	}
	defer l.leave()
	if !from.IsZero() && !to.IsZero() && !to.After(from) {
		return nil // an empty window; Pebble must not see inverted bounds
	}
	io := &pebble.IterOptions{LowerBound: []byte{spaceTime}, UpperBound: []byte{spaceTime + 1}}
	if !from.IsZero() {
		io.LowerBound = timePrefix(unixNano(from))
	}
	if !to.IsZero() {
		io.UpperBound = timePrefix(unixNano(to))
	}
	// One snapshot for the index walk and the event reads, so that a
	// concurrent Retain cannot leave the index pointing at nothing.
	snap := l.db.NewSnapshot()
	defer snap.Close()
	it, err := snap.NewIter(io)
	if err != nil {
		return fmt.Errorf("events by time: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		_, seq, ok := parseTimeKey(it.Key())
		if !ok {
			continue
		}
		v, closer, err := snap.Get(eventKey(seq))
		if errors.Is(err, pebble.ErrNotFound) {
			l.log.Warn("time index names a missing event", "seq", seq)
			continue
		}
		if err != nil {
			it.Close()
			return fmt.Errorf("events by time: seq %d: %w", seq, err)
		}
		ev, err := DecodeEvent(v)
		closer.Close()
		if err != nil {
			it.Close()
			return fmt.Errorf("seq %d: %w", seq, err)
		}
		if !fn(ev) {
			break
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("events by time: %w", err)
	}
	return nil
}

// unixNano is t in Unix nanoseconds, clamped to the int64 range (t.UnixNano
// is undefined outside years 1678..2262).
func unixNano(t time.Time) int64 {
	if t.Before(time.Unix(0, math.MinInt64)) {
		return math.MinInt64
	}
	if t.After(time.Unix(0, math.MaxInt64)) {
		return math.MaxInt64
	}
	return t.UnixNano()
}
