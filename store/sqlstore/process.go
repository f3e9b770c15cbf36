package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/evilbitlabs/daemoneye/capture"
)

// procRow is a processes row in its stored form: the image keeps argv as
// its JSON so that a fork copies the parent's image without decoding it.
type procRow struct {
	key       capture.ProcKey
	parent    capture.ProcKey // zero: unknown (NULL)
	comm      string
	img       image
	startTime int64 // 0: NULL
	exitTime  int64 // 0: alive (NULL)
	exit      *capture.Exit
	seeded    bool
	execed    bool

	dirty  bool
	stored bool // read from the table: written back by UPDATE, not INSERT
}

type image struct {
	uid, gid, euid, egid uint32
	exe                  string
	argv                 string // JSON, "" for NULL
	cmdline              string
	argvTruncated        bool
	cwd, tty             string
	cgroupID             uint64
	pidNS, netNS, mntNS  uint32
}

func imageOf(x *capture.Exec) (image, error) {
	argv, err := EncodeArgv(x.Argv)
	if err != nil {
		return image{}, err
	}
	return image{uid: x.UID, gid: x.GID, euid: x.EUID, egid: x.EGID, exe: x.Exe, argv: argv,
		cmdline: Cmdline(x.Argv), argvTruncated: x.ArgvTruncated, cwd: x.Cwd, tty: x.TTY,
		cgroupID: x.CgroupID, pidNS: x.PidNS, netNS: x.NetNS, mntNS: x.MntNS}, nil
}

// args appends the row's values in procCols order.
func (p *procRow) args(a []any, host string) []any {
	hasParent := !p.parent.IsZero()
	a = append(a, host, int64(p.key.PID), int64(p.key.Start),
		nullInt(hasParent, int64(p.parent.PID)), nullInt(hasParent, int64(p.parent.Start)),
		p.comm, int64(p.img.uid), int64(p.img.gid), int64(p.img.euid), int64(p.img.egid), p.img.exe,
		nullStr(p.img.argv != "", p.img.argv), p.img.cmdline, b2i(p.img.argvTruncated), p.img.cwd, p.img.tty,
		int64(p.img.cgroupID), int64(p.img.pidNS), int64(p.img.netNS), int64(p.img.mntNS),
		nullInt(p.startTime != 0, p.startTime), nullInt(p.exitTime != 0, p.exitTime))
	if p.exit != nil {
		a = append(a, int64(p.exit.Code), int64(p.exit.Signal), b2i(p.exit.Core))
	} else {
		a = append(a, nil, nil, nil)
	}
	return append(a, b2i(p.seeded), b2i(p.execed))
}

// scanProc reads a row selected as procCols.
func scanProc(sc interface{ Scan(...any) error }) (host string, p procRow, err error) {
	var (
		pid, start, uid, gid, euid, egid, cg, pidNS, netNS, mntNS int64
		ppid, pstart, startTime, exitTime, code, sig, core        sql.NullInt64
		argv                                                      sql.NullString
		trunc, seeded, execed                                     int64
	)
	err = sc.Scan(&host, &pid, &start, &ppid, &pstart, &p.comm, &uid, &gid, &euid, &egid, &p.img.exe, &argv,
		&p.img.cmdline, &trunc, &p.img.cwd, &p.img.tty, &cg, &pidNS, &netNS, &mntNS, &startTime, &exitTime,
		&code, &sig, &core, &seeded, &execed)
	if err != nil {
		return "", p, err
	}
	p.key = capture.ProcKey{PID: uint32(pid), Start: uint64(start)}
	if ppid.Valid {
		p.parent = capture.ProcKey{PID: uint32(ppid.Int64), Start: uint64(pstart.Int64)}
	}
	p.img.uid, p.img.gid, p.img.euid, p.img.egid = uint32(uid), uint32(gid), uint32(euid), uint32(egid)
	p.img.argv, p.img.argvTruncated = argv.String, trunc != 0
	p.img.cgroupID, p.img.pidNS, p.img.netNS, p.img.mntNS = uint64(cg), uint32(pidNS), uint32(netNS), uint32(mntNS)
	p.startTime, p.exitTime = startTime.Int64, exitTime.Int64
	if code.Valid {
		p.exit = &capture.Exit{Code: int32(code.Int64), Signal: int32(sig.Int64), Core: core.Int64 != 0}
	}
	p.seeded, p.execed = seeded != 0, execed != 0
	p.stored = true
	return host, p, nil
}

