package center

import (
	"context"
	"database/sql"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// Paging bounds for list endpoints.
const (
	defaultPage    = 100
	maxPage        = 1000
	defaultEvents  = 500
	maxEvents      = 5000
	maxLineageRows = sqlstore.MaxDescendantRows
)

// query parameters, strictly: a name the endpoint does not know is a 400,
// so that a typo in a filter does not silently return everything.
type params struct {
	v url.Values
}

func queryParams(r *http.Request, allowed ...string) (params, error) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return params{}, errorf(http.StatusBadRequest, "bad query string: %v", err)
	}
	for k, vals := range v {
		if !slices.Contains(allowed, k) {
			return params{}, errorf(http.StatusBadRequest, "unknown query parameter %q (allowed: %s)", k, strings.Join(allowed, ", "))
		}
		if len(vals) > 1 {
			return params{}, errorf(http.StatusBadRequest, "query parameter %q given %d times", k, len(vals))
		}
	}
	return params{v}, nil
}

func (p params) str(k string) string { return p.v.Get(k) }

func (p params) int(k string, def, lo, hi int64) (int64, error) {
	s := p.v.Get(k)
	if s == "" {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, errorf(http.StatusBadRequest, "query parameter %s=%q: want an integer from %d to %d", k, s, lo, hi)
	}
	return n, nil
}

// time parses RFC 3339 or Unix nanoseconds; 0 when absent.
func (p params) time(k string) (int64, error) {
	s := p.v.Get(k)
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		return n, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, errorf(http.StatusBadRequest, "query parameter %s=%q: want RFC 3339 time or Unix nanoseconds", k, s)
	}
	return t.UnixNano(), nil
}

func oneOf(k, v string, allowed ...string) error {
	if v != "" && !slices.Contains(allowed, v) {
		return errorf(http.StatusBadRequest, "%s=%q: want one of %s", k, v, strings.Join(allowed, ", "))
	}
	return nil
}

// nsTime is a Unix-nanosecond column as a JSON time, null when NULL.
func nsTime(n sql.NullInt64) *time.Time {
	if !n.Valid {
		return nil
	}
	t := time.Unix(0, n.Int64).UTC()
	return &t
}

func (a *API) whoami(w http.ResponseWriter, r *http.Request, p *principal) error {
	op, _, err := a.ops.Get(r.Context(), p.ID)
	if err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"id": op.ID, "name": op.Name, "role": op.Role, "auth": p.Auth})
	return nil
}

type hostJSON struct {
	AgentID    string            `json:"agent_id"`
	Kind       string            `json:"kind"`
	Version    string            `json:"version"`
	Addresses  []string          `json:"addresses"`
	SiteTag    string            `json:"site_tag"`
	ProxyPath  []string          `json:"proxy_path"`
	FirstSeen  time.Time         `json:"first_seen"`
	LastSeen   time.Time         `json:"last_seen"`
	LastEvent  *time.Time        `json:"last_event"`
	Health     json.RawMessage   `json:"health"`
	HealthTime *time.Time        `json:"health_time"`
	LostEvents map[string]uint64 `json:"lost_events"`
}

func optTime(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = t.UTC()
	return &t
}

func (a *API) hosts(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	hs, err := a.sql.Hosts(r.Context())
	if err != nil {
		return err
	}
	out := make([]hostJSON, 0, len(hs))
	for _, h := range hs {
		addrs := make([]string, 0, len(h.Addresses))
		for _, ad := range h.Addresses {
			addrs = append(addrs, ad.String())
		}
		health := h.Health
		if len(health) == 0 {
			health = json.RawMessage("{}")
		}
		out = append(out, hostJSON{AgentID: h.AgentID, Kind: h.Kind, Version: h.Version, Addresses: addrs, SiteTag: h.SiteTag,
			ProxyPath: append([]string{}, h.ProxyPath...), FirstSeen: h.FirstSeen.UTC(), LastSeen: h.LastSeen.UTC(),
			LastEvent: optTime(h.LastEvent), Health: health, HealthTime: optTime(h.HealthTime), LostEvents: h.LostEvents})
	}
	a.reply(w, http.StatusOK, map[string]any{"hosts": out})
	return nil
}

