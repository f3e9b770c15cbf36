package center

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Justifications: reveal, trace start and stop, and approval decisions
// need a reason an auditor can read later.
const (
	MinReasonLen = 10
	maxReasonLen = 2000
)

func checkReason(what, reason string) (string, error) {
	reason = strings.TrimSpace(reason)
	if utf8.RuneCountInString(reason) < MinReasonLen {
		return "", errorf(http.StatusBadRequest, "%s needs a reason of at least %d characters (it is recorded in the audit ledger)", what, MinReasonLen)
	}
	if len(reason) > maxReasonLen || !utf8.ValidString(reason) {
		return "", errorf(http.StatusBadRequest, "%s: the reason must be valid UTF-8 of at most %d bytes", what, maxReasonLen)
	}
	return reason, nil
}

// ---- login / logout

type loginReq struct {
	Name     string `json:"name"`
	Password string `json:"password"`
}

func (a *API) login(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req loginReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if err := pki.ValidateName(req.Name); err != nil {
		return errorf(http.StatusBadRequest, "operator name: %v", err)
	}
	if wait := a.limiter.check(req.Name, p.Remote); wait > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
		a.log.Warn("login refused: locked out", "name", req.Name, "remote", p.Remote, "retry_after", wait)
		return errorf(http.StatusTooManyRequests, "too many failed logins: try again in %s", wait.Round(time.Second))
	}
	op, err := a.ops.CheckPassword(r.Context(), req.Name, req.Password)
	if errors.Is(err, ErrBadCredentials) || errors.Is(err, ErrOperatorBlocked) {
		locked := a.limiter.fail(req.Name, p.Remote)
		why := "wrong name or password"
		if errors.Is(err, ErrOperatorBlocked) {
			why = "operator disabled"
		}
		if aerr := a.audit.Audit(r.Context(), AuditLoginFailed, "", map[string]any{"name": req.Name, "reason": why,
			"remote": p.Remote, "locked": locked}); aerr != nil {
			a.log.Error("failed login not recorded in the ledger", "name", req.Name, "err", aerr)
		}
		if errors.Is(err, ErrOperatorBlocked) {
			return errorf(http.StatusForbidden, "operator %q is disabled", req.Name)
		}
		return errorf(http.StatusUnauthorized, "wrong operator name or password")
	}
	if err != nil {
		return err
	}
	a.limiter.succeed(req.Name)
	tok, err := a.sessions.create(op.ID)
	if err != nil {
		return err
	}
	p.ID, p.Auth, p.Role = op.ID, "password", op.Role
	if err := a.record(r.Context(), AuditLogin, p, map[string]any{"role": op.Role.String()}); err != nil {
		id, key, _ := a.sessions.lookup(tok)
		if id != "" {
			a.sessions.revoke(key)
		}
		return err
	}
	expires := a.now().Add(SessionMax)
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: tok, Path: "/api/", Expires: expires, MaxAge: int(SessionMax.Seconds()),
		HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	a.reply(w, http.StatusOK, map[string]any{"operator": op.ID, "role": op.Role, "token": tok, "expires": expires.UTC(),
		"idle_timeout_s": int(SessionIdle.Seconds())})
	return nil
}

func (a *API) logout(w http.ResponseWriter, r *http.Request, p *principal) error {
	if err := decodeEmpty(r); err != nil {
		return err
	}
	ended := p.Auth == "password"
	if err := a.record(r.Context(), AuditLogout, p, map[string]any{"session_ended": ended}); err != nil {
		return err
	}
	if ended {
		a.sessions.revoke(p.session)
	}
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: "", Path: "/api/", MaxAge: -1, HttpOnly: true, Secure: true, SameSite: http.SameSiteStrictMode})
	a.reply(w, http.StatusOK, map[string]any{"session_ended": ended})
	return nil
}

// decodeEmpty accepts an empty body or an empty JSON object.
func decodeEmpty(r *http.Request) error {
	var v struct{}
	if err := decode(r, &v); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.msg == "empty request body" {
			return nil
		}
		return err
	}
	return nil
}

