// Command daemoneye is the one binary of DaemonEye: agent, proxy and center,
// and the operator verbs. See DESIGN.md.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/evilbitlabs/daemoneye/cli"
)

// Set by -ldflags at build time (see the Makefile).
var (
	version = "dev"
	commit  = "unknown"
	date    = "unknown"
)

func main() {
	// The first signal cancels ctx and the role drains; a second one exits
	// at once (signal.NotifyContext restores the default action).
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := cli.Main(ctx, os.Args, cli.Build{Version: version, Commit: commit, Date: date}, os.Stdout, os.Stderr, os.Environ())
	stop()
	os.Exit(code)
}