type alertJSON struct {
	ID        int64           `json:"id"`
	RuleID    string          `json:"rule_id"`
	Severity  string          `json:"severity"`
	Technique string          `json:"technique"`
	Host      string          `json:"host"`
	PID       uint32          `json:"pid"`
	Start     uint64          `json:"start"`
	Time      *time.Time      `json:"time"`
	LastTime  *time.Time      `json:"last_time"`
	Count     int64           `json:"count"`
	Context   json.RawMessage `json:"context"`
	State     string          `json:"state"`
	TraceID   *string         `json:"trace_id"`
}

const alertCols = `id, rule_id, severity, technique, host, pid, start, time, last_time, count, context, state, trace_id`

func scanAlert(sc interface{ Scan(...any) error }) (alertJSON, error) {
	var (
		al       alertJSON
		pid      int64
		start    int64
		t, lt    sql.NullInt64
		ctxJSON  string
		traceID  sql.NullString
		severity string
	)
	if err := sc.Scan(&al.ID, &al.RuleID, &severity, &al.Technique, &al.Host, &pid, &start, &t, &lt, &al.Count, &ctxJSON, &al.State, &traceID); err != nil {
		return al, err
	}
	al.Severity, al.PID, al.Start = severity, uint32(pid), uint64(start)
	al.Time, al.LastTime = nsTime(t), nsTime(lt)
	al.Context = privacy.Context(ctxJSON)
	if traceID.Valid {
		al.TraceID = &traceID.String
	}
	return al, nil
}

