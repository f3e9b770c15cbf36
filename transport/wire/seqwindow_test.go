package wire

import (
	"errors"
	"math"
	"sync"
	"testing"
)

func TestSeqWindowInOrderAndReplay(t *testing.T) {
	w := NewSeqWindow(0)
	for seq := uint64(1); seq <= 1000; seq++ {
		if v := w.Observe("a", seq); v != SeqNew {
			t.Fatalf("seq %d: %v, want new", seq, v)
		}
	}
	for _, seq := range []uint64{1, 500, 1000} {
		if v := w.Observe("a", seq); v != SeqDuplicate {
			t.Errorf("replay of %d: %v, want duplicate", seq, v)
		}
	}
	if v := w.Check("a", 1001); v != SeqNew {
		t.Errorf("1001: %v, want new", v)
	}
	if v := w.Check("b", 1); v != SeqNew {
		t.Errorf("other agent: %v, want new", v)
	}
	if hw, ok := w.HighWater("a"); !ok || hw != 1000 {
		t.Errorf("high water %d %v, want 1000", hw, ok)
	}
	if got := len(w.agents["a"].runs); got != 1 {
		t.Errorf("in-order delivery kept %d runs, want 1", got)
	}
}

func TestSeqWindowOutOfOrder(t *testing.T) {
	w := NewSeqWindow(0)
	for _, seq := range []uint64{1, 2, 5, 9, 4, 7} {
		w.Mark("a", seq)
	}
	want := map[uint64]SeqVerdict{0: SeqNew, 1: SeqDuplicate, 2: SeqDuplicate, 3: SeqNew, 4: SeqDuplicate,
		5: SeqDuplicate, 6: SeqNew, 7: SeqDuplicate, 8: SeqNew, 9: SeqDuplicate, 10: SeqNew}
	for seq, v := range want {
		if got := w.Check("a", seq); got != v {
			t.Errorf("seq %d: %v, want %v", seq, got, v)
		}
	}
	if hw, _ := w.HighWater("a"); hw != 2 {
		t.Errorf("high water %d, want 2", hw)
	}
	for _, seq := range []uint64{3, 6, 8} {
		w.Mark("a", seq)
	}
	if hw, _ := w.HighWater("a"); hw != 9 {
		t.Errorf("high water after gaps filled %d, want 9", hw)
	}
	if got := len(w.agents["a"].runs); got != 1 {
		t.Errorf("filled gaps left %d runs, want 1", got)
	}
	w.Mark("a", 9) // idempotent
	if got := len(w.agents["a"].runs); got != 1 {
		t.Errorf("re-mark changed runs: %d", got)
	}
}

// When permanent gaps (shed bulk batches) exceed the bound, the oldest run
// is forgotten: below it the window answers unknown, never a guess.
func TestSeqWindowBounded(t *testing.T) {
	w := NewSeqWindow(4)
	for seq := uint64(2); seq <= 20; seq += 2 { // 2,4,...,20: ten runs
		w.Mark("a", seq)
	}
	if got := len(w.agents["a"].runs); got != 4 {
		t.Fatalf("kept %d runs, want 4", got)
	}
	// Kept: 14, 16, 18, 20. Forgotten: everything up to the evicted 12.
	// 13 lies above every forgotten run, so the window still knows it is new.
	cases := map[uint64]SeqVerdict{1: SeqUnknown, 2: SeqUnknown, 3: SeqUnknown, 12: SeqUnknown, 13: SeqNew,
		14: SeqDuplicate, 15: SeqNew, 20: SeqDuplicate, 21: SeqNew, 1 << 40: SeqNew}
	for seq, v := range cases {
		if got := w.Check("a", seq); got != v {
			t.Errorf("seq %d: %v, want %v", seq, got, v)
		}
	}
	if v := w.Observe("a", 3); v != SeqUnknown {
		t.Errorf("Observe below floor: %v", v)
	}
	if v := w.Check("a", 3); v != SeqUnknown {
		t.Errorf("Observe marked an unknown seq: %v", v)
	}
	// Below the floor the caller's store is the authority; marking there
	// is a no-op rather than evicting newer knowledge.
	w.Mark("a", 11)
	if v := w.Check("a", 11); v != SeqUnknown {
		t.Errorf("11 after Mark: %v, want unknown", v)
	}
	w.Mark("a", 13)
	if v := w.Check("a", 13); v != SeqDuplicate {
		t.Errorf("13 after Mark: %v", v)
	}
	if got := len(w.agents["a"].runs); got != 4 {
		t.Errorf("13 should merge into 14's run: %d runs", got)
	}
}

