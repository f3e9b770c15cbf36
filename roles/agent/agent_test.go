package agent

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"github.com/evilbitlabs/daemoneye/privacy"
)

func testConfig(t *testing.T, mode string) config.Agent {
	c := config.Default().Agent
	c.DataDir = filepath.Join(t.TempDir(), "agent")
	c.Capture = mode
	c.Standalone = true
	c.Metrics.Listen = ""
	c.Stream.BatchMaxMS = 20
	return c
}

// startAgent runs an agent until the test ends and waits for its seeding.
func startAgent(t *testing.T, c config.Agent) *Agent {
	t.Helper()
	a, err := New(c, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("new agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("agent did not stop within 10s of cancel")
		}
	})
	select {
	case <-a.Ready():
	case err := <-done:
		t.Fatalf("agent stopped before seeding: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("agent not seeded within 15s")
	}
	return a
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func TestAgentRecordsLineage(t *testing.T) {
	testenv.NeedRoot(t)
	for _, mode := range []string{"ebpf", "proc"} {
		t.Run(mode, func(t *testing.T) { testAgentRecordsLineage(t, mode) })
	}
}

func testAgentRecordsLineage(t *testing.T, mode string) {
	c := testConfig(t, mode)
	mountsBefore := mounts(t)
	tmpBefore := listings(t)
	startAgent(t, c)

	// sh (with a secret in its arguments) -> sleep; they live long enough
	// for the /proc fallback to read them.
	cmd := exec.Command("/bin/sh", "-c", "/bin/sleep 1.5 1; echo hunter2 >/dev/null; exit 0")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	shPID := uint32(cmd.Process.Pid)

	in, err := OpenInspector(c.DataDir, "/proc", 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if in.Origin != "agent" {
		t.Fatalf("inspector origin = %q, want agent (the socket)", in.Origin)
	}

	// Wait, bounded, for the sleep child to be in the table under sh.
	var lin Lineage
	deadline := time.Now().Add(5 * time.Second)
	for {
		lin, err = in.Lineage(shPID, privacy.Reveal{})
		if err == nil && len(lin.Descendants) > 0 && lin.Descendants[0].Exec.Exe == "/usr/bin/sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("lineage of sh %d never showed its sleep child: %+v, %v", shPID, lin, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got, want := lin.Target.Parent.PID, uint32(os.Getpid()); got != want {
		t.Errorf("sh's parent = %d, want the test process %d", got, want)
	}
	var sawSelf bool
	for _, anc := range lin.Ancestors {
		if anc.Key.PID == uint32(os.Getpid()) {
			sawSelf = true
		}
	}
	if !sawSelf {
		t.Errorf("ancestors of sh lack the test process %d: %+v", os.Getpid(), lin.Ancestors)
	}
	sleep := lin.Descendants[0]
	if got := sleep.Command(); got != "/bin/sleep [2 args masked]" {
		t.Errorf("masked command = %q, want %q", got, "/bin/sleep [2 args masked]")
	}

	// Revealing needs a reason, and a granted reveal is audited.
	if _, err := in.Lineage(shPID, privacy.Reveal{On: true}); !errors.Is(err, privacy.ErrNoReason) {
		t.Errorf("reveal without reason: err = %v, want ErrNoReason", err)
	}
	lin, err = in.Lineage(shPID, privacy.Reveal{On: true, Reason: "test: reveal path"})
	if err != nil {
		t.Fatal(err)
	}
	if got := lin.Descendants[0].Command(); got != "/bin/sleep 1.5 1" {
		t.Errorf("revealed command = %q", got)
	}
	audit, err := os.ReadFile(filepath.Join(c.DataDir, "audit.log"))
	if err != nil || !bytes.Contains(audit, []byte(`"reason":"test: reveal path"`)) || !bytes.Contains(audit, []byte("uid=0")) {
		t.Errorf("audit.log = %q, %v; want the reveal with reason and uid", audit, err)
	}

	// The tree view renders and masks.
	vs, err := in.Processes(false, privacy.Reveal{})
	if err != nil {
		t.Fatal(err)
	}
	var tree bytes.Buffer
	if err := WriteTree(&tree, vs); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(tree.String(), "hunter2") {
		t.Errorf("ps --tree shows a masked argument:\n%s", tree.String())
	}
	if !strings.Contains(tree.String(), "└─ /bin/sleep [2 args masked]") {
		t.Errorf("ps --tree lacks the sleep under sh:\n%s", tree.String())
	}

	// Exit is recorded with its code once the process is gone.
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		lin, err = in.Lineage(shPID, privacy.Reveal{})
		if err == nil && lin.Target.Exit != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("exit of sh %d never recorded: %+v, %v", shPID, lin.Target, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if lin.Target.Exit.Code != 0 {
		t.Errorf("sh exit code = %d, want 0", lin.Target.Exit.Code)
	}

	st, err := in.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Source != mode || st.Seeded < 10 || st.Stored == 0 {
		t.Errorf("stats = %+v; want source %s, a seeded table and stored events", st, mode)
	}
	if _, ok := st.Lost[capture.LossRateLimit]; !ok {
		t.Errorf("stats lack the rate_limit loss counter: %+v", st.Lost)
	}

	// Nothing outside the data directory: no new mounts, no new files in
	// the usual places, and every file the agent holds open is its own.
	checkFDs(t, c.DataDir)
	if got := mounts(t); got != mountsBefore {
		t.Errorf("the host's mount table changed while the agent ran:\nbefore:\n%s\nafter:\n%s", mountsBefore, got)
	}
	if got := listings(t); got != tmpBefore {
		t.Errorf("files appeared outside the data dir:\nbefore: %s\nafter: %s", tmpBefore, got)
	}
}

func mounts(t *testing.T) string {
	m, err := testnet.HostMounts()
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// otherScratch: names that tests, the Go toolchain and the browser tests
// create in /tmp while this test runs (go test builds and runs packages in
// parallel); the agent's own files would have none of these prefixes.
func otherScratch(name string) bool {
	for _, p := range []string{"Test", "Fuzz", "Benchmark", "go-build", "go-link", "daemoneye-", "org.chromium.", ".org.chromium.", "chromedp-"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// listings names the entries of the shared scratch directories.
func listings(t *testing.T) string {
	var b strings.Builder
	for _, d := range []string{"/tmp", "/var/tmp", "/dev/shm", "/run"} {
		es, _ := os.ReadDir(d)
		for _, e := range es {
			if otherScratch(e.Name()) {
				continue // temp dirs of this and other test binaries, the toolchain and browsers running in parallel
			}
			if filepath.Join(d, e.Name()) == "/run/netns" {
				continue // made by `ip netns` in the namespace tests running in parallel
			}
			b.WriteString(filepath.Join(d, e.Name()) + " ")
		}
	}
	return b.String()
}

// checkFDs fails if this process holds a regular file open outside dataDir
// (the agent runs in the test process, which itself opens none).
func checkFDs(t *testing.T, dataDir string) {
	es, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range es {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err != nil || !strings.HasPrefix(target, "/") {
			continue // sockets, pipes, anon inodes
		}
		if strings.HasPrefix(target, "/dev/") || strings.HasPrefix(target, "/proc/") || strings.HasPrefix(target, "/sys/") {
			continue
		}
		if !strings.HasPrefix(target, dataDir) && !strings.Contains(target, "go-build") && !strings.HasSuffix(target, ".test") {
			t.Errorf("fd %s is open on %s, outside the data dir %s", e.Name(), target, dataDir)
		}
	}
}

func TestAgentRateCapCounts(t *testing.T) {
	testenv.NeedRoot(t)
	c := testConfig(t, "ebpf")
	c.Baseline.MaxEventsPerSec = 5
	a := startAgent(t, c)
	for i := 0; i < 40; i++ {
		if err := exec.Command("/bin/true").Run(); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for a.Lost()[capture.LossRateLimit] == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("40 execs over a 5/s cap lost nothing: %v", a.Lost())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("lost to the rate cap: %d", a.Lost()[capture.LossRateLimit])
}

func TestLineageOffline(t *testing.T) {
	testenv.NeedRoot(t)
	c := testConfig(t, "ebpf")
	func() {
		a, err := New(c, slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		<-a.Ready()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}()
	// The agent is stopped: the inspector reads its store.
	in, err := OpenInspector(c.DataDir, "/proc", 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if in.Origin != "store" {
		t.Fatalf("origin = %q, want store", in.Origin)
	}
	lin, err := in.Lineage(uint32(os.Getpid()), privacy.Reveal{})
	if err != nil {
		t.Fatal(err)
	}
	if lin.Target.Key.PID != uint32(os.Getpid()) || !lin.Target.Seeded {
		t.Errorf("offline lineage target = %+v, want this seeded process", lin.Target)
	}
	if len(lin.Ancestors) == 0 || lin.Ancestors[0].Key.PID != 1 {
		t.Errorf("ancestors do not start at pid 1: %+v", lin.Ancestors)
	}
	if _, err := in.Lineage(4_000_000_000, privacy.Reveal{}); !errors.Is(err, ErrNoProcess) {
		t.Errorf("unknown pid: err = %v, want ErrNoProcess", err)
	}

	// No data dir at all: a live /proc scan.
	in2, err := OpenInspector(filepath.Join(t.TempDir(), "none"), "/proc", 4096)
	if err != nil {
		t.Fatal(err)
	}
	if in2.Origin != "proc" {
		t.Errorf("origin = %q, want proc", in2.Origin)
	}
	if _, err := in2.Lineage(uint32(os.Getpid()), privacy.Reveal{}); err != nil {
		t.Errorf("live lineage of self: %v", err)
	}
}
