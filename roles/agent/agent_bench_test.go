package agent

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
)

// storm runs n fork+exec of /bin/true on `workers` goroutines and returns the
// wall time and the pids it spawned.
func storm(b *testing.B, n, workers int) (time.Duration, map[uint32]bool) {
	b.Helper()
	pids := make([][]uint32, workers)
	var wg sync.WaitGroup
	attr := &syscall.ProcAttr{Env: []string{}, Files: []uintptr{0, 1, 2}}
	start := time.Now()
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < n/workers; i++ {
				pid, err := syscall.ForkExec("/bin/true", []string{"/bin/true"}, attr)
				if err != nil {
					b.Error(err)
					return
				}
				var ws syscall.WaitStatus
				syscall.Wait4(pid, &ws, 0, nil)
				pids[w] = append(pids[w], uint32(pid))
			}
		}(w)
	}
	wg.Wait()
	d := time.Since(start)
	set := map[uint32]bool{}
	for _, ps := range pids {
		for _, p := range ps {
			set[p] = true
		}
	}
	return d, set
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// BenchmarkExecStorm measures a tight fork+exec loop of /bin/true with no
// agent and with the full agent (sensor, rate cap, store) running, in
// alternating rounds of one run, and checks every exec against ground truth.
func BenchmarkExecStorm(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	const n, workers, rounds = 4000, 2, 5
	for _, mode := range []string{"ebpf", "proc"} {
		b.Run(mode, func(b *testing.B) {
			var off, on []time.Duration
			var spawned, captured int
			lost := map[string]uint64{}
			for b.Loop() {
				for r := 0; r < rounds; r++ {
					d, _ := storm(b, n, workers)
					off = append(off, d)

					c := benchConfig(b, mode)
					a, err := New(c, slog.New(slog.NewTextHandler(io.Discard, nil)))
					if err != nil {
						b.Fatal(err)
					}
					ctx, cancel := context.WithCancel(context.Background())
					done := make(chan error, 1)
					go func() { done <- a.Run(ctx) }()
					<-a.Ready()
					d, pids := storm(b, n, workers)
					on = append(on, d)
					time.Sleep(300 * time.Millisecond) // let the last batch land
					cancel()
					if err := <-done; err != nil {
						b.Fatal(err)
					}
					got := countExecs(b, c.DataDir, pids)
					spawned += len(pids)
					captured += got
					for k, v := range a.Lost() {
						lost[k] += v
					}
				}
			}
			mo, mn := median(off), median(on)
			b.ReportMetric(float64(mo.Nanoseconds())/n, "ns/exec-off")
			b.ReportMetric(float64(mn.Nanoseconds())/n, "ns/exec-on")
			b.ReportMetric((float64(mn)/float64(mo)-1)*100, "%slowdown")
			b.ReportMetric(float64(spawned-captured), "execs-missed")
			b.ReportMetric(float64(spawned)/float64(rounds)/mo.Seconds(), "execs/s-off")
			b.Logf("%s: %d rounds of %d execs on %d workers: median off %v, on %v (%.2f%%); %d/%d execs captured; lost %v",
				mode, rounds, n, workers, mo, mn, (float64(mn)/float64(mo)-1)*100, captured, spawned, lost)
		})
	}
}

func benchConfig(b *testing.B, mode string) (c config.Agent) {
	c = config.Default().Agent
	c.DataDir = filepath.Join(b.TempDir(), "agent")
	c.Capture = mode
	c.Standalone = true
	c.Metrics.Listen = ""
	c.Baseline.MaxEventsPerSec = 1_000_000
	return c
}

