package loadgen

// The `make bench` report: the raw output of every benchmark (go test's
// "BenchmarkName-N  iterations  value unit ..." lines, and the scale
// benchmark's line in the same format) is read back, and each figure with a
// target is written beside that target and beside the reference measured
// in the same run (the agent off, NATS JetStream, priority lanes off).

import (
	"bufio"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// BenchRun is one benchmark's result line; a benchmark run with -count N
// gives N of them.
type BenchRun struct {
	Pkg     string // from the "pkg:" line before it
	Name    string // without the -GOMAXPROCS suffix
	Metrics map[string]float64
}

var (
	benchLine = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+(\d+)\s+(.*)$`)
	// A benchmark that logs while it runs splits its result: the name,
	// then the log, then "N  value unit ..." on a line of its own.
	benchName = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?(?:\s|$)`)
	benchRest = regexp.MustCompile(`^(\d+)\s+(\S+ ns/op.*)$`)
)

// ParseBench reads go test benchmark output (several packages, in any
// order) and returns every result line.
func ParseBench(r io.Reader) ([]BenchRun, error) {
	var out []BenchRun
	pkg, pending := "", ""
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 4<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if p, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		m := benchLine.FindStringSubmatch(line)
		if m == nil {
			if r := benchRest.FindStringSubmatch(line); r != nil && pending != "" {
				m = []string{line, pending, r[1], r[2]}
			} else {
				if n := benchName.FindStringSubmatch(line); n != nil {
					pending = n[1]
				}
				continue
			}
		}
		pending = ""
		f := strings.Fields(m[3])
		if len(f) < 2 || len(f)%2 != 0 {
			continue // a log line that starts like a result
		}
		run := BenchRun{Pkg: pkg, Name: m[1], Metrics: map[string]float64{}}
		ok := true
		for i := 0; i+1 < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				ok = false
				break
			}
			run.Metrics[f[i+1]] = v
		}
		if ok {
			out = append(out, run)
		}
	}
	return out, sc.Err()
}

// benchFigure is one row of the report.
type benchFigure struct {
	issue, what string
	pkg, bench  string // pkg suffix ("" any) and exact benchmark name
	unit        string
	target      string
	met         func(v float64) bool // nil: no numeric target
	refWhat     string               // the same-run reference, if any
	refPkg      string
	refBench    string
	refUnit     string
	ratioUnit   string // a metric of the benchmark that is the ratio to the reference (else value / reference)
}

func below(x float64) func(float64) bool { return func(v float64) bool { return v < x } }
func atLeast(x float64) func(float64) bool {
	return func(v float64) bool { return v >= x }
}
func zero(v float64) bool { return v == 0 }

