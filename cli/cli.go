// Package cli is the command line of the one `daemoneye` binary: the three
// roles (agent, proxy, center) and the operator verbs. main parses with it and
// runs what it returns; every command is a value a test can run.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/alecthomas/kong"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/roles/proxy"
)

// Build identifies the binary; main fills it from -ldflags.
type Build struct {
	Version, Commit, Date string
}

func (b Build) String() string {
	return fmt.Sprintf("daemoneye %s (commit %s, built %s)", b.Version, b.Commit, b.Date)
}

// Globals are flags every command accepts.
type Globals struct {
	Config   string           `short:"c" type:"path" env:"DAEMONEYE_CONFIG" help:"YAML configuration file (default /etc/daemoneye/daemoneye.yaml when present)."`
	Set      []string         `help:"Set a configuration key, e.g. --set agent.stream.batch_max_ms=100 (repeatable; beats env and file)." placeholder:"KEY=VALUE"`
	LogLevel string           `help:"Log level: debug, info, warn, error (sets log.level)." placeholder:"LEVEL"`
	Version  kong.VersionFlag `help:"Print version, commit and build date."`

	env    []string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	flags  []config.Flag // set by commands before loading
	build  Build
}

// CLI is the whole command tree.
type CLI struct {
	Globals

	Agent    AgentCmd    `cmd:"" help:"Run the host agent, or inspect what it recorded."`
	Proxy    ProxyCmd    `cmd:"" help:"Run a store-and-forward proxy."`
	Center   CenterCmd   `cmd:"" help:"Run the Security Center."`
	Cfg      ConfigCmd   `cmd:"" name:"config" help:"Show the effective configuration."`
	PKI      PKICmd      `cmd:"" name:"pki" help:"Customer-owned CA: init, issue, revoke."`
	Ledger   LedgerCmd   `cmd:"" help:"Audit ledger: verify the whole log and its consistency with checkpoints seen before."`
	Operator OperatorCmd `cmd:"" help:"Operators of the center: add, list, disable."`
	Rules    RulesCmd    `cmd:"" name:"rules" help:"SQL rule packs: check, sign, keygen."`
	Trace    TraceCmd    `cmd:"" help:"Focused traces: start (signed with your operator key), stop, list, show."`
	Export   ExportCmd   `cmd:"" help:"Download a trace's signed forensic package (recorded in the center's ledger)."`
	Verify   VerifyCmd   `cmd:"" help:"Check a forensic package offline with the CA certificate; print what it proves."`
	Bundle   BundleCmd   `cmd:"" help:"Air-gap update bundles: create, verify offline, apply all-or-nothing; keygen."`
	Demo     DemoCmd     `cmd:"" help:"Run the web-1 -> db-1 attack scenario end to end on this machine (root): alert, cross-host trace, signed package."`
	Bench    BenchCmd    `cmd:"" help:"Benchmarks run as commands: scale (simulated agents through a proxy tree)."`

	Install   InstallCmd   `cmd:"" help:"Install a role as a hardened systemd service (unit, user, directories, configuration)."`
	Uninstall UninstallCmd `cmd:"" help:"Remove a role's systemd service; --purge also deletes its data."`
}

// DefaultConfigPath is read when no --config is given and it exists.
const DefaultConfigPath = "/etc/daemoneye/daemoneye.yaml"

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, build Build, stdout, stderr io.Writer, environ []string) (code int) {
	// kong exits after --help and --version; turn that into a return so
	// tests (and deferred cleanups) keep running.
	defer func() {
		if r := recover(); r != nil {
			ec, ok := r.(exitCode)
			if !ok {
				panic(r)
			}
			code = int(ec)
		}
	}()
	args = RoleArgs(args)
	var c CLI
	c.env, c.stdin, c.stdout, c.stderr, c.build = environ, os.Stdin, stdout, stderr, build
	parser, err := kong.New(&c,
		kong.Name("daemoneye"),
		kong.Description("DaemonEye: a silent hunt layer for restricted networks. One binary: agent, proxy and center.\n"+
			"The role is the command; `--role ROLE` before it, or a daemoneye-ROLE symlink, does the same."),
		kong.Vars{"version": build.String()},
		kong.Writers(stdout, stderr),
		kong.Exit(func(c int) { panic(exitCode(c)) }),
		kong.UsageOnError(),
		kong.ConfigureHelp(kong.HelpOptions{Compact: true}),
		kong.Help(helpWithExamples),
		kong.BindTo(ctx, (*context.Context)(nil)),
	)
	if err != nil {
		fmt.Fprintln(stderr, "daemoneye:", err)
		return 2
	}
	kctx, err := parser.Parse(args[1:])
	if err != nil {
		fmt.Fprintln(stderr, "daemoneye:", err)
		return 2
	}
	if kctx == nil || kctx.Command() == "" {
		return 0 // --help or --version already printed
	}
	if err := kctx.Run(&c.Globals); err != nil {
		fmt.Fprintln(stderr, "daemoneye:", err)
		var ec interface{ ExitCode() int }
		if errors.As(err, &ec) {
			return ec.ExitCode()
		}
		return 1
	}
	return 0
}

type exitCode int

