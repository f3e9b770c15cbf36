package treetest

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// A rule marked runs_on agent fires at the agent on its own events; the
// alert travels on the alert lane and the center records it once.
func TestAgentRuleAlert(t *testing.T) {
	needRootEBPF(t)
	tr := New(t)
	c := tr.NewCenter("center").Start()
	alerts := laneAlerts(c)
	ag := tr.newRealAgent("host-r", c.Cfg.Listen).Start()
	_ = ag

	// A program run from a temporary directory: exec-from-temp-dir.
	pid := runCopy(t, t.TempDir(), "dropper")
	var got capture.Event
	eventually(t, 30*time.Second, "the agent's alert on the alert lane", func() bool {
		for _, e := range alerts() {
			if e.Proc.PID == pid && e.Alert.RuleID == "exec-from-temp-dir" {
				got = e
				return true
			}
		}
		return false
	})
	if got.Alert.Severity == "" || got.Alert.Technique != "T1105" {
		t.Errorf("alert %+v: want severity and technique from the rule", got.Alert)
	}
	var n int
	eventually(t, 30*time.Second, "the alert in the center's alerts table", func() bool {
		err := c.SQL.ReadOnly().QueryRowContext(context.Background(),
			`SELECT count(*) FROM alerts WHERE rule_id = 'exec-from-temp-dir' AND host = 'host-r' AND pid = ?`, pid).Scan(&n)
		return err == nil && n > 0
	})
	if n != 1 {
		t.Errorf("%d alert rows for one process and rule, want 1 (deduplicated with the center's own match)", n)
	}
}

// laneAlerts collects the alert events the center stores from the alert
// lane; the returned function gives those so far.
func laneAlerts(c *Center) func() []capture.Event {
	var (
		mu     sync.Mutex
		alerts []capture.Event
	)
	c.Ingest.SetOnStored(func(b *wire.Batch, lane wire.Lane) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range b.Events {
			if e.Kind == capture.KindAlert && lane == wire.LaneAlert {
				alerts = append(alerts, e)
			}
		}
	})
	return func() []capture.Event {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(alerts)
	}
}
