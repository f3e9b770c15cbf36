package treetest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// checkExact fails unless the center holds seqs 1..n for each agent, once.
func checkExact(t *testing.T, c *Center, agents ...*Agent) {
	t.Helper()
	got, err := c.Ingest.Stored()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range agents {
		seqs := got[a.Name]
		n := a.Ship.Stats().Batches
		if uint64(len(seqs)) != n {
			t.Errorf("%s: center stored %d batches, agent cut %d", a.Name, len(seqs), n)
			continue
		}
		for i, s := range seqs {
			if s != uint64(i+1) {
				t.Errorf("%s: stored seqs are not 1..%d: %v", a.Name, n, seqs)
				break
			}
		}
	}
}

// A three-level tree: agents -> px2 -> px1 -> center. Every batch arrives
// once, and a command reaches one named agent through both proxies and its
// ack comes back.
func TestThreeLevelTreeAndCommand(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px1 := tr.NewProxy("px1", c.Cfg.Listen).Start()
	px2 := tr.NewProxy("px2", px1.Cfg.Listen).Start()
	var agents []*Agent
	for i := 0; i < 3; i++ {
		agents = append(agents, tr.NewAgent(fmt.Sprintf("web-%d", i), px2.Cfg.Listen).Start())
	}
	for round := 0; round < 5; round++ {
		for _, a := range agents {
			a.Emit(3000)
		}
	}
	if m := WaitAll(c, 30*time.Second, agents...); m != "" {
		t.Fatalf("not delivered: %s", m)
	}
	checkExact(t, c, agents...)
	if _, _, replays := c.Ingest.Counts(); replays != 0 {
		t.Logf("replays dropped at the center: %d", replays)
	}

	// Routing: the center knows web-1 through px1, px1 through px2.
	deadline := time.Now().Add(10 * time.Second)
	for !slices.Contains(c.Agents(), "web-1") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	cmd := wire.Command{CommandID: "cmd-1", Target: "web-1", Expires: time.Now().Add(time.Minute).UnixNano(), Payload: []byte("trace 4242")}
	if err := c.SendCommand(context.Background(), cmd); err != nil {
		t.Fatal(err)
	}
	var acks []wire.CommandAck
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if acks = c.Acks("cmd-1"); len(acks) > 0 {
			break
		}
	}
	if len(acks) == 0 || acks[0].AgentID != "web-1" || acks[0].Status != wire.CommandDone {
		t.Fatalf("acks for cmd-1 = %+v, want web-1 done", acks)
	}
	for _, a := range agents {
		if got := a.Ship.Stats().Commands; (a.Name == "web-1") != (got == 1) {
			t.Errorf("%s ran %d commands", a.Name, got)
		}
	}
	// The outboxes are empty once the agent acked.
	if n := px1.Gatherer(); n == nil {
		t.Fatal("no metrics")
	}
}

// A command for an agent that is not connected waits in the outbox and is
// delivered when the agent arrives; one that expires is reported expired.
func TestCommandWaitsForAgent(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	late := tr.NewAgent("late", px.Cfg.Listen)
	ctx := context.Background()
	if err := c.SendCommand(ctx, wire.Command{CommandID: "wait", Target: "late", Expires: time.Now().Add(time.Minute).UnixNano()}); err != nil {
		t.Fatal(err)
	}
	if err := c.SendCommand(ctx, wire.Command{CommandID: "short", Target: "nobody", Expires: time.Now().Add(300 * time.Millisecond).UnixNano()}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	late.Start()
	for _, want := range []struct {
		id     string
		status wire.CommandStatus
	}{{"wait", wire.CommandDone}, {"short", wire.CommandExpired}} {
		var acks []wire.CommandAck
		for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(acks) == 0; time.Sleep(20 * time.Millisecond) {
			acks = c.Acks(want.id)
		}
		if len(acks) == 0 || acks[0].Status != want.status {
			t.Errorf("acks for %s = %+v, want status %v", want.id, acks, want.status)
		}
	}
}

// The upstream stopped for a while, then restored: everything arrives, once,
// in per-lane order.
func TestUpstreamOutageThenRecovery(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	a := tr.NewAgent("web", px.Cfg.Listen).Start()
	var mu sync.Mutex
	var order []uint64
	record := func(b *wire.Batch, _ wire.Lane) { mu.Lock(); order = append(order, b.Seq); mu.Unlock() }
	c.Ingest.SetOnStored(record)
	a.Emit(2000)
	if m := WaitAll(c, 20*time.Second, a); m != "" {
		t.Fatalf("before the outage: %s", m)
	}
	c.Stop()
	for i := 0; i < 10; i++ {
		a.Emit(1000)
		time.Sleep(50 * time.Millisecond)
	}
	c.Start()
	c.Ingest.SetOnStored(record)
	if m := WaitAll(c, 30*time.Second, a); m != "" {
		t.Fatalf("after the outage: %s", m)
	}
	checkExact(t, c, a)
	mu.Lock()
	defer mu.Unlock()
	if !slices.IsSorted(order) {
		t.Errorf("batches arrived out of order: %v", order)
	}
}

// An agent fails over to its fallback proxy when the primary dies, and
// returns to the primary once it is back.
func TestFailoverAndBack(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	pA := tr.NewProxy("px-a", c.Cfg.Listen).Start()
	pB := tr.NewProxy("px-b", c.Cfg.Listen).Start()
	a := tr.NewAgent("web", pA.Cfg.Listen, pB.Cfg.Listen)
	a.Cfg.RetryPrimaryMS = 300
	a.Start()
	parent := func() string { return a.Ship.Stats().Uplink.Parent }
	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s (parent %s)", what, parent())
			}
		}
	}
	a.Emit(1000)
	waitFor("primary", func() bool { return parent() == pA.Cfg.Listen })
	pA.Stop()
	a.Emit(1000)
	waitFor("fallback", func() bool { return parent() == pB.Cfg.Listen })
	a.Emit(1000)
	pA.Start()
	waitFor("back on the primary", func() bool { return parent() == pA.Cfg.Listen })
	a.Emit(1000)
	if m := WaitAll(c, 20*time.Second, a); m != "" {
		t.Fatalf("not delivered: %s", m)
	}
	checkExact(t, c, a)
}

