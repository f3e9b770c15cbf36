package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/roles/agent"
)

// AgentCmd is `daemoneye agent`: run (the default) or inspect.
type AgentCmd struct {
	DataDir string `type:"path" help:"Agent data directory (sets agent.data_dir)." placeholder:"DIR"`

	Run     AgentRunCmd     `cmd:"" default:"withargs" help:"Run the agent (the default)."`
	Ps      AgentPsCmd      `cmd:"" help:"List the process table (arguments masked)." `
	Lineage AgentLineageCmd `cmd:"" help:"Print the ancestors and descendants of a process."`
	Status  AgentStatusCmd  `cmd:"" help:"Print the running agent's source, lost-event figures and store size."`
}

func (a *AgentCmd) apply(g *Globals) {
	if a.DataDir != "" {
		g.flag("agent.data_dir", strconv.Quote(a.DataDir), "--data-dir")
	}
}

// AgentRunCmd runs the agent until interrupted.
type AgentRunCmd struct {
	Standalone bool   `help:"Run with no uplink: record locally only (sets agent.standalone)."`
	Capture    string `enum:"auto,ebpf,proc," default:"" help:"Capture source: auto, ebpf or proc (sets agent.capture)."`
}

// Run starts the agent role.
func (r *AgentRunCmd) Run(ctx context.Context, g *Globals, parent *AgentCmd) error {
	parent.apply(g)
	if r.Standalone {
		g.flag("agent.standalone", "true", "--standalone")
	}
	if r.Capture != "" {
		g.flag("agent.capture", r.Capture, "--capture")
	}
	l, err := g.load()
	if err != nil {
		return err
	}
	log := g.logger(l.Config.Log)
	l.Config.Agent.Version = g.build.Version
	a, err := agent.New(l.Config.Agent, log)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

type revealFlags struct {
	Reveal bool   `help:"Show command-line arguments unmasked (needs --reason; recorded)."`
	Reason string `help:"Why the arguments must be revealed (recorded with your identity)." placeholder:"TEXT"`
}

func (r revealFlags) reveal() privacy.Reveal { return privacy.Reveal{On: r.Reveal, Reason: r.Reason} }

func openInspector(g *Globals, parent *AgentCmd) (*agent.Inspector, config.Agent, error) {
	parent.apply(g)
	l, err := g.load()
	if err != nil {
		return nil, config.Agent{}, err
	}
	c := l.Config.Agent
	in, err := agent.OpenInspector(c.DataDir, c.Baseline.ProcRoot, c.Baseline.ArgvMaxBytes)
	return in, c, err
}

func origin(g *Globals, in *agent.Inspector) {
	switch in.Origin {
	case "store":
		fmt.Fprintln(g.stderr, "note: the agent is not running; showing its stored process table")
	case "proc":
		fmt.Fprintln(g.stderr, "note: no agent data here; showing a live /proc scan")
	}
}

// AgentPsCmd lists processes.
type AgentPsCmd struct {
	Tree   bool `help:"Show the processes as a tree."`
	Exited bool `help:"Include recently exited processes."`
	Kernel bool `help:"Include kernel threads (kthreadd and its children)."`
	revealFlags
}

// inspect checks the reveal request, opens the best inspector, says where the
// answer comes from, and runs fn with it.
func inspect(g *Globals, parent *AgentCmd, rv privacy.Reveal, fn func(*agent.Inspector) error) error {
	if err := rv.Check(); err != nil {
		return err
	}
	in, _, err := openInspector(g, parent)
	if err != nil {
		return err
	}
	defer in.Close()
	origin(g, in)
	return fn(in)
}

// Run prints the process table.
func (c *AgentPsCmd) Run(g *Globals, parent *AgentCmd) error {
	return inspect(g, parent, c.reveal(), func(in *agent.Inspector) error { return c.print(g, in) })
}

func (c *AgentPsCmd) print(g *Globals, in *agent.Inspector) error {
	vs, err := in.Processes(c.Exited, c.reveal())
	if err != nil {
		return err
	}
	if !c.Kernel {
		vs = userOnly(vs)
	}
	if c.Tree {
		return agent.WriteTree(g.stdout, vs)
	}
	return agent.WriteTree(g.stdout, flat(vs))
}

// userOnly drops kernel threads: kthreadd (pid 2) and its children.
func userOnly(vs []agent.View) []agent.View {
	out := vs[:0]
	for _, v := range vs {
		if v.Key.PID != 2 && v.Parent.PID != 2 {
			out = append(out, v)
		}
	}
	return out
}

func flat(vs []agent.View) []agent.View {
	// With no parent present in the set every view is a root, so WriteTree
	// prints a plain list in start order.
	for i := range vs {
		vs[i].Parent.Start = ^uint64(0)
	}
	return vs
}

// AgentLineageCmd prints one process's lineage.
type AgentLineageCmd struct {
	PID uint32 `arg:"" help:"Process id."`
	revealFlags
}

// Run prints the lineage.
func (c *AgentLineageCmd) Run(g *Globals, parent *AgentCmd) error {
	return inspect(g, parent, c.reveal(), func(in *agent.Inspector) error {
		l, err := in.Lineage(c.PID, c.reveal())
		if err != nil {
			return err
		}
		return agent.WriteLineage(g.stdout, l)
	})
}

// AgentStatusCmd prints the running agent's figures.
type AgentStatusCmd struct{}

// Run asks the agent for its stats.
func (c *AgentStatusCmd) Run(g *Globals, parent *AgentCmd) error {
	in, _, err := openInspector(g, parent)
	if err != nil {
		return err
	}
	defer in.Close()
	st, err := in.Stats()
	if err != nil {
		return err
	}
	enc := json.NewEncoder(g.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(st)
}
