package center

// Watch rules through the API: Mark & Watch from a process makes a rule at
// the center that matches later execs of the same image (match "exe") or
// of the same command line (match "cmdline": the same image and exactly
// the same arguments). The rule is stored with who made it and why, each
// create and delete is a ledger entry, and the center runs the rules
// (watch.go) like its rule packs: a match is an alert, and with "trace" a
// request for a focused trace under center.rules.trace_policy.
//
// The analyst need not see a masked command line to watch it: the center
// takes the image and arguments of the process named by (host, pid,
// start) from its store. Lists show the command line masked.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"strconv"
	"time"

	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// WatchRole may create and delete watch rules.
const WatchRole = RoleAnalyst

// Audit kinds of watch rules.
const (
	AuditWatchAdd    = "api.watch_add"
	AuditWatchDelete = "api.watch_delete"
)

// maxWatches bounds the watch rules (each is a statement per rule pass).
const maxWatches = 500

// Watch is a stored watch rule.
type Watch struct {
	ID        int64
	Match     string // exe or cmdline
	Exe       string
	Argv      []string // cmdline only
	Trace     bool
	Severity  rules.Severity
	SinceID   int64
	Created   time.Time
	CreatedBy string
	Reason    string
	Host      string
	PID       uint32
	Start     uint64
}

// RuleID is the id of the watch's rule and of its alerts.
func (w Watch) RuleID() string { return "watch-" + strconv.FormatInt(w.ID, 10) }

type watchJSON struct {
	ID        int64      `json:"id"`
	RuleID    string     `json:"rule_id"`
	Match     string     `json:"match"`
	Exe       string     `json:"exe"`
	Cmdline   string     `json:"cmdline,omitempty"` // masked
	Trace     bool       `json:"trace"`
	Severity  string     `json:"severity"`
	Created   time.Time  `json:"created"`
	CreatedBy string     `json:"created_by"`
	Reason    string     `json:"reason"`
	Origin    procRef    `json:"origin"`
	Alerts    int64      `json:"alerts"`
	LastAlert *time.Time `json:"last_alert"`
}

type procRef struct {
	Host  string `json:"host"`
	PID   uint32 `json:"pid"`
	Start uint64 `json:"start"`
}

const watchCols = `id, match, exe, argv, trace, severity, since_id, created, created_by, reason, origin_host, origin_pid, origin_start`

func scanWatch(sc interface{ Scan(...any) error }) (Watch, error) {
	var (
		w          Watch
		argv       sql.NullString
		trace      int64
		sev        string
		created    int64
		pid, start int64
	)
	if err := sc.Scan(&w.ID, &w.Match, &w.Exe, &argv, &trace, &sev, &w.SinceID, &created, &w.CreatedBy, &w.Reason,
		&w.Host, &pid, &start); err != nil {
		return Watch{}, err
	}
	if argv.Valid {
		if err := json.Unmarshal([]byte(argv.String), &w.Argv); err != nil {
			return Watch{}, err
		}
	}
	w.Trace, w.Severity, w.Created = trace != 0, rules.Severity(sev), time.Unix(0, created).UTC()
	w.PID, w.Start = uint32(pid), uint64(start)
	return w, nil
}

