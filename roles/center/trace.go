package center

// Traces at the center: an approved trace request becomes a TraceCommand
// signed by its requester (the operator's own key, or the center's for a
// rule) and stamped by the center; it travels down the tree as a Command.
// The agent's answer moves the trace to active or refused; its trace
// events land in the SQL store and, one leaf each, in the ledger.

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// CommandTTL is how long a trace command (and the center's stamp on it)
// stays good: it waits in outboxes down the tree at most this long.
const CommandTTL = 10 * time.Minute

// Command ids of trace commands: one start and one stop per trace and agent.
func startCommandID(traceID, agent string) string { return "trace-start-" + traceID + "@" + agent }
func stopCommandID(traceID, agent string) string  { return "trace-stop-" + traceID + "@" + agent }

// Ledger kinds the center adds for traces beyond the API's own entries.
const (
	AuditTraceSent    = "trace.command_sent"
	AuditTraceAgent   = "trace.agent_answer"
	AuditTraceEnded   = "trace.ended"
	AuditRuleTrace    = "rule.trace_request"
	ruleInitiatorPref = "rule:"
)

// traceCommand is the command a request describes.
func traceCommand(req TraceRequest, now time.Time) wire.TraceCommand {
	return wire.TraceCommand{
		TraceID: req.TraceID, Action: wire.TraceStart, TargetAgent: req.Host, TargetPID: req.PID, TargetStart: req.Start,
		Depth:           uint32(max(req.Depth, 0)),
		CollectCmdlines: req.Flags&TraceCmdlines != 0, CollectNetwork: req.Flags&TraceNetwork != 0,
		CollectFiles: req.Flags&TraceFiles != 0, CollectMemory: req.Flags&TraceMemory != 0,
		MaxDurationSecs: uint32(req.Caps.MaxDurationS), MaxBytes: uint64(req.Caps.MaxBytes), MaxEventsPerSec: uint32(req.Caps.MaxEPS),
		InitiatedBy: req.InitiatedBy, Timestamp: now.UnixNano(), Reason: req.Reason, FollowOf: req.FollowOf,
	}
}

// RequestTrace stamps an approved trace request and sends it down the tree
// to its agent. A request without the operator's signed command (a rule's,
// a fan-out, or a local account's) is signed by the center itself; agents
// accept that for rules and fan-outs, and for operators only where
// configured to.
func (c *Center) RequestTrace(ctx context.Context, req TraceRequest) error {
	now := time.Now()
	var (
		st  *wire.SignedTrace
		cmd wire.TraceCommand
		err error
	)
	if len(req.Command) > 0 {
		if st, cmd, err = wire.DecodeSignedTrace(req.Command); err != nil {
			return err
		}
		if cmd.TraceID != req.TraceID || cmd.TargetAgent != req.Host {
			return fmt.Errorf("signed command is for trace %s on %s, not %s on %s", cmd.TraceID, cmd.TargetAgent, req.TraceID, req.Host)
		}
	} else {
		cmd = traceCommand(req, now)
		if st, err = wire.SignTrace(cmd, c.id.Key(), c.id.CertDER()); err != nil {
			return err
		}
	}
	policy := "analyst"
	switch {
	case req.ApprovedBy != "":
		policy = "two-person"
	case strings.HasPrefix(req.InitiatedBy, ruleInitiatorPref):
		policy = "rule"
	case req.FollowOf != 0:
		policy = "follow"
	}
	if err := st.Approve(wire.TraceApproval{Policy: policy, ApprovedBy: req.ApprovedBy, Time: now.UnixNano(),
		Expires: now.Add(CommandTTL).UnixNano()}, c.id.Key(), c.id.CertDER()); err != nil {
		return err
	}
	payload, err := st.Encode()
	if err != nil {
		return err
	}
	sum := sha256.Sum256(payload)
	audit := map[string]any{"trace_id": req.TraceID, "agent": req.Host, "pid": req.PID, "start": req.Start, "policy": policy,
		"approved_by": req.ApprovedBy, "command_sha256": hex.EncodeToString(sum[:]), "follow_of": req.FollowOf}
	if err := c.ops.inTx(ctx, c.auditor, AuditTraceSent, "center", func(tx *sql.Tx) (any, error) {
		if req.FollowOf == 0 {
			if _, err := tx.ExecContext(ctx, `UPDATE traces SET command = ? WHERE trace_id = ?`, payload, req.TraceID); err != nil {
				return nil, err
			}
		}
		return audit, nil
	}); err != nil {
		return fmt.Errorf("record trace command: %w", err)
	}
	return c.SendCommand(ctx, wire.Command{CommandID: startCommandID(req.TraceID, req.Host), Target: req.Host,
		Expires: now.Add(CommandTTL).UnixNano(), Payload: payload})
}

