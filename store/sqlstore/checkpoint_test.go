package sqlstore

import (
	"context"
	"path/filepath"
	"testing"
)

// TestCheckpointer: the checkpointer's connection copies the whole WAL back
// when no one writes, and Close stops it while it may be waiting for the
// writer's lock.
func TestCheckpointer(t *testing.T) {
	ctx := context.Background()
	s, err := Open(filepath.Join(t.TempDir(), "center.db"), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	g := newFleetGen("h", 3)
	for seq := uint64(1); seq <= 20; seq++ {
		if err := s.IngestBatch(ctx, g.batch(seq, 500)); err != nil {
			t.Fatal(err)
		}
	}
	// The writer's lock keeps the goroutine's locked tail out of the way.
	s.wmu.Lock()
	logFrames, done, err := s.ckpt.checkpoint(ctx)
	s.wmu.Unlock()
	if err != nil {
		t.Fatal(err)
	}
	if logFrames <= 0 || done != logFrames {
		t.Errorf("checkpoint with no writer copied %d of %d WAL frames, want all of at least one", done, logFrames)
	}
	// Close while batches keep poking the checkpointer: it must return.
	for seq := uint64(21); seq <= 40; seq++ {
		if err := s.IngestBatch(ctx, g.batch(seq, 500)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(s.Path(), testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if n := count(t, s2, "batches"); n != 40 {
		t.Errorf("%d batches after reopening, want 40", n)
	}
}
