package center

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/rules"
)

// startRules builds the rule engine over the SQL store's read-only pool.
// New alerts, and the traces their rules ask for, go to the ledger; the
// engine is poked after every ingested batch.
func (c *Center) startRules(ctx context.Context) (*rules.Engine, func(), error) {
	packs, err := rules.LoadSet(c.cfg.Rules.Default, c.cfg.Rules.Packs, c.cfg.Rules.TrustedKeys, c.cfg.Rules.AllowUnsigned)
	if err != nil {
		return nil, nil, err
	}
	rec, err := rules.OpenRecorder(c.SQL.Path())
	if err != nil {
		return nil, nil, fmt.Errorf("rules: %w", err)
	}
	c.packs, c.rec = packs, rec
	eng, err := rules.NewEngine(ctx, rules.EngineOptions{
		DB: c.SQL.ReadOnly(), Target: rules.Center, Recorder: rec, Log: c.log,
		OnAlert: c.onAlert,
	}, packs...)
	if err != nil {
		rec.Close()
		return nil, nil, fmt.Errorf("rules: %w", err)
	}
	for _, p := range packs {
		c.log.Info("rule pack active", "pack", p.Name, "version", p.Version, "rules", len(p.Rules))
		if _, err := c.Ledger.Append(ledger.Entry{Kind: ledger.KindRuleActivate, Actor: "center", Time: time.Now(),
			Payload: []byte(fmt.Sprintf(`{"pack":%q,"version":%q,"rules":%d}`, p.Name, p.Version, len(p.Rules)))}); err != nil {
			rec.Close()
			return nil, nil, fmt.Errorf("rules: ledger: %w", err)
		}
	}
	return eng, func() { rec.Close() }, nil
}

// agentAlerts records the alerts agents raised themselves (their rules
// ran on their own events) in the alerts table, deduplicated with the
// center's own matches of the same rule and process, and gives the fresh
// ones the same treatment as the center's: ledger, and the rule's trace
// request under the center's policy. What a rule asks for comes from the
// center's copy of the pack, never from the agent's event.
func (c *Center) agentAlerts(ctx context.Context, host string, evs []capture.Event) {
	if c.rec == nil {
		return
	}
	for _, ev := range evs {
		if ev.Kind != capture.KindAlert || ev.Alert == nil {
			continue
		}
		ra := ev.Alert
		rule, pack, ok := c.findRule(ra.RuleID)
		if !ok {
			c.log.Warn("agent alert for a rule the center does not have", "agent", host, "rule", ra.RuleID)
			continue
		}
		a := rules.Alert{RuleID: rule.ID, Pack: pack, Title: rule.Title, Severity: rule.Severity, Technique: rule.Attack,
			Process: rules.ProcessKey{Host: host, PID: ev.Proc.PID, Start: ev.Proc.Start}, Time: ev.Time}
		if ra.Context != "" {
			var m map[string]any
			if err := json.Unmarshal([]byte(ra.Context), &m); err == nil {
				m["raised_by"] = "agent"
				a.Context = m
			}
		}
		if t := rule.Action.Trace; t != nil {
			a.Trace = &rules.TraceRequest{Depth: t.Depth, Duration: t.Duration, Collect: t.Collect, InitiatedBy: ruleInitiatorPref + rule.ID}
		}
		fresh, err := c.rec.Record(ctx, rules.Run{RuleID: "agent:" + rule.ID, Pack: pack, At: time.Now(), Matched: 1, Alerts: []rules.Alert{a}})
		if err != nil {
			c.log.Error("record agent alert", "agent", host, "rule", ra.RuleID, "err", err)
			continue
		}
		for _, f := range fresh {
			c.onAlert(f)
		}
	}
}

// findRule finds a rule by id in the center's packs.
func (c *Center) findRule(id string) (rules.Rule, string, bool) {
	c.packsMu.RLock()
	defer c.packsMu.RUnlock()
	for _, p := range c.packs {
		for _, r := range p.Rules {
			if r.ID == id {
				return r, p.Name, true
			}
		}
	}
	return rules.Rule{}, "", false
}

func (c *Center) onAlert(a rules.Alert) {
	c.log.Warn("alert", "rule", a.RuleID, "severity", a.Severity, "technique", a.Technique,
		"host", a.Process.Host, "pid", a.Process.PID, "start", a.Process.Start, "alert_id", a.ID)
	payload := fmt.Sprintf(`{"alert_id":%d,"rule":%q,"host":%q,"pid":%d,"start":%d}`, a.ID, a.RuleID, a.Process.Host, a.Process.PID, a.Process.Start)
	if _, err := c.Ledger.Append(ledger.Entry{Kind: "alert", Actor: "rule:" + a.RuleID, Time: time.Now(), Payload: []byte(payload)}); err != nil {
		c.log.Error("ledger alert", "err", err)
	}
	if a.Trace != nil {
		if err := c.ruleTrace(context.Background(), a); err != nil {
			c.log.Error("rule trace request", "rule", a.RuleID, "alert_id", a.ID, "err", err)
		}
	}
}

