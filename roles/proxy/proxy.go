// Package proxy is the store-and-forward node of the tree. Children (agents
// and lower proxies) connect to it; every batch they send is written to its
// per-lane WAL and acknowledged only once durable, then forwarded upstream
// byte for byte (agent signatures stay valid) and deleted when the parent
// acknowledges it. Commands travel the other way through a durable outbox and
// the routing table that children announce.
package proxy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Proxy is a running proxy.
type Proxy struct {
	cfg  config.Proxy
	log  *slog.Logger
	id   *transport.Identity
	wal  *wal.WAL
	srv  *transport.Server
	up   *transport.Uplink
	disp *transport.Dispatcher
	renw *transport.Renewer
	// rules is the newest rule pack set from the parent, passed to every
	// child (rulepush.go).
	rules   *transport.Latest
	rulesMu sync.Mutex

	announceMu sync.Mutex
	announced  []string

	batchesIn  [4]atomic.Uint64
	eventsIn   [4]atomic.Uint64
	bytesIn    [4]atomic.Uint64
	refused    map[string]*atomic.Uint64 // by cause
	crlApplied atomic.Uint64
}

// New opens the WAL and the listener.
func New(cfg config.Proxy, log *slog.Logger) (*Proxy, error) {
	if cfg.Upstream == "" {
		return nil, errors.New("proxy: upstream is not set")
	}
	id, err := transport.LoadIdentity(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA, filepath.Join(filepath.Dir(filepath.Clean(cfg.WALPath)), "crl.pem"))
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	if id.Role != pki.RoleProxy {
		return nil, fmt.Errorf("proxy: certificate is for a %s, not a proxy", id.Role)
	}
	log = log.With("component", "proxy", "node", id.Name)
	w, err := wal.Open(cfg.WALPath, wal.Options{
		FsyncInterval: time.Duration(cfg.FsyncIntervalMS) * time.Millisecond,
		HighWatermark: cfg.Watermarks.High, LowWatermark: cfg.Watermarks.Low,
	}, log)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p := &Proxy{cfg: cfg, log: log, id: id, wal: w, refused: map[string]*atomic.Uint64{
		"over_watermark": {}, "disk_full": {}, "wal_error": {},
	}}
	p.srv, err = transport.NewServer(transport.ServerConfig{
		NodeID:    id.Name,
		Listen:    cfg.Listen,
		TLS:       id.ServerTLS(pki.RoleAgent, pki.RoleProxy),
		OnBatch:   p.onBatch,
		OnControl: p.onControl,
		OnChange:  p.onChange,
		Log:       log,
	})
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.up, err = transport.NewUplink(transport.UplinkConfig{
		NodeID:       id.Name,
		Role:         wire.RoleProxy,
		Addrs:        append([]string{cfg.Upstream}, cfg.UpstreamFallback...),
		TLS:          id.ClientTLS(pki.RoleProxy, pki.RoleCenter),
		WAL:          w,
		Below:        p.srv.Below,
		Agents:       p.srv.Agents,
		OnFrame:      p.fromParent,
		RetryPrimary: time.Duration(cfg.RetryPrimaryMS) * time.Millisecond,
		Log:          log,
	})
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.disp = transport.NewDispatcher(p.srv, w, func(a wire.CommandAck) { p.up.SendControl(a) }, log)
	p.rules = transport.NewLatest(p.srv, log)
	p.loadRulePacks()
	p.renw = transport.NewRenewer(id, cfg.TLS.Cert, cfg.TLS.Key, time.Duration(cfg.TLS.RenewCheckMS)*time.Millisecond,
		func(f wire.Frame) error { return p.up.SendControl(f) }, log)
	return p, nil
}

// Addr is the address children connect to.
func (p *Proxy) Addr() string { return p.srv.Addr() }

// Refused counts children refused at hello, by reason.
func (p *Proxy) Refused() map[string]uint64 { return p.srv.Refused() }

// Below lists this proxy and the nodes below it.
func (p *Proxy) Below() []string { return p.srv.Below() }

// Name is the proxy's node id.
func (p *Proxy) Name() string { return p.id.Name }