// countExecs counts exec events of /bin/true among pids in the store.
func countExecs(b *testing.B, dataDir string, pids map[uint32]bool) int {
	b.Helper()
	in, err := OpenInspector(dataDir, "/proc", 4096)
	if err != nil {
		b.Fatal(err)
	}
	defer in.Close()
	if in.st == nil {
		b.Fatalf("store not readable offline (origin %s)", in.Origin)
	}
	seen := map[uint32]bool{}
	err = in.st.EventsBySeq(0, func(ev capture.Event) bool {
		if ev.Kind == capture.KindExec && pids[ev.Proc.PID] && ev.Exec != nil && strings.HasSuffix(ev.Exec.Exe, "/true") {
			seen[ev.Proc.PID] = true
		}
		return true
	})
	if err != nil {
		b.Fatal(err)
	}
	return len(seen)
}

// BenchmarkAgentStart10k spawns 10,000 sleeping processes, starts the real
// daemoneye binary as an agent, and reports the time to a seeded process
// table (from the agent's own log line) and its resident memory.
func BenchmarkAgentStart10k(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	bin := os.Getenv("DAEMONEYE_BIN")
	if bin == "" {
		b.Skip("set DAEMONEYE_BIN to the built binary (make bench does)")
	}
	const procs = 10000
	stop := spawnSleepers(b, procs)
	defer stop()
	for b.Loop() {
		dir := b.TempDir()
		cmd := exec.Command(bin, "agent", "--standalone", "--data-dir", dir, "--set", "agent.metrics.listen=")
		stderr, _ := cmd.StderrPipe()
		start := time.Now()
		if err := cmd.Start(); err != nil {
			b.Fatal(err)
		}
		seeded, took, procsSeen := waitSeeded(b, stderr)
		wall := time.Since(start)
		time.Sleep(2 * time.Second) // settle, then read memory
		rss, hwm := readRSS(cmd.Process.Pid)
		cmd.Process.Signal(os.Interrupt)
		cmd.Wait()
		if !seeded {
			b.Fatal("agent never logged a seeded table")
		}
		b.ReportMetric(float64(took.Milliseconds()), "ms-seed")
		b.ReportMetric(float64(wall.Milliseconds()), "ms-start-to-seeded")
		b.ReportMetric(float64(rss)/1024, "MiB-rss")
		b.ReportMetric(float64(hwm)/1024, "MiB-rss-peak")
		b.Logf("seeded %d processes in %v (%v from exec to seeded); RSS %.1f MiB, peak %.1f MiB", procsSeen, took, wall, float64(rss)/1024, float64(hwm)/1024)
		if procsSeen < procs {
			b.Errorf("seeded %d processes, want at least %d", procsSeen, procs)
		}
	}
}

var seededLine = regexp.MustCompile(`msg="process table seeded".* processes=(\d+) took=(\S+)`)

// waitSeeded reads the agent's log until its "seeded" line, for at most a
// minute.
func waitSeeded(b *testing.B, r io.Reader) (bool, time.Duration, int) {
	type found struct {
		d time.Duration
		n int
	}
	fc := make(chan found, 1)
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			if m := seededLine.FindStringSubmatch(sc.Text()); m != nil {
				n, _ := strconv.Atoi(m[1])
				d, _ := time.ParseDuration(m[2])
				fc <- found{d, n}
				io.Copy(io.Discard, r)
				return
			}
		}
	}()
	select {
	case f := <-fc:
		return true, f.d, f.n
	case <-time.After(60 * time.Second):
		return false, 0, 0
	}
}

func readRSS(pid int) (rss, hwm int64) {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			v, _ := strconv.ParseInt(f[1], 10, 64)
			switch f[0] {
			case "VmRSS:":
				rss = v
			case "VmHWM:":
				hwm = v
			}
		}
	}
	return
}

// spawnSleepers starts n sleeping processes in their own process group and
// returns a function that kills them all.
func spawnSleepers(b *testing.B, n int) func() {
	b.Helper()
	script := fmt.Sprintf(`for i in $(seq %d); do sleep 600 & done; echo ready; wait`, n)
	cmd := exec.Command("/bin/bash", "-c", script)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	kill := func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if sc.Text() == "ready" {
				close(ready)
				return
			}
		}
	}()
	select {
	case <-ready:
	case <-time.After(120 * time.Second):
		kill()
		b.Fatal("10k sleepers not started within 120s")
	}
	return kill
}