// StopTrace sends a stop for a trace to every agent it runs on. The stop
// is signed by the center (stops are always the center's to send: an
// operator's through the API, a cap's, a policy's).
func (c *Center) StopTrace(ctx context.Context, traceID, by, reason string) error {
	rows, err := c.SQL.ReadOnly().QueryContext(ctx, `SELECT DISTINCT host FROM trace_targets WHERE trace_id = ?
		UNION SELECT host FROM traces WHERE trace_id = ?`, traceID, traceID)
	if err != nil {
		return fmt.Errorf("stop trace %s: %w", traceID, err)
	}
	var hosts []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			rows.Close()
			return err
		}
		hosts = append(hosts, h)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	if len(hosts) == 0 {
		return fmt.Errorf("stop trace %s: no such trace", traceID)
	}
	now := time.Now()
	for _, h := range hosts {
		cmd := wire.TraceCommand{TraceID: traceID, Action: wire.TraceStop, TargetAgent: h, InitiatedBy: by, Timestamp: now.UnixNano(), Reason: reason}
		st, err := wire.SignTrace(cmd, c.id.Key(), c.id.CertDER())
		if err != nil {
			return err
		}
		if err := st.Approve(wire.TraceApproval{Policy: "stop", Time: now.UnixNano(), Expires: now.Add(CommandTTL).UnixNano()},
			c.id.Key(), c.id.CertDER()); err != nil {
			return err
		}
		payload, err := st.Encode()
		if err != nil {
			return err
		}
		if err := c.SendCommand(ctx, wire.Command{CommandID: stopCommandID(traceID, h), Target: h,
			Expires: now.Add(CommandTTL).UnixNano(), Payload: payload}); err != nil {
			return fmt.Errorf("stop trace %s on %s: %w", traceID, h, err)
		}
	}
	return nil
}

