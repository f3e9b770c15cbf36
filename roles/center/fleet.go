package center

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// onHealth records a node's health report in the fleet registry. A report
// must come from the node itself or be relayed by the child it came
// through (the last proxy on its path): a child cannot speak for a node
// that is not below it.
func (c *Center) onHealth(ch *transport.Child, h wire.Health) {
	relayed := len(h.Path) > 0
	switch {
	case !relayed && h.NodeID == ch.ID:
	case relayed && h.Path[len(h.Path)-1] == ch.ID && (ch.Role != wire.RoleAgent):
	default:
		c.log.Warn("health report refused: not from the node or its relaying child", "node", h.NodeID, "child", ch.ID, "path", h.Path)
		return
	}
	c.fleetMu.Lock()
	c.fleet[h.NodeID] = h
	c.healthDue[h.NodeID] = h // a newer report replaces one not yet written
	c.fleetMu.Unlock()
	select {
	case c.healthKick <- struct{}{}:
	default:
	}
}

// writeHealth writes the reports onHealth accepted to the fleet registry,
// off the children's control readers: a proxy relays all its agents'
// reports on one control stream, which must not wait on the SQL writer.
func (c *Center) writeHealth(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.healthKick:
		}
		c.fleetMu.Lock()
		due := c.healthDue
		c.healthDue = map[string]wire.Health{}
		c.fleetMu.Unlock()
		for _, h := range due {
			if err := c.SQL.UpsertHost(ctx, hostOf(h, time.Now())); err != nil {
				c.log.Warn("fleet registry", "node", h.NodeID, "err", err)
				continue
			}
			fig, err := json.Marshal(map[string]any{"version": h.Version, "figures": h.Figures, "reported": time.Unix(0, h.Time).UTC()})
			if err == nil {
				err = c.SQL.RecordHealth(ctx, h.NodeID, time.Unix(0, h.Time), fig, h.Lost)
			}
			if err != nil {
				c.log.Warn("fleet registry health", "node", h.NodeID, "err", err)
			}
		}
	}
}

// hostOf is the registry row a report describes.
func hostOf(h wire.Health, now time.Time) sqlstore.Host {
	kind := sqlstore.KindAgent
	if h.Role == wire.RoleProxy {
		kind = sqlstore.KindProxy
	}
	var addrs []netip.Addr
	for _, a := range h.Addresses {
		if ip, err := netip.ParseAddr(a); err == nil {
			addrs = append(addrs, ip)
		}
	}
	path := slices.Clone(h.Path) // nearest the sender first; the registry wants nearest the center first
	slices.Reverse(path)
	return sqlstore.Host{AgentID: h.NodeID, Kind: kind, Version: h.Version, Addresses: addrs, SiteTag: h.SiteTag,
		ProxyPath: path, LastSeen: now}
}

// fleetRegistrar coalesces the fleet registry's updates. Every change of
// the routes (a child connects, a proxy announces an agent) asks for one;
// with a thousand agents joining that is a thousand changes, and a pass
// that upserted every node each time was quadratic (half a million
// transactions, holding the SQL writer that ingest and alerts wait for).
// Now one pass runs at a time, a change during it asks for one more, and a
// pass writes only the nodes whose kind or path it has not written yet.
type fleetRegistrar struct {
	mu      sync.Mutex
	running bool
	again   bool
	written map[string]string // node id -> the kind and path last written by a pass
}

// registerFleet records every node below the center in the fleet registry,
// with the path of proxies it is reached through. A node that reported its
// health keeps what it reported (version, addresses, its full path).
func (c *Center) registerFleet(ctx context.Context) {
	r := &c.fleetReg
	r.mu.Lock()
	if r.running {
		r.again = true
		r.mu.Unlock()
		return
	}
	r.running = true
	r.mu.Unlock()
	for {
		c.registerFleetOnce(ctx)
		r.mu.Lock()
		if !r.again {
			r.running = false
			r.mu.Unlock()
			return
		}
		r.again = false
		r.mu.Unlock()
	}
}

func (c *Center) registerFleetOnce(ctx context.Context) {
	now := time.Now()
	r := &c.fleetReg
	present := map[string]bool{}
	// A host not heard from since the start keeps the site it reported:
	// retention windows go by site.
	sites := map[string]string{}
	if bySite, err := c.SQL.HostsBySite(ctx); err == nil {
		for site, hosts := range bySite {
			for _, h := range hosts {
				sites[h] = site
			}
		}
	}
	upsert := func(h sqlstore.Host) {
		present[h.AgentID] = true
		c.fleetMu.Lock()
		rep, ok := c.fleet[h.AgentID]
		c.fleetMu.Unlock()
		if ok {
			h = hostOf(rep, now)
		} else {
			h.SiteTag = sites[h.AgentID]
		}
		key := string(h.Kind) + " " + strings.Join(h.ProxyPath, " ")
		r.mu.Lock()
		done := r.written[h.AgentID] == key
		r.mu.Unlock()
		if done {
			return
		}
		if err := c.SQL.UpsertHost(ctx, h); err != nil {
			c.log.Warn("fleet registry", "node", h.AgentID, "err", err)
			return
		}
		r.mu.Lock()
		if r.written == nil {
			r.written = map[string]string{}
		}
		r.written[h.AgentID] = key
		r.mu.Unlock()
	}
	for _, ch := range c.srv.Children() {
		kind := sqlstore.KindAgent
		if ch.Role != wire.RoleAgent {
			kind = sqlstore.KindProxy
		}
		upsert(sqlstore.Host{AgentID: ch.ID, Kind: kind, LastSeen: now})
		if kind != sqlstore.KindProxy {
			continue
		}
		for _, a := range ch.Agents() {
			upsert(sqlstore.Host{AgentID: a, Kind: sqlstore.KindAgent, ProxyPath: []string{ch.ID}, LastSeen: now})
		}
	}
	// A node that went away is written again when it comes back (its
	// last_seen moves).
	r.mu.Lock()
	for id := range r.written {
		if !present[id] {
			delete(r.written, id)
		}
	}
	r.mu.Unlock()
}
