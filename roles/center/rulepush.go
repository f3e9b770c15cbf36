package center

// Rule packs down the tree. The center sends its customer rule packs (the
// files of center.rules.packs, byte for byte, with their .sig) to every
// child as one wire.RulePacks set; proxies keep the newest set and pass it
// on; agents check each pack against their own trusted keys and run its
// agent rules. The built-in pack is not sent: every binary has it.
//
// The center watches its pack files. When they change (a bundle applied
// here brought a new version), it loads them again, verified as at start;
// if they load, its own engine runs them (recorded in the ledger) and the
// new set goes down the tree. If they do not (a pack and its signature
// caught between two renames, a bad signature), the running packs stay
// and the error is logged; the next change is tried again.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/internal/dsse"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

const (
	// rulePackPoll is how often the pack files are looked at (a stat each).
	rulePackPoll = 2 * time.Second
	// rulePushFile keeps the set's sequence number across restarts, so
	// agents (which keep the highest they saw) accept what comes next.
	rulePushFile = "rulepush.json"
)

type rulePushState struct {
	Seq    uint64 `json:"seq"`
	Digest string `json:"digest"`
}

// watchRulePacks pushes the rule pack set to children (again to those that
// connect later, see OnChange) and reloads it when the files change.
func (c *Center) watchRulePacks(ctx context.Context) error {
	c.packsMu.RLock()
	running := runDigest(customer(c.packs))
	c.packsMu.RUnlock()
	// Never a fingerprint (which is "" with no packs): the first look
	// always loads and pushes, so an empty set reaches agents that still
	// run packs this center no longer has.
	loaded, failed := "\x00", "\x00"
	t := time.NewTicker(rulePackPoll)
	defer t.Stop()
	for {
		if fp := c.packFingerprint(); fp != loaded && fp != failed {
			if err := c.reloadRulePacks(ctx, &running); err != nil {
				c.log.Error("rule packs not reloaded: the running packs stay active", "err", err)
				failed = fp
			} else {
				loaded, failed = fp, "\x00"
			}
		}
		c.push.CatchUp() // children whose last send failed
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// reloadRulePacks loads the pack files, runs them if they differ from the
// running ones, and pushes the set.
func (c *Center) reloadRulePacks(ctx context.Context, running *string) error {
	packs, set, err := c.loadCustomerPacks()
	if err != nil {
		return err
	}
	if d := runDigest(packs); d != *running {
		all := packs
		if c.cfg.Rules.Default {
			def, err := rules.Default()
			if err != nil {
				return err
			}
			all = append([]*rules.Pack{def}, packs...)
		}
		if err := c.Rules.SetPacks(ctx, all...); err != nil {
			return err
		}
		c.packsMu.Lock()
		before := map[string]string{}
		for _, p := range customer(c.packs) {
			before[p.Name] = sha256Hex(p.Raw)
		}
		c.packs = all
		c.packsMu.Unlock()
		*running = d
		for _, p := range packs {
			if before[p.Name] == sha256Hex(p.Raw) {
				continue // unchanged
			}
			c.log.Info("rule pack reloaded", "pack", p.Name, "version", p.Version, "rules", len(p.Rules), "file", p.Source)
			if _, err := c.Ledger.Append(ledger.Entry{Kind: ledger.KindRuleActivate, Actor: "center", Time: time.Now(),
				Payload: mustJSON(map[string]any{"pack": p.Name, "version": p.Version, "rules": len(p.Rules), "reloaded": true, "sha256": sha256Hex(p.Raw)})}); err != nil {
				c.log.Error("ledger rule activation", "pack", p.Name, "err", err)
			}
		}
	}
	if set.Seq, err = c.pushSeq(set); err != nil {
		return err
	}
	if b, err := wire.AppendFrame(nil, set); err != nil || len(b)-4 > wire.DefaultMaxFrameSize {
		return fmt.Errorf("the rule packs (%d) are too large to push in one frame (%d bytes at most): agents keep the set they have", len(set.Packs), wire.DefaultMaxFrameSize)
	}
	c.log.Info("rule packs pushed down the tree", "packs", len(set.Packs), "seq", set.Seq)
	c.push.Set(set)
	return nil
}

// loadCustomerPacks reads center.rules.packs as at start (rules.LoadSet:
// verified with the trusted keys) and makes the set to push: each pack's
// bytes with the signature it was verified with.
func (c *Center) loadCustomerPacks() ([]*rules.Pack, *wire.RulePacks, error) {
	rc := c.cfg.Rules
	packs, err := rules.LoadSet(false, rc.Packs, rc.TrustedKeys, rc.AllowUnsigned)
	if err != nil {
		return nil, nil, err
	}
	set := &wire.RulePacks{}
	seen := map[string]string{}
	for _, p := range packs {
		if other, dup := seen[p.Name]; dup {
			return nil, nil, fmt.Errorf("rule pack %q is in both %s and %s", p.Name, other, p.Source)
		}
		seen[p.Name] = p.Source
		set.Packs = append(set.Packs, wire.RulePack{Name: p.Name, Data: p.Raw, Sig: p.Sig})
	}
	return packs, set, nil
}

// pushSeq numbers a set: the same set keeps its number across restarts, a
// new one gets a higher number (at least the time in ns, so a center whose
// data directory was reset still goes up).
func (c *Center) pushSeq(set *wire.RulePacks) (uint64, error) {
	tmp := *set
	tmp.Seq = 1
	b, err := wire.AppendFrame(nil, &tmp)
	if err != nil {
		return 0, err
	}
	digest := sha256Hex(b)
	path := filepath.Join(c.cfg.DataDir, rulePushFile)
	var st rulePushState
	if raw, err := os.ReadFile(path); err == nil {
		if err := dsse.UnmarshalStrict(raw, &st); err != nil {
			c.log.Warn("rule push state unreadable: numbering afresh", "file", path, "err", err)
			st = rulePushState{}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return 0, err
	}
	if st.Digest == digest && st.Seq != 0 {
		return st.Seq, nil
	}
	st = rulePushState{Seq: max(st.Seq+1, uint64(time.Now().UnixNano())), Digest: digest}
	out, _ := json.Marshal(st)
	if err := atomicfile.Write(path, out, 0o600); err != nil {
		return 0, err
	}
	return st.Seq, nil
}

// packFingerprint changes whenever a pack file or its signature is
// replaced, grows, or is touched.
func (c *Center) packFingerprint() string {
	var s string
	for _, p := range c.cfg.Rules.Packs {
		for _, f := range []string{p, p + rules.SigSuffix} {
			fi, err := os.Stat(f)
			if err != nil {
				s += "-;"
				continue
			}
			var ino uint64
			if st, ok := fi.Sys().(*syscall.Stat_t); ok {
				ino = st.Ino
			}
			s += fmt.Sprintf("%d:%d:%d;", fi.Size(), fi.ModTime().UnixNano(), ino)
		}
	}
	return s
}

// customer leaves out the built-in pack.
func customer(packs []*rules.Pack) []*rules.Pack {
	var out []*rules.Pack
	for _, p := range packs {
		if p.Source != rules.DefaultSource {
			out = append(out, p)
		}
	}
	return out
}

// runDigest identifies what a set of packs runs (their bytes, in order).
func runDigest(packs []*rules.Pack) string {
	h := sha256.New()
	for _, p := range packs {
		fmt.Fprintf(h, "%d:", len(p.Raw))
		h.Write(p.Raw)
	}
	return hex.EncodeToString(h.Sum(nil))
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
