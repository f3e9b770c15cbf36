package demo

// The tree of the demo: a CA, a center with its API, one proxy, one agent
// per scenario host, each a real role run in this process; and their
// teardown.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime/debug"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/internal/scenario"
	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"github.com/evilbitlabs/daemoneye/roles/agent"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/roles/proxy"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Names in the demo's certificates.
const (
	caOrg        = "DaemonEye demo"
	centerName   = "center-1"
	proxyName    = "proxy-1"
	operatorName = "demo-analyst"
)

// run is one run's state.
type run struct {
	opts  Options
	dir   string
	out   io.Writer
	log   *slog.Logger
	began time.Time
	res   *Result

	ca      *pki.CA
	caCert  string
	certDir string

	center *center.Center
	sql    *sqlstore.Store // the center's
	scen   *scenario.Scenario
	api    *apiClient

	stops []stopper // what to stop, in start order

	attackStart time.Time
	attackDone  chan struct{} // closed when the attack's request returned
	attackBody  string
	attackErr   error
}

// stopper ends something the run started.
type stopper struct {
	name string
	stop func() error
}

// role is a role running in a goroutine.
type role struct {
	cancel context.CancelFunc
	done   chan error
}

func startRole(run func(context.Context) error) *role {
	ctx, cancel := context.WithCancel(context.Background())
	r := &role{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	return r
}

func (r *role) stop(name string) error {
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			return fmt.Errorf("%s stopped with: %w", name, err)
		}
		return nil
	case <-time.After(stopRoleWithin):
		return fmt.Errorf("%s did not stop within %v", name, stopRoleWithin)
	}
}

// teardown stops everything, the last started first, and returns what
// failed.
func (d *run) teardown() error {
	var errs []error
	for i := len(d.stops) - 1; i >= 0; i-- {
		if err := d.stops[i].stop(); err != nil {
			errs = append(errs, fmt.Errorf("stop %s: %w", d.stops[i].name, err))
		}
	}
	d.stops = nil
	if d.api != nil {
		d.api.close()
	}
	return errors.Join(errs...)
}

func (d *run) onStop(name string, stop func() error) {
	d.stops = append(d.stops, stopper{name, stop})
}

func (d *run) logPath() string {
	if d.opts.Log != nil {
		return "the caller's log"
	}
	return filepath.Join(d.dir, "demo.log")
}

// prepare clears what an earlier run left of the nodes (their stores hold
// that run's hosts and traces) and loads the CA, or makes one. The CA and
// the packages stay: packages from earlier runs still verify with it.
func (d *run) prepare() error {
	for _, sub := range []string{"center", "proxy", "agents", "certs"} {
		if err := os.RemoveAll(filepath.Join(d.dir, sub)); err != nil {
			return fmt.Errorf("demo: clear %s: %w", sub, err)
		}
	}
	caDir := filepath.Join(d.dir, "pki")
	d.caCert = filepath.Join(caDir, pki.CACertFile)
	d.certDir = filepath.Join(d.dir, "certs")
	var err error
	if _, serr := os.Stat(d.caCert); serr == nil {
		if d.ca, err = pki.LoadCA(caDir); err != nil {
			return fmt.Errorf("demo: the CA of an earlier run: %w (make demo-clean starts afresh)", err)
		}
		d.say("  CA          %s (kept from an earlier run)", d.caCert)
	} else {
		if d.ca, err = pki.Init(caDir, caOrg, 0); err != nil {
			return fmt.Errorf("demo: CA: %w", err)
		}
		d.say("  CA          %s (new)", d.caCert)
	}
	d.res.CACert = d.caCert
	return nil
}

// issue writes a certificate and key for a node and returns its TLS
// settings.
func (d *run) issue(role pki.Role, name string) (config.TLS, error) {
	certPEM, keyPEM, err := d.ca.Issue(role, name, pki.IssueOptions{Loopback: true})
	if err != nil {
		return config.TLS{}, fmt.Errorf("demo: certificate for %s: %w", name, err)
	}
	if err := pki.WriteKeyPair(d.certDir, name, certPEM, keyPEM); err != nil {
		return config.TLS{}, fmt.Errorf("demo: certificate for %s: %w", name, err)
	}
	return config.TLS{Cert: filepath.Join(d.certDir, name+".crt"), Key: filepath.Join(d.certDir, name+".key"),
		CA: d.caCert, RenewCheckMS: 60000}, nil
}

// apiListen is the API's address, with its port resolved: the one asked
// for (port 0: any free one), else the CLI's default port when free, else
// any free loopback port.
func (d *run) apiListen() (string, error) {
	cands := []string{"127.0.0.1:8443", "127.0.0.1:0"}
	if d.opts.APIListen != "" {
		cands = []string{d.opts.APIListen}
	}
	var lerr error
	for _, a := range cands {
		l, err := net.Listen("tcp", a)
		if err != nil {
			lerr = err
			continue
		}
		addr := l.Addr().String()
		l.Close()
		return addr, nil
	}
	return "", fmt.Errorf("demo: no address for the API: %w", lerr)
}

