package loadgen

import (
	"bufio"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Result is what a run measured.
type Result struct {
	Options Options
	Started time.Time
	NoFile  uint64 // RLIMIT_NOFILE in effect
	Proxies int

	StartAgents time.Duration // agents started until all were routable at the center
	Load        time.Duration
	DrainTime   time.Duration

	// Accounting (the check).
	Emitted, Events, Batches, ShedBatches      uint64 // agents: stored, sealed, queued, shed
	CenterBatches, CenterEvents, CenterReplays uint64
	SQLProcessEvents                           int64
	Check                                      string // "" when every (agent, seq) is at the center exactly once

	Alert, Command, Trace Latency

	// Resources of the whole process (center, proxies and agents).
	LoadCPU, TotalCPU time.Duration // during the load; load + drain
	RoleCPU           RoleCPU       // load + drain, by role, from a CPU profile (nil: none)
	RSSAfterLoad, HWM int64         // bytes
	// RSSTree is before the agents start (center and proxies idle),
	// RSSAgents once every agent is connected (before the load).
	RSSTree, RSSAgents int64
	Disk               Disk
}

// Disk is the bytes on disk by role at the end of the run.
type Disk struct {
	Center, Proxies, Agents int64
}

func diskUsage(dir string, agents int) Disk {
	var d Disk
	d.Center = du(filepath.Join(dir, "center"))
	d.Agents = du(filepath.Join(dir, "agents"))
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "px") {
			d.Proxies += du(filepath.Join(dir, e.Name()))
		}
	}
	return d
}

// du sums the allocated blocks of the files under dir (preallocated
// Pebble WAL files count as what they hold on disk).
func du(dir string) int64 {
	var n int64
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		var st syscall.Stat_t
		if syscall.Lstat(p, &st) == nil {
			n += st.Blocks * 512
		}
		return nil
	})
	return n
}

func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// statusKB reads a "Key:  N kB" line of /proc/self/status.
func statusKB(key string) int64 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

func rss() int64 { return statusKB("VmRSS") }
func hwm() int64 { return statusKB("VmHWM") }

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func (l Latency) String() string {
	if l.Seen == 0 {
		return fmt.Sprintf("none measured (%d sent)", l.Sent)
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s  (%d of %d)", ms(l.P50), ms(l.P99), ms(l.Max), l.Seen, l.Sent)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// Report writes the result as the benchmark's text report.
func (r *Result) Report(w io.Writer) {
	o := r.Options
	per1k := func(v float64) float64 { return v * 1000 / float64(o.Agents) }
	fmt.Fprintf(w, "scale: %d agents -> %d level-2 proxies -> %d level-1 proxies -> center; %.0f events/s per agent for %s\n",
		o.Agents, o.Top*o.Fanout, o.Top, o.Rate, o.Duration)
	fmt.Fprintf(w, "  agents connected in           %s (RLIMIT_NOFILE %d)\n", r.StartAgents.Round(time.Millisecond), r.NoFile)
	fmt.Fprintf(w, "  events: stored by agents      %d (%.0f/s)\n", r.Emitted, float64(r.Emitted)/r.Load.Seconds())
	fmt.Fprintf(w, "  batches queued / at center    %d / %d (replays dropped %d, shed %d)\n", r.Batches, r.CenterBatches, r.CenterReplays, r.ShedBatches)
	fmt.Fprintf(w, "  events sealed / at center     %d / %d (SQL process_events %d)\n", r.Events, r.CenterEvents, r.SQLProcessEvents)
	fmt.Fprintf(w, "  drain after the load          %s\n", r.DrainTime.Round(time.Millisecond))
	if r.Check == "" {
		fmt.Fprintf(w, "  check                         ok: every (agent, seq) at the center exactly once\n")
	} else {
		fmt.Fprintf(w, "  check                         FAILED: %s\n", r.Check)
	}
	fmt.Fprintf(w, "  exec -> alert                 %s   target p99 < 500 ms\n", r.Alert)
	fmt.Fprintf(w, "  command round trip            %s\n", r.Command)
	fmt.Fprintf(w, "  trace lane under bulk         %s   target p99 < 100 ms\n", r.Trace)
	fmt.Fprintf(w, "  process CPU (all roles)       %.1f s in the load (%.2f cores), %.1f s with drain; %.1f CPU-s per 1,000 agent-minutes\n",
		r.LoadCPU.Seconds(), r.LoadCPU.Seconds()/r.Load.Seconds(), r.TotalCPU.Seconds(), per1k(r.LoadCPU.Seconds())/r.Load.Minutes())
	if r.RoleCPU != nil {
		fmt.Fprintf(w, "  CPU by role (profile)         %s\n", r.RoleCPU)
		load := r.Load + r.DrainTime
		for _, role := range []string{"center", "proxy"} {
			fmt.Fprintf(w, "  %-29s %.2f cores over load+drain; %.1f CPU-s per 1,000 agent-minutes\n", role+" CPU",
				r.RoleCPU[role].Seconds()/load.Seconds(), per1k(r.RoleCPU[role].Seconds())/r.Load.Minutes())
		}
	}
	fmt.Fprintf(w, "  process RSS (all roles)       %s after the load, peak %s\n", mib(r.RSSAfterLoad), mib(r.HWM))
	fmt.Fprintf(w, "  RSS by phase                  center+proxies idle %s; + %d idle agents %s (%s per agent)\n",
		mib(r.RSSTree), o.Agents, mib(r.RSSAgents), fmt.Sprintf("%.2f MiB", float64(r.RSSAgents-r.RSSTree)/float64(o.Agents)/(1<<20)))
	fmt.Fprintf(w, "  disk                          center %s, proxies %s, agents %s (%s per agent)\n",
		mib(r.Disk.Center), mib(r.Disk.Proxies), mib(r.Disk.Agents), fmt.Sprintf("%.2f MiB", float64(r.Disk.Agents)/float64(o.Agents)/(1<<20)))
}
