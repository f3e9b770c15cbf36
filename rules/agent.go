package rules

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	sqlite3 "modernc.org/sqlite/lib"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// AgentConfig sizes the agent's rule window. Zero values take the defaults.
type AgentConfig struct {
	// Host is the agent id: the host column of every row, as on the center.
	Host string
	// MaxEventRows bounds each event table (default 4096 rows).
	MaxEventRows int
	// MaxProcesses bounds the process table (default 16384: the 10,000
	// live processes of a busy host, plus recent exits).
	MaxProcesses int
	// Window: events older than the newest event minus Window are dropped,
	// and so are processes that exited before it (default 10m).
	Window time.Duration
	// MaxBytes is a hard bound on the database (default 24 MiB), enforced
	// by SQLite (max_page_count): a Feed that would pass it fails, the
	// oldest half of every table (exited processes first) is dropped and
	// the Feed retried once; if it still does not fit, its events are
	// dropped and counted.
	MaxBytes int64
	// Engine: rule time limit and friends. The agent's default Timeout is
	// 500ms (its window is small, and a slow rule holds up Feed).
	Engine Config
}

func (c AgentConfig) withDefaults() AgentConfig {
	if c.MaxEventRows <= 0 {
		c.MaxEventRows = 4096
	}
	if c.MaxProcesses <= 0 {
		c.MaxProcesses = 16384
	}
	if c.Window <= 0 {
		c.Window = 10 * time.Minute
	}
	if c.MaxBytes <= 0 {
		c.MaxBytes = 24 << 20
	}
	if c.Engine.Timeout <= 0 {
		c.Engine.Timeout = 500 * time.Millisecond
	}
	return c
}

const agentPageSize = 4096

// AgentStats counts what the window holds and what it lost.
type AgentStats struct {
	ProcessEvents, NetworkEvents, FileEvents, Processes int64
	// Evicted: event rows dropped by the bounds. Unevaluated: of those,
	// rows some active rule had not evaluated yet (Feed outran Evaluate).
	Evicted, Unevaluated int64
	// Dropped: events refused because the database stayed full.
	Dropped int64
}

// AgentEngine runs the rules marked runs_on: agent over a small in-memory
// SQLite window of the agent's own events, so that a local trigger does
// not wait for the round trip to the center.
//
// The window is the center's schema restricted to processes,
// process_events, network_events and file_events (AgentSchema): the same
// rule SQL runs on both. Memory is bounded three ways: MaxEventRows per
// event table and MaxProcesses rows (oldest dropped first, exited
// processes before live ones), Window in time, and MaxBytes as a hard cap
// that SQLite enforces. With the defaults a typical row is a few hundred
// bytes, so the window holds about 2 MiB of events and 5 MiB of process
// table on a host with 10,000 processes; 24 MiB is the ceiling whatever
// the rows hold. Nothing touches the disk.
type AgentEngine struct {
	cfg AgentConfig
	db  *memDB
	eng *Engine
	rec *MemoryRecorder
	log *slog.Logger

	mu      sync.Mutex // Feed and Seed
	feeds   int64      // batch_seq of the rows of the next Feed
	lastGen int
	stats   AgentStats
}

