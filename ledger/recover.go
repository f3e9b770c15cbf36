package ledger

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"

	"golang.org/x/mod/sumdb/tlog"
)

// recoverNote is the payload of a KindRecover entry.
type recoverNote struct {
	At        int64    `cbor:"1,keyasint"` // index where the log was cut (this entry's own index)
	Offset    int64    `cbor:"2,keyasint"` // byte offset of the cut in entries
	Dropped   int64    `cbor:"3,keyasint"` // bytes dropped
	LostCount int64    `cbor:"4,keyasint"` // acknowledged entries lost (the hashes file covered them)
	Lost      [][]byte `cbor:"5,keyasint"` // their leaf hashes, the first maxLostListed
	Reason    string   `cbor:"6,keyasint"`
}

const maxLostListed = 1000

// Recovery is what a KindRecover entry says, as Verify reports it.
type Recovery struct {
	Entry     int64 // index of the recover entry: the log was cut here
	Dropped   int64 // bytes of torn tail dropped
	LostCount int64 // acknowledged entries lost
	Lost      []tlog.Hash
	Reason    string
}

// leavesFor is the largest n with StoredHashCount(n) <= count.
func leavesFor(count int64) int64 {
	// StoredHashCount(n) >= n, so n <= count.
	lo, hi := int64(0), count
	for lo < hi {
		mid := hi - (hi-lo)/2
		if tlog.StoredHashCount(mid) <= count {
			lo = mid
		} else {
			hi = mid - 1
		}
	}
	return lo
}

// recover brings the files to a consistent committed state; see the package
// doc. It runs before the ledger is shared.
func (l *Ledger) recover() error {
	size, err := l.checkMagic()
	if err != nil {
		return err
	}
	hst, err := l.hashes.Stat()
	if err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	ist, err := l.index.Stat()
	if err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	nh := leavesFor(hst.Size() / hashSize) // leaves the hashes file commits
	ni := ist.Size() / 8
	hr := hashReader{f: l.hashes, count: tlog.StoredHashCount(nh)}

	// Find where to start reading: the last entry both the index and the
	// hashes file cover, if the index points at it.
	t, off := l.trustPoint(min(nh, ni), size)

	// Read the tail.
	rr := newRecordReader(io.NewSectionReader(l.entries, off, size-off), off, size)
	var (
		offs   []int64
		leaves []tlog.Hash
		cut    *recordError
		cutOff int64
		i      = t
	)
	for {
		raw, o, err := rr.next()
		if err == io.EOF {
			break
		}
		if err == nil {
			_, err = raw.check(i)
		}
		if err != nil {
			if !errors.As(err, &cut) {
				return fmt.Errorf("ledger: open: %w", err)
			}
			cutOff = o
			break
		}
		leaf := tlog.RecordHash(raw.header)
		if i < nh {
			stored, err := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, i)})
			if err != nil {
				return fmt.Errorf("ledger: open: %w", err)
			}
			switch {
			case stored[0] == tlog.Hash{}:
				// Zeros where a hash should be: the hashes file's tail was
				// not written when the machine stopped. It commits only
				// what came before.
				l.log.Warn("hashes file has a zeroed tail; it commits fewer entries", "entries", i, "was", nh)
				nh = i
				hr.count = tlog.StoredHashCount(nh)
			case stored[0] != leaf:
				return fmt.Errorf("ledger: open: entry %d: leaf hash does not match the hashes file: %w", i, ErrTampered)
			}
		}
		offs = append(offs, o)
		leaves = append(leaves, leaf)
		i++
	}
	ne := i

	var note *recoverNote
	if cut != nil {
		if ne < nh && !cut.torn {
			// An acknowledged record is damaged with its full length on
			// disk: not a torn write.
			return fmt.Errorf("ledger: open: entry %d: %s (run `daemoneye ledger verify`): %w", ne, cut.reason, ErrTampered)
		}
		note = &recoverNote{At: ne, Offset: cutOff, Dropped: size - cutOff, Reason: cut.reason}
		if err := l.entries.Truncate(cutOff); err != nil {
			return fmt.Errorf("ledger: open: cut torn tail: %w", err)
		}
		if err := l.entries.Sync(); err != nil {
			return fmt.Errorf("ledger: open: cut torn tail: %w", err)
		}
		size = cutOff
	}
	if ne < nh {
		// The hashes file committed entries that are gone.
		if note == nil {
			note = &recoverNote{At: ne, Offset: size, Reason: "entries file ends early"}
		}
		note.LostCount = nh - ne
		for j := ne; j < nh && j-ne < maxLostListed; j++ {
			h, err := hr.ReadHashes([]int64{tlog.StoredHashIndex(0, j)})
			if err != nil {
				return fmt.Errorf("ledger: open: %w", err)
			}
			note.Lost = append(note.Lost, h[0][:])
		}
		nh = ne
	}
	if note != nil {
		level := "unacknowledged"
		if note.LostCount > 0 {
			level = "ACKNOWLEDGED"
		}
		l.log.Error("torn tail cut from the ledger", "at_entry", note.At, "offset", note.Offset,
			"bytes_dropped", note.Dropped, "lost_entries", note.LostCount, "lost_kind", level, "reason", note.Reason)
	}

	// Bring hashes and index to exactly the entries kept.
	hcount := tlog.StoredHashCount(nh)
	if hst.Size() != hcount*hashSize {
		if err := l.hashes.Truncate(hcount * hashSize); err != nil {
			return fmt.Errorf("ledger: open: %w", err)
		}
	}
	if err := l.index.Truncate(t * 8); err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	l.front = frontier{fallback: hashReader{f: l.hashes, count: hcount}}
	var hbuf, ibuf []byte
	for k, o := range offs {
		j := t + int64(k)
		ibuf = binary.BigEndian.AppendUint64(ibuf, uint64(o))
		if j < nh {
			continue
		}
		hs, err := tlog.StoredHashesForRecordHash(j, leaves[k], &l.front)
		if err != nil {
			return fmt.Errorf("ledger: open: %w", err)
		}
		l.front.add(j, hs)
		for _, h := range hs {
			hbuf = append(hbuf, h[:]...)
		}
	}
	if _, err := l.hashes.WriteAt(hbuf, hcount*hashSize); err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	if _, err := l.index.WriteAt(ibuf, t*8); err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	if err := errors.Join(l.hashes.Sync(), l.index.Sync()); err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	if ne > nh {
		l.log.Info("entries past the hashes file kept (written, not acknowledged)", "from", nh, "to", ne)
	}
	l.front.fallback = hashReader{f: l.hashes, count: tlog.StoredHashCount(ne)}
	l.end.Store(size)
	l.size.Store(ne)

	if err := l.loadCheckpoints(); err != nil {
		return err
	}
	if err := l.finishPurge(); err != nil {
		return err
	}
	if note != nil {
		if err := l.appendRecover(*note); err != nil {
			return err
		}
	}
	if l.lastCP.Size != l.size.Load() {
		if _, err := l.checkpointLocked(); err != nil {
			return err
		}
	}
	return nil
}

