package loadgen

// What is measured under the load, all from outside the center's process:
// through its HTTPS API as an operator (trace requests, lineage queries)
// and its SQL store opened read-only (alerts, and afterwards the times the
// center recorded itself).

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	_ "modernc.org/sqlite" // the center's SQL store, read-only

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/apiclient"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// openSQL opens the center's SQL store read-only (WAL mode: readers in
// another process do not block the center's writer).
func openSQL(path string) (*sql.DB, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "query_only(1)")
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	db, err := sql.Open("sqlite", u.String())
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(4)
	return db, nil
}

// operator is the generator's analyst at the center's API: mutual TLS with
// an operator certificate of the run's CA, which also signs trace commands.
type operator struct {
	*apiclient.Client
	name string
}

func newOperator(name, certFile, keyFile, caFile, apiAddr string) (*operator, error) {
	cl, err := apiclient.New("https://"+apiAddr, certFile, keyFile, caFile, 2*time.Minute)
	if err != nil {
		return nil, err
	}
	return &operator{Client: cl, name: name}, nil
}

// startTrace signs a TraceCommand with the operator's key (as `daemoneye
// trace start` does) and asks the center for it; the center stamps it and
// sends it down the tree to the agent, which verifies both signatures.
func (o *operator) startTrace(ctx context.Context, id, host string, root capture.ProcKey, dur time.Duration) error {
	cmd := wire.TraceCommand{TraceID: id, Action: wire.TraceStart, TargetAgent: host, TargetPID: root.PID, TargetStart: root.Start,
		Depth: 6, CollectNetwork: true, CollectCmdlines: true, MaxDurationSecs: uint32(max(dur/time.Second, 1)), MaxBytes: 64 << 20,
		MaxEventsPerSec: 1000, InitiatedBy: o.name, Timestamp: time.Now().UnixNano(), Reason: "loadgen: trace round trip under load"}
	st, err := wire.SignTrace(cmd, o.Key(), o.Certificate().Certificate[0])
	if err != nil {
		return err
	}
	signed, err := st.Encode()
	if err != nil {
		return err
	}
	err = o.JSON(ctx, "POST", "/api/v1/traces", map[string]any{"command": signed}, nil)
	var ue *url.Error
	if errors.As(err, &ue) && errors.Is(err, io.EOF) && ctx.Err() == nil {
		// The server closed an idle keep-alive connection as the request
		// went out on it (net/http does not retry a POST). Once more: if
		// the first one did arrive, the trace id is taken, and the trace
		// is under way.
		err = o.JSON(ctx, "POST", "/api/v1/traces", map[string]any{"command": signed}, nil)
		if err != nil && strings.Contains(err.Error(), "HTTP 409") && strings.Contains(err.Error(), "is taken") {
			err = nil
		}
	}
	return err
}

// measures collects the latencies measured under the load.
type measures struct {
	mu sync.Mutex
	// exec -> alert: probe process -> its event time; alerts seen.
	probes    map[capture.ProcKey]probe
	alertLat  []time.Duration
	lastAlert int64 // alerts.id read so far
	// trace round trips: trace id -> when the request was sent.
	traceSent map[string]time.Time
	traceErrs []string
	// the trace lane: trace events stored by the traced agent.
	traceEvents int
	// lineage queries at the center, under load and after it.
	lineage map[string][]time.Duration
}

type probe struct {
	host string
	at   int64
	seen bool
}

func newMeasures() *measures {
	return &measures{probes: map[capture.ProcKey]probe{}, traceSent: map[string]time.Time{}, lineage: map[string][]time.Duration{}}
}

// alertProbes has a random agent exec a payload from /tmp every period,
// and polls the center's alerts table for them.
func (m *measures) alertProbes(ctx context.Context, db *sql.DB, agents []*simAgent, every time.Duration, seed uint64) {
	if every <= 0 {
		return
	}
	rng := rand64(seed ^ 0xa1e27)
	send := time.NewTicker(every)
	defer send.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for n := 0; ; {
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
			m.pollAlerts(ctx, db)
		case <-send.C:
			a := agents[rng.IntN(len(agents))]
			n++
			k := n
			in := injected{
				make: func(a *simAgent, now int64) (capture.Event, bool) { return a.churn.probe(now, k), true },
				stored: func(ev capture.Event) {
					m.mu.Lock()
					m.probes[ev.Proc] = probe{host: a.name, at: ev.Time}
					m.mu.Unlock()
				},
			}
			select {
			case a.inject <- in:
			default: // the agent is busy: skip this probe
			}
		}
	}
}

