package treetest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/bundle"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// pushPack is an agent-only pack with one rule matching executables by a
// glob, and a fixture so it passes `rules check` (bundle apply runs it).
func pushPack(name, version, ruleID, glob, fixtureExe string) []byte {
	return fmt.Appendf(nil, `format: 1
pack: %s
version: %q
rules:
  - id: %s
    title: %s ran
    severity: high
    attack: T1204.002
    runs_on: [agent]
    sql: |
      SELECT e.host, e.pid, e.start, e.exe FROM new_process_events e
      WHERE e.kind = 'exec' AND e.exe GLOB '%s'
    fixtures:
      - name: it runs
        rows:
          process_events:
            - {kind: exec, pid: 200, start: 90, comm: x, exe: %s}
            - {kind: exec, pid: 201, start: 91, comm: bash, exe: /usr/bin/bash}
        expect: {matches: [{pid: 200, start: 90}]}
`, name, version, ruleID, ruleID, glob, fixtureExe)
}

func treeKey(t *testing.T, path string) ed25519.PrivateKey {
	t.Helper()
	if _, err := rules.GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	k, err := rules.LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeSigned(t *testing.T, path string, data []byte, k ed25519.PrivateKey) {
	t.Helper()
	os.MkdirAll(filepath.Dir(path), 0o755)
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+rules.SigSuffix, rules.EncodeSignature(rules.Sign(data, k)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// runCopy runs a copy of /bin/true named name and returns its pid.
func runCopy(t *testing.T, dir, name string) uint32 {
	t.Helper()
	p := filepath.Join(dir, name)
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(p)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return uint32(cmd.Process.Pid)
}

// The center pushes its customer rule packs through a proxy; the agent
// runs those signed with its own trusted key (the rule fires on a real exec
// and the alert reaches the center) and refuses one signed by a key it does
// not trust. A bundle applied at the center with a new version of the pack
// reaches the agent the same way. The proxy keeps the set for children that
// connect later, and across its own restart.
func TestRulePackPush(t *testing.T) {
	needRootEBPF(t)
	tr := New(t)
	keys := filepath.Join(tr.Dir, "keys")
	os.MkdirAll(keys, 0o700)
	customerKey := treeKey(t, filepath.Join(keys, "customer.key"))
	rogueKey := treeKey(t, filepath.Join(keys, "rogue.key"))
	bundleKey := treeKey(t, filepath.Join(keys, "bundle.key"))

	// The center's root: its packs live where a bundle puts them.
	root := filepath.Join(tr.Dir, "center-root")
	sitePath := filepath.Join(root, "etc/daemoneye/rules/site.yaml")
	roguePath := filepath.Join(root, "etc/daemoneye/rules/rogue.yaml")
	writeSigned(t, sitePath, pushPack("site", "1", "marker-exec", "*/daemoneye-marker-*", "/tmp/daemoneye-marker-x"), customerKey)
	writeSigned(t, roguePath, pushPack("rogue", "1", "rogue-exec", "*/daemoneye-rogue-*", "/tmp/daemoneye-rogue-x"), rogueKey)

	c := tr.NewCenter("center")
	c.Cfg.Rules.Packs = []string{sitePath, roguePath}
	// The center trusts both keys; the agent will trust only the customer's.
	c.Cfg.Rules.TrustedKeys = []string{filepath.Join(keys, "customer.key.pub"), filepath.Join(keys, "rogue.key.pub")}
	c.Start()
	alerts := laneAlerts(c)
	agentAlert := func(pid uint32, rule string) bool {
		for _, e := range alerts() {
			if e.Proc.PID == pid && e.Alert.RuleID == rule {
				return true
			}
		}
		return false
	}

	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	// The set reaches the proxy before the agent exists: the agent gets it
	// as a child that connects later.
	eventually(t, 30*time.Second, "the rule pack set at the proxy", func() bool { return px.RulePacksSeq() != 0 })
	seq1 := px.RulePacksSeq()

	ag := tr.newRealAgent("host-p", px.Cfg.Listen)
	ag.Cfg.Rules.TrustedKeys = []string{filepath.Join(keys, "customer.key.pub")}
	ag.Start()
	kept := func() *wire.RulePacks {
		b, err := os.ReadFile(filepath.Join(ag.Cfg.DataDir, "rulepacks.frame"))
		if err != nil {
			return nil
		}
		f, err := wire.NewReader(bytes.NewReader(b), wire.Limits{}).ReadFrame()
		if err != nil {
			return nil
		}
		return f.(*wire.RulePacks)
	}
	eventually(t, 30*time.Second, "the accepted packs kept in the agent's data directory", func() bool {
		k := kept()
		return k != nil && k.Seq == seq1
	})
	if k := kept(); len(k.Packs) != 1 || k.Packs[0].Name != "site" {
		t.Fatalf("agent kept %d packs (%v), want site only: rogue is signed by a key it does not trust", len(k.Packs), k.Packs)
	}

	// Real execs: the rogue pack's program first, then the marker twice.
	work := t.TempDir()
	roguePID := runCopy(t, work, "daemoneye-rogue-1")
	markerPID := runCopy(t, work, "daemoneye-marker-1")
	eventually(t, 30*time.Second, "the agent's marker-exec alert at the center", func() bool { return agentAlert(markerPID, "marker-exec") })
	var n int
	eventually(t, 30*time.Second, "the marker alert in the center's alerts table", func() bool {
		err := c.SQL.ReadOnly().QueryRowContext(context.Background(),
			`SELECT count(*) FROM alerts WHERE rule_id = 'marker-exec' AND host = 'host-p' AND pid = ?`, markerPID).Scan(&n)
		return err == nil && n > 0
	})
	// Alerts travel in order on one lane: once the second marker's alert is
	// in, a rogue alert (its exec came first) would be too.
	marker2 := runCopy(t, work, "daemoneye-marker-2")
	eventually(t, 30*time.Second, "the second marker alert", func() bool { return agentAlert(marker2, "marker-exec") })
	if agentAlert(roguePID, "rogue-exec") {
		t.Fatal("the agent ran a pack signed by a key it does not trust")
	}

	// A bundle applied at the center brings version 2 of the site pack.
	v2 := pushPack("site", "2", "marker-exec", "*/daemoneye-newmarker-*", "/tmp/daemoneye-newmarker-x")
	src := filepath.Join(tr.Dir, "bundle-src")
	writeSigned(t, filepath.Join(src, "site.yaml"), v2, customerKey)
	bpath := filepath.Join(tr.Dir, "site-2.bundle")
	if _, err := bundle.CreateFile(bpath, bundle.Header{Sequence: 2, Creator: "treetest", Targets: []string{"center"}}, []bundle.Source{
		{Kind: bundle.KindRules, Src: filepath.Join(src, "site.yaml"), Path: "etc/daemoneye/rules/site.yaml"},
		{Kind: bundle.KindRulesSig, Src: filepath.Join(src, "site.yaml.sig"), Path: "etc/daemoneye/rules/site.yaml.sig"},
	}, bundleKey, nil); err != nil {
		t.Fatal(err)
	}
	res, err := bundle.Apply(context.Background(), bpath, bundle.ApplyOptions{Root: root, Role: "center",
		Trusted:      []ed25519.PublicKey{bundleKey.Public().(ed25519.PublicKey)},
		RulesTrusted: []ed25519.PublicKey{customerKey.Public().(ed25519.PublicKey)}})
	if err != nil {
		t.Fatalf("bundle apply at the center: %v", err)
	}
	t.Logf("bundle applied: %q", res.Checks)
	eventually(t, 30*time.Second, "version 2 kept at the agent", func() bool {
		k := kept()
		return k != nil && k.Seq > seq1 && len(k.Packs) == 1 && bytes.Equal(k.Packs[0].Data, v2)
	})
	newPID := runCopy(t, work, "daemoneye-newmarker-1")
	eventually(t, 30*time.Second, "an alert from version 2 of the rule", func() bool { return agentAlert(newPID, "marker-exec") })
	oldPID := runCopy(t, work, "daemoneye-marker-3")
	marker4 := runCopy(t, work, "daemoneye-newmarker-2")
	eventually(t, 30*time.Second, "the next version 2 alert", func() bool { return agentAlert(marker4, "marker-exec") })
	if agentAlert(oldPID, "marker-exec") {
		t.Error("version 1 of the rule still ran after version 2 arrived")
	}

	// The proxy keeps the set across a restart, before its parent is back.
	seq2 := px.RulePacksSeq()
	c.Stop()
	px.Stop()
	px.Start()
	if got := px.RulePacksSeq(); got != seq2 {
		t.Errorf("proxy after a restart holds set %d, want %d", got, seq2)
	}
}

// A center with no customer packs still pushes its (empty) set: agents
// drop packs it no longer has.
func TestRulePackPushEmpty(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	eventually(t, 30*time.Second, "the empty rule pack set at the proxy", func() bool { return px.RulePacksSeq() != 0 })
}
