package loadgen

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Result is what a run measured.
type Result struct {
	Options Options
	Started time.Time
	NoFile  uint64    // RLIMIT_NOFILE in effect
	Proxies int       // proxy processes
	LoadAvg [2]string // /proc/loadavg at the start and at the end

	StartAgents time.Duration // agents started (certificates, stores, links)
	Routable    time.Duration // ... until the center could route to every one
	Known       time.Duration // ... until its SQL store knew every one's processes
	Load        time.Duration
	DrainTime   time.Duration

	// Accounting (the check), read after every node stopped.
	Emitted, Events, Batches, ShedBatches uint64 // agents: stored, sealed, queued, shed
	LostBatches                           uint64 // (agent, seq) queued but not in the center's batch store
	PendingAtStop                         uint64 // batches still in the agents' WALs when they stopped
	StoreBatches, StoreEvents             uint64 // the center's batch store
	SQLBatches, SQLEvents, SQLRows        uint64 // its SQL store: batches, their events, event rows
	Refused, Rejected                     int    // "batch refused" at the center; batches refused for good upstream of a proxy
	Check                                 string // "" when every (agent, seq) is at the center exactly once

	Alert              Latency // exec from /tmp -> alert row at the center
	TraceCommand       Latency // trace request at the API -> the agent's answer recorded at the center
	TraceCommandCenter Latency // the center's part: request recorded -> answer recorded
	TraceErrors        []string
	Trace              Latency // trace event -> its batch in the center's SQL store (agent 0, under bulk)
	TraceStarted       uint64  // traces the agents verified and started
	TraceRefused       uint64  // trace commands the agents refused
	Lineage            map[string]Latency
	LineageRows        map[string]int // rows in one answer

	// Resources by role: the center's and the proxies' processes, and
	// this one (the simulated agents and the generator).
	Idle      roleUsage // center and proxies up, no agents
	Connected roleUsage // every agent connected, before the load
	LoadUse   roleUsage // CPU during the load (memory: at its end)
	DrainUse  roleUsage // CPU during the drain
	Final     roleUsage // after the drain (VmHWM: the peaks)
	Disk      Disk

	StopErrors string
}

// roleUsage is CPU and memory by role.
type roleUsage struct {
	Center, Px1, Px2, Agents usage
}

// Proxies is both levels together.
func (r roleUsage) Proxies() usage { return r.Px1.add(r.Px2) }

// minus gives the CPU spent since before; memory stays r's.
func (r roleUsage) minus(before roleUsage) roleUsage {
	d := func(a, b usage) usage { a.CPU -= b.CPU; return a }
	return roleUsage{Center: d(r.Center, before.Center), Px1: d(r.Px1, before.Px1), Px2: d(r.Px2, before.Px2), Agents: d(r.Agents, before.Agents)}
}

func (r *run) roleUsage() roleUsage {
	var u roleUsage
	if r.center != nil {
		u.Center = r.center.usage()
	}
	for _, p := range r.px1 {
		u.Px1 = u.Px1.add(p.usage())
	}
	for _, p := range r.px2 {
		u.Px2 = u.Px2.add(p.usage())
	}
	u.Agents = selfUsage()
	return u
}

func selfUsage() usage {
	var u usage
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		u.CPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	u.RSS, u.HWM, _ = statusMem("/proc/self/status")
	return u
}

// Disk is the bytes on disk by role at the end of the run.
type Disk struct {
	Center, Proxies, Agents int64
	AfterStop               int64 // the center's, once stopped (Pebble's preallocated WAL files closed)
}

