package capture

// Focused trace: the part of a trace that is the same on every platform.
// The kernel side (bpf/sensor.bpf.c) marks the records of traced processes
// with their trace's tag; traceSet turns a tagged record into a trace event:
// it applies the trace's caps, numbers the events the trace keeps, and says
// why it dropped the others. The eBPF source feeds it (trace_linux.go);
// the /proc source cannot trace at all (trace_proc.go).

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync"
	"time"
)

// Errors a Tracer returns; callers branch on them.
var (
	// ErrTraceUnsupported: the source cannot run focused traces (the /proc
	// fallback, or a platform without the eBPF sensor).
	ErrTraceUnsupported = errors.New("focused trace unsupported by this capture source")
	// ErrTraceExists: a running trace already has this id.
	ErrTraceExists = errors.New("trace already running")
	// ErrTraceUnknown: no trace, running or stopped, has this id.
	ErrTraceUnknown = errors.New("no such trace")
	// ErrTraceLimit: as many traces are running as the sensor has room for.
	ErrTraceLimit = errors.New("too many traces running")
	// ErrTraceConflict: the root process is already traced by another trace.
	ErrTraceConflict = errors.New("process already traced by another trace")
	// ErrTraceSpec: the spec is invalid (no id, no root).
	ErrTraceSpec = errors.New("invalid trace spec")
	// ErrTraceRoot: the root pid is not the process the spec names (it
	// exited, and the pid may have been reused).
	ErrTraceRoot = errors.New("root process is not the one asked for")
)

// Tracer runs focused traces. Only the eBPF source implements it for real;
// the /proc source has the methods only to refuse with ErrTraceUnsupported,
// so a caller can ask any Source without a type switch on its concrete type.
type Tracer interface {
	// StartTrace puts spec.RootPID and its existing descendants (down to
	// spec.Depth) under the trace; processes they fork later join it in
	// the kernel. Events of the trace come out of the Source's Run with
	// TraceID set.
	StartTrace(spec TraceSpec) error
	// StopTrace ends a running trace and records reason. Stopping a trace
	// that already stopped is not an error.
	StopTrace(traceID, reason string) error
	// Traces reports every running trace and the recently stopped ones.
	Traces() []TraceStatus
}

// TraceSpec is what a trace command asks for. Zero caps mean "no cap from
// the command": the policy's cap applies (TracePolicy), and the smaller of
// the two when both are set.
type TraceSpec struct {
	TraceID string
	RootPID uint32
	// RootStart, when set, is the root's start time in clock ticks since
	// boot: StartTrace refuses with ErrTraceRoot if RootPID now names
	// another process.
	RootStart uint64
	// SeqBase and BytesBase resume a trace the agent ran before a restart:
	// its events are numbered from SeqBase+1 and BytesBase already counts
	// against MaxBytes. The first note then says "resume", not "start".
	SeqBase   uint64
	BytesBase int64
	// Depth is how many generations below the root are traced: 0 the root
	// only, 1 its children too, and so on; negative means no limit.
	Depth int

	CollectFiles    bool // file open/create/rename/unlink
	CollectNetwork  bool // socket create, connect outcomes (TCP connect/accept/close are always in)
	CollectCmdlines bool // environment snapshot at exec (argv is in every exec)
	HashExecs       bool // blake3 + sha256 of every executed binary (KindExecHash)

	MaxEventsPerSec int // over it the trace is sampled: excess events dropped and counted
	MaxBytes        int64
	MaxDuration     time.Duration

	// EnvMaxBytes caps the environment kept per exec; 0 means
	// DefaultEnvMaxBytes. The sensor holds at most 16 KiB.
	EnvMaxBytes int
	// MemSnippetBytes asks for the first bytes of the executable's first
	// mapping at each exec (KindExecHash carries them). Off unless the
	// policy allows it.
	MemSnippetBytes int
}

// DefaultEnvMaxBytes is the environment kept per traced exec when the spec
// sets none.
const DefaultEnvMaxBytes = 4096

