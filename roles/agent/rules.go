package agent

// Rules at the agent: the rules marked runs_on agent of the built-in pack,
// of the configured packs (verified against the trusted keys, as at the
// center) and of the packs the center pushes down the tree (rulepush.go)
// evaluate the agent's own events in a small in-memory window, so a local
// match alerts without waiting for the center. An alert is an event of
// kind alert: stored locally like any other and shipped on the alert lane;
// the center records it (deduplicated with its own engine's alerts) and
// applies its trace policy.

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// agentRules feeds the engine off the pipeline's goroutine: a slow pass
// never holds capture back; what does not fit in the queue is counted.
type agentRules struct {
	eng     *rules.AgentEngine
	feed    chan []capture.Event
	dropped atomic.Uint64 // events not fed because the queue was full
	alerts  atomic.Uint64
	log     *slog.Logger

	// Packs pushed by the center (rulepush.go).
	dataDir string
	local   []*rules.Pack       // the built-in and configured packs
	trusted []ed25519.PublicKey // agent.rules.trusted_keys
	current []pushedPack        // pushed packs running (run goroutine)
	pushMu  sync.Mutex
	pending *wire.RulePacks // newest set waiting for the run goroutine
	pushed  chan struct{}
	seq     atomic.Uint64 // of the set running
	pushedN atomic.Uint64 // pushed packs running
	refused atomic.Uint64 // pushed packs refused
}

// ruleWindowBytes bounds the agent's rule window (SQLite in memory): the
// agent's whole budget is 64 MiB.
const ruleWindowBytes = 8 << 20

func (a *Agent) startRules(ctx context.Context, host string, events chan<- capture.Event) (*agentRules, error) {
	rc := a.cfg.Rules
	local, err := rules.LoadSet(rc.Default, rc.Packs, rc.TrustedKeys, rc.AllowUnsigned)
	if err != nil {
		return nil, err
	}
	r := &agentRules{feed: make(chan []capture.Event, 64), log: a.log, dataDir: a.cfg.DataDir, local: local, pushed: make(chan struct{}, 1)}
	if len(rc.TrustedKeys) > 0 {
		if r.trusted, err = rules.LoadPublicKeys(rc.TrustedKeys...); err != nil {
			return nil, fmt.Errorf("rules: trusted keys: %w", err)
		}
	}
	r.loadPushed()
	packs, kept := r.compose(r.current)
	r.current = kept
	r.pushedN.Store(uint64(len(kept)))
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
	if a.ship != nil {
		// Set before the uplink runs: no frame arrives before this.
		a.ship.onRulePacks = r.offerPush
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
		case <-r.pushed:
			if set := r.takePush(); set != nil {
				r.applyPush(ctx, set)
			}
		}
	}
}
