package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/fxamacker/cbor/v2"
)

// BatchEvents rebuilds the events of the stored batch (host, seq) from its
// rows, in batch order, with the Merkle root the agent signed. Every column
// mapping is exact for the events capture produces, so
// wire.EncodeEvent(events[i]) is leaf i of root: an analyst can check stored
// rows against the signature without the original batch, and the center
// can build an inclusion proof from SQL alone.
func (s *Store) BatchEvents(ctx context.Context, host string, seq uint64) ([]capture.Event, [32]byte, error) {
	var root [32]byte
	events, err := s.batchEvents(ctx, host, int64(seq), &root)
	if err != nil {
		return nil, root, fmt.Errorf("sqlstore: batch %s/%d: %w", host, seq, err)
	}
	return events, root, nil
}

func (s *Store) batchEvents(ctx context.Context, host string, seq int64, root *[32]byte) ([]capture.Event, error) {
	// One read transaction: the batch row and its events from one snapshot.
	tx, err := s.ro.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return nil, err
	}
	defer tx.Rollback() //nolint:errcheck // read only
	q := tx
	var (
		n int
		r []byte
	)
	err = q.QueryRowContext(ctx, `SELECT events, root FROM batches WHERE host = ? AND seq = ?`, host, seq).Scan(&n, &r)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errors.New("not stored")
	}
	if err != nil {
		return nil, err
	}
	if len(r) != len(root) {
		return nil, fmt.Errorf("root is %d bytes", len(r))
	}
	copy(root[:], r)
	events := make([]capture.Event, n)
	have := make([]bool, n)
	put := func(idx int64, ev capture.Event) error {
		if idx < 0 || idx >= int64(n) || have[idx] {
			return fmt.Errorf("event index %d out of range or repeated", idx)
		}
		events[idx], have[idx] = ev, true
		return nil
	}

	rows, err := q.QueryContext(ctx, `SELECT idx, `+procEventCols+` FROM process_events WHERE host = ? AND batch_seq = ?`, host, seq)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		idx, ev, err := scanProcEvent(rows)
		if err == nil {
			err = put(idx, ev)
		}
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("process event: %w", err)
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}

	rows, err = q.QueryContext(ctx, `SELECT idx, `+netEventCols+` FROM network_events WHERE host = ? AND batch_seq = ?`, host, seq)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		idx, ev, err := scanNetEvent(rows)
		if err == nil {
			err = put(idx, ev)
		}
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("network event: %w", err)
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}

	rows, err = q.QueryContext(ctx, `SELECT idx, event FROM raw_events WHERE host = ? AND batch_seq = ?`, host, seq)
	if err != nil {
		return nil, err
	}
	for rows.Next() {
		var (
			idx int64
			raw []byte
			ev  capture.Event
		)
		err := rows.Scan(&idx, &raw)
		if err == nil {
			err = rawDecMode.Unmarshal(raw, &ev)
		}
		if err == nil {
			err = put(idx, ev)
		}
		if err != nil {
			rows.Close()
			return nil, fmt.Errorf("raw event: %w", err)
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	for i, ok := range have {
		if !ok {
			return nil, fmt.Errorf("event %d of %d missing", i, n)
		}
	}
	return events, nil
}

// rawDecMode decodes raw_events rows: our own canonical encodings, but
// still bounded.
var rawDecMode = func() cbor.DecMode {
	dm, err := cbor.DecOptions{
		MaxNestedLevels:    16,
		MaxArrayElements:   1 << 16,
		MaxMapPairs:        64,
		DupMapKey:          cbor.DupMapKeyEnforcedAPF,
		ByteStringToString: cbor.ByteStringToStringAllowed,
	}.DecMode()
	if err != nil {
		panic(err) // constant options
	}
	return dm
}()

var kindByName = map[string]capture.Kind{
	"fork": capture.KindFork, "exec": capture.KindExec, "exit": capture.KindExit,
	"connect": capture.KindConnect, "accept": capture.KindAccept, "close": capture.KindClose,
}

// eventHead is what every event table row starts with (after idx).
type eventHead struct {
	host, kind, comm, source string
	batchSeq, seq, time      int64
	pid, start               int64
	ppid, pstart             sql.NullInt64
	traceID                  sql.NullString
	traceSeq                 sql.NullInt64
}

func (h *eventHead) event() (capture.Event, error) {
	k, ok := kindByName[h.kind]
	if !ok {
		return capture.Event{}, fmt.Errorf("unknown kind %q", h.kind)
	}
	ev := capture.Event{Seq: uint64(h.seq), Time: h.time, Kind: k,
		Proc: capture.ProcKey{PID: uint32(h.pid), Start: uint64(h.start)}, Comm: h.comm, Source: h.source}
	if h.ppid.Valid {
		ev.Parent = capture.ProcKey{PID: uint32(h.ppid.Int64), Start: uint64(h.pstart.Int64)}
	}
	return ev, nil
}

func scanProcEvent(rows *sql.Rows) (int64, capture.Event, error) {
	var (
		idx                                     int64
		h                                       eventHead
		uid, gid, euid, egid, trunc             sql.NullInt64
		cg, pidNS, netNS, mntNS, code, sig, cor sql.NullInt64
		exe, argv, cmdline, cwd, tty            sql.NullString
	)
	err := rows.Scan(&idx, &h.host, &h.batchSeq, &idx, &h.seq, &h.time, &h.kind, &h.pid, &h.start, &h.ppid, &h.pstart,
		&h.comm, &h.source, &uid, &gid, &euid, &egid, &exe, &argv, &cmdline, &trunc, &cwd, &tty, &cg, &pidNS,
		&netNS, &mntNS, &code, &sig, &cor, &h.traceID, &h.traceSeq)
	if err != nil {
		return 0, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return 0, ev, err
	}
	if uid.Valid {
		a, err := DecodeArgv(argv.String)
		if err != nil {
			return 0, ev, err
		}
		ev.Exec = &capture.Exec{UID: uint32(uid.Int64), GID: uint32(gid.Int64), EUID: uint32(euid.Int64),
			EGID: uint32(egid.Int64), Exe: exe.String, Argv: a, ArgvTruncated: trunc.Int64 != 0, Cwd: cwd.String,
			TTY: tty.String, CgroupID: uint64(cg.Int64), PidNS: uint32(pidNS.Int64), NetNS: uint32(netNS.Int64),
			MntNS: uint32(mntNS.Int64)}
	}
	if code.Valid {
		ev.Exit = &capture.Exit{Code: int32(code.Int64), Signal: int32(sig.Int64), Core: cor.Int64 != 0}
	}
	return idx, ev, nil
}

func scanNetEvent(rows *sql.Rows) (int64, capture.Event, error) {
	var (
		idx                             int64
		h                               eventHead
		proto, srcPort, dstPort, mapped sql.NullInt64
		srcIP, dstIP                    sql.NullString
	)
	err := rows.Scan(&idx, &h.host, &h.batchSeq, &idx, &h.seq, &h.time, &h.kind, &h.pid, &h.start, &h.ppid, &h.pstart,
		&h.comm, &h.source, &proto, &srcIP, &srcPort, &dstIP, &dstPort, &mapped, &h.traceID, &h.traceSeq)
	if err != nil {
		return 0, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return 0, ev, err
	}
	if proto.Valid {
		src, err := parseStoredIP(srcIP, mapped.Int64&1 != 0)
		if err != nil {
			return 0, ev, err
		}
		dst, err := parseStoredIP(dstIP, mapped.Int64&2 != 0)
		if err != nil {
			return 0, ev, err
		}
		ev.Conn = &capture.Conn{Proto: capture.Proto(proto.Int64),
			Src: netip.AddrPortFrom(src, uint16(srcPort.Int64)), Dst: netip.AddrPortFrom(dst, uint16(dstPort.Int64))}
	}
	return idx, ev, nil
}

func parseStoredIP(s sql.NullString, mapped bool) (netip.Addr, error) {
	if !s.Valid {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s.String)
	if err != nil {
		return a, err
	}
	if mapped {
		a = netip.AddrFrom16(a.As16())
	}
	return a, nil
}
