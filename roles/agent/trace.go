package agent

// Focused traces at the agent: TraceCommands from the center are verified
// (operator signature, center stamp, CRL, age, replay) and obeyed through
// the capture source's Tracer; the running traces are kept in the uplink
// WAL's metadata so that an agent restart takes them up again with their
// numbering intact.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// metaStore is where trace state survives restarts (the uplink WAL).
type metaStore interface {
	Meta(name string) ([]byte, bool, error)
	SetMeta(name string, value []byte) error
}

// activeTrace is a running trace as persisted.
type activeTrace struct {
	TraceID   string            `json:"trace_id"`
	Root      capture.ProcKey   `json:"root"`
	Spec      capture.TraceSpec `json:"spec"`     // as started (caps from the command)
	Started   int64             `json:"started"`  // Unix ns, first start
	Deadline  int64             `json:"deadline"` // Unix ns; 0: none
	Signer    string            `json:"signer"`
	LastSeq   uint64            `json:"last_seq"` // lower bound, refreshed each second
	BytesUsed int64             `json:"bytes_used"`
}

const (
	metaActive   = "trace-active"
	metaUsedPref = "trace-used:"
)

// tracer obeys trace commands.
type tracer struct {
	log     *slog.Logger
	cfg     config.Trace
	agentID string
	checker wire.CertChecker
	src     capture.Tracer
	meta    metaStore
	store   *store.Local
	now     func() time.Time

	mu     sync.Mutex
	active map[string]*activeTrace

	started, stopped, refused atomic.Uint64
}

func newTracer(cfg config.Trace, agentID string, checker wire.CertChecker, src capture.Source, meta metaStore, st *store.Local, log *slog.Logger) *tracer {
	t := &tracer{log: log.With("component", "tracer"), cfg: cfg, agentID: agentID, checker: checker, meta: meta, store: st,
		now: time.Now, active: map[string]*activeTrace{}}
	if tr, ok := src.(capture.Tracer); ok {
		t.src = tr
	}
	return t
}

// policy is the agent's ceiling for capture.
func (t *tracer) policy() capture.TracePolicy {
	p := capture.DefaultTracePolicy()
	p.MaxEventsPerSec, p.AgentEventsPerSec = t.cfg.MaxEventsPerSec, t.cfg.AgentEventsPerSec
	p.MaxBytes, p.MaxDuration = int64(t.cfg.MaxBytes), t.cfg.MaxDuration
	p.MemSnippets, p.MaxMemSnippetBytes = t.cfg.MemSnippets, t.cfg.MemSnippetBytes
	return p
}

// handle is the Shipper's CommandHandler.
func (t *tracer) handle(_ context.Context, c wire.Command) (wire.CommandStatus, string) {
	v, err := wire.VerifyTrace(c.Payload, t.checker, wire.TraceCheck{
		Now: t.now(), MaxAge: t.cfg.MaxCommandAge, RequireApproval: true, CenterSignedForOperator: t.cfg.AcceptCenterSigned,
	})
	if err == nil && v.Command.TargetAgent != t.agentID {
		err = fmt.Errorf("%w: the command is for agent %s", wire.ErrTraceMalformed, v.Command.TargetAgent)
	}
	if err != nil {
		return t.refuse(c, v.Command, err)
	}
	switch v.Command.Action {
	case wire.TraceStart:
		return t.start(c, v)
	default:
		return t.stop(v)
	}
}

func (t *tracer) refuse(c wire.Command, cmd wire.TraceCommand, err error) (wire.CommandStatus, string) {
	t.refused.Add(1)
	t.log.Warn("trace command refused", "command", c.CommandID, "trace", cmd.TraceID, "initiated_by", cmd.InitiatedBy, "err", err)
	if errors.Is(err, wire.ErrTraceExpired) {
		return wire.CommandExpired, "refused: " + err.Error()
	}
	return wire.CommandRejected, "refused: " + err.Error()
}

