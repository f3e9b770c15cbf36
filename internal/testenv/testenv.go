// Package testenv holds what tests of several packages ask of the machine:
// root, a tool, the daemoneye binary. A test that cannot run here skips,
// except under CI (CI set), where a missing capability is a failure.
package testenv

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// Skip skips the test, or fails it when CI is set: CI is root with eBPF
// and every tool installed, so there a missing capability is a defect.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("CI is set: "+format, args...)
	}
	t.Skipf(format, args...)
}

// NeedRoot skips (or fails under CI) a test that is not running as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "this test needs root")
	}
}

// NeedTool returns the path of a program the test cannot do without.
func NeedTool(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Skip(t, "this test needs %s (make test installs it)", name)
	}
	return p
}

var (
	buildOnce sync.Once
	buildDir  string
	built     string
	buildErr  error
)

// Binary returns the daemoneye binary: DAEMONEYE_BIN (make test sets it)
// or one built once for this test process (removed by Main).
func Binary(t testing.TB) string {
	t.Helper()
	if b := os.Getenv("DAEMONEYE_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "daemoneye-bin-")
		if buildErr != nil {
			return
		}
		built = filepath.Join(buildDir, "daemoneye")
		cmd := exec.Command("go", "build", "-o", built, "github.com/evilbitlabs/daemoneye")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return built
}

// Main runs a package's tests and removes the binary Binary built.
func Main(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// Sums reads a sha256sum-style manifest of generated files ("DIGEST  NAME"
// per line): name -> digest, and its comment lines ("# ...", without the
// "# "). A missing file fails the test with "run make generate".
func Sums(t testing.TB, path string) (map[string]string, []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v (run make generate)", path, err)
	}
	sums := map[string]string{}
	var notes []string
	for _, line := range strings.Split(string(b), "\n") {
		if note, ok := strings.CutPrefix(line, "#"); ok {
			notes = append(notes, strings.TrimPrefix(note, " "))
			continue
		}
		if line == "" {
			continue
		}
		sum, name, ok := strings.Cut(line, "  ")
		if !ok {
			t.Fatalf("%s: malformed line %q", path, line)
		}
		sums[name] = sum
	}
	return sums, notes
}

// FileSHA256 is the hex SHA-256 of a file's content.
func FileSHA256(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