// checkMagic creates or checks the entries file's first line and returns
// the file size.
func (l *Ledger) checkMagic() (int64, error) {
	st, err := l.entries.Stat()
	if err != nil {
		return 0, fmt.Errorf("ledger: open: %w", err)
	}
	n := min(st.Size(), int64(len(magic)))
	head := make([]byte, n)
	if _, err := l.entries.ReadAt(head, 0); err != nil && err != io.EOF {
		return 0, fmt.Errorf("ledger: open: %w", err)
	}
	if !bytes.HasPrefix([]byte(magic), head) {
		return 0, fmt.Errorf("ledger: open: %s is not a ledger entries file: %w", filepath.Join(l.dir, entriesFile), ErrTampered)
	}
	if n == int64(len(magic)) {
		return st.Size(), nil
	}
	// New, or created by a process that stopped before the first line was
	// on disk.
	if _, err := l.entries.WriteAt([]byte(magic), 0); err != nil {
		return 0, fmt.Errorf("ledger: open: %w", err)
	}
	if err := l.entries.Sync(); err != nil {
		return 0, fmt.Errorf("ledger: open: %w", err)
	}
	if err := syncDir(l.dir); err != nil {
		return 0, fmt.Errorf("ledger: open: %w", err)
	}
	return int64(len(magic)), nil
}

