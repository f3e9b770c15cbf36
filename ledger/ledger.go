package ledger

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/evilbitlabs/daemoneye/internal/flock"
)

// Sentinel errors.
var (
	// ErrTampered: stored bytes do not match what the log committed to, or a
	// checkpoint or proof does not verify.
	ErrTampered = errors.New("ledger tampered with")
	// ErrClosed: the ledger was closed.
	ErrClosed = errors.New("ledger closed")
	// ErrLocked: another process has the ledger open for writing.
	ErrLocked = errors.New("ledger locked by another writer")
)

// File names inside the ledger directory.
const (
	entriesFile     = "entries"
	hashesFile      = "hashes"
	indexFile       = "index"
	checkpointsFile = "checkpoints"
	checkpointFile  = "checkpoint"
	pendingFile     = "purge.pending"
	lockFile        = "lock"
)

// Defaults for Options.
const (
	DefaultCheckpointEvery    = 10000
	DefaultCheckpointInterval = 10 * time.Second
)

// Options tune a ledger; the zero value takes the defaults.
type Options struct {
	// CheckpointEvery makes a checkpoint once this many entries were added
	// since the last one (default 10000; negative: only on time and demand).
	CheckpointEvery int64
	// CheckpointInterval is how often Run checkpoints a tree that grew
	// (default 10s).
	CheckpointInterval time.Duration
	// Now stamps entries appended with a zero Time (default time.Now).
	Now func() time.Time
}

// Ledger is an open ledger: one writer, any number of concurrent readers.
type Ledger struct {
	dir    string
	log    *slog.Logger
	signer note.Signer
	opts   Options

	lock                         *os.File
	entries, hashes, index, cpts *os.File

	size atomic.Int64 // committed entries; readers look no further
	end  atomic.Int64 // committed bytes of entries

	// Appends queue here; whoever holds commitMu commits the whole queue
	// with one pair of fsyncs (group commit).
	qmu     sync.Mutex
	queue   []*pending
	leading bool // a caller is committing; the queue waits for its hand-off

	commitMu sync.Mutex // held while committing, checkpointing, purging
	front    frontier   // under commitMu
	lastCP   Checkpoint // under commitMu; Size -1 when there is none
	broken   error      // under commitMu: a failed write leaves the files unknown
	closed   bool       // under commitMu
	wbuf     []byte     // under commitMu

	// pmu keeps readers from seeing a record half purged.
	pmu sync.RWMutex
}

type pending struct {
	entries []Entry
	first   int64
	err     error
	done    chan struct{} // closed once committed or failed
	lead    chan struct{} // the previous leader hands over here
}