func (a *API) alerts(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q, err := queryParams(r, "state", "severity", "host", "rule", "since", "until", "limit", "before")
	if err != nil {
		return err
	}
	if err := oneOf("state", q.str("state"), "open", "acknowledged", "closed", "suppressed"); err != nil {
		return err
	}
	if err := oneOf("severity", q.str("severity"), "info", "low", "medium", "high", "critical"); err != nil {
		return err
	}
	limit, err := q.int("limit", defaultPage, 1, maxPage)
	if err != nil {
		return err
	}
	before, err := q.int("before", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	since, err := q.time("since")
	if err != nil {
		return err
	}
	until, err := q.time("until")
	if err != nil {
		return err
	}
	where, args := []string{"1 = 1"}, []any{}
	for _, f := range []struct{ col, val string }{{"state", q.str("state")}, {"severity", q.str("severity")}, {"host", q.str("host")}, {"rule_id", q.str("rule")}} {
		if f.val != "" {
			where, args = append(where, f.col+" = ?"), append(args, f.val)
		}
	}
	if since != 0 {
		where, args = append(where, "time >= ?"), append(args, since)
	}
	if until != 0 {
		where, args = append(where, "time < ?"), append(args, until)
	}
	if before != 0 {
		where, args = append(where, "id < ?"), append(args, before)
	}
	rows, err := a.sql.ReadOnly().QueryContext(r.Context(), `SELECT `+alertCols+` FROM alerts WHERE `+strings.Join(where, " AND ")+
		` ORDER BY id DESC LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []alertJSON{}
	for rows.Next() {
		al, err := scanAlert(rows)
		if err != nil {
			return err
		}
		out = append(out, al)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	resp := map[string]any{"alerts": out, "next_before": nil}
	if int64(len(out)) > limit {
		out = out[:limit]
		resp["alerts"], resp["next_before"] = out, out[len(out)-1].ID
	}
	a.reply(w, http.StatusOK, resp)
	return nil
}

func (a *API) alert(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return errorf(http.StatusBadRequest, "alert id %q: want an integer", r.PathValue("id"))
	}
	al, err := scanAlert(a.sql.ReadOnly().QueryRowContext(r.Context(), `SELECT `+alertCols+` FROM alerts WHERE id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return errorf(http.StatusNotFound, "no alert %d", id)
	}
	if err != nil {
		return err
	}
	resp := map[string]any{"alert": al, "process": nil}
	proc, ok, err := a.sql.Process(r.Context(), al.Host, al.PID, al.Start)
	if err != nil {
		return err
	}
	if ok {
		resp["process"] = procView(proc, false)
	}
	a.reply(w, http.StatusOK, resp)
	return nil
}

// procJSON is a process as the API shows it: the arguments after argv[0]
// masked unless revealed.
type procJSON struct {
	Host          string     `json:"host"`
	PID           uint32     `json:"pid"`
	Start         uint64     `json:"start"`
	PPID          *uint32    `json:"ppid"`
	PStart        *uint64    `json:"pstart"`
	Comm          string     `json:"comm"`
	Exe           string     `json:"exe"`
	Cmdline       string     `json:"cmdline"` // privacy.Argv: masked unless revealed, terminal-safe
	Argc          int        `json:"argc"`
	Masked        bool       `json:"masked"`
	ArgvTruncated bool       `json:"argv_truncated"`
	Cwd           string     `json:"cwd"`
	TTY           string     `json:"tty"`
	UID           uint32     `json:"uid"`
	GID           uint32     `json:"gid"`
	EUID          uint32     `json:"euid"`
	EGID          uint32     `json:"egid"`
	CgroupID      uint64     `json:"cgroup_id"`
	PidNS         uint32     `json:"pid_ns"`
	NetNS         uint32     `json:"net_ns"`
	MntNS         uint32     `json:"mnt_ns"`
	StartTime     *time.Time `json:"start_time"`
	ExitTime      *time.Time `json:"exit_time"`
	ExitCode      *int32     `json:"exit_code"`
	ExitSignal    *int32     `json:"exit_signal"`
	Seeded        bool       `json:"seeded"`
	Execed        bool       `json:"execed"`
	Depth         int        `json:"depth,omitempty"`
}

func nsPtr(n int64) *time.Time {
	if n == 0 {
		return nil
	}
	t := time.Unix(0, n).UTC()
	return &t
}

func procView(p sqlstore.Process, reveal bool) procJSON {
	x := p.Exec
	out := procJSON{Host: p.Host, PID: p.Key.PID, Start: p.Key.Start, Comm: p.Comm, Exe: x.Exe,
		Cmdline: privacy.Argv(x.Argv, reveal), Argc: len(x.Argv), Masked: !reveal && privacy.Default().Masks(x.Argv),
		ArgvTruncated: x.ArgvTruncated, Cwd: x.Cwd, TTY: x.TTY, UID: x.UID, GID: x.GID, EUID: x.EUID, EGID: x.EGID,
		CgroupID: x.CgroupID, PidNS: x.PidNS, NetNS: x.NetNS, MntNS: x.MntNS,
		StartTime: nsPtr(p.StartTime), ExitTime: nsPtr(p.ExitTime), Seeded: p.Seeded, Execed: p.Execed, Depth: p.Depth}
	if !p.Parent.IsZero() {
		pp, ps := p.Parent.PID, p.Parent.Start
		out.PPID, out.PStart = &pp, &ps
	}
	if p.Exit != nil {
		c, s := p.Exit.Code, p.Exit.Signal
		out.ExitCode, out.ExitSignal = &c, &s
	}
	return out
}

// procKey reads {host}/{pid}/{start} from the path.
func procKey(r *http.Request) (string, uint32, uint64, error) {
	host := r.PathValue("host")
	pid, err1 := strconv.ParseUint(r.PathValue("pid"), 10, 32)
	start, err2 := strconv.ParseUint(r.PathValue("start"), 10, 64)
	if host == "" || err1 != nil || err2 != nil {
		return "", 0, 0, errorf(http.StatusBadRequest, "want /processes/HOST/PID/START with PID and START unsigned integers")
	}
	return host, uint32(pid), start, nil
}

func (a *API) loadProcess(ctx context.Context, host string, pid uint32, start uint64) (sqlstore.Process, error) {
	p, ok, err := a.sql.Process(ctx, host, pid, start)
	if err != nil {
		return p, err
	}
	if !ok {
		return p, errorf(http.StatusNotFound, "no process %d@%d on host %s", pid, start, host)
	}
	return p, nil
}

func (a *API) process(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	host, pid, start, err := procKey(r)
	if err != nil {
		return err
	}
	p, err := a.loadProcess(r.Context(), host, pid, start)
	if err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"process": procView(p, false)})
	return nil
}

