package agent

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"github.com/evilbitlabs/daemoneye/rules"
)

const markerPack = `format: 1
pack: customer-local
version: "0.1.0"
rules:
  - id: marker-exec
    title: A marker program ran
    severity: low
    attack: T1204.002
    runs_on: [agent]
    sql: |
      SELECT e.host, e.pid, e.start, e.time, e.exe
      FROM new_process_events e
      WHERE e.kind = 'exec' AND e.exe GLOB '*/daemoneye-marker-zz'
`

// A customer pack signed with the customer's key runs at the agent; its
// match is an alert event in the agent's store. Unsigned, the same pack is
// refused and the agent does not start.
func TestAgentCustomerPack(t *testing.T) {
	testenv.NeedRoot(t)
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "rules.key")
	if _, err := rules.GenerateKey(keyPath); err != nil {
		t.Fatal(err)
	}
	priv, err := rules.LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	packPath := filepath.Join(dir, "local.yaml")
	if err := os.WriteFile(packPath, []byte(markerPack), 0o644); err != nil {
		t.Fatal(err)
	}

	unsigned := testConfig(t, "ebpf")
	unsigned.Rules.Packs = []string{packPath}
	unsigned.Rules.TrustedKeys = []string{keyPath + ".pub"}
	a, err := New(unsigned, slog.New(slog.DiscardHandler))
	if err == nil {
		err = a.Run(t.Context())
	}
	if err == nil || !strings.Contains(err.Error(), "local.yaml") || !strings.Contains(err.Error(), "sig") {
		t.Fatalf("agent with an unsigned pack: %v, want a refusal naming the pack and its missing signature", err)
	}
	t.Logf("unsigned pack refused: %v", err)

	if err := os.WriteFile(packPath+rules.SigSuffix, rules.EncodeSignature(rules.Sign([]byte(markerPack), priv)), 0o644); err != nil {
		t.Fatal(err)
	}
	c := testConfig(t, "ebpf")
	c.Rules.Packs = []string{packPath}
	c.Rules.TrustedKeys = []string{keyPath + ".pub"}
	ag := startAgent(t, c)

	marker := filepath.Join(t.TempDir(), "daemoneye-marker-zz")
	b, err := os.ReadFile("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(marker, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(marker)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	deadline := time.Now().Add(20 * time.Second)
	for {
		var found *capture.RuleAlert
		ag.Store().EventsBySeq(1, func(ev capture.Event) bool {
			if ev.Kind == capture.KindAlert && ev.Proc.PID == pid && ev.Alert.RuleID == "marker-exec" {
				found = ev.Alert
				return false
			}
			return true
		})
		if found != nil {
			if found.Pack != "customer-local" || found.Severity != "low" || found.Technique != "T1204.002" {
				t.Errorf("alert %+v, want customer-local's marker-exec, low, T1204.002", found)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("no alert event from the customer's agent rule within 20s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