// TracePolicy is the agent's own ceiling on traces, whatever a command asks.
type TracePolicy struct {
	MaxEventsPerSec int // per trace
	MaxBytes        int64
	MaxDuration     time.Duration
	// AgentEventsPerSec caps the events of all traces together; over it
	// every trace is sampled.
	AgentEventsPerSec int
	// MemSnippets allows TraceSpec.MemSnippetBytes, up to
	// MaxMemSnippetBytes.
	MemSnippets        bool
	MaxMemSnippetBytes int
}

// DefaultTracePolicy is the policy of an agent whose configuration sets
// none: caps that keep a runaway lineage from costing the host noticeably,
// and no memory snippets.
func DefaultTracePolicy() TracePolicy {
	return TracePolicy{
		MaxEventsPerSec:    5000,
		MaxBytes:           256 << 20,
		MaxDuration:        24 * time.Hour,
		AgentEventsPerSec:  20000,
		MaxMemSnippetBytes: 256,
	}
}

// Stop reasons recorded by the source itself. StopTrace records the
// caller's reason.
const (
	StopMaxBytes      = "cap:max_bytes"
	StopMaxDuration   = "cap:max_duration"
	StopLineageExited = "lineage_exited" // no traced process is left
	StopSourceClosed  = "source_closed"
)

// Drop causes counted per trace (TraceStatus.Dropped, TraceNote.Reason).
const (
	DropMaxEventsPerSec   = "cap:max_events_per_sec"
	DropAgentEventsPerSec = "cap:agent_events_per_sec"
	DropKernelValve       = "cap:kernel_valve" // the sensor's coarse per-second valve
	DropBackpressure      = "backpressure"     // the consumer's channel was full
)

// TraceStatus is a trace as Traces reports it.
type TraceStatus struct {
	TraceID string
	Spec    TraceSpec // with the policy's caps applied
	Root    ProcKey
	Started time.Time
	Stopped time.Time // zero while running
	// StopReason says why it stopped: one of the Stop* constants or the
	// reason StopTrace was given.
	StopReason string
	Events     uint64 // emitted, notes included
	Bytes      int64  // counted against MaxBytes
	Dropped    map[string]uint64
	Pids       int // processes the kernel traces for it (refreshed about once a second)
}

// Running reports whether the trace has not stopped.
func (s TraceStatus) Running() bool { return s.Stopped.IsZero() }

// effectiveSpec applies policy p to spec: each cap is the smaller of the
// two where both are set.
func effectiveSpec(spec TraceSpec, p TracePolicy) TraceSpec {
	spec.MaxEventsPerSec = int(minCap(int64(spec.MaxEventsPerSec), int64(p.MaxEventsPerSec)))
	spec.MaxBytes = minCap(spec.MaxBytes, p.MaxBytes)
	spec.MaxDuration = time.Duration(minCap(int64(spec.MaxDuration), int64(p.MaxDuration)))
	if spec.EnvMaxBytes <= 0 {
		spec.EnvMaxBytes = DefaultEnvMaxBytes
	}
	if spec.EnvMaxBytes > envCapBytes {
		spec.EnvMaxBytes = envCapBytes
	}
	if !p.MemSnippets || spec.MemSnippetBytes <= 0 {
		spec.MemSnippetBytes = 0 // off: 0 here is not "no cap"
	} else {
		spec.MemSnippetBytes = int(minCap(int64(spec.MemSnippetBytes), int64(p.MaxMemSnippetBytes)))
	}
	return spec
}

// envCapBytes is ENV_CAP of bpf/sensor.h.
const envCapBytes = 16384

// minCap is the smaller of two caps where 0 (or less) means none.
func minCap(a, b int64) int64 {
	switch {
	case a <= 0:
		return max(b, 0)
	case b <= 0:
		return a
	}
	return min(a, b)
}

