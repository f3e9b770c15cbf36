// Package treetest builds DaemonEye trees for tests and benchmarks: a
// customer CA, a center, proxies and agents, each a real role with real
// certificates, QUIC links on loopback and durable stores in temp dirs. Nodes
// can be stopped and restarted on the same data, to test what survives.
package treetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/roles/agent"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/roles/proxy"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Tree is a set of nodes sharing one CA.
type Tree struct {
	T   testing.TB
	Dir string
	CA  *pki.CA
	Log *slog.Logger
}

// New makes a CA in a temp dir.
func New(t testing.TB) *Tree {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "pki"), "treetest", 0)
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if os.Getenv("TREETEST_LOG") != "" {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return &Tree{T: t, Dir: dir, CA: ca, Log: log}
}

// Issue writes a certificate and key for a node and returns the TLS config.
func (tr *Tree) Issue(role pki.Role, name string) config.TLS {
	tr.T.Helper()
	return tr.IssueTTL(role, name, 0)
}

// IssueTTL is Issue with a lifetime (0: the role's default).
func (tr *Tree) IssueTTL(role pki.Role, name string, ttl time.Duration) config.TLS {
	tr.T.Helper()
	certPEM, keyPEM, err := tr.CA.Issue(role, name, pki.IssueOptions{Loopback: true, TTL: ttl})
	if err != nil {
		tr.T.Fatal(err)
	}
	dir := filepath.Join(tr.Dir, "certs")
	if err := pki.WriteKeyPair(dir, name, certPEM, keyPEM); err != nil {
		tr.T.Fatal(err)
	}
	return config.TLS{
		Cert: filepath.Join(dir, name+".crt"), Key: filepath.Join(dir, name+".key"),
		CA: filepath.Join(tr.CA.Dir(), pki.CACertFile), RenewCheckMS: 60000,
	}
}

// FreeAddr returns a loopback UDP address nobody listens on, so a node can
// be restarted on the same address.
func FreeAddr(t testing.TB) string {
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().String()
}

// retryBind retries a constructor while the address is still held by a
// node that was just stopped on it (quic-go closes its socket asynchronously).
func retryBind[T any](t testing.TB, mk func() (T, error)) T {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		v, err := mk()
		if err == nil {
			return v
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// runner runs a role until stopped.
type runner struct {
	cancel context.CancelFunc
	done   chan error
}

func start(run func(context.Context) error) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- run(ctx) }()
	return r
}

func (r *runner) stop(t testing.TB, what string) {
	if r == nil {
		return
	}
	r.cancel()
	select {
	case err := <-r.done:
		if err != nil {
			t.Errorf("%s stopped with: %v", what, err)
		}
	case <-time.After(15 * time.Second):
		t.Errorf("%s did not stop within 15s", what)
	}
}

// Center is a center node that can be stopped and restarted.
type Center struct {
	tr  *Tree
	Cfg config.Center
	*center.Center
	run *runner
}

// NewCenter configures a center (not started).
func (tr *Tree) NewCenter(name string) *Center {
	c := config.Default().Center
	c.Listen = FreeAddr(tr.T)
	c.DataDir = filepath.Join(tr.Dir, name)
	c.TLS = tr.Issue(pki.RoleCenter, name)
	c.CADir = tr.CA.Dir()
	c.API.Listen = "" // tests that want the API set an address
	return &Center{tr: tr, Cfg: c}
}

// Start runs the center (again).
func (c *Center) Start() *Center {
	c.tr.T.Helper()
	cn := retryBind(c.tr.T, func() (*center.Center, error) { return center.New(c.Cfg, c.tr.Log) })
	c.Center = cn
	c.run = start(cn.Run)
	c.tr.T.Cleanup(c.Stop)
	return c
}

// Stop stops the center; it can be started again on the same data.
func (c *Center) Stop() {
	c.run.stop(c.tr.T, "center")
	c.run = nil
}

// Proxy is a proxy node.
type Proxy struct {
	tr  *Tree
	Cfg config.Proxy
	*proxy.Proxy
	run *runner
}

// NewProxy configures a proxy under the given parents (primary first).
func (tr *Tree) NewProxy(name string, parents ...string) *Proxy {
	c := config.Default().Proxy
	c.Listen = FreeAddr(tr.T)
	c.Upstream = parents[0]
	c.UpstreamFallback = parents[1:]
	c.WALPath = filepath.Join(tr.Dir, name, "wal")
	c.FsyncIntervalMS = 10
	c.Metrics.Listen = ""
	c.TLS = tr.Issue(pki.RoleProxy, name)
	return &Proxy{tr: tr, Cfg: c}
}