// Open opens (creating if needed) the ledger in dir, signing checkpoints with
// signer, whose key name is the log's origin. It takes the directory's write
// lock, recovers from a torn tail (see the package doc) and makes a
// checkpoint if the tree grew since the last one. log may be nil.
func Open(dir string, signer note.Signer, log *slog.Logger, opts Options) (*Ledger, error) {
	if signer == nil {
		return nil, errors.New("ledger: open: no signer")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if opts.CheckpointEvery == 0 {
		opts.CheckpointEvery = DefaultCheckpointEvery
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("ledger: open: %w", err)
	}
	l := &Ledger{dir: dir, log: log.With("component", "ledger", "dir", dir), signer: signer, opts: opts}
	l.lastCP.Size = -1
	lf, err := flock.TryLock(filepath.Join(dir, lockFile))
	if errors.Is(err, flock.ErrHeld) {
		return nil, fmt.Errorf("ledger: lock %s: %w", filepath.Join(dir, lockFile), ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("ledger: %w", err)
	}
	l.lock = lf
	for _, f := range []struct {
		p    **os.File
		name string
	}{{&l.entries, entriesFile}, {&l.hashes, hashesFile}, {&l.index, indexFile}, {&l.cpts, checkpointsFile}} {
		*f.p, err = os.OpenFile(filepath.Join(dir, f.name), os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			l.closeFiles()
			return nil, fmt.Errorf("ledger: open: %w", err)
		}
	}
	if err := l.recover(); err != nil {
		l.closeFiles()
		return nil, err
	}
	return l, nil
}

// Size is the number of committed entries.
func (l *Ledger) Size() int64 { return l.size.Load() }

// Origin is the log's origin line, the signer's key name.
func (l *Ledger) Origin() string { return l.signer.Name() }

// Append adds one entry and returns its index once it is on disk. Concurrent
// Appends share fsyncs.
func (l *Ledger) Append(e Entry) (int64, error) {
	return l.AppendBatch([]Entry{e})
}

// AppendBatch adds entries as consecutive leaves with one commit and returns
// the index of the first. Either all are committed or none are acknowledged.
func (l *Ledger) AppendBatch(entries []Entry) (int64, error) {
	if len(entries) == 0 {
		return l.Size(), nil
	}
	if len(entries) > maxBatchLen {
		return 0, fmt.Errorf("ledger: append: batch of %d entries is over the %d limit", len(entries), maxBatchLen)
	}
	now := l.opts.Now()
	batch := make([]Entry, len(entries))
	total := 0
	for i, e := range entries {
		if err := checkEntry(e, false); err != nil {
			return 0, fmt.Errorf("ledger: append: entry %d of the batch: %w", i, err)
		}
		if total += len(e.Payload); total > maxBatchPay {
			return 0, fmt.Errorf("ledger: append: batch payloads are over %d bytes; split it", maxBatchPay)
		}
		if e.Time.IsZero() {
			e.Time = now
		}
		batch[i] = e
	}
	return l.submit(batch)
}

// submit queues a checked batch. If no commit is under way the caller leads:
// it commits the whole queue, then hands the lead to the first caller that
// queued meanwhile, so that nobody waits for more than two commits.
func (l *Ledger) submit(batch []Entry) (int64, error) {
	p := &pending{entries: batch, done: make(chan struct{}), lead: make(chan struct{}, 1)}
	l.qmu.Lock()
	l.queue = append(l.queue, p)
	if l.leading {
		l.qmu.Unlock()
		select {
		case <-p.done:
			return p.first, p.err
		case <-p.lead:
		}
		l.qmu.Lock()
	}
	l.leading = true
	q := l.queue
	l.queue = nil
	l.qmu.Unlock()

	l.commitMu.Lock()
	l.commitLocked(q)
	l.maybeCheckpointLocked()
	l.commitMu.Unlock()

	l.qmu.Lock()
	if len(l.queue) > 0 {
		l.queue[0].lead <- struct{}{}
	} else {
		l.leading = false
	}
	l.qmu.Unlock()
	return p.first, p.err
}

func (l *Ledger) writable() error {
	if l.closed {
		return ErrClosed
	}
	if l.broken != nil {
		return fmt.Errorf("ledger: an earlier write failed, reopen to recover: %w", l.broken)
	}
	return nil
}

// commitLocked writes every queued batch with one fsync of entries, then
// one of hashes and index, and wakes the callers.
func (l *Ledger) commitLocked(q []*pending) {
	finish := func(err error) {
		for _, p := range q {
			if err != nil {
				p.err = err
			}
			close(p.done)
		}
	}
	if err := l.writable(); err != nil {
		finish(err)
		return
	}
	n := l.size.Load()
	start := n
	end := l.end.Load()
	buf := l.wbuf[:0]
	var hbuf, ibuf []byte
	front := l.front // restored only by reopening if a write fails
	for _, p := range q {
		p.first = n
		for _, e := range p.entries {
			off := end + int64(len(buf))
			var leaf []byte
			var err error
			buf, leaf, err = appendRecord(buf, n, e)
			if err != nil {
				finish(err) // checkEntry makes this unreachable
				return
			}
			hs, err := tlog.StoredHashesForRecordHash(n, tlog.RecordHash(leaf), &front)
			if err != nil {
				finish(fmt.Errorf("ledger: append: %w", err))
				return
			}
			front.add(n, hs)
			for _, h := range hs {
				hbuf = append(hbuf, h[:]...)
			}
			ibuf = binary.BigEndian.AppendUint64(ibuf, uint64(off))
			n++
		}
	}
	if err := l.writeCommit(buf, hbuf, ibuf, start, end); err != nil {
		l.broken = err
		l.log.Error("ledger write failed; appends refused until reopened", "err", err)
		finish(fmt.Errorf("ledger: append: %w", err))
		return
	}
	if cap(buf) <= 4<<20 {
		l.wbuf = buf[:0]
	}
	l.front = front
	l.end.Store(end + int64(len(buf)))
	l.size.Store(n)
	finish(nil)
}

// writeCommit is the durable part of a commit: entries first, then hashes
// and index, so that the hashes file never covers a record not on disk.
func (l *Ledger) writeCommit(buf, hbuf, ibuf []byte, start, end int64) error {
	if _, err := l.entries.WriteAt(buf, end); err != nil {
		return err
	}
	if err := l.entries.Sync(); err != nil {
		return err
	}
	if _, err := l.hashes.WriteAt(hbuf, tlog.StoredHashIndex(0, start)*hashSize); err != nil {
		return err
	}
	if _, err := l.index.WriteAt(ibuf, start*8); err != nil {
		return err
	}
	// The two syncs overlap: the file system usually folds them into one
	// journal commit.
	errc := make(chan error, 1)
	go func() { errc <- l.index.Sync() }()
	err := l.hashes.Sync()
	return errors.Join(err, <-errc)
}

// Entry reads the entry at index i and checks it against its own leaf (the
// payload hash and the index). A purged entry has a nil Payload.
func (l *Ledger) Entry(i int64) (Record, error) {
	if i < 0 || i >= l.Size() {
		return Record{}, fmt.Errorf("ledger: entry %d: out of range (size %d)", i, l.Size())
	}
	off, err := l.offset(i)
	if err != nil {
		return Record{}, err
	}
	l.pmu.RLock()
	raw, err := readRecordAt(l.entries, off, l.end.Load())
	l.pmu.RUnlock()
	if err != nil {
		return Record{}, entryErr(i, err)
	}
	h, err := raw.check(i)
	if err != nil {
		return Record{}, entryErr(i, err)
	}
	return raw.record(h), nil
}

func entryErr(i int64, err error) error {
	var re *recordError
	if errors.As(err, &re) {
		return fmt.Errorf("ledger: entry %d: %s: %w", i, re.reason, ErrTampered)
	}
	return fmt.Errorf("ledger: entry %d: %w", i, err)
}

// offset reads record i's offset from the index file.
func (l *Ledger) offset(i int64) (int64, error) {
	var b [8]byte
	if _, err := l.index.ReadAt(b[:], i*8); err != nil {
		return 0, fmt.Errorf("ledger: index: %w", err)
	}
	off := int64(binary.BigEndian.Uint64(b[:]))
	if off < int64(len(magic)) || off >= l.end.Load() {
		return 0, fmt.Errorf("ledger: entry %d: offset index is wrong: %w", i, ErrTampered)
	}
	return off, nil
}

// hashReader reads stored hashes of the first n leaves from the hashes file.
type hashReader struct {
	f     io.ReaderAt
	count int64 // stored hashes that may be read
}

func (r hashReader) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for k, x := range indexes {
		if x < 0 || x >= r.count {
			return nil, fmt.Errorf("ledger: stored hash %d is beyond the tree", x)
		}
		if _, err := r.f.ReadAt(out[k][:], x*hashSize); err != nil {
			return nil, fmt.Errorf("ledger: read hashes: %w", err)
		}
	}
	return out, nil
}

func (l *Ledger) reader(n int64) hashReader {
	return hashReader{f: l.hashes, count: tlog.StoredHashCount(n)}
}

// TreeHash is the root hash of the tree of the first n entries.
func (l *Ledger) TreeHash(n int64) (tlog.Hash, error) {
	if n < 0 || n > l.Size() {
		return tlog.Hash{}, fmt.Errorf("ledger: tree size %d: out of range (size %d)", n, l.Size())
	}
	return tlog.TreeHash(n, l.reader(n))
}

// InclusionProof proves that entry index is in the tree of treeSize entries
// (the size of a checkpoint the verifier holds).
func (l *Ledger) InclusionProof(index, treeSize int64) (tlog.RecordProof, error) {
	if treeSize > l.Size() || index < 0 || index >= treeSize {
		return nil, fmt.Errorf("ledger: inclusion proof of entry %d in tree size %d: out of range (size %d)", index, treeSize, l.Size())
	}
	p, err := tlog.ProveRecord(treeSize, index, l.reader(treeSize))
	if err != nil {
		return nil, fmt.Errorf("ledger: inclusion proof: %w", err)
	}
	return p, nil
}

// ConsistencyProof proves that the tree of newSize entries extends the tree
// of oldSize entries. For oldSize 0 the proof is empty.
func (l *Ledger) ConsistencyProof(oldSize, newSize int64) (tlog.TreeProof, error) {
	if newSize > l.Size() || oldSize < 0 || oldSize > newSize {
		return nil, fmt.Errorf("ledger: consistency proof %d -> %d: out of range (size %d)", oldSize, newSize, l.Size())
	}
	if oldSize == 0 {
		return tlog.TreeProof{}, nil
	}
	p, err := tlog.ProveTree(newSize, oldSize, l.reader(newSize))
	if err != nil {
		return nil, fmt.Errorf("ledger: consistency proof: %w", err)
	}
	return p, nil
}

// Checkpoint signs and stores a checkpoint of the current tree and returns
// the signed note. If the tree did not grow since the last one, that one is
// returned.
func (l *Ledger) Checkpoint() ([]byte, error) {
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	cp, err := l.checkpointLocked()
	return cp.Note, err
}

// LastCheckpoint is the latest stored checkpoint, if any.
func (l *Ledger) LastCheckpoint() (Checkpoint, bool) {
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	return l.lastCP, l.lastCP.Size >= 0
}

func (l *Ledger) maybeCheckpointLocked() {
	every := l.opts.CheckpointEvery
	if every <= 0 || l.broken != nil || l.closed || l.size.Load()-max(l.lastCP.Size, 0) < every {
		return
	}
	if _, err := l.checkpointLocked(); err != nil {
		l.log.Error("checkpoint failed", "size", l.size.Load(), "err", err)
	}
}

func (l *Ledger) checkpointLocked() (Checkpoint, error) {
	if l.broken != nil {
		return Checkpoint{}, l.writable()
	}
	n := l.size.Load()
	if l.lastCP.Size == n {
		return l.lastCP, nil
	}
	root, err := tlog.TreeHash(n, l.reader(n))
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint: %w", err)
	}
	signed, err := note.Sign(&note.Note{Text: formatCheckpoint(l.signer.Name(), n, root)}, l.signer)
	if err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint: sign: %w", err)
	}
	if err := l.storeCheckpoint(signed); err != nil {
		return Checkpoint{}, fmt.Errorf("ledger: checkpoint: %w", err)
	}
	l.lastCP = Checkpoint{Origin: l.signer.Name(), Size: n, Root: root, Note: signed}
	l.log.Debug("checkpoint", "size", n, "root", root)
	return l.lastCP, nil
}