// trustPoint returns the entry count t at which to start reading the tail and
// its offset: record t-1, as the index says, must be where it claims. If the
// index disagrees (a crash left zeros, or it was damaged), step back.
func (l *Ledger) trustPoint(t, size int64) (int64, int64) {
	for step := int64(1); t > 0; step *= 2 {
		var b [8]byte
		if _, err := l.index.ReadAt(b[:], (t-1)*8); err == nil {
			o := int64(binary.BigEndian.Uint64(b[:]))
			if o >= int64(len(magic)) && o < size {
				if raw, err := readRecordAt(l.entries, o, size); err == nil {
					if h, err := decodeHeader(raw.header); err == nil && h.Index == t-1 {
						return t, o + raw.size
					}
				}
			}
		}
		l.log.Warn("offset index disagrees with entries; reading further back", "entry", t-1)
		t = max(t-step, 0)
	}
	return 0, int64(len(magic))
}

// loadCheckpoints reads the checkpoints file, cutting a torn last record.
func (l *Ledger) loadCheckpoints() error {
	b, err := io.ReadAll(io.NewSectionReader(l.cpts, 0, 1<<40))
	if err != nil {
		return fmt.Errorf("ledger: open: checkpoints: %w", err)
	}
	cps, good, err := parseCheckpointsFile(b)
	if err != nil {
		return fmt.Errorf("ledger: open: checkpoints: %w", err)
	}
	if good != int64(len(b)) {
		l.log.Warn("torn checkpoint record cut", "bytes", int64(len(b))-good)
		if err := l.cpts.Truncate(good); err != nil {
			return fmt.Errorf("ledger: open: checkpoints: %w", err)
		}
	}
	if len(cps) == 0 {
		return nil
	}
	last, err := parseUnverified(cps[len(cps)-1])
	if err != nil {
		return fmt.Errorf("ledger: open: last checkpoint: %v: %w", err, ErrTampered)
	}
	n := l.size.Load()
	switch {
	case last.Size > n:
		l.log.Error("last checkpoint is beyond the log: entries were lost", "checkpoint_size", last.Size, "size", n)
	default:
		root, err := tlog.TreeHash(last.Size, l.reader(last.Size))
		if err != nil {
			return fmt.Errorf("ledger: open: %w", err)
		}
		if root != last.Root {
			l.log.Error("last checkpoint is not consistent with the log", "checkpoint_size", last.Size)
		} else {
			l.lastCP = last
		}
	}
	return nil
}

// parseCheckpointsFile splits the checkpoints file. good is the length of
// the well-framed prefix; a torn last record is not an error.
func parseCheckpointsFile(b []byte) (cps [][]byte, good int64, err error) {
	for off := 0; off < len(b); {
		if len(b)-off < 4 {
			return cps, int64(off), nil
		}
		n := int(binary.BigEndian.Uint32(b[off:]))
		if n == 0 || n > 64<<10 {
			return cps, int64(off), fmt.Errorf("record at offset %d has length %d: %w", off, n, ErrTampered)
		}
		if len(b)-off-4 < n {
			return cps, int64(off), nil
		}
		cps = append(cps, b[off+4:off+4+n])
		off += 4 + n
		good = int64(off)
	}
	return cps, good, nil
}

// appendRecover writes the KindRecover entry describing a cut.
func (l *Ledger) appendRecover(n recoverNote) error {
	payload, err := encMode.Marshal(n)
	if err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	e := Entry{Kind: KindRecover, Actor: ledgerActor, Time: l.opts.Now(), Payload: payload}
	if err := checkEntry(e, true); err != nil {
		return err
	}
	p := &pending{entries: []Entry{e}, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	l.commitLocked([]*pending{p})
	if p.err != nil {
		return fmt.Errorf("ledger: open: record the recovery: %w", p.err)
	}
	return nil
}

func decodeRecover(idx int64, payload []byte) (Recovery, error) {
	var n recoverNote
	if err := decMode.Unmarshal(payload, &n); err != nil {
		return Recovery{}, err
	}
	r := Recovery{Entry: idx, Dropped: n.Dropped, LostCount: n.LostCount, Reason: n.Reason}
	for _, h := range n.Lost {
		if len(h) != hashSize {
			return Recovery{}, fmt.Errorf("lost leaf hash of %d bytes", len(h))
		}
		r.Lost = append(r.Lost, tlog.Hash(h))
	}
	return r, nil
}

// sortedUnique sorts and removes duplicates.
func sortedUnique(xs []int64) []int64 {
	xs = append([]int64(nil), xs...)
	sort.Slice(xs, func(a, b int) bool { return xs[a] < xs[b] })
	out := xs[:0]
	for k, x := range xs {
		if k == 0 || x != xs[k-1] {
			out = append(out, x)
		}
	}
	return out
}