func (t *tracer) start(c wire.Command, v wire.Verified) (wire.CommandStatus, string) {
	cmd := v.Command
	t.mu.Lock()
	defer t.mu.Unlock()
	// The replay guard is written before anything runs: a crash after it
	// can lose a trace, never run one twice.
	key := metaUsedPref + cmd.TraceID
	if _, used, err := t.meta.Meta(key); err != nil {
		return wire.CommandFailed, "trace state: " + err.Error()
	} else if used {
		return t.refuse(c, cmd, fmt.Errorf("%w: %s", wire.ErrTraceReplay, cmd.TraceID))
	}
	if err := t.meta.SetMeta(key, []byte(time.Unix(0, cmd.Timestamp).UTC().Format(time.RFC3339Nano))); err != nil {
		return wire.CommandFailed, "trace state: " + err.Error()
	}
	if t.src == nil {
		return wire.CommandFailed, "this agent's capture source cannot trace"
	}
	spec := capture.TraceSpec{
		TraceID: cmd.TraceID, RootPID: cmd.TargetPID, RootStart: cmd.TargetStart, Depth: int(cmd.Depth),
		CollectFiles: cmd.CollectFiles, CollectNetwork: cmd.CollectNetwork, CollectCmdlines: cmd.CollectCmdlines,
		HashExecs:       true,
		MaxEventsPerSec: int(cmd.MaxEventsPerSec), MaxBytes: int64(cmd.MaxBytes),
		MaxDuration: time.Duration(cmd.MaxDurationSecs) * time.Second,
	}
	if cmd.CollectMemory {
		spec.MemSnippetBytes = t.cfg.MemSnippetBytes
	}
	if err := t.src.StartTrace(spec); err != nil {
		t.log.Error("trace start failed", "trace", cmd.TraceID, "pid", cmd.TargetPID, "err", err)
		return wire.CommandFailed, "trace not started: " + err.Error()
	}
	now := t.now()
	at := &activeTrace{TraceID: cmd.TraceID, Root: capture.ProcKey{PID: cmd.TargetPID, Start: cmd.TargetStart}, Spec: spec,
		Started: now.UnixNano(), Signer: v.Signer}
	// The deadline is capture's, with the agent's policy applied.
	for _, st := range t.src.Traces() {
		if st.TraceID == cmd.TraceID && st.Running() && st.Spec.MaxDuration > 0 {
			at.Deadline = st.Started.Add(st.Spec.MaxDuration).UnixNano()
		}
	}
	t.active[cmd.TraceID] = at
	if err := t.saveLocked(); err != nil {
		t.log.Error("save trace state", "err", err)
	}
	t.started.Add(1)
	t.log.Info("trace started", "trace", cmd.TraceID, "pid", cmd.TargetPID, "depth", cmd.Depth, "signer", v.Signer,
		"approved_by", v.Approval.ApprovedBy, "policy", v.Approval.Policy)
	return wire.CommandDone, fmt.Sprintf("trace started on pid %d, depth %d", cmd.TargetPID, cmd.Depth)
}

func (t *tracer) stop(v wire.Verified) (wire.CommandStatus, string) {
	cmd := v.Command
	reason := "stopped by " + cmd.InitiatedBy
	if cmd.Reason != "" {
		reason += ": " + cmd.Reason
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, running := t.active[cmd.TraceID]
	if t.src != nil {
		if err := t.src.StopTrace(cmd.TraceID, reason); err != nil && !errors.Is(err, capture.ErrTraceUnknown) {
			return wire.CommandFailed, "stop: " + err.Error()
		} else if err != nil && !running {
			return wire.CommandDone, "no such trace here (already ended)"
		}
	}
	delete(t.active, cmd.TraceID)
	if err := t.saveLocked(); err != nil {
		t.log.Error("save trace state", "err", err)
	}
	t.stopped.Add(1)
	t.log.Info("trace stopped", "trace", cmd.TraceID, "by", cmd.InitiatedBy)
	return wire.CommandDone, "trace stopped"
}

func (t *tracer) saveLocked() error {
	list := make([]*activeTrace, 0, len(t.active))
	for _, a := range t.active {
		list = append(list, a)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].TraceID < list[j].TraceID })
	b, err := json.Marshal(list)
	if err != nil {
		return err
	}
	return t.meta.SetMeta(metaActive, b)
}

