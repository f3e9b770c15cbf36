package store

import (
	"bytes"
	"cmp"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"
	"unsafe"

	"github.com/cockroachdb/pebble/v2"
	"github.com/evilbitlabs/daemoneye/capture"
)

// tableTx is a read-modify-write view of the process table for one batch.
// Entries are read once (from the live cache, or from Pebble), changed in
// memory as events apply in order (a fork then an exec of the same child in
// one batch both land), and written with their index changes at the end, so
// a process that forks, execs and exits within one batch is encoded and
// written once. Append reuses one tableTx (under Local.wmu).
type tableTx struct {
	r     pebble.Reader
	mem   *tableMem
	now   func() time.Time
	ents  map[capture.ProcKey]*txEntry
	dirty []*txEntry // the changed entries; stage sorts them by key

	heirs   []*txEntry              // forks that may still be pending
	heirsOf map[capture.ProcKey]int // pending forks per parent

	dLive, dExited int64 // counter changes once written
	orphans        [][]byte
	written        []written // for the live cache once committed

	// What stage works out for the batch, each in key order.
	enc   bytes.Buffer // the encodings of dirty, one after another
	ends  []int        // where each dirty entry's encoding ends in enc
	kids  []childOp
	exits []exitOp
}

type written struct {
	key  capture.ProcKey
	p    *capture.Process // nil once exited (or an orphan): drop from the cache
	size int
}

type txEntry struct {
	p       capture.Process
	exists  bool
	isDirty bool
	// core: something besides the exit changed, so the entry itself must be
	// rewritten. An exit alone of a stored live entry goes into its live
	// index key instead (see stage).
	core bool
	// partial: only Key, Parent and the exit state are known, from the live
	// index key of a live process (see read); complete reads the rest
	// before anything else is read or changed.
	partial bool
	// pending: a fork whose parent image (heirOf's) is still to be copied;
	// see inherit.
	pending bool
	heirOf  capture.ProcKey
	lop     int8 // the live index change stage decided (lop*)
	// The entry as stored before this batch, which decides index changes.
	orig struct {
		exists   bool
		exitTime int64
		parent   capture.ProcKey
		inEntry  bool // the stored entry holds its exit itself
		indexed  bool // the live index has its key (live, or an exit record)
	}
}

// Live index changes.
const (
	lopNone   int8 = iota
	lopLive        // set to the parent: live
	lopExit        // set to the exit record
	lopDelete      // the entry holds its exit, or is gone
)

type childOp struct {
	parent, child capture.ProcKey
	del           bool
}

type exitOp struct {
	exitTime int64
	key      capture.ProcKey
	parent   capture.ProcKey // the value of a set
	del      bool
}

func newTableTx(r pebble.Reader, mem *tableMem, now func() time.Time) *tableTx {
	return &tableTx{r: r, mem: mem, now: now, ents: make(map[capture.ProcKey]*txEntry), heirsOf: make(map[capture.ProcKey]int)}
}

// reset readies a reused tableTx for the next batch.
func (t *tableTx) reset() {
	clear(t.ents)
	clear(t.dirty)
	clear(t.written)
	clear(t.heirs)
	clear(t.heirsOf)
	t.heirs = t.heirs[:0]
	t.dirty, t.written, t.orphans = t.dirty[:0], t.written[:0], nil
	t.dLive, t.dExited = 0, 0
	// A batch far larger than usual leaves its buffers to the collector.
	if t.enc.Cap() > maxKeptScratch {
		t.enc = bytes.Buffer{}
	}
}

func (t *tableTx) get(k capture.ProcKey) (*txEntry, error) {
	if e, ok := t.ents[k]; ok {
		return e, nil
	}
	e := &txEntry{}
	if c, hit := t.mem.live.get(k); hit {
		// A copy: the transaction changes fields, never what pointers
		// and slices point at (Exit is replaced, not written through).
		e.found(*c, procState{indexed: true}) // cached entries are live
	} else if !t.mem.keys.absent(k) {
		if err := t.read(e, k); err != nil {
			return nil, err
		}
	}
	t.ents[k] = e
	return e, nil
}

func (e *txEntry) found(p capture.Process, st procState) {
	e.p, e.exists = p, true
	e.orig.exists, e.orig.exitTime, e.orig.parent = true, p.ExitTime, p.Parent
	e.orig.inEntry, e.orig.indexed = st.inEntry, st.indexed
}