func (a *API) lineage(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q, err := queryParams(r, "depth")
	if err != nil {
		return err
	}
	depth, err := q.int("depth", sqlstore.DefaultDepth, 1, sqlstore.MaxDepth)
	if err != nil {
		return err
	}
	host, pid, start, err := procKey(r)
	if err != nil {
		return err
	}
	p, err := a.loadProcess(r.Context(), host, pid, start)
	if err != nil {
		return err
	}
	anc, err := a.sql.Ancestors(r.Context(), host, pid, start)
	if err != nil {
		return err
	}
	desc, err := a.sql.Descendants(r.Context(), host, pid, start, int(depth))
	if err != nil {
		return err
	}
	view := func(ps []sqlstore.Process) []procJSON {
		out := make([]procJSON, 0, len(ps))
		for _, x := range ps {
			out = append(out, procView(x, false))
		}
		return out
	}
	a.reply(w, http.StatusOK, map[string]any{"process": procView(p, false), "ancestors": view(anc),
		"descendants": view(desc), "descendants_truncated": len(desc) >= maxLineageRows})
	return nil
}

type traceJSON struct {
	TraceID     string          `json:"trace_id"`
	Host        string          `json:"host"`
	PID         uint32          `json:"pid"`
	Start       uint64          `json:"start"`
	Depth       int             `json:"depth"`
	Flags       TraceFlags      `json:"flags"`
	Collect     collectJSON     `json:"collect"`
	Caps        json.RawMessage `json:"caps"`
	State       string          `json:"state"`
	Created     *time.Time      `json:"created"`
	Started     *time.Time      `json:"started"`
	Stopped     *time.Time      `json:"stopped"`
	InitiatedBy string          `json:"initiated_by"`
	Reason      string          `json:"reason"`
	StopReason  *string         `json:"stop_reason"`
	AlertID     *int64          `json:"alert_id"`
}

type collectJSON struct {
	Cmdlines bool `json:"cmdlines"`
	Network  bool `json:"network"`
	Files    bool `json:"files"`
	Memory   bool `json:"memory"`
}

func (f TraceFlags) collect() collectJSON {
	return collectJSON{Cmdlines: f&TraceCmdlines != 0, Network: f&TraceNetwork != 0, Files: f&TraceFiles != 0, Memory: f&TraceMemory != 0}
}

const traceCols = `trace_id, host, pid, start, depth, flags, caps, state, created, started, stopped, initiated_by, reason, stop_reason, alert_id`

func scanTrace(sc interface{ Scan(...any) error }) (traceJSON, error) {
	var (
		t                        traceJSON
		pid, start, flags        int64
		caps                     string
		created, started, stoppd sql.NullInt64
		stopReason               sql.NullString
		alertID                  sql.NullInt64
	)
	if err := sc.Scan(&t.TraceID, &t.Host, &pid, &start, &t.Depth, &flags, &caps, &t.State, &created, &started, &stoppd,
		&t.InitiatedBy, &t.Reason, &stopReason, &alertID); err != nil {
		return t, err
	}
	t.PID, t.Start, t.Flags = uint32(pid), uint64(start), TraceFlags(flags)
	t.Collect, t.Caps = t.Flags.collect(), json.RawMessage(caps)
	t.Created, t.Started, t.Stopped = nsTime(created), nsTime(started), nsTime(stoppd)
	if stopReason.Valid {
		t.StopReason = &stopReason.String
	}
	if alertID.Valid {
		t.AlertID = &alertID.Int64
	}
	return t, nil
}

