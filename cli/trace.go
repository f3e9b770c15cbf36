package cli

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// TraceCmd is the operators' focused-trace verbs, through the center's API.
type TraceCmd struct {
	Start TraceStartCmd `cmd:"" help:"Start a focused trace: the command is signed with your operator key; the agent checks it."`
	Stop  TraceStopCmd  `cmd:"" help:"Stop a trace on every host it runs on."`
	List  TraceListCmd  `cmd:"" help:"List traces, newest first."`
	Show  TraceShowCmd  `cmd:"" help:"Show a trace: its targets, the traced lineage as a tree, and the timeline."`
}

// TraceStartCmd signs and requests a trace.
type TraceStartCmd struct {
	APIFlags
	Host     string        `required:"" help:"Agent id of the host." placeholder:"AGENT"`
	PID      uint32        `name:"pid" required:"" help:"Root process id."`
	Start    uint64        `help:"Root start time (clock ticks, /proc/PID/stat field 22); looked up at the center when omitted." placeholder:"TICKS"`
	Depth    uint32        `default:"6" help:"Generations below the root to trace."`
	Duration time.Duration `default:"15m" help:"Maximum duration."`
	MaxBytes ByteFlag      `default:"256MiB" help:"Maximum bytes of trace events."`
	MaxEPS   uint32        `name:"max-eps" default:"5000" help:"Maximum events per second (over it the trace is sampled)."`
	Collect  []string      `default:"files,network,cmdlines" enum:"files,network,cmdlines,memory" help:"What to collect: files, network, cmdlines, memory."`
	Reason   string        `required:"" help:"Why (at least 10 characters; recorded in the ledger and shown to the approver)."`
	ID       string        `name:"id" help:"Trace id (default: random)." placeholder:"ID"`
}

// ByteFlag is a size flag with units (256MiB).
type ByteFlag uint64

// UnmarshalText parses a size with a unit (kong decodes flags with it).
func (b *ByteFlag) UnmarshalText(text []byte) error {
	n, err := parseBytes(string(text))
	if err != nil {
		return err
	}
	*b = ByteFlag(n)
	return nil
}

func parseBytes(s string) (uint64, error) {
	units := []struct {
		suffix string
		mult   uint64
	}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			var n uint64
			if _, err := fmt.Sscanf(num, "%d", &n); err != nil || fmt.Sprint(n) != num {
				return 0, fmt.Errorf("size %q: want a number with B, KiB, MiB or GiB", s)
			}
			return n * u.mult, nil
		}
	}
	return 0, fmt.Errorf("size %q: want a number with B, KiB, MiB or GiB", s)
}

// Run signs the command and asks the center.
func (c *TraceStartCmd) Run(ctx context.Context, g *Globals) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.close()
	if c.Start == 0 {
		if c.Start, err = liveStart(ctx, cl, c.Host, c.PID); err != nil {
			return err
		}
	}
	id := c.ID
	if id == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		id = hex.EncodeToString(b)
	}
	cmd := wire.TraceCommand{TraceID: id, Action: wire.TraceStart, TargetAgent: c.Host, TargetPID: c.PID, TargetStart: c.Start,
		Depth: c.Depth, MaxDurationSecs: uint32(c.Duration / time.Second), MaxBytes: uint64(c.MaxBytes), MaxEventsPerSec: c.MaxEPS,
		InitiatedBy: cl.name, Timestamp: time.Now().UnixNano(), Reason: c.Reason}
	for _, f := range c.Collect {
		switch f {
		case "files":
			cmd.CollectFiles = true
		case "network":
			cmd.CollectNetwork = true
		case "cmdlines":
			cmd.CollectCmdlines = true
		case "memory":
			cmd.CollectMemory = true
		}
	}
	st, err := wire.SignTrace(cmd, cl.key(), cl.Certificate().Certificate[0])
	if err != nil {
		return err
	}
	signed, err := st.Encode()
	if err != nil {
		return err
	}
	var resp struct {
		Trace      traceView `json:"trace"`
		ApprovalID *int64    `json:"approval_id"`
	}
	if err := cl.do(ctx, "POST", "/api/v1/traces", map[string]any{"command": signed}, &resp); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "trace %s: %s (root %s pid %d@%d, depth %d, signed by %s)\n", resp.Trace.TraceID, resp.Trace.State,
		c.Host, c.PID, c.Start, c.Depth, cl.name)
	if resp.ApprovalID != nil {
		fmt.Fprintf(g.stdout, "waiting for approval %d by another approver (two-person rule)\n", *resp.ApprovalID)
	}
	return nil
}

