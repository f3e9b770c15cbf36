// Package demo runs issue 7's chain end to end on one machine, for
// `daemoneye demo` (`make demo`) and its end-to-end test: the scenario's
// hosts (web-1 with apache2 and a CGI with a command injection, db-1 with
// sshd; internal/scenario), a center, a proxy and one agent per host, all
// real roles in this process on loopback, each agent scoped to its host's
// network namespace. The attack makes apache2's bash run ssh to db-1; the
// default pack's rule raises an alert, the center starts a trace at once
// (trace_policy auto), the traced connect becomes a link, the center fans
// the trace out to db-1's sshd (auto_follow), and an operator exports the
// signed forensic package through the API, which is then checked offline
// with the CA certificate alone.
//
// It sits outside the data flow: it wires the roles together (as main
// does) and watches the center's SQL store to tell the story.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/evilbitlabs/daemoneye/internal/scenario"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// Options shape a run.
type Options struct {
	// Dir holds everything the demo makes: the CA and certificates, the
	// nodes' data, the log and the exported packages. A second run in the
	// same Dir keeps the CA and the packages and starts the nodes afresh.
	Dir string
	// Out receives the story; nil discards it.
	Out io.Writer
	// Log receives the roles' logs; nil writes them to Dir/demo.log at
	// LogLevel (nil: info).
	Log      *slog.Logger
	LogLevel slog.Leveler
	// Keep leaves everything running after the report, until ctx ends, so
	// that the API can be explored.
	Keep bool
	// APIListen is the center API's address; "" means 127.0.0.1:8443 when
	// that port is free (the CLI's default), another loopback port when not.
	APIListen string
	// Version is the build's, reported by the agents to the fleet registry.
	Version string
}

// Result is what a run produced.
type Result struct {
	Dir      string
	CACert   string // the customer CA certificate: all a verifier needs
	CenterDB string // the center's SQL store (closed once Run returns)
	APIURL   string
	Operator Operator // the operator certificate the demo exported with

	AlertID int64
	TraceID string
	// Web is the alerting process (apache2's bash) and Root's lineage
	// on web-1; DB is the process on db-1 that accepted the connection.
	Web, DB sqlstore.Process
	Link    sqlstore.Link
	// Events counts the trace's events at the center by host.
	Events map[string]int

	Package string // the exported package's path
	Report  ledger.PackageReport

	Timings []Timing
}

// Operator names an operator's certificate and key files.
type Operator struct {
	Name, Cert, Key string
}

// Timing is how long a step of the demo took.
type Timing struct {
	Step string
	Took time.Duration
}

// Host names of the scenario, as the agents' certificates name them.
const (
	WebHost = scenario.WebHost
	DBHost  = scenario.DBHost
)

// RuleID is the default pack's rule the attack trips.
const RuleID = "webserver-spawns-shell"

// Delays in the attack. The rule's alert travels from the agent to the
// center and the trace command back down before the traced process
// connects, so bash pauses before it runs ssh; the link's accept and the
// fan-out travel the same way before the commands on db-1 run, so the
// remote command pauses first too. Without the pauses the connect (and the
// commands) would be over before the trace could see them: a trace
// follows what happens after it starts.
const (
	webPause = 3 * time.Second
	dbPause  = 3 * time.Second
)

// remoteCommand is what the attack runs on db-1 after its pause.
var remoteCommand = fmt.Sprintf(`sleep %d; echo "db-host=$(uname -n) user=$(id -un)"; echo "ssh-connection=$SSH_CONNECTION"; uname -sr; ls -a /root | head -n 5`,
	int(dbPause/time.Second))

// Bounds of the waits. Each is generous: it ends a run that is stuck, and
// the output says what did not happen.
const (
	agentsTimeout  = 60 * time.Second
	healthTimeout  = 30 * time.Second
	alertTimeout   = 30 * time.Second
	traceTimeout   = 30 * time.Second
	linkTimeout    = 45 * time.Second
	fanoutTimeout  = 45 * time.Second
	eventsTimeout  = 45 * time.Second
	attackTimeout  = 90 * time.Second
	settleTimeout  = 20 * time.Second
	stopTimeout    = 20 * time.Second
	stopRoleWithin = 20 * time.Second
)

// ErrTimeout is wrapped by the error of a wait that ran out: something in
// the chain did not happen.
var ErrTimeout = errors.New("did not happen in time")

// Run runs the demo: installs what is missing, builds the hosts and the
// tree, runs the attack, waits for each link of the chain, exports and
// verifies the package, and prints the report on Out. Everything it
// started is stopped and the hosts removed before it returns (with Keep,
// once ctx ends); Dir stays.
func Run(ctx context.Context, opts Options) (res *Result, err error) {
	if opts.Dir == "" {
		return nil, errors.New("demo: no directory")
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("demo: needs root (network namespaces for the hosts, the eBPF sensor, daemons run as other users)")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	defer unlock()
	out := opts.Out
	if out == nil {
		out = io.Discard
	}
	log := opts.Log
	if log == nil {
		f, err := os.OpenFile(filepath.Join(dir, "demo.log"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("demo: %w", err)
		}
		defer f.Close()
		lvl := opts.LogLevel
		if lvl == nil {
			lvl = slog.LevelInfo
		}
		log = slog.New(slog.NewTextHandler(f, &slog.HandlerOptions{Level: lvl}))
	}
	d := &run{opts: opts, dir: dir, out: out, log: log, began: time.Now(), res: &Result{Dir: dir}}
	defer func() {
		if cerr := d.teardown(); cerr != nil {
			err = errors.Join(err, cerr)
		}
		if err != nil {
			d.say("\nthe demo FAILED: %v", err)
			d.say("the roles' log is %s; `make demo-clean` removes what the demo made", d.logPath())
		}
	}()
	if err := d.main(ctx); err != nil {
		return d.res, err
	}
	return d.res, nil
}

// lockDir takes an exclusive lock on dir/demo.lock: one demo per
// directory (a --keep run may still hold it).
func lockDir(dir string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(dir, "demo.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("demo: another demo is running with %s (stop it first): %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// Clean removes what demos made: dir (refused while a demo runs with it)
// and whatever killed runs left of their hosts (network namespaces, with
// the processes still in them, and scenario directories). It says what it
// removed on out.
func Clean(dir string, out io.Writer) error {
	if out == nil {
		out = io.Discard
	}
	if os.Geteuid() != 0 {
		return errors.New("demo: clean needs root (network namespaces)")
	}
	var errs []error
	removed, err := scenario.Sweep()
	if err != nil {
		errs = append(errs, fmt.Errorf("demo: sweep: %w", err))
	}
	for _, r := range removed {
		fmt.Fprintf(out, "removed %s\n", r)
	}
	if dir == "" {
		return errors.Join(errs...)
	}
	dir, err = filepath.Abs(dir)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("demo: %w", err))...)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return errors.Join(errs...)
	}
	unlock, err := lockDir(dir)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	err = os.RemoveAll(dir)
	unlock()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("demo: %w", err))...)
	}
	fmt.Fprintf(out, "removed %s\n", dir)
	return errors.Join(errs...)
}