// process converts a row to the capture form, decoding argv.
func (p *procRow) process() (capture.Process, error) {
	argv, err := DecodeArgv(p.img.argv)
	if err != nil {
		return capture.Process{}, fmt.Errorf("process %s: %w", p.key, err)
	}
	out := capture.Process{
		Key: p.key, Parent: p.parent, Comm: p.comm,
		Exec: capture.Exec{UID: p.img.uid, GID: p.img.gid, EUID: p.img.euid, EGID: p.img.egid, Exe: p.img.exe,
			Argv: argv, ArgvTruncated: p.img.argvTruncated, Cwd: p.img.cwd, TTY: p.img.tty,
			CgroupID: p.img.cgroupID, PidNS: p.img.pidNS, NetNS: p.img.netNS, MntNS: p.img.mntNS},
		StartTime: p.startTime, ExitTime: p.exitTime, Seeded: p.seeded, Execed: p.execed,
	}
	if p.exit != nil {
		x := *p.exit
		out.Exit = &x
	}
	return out, nil
}

// procTx applies one batch's fork, exec and exit events to the process
// table: entries are read once, changed in memory in event order, and
// written once at the end (a fork, exec and exit of one process in one
// batch is one row write).
type procTx struct {
	ctx   context.Context
	host  string
	get   *sql.Stmt
	live  *sql.Stmt
	now   int64
	ents  map[capture.ProcKey]*procRow // a nil value: known not to be in the table
	dirty []*procRow                   // first-change order, so writes are deterministic
}

// lookup returns the entry for k, or nil when the table has none.
func (t *procTx) lookup(k capture.ProcKey) (*procRow, error) {
	if p, ok := t.ents[k]; ok {
		return p, nil
	}
	_, p, err := scanProc(t.get.QueryRowContext(t.ctx, t.host, int64(k.PID), int64(k.Start)))
	if errors.Is(err, sql.ErrNoRows) {
		t.ents[k] = nil
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read process %s: %w", k, err)
	}
	t.ents[k] = &p
	return &p, nil
}

// preload reads, in groups of bulkRows, every process the batch's fork,
// exec and exit events name (the process and a parent known by its start),
// and records which are absent: one query per group instead of one per
// process.
func (t *procTx) preload(load *sql.Stmt, events []capture.Event) error {
	var keys []capture.ProcKey
	want := func(k capture.ProcKey) {
		if k.IsZero() || k.Start == 0 {
			return
		}
		if _, ok := t.ents[k]; !ok {
			t.ents[k] = nil // absent unless the load finds it
			keys = append(keys, k)
		}
	}
	for i := range events {
		switch events[i].Kind {
		case capture.KindFork:
			want(events[i].Proc)
			want(events[i].Parent) // a fork copies its parent's image
		case capture.KindExec, capture.KindExit:
			want(events[i].Proc) // the parent is only named, not read
		}
	}
	args := make([]any, 0, 1+2*bulkRows)
	for len(keys) > 0 {
		n := min(len(keys), bulkRows)
		args = append(args[:0], t.host)
		for i := range bulkRows {
			k := keys[min(i, n-1)] // a short group repeats its last key
			args = append(args, int64(k.PID), int64(k.Start))
		}
		keys = keys[n:]
		rows, err := load.QueryContext(t.ctx, args...)
		if err != nil {
			return fmt.Errorf("read processes: %w", err)
		}
		for rows.Next() {
			_, p, err := scanProc(rows)
			if err != nil {
				rows.Close()
				return fmt.Errorf("read processes: %w", err)
			}
			t.ents[p.key] = &p
		}
		if err := rows.Close(); err != nil {
			return fmt.Errorf("read processes: %w", err)
		}
	}
	return nil
}

func (t *procTx) create(p procRow) *procRow {
	np := &p
	t.ents[p.key] = np
	t.touch(np)
	return np
}

func (t *procTx) touch(p *procRow) {
	if !p.dirty {
		p.dirty = true
		t.dirty = append(t.dirty, p)
	}
}