// A proxy whose parent sits below it closes a cycle: the hello is refused.
func TestCycleRefused(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	p1 := tr.NewProxy("px1", c.Cfg.Listen).Start()
	p2 := tr.NewProxy("px2", p1.Cfg.Listen).Start()
	a := tr.NewAgent("web", p2.Cfg.Listen).Start()
	a.Emit(100)
	if m := WaitAll(c, 20*time.Second, a); m != "" {
		t.Fatalf("not delivered: %s", m)
	}
	// Reconfigure px1 to take px2 as its parent: px2 is below px1, so one
	// of the two hellos must be refused as a cycle.
	p1.Stop()
	p1.Cfg.Upstream = p2.Cfg.Listen
	p1.Start()
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if p1.Refused()["cycle"]+p2.Refused()["cycle"] > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cycle refused: px1 %v px2 %v", p1.Refused(), p2.Refused())
		}
	}
}

// Short-lived certificates of an agent and a proxy are renewed through the
// tree before they expire; after the old ones expired, new links use the new
// ones and the agent's batches (signed with its new key) still verify.
func TestRenewalThroughTree(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen)
	px.Cfg.TLS = tr.IssueTTL(pki.RoleProxy, "px", 5*time.Second)
	px.Cfg.TLS.RenewCheckMS = 200
	px.Start()
	a := tr.NewAgent("web", px.Cfg.Listen)
	a.Cfg.TLS = tr.IssueTTL(pki.RoleAgent, "web", 5*time.Second)
	a.Cfg.TLS.RenewCheckMS = 200
	a.Start()
	before, _ := os.ReadFile(a.Cfg.TLS.Cert)
	a.Emit(500)
	for deadline := time.Now().Add(15 * time.Second); a.Ship.Stats().Renewals == 0 || px.Renewals() == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("renewals: agent %d, proxy %d", a.Ship.Stats().Renewals, px.Renewals())
		}
	}
	after, _ := os.ReadFile(a.Cfg.TLS.Cert)
	if string(after) == string(before) {
		t.Fatal("agent certificate file unchanged after renewal")
	}
	if _, err := transport.LoadIdentity(a.Cfg.TLS.Cert, a.Cfg.TLS.Key, a.Cfg.TLS.CA, ""); err != nil {
		t.Fatalf("renewed agent key pair does not load: %v", err)
	}
	// Let the original certificates expire, then force new handshakes.
	time.Sleep(time.Until(time.Now().Add(5 * time.Second)))
	px.Stop()
	px.Start()
	a.Emit(500)
	if m := WaitAll(c, 20*time.Second, a); m != "" {
		t.Fatalf("after renewal and expiry of the old certificates: %s", m)
	}
	checkExact(t, c, a)
}

