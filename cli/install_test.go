package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestInstallHelp(t *testing.T) {
	for _, cmd := range []string{"install", "uninstall"} {
		code, out, errs := run(t, nil, cmd, "--help")
		if code != 0 {
			t.Fatalf("%s --help: code %d, %s", cmd, code, errs)
		}
		for _, want := range []string{"Examples:", "daemoneye " + cmd + " --role", "--dry-run", "--root=DIR", "--yes"} {
			if !strings.Contains(out, want) {
				t.Errorf("%s --help lacks %q:\n%s", cmd, want, out)
			}
		}
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"install"}, "--role"},
		{[]string{"install", "--role", "toaster"}, "must be one of"},
		{[]string{"uninstall", "--role", "agent", "--root", "/no/such/root"}, "no such file"},
	} {
		code, _, errs := run(t, nil, c.args...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("%q: code %d, stderr %q; want a failure with %q", c.args, code, errs, c.want)
		}
	}
}

// openPTY returns a pseudo-terminal: what is written to master is read
// from slave, which is a terminal.
func openPTY(t *testing.T) (master, slave *os.File) {
	t.Helper()
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close(); m.Close() })
	return m, s
}

// TestInstallConfirms runs install and uninstall as an operator would:
// with no terminal and no --yes they refuse and change nothing; on a
// terminal they ask, and only "y" goes ahead; --dry-run changes nothing.
func TestInstallConfirms(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the test is not root")
		}
		t.Skip("needs root (install sets owners)")
	}
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.MkdirAll(filepath.Join(root, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	// The unit runs a binary given with --binary; what it is does not
	// matter here.
	if err := os.WriteFile(filepath.Join(root, "usr/bin/daemoneye"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(root, "etc/systemd/system/daemoneye-agent.service")
	data := filepath.Join(root, "var/lib/daemoneye/agent")

	cmd := func(stdin *os.File, args ...string) (string, string, error) {
		var out, errb bytes.Buffer
		g := &Globals{stdin: stdin, stdout: &out, stderr: &errb}
		var err error
		switch args[0] {
		case "install":
			c := &InstallCmd{Role: "agent", Root: root, Binary: "/usr/bin/daemoneye"}
			for _, a := range args[1:] {
				switch a {
				case "--yes":
					c.Yes = true
				case "--dry-run":
					c.DryRun = true
				}
			}
			err = c.Run(context.Background(), g)
		case "uninstall":
			c := &UninstallCmd{Role: "agent", Root: root, Purge: true}
			err = c.Run(context.Background(), g)
		}
		return out.String(), errb.String(), err
	}

	// A pipe is not a terminal: refused, even with "y" waiting in it.
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	w.WriteString("y\n")
	w.Close()
	out, _, err := cmd(r, "install")
	r.Close()
	if err == nil || !strings.Contains(err.Error(), "not a terminal") || !strings.Contains(err.Error(), "--yes") {
		t.Errorf("install from a pipe without --yes: %v", err)
	}
	if !strings.Contains(out, "write the unit") {
		t.Errorf("the refusal does not show what would change:\n%s", out)
	}
	if _, err := os.Stat(unit); err == nil {
		t.Fatal("a refused install wrote the unit")
	}

	out, _, err = cmd(nil, "install", "--dry-run")
	if err != nil || !strings.Contains(out, "CapabilityBoundingSet=") || !strings.Contains(out, "dry run") {
		t.Errorf("--dry-run: %v\n%s", err, out)
	}
	if _, err := os.Stat(unit); err == nil {
		t.Fatal("--dry-run wrote the unit")
	}

	master, slave := openPTY(t)
	master.WriteString("n\n")
	_, errs, err := cmd(slave, "install")
	if err == nil || !strings.Contains(err.Error(), "not confirmed") || !strings.Contains(errs, "[y/N]") {
		t.Errorf("install answered n: %v (asked %q)", err, errs)
	}
	if _, err := os.Stat(unit); err == nil {
		t.Fatal("an install answered n wrote the unit")
	}

	master.WriteString("y\n")
	if out, errs, err := cmd(slave, "install"); err != nil {
		t.Fatalf("install answered y: %v\n%s%s", err, out, errs)
	}
	if b, err := os.ReadFile(unit); err != nil || !strings.Contains(string(b), "\nExecStart=/usr/bin/daemoneye agent --config /etc/daemoneye/agent.yaml\n") {
		t.Fatalf("install answered y: %v; the unit does not run the --binary:\n%s", err, b)
	}
	if st, err := os.Stat(data); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("agent data directory: %v %v", st, err)
	}

	// Nothing to change: nothing to ask.
	out, errs, err = cmd(slave, "install")
	if err != nil || !strings.Contains(out, "nothing to change") || strings.Contains(errs, "[y/N]") {
		t.Errorf("second install: %v, asked %q\n%s", err, errs, out)
	}

	// uninstall --purge asks, says the data goes, and takes it.
	os.WriteFile(filepath.Join(data, "keep-me"), []byte("x"), 0o600)
	master.WriteString("n\n")
	_, errs, err = cmd(slave, "uninstall")
	if err == nil || !strings.Contains(errs, "cannot be recovered") {
		t.Errorf("uninstall --purge answered n: %v (asked %q)", err, errs)
	}
	if _, err := os.Stat(filepath.Join(data, "keep-me")); err != nil {
		t.Fatal("an uninstall answered n deleted data")
	}
	master.WriteString("y\n")
	if out, errs, err := cmd(slave, "uninstall"); err != nil {
		t.Fatalf("uninstall --purge answered y: %v\n%s%s", err, out, errs)
	}
	for _, gone := range []string{unit, data, filepath.Join(root, "etc/daemoneye/agent.yaml")} {
		if _, err := os.Stat(gone); err == nil {
			t.Errorf("%s left after uninstall --purge", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "usr/bin/daemoneye")); err != nil {
		t.Error("uninstall removed the binary")
	}
}