// ListWatches returns the stored watch rules in id order.
func (o *Operators) ListWatches(ctx context.Context) ([]Watch, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT `+watchCols+` FROM acct.watches ORDER BY id`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Watch
	for rows.Next() {
		w, err := scanWatch(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, w)
	}
	return out, rows.Err()
}

func (a *API) watches(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	list, err := a.ops.ListWatches(r.Context())
	if err != nil {
		return err
	}
	out := make([]watchJSON, 0, len(list))
	for _, wt := range list {
		j := watchView(wt)
		var last sql.NullInt64
		if err := a.sql.ReadOnly().QueryRowContext(r.Context(), `SELECT count(*), max(last_time) FROM alerts WHERE rule_id = ?`,
			wt.RuleID()).Scan(&j.Alerts, &last); err != nil {
			return err
		}
		j.LastAlert = nsTime(last)
		out = append(out, j)
	}
	a.reply(w, http.StatusOK, map[string]any{"watches": out})
	return nil
}

type watchReq struct {
	Host     string `json:"host"`
	PID      uint32 `json:"pid"`
	Start    uint64 `json:"start"`
	Match    string `json:"match"`    // exe (default) or cmdline
	Trace    bool   `json:"trace"`    // a match requests a focused trace
	Severity string `json:"severity"` // default medium
	Reason   string `json:"reason"`
}

func (a *API) addWatch(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req watchReq
	if err := decode(r, &req); err != nil {
		return err
	}
	reason, err := checkReason("a watch rule", req.Reason)
	if err != nil {
		return err
	}
	if req.Match == "" {
		req.Match = "exe"
	}
	if req.Match != "exe" && req.Match != "cmdline" {
		return errorf(http.StatusBadRequest, "match %q: want exe or cmdline", req.Match)
	}
	sev := rules.SeverityMedium
	if req.Severity != "" {
		sev = rules.Severity(req.Severity)
		switch sev {
		case rules.SeverityInfo, rules.SeverityLow, rules.SeverityMedium, rules.SeverityHigh, rules.SeverityCritical:
		default:
			return errorf(http.StatusBadRequest, "severity %q: want info, low, medium, high or critical", req.Severity)
		}
	}
	proc, err := a.loadProcess(r.Context(), req.Host, req.PID, req.Start)
	if err != nil {
		return err
	}
	if proc.Exec.Exe == "" {
		return errorf(http.StatusConflict, "process %d@%d on %s has no recorded image to watch", req.PID, req.Start, req.Host)
	}
	var argv any
	if req.Match == "cmdline" {
		if len(proc.Exec.Argv) == 0 {
			return errorf(http.StatusConflict, "process %d@%d on %s has no recorded command line to watch", req.PID, req.Start, req.Host)
		}
		enc, err := sqlstore.EncodeArgv(proc.Exec.Argv)
		if err != nil {
			return err
		}
		argv = enc
	}
	var id int64
	err = a.change(r.Context(), AuditWatchAdd, p, func(tx *sql.Tx) (map[string]any, error) {
		var n int64
		if err := tx.QueryRowContext(r.Context(), `SELECT count(*) FROM acct.watches`).Scan(&n); err != nil {
			return nil, err
		}
		if n >= maxWatches {
			return nil, errorf(http.StatusConflict, "%d watch rules exist, the most allowed: delete some first", n)
		}
		var dup int64
		if err := tx.QueryRowContext(r.Context(), `SELECT id FROM acct.watches WHERE match = ? AND exe = ? AND argv IS ?`,
			req.Match, proc.Exec.Exe, argv).Scan(&dup); err == nil {
			return nil, errorf(http.StatusConflict, "watch rule %d already watches this %s", dup, req.Match)
		} else if !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		// Only execs after now match: the rule's cursors start at the
		// newest rows (the rules engine would otherwise work through the
		// whole store), and its SQL says id > since_id as well.
		var since [3]int64
		if err := tx.QueryRowContext(r.Context(), `SELECT coalesce((SELECT max(id) FROM main.process_events), 0),
			coalesce((SELECT max(id) FROM main.network_events), 0), coalesce((SELECT max(id) FROM main.file_events), 0)`).Scan(
			&since[0], &since[1], &since[2]); err != nil {
			return nil, err
		}
		res, err := tx.ExecContext(r.Context(), `INSERT INTO acct.watches (match, exe, argv, trace, severity, since_id, created, created_by, reason,
			origin_host, origin_pid, origin_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
			req.Match, proc.Exec.Exe, argv, b2i(req.Trace), string(sev), since[0], a.now().UnixNano(), p.ID, reason,
			req.Host, int64(req.PID), int64(req.Start))
		if err != nil {
			return nil, err
		}
		if id, err = res.LastInsertId(); err != nil {
			return nil, err
		}
		rule := Watch{ID: id}.RuleID()
		if _, err := tx.ExecContext(r.Context(), `INSERT INTO main.rule_runs (rule_id, pack) VALUES (?, ?) ON CONFLICT (rule_id) DO NOTHING`,
			rule, watchPack); err != nil {
			return nil, err
		}
		for i, tbl := range []string{"process_events", "network_events", "file_events"} {
			if _, err := tx.ExecContext(r.Context(), `INSERT INTO main.rule_cursors (rule_id, tbl, last_id) VALUES (?, ?, ?)
				ON CONFLICT (rule_id, tbl) DO UPDATE SET last_id = excluded.last_id`, rule, tbl, since[i]); err != nil {
				return nil, err
			}
		}
		return map[string]any{"watch_id": id, "rule_id": rule, "match": req.Match, "exe": proc.Exec.Exe, "trace": req.Trace,
			"severity": string(sev), "host": req.Host, "pid": req.PID, "start": req.Start, "reason": reason}, nil
	})
	if err != nil {
		return err
	}
	a.center.WatchesChanged()
	a.log.Info("watch rule added", "watch", id, "operator", p.ID, "match", req.Match, "exe", proc.Exec.Exe)
	list, err := a.ops.ListWatches(r.Context())
	if err != nil {
		return err
	}
	if i := slices.IndexFunc(list, func(wt Watch) bool { return wt.ID == id }); i >= 0 {
		a.reply(w, http.StatusCreated, map[string]any{"watch": watchView(list[i])})
		return nil
	}
	return errorf(http.StatusInternalServerError, "watch rule %d vanished", id)
}

// watchView is a watch rule as the API shows it: its command line masked.
func watchView(wt Watch) watchJSON {
	j := watchJSON{ID: wt.ID, RuleID: wt.RuleID(), Match: wt.Match, Exe: wt.Exe, Trace: wt.Trace, Severity: string(wt.Severity),
		Created: wt.Created, CreatedBy: wt.CreatedBy, Reason: wt.Reason, Origin: procRef{wt.Host, wt.PID, wt.Start}}
	if wt.Match == "cmdline" {
		j.Cmdline = privacy.Argv(wt.Argv, false)
	}
	return j
}

func (a *API) deleteWatch(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req stopReq
	if err := decode(r, &req); err != nil {
		return err
	}
	reason, err := checkReason("deleting a watch rule", req.Reason)
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return errorf(http.StatusBadRequest, "watch id %q: want a positive integer", r.PathValue("id"))
	}
	err = a.change(r.Context(), AuditWatchDelete, p, func(tx *sql.Tx) (map[string]any, error) {
		wt, err := scanWatch(tx.QueryRowContext(r.Context(), `SELECT `+watchCols+` FROM acct.watches WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return nil, errorf(http.StatusNotFound, "no watch rule %d", id)
		}
		if err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(r.Context(), `DELETE FROM acct.watches WHERE id = ?`, id); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(r.Context(), `DELETE FROM main.rule_cursors WHERE rule_id = ?`, wt.RuleID()); err != nil {
			return nil, err
		}
		return map[string]any{"watch_id": id, "rule_id": wt.RuleID(), "match": wt.Match, "exe": wt.Exe, "created_by": wt.CreatedBy,
			"reason": reason}, nil
	})
	if err != nil {
		return err
	}
	a.center.WatchesChanged()
	a.reply(w, http.StatusOK, map[string]any{"deleted": id})
	return nil
}

func b2i(b bool) int64 {
	if b {
		return 1
	}
	return 0
}