// traceAck moves a trace by its agent's answer: a started trace becomes
// active; a refused or failed one says why. Every answer is a ledger leaf.
func (c *Center) traceAck(a wire.CommandAck) {
	var start bool
	var rest string
	switch {
	case strings.HasPrefix(a.CommandID, "trace-start-"):
		start, rest = true, strings.TrimPrefix(a.CommandID, "trace-start-")
	case strings.HasPrefix(a.CommandID, "trace-stop-"):
		rest = strings.TrimPrefix(a.CommandID, "trace-stop-")
	default:
		return
	}
	traceID, agent, ok := strings.Cut(rest, "@")
	if !ok || a.Status == wire.CommandAccepted {
		return
	}
	ctx := context.Background()
	now := time.Now().UnixNano()
	ok = a.Status == wire.CommandDone
	err := c.ops.inTx(ctx, c.auditor, AuditTraceAgent, "agent:"+a.AgentID, func(tx *sql.Tx) (any, error) {
		switch {
		case start && ok:
			if _, err := tx.ExecContext(ctx, `UPDATE traces SET state = 'active', started = coalesce(started, ?)
				WHERE trace_id = ? AND state IN ('approved', 'active')`, now, traceID); err != nil {
				return nil, err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE trace_targets SET state = 'active' WHERE trace_id = ? AND host = ? AND state != 'stopped'`,
				traceID, agent); err != nil {
				return nil, err
			}
		case start:
			state := "refused"
			if a.Status == wire.CommandFailed || a.Status == wire.CommandUnroutable {
				state = "failed"
			} else if a.Status == wire.CommandExpired {
				state = "expired"
			}
			if _, err := tx.ExecContext(ctx, `UPDATE traces SET state = ?, stopped = ?, stop_reason = ?
				WHERE trace_id = ? AND host = ? AND state IN ('approved', 'active')`, state, now, "agent "+a.AgentID+": "+a.Detail, traceID, agent); err != nil {
				return nil, err
			}
			if _, err := tx.ExecContext(ctx, `UPDATE trace_targets SET state = ? WHERE trace_id = ? AND host = ?`, state, traceID, agent); err != nil {
				return nil, err
			}
		}
		return map[string]any{"trace_id": traceID, "agent": a.AgentID, "command": a.CommandID, "status": statusName(a.Status), "detail": a.Detail}, nil
	})
	if err != nil {
		c.log.Error("record trace answer", "trace", traceID, "agent", a.AgentID, "err", err)
	}
	if !ok {
		c.log.Warn("agent refused a trace command", "trace", traceID, "agent", a.AgentID, "status", statusName(a.Status), "detail", a.Detail)
	}
}

func statusName(s wire.CommandStatus) string {
	switch s {
	case wire.CommandAccepted:
		return "accepted"
	case wire.CommandDone:
		return "done"
	case wire.CommandRejected:
		return "rejected"
	case wire.CommandExpired:
		return "expired"
	case wire.CommandFailed:
		return "failed"
	case wire.CommandUnroutable:
		return "unroutable"
	}
	return fmt.Sprintf("status(%d)", s)
}

// traceEvents adds a ledger leaf for every trace event of b (its place in
// the signed batch and the digest of its canonical CBOR, so the leaf
// proves the event and the batch proves the leaf's content), and records
// traces the agent ended.
func (c *Center) traceEvents(ctx context.Context, b *wire.Batch) error {
	var entries []ledger.Entry
	type ended struct {
		traceID string
		proc    capture.ProcKey
		reason  string
	}
	var stops []ended
	for i := range b.Events {
		ev := &b.Events[i]
		if ev.TraceID == "" {
			continue
		}
		sum := sha256.Sum256(b.EventCBOR(i))
		p, err := json.Marshal(map[string]any{"trace_id": ev.TraceID, "trace_seq": ev.TraceSeq, "host": b.AgentID, "batch_seq": b.Seq,
			"idx": i, "kind": ev.Kind.String(), "time": ev.Time, "pid": ev.Proc.PID, "start": ev.Proc.Start,
			"event_sha256": hex.EncodeToString(sum[:]), "batch_root": hex.EncodeToString(b.Root[:])})
		if err != nil {
			return err
		}
		entries = append(entries, ledger.Entry{Kind: ledger.KindTraceEvent, Actor: "agent:" + b.AgentID, Time: time.Unix(0, ev.Time), Payload: p})
		if ev.Kind == capture.KindTraceNote && ev.Note != nil && ev.Note.What == "stop" {
			stops = append(stops, ended{ev.TraceID, ev.Proc, ev.Note.Reason})
		}
	}
	for len(entries) > 0 {
		n := min(len(entries), 512)
		if _, err := c.Ledger.AppendBatch(entries[:n]); err != nil {
			return fmt.Errorf("ledger: trace events: %w", err)
		}
		entries = entries[n:]
	}
	for _, s := range stops {
		err := c.ops.inTx(ctx, c.auditor, AuditTraceEnded, "agent:"+b.AgentID, func(tx *sql.Tx) (any, error) {
			now := time.Now().UnixNano()
			if _, err := tx.ExecContext(ctx, `UPDATE trace_targets SET state = 'stopped' WHERE trace_id = ? AND host = ?`, s.traceID, b.AgentID); err != nil {
				return nil, err
			}
			// The trace ends when its last target does.
			if _, err := tx.ExecContext(ctx, `UPDATE traces SET state = 'stopped', stopped = ?, stop_reason = ?
				WHERE trace_id = ? AND state IN ('approved', 'active')
				AND NOT EXISTS (SELECT 1 FROM trace_targets WHERE trace_id = ? AND state IN ('pending', 'approved', 'active'))`,
				now, "agent "+b.AgentID+": "+s.reason, s.traceID, s.traceID); err != nil {
				return nil, err
			}
			return map[string]any{"trace_id": s.traceID, "host": b.AgentID, "pid": s.proc.PID, "reason": s.reason}, nil
		})
		if err != nil {
			return fmt.Errorf("record trace end: %w", err)
		}
	}
	return nil
}

// AuditTraceFollow is the ledger kind of a fan-out along a link.
const AuditTraceFollow = "trace.follow"

// errNotFollowable says why a link is not fanned out (the trace ended, the
// host already runs it); the link is marked so it is not tried again.
var errNotFollowable = errors.New("link not followable")

// followLinks fans traces out along every link whose accepting process is
// known and that was not followed yet (center.traces.auto_follow).
func (c *Center) followLinks(ctx context.Context) {
	links, err := c.SQL.UnfollowedLinks(ctx)
	if err != nil {
		c.log.Warn("links to follow", "err", err)
		return
	}
	for _, l := range links {
		if err := c.follow(ctx, l, "center:auto-follow"); err != nil && !errors.Is(err, errNotFollowable) {
			c.log.Warn("follow link", "link", l.ID, "trace", l.TraceID, "err", err)
		}
	}
}

// Follow fans the trace of link id out to the host the traced process
// connected to: the same trace_id, rooted at the process that accepted the
// connection, with the trace's collection flags and caps, signed by the
// center (agents accept a center-signed fan-out of a trace that was itself
// approved). by names who asked (an analyst, or the auto-follow policy).
func (c *Center) Follow(ctx context.Context, linkID int64, by string) error {
	all, err := c.SQL.UnfollowedLinks(ctx)
	if err != nil {
		return err
	}
	for _, l := range all {
		if l.ID == linkID {
			return c.follow(ctx, l, by)
		}
	}
	return fmt.Errorf("%w: link %d is unknown, already followed, or its accepting process is not known yet", errNotFollowable, linkID)
}

// follow fans the trace out along l, a link not followed yet whose
// accepting process is known.
func (c *Center) follow(ctx context.Context, l sqlstore.Link, by string) error {
	linkID := l.ID
	var (
		state, initiatedBy, capsJSON string
		depth, flags                 int64
	)
	if err := c.SQL.ReadOnly().QueryRowContext(ctx, `SELECT state, initiated_by, caps, depth, flags FROM traces WHERE trace_id = ?`,
		l.TraceID).Scan(&state, &initiatedBy, &capsJSON, &depth, &flags); err != nil {
		return fmt.Errorf("follow link %d: trace %s: %w", linkID, l.TraceID, err)
	}
	skip := func(why string) error {
		if err := c.SQL.MarkFollowed(ctx, l.ID, time.Time{}); err != nil {
			return err
		}
		c.log.Info("link not followed", "link", l.ID, "trace", l.TraceID, "to", l.ToHost, "why", why)
		_, _ = c.Ledger.Append(ledger.Entry{Kind: AuditTraceFollow, Actor: by, Time: time.Now(),
			Payload: mustJSON(map[string]any{"trace_id": l.TraceID, "link_id": l.ID, "to_host": l.ToHost, "followed": false, "why": why})})
		return fmt.Errorf("%w: %s", errNotFollowable, why)
	}
	if state != "active" && state != "approved" {
		return skip("trace is " + state)
	}
	var caps TraceCaps
	if err := json.Unmarshal([]byte(capsJSON), &caps); err != nil {
		return fmt.Errorf("follow link %d: caps: %w", linkID, err)
	}
	now := time.Now()
	reason := fmt.Sprintf("follow link %d: %s pid %d connected to %s (%s)", l.ID, l.FromHost, l.From.PID, l.Dst, l.ToHost)
	var already bool
	err := c.ops.inTx(ctx, c.auditor, AuditTraceFollow, by, func(tx *sql.Tx) (any, error) {
		var n int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM trace_targets WHERE trace_id = ? AND host = ?`, l.TraceID, l.ToHost).Scan(&n); err != nil {
			return nil, err
		}
		if n > 0 {
			already = true
			return map[string]any{"trace_id": l.TraceID, "link_id": l.ID, "to_host": l.ToHost, "followed": false,
				"why": "the trace already runs on " + l.ToHost}, nil
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO trace_targets (trace_id, host, pid, start, link_id, state, added) VALUES (?, ?, ?, ?, ?, 'approved', ?)`,
			l.TraceID, l.ToHost, int64(l.To.PID), int64(l.To.Start), l.ID, now.UnixNano()); err != nil {
			return nil, err
		}
		return map[string]any{"trace_id": l.TraceID, "link_id": l.ID, "from_host": l.FromHost, "from_pid": l.From.PID,
			"to_host": l.ToHost, "to_pid": l.To.PID, "to_start": l.To.Start, "dst": l.Dst.String(), "followed": true}, nil
	})
	if err != nil {
		return fmt.Errorf("follow link %d: %w", linkID, err)
	}
	if err := c.SQL.MarkFollowed(ctx, l.ID, now); err != nil {
		return err
	}
	if already {
		// One root per trace and host (the agent runs a trace id once).
		return fmt.Errorf("%w: the trace already runs on %s", errNotFollowable, l.ToHost)
	}
	c.log.Info("trace fanned out", "trace", l.TraceID, "link", l.ID, "to", l.ToHost, "pid", l.To.PID, "by", by)
	return c.RequestTrace(ctx, TraceRequest{TraceID: l.TraceID, Host: l.ToHost, PID: l.To.PID, Start: l.To.Start,
		Depth: c.cfg.Traces.FollowDepth, Flags: TraceFlags(flags), Caps: caps, InitiatedBy: initiatedBy, Reason: reason, FollowOf: uint64(l.ID)})
}
