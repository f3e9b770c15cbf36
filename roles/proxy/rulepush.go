package proxy

// Rule packs pass through a proxy unopened: it keeps the newest set its
// parent sent (on disk, so children that connect after a restart get it
// before the parent is reachable again) and gives it to every child. It
// checks nothing but the frame's shape: agents verify each pack against
// their own keys.

import (
	"path/filepath"

	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// rulePacksFile holds the newest set, as a frame, beside the WAL (where
// the CRL is kept too).
const rulePacksFile = "rulepacks.frame"

func (p *Proxy) rulePacksPath() string {
	return filepath.Join(filepath.Dir(filepath.Clean(p.cfg.WALPath)), rulePacksFile)
}

// loadRulePacks reads the kept set at start. A damaged file is logged and
// ignored: the parent sends the set again.
func (p *Proxy) loadRulePacks() {
	set, err := wire.LoadRulePacks(p.rulePacksPath())
	if err != nil {
		p.log.Warn("kept rule packs unreadable: waiting for the parent's", "file", p.rulePacksPath(), "err", err)
		return
	}
	if set == nil {
		return
	}
	p.log.Info("rule packs kept from before", "packs", len(set.Packs), "seq", set.Seq)
	p.rules.Set(set)
}

// rulePacks keeps a set from the parent if it is newer than the one held,
// and passes it down.
func (p *Proxy) rulePacks(set *wire.RulePacks) {
	p.rulesMu.Lock()
	defer p.rulesMu.Unlock()
	if cur, ok := p.rules.Get().(*wire.RulePacks); ok && set.Seq <= cur.Seq {
		if set.Seq < cur.Seq {
			p.log.Warn("older rule pack set from the parent ignored", "seq", set.Seq, "held", cur.Seq)
		}
		return
	}
	if err := wire.SaveRulePacks(p.rulePacksPath(), set); err != nil {
		p.log.Error("keep rule packs (passed down all the same)", "err", err)
	}
	p.log.Info("rule packs from the parent; passing them down", "packs", len(set.Packs), "seq", set.Seq, "children", len(p.srv.Children()))
	p.rules.Set(set)
}

// RulePacksSeq is the sequence of the rule pack set held (0: none).
func (p *Proxy) RulePacksSeq() uint64 {
	if set, ok := p.rules.Get().(*wire.RulePacks); ok {
		return set.Seq
	}
	return 0
}