// read loads k from Pebble into e. A live process is known from its live
// index key alone (its parent; one read in a small, well-cached key space)
// until something needs the rest of its entry: its exit, the common case
// for processes the live cache has no room for, then needs no read of the
// entry at all.
func (t *tableTx) read(e *txEntry, k capture.ProcKey) error {
	v, closer, err := t.r.Get(procSpaceKey(spaceLive, k))
	if errors.Is(err, pebble.ErrNotFound) {
		// Exited with its exit in the entry, or unknown.
		p, ok, err := getEntry(t.r, k)
		if err != nil {
			return err
		}
		if ok {
			e.found(p, procState{inEntry: p.ExitTime != 0})
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read process %s: %w", k, err)
	}
	parent, x, live, err := parseLiveValue(v)
	closer.Close()
	if err != nil {
		return fmt.Errorf("process %s: %w", k, err)
	}
	if live {
		e.found(capture.Process{Key: k, Parent: parent}, procState{indexed: true})
		e.partial = true
		return nil
	}
	p, ok, err := getEntry(t.r, k)
	if err != nil {
		return err
	}
	if ok {
		p.ExitTime, p.Exit = x.ExitTime, x.Exit
		e.found(p, procState{indexed: true})
	} else {
		e.orig.indexed = true // an exit record without an entry: rewritten or deleted
	}
	return nil
}

// complete reads the rest of a partial entry, keeping the exit that may
// have been applied to it since.
func (t *tableTx) complete(e *txEntry) error {
	if !e.partial {
		return nil
	}
	e.partial = false
	p, ok, err := getEntry(t.r, e.p.Key)
	if err != nil {
		return err
	}
	if !ok {
		// The live index named an entry that is gone: from here on it is
		// a new entry with what is known.
		e.orig.exists = false
		return nil
	}
	p.ExitTime, p.Exit = e.p.ExitTime, e.p.Exit
	e.p = p
	return nil
}

// touch marks e changed; core says whether more than its exit changed.
func (t *tableTx) touch(e *txEntry, core bool) {
	e.core = e.core || core
	if !e.isDirty {
		e.isDirty = true
		t.dirty = append(t.dirty, e)
	}
}

// apply changes the table for one event. Events from different CPUs can
// arrive out of order (an exec before its fork, an exit before its exec), so
// each rule keeps what an earlier-applied, later-happened event established.
func (t *tableTx) apply(ev *capture.Event) error {
	if len(t.heirsOf) > 0 && t.heirsOf[ev.Proc] > 0 {
		// Forks inherit the image ev.Proc has now, before ev changes it.
		if err := t.settleHeirs(ev.Proc); err != nil {
			return err
		}
	}
	switch ev.Kind {
	case capture.KindFork:
		e, err := t.get(ev.Proc)
		if err != nil {
			return err
		}
		if e.exists {
			// Exec or exit applied first, or a duplicate: only fill gaps.
			if e.p.Parent.IsZero() && !ev.Parent.IsZero() {
				if err := t.complete(e); err != nil {
					return err
				}
				e.p.Parent = ev.Parent
				t.touch(e, true)
			}
			return nil
		}
		e.p, e.exists = capture.Process{Key: ev.Proc, Parent: ev.Parent, Comm: ev.Comm, StartTime: ev.Time}, true
		if !ev.Parent.IsZero() {
			t.inherit(e, ev.Parent)
		}
		t.touch(e, true)
	case capture.KindExec:
		e, err := t.get(ev.Proc)
		if err != nil {
			return err
		}
		if e.pending && ev.Exec != nil && ev.Comm != "" {
			e.pending = false // the exec replaces all a fork inherits
			t.heirsOf[e.heirOf]--
		}
		if err := t.resolve(e); err != nil {
			return err
		}
		if err := t.complete(e); err != nil {
			return err
		}
		if !e.exists {
			// The fork was never seen (it predates the agent or was lost).
			e.p, e.exists = capture.Process{Key: ev.Proc, StartTime: ev.Time}, true
		}
		if ev.Exec != nil {
			e.p.Exec = *ev.Exec
		}
		if ev.Comm != "" {
			e.p.Comm = ev.Comm
		}
		e.p.Execed = true
		if e.p.Parent.IsZero() {
			e.p.Parent = ev.Parent
		}
		t.touch(e, true)
	case capture.KindExit:
		e, err := t.get(ev.Proc)
		if err != nil {
			return err
		}
		if !e.exists {
			e.p, e.exists = capture.Process{Key: ev.Proc, Parent: ev.Parent, Comm: ev.Comm}, true
			t.touch(e, true)
		}
		if e.p.ExitTime != 0 {
			if e.p.Exit == nil && ev.Exit != nil {
				x := *ev.Exit
				e.p.Exit = &x
				t.touch(e, false)
			}
			return nil
		}
		e.p.ExitTime = ev.Time
		if e.p.ExitTime == 0 { // a malformed event; an exit must not look alive
			e.p.ExitTime = t.now().UnixNano()
		}
		if ev.Exit != nil {
			x := *ev.Exit
			e.p.Exit = &x
		}
		t.touch(e, false)
	}
	// Connect, accept and close do not change the table.
	return nil
}

// inherit gives a forked child e its parent's image: a forked child runs
// its parent's image until it execs. The image is copied now if it is at
// hand; if it would take a Pebble read (a parent the live cache has no room
// for) the copy waits until something needs it, because most children exec
// in the same batch and replace it. Until then e is pending: an exec of e
// that replaces the image and comm drops it; anything that reads e's image
// (stage, e as a parent), or the exec of e without a full image, copies it
// first; and any event about the parent settles its pending children
// before it applies, so that they copy the image the parent had at the fork.
func (t *tableTx) inherit(e *txEntry, parent capture.ProcKey) {
	pe, inTx := t.ents[parent]
	switch {
	case inTx && pe.exists && !pe.partial && !pe.pending:
		copyImage(e, &pe.p)
		return
	case inTx && !pe.exists && !pe.partial && parent.Start != 0:
		return // known to be absent
	case !inTx:
		if c, hit := t.mem.live.get(parent); hit {
			copyImage(e, c)
			return
		}
		if parent.Start != 0 && t.mem.keys.absent(parent) {
			return
		}
	}
	e.pending, e.heirOf = true, parent
	t.heirs = append(t.heirs, e)
	t.heirsOf[parent]++
}

func copyImage(e *txEntry, par *capture.Process) {
	e.p.Exec = par.Exec
	if e.p.Comm == "" {
		e.p.Comm = par.Comm
	}
}

// resolve copies the parent image a pending fork waits for.
func (t *tableTx) resolve(e *txEntry) error {
	if !e.pending {
		return nil
	}
	e.pending = false
	t.heirsOf[e.heirOf]--
	par, err := t.parentOf(e.heirOf)
	if err != nil || par == nil {
		return err
	}
	copyImage(e, par)
	return nil
}

// settleHeirs resolves the pending forks of parent.
func (t *tableTx) settleHeirs(parent capture.ProcKey) error {
	for _, e := range t.heirs {
		if e.pending && e.heirOf == parent {
			if err := t.resolve(e); err != nil {
				return err
			}
		}
	}
	return nil
}

// parentOf finds a parent entry, for its image. A source that knows only the
// parent's pid sends Start 0; then the live incarnation of that pid is the
// parent. A parent read from Pebble is not added to the transaction: its
// image does not depend on its exit, so the entry alone (one read, not the
// two of readProc) will do.
func (t *tableTx) parentOf(k capture.ProcKey) (*capture.Process, error) {
	if e, ok := t.ents[k]; ok && e.exists {
		if err := t.complete(e); err != nil {
			return nil, err
		}
		if err := t.resolve(e); err != nil {
			return nil, err
		}
		return &e.p, nil
	} else if !ok {
		if c, hit := t.mem.live.get(k); hit {
			return c, nil
		}
		if !t.mem.keys.absent(k) {
			p, found, err := getEntry(t.r, k)
			if err != nil {
				return nil, err
			}
			if found {
				return &p, nil
			}
		}
	}
	if k.Start != 0 {
		return nil, nil
	}
	p, ok, err := liveByPID(t.r, k.PID)
	if err != nil || !ok {
		return nil, err
	}
	return &p, nil
}

// stage encodes the changed entries and works out their index changes, all
// sorted by key, so that each key space can go into the batch as one
// ascending run: Pebble's memtable inserts ascending keys at a fraction of
// the cost of scattered ones, and the table's keys (pid first) are
// scattered in event order.
//
// An entry whose only change is the exit of a stored live process is not
// rewritten: the exit record (a few bytes) goes into its live index key,
// which the exit would otherwise have deleted. A process that outlives the
// batch of its fork thus costs one entry write, not two, and the table
// (keyed by pid, so rewritten whole by compactions) grows half as fast.
// Readers merge the record back (readProc).
func (t *tableTx) stage() error {
	for _, e := range t.heirs {
		if err := t.resolve(e); err != nil {
			return err
		}
	}
	clear(t.heirs)
	clear(t.heirsOf)
	t.heirs = t.heirs[:0]
	slices.SortFunc(t.dirty, func(a, b *txEntry) int { return cmpProcKey(a.p.Key, b.p.Key) })
	t.enc.Reset()
	t.ends, t.kids, t.exits = t.ends[:0], t.kids[:0], t.exits[:0]
	for _, e := range t.dirty {
		k := e.p.Key
		live := e.p.ExitTime == 0
		wasLive := e.orig.exists && e.orig.exitTime == 0
		wasExited := e.orig.exists && e.orig.exitTime != 0
		full := e.core || live || !e.orig.exists || e.orig.inEntry
		if full {
			if err := t.complete(e); err != nil {
				return err
			}
		}
		e.lop = lopNone
		var err error
		switch {
		case !full:
			e.lop = lopExit
			t.enc.WriteByte(exitTag)
			err = encMode.MarshalToBuffer(&exitRecord{ExitTime: e.p.ExitTime, Exit: e.p.Exit}, &t.enc)
		case live:
			if !wasLive || !e.orig.indexed || e.orig.parent != e.p.Parent {
				e.lop = lopLive
			}
			err = encMode.MarshalToBuffer(&e.p, &t.enc)
		default:
			if e.orig.indexed {
				e.lop = lopDelete
			}
			err = encMode.MarshalToBuffer(&e.p, &t.enc)
		}
		if err != nil {
			return fmt.Errorf("encode process %s: %w", k, err)
		}
		t.ends = append(t.ends, t.enc.Len())
		t.mem.keys.add(k)
		w := written{key: k}
		if live {
			w.p, w.size = &e.p, footprint(&e.p)
		}
		t.written = append(t.written, w)
		switch {
		case wasLive && !live:
			t.dLive--
		case !wasLive && live:
			t.dLive++
		}
		if wasExited && (live || e.orig.exitTime != e.p.ExitTime) {
			t.exits = append(t.exits, exitOp{exitTime: e.orig.exitTime, key: k, del: true})
			t.dExited--
			wasExited = false
		}
		if !live {
			// Set even when unchanged: the value carries the parent.
			t.exits = append(t.exits, exitOp{exitTime: e.p.ExitTime, key: k, parent: e.p.Parent})
			if !wasExited {
				t.dExited++
			}
		}
		if e.orig.parent != e.p.Parent {
			if !e.orig.parent.IsZero() {
				t.kids = append(t.kids, childOp{parent: e.orig.parent, child: k, del: true})
			}
			if !e.p.Parent.IsZero() {
				t.kids = append(t.kids, childOp{parent: e.p.Parent, child: k})
			}
		}
	}
	t.dLive -= int64(len(t.orphans))
	for _, k := range t.orphans {
		t.written = append(t.written, written{key: getProcKey(k[1:])})
	}
	slices.SortFunc(t.kids, func(a, b childOp) int {
		if c := cmpProcKey(a.parent, b.parent); c != 0 {
			return c
		}
		return cmpProcKey(a.child, b.child)
	})
	slices.SortFunc(t.exits, func(a, b exitOp) int {
		if c := cmp.Compare(orderedTime(a.exitTime), orderedTime(b.exitTime)); c != 0 {
			return c
		}
		return cmpProcKey(a.key, b.key)
	})
	return nil
}

func cmpProcKey(a, b capture.ProcKey) int {
	if c := cmp.Compare(a.PID, b.PID); c != 0 {
		return c
	}
	return cmp.Compare(a.Start, b.Start)
}

// batchBytes is about what the staged changes take in a batch.
func (t *tableTx) batchBytes() int {
	const op = 4 // kind and two length varints
	return t.enc.Len() + len(t.dirty)*2*(op+1+procKeyLen) + len(t.orphans)*(op+1+procKeyLen) +
		len(t.kids)*(op+1+2*procKeyLen) + len(t.exits)*(op+1+8+2*procKeyLen)
}

// The put methods add one key space each of what stage worked out. Within
// a batch the spaces go in key order: c, (e), l, (m), p, (t), x.

func (t *tableTx) putChildren(b *pebble.Batch) error {
	var key [1 + 2*procKeyLen]byte
	key[0] = spaceChildren
	for _, op := range t.kids {
		putProcKey(key[1:], op.parent)
		putProcKey(key[1+procKeyLen:], op.child)
		var err error
		if op.del {
			err = b.Delete(key[:], nil)
		} else {
			err = b.Set(key[:], nil, nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (t *tableTx) putLive(b *pebble.Batch) error {
	var key [1 + procKeyLen]byte
	key[0] = spaceLive
	enc, from := t.enc.Bytes(), 0
	for i, e := range t.dirty {
		putProcKey(key[1:], e.p.Key)
		var err error
		switch e.lop {
		case lopLive:
			v := liveValue(e.p.Parent)
			err = b.Set(key[:], v[:], nil)
		case lopExit:
			err = b.Set(key[:], enc[from:t.ends[i]], nil)
		case lopDelete:
			err = b.Delete(key[:], nil)
		}
		if err != nil {
			return err
		}
		from = t.ends[i]
	}
	for _, k := range t.orphans {
		if err := b.Delete(k, nil); err != nil {
			return err
		}
	}
	return nil
}

func (t *tableTx) putProcs(b *pebble.Batch) error {
	var key [1 + procKeyLen]byte
	key[0] = spaceProc
	enc, from := t.enc.Bytes(), 0
	for i, e := range t.dirty {
		if e.lop != lopExit { // an exit record went to the live index instead
			putProcKey(key[1:], e.p.Key)
			if err := b.Set(key[:], enc[from:t.ends[i]], nil); err != nil {
				return err
			}
		}
		from = t.ends[i]
	}
	return nil
}

func (t *tableTx) putExited(b *pebble.Batch) error {
	var (
		key [1 + 8 + procKeyLen]byte
		val [procKeyLen]byte
	)
	key[0] = spaceExited
	for _, op := range t.exits {
		binary.BigEndian.PutUint64(key[1:], orderedTime(op.exitTime))
		putProcKey(key[9:], op.key)
		var err error
		if op.del {
			err = b.Delete(key[:], nil)
		} else {
			putProcKey(val[:], op.parent)
			err = b.Set(key[:], val[:], nil)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// forget drops the written entries, so that a long transaction (Seed) can
// write as it goes and hold only what the live cache needs. An entry must
// not be changed again after it was written: reads do not see the batch.
func (t *tableTx) forget() {
	clear(t.dirty)
	t.dirty, t.orphans = t.dirty[:0], nil
	clear(t.ents)
}

// write adds the changed entries and their index changes to b, then
// forgets them.
func (t *tableTx) write(b *pebble.Batch) error {
	if err := t.stage(); err != nil {
		return err
	}
	for _, put := range []func(*pebble.Batch) error{t.putChildren, t.putLive, t.putProcs, t.putExited} {
		if err := put(b); err != nil {
			return err
		}
	}
	t.forget()
	return nil
}

// committed updates the live cache once the batch written by write has
// been committed.
func (t *tableTx) committed() {
	for _, w := range t.written {
		if w.p != nil {
			t.mem.live.put(w.key, w.p, w.size)
		} else {
			t.mem.live.del(w.key)
		}
	}
}

// tableMem is what Append knows about the process table without reading
// Pebble. Guarded by Local.wmu.
type tableMem struct {
	live *liveCache
	keys *newKeys
}

// liveCache holds the decoded live processes, the entries nearly every fork
// (the parent), exec and exit reads. Without it each of those is a Pebble
// Get that misses the small block cache, plus a CBOR decode, which made the
// table (not the events) the cost of Append. It is bounded by max bytes of
// footprint: past that, processes are read from Pebble (their live index
// key first, see tableTx.read). It never holds a stale entry: every write
// of a process updates or drops it. Entries are never changed in place.
type liveCache struct {
	m     map[capture.ProcKey]cachedProc
	bytes int
	max   int
}

type cachedProc struct {
	p    *capture.Process
	size int
}

func newLiveCache(max int) *liveCache {
	return &liveCache{m: make(map[capture.ProcKey]cachedProc), max: max}
}

func (c *liveCache) get(k capture.ProcKey) (*capture.Process, bool) {
	v, ok := c.m[k]
	return v.p, ok
}

func (c *liveCache) put(k capture.ProcKey, p *capture.Process, size int) {
	if old, ok := c.m[k]; ok {
		c.bytes += size - old.size
		c.m[k] = cachedProc{p, size}
		return
	}
	if c.bytes+size > c.max {
		return
	}
	c.m[k] = cachedProc{p, size}
	c.bytes += size
}

func (c *liveCache) del(k capture.ProcKey) {
	if old, ok := c.m[k]; ok {
		c.bytes -= old.size
		delete(c.m, k)
	}
}

// fill loads the live entries at open.
func (c *liveCache) fill(r pebble.Reader) error {
	it, err := r.NewIter(spaceBounds(spaceLive))
	if err != nil {
		return err
	}
	defer it.Close()
	for it.First(); it.Valid() && c.bytes < c.max; it.Next() {
		if v, err := it.ValueAndErr(); err != nil {
			return fmt.Errorf("load live processes: %w", err)
		} else if !isLive(v) {
			continue // an exit record: exited
		}
		v, closer, err := r.Get(append([]byte{spaceProc}, it.Key()[1:]...))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load live processes: %w", err)
		}
		p, err := decodeProcess(v)
		closer.Close()
		if err != nil {
			return fmt.Errorf("load live process %s: %w", getProcKey(it.Key()[1:]), err)
		}
		c.put(p.Key, &p, footprint(&p))
	}
	return it.Close()
}

// footprint is about the memory a cached entry holds: the struct, its map
// slot and its strings. Strings a forked child shares with its parent are
// counted twice, which errs on the safe side.
func footprint(p *capture.Process) int {
	const (
		fixed  = int(unsafe.Sizeof(capture.Process{})) + 64 // + map slot and pointer
		header = int(unsafe.Sizeof(""))
	)
	n := fixed + len(p.Comm) + len(p.Exec.Exe) + len(p.Exec.Cwd) + len(p.Exec.TTY)
	for _, a := range p.Exec.Argv {
		n += header + len(a)
	}
	for _, a := range p.Exec.Env {
		n += header + len(a)
	}
	if p.Exit != nil {
		n += int(unsafe.Sizeof(capture.Exit{}))
	}
	return n
}

// newKeys lets Append skip the Pebble read for a process key that cannot
// be in the table. Nearly every fork names a child the table has never
// seen, and that lookup was a miss through every L0 file's filter; only an
// exec or exit applied before its fork (events from different CPUs) or a
// duplicate fork finds something.
//
// Process start times only grow, so it keeps the last max keys written
// with a start after ceil, and raises ceil to the start of each key it
// lets go: every key in the table whose Start is above ceil is then in
// recent (recent may hold more: entries deleted since, or keys at or below
// a risen ceil), and a key above ceil that is not in recent is absent.
// Guarded by Local.wmu.
type newKeys struct {
	ceil   uint64
	recent map[capture.ProcKey]struct{}
	order  []capture.ProcKey // recent in the order added, a ring once full
	next   int               // the oldest in order, once full
	max    int
	// all, if set, knows every key in the table, for keys at or below
	// ceil: see keyFilter.
	all *keyFilter
}

func newNewKeys(ceil uint64, max int) *newKeys {
	return &newKeys{ceil: ceil, recent: make(map[capture.ProcKey]struct{}), max: max}
}

func (n *newKeys) absent(k capture.ProcKey) bool {
	if k.Start <= n.ceil {
		return n.all != nil && n.all.absent(k)
	}
	_, in := n.recent[k]
	return !in
}

func (n *newKeys) add(k capture.ProcKey) {
	if n.all != nil {
		n.all.add(k)
	}
	if k.Start <= n.ceil {
		return
	}
	if _, in := n.recent[k]; in {
		return
	}
	if len(n.order) < n.max {
		n.order = append(n.order, k)
	} else {
		old := n.order[n.next]
		delete(n.recent, old)
		n.ceil = max(n.ceil, old.Start)
		n.order[n.next] = k
		n.next = (n.next + 1) % n.max
	}
	n.recent[k] = struct{}{}
}

// Seed writes the /proc snapshot taken at agent start into the table (as
// Seeded entries) and marks every live entry that is not in it as exited now:
// those processes ended while the agent was not watching, so their exit
// status is unknown (Exit nil). One batch, synced.
func (l *Local) Seed(procs []capture.Process) error {
	if err := l.enter(true); err != nil {
		return err
	}
	defer l.leave()
	l.wmu.Lock()
	defer l.wmu.Unlock()

	now := l.opts.Now().UnixNano()
	tx := newTableTx(l.db, l.table, l.opts.Now)
	b := l.db.NewBatch()
	defer b.Close()
	// Entries go into the batch every seedStep processes rather than being
	// held decoded until the end: seeding runs while the agent's memory
	// budget is shared with capture.
	const seedStep = 512
	inSnapshot := make(map[capture.ProcKey]struct{}, len(procs))
	for i := range procs {
		p := procs[i]
		if _, dup := inSnapshot[p.Key]; dup {
			continue // one entry per process; the first description wins
		}
		if len(tx.dirty) >= seedStep {
			if err := tx.write(b); err != nil {
				return fmt.Errorf("seed: %w", err)
			}
		}
		e, err := tx.get(p.Key)
		if err == nil {
			err = tx.complete(e)
		}
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
		if e.exists {
			// /proc shows the reaper as parent once the real parent died;
			// the table may know better from having seen the fork.
			if !e.p.Parent.IsZero() {
				p.Parent = e.p.Parent
			}
			if !p.Execed && e.p.Execed {
				p.Exec, p.Execed = e.p.Exec, true
			}
			if p.StartTime == 0 {
				p.StartTime = e.p.StartTime
			}
		}
		p.Seeded = true
		p.ExitTime, p.Exit = 0, nil // it is in /proc, so it is alive
		e.p, e.exists = p, true
		tx.touch(e, true)
		inSnapshot[p.Key] = struct{}{}
	}
	it, err := l.db.NewIter(spaceBounds(spaceLive))
	if err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	for it.First(); it.Valid(); it.Next() {
		k := getProcKey(it.Key()[1:])
		if _, ok := inSnapshot[k]; ok {
			continue
		}
		if v, err := it.ValueAndErr(); err != nil {
			it.Close()
			return fmt.Errorf("seed: %w", err)
		} else if !isLive(v) {
			continue // an exit record: exited already
		}
		if len(tx.dirty) >= seedStep {
			if err := tx.write(b); err != nil {
				it.Close()
				return fmt.Errorf("seed: %w", err)
			}
		}
		e, err := tx.get(k)
		if err != nil {
			it.Close()
			return fmt.Errorf("seed: %w", err)
		}
		if !e.exists {
			tx.orphans = append(tx.orphans, append([]byte(nil), it.Key()...))
			continue
		}
		if e.p.ExitTime == 0 {
			e.p.ExitTime, e.p.Exit = now, nil
			tx.touch(e, false)
		}
	}
	if err := it.Close(); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := tx.write(b); err != nil {
		return fmt.Errorf("seed: %w", err)
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return fmt.Errorf("seed %d processes: %w", len(procs), err)
	}
	tx.committed()
	l.live += tx.dLive
	l.exited += tx.dExited
	l.log.Debug("process table seeded", "processes", len(procs), "live", l.live, "exited", l.exited)
	return nil
}

// procState says where a stored entry's exit state is.
type procState struct {
	inEntry bool // the entry holds its exit
	indexed bool // the live index has its key: live, or with an exit record
}

// getProc returns the entry for k with its exit merged in.
func getProc(r pebble.Reader, k capture.ProcKey) (capture.Process, bool, error) {
	p, _, ok, err := readProc(r, k)
	return p, ok, err
}

// readProc returns the entry for k with its exit merged in, and where the
// exit state was found. An entry that does not hold an exit is live unless
// its live index key holds an exit record.
func readProc(r pebble.Reader, k capture.ProcKey) (p capture.Process, st procState, ok bool, err error) {
	if p, ok, err = getEntry(r, k); err != nil || !ok {
		return p, st, ok, err
	}
	if p.ExitTime != 0 {
		st.inEntry = true
		return p, st, true, nil
	}
	v, closer, err := r.Get(procSpaceKey(spaceLive, k))
	if errors.Is(err, pebble.ErrNotFound) {
		return p, st, true, nil // live, but missing from the index
	}
	if err != nil {
		return capture.Process{}, st, false, fmt.Errorf("read process %s: %w", k, err)
	}
	defer closer.Close()
	st.indexed = true
	if err := mergeExit(&p, v); err != nil {
		return capture.Process{}, st, false, fmt.Errorf("process %s: %w", k, err)
	}
	return p, st, true, nil
}

// mergeExit applies a live index value to the entry it indexes: nothing if
// live, else the exit record.
func mergeExit(p *capture.Process, v []byte) error {
	_, x, live, err := parseLiveValue(v)
	if err != nil || live {
		return err
	}
	p.ExitTime, p.Exit = x.ExitTime, x.Exit
	return nil
}

// getEntry returns the stored entry for k as it is, without an exit that
// its live index key may hold.
func getEntry(r pebble.Reader, k capture.ProcKey) (capture.Process, bool, error) {
	v, closer, err := r.Get(procSpaceKey(spaceProc, k))
	if errors.Is(err, pebble.ErrNotFound) {
		return capture.Process{}, false, nil
	}
	if err != nil {
		return capture.Process{}, false, fmt.Errorf("read process %s: %w", k, err)
	}
	defer closer.Close()
	p, err := decodeProcess(v)
	if err != nil {
		return capture.Process{}, false, fmt.Errorf("process %s: %w", k, err)
	}
	return p, true, nil
}

// liveByPID returns the newest live incarnation of pid: keys of one pid sort
// by start time, so it is the last live key with that pid.
func liveByPID(r pebble.Reader, pid uint32) (capture.Process, bool, error) {
	it, err := r.NewIter(prefixBounds(pidPrefix(spaceLive, pid)))
	if err != nil {
		return capture.Process{}, false, err
	}
	for ok := it.Last(); ok; ok = it.Prev() {
		if v, err := it.ValueAndErr(); err != nil {
			it.Close()
			return capture.Process{}, false, fmt.Errorf("live pid %d: %w", pid, err)
		} else if !isLive(v) {
			continue // an exit record: exited
		}
		p, found, err := getEntry(r, getProcKey(it.Key()[1:]))
		if err != nil || found {
			it.Close()
			return p, found, err
		}
	}
	if err := it.Close(); err != nil {
		return capture.Process{}, false, fmt.Errorf("live pid %d: %w", pid, err)
	}
	return capture.Process{}, false, nil
}

// Process returns the entry for key.
func (l *Local) Process(key capture.ProcKey) (capture.Process, bool, error) {
	if err := l.enter(false); err != nil {
		return capture.Process{}, false, err
	}
	defer l.leave()
	return getProc(l.db, key)
}

// LiveByPID returns the live incarnation of pid (the newest, should the table
// hold more than one live entry for it after a missed exit).
func (l *Local) LiveByPID(pid uint32) (capture.Process, bool, error) {
	if err := l.enter(false); err != nil {
		return capture.Process{}, false, err
	}
	defer l.leave()
	return liveByPID(l.db, pid)
}

// Processes returns the live entries, or every entry with includeExited, in
// (pid, start) order.
func (l *Local) Processes(includeExited bool) ([]capture.Process, error) {
	if err := l.enter(false); err != nil {
		return nil, err
	}
	defer l.leave()
	snap := l.db.NewSnapshot()
	defer snap.Close()
	if includeExited {
		return allProcesses(snap)
	}
	it, err := snap.NewIter(spaceBounds(spaceLive))
	if err != nil {
		return nil, fmt.Errorf("processes: %w", err)
	}
	defer it.Close()
	var out []capture.Process
	for it.First(); it.Valid(); it.Next() {
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("processes: %w", err)
		}
		if !isLive(v) {
			continue // an exit record: exited
		}
		p, ok, err := getEntry(snap, getProcKey(it.Key()[1:]))
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, p)
		}
	}
	return out, nil
}

// allProcesses walks the table and, in step (both are in key order), the
// live index for the exit records of the entries that do not hold theirs.
func allProcesses(r pebble.Reader) ([]capture.Process, error) {
	it, err := r.NewIter(spaceBounds(spaceProc))
	if err != nil {
		return nil, fmt.Errorf("processes: %w", err)
	}
	defer it.Close()
	lit, err := r.NewIter(spaceBounds(spaceLive))
	if err != nil {
		return nil, fmt.Errorf("processes: %w", err)
	}
	defer lit.Close()
	var out []capture.Process
	lok := lit.First()
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, fmt.Errorf("processes: %w", err)
		}
		p, err := decodeProcess(v)
		if err != nil {
			return nil, fmt.Errorf("process %s: %w", getProcKey(k), err)
		}
		if p.ExitTime == 0 {
			for lok && bytes.Compare(lit.Key()[1:], k) < 0 {
				lok = lit.Next()
			}
			if lok && bytes.Equal(lit.Key()[1:], k) {
				lv, err := lit.ValueAndErr()
				if err == nil {
					err = mergeExit(&p, lv)
				}
				if err != nil {
					return nil, fmt.Errorf("process %s: %w", getProcKey(k), err)
				}
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// Ancestors returns the parent chain of key, nearest first, up to pid 1 or
// the first parent the table does not know. It stops on a cycle and after
// maxAncestors entries. An unknown key has no ancestors.
func (l *Local) Ancestors(key capture.ProcKey) ([]capture.Process, error) {
	if err := l.enter(false); err != nil {
		return nil, err
	}
	defer l.leave()
	snap := l.db.NewSnapshot()
	defer snap.Close()
	cur, ok, err := getProc(snap, key)
	if err != nil || !ok {
		return nil, err
	}
	seen := map[capture.ProcKey]bool{key: true}
	var out []capture.Process
	for len(out) < maxAncestors {
		pk := cur.Parent
		if pk.PID == 0 || seen[pk] {
			break
		}
		par, ok, err := getProc(snap, pk)
		if err != nil {
			return nil, err
		}
		if !ok && pk.Start == 0 {
			if par, ok, err = liveByPID(snap, pk.PID); err != nil {
				return nil, err
			}
		}
		if !ok || seen[par.Key] {
			break
		}
		seen[pk], seen[par.Key] = true, true
		out = append(out, par)
		if par.Key.PID == 1 {
			break
		}
		cur = par
	}
	return out, nil
}

// Children returns the direct children of key in (pid, start) order.
func (l *Local) Children(key capture.ProcKey) ([]capture.Process, error) {
	if err := l.enter(false); err != nil {
		return nil, err
	}
	defer l.leave()
	snap := l.db.NewSnapshot()
	defer snap.Close()
	return children(snap, key, nil)
}

func children(r pebble.Reader, key capture.ProcKey, out []capture.Process) ([]capture.Process, error) {
	it, err := r.NewIter(prefixBounds(procSpaceKey(spaceChildren, key)))
	if err != nil {
		return out, fmt.Errorf("children of %s: %w", key, err)
	}
	defer it.Close()
	for it.First(); it.Valid(); it.Next() {
		c, ok, err := getProc(r, getProcKey(it.Key()[1+procKeyLen:]))
		if err != nil {
			return out, err
		}
		if ok {
			out = append(out, c)
		}
	}
	return out, nil
}

// Descendants returns the processes below key, breadth first, at most
// maxDepth generations down (maxDepth <= 0 means 64). It is cycle-safe and
// stops after maxDescendants entries.
func (l *Local) Descendants(key capture.ProcKey, maxDepth int) ([]capture.Process, error) {
	if err := l.enter(false); err != nil {
		return nil, err
	}
	defer l.leave()
	if maxDepth <= 0 {
		maxDepth = defaultDepth
	}
	snap := l.db.NewSnapshot()
	defer snap.Close()
	seen := map[capture.ProcKey]bool{key: true}
	var out []capture.Process
	level := []capture.ProcKey{key}
	for depth := 0; depth < maxDepth && len(level) > 0; depth++ {
		var next []capture.ProcKey
		for _, k := range level {
			kids, err := children(snap, k, nil)
			if err != nil {
				return nil, err
			}
			for _, c := range kids {
				if seen[c.Key] {
					continue
				}
				if len(out) >= maxDescendants {
					return out, nil
				}
				seen[c.Key] = true
				out = append(out, c)
				next = append(next, c.Key)
			}
		}
		level = next
	}
	return out, nil
}
