package ledger

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"
)

// VerifyOptions are Verify's optional inputs.
type VerifyOptions struct {
	// Seen are signed checkpoints obtained before (from forensic packages,
	// auditors, an earlier verify): the log must still extend each.
	Seen [][]byte
	// Progress, if set, is called as entries are checked.
	Progress func(done, total int64)
}

// Report is what Verify found.
type Report struct {
	Origin      string
	Entries     int64     // committed entries, every one checked
	Root        tlog.Hash // root of the tree of Entries entries
	Purged      int64     // entries whose payload retention dropped (with a purge entry)
	Kinds       map[string]int64
	Checkpoints int        // stored checkpoints verified (checkpoints file and checkpoint)
	Latest      Checkpoint // the largest stored checkpoint (Size -1 if none)
	Seen        int        // seen checkpoints verified
	Recoveries  []Recovery // torn tails Open cut, from the log's own recover entries

	// A crash can leave records past what the hashes file commits. They were
	// never acknowledged; Open keeps the valid ones and cuts the rest.
	Unacknowledged int64 // complete, valid records past the hashes file
	TornBytes      int64 // bytes past those that do not form a valid record
}

// VerifyError names the first thing that failed. It wraps ErrTampered.
type VerifyError struct {
	Entry  int64 // the first bad entry, or -1 when the failure is not an entry's
	Seen   int   // 1-based index in VerifyOptions.Seen of the failing checkpoint, or 0
	Reason string
}

func (e *VerifyError) Error() string {
	if e.Entry >= 0 {
		return fmt.Sprintf("entry %d: %s", e.Entry, e.Reason)
	}
	return e.Reason
}

func (e *VerifyError) Unwrap() error { return ErrTampered }

func entryFail(i int64, format string, args ...any) error {
	return &VerifyError{Entry: i, Reason: fmt.Sprintf(format, args...)}
}

func fail(format string, args ...any) error {
	return &VerifyError{Entry: -1, Reason: fmt.Sprintf(format, args...)}
}