func diskUsage(dir string) Disk {
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

func mib(b int64) string { return fmt.Sprintf("%.0f MiB", float64(b)/(1<<20)) }

func (l Latency) String() string {
	if l.Seen == 0 {
		return fmt.Sprintf("none measured (%d sent)", l.Sent)
	}
	return fmt.Sprintf("p50 %s  p99 %s  max %s  (%d of %d)", ms(l.P50), ms(l.P99), ms(l.Max), l.Seen, l.Sent)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// Report writes the result as the benchmark's text report. Lines that
// start with "  " and have a figure are read by testdata/bench/report.sh.
func (r *Result) Report(w io.Writer) {
	o := r.Options
	per1k := func(cpu time.Duration, over time.Duration) float64 {
		return cpu.Seconds() / over.Seconds() * 1000 / float64(o.Agents)
	}
	batchMS := o.BatchMS
	if batchMS == 0 {
		batchMS = 250
	}
	fmt.Fprintf(w, "scale: %d agents -> %d level-2 proxies -> %d level-1 proxies -> center; %.0f events/s per agent, a batch every %d ms, for %s\n",
		o.Agents, o.Top*o.Fanout, o.Top, o.Rate, batchMS, o.Duration)
	fmt.Fprintf(w, "  load average                  %s at the start, %s at the end\n", r.LoadAvg[0], r.LoadAvg[1])
	fmt.Fprintf(w, "  agents started / routable / known  %s / %s / %s (RLIMIT_NOFILE %d)\n",
		r.StartAgents.Round(time.Millisecond), r.Routable.Round(time.Millisecond), r.Known.Round(time.Millisecond), r.NoFile)
	fmt.Fprintf(w, "  events stored by agents       %d (%.0f/s in the load)\n", r.Emitted, float64(r.Emitted)/r.Load.Seconds())
	fmt.Fprintf(w, "  batches queued by agents      %d (%.0f/s); shed %d; still queued at stop %d\n", r.Batches, float64(r.Batches)/r.Load.Seconds(), r.ShedBatches, r.PendingAtStop)
	fmt.Fprintf(w, "  center batch store            %d batches, %d events\n", r.StoreBatches, r.StoreEvents)
	fmt.Fprintf(w, "  center SQL store              %d batches, %d events, %d event rows\n", r.SQLBatches, r.SQLEvents, r.SQLRows)
	fmt.Fprintf(w, "  refused at the center / upstream  %d / %d\n", r.Refused, r.Rejected)
	fmt.Fprintf(w, "  drain after the load          %s\n", r.DrainTime.Round(time.Millisecond))
	if r.Check == "" {
		fmt.Fprintf(w, "  check                         ok: every (agent, seq) at the center exactly once (batch store and SQL), every event once\n")
	} else {
		fmt.Fprintf(w, "  check                         FAILED: %s\n", r.Check)
	}
	fmt.Fprintf(w, "  exec -> alert                 %s   target p99 < 500 ms\n", r.Alert)
	fmt.Fprintf(w, "  trace command round trip      %s   (signed request at the API -> agent verified and answered -> recorded at the center)\n", r.TraceCommand)
	fmt.Fprintf(w, "    of which the center's part  %s\n", r.TraceCommandCenter)
	fmt.Fprintf(w, "  traces started / refused by agents  %d / %d\n", r.TraceStarted, r.TraceRefused)
	if len(r.TraceErrors) > 0 {
		fmt.Fprintf(w, "  trace requests not made       %d (first: %s)\n", len(r.TraceErrors), r.TraceErrors[0])
	}
	fmt.Fprintf(w, "  trace lane under bulk         %s   target p99 < 100 ms (event -> its batch in the center's SQL store)\n", r.Trace)
	keys := make([]string, 0, len(r.Lineage))
	for k := range r.Lineage {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		what := k[strings.Index(k, ": ")+2:]
		fmt.Fprintf(w, "  lineage query, %s (%d rows, %d live processes on the host)  %s\n", k, r.LineageRows[what], o.BigHost+len(roots), r.Lineage[k])
	}
	load, drain := r.LoadUse, r.DrainUse
	fmt.Fprintf(w, "  center CPU                    %.2f cores in the load (%.1f CPU-s), %.1f CPU-s in the drain; %.2f cores per 1,000 agents\n",
		load.Center.CPU.Seconds()/r.Load.Seconds(), load.Center.CPU.Seconds(), drain.Center.CPU.Seconds(), per1k(load.Center.CPU, r.Load))
	fmt.Fprintf(w, "  proxies CPU (%d)               %.2f cores in the load (level 1 %.2f, level 2 %.2f), %.1f CPU-s in the drain; %.2f cores per 1,000 agents\n",
		r.Proxies, load.Proxies().CPU.Seconds()/r.Load.Seconds(), load.Px1.CPU.Seconds()/r.Load.Seconds(), load.Px2.CPU.Seconds()/r.Load.Seconds(),
		drain.Proxies().CPU.Seconds(), per1k(load.Proxies().CPU, r.Load))
	fmt.Fprintf(w, "  agents CPU (this process)     %.2f cores in the load; %.2f ms per agent-second\n",
		load.Agents.CPU.Seconds()/r.Load.Seconds(), load.Agents.CPU.Seconds()*1000/r.Load.Seconds()/float64(o.Agents))
	f := r.Final
	fmt.Fprintf(w, "  center RSS                    idle %s, after the load %s, peak %s\n", mib(r.Idle.Center.RSS), mib(load.Center.RSS), mib(f.Center.HWM))
	fmt.Fprintf(w, "  proxies RSS (sum)             idle %s, after the load %s, peak %s\n", mib(r.Idle.Proxies().RSS), mib(load.Proxies().RSS), mib(f.Proxies().HWM))
	fmt.Fprintf(w, "  agents RSS (this process)     before the agents %s, %d idle agents %s (%.2f MiB per agent), peak %s\n",
		mib(r.Idle.Agents.RSS), o.Agents, mib(r.Connected.Agents.RSS), float64(r.Connected.Agents.RSS-r.Idle.Agents.RSS)/float64(o.Agents)/(1<<20), mib(f.Agents.HWM))
	fmt.Fprintf(w, "  disk                          center %s (%s once stopped), proxies %s, agents %s (%.2f MiB per agent)\n",
		mib(r.Disk.Center), mib(r.Disk.AfterStop), mib(r.Disk.Proxies), mib(r.Disk.Agents), float64(r.Disk.Agents)/float64(o.Agents)/(1<<20))
	if r.StopErrors != "" {
		fmt.Fprintf(w, "  stop                          %s\n", r.StopErrors)
	}
}

// BenchLine is the run's figures as a go test benchmark result line, so
// that the `make bench` report reads them as it reads every benchmark's.
func (r *Result) BenchLine() string {
	o := r.Options
	batchMS := o.BatchMS
	if batchMS == 0 {
		batchMS = 250
	}
	var b strings.Builder
	fmt.Fprintf(&b, "BenchmarkScale/agents=%d/rate=%g/batch-ms=%d/duration=%s \t1\t%d ns/op", o.Agents, o.Rate, batchMS, o.Duration, (r.Load + r.DrainTime).Nanoseconds())
	add := func(v float64, unit string) { fmt.Fprintf(&b, "\t%s %s", strconv.FormatFloat(v, 'g', 6, 64), unit) }
	ok := 0.0
	if r.Check == "" {
		ok = 1
	}
	add(float64(o.Agents), "agents")
	add(float64(r.Batches), "batches")
	add(float64(r.Events), "events")
	add(ok, "check-ok")
	add(float64(r.LostBatches), "lost-batches")
	add(float64(max(int64(r.SQLRows)-int64(r.Events), 0)), "dup-events")
	msOf := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
	for _, l := range []struct {
		name string
		l    Latency
	}{{"alert", r.Alert}, {"trace", r.Trace}, {"cmd", r.TraceCommand}} {
		if l.l.Seen > 0 {
			add(msOf(l.l.P50), l.name+"-p50-ms")
			add(msOf(l.l.P99), l.name+"-p99-ms")
		}
	}
	per1k := 1000 / float64(o.Agents)
	load := r.Load.Seconds()
	add(r.LoadUse.Center.CPU.Seconds()/load, "center-cores")
	add(r.LoadUse.Proxies().CPU.Seconds()/load, "proxy-cores")
	add(r.LoadUse.Agents.CPU.Seconds()/load, "agent-cores")
	add(r.LoadUse.Center.CPU.Seconds()/load*per1k, "center-cores/1k-agents")
	add(r.LoadUse.Proxies().CPU.Seconds()/load*per1k, "proxy-cores/1k-agents")
	add(float64(r.Final.Center.HWM)/(1<<20), "center-MiB-peak")
	add(float64(r.Final.Proxies().HWM)/(1<<20), "proxies-MiB-peak")
	add(float64(r.Final.Agents.HWM)/(1<<20), "agents-MiB-peak")
	add(float64(r.Disk.AfterStop)/(1<<20)*per1k/r.Load.Minutes(), "center-disk-MiB/1k-agent-min")
	add(r.DrainTime.Seconds(), "drain-s")
	for k, l := range r.Lineage {
		if l.Seen == 0 {
			continue
		}
		which := "anc"
		if strings.Contains(k, "descendants") {
			which = "desc"
		}
		if strings.HasPrefix(k, "under load") {
			which += "-load"
		}
		add(msOf(l.P99), "lineage-"+which+"-p99-ms")
	}
	return b.String()
}
