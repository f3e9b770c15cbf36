package loadgen

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// measures collects the latencies measured under the load.
type measures struct {
	mu sync.Mutex
	// exec -> alert: probe process -> its event time; alerts seen.
	probes    map[capture.ProcKey]probe
	alertLat  []time.Duration
	lastAlert int64 // alerts.id read so far
	// command round trip: command id -> sent.
	cmdSent map[string]time.Time
	cmdLat  []time.Duration
	// trace lane: event time -> stored at the center.
	traceSent int
	traceLat  []time.Duration
}

type probe struct {
	host string
	at   int64
	seen bool
}

func newMeasures() *measures {
	return &measures{probes: map[capture.ProcKey]probe{}, cmdSent: map[string]time.Time{}}
}

// traceID names the trace events of the trace probe.
const traceID = "loadgen-trace"

// stored is the center's hook after a batch is durable: trace-lane events
// are timed from their event time (same clock, same machine).
func (m *measures) stored(b *wire.Batch, lane wire.Lane) {
	if lane != wire.LaneTrace {
		return
	}
	now := time.Now().UnixNano()
	m.mu.Lock()
	for i := range b.Events {
		if b.Events[i].TraceID == traceID {
			m.traceLat = append(m.traceLat, time.Duration(now-b.Events[i].Time))
		}
	}
	m.mu.Unlock()
}

// ack times the agents' answers to the commands sent.
func (m *measures) ack(a wire.CommandAck) {
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if at, ok := m.cmdSent[a.CommandID]; ok && a.AgentID != "" && a.Status == wire.CommandDone {
		m.cmdLat = append(m.cmdLat, now.Sub(at))
		delete(m.cmdSent, a.CommandID)
	}
}

// alertProbes has a random agent exec a payload from /tmp every period,
// and polls the center's alerts table for them.
func (m *measures) alertProbes(ctx context.Context, cn *center.Center, agents []*simAgent, every time.Duration, seed uint64) {
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
			m.pollAlerts(ctx, cn)
		case <-send.C:
			a := agents[rng.IntN(len(agents))]
			n++
			k := n
			in := injected{
				make: func(c *churn, now int64) capture.Event { return c.probe(now, k) },
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
func (m *measures) pollAlerts(ctx context.Context, cn *center.Center) {
	m.mu.Lock()
	last := m.lastAlert
	m.mu.Unlock()
	rows, err := cn.SQL.ReadOnly().QueryContext(ctx, `SELECT id, host, pid, start FROM alerts WHERE id > ? ORDER BY id`, last)
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

// commands sends a command to a random agent every period; the agents'
// default handler acknowledges it as done.
func (m *measures) commands(ctx context.Context, cn *center.Center, agents []*simAgent, every time.Duration, seed uint64) {
	if every <= 0 {
		return
	}
	rng := rand64(seed ^ 0xc0dd)
	t := time.NewTicker(every)
	defer t.Stop()
	for n := 0; ; n++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a := agents[rng.IntN(len(agents))]
		id := fmt.Sprintf("loadgen-%d", n)
		m.mu.Lock()
		m.cmdSent[id] = time.Now()
		m.mu.Unlock()
		cmd := wire.Command{CommandID: id, Target: a.name, Expires: time.Now().Add(5 * time.Minute).UnixNano(), Payload: []byte("loadgen ping")}
		if err := cn.SendCommand(ctx, cmd); err != nil {
			m.mu.Lock()
			delete(m.cmdSent, id)
			m.mu.Unlock()
		}
	}
}

// traceProbe has one agent emit a trace event every period while the
// others stream bulk: it travels on the trace lane.
func (m *measures) traceProbe(ctx context.Context, a *simAgent, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for seq := uint64(1); ; {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s := seq
		in := injected{
			make: func(c *churn, now int64) capture.Event {
				p := c.live[0]
				return capture.Event{Time: now, Kind: capture.KindConnect, Proc: p.key, Comm: p.comm, Source: "ebpf", TraceID: traceID, TraceSeq: s,
					Conn: &capture.Conn{Proto: capture.ProtoTCP}}
			},
			stored: func(capture.Event) {
				m.mu.Lock()
				m.traceSent++
				m.mu.Unlock()
			},
		}
		select {
		case a.inject <- in:
			seq++
		default:
		}
	}
}

// finish waits a little for the last alerts, then writes the figures.
func (m *measures) finish(ctx context.Context, cn *center.Center, res *Result) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		m.pollAlerts(ctx, cn)
		m.mu.Lock()
		pending := len(m.probes) - len(m.alertLat)
		m.mu.Unlock()
		if pending == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	res.Alert = summarize(m.alertLat, len(m.probes))
	res.Command = summarize(m.cmdLat, len(m.cmdLat)+len(m.cmdSent))
	res.Trace = summarize(m.traceLat, m.traceSent)
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
