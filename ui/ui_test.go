package ui

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

// The committed dist/ must be the build of the committed sources:
// build.sh records the digests of both in dist/SOURCES.sha256, and a
// source changed without `make generate` fails here with no node needed.

// inputs lists what build.sh reads, as it names them.
func inputs(t *testing.T) []string {
	t.Helper()
	names := []string{"build.sh", "web/package.json", "web/package-lock.json"}
	err := filepath.WalkDir("web/src", func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			names = append(names, p)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func TestDistMatchesSources(t *testing.T) {
	m, _ := testenv.Sums(t, "dist/SOURCES.sha256")
	want := map[string]bool{}
	for _, name := range inputs(t) {
		want[name] = true
		if got := testenv.FileSHA256(t, name); m[name] != got {
			t.Errorf("%s changed since dist/ was built (recorded %.12s, now %.12s): run make generate and commit ui/dist", name, m[name], got)
		}
	}
	err := fs.WalkDir(Files(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || p == "SOURCES.sha256" {
			return err
		}
		name := "dist/" + p
		want[name] = true
		if got := testenv.FileSHA256(t, name); m[name] != got {
			t.Errorf("%s is not the file build.sh wrote (recorded %.12s, now %.12s): run make generate", name, m[name], got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for name := range m {
		if !want[name] {
			t.Errorf("dist/SOURCES.sha256 names %s, which is gone: run make generate", name)
		}
	}
	for _, f := range []string{"index.html", "app.js", "app.css"} {
		if _, err := fs.Stat(Files(), f); err != nil {
			t.Errorf("embedded UI lacks %s: %v", f, err)
		}
	}
}

// With node and the npm dependencies installed, a fresh build must give
// the committed bytes (esbuild's output is deterministic).
func TestRebuildIsCommitted(t *testing.T) {
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node not installed: the committed digests are checked by TestDistMatchesSources")
	}
	if _, err := os.Stat("web/node_modules/.bin/esbuild"); err != nil {
		t.Skip("npm dependencies not installed (make generate installs them)")
	}
	out := t.TempDir()
	cmd := exec.Command("bash", "build.sh", out)
	cmd.Env = append(os.Environ(), "UI_SKIP_INSTALL=1")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build.sh: %v\n%s", err, b)
	}
	for _, f := range []string{"index.html", "app.js", "app.css"} {
		got, err := os.ReadFile(filepath.Join(out, f))
		if err != nil {
			t.Fatal(err)
		}
		want, err := fs.ReadFile(Files(), f)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("a fresh build's %s differs from the committed dist/%s: run make generate and commit ui/dist", f, f)
		}
	}
}