func (a *API) traces(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q, err := queryParams(r, "state", "host", "limit", "before")
	if err != nil {
		return err
	}
	if err := oneOf("state", q.str("state"), "pending", "approved", "active", "stopped", "expired", "refused", "failed"); err != nil {
		return err
	}
	limit, err := q.int("limit", defaultPage, 1, maxPage)
	if err != nil {
		return err
	}
	where, args := []string{"1 = 1"}, []any{}
	if s := q.str("state"); s != "" {
		where, args = append(where, "state = ?"), append(args, s)
	}
	if h := q.str("host"); h != "" {
		where, args = append(where, "trace_id IN (SELECT trace_id FROM trace_targets WHERE host = ?)"), append(args, h)
	}
	if b := q.str("before"); b != "" {
		where, args = append(where, "(created, trace_id) < (SELECT created, trace_id FROM traces WHERE trace_id = ?)"), append(args, b)
	}
	rows, err := a.sql.ReadOnly().QueryContext(r.Context(), `SELECT `+traceCols+` FROM traces WHERE `+strings.Join(where, " AND ")+
		` ORDER BY created DESC, trace_id DESC LIMIT ?`, append(args, limit+1)...)
	if err != nil {
		return err
	}
	defer rows.Close()
	out := []traceJSON{}
	for rows.Next() {
		t, err := scanTrace(rows)
		if err != nil {
			return err
		}
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		return err
	}
	resp := map[string]any{"traces": out, "next_before": nil}
	if int64(len(out)) > limit {
		out = out[:limit]
		resp["traces"], resp["next_before"] = out, out[len(out)-1].TraceID
	}
	a.reply(w, http.StatusOK, resp)
	return nil
}

// traceEvent is one event of a trace, from whichever table holds its kind.
type traceEvent struct {
	Seq    int64          `json:"seq"`
	Host   string         `json:"host"`
	Time   *time.Time     `json:"time"`
	Table  string         `json:"table"`
	Kind   string         `json:"kind"`
	PID    uint32         `json:"pid"`
	Start  uint64         `json:"start"`
	Comm   string         `json:"comm"`
	Detail map[string]any `json:"detail"`
}

// traceEventQueries read each event table of a trace after a (seq, host)
// cursor. Only columns worth showing; argv is masked below.
var traceEventQueries = []struct {
	table, sql string
}{
	{"process_events", `SELECT trace_seq, host, time, kind, pid, start, comm,
		json_object('ppid', ppid, 'pstart', pstart, 'exe', exe, 'argv', argv, 'argv_truncated', argv_truncated,
			'cwd', cwd, 'tty', tty, 'uid', uid, 'euid', euid, 'exit_code', exit_code, 'exit_signal', exit_signal)
		FROM process_events`},
	{"network_events", `SELECT trace_seq, host, time, kind, pid, start, comm,
		json_object('proto', proto, 'family', family, 'sock_type', sock_type, 'src_ip', src_ip, 'src_port', src_port,
			'dst_ip', dst_ip, 'dst_port', dst_port, 'result', result)
		FROM network_events`},
	{"file_events", `SELECT trace_seq, host, time, kind, pid, start, comm,
		json_object('path', path, 'path2', path2, 'flags', flags, 'mode', mode, 'inode', inode, 'dev', dev, 'result', result)
		FROM file_events`},
	{"exe_hashes", `SELECT trace_seq, host, time, 'exec_hash', pid, start, '',
		json_object('path', path, 'inode', inode, 'size', size, 'blake3', lower(hex(blake3)), 'sha256', lower(hex(sha256)))
		FROM exe_hashes`},
}