// Verify checks the ledger in dir without trusting anything in it but the
// center's note verifier v: every stored and seen checkpoint's signature;
// every record (framing, canonical header, index, payload against its leaf,
// purged areas zeroed and each purge recorded by a purge entry); every stored
// hash and index offset recomputed from the records; and that every
// checkpoint, stored or seen, is a prefix of the tree. The first failure is
// a *VerifyError naming the first bad entry where there is one. It needs no
// lock and may run while the center appends; it checks what was committed
// when it started. (A purge applied while it runs can show it an entry half
// purged; run it again.)
func Verify(ctx context.Context, dir string, v note.Verifier, opts VerifyOptions) (Report, error) {
	rep := Report{Origin: v.Name(), Kinds: map[string]int64{}, Latest: Checkpoint{Size: -1}}

	// Checkpoints first: they were made from committed trees, so anything
	// read after them covers them.
	stored, err := readStoredCheckpoints(dir, v)
	if err != nil {
		return rep, err
	}
	var seen []Checkpoint
	for k, b := range opts.Seen {
		cp, err := openCheckpoint(b, v)
		if err != nil {
			return rep, &VerifyError{Entry: -1, Seen: k + 1, Reason: fmt.Sprintf("seen checkpoint %d: %v", k+1, err)}
		}
		seen = append(seen, cp)
	}

	hf, err := os.Open(filepath.Join(dir, hashesFile))
	if err != nil {
		return rep, fmt.Errorf("ledger: verify: %w", err)
	}
	defer hf.Close()
	hst, err := hf.Stat()
	if err != nil {
		return rep, fmt.Errorf("ledger: verify: %w", err)
	}
	n := leavesFor(hst.Size() / hashSize)

	ef, err := os.Open(filepath.Join(dir, entriesFile))
	if err != nil {
		return rep, fmt.Errorf("ledger: verify: %w", err)
	}
	defer ef.Close()
	est, err := ef.Stat()
	if err != nil {
		return rep, fmt.Errorf("ledger: verify: %w", err)
	}
	end := est.Size()
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(ef, head); err != nil || string(head) != magic {
		if n == 0 && bytes.HasPrefix([]byte(magic), head[:min(end, int64(len(magic)))]) {
			head = nil // created, never written: an empty log
		} else {
			return rep, fail("entries file does not start with the ledger's first line")
		}
	}
	var xf *os.File // the index is optional: Open rebuilds it
	if f, err := os.Open(filepath.Join(dir, indexFile)); err == nil {
		xf = f
		defer xf.Close()
	}

	sc := scanner{n: n, end: end, hashes: bufio.NewReaderSize(hf, 1<<16), rep: &rep,
		purged: newBitset(n), authorized: newBitset(n), progress: opts.Progress}
	if xf != nil {
		if st, err := xf.Stat(); err == nil {
			sc.index = bufio.NewReaderSize(xf, 1<<16)
			sc.indexed = min(st.Size()/8, n)
		}
	}
	if head != nil {
		if err := sc.scan(ctx, newRecordReader(ef, int64(len(magic)), end)); err != nil {
			return rep, err
		}
	} else if n > 0 {
		return rep, entryFail(0, "record missing")
	}
	rep.Entries = n

	// A purged payload must have been purged by a purge entry.
	for i := int64(0); rep.Purged > 0 && i < n; i++ {
		if sc.purged.has(i) && !sc.authorized.has(i) {
			return rep, entryFail(i, "payload purged without a purge entry")
		}
	}

	// Every checkpoint must be a prefix of this tree.
	hr := hashReader{f: hf, count: tlog.StoredHashCount(n)}
	rep.Root, err = tlog.TreeHash(n, hr)
	if err != nil {
		return rep, fmt.Errorf("ledger: verify: %w", err)
	}
	head2 := Checkpoint{Size: n, Root: rep.Root}
	check := func(cp Checkpoint, what string) error {
		if cp.Size > n {
			return fail("checkpoint at size %d is beyond the log (size %d): committed entries are missing (%s)", cp.Size, n, what)
		}
		var proof tlog.TreeProof
		if cp.Size > 0 {
			if proof, err = tlog.ProveTree(n, cp.Size, hr); err != nil {
				return fmt.Errorf("ledger: verify: %w", err)
			}
		}
		if checkConsistency(cp, head2, proof) != nil {
			return fail("checkpoint at size %d is not consistent with the log (%s)", cp.Size, what)
		}
		return nil
	}
	for _, s := range stored {
		if err := check(s.cp, s.what); err != nil {
			return rep, err
		}
		rep.Checkpoints++
		if s.cp.Size > rep.Latest.Size {
			rep.Latest = s.cp
		}
	}
	for k, cp := range seen {
		if err := check(cp, fmt.Sprintf("seen checkpoint %d", k+1)); err != nil {
			var ve *VerifyError
			if errors.As(err, &ve) {
				ve.Seen = k + 1
			}
			return rep, err
		}
		rep.Seen++
	}

	// Open cuts torn tails; if what it cut had been acknowledged (the
	// hashes file covered it), entries were deleted, whatever the cause.
	for _, r := range rep.Recoveries {
		if r.LostCount > 0 {
			return rep, entryFail(r.Entry, "the log lost %d acknowledged entries here (%s; their leaf hashes are in this recover entry)", r.LostCount, r.Reason)
		}
	}
	return rep, nil
}

type storedCheckpoint struct {
	cp   Checkpoint
	what string
}

// readStoredCheckpoints reads and verifies the checkpoints file and the
// latest checkpoint file.
func readStoredCheckpoints(dir string, v note.Verifier) ([]storedCheckpoint, error) {
	var out []storedCheckpoint
	b, err := os.ReadFile(filepath.Join(dir, checkpointsFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("ledger: verify: %w", err)
	}
	notes, _, err := parseCheckpointsFile(b)
	if err != nil {
		return nil, fail("checkpoints file: %v", err)
	}
	for k, nb := range notes {
		cp, err := openCheckpoint(nb, v)
		if err != nil {
			return nil, fail("stored checkpoint %d: %v", k+1, err)
		}
		out = append(out, storedCheckpoint{cp, fmt.Sprintf("stored checkpoint %d", k+1)})
	}
	b, err = os.ReadFile(filepath.Join(dir, checkpointFile))
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("ledger: verify: %w", err)
	default:
		cp, err := openCheckpoint(b, v)
		if err != nil {
			return nil, fail("checkpoint file: %v", err)
		}
		out = append(out, storedCheckpoint{cp, "checkpoint file"})
	}
	return out, nil
}