// benchFigures lists the figures that have a target (DESIGN.md's
// performance targets and issues 3, 4, 5, 6 and 10) or a reference.
var benchFigures = []benchFigure{
	{issue: "3", what: "exec storm, whole agent on vs off: slowdown (%)", pkg: "roles/agent", bench: "BenchmarkExecStorm/ebpf", unit: "%slowdown",
		target: "< 3 %", met: below(3), refWhat: "agent off, ns/exec", refPkg: "roles/agent", refBench: "BenchmarkExecStorm/ebpf", refUnit: "ns/exec-off"},
	{issue: "3", what: "exec storm, agent on: ns/exec", pkg: "roles/agent", bench: "BenchmarkExecStorm/ebpf", unit: "ns/exec-on",
		refWhat: "agent off, ns/exec", refPkg: "roles/agent", refBench: "BenchmarkExecStorm/ebpf", refUnit: "ns/exec-off"},
	{issue: "3", what: "exec storm: execs missed at the highest rate (eBPF)", pkg: "roles/agent", bench: "BenchmarkExecStorm/ebpf", unit: "execs-missed",
		target: "0", met: zero, refWhat: "execs/s reached (agent off)", refPkg: "roles/agent", refBench: "BenchmarkExecStorm/ebpf", refUnit: "execs/s-off"},
	{issue: "3", what: "exec storm, sensor attached vs detached (paired): median on/off", pkg: "capture", bench: "BenchmarkExecStorm/paired", unit: "median_on/off",
		target: "< 1.03", met: below(1.03)},
	{issue: "3", what: "agent start with 10,000 live processes: table seeded (ms)", pkg: "roles/agent", bench: "BenchmarkAgentStart10k", unit: "ms-seed",
		target: "< 1000 ms", met: below(1000)},
	{issue: "3", what: "agent start with 10,000 live processes: RSS (MiB)", pkg: "roles/agent", bench: "BenchmarkAgentStart10k", unit: "MiB-rss",
		target: "< 64 MiB", met: below(64)},
	{issue: "4", what: "pipeline agent -> proxy -> proxy -> center, events/s", pkg: "roles/treetest", bench: "BenchmarkPipelineThroughput", unit: "events/s",
		target: ">= 200,000", met: atLeast(200000), refWhat: "NATS JetStream, same batches, events/s", refPkg: "roles/treetest", refBench: "BenchmarkPipelineThroughput",
		refUnit: "nats-events/s", ratioUnit: "daemoneye/nats"},
	{issue: "4", what: "pipeline, events per CPU-second", pkg: "roles/treetest", bench: "BenchmarkPipelineThroughput", unit: "events/cpu-s",
		refWhat: "NATS JetStream, events per CPU-second", refPkg: "roles/treetest", refBench: "BenchmarkPipelineThroughput", refUnit: "nats-events/cpu-s",
		ratioUnit: "daemoneye/nats-cpu"},
	{issue: "4", what: "trace lane p99 through two proxies, bulk saturated (ms)", pkg: "roles/treetest", bench: "BenchmarkTraceLatency/proxies=real/prio=on", unit: "p99-ms",
		target: "< 100 ms", met: below(100), refWhat: "priority lanes off (chain of proxies), p99 ms", refPkg: "roles/treetest",
		refBench: "BenchmarkTraceLatency/proxies=chain/prio=off", refUnit: "p99-ms"},
	{issue: "4", what: "trace lane p99, chain of proxies, priority on (ms)", pkg: "roles/treetest", bench: "BenchmarkTraceLatency/proxies=chain/prio=on", unit: "p99-ms",
		target: "< 100 ms", met: below(100), refWhat: "priority lanes off, p99 ms", refPkg: "roles/treetest",
		refBench: "BenchmarkTraceLatency/proxies=chain/prio=off", refUnit: "p99-ms"},
	{issue: "4", what: "trace lane p99, real proxies, 2 Go processors per node (ms)", pkg: "roles/treetest", bench: "BenchmarkTraceLatency/proxies=real/prio=on/procs=16", unit: "p99-ms",
		target: "< 100 ms", met: below(100), refWhat: "priority lanes off, p99 ms", refPkg: "roles/treetest",
		refBench: "BenchmarkTraceLatency/proxies=chain/prio=off/procs=16", refUnit: "p99-ms"},
	{issue: "5", what: "center ingest, SQL + ledger, events/s", pkg: "roles/treetest", bench: "BenchmarkCenterIngest", unit: "sql+ledger-events/s",
		target: ">= 200,000 (the pipeline's)", met: atLeast(200000), refWhat: "SQL alone, events/s", refPkg: "roles/treetest", refBench: "BenchmarkCenterIngest", refUnit: "sql-events/s"},
	{issue: "5", what: "exec -> alert p99 from the sensor, batch_max_ms 250, one proxy (ms)", pkg: "roles/treetest", bench: "BenchmarkExecToAlert/batch_max_ms=250", unit: "sensor-p99-ms",
		target: "< 500 ms", met: below(500)},
	{issue: "5", what: "lineage on 10^6 events: ancestors p99 (µs)", pkg: "store/sqlstore", bench: "BenchmarkStore", unit: "anc-p99-µs",
		target: "fast"},
	{issue: "5", what: "lineage on 10^6 events: descendants p99 (µs)", pkg: "store/sqlstore", bench: "BenchmarkStore", unit: "desc-p99-µs",
		target: "fast"},
	{issue: "6", what: "trace event latency agent -> proxy -> center p99 (ms)", pkg: "roles/treetest", bench: "BenchmarkTraceEventLatency", unit: "p99-ms",
		target: "< 100 ms", met: below(100)},
	{issue: "6", what: "exec storm inside a traced lineage vs untraced: median on/off", pkg: "capture", bench: "BenchmarkTraceExecStorm/lineage", unit: "median_on/off",
		target: "< 1.03 (unnoticeable)", met: below(1.03)},
	{issue: "6", what: "rest of the host while a trace runs vs none: median on/off", pkg: "capture", bench: "BenchmarkTraceExecStorm/elsewhere", unit: "median_on/off",
		target: "< 1.03 (unnoticeable)", met: below(1.03)},
	{issue: "10", what: "scale: batches lost at the center", bench: "BenchmarkScale", unit: "lost-batches", target: "0", met: zero},
	{issue: "10", what: "scale: events stored twice at the center", bench: "BenchmarkScale", unit: "dup-events", target: "0", met: zero},
	{issue: "10", what: "scale: exec -> alert p99 (ms, from the store append)", bench: "BenchmarkScale", unit: "alert-p99-ms", target: "< 500 ms", met: below(500)},
	{issue: "10", what: "scale: trace lane p99 under bulk (ms, event -> center SQL)", bench: "BenchmarkScale", unit: "trace-p99-ms", target: "< 100 ms", met: below(100)},
	{issue: "10", what: "scale: signed trace command round trip p99 (ms)", bench: "BenchmarkScale", unit: "cmd-p99-ms"},
	{issue: "10", what: "scale: center CPU per 1,000 agents (cores)", bench: "BenchmarkScale", unit: "center-cores/1k-agents"},
	{issue: "10", what: "scale: proxies' CPU per 1,000 agents (cores)", bench: "BenchmarkScale", unit: "proxy-cores/1k-agents"},
	{issue: "10", what: "scale: center peak RSS (MiB)", bench: "BenchmarkScale", unit: "center-MiB-peak"},
	{issue: "10", what: "scale: center disk per 1,000 agent-minutes (MiB)", bench: "BenchmarkScale", unit: "center-disk-MiB/1k-agent-min"},
	{issue: "10", what: "10k processes on one host: lineage, ancestors p99 at the center API (ms)", bench: "BenchmarkScale", unit: "lineage-anc-p99-ms"},
	{issue: "10", what: "10k processes on one host: lineage, all descendants p99 at the center API (ms)", bench: "BenchmarkScale", unit: "lineage-desc-p99-ms"},
	{issue: "10", what: "trace view with 1,000 processes: to first paint in the browser (ms)", pkg: "ui", bench: "BenchmarkTraceView1000", unit: "ms-to-paint",
		target: "usable (< 2 s)", met: below(2000)},
}

