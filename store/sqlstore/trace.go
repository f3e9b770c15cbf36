package sqlstore

import (
	"cmp"
	"context"
	"database/sql"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/evilbitlabs/daemoneye/capture"
)

// BatchRef names a stored batch: the agent that sealed it and its seq.
type BatchRef struct {
	Host string
	Seq  uint64
}

// TraceTables are the tables that hold a batch's events, trace events
// among them (all with trace_id and a partial index on it, and keyed
// UNIQUE (host, batch_seq, idx)), in ingest order.
var TraceTables = func() []string {
	out := make([]string, 0, nTables)
	for _, d := range tableDefs {
		out = append(out, d.name)
	}
	return out
}()

// EventTables are the TraceTables that hold an event's own row (all but
// mem_snippets, which adds to an event stored in another), each with a row
// id to resume after.
var EventTables = slices.DeleteFunc(slices.Clone(TraceTables), func(t string) bool { return t == tableDefs[tMem].name })

var traceBatchesSQL = func() string {
	parts := make([]string, len(TraceTables))
	for i, t := range TraceTables {
		parts[i] = `SELECT host, batch_seq FROM ` + t + ` WHERE trace_id = ?1`
	}
	return strings.Join(parts, "\nUNION\n") + "\nORDER BY host, batch_seq"
}()

// TraceBatches returns the batches that hold events of the trace, on every
// host it reached, in (host, seq) order: what a forensic package must carry
// (with their roots and signatures) to prove each of the trace's events.
func (s *Store) TraceBatches(ctx context.Context, traceID string) ([]BatchRef, error) {
	rows, err := s.ro.QueryContext(ctx, traceBatchesSQL, traceID)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: batches of trace %s: %w", traceID, err)
	}
	defer rows.Close()
	var out []BatchRef
	for rows.Next() {
		var (
			r   BatchRef
			seq int64
		)
		if err := rows.Scan(&r.Host, &seq); err != nil {
			return nil, fmt.Errorf("sqlstore: batches of trace %s: %w", traceID, err)
		}
		r.Seq = uint64(seq)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("sqlstore: batches of trace %s: %w", traceID, err)
	}
	return out, nil
}

// TraceEvent is one event of a trace's timeline, flattened for display
// (`daemoneye trace show`, the UI). Fields a kind does not have are zero.
// The environment of a traced exec is not here: it is shown masked, from
// BatchEvents, by whoever may reveal it.
type TraceEvent struct {
	// Where the event is: its batch and index, for its inclusion proof.
	Host     string `json:"host"`
	BatchSeq uint64 `json:"batch_seq"`
	Idx      int    `json:"idx"`

	TraceID  string `json:"trace_id"`
	TraceSeq uint64 `json:"trace_seq"`
	Time     int64  `json:"time"` // Unix ns, the agent's clock
	Kind     string `json:"kind"` // capture.Kind names: fork, exec, file_open, trace_note, ...
	PID      uint32 `json:"pid"`
	Start    uint64 `json:"start"`
	PPID     uint32 `json:"ppid,omitempty"`
	PStart   uint64 `json:"pstart,omitempty"`
	Comm     string `json:"comm,omitempty"`

	// exec
	Exe     string   `json:"exe,omitempty"`
	Argv    []string `json:"argv,omitempty"`
	Cmdline string   `json:"cmdline,omitempty"`
	Cwd     string   `json:"cwd,omitempty"`
	UID     *uint32  `json:"uid,omitempty"`
	// exit
	ExitCode   *int32 `json:"exit_code,omitempty"`
	ExitSignal int32  `json:"exit_signal,omitempty"`

	// file events; exec_hash uses Path for the binary hashed
	Path  string `json:"path,omitempty"`
	Path2 string `json:"path2,omitempty"`
	Flags uint64 `json:"flags,omitempty"`
	Inode uint64 `json:"inode,omitempty"`
	// Result of a file syscall, socket(2) or a failed connect: fd, 0 or -errno.
	Result *int64 `json:"result,omitempty"`

	// connect, accept, close, socket
	Proto    uint8          `json:"proto,omitempty"`
	Src      netip.AddrPort `json:"src,omitzero"`
	Dst      netip.AddrPort `json:"dst,omitzero"`
	Family   int32          `json:"family,omitempty"`
	SockType int32          `json:"sock_type,omitempty"`
	// LinkHost is the host a traced connect was linked to (links), if any.
	LinkHost string `json:"link_host,omitempty"`

	// exec_hash
	Blake3    string `json:"blake3,omitempty"`
	SHA256    string `json:"sha256,omitempty"`
	Size      int64  `json:"size,omitempty"`
	HashError string `json:"hash_error,omitempty"`

	Note *capture.TraceNote  `json:"note,omitempty"`
	Mem  *capture.MemSnippet `json:"mem,omitempty"`
}

