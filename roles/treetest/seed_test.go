package treetest

import (
	"context"
	"os/exec"
	"testing"
	"time"
)

// A process that was running before the agent started reaches the center
// (as a seeded exec), with its parent, so lineage at the center goes back
// past the agent's start.
func TestSeededProcessesReachCenter(t *testing.T) {
	needRootEBPF(t)
	old := exec.Command("/bin/sleep", "60")
	if err := old.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { old.Process.Kill(); old.Wait() }()
	start := procStart(t, old.Process.Pid)

	tr := New(t)
	c := tr.NewCenter("center").Start()
	tr.newRealAgent("host-s", c.Cfg.Listen).Start()
	ctx := context.Background()
	eventually(t, 30*time.Second, "the pre-existing sleep at the center", func() bool {
		p, ok, err := c.SQL.Process(ctx, "host-s", uint32(old.Process.Pid), start)
		return err == nil && ok && p.Seeded && p.Exec.Exe == "/usr/bin/sleep"
	})
	anc, err := c.SQL.Ancestors(ctx, "host-s", uint32(old.Process.Pid), start)
	if err != nil || len(anc) == 0 {
		t.Fatalf("ancestors of the seeded sleep: %v, %v; want its parent chain", anc, err)
	}
}
