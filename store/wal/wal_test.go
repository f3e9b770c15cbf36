package wal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func open(t *testing.T, dir string, opts Options) *WAL {
	t.Helper()
	w, err := Open(dir, opts, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

func collect(t *testing.T, w *WAL, lane uint8) []Entry {
	t.Helper()
	var es []Entry
	if err := w.Scan(lane, 0, func(e Entry) bool { es = append(es, e); return true }); err != nil {
		t.Fatal(err)
	}
	return es
}

func TestAppendScanDeleteReopen(t *testing.T) {
	dir := t.TempDir()
	w := open(t, dir, Options{FsyncInterval: 5 * time.Millisecond})
	for i := 0; i < 10; i++ {
		for _, lane := range []uint8{LaneTrace, LaneBulk} {
			id, err := w.Append(lane, []byte(fmt.Sprintf("%d-%d", lane, i)), map[string][]byte{"cursor": {byte(i)}})
			if err != nil {
				t.Fatal(err)
			}
			if id != uint64(i+1) {
				t.Fatalf("lane %d entry %d got id %d, want %d", lane, i, id, i+1)
			}
		}
	}
	if err := w.Delete(LaneBulk, 1, 2, 3, 3, 99); err != nil {
		t.Fatal(err)
	}
	st := w.Stats()
	if st.Lanes[LaneBulk].Entries != 7 || st.Lanes[LaneTrace].Entries != 10 || st.Lanes[LaneAlert].Entries != 0 {
		t.Errorf("stats after delete = %+v", st.Lanes)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	w = open(t, dir, Options{})
	defer w.Close()
	es := collect(t, w, LaneBulk)
	if len(es) != 7 || es[0].ID != 4 || string(es[0].Data) != "3-3" || string(es[6].Data) != "3-9" {
		t.Fatalf("bulk after reopen: %d entries, first %+v", len(es), es)
	}
	if st := w.Stats(); st.Lanes[LaneBulk].Entries != 7 || st.Lanes[LaneBulk].Oldest <= 0 {
		t.Errorf("stats after reopen = %+v", st.Lanes[LaneBulk])
	}
	if v, ok, err := w.Meta("cursor"); err != nil || !ok || !bytes.Equal(v, []byte{9}) {
		t.Errorf("meta cursor = %v %v %v, want [9]", v, ok, err)
	}
	// Ids continue after the highest ever handed out, even if deleted.
	if err := w.Delete(LaneTrace, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10); err != nil {
		t.Fatal(err)
	}
	id, err := w.Append(LaneTrace, []byte("x"), nil)
	if err != nil || id != 11 {
		t.Errorf("append after emptying the lane: id %d, %v; want 11", id, err)
	}
}

// Many concurrent bulk appends share fsyncs; a trace append does not wait
// for the bulk interval, and carries the waiting bulk with it.
func TestGroupCommit(t *testing.T) {
	w := open(t, t.TempDir(), Options{FsyncInterval: 200 * time.Millisecond})
	defer w.Close()
	var wg sync.WaitGroup
	for i := 0; i < 64; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := w.Append(LaneBulk, make([]byte, 100), nil); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if c := w.Stats().Commits; c > 8 {
		t.Errorf("64 concurrent bulk appends took %d commits; want them grouped", c)
	}

	// With a bulk interval far longer than the test, only an urgent commit
	// can make these appends return.
	slow := open(t, t.TempDir(), Options{FsyncInterval: time.Hour})
	defer slow.Close()
	bulk := slow.AppendAsync(LaneBulk, []byte("b"), nil)
	trace := make(chan error, 1)
	go func() { _, err := slow.Append(LaneTrace, []byte("t"), nil); trace <- err }()
	select {
	case err := <-trace:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a trace append waited for the bulk interval")
	}
	if _, err := bulk.Wait(); err != nil {
		t.Errorf("the waiting bulk append: %v", err)
	}
}

func TestWatermarkRefusesBulkOnly(t *testing.T) {
	var used atomic.Value
	used.Store(0.5)
	w := open(t, t.TempDir(), Options{
		HighWatermark: 0.9, LowWatermark: 0.8,
		DiskUsage: func() (float64, error) { return used.Load().(float64), nil },
	})
	defer w.Close()
	steps := []struct {
		used     float64
		lane     uint8
		wantErr  error
		wantOver bool
	}{
		{0.5, LaneBulk, nil, false},
		{0.95, LaneBulk, ErrOverWatermark, true},
		{0.95, LaneTrace, nil, true},
		{0.95, LaneAlert, nil, true},
		{0.85, LaneBulk, ErrOverWatermark, true}, // hysteresis: still over until below low
		{0.79, LaneBulk, nil, false},
	}
	for i, s := range steps {
		used.Store(s.used)
		_, err := w.Append(s.lane, []byte("x"), nil)
		if !errors.Is(err, s.wantErr) {
			t.Errorf("step %d (used %.2f, lane %d): err = %v, want %v", i, s.used, s.lane, err, s.wantErr)
		}
		if got := w.Stats().Over; got != s.wantOver {
			t.Errorf("step %d: over = %v, want %v", i, got, s.wantOver)
		}
	}
}

func TestDropOldest(t *testing.T) {
	w := open(t, t.TempDir(), Options{FsyncInterval: time.Millisecond})
	defer w.Close()
	for i := 0; i < 10; i++ {
		w.Append(LaneBulk, []byte{byte(i)}, nil)
	}
	n, err := w.DropOldest(LaneBulk, 4)
	if err != nil || n != 4 {
		t.Fatalf("DropOldest = %d, %v", n, err)
	}
	es := collect(t, w, LaneBulk)
	if len(es) != 6 || es[0].Data[0] != 4 {
		t.Errorf("after dropping 4: %d entries starting at %v", len(es), es[0].Data)
	}
}

// On a real small filesystem: the watermark (statfs) refuses bulk before the
// disk fills, trace still flows, and filling the disk completely makes appends
// fail cleanly without corrupting what was written.
func TestSmallFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: this test mounts a tmpfs and needs root")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })
	dir := filepath.Join(mnt, "wal")

	w, err := Open(dir, Options{FsyncInterval: time.Millisecond, HighWatermark: 0.7, LowWatermark: 0.6, MemTableBytes: 1 << 20}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	rec := make([]byte, 256<<10)
	rand.Read(rec) // incompressible, so sstables take real space
	var accepted int
	var refused bool
	for i := 0; i < 400; i++ {
		_, err := w.Append(LaneBulk, rec, nil)
		if errors.Is(err, ErrOverWatermark) {
			refused = true
			break
		}
		if err != nil {
			t.Fatalf("bulk append %d before the watermark: %v", i, err)
		}
		accepted++
	}
	if !refused {
		t.Fatalf("bulk never refused on a 24 MiB filesystem after %d appends", accepted)
	}
	if _, err := w.Append(LaneTrace, []byte("still flows"), nil); err != nil {
		t.Errorf("trace append above the watermark: %v", err)
	}
	// Another program fills the disk: every lane is refused with
	// ErrDiskFull, the process stays up, and appends resume once space is
	// back.
	filler, _ := os.Create(filepath.Join(mnt, "filler"))
	filler.Write(make([]byte, 32<<20)) // stops at ENOSPC
	filler.Close()
	var traced int
	var failed error
	for i := 0; i < 200 && failed == nil; i++ {
		if _, failed = w.Append(LaneTrace, rec, nil); failed == nil {
			traced++
		}
	}
	if !errors.Is(failed, ErrDiskFull) {
		t.Fatalf("append on a full disk: %v, want ErrDiskFull", failed)
	}
	if st := w.Stats(); st.RefusedFull == 0 {
		t.Errorf("refused appends not counted: %+v", st)
	}
	os.Remove(filepath.Join(mnt, "filler"))
	if _, err := w.Append(LaneTrace, []byte("after"), nil); err != nil {
		t.Errorf("append after space came back: %v", err)
	}
	t.Logf("accepted %d bulk records before the watermark, then %d trace records; on a full disk: %v", accepted, traced, failed)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// Reopen: everything acknowledged before is intact.
	w = open(t, dir, Options{HighWatermark: 0.99})
	defer w.Close()
	if got := len(collect(t, w, LaneBulk)); got != accepted {
		t.Errorf("after the disk filled and reopened: %d bulk entries, want %d", got, accepted)
	}
	if es := collect(t, w, LaneTrace); len(es) == 0 || string(es[0].Data) != "still flows" {
		t.Errorf("trace lane after reopen lost its first entry")
	}
}

func BenchmarkAppendBulk(b *testing.B) {
	w, err := Open(b.TempDir(), Options{FsyncInterval: 10 * time.Millisecond}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	rec := make([]byte, 64<<10)
	b.SetBytes(int64(len(rec)))
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := w.Append(LaneBulk, rec, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// After Close every call answers ErrClosed; none reaches the closed
// database (Pebble panics on that).
func TestUseAfterClose(t *testing.T) {
	w := open(t, t.TempDir(), Options{})
	w.Append(LaneBulk, []byte("x"), nil)
	w.Close()
	checks := map[string]error{
		"append": func() error { _, err := w.Append(LaneBulk, []byte("y"), nil); return err }(),
		"scan":   w.Scan(LaneBulk, 0, func(Entry) bool { return true }),
		"delete": w.Delete(LaneBulk, 1),
		"meta":   func() error { _, _, err := w.Meta("x"); return err }(),
		"set":    w.SetMeta("x", nil),
		"put":    w.PutCommand(Command{Target: "a", ID: "b"}),
		"cmds":   func() error { _, err := w.Commands(""); return err }(),
	}
	for name, err := range checks {
		if !errors.Is(err, ErrClosed) {
			t.Errorf("%s after Close = %v, want ErrClosed", name, err)
		}
	}
	_ = w.Stats()
	if err := w.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