// TraceEvents returns the trace's events on every host, as one timeline
// ordered by time, then host, then trace_seq.
func (s *Store) TraceEvents(ctx context.Context, traceID string) ([]TraceEvent, error) {
	return s.TraceEventsIn(ctx, traceID, nil)
}

// TraceEventsIn is TraceEvents limited to the events in the given batches
// (all of them when batches is nil): what a reader that follows new rows
// needs without rebuilding the whole timeline.
func (s *Store) TraceEventsIn(ctx context.Context, traceID string, batches []BatchRef) ([]TraceEvent, error) {
	out, err := s.traceEvents(ctx, traceID, batches)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: events of trace %s: %w", traceID, err)
	}
	return out, nil
}

func (s *Store) traceEvents(ctx context.Context, traceID string, batches []BatchRef) ([]TraceEvent, error) {
	tx, err := s.ro.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck // read only
	where, args := `trace_id = ?`, []any{traceID}
	if batches != nil {
		if len(batches) == 0 {
			return nil, nil
		}
		vals := make([]string, len(batches))
		for i, b := range batches {
			vals[i] = "(?, ?)"
			args = append(args, b.Host, int64(b.Seq))
		}
		where += ` AND (host, batch_seq) IN (VALUES ` + strings.Join(vals, ", ") + `)`
	}
	var out []TraceEvent
	at := map[eventLoc]int{}
	err = readEvents(ctx, tx, where, args,
		func(loc eventLoc, ev capture.Event) error {
			at[loc] = len(out)
			out = append(out, flatten(loc, &ev))
			return nil
		},
		func(loc eventLoc, m *capture.MemSnippet) error {
			if i, ok := at[loc]; ok {
				out[i].Mem = m
			}
			return nil
		})
	if err != nil {
		return nil, err
	}
	// Links of the trace's connects, by the connect's row.
	rows, err := tx.QueryContext(ctx, `SELECT n.host, n.batch_seq, n.idx, l.to_host
		FROM links l JOIN network_events n ON n.id = l.from_event WHERE l.trace_id = ?`, traceID)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var (
			loc eventLoc
			to  string
		)
		if err := rows.Scan(&loc.host, &loc.batchSeq, &loc.idx, &to); err != nil {
			rows.Close()
			return nil, err
		}
		if i, ok := at[loc]; ok {
			out[i].LinkHost = to
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b TraceEvent) int {
		return cmp.Or(cmp.Compare(a.Time, b.Time), strings.Compare(a.Host, b.Host), cmp.Compare(a.TraceSeq, b.TraceSeq),
			cmp.Compare(a.BatchSeq, b.BatchSeq), cmp.Compare(a.Idx, b.Idx))
	})
	return out, nil
}

// flatten turns a rebuilt event into its timeline entry.
func flatten(loc eventLoc, ev *capture.Event) TraceEvent {
	t := TraceEvent{Host: loc.host, BatchSeq: uint64(loc.batchSeq), Idx: int(loc.idx),
		TraceID: ev.TraceID, TraceSeq: ev.TraceSeq, Time: ev.Time, Kind: ev.Kind.String(),
		PID: ev.Proc.PID, Start: ev.Proc.Start, PPID: ev.Parent.PID, PStart: ev.Parent.Start, Comm: ev.Comm,
		Mem: ev.Mem}
	if x := ev.Exec; x != nil {
		uid := x.UID
		t.Exe, t.Argv, t.Cmdline, t.Cwd, t.UID = x.Exe, x.Argv, Cmdline(x.Argv), x.Cwd, &uid
	}
	if x := ev.Exit; x != nil {
		code := x.Code
		t.ExitCode, t.ExitSignal = &code, x.Signal
	}
	if f := ev.File; f != nil {
		r := f.Result
		t.Path, t.Path2, t.Flags, t.Inode, t.Result = f.Path, f.Path2, f.Flags, f.Inode, &r
	}
	if c := ev.Conn; c != nil {
		t.Proto, t.Src, t.Dst = uint8(c.Proto), c.Src, c.Dst
	}
	if k := ev.Sock; k != nil {
		r := k.Result
		t.Family, t.SockType, t.Result = k.Domain, k.Type, &r
		if t.Proto == 0 {
			t.Proto = uint8(k.Proto)
		}
	}
	if h := ev.Hashes; h != nil {
		t.Path, t.Inode, t.Blake3, t.SHA256, t.Size, t.HashError = h.Path, h.Inode, h.Blake3, h.SHA256, h.Size, h.Error
	}
	if n := ev.Note; n != nil {
		x := *n
		t.Note = &x
	}
	return t
}
