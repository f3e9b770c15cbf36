package loadgen

// Simulated agents: each is the real store.Local and agent.Shipper (its own
// certificate, Pebble store, uplink WAL and QUIC/mTLS connection to a
// level-2 proxy), fed by a churn model instead of a kernel sensor, and
// obeying trace commands as roles/agent does: the signed TraceCommand and
// the center's stamp are verified against the CA before a trace starts.

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/roles/agent"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// simAgent is one simulated host.
type simAgent struct {
	name   string
	st     *store.Local
	ship   *agent.Shipper
	cancel context.CancelFunc
	done   chan error
	inject chan injected
	churn  *churn
	period time.Duration // how often it stores what its "sensor" saw (batch_max_ms)
	trust  *pki.Verifier // the CA and CRL trace commands are checked against
	big    bigHost       // its many live processes, if it is the big host

	mu     sync.Mutex
	traces map[string]*simTrace // running traces by id

	emitted  atomic.Uint64 // events appended to the store
	errs     atomic.Uint64
	started  atomic.Uint64 // traces started (verified commands)
	refused  atomic.Uint64 // trace commands refused
	stopping atomic.Bool
}

// simTrace is a trace running on a simulated agent.
type simTrace struct {
	id       string
	root     capture.ProcKey
	deadline time.Time
	seq      uint64 // TraceSeq of the last event emitted
}

// injected is an event the generator has an agent store out of band (an
// exec from /tmp, a trace event): the agent's own goroutine builds and
// stores it, kicks the shipper, then reports it through stored.
type injected struct {
	make   func(a *simAgent, now int64) (capture.Event, bool)
	stored func(ev capture.Event)
}

// newSimAgent starts a simulated agent; bigN > 0 gives it that many more
// live processes (bigHost).
func newSimAgent(t *tree, name, parent string, batchMS int, seed uint64, bigN int) (*simAgent, error) {
	ac := config.Default().Agent
	ac.ID = name
	ac.DataDir = filepath.Join(t.dir, "agents", name)
	ac.ProxyHint = parent
	if batchMS > 0 {
		ac.Stream.BatchMaxMS = batchMS
	}
	var err error
	if ac.TLS, err = t.issue(pki.RoleAgent, name); err != nil {
		return nil, err
	}
	trust, err := pki.LoadVerifier(ac.TLS.CA, filepath.Join(ac.DataDir, "crl.pem"))
	if err != nil {
		return nil, err
	}
	st, err := store.OpenLocal(filepath.Join(ac.DataDir, "store"), store.LocalOptions{}, t.log)
	if err != nil {
		return nil, err
	}
	a := &simAgent{name: name, st: st, inject: make(chan injected, 64), churn: newChurn(seed), trust: trust,
		period: time.Duration(ac.Stream.BatchMaxMS) * time.Millisecond, traces: map[string]*simTrace{}}
	a.ship, err = agent.NewShipper(ac, st, a.command, t.log)
	if err != nil {
		st.Close()
		return nil, err
	}
	// What a starting agent ships first: the processes already running.
	now := time.Now().UnixNano()
	if !a.append(seedEvents(now)) {
		a.stop()
		return nil, fmt.Errorf("%s: store the seeded processes", name)
	}
	var extra []capture.Event
	if bigN > 0 {
		a.big = newBigHost(a.churn, bigN, now)
		extra = a.big.events
	}
	for len(extra) > 0 {
		n := min(len(extra), ac.Stream.BatchMaxEvents)
		if !a.append(extra[:n]) {
			a.stop()
			return nil, fmt.Errorf("%s: store the seeded processes", name)
		}
		extra = extra[n:]
	}
	ctx, cancel := context.WithCancel(context.Background())
	a.cancel, a.done = cancel, make(chan error, 1)
	go func() { a.done <- a.ship.Run(ctx) }()
	a.ship.Kick()
	return a, nil
}

// stop ends the shipper (it cuts what was stored before it returns) and
// closes the store.
func (a *simAgent) stop() error {
	if a == nil || a.stopping.Swap(true) {
		return nil
	}
	var err error
	if a.cancel != nil {
		a.cancel()
		select {
		case err = <-a.done:
		case <-time.After(30 * time.Second):
			err = fmt.Errorf("%s: shipper did not stop within 30s", a.name)
		}
	}
	a.st.Close()
	return err
}