func TestSeqWindowEdges(t *testing.T) {
	w := NewSeqWindow(2)
	w.Mark("a", math.MaxUint64)
	w.Mark("a", 0)
	w.Mark("a", math.MaxUint64-1)
	if v := w.Check("a", math.MaxUint64); v != SeqDuplicate {
		t.Errorf("max: %v", v)
	}
	if v := w.Check("a", 0); v != SeqDuplicate {
		t.Errorf("0: %v", v)
	}
	w.Mark("a", 5) // third run: 0 is forgotten
	if v := w.Check("a", 0); v != SeqUnknown {
		t.Errorf("0 after eviction: %v", v)
	}
	if v := w.Check("a", 5); v != SeqDuplicate {
		t.Errorf("5: %v", v)
	}
}

func TestSeqWindowConcurrentObserve(t *testing.T) {
	w := NewSeqWindow(0)
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		fresh = map[uint64]int{}
	)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				seq := uint64((i*7 + g) % 1000) // every goroutine sees every seq, in its own order
				if w.Observe("a", seq) == SeqNew {
					mu.Lock()
					fresh[seq]++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	for seq := uint64(0); seq < 1000; seq++ {
		if fresh[seq] != 1 {
			t.Fatalf("seq %d was new %d times", seq, fresh[seq])
		}
	}
}

func TestSeqWindowPersist(t *testing.T) {
	w := NewSeqWindow(3)
	for _, seq := range []uint64{1, 2, 3, 10, 12, 20, 30} {
		w.Mark("a", seq)
	}
	w.Mark("b\xff", 7)
	b, err := w.Persist()
	if err != nil {
		t.Fatal(err)
	}
	again, _ := w.Persist()
	if string(b) != string(again) {
		t.Error("Persist is not deterministic")
	}
	r := NewSeqWindow(3)
	if err := r.Restore(b); err != nil {
		t.Fatal(err)
	}
	for _, agent := range []string{"a", "b\xff", "c"} {
		for seq := uint64(0); seq <= 32; seq++ {
			if got, want := r.Check(agent, seq), w.Check(agent, seq); got != want {
				t.Errorf("%q/%d: restored says %v, original %v", agent, seq, got, want)
			}
		}
	}

	one, err := w.PersistAgent("a")
	if err != nil || one == nil {
		t.Fatalf("PersistAgent: %v", err)
	}
	if b, _ := w.PersistAgent("nobody"); b != nil {
		t.Error("PersistAgent of an unknown agent returned state")
	}
	r2 := NewSeqWindow(3)
	if err := r2.RestoreAgent("a", one); err != nil {
		t.Fatal(err)
	}
	for seq := uint64(0); seq <= 32; seq++ {
		if got, want := r2.Check("a", seq), w.Check("a", seq); got != want {
			t.Errorf("agent a/%d: restored says %v, original %v", seq, got, want)
		}
	}

	// Corrupt state is refused, and the window keeps what it had.
	for name, bad := range map[string][]byte{
		"garbage":       {0xff, 0x00},
		"empty":         nil,
		"wrong version": cmap(cuint(1), cuint(9)),
		"odd runs":      cmap(cuint(1), cuint(1), cuint(2), carr(cmap(cuint(1), cbytes("a"), cuint(3), carr(cuint(1))))),
		"inverted run":  cmap(cuint(1), cuint(1), cuint(2), carr(cmap(cuint(1), cbytes("a"), cuint(3), carr(cuint(5), cuint(1))))),
		"overlap":       cmap(cuint(1), cuint(1), cuint(2), carr(cmap(cuint(1), cbytes("a"), cuint(3), carr(cuint(1), cuint(5), cuint(3), cuint(9))))),
		"adjacent runs": cmap(cuint(1), cuint(1), cuint(2), carr(cmap(cuint(1), cbytes("a"), cuint(3), carr(cuint(1), cuint(5), cuint(6), cuint(9))))),
		"agent twice":   cmap(cuint(1), cuint(1), cuint(2), carr(cmap(cuint(1), cbytes("a")), cmap(cuint(1), cbytes("a")))),
		"dup key":       cmap(cuint(1), cuint(1), cuint(1), cuint(1)),
	} {
		if err := r.Restore(bad); !errors.Is(err, ErrMalformed) {
			t.Errorf("Restore(%s): got %v, want ErrMalformed", name, err)
		}
	}
	if v := r.Check("a", 30); v != SeqDuplicate {
		t.Errorf("failed Restore changed the window: %v", v)
	}
}