// ---- reveal

type revealReq struct {
	Host   string `json:"host"`
	PID    uint32 `json:"pid"`
	Start  uint64 `json:"start"`
	Reason string `json:"reason"`
}

func (a *API) reveal(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req revealReq
	if err := decode(r, &req); err != nil {
		return err
	}
	reason, err := checkReason("revealing a command line", req.Reason)
	if err != nil {
		return err
	}
	if err := (privacy.Reveal{On: true, Reason: reason}).Check(); err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	proc, err := a.loadProcess(r.Context(), req.Host, req.PID, req.Start)
	if err != nil {
		return err
	}
	argvJSON, err := sqlstore.EncodeArgv(proc.Exec.Argv)
	if err != nil {
		return err
	}
	if argvJSON == "" {
		argvJSON = "[]"
	}
	var env any
	if a.hasEnv {
		var e sql.NullString
		err := a.sql.ReadOnly().QueryRowContext(r.Context(), `SELECT env FROM process_events
			WHERE host = ? AND pid = ? AND start = ? AND kind = 'exec' AND env IS NOT NULL ORDER BY id DESC LIMIT 1`,
			req.Host, int64(req.PID), int64(req.Start)).Scan(&e)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return err
		}
		if e.Valid {
			if json.Valid([]byte(e.String)) {
				env = json.RawMessage(e.String)
			} else {
				env = e.String
			}
		}
	}
	// Recorded before anything unmasked leaves.
	if err := a.record(r.Context(), AuditReveal, p, map[string]any{"host": req.Host, "pid": req.PID, "start": req.Start,
		"exe": proc.Exec.Exe, "reason": reason}); err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"process": procView(proc, true), "argv": json.RawMessage(argvJSON),
		"env": env, "env_recorded": a.hasEnv})
	return nil
}

// ---- traces

type collectReq struct {
	Cmdlines bool `json:"cmdlines"`
	Network  bool `json:"network"`
	Files    bool `json:"files"`
	Memory   bool `json:"memory"`
}

type traceReq struct {
	Host      string      `json:"host"`
	PID       uint32      `json:"pid"`
	Start     uint64      `json:"start"`
	Depth     *int        `json:"depth"`
	DurationS int64       `json:"duration_s"`
	MaxBytes  int64       `json:"max_bytes"`
	MaxEPS    int64       `json:"max_eps"`
	Collect   *collectReq `json:"collect"`
	Reason    string      `json:"reason"`
	AlertID   int64       `json:"alert_id"`
	// Command is the TraceCommand signed with the operator's key
	// (`daemoneye trace start`): the request's target, depth, collection
	// and caps are then the command's, and the agent checks the operator's
	// own signature. Without it the center signs on the operator's behalf.
	Command []byte `json:"command,omitempty"`
}

// fromSignedCommand fills req from its signed command after checking the
// signature and that the signer is the caller.
func (a *API) fromSignedCommand(req *traceReq, p *principal) (traceID string, err error) {
	if a.verifier == nil {
		return "", errorf(http.StatusBadRequest, "this center has no CA to check a signed command with")
	}
	v, err := wire.VerifyTrace(req.Command, a.verifier, wire.TraceCheck{Now: a.now(), MaxAge: CommandTTL})
	if err != nil {
		return "", errorf(http.StatusBadRequest, "signed trace command refused: %v", err)
	}
	c := v.Command
	if v.SignerRole != pki.RoleOperator || v.Signer != p.ID {
		return "", errorf(http.StatusForbidden, "the command is signed by %s %s, and you are %s", v.SignerRole, v.Signer, p.ID)
	}
	if c.Action != wire.TraceStart || c.FollowOf != 0 {
		return "", errorf(http.StatusBadRequest, "a signed trace request must be a start of a new trace")
	}
	for _, f := range []struct {
		name      string
		set, same bool
	}{
		{"host", req.Host != "", req.Host == c.TargetAgent}, {"pid", req.PID != 0, req.PID == c.TargetPID},
		{"start", req.Start != 0, req.Start == c.TargetStart}, {"reason", req.Reason != "", req.Reason == c.Reason},
	} {
		if f.set && !f.same {
			return "", errorf(http.StatusBadRequest, "%s in the request differs from the signed command's", f.name)
		}
	}
	depth := int(c.Depth)
	req.Host, req.PID, req.Start, req.Depth, req.Reason = c.TargetAgent, c.TargetPID, c.TargetStart, &depth, c.Reason
	req.DurationS, req.MaxBytes, req.MaxEPS = int64(c.MaxDurationSecs), int64(c.MaxBytes), int64(c.MaxEventsPerSec)
	req.Collect = &collectReq{Cmdlines: c.CollectCmdlines, Network: c.CollectNetwork, Files: c.CollectFiles, Memory: c.CollectMemory}
	return c.TraceID, nil
}

