package agent

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// sitePack is an agent-only pack with one rule matching executables by glob.
func sitePack(name, version, ruleID, glob string) []byte {
	return fmt.Appendf(nil, `format: 1
pack: %s
version: %q
rules:
  - id: %s
    title: %s ran
    severity: medium
    attack: T1204.002
    runs_on: [agent]
    sql: |
      SELECT e.host, e.pid, e.start, e.exe FROM new_process_events e
      WHERE e.kind = 'exec' AND e.exe GLOB '%s'
`, name, version, ruleID, ruleID, glob)
}

func pushKey(t *testing.T, path string) ed25519.PrivateKey {
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

func signed(data []byte, k ed25519.PrivateKey) []byte {
	return rules.EncodeSignature(rules.Sign(data, k))
}

// Pushed packs: only those signed by the agent's own trusted key run;
// unsigned, badly signed, foreign-key and clashing packs are refused; the
// accepted set is kept on disk, survives a restart, is replaced by newer
// sets only, and a refused new version leaves the accepted one running.
func TestRulePush(t *testing.T) {
	dir := t.TempDir()
	mine := pushKey(t, filepath.Join(dir, "rules.key"))
	other := pushKey(t, filepath.Join(dir, "other.key"))
	local := filepath.Join(dir, "site.yaml")
	localData := sitePack("site", "0", "marker-exec", "*/local-marker-*")
	os.WriteFile(local, localData, 0o644)
	os.WriteFile(local+rules.SigSuffix, signed(localData, mine), 0o644)

	cfg := config.Default().Agent
	cfg.DataDir = filepath.Join(dir, "agent")
	os.MkdirAll(cfg.DataDir, 0o700)
	cfg.Rules.Packs = []string{local}
	cfg.Rules.TrustedKeys = []string{filepath.Join(dir, "rules.key.pub")}
	log := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx := t.Context()

	start := func() (*agentRules, chan capture.Event) {
		t.Helper()
		a := &Agent{cfg: cfg, log: log}
		events := make(chan capture.Event, 64)
		r, err := a.startRules(ctx, "host-1", events)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.eng.Close() })
		return r, events
	}
	pid := uint32(1000)
	// fired runs exe through the window and returns the rules that alerted.
	fired := func(r *agentRules, events chan capture.Event, exe string) []string {
		t.Helper()
		pid++
		ev := capture.Event{Time: int64(pid) * 1e9, Kind: capture.KindExec, Proc: capture.ProcKey{PID: pid, Start: uint64(pid)},
			Parent: capture.ProcKey{PID: 1, Start: 1}, Comm: filepath.Base(exe), Exec: &capture.Exec{Exe: exe, Argv: []string{exe}}}
		if err := r.eng.Feed([]capture.Event{ev}); err != nil {
			t.Fatal(err)
		}
		if err := r.eng.Evaluate(ctx); err != nil {
			t.Fatal(err)
		}
		var ids []string
		for {
			select {
			case al := <-events:
				if al.Proc.PID == pid {
					ids = append(ids, al.Alert.RuleID)
				}
			default:
				slices.Sort(ids)
				return ids
			}
		}
	}
	kept := func() *wire.RulePacks {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(cfg.DataDir, pushedFile))
		if err != nil {
			t.Fatal(err)
		}
		f, err := wire.NewReader(bytes.NewReader(b), wire.Limits{}).ReadFrame()
		if err != nil {
			t.Fatal(err)
		}
		return f.(*wire.RulePacks)
	}

	r, events := start()
	if got := fired(r, events, "/tmp/x/local-marker-1"); !slices.Contains(got, "marker-exec") {
		t.Fatalf("local pack: %v, want marker-exec", got)
	}

	site := sitePack("site", "1", "marker-exec", "*/daemoneye-marker-*")
	rogue := sitePack("rogue", "1", "rogue-exec", "*/daemoneye-rogue-*")
	unsigned := sitePack("unsigned", "1", "unsigned-exec", "*/daemoneye-unsigned-*")
	tampered := sitePack("tampered", "1", "tampered-exec", "*/daemoneye-tampered-*")
	clash := sitePack("clash", "1", "exec-from-temp-dir", "*/daemoneye-clash-*")
	r.applyPush(ctx, &wire.RulePacks{Seq: 10, Packs: []wire.RulePack{
		{Name: "site", Data: site, Sig: signed(site, mine)},
		{Name: "rogue", Data: rogue, Sig: signed(rogue, other)},
		{Name: "unsigned", Data: unsigned},
		{Name: "tampered", Data: append(bytes.Clone(tampered), '\n'), Sig: signed(tampered, mine)},
		{Name: "clash", Data: clash, Sig: signed(clash, mine)},
	}})
	if n := r.refused.Load(); n != 4 {
		t.Errorf("%d packs refused, want 4 (foreign key, unsigned, tampered, rule id clash)", n)
	}
	if got := fired(r, events, "/opt/daemoneye-marker-1"); !slices.Contains(got, "marker-exec") {
		t.Errorf("pushed pack: %v, want marker-exec", got)
	}
	if got := fired(r, events, "/opt/local-marker-2"); slices.Contains(got, "marker-exec") {
		t.Errorf("the local site pack still runs after the center's replaced it: %v", got)
	}
	for _, exe := range []string{"/opt/daemoneye-rogue-1", "/opt/daemoneye-unsigned-1", "/opt/daemoneye-tampered-1", "/opt/daemoneye-clash-1"} {
		if got := fired(r, events, exe); len(got) > 0 && !slices.Equal(got, []string{"exec-from-temp-dir"}) {
			t.Errorf("%s: a refused pack ran: %v", exe, got)
		}
	}
	if k := kept(); k.Seq != 10 || len(k.Packs) != 1 || k.Packs[0].Name != "site" {
		t.Fatalf("kept on disk: seq %d, %d packs; want seq 10, site only", k.Seq, len(k.Packs))
	}

	// An older set is ignored.
	r.applyPush(ctx, &wire.RulePacks{Seq: 9})
	if got := fired(r, events, "/opt/daemoneye-marker-2"); !slices.Contains(got, "marker-exec") || r.seq.Load() != 10 {
		t.Errorf("after an older set: %v, seq %d", got, r.seq.Load())
	}

	// Restart: the kept pack runs before the center says anything.
	r, events = start()
	if r.seq.Load() != 10 || r.pushedN.Load() != 1 {
		t.Errorf("after a restart: seq %d, %d pushed packs; want 10, 1", r.seq.Load(), r.pushedN.Load())
	}
	if got := fired(r, events, "/opt/daemoneye-marker-3"); !slices.Contains(got, "marker-exec") {
		t.Errorf("kept pack after a restart: %v", got)
	}

	// A new version with a bad signature: refused, the accepted one stays.
	site2 := sitePack("site", "2", "marker-exec", "*/daemoneye-v2-*")
	r.applyPush(ctx, &wire.RulePacks{Seq: 11, Packs: []wire.RulePack{{Name: "site", Data: site2, Sig: signed(site2, other)}}})
	if got := fired(r, events, "/opt/daemoneye-marker-4"); !slices.Contains(got, "marker-exec") {
		t.Errorf("after a refused new version: %v, want the accepted version still running", got)
	}
	// Signed right, it replaces it.
	r.applyPush(ctx, &wire.RulePacks{Seq: 12, Packs: []wire.RulePack{{Name: "site", Data: site2, Sig: signed(site2, mine)}}})
	if a, b := fired(r, events, "/opt/daemoneye-marker-5"), fired(r, events, "/opt/daemoneye-v2-1"); slices.Contains(a, "marker-exec") || !slices.Contains(b, "marker-exec") {
		t.Errorf("after version 2: old glob %v, new glob %v", a, b)
	}

	// The center's empty set drops the pushed packs; the local one is back.
	r.applyPush(ctx, &wire.RulePacks{Seq: 13})
	if got := fired(r, events, "/opt/local-marker-6"); !slices.Contains(got, "marker-exec") {
		t.Errorf("after the empty set: %v, want the local pack again", got)
	}
	if k := kept(); k.Seq != 13 || len(k.Packs) != 0 {
		t.Errorf("kept after the empty set: %+v", k)
	}

	// Kept packs are verified again at start, with the keys of the day.
	r.applyPush(ctx, &wire.RulePacks{Seq: 14, Packs: []wire.RulePack{{Name: "site", Data: site2, Sig: signed(site2, mine)}}})
	cfg.Rules.TrustedKeys = []string{filepath.Join(dir, "other.key.pub")}
	cfg.Rules.Packs = nil
	r, events = start()
	if r.pushedN.Load() != 0 || r.refused.Load() != 1 {
		t.Errorf("restart with another trusted key: %d pushed packs running, %d refused; want 0, 1", r.pushedN.Load(), r.refused.Load())
	}
	if got := fired(r, events, "/opt/daemoneye-v2-2"); slices.Contains(got, "marker-exec") {
		t.Errorf("a kept pack no longer trusted ran: %v", got)
	}

	// A damaged kept file is ignored, not fatal.
	os.WriteFile(filepath.Join(cfg.DataDir, pushedFile), []byte("\x00\x00\x00\x05junk!"), 0o600)
	r, _ = start()
	if r.seq.Load() != 0 {
		t.Errorf("seq %d from a damaged file", r.seq.Load())
	}
}
