package agent

import (
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"path/filepath"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// testShipper is a shipper on a fresh store and WAL whose uplink never
// runs: what it cuts stays queued in its WAL lanes, to be read back.
func testShipper(t *testing.T, dir string) (*Shipper, *store.Local) {
	t.Helper()
	ca, err := pki.Init(filepath.Join(dir, "pki"), "urgent-test", 0)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.RoleAgent, "ag-u", pki.IssueOptions{Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyPair(filepath.Join(dir, "certs"), "ag-u", certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().Agent
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.ProxyHint = "127.0.0.1:1"
	cfg.Stream.BatchMaxEvents = 4
	cfg.TLS = config.TLS{Cert: filepath.Join(dir, "certs", "ag-u.crt"), Key: filepath.Join(dir, "certs", "ag-u.key"),
		CA: filepath.Join(ca.Dir(), pki.CACertFile), RenewCheckMS: 60000}
	st, err := store.OpenLocal(filepath.Join(cfg.DataDir, "store"), store.LocalOptions{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s, err := NewShipper(cfg, st, nil, slog.New(slog.DiscardHandler))
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { s.wal.Close(); st.Close() })
	return s, st
}

// queued opens every batch queued on lane and returns its events' seqs.
func queued(t *testing.T, s *Shipper, lane uint8) [][]uint64 {
	t.Helper()
	pub := s.id.Key().Public().(ed25519.PublicKey)
	var out [][]uint64
	err := s.wal.Scan(lane, 0, func(e wal.Entry) bool {
		b, err := wire.OpenBatch(e.Data, pub, wire.Limits{})
		if err != nil {
			t.Fatal(err)
		}
		var seqs []uint64
		for _, ev := range b.Events {
			seqs = append(seqs, ev.Seq)
		}
		out = append(out, seqs)
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func events(n int, trace string) []capture.Event {
	evs := make([]capture.Event, n)
	for i := range evs {
		evs[i] = capture.Event{Time: int64(1000 + i), Kind: capture.KindExec, Proc: capture.ProcKey{PID: uint32(100 + i), Start: 7},
			TraceID: trace, Exec: &capture.Exec{Exe: "/bin/true"}}
		if trace != "" {
			evs[i].Kind, evs[i].Exec = capture.KindFileOpen, nil
			evs[i].File = &capture.FileOp{Path: "/etc/passwd"}
		}
	}
	return evs
}

// A trace event stored behind a bulk backlog the shipper has not read is
// sent at once, on its own lane, and not again when the reader gets there;
// an alert likewise on the alert lane.
func TestShipperSendsTraceAheadOfBulkBacklog(t *testing.T) {
	s, st := testShipper(t, t.TempDir())
	append := func(evs []capture.Event) {
		t.Helper()
		if _, _, err := st.Append(evs); err != nil {
			t.Fatal(err)
		}
	}
	append(events(10, ""))  // seqs 1..10: the backlog
	append(events(2, "T1")) // 11, 12
	alert := events(1, "")
	alert[0].Kind, alert[0].Exec = capture.KindAlert, nil
	alert[0].Alert = &capture.RuleAlert{RuleID: "r1"}
	append(alert)         // 13
	append(events(3, "")) // 14..16

	floor, urgent := st.Urgent()
	if err := st.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := s.cutUrgent(floor, urgent); err != nil {
		t.Fatal(err)
	}
	if got := queued(t, s, wal.LaneTrace); len(got) != 1 || fmt.Sprint(got[0]) != "[11 12]" {
		t.Fatalf("trace lane before the backlog is read: %v, want [[11 12]]", got)
	}
	if got := queued(t, s, wal.LaneAlert); len(got) != 1 || fmt.Sprint(got[0]) != "[13]" {
		t.Fatalf("alert lane before the backlog is read: %v, want [[13]]", got)
	}
	if got := queued(t, s, wal.LaneBulk); len(got) != 0 {
		t.Fatalf("bulk queued before the reader ran: %v", got)
	}
	if _, left := st.Urgent(); len(left) != 0 {
		t.Fatalf("urgent list after sending: %v", left)
	}
	// The reader then ships the backlog without them.
	if err := s.cut(); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(queued(t, s, wal.LaneBulk)); got != "[[1 2 3 4] [5 6 7 8] [9 10] [14 15 16]]" {
		t.Fatalf("bulk lane: %s", got)
	}
	if got := queued(t, s, wal.LaneTrace); len(got) != 1 {
		t.Fatalf("trace events sent twice: %v", got)
	}
	if got := queued(t, s, wal.LaneAlert); len(got) != 1 {
		t.Fatalf("alert sent twice: %v", got)
	}
}

// After a restart the store lists nothing stored before it, so trace
// events in the old backlog wait for the reader (the list cannot say which
// ones were sent), and new ones go ahead once the reader has passed the
// old backlog.
func TestShipperUrgentAfterRestart(t *testing.T) {
	dir := t.TempDir()
	s, st := testShipper(t, dir)
	if _, _, err := st.Append(append(events(3, ""), events(1, "T1")...)); err != nil { // 1..3 bulk, 4 trace
		t.Fatal(err)
	}
	st2 := reopen(t, s, st)
	if floor, urgent := st2.Urgent(); floor != 4 || len(urgent) != 0 {
		t.Fatalf("after reopening: floor %d, list %v; want 4 and empty", floor, urgent)
	}
	if _, _, err := st2.Append(events(1, "T1")); err != nil { // 5
		t.Fatal(err)
	}
	floor, urgent := st2.Urgent()
	if err := s.cutUrgent(floor, urgent); err != nil {
		t.Fatal(err)
	}
	if got := queued(t, s, wal.LaneTrace); len(got) != 0 {
		t.Fatalf("trace event sent ahead of an unread backlog from before the restart: %v", got)
	}
	if err := s.cut(); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(queued(t, s, wal.LaneTrace)); got != "[[4] [5]]" { // the reader cuts 4 events at a time
		t.Fatalf("trace lane: %s, want [[4] [5]]", got)
	}
	if _, _, err := st2.Append(append(events(2, ""), events(1, "T1")...)); err != nil { // 6, 7 bulk, 8 trace
		t.Fatal(err)
	}
	floor, urgent = st2.Urgent()
	if err := s.cutUrgent(floor, urgent); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(queued(t, s, wal.LaneTrace)); got != "[[4] [5] [8]]" {
		t.Fatalf("trace lane after the old backlog was read: %s, want [[4] [5] [8]]", got)
	}
}

// reopen closes the shipper's store and opens it again in its place.
func reopen(t *testing.T, s *Shipper, st *store.Local) *store.Local {
	t.Helper()
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st2, err := store.OpenLocal(filepath.Join(s.cfg.DataDir, "store"), store.LocalOptions{}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	s.st = st2
	t.Cleanup(func() { st2.Close() })
	return st2
}
