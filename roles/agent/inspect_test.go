package agent

import (
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/privacy"
)

// TestViewMasking: the agent's local views follow the process's masking
// policy; a reveal shows everything.
func TestViewMasking(t *testing.T) {
	p := capture.Process{Comm: "mysql", Exec: capture.Exec{Argv: []string{"mysql", "-u", "root", "-p", "hunter2"}}}
	if got, want := mask(p, false).Command(), "mysql [4 args masked]"; got != want {
		t.Errorf("default policy: %q, want %q", got, want)
	}
	old := privacy.Default()
	t.Cleanup(func() { privacy.SetDefault(old) })
	pol, err := privacy.NewPolicy(privacy.Rules{Mode: privacy.ModeSecrets, KeepArgv0: true})
	if err != nil {
		t.Fatal(err)
	}
	privacy.SetDefault(pol)
	if got, want := mask(p, false).Command(), "mysql -u root -p [masked]"; got != want {
		t.Errorf("secrets policy: %q, want %q", got, want)
	}
	if got, want := mask(p, true).Command(), "mysql -u root -p hunter2"; got != want {
		t.Errorf("revealed: %q, want %q", got, want)
	}
	if p.Exec.Argv[4] != "hunter2" {
		t.Error("masking changed the process it was given")
	}
}