// RoleArgs turns the program name (a daemoneye-agent symlink) and --role ROLE
// into the role subcommand, so all three spellings run the same code.
func RoleArgs(args []string) []string {
	if len(args) == 0 {
		return []string{"daemoneye"}
	}
	out := append([]string{args[0]}, args[1:]...)
	base := filepath.Base(args[0])
	if role, ok := strings.CutPrefix(base, "daemoneye-"); ok && isRole(role) {
		out = append([]string{args[0], role}, args[1:]...)
	}
	// Only a --role before the command counts: `pki issue --role agent` is
	// the issue verb's own flag.
	for i := 1; i < len(out); i++ {
		a := out[i]
		if a == "--" || !strings.HasPrefix(a, "-") {
			break
		}
		if globalWithValue[a] {
			i++ // skip the flag's value
			continue
		}
		var role string
		switch {
		case a == "--role" && i+1 < len(out):
			role = out[i+1]
			out = append(out[:i:i], out[i+2:]...)
		case strings.HasPrefix(a, "--role="):
			role = strings.TrimPrefix(a, "--role=")
			out = append(out[:i:i], out[i+1:]...)
		default:
			continue
		}
		if !isRole(role) {
			// Leave it for kong to reject with a clear message.
			return args
		}
		rest := append([]string{}, out[1:]...)
		return append([]string{out[0], role}, rest...)
	}
	return out
}

// globalWithValue are the global flags that take a separate value.
var globalWithValue = map[string]bool{"-c": true, "--config": true, "--set": true, "--log-level": true}

func isRole(r string) bool { return r == "agent" || r == "proxy" || r == "center" }

// load builds the effective configuration from every layer.
func (g *Globals) load() (*config.Loaded, error) {
	file := g.Config
	if file == "" {
		if _, err := os.Stat(DefaultConfigPath); err == nil {
			file = DefaultConfigPath
		}
	}
	var flags []config.Flag
	for _, kv := range g.Set {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("--set %q: want KEY=VALUE", kv)
		}
		flags = append(flags, config.Flag{Key: strings.TrimSpace(k), Value: v, Name: "--set " + k})
	}
	if g.LogLevel != "" {
		flags = append(flags, config.Flag{Key: "log.level", Value: g.LogLevel, Name: "--log-level"})
	}
	flags = append(flags, g.flags...)
	l, err := config.Load(config.Sources{File: file, Environ: g.env, Flags: flags})
	if err != nil {
		return nil, err
	}
	// One masking policy for everything this process shows (checked by
	// Validate already).
	pol, err := privacy.NewPolicy(l.Config.Privacy.Rules())
	if err != nil {
		return nil, err
	}
	privacy.SetDefault(pol)
	return l, nil
}

func (g *Globals) flag(key, value, name string) {
	g.flags = append(g.flags, config.Flag{Key: key, Value: value, Name: name})
}

// logger builds the process's structured logger on stderr.
func (g *Globals) logger(c config.Log) *slog.Logger {
	var lvl slog.Level
	lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(g.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(g.stderr, opts))
}

// ConfigCmd groups configuration verbs.
type ConfigCmd struct {
	Show ConfigShowCmd `cmd:"" help:"Print the effective configuration and where each value came from."`
}

// ConfigShowCmd prints the effective configuration.
type ConfigShowCmd struct {
	Section string `arg:"" optional:"" enum:"agent,proxy,center,privacy,log," default:"" help:"Only this section (agent, proxy, center, privacy, log)."`
}

// Run prints each key, its value and its layer.
func (c *ConfigShowCmd) Run(g *Globals) error {
	l, err := g.load()
	if err != nil {
		return err
	}
	return l.Show(g.stdout, c.Section)
}

// ProxyCmd runs a proxy.
type ProxyCmd struct {
	Listen   string `help:"Address children connect to (sets proxy.listen)." placeholder:"HOST:PORT"`
	Upstream string `help:"Parent proxy or center (sets proxy.upstream)." placeholder:"HOST:PORT"`
	WALPath  string `name:"wal-path" type:"path" help:"WAL directory (sets proxy.wal_path)." placeholder:"DIR"`
}

// Run starts the proxy role.
func (c *ProxyCmd) Run(ctx context.Context, g *Globals) error {
	if c.Listen != "" {
		g.flag("proxy.listen", strconv.Quote(c.Listen), "--listen")
	}
	if c.Upstream != "" {
		g.flag("proxy.upstream", strconv.Quote(c.Upstream), "--upstream")
	}
	if c.WALPath != "" {
		g.flag("proxy.wal_path", strconv.Quote(c.WALPath), "--wal-path")
	}
	l, err := g.load()
	if err != nil {
		return err
	}
	l.Config.Proxy.Version = g.build.Version
	p, err := proxy.New(l.Config.Proxy, g.logger(l.Config.Log))
	if err != nil {
		return err
	}
	return p.Run(ctx)
}

// CenterCmd runs the Security Center.
type CenterCmd struct {
	Listen  string `help:"Address children connect to (sets center.listen)." placeholder:"HOST:PORT"`
	DataDir string `type:"path" help:"Data directory (sets center.data_dir)." placeholder:"DIR"`
}

// Run starts the center role.
func (c *CenterCmd) Run(ctx context.Context, g *Globals) error {
	if c.Listen != "" {
		g.flag("center.listen", strconv.Quote(c.Listen), "--listen")
	}
	if c.DataDir != "" {
		g.flag("center.data_dir", strconv.Quote(c.DataDir), "--data-dir")
	}
	l, err := g.load()
	if err != nil {
		return err
	}
	cn, err := center.New(l.Config.Center, g.logger(l.Config.Log))
	if err != nil {
		return err
	}
	return cn.Run(ctx)
}
