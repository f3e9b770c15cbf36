package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Column lists, shared by the statements that write and read them so the
// two cannot drift apart. Every event table's list starts with the same
// head (host ... source, without kind where the table holds one kind).
const (
	procCols = `host, pid, start, ppid, pstart, comm, uid, gid, euid, egid, exe, argv, cmdline,
		argv_truncated, cwd, tty, cgroup_id, pid_ns, net_ns, mnt_ns, start_time, exit_time,
		exit_code, exit_signal, exit_core, seeded, execed`
	procEventCols = `host, batch_seq, idx, seq, time, kind, pid, start, ppid, pstart, comm, source,
		uid, gid, euid, egid, exe, argv, cmdline, argv_truncated, cwd, tty, cgroup_id, pid_ns,
		net_ns, mnt_ns, exit_code, exit_signal, exit_core, env, env_truncated, trace_id, trace_seq`
	netEventCols = `host, batch_seq, idx, seq, time, kind, pid, start, ppid, pstart, comm, source,
		proto, src_ip, src_port, dst_ip, dst_port, mapped, family, sock_type, sock_proto, result,
		trace_id, trace_seq`
	fileEventCols = `host, batch_seq, idx, seq, time, kind, pid, start, ppid, pstart, comm, source,
		path, path2, flags, mode, inode, dev, result, path_unread, trace_id, trace_seq`
	hashCols = `host, batch_seq, idx, seq, time, pid, start, ppid, pstart, comm, source,
		path, size, dev, inode, blake3, sha256, cached, error, trace_id, trace_seq`
	noteCols = `host, batch_seq, idx, seq, time, pid, start, ppid, pstart, comm, source,
		what, reason, dropped, events, bytes, depth, pids, trace_id, trace_seq`
	memCols = `host, batch_seq, idx, time, pid, start, addr, region, data, error, trace_id, trace_seq`
	rawCols = `host, batch_seq, idx, time, kind, event, trace_id, trace_seq`
)

// evTable names the table an event's row goes to.
type evTable int

const (
	tProcEvents evTable = iota
	tNetEvents
	tFileEvents
	tHashes
	tNotes
	tMem // not an event's own table: the Mem of an event stored elsewhere
	tRaw
	nTables
)

var tableDefs = [nTables]struct{ name, cols string }{
	tProcEvents: {"process_events", procEventCols},
	tNetEvents:  {"network_events", netEventCols},
	tFileEvents: {"file_events", fileEventCols},
	tHashes:     {"exe_hashes", hashCols},
	tNotes:      {"trace_notes", noteCols},
	tMem:        {"mem_snippets", memCols},
	tRaw:        {"raw_events", rawCols},
}

// insertSQL is the INSERT of rows rows into table t. OR FAIL: the
// transaction is rolled back on any error anyway, and unlike the default
// OR ABORT, a multi-row statement under OR FAIL needs no statement journal
// (a copy of every page it changes, kept to undo the statement alone).
func insertSQL(t evTable, rows int) string {
	d := tableDefs[t]
	return `INSERT OR FAIL INTO ` + d.name + ` (` + d.cols + `) VALUES ` + multiValues(d.cols, rows)
}

func width(cols string) int { return strings.Count(cols, ",") + 1 }

func placeholders(cols string) string {
	return strings.TrimSuffix(strings.Repeat("?,", width(cols)), ",")
}

func multiValues(cols string, rows int) string {
	row := "(" + placeholders(cols) + ")"
	return strings.TrimSuffix(strings.Repeat(row+",", rows), ",")
}