// tokenBucket admits rate events per second with a burst of one second's
// worth. A zero rate admits everything.
type tokenBucket struct {
	rate   float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate int, now time.Time) tokenBucket {
	return tokenBucket{rate: float64(rate), tokens: float64(rate), last: now}
}

func (b *tokenBucket) take(now time.Time) bool {
	if b.rate <= 0 {
		return true
	}
	if dt := now.Sub(b.last); dt > 0 {
		b.tokens = math.Min(b.rate, b.tokens+dt.Seconds()*b.rate)
		b.last = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	return false
}

// traceState is one trace. Guarded by traceSet.mu.
type traceState struct {
	spec     TraceSpec
	tag      uint32
	root     ProcKey
	started  time.Time
	deadline time.Time // zero: no duration cap

	stopped time.Time
	reason  string

	seq    uint64
	events uint64
	bytes  int64
	bucket tokenBucket
	pids   int
	// emptyCounts is how many counts in a row found none of its processes
	// in the kernel map. The trace ends on the second: the ring may still
	// hold records of a short-lived lineage that ended just before the
	// first, and they must be delivered as the trace's before its stop.
	emptyCounts int

	dropped map[string]uint64
	// Drops since the last notes, per cause: a "sampled" note per cause
	// goes out before the next event the trace keeps, so a reader sees
	// where the gap is and why.
	sampled       map[string]uint64
	kernelDropped uint64 // last value read from the kernel valve

	// kernelDone: the kernel no longer traces for it (slot cleared, pids
	// swept); until then its slot is not reused.
	kernelDone bool
}

func (t *traceState) active() bool { return t.stopped.IsZero() }

func (t *traceState) drop(cause string, n uint64) {
	t.dropped[cause] += n
	t.sampled[cause] += n
}

func (t *traceState) status() TraceStatus {
	d := make(map[string]uint64, len(t.dropped))
	for k, v := range t.dropped {
		d[k] = v
	}
	return TraceStatus{
		TraceID: t.spec.TraceID, Spec: t.spec, Root: t.root, Started: t.started, Stopped: t.stopped,
		StopReason: t.reason, Events: t.events, Bytes: t.bytes, Dropped: d, Pids: t.pids,
	}
}

// verdict is what becomes of an event of a traced process.
type verdict uint8

const (
	verdictTrace    verdict = iota // emitted as a trace event
	verdictBaseline                // not a trace event; the caller sends it as a baseline one
	verdictDropped                 // dropped: trace-only and not kept by the trace
)

// maxStoppedTraces bounds how many stopped traces Traces keeps reporting.
const maxStoppedTraces = 64

// traceSet holds the traces of one source and decides, under mu, the fate
// and number of each of their events. Numbering and delivery happen under
// the same lock, so the order of TraceSeq is the order on the channel.
type traceSet struct {
	mu     sync.Mutex
	now    func() time.Time
	policy TracePolicy
	agent  tokenBucket
	byID   map[string]*traceState // the latest trace of each id
	byTag  map[uint32]*traceState // running and recently stopped
	order  []*traceState          // stopped, oldest first, for trimming
	// slots are the kernel's trace_cfgs slots (tag % maxTraces) in use
	// by a trace whose kernel side is not cleaned up yet.
	slots   [maxTraces]bool
	lastTag uint32

	// send delivers without blocking and reports whether the consumer
	// took the event; nil while the source is not running, when events
	// wait in pending (notes only: records are read by Run).
	send    func(Event) bool
	pending []pendingEvent
}

// maxTraces is MAX_TRACES of bpf/sensor.h.
const maxTraces = 64

func newTraceSet(now func() time.Time) *traceSet {
	if now == nil {
		now = time.Now
	}
	ts := &traceSet{now: now, byID: map[string]*traceState{}, byTag: map[uint32]*traceState{}}
	ts.setPolicy(DefaultTracePolicy())
	return ts
}

func (ts *traceSet) setPolicy(p TracePolicy) {
	ts.policy = p
	ts.agent = newTokenBucket(p.AgentEventsPerSec, ts.now())
}

// add registers a new trace and picks its tag. Called with mu held.
func (ts *traceSet) add(spec TraceSpec, root ProcKey) (*traceState, error) {
	if spec.TraceID == "" {
		return nil, fmt.Errorf("trace without an id: %w", ErrTraceSpec)
	}
	if spec.RootPID == 0 {
		return nil, fmt.Errorf("trace %s without a root pid: %w", spec.TraceID, ErrTraceSpec)
	}
	if t, ok := ts.byID[spec.TraceID]; ok && t.active() {
		return nil, fmt.Errorf("trace %s: %w", spec.TraceID, ErrTraceExists)
	}
	// A slot free in the kernel; tags grow, so a record or a map entry of
	// an earlier trace can never carry the new trace's tag.
	tag := uint32(0)
	for i := uint32(1); i <= maxTraces; i++ {
		cand := ts.lastTag + i
		if cand == 0 {
			continue
		}
		if !ts.slots[cand%maxTraces] {
			tag = cand
			break
		}
	}
	if tag == 0 {
		return nil, fmt.Errorf("trace %s: %d running: %w", spec.TraceID, maxTraces, ErrTraceLimit)
	}
	ts.lastTag = tag
	ts.slots[tag%maxTraces] = true
	now := ts.now()
	eff := effectiveSpec(spec, ts.policy)
	t := &traceState{
		spec: eff, tag: tag, root: root, started: now, seq: spec.SeqBase, bytes: spec.BytesBase,
		bucket:  newTokenBucket(eff.MaxEventsPerSec, now),
		dropped: map[string]uint64{},
		sampled: map[string]uint64{},
	}
	if eff.MaxDuration > 0 {
		t.deadline = now.Add(eff.MaxDuration)
	}
	ts.byID[spec.TraceID] = t
	ts.byTag[tag] = t
	return t, nil
}

// forget undoes add for a trace whose kernel side could not be set up.
// Called with mu held.
func (ts *traceSet) forget(t *traceState) {
	delete(ts.byTag, t.tag)
	if ts.byID[t.spec.TraceID] == t {
		delete(ts.byID, t.spec.TraceID)
	}
	ts.slots[t.tag%maxTraces] = false
}

// kernelReleased frees the trace's kernel slot for reuse.
func (ts *traceSet) kernelReleased(t *traceState) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	t.kernelDone = true
	ts.slots[t.tag%maxTraces] = false
}

