package agent

// Rule packs pushed down the tree by the center. The agent trusts nobody
// upstream for a pack's content: each pack must verify against the agent's
// own agent.rules.trusted_keys (unsigned packs are refused even when
// allow_unsigned lets local files load: that setting is for files an
// operator put on this host). Accepted packs are kept in the data directory,
// so they run again after a restart before the center is reachable, and
// their runs_on: agent rules are loaded into the running engine. A pushed
// pack replaces a local pack of the same name; a refused pack is logged
// with its reason and never run (the pack of that name accepted before, if
// any, stays).

import (
	"bytes"
	"context"
	"path/filepath"
	"slices"
	"strings"

	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// pushedFile keeps the accepted packs, as a RulePacks frame.
const pushedFile = "rulepacks.frame"

// pushedPack is a pushed pack that verified.
type pushedPack struct {
	wire.RulePack
	pack *rules.Pack
}

// offerPush hands a set from the parent to the rules goroutine; only the
// newest waiting set is kept. It never blocks (the uplink's reader calls it).
func (r *agentRules) offerPush(set *wire.RulePacks) {
	r.pushMu.Lock()
	if r.pending == nil || set.Seq > r.pending.Seq {
		r.pending = set
	}
	r.pushMu.Unlock()
	select {
	case r.pushed <- struct{}{}:
	default:
	}
}

// takePush returns the set waiting, if any.
func (r *agentRules) takePush() *wire.RulePacks {
	r.pushMu.Lock()
	defer r.pushMu.Unlock()
	set := r.pending
	r.pending = nil
	return set
}

// verifyPush checks every pack of a set with the agent's trusted keys. prev
// are the packs accepted before: one whose new version is refused stays.
func (r *agentRules) verifyPush(set *wire.RulePacks, prev []pushedPack) []pushedPack {
	var out []pushedPack
	for _, rp := range set.Packs {
		p, err := rules.Open("center:"+rp.Name, rp.Data, nilIfEmpty(rp.Sig), r.trusted, false)
		if err != nil {
			r.refused.Add(1)
			r.log.Warn("rule pack from the center refused: not run", "pack", rp.Name, "reason", err)
			if i := slices.IndexFunc(prev, func(o pushedPack) bool { return o.pack.Name == rp.Name }); i >= 0 {
				r.log.Warn("the version accepted before stays", "pack", rp.Name, "version", prev[i].pack.Version)
				out = append(out, prev[i])
			}
			continue
		}
		if slices.ContainsFunc(out, func(o pushedPack) bool { return o.pack.Name == p.Name }) {
			r.refused.Add(1)
			r.log.Warn("rule pack from the center refused: a pack of that name is already in the set", "pack", p.Name)
			continue
		}
		out = append(out, pushedPack{RulePack: rp, pack: p})
	}
	return out
}

func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

// compose is what the engine runs: the local packs (the built-in one and
// agent.rules.packs), a pushed pack replacing a local one of its name, then
// the pushed packs. A pushed pack whose rule ids another pack already has
// is refused. It returns the packs to run and the pushed ones kept.
func (r *agentRules) compose(pushed []pushedPack) ([]*rules.Pack, []pushedPack) {
	var all []*rules.Pack
	for _, p := range r.local {
		if slices.ContainsFunc(pushed, func(o pushedPack) bool { return o.pack.Name == p.Name }) {
			r.log.Debug("a pack from the center replaces the local one", "pack", p.Name, "file", p.Source)
			continue
		}
		all = append(all, p)
	}
	ids := map[string]string{}
	for _, p := range all {
		for _, rl := range p.Rules {
			ids[rl.ID] = p.Name
		}
	}
	var kept []pushedPack
	for _, pp := range pushed {
		clash := ""
		for _, rl := range pp.pack.Rules {
			if other, ok := ids[rl.ID]; ok {
				clash = rl.ID + " (also in pack " + other + ")"
				break
			}
		}
		if clash != "" {
			r.refused.Add(1)
			r.log.Warn("rule pack from the center refused: a rule id is taken", "pack", pp.pack.Name, "rule", clash)
			continue
		}
		for _, rl := range pp.pack.Rules {
			ids[rl.ID] = pp.pack.Name
		}
		all = append(all, pp.pack)
		kept = append(kept, pp)
	}
	return all, kept
}

// applyPush verifies a set from the center, loads it into the running
// engine and keeps it on disk.
func (r *agentRules) applyPush(ctx context.Context, set *wire.RulePacks) {
	if set.Seq <= r.seq.Load() {
		r.log.Debug("rule pack set not newer than the one running", "seq", set.Seq, "running", r.seq.Load())
		return
	}
	all, kept := r.compose(r.verifyPush(set, r.current))
	if !samePacks(kept, r.current) {
		if err := r.eng.SetPacks(ctx, all...); err != nil {
			r.log.Error("rule packs from the center not loaded: the running rules stay", "err", err)
			return
		}
		var names []string
		for _, pp := range kept {
			names = append(names, pp.pack.Name+" "+pp.pack.Version)
		}
		r.log.Info("rule packs from the center running", "packs", strings.Join(names, ", "), "seq", set.Seq,
			"agent_rules", len(r.eng.Engine().Status()))
	}
	r.current = kept
	r.seq.Store(set.Seq)
	r.pushedN.Store(uint64(len(kept)))
	if err := r.savePushed(set.Seq, kept); err != nil {
		r.log.Error("keep rule packs from the center (they run until a restart)", "err", err)
	}
}

func samePacks(a, b []pushedPack) bool {
	return slices.EqualFunc(a, b, func(x, y pushedPack) bool {
		return bytes.Equal(x.Data, y.Data) && bytes.Equal(x.Sig, y.Sig)
	})
}

func (r *agentRules) savePushed(seq uint64, kept []pushedPack) error {
	keep := &wire.RulePacks{Seq: seq}
	for _, pp := range kept {
		keep.Packs = append(keep.Packs, pp.RulePack)
	}
	return wire.SaveRulePacks(filepath.Join(r.dataDir, pushedFile), keep)
}

// loadPushed reads the packs kept from the center and verifies them again
// (the trusted keys may have changed since). A damaged file is logged and
// ignored: the center sends the set again.
func (r *agentRules) loadPushed() {
	path := filepath.Join(r.dataDir, pushedFile)
	set, err := wire.LoadRulePacks(path)
	if err != nil {
		r.log.Warn("kept rule packs from the center unreadable: waiting for the center's", "file", path, "err", err)
		return
	}
	if set == nil {
		return
	}
	r.current = r.verifyPush(set, nil)
	r.seq.Store(set.Seq)
	r.pushedN.Store(uint64(len(r.current)))
}
