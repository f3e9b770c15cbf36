//go:build linux && amd64

package capture

import (
	"context"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// stormBatch is how many /bin/true processes one benchmark iteration runs,
// spread over GOMAXPROCS workers: even at -benchtime=1x (make bench) an
// iteration is long enough to time.
const stormBatch = 256

// execStorm fork+execs /bin/true n times on workers goroutines and reaps
// each child, the cheapest way Go can start a process (no os/exec pipes).
// spawned, when not nil, is called with each child's pid.
func execStorm(b *testing.B, n, workers int, spawned func(pid int)) {
	var wg sync.WaitGroup
	var next atomic.Int64
	argv := []string{"/bin/true"}
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				pid, err := syscall.ForkExec(argv[0], argv, &syscall.ProcAttr{})
				if err != nil {
					b.Errorf("fork+exec /bin/true: %v", err)
					return
				}
				if spawned != nil {
					spawned(pid)
				}
				var ws syscall.WaitStatus
				if _, err := syscall.Wait4(pid, &ws, 0, nil); err != nil {
					b.Errorf("wait4 %d: %v", pid, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

// BenchmarkExecStorm runs the same exec storm with the sensor off and on,
// side by side, and reports ns/exec for each, the on/off ratio (the target
// is under 1.03) and how many of the storm's execs the sensor missed.
func BenchmarkExecStorm(b *testing.B) {
	workers := runtime.GOMAXPROCS(0)
	var offNsPerExec float64

	b.Run("off", func(b *testing.B) {
		execs := 0
		for b.Loop() {
			execStorm(b, stormBatch, workers, nil)
			execs += stormBatch
		}
		offNsPerExec = float64(b.Elapsed().Nanoseconds()) / float64(execs)
		b.ReportMetric(offNsPerExec, "ns/exec")
	})

	b.Run("on", func(b *testing.B) {
		src := openEBPF(b, DefaultOptions())
		truePath, err := filepath.EvalSymlinks("/bin/true")
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan Event, 1<<16)
		// Pids of exec events for /bin/true; other processes on the host
		// may run it too, so misses are counted by the storm's own pids.
		var mu sync.Mutex
		captured := map[int]bool{}
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _ = src.Run(ctx, out) }()
		go func() {
			defer wg.Done()
			for {
				select {
				case ev := <-out:
					if ev.Kind == KindExec && ev.Exec.Exe == truePath {
						mu.Lock()
						captured[int(ev.Proc.PID)] = true
						mu.Unlock()
					}
				case <-ctx.Done():
					return
				}
			}
		}()
		defer func() { cancel(); wg.Wait() }()

		var spawned []int
		var spawnedMu sync.Mutex
		record := func(pid int) { spawnedMu.Lock(); spawned = append(spawned, pid); spawnedMu.Unlock() }
		for b.Loop() {
			execStorm(b, stormBatch, workers, record)
		}
		onNsPerExec := float64(b.Elapsed().Nanoseconds()) / float64(len(spawned))

		// Let the consumer catch up (bounded) before counting misses.
		missed := len(spawned)
		for deadline := time.Now().Add(2 * time.Second); missed > 0 && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
			missed = 0
			mu.Lock()
			for _, pid := range spawned {
				if !captured[pid] {
					missed++
				}
			}
			mu.Unlock()
		}
		lost := src.Lost()
		b.ReportMetric(onNsPerExec, "ns/exec")
		if offNsPerExec > 0 {
			b.ReportMetric(onNsPerExec/offNsPerExec, "on/off")
		}
		b.ReportMetric(float64(len(spawned)), "spawned")
		b.ReportMetric(float64(missed), "missed")
		b.ReportMetric(float64(lost[LossRingFull]), "ring_lost")
		b.ReportMetric(float64(lost[LossBackpressure]), "backpressure_lost")
	})

	// paired alternates small storms with the sensor detached and
	// attached (programs stay loaded) and reports the median of the
	// per-pair ratios: on a shared or noisy host, load that comes and goes
	// hits both halves of a pair alike, where off-then-on runs seconds
	// apart can differ by more than the 3% being measured.
	b.Run("paired", func(b *testing.B) {
		src := openEBPF(b, DefaultOptions())
		ctx, cancel := context.WithCancel(context.Background())
		out := make(chan Event, 1<<16)
		var wg sync.WaitGroup
		wg.Add(2)
		go func() { defer wg.Done(); _ = src.Run(ctx, out) }()
		go func() {
			defer wg.Done()
			for {
				select {
				case <-out:
				case <-ctx.Done():
					return
				}
			}
		}()
		defer func() { cancel(); wg.Wait() }()

		const half = stormBatch / 4
		var wallRatios, cpuRatios []float64
		var offTotal, onTotal time.Duration
		timed := func(attached bool) (wall, cpu time.Duration) {
			var err error
			if attached {
				err = src.attach()
			} else {
				err = src.detach()
			}
			if err != nil {
				b.Fatal(err)
			}
			start, cpu0 := time.Now(), cpuTime()
			execStorm(b, half, workers, nil)
			return time.Since(start), cpuTime() - cpu0
		}
		for i := 0; b.Loop(); i++ {
			// Alternate which half runs first, so that whatever the
			// previous half leaves behind (attach and detach work, a
			// warm cache) weighs on both alike.
			var offWall, offCPU, onWall, onCPU time.Duration
			if i%2 == 0 {
				offWall, offCPU = timed(false)
				onWall, onCPU = timed(true)
			} else {
				onWall, onCPU = timed(true)
				offWall, offCPU = timed(false)
			}
			offTotal += offWall
			onTotal += onWall
			wallRatios = append(wallRatios, float64(onWall)/float64(offWall))
			cpuRatios = append(cpuRatios, float64(onCPU)/float64(offCPU))
		}
		b.ReportMetric(median(wallRatios), "median_on/off")
		b.ReportMetric(median(cpuRatios), "median_cpu_on/off")
		b.ReportMetric(float64(onTotal)/float64(offTotal), "sum_on/off")
		b.ReportMetric(float64(len(wallRatios)), "pairs")
	})
}

// cpuTime is the CPU time of this process (the sensor's reader included)
// and of its reaped children (where the kernel-side programs run).
func cpuTime() time.Duration {
	var self, children syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &children)
	return time.Duration(self.Utime.Nano() + self.Stime.Nano() + children.Utime.Nano() + children.Stime.Nano())
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	v = slices.Clone(v)
	slices.Sort(v)
	return v[len(v)/2]
}

// BenchmarkEBPFDecode measures the userspace cost per record: an exec with a
// typical argv, and the fixed-size fork record.
func BenchmarkEBPFDecode(b *testing.B) {
	exec := execRecord(0, "/usr/bin/git", "/home/user/src/project", "", []byte("git\x00status\x00--short\x00"))
	fork := make([]byte, hdrSize)
	fork[hdrKind] = evKindFork
	copy(fork[hdrComm:], "bash")
	for _, bc := range []struct {
		name string
		rec  []byte
	}{{"exec", exec}, {"fork", fork}} {
		b.Run(bc.name, func(b *testing.B) {
			var d recordDecoder
			var ev Event
			b.ReportAllocs()
			for b.Loop() {
				if err := d.decode(bc.rec, &ev); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
