package treetest

import (
	"context"
	"testing"
	"time"
)

// With a SQL queue of one event, nearly every batch overflows it: the
// center stores it, acks it, and the SQL store reads it back from the batch
// store later. Every stored batch ends up in SQL exactly once, also across
// a restart in the middle.
func TestSQLQueueOverflowReadsBack(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center")
	c.Cfg.SQLQueueEvents = 1
	c.Start()
	a := tr.NewAgent("ag-1", c.Cfg.Listen).Start()
	waitConnected(t, c, a)
	emitBatches := func(n int) {
		for range n {
			a.Emit(40)
			time.Sleep(5 * time.Millisecond) // separate cuts: separate batches
		}
		if m := WaitAll(c, 60*time.Second, a); m != "" {
			t.Fatalf("not stored: %s", m)
		}
	}
	inSQL := func() (have, want int) {
		stored, err := c.Ingest.Stored()
		if err != nil {
			t.Fatal(err)
		}
		for _, seq := range stored[a.Name] {
			want++
			if ok, err := c.SQL.HasBatch(context.Background(), a.Name, seq); err != nil {
				t.Fatal(err)
			} else if ok {
				have++
			}
		}
		return have, want
	}
	waitSQL := func() {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			have, want := inSQL()
			if have == want {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("SQL store has %d of %d stored batches after 60s", have, want)
			}
		}
	}
	emitBatches(30)
	waitSQL()

	// More, then a restart before SQL may have taken them all.
	emitBatches(20)
	c.Stop()
	c.Start()
	waitSQL()
	emitBatches(10)
	waitSQL()

	// Exactly once: one batches row per stored batch, one event row per
	// stored event.
	_, events, _ := c.Ingest.Counts()
	var rows, evRows int
	if err := c.SQL.ReadOnly().QueryRow(`SELECT count(*) FROM batches WHERE host = ?`, a.Name).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := c.SQL.ReadOnly().QueryRow(`SELECT count(*) FROM process_events WHERE host = ?`, a.Name).Scan(&evRows); err != nil {
		t.Fatal(err)
	}
	if _, want := inSQL(); rows != want {
		t.Fatalf("%d batches rows for %d stored batches", rows, want)
	}
	if evRows != int(a.n) {
		t.Fatalf("%d process_events rows for %d events emitted (the center counted %d since its restart)", evRows, a.n, events)
	}
}