// storeCheckpoint appends to the checkpoints file and replaces the
// checkpoint file.
func (l *Ledger) storeCheckpoint(signed []byte) error {
	st, err := l.cpts.Stat()
	if err != nil {
		return err
	}
	rec := binary.BigEndian.AppendUint32(nil, uint32(len(signed)))
	rec = append(rec, signed...)
	if _, err := l.cpts.WriteAt(rec, st.Size()); err != nil {
		return err
	}
	if err := l.cpts.Sync(); err != nil {
		return err
	}
	// The copy in the checkpoint file is a convenience: the checkpoints
	// file above is the durable record, so the rename is not waited for.
	return replaceFile(filepath.Join(l.dir, checkpointFile), signed, 0o644, false)
}

// Run checkpoints the tree every Options.CheckpointInterval while it grows,
// until ctx ends.
func (l *Ledger) Run(ctx context.Context) error {
	t := time.NewTicker(l.opts.CheckpointInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if _, err := l.Checkpoint(); err != nil {
				if errors.Is(err, ErrClosed) {
					return nil
				}
				l.log.Error("checkpoint failed", "err", err)
			}
		}
	}
}

// Close checkpoints a tree that grew since the last checkpoint, then closes
// the files and releases the lock. Appends after Close fail with ErrClosed.
func (l *Ledger) Close() error {
	l.commitMu.Lock()
	defer l.commitMu.Unlock()
	if l.closed {
		return nil
	}
	var err error
	if l.broken == nil {
		_, err = l.checkpointLocked()
	}
	l.closed = true
	return errors.Join(err, l.closeFiles())
}

