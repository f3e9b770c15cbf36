package loadgen_test

import (
	"bytes"
	"context"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/cli"
	"github.com/evilbitlabs/daemoneye/internal/loadgen"
)

// childEnv makes this test binary act as the daemoneye binary: the
// generator runs the center and the proxies as child processes of it.
const childEnv = "DAEMONEYE_LOADGEN_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		code := cli.Main(ctx, os.Args, cli.Build{Version: "test"}, os.Stdout, os.Stderr, os.Environ())
		stop()
		os.Exit(code)
	}
	os.Exit(m.Run())
}

// TestAccounting runs a small tree for a few seconds (center and proxies as
// child processes) and checks the generator's own accounting: every batch
// each agent queued is at the center exactly once, and every probe was
// measured. No timing is asserted.
func TestAccounting(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a center, 3 proxies and 12 agents")
	}
	// The center and proxies: the built binary when make test names it,
	// else this test binary acting as it (TestMain).
	bin, env := os.Getenv("DAEMONEYE_BIN"), []string(nil)
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		bin, env = exe, []string{childEnv + "=1"}
	}
	var out bytes.Buffer
	dir := t.TempDir()
	res, err := loadgen.Run(context.Background(), loadgen.Options{
		Bin: bin, BinEnv: env,
		Dir: dir, Agents: 12, Top: 1, Fanout: 2, Rate: 50, Duration: 6 * time.Second, Drain: 2 * time.Minute,
		AlertEvery: 500 * time.Millisecond, CmdEvery: 300 * time.Millisecond, TraceEvery: 50 * time.Millisecond,
		BigHost: 500, LineageEvery: 2 * time.Second, Seed: 7, Out: &out,
	})
	if res != nil {
		res.Report(&out)
	}
	t.Log("\n" + out.String())
	if err != nil {
		for _, name := range []string{"center", "px0", "px0-0"} {
			if b, rerr := os.ReadFile(dir + "/logs/" + name + ".log"); rerr == nil {
				t.Logf("%s log:\n%s", name, b)
			}
		}
		t.Fatal(err)
	}
	if res.Emitted == 0 || res.Batches == 0 {
		t.Fatalf("the agents stored %d events in %d batches, want some", res.Emitted, res.Batches)
	}
	if res.StoreBatches != res.Batches || res.SQLBatches != res.Batches || res.SQLRows != res.Events {
		t.Fatalf("center: batch store %d batches, SQL %d batches and %d event rows; agents queued %d batches of %d events",
			res.StoreBatches, res.SQLBatches, res.SQLRows, res.Batches, res.Events)
	}
	if res.Trace.Seen != res.Trace.Sent || res.Trace.Sent == 0 {
		t.Errorf("trace events: %d of %d seen at the center, want all (and some)", res.Trace.Seen, res.Trace.Sent)
	}
	if res.Alert.Seen != res.Alert.Sent || res.Alert.Sent == 0 {
		t.Errorf("exec-from-temp-dir alerts: %d of %d probes, want all (and some)", res.Alert.Seen, res.Alert.Sent)
	}
	if res.TraceCommand.Seen != res.TraceCommand.Sent || res.TraceCommand.Sent == 0 || len(res.TraceErrors) > 0 {
		t.Errorf("signed trace commands answered: %d of %d (errors %v), want all (and some)", res.TraceCommand.Seen, res.TraceCommand.Sent, res.TraceErrors)
	}
	if res.TraceRefused > 0 {
		t.Errorf("the agents refused %d trace commands", res.TraceRefused)
	}
	var lineage int
	for k, l := range res.Lineage {
		if strings.HasPrefix(k, "idle") {
			lineage += l.Seen
		}
	}
	if lineage == 0 {
		t.Errorf("no lineage query on the big host answered: %v", res.Lineage)
	}
	if res.LoadUse.Center.CPU <= 0 || res.Final.Center.HWM <= 0 || res.Final.Px1.HWM <= 0 {
		t.Errorf("no CPU or memory read for the children: %+v", res.Final)
	}
}