// resolveParent turns a parent known only by pid (Start 0, which the /proc
// fallback sends when the parent was gone before it could read its start)
// into the live incarnation of that pid, if there is one. The agent's table
// keeps Start 0 and resolves on every read; the center resolves once, so
// that lineage queries are plain key joins.
func (t *procTx) resolveParent(k capture.ProcKey) (capture.ProcKey, error) {
	if k.Start != 0 || k.PID == 0 {
		return k, nil
	}
	best := capture.ProcKey{}
	alive := func(c capture.ProcKey) bool {
		p, ok := t.ents[c]
		return !ok || (p != nil && p.exitTime == 0) // not yet read means alive in the table
	}
	rows, err := t.live.QueryContext(t.ctx, t.host, int64(k.PID))
	if err != nil {
		return k, fmt.Errorf("live pid %d: %w", k.PID, err)
	}
	for rows.Next() {
		var start int64
		if err := rows.Scan(&start); err != nil {
			rows.Close()
			return k, fmt.Errorf("live pid %d: %w", k.PID, err)
		}
		if c := (capture.ProcKey{PID: k.PID, Start: uint64(start)}); alive(c) && c.Start > best.Start {
			best = c
		}
	}
	if err := rows.Close(); err != nil {
		return k, fmt.Errorf("live pid %d: %w", k.PID, err)
	}
	for c, p := range t.ents {
		if c.PID == k.PID && p != nil && p.exitTime == 0 && c.Start > best.Start {
			best = c
		}
	}
	if best.IsZero() {
		return k, nil
	}
	return best, nil
}

// apply changes the table for one event, with the agent's rules (store/
// process.go): events from different CPUs arrive out of order (an exec
// before its fork, an exit before its exec), so each rule keeps what an
// earlier-applied, later-happened event established. Beyond the agent's
// rules it fills gaps a late fork can close (start time, the parent's
// image for a process never seen to exec) and marks exec events from the
// agent's /proc seed as seeded.
//
// img is the image of an exec event when the caller has it already (nil:
// made here).
func (t *procTx) apply(ev *capture.Event, img *image) error {
	parent, err := t.resolveParent(ev.Parent)
	if err != nil {
		return err
	}
	p, err := t.lookup(ev.Proc)
	if err != nil {
		return err
	}
	switch ev.Kind {
	case capture.KindFork:
		var par *procRow
		if !parent.IsZero() {
			if par, err = t.lookup(parent); err != nil {
				return err
			}
		}
		if p != nil {
			// Exec or exit applied first, or a duplicate: only fill gaps.
			if p.parent.IsZero() && !parent.IsZero() {
				p.parent = parent
				t.touch(p)
			}
			// The fork is the creation: an event applied before it
			// happened after it, so the earlier time wins.
			if ev.Time != 0 && (p.startTime == 0 || ev.Time < p.startTime) {
				p.startTime = ev.Time
				t.touch(p)
			}
			if !p.execed && p.img.exe == "" && par != nil {
				p.img = par.img
				t.touch(p)
			}
			return nil
		}
		n := procRow{key: ev.Proc, parent: parent, comm: ev.Comm, startTime: ev.Time}
		if par != nil {
			// A forked child runs its parent's image until it execs.
			n.img = par.img
			if n.comm == "" {
				n.comm = par.comm
			}
		}
		t.create(n)
	case capture.KindExec:
		if p == nil {
			// The fork was never seen (it predates the agent or was lost).
			p = t.create(procRow{key: ev.Proc, startTime: ev.Time})
		}
		if ev.Exec != nil {
			if img == nil {
				i, err := imageOf(ev.Exec)
				if err != nil {
					return err
				}
				img = &i
			}
			p.img = *img
		}
		if ev.Comm != "" {
			p.comm = ev.Comm
		}
		p.execed = true
		if ev.Source == "seed" {
			p.seeded = true
		}
		if p.parent.IsZero() {
			p.parent = parent
		}
		if p.startTime == 0 {
			p.startTime = ev.Time
		}
		t.touch(p)
	case capture.KindExit:
		if p == nil {
			p = t.create(procRow{key: ev.Proc, parent: parent, comm: ev.Comm})
		}
		if p.exitTime != 0 {
			if p.exit == nil && ev.Exit != nil {
				x := *ev.Exit
				p.exit = &x
				t.touch(p)
			}
			return nil
		}
		p.exitTime = ev.Time
		if p.exitTime == 0 { // a malformed event; an exit must not look alive
			p.exitTime = t.now
		}
		if ev.Exit != nil {
			x := *ev.Exit
			p.exit = &x
		}
		t.touch(p)
	}
	return nil
}