func (a *API) traceEvents(ctx context.Context, id string, afterSeq int64, afterHost string, limit int64) ([]traceEvent, error) {
	var out []traceEvent
	for _, q := range traceEventQueries {
		rows, err := a.sql.ReadOnly().QueryContext(ctx, q.sql+` WHERE trace_id = ?1 AND (trace_seq > ?2 OR (trace_seq = ?2 AND host > ?3))
			ORDER BY trace_seq, host LIMIT ?4`, id, afterSeq, afterHost, limit)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q.table, err)
		}
		for rows.Next() {
			var (
				e          traceEvent
				t          sql.NullInt64
				pid, start int64
				detail     string
			)
			if err := rows.Scan(&e.Seq, &e.Host, &t, &e.Kind, &pid, &start, &e.Comm, &detail); err != nil {
				rows.Close()
				return nil, fmt.Errorf("%s: %w", q.table, err)
			}
			e.Time, e.PID, e.Start, e.Table = nsTime(t), uint32(pid), uint64(start), q.table
			if err := json.Unmarshal([]byte(detail), &e.Detail); err != nil {
				rows.Close()
				return nil, fmt.Errorf("%s: %w", q.table, err)
			}
			if raw, ok := e.Detail["argv"].(string); ok {
				argv, err := sqlstore.DecodeArgv(raw)
				if err != nil {
					argv = nil
				}
				delete(e.Detail, "argv")
				e.Detail["cmdline"], e.Detail["argc"], e.Detail["masked"] = privacy.Argv(argv, false), len(argv), privacy.Default().Masks(argv)
			}
			out = append(out, e)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", q.table, err)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Seq != out[j].Seq {
			return out[i].Seq < out[j].Seq
		}
		return out[i].Host < out[j].Host
	})
	if int64(len(out)) > limit {
		out = out[:limit]
	}
	return out, nil
}

