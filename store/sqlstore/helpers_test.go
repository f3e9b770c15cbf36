package sqlstore

import (
	"context"
	"crypto/ed25519"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

var testKey = ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))

func testLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// openTest opens a store in a fresh directory with a fixed clock.
func openTest(t testing.TB) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "center.db"), testLogger())
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	s.now = func() time.Time { return time.Unix(1_700_000_000, 0) }
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// sealed builds a batch the way the center receives it: sealed by the
// agent and opened (verified) again, so EventCBOR and EventProof work.
func sealed(t testing.TB, agent string, seq uint64, events []capture.Event) *wire.Batch {
	t.Helper()
	raw, err := wire.SealBatch(agent, seq, events, testKey, false)
	if err != nil {
		t.Fatalf("SealBatch: %v", err)
	}
	b, err := wire.OpenBatch(raw, testKey.Public().(ed25519.PublicKey), wire.DefaultLimits())
	if err != nil {
		t.Fatalf("OpenBatch: %v", err)
	}
	return b
}

func ingest(t testing.TB, s *Store, agent string, seq uint64, events ...capture.Event) *wire.Batch {
	t.Helper()
	b := sealed(t, agent, seq, events)
	if err := s.IngestBatch(context.Background(), b); err != nil {
		t.Fatalf("IngestBatch %s/%d: %v", agent, seq, err)
	}
	return b
}

func key(pid uint32, start uint64) capture.ProcKey { return capture.ProcKey{PID: pid, Start: start} }

func fork(t int64, child, parent capture.ProcKey) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindFork, Proc: child, Parent: parent, Source: "ebpf"}
}

func exec(t int64, p, parent capture.ProcKey, exe string, argv ...string) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindExec, Proc: p, Parent: parent, Comm: filepath.Base(exe), Source: "ebpf",
		Exec: &capture.Exec{UID: 1000, GID: 1000, EUID: 1000, EGID: 1000, Exe: exe, Argv: argv, Cwd: "/home/u"}}
}

func exit(t int64, p capture.ProcKey, code int32) capture.Event {
	return capture.Event{Time: t, Kind: capture.KindExit, Proc: p, Source: "ebpf", Exit: &capture.Exit{Code: code}}
}

func conn(t int64, kind capture.Kind, p capture.ProcKey, src, dst string) capture.Event {
	return capture.Event{Time: t, Kind: kind, Proc: p, Source: "ebpf", Conn: &capture.Conn{Proto: capture.ProtoTCP,
		Src: netip.MustParseAddrPort(src), Dst: netip.MustParseAddrPort(dst)}}
}

// count returns SELECT count(*) of a table.
func count(t testing.TB, s *Store, table string) int {
	t.Helper()
	var n int
	if err := s.ro.QueryRow("SELECT count(*) FROM " + table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

// rowMap returns one row of q as column -> value.
func rowMap(t testing.TB, s *Store, q string, args ...any) map[string]any {
	t.Helper()
	rows := rowMaps(t, s, q, args...)
	if len(rows) != 1 {
		t.Fatalf("%s %v: %d rows, want 1", q, args, len(rows))
	}
	return rows[0]
}

func rowMaps(t testing.TB, s *Store, q string, args ...any) []map[string]any {
	t.Helper()
	rows, err := s.ro.Query(q, args...)
	if err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	var out []map[string]any
	for rows.Next() {
		vals := make([]any, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := rows.Scan(ptrs...); err != nil {
			t.Fatal(err)
		}
		m := map[string]any{}
		for i, c := range cols {
			if b, ok := vals[i].([]byte); ok {
				vals[i] = string(b)
			}
			m[c] = vals[i]
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}