// pollAlerts reads the alerts raised since the last poll. The resolution
// of exec -> alert is the poll period (20ms) plus the query.
func (m *measures) pollAlerts(ctx context.Context, db *sql.DB) {
	m.mu.Lock()
	last := m.lastAlert
	m.mu.Unlock()
	rows, err := db.QueryContext(ctx, `SELECT id, host, pid, start FROM alerts WHERE id > ? ORDER BY id`, last)
	if err != nil {
		return
	}
	defer rows.Close()
	now := time.Now().UnixNano()
	for rows.Next() {
		var id int64
		var host string
		var k capture.ProcKey
		if err := rows.Scan(&id, &host, &k.PID, &k.Start); err != nil {
			return
		}
		m.mu.Lock()
		m.lastAlert = id
		if p, ok := m.probes[k]; ok && p.host == host && !p.seen {
			p.seen = true
			m.probes[k] = p
			m.alertLat = append(m.alertLat, time.Duration(now-p.at))
		}
		m.mu.Unlock()
	}
}

// roundTripTraceDuration is the cap of the traces that measure the round
// trip: short, so the agent ends each one itself and the next round on the
// same agent finds its process free again.
const roundTripTraceDuration = 2 * time.Second

// traceRoundTrips requests a signed trace every period, on the agents in
// turn (not agent 0, which runs the long trace), rooted at their shell.
// The round trip is from the request until the center records the agent's
// answer (traces.started, the center's clock), read afterwards.
func (m *measures) traceRoundTrips(ctx context.Context, op *operator, agents []*simAgent, every time.Duration) {
	if every <= 0 || len(agents) < 2 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	inflight := make(chan struct{}, 8) // the API's answers may lag under load
	var wg sync.WaitGroup
	defer wg.Wait()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		select {
		case inflight <- struct{}{}:
		default:
			m.mu.Lock()
			m.traceErrs = append(m.traceErrs, "skipped: 8 requests already waiting for the API")
			m.mu.Unlock()
			continue
		}
		a := agents[1+n%(len(agents)-1)]
		id := fmt.Sprintf("loadgen-rt-%d", n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-inflight }()
			sent := time.Now()
			m.mu.Lock()
			m.traceSent[id] = sent
			m.mu.Unlock()
			if err := op.startTrace(ctx, id, a.name, roots[3].key, roundTripTraceDuration); err != nil {
				m.mu.Lock()
				delete(m.traceSent, id)
				if ctx.Err() == nil {
					m.traceErrs = append(m.traceErrs, err.Error())
				}
				m.mu.Unlock()
			}
		}()
	}
}

// traceProbe has the traced agent emit one traced connect every period
// while the others stream bulk: it travels on the trace lane.
func (m *measures) traceProbe(ctx context.Context, a *simAgent, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		in := injected{
			make: func(a *simAgent, now int64) (capture.Event, bool) {
				a.mu.Lock()
				defer a.mu.Unlock()
				for _, tr := range a.traces {
					if tr.id != longTraceID {
						continue
					}
					tr.seq++
					return capture.Event{Time: now, Kind: capture.KindConnect, Proc: tr.root, Comm: "bash", Source: "ebpf",
						TraceID: tr.id, TraceSeq: tr.seq, Conn: &capture.Conn{Proto: capture.ProtoTCP}}, true
				}
				return capture.Event{}, false
			},
			stored: func(capture.Event) {
				m.mu.Lock()
				m.traceEvents++
				m.mu.Unlock()
			},
		}
		select {
		case a.inject <- in:
		default:
		}
	}
}

// longTraceID is the trace that runs on agent 0 for the whole load.
const longTraceID = "loadgen-long"

// lineageProbe times the center's lineage queries on the big host every
// period: the ancestors of its deepest process and the descendants of its
// init (the API's default depth; the answer is capped).
func (m *measures) lineageProbe(ctx context.Context, op *operator, host string, big bigHost, every time.Duration, label string) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		m.queryLineage(ctx, op, host, big, label)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// lineageAnswer is the part of the API's lineage answer that is checked.
type lineageAnswer struct {
	Ancestors   []json.RawMessage `json:"ancestors"`
	Descendants []json.RawMessage `json:"descendants"`
}

