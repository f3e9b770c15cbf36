package ledger

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"unicode/utf8"
)

// purgeNote is the payload of a KindPurge entry.
type purgeNote struct {
	Indexes []int64 `cbor:"1,keyasint"`
	Reason  string  `cbor:"2,keyasint"`
}

const (
	maxPurgeIndexes = 1 << 16 // entries one PurgePayloads call may name
	maxReason       = 1024
)

// PurgePayloads drops the payloads of the entries at indexes (retention).
// Their leaves, and every proof and checkpoint, stay valid: a leaf commits to
// its payload's hash. The purge is first appended as a KindPurge entry by
// actor, with reason; its index is returned (-1 if every entry named was
// already purged). Entries of the ledger's own kinds are refused. This is
// the only change made to a stored record, and it is not an update: the
// payload bytes become zeros, nothing else moves.
func (l *Ledger) PurgePayloads(indexes []int64, actor, reason string) (int64, error) {
	switch {
	case len(indexes) == 0:
		return -1, errors.New("ledger: purge: no entries named")
	case len(indexes) > maxPurgeIndexes:
		return -1, fmt.Errorf("ledger: purge: %d entries named, at most %d per call", len(indexes), maxPurgeIndexes)
	case !validActor(actor) || actor == "":
		return -1, fmt.Errorf("ledger: purge: actor %q: want printable UTF-8, at most %d bytes", actor, MaxActor)
	case len(reason) > maxReason || !utf8.ValidString(reason):
		return -1, fmt.Errorf("ledger: purge: reason: want UTF-8, at most %d bytes", maxReason)
	}
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	if err := l.writable(); err != nil {
		return -1, err
	}
	size := l.size.Load()
	var todo []int64
	for _, i := range sortedUnique(indexes) {
		if i < 0 || i >= size {
			return -1, fmt.Errorf("ledger: purge: entry %d: out of range (size %d)", i, size)
		}
		off, err := l.offset(i)
		if err != nil {
			return -1, fmt.Errorf("ledger: purge: %w", err)
		}
		flags, h, _, err := l.readHeaderAt(i, off)
		if err != nil {
			return -1, fmt.Errorf("ledger: purge: %w", err)
		}
		if strings.HasPrefix(h.Kind, reservedPrefix) {
			return -1, fmt.Errorf("ledger: purge: entry %d is the ledger's own (%s) and is never purged", i, h.Kind)
		}
		if flags != flagPurged {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return -1, nil
	}
	payload, err := encMode.Marshal(purgeNote{Indexes: todo, Reason: reason})
	if err != nil {
		return -1, fmt.Errorf("ledger: purge: %w", err)
	}
	e := Entry{Kind: KindPurge, Actor: actor, Time: l.opts.Now(), Payload: payload}
	if err := checkEntry(e, true); err != nil {
		return -1, fmt.Errorf("ledger: purge: %w", err)
	}
	// The intent goes to disk before anything changes, so that Open can
	// finish a purge a crash interrupted.
	k := size
	pendingPath := filepath.Join(l.dir, pendingFile)
	if err := writeFileAtomic(pendingPath, []byte(strconv.FormatInt(k, 10)+"\n"), 0o600); err != nil {
		return -1, fmt.Errorf("ledger: purge: %w", err)
	}
	p := &pending{entries: []Entry{e}, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	l.commitLocked([]*pending{p})
	if p.err != nil {
		return -1, fmt.Errorf("ledger: purge: %w", p.err)
	}
	if err := l.applyPurge(todo); err != nil {
		l.broken = err
		return k, fmt.Errorf("ledger: purge: entry %d recorded, applying it failed (Open finishes it): %w", k, err)
	}
	if err := os.Remove(pendingPath); err != nil {
		return k, fmt.Errorf("ledger: purge: %w", err)
	}
	l.log.Info("payloads purged", "entries", len(todo), "purge_entry", k, "actor", actor)
	l.maybeCheckpointLocked()
	return k, nil
}

// readHeaderAt reads flags, header and the payload area's offset and length
// of record i at off, without reading the payload.
func (l *Ledger) readHeaderAt(i, off int64) (byte, header, [2]int64, error) {
	end := l.end.Load()
	b := make([]byte, min(int64(lenPrefix+bodyFixed+maxHeader), end-off))
	if _, err := l.entries.ReadAt(b, off); err != nil {
		return 0, header{}, [2]int64{}, entryErr(i, readErr(err))
	}
	if len(b) < lenPrefix+bodyFixed {
		return 0, header{}, [2]int64{}, entryErr(i, &recordError{reason: "record truncated", torn: true})
	}
	n := int64(binary.BigEndian.Uint32(b))
	hl := int(binary.BigEndian.Uint16(b[lenPrefix+1:]))
	flags := b[lenPrefix]
	if n > end-off-lenPrefix || hl == 0 || hl > maxHeader || lenPrefix+bodyFixed+hl > len(b) || int64(bodyFixed+hl) > n {
		return 0, header{}, [2]int64{}, entryErr(i, badRecord("record framing is wrong"))
	}
	if flags != flagLive && flags != flagPurged {
		return 0, header{}, [2]int64{}, entryErr(i, badRecord("unknown flags 0x%02x", flags))
	}
	h, err := decodeHeader(b[lenPrefix+bodyFixed : lenPrefix+bodyFixed+hl])
	if err != nil {
		return 0, header{}, [2]int64{}, entryErr(i, err)
	}
	if h.Index != i {
		return 0, header{}, [2]int64{}, entryErr(i, badRecord("header says index %d", h.Index))
	}
	areaOff := off + lenPrefix + bodyFixed + int64(hl)
	areaLen := n - bodyFixed - int64(hl)
	if areaLen != h.PayloadLen {
		return 0, header{}, [2]int64{}, entryErr(i, badRecord("payload length %d does not match its header (%d)", areaLen, h.PayloadLen))
	}
	return flags, h, [2]int64{areaOff, areaLen}, nil
}

// applyPurge flags each record purged, syncs, then zeroes the payload
// areas and syncs. The flag goes first: a record is never left live with
// a zeroed payload.
func (l *Ledger) applyPurge(idx []int64) error {
	l.pmu.Lock()
	defer l.pmu.Unlock()
	areas := make([][2]int64, 0, len(idx))
	for _, i := range idx {
		off, err := l.offset(i)
		if err != nil {
			return err
		}
		_, _, area, err := l.readHeaderAt(i, off)
		if err != nil {
			return err
		}
		if _, err := l.entries.WriteAt([]byte{flagPurged}, off+lenPrefix); err != nil {
			return err
		}
		areas = append(areas, area)
	}
	if err := l.entries.Sync(); err != nil {
		return err
	}
	for _, a := range areas {
		if err := zeroRange(l.entries, a[0], a[1]); err != nil {
			return err
		}
	}
	return l.entries.Sync()
}

// finishPurge completes a purge a crash interrupted (Open).
func (l *Ledger) finishPurge() error {
	path := filepath.Join(l.dir, pendingFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	k, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	switch {
	case err != nil || k < 0:
		l.log.Warn("unreadable purge.pending removed", "content", string(b))
	case k >= l.size.Load():
		l.log.Info("interrupted purge had not been recorded; nothing was changed", "purge_entry", k)
	default:
		rec, err := l.Entry(k)
		if err != nil {
			return fmt.Errorf("ledger: open: finish purge: %w", err)
		}
		if rec.Kind != KindPurge {
			l.log.Warn("purge.pending names an entry that is not a purge; nothing was changed", "entry", k, "kind", rec.Kind)
			break
		}
		var n purgeNote
		if err := decMode.Unmarshal(rec.Payload, &n); err != nil {
			return fmt.Errorf("ledger: open: finish purge: entry %d: %w", k, err)
		}
		if err := l.applyPurge(n.Indexes); err != nil {
			return fmt.Errorf("ledger: open: finish purge: %w", err)
		}
		l.log.Warn("interrupted purge finished", "purge_entry", k, "entries", len(n.Indexes))
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("ledger: open: %w", err)
	}
	return syncDir(l.dir)
}

// zeroWrite writes zeros over [off, off+n).
func zeroWrite(f *os.File, off, n int64) error {
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		c := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:c], off); err != nil {
			return err
		}
		off += c
		n -= c
	}
	return nil
}
