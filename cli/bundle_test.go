package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The bundle verbs end to end through the command line: keys, a signed
// pack, create, verify (and a wrong key), apply (confirmation, --yes, a
// second apply refused).
func TestBundleCommands(t *testing.T) {
	dir := t.TempDir()
	p := func(name string) string { return filepath.Join(dir, name) }
	mustRun := func(args ...string) string {
		t.Helper()
		code, out, errs := run(t, nil, args...)
		if code != 0 {
			t.Fatalf("%q: code %d\n%s\n%s", args, code, out, errs)
		}
		return out
	}
	mustRun("bundle", "keygen", "--out", p("bundle.key"))
	mustRun("bundle", "keygen", "--out", p("other.key"))
	mustRun("rules", "keygen", "--out", p("rules.key"))
	pack, err := os.ReadFile("../bundle/testdata/marker.yaml")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p("site.yaml"), pack, 0o644)
	mustRun("rules", "sign", "--key", p("rules.key"), p("site.yaml"))
	os.WriteFile(p("agent.yaml"), []byte("agent:\n  capture: proc\n"), 0o644)

	out := mustRun("bundle", "create", "--key", p("bundle.key"), "-o", p("u.bundle"), "--rules", p("site.yaml"),
		"--config-file", p("agent.yaml"), "--target", "agent", "--sequence", "5", "--creator", "ops@build")
	for _, want := range []string{"sequence 5, for agent", "rules-sig", "etc/daemoneye/rules/site.yaml.sig", "etc/daemoneye/daemoneye.yaml"} {
		if !strings.Contains(out, want) {
			t.Errorf("create output lacks %q:\n%s", want, out)
		}
	}
	out = mustRun("bundle", "verify", "--trusted", p("bundle.key.pub"), p("u.bundle"))
	if !strings.Contains(out, "VERIFIED") || !strings.Contains(out, "created") || !strings.Contains(out, "by ops@build") {
		t.Errorf("verify output:\n%s", out)
	}
	code, _, errs := run(t, nil, "bundle", "verify", "--trusted", p("other.key.pub"), p("u.bundle"))
	if code == 0 || !strings.Contains(errs, "FAILED") || !strings.Contains(errs, "does not verify with a trusted key") {
		t.Errorf("verify with another key: code %d %s", code, errs)
	}
	code, _, errs = run(t, nil, "bundle", "create", "--key", p("bundle.key"), "-o", p("x.bundle"), "--rules", p("site.yaml")+"=../../etc/passwd")
	if code == 0 || !strings.Contains(errs, "unsafe path") {
		t.Errorf("create with a traversal path: code %d %s", code, errs)
	}

	root := p("root")
	os.MkdirAll(root, 0o755)
	// No terminal and no --yes: a clear refusal, nothing written.
	code, _, errs = run(t, nil, "bundle", "apply", "--trusted", p("bundle.key.pub"), "--to", root, p("u.bundle"))
	if code == 0 || !strings.Contains(errs, "stdin is not a terminal") || !strings.Contains(errs, "--yes") {
		t.Errorf("apply without --yes, no terminal: code %d %s", code, errs)
	}
	if ents, _ := os.ReadDir(root); len(ents) != 0 {
		t.Errorf("a refused apply wrote %v", ents)
	}
	// At a terminal, "n" declines after showing the plan.
	answer := func(a string) func() {
		old, oldTerm := os.Stdin, stdinIsTerminal
		r, w, _ := os.Pipe()
		w.WriteString(a)
		w.Close()
		os.Stdin, stdinIsTerminal = r, func(*Globals) bool { return true }
		return func() { os.Stdin, stdinIsTerminal = old, oldTerm; r.Close() }
	}
	restore := answer("n\n")
	code, _, errs = run(t, nil, "bundle", "apply", "--trusted", p("bundle.key.pub"), "--to", root, p("u.bundle"))
	restore()
	if code == 0 || !strings.Contains(errs, "not applied") || !strings.Contains(errs, "create  config") || !strings.Contains(errs, "[y/N]") {
		t.Errorf("apply answered n: code %d %s", code, errs)
	}
	restore = answer("y\n")
	code, out, errs = run(t, nil, "bundle", "apply", "--trusted", p("bundle.key.pub"), "--rules-key", p("rules.key.pub"), "--role", "agent", "--to", root, p("u.bundle"))
	restore()
	if code != 0 || !strings.Contains(out, "applied bundle") || !strings.Contains(out, "signed by") {
		t.Fatalf("apply answered y: code %d\n%s\n%s", code, out, errs)
	}
	if b, err := os.ReadFile(filepath.Join(root, "etc/daemoneye/rules/site.yaml")); err != nil || string(b) != string(pack) {
		t.Errorf("pack after apply: %v", err)
	}
	code, _, errs = run(t, nil, "bundle", "apply", "--yes", "--trusted", p("bundle.key.pub"), "--to", root, p("u.bundle"))
	if code == 0 || !strings.Contains(errs, "already applied") {
		t.Errorf("second apply: code %d %s", code, errs)
	}
	_, out, _ = run(t, nil, "bundle", "apply", "--help")
	if !strings.Contains(out, "Examples:") || !strings.Contains(out, "--yes") {
		t.Errorf("bundle apply --help:\n%s", out)
	}
}
