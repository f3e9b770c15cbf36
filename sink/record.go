package sink

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// Kinds of record a sink carries.
const (
	KindAlert      = "alert"
	KindTrace      = "trace"       // a trace's state changed (summary)
	KindTraceEvent = "trace_event" // one event of a focused trace
)

// Record is one document for a sink: already masked. Its fields are set
// only by AlertRecord, TraceRecord and TraceEventRecord, which mask, so a
// sink cannot be handed command-line arguments or an environment.
type Record struct {
	kind     string
	id       string // stable: receivers that dedup (Elastic _id, Kafka key) see a resend as the same
	time     time.Time
	host     string // the observed host (agent id)
	severity string // alerts; "" otherwise
	doc      json.RawMessage
}

func (r Record) Kind() string     { return r.kind }
func (r Record) ID() string       { return r.id }
func (r Record) Time() time.Time  { return r.time }
func (r Record) Host() string     { return r.host }
func (r Record) Severity() string { return r.severity }

// JSON is the record's document (masked).
func (r Record) JSON() json.RawMessage { return r.doc }

// Alert is an alert as the center records it (the alerts table).
type Alert struct {
	ID        int64
	RuleID    string
	Severity  string
	Technique string
	Host      string
	PID       uint32
	Start     uint64
	Time      int64 // first match, Unix ns
	LastTime  int64
	Count     int64
	Context   string // JSON object from the rule; masked here
	State     string
	TraceID   string
}

// AlertRecord masks an alert for export: command-line-like keys of its
// context are replaced wherever they occur.
func AlertRecord(a Alert) Record {
	doc := map[string]any{
		"type": KindAlert, "alert_id": a.ID, "rule_id": a.RuleID, "severity": a.Severity, "technique": a.Technique,
		"host": a.Host, "pid": a.PID, "start": a.Start, "time": nsRFC3339(a.Time), "last_time": nsRFC3339(a.LastTime),
		"count": a.Count, "context": privacy.Context(a.Context), "state": a.State,
	}
	if a.TraceID != "" {
		doc["trace_id"] = a.TraceID
	}
	return Record{kind: KindAlert, id: fmt.Sprintf("alert-%d", a.ID), time: time.Unix(0, a.Time).UTC(), host: a.Host,
		severity: a.Severity, doc: mustJSON(doc)}
}

// Trace is a trace's summary (the traces table).
type Trace struct {
	TraceID     string
	Host        string
	PID         uint32
	Start       uint64
	Depth       int
	State       string
	Created     int64
	Started     int64
	Stopped     int64
	InitiatedBy string
	StopReason  string
	AlertID     int64
}

// TraceRecord is a trace's state for export. The operator's reason is not
// exported (it may quote what the analyst saw); the stop reason is a cap
// or an operator's words, so it is left out too, only whether there is one.
func TraceRecord(t Trace) Record {
	doc := map[string]any{
		"type": KindTrace, "trace_id": t.TraceID, "host": t.Host, "pid": t.PID, "start": t.Start, "depth": t.Depth,
		"state": t.State, "created": nsRFC3339(t.Created), "initiated_by": t.InitiatedBy,
	}
	if t.Started != 0 {
		doc["started"] = nsRFC3339(t.Started)
	}
	if t.Stopped != 0 {
		doc["stopped"] = nsRFC3339(t.Stopped)
	}
	if t.AlertID != 0 {
		doc["alert_id"] = t.AlertID
	}
	when := t.Created
	if t.Stopped != 0 {
		when = t.Stopped
	} else if t.Started != 0 {
		when = t.Started
	}
	return Record{kind: KindTrace, id: "trace-" + t.TraceID + "-" + t.State, time: time.Unix(0, when).UTC(), host: t.Host,
		doc: mustJSON(doc)}
}

// TraceEventRecord masks one trace event for export: argv becomes
// privacy.Argv's masked form (argv[0] and a count), and a memory snippet
// is reduced to where it was and how long (its bytes may hold secrets).
// The environment is never part of a TraceEvent.
func TraceEventRecord(e sqlstore.TraceEvent) Record {
	e.Cmdline = ""
	if len(e.Argv) > 0 {
		e.Cmdline = privacy.Argv(e.Argv, false)
	}
	argc := len(e.Argv)
	e.Argv = nil
	var mem map[string]any
	if e.Mem != nil {
		mem = map[string]any{"addr": e.Mem.Addr, "bytes": len(e.Mem.Data)}
		e.Mem = nil
	}
	b, err := json.Marshal(e)
	if err != nil {
		b = []byte(`{}`)
	}
	var doc map[string]any
	if err := json.Unmarshal(b, &doc); err != nil {
		doc = map[string]any{}
	}
	doc["type"] = KindTraceEvent
	doc["time"] = nsRFC3339(e.Time)
	if argc > 0 {
		doc["argc"], doc["masked"] = argc, argc > 1
	}
	if mem != nil {
		doc["mem"] = mem
	}
	return Record{kind: KindTraceEvent, id: fmt.Sprintf("ev-%s-%s-%d-%d", e.TraceID, e.Host, e.BatchSeq, e.Idx),
		time: time.Unix(0, e.Time).UTC(), host: e.Host, doc: mustJSON(doc)}
}

func nsRFC3339(ns int64) string {
	if ns == 0 {
		return ""
	}
	return time.Unix(0, ns).UTC().Format(time.RFC3339Nano)
}

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		return json.RawMessage(`{}`)
	}
	return b
}
