package service

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

var (
	buildOnce sync.Once
	buildDir  string
	builtBin  string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// binary returns the daemoneye binary: DAEMONEYE_BIN (make test sets it)
// or one built once for this run.
func binary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("DAEMONEYE_BIN"); b != "" {
		abs, err := filepath.Abs(b)
		if err != nil {
			t.Fatal(err)
		}
		return abs
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "daemoneye-service-bin-")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "daemoneye")
		cmd := exec.Command("go", "build", "-o", builtBin, "github.com/evilbitlabs/daemoneye")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// needRoot skips a test that needs root, or fails it under CI.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the test is not root")
		}
		t.Skip("needs root")
	}
}

// needTool returns the path of a tool the test cannot do without; missing
// is a skip, or a failure under CI.
func needTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set but %s is missing", name)
		}
		t.Skipf("needs %s", name)
	}
	return p
}
