package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Column lists, shared by the statements that write and read them so the
// two cannot drift apart.
const (
	procCols = `host, pid, start, ppid, pstart, comm, uid, gid, euid, egid, exe, argv, cmdline,
		argv_truncated, cwd, tty, cgroup_id, pid_ns, net_ns, mnt_ns, start_time, exit_time,
		exit_code, exit_signal, exit_core, seeded, execed`
	procEventCols = `host, batch_seq, idx, seq, time, kind, pid, start, ppid, pstart, comm, source,
		uid, gid, euid, egid, exe, argv, cmdline, argv_truncated, cwd, tty, cgroup_id, pid_ns,
		net_ns, mnt_ns, exit_code, exit_signal, exit_core, trace_id, trace_seq`
	netEventCols = `host, batch_seq, idx, seq, time, kind, pid, start, ppid, pstart, comm, source,
		proto, src_ip, src_port, dst_ip, dst_port, mapped, trace_id, trace_seq`
)

func placeholders(cols string) string {
	n := strings.Count(cols, ",") + 1
	return strings.TrimSuffix(strings.Repeat("?,", n), ",")
}

func upsertSet(cols string, key ...string) string {
	var b strings.Builder
	for _, c := range strings.Split(cols, ",") {
		c = strings.TrimSpace(c)
		if isKey(c, key) {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = excluded.%s", c, c)
	}
	return b.String()
}

func isKey(c string, key []string) bool {
	for _, k := range key {
		if c == k {
			return true
		}
	}
	return false
}

// Rows per multi-row statement. A statement costs a few microseconds in
// database/sql and the driver whatever its size, so rows go in groups:
// 64 x 31 parameters stays well under SQLite's 32766.
const bulkRows = 64

// ingestStmts are prepared once on the writer connection; a batch uses them
// through its transaction.
type ingestStmts struct {
	insBatch, batchRoot, touchHost *sql.Stmt
	insRaw, getProc, liveStarts    *sql.Stmt
	loadProcs                      *sql.Stmt // bulkRows keys at a time
	procEvents, netEvents, procs   bulkStmt
}

// bulkStmt is an INSERT prepared for one row and for bulkRows rows.
type bulkStmt struct {
	one, many *sql.Stmt
	width     int
}

func multiValues(cols string, rows int) string {
	row := "(" + placeholders(cols) + ")"
	return strings.TrimSuffix(strings.Repeat(row+",", rows), ",")
}

func prepareIngest(ctx context.Context, db *sql.DB) (*ingestStmts, error) {
	s := &ingestStmts{}
	procUpsert := ` ON CONFLICT (host, pid, start) DO UPDATE SET ` + upsertSet(procCols, "host", "pid", "start")
	keyList := strings.TrimSuffix(strings.Repeat("(?, ?),", bulkRows), ",")
	s.procEvents.width = strings.Count(procEventCols, ",") + 1
	s.netEvents.width = strings.Count(netEventCols, ",") + 1
	s.procs.width = strings.Count(procCols, ",") + 1
	for _, p := range []struct {
		dst **sql.Stmt
		sql string
	}{
		{&s.insBatch, `INSERT INTO batches (host, seq, ts_start, ts_end, events, root, ingested)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host, seq) DO NOTHING`},
		{&s.batchRoot, `SELECT root FROM batches WHERE host = ? AND seq = ?`},
		{&s.touchHost, `INSERT INTO hosts (agent_id, first_seen, last_seen, last_event) VALUES (?, ?, ?, ?)
			ON CONFLICT (agent_id) DO UPDATE SET
				last_seen = max(last_seen, excluded.last_seen),
				last_event = max(coalesce(last_event, excluded.last_event), excluded.last_event)`},
		{&s.insRaw, `INSERT INTO raw_events (host, batch_seq, idx, time, kind, event) VALUES (?, ?, ?, ?, ?, ?)`},
		{&s.getProc, `SELECT ` + procCols + ` FROM processes WHERE host = ? AND pid = ? AND start = ?`},
		{&s.loadProcs, `SELECT ` + procCols + ` FROM processes WHERE host = ? AND (pid, start) IN (VALUES ` + keyList + `)`},
		{&s.liveStarts, `SELECT start FROM processes WHERE host = ? AND pid = ? AND exit_time IS NULL ORDER BY start DESC LIMIT 8`},
		{&s.procEvents.one, `INSERT INTO process_events (` + procEventCols + `) VALUES ` + multiValues(procEventCols, 1)},
		{&s.procEvents.many, `INSERT INTO process_events (` + procEventCols + `) VALUES ` + multiValues(procEventCols, bulkRows)},
		{&s.netEvents.one, `INSERT INTO network_events (` + netEventCols + `) VALUES ` + multiValues(netEventCols, 1)},
		{&s.netEvents.many, `INSERT INTO network_events (` + netEventCols + `) VALUES ` + multiValues(netEventCols, bulkRows)},
		{&s.procs.one, `INSERT INTO processes (` + procCols + `) VALUES ` + multiValues(procCols, 1) + procUpsert},
		{&s.procs.many, `INSERT INTO processes (` + procCols + `) VALUES ` + multiValues(procCols, bulkRows) + procUpsert},
	} {
		st, err := db.PrepareContext(ctx, p.sql)
		if err != nil {
			s.close()
			return nil, fmt.Errorf("prepare %q: %w", strings.Join(strings.Fields(p.sql)[:3], " "), err)
		}
		*p.dst = st
	}
	return s, nil
}

func (s *ingestStmts) close() {
	for _, st := range []*sql.Stmt{s.insBatch, s.batchRoot, s.touchHost, s.insRaw, s.getProc, s.loadProcs,
		s.liveStarts, s.procEvents.one, s.procEvents.many, s.netEvents.one, s.netEvents.many, s.procs.one, s.procs.many} {
		if st != nil {
			st.Close()
		}
	}
}

// bulkInsert buffers rows for one bulkStmt within a transaction.
type bulkInsert struct {
	ctx       context.Context
	one, many *sql.Stmt
	width     int
	buf       []any
}

func (s bulkStmt) in(ctx context.Context, tx *sql.Tx) *bulkInsert {
	return &bulkInsert{ctx: ctx, one: tx.StmtContext(ctx, s.one), many: tx.StmtContext(ctx, s.many), width: s.width,
		buf: make([]any, 0, s.width*bulkRows)}
}

// add appends one row (width values), writing a full group.
func (b *bulkInsert) add(row []any) error {
	if len(row) != b.width {
		return fmt.Errorf("row of %d values, want %d", len(row), b.width)
	}
	b.buf = append(b.buf, row...)
	if len(b.buf) < b.width*bulkRows {
		return nil
	}
	_, err := b.many.ExecContext(b.ctx, b.buf...)
	b.buf = b.buf[:0]
	return err
}

// flush writes the rows of a last, partial group one by one.
func (b *bulkInsert) flush() error {
	for i := 0; i < len(b.buf); i += b.width {
		if _, err := b.one.ExecContext(b.ctx, b.buf[i:i+b.width]...); err != nil {
			return err
		}
	}
	b.buf = b.buf[:0]
	return nil
}

// IngestBatch stores a verified batch in one transaction: a row per event,
// the process table changes the events imply, the batch record and the
// host's last_seen. It is idempotent: a batch already stored under its
// (agent id, seq) with the same root is a no-op; with a different root it
// is refused with ErrBatchConflict (the center's Pebble dedup should make
// that impossible, so it is worth an error, not a silent skip).
func (s *Store) IngestBatch(ctx context.Context, b *wire.Batch) error {
	if b == nil || b.AgentID == "" {
		return errors.New("sqlstore: ingest: batch without agent id")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.ingest(ctx, b); err != nil {
		return fmt.Errorf("sqlstore: ingest %s/%d: %w", b.AgentID, b.Seq, err)
	}
	return nil
}

func (s *Store) ingest(ctx context.Context, b *wire.Batch) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	st := s.stmts
	host, seq := b.AgentID, int64(b.Seq)
	now := s.now().UnixNano()

	res, err := tx.StmtContext(ctx, st.insBatch).ExecContext(ctx, host, seq, b.TSStart, b.TSEnd, len(b.Events), b.Root[:], now)
	if err != nil {
		return fmt.Errorf("record batch: %w", err)
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n == 0 {
		var root []byte
		if err := tx.StmtContext(ctx, st.batchRoot).QueryRowContext(ctx, host, seq).Scan(&root); err != nil {
			return fmt.Errorf("stored batch: %w", err)
		}
		if !bytes.Equal(root, b.Root[:]) {
			return ErrBatchConflict
		}
		s.log.Debug("batch already ingested", "agent", host, "seq", b.Seq)
		return nil
	}
	if _, err := tx.StmtContext(ctx, st.touchHost).ExecContext(ctx, host, now, now, b.TSEnd); err != nil {
		return fmt.Errorf("host: %w", err)
	}

	pt := &procTx{ctx: ctx, host: host, get: tx.StmtContext(ctx, st.getProc), live: tx.StmtContext(ctx, st.liveStarts),
		ents: make(map[capture.ProcKey]*procRow, len(b.Events)/2), now: now}
	if err := pt.preload(tx.StmtContext(ctx, st.loadProcs), b.Events); err != nil {
		return err
	}
	procEvents, netEvents := st.procEvents.in(ctx, tx), st.netEvents.in(ctx, tx)
	var insRaw *sql.Stmt
	row := make([]any, 0, 32)
	for i := range b.Events {
		ev := &b.Events[i]
		switch ev.Kind {
		case capture.KindFork, capture.KindExec, capture.KindExit:
			if row, err = procEventArgs(row[:0], host, seq, i, ev); err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
			if err := procEvents.add(row); err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
			if err := pt.apply(ev); err != nil {
				return fmt.Errorf("event %d: process table: %w", i, err)
			}
		case capture.KindConnect, capture.KindAccept, capture.KindClose:
			if err := netEvents.add(netEventArgs(row[:0], host, seq, i, ev)); err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
		default:
			// A kind this schema has no table for: keep the signed
			// event whole rather than drop it.
			enc, err := wire.EncodeEvent(*ev)
			if err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
			if insRaw == nil {
				insRaw = tx.StmtContext(ctx, st.insRaw)
			}
			if _, err := insRaw.ExecContext(ctx, host, seq, i, ev.Time, int64(ev.Kind), enc); err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
		}
	}
	if err := procEvents.flush(); err != nil {
		return fmt.Errorf("process events: %w", err)
	}
	if err := netEvents.flush(); err != nil {
		return fmt.Errorf("network events: %w", err)
	}
	procs := st.procs.in(ctx, tx)
	for _, p := range pt.dirty {
		if err := procs.add(p.args(row[:0], host)); err != nil {
			return fmt.Errorf("processes: %w", err)
		}
	}
	if err := procs.flush(); err != nil {
		return fmt.Errorf("processes: %w", err)
	}
	return tx.Commit()
}

// nullable helpers: SQL NULL for the zero value where the schema says so.
func nullStr(ok bool, s string) any {
	if !ok {
		return nil
	}
	return s
}

func nullInt(ok bool, v int64) any {
	if !ok {
		return nil
	}
	return v
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func procEventArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) ([]any, error) {
	hasParent := !ev.Parent.IsZero()
	args = append(args, host, batchSeq, idx, int64(ev.Seq), ev.Time, ev.Kind.String(),
		int64(ev.Proc.PID), int64(ev.Proc.Start),
		nullInt(hasParent, int64(ev.Parent.PID)), nullInt(hasParent, int64(ev.Parent.Start)),
		ev.Comm, ev.Source)
	if x := ev.Exec; x != nil {
		argv, err := EncodeArgv(x.Argv)
		if err != nil {
			return nil, err
		}
		args = append(args, int64(x.UID), int64(x.GID), int64(x.EUID), int64(x.EGID), x.Exe,
			nullStr(argv != "", argv), Cmdline(x.Argv), b2i(x.ArgvTruncated), x.Cwd, x.TTY,
			int64(x.CgroupID), int64(x.PidNS), int64(x.NetNS), int64(x.MntNS))
	} else {
		args = append(args, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil)
	}
	if x := ev.Exit; x != nil {
		args = append(args, int64(x.Code), int64(x.Signal), b2i(x.Core))
	} else {
		args = append(args, nil, nil, nil)
	}
	return append(args, nil, nil), nil // trace_id, trace_seq: no trace events yet
}

func netEventArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) []any {
	hasParent := !ev.Parent.IsZero()
	args = append(args, host, batchSeq, idx, int64(ev.Seq), ev.Time, ev.Kind.String(),
		int64(ev.Proc.PID), int64(ev.Proc.Start),
		nullInt(hasParent, int64(ev.Parent.PID)), nullInt(hasParent, int64(ev.Parent.Start)),
		ev.Comm, ev.Source)
	if c := ev.Conn; c != nil {
		src, srcMapped := ipText(c.Src.Addr())
		dst, dstMapped := ipText(c.Dst.Addr())
		mapped := b2i(srcMapped) | b2i(dstMapped)<<1
		args = append(args, int64(c.Proto), src, int64(c.Src.Port()), dst, int64(c.Dst.Port()), mapped)
	} else {
		args = append(args, nil, nil, nil, nil, nil, int64(0))
	}
	return append(args, nil, nil)
}

// ipText is the stored form of an address: NULL for none, IPv4-mapped IPv6
// unmapped (and reported so the flag can restore it).
func ipText(a netip.Addr) (any, bool) {
	if !a.IsValid() {
		return nil, false
	}
	if a.Is4In6() {
		// A zone on a mapped address is not something the kernel reports;
		// dropping it would be the only loss, so keep such an address as is.
		if a.Zone() == "" {
			return a.Unmap().String(), true
		}
	}
	return a.String(), false
}

// qualify prefixes each column of a column list with a table alias.
func qualify(alias, cols string) string {
	parts := strings.Split(cols, ",")
	for i, c := range parts {
		parts[i] = alias + "." + strings.TrimSpace(c)
	}
	return strings.Join(parts, ", ")
}