// Run serves until ctx ends.
func (p *Proxy) Run(ctx context.Context) error {
	defer p.wal.Close()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return p.srv.Run(gctx) })
	g.Go(func() error { return p.up.Run(gctx) })
	g.Go(func() error { return p.disp.Run(gctx) })
	g.Go(func() error { return p.renw.Run(gctx) })
	g.Go(func() error { return p.reportHealth(gctx) })
	if p.cfg.Metrics.Listen != "" {
		g.Go(func() error { return p.serveMetrics(gctx) })
	}
	return g.Wait()
}

func (p *Proxy) onBatch(c *transport.Child, lane wire.Lane, info wire.Info, sealed []byte) transport.Verdict {
	agentID, seq := info.AgentID, info.Seq
	pend := p.wal.AppendAsync(uint8(lane), sealed, nil)
	return func() *wire.Nack {
		_, err := pend.Wait()
		if err == nil {
			p.batchesIn[lane].Add(1)
			p.eventsIn[lane].Add(uint64(info.Events))
			p.bytesIn[lane].Add(uint64(len(sealed)))
			p.up.KickLane(transport.Lane(lane))
			return nil
		}
		cause := "wal_error"
		switch {
		case errors.Is(err, wal.ErrOverWatermark):
			cause = "over_watermark"
		case errors.Is(err, wal.ErrDiskFull):
			cause = "disk_full"
		}
		p.refused[cause].Add(1)
		// The child keeps the batch and retries after a pause: nothing is
		// lost, the child just slows down.
		return &wire.Nack{Lane: lane, AgentID: agentID, Seq: seq, Code: wire.NackOverWatermark, Reason: err.Error()}
	}
}

func (p *Proxy) onControl(c *transport.Child, f wire.Frame) {
	switch m := f.(type) {
	case *wire.CommandAck:
		p.disp.Acked(*m)
	case *wire.RenewRequest:
		p.up.SendControl(*m)
	case *wire.Health:
		if m.NodeID == c.ID || (len(m.Path) > 0 && m.Path[len(m.Path)-1] == c.ID && c.Role != wire.RoleAgent) {
			p.relayHealth(*m)
		}
	}
}

// onChange tells the parent which agents appeared or left below us, and
// delivers commands that waited for a route.
func (p *Proxy) onChange() {
	p.announceMu.Lock()
	now := p.srv.Agents()
	var added, removed []string
	for _, a := range now {
		if !slices.Contains(p.announced, a) {
			added = append(added, a)
		}
	}
	for _, a := range p.announced {
		if !slices.Contains(now, a) {
			removed = append(removed, a)
		}
	}
	p.announced = now
	p.announceMu.Unlock()
	p.rules.CatchUp()
	if len(added)+len(removed) > 0 {
		p.up.SendControl(wire.Announce{Added: added, Removed: removed})
	}
	go p.disp.Flush(context.Background())
}

// fromParent handles what comes down: commands, CRLs, rule packs.
func (p *Proxy) fromParent(f wire.Frame) {
	switch m := f.(type) {
	case *wire.Command:
		if err := p.disp.Submit(context.Background(), *m); err != nil {
			p.log.Error("queue command", "command", m.CommandID, "err", err)
		}
	case *wire.CRL:
		changed, err := p.id.ApplyCRL(m.DER)
		if err != nil {
			p.log.Error("CRL from parent refused", "err", err)
			return
		}
		if changed {
			p.crlApplied.Add(1)
			p.log.Info("CRL applied; pushing it down", "children", len(p.srv.Children()))
		}
		p.srv.Broadcast(context.Background(), *m)
	case *wire.RulePacks:
		go p.rulePacks(m) // a file write: off the control reader
	case *wire.RenewResponse:
		if m.NodeID == p.id.Name {
			if err := p.renw.Handle(*m); err != nil {
				p.log.Error("certificate renewal", "err", err)
			}
			return
		}
		if c, ok := p.srv.RouteNode(m.NodeID); ok {
			if err := c.Send(context.Background(), *m); err != nil {
				p.log.Warn("route renewal answer", "node", m.NodeID, "err", err)
			}
		}
	}
}

// Renewals counts this proxy's certificate renewals.
func (p *Proxy) Renewals() uint64 { return p.renw.Renewals() }
