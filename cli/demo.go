package cli

import (
	"context"
	"log/slog"

	"github.com/evilbitlabs/daemoneye/internal/demo"
)

// DemoCmd runs issue 7's chain on this machine: two hosts made of network
// namespaces (web-1 with apache2 and a flawed CGI, db-1 with sshd), a
// center, a proxy and an agent per host in this process; an attack from
// web-1's CGI to db-1 over ssh; the alert, the trace across both hosts,
// and the signed package, exported and verified offline. It uses its own
// embedded configuration, not the configuration file.
type DemoCmd struct {
	Dir   string `default:"daemoneye-demo" type:"path" help:"Directory for everything the demo makes (CA, node data, log, packages); a second run keeps the CA and packages." placeholder:"DIR"`
	Keep  bool   `help:"Leave the center, proxy, agents and hosts running after the report, until Ctrl-C, to explore the API."`
	API   string `name:"api-listen" help:"Center API address (default 127.0.0.1:8443, another loopback port when that is taken)." placeholder:"HOST:PORT"`
	Clean bool   `help:"Remove DIR and what killed demos left (their network namespaces and processes), then exit."`
}

// Run runs the demo (or cleans up after it).
func (c *DemoCmd) Run(ctx context.Context, g *Globals) error {
	if c.Clean {
		return demo.Clean(c.Dir, g.stdout)
	}
	var lvl slog.Level
	if g.LogLevel != "" {
		if err := lvl.UnmarshalText([]byte(g.LogLevel)); err != nil {
			return err
		}
	}
	_, err := demo.Run(ctx, demo.Options{Dir: c.Dir, Out: g.stdout, Keep: c.Keep, APIListen: c.API, LogLevel: lvl, Version: g.build.Version})
	return err
}