func (m *measures) queryLineage(ctx context.Context, op *operator, host string, big bigHost, label string) {
	for _, q := range []struct {
		what string
		k    capture.ProcKey
		want func(lineageAnswer) bool
	}{
		{"ancestors of the deepest process", big.deep, func(a lineageAnswer) bool { return len(a.Ancestors) >= big.depth }},
		{"descendants of init", roots[0].key, func(a lineageAnswer) bool { return len(a.Descendants) > 0 }},
	} {
		var ans lineageAnswer
		t0 := time.Now()
		err := op.JSON(ctx, "GET", fmt.Sprintf("/api/v1/processes/%s/%d/%d/lineage", url.PathEscape(host), q.k.PID, q.k.Start), nil, &ans)
		d := time.Since(t0)
		if err != nil || !q.want(ans) {
			continue // not ingested yet (or the center is gone): not a sample
		}
		m.mu.Lock()
		key := label + ": " + q.what
		m.lineage[key] = append(m.lineage[key], d)
		if key2 := "size: " + q.what; len(m.lineage[key2]) == 0 {
			m.lineage[key2] = []time.Duration{time.Duration(len(ans.Ancestors) + len(ans.Descendants))}
		}
		m.mu.Unlock()
	}
}

// Latency is a distribution of measured latencies.
type Latency struct {
	Sent, Seen int
	P50, P99   time.Duration
	Max        time.Duration
}

func summarize(ds []time.Duration, sent int) Latency {
	l := Latency{Sent: sent, Seen: len(ds)}
	if len(ds) == 0 {
		return l
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	l.P50 = s[len(s)/2]
	l.P99 = s[min(len(s)-1, len(s)*99/100)]
	l.Max = s[len(s)-1]
	return l
}

// centerTimes reads what the center recorded itself, once the load is
// over: when each round-trip trace's agent answer arrived (traces.started),
// and when each trace-lane event's batch reached SQL (batches.ingested).
func (m *measures) centerTimes(ctx context.Context, db *sql.DB, res *Result) error {
	rows, err := db.QueryContext(ctx, `SELECT trace_id, created, started FROM traces WHERE trace_id LIKE 'loadgen-rt-%'`)
	if err != nil {
		return err
	}
	var rtt, centerRTT []time.Duration
	m.mu.Lock()
	sent := maps.Clone(m.traceSent)
	res.TraceErrors = slices.Clone(m.traceErrs)
	m.mu.Unlock()
	for rows.Next() {
		var id string
		var created int64
		var started sql.NullInt64
		if err := rows.Scan(&id, &created, &started); err != nil {
			rows.Close()
			return err
		}
		if at, ok := sent[id]; ok && started.Valid {
			rtt = append(rtt, time.Duration(started.Int64-at.UnixNano()))
			centerRTT = append(centerRTT, time.Duration(started.Int64-created))
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	res.TraceCommand = summarize(rtt, len(sent))
	res.TraceCommandCenter = summarize(centerRTT, len(sent))

	var lane []time.Duration
	rows, err = db.QueryContext(ctx, `SELECT n.time, b.ingested FROM network_events n JOIN batches b ON b.host = n.host AND b.seq = n.batch_seq
		WHERE n.trace_id = ? AND n.kind = 'connect'`, longTraceID)
	if err != nil {
		return err
	}
	for rows.Next() {
		var at, ingested int64
		if err := rows.Scan(&at, &ingested); err != nil {
			rows.Close()
			return err
		}
		lane = append(lane, time.Duration(ingested-at))
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	res.Trace = summarize(lane, m.traceEvents)
	res.Alert = summarize(m.alertLat, len(m.probes))
	res.Lineage = map[string]Latency{}
	res.LineageRows = map[string]int{}
	for k, v := range m.lineage {
		if what, ok := strings.CutPrefix(k, "size: "); ok {
			res.LineageRows[what] = int(v[0])
			continue
		}
		res.Lineage[k] = summarize(v, len(v))
	}
	m.mu.Unlock()
	return nil
}

// waitAlerts polls for the probes' last alerts a little after the load.
func (m *measures) waitAlerts(ctx context.Context, db *sql.DB, within time.Duration) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		m.pollAlerts(ctx, db)
		m.mu.Lock()
		pending := len(m.probes) - len(m.alertLat)
		m.mu.Unlock()
		if pending == 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