// Trace request bounds and defaults.
const (
	DefaultTraceDepth    = 6
	MaxTraceDepth        = 64
	DefaultTraceDuration = 15 * 60
	MaxTraceDuration     = 24 * 3600
	DefaultTraceBytes    = 256 << 20
	MaxTraceBytes        = 16 << 30
	DefaultTraceEPS      = 2000
	MaxTraceEPS          = 100_000
)

func bounded(name string, v, def, lo, hi int64) (int64, error) {
	if v == 0 {
		return def, nil
	}
	if v < lo || v > hi {
		return 0, errorf(http.StatusBadRequest, "%s %d: want %d to %d", name, v, lo, hi)
	}
	return v, nil
}

func newTraceID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	return hex.EncodeToString(b), nil
}

// change runs f in a write transaction on the center's SQL store and
// records its audit entry (f's payload) before committing.
func (a *API) change(ctx context.Context, kind string, p *principal, f func(tx *sql.Tx) (map[string]any, error)) error {
	return a.ops.inTx(ctx, a.audit, kind, p.ID, func(tx *sql.Tx) (any, error) {
		payload, err := f(tx)
		if err != nil {
			return nil, err
		}
		payload["auth"], payload["remote"] = p.Auth, p.Remote
		return payload, nil
	})
}

