package sqlstore

import (
	"context"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/fxamacker/cbor/v2"
)

// BatchEvents rebuilds the events of the stored batch (host, seq) from its
// rows, in batch order, with the Merkle root the agent signed. Every column
// mapping is exact for the events capture produces (and tableOf sends any
// other shape to raw_events whole), so wire.EncodeEvent(events[i]) is leaf
// i of root: an analyst can check stored rows against the signature
// without the original batch, and the center can build an inclusion proof
// from SQL alone.
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
	var (
		n      int
		r      []byte
		purged sql.NullInt64
	)
	err = tx.QueryRowContext(ctx, `SELECT events, root, purged FROM batches WHERE host = ? AND seq = ?`, host, seq).Scan(&n, &r, &purged)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, errors.New("not stored")
	}
	if err != nil {
		return nil, err
	}
	if purged.Valid {
		return nil, fmt.Errorf("%w (ledger entry %d)", ErrPurged, purged.Int64)
	}
	if len(r) != len(root) {
		return nil, fmt.Errorf("root is %d bytes", len(r))
	}
	copy(root[:], r)
	events := make([]capture.Event, n)
	have := make([]bool, n)
	err = readEvents(ctx, tx, `host = ? AND batch_seq = ?`, []any{host, seq},
		func(loc eventLoc, ev capture.Event) error {
			if loc.idx < 0 || loc.idx >= int64(n) || have[loc.idx] {
				return fmt.Errorf("event index %d out of range or repeated", loc.idx)
			}
			events[loc.idx], have[loc.idx] = ev, true
			return nil
		},
		func(loc eventLoc, m *capture.MemSnippet) error {
			if loc.idx < 0 || loc.idx >= int64(n) || !have[loc.idx] {
				return fmt.Errorf("memory snippet of event %d, which has no row", loc.idx)
			}
			events[loc.idx].Mem = m
			return nil
		})
	if err != nil {
		return nil, err
	}
	for i, ok := range have {
		if !ok {
			return nil, fmt.Errorf("event %d of %d missing", i, n)
		}
	}
	return events, nil
}

// eventLoc is where an event row came from: the batch and the index in it.
type eventLoc struct {
	host          string
	batchSeq, idx int64
}