func (a *API) trace(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q, err := queryParams(r, "after_seq", "after_host", "limit")
	if err != nil {
		return err
	}
	afterSeq, err := q.int("after_seq", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	limit, err := q.int("limit", defaultEvents, 1, maxEvents)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	ro := a.sql.ReadOnly()
	t, err := scanTrace(ro.QueryRowContext(r.Context(), `SELECT `+traceCols+` FROM traces WHERE trace_id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return errorf(http.StatusNotFound, "no trace %q", id)
	}
	if err != nil {
		return err
	}
	targets := []map[string]any{}
	rows, err := ro.QueryContext(r.Context(), `SELECT host, pid, start, link_id, state, added FROM trace_targets WHERE trace_id = ? ORDER BY added, host`, id)
	if err != nil {
		return err
	}
	for rows.Next() {
		var (
			host, state       string
			pid, start, added int64
			link              sql.NullInt64
		)
		if err := rows.Scan(&host, &pid, &start, &link, &state, &added); err != nil {
			rows.Close()
			return err
		}
		tg := map[string]any{"host": host, "pid": pid, "start": start, "state": state, "added": time.Unix(0, added).UTC(), "link_id": nil}
		if link.Valid {
			tg["link_id"] = link.Int64
		}
		targets = append(targets, tg)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	approvals, err := a.listApprovals(r.Context(), "subject_kind = 'trace' AND subject_id = ?", []any{id}, maxPage)
	if err != nil {
		return err
	}
	events, err := a.traceEvents(r.Context(), id, afterSeq, q.str("after_host"), limit)
	if err != nil {
		return err
	}
	if events == nil {
		events = []traceEvent{} // JSON [], not null: a trace before its first event
	}
	links, err := a.sql.Links(r.Context(), id)
	if err != nil {
		return err
	}
	linkViews := make([]map[string]any, 0, len(links))
	for _, l := range links {
		v := map[string]any{"id": l.ID, "time": l.Time.UTC(), "from_host": l.FromHost, "from_pid": l.From.PID, "from_start": l.From.Start,
			"to_host": l.ToHost, "src": l.Src.String(), "dst": l.Dst.String(), "to_pid": nil, "to_start": nil, "followed": nil}
		if !l.To.IsZero() {
			v["to_pid"], v["to_start"] = l.To.PID, l.To.Start
		}
		if !l.Followed.IsZero() {
			v["followed"] = l.Followed.UTC()
		}
		linkViews = append(linkViews, v)
	}
	resp := map[string]any{"trace": t, "targets": targets, "approvals": approvals, "events": events, "links": linkViews, "next_after": nil}
	if int64(len(events)) == limit {
		last := events[len(events)-1]
		resp["next_after"] = map[string]any{"after_seq": last.Seq, "after_host": last.Host}
	}
	a.reply(w, http.StatusOK, resp)
	return nil
}

type approvalJSON struct {
	ID          int64      `json:"id"`
	SubjectKind string     `json:"subject_kind"`
	SubjectID   string     `json:"subject_id"`
	RequestedBy string     `json:"requested_by"`
	RequestedAt *time.Time `json:"requested_at"`
	Reason      string     `json:"reason"`
	Decision    string     `json:"decision"`
	DecidedBy   *string    `json:"decided_by"`
	DecidedAt   *time.Time `json:"decided_at"`
}

const approvalCols = `id, subject_kind, subject_id, requested_by, requested_at, reason, decision, decided_by, decided_at`

func scanApproval(sc interface{ Scan(...any) error }) (approvalJSON, error) {
	var (
		ap          approvalJSON
		req, dec    sql.NullInt64
		decidedBy   sql.NullString
		subjectKind string
	)
	if err := sc.Scan(&ap.ID, &subjectKind, &ap.SubjectID, &ap.RequestedBy, &req, &ap.Reason, &ap.Decision, &decidedBy, &dec); err != nil {
		return ap, err
	}
	ap.SubjectKind, ap.RequestedAt, ap.DecidedAt = subjectKind, nsTime(req), nsTime(dec)
	if decidedBy.Valid {
		ap.DecidedBy = &decidedBy.String
	}
	return ap, nil
}

func (a *API) listApprovals(ctx context.Context, where string, args []any, limit int64) ([]approvalJSON, error) {
	rows, err := a.sql.ReadOnly().QueryContext(ctx, `SELECT `+approvalCols+` FROM approvals WHERE `+where+` ORDER BY id DESC LIMIT ?`, append(args, limit)...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []approvalJSON{}
	for rows.Next() {
		ap, err := scanApproval(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, ap)
	}
	return out, rows.Err()
}

func (a *API) approvals(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q, err := queryParams(r, "decision", "kind", "limit", "before")
	if err != nil {
		return err
	}
	decision := q.str("decision")
	if decision == "" {
		decision = "pending"
	}
	if err := oneOf("decision", decision, "pending", "approved", "denied", "expired", "all"); err != nil {
		return err
	}
	if err := oneOf("kind", q.str("kind"), "trace", "reveal", "export", "rule_pack", "follow"); err != nil {
		return err
	}
	limit, err := q.int("limit", defaultPage, 1, maxPage)
	if err != nil {
		return err
	}
	before, err := q.int("before", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	where, args := []string{"1 = 1"}, []any{}
	if decision != "all" {
		where, args = append(where, "decision = ?"), append(args, decision)
	}
	if k := q.str("kind"); k != "" {
		where, args = append(where, "subject_kind = ?"), append(args, k)
	}
	if before != 0 {
		where, args = append(where, "id < ?"), append(args, before)
	}
	out, err := a.listApprovals(r.Context(), strings.Join(where, " AND "), args, limit+1)
	if err != nil {
		return err
	}
	resp := map[string]any{"approvals": out, "next_before": nil}
	if int64(len(out)) > limit {
		out = out[:limit]
		resp["approvals"], resp["next_before"] = out, out[len(out)-1].ID
	}
	a.reply(w, http.StatusOK, resp)
	return nil
}

func (a *API) operators(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	ops, err := a.ops.List(r.Context())
	if err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"operators": ops})
	return nil
}

// blobJSON shows a BLOB in query results as {"b64": ...}, the convention
// of the argv columns, so that it cannot be mistaken for text.
func blobJSON(b []byte) map[string]string {
	return map[string]string{"b64": base64.StdEncoding.EncodeToString(b)}
}
