package agent

// The agent's health report for the center's fleet registry: version,
// addresses (those of its scope's network namespace when it watches one),
// lost events by cause and a few figures, sent up the control lane.

import (
	"context"
	"fmt"
	"net"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/netns"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Health intervals: the first report soon after start, then regularly.
const (
	healthFirst = time.Second
	healthEvery = 30 * time.Second
)

// health builds the report.
func (a *Agent) health() wire.Health {
	h := wire.Health{NodeID: a.ship.AgentID(), Role: wire.RoleAgent, Version: a.cfg.Version, Time: time.Now().UnixNano(),
		SiteTag: a.cfg.SiteTag, Lost: a.Lost()}
	addrs, err := hostAddresses(a.cfg.Scope)
	if err != nil {
		a.log.Warn("host addresses for the health report", "err", err)
	}
	h.Addresses = addrs
	st := a.ship.Stats()
	h.Figures = map[string]uint64{
		"events_stored": a.stored.Load(), "processes_seeded": uint64(a.seeded.Load()),
		"events_shipped": st.Events, "batches_shipped": st.Batches, "bulk_batches_dropped": st.Dropped,
		"commands": st.Commands,
	}
	if a.tracer != nil {
		h.Figures["traces_running"] = uint64(len(a.tracer.traces()))
		h.Figures["trace_commands_refused"] = a.tracer.refused.Load()
	}
	if a.rules != nil {
		h.Figures["rule_packs_pushed"] = a.rules.pushedN.Load()
		h.Figures["rule_packs_refused"] = a.rules.refused.Load()
		h.Figures["rule_push_seq"] = a.rules.seq.Load()
	}
	for lane, q := range st.Queue.Lanes {
		h.Figures[fmt.Sprintf("queue_bytes_lane%d", lane)] = uint64(max(q.Bytes, 0))
	}
	return h
}

// reportHealth sends a report now and then until ctx ends.
func (a *Agent) reportHealth(ctx context.Context) error {
	return a.ship.up.SendEvery(ctx, healthFirst, healthEvery, func() wire.Frame { return a.health() }, a.log)
}

// hostAddresses lists the host's IP addresses other than loopback and
// link-local: those of the scope's network namespace when the agent
// watches one (a host built of namespaces on a bigger machine).
func hostAddresses(scope string) ([]string, error) {
	sc, err := capture.ParseScope(scope)
	if err != nil {
		return nil, err
	}
	if sc.Kind != capture.ScopeNetNS {
		return interfaceAddrs()
	}
	var (
		out  []string
		ferr error
	)
	err = netns.Do(sc.Path, func() error {
		out, ferr = interfaceAddrs()
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, ferr
}

func interfaceAddrs() ([]string, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.IsLinkLocalUnicast() || ipn.IP.IsLinkLocalMulticast() {
			continue
		}
		out = append(out, ipn.IP.String())
	}
	return out, nil
}
