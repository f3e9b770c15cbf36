package store

import (
	"errors"
	"fmt"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"github.com/evilbitlabs/daemoneye/capture"
)

// tableTx is a read-modify-write view of the process table for one batch.
// Entries are read from Pebble once, changed in memory as events apply in
// order (a fork then an exec of the same child in one batch both land), and
// written with their index changes at the end.
type tableTx struct {
	r     pebble.Reader
	cache *liveCache
	now   func() time.Time
	ents  map[capture.ProcKey]*txEntry
	dirty []*txEntry // in first-change order, so writes are deterministic

	dLive, dExited int64 // counter changes once written
	orphans        [][]byte
	written        []written // for the live cache once committed
}

type written struct {
	key  capture.ProcKey
	enc  []byte
	live bool
}

type txEntry struct {
	p       capture.Process
	exists  bool
	isDirty bool
	// The entry as stored before this batch, which decides index changes.
	orig struct {
		exists   bool
		exitTime int64
		parent   capture.ProcKey
	}
}

func newTableTx(r pebble.Reader, cache *liveCache, now func() time.Time) *tableTx {
	return &tableTx{r: r, cache: cache, now: now, ents: make(map[capture.ProcKey]*txEntry)}
}

func (t *tableTx) get(k capture.ProcKey) (*txEntry, error) {
	if e, ok := t.ents[k]; ok {
		return e, nil
	}
	e := &txEntry{}
	var (
		p   capture.Process
		ok  bool
		err error
	)
	if v, hit := t.cache.get(k); hit {
		if p, err = decodeProcess(v); err != nil {
			return nil, fmt.Errorf("cached process %s: %w", k, err)
		}
		ok = true
	} else if p, ok, err = getProc(t.r, k); err != nil {
		return nil, err
	}
	if ok {
		e.p, e.exists = p, true
		e.orig.exists, e.orig.exitTime, e.orig.parent = true, p.ExitTime, p.Parent
	}
	t.ents[k] = e
	return e, nil
}

func (t *tableTx) touch(e *txEntry) {
	if !e.isDirty {
		e.isDirty = true
		t.dirty = append(t.dirty, e)
	}
}