func (a *API) requestTrace(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req traceReq
	if err := decode(r, &req); err != nil {
		return err
	}
	var signedID string
	if len(req.Command) > 0 {
		var err error
		if signedID, err = a.fromSignedCommand(&req, p); err != nil {
			return err
		}
	}
	reason, err := checkReason("starting a trace", req.Reason)
	if err != nil {
		return err
	}
	depth := int64(DefaultTraceDepth)
	if req.Depth != nil {
		if depth = int64(*req.Depth); depth < 0 || depth > MaxTraceDepth {
			return errorf(http.StatusBadRequest, "depth %d: want 0 to %d", depth, MaxTraceDepth)
		}
	}
	var caps TraceCaps
	if caps.MaxDurationS, err = bounded("duration_s", req.DurationS, DefaultTraceDuration, 1, MaxTraceDuration); err != nil {
		return err
	}
	if caps.MaxBytes, err = bounded("max_bytes", req.MaxBytes, DefaultTraceBytes, 1<<20, MaxTraceBytes); err != nil {
		return err
	}
	if caps.MaxEPS, err = bounded("max_eps", req.MaxEPS, DefaultTraceEPS, 1, MaxTraceEPS); err != nil {
		return err
	}
	flags := TraceCmdlines | TraceNetwork | TraceFiles
	if c := req.Collect; c != nil {
		flags = 0
		for _, f := range []struct {
			on   bool
			flag TraceFlags
		}{{c.Cmdlines, TraceCmdlines}, {c.Network, TraceNetwork}, {c.Files, TraceFiles}, {c.Memory, TraceMemory}} {
			if f.on {
				flags |= f.flag
			}
		}
	}
	proc, err := a.loadProcess(r.Context(), req.Host, req.PID, req.Start)
	if err != nil {
		return err
	}
	if !proc.Alive() {
		return errorf(http.StatusConflict, "process %d@%d on %s has exited: nothing left to trace", req.PID, req.Start, req.Host)
	}
	id := signedID
	if id == "" {
		if id, err = newTraceID(); err != nil {
			return err
		}
	}
	capsJSON, err := json.Marshal(caps)
	if err != nil {
		return err
	}
	state := "approved"
	if a.cfg.TwoPersonTraces {
		state = "pending"
	}
	now := a.now().UnixNano()
	var approvalID int64
	err = a.change(r.Context(), AuditTraceRequest, p, func(tx *sql.Tx) (map[string]any, error) {
		var other string
		err := tx.QueryRowContext(r.Context(), `SELECT trace_id FROM traces WHERE host = ? AND pid = ? AND start = ?
			AND state IN ('pending', 'approved', 'active') LIMIT 1`, req.Host, int64(req.PID), int64(req.Start)).Scan(&other)
		if err == nil {
			return nil, errorf(http.StatusConflict, "trace %s is already pending or running on this process", other)
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		var n int
		if err := tx.QueryRowContext(r.Context(), `SELECT count(*) FROM traces WHERE trace_id = ?`, id).Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			return nil, errorf(http.StatusConflict, "trace id %s is taken", id)
		}
		var alertID any
		if req.AlertID != 0 {
			var n int
			if err := tx.QueryRowContext(r.Context(), `SELECT count(*) FROM alerts WHERE id = ?`, req.AlertID).Scan(&n); err != nil {
				return nil, err
			}
			if n == 0 {
				return nil, errorf(http.StatusBadRequest, "no alert %d", req.AlertID)
			}
			alertID = req.AlertID
		}
		if _, err := tx.ExecContext(r.Context(), `INSERT INTO traces (trace_id, host, pid, start, depth, flags, caps, state, created, initiated_by, reason, alert_id, command)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, id, req.Host, int64(req.PID), int64(req.Start), depth, int64(flags),
			string(capsJSON), state, now, p.ID, reason, alertID, req.Command); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(r.Context(), `INSERT INTO trace_targets (trace_id, host, pid, start, state, added) VALUES (?, ?, ?, ?, ?, ?)`,
			id, req.Host, int64(req.PID), int64(req.Start), state, now); err != nil {
			return nil, err
		}
		payload := map[string]any{"trace_id": id, "host": req.Host, "pid": req.PID, "start": req.Start, "exe": proc.Exec.Exe,
			"depth": depth, "flags": flags, "caps": caps, "reason": reason, "state": state, "alert_id": alertID}
		if state == "pending" {
			res, err := tx.ExecContext(r.Context(), `INSERT INTO approvals (subject_kind, subject_id, requested_by, requested_at, reason)
				VALUES ('trace', ?, ?, ?, ?)`, id, p.ID, now, reason)
			if err != nil {
				return nil, err
			}
			if approvalID, err = res.LastInsertId(); err != nil {
				return nil, err
			}
			payload["approval_id"] = approvalID
		}
		return payload, nil
	})
	if err != nil {
		return err
	}
	if state == "pending" {
		a.log.Info("trace requested, awaiting approval", "trace", id, "operator", p.ID, "approval", approvalID)
		return a.replyTrace(w, r.Context(), http.StatusAccepted, id, map[string]any{"approval_id": approvalID})
	}
	treq := TraceRequest{TraceID: id, Host: req.Host, PID: req.PID, Start: req.Start, Depth: int(depth), Flags: flags,
		Caps: caps, InitiatedBy: p.ID, Reason: reason, AlertID: req.AlertID, Command: req.Command}
	if err := a.startTrace(r.Context(), treq); err != nil {
		return err
	}
	return a.replyTrace(w, r.Context(), http.StatusCreated, id, nil)
}

// startTrace hands an approved trace to the center; a refusal marks it
// failed.
func (a *API) startTrace(ctx context.Context, req TraceRequest) error {
	err := a.center.RequestTrace(ctx, req)
	if err == nil {
		a.log.Info("trace approved and handed to the center", "trace", req.TraceID, "operator", req.InitiatedBy, "approver", req.ApprovedBy)
		return nil
	}
	a.log.Error("center could not start the trace", "trace", req.TraceID, "err", err)
	msg := "the center could not start it: " + err.Error()
	a.ops.wmu.Lock()
	_, uerr := a.ops.db.ExecContext(context.WithoutCancel(ctx), `UPDATE traces SET state = 'failed', stopped = ?, stop_reason = ?
		WHERE trace_id = ? AND state = 'approved'`, a.now().UnixNano(), msg, req.TraceID)
	a.ops.wmu.Unlock()
	if uerr != nil {
		a.log.Error("mark trace failed", "trace", req.TraceID, "err", uerr)
	}
	if aerr := a.audit.Audit(context.WithoutCancel(ctx), AuditTraceFailed, "center", map[string]any{"trace_id": req.TraceID, "error": err.Error()}); aerr != nil {
		a.log.Error("trace failure not recorded in the ledger", "trace", req.TraceID, "err", aerr)
	}
	return errorf(http.StatusBadGateway, "trace %s was recorded but %s", req.TraceID, msg)
}

func (a *API) replyTrace(w http.ResponseWriter, ctx context.Context, status int, id string, extra map[string]any) error {
	t, err := scanTrace(a.ops.db.QueryRowContext(ctx, `SELECT `+traceCols+` FROM main.traces WHERE trace_id = ?`, id))
	if err != nil {
		return err
	}
	resp := map[string]any{"trace": t}
	for k, v := range extra {
		resp[k] = v
	}
	a.reply(w, status, resp)
	return nil
}

// followLink fans a trace out along a link (when auto-follow is off, or
// to retry): the analyst's reason goes to the ledger.
func (a *API) followLink(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req stopReq
	if err := decode(r, &req); err != nil {
		return err
	}
	reason, err := checkReason("following a link", req.Reason)
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		return errorf(http.StatusBadRequest, "link id %q: want a positive integer", r.PathValue("id"))
	}
	if err := a.audit.Audit(r.Context(), "api.follow", p.ID, map[string]any{"link_id": id, "reason": reason, "auth": p.Auth, "remote": p.Remote}); err != nil {
		return fmt.Errorf("%w: %w", errAudit, err)
	}
	if err := a.center.Follow(r.Context(), id, p.ID); err != nil {
		if errors.Is(err, errNotFollowable) {
			return errorf(http.StatusConflict, "%v", err)
		}
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"link_id": id, "followed": true})
	return nil
}

type stopReq struct {
	Reason string `json:"reason"`
}

func (a *API) stopTrace(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req stopReq
	if err := decode(r, &req); err != nil {
		return err
	}
	reason, err := checkReason("stopping a trace", req.Reason)
	if err != nil {
		return err
	}
	id := r.PathValue("id")
	var prev string
	err = a.change(r.Context(), AuditTraceStop, p, func(tx *sql.Tx) (map[string]any, error) {
		err := tx.QueryRowContext(r.Context(), `SELECT state FROM traces WHERE trace_id = ?`, id).Scan(&prev)
		if errors.Is(err, sql.ErrNoRows) {
			return nil, errorf(http.StatusNotFound, "no trace %q", id)
		}
		if err != nil {
			return nil, err
		}
		switch prev {
		case "pending", "approved", "active":
		default:
			return nil, errorf(http.StatusConflict, "trace %s is %s already", id, prev)
		}
		now := a.now().UnixNano()
		if _, err := tx.ExecContext(r.Context(), `UPDATE traces SET state = 'stopped', stopped = ?, stop_reason = ? WHERE trace_id = ?`,
			now, reason, id); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(r.Context(), `UPDATE trace_targets SET state = 'stopped' WHERE trace_id = ?`, id); err != nil {
			return nil, err
		}
		// A request stopped before anyone decided needs no decision.
		if _, err := tx.ExecContext(r.Context(), `UPDATE approvals SET decision = 'expired', decided_at = ?
			WHERE subject_kind = 'trace' AND subject_id = ? AND decision = 'pending'`, now, id); err != nil {
			return nil, err
		}
		return map[string]any{"trace_id": id, "previous_state": prev, "reason": reason}, nil
	})
	if err != nil {
		return err
	}
	if prev != "pending" {
		if err := a.center.StopTrace(r.Context(), id, p.ID, reason); err != nil {
			a.log.Error("center could not stop the trace", "trace", id, "err", err)
			return errorf(http.StatusBadGateway, "trace %s is recorded as stopped, but the center could not send the stop: %v", id, err)
		}
	}
	return a.replyTrace(w, r.Context(), http.StatusOK, id, nil)
}

// ---- approvals

type decideReq struct {
	Decision string `json:"decision"` // approve or deny
	Reason   string `json:"reason"`
}

func (a *API) decide(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req decideReq
	if err := decode(r, &req); err != nil {
		return err
	}
	var decision string
	switch req.Decision {
	case "approve":
		decision = "approved"
	case "deny":
		decision = "denied"
	default:
		return errorf(http.StatusBadRequest, "decision %q: want approve or deny", req.Decision)
	}
	reason, err := checkReason("deciding a request", req.Reason)
	if err != nil {
		return err
	}
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		return errorf(http.StatusBadRequest, "approval id %q: want an integer", r.PathValue("id"))
	}
	var (
		ap    approvalJSON
		treq  *TraceRequest
		twoPR bool
	)
	err = a.change(r.Context(), AuditApproval, p, func(tx *sql.Tx) (map[string]any, error) {
		var err error
		ap, err = scanApproval(tx.QueryRowContext(r.Context(), `SELECT `+approvalCols+` FROM approvals WHERE id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return nil, errorf(http.StatusNotFound, "no approval request %d", id)
		}
		if err != nil {
			return nil, err
		}
		if ap.RequestedBy == p.ID {
			twoPR = true
			return nil, errorf(http.StatusForbidden, "two-person rule: %s requested this, so another approver must decide it", p.ID)
		}
		if ap.Decision != "pending" {
			return nil, errorf(http.StatusConflict, "approval request %d is %s already", id, ap.Decision)
		}
		now := a.now().UnixNano()
		if _, err := tx.ExecContext(r.Context(), `UPDATE approvals SET decision = ?, decided_by = ?, decided_at = ? WHERE id = ?`,
			decision, p.ID, now, id); err != nil {
			return nil, err
		}
		payload := map[string]any{"approval_id": id, "subject_kind": ap.SubjectKind, "subject_id": ap.SubjectID,
			"requested_by": ap.RequestedBy, "decision": decision, "reason": reason}
		if ap.SubjectKind != "trace" {
			// Other kinds are acted on by their own subsystems, which read
			// the decision.
			return payload, nil
		}
		t, err := scanTrace(tx.QueryRowContext(r.Context(), `SELECT `+traceCols+` FROM traces WHERE trace_id = ?`, ap.SubjectID))
		if err != nil {
			return nil, fmt.Errorf("approval %d: trace %s: %w", id, ap.SubjectID, err)
		}
		if t.State != "pending" {
			return nil, errorf(http.StatusConflict, "trace %s is %s, not pending", t.TraceID, t.State)
		}
		newState, stopReason := "approved", any(nil)
		if decision == "denied" {
			newState, stopReason = "refused", "denied by "+p.ID+": "+reason
		}
		if _, err := tx.ExecContext(r.Context(), `UPDATE traces SET state = ?, stop_reason = ?, stopped = CASE WHEN ? = 'refused' THEN ? END
			WHERE trace_id = ?`, newState, stopReason, newState, now, t.TraceID); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(r.Context(), `UPDATE trace_targets SET state = ? WHERE trace_id = ?`, newState, t.TraceID); err != nil {
			return nil, err
		}
		if newState == "approved" {
			var caps TraceCaps
			if err := json.Unmarshal(t.Caps, &caps); err != nil {
				return nil, fmt.Errorf("trace %s caps: %w", t.TraceID, err)
			}
			var alertID int64
			if t.AlertID != nil {
				alertID = *t.AlertID
			}
			var signedCmd []byte
			if err := tx.QueryRowContext(r.Context(), `SELECT command FROM traces WHERE trace_id = ?`, t.TraceID).Scan(&signedCmd); err != nil {
				return nil, err
			}
			treq = &TraceRequest{TraceID: t.TraceID, Host: t.Host, PID: t.PID, Start: t.Start, Depth: t.Depth, Flags: t.Flags,
				Caps: caps, InitiatedBy: t.InitiatedBy, ApprovedBy: p.ID, Reason: t.Reason, AlertID: alertID, Command: signedCmd}
		}
		payload["trace_state"] = newState
		return payload, nil
	})
	if twoPR {
		a.deny(r, p, fmt.Sprintf("two-person rule: own request %d", id))
	}
	if err != nil {
		return err
	}
	if treq != nil {
		if err := a.startTrace(r.Context(), *treq); err != nil {
			return err
		}
	}
	ap, err = scanApproval(a.ops.db.QueryRowContext(r.Context(), `SELECT `+approvalCols+` FROM main.approvals WHERE id = ?`, id))
	if err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"approval": ap})
	return nil
}

