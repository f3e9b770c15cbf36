package proxy

import (
	"context"
	"fmt"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Health intervals: the first report soon after start, then regularly.
const (
	healthFirst = time.Second
	healthEvery = 30 * time.Second
)

// relayHealth passes a child's health report up with this proxy on its
// path, so the center learns the whole path.
func (p *Proxy) relayHealth(h wire.Health) {
	h.Path = append(h.Path, p.id.Name)
	if err := p.up.SendControl(h); err != nil {
		p.log.Warn("relay health report", "node", h.NodeID, "err", err)
	}
}

// health is this proxy's own report.
func (p *Proxy) health() wire.Health {
	h := wire.Health{NodeID: p.id.Name, Role: wire.RoleProxy, Version: p.cfg.Version, Time: time.Now().UnixNano(),
		Figures: map[string]uint64{"children": uint64(len(p.srv.Children())), "agents_routed": uint64(len(p.srv.Agents()))}}
	for lane := wire.LaneTrace; lane <= wire.LaneBulk; lane++ {
		h.Figures[fmt.Sprintf("batches_in_%s", lane)] = p.batchesIn[lane].Load()
		h.Figures[fmt.Sprintf("events_in_%s", lane)] = p.eventsIn[lane].Load()
	}
	h.Lost = map[string]uint64{}
	for cause, n := range p.refused {
		if v := n.Load(); v > 0 {
			h.Lost["refused_"+cause] = v
		}
	}
	return h
}

// reportHealth sends this proxy's report now and then until ctx ends.
func (p *Proxy) reportHealth(ctx context.Context) error {
	return p.up.SendEvery(ctx, healthFirst, healthEvery, func() wire.Frame { return p.health() }, p.log)
}