// liveStart finds the start time of the live process pid on host.
func liveStart(ctx context.Context, cl *apiClient, host string, pid uint32) (uint64, error) {
	var q struct {
		Rows [][]any `json:"rows"`
	}
	err := cl.do(ctx, "POST", "/api/v1/query", map[string]any{
		"sql":  "SELECT start FROM processes WHERE host = ? AND pid = ? AND exit_time IS NULL ORDER BY start DESC LIMIT 2",
		"args": []any{host, pid}}, &q)
	if err != nil {
		return 0, fmt.Errorf("look up pid %d on %s: %w", pid, host, err)
	}
	switch len(q.Rows) {
	case 0:
		return 0, fmt.Errorf("the center knows no live process %d on %s", pid, host)
	case 1:
	default:
		return 0, fmt.Errorf("the center knows more than one live process %d on %s: give --start", pid, host)
	}
	v, ok := q.Rows[0][0].(float64)
	if !ok || v < 0 {
		return 0, fmt.Errorf("look up pid %d on %s: unexpected start %v", pid, host, q.Rows[0][0])
	}
	return uint64(v), nil
}

// TraceStopCmd stops a trace.
type TraceStopCmd struct {
	APIFlags
	ID     string `arg:"" help:"Trace id."`
	Reason string `required:"" help:"Why (at least 10 characters; recorded in the ledger)."`
	Yes    bool   `help:"Do not ask for confirmation."`
}

// Run asks the center to stop the trace.
func (c *TraceStopCmd) Run(ctx context.Context, g *Globals) error {
	if !c.Yes && !confirm(g, fmt.Sprintf("stop trace %s on every host it runs on? What it would record from now on is lost [y/N] ", c.ID)) {
		return errors.New("trace not stopped (answer y, or pass --yes)")
	}
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.close()
	var resp struct {
		Trace traceView `json:"trace"`
	}
	if err := cl.do(ctx, "POST", "/api/v1/traces/"+url.PathEscape(c.ID)+"/stop", map[string]any{"reason": c.Reason}, &resp); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "trace %s: %s\n", resp.Trace.TraceID, resp.Trace.State)
	return nil
}

// traceView is a trace as the API returns it.
type traceView struct {
	TraceID     string     `json:"trace_id"`
	Host        string     `json:"host"`
	PID         uint32     `json:"pid"`
	Start       uint64     `json:"start"`
	Depth       int        `json:"depth"`
	State       string     `json:"state"`
	Created     *time.Time `json:"created"`
	Started     *time.Time `json:"started"`
	Stopped     *time.Time `json:"stopped"`
	InitiatedBy string     `json:"initiated_by"`
	Reason      string     `json:"reason"`
	StopReason  *string    `json:"stop_reason"`
}

// TraceListCmd lists traces.
type TraceListCmd struct {
	APIFlags
	State string `enum:",pending,approved,active,stopped,expired,refused,failed" default:"" help:"Only traces in this state."`
	Host  string `help:"Only traces whose first target is this host." placeholder:"AGENT"`
	Limit int    `default:"50" help:"At most this many."`
}

// Run prints the traces.
func (c *TraceListCmd) Run(ctx context.Context, g *Globals) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.close()
	q := url.Values{"limit": {fmt.Sprint(c.Limit)}}
	if c.State != "" {
		q.Set("state", c.State)
	}
	if c.Host != "" {
		q.Set("host", c.Host)
	}
	var resp struct {
		Traces []traceView `json:"traces"`
	}
	if err := cl.do(ctx, "GET", "/api/v1/traces?"+q.Encode(), nil, &resp); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TRACE\tSTATE\tHOST\tROOT\tBY\tCREATED\tREASON")
	for _, t := range resp.Traces {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d@%d\t%s\t%s\t%s\n", t.TraceID, t.State, t.Host, t.PID, t.Start,
			privacy.Safe(t.InitiatedBy), fmtTime(t.Created), privacy.Safe(t.Reason))
	}
	return tw.Flush()
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format("2006-01-02 15:04:05.000")
}

// TraceShowCmd prints one trace.
type TraceShowCmd struct {
	APIFlags
	ID string `arg:"" help:"Trace id."`
}