// command is the shipper's CommandHandler: a trace command is verified as
// roles/agent's tracer verifies it (the requester's signature, the
// center's stamp, the CA and CRL, its age), then started or stopped.
func (a *simAgent) command(_ context.Context, c wire.Command) (wire.CommandStatus, string) {
	v, err := wire.VerifyTrace(c.Payload, a.trust, wire.TraceCheck{Now: time.Now(), RequireApproval: true})
	if err == nil && v.Command.TargetAgent != a.name {
		err = fmt.Errorf("%w: the command is for agent %s", wire.ErrTraceMalformed, v.Command.TargetAgent)
	}
	if err != nil {
		a.refused.Add(1)
		return wire.CommandRejected, "refused: " + err.Error()
	}
	cmd := v.Command
	root := capture.ProcKey{PID: cmd.TargetPID, Start: cmd.TargetStart}
	if cmd.Action == wire.TraceStart {
		dur := time.Duration(cmd.MaxDurationSecs) * time.Second
		if dur <= 0 {
			dur = time.Hour
		}
		a.mu.Lock()
		if _, ok := a.traces[cmd.TraceID]; ok {
			a.mu.Unlock()
			a.refused.Add(1)
			return wire.CommandRejected, "refused: trace " + cmd.TraceID + " already runs here"
		}
		a.traces[cmd.TraceID] = &simTrace{id: cmd.TraceID, root: root, deadline: time.Now().Add(dur)}
		a.mu.Unlock()
		a.started.Add(1)
		a.note(cmd.TraceID, "start", "")
		return wire.CommandDone, fmt.Sprintf("tracing pid %d, depth %d", cmd.TargetPID, cmd.Depth)
	}
	a.end(cmd.TraceID, "stopped by "+v.Signer)
	return wire.CommandDone, "stopped"
}

// note has the agent store a trace note (start, stop) of a running trace.
func (a *simAgent) note(traceID, what, reason string) {
	in := injected{make: func(a *simAgent, now int64) (capture.Event, bool) {
		a.mu.Lock()
		defer a.mu.Unlock()
		t, ok := a.traces[traceID]
		if !ok {
			return capture.Event{}, false
		}
		t.seq++
		ev := capture.Event{Time: now, Kind: capture.KindTraceNote, Proc: t.root, Source: "ebpf", TraceID: t.id, TraceSeq: t.seq,
			Note: &capture.TraceNote{What: what, Reason: reason}}
		if what == "stop" {
			delete(a.traces, traceID)
		}
		return ev, true
	}, stored: func(capture.Event) {}}
	select {
	case a.inject <- in:
	case <-time.After(time.Second): // the agent is stuck: the note is lost, the accounting says so
	}
}

// end stops a running trace: its last note says why.
func (a *simAgent) end(traceID, reason string) {
	a.mu.Lock()
	_, ok := a.traces[traceID]
	a.mu.Unlock()
	if ok {
		a.note(traceID, "stop", reason)
	}
}

// traceOf returns the id of a running trace, if any.
func (a *simAgent) traceOf() (string, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for id := range a.traces {
		return id, true
	}
	return "", false
}

// emit stores churn at rate events per second until ctx ends, one store
// append (then a kick of the shipper) every period, as roles/agent's
// pipeline flushes its buffer every batch_max_ms; and whatever the
// generator injects (stored and kicked at once). Traces past their
// duration end with a stop note.
func (a *simAgent) emit(ctx context.Context, rate float64, phase time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(phase):
	}
	t := time.NewTicker(a.period)
	defer t.Stop()
	var budget float64
	var buf []capture.Event
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-a.inject:
			// Built here: the churn belongs to this goroutine.
			if ev, ok := in.make(a, time.Now().UnixNano()); ok && a.append([]capture.Event{ev}) {
				in.stored(ev)
				a.ship.Kick()
			}
		case <-t.C:
			budget += rate * a.period.Seconds()
			now := time.Now().UnixNano()
			buf = buf[:0]
			for float64(len(buf)) < budget {
				buf = a.churn.step(now+int64(len(buf)), buf)
			}
			budget -= float64(len(buf))
			if a.append(buf) {
				a.ship.Kick()
			}
			a.expire()
		}
	}
}

// expire ends the traces past their duration cap.
func (a *simAgent) expire() {
	now := time.Now()
	var due []string
	a.mu.Lock()
	for id, t := range a.traces {
		if now.After(t.deadline) {
			due = append(due, id)
		}
	}
	a.mu.Unlock()
	for _, id := range due {
		// Not through inject: this is the agent's own goroutine.
		a.mu.Lock()
		t, ok := a.traces[id]
		if ok {
			t.seq++
			ev := capture.Event{Time: now.UnixNano(), Kind: capture.KindTraceNote, Proc: t.root, Source: "ebpf", TraceID: id, TraceSeq: t.seq,
				Note: &capture.TraceNote{What: "stop", Reason: "max duration"}}
			delete(a.traces, id)
			a.mu.Unlock()
			if a.append([]capture.Event{ev}) {
				a.ship.Kick()
			}
			continue
		}
		a.mu.Unlock()
	}
}

func (a *simAgent) append(evs []capture.Event) bool {
	if len(evs) == 0 {
		return false
	}
	if _, _, err := a.st.Append(evs); err != nil {
		a.errs.Add(1)
		return false
	}
	a.emitted.Add(uint64(len(evs)))
	return true
}
