package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/loadgen"
)

// BenchCmd groups the benchmarks that are commands rather than go tests.
type BenchCmd struct {
	Scale   BenchScaleCmd   `cmd:"" help:"Scale: a center and two levels of proxies (this binary, as child processes) and N simulated agents (real stores, certificates, QUIC, signed trace commands) under process churn; checks zero loss and duplicates at the center and reports latency, CPU, RSS and disk by role."`
	Report  BenchReportCmd  `cmd:"" help:"Write the benchmark report (markdown): every figure beside its target and its same-run reference, from raw go test -bench output (make bench does this)."`
	Profile BenchProfileCmd `cmd:"" hidden:"" help:"Run a command (a role) under a CPU profile: bench profile --out FILE center -c FILE."`
}

// BenchScaleCmd runs internal/loadgen.
type BenchScaleCmd struct {
	Agents       int           `default:"100" help:"Simulated agents."`
	Top          int           `default:"2" help:"Proxies under the center (level 1)."`
	Fanout       int           `default:"2" help:"Proxies under each level-1 proxy (level 2); agents attach to these."`
	Rate         float64       `default:"20" help:"Baseline events per second per agent (fork, exec, connect, exit)."`
	Duration     time.Duration `default:"2m" help:"How long the load runs."`
	Drain        time.Duration `default:"5m" help:"Longest wait for the center to hold every batch after the load."`
	BatchMS      int           `name:"batch-ms" help:"The simulated agents' agent.stream.batch_max_ms (default: the configuration default): each stores its events and cuts one bulk batch this often." placeholder:"MS"`
	AlertEvery   time.Duration `default:"1s" help:"One exec from /tmp on a random agent this often (exec -> alert latency; 0: none)."`
	CmdEvery     time.Duration `default:"2s" help:"One signed trace request to the next agent this often (command round trip; 0: none)."`
	TraceEvery   time.Duration `default:"50ms" help:"One trace event on the first agent, under a trace started by a signed command, this often (trace lane under bulk; 0: none)."`
	BigHost      int           `name:"big-host" default:"0" help:"Live processes on the second agent (e.g. 10000): the center's lineage queries are timed on it."`
	LineageEvery time.Duration `default:"10s" help:"Lineage queries on the big host this often during the load (and 20 after it)."`
	CPUProfile   string        `name:"cpuprofile" type:"path" help:"This process's CPU profile (the simulated agents), load and drain." placeholder:"FILE"`
	ProfileDir   string        `name:"profile-dir" type:"path" help:"Write the center's and each proxy's CPU profile here (NAME.prof; go tool pprof BINARY FILE)." placeholder:"DIR"`
	Bin          string        `type:"path" help:"The daemoneye binary to run as center and proxies (default: this one)." placeholder:"FILE"`
	Dir          string        `type:"path" help:"Working directory, empty or absent (default: a new temp dir, removed after)." placeholder:"DIR"`
	Keep         bool          `help:"Keep the working directory (stores, logs, configurations)."`
	Seed         uint64        `default:"1" help:"Seed of the churn."`
}

// Run runs the scale benchmark and prints its report; a check failure is an error.
func (c *BenchScaleCmd) Run(ctx context.Context, g *Globals) error {
	bin := c.Bin
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench scale: this binary: %w (give --bin)", err)
		}
		bin = exe
	}
	dir := c.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "daemoneye-scale-")
		if err != nil {
			return err
		}
		dir = d
	}
	if !c.Keep {
		defer os.RemoveAll(dir)
	}
	lvl := slog.LevelError
	if g.LogLevel != "" {
		if err := lvl.UnmarshalText([]byte(g.LogLevel)); err != nil {
			return err
		}
	}
	res, err := loadgen.Run(ctx, loadgen.Options{
		Bin: bin, Dir: dir, Agents: c.Agents, Top: c.Top, Fanout: c.Fanout, Rate: c.Rate, Duration: c.Duration, Drain: c.Drain, BatchMS: c.BatchMS,
		AlertEvery: c.AlertEvery, CmdEvery: c.CmdEvery, TraceEvery: c.TraceEvery, BigHost: c.BigHost, LineageEvery: c.LineageEvery,
		CPUProfile: c.CPUProfile, ProfileDir: c.ProfileDir, Seed: c.Seed,
		Log: slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl})), Out: g.stdout,
	})
	if res != nil {
		res.Report(g.stdout)
		fmt.Fprintln(g.stdout, res.BenchLine())
	}
	if c.Keep {
		fmt.Fprintf(g.stdout, "  working directory             %s (logs in logs/)\n", dir)
	}
	if err != nil {
		return fmt.Errorf("bench scale: %w", err)
	}
	return nil
}

// BenchProfileCmd runs another command of this binary under a CPU profile:
// the scale benchmark runs its center and proxies this way when asked for
// their profiles.
type BenchProfileCmd struct {
	Out  string   `required:"" type:"path" help:"Where the profile goes." placeholder:"FILE"`
	Args []string `arg:"" passthrough:"" help:"The command and its arguments."`
}

// Run profiles the command until it returns.
func (c *BenchProfileCmd) Run(ctx context.Context, g *Globals) error {
	f, err := os.Create(c.Out)
	if err != nil {
		return err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return err
	}
	code := Main(ctx, append([]string{"daemoneye"}, c.Args...), g.build, g.stdout, g.stderr, g.env)
	pprof.StopCPUProfile()
	if err := f.Close(); err != nil {
		return err
	}
	if code != 0 {
		return exitError(code)
	}
	return nil
}

// exitError carries a nested command's exit code.
type exitError int

func (e exitError) Error() string { return fmt.Sprintf("exit status %d", int(e)) }
func (e exitError) ExitCode() int { return int(e) }

// BenchReportCmd writes the report of a `make bench` run.
type BenchReportCmd struct {
	Out    string   `short:"o" type:"path" help:"Write the report here (default: stdout)." placeholder:"FILE"`
	Header string   `help:"A line about the run (machine, commit, load) for the top of the report." placeholder:"TEXT"`
	Raw    []string `arg:"" type:"existingfile" help:"Raw benchmark output (go test -bench, bench scale)." placeholder:"FILE"`
}

// Run reads the raw output and writes the report.
func (c *BenchReportCmd) Run(g *Globals) error {
	var runs []loadgen.BenchRun
	for _, p := range c.Raw {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		r, err := loadgen.ParseBench(f)
		f.Close()
		if err != nil {
			return fmt.Errorf("bench report: %s: %w", p, err)
		}
		runs = append(runs, r...)
	}
	if len(runs) == 0 {
		return fmt.Errorf("bench report: no benchmark results in %v", c.Raw)
	}
	w := g.stdout
	var f *os.File
	if c.Out != "" {
		var err error
		if f, err = os.Create(c.Out); err != nil {
			return err
		}
		w = f
	}
	loadgen.WriteBenchReport(w, runs, c.Header, time.Now())
	if f != nil {
		if err := f.Close(); err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "report: %s (%d benchmark results)\n", c.Out, len(runs))
	}
	return nil
}