// apply changes the table for one event. Events from different CPUs can
// arrive out of order (an exec before its fork, an exit before its exec), so
// each rule keeps what an earlier-applied, later-happened event established.
func (t *tableTx) apply(ev *capture.Event) error {
	switch ev.Kind {
	case capture.KindFork:
		e, err := t.get(ev.Proc)
		if err != nil {
			return err
		}
		if e.exists {
			// Exec or exit applied first, or a duplicate: only fill gaps.
			if e.p.Parent.IsZero() && !ev.Parent.IsZero() {
				e.p.Parent = ev.Parent
				t.touch(e)
			}
			return nil
		}
		p := capture.Process{Key: ev.Proc, Parent: ev.Parent, Comm: ev.Comm, StartTime: ev.Time}
		if !ev.Parent.IsZero() {
			par, err := t.parentOf(ev.Parent)
			if err != nil {
				return err
			}
			if par != nil {
				// A forked child runs its parent's image until it execs.
				p.Exec = par.Exec
				if p.Comm == "" {
					p.Comm = par.Comm
				}
			}
		}
		e.p, e.exists = p, true
		t.touch(e)
	case capture.KindExec:
		e, err := t.get(ev.Proc)
		if err != nil {
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
		t.touch(e)
	case capture.KindExit:
		e, err := t.get(ev.Proc)
		if err != nil {
			return err
		}
		if !e.exists {
			e.p, e.exists = capture.Process{Key: ev.Proc, Parent: ev.Parent, Comm: ev.Comm}, true
		}
		if e.p.ExitTime != 0 {
			if e.p.Exit == nil && ev.Exit != nil {
				x := *ev.Exit
				e.p.Exit = &x
				t.touch(e)
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
		t.touch(e)
	}
	// Connect, accept and close do not change the table.
	return nil
}

// parentOf finds a parent entry. A source that knows only the parent's pid
// sends Start 0; then the live incarnation of that pid is the parent.
func (t *tableTx) parentOf(k capture.ProcKey) (*capture.Process, error) {
	e, err := t.get(k)
	if err != nil {
		return nil, err
	}
	if e.exists {
		return &e.p, nil
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

// write adds the changed entries and their index changes to b, then forgets
// them, so that a long transaction (Seed) can write as it goes and hold only
// the encodings. An entry must not be changed again after it was written:
// reads do not see b.
func (t *tableTx) write(b *pebble.Batch) error {
	for _, e := range t.dirty {
		k := e.p.Key
		v, err := encodeProcess(&e.p)
		if err != nil {
			return err
		}
		if err := b.Set(procSpaceKey(spaceProc, k), v, nil); err != nil {
			return err
		}
		t.written = append(t.written, written{key: k, enc: v, live: e.p.ExitTime == 0})
		wasLive := e.orig.exists && e.orig.exitTime == 0
		wasExited := e.orig.exists && e.orig.exitTime != 0
		live := e.p.ExitTime == 0
		switch {
		case wasLive && !live:
			b.Delete(procSpaceKey(spaceLive, k), nil)
			t.dLive--
		case !wasLive && live:
			b.Set(procSpaceKey(spaceLive, k), nil, nil)
			t.dLive++
		}
		if wasExited && (live || e.orig.exitTime != e.p.ExitTime) {
			b.Delete(exitedKey(e.orig.exitTime, k), nil)
			t.dExited--
			wasExited = false
		}
		if !live {
			// Set even when unchanged: the value carries the parent.
			b.Set(exitedKey(e.p.ExitTime, k), procKeyValue(e.p.Parent), nil)
			if !wasExited {
				t.dExited++
			}
		}
		if e.orig.parent != e.p.Parent {
			if !e.orig.parent.IsZero() {
				b.Delete(childKey(e.orig.parent, k), nil)
			}
			if !e.p.Parent.IsZero() {
				b.Set(childKey(e.p.Parent, k), nil, nil)
			}
		}
	}
	for _, k := range t.orphans {
		b.Delete(k, nil)
		t.dLive--
		t.written = append(t.written, written{key: getProcKey(k[1:])})
	}
	t.dirty, t.orphans = t.dirty[:0], nil
	clear(t.ents)
	return nil
}

// committed updates the live cache once the batch written by write has
// been committed.
func (t *tableTx) committed() {
	for _, w := range t.written {
		if w.live {
			t.cache.put(w.key, w.enc)
		} else {
			t.cache.del(w.key)
		}
	}
}

// liveCache holds the encodings of live processes, the entries nearly every
// fork, exec and exit reads. Without it each of those is a Pebble Get that
// misses the small block cache, which made the table (not the events) the
// cost of Append. It is bounded by max bytes: past that, entries are read
// from Pebble as before. It never holds a stale entry: every write of a
// process updates or drops it. Guarded by Local.wmu.
type liveCache struct {
	m     map[capture.ProcKey][]byte
	bytes int
	max   int
}

func newLiveCache(max int) *liveCache {
	return &liveCache{m: make(map[capture.ProcKey][]byte), max: max}
}

func (c *liveCache) get(k capture.ProcKey) ([]byte, bool) {
	v, ok := c.m[k]
	return v, ok
}

func (c *liveCache) put(k capture.ProcKey, v []byte) {
	if old, ok := c.m[k]; ok {
		c.bytes += len(v) - len(old)
		c.m[k] = v
		return
	}
	if c.bytes+len(v) > c.max {
		return
	}
	c.m[k] = v
	c.bytes += len(v)
}

func (c *liveCache) del(k capture.ProcKey) {
	if old, ok := c.m[k]; ok {
		c.bytes -= len(old)
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
		v, closer, err := r.Get(append([]byte{spaceProc}, it.Key()[1:]...))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load live processes: %w", err)
		}
		c.put(getProcKey(it.Key()[1:]), append([]byte(nil), v...))
		closer.Close()
	}
	return it.Close()
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
	tx := newTableTx(l.db, l.cache, l.opts.Now)
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
		tx.touch(e)
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
			tx.touch(e)
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

func getProc(r pebble.Reader, k capture.ProcKey) (capture.Process, bool, error) {
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
		k := getProcKey(it.Key()[1:])
		p, found, err := getProc(r, k)
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
	space := spaceLive
	if includeExited {
		space = spaceProc
	}
	it, err := snap.NewIter(spaceBounds(space))
	if err != nil {
		return nil, fmt.Errorf("processes: %w", err)
	}
	defer it.Close()
	var out []capture.Process
	for it.First(); it.Valid(); it.Next() {
		if includeExited {
			v, err := it.ValueAndErr()
			if err != nil {
				return nil, fmt.Errorf("processes: %w", err)
			}
			p, err := decodeProcess(v)
			if err != nil {
				return nil, fmt.Errorf("process %s: %w", getProcKey(it.Key()[1:]), err)
			}
			out = append(out, p)
			continue
		}
		p, ok, err := getProc(snap, getProcKey(it.Key()[1:]))
		if err != nil {
			return nil, err
		}
		if ok {
			out = append(out, p)
		}
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
