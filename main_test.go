package main

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestStaticBinary builds daemoneye the way the Makefile does and checks that
// it is one static executable that answers as every role.
func TestStaticBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "daemoneye")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=9.9.9 -X main.commit=feed -X main.date=today", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("binary has an ELF interpreter: it is dynamically linked")
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("binary needs shared libraries %v", libs)
	}

	out, err := exec.Command(bin, "--version").Output()
	if err != nil || !strings.Contains(string(out), "daemoneye 9.9.9 (commit feed, built today)") {
		t.Errorf("--version = %q, %v", out, err)
	}
	link := filepath.Join(dir, "daemoneye-agent")
	if err := os.Symlink("daemoneye", link); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{link, "--help"},
		{bin, "--role", "agent", "--help"},
	} {
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "Usage: daemoneye agent") {
			t.Errorf("%q: %v\n%s", args, err, out)
		}
	}
}