// An agent whose parents are all unreachable keeps recording; its uplink
// queue is capped, so the oldest bulk batches are dropped and counted, and
// the queue never grows past the cap.
func TestAgentShedsOldestBulkUnderPressure(t *testing.T) {
	tr := New(t)
	a := tr.NewAgent("web", FreeAddr(t)) // nobody listens there
	a.Cfg.Stream.MaxQueueBytes = 512 << 10
	a.Start()
	for i := 0; i < 40; i++ {
		emitRandom(t, a, 2000)
	}
	for deadline := time.Now().Add(20 * time.Second); a.Ship.Stats().Events < 80000; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 80000 events were cut into batches", a.Ship.Stats().Events)
		}
	}
	st := a.Ship.Stats()
	if st.Dropped == 0 {
		t.Fatalf("nothing dropped with a %d-byte queue cap: %+v", a.Cfg.Stream.MaxQueueBytes, st.Queue.Lanes)
	}
	bulk := st.Queue.Lanes[3]
	// The cap is checked before each new batch is queued, so the queue may
	// exceed it by at most one batch.
	if limit := int64(a.Cfg.Stream.MaxQueueBytes) + 512<<10; bulk.Bytes > limit {
		t.Errorf("bulk queue holds %d bytes, cap %d", bulk.Bytes, a.Cfg.Stream.MaxQueueBytes)
	}
	if st.Queue.Lanes[1].Entries != 0 || st.Queue.Lanes[2].Entries != 0 {
		t.Errorf("trace or alert lanes changed: %+v", st.Queue.Lanes)
	}
	if bulk.Entries < 2 {
		t.Errorf("only %d batches kept under a cap that holds two: dropping more than needed", bulk.Entries)
	}
	t.Logf("cut %d batches, dropped the %d oldest; %d queued (%d bytes)", st.Batches, st.Dropped, bulk.Entries, bulk.Bytes)
}

// The center ingests every stored batch into its SQL store, registers the
// fleet with proxy paths, and rebuilds the SQL store from the batch store
// after losing it.
func TestCenterSQLIngestAndReconcile(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	a := tr.NewAgent("web", px.Cfg.Listen).Start()
	a.Emit(4500)
	if m := WaitAll(c, 20*time.Second, a); m != "" {
		t.Fatal(m)
	}
	count := func() int {
		_, rows, _, err := c.SQL.Query(context.Background(), "SELECT count(*) FROM process_events WHERE host = 'web'", nil, 1, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return int(rows[0][0].(int64))
	}
	for deadline := time.Now().Add(10 * time.Second); count() != 4500; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("SQL store has %d of 4500 events", count())
		}
	}
	hosts, err := c.SQL.Hosts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var sawAgent bool
	for _, h := range hosts {
		if h.AgentID == "web" {
			sawAgent = true
			if len(h.ProxyPath) != 1 || h.ProxyPath[0] != "px" {
				t.Errorf("web's proxy path = %v, want [px]", h.ProxyPath)
			}
		}
	}
	if !sawAgent {
		t.Errorf("fleet registry lacks the agent: %+v", hosts)
	}
	// Lose the SQL store: the next start rebuilds it from the batch store.
	c.Stop()
	for _, suffix := range []string{"", "-wal", "-shm"} {
		os.Remove(filepath.Join(c.Cfg.DataDir, "center.db"+suffix))
	}
	c.Start()
	for deadline := time.Now().Add(20 * time.Second); count() != 4500; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("after losing center.db and restarting: %d events in SQL, want 4500", count())
		}
	}
}

// Apache spawning bash on an agent raises the default pack's alert at the
// center: events travel the tree, land in SQL, and the rule engine fires once.
func TestRuleAlertThroughTree(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	a := tr.NewAgent("web-1", px.Cfg.Listen).Start()
	now := time.Now().UnixNano()
	apache := capture.ProcKey{PID: 4100, Start: 900}
	bash := capture.ProcKey{PID: 4242, Start: 1000}
	evs := []capture.Event{
		{Time: now, Kind: capture.KindExec, Proc: apache, Parent: capture.ProcKey{PID: 1, Start: 1}, Comm: "apache2",
			Exec: &capture.Exec{Exe: "/usr/sbin/apache2", Argv: []string{"/usr/sbin/apache2", "-k", "start"}, UID: 33, EUID: 33}},
		{Time: now + 1, Kind: capture.KindFork, Proc: bash, Parent: apache, Comm: "apache2"},
		{Time: now + 2, Kind: capture.KindExec, Proc: bash, Parent: apache, Comm: "bash",
			Exec: &capture.Exec{Exe: "/usr/bin/bash", Argv: []string{"bash", "-c", "id"}, UID: 33, EUID: 33}},
	}
	if _, _, err := a.Store.Append(evs); err != nil {
		t.Fatal(err)
	}
	a.Ship.Kick()
	var rows [][]any
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		_, r, _, err := c.SQL.Query(context.Background(), "SELECT rule_id, host, pid, start FROM alerts WHERE rule_id = 'webserver-spawns-shell'", nil, 10, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if rows = r; len(rows) > 0 || time.Now().After(deadline) {
			break
		}
	}
	if len(rows) != 1 || rows[0][1] != "web-1" || rows[0][2] != int64(4242) {
		t.Fatalf("alerts = %v, want one webserver-spawns-shell alert for web-1 pid 4242", rows)
	}
}