// deliver decides what becomes of ev, an event of the process the kernel
// marked with tag; size is what it counts against MaxBytes. focused marks
// events that exist only for traces (file, socket, hash records): they are
// dropped rather than sent as baseline events when the trace does not keep
// them. It returns the trace that stopped on a cap because of this call,
// for the caller to release in the kernel. Called with mu held.
func (ts *traceSet) deliver(tag uint32, ev *Event, size int64, focused bool) (verdict, *traceState) {
	now := ts.now()
	t := ts.byTag[tag]
	var stopped *traceState
	if t != nil && t.active() && !t.deadline.IsZero() && !now.Before(t.deadline) {
		ts.stopLocked(t, StopMaxDuration, now)
		stopped = t
	}
	if t != nil && t.active() && t.spec.MaxBytes > 0 && t.bytes+size > t.spec.MaxBytes {
		ts.stopLocked(t, StopMaxBytes, now)
		stopped = t
	}
	if t == nil || !t.active() {
		return fallback(ev, focused), stopped
	}
	if !t.bucket.take(now) {
		t.drop(DropMaxEventsPerSec, 1)
		return fallback(ev, focused), stopped
	}
	if !ts.agent.take(now) {
		t.drop(DropAgentEventsPerSec, 1)
		return fallback(ev, focused), stopped
	}
	if len(t.sampled) > 0 {
		causes := make([]string, 0, len(t.sampled))
		for c := range t.sampled {
			causes = append(causes, c)
		}
		sort.Strings(causes)
		for _, c := range causes {
			ts.noteLocked(t, &TraceNote{What: "sampled", Reason: c, Dropped: t.sampled[c]}, now)
		}
	}
	if !ts.emitLocked(t, ev, size) {
		return verdictDropped, stopped
	}
	return verdictTrace, stopped
}

