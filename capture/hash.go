package capture

// Hashes of the binaries traced processes execute (KindExecHash).
//
// Choice: the digests go out as a separate KindExecHash event after the
// exec, never on the exec itself. Hashing a binary is milliseconds of disk
// and CPU; the ring reader must not wait for it, and holding the exec (and
// every later event of its trace, to keep TraceSeq in order) until a digest
// is ready would delay the trace by as much. The exec goes out at once;
// the hash event follows, on a cache hit straight from the reader, on a
// miss from a small bounded worker pool. Consumers join the two by Proc.
//
// Digests are cached by (dev, inode, ctime, size) as the kernel recorded
// them at exec: any write to a file changes its ctime. A cache hit opens
// nothing. On a miss the file is opened once, by the reader, right at the
// exec: through /proc/PID/exe, which names the very file the kernel
// executed even if it was renamed, unlinked or lives in another mount
// namespace, and by path only if the process is already gone. Its inode and
// ctime must be the ones the kernel recorded, or the process already runs
// something else (or the file was written since) and nothing is hashed.
//
// Stealth: the read is the one trace of a trace a watcher on the host could
// see: an inotify or fanotify watch on the binary sees one more open and
// read of it (atime is not touched: O_NOATIME). The cache keeps that to
// once per version of a binary per agent run.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"lukechampine.com/blake3"
)

const (
	hashWorkers      = 2
	hashQueue        = 64
	hashCacheEntries = 4096
	// hashMaxBytes bounds the work one binary can cost.
	hashMaxBytes = 512 << 20
)

// fileID is the cache key: a file's identity and version.
type fileID struct {
	dev, ino uint64
	ctime    int64 // nanoseconds
	size     int64
}

type hashResult struct {
	blake3, sha256 string
	err            string
}

type hashEntry struct {
	done    bool
	res     hashResult
	waiters []hashWaiter // events waiting for res, the first is the miss
}

type hashWaiter struct {
	tag uint32
	ev  Event
}

type hashJob struct {
	f  *os.File
	id fileID
}

// exeHasher computes and caches the digests. request is called by the
// ring reader; deliver is called from the workers, with no lock held.
type exeHasher struct {
	deliver func(tag uint32, ev Event)

	mu    sync.Mutex
	cache map[fileID]*hashEntry
	jobs  chan hashJob

	hits, misses, queueFull, opens atomic.Uint64
}

func newExeHasher(deliver func(tag uint32, ev Event)) *exeHasher {
	return &exeHasher{
		deliver: deliver,
		cache:   map[fileID]*hashEntry{},
		jobs:    make(chan hashJob, hashQueue),
	}
}

// run hashes queued files until ctx ends; files still queued then are
// closed unread.
func (h *exeHasher) run(ctx context.Context) {
	var wg sync.WaitGroup
	for range hashWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 256<<10)
			for {
				select {
				case <-ctx.Done():
					return
				case j := <-h.jobs:
					h.hash(j, buf)
				}
			}
		}()
	}
	wg.Wait()
	for {
		select {
		case j := <-h.jobs:
			j.f.Close()
		default:
			return
		}
	}
}

// request asks for the digests of the file id names, for tmpl, a
// KindExecHash event of the trace with tag. open is called at most once,
// on a miss, to open that very file. request returns the completed event
// when it can be sent at once (a cache hit, a file that cannot be opened, a
// full queue), or nil when a worker will deliver it.
func (h *exeHasher) request(tag uint32, tmpl Event, id fileID, open func() (*os.File, error)) *Event {
	h.mu.Lock()
	defer h.mu.Unlock()
	e := h.cache[id]
	switch {
	case e != nil && e.done:
		h.hits.Add(1)
		fillHashes(&tmpl, e.res, true)
		return &tmpl
	case e != nil:
		// The same binary is being hashed for an earlier exec.
		h.hits.Add(1)
		e.waiters = append(e.waiters, hashWaiter{tag, tmpl})
		return nil
	}
	h.opens.Add(1)
	f, err := open()
	if err != nil {
		fillHashes(&tmpl, hashResult{err: "not hashed: " + err.Error()}, false)
		return &tmpl
	}
	if len(h.cache) >= hashCacheEntries {
		for k, old := range h.cache { // map order: an arbitrary victim
			if old.done {
				delete(h.cache, k)
				break
			}
		}
	}
	select {
	case h.jobs <- hashJob{f, id}:
		h.cache[id] = &hashEntry{waiters: []hashWaiter{{tag, tmpl}}}
		h.misses.Add(1)
		return nil
	default:
		f.Close()
		h.queueFull.Add(1)
		fillHashes(&tmpl, hashResult{err: "not hashed: hash queue full"}, false)
		return &tmpl
	}
}

func (h *exeHasher) hash(j hashJob, buf []byte) {
	res := hashReader(j.f, buf, hashMaxBytes)
	j.f.Close()
	h.mu.Lock()
	e := h.cache[j.id]
	var ws []hashWaiter
	if e != nil {
		ws = e.waiters
		e.waiters = nil
		e.done = true
		e.res = res
		if res.err != "" {
			delete(h.cache, j.id) // a read error is not the file's digest
		}
	}
	h.mu.Unlock()
	for i, w := range ws {
		fillHashes(&w.ev, res, i > 0)
		h.deliver(w.tag, w.ev)
	}
}

// hashReader reads r once into both digests; more than limit bytes is an
// error rather than an unbounded read.
func hashReader(r io.Reader, buf []byte, limit int64) hashResult {
	b3 := blake3.New(32, nil)
	s2 := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(b3, s2), io.LimitReader(r, limit+1), buf)
	if err != nil {
		return hashResult{err: fmt.Sprintf("read: %v", err)}
	}
	if n > limit {
		return hashResult{err: fmt.Sprintf("not hashed: larger than %d bytes", limit)}
	}
	return hashResult{blake3: hex.EncodeToString(b3.Sum(nil)), sha256: hex.EncodeToString(s2.Sum(nil))}
}

func fillHashes(ev *Event, res hashResult, cached bool) {
	h := *ev.Hashes // each waiter gets its own copy
	h.Blake3, h.SHA256, h.Error = res.blake3, res.sha256, res.err
	h.Cached = cached && res.err == ""
	ev.Hashes = &h
}

// hashEventBytes is what a KindExecHash event counts against MaxBytes.
func hashEventBytes(ev *Event) int64 {
	n := int64(hdrSize + 2*64 + 32)
	if ev.Hashes != nil {
		n += int64(len(ev.Hashes.Path) + len(ev.Hashes.Error))
	}
	if ev.Mem != nil {
		n += int64(len(ev.Mem.Data) + len(ev.Mem.Error))
	}
	return n
}