type queryer interface {
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// readEvents rebuilds every event whose rows match where (a condition on
// the columns every event table has), table by table, handing each to put,
// then each memory snippet to mem (after all events).
func readEvents(ctx context.Context, q queryer, where string, args []any,
	put func(eventLoc, capture.Event) error, mem func(eventLoc, *capture.MemSnippet) error,
) error {
	scanners := []struct {
		t    evTable
		scan func(*sql.Rows) (eventLoc, capture.Event, error)
	}{
		{tProcEvents, scanProcEvent},
		{tNetEvents, scanNetEvent},
		{tFileEvents, scanFileEvent},
		{tHashes, scanHashEvent},
		{tNotes, scanNoteEvent},
		{tRaw, scanRawEvent},
	}
	for _, sc := range scanners {
		d := tableDefs[sc.t]
		err := eachRow(ctx, q, `SELECT `+d.cols+` FROM `+d.name+` WHERE `+where, args, func(rows *sql.Rows) error {
			loc, ev, err := sc.scan(rows)
			if err == nil {
				err = put(loc, ev)
			}
			return err
		})
		if err != nil {
			return fmt.Errorf("%s: %w", d.name, err)
		}
	}
	return eachRow(ctx, q, `SELECT `+memCols+` FROM mem_snippets WHERE `+where, args, func(rows *sql.Rows) error {
		loc, m, err := scanMem(rows)
		if err == nil {
			err = mem(loc, m)
		}
		return err
	})
}

func eachRow(ctx context.Context, q queryer, query string, args []any, f func(*sql.Rows) error) error {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return err
	}
	for rows.Next() {
		if err := f(rows); err != nil {
			rows.Close()
			return err
		}
	}
	return rows.Close()
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

// kindByName maps the kind column of process_events, network_events and
// file_events back to the event kind.
var kindByName = map[string]capture.Kind{
	"fork": capture.KindFork, "exec": capture.KindExec, "exit": capture.KindExit,
	"connect": capture.KindConnect, "accept": capture.KindAccept, "close": capture.KindClose,
	"socket": capture.KindSocket,
	"open":   capture.KindFileOpen, "create": capture.KindFileOpen,
	"rename": capture.KindFileRename, "unlink": capture.KindFileUnlink,
}

// eventHead is what every event table row starts with, and its trace
// columns.
type eventHead struct {
	loc                eventLoc
	kind, comm, source string
	seq, time          int64
	pid, start         int64
	ppid, pstart       sql.NullInt64
	traceID            sql.NullString
	traceSeq           sql.NullInt64
	fixedKind          capture.Kind // tables of one kind have no kind column
	kindless           bool
}

// dst returns the scan destinations of the head columns (with kind or
// without, as the table has it).
func (h *eventHead) dst() []any {
	d := []any{&h.loc.host, &h.loc.batchSeq, &h.loc.idx, &h.seq, &h.time}
	if !h.kindless {
		d = append(d, &h.kind)
	}
	return append(d, &h.pid, &h.start, &h.ppid, &h.pstart, &h.comm, &h.source)
}

func (h *eventHead) event() (capture.Event, error) {
	k := h.fixedKind
	if !h.kindless {
		var ok bool
		if k, ok = kindByName[h.kind]; !ok {
			return capture.Event{}, fmt.Errorf("unknown kind %q", h.kind)
		}
	}
	ev := capture.Event{Seq: uint64(h.seq), Time: h.time, Kind: k,
		Proc: capture.ProcKey{PID: uint32(h.pid), Start: uint64(h.start)}, Comm: h.comm, Source: h.source,
		TraceID: h.traceID.String, TraceSeq: uint64(h.traceSeq.Int64)}
	if h.ppid.Valid {
		ev.Parent = capture.ProcKey{PID: uint32(h.ppid.Int64), Start: uint64(h.pstart.Int64)}
	}
	return ev, nil
}

func scanProcEvent(rows *sql.Rows) (eventLoc, capture.Event, error) {
	var (
		h                                       eventHead
		uid, gid, euid, egid, trunc, envTrunc   sql.NullInt64
		cg, pidNS, netNS, mntNS, code, sig, cor sql.NullInt64
		exe, argv, cmdline, cwd, tty, env       sql.NullString
	)
	err := rows.Scan(append(h.dst(), &uid, &gid, &euid, &egid, &exe, &argv, &cmdline, &trunc, &cwd, &tty, &cg, &pidNS,
		&netNS, &mntNS, &code, &sig, &cor, &env, &envTrunc, &h.traceID, &h.traceSeq)...)
	if err != nil {
		return h.loc, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return h.loc, ev, err
	}
	if uid.Valid {
		a, err := DecodeArgv(argv.String)
		if err != nil {
			return h.loc, ev, err
		}
		e, err := DecodeArgv(env.String)
		if err != nil {
			return h.loc, ev, err
		}
		ev.Exec = &capture.Exec{UID: uint32(uid.Int64), GID: uint32(gid.Int64), EUID: uint32(euid.Int64),
			EGID: uint32(egid.Int64), Exe: exe.String, Argv: a, ArgvTruncated: trunc.Int64 != 0, Cwd: cwd.String,
			TTY: tty.String, CgroupID: uint64(cg.Int64), PidNS: uint32(pidNS.Int64), NetNS: uint32(netNS.Int64),
			MntNS: uint32(mntNS.Int64), Env: e, EnvTruncated: envTrunc.Int64 != 0}
	}
	if code.Valid {
		ev.Exit = &capture.Exit{Code: int32(code.Int64), Signal: int32(sig.Int64), Core: cor.Int64 != 0}
	}
	return h.loc, ev, nil
}

func scanNetEvent(rows *sql.Rows) (eventLoc, capture.Event, error) {
	var (
		h                                  eventHead
		proto, srcPort, dstPort, mapped    sql.NullInt64
		family, sockType, sockProto, resul sql.NullInt64
		srcIP, dstIP                       sql.NullString
	)
	err := rows.Scan(append(h.dst(), &proto, &srcIP, &srcPort, &dstIP, &dstPort, &mapped, &family, &sockType, &sockProto,
		&resul, &h.traceID, &h.traceSeq)...)
	if err != nil {
		return h.loc, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return h.loc, ev, err
	}
	if proto.Valid {
		src, err := parseStoredIP(srcIP, mapped.Int64&1 != 0)
		if err != nil {
			return h.loc, ev, err
		}
		dst, err := parseStoredIP(dstIP, mapped.Int64&2 != 0)
		if err != nil {
			return h.loc, ev, err
		}
		ev.Conn = &capture.Conn{Proto: capture.Proto(proto.Int64),
			Src: netip.AddrPortFrom(src, uint16(srcPort.Int64)), Dst: netip.AddrPortFrom(dst, uint16(dstPort.Int64))}
	}
	if resul.Valid {
		ev.Sock = &capture.SockOp{Domain: int32(family.Int64), Type: int32(sockType.Int64), Proto: int32(sockProto.Int64),
			Result: resul.Int64}
	}
	return h.loc, ev, nil
}

func scanFileEvent(rows *sql.Rows) (eventLoc, capture.Event, error) {
	var (
		h                                     eventHead
		path                                  string
		path2                                 sql.NullString
		flags, mode, inode, dev, result, unrd sql.NullInt64
	)
	err := rows.Scan(append(h.dst(), &path, &path2, &flags, &mode, &inode, &dev, &result, &unrd,
		&h.traceID, &h.traceSeq)...)
	if err != nil {
		return h.loc, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return h.loc, ev, err
	}
	ev.File = &capture.FileOp{Path: path, Path2: path2.String, Flags: uint64(flags.Int64), Mode: uint32(mode.Int64),
		Inode: uint64(inode.Int64), Dev: uint64(dev.Int64), Result: result.Int64, PathUnread: unrd.Int64 != 0}
	return h.loc, ev, nil
}

func scanHashEvent(rows *sql.Rows) (eventLoc, capture.Event, error) {
	var (
		h                        eventHead
		path                     string
		size, dev, inode, cached sql.NullInt64
		blake3, sha256           []byte
		errText                  sql.NullString
	)
	h.kindless, h.fixedKind = true, capture.KindExecHash
	err := rows.Scan(append(h.dst(), &path, &size, &dev, &inode, &blake3, &sha256, &cached, &errText,
		&h.traceID, &h.traceSeq)...)
	if err != nil {
		return h.loc, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return h.loc, ev, err
	}
	ev.Hashes = &capture.Hashes{Blake3: hex.EncodeToString(blake3), SHA256: hex.EncodeToString(sha256), Path: path,
		Size: size.Int64, Dev: uint64(dev.Int64), Inode: uint64(inode.Int64), Cached: cached.Int64 != 0, Error: errText.String}
	return h.loc, ev, nil
}

func scanNoteEvent(rows *sql.Rows) (eventLoc, capture.Event, error) {
	var (
		h                                    eventHead
		n                                    capture.TraceNote
		dropped, events, bytes, depth, npids int64
	)
	h.kindless, h.fixedKind = true, capture.KindTraceNote
	err := rows.Scan(append(h.dst(), &n.What, &n.Reason, &dropped, &events, &bytes, &depth, &npids,
		&h.traceID, &h.traceSeq)...)
	if err != nil {
		return h.loc, capture.Event{}, err
	}
	ev, err := h.event()
	if err != nil {
		return h.loc, ev, err
	}
	n.Dropped, n.Events, n.Bytes, n.Depth, n.Pids = uint64(dropped), uint64(events), bytes, int32(depth), uint32(npids)
	ev.Note = &n
	return h.loc, ev, nil
}

func scanRawEvent(rows *sql.Rows) (eventLoc, capture.Event, error) {
	var (
		loc      eventLoc
		t, kind  int64
		raw      []byte
		traceID  sql.NullString
		traceSeq sql.NullInt64
		ev       capture.Event
	)
	if err := rows.Scan(&loc.host, &loc.batchSeq, &loc.idx, &t, &kind, &raw, &traceID, &traceSeq); err != nil {
		return loc, ev, err
	}
	err := rawDecMode.Unmarshal(raw, &ev)
	return loc, ev, err
}

func scanMem(rows *sql.Rows) (eventLoc, *capture.MemSnippet, error) {
	var (
		loc                 eventLoc
		t, pid, start, addr int64
		region              string
		data                []byte
		errText, traceID    sql.NullString
		traceSeq            sql.NullInt64
	)
	if err := rows.Scan(&loc.host, &loc.batchSeq, &loc.idx, &t, &pid, &start, &addr, &region, &data, &errText,
		&traceID, &traceSeq); err != nil {
		return loc, nil, err
	}
	m := &capture.MemSnippet{Addr: uint64(addr), Error: errText.String}
	if len(data) > 0 {
		m.Data = data
	}
	return loc, m, nil
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