func (l *Ledger) closeFiles() error {
	var errs []error
	for _, f := range []*os.File{l.entries, l.hashes, l.index, l.cpts, l.lock} {
		if f != nil {
			errs = append(errs, f.Close())
		}
	}
	return errors.Join(errs...)
}

// frontier answers tlog's reads of earlier hashes while appending: the only
// hashes StoredHashes needs are the last completed node of each level, so
// those are kept in memory; anything else falls back to the hashes file.
type frontier struct {
	last     [64]struct{ n int64 }
	hash     [64]tlog.Hash
	ok       [64]bool
	fallback tlog.HashReader
}

func (f *frontier) add(n int64, hs []tlog.Hash) {
	for k, h := range hs {
		f.last[k].n, f.hash[k], f.ok[k] = n>>k, h, true
	}
}

func (f *frontier) ReadHashes(indexes []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(indexes))
	for k, x := range indexes {
		level, n := tlog.SplitStoredHashIndex(x)
		if level < len(f.ok) && f.ok[level] && f.last[level].n == n {
			out[k] = f.hash[level]
			continue
		}
		if f.fallback == nil {
			return nil, fmt.Errorf("ledger: stored hash %d (level %d, node %d) is not at hand", x, level, n)
		}
		h, err := f.fallback.ReadHashes([]int64{x})
		if err != nil {
			return nil, err
		}
		out[k] = h[0]
	}
	return out, nil
}

// writeFileAtomic writes via a temporary file and rename, synced, the
// rename included.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	return replaceFile(path, data, perm, true)
}

// replaceFile writes via a temporary file and rename; the content is synced
// before the rename so the file is never seen empty, and syncDir makes the
// rename itself durable before returning.
func replaceFile(path string, data []byte, perm os.FileMode, syncRename bool) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if !syncRename {
		return nil
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