// Start runs the proxy (again).
func (p *Proxy) Start() *Proxy {
	p.tr.T.Helper()
	px := retryBind(p.tr.T, func() (*proxy.Proxy, error) { return proxy.New(p.Cfg, p.tr.Log) })
	p.Proxy = px
	p.run = start(px.Run)
	p.tr.T.Cleanup(p.Stop)
	return p
}

// Stop stops the proxy.
func (p *Proxy) Stop() {
	p.run.stop(p.tr.T, "proxy")
	p.run = nil
}

// Agent is a simulated agent: the real store and shipper, fed with
// synthetic events instead of a kernel sensor, so many can run at once.
type Agent struct {
	tr    *Tree
	Cfg   config.Agent
	Name  string
	Store *store.Local
	Ship  *agent.Shipper
	run   *runner
	mu    sync.Mutex
	n     int
}

// NewAgent configures an agent under the given proxies (primary first).
func (tr *Tree) NewAgent(name string, parents ...string) *Agent {
	c := config.Default().Agent
	c.DataDir = filepath.Join(tr.Dir, name)
	c.ProxyHint = parents[0]
	c.ProxyFallback = parents[1:]
	c.Stream.BatchMaxMS = 20
	c.Stream.FsyncIntervalMS = 10
	c.TLS = tr.Issue(pki.RoleAgent, name)
	return &Agent{tr: tr, Cfg: c, Name: name}
}

// Start opens the agent's store and runs its shipper.
func (a *Agent) Start() *Agent {
	a.tr.T.Helper()
	if err := os.MkdirAll(a.Cfg.DataDir, 0o700); err != nil {
		a.tr.T.Fatal(err)
	}
	st, err := store.OpenLocal(filepath.Join(a.Cfg.DataDir, "store"), store.LocalOptions{}, a.tr.Log)
	if err != nil {
		a.tr.T.Fatal(err)
	}
	sh, err := agent.NewShipper(a.Cfg, st, nil, a.tr.Log)
	if err != nil {
		a.tr.T.Fatal(err)
	}
	a.Store, a.Ship = st, sh
	a.run = start(sh.Run)
	a.tr.T.Cleanup(a.Stop)
	return a
}

// Stop stops the shipper and closes the store.
func (a *Agent) Stop() {
	if a.run == nil {
		return
	}
	a.run.stop(a.tr.T, "agent "+a.Name)
	a.run = nil
	a.Store.Close()
}

// Emit stores n synthetic exec events, as the sensor would.
func (a *Agent) Emit(n int) {
	a.tr.T.Helper()
	a.mu.Lock()
	base := a.n
	a.n += n
	a.mu.Unlock()
	evs := make([]capture.Event, n)
	now := time.Now().UnixNano()
	for i := range evs {
		pid := uint32(1000 + (base+i)%30000)
		evs[i] = capture.Event{
			Time: now + int64(i), Kind: capture.KindExec, Comm: "bash",
			Proc: capture.ProcKey{PID: pid, Start: uint64(base + i)}, Parent: capture.ProcKey{PID: 1, Start: 1},
			Exec: &capture.Exec{Exe: "/usr/bin/bash", Argv: []string{"bash", "-c", fmt.Sprintf("echo %d", base+i)}, Cwd: "/"},
		}
	}
	if _, _, err := a.Store.Append(evs); err != nil {
		a.tr.T.Fatal(err)
	}
	a.Ship.Kick()
}

// WaitAll waits until the center stored every batch the agents cut, or the
// timeout; it returns what is missing ("" when nothing is).
func WaitAll(c *Center, timeout time.Duration, agents ...*Agent) string {
	deadline := time.Now().Add(timeout)
	for {
		missing := Missing(c, agents...)
		if missing == "" || time.Now().After(deadline) {
			return missing
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Missing compares what each agent cut with what the center stored.
func Missing(c *Center, agents ...*Agent) string {
	got, err := c.Ingest.Stored()
	if err != nil {
		return err.Error()
	}
	var out string
	for _, a := range agents {
		want := a.Ship.Stats().Batches
		if a.Ship.Stats().Events == 0 {
			continue
		}
		seqs := got[a.Name]
		if uint64(len(seqs)) != want {
			out += fmt.Sprintf("%s: center has %d of %d batches; ", a.Name, len(seqs), want)
		}
	}
	return out
}