// scanner walks the entries file once.
type scanner struct {
	n, end     int64 // committed entries; entries file size
	hashes     *bufio.Reader
	index      *bufio.Reader
	indexed    int64 // entries the index file covers (within n)
	front      frontier
	purged     bitset
	authorized bitset
	rep        *Report
	progress   func(done, total int64)
}

func (s *scanner) scan(ctx context.Context, rr *recordReader) error {
	var stored [64]tlog.Hash
	for i := int64(0); ; i++ {
		if i&0xfff == 0 {
			if err := ctx.Err(); err != nil {
				return err
			}
			if s.progress != nil && i <= s.n {
				s.progress(i, s.n)
			}
		}
		raw, off, err := rr.next()
		if i >= s.n {
			// Past the commit point: report, do not fail.
			if err == nil {
				_, err = raw.check(i)
			}
			if err == io.EOF {
				break
			}
			var re *recordError
			if errors.As(err, &re) {
				s.rep.TornBytes = s.end - off
				break
			}
			if err != nil {
				return err
			}
			s.rep.Unacknowledged++
			continue
		}
		if err == io.EOF {
			return entryFail(i, "record missing: the entries file ends at offset %d, the hashes file commits %d entries", off, s.n)
		}
		var h header
		if err == nil {
			h, err = raw.check(i)
		}
		if err != nil {
			var re *recordError
			if errors.As(err, &re) {
				return entryFail(i, "%s", re.reason)
			}
			return err
		}
		leaf := tlog.RecordHash(raw.header)
		hs, err := tlog.StoredHashesForRecordHash(i, leaf, &s.front)
		if err != nil {
			return fmt.Errorf("ledger: verify: %w", err)
		}
		s.front.add(i, hs)
		for k := range hs {
			if _, err := io.ReadFull(s.hashes, stored[k][:]); err != nil {
				return fmt.Errorf("ledger: verify: hashes: %w", err)
			}
		}
		for k, h := range hs {
			if stored[k] != h {
				if k == 0 {
					return entryFail(i, "leaf hash does not match the hashes file")
				}
				return entryFail(i, "hashes file: the level-%d tree node this entry completes does not match", k)
			}
		}
		if i < s.indexed {
			var b [8]byte
			if _, err := io.ReadFull(s.index, b[:]); err != nil {
				return fmt.Errorf("ledger: verify: index: %w", err)
			}
			if int64(binary.BigEndian.Uint64(b[:])) != off {
				return entryFail(i, "offset index is wrong")
			}
		}
		if err := s.account(i, raw, h); err != nil {
			return err
		}
	}
	if s.progress != nil {
		s.progress(s.n, s.n)
	}
	return nil
}

// account records what the report and the purge check need.
func (s *scanner) account(i int64, raw rawRecord, h header) error {
	s.rep.Kinds[h.Kind]++
	own := len(h.Kind) >= len(reservedPrefix) && h.Kind[:len(reservedPrefix)] == reservedPrefix
	if raw.flags == flagPurged {
		if own {
			return entryFail(i, "the ledger's own %s entry is purged", h.Kind)
		}
		s.purged.set(i)
		s.rep.Purged++
		return nil
	}
	switch h.Kind {
	case KindPurge:
		var pn purgeNote
		if err := decMode.Unmarshal(raw.payload, &pn); err != nil {
			return entryFail(i, "purge entry is malformed: %v", err)
		}
		for _, j := range pn.Indexes {
			if j < 0 || j >= i {
				return entryFail(i, "purge entry names entry %d, which is not before it", j)
			}
			s.authorized.set(j)
		}
	case KindRecover:
		r, err := decodeRecover(i, raw.payload)
		if err != nil {
			return entryFail(i, "recover entry is malformed: %v", err)
		}
		s.rep.Recoveries = append(s.rep.Recoveries, r)
	}
	return nil
}

type bitset []uint64

func newBitset(n int64) bitset    { return make(bitset, (n+63)/64) }
func (b bitset) set(i int64)      { b[i/64] |= 1 << (i % 64) }
func (b bitset) has(i int64) bool { return b[i/64]&(1<<(i%64)) != 0 }