// find returns the median of a metric over the runs of one benchmark (the
// scale benchmark's name carries its configuration: any BenchmarkScale/...).
func find(runs []BenchRun, pkg, bench, unit string) (float64, int, string) {
	var vs []float64
	name := ""
	for _, r := range runs {
		if pkg != "" && !strings.HasSuffix(r.Pkg, pkg) {
			continue
		}
		if r.Name != bench && !(bench == "BenchmarkScale" && strings.HasPrefix(r.Name, "BenchmarkScale/")) {
			continue
		}
		if v, ok := r.Metrics[unit]; ok {
			vs = append(vs, v)
			name = r.Name
		}
	}
	if len(vs) == 0 {
		return 0, 0, ""
	}
	slices.Sort(vs)
	return vs[len(vs)/2], len(vs), name
}

func fmtFig(v float64) string {
	switch a := max(v, -v); {
	case a == 0:
		return "0"
	case a >= 100000:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	case a >= 10:
		return strconv.FormatFloat(v, 'f', 1, 64)
	case a >= 1:
		return strconv.FormatFloat(v, 'f', 2, 64)
	default:
		return strconv.FormatFloat(v, 'g', 3, 64)
	}
}

// WriteBenchReport writes the markdown report of runs: the figures with a
// target or a reference, then every figure of every benchmark.
func WriteBenchReport(w io.Writer, runs []BenchRun, header string, at time.Time) {
	fmt.Fprintf(w, "# DaemonEye benchmark report\n\n%s\n\nGenerated %s from %d benchmark results. Medians where a benchmark ran more than once (n). "+
		"The reference is measured in the same run, side by side. Targets: DESIGN.md (performance targets) and issues 3, 4, 5, 6 and 10.\n\n",
		header, at.UTC().Format(time.RFC3339), len(runs))
	fmt.Fprintf(w, "| issue | figure | measured | target | met | reference (same run) | ratio | n |\n|---|---|---|---|---|---|---|---|\n")
	var missing []string
	for _, f := range benchFigures {
		v, n, name := find(runs, f.pkg, f.bench, f.unit)
		if n == 0 {
			missing = append(missing, f.what)
			continue
		}
		met := "—"
		if f.met != nil {
			met = "**MISSED**"
			if f.met(v) {
				met = "met"
			}
		}
		target := f.target
		if target == "" {
			target = "—"
		}
		ref, ratio := "—", "—"
		if f.refBench != "" {
			if rv, rn, _ := find(runs, f.refPkg, f.refBench, f.refUnit); rn > 0 {
				ref = fmt.Sprintf("%s: %s", f.refWhat, fmtFig(rv))
				switch {
				case f.ratioUnit != "":
					if x, xn, _ := find(runs, f.pkg, f.bench, f.ratioUnit); xn > 0 {
						ratio = fmtFig(x)
					}
				case rv != 0 && f.unit != "%slowdown" && f.unit != "execs-missed":
					ratio = fmtFig(v / rv)
				}
			} else {
				ref = f.refWhat + ": not run"
			}
		}
		what := f.what
		if strings.HasPrefix(name, "BenchmarkScale/") {
			what += " [" + strings.TrimPrefix(name, "BenchmarkScale/") + "]"
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %d |\n", f.issue, what, fmtFig(v), target, met, ref, ratio, n)
	}
	if len(missing) > 0 {
		fmt.Fprintf(w, "\nNot measured in this run (skipped: not root, no chromium, or a benchmark failed; see the raw output):\n\n")
		for _, m := range missing {
			fmt.Fprintf(w, "- %s\n", m)
		}
	}
	fmt.Fprintf(w, "\n## Every figure\n\n| package | benchmark | figures |\n|---|---|---|\n")
	for _, r := range runs {
		keys := make([]string, 0, len(r.Metrics))
		for k := range r.Metrics {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		var b strings.Builder
		for i, k := range keys {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s %s", fmtFig(r.Metrics[k]), k)
		}
		fmt.Fprintf(w, "| %s | %s | %s |\n", r.Pkg, r.Name, b.String())
	}
}