// ---- query

type queryReq struct {
	SQL     string `json:"sql"`
	Args    []any  `json:"args"`
	MaxRows int    `json:"max_rows"`
}

func queryArgs(in []any) ([]any, error) {
	if len(in) > 100 {
		return nil, errorf(http.StatusBadRequest, "at most 100 query arguments")
	}
	out := make([]any, len(in))
	for i, v := range in {
		switch x := v.(type) {
		case nil, string:
			out[i] = x
		case bool:
			out[i] = int64(0)
			if x {
				out[i] = int64(1)
			}
		case json.Number:
			if n, err := x.Int64(); err == nil {
				out[i] = n
			} else if f, err := x.Float64(); err == nil {
				out[i] = f
			} else {
				return nil, errorf(http.StatusBadRequest, "argument %d: number %s out of range", i+1, x)
			}
		default:
			return nil, errorf(http.StatusBadRequest, "argument %d: want a string, number, boolean or null", i+1)
		}
	}
	return out, nil
}

func (a *API) query(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req queryReq
	if err := decode(r, &req); err != nil {
		return err
	}
	if strings.TrimSpace(req.SQL) == "" {
		return errorf(http.StatusBadRequest, "sql is empty")
	}
	args, err := queryArgs(req.Args)
	if err != nil {
		return err
	}
	maxRows := a.cfg.QueryMaxRows
	if maxRows <= 0 {
		maxRows = sqlstore.DefaultQueryRows
	}
	if req.MaxRows < 0 {
		return errorf(http.StatusBadRequest, "max_rows must not be negative")
	}
	if req.MaxRows > 0 {
		maxRows = min(maxRows, req.MaxRows)
	}
	timeout := time.Duration(a.cfg.QueryTimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = sqlstore.DefaultQueryTimeout
	}
	select {
	case a.queries <- struct{}{}:
	case <-r.Context().Done():
		return context.Canceled
	case <-time.After(timeout):
		return errorf(http.StatusServiceUnavailable, "%d queries are running already; try again shortly", maxQueries)
	}
	began := time.Now()
	res, qerr := a.sql.Sandbox(r.Context(), req.SQL, args, maxRows, timeout)
	cols, rows, truncated := res.Cols, res.Rows, res.Truncated
	elapsed := time.Since(began)
	<-a.queries
	if qerr != nil && r.Context().Err() != nil {
		return context.Canceled // the client went away; nothing was shown
	}
	outcome, status, msg := "ok", http.StatusOK, ""
	if qerr != nil {
		detail := strings.TrimPrefix(qerr.Error(), "sqlstore: query: ")
		switch {
		case errors.Is(qerr, sqlstore.ErrNotReadOnly):
			outcome, msg = "refused", "query refused: the sandbox is read-only and runs one SELECT, WITH or VALUES statement ("+detail+")"
		case errors.Is(qerr, context.DeadlineExceeded):
			outcome, msg = "timeout", fmt.Sprintf("query stopped at the time limit of %s: narrow it (WHERE on an indexed column, LIMIT)", timeout)
		default:
			outcome, msg = "error", "query failed: "+detail
		}
		status = http.StatusBadRequest
	}
	payload := map[string]any{"sql": req.SQL, "args": len(args), "outcome": outcome, "rows": len(rows), "truncated": truncated,
		"elapsed_ms": elapsed.Milliseconds(), "masked_columns": res.Masked}
	if msg != "" {
		payload["error"] = msg
	}
	// Recorded before the rows leave.
	if err := a.record(r.Context(), AuditQuery, p, payload); err != nil {
		return err
	}
	if qerr != nil {
		a.writeError(w, status, msg)
		return nil
	}
	for _, row := range rows {
		for i, v := range row {
			if b, ok := v.([]byte); ok {
				row[i] = blobJSON(b)
			}
		}
	}
	if rows == nil {
		rows = [][]any{}
	}
	a.reply(w, http.StatusOK, map[string]any{"columns": cols, "rows": rows, "truncated": truncated, "row_limit": maxRows,
		"time_limit_ms": timeout.Milliseconds(), "elapsed_ms": elapsed.Milliseconds(),
		// Read as NULL: command lines are seen through a reveal.
		"masked_columns": append([]string{}, res.Masked...)})
	return nil
}