// fallback is the fate of an event its trace does not keep: the baseline
// still reports what the passive sensor reports for every process, without
// the trace-only parts.
func fallback(ev *Event, focused bool) verdict {
	if focused {
		return verdictDropped
	}
	if ev.Exec != nil {
		ev.Exec.Env = nil
		ev.Exec.EnvTruncated = false
	}
	return verdictBaseline
}

// emitLocked numbers ev as the trace's next event and sends it. A send the
// consumer refuses takes its number back, so the numbers of the events that
// went out have no gaps.
func (ts *traceSet) emitLocked(t *traceState, ev *Event, size int64) bool {
	if ts.send == nil {
		// Not running yet (a start or stop note): numbered and sent
		// when Run starts, before anything else of the trace.
		ts.pending = append(ts.pending, pendingEvent{t, *ev, size})
		return true
	}
	t.seq++
	ev.TraceID = t.spec.TraceID
	ev.TraceSeq = t.seq
	if !ts.send(*ev) {
		t.seq--
		ev.TraceID, ev.TraceSeq = "", 0
		t.drop(DropBackpressure, 1)
		return false
	}
	t.events++
	t.bytes += size
	return true
}

// noteLocked emits a note of trace t. Notes are not held to the caps: they
// are how a reader learns what the caps did.
func (ts *traceSet) noteLocked(t *traceState, n *TraceNote, now time.Time) {
	if n.What == "stop" {
		n.Events = t.events + 1
		n.Bytes = t.bytes
	}
	ev := Event{Time: now.UnixNano(), Kind: KindTraceNote, Proc: t.root, Source: "ebpf", Note: n}
	if ts.emitLocked(t, &ev, 0) && n.What == "sampled" {
		delete(t.sampled, n.Reason)
	}
}

// stopLocked marks t stopped for reason and emits its last note.
func (ts *traceSet) stopLocked(t *traceState, reason string, now time.Time) {
	if !t.active() {
		return
	}
	var total uint64
	for _, n := range t.dropped {
		total += n
	}
	ts.noteLocked(t, &TraceNote{What: "stop", Reason: reason, Dropped: total}, now)
	t.stopped = now
	t.reason = reason
	ts.order = append(ts.order, t)
	for len(ts.order) > maxStoppedTraces {
		old := ts.order[0]
		ts.order = ts.order[1:]
		if ts.byTag[old.tag] == old && old.kernelDone {
			delete(ts.byTag, old.tag)
		}
		if ts.byID[old.spec.TraceID] == old {
			delete(ts.byID, old.spec.TraceID)
		}
	}
}

// expired stops the running traces past their MaxDuration and returns
// them. Called with mu held.
func (ts *traceSet) expired() []*traceState {
	now := ts.now()
	var out []*traceState
	for _, t := range ts.byTag {
		if t.active() && !t.deadline.IsZero() && !now.Before(t.deadline) {
			ts.stopLocked(t, StopMaxDuration, now)
			out = append(out, t)
		}
	}
	return out
}

type pendingEvent struct {
	t    *traceState
	ev   Event
	size int64
}

// running installs the delivery function (nil when Run ends) and delivers
// what waited for it.
func (ts *traceSet) running(send func(Event) bool) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.send = send
	if send == nil {
		return
	}
	pending := ts.pending
	ts.pending = nil
	for i := range pending {
		ts.emitLocked(pending[i].t, &pending[i].ev, pending[i].size)
	}
}

func (ts *traceSet) statuses() []TraceStatus {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	out := make([]TraceStatus, 0, len(ts.byID))
	for _, t := range ts.byID {
		out = append(out, t.status())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Started.Before(out[j].Started) })
	return out
}