// ruleTrace records a rule's request for a trace on the alert's process
// and, by center.rules.trace_policy, starts it at once ("auto"), leaves it
// for an approver ("approval") or only records it ("off").
func (c *Center) ruleTrace(ctx context.Context, a rules.Alert) error {
	policy := c.cfg.Rules.TracePolicy
	by := a.Trace.InitiatedBy
	if by == "" {
		by = ruleInitiatorPref + a.RuleID
	}
	p := a.Process
	payload := map[string]any{"alert_id": a.ID, "rule": a.RuleID, "host": p.Host, "pid": p.PID, "start": p.Start, "policy": policy}
	if policy == "off" || policy == "" {
		_, err := c.Ledger.Append(ledger.Entry{Kind: AuditRuleTrace, Actor: by, Time: time.Now(), Payload: mustJSON(payload)})
		return err
	}
	id, err := newTraceID()
	if err != nil {
		return err
	}
	caps := TraceCaps{MaxDurationS: DefaultTraceDuration, MaxBytes: DefaultTraceBytes, MaxEPS: DefaultTraceEPS}
	if a.Trace.Duration > 0 {
		caps.MaxDurationS = min(int64(a.Trace.Duration/time.Second), MaxTraceDuration)
	}
	depth := a.Trace.Depth
	if depth <= 0 || depth > MaxTraceDepth {
		depth = DefaultTraceDepth
	}
	state := "approved"
	if policy == "approval" {
		state = "pending"
	}
	reason := fmt.Sprintf("rule %s: %s", a.RuleID, a.Title)
	capsJSON, _ := json.Marshal(caps)
	now := time.Now().UnixNano()
	started := false
	err = c.ops.inTx(ctx, c.auditor, AuditRuleTrace, by, func(tx *sql.Tx) (any, error) {
		var other string
		err := tx.QueryRowContext(ctx, `SELECT trace_id FROM traces WHERE host = ? AND pid = ? AND start = ?
			AND state IN ('pending', 'approved', 'active') LIMIT 1`, p.Host, int64(p.PID), int64(p.Start)).Scan(&other)
		if err == nil {
			payload["already"] = other // one trace per process: the alert is recorded against it
			return payload, nil
		}
		if !errors.Is(err, sql.ErrNoRows) {
			return nil, err
		}
		var alertID any
		if a.ID != 0 {
			alertID = a.ID
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO traces (trace_id, host, pid, start, depth, flags, caps, state, created, initiated_by, reason, alert_id)
			VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`, id, p.Host, int64(p.PID), int64(p.Start), depth, int64(a.Trace.Flags()),
			string(capsJSON), state, now, by, reason, alertID); err != nil {
			return nil, err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO trace_targets (trace_id, host, pid, start, state, added) VALUES (?, ?, ?, ?, ?, ?)`,
			id, p.Host, int64(p.PID), int64(p.Start), state, now); err != nil {
			return nil, err
		}
		if state == "pending" {
			// Approval requests name an operator; a rule's are the
			// center's, recorded as a disabled pseudo-operator that can
			// never log in (the reason names the rule).
			if _, err := tx.ExecContext(ctx, `INSERT OR IGNORE INTO operators (id, name, role, created, disabled)
				VALUES (?, 'Security Center (rule policy)', 'viewer', ?, ?)`, policyRequester, now, now); err != nil {
				return nil, err
			}
			res, err := tx.ExecContext(ctx, `INSERT INTO approvals (subject_kind, subject_id, requested_by, requested_at, reason)
				VALUES ('trace', ?, ?, ?, ?)`, id, policyRequester, now, reason)
			if err != nil {
				return nil, err
			}
			if payload["approval_id"], err = res.LastInsertId(); err != nil {
				return nil, err
			}
		}
		payload["trace_id"], payload["state"] = id, state
		started = state == "approved"
		return payload, nil
	})
	if err != nil || !started {
		return err
	}
	c.log.Info("rule started a trace", "rule", a.RuleID, "trace", id, "host", p.Host, "pid", p.PID)
	return c.RequestTrace(ctx, TraceRequest{TraceID: id, Host: p.Host, PID: p.PID, Start: p.Start, Depth: depth,
		Flags: TraceFlags(a.Trace.Flags()), Caps: caps, InitiatedBy: by, Reason: reason, AlertID: a.ID})
}

// policyRequester is the operators row that requests approvals for what
// policy started (a rule's trace).
const policyRequester = "center"

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // only maps of plain values reach here
	}
	return b
}