// ---- operators

type addOperatorReq struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	Role     string `json:"role"`
	Password string `json:"password"`
}

// requestAuditor adds who and from where to the payloads of Operators'
// audit entries.
type requestAuditor struct {
	Auditor
	p *principal
}

func (ra requestAuditor) Audit(ctx context.Context, kind, actor string, payload any) error {
	if m, ok := payload.(map[string]any); ok {
		m["auth"], m["remote"], m["via"] = ra.p.Auth, ra.p.Remote, "api"
	}
	return ra.Auditor.Audit(ctx, kind, actor, payload)
}

func operatorErr(err error) error {
	switch {
	case errors.Is(err, ErrOperatorExists):
		return errorf(http.StatusConflict, "%v", err)
	case errors.Is(err, ErrNoOperator):
		return errorf(http.StatusNotFound, "%v", err)
	case errors.Is(err, ErrLastAdmin):
		return errorf(http.StatusConflict, "%v: make another operator admin first", err)
	case errors.Is(err, ErrWeakPassword), errors.Is(err, ErrInvalidOperator):
		return errorf(http.StatusBadRequest, "%v", err)
	}
	return err
}

func (a *API) addOperator(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req addOperatorReq
	if err := decode(r, &req); err != nil {
		return err
	}
	role, err := ParseRole(req.Role)
	if err != nil {
		return errorf(http.StatusBadRequest, "%v", err)
	}
	op, err := a.ops.Add(r.Context(), NewOperator{ID: req.ID, Name: req.Name, Role: role, Password: req.Password}, p.ID, requestAuditor{a.audit, p})
	if err != nil {
		return operatorErr(err)
	}
	a.reply(w, http.StatusCreated, map[string]any{"operator": op})
	return nil
}

type updateOperatorReq struct {
	Role     *string `json:"role"`
	Disabled *bool   `json:"disabled"`
	Password *string `json:"password"`
}

func (a *API) updateOperator(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req updateOperatorReq
	if err := decode(r, &req); err != nil {
		return err
	}
	var c OperatorChange
	if req.Role != nil {
		role, err := ParseRole(*req.Role)
		if err != nil {
			return errorf(http.StatusBadRequest, "%v", err)
		}
		c.Role = &role
	}
	c.Disabled, c.Password = req.Disabled, req.Password
	if c.Role == nil && c.Disabled == nil && c.Password == nil {
		return errorf(http.StatusBadRequest, "nothing to change: give role, disabled or password")
	}
	id := r.PathValue("id")
	op, err := a.ops.Update(r.Context(), id, c, p.ID, requestAuditor{a.audit, p})
	if err != nil {
		return operatorErr(err)
	}
	if !op.Active() || c.Password != nil {
		a.sessions.revokeOperator(id)
	}
	a.reply(w, http.StatusOK, map[string]any{"operator": op})
	return nil
}
