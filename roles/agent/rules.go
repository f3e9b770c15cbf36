package agent

// Rules at the agent: the rules marked runs_on agent of the built-in pack
// and of the configured packs (verified against the trusted keys, as at
// the center) evaluate the agent's own events in a small in-memory window, so a local
// match alerts without waiting for the center. An alert is an event of
// kind alert: stored locally like any other and shipped on the alert lane;
// the center records it (deduplicated with its own engine's alerts) and
// applies its trace policy.

import (
	"context"
	"encoding/json"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/rules"
)

// agentRules feeds the engine off the pipeline's goroutine: a slow pass
// never holds capture back; what does not fit in the queue is counted.
type agentRules struct {
	eng     *rules.AgentEngine
	feed    chan []capture.Event
	dropped atomic.Uint64 // events not fed because the queue was full
	alerts  atomic.Uint64
}

// ruleWindowBytes bounds the agent's rule window (SQLite in memory): the
// agent's whole budget is 64 MiB.
const ruleWindowBytes = 8 << 20

func (a *Agent) startRules(ctx context.Context, host string, events chan<- capture.Event) (*agentRules, error) {
	rc := a.cfg.Rules
	packs, err := rules.LoadSet(rc.Default, rc.Packs, rc.TrustedKeys, rc.AllowUnsigned)
	if err != nil {
		return nil, err
	}
	r := &agentRules{feed: make(chan []capture.Event, 64)}
	r.eng, err = rules.NewAgentEngine(ctx, rules.AgentConfig{Host: host, MaxBytes: ruleWindowBytes}, func(al rules.Alert) {
		r.alerts.Add(1)
		a.log.Warn("alert at the agent", "rule", al.RuleID, "severity", al.Severity, "pid", al.Process.PID, "start", al.Process.Start)
		ctxJSON, _ := json.Marshal(al.Context)
		ev := capture.Event{Time: al.Time, Kind: capture.KindAlert, Proc: capture.ProcKey{PID: al.Process.PID, Start: al.Process.Start},
			Source: "rules", Alert: &capture.RuleAlert{RuleID: al.RuleID, Pack: al.Pack, Title: al.Title, Severity: string(al.Severity),
				Technique: al.Technique, Context: string(ctxJSON)}}
		if ev.Time == 0 {
			ev.Time = time.Now().UnixNano()
		}
		select {
		case events <- ev:
		case <-ctx.Done():
		}
	}, a.log, packs...)
	if err != nil {
		return nil, err
	}
	return r, nil
}

// offer hands a copy of stored events to the rules without blocking.
func (r *agentRules) offer(evs []capture.Event) {
	var keep []capture.Event
	for _, e := range evs {
		switch e.Kind {
		case capture.KindAlert, capture.KindTraceNote, capture.KindExecHash:
		default:
			keep = append(keep, e)
		}
	}
	if len(keep) == 0 {
		return
	}
	select {
	case r.feed <- keep:
	default:
		r.dropped.Add(uint64(len(keep)))
	}
}

// run feeds the window and evaluates until ctx ends.
func (r *agentRules) run(ctx context.Context, log interface{ Warn(string, ...any) }) error {
	done := make(chan error, 1)
	go func() { done <- r.eng.Run(ctx) }()
	for {
		select {
		case <-ctx.Done():
			<-done
			return r.eng.Close()
		case evs := <-r.feed:
			if err := r.eng.Feed(evs); err != nil {
				log.Warn("rule window", "err", err)
			}
		}
	}
}