// refresh records each running trace's progress and forgets the ones the
// source ended (caps, lineage exited).
func (t *tracer) refresh() {
	if t.src == nil {
		return
	}
	status := map[string]capture.TraceStatus{}
	for _, s := range t.src.Traces() {
		status[s.TraceID] = s
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	changed := false
	for id, a := range t.active {
		s, ok := status[id]
		if !ok || !s.Running() {
			t.log.Info("trace ended", "trace", id, "reason", s.StopReason)
			delete(t.active, id)
			changed = true
			continue
		}
		if seq := a.Spec.SeqBase + s.Events; seq != a.LastSeq || s.Bytes != a.BytesUsed {
			a.LastSeq, a.BytesUsed = seq, s.Bytes
			changed = true
		}
	}
	if changed {
		if err := t.saveLocked(); err != nil {
			t.log.Warn("save trace state", "err", err)
		}
	}
}

// run refreshes the persisted state until ctx ends.
func (t *tracer) run(ctx context.Context) error {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			t.refresh()
		}
	}
}

// resume takes up the traces that were running when the agent stopped.
// A trace whose time ran out, or whose root is gone, ends with a note on
// events (the pipeline's queue) that says why.
func (t *tracer) resume(events chan<- capture.Event) {
	b, ok, err := t.meta.Meta(metaActive)
	if err != nil || !ok {
		if err != nil {
			t.log.Error("read trace state", "err", err)
		}
		return
	}
	var list []*activeTrace
	if err := json.Unmarshal(b, &list); err != nil {
		t.log.Error("trace state unreadable: running traces not resumed", "err", err)
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	for _, a := range list {
		seq, bytes := t.lastStored(a)
		spec := a.Spec
		spec.SeqBase, spec.BytesBase = seq, bytes
		if a.Deadline != 0 {
			spec.MaxDuration = time.Unix(0, a.Deadline).Sub(now)
		}
		var err error
		switch {
		case t.src == nil:
			err = errors.New("capture source cannot trace")
		case a.Deadline != 0 && spec.MaxDuration <= 0:
			err = errors.New(capture.StopMaxDuration + " (reached while the agent was down)")
		default:
			err = t.src.StartTrace(spec)
		}
		if err != nil {
			t.log.Warn("trace not resumed after restart", "trace", a.TraceID, "err", err)
			note := capture.Event{Time: now.UnixNano(), Kind: capture.KindTraceNote, Proc: a.Root, Source: "agent",
				TraceID: a.TraceID, TraceSeq: seq + 1,
				Note: &capture.TraceNote{What: "stop", Reason: "not resumed after agent restart: " + err.Error(), Bytes: bytes}}
			select {
			case events <- note:
			default:
				t.log.Error("trace stop note lost: event queue full", "trace", a.TraceID)
			}
			continue
		}
		a.LastSeq, a.BytesUsed = seq, bytes
		a.Spec.MaxDuration = spec.MaxDuration
		t.active[a.TraceID] = a
		t.log.Info("trace resumed after restart", "trace", a.TraceID, "root", a.Root.PID, "from_seq", seq+1)
	}
	if err := t.saveLocked(); err != nil {
		t.log.Error("save trace state", "err", err)
	}
}

// lastStored is the highest TraceSeq of a's events in the local store (at
// least the persisted one), and the bytes counted so far.
func (t *tracer) lastStored(a *activeTrace) (uint64, int64) {
	seq := a.LastSeq
	err := t.store.EventsByTime(time.Unix(0, a.Started), t.now().Add(time.Minute), func(ev capture.Event) bool {
		if ev.TraceID == a.TraceID && ev.TraceSeq > seq {
			seq = ev.TraceSeq
		}
		return true
	})
	if err != nil {
		t.log.Warn("scan stored trace events", "trace", a.TraceID, "err", err)
	}
	return seq, a.BytesUsed
}

// Traces lists the running traces as the agent knows them.
func (t *tracer) traces() []activeTrace {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]activeTrace, 0, len(t.active))
	for _, a := range t.active {
		out = append(out, *a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TraceID < out[j].TraceID })
	return out
}