// traceEventView is one event of a trace's timeline.
type traceEventView struct {
	Seq    int64          `json:"seq"`
	Host   string         `json:"host"`
	Time   *time.Time     `json:"time"`
	Kind   string         `json:"kind"`
	PID    uint32         `json:"pid"`
	Start  uint64         `json:"start"`
	Comm   string         `json:"comm"`
	Detail map[string]any `json:"detail"`
}

// maxShowPages bounds the pages `trace show` reads (of up to 1000 events).
const maxShowPages = 1000

// Run prints the trace, its lineage and its timeline.
func (c *TraceShowCmd) Run(ctx context.Context, g *Globals) error {
	cl, err := c.client()
	if err != nil {
		return err
	}
	defer cl.close()
	var (
		head struct {
			Trace   traceView
			Targets []map[string]any
			Links   []map[string]any
		}
		events []traceEventView
	)
	after := url.Values{"limit": {"1000"}}
	for page := 0; ; page++ {
		if page == maxShowPages {
			return fmt.Errorf("trace %s: more than %d pages of events; use the API or the SQL sandbox", c.ID, maxShowPages)
		}
		var resp struct {
			Trace     traceView        `json:"trace"`
			Targets   []map[string]any `json:"targets"`
			Links     []map[string]any `json:"links"`
			Events    []traceEventView `json:"events"`
			NextAfter *struct {
				Seq  int64  `json:"after_seq"`
				Host string `json:"after_host"`
			} `json:"next_after"`
		}
		if err := cl.do(ctx, "GET", "/api/v1/traces/"+url.PathEscape(c.ID)+"?"+after.Encode(), nil, &resp); err != nil {
			return err
		}
		if page == 0 {
			head.Trace, head.Targets, head.Links = resp.Trace, resp.Targets, resp.Links
		}
		events = append(events, resp.Events...)
		if resp.NextAfter == nil {
			break
		}
		after.Set("after_seq", fmt.Sprint(resp.NextAfter.Seq))
		after.Set("after_host", resp.NextAfter.Host)
	}
	// Where each target came from: its ancestors as the center knows them.
	ancestry := map[string]string{}
	for _, tg := range head.Targets {
		host, _ := tg["host"].(string)
		pid, _ := num(tg["pid"])
		start, _ := num(tg["start"])
		var lin struct {
			Ancestors []struct {
				PID  uint32 `json:"pid"`
				Comm string `json:"comm"`
				Exe  string `json:"exe"`
			} `json:"ancestors"`
		}
		if err := cl.do(ctx, "GET", fmt.Sprintf("/api/v1/processes/%s/%d/%d/lineage", url.PathEscape(host), pid, start), nil, &lin); err != nil {
			continue // the process may be unknown to the SQL store yet: the rest still prints
		}
		var parts []string
		for i := len(lin.Ancestors) - 1; i >= 0; i-- {
			a := lin.Ancestors[i]
			name := a.Comm
			if name == "" {
				name = a.Exe
			}
			parts = append(parts, fmt.Sprintf("%s(%d)", privacy.Safe(name), a.PID))
		}
		ancestry[fmt.Sprintf("%s %d@%d", host, pid, start)] = strings.Join(parts, " > ")
	}
	printTrace(g.stdout, head.Trace, head.Targets, ancestry, head.Links, events)
	return nil
}

