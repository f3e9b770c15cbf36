package loadgen

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
)

// TestAccounting runs a small tree for a few seconds and checks the
// generator's own accounting: every batch each agent queued is at the
// center exactly once, and the probes were measured. No timing is asserted.
func TestAccounting(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 20 agents and 3 proxies")
	}
	var out bytes.Buffer
	res, err := Run(context.Background(), Options{
		Dir: t.TempDir(), Agents: 20, Top: 1, Fanout: 2, Rate: 50, Duration: 5 * time.Second, Drain: time.Minute,
		AlertEvery: 500 * time.Millisecond, CmdEvery: 250 * time.Millisecond, TraceEvery: 50 * time.Millisecond, Seed: 7, Out: &out,
	})
	if res != nil {
		res.Report(&out)
	}
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatal(err)
	}
	if res.Emitted == 0 || res.Batches == 0 {
		t.Fatalf("the agents stored %d events in %d batches, want some", res.Emitted, res.Batches)
	}
	if res.CenterBatches != res.Batches || res.CenterEvents != res.Events {
		t.Fatalf("center has %d batches, %d events; agents queued %d, %d", res.CenterBatches, res.CenterEvents, res.Batches, res.Events)
	}
	if res.Trace.Seen != res.Trace.Sent || res.Trace.Sent == 0 {
		t.Errorf("trace events: %d of %d seen at the center, want all (and some)", res.Trace.Seen, res.Trace.Sent)
	}
	if res.Alert.Seen != res.Alert.Sent || res.Alert.Sent == 0 {
		t.Errorf("exec-from-temp-dir alerts: %d of %d probes, want all (and some)", res.Alert.Seen, res.Alert.Sent)
	}
	if res.Command.Seen != res.Command.Sent || res.Command.Sent == 0 {
		t.Errorf("commands acknowledged: %d of %d, want all (and some)", res.Command.Seen, res.Command.Sent)
	}
}

// TestChurnLineage checks that the churn model keeps real lineage: every
// fork is from a live parent, every exec, connect and exit is of a live
// process, and the live set stays bounded.
func TestChurnLineage(t *testing.T) {
	c := newChurn(1)
	live := map[uint32]bool{}
	for _, r := range roots {
		live[r.key.PID] = true
	}
	var evs []capture.Event
	for range 5000 {
		evs = c.step(int64(len(evs)), evs[:0])
		for _, ev := range evs {
			switch ev.Kind {
			case capture.KindFork:
				if !live[ev.Parent.PID] {
					t.Fatalf("fork from %d, which is not alive", ev.Parent.PID)
				}
				live[ev.Proc.PID] = true
			case capture.KindExec, capture.KindConnect:
				if !live[ev.Proc.PID] {
					t.Fatalf("%s by %d, which is not alive", ev.Kind, ev.Proc.PID)
				}
			case capture.KindExit:
				if !live[ev.Proc.PID] {
					t.Fatalf("exit of %d, which is not alive", ev.Proc.PID)
				}
				delete(live, ev.Proc.PID)
			}
		}
	}
	if len(live) > maxLive {
		t.Fatalf("%d live processes, want at most %d", len(live), maxLive)
	}
}