// NewAgentEngine builds the window and an engine over the packs' agent
// rules. onAlert receives each new alert (deduplicated in memory; the
// center dedups again).
func NewAgentEngine(ctx context.Context, cfg AgentConfig, onAlert func(Alert), log *slog.Logger, packs ...*Pack) (*AgentEngine, error) {
	cfg = cfg.withDefaults()
	if cfg.Host == "" {
		return nil, errors.New("rules: agent engine: no host (agent id)")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db, err := openMemDB(agentSchema, fmt.Sprintf("page_size = %d", agentPageSize),
		fmt.Sprintf("max_page_count = %d", max(cfg.MaxBytes/agentPageSize, 64)))
	if err != nil {
		return nil, fmt.Errorf("rules: agent engine: %w", err)
	}
	a := &AgentEngine{cfg: cfg, db: db, rec: NewMemoryRecorder(0), log: log.With("component", "rules")}
	a.lastGen = db.generation()
	a.eng, err = NewEngine(ctx, EngineOptions{
		DB: db.DB, Target: Agent, Recorder: a.rec, OnAlert: onAlert, Log: log, Config: cfg.Engine,
		guarded: true, beforePass: a.rebuilt,
	}, packs...)
	if err != nil {
		db.Close()
		return nil, err
	}
	return a, nil
}

// rebuilt reports (once) that database/sql replaced the window's
// connection, which empties an in-memory database: cursors restart.
func (a *AgentEngine) rebuilt() bool {
	g := a.db.generation()
	a.mu.Lock()
	defer a.mu.Unlock()
	if g == a.lastGen {
		return false
	}
	a.lastGen = g
	a.rec.resetCursors()
	a.log.Warn("rule window connection was replaced; the window restarts empty")
	return true
}

// Close frees the window.
func (a *AgentEngine) Close() error { return a.db.Close() }

// Engine returns the engine, for Status and Poke.
func (a *AgentEngine) Engine() *Engine { return a.eng }

// Run evaluates on every Feed and every Interval until ctx ends.
func (a *AgentEngine) Run(ctx context.Context) error { return a.eng.Run(ctx) }

// Evaluate runs the agent rules over everything fed so far, now.
func (a *AgentEngine) Evaluate(ctx context.Context) error {
	for {
		pending, err := a.eng.RunOnce(ctx)
		if err != nil || !pending {
			return err
		}
	}
}

// Stats reports the window's size and losses.
func (a *AgentEngine) Stats() AgentStats {
	a.mu.Lock()
	s := a.stats
	a.mu.Unlock()
	_ = a.db.QueryRow(`SELECT (SELECT count(*) FROM process_events), (SELECT count(*) FROM network_events),
		(SELECT count(*) FROM file_events), (SELECT count(*) FROM processes)`).
		Scan(&s.ProcessEvents, &s.NetworkEvents, &s.FileEvents, &s.Processes)
	return s
}

// Seed loads the process table as the agent found it at start (capture's
// /proc seed), so that rules see the parents of what runs next.
func (a *AgentEngine) Seed(procs []capture.Process) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.inTx(func(tx *sql.Tx) error {
		for i := range procs {
			p := &procs[i]
			if err := upsertImage(tx, a.cfg.Host, p.Key, p.Parent, p.Comm, &p.Exec, p.StartTime, true, p.Execed); err != nil {
				return err
			}
			if p.ExitTime != 0 {
				if err := markExit(tx, a.cfg.Host, p.Key, p.ExitTime, p.Exit); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// Feed adds events to the window (process and network events and traced
// file events; other kinds are ignored), applies the bounds, and pokes the
// engine. The rows of one Feed are one transaction.
func (a *AgentEngine) Feed(events []capture.Event) error {
	if len(events) == 0 {
		return nil
	}
	a.mu.Lock()
	a.feeds++
	seq := a.feeds
	err := a.inTx(func(tx *sql.Tx) error { return a.insert(tx, seq, events) })
	if isFull(err) {
		// The hard cap: drop the oldest half of every table and try once
		// more.
		a.log.Warn("rule window full; dropping the oldest half of its events", "max_bytes", a.cfg.MaxBytes)
		if herr := a.inTx(func(tx *sql.Tx) error { return a.evict(tx, -1, true) }); herr != nil {
			a.mu.Unlock()
			return fmt.Errorf("rules: agent window: %w", herr)
		}
		err = a.inTx(func(tx *sql.Tx) error { return a.insert(tx, seq, events) })
		if isFull(err) {
			a.stats.Dropped += int64(len(events))
			a.mu.Unlock()
			return fmt.Errorf("rules: agent window full: %d events dropped: %w", len(events), err)
		}
	}
	if err == nil {
		err = a.inTx(func(tx *sql.Tx) error { return a.evict(tx, int64(a.cfg.MaxEventRows), false) })
	}
	a.mu.Unlock()
	if err != nil {
		return fmt.Errorf("rules: agent window: %w", err)
	}
	a.eng.Poke()
	return nil
}

func isFull(err error) bool {
	var se interface{ Code() int }
	return errors.As(err, &se) && se.Code()&0xff == sqlite3.SQLITE_FULL
}

func (a *AgentEngine) inTx(fn func(*sql.Tx) error) error {
	tx, err := a.db.Begin()
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		tx.Rollback() //nolint:errcheck // the error that matters is fn's
		return err
	}
	return tx.Commit()
}

func (a *AgentEngine) insert(tx *sql.Tx, batch int64, events []capture.Event) error {
	host := a.cfg.Host
	for i := range events {
		ev := &events[i]
		hasParent := !ev.Parent.IsZero()
		ppid, pstart := nullInt(hasParent, int64(ev.Parent.PID)), nullInt(hasParent, int64(ev.Parent.Start))
		trace, traceSeq := nullStr(ev.TraceID != "", ev.TraceID), nullInt(ev.TraceID != "", int64(ev.TraceSeq))
		base := []any{host, batch, i, int64(ev.Seq), ev.Time}
		switch ev.Kind {
		case capture.KindFork, capture.KindExec, capture.KindExit:
			args := append(base, ev.Kind.String(), int64(ev.Proc.PID), int64(ev.Proc.Start), ppid, pstart, ev.Comm, ev.Source)
			if x := ev.Exec; x != nil {
				argv, err := sqlstore.EncodeArgv(x.Argv)
				if err != nil {
					return err
				}
				args = append(args, int64(x.UID), int64(x.GID), int64(x.EUID), int64(x.EGID), x.Exe,
					nullStr(argv != "", argv), sqlstore.Cmdline(x.Argv), b2i(x.ArgvTruncated), x.Cwd, x.TTY,
					int64(x.CgroupID), int64(x.PidNS), int64(x.NetNS), int64(x.MntNS))
			} else {
				args = append(args, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil, nil)
			}
			if x := ev.Exit; x != nil {
				args = append(args, int64(x.Code), int64(x.Signal), b2i(x.Core))
			} else {
				args = append(args, nil, nil, nil)
			}
			args = append(args, trace, traceSeq)
			if _, err := tx.Exec(`INSERT INTO process_events (host, batch_seq, idx, seq, time, kind, pid, start,
				ppid, pstart, comm, source, uid, gid, euid, egid, exe, argv, cmdline, argv_truncated, cwd, tty,
				cgroup_id, pid_ns, net_ns, mnt_ns, exit_code, exit_signal, exit_core, trace_id, trace_seq)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...); err != nil {
				return fmt.Errorf("process event: %w", err)
			}
			if err := a.applyProc(tx, ev); err != nil {
				return fmt.Errorf("process table: %w", err)
			}
		case capture.KindConnect, capture.KindAccept, capture.KindClose, capture.KindSocket:
			kind := ev.Kind.String()
			args := append(base, kind, int64(ev.Proc.PID), int64(ev.Proc.Start), ppid, pstart, ev.Comm, ev.Source)
			var proto, family, sockType, srcIP, srcPort, dstIP, dstPort, result any
			mapped := int64(0)
			if c := ev.Conn; c != nil {
				var sm, dm bool
				srcIP, sm = ipText(c.Src.Addr())
				dstIP, dm = ipText(c.Dst.Addr())
				proto, srcPort, dstPort = int64(c.Proto), int64(c.Src.Port()), int64(c.Dst.Port())
				mapped = b2i(sm) | b2i(dm)<<1
			}
			if s := ev.Sock; s != nil {
				family, sockType, result = int64(s.Domain), int64(s.Type), s.Result
				if ev.Kind == capture.KindConnect && proto == nil && s.Proto != 0 {
					proto = int64(s.Proto)
				}
			}
			args = append(args, proto, family, sockType, srcIP, srcPort, dstIP, dstPort, mapped, result, trace, traceSeq)
			if _, err := tx.Exec(`INSERT INTO network_events (host, batch_seq, idx, seq, time, kind, pid, start,
				ppid, pstart, comm, source, proto, family, sock_type, src_ip, src_port, dst_ip, dst_port, mapped,
				result, trace_id, trace_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...); err != nil {
				return fmt.Errorf("network event: %w", err)
			}
		case capture.KindFileOpen, capture.KindFileRename, capture.KindFileUnlink:
			f := ev.File
			if f == nil {
				continue
			}
			kind := map[capture.Kind]string{capture.KindFileOpen: "open", capture.KindFileRename: "rename", capture.KindFileUnlink: "unlink"}[ev.Kind]
			const oCreat = 0o100
			if ev.Kind == capture.KindFileOpen && f.Flags&oCreat != 0 {
				kind = "create"
			}
			args := append(base, kind, int64(ev.Proc.PID), int64(ev.Proc.Start), ev.Comm, ev.Source, f.Path,
				nullStr(f.Path2 != "", f.Path2), int64(f.Flags), int64(f.Mode), nullInt(f.Inode != 0, int64(f.Inode)),
				nullInt(f.Dev != 0, int64(f.Dev)), f.Result, trace, traceSeq)
			if _, err := tx.Exec(`INSERT INTO file_events (host, batch_seq, idx, seq, time, kind, pid, start, comm,
				source, path, path2, flags, mode, inode, dev, result, trace_id, trace_seq)
				VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, args...); err != nil {
				return fmt.Errorf("file event: %w", err)
			}
		}
	}
	return nil
}

// applyProc keeps the process table as the center's does: a fork creates
// the child with its parent's image, an exec replaces the image, an exit
// marks the end.
func (a *AgentEngine) applyProc(tx *sql.Tx, ev *capture.Event) error {
	host := a.cfg.Host
	switch ev.Kind {
	case capture.KindFork:
		hasParent := !ev.Parent.IsZero()
		_, err := tx.Exec(`INSERT INTO processes (host, pid, start, ppid, pstart, comm, uid, gid, euid, egid, exe,
				argv, cmdline, argv_truncated, cwd, tty, cgroup_id, pid_ns, net_ns, mnt_ns, start_time)
			SELECT ?1, ?2, ?3, ?4, ?5, coalesce(nullif(?6, ''), p.comm, ''), coalesce(p.uid, 0), coalesce(p.gid, 0),
				coalesce(p.euid, 0), coalesce(p.egid, 0), coalesce(p.exe, ''), p.argv, coalesce(p.cmdline, ''),
				coalesce(p.argv_truncated, 0), coalesce(p.cwd, ''), coalesce(p.tty, ''), coalesce(p.cgroup_id, 0),
				coalesce(p.pid_ns, 0), coalesce(p.net_ns, 0), coalesce(p.mnt_ns, 0), ?7
			FROM (SELECT 1) LEFT JOIN processes p ON p.host = ?1 AND p.pid = ?4 AND p.start = ?5
			WHERE true
			ON CONFLICT (host, pid, start) DO UPDATE SET ppid = coalesce(excluded.ppid, ppid),
				pstart = coalesce(excluded.pstart, pstart), start_time = coalesce(start_time, excluded.start_time)`,
			host, int64(ev.Proc.PID), int64(ev.Proc.Start), nullInt(hasParent, int64(ev.Parent.PID)),
			nullInt(hasParent, int64(ev.Parent.Start)), ev.Comm, ev.Time)
		return err
	case capture.KindExec:
		if ev.Exec == nil {
			return nil
		}
		return upsertImage(tx, host, ev.Proc, ev.Parent, ev.Comm, ev.Exec, ev.Time, ev.Source == "seed", true)
	case capture.KindExit:
		return markExit(tx, host, ev.Proc, ev.Time, ev.Exit)
	}
	return nil
}

func upsertImage(tx *sql.Tx, host string, k, parent capture.ProcKey, comm string, x *capture.Exec, t int64, seeded, execed bool) error {
	argv, err := sqlstore.EncodeArgv(x.Argv)
	if err != nil {
		return err
	}
	hasParent := !parent.IsZero()
	_, err = tx.Exec(`INSERT INTO processes (host, pid, start, ppid, pstart, comm, uid, gid, euid, egid, exe, argv,
			cmdline, argv_truncated, cwd, tty, cgroup_id, pid_ns, net_ns, mnt_ns, start_time, seeded, execed)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
		ON CONFLICT (host, pid, start) DO UPDATE SET ppid = coalesce(excluded.ppid, ppid),
			pstart = coalesce(excluded.pstart, pstart), comm = excluded.comm, uid = excluded.uid, gid = excluded.gid,
			euid = excluded.euid, egid = excluded.egid, exe = excluded.exe, argv = excluded.argv,
			cmdline = excluded.cmdline, argv_truncated = excluded.argv_truncated, cwd = excluded.cwd, tty = excluded.tty,
			cgroup_id = excluded.cgroup_id, pid_ns = excluded.pid_ns, net_ns = excluded.net_ns, mnt_ns = excluded.mnt_ns,
			start_time = coalesce(start_time, excluded.start_time), execed = max(execed, excluded.execed)`,
		host, int64(k.PID), int64(k.Start), nullInt(hasParent, int64(parent.PID)), nullInt(hasParent, int64(parent.Start)),
		comm, int64(x.UID), int64(x.GID), int64(x.EUID), int64(x.EGID), x.Exe, nullStr(argv != "", argv),
		sqlstore.Cmdline(x.Argv), b2i(x.ArgvTruncated), x.Cwd, x.TTY, int64(x.CgroupID), int64(x.PidNS),
		int64(x.NetNS), int64(x.MntNS), nullInt(t != 0, t), b2i(seeded), b2i(execed))
	return err
}

func markExit(tx *sql.Tx, host string, k capture.ProcKey, t int64, x *capture.Exit) error {
	var code, sig, core any
	if x != nil {
		code, sig, core = int64(x.Code), int64(x.Signal), b2i(x.Core)
	}
	_, err := tx.Exec(`UPDATE processes SET exit_time = ?, exit_code = ?, exit_signal = ?, exit_core = ?
		WHERE host = ? AND pid = ? AND start = ?`, t, code, sig, core, host, int64(k.PID), int64(k.Start))
	return err
}

// evict applies the bounds: at most keep rows per event table (-1: half
// of what each table, the process table included, holds), nothing
// older than Window before the newest event, processes that exited before
// the window, and at most MaxProcesses processes (exited first, then the
// oldest). force: also when rules have not evaluated the rows (the
// database is full).
func (a *AgentEngine) evict(tx *sql.Tx, keep int64, force bool) error {
	var newest int64
	if err := tx.QueryRow(`SELECT max(coalesce((SELECT max(time) FROM process_events), 0),
		coalesce((SELECT max(time) FROM network_events), 0), coalesce((SELECT max(time) FROM file_events), 0))`).Scan(&newest); err != nil {
		return err
	}
	cutoff := newest - a.cfg.Window.Nanoseconds()
	minCur := a.eng.minCursors()
	for i, t := range eventTables {
		var maxID, rows int64
		if err := tx.QueryRow(`SELECT coalesce(max(id), 0), count(*) FROM `+t).Scan(&maxID, &rows); err != nil {
			return err
		}
		keep := keep
		if keep < 0 {
			keep = rows / 2
		}
		// ids are dense (AUTOINCREMENT, deleted only from the oldest end),
		// so the newest keep rows are id > maxID - keep.
		where := `WHERE id <= ?1 OR time < ?2`
		var lost int64
		if err := tx.QueryRow(`SELECT count(*), coalesce(sum(id > ?3), 0) FROM `+t+` `+where, maxID-keep, cutoff, minCur[i]).
			Scan(new(int64), &lost); err != nil {
			return err
		}
		res, err := tx.Exec(`DELETE FROM `+t+` `+where, maxID-keep, cutoff)
		if err != nil {
			return err
		}
		n, _ := res.RowsAffected()
		a.stats.Evicted += n
		a.stats.Unevaluated += lost
		if lost > 0 && !force {
			a.log.Warn("rule window dropped events before every rule saw them", "table", t, "rows", lost)
		}
	}
	if _, err := tx.Exec(`DELETE FROM processes WHERE exit_time IS NOT NULL AND exit_time < ?`, cutoff); err != nil {
		return err
	}
	var n int64
	if err := tx.QueryRow(`SELECT count(*) FROM processes`).Scan(&n); err != nil {
		return err
	}
	limit := int64(a.cfg.MaxProcesses)
	if keep < 0 {
		limit = min(limit, n/2)
	}
	if excess := n - limit; excess > 0 {
		if _, err := tx.Exec(`DELETE FROM processes WHERE (host, pid, start) IN (
			SELECT host, pid, start FROM processes
			ORDER BY exit_time IS NULL, coalesce(exit_time, start_time, 0), start LIMIT ?)`, excess); err != nil {
			return err
		}
	}
	return nil
}

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

// ipText is the stored form of an address, as sqlstore stores it: NULL
// for none, IPv4-mapped IPv6 unmapped (and reported, for the mapped bits).
func ipText(a netip.Addr) (any, bool) {
	if !a.IsValid() {
		return nil, false
	}
	if a.Is4In6() && a.Zone() == "" {
		return a.Unmap().String(), true
	}
	return a.String(), false
}