func printTrace(w io.Writer, t traceView, targets []map[string]any, ancestry map[string]string, links []map[string]any, events []traceEventView) {
	fmt.Fprintf(w, "trace %s  state %s\n", t.TraceID, t.State)
	fmt.Fprintf(w, "  root      %s pid %d@%d, depth %d\n", t.Host, t.PID, t.Start, t.Depth)
	fmt.Fprintf(w, "  by        %s: %s\n", privacy.Safe(t.InitiatedBy), privacy.Safe(t.Reason))
	fmt.Fprintf(w, "  created   %s  started %s  stopped %s\n", fmtTime(t.Created), fmtTime(t.Started), fmtTime(t.Stopped))
	if t.StopReason != nil {
		fmt.Fprintf(w, "  stopped   %s\n", privacy.Safe(*t.StopReason))
	}
	for _, tg := range targets {
		pid, _ := num(tg["pid"])
		start, _ := num(tg["start"])
		fmt.Fprintf(w, "  target    %v pid %d@%d (%v)\n", tg["host"], pid, start, tg["state"])
		if a := ancestry[fmt.Sprintf("%v %d@%d", tg["host"], pid, start)]; a != "" {
			fmt.Fprintf(w, "            under %s\n", a)
		}
	}
	for _, l := range links {
		to := "accept not seen yet"
		if pid, ok := num(l["to_pid"]); ok {
			to = fmt.Sprintf("accepted by pid %d", pid)
		}
		followed := "not followed"
		if l["followed"] != nil {
			followed = "followed"
		}
		fmt.Fprintf(w, "  link      %v pid %v %v -> %v %v (%s, %s)\n", l["from_host"], l["from_pid"], l["src"], l["to_host"], l["dst"], to, followed)
	}

	// Lineage: processes seen in the trace, under their parents.
	type pkey struct {
		host       string
		pid, start uint64
	}
	type proc struct {
		key    pkey
		parent *pkey
		label  string
	}
	procs := map[pkey]*proc{}
	var order []pkey
	for _, e := range events {
		k := pkey{e.Host, uint64(e.PID), e.Start}
		p := procs[k]
		if p == nil {
			p = &proc{key: k}
			procs[k] = p
			order = append(order, k)
		}
		if e.Kind == "fork" || e.Kind == "exec" {
			if pp, ok := num(e.Detail["ppid"]); ok {
				ps, _ := num(e.Detail["pstart"])
				p.parent = &pkey{e.Host, pp, ps}
			}
		}
		if p.label == "" && e.Comm != "" {
			p.label = e.Comm
		}
		if e.Kind == "exec" {
			if exe, ok := e.Detail["exe"].(string); ok && exe != "" {
				p.label = exe
			}
			if cl, ok := e.Detail["cmdline"].(string); ok && cl != "" {
				p.label += "  " + cl
			}
		}
	}
	children := map[pkey][]pkey{}
	var roots []pkey
	for _, k := range order {
		p := procs[k]
		if p.parent != nil && procs[*p.parent] != nil {
			children[*p.parent] = append(children[*p.parent], k)
		} else {
			roots = append(roots, k)
		}
	}
	fmt.Fprintf(w, "\nlineage (%d processes)\n", len(procs))
	var walk func(k pkey, indent string, depth int)
	walk = func(k pkey, indent string, depth int) {
		p := procs[k]
		fmt.Fprintf(w, "%s%s %d@%d  %s\n", indent, k.host, k.pid, k.start, privacy.Safe(p.label))
		if depth > 256 {
			return
		}
		for _, ch := range children[k] {
			walk(ch, indent+"  ", depth+1)
		}
	}
	for _, r := range roots {
		walk(r, "  ", 0)
	}

	fmt.Fprintf(w, "\ntimeline (%d events; arguments masked)\n", len(events))
	sort.SliceStable(events, func(i, j int) bool {
		a, b := events[i].Time, events[j].Time
		if a != nil && b != nil && !a.Equal(*b) {
			return a.Before(*b)
		}
		return events[i].Seq < events[j].Seq
	})
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, e := range events {
		fmt.Fprintf(tw, "  %s\t%s\t#%d\t%s\t%d\t%s\t%s\n", fmtTime(e.Time), e.Host, e.Seq, e.Kind, e.PID,
			privacy.Safe(e.Comm), privacy.Safe(summary(e)))
	}
	tw.Flush()
}

// summary is the one-line detail of an event.
func summary(e traceEventView) string {
	d := e.Detail
	s := func(k string) string { v, _ := d[k].(string); return v }
	switch e.Kind {
	case "exec":
		return strings.TrimSpace(s("exe") + "  " + s("cmdline"))
	case "exit":
		if c, ok := num(d["exit_code"]); ok {
			return fmt.Sprintf("code %d", c)
		}
		if sig, ok := num(d["exit_signal"]); ok {
			return fmt.Sprintf("signal %d", sig)
		}
	case "connect", "accept", "close":
		if s("dst_ip") != "" {
			sp, _ := num(d["src_port"])
			dp, _ := num(d["dst_port"])
			return fmt.Sprintf("%s:%d -> %s:%d", s("src_ip"), sp, s("dst_ip"), dp)
		}
	case "open", "create", "file_open":
		return s("path")
	case "rename", "file_rename":
		return s("path") + " -> " + s("path2")
	case "unlink", "file_unlink":
		return s("path")
	case "exec_hash":
		return s("path") + "  sha256:" + s("sha256")
	}
	return ""
}

func num(v any) (uint64, bool) {
	f, ok := v.(float64)
	if !ok || f < 0 {
		return 0, false
	}
	return uint64(f), true
}
