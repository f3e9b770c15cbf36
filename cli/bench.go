package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/loadgen"
)

// BenchCmd groups the benchmarks that are commands rather than go tests.
type BenchCmd struct {
	Scale BenchScaleCmd `cmd:"" help:"Scale: a center, two levels of proxies and N simulated agents (real stores, certificates, QUIC) in this process under process churn; checks zero loss and duplicates at the center and reports latency, CPU, RSS and disk."`
}

// BenchScaleCmd runs internal/loadgen.
type BenchScaleCmd struct {
	Agents     int           `default:"100" help:"Simulated agents."`
	Top        int           `default:"2" help:"Proxies under the center (level 1)."`
	Fanout     int           `default:"2" help:"Proxies under each level-1 proxy (level 2); agents attach to these."`
	Rate       float64       `default:"20" help:"Baseline events per second per agent (fork, exec, connect, exit)."`
	Duration   time.Duration `default:"2m" help:"How long the load runs."`
	Drain      time.Duration `default:"5m" help:"Longest wait for the tree to drain after the load."`
	BatchMS    int           `name:"batch-ms" help:"The simulated agents' agent.stream.batch_max_ms (default: the configuration default): each cuts one bulk batch this often." placeholder:"MS"`
	CPUProfile string        `name:"cpuprofile" type:"path" help:"Also write the CPU profile of the load and drain (samples labelled role=center|proxy|agent|loadgen; go tool pprof -tags FILE) here." placeholder:"FILE"`
	AlertEvery time.Duration `default:"1s" help:"One exec from /tmp on a random agent this often (exec -> alert latency; 0: none)."`
	CmdEvery   time.Duration `default:"500ms" help:"One command to a random agent this often (round trip; 0: none)."`
	TraceEvery time.Duration `default:"50ms" help:"One trace event on the first agent this often (trace lane under bulk; 0: none)."`
	Dir        string        `type:"path" help:"Working directory, empty or absent (default: a new temp dir, removed after)." placeholder:"DIR"`
	Keep       bool          `help:"Keep the working directory."`
	Seed       uint64        `default:"1" help:"Seed of the churn."`
}

// Run runs the scale benchmark and prints its report; a check failure is an error.
func (c *BenchScaleCmd) Run(ctx context.Context, g *Globals) error {
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
		Dir: dir, Agents: c.Agents, Top: c.Top, Fanout: c.Fanout, Rate: c.Rate, Duration: c.Duration, Drain: c.Drain, BatchMS: c.BatchMS, CPUProfile: c.CPUProfile,
		AlertEvery: c.AlertEvery, CmdEvery: c.CmdEvery, TraceEvery: c.TraceEvery, Seed: c.Seed,
		Log: slog.New(slog.NewTextHandler(g.stderr, &slog.HandlerOptions{Level: lvl})), Out: g.stdout,
	})
	if res != nil {
		res.Report(g.stdout)
	}
	if err != nil {
		return fmt.Errorf("bench scale: %w", err)
	}
	return nil
}