// startCenter starts the center with the demo's policy: rule traces start
// at once, traces follow links to other hosts on their own, and no second
// operator is needed (one analyst runs the demo).
func (d *run) startCenter() error {
	tlsCfg, err := d.issue(pki.RoleCenter, centerName)
	if err != nil {
		return err
	}
	apiAddr, err := d.apiListen()
	if err != nil {
		return err
	}
	c := config.Default().Center
	c.Listen = "127.0.0.1:0"
	c.DataDir = filepath.Join(d.dir, "center")
	c.CADir = d.ca.Dir()
	c.TLS = tlsCfg
	c.API.Listen = apiAddr
	c.API.TwoPersonTraces = false
	c.Rules.TracePolicy = "auto"
	c.Traces.AutoFollow = true
	c.Metrics.Listen = ""
	cn, err := center.New(c, d.log)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	r := startRole(cn.Run)
	d.onStop("center", func() error { return r.stop("center") })
	d.center, d.sql = cn, cn.SQL
	d.res.CenterDB = cn.SQL.Path()
	d.res.APIURL = "https://" + apiAddr
	// The API listens once Run has started: wait for it, or for Run's end.
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", apiAddr, time.Second)
		if err == nil {
			conn.Close()
			break
		}
		select {
		case rerr := <-r.done:
			r.done <- rerr // for stop
			return fmt.Errorf("demo: the center stopped at start: %v", rerr)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: the center's API is not listening on %s after 10s: %w", apiAddr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.say("  center      %s: QUIC %s, API %s, rules: default pack, trace_policy auto, auto_follow on", centerName, cn.Addr(), d.res.APIURL)
	return nil
}

// startProxy starts one proxy under the center.
func (d *run) startProxy() (string, error) {
	tlsCfg, err := d.issue(pki.RoleProxy, proxyName)
	if err != nil {
		return "", err
	}
	c := config.Default().Proxy
	c.Listen = "127.0.0.1:0"
	c.Upstream = d.center.Addr()
	c.WALPath = filepath.Join(d.dir, "proxy", "wal")
	c.Metrics.Listen = ""
	c.TLS = tlsCfg
	c.Version = d.opts.Version
	px, err := proxy.New(c, d.log)
	if err != nil {
		return "", fmt.Errorf("demo: %w", err)
	}
	r := startRole(px.Run)
	d.onStop("proxy", func() error { return r.stop("proxy") })
	d.say("  proxy       %s: QUIC %s, upstream %s", proxyName, px.Addr(), d.center.Addr())
	return px.Addr(), nil
}

// startAgents starts one agent per host, each in this (the root)
// namespace and scoped to its host's network namespace, under the proxy,
// and waits until both have seeded their process tables.
func (d *run) startAgents(proxyAddr string, hosts ...*testnet.Host) error {
	// agent.New bounds the whole process's heap for an agent of its own
	// (unless GOMEMLIMIT is set); here the center and another agent share
	// the process, so the limit it found is put back.
	limit := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(limit)
	type started struct {
		name string
		ag   *agent.Agent
		r    *role
	}
	var all []started
	for _, h := range hosts {
		tlsCfg, err := d.issue(pki.RoleAgent, h.Name)
		if err != nil {
			return err
		}
		c := config.Default().Agent
		c.ID = h.Name
		c.DataDir = filepath.Join(d.dir, "agents", h.Name)
		c.ProxyHint = proxyAddr
		c.Scope = scenario.Scope(h)
		c.Metrics.Listen = ""
		c.TLS = tlsCfg
		c.Version = d.opts.Version
		ag, err := agent.New(c, d.log.With("host", h.Name))
		if err != nil {
			return fmt.Errorf("demo: agent for %s: %w", h.Name, err)
		}
		r := startRole(ag.Run)
		name := "agent " + h.Name
		d.onStop(name, func() error { return r.stop(name) })
		all = append(all, started{h.Name, ag, r})
	}
	deadline := time.After(agentsTimeout)
	for _, s := range all {
		select {
		case <-s.ag.Ready():
		case err := <-s.r.done:
			s.r.done <- err
			return fmt.Errorf("demo: agent for %s stopped at start: %v", s.name, err)
		case <-deadline:
			return fmt.Errorf("demo: agent for %s: %w: not ready (process table seeded) within %v", s.name, ErrTimeout, agentsTimeout)
		}
		d.say("  agent       %s: capture %s, agent.scope %s, via %s", s.name, s.ag.Source().Name(), scenario.Scope(hostByName(hosts, s.name)), proxyName)
	}
	return nil
}

func hostByName(hosts []*testnet.Host, name string) *testnet.Host {
	for _, h := range hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// addOperator registers the demo's analyst with the center and writes
// their certificate, as `daemoneye operator add` and `pki issue --role
// operator` would.
func (d *run) addOperator(ctx context.Context) error {
	certPEM, keyPEM, err := d.ca.Issue(pki.RoleOperator, operatorName, pki.IssueOptions{})
	if err != nil {
		return fmt.Errorf("demo: operator certificate: %w", err)
	}
	if err := pki.WriteKeyPair(d.certDir, operatorName, certPEM, keyPEM); err != nil {
		return fmt.Errorf("demo: operator certificate: %w", err)
	}
	if _, err := d.center.API.Operators().Add(ctx, center.NewOperator{ID: operatorName, Name: "demo analyst", Role: center.RoleAnalyst},
		"demo", center.LedgerAuditor{L: d.center.Ledger}); err != nil {
		return fmt.Errorf("demo: register operator: %w", err)
	}
	d.res.Operator = Operator{Name: operatorName, Cert: filepath.Join(d.certDir, operatorName+".crt"), Key: filepath.Join(d.certDir, operatorName+".key")}
	if d.api, err = newAPIClient(d.res.APIURL, d.res.Operator, d.caCert); err != nil {
		return err
	}
	return nil
}