// setParams is "c = ?, ..." for every column of cols but the key columns.
func setParams(cols string, key ...string) string {
	var b strings.Builder
	for _, c := range strings.Split(cols, ",") {
		c = strings.TrimSpace(c)
		if isKey(c, key) {
			continue
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s = ?", c)
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
// database/sql and the driver whatever its size, so rows go in groups: of
// bulkRows (64 x 33 parameters stays well under SQLite's 32766), then of
// midRows, then one by one.
const (
	bulkRows = 64
	midRows  = 8
)

// ingestStmts are prepared once on the writer connection; a batch uses them
// through its transaction.
type ingestStmts struct {
	insBatch, batchRoot, touchHost *sql.Stmt
	getProc, liveStarts, updProc   *sql.Stmt
	loadProcs                      *sql.Stmt // bulkRows keys at a time
	procs                          bulkStmt  // new processes rows
	events                         [nTables]bulkStmt
	// Cross-host links.
	hostSite, addrOwners, eventID, openLinks, insLink, findAccept, matchLink *sql.Stmt
}

// bulkStmt is an INSERT for bulkRows, midRows and one row. They run on
// the writer's driver connection itself (driverStmts), not through
// database/sql.
type bulkStmt struct {
	many, mid, one string
	width          int
}

func newBulkStmt(insert func(rows int) string, cols string) bulkStmt {
	return bulkStmt{many: insert(bulkRows), mid: insert(midRows), one: insert(1), width: width(cols)}
}

func prepareIngest(ctx context.Context, db *sql.DB) (*ingestStmts, error) {
	s := &ingestStmts{}
	keyList := strings.TrimSuffix(strings.Repeat("(?, ?),", bulkRows), ",")
	type prep struct {
		dst **sql.Stmt
		sql string
	}
	list := []prep{
		{&s.insBatch, `INSERT INTO batches (host, seq, ts_start, ts_end, events, root, ingested)
			VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (host, seq) DO NOTHING`},
		{&s.batchRoot, `SELECT root FROM batches WHERE host = ? AND seq = ?`},
		{&s.touchHost, `INSERT INTO hosts (agent_id, first_seen, last_seen, last_event) VALUES (?, ?, ?, ?)
			ON CONFLICT (agent_id) DO UPDATE SET
				last_seen = max(last_seen, excluded.last_seen),
				last_event = max(coalesce(last_event, excluded.last_event), excluded.last_event)`},
		{&s.getProc, `SELECT ` + procCols + ` FROM processes WHERE host = ? AND pid = ? AND start = ?`},
		{&s.loadProcs, `SELECT ` + procCols + ` FROM processes WHERE host = ? AND (pid, start) IN (VALUES ` + keyList + `)`},
		{&s.liveStarts, `SELECT start FROM processes WHERE host = ? AND pid = ? AND exit_time IS NULL ORDER BY start DESC LIMIT 8`},
		{&s.updProc, `UPDATE processes SET ` + setParams(procCols, "host", "pid", "start") + ` WHERE host = ? AND pid = ? AND start = ?`},
		{&s.hostSite, `SELECT site_tag FROM hosts WHERE agent_id = ?`},
		{&s.addrOwners, `SELECT a.agent_id, h.site_tag FROM host_addresses a JOIN hosts h ON h.agent_id = a.agent_id
			WHERE a.ip = ? ORDER BY a.agent_id`},
		{&s.eventID, `SELECT id FROM network_events WHERE host = ? AND batch_seq = ? AND idx = ?`},
		{&s.openLinks, `SELECT ` + linkCols + ` FROM links WHERE to_host = ? AND to_event IS NULL AND time BETWEEN ? AND ?`},
		{&s.insLink, `INSERT INTO links (trace_id, time, from_host, from_pid, from_start, to_host, proto,
			src_ip, src_port, dst_ip, dst_port, from_event) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
			ON CONFLICT DO NOTHING RETURNING id`},
		// The accept's dst is the connect's src: an ephemeral port, so the
		// (dst_ip, dst_port) index finds a handful of rows at most.
		{&s.findAccept, `SELECT id, pid, start FROM network_events
			WHERE dst_ip = ?1 AND dst_port = ?2 AND host = ?3 AND kind = 'accept' AND proto = ?4
			  AND src_ip = ?5 AND src_port = ?6 AND time BETWEEN ?7 - ?8 AND ?7 + ?8
			ORDER BY abs(time - ?7), id LIMIT 1`},
		{&s.matchLink, `UPDATE links SET to_pid = ?, to_start = ?, to_event = ? WHERE id = ? AND to_event IS NULL`},
	}
	s.procs = newBulkStmt(func(rows int) string {
		return `INSERT OR FAIL INTO processes (` + procCols + `) VALUES ` + multiValues(procCols, rows)
	}, procCols)
	for t := range nTables {
		s.events[t] = newBulkStmt(func(rows int) string { return insertSQL(t, rows) }, tableDefs[t].cols)
	}
	for _, p := range list {
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
	all := []*sql.Stmt{s.insBatch, s.batchRoot, s.touchHost, s.getProc, s.liveStarts, s.updProc, s.loadProcs,
		s.hostSite, s.addrOwners, s.eventID, s.openLinks, s.insLink, s.findAccept, s.matchLink}
	for _, st := range all {
		if st != nil {
			st.Close()
		}
	}
}

// bulkInsert buffers rows for one bulkStmt within a transaction on conn.
type bulkInsert struct {
	ctx  context.Context
	conn *sql.Conn
	ds   *driverStmts
	stmt bulkStmt
	buf  []any
}

func (s bulkStmt) in(ctx context.Context, conn *sql.Conn, ds *driverStmts) *bulkInsert {
	return &bulkInsert{ctx: ctx, conn: conn, ds: ds, stmt: s}
}

// add appends one row (width values), writing a full group.
func (b *bulkInsert) add(row []any) error {
	if len(row) != b.stmt.width {
		return fmt.Errorf("row of %d values, want %d", len(row), b.stmt.width)
	}
	if b.buf == nil {
		b.buf = make([]any, 0, b.stmt.width*bulkRows)
	}
	b.buf = append(b.buf, row...)
	if len(b.buf) < b.stmt.width*bulkRows {
		return nil
	}
	err := b.ds.exec(b.ctx, b.conn, b.stmt.many, b.buf)
	b.buf = b.buf[:0]
	return err
}

// flush writes the rows of a last, partial group.
func (b *bulkInsert) flush() error {
	w := b.stmt.width
	for len(b.buf) >= w*midRows {
		if err := b.ds.exec(b.ctx, b.conn, b.stmt.mid, b.buf[:w*midRows]); err != nil {
			return err
		}
		b.buf = b.buf[w*midRows:]
	}
	for len(b.buf) > 0 {
		if err := b.ds.exec(b.ctx, b.conn, b.stmt.one, b.buf[:w]); err != nil {
			return err
		}
		b.buf = b.buf[w:]
	}
	b.buf = nil
	return nil
}

// IngestBatch stores a verified batch in one transaction: a row per event,
// the process table changes the events imply, cross-host links of traced
// connects, the batch record and the host's last_seen. It is idempotent: a
// batch already stored under its (agent id, seq) with the same root is a
// no-op; with a different root it is refused with ErrBatchConflict (the
// center's Pebble dedup should make that impossible, so it is worth an
// error, not a silent skip).
//
// Each event goes to its kind's table: process_events (fork, exec, exit),
// network_events (connect, accept, close, socket), file_events,
// exe_hashes, trace_notes; a memory snippet also to mem_snippets. Trace
// events carry trace_id and trace_seq there. raw_events keeps, as signed,
// events of kinds this schema does not know and events whose shape their
// kind's table cannot hold exactly (see tableOf), so that BatchEvents
// always rebuilds what the agent signed.
func (s *Store) IngestBatch(ctx context.Context, b *wire.Batch) error {
	if b == nil || b.AgentID == "" {
		return errors.New("sqlstore: ingest: batch without agent id")
	}
	s.wmu.Lock()
	defer s.wmu.Unlock()
	if err := s.ingest(ctx, b); err != nil {
		return fmt.Errorf("sqlstore: ingest %s/%d: %w", b.AgentID, b.Seq, err)
	}
	s.ckpt.poke()
	return nil
}

func (s *Store) ingest(ctx context.Context, b *wire.Batch) error {
	// The writer's one connection, held for the transaction: the bulk
	// inserts run on it directly (driverStmts).
	conn, err := s.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
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
	var ins [nTables]*bulkInsert
	for t := range nTables {
		ins[t] = st.events[t].in(ctx, conn, &s.driverStmts)
	}
	var connects, accepts []int // events that may start or close a cross-host link
	row := make([]any, 0, 40)
	var img image
	for i := range b.Events {
		ev := &b.Events[i]
		// An exec's argv goes into process_events and processes alike:
		// encode it once.
		var imgp *image
		if ev.Kind == capture.KindExec && ev.Exec != nil {
			if img, err = imageOf(ev.Exec); err != nil {
				return fmt.Errorf("event %d: %w", i, err)
			}
			imgp = &img
		}
		t, r, err := eventRow(row[:0], host, seq, i, ev, imgp)
		if err != nil {
			return fmt.Errorf("event %d: %w", i, err)
		}
		if err := ins[t].add(r); err != nil {
			return fmt.Errorf("event %d: %s: %w", i, tableDefs[t].name, err)
		}
		row = r
		if ev.Mem != nil && t != tRaw {
			if err := ins[tMem].add(memArgs(row[:0], host, seq, i, ev)); err != nil {
				return fmt.Errorf("event %d: mem_snippets: %w", i, err)
			}
		}
		switch ev.Kind {
		case capture.KindFork, capture.KindExec, capture.KindExit:
			if err := pt.apply(ev, imgp); err != nil {
				return fmt.Errorf("event %d: process table: %w", i, err)
			}
		case capture.KindConnect:
			if t == tNetEvents && linkable(ev) {
				connects = append(connects, i)
			}
		case capture.KindAccept:
			if t == tNetEvents && ev.Conn != nil {
				accepts = append(accepts, i)
			}
		}
	}
	for t := range nTables {
		if err := ins[t].flush(); err != nil {
			return fmt.Errorf("%s: %w", tableDefs[t].name, err)
		}
	}
	if err := pt.write(tx, conn, &s.driverStmts, st, row); err != nil {
		return fmt.Errorf("processes: %w", err)
	}
	if len(connects) > 0 || len(accepts) > 0 {
		lt := &linkTx{ctx: ctx, tx: tx, st: st, b: b}
		if err := lt.connects(connects); err != nil {
			return fmt.Errorf("links: %w", err)
		}
		if err := lt.accepts(accepts); err != nil {
			return fmt.Errorf("links: %w", err)
		}
	}
	return tx.Commit()
}

// write stores the rows the batch changed: new ones by multi-row INSERT,
// rows read from the table by UPDATE. (An upsert would cost the INSERT a
// statement journal, and every row a second b-tree search.)
func (t *procTx) write(tx *sql.Tx, conn *sql.Conn, ds *driverStmts, st *ingestStmts, row []any) error {
	procs := st.procs.in(t.ctx, conn, ds)
	var upd *sql.Stmt
	for _, p := range t.dirty {
		if !p.stored {
			if err := procs.add(p.args(row[:0], t.host)); err != nil {
				return err
			}
			continue
		}
		// procCols minus the key, then the key.
		a := p.args(row[:0], t.host)
		a = append(a, a[0], a[1], a[2])[3:]
		if upd == nil {
			upd = tx.StmtContext(t.ctx, st.updProc)
		}
		if _, err := upd.ExecContext(t.ctx, a...); err != nil {
			return err
		}
	}
	return procs.flush()
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

// oCreat is O_CREAT on Linux, the agents' platform: a file_events 'create'.
const oCreat = 0o100

// tableOf says which table holds ev: its kind's, if that table can hold
// every field ev sets, else raw_events. The typed tables hold exactly what
// the sensor produces for each kind; an event with a payload its kind does
// not carry (or digests that are not lowercase hex) is kept whole instead,
// so that BatchEvents still rebuilds it bit for bit.
func tableOf(ev *capture.Event) evTable {
	none := func(ps ...bool) bool {
		for _, p := range ps {
			if p {
				return false
			}
		}
		return true
	}
	hasExec, hasExit, hasConn := ev.Exec != nil, ev.Exit != nil, ev.Conn != nil
	hasFile, hasSock, hasHash, hasNote := ev.File != nil, ev.Sock != nil, ev.Hashes != nil, ev.Note != nil
	switch ev.Kind {
	case capture.KindFork, capture.KindExec, capture.KindExit:
		if none(hasConn, hasFile, hasSock, hasHash, hasNote) {
			return tProcEvents
		}
	case capture.KindConnect, capture.KindAccept, capture.KindClose, capture.KindSocket:
		if none(hasExec, hasExit, hasFile, hasHash, hasNote) {
			return tNetEvents
		}
	case capture.KindFileOpen, capture.KindFileRename, capture.KindFileUnlink:
		if hasFile && none(hasExec, hasExit, hasConn, hasSock, hasHash, hasNote) {
			return tFileEvents
		}
	case capture.KindExecHash:
		if hasHash && none(hasExec, hasExit, hasConn, hasFile, hasSock, hasNote) &&
			canonicalHex(ev.Hashes.Blake3) && canonicalHex(ev.Hashes.SHA256) {
			return tHashes
		}
	case capture.KindTraceNote:
		if hasNote && none(hasExec, hasExit, hasConn, hasFile, hasSock, hasHash) {
			return tNotes
		}
	}
	return tRaw
}

// canonicalHex reports whether s is "" or lowercase hex of whole bytes: what
// a BLOB column gives back exactly.
func canonicalHex(s string) bool {
	if len(s)%2 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func hexBlob(s string) any {
	if s == "" {
		return nil
	}
	b, _ := hex.DecodeString(s) // canonicalHex checked it
	return b
}

// eventRow appends the row of ev for its table (tableOf) to args. img is
// the image of ev.Exec if the caller made it (else nil).
func eventRow(args []any, host string, batchSeq int64, idx int, ev *capture.Event, img *image) (evTable, []any, error) {
	switch t := tableOf(ev); t {
	case tProcEvents:
		a, err := procEventArgs(args, host, batchSeq, idx, ev, img)
		return t, a, err
	case tNetEvents:
		return t, netEventArgs(args, host, batchSeq, idx, ev), nil
	case tFileEvents:
		return t, fileEventArgs(args, host, batchSeq, idx, ev), nil
	case tHashes:
		return t, hashArgs(args, host, batchSeq, idx, ev), nil
	case tNotes:
		return t, noteArgs(args, host, batchSeq, idx, ev), nil
	}
	enc, err := wire.EncodeEvent(*ev)
	if err != nil {
		return tRaw, nil, err
	}
	args = append(args, host, batchSeq, int64(idx), ev.Time, int64(ev.Kind), enc)
	return tRaw, appendTrace(args, ev), nil
}

// head appends host ... source; kind only where the table has the column.
func head(args []any, host string, batchSeq int64, idx int, ev *capture.Event, kind string) []any {
	hasParent := !ev.Parent.IsZero()
	args = append(args, host, batchSeq, int64(idx), int64(ev.Seq), ev.Time)
	if kind != "" {
		args = append(args, kind)
	}
	return append(args, int64(ev.Proc.PID), int64(ev.Proc.Start),
		nullInt(hasParent, int64(ev.Parent.PID)), nullInt(hasParent, int64(ev.Parent.Start)),
		ev.Comm, ev.Source)
}

// appendTrace appends trace_id, trace_seq: NULL for a baseline event.
func appendTrace(args []any, ev *capture.Event) []any {
	return append(args, nullStr(ev.TraceID != "", ev.TraceID),
		nullInt(ev.TraceID != "" || ev.TraceSeq != 0, int64(ev.TraceSeq)))
}

func procEventArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event, img *image) ([]any, error) {
	args = head(args, host, batchSeq, idx, ev, ev.Kind.String())
	var env any
	if x := ev.Exec; x != nil {
		if img == nil {
			i, err := imageOf(x)
			if err != nil {
				return nil, err
			}
			img = &i
		}
		e, err := EncodeArgv(x.Env)
		if err != nil {
			return nil, err
		}
		env = nullStr(e != "", e)
		args = append(args, int64(x.UID), int64(x.GID), int64(x.EUID), int64(x.EGID), x.Exe,
			nullStr(img.argv != "", img.argv), img.cmdline, b2i(x.ArgvTruncated), x.Cwd, x.TTY,
			int64(x.CgroupID), int64(x.PidNS), int64(x.NetNS), int64(x.MntNS))
	} else {
		args = append(args, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil)
	}
	if x := ev.Exit; x != nil {
		args = append(args, int64(x.Code), int64(x.Signal), b2i(x.Core))
	} else {
		args = append(args, nil, nil, nil)
	}
	var envTrunc any
	if ev.Exec != nil {
		envTrunc = b2i(ev.Exec.EnvTruncated)
	}
	return appendTrace(append(args, env, envTrunc), ev), nil
}

func netEventArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) []any {
	args = head(args, host, batchSeq, idx, ev, ev.Kind.String())
	if c := ev.Conn; c != nil {
		src, srcMapped := ipText(c.Src.Addr())
		dst, dstMapped := ipText(c.Dst.Addr())
		mapped := b2i(srcMapped) | b2i(dstMapped)<<1
		args = append(args, int64(c.Proto), src, int64(c.Src.Port()), dst, int64(c.Dst.Port()), mapped)
	} else {
		args = append(args, nil, nil, nil, nil, nil, int64(0))
	}
	// result is NOT NULL exactly when the event has a SockOp.
	if k := ev.Sock; k != nil {
		args = append(args, int64(k.Domain), int64(k.Type), int64(k.Proto), k.Result)
	} else {
		args = append(args, nil, nil, nil, nil)
	}
	return appendTrace(args, ev)
}

func fileKind(ev *capture.Event) string {
	switch ev.Kind {
	case capture.KindFileRename:
		return "rename"
	case capture.KindFileUnlink:
		return "unlink"
	}
	if ev.File.Flags&oCreat != 0 {
		return "create"
	}
	return "open"
}

func fileEventArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) []any {
	f := ev.File
	args = head(args, host, batchSeq, idx, ev, fileKind(ev))
	args = append(args, f.Path, nullStr(f.Path2 != "", f.Path2), nullInt(f.Flags != 0, int64(f.Flags)),
		nullInt(f.Mode != 0, int64(f.Mode)), nullInt(f.Inode != 0, int64(f.Inode)), nullInt(f.Dev != 0, int64(f.Dev)),
		f.Result, b2i(f.PathUnread))
	return appendTrace(args, ev)
}

func hashArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) []any {
	h := ev.Hashes
	args = head(args, host, batchSeq, idx, ev, "")
	args = append(args, h.Path, nullInt(h.Size != 0, h.Size), nullInt(h.Dev != 0, int64(h.Dev)),
		nullInt(h.Inode != 0, int64(h.Inode)), hexBlob(h.Blake3), hexBlob(h.SHA256), b2i(h.Cached),
		nullStr(h.Error != "", h.Error))
	return appendTrace(args, ev)
}

func noteArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) []any {
	n := ev.Note
	args = head(args, host, batchSeq, idx, ev, "")
	args = append(args, n.What, n.Reason, int64(n.Dropped), int64(n.Events), n.Bytes, int64(n.Depth), int64(n.Pids))
	return appendTrace(args, ev)
}

func memArgs(args []any, host string, batchSeq int64, idx int, ev *capture.Event) []any {
	m := ev.Mem
	data := m.Data
	if data == nil {
		data = []byte{} // NOT NULL; read back as none
	}
	args = append(args, host, batchSeq, int64(idx), ev.Time, int64(ev.Proc.PID), int64(ev.Proc.Start),
		int64(m.Addr), "", data, nullStr(m.Error != "", m.Error))
	return appendTrace(args, ev)
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

// refileRawEvents is migration 2's data step: raw_events rows of the kinds
// version 1 had no table for move to their new tables, and the rows that
// stay get their trace columns. Their ids in the new tables are new (rules
// see them as new rows, which they are to a rule: no rule could read them
// before).
func refileRawEvents(ctx context.Context, tx *sql.Tx) error {
	rows, err := tx.QueryContext(ctx, `SELECT id, host, batch_seq, idx, event FROM raw_events ORDER BY id`)
	if err != nil {
		return fmt.Errorf("refile raw events: %w", err)
	}
	type rawRow struct {
		id, batchSeq, idx int64
		host              string
		ev                capture.Event
	}
	var all []rawRow
	for rows.Next() {
		var (
			r   rawRow
			enc []byte
		)
		if err := rows.Scan(&r.id, &r.host, &r.batchSeq, &r.idx, &enc); err != nil {
			rows.Close()
			return fmt.Errorf("refile raw events: %w", err)
		}
		if err := rawDecMode.Unmarshal(enc, &r.ev); err != nil {
			rows.Close()
			return fmt.Errorf("refile raw event %d: %w", r.id, err)
		}
		all = append(all, r)
	}
	if err := rows.Close(); err != nil {
		return fmt.Errorf("refile raw events: %w", err)
	}
	for _, r := range all {
		t, args, err := eventRow(nil, r.host, r.batchSeq, int(r.idx), &r.ev, nil)
		if err != nil {
			return fmt.Errorf("refile raw event %d: %w", r.id, err)
		}
		if t == tRaw {
			if _, err := tx.ExecContext(ctx, `UPDATE raw_events SET trace_id = ?, trace_seq = ? WHERE id = ?`,
				append(appendTrace(nil, &r.ev), r.id)...); err != nil {
				return fmt.Errorf("refile raw event %d: %w", r.id, err)
			}
			continue
		}
		if _, err := tx.ExecContext(ctx, insertSQL(t, 1), args...); err != nil {
			return fmt.Errorf("refile raw event %d: %w", r.id, err)
		}
		if r.ev.Mem != nil {
			if _, err := tx.ExecContext(ctx, insertSQL(tMem, 1), memArgs(nil, r.host, r.batchSeq, int(r.idx), &r.ev)...); err != nil {
				return fmt.Errorf("refile raw event %d: %w", r.id, err)
			}
		}
		if _, err := tx.ExecContext(ctx, `DELETE FROM raw_events WHERE id = ?`, r.id); err != nil {
			return fmt.Errorf("refile raw event %d: %w", r.id, err)
		}
	}
	return nil
}

// driverStmts are the bulk inserts prepared on the writer's driver
// connection and run without database/sql, which would check, convert and
// copy every argument into a new []driver.NamedValue on each Exec: 2.4 KB
// of garbage per event, the largest allocation of the ingest. So every
// value a row builder appends must already be a driver.Value (int64, not
// int); the driver refuses anything else with an error. Guarded by the
// Store's wmu.
type driverStmts struct {
	conn  any // the driver connection the statements belong to
	stmts map[string]driver.Stmt
	nv    []driver.NamedValue
}

func (d *driverStmts) exec(ctx context.Context, c *sql.Conn, query string, args []any) error {
	return c.Raw(func(dc any) error {
		if dc != d.conn || d.stmts == nil {
			// New, or database/sql replaced the connection (its statements
			// went with it).
			d.conn, d.stmts = dc, map[string]driver.Stmt{}
		}
		st, ok := d.stmts[query]
		if !ok {
			prep, ok := dc.(driver.ConnPrepareContext)
			if !ok {
				return fmt.Errorf("driver connection %T cannot prepare with a context", dc)
			}
			var err error
			if st, err = prep.PrepareContext(ctx, query); err != nil {
				return err
			}
			d.stmts[query] = st
		}
		ex, ok := st.(driver.StmtExecContext)
		if !ok {
			return fmt.Errorf("driver statement %T cannot execute with a context", st)
		}
		d.nv = d.nv[:0]
		for i, a := range args {
			d.nv = append(d.nv, driver.NamedValue{Ordinal: i + 1, Value: a})
		}
		_, err := ex.ExecContext(ctx, d.nv)
		clear(d.nv) // keep no row alive until the next batch
		return err
	})
}

// close closes the statements, on their connection.
func (d *driverStmts) close(ctx context.Context, db *sql.DB) error {
	if len(d.stmts) == 0 {
		return nil
	}
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Raw(func(dc any) error {
		var errs []error
		if dc == d.conn {
			for _, st := range d.stmts {
				errs = append(errs, st.Close())
			}
		}
		d.stmts = nil
		return errors.Join(errs...)
	})
}
