package capture

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

// The committed eBPF objects must match bpf/: bpf/generate.sh writes
// bpf_sources.sha256 (inputs, the generate directive, the object), and these
// tests fail with "run make generate" when a source changed without it.

const bpfManifest = "bpf_sources.sha256"

// bpfManifestEntries reads the manifest: path (or "go:generate") -> digest,
// and the clang version line it was built with.
func bpfManifestEntries(t *testing.T) (map[string]string, string) {
	t.Helper()
	sums, notes := testenv.Sums(t, bpfManifest)
	var clang string
	for _, n := range notes {
		if v, ok := strings.CutPrefix(n, "clang: "); ok {
			clang = v
		}
	}
	return sums, clang
}

// generateDirective returns the //go:generate bpf2go line of ebpf_linux.go.
func generateDirective(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("ebpf_linux.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "//go:generate ") && strings.Contains(line, "bpf2go") {
			return line
		}
	}
	t.Fatal("ebpf_linux.go has no //go:generate bpf2go line")
	return ""
}

func TestBPFGeneratedObjectsCurrent(t *testing.T) {
	want, _ := bpfManifestEntries(t)
	got := map[string]string{}
	err := filepath.WalkDir("../bpf", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		if strings.HasSuffix(path, ".c") || strings.HasSuffix(path, ".h") {
			rel := filepath.ToSlash(strings.TrimPrefix(path, "../"))
			got[rel] = testenv.FileSHA256(t, path)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// sha256sum of the line as generate.sh's grep prints it (with "\n").
	sum := sha256.Sum256([]byte(generateDirective(t) + "\n"))
	got["go:generate"] = hex.EncodeToString(sum[:])
	got["capture/sensor_x86_bpfel.o"] = testenv.FileSHA256(t, "sensor_x86_bpfel.o")

	var stale []string
	for path, sum := range got {
		if want[path] != sum {
			stale = append(stale, path)
		}
	}
	for path := range want {
		if _, ok := got[path]; !ok {
			stale = append(stale, path+" (gone)")
		}
	}
	slices.Sort(stale)
	if len(stale) > 0 {
		t.Fatalf("eBPF objects are stale; run make generate (changed since %s was written: %s)",
			bpfManifest, strings.Join(stale, ", "))
	}
}

// splitDirective splits a go:generate line into words the way go generate
// does: on spaces, with double-quoted words kept whole.
func splitDirective(line string) []string {
	var words []string
	var cur strings.Builder
	inQuote, inWord := false, false
	for _, r := range line {
		switch {
		case r == '"':
			inQuote = !inQuote
			inWord = true
		case r == ' ' && !inQuote:
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words
}

// TestBPFGeneratedObjectsRebuild recompiles the sensor with the committed
// directive into a temporary directory and compares the bytes. clang output
// is deterministic for a given clang (bpf2go maps away the source directory
// and the compiler ident), so this only runs with the clang version recorded
// in the manifest.
func TestBPFGeneratedObjectsRebuild(t *testing.T) {
	if testing.Short() {
		t.Skip("rebuilds the eBPF objects")
	}
	for _, tool := range []string{"clang", "llvm-strip"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not on PATH", tool)
		}
	}
	_, wantClang := bpfManifestEntries(t)
	out, err := exec.Command("clang", "--version").Output()
	if err != nil {
		t.Skipf("clang --version: %v", err)
	}
	haveClang, _, _ := strings.Cut(string(out), "\n")
	if haveClang != wantClang {
		t.Skipf("objects were built with %q, this host has %q: byte comparison would not mean anything", wantClang, haveClang)
	}

	words := splitDirective(strings.TrimPrefix(generateDirective(t), "//go:generate "))
	if len(words) < 3 || words[0] != "go" {
		t.Fatalf("unexpected directive %q", words)
	}
	dir := t.TempDir()
	args := append(slices.Clone(words[1:len(words)-2]), "-output-dir", dir)
	args = append(args, words[len(words)-2:]...)
	cmd := exec.Command("go", args...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=capture", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, out)
	}
	for _, name := range []string{"sensor_x86_bpfel.o", "sensor_x86_bpfel.go"} {
		fresh, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s differs from a rebuild of bpf/ (%d vs %d bytes): run make generate", name, len(committed), len(fresh))
		}
	}
	if t.Failed() {
		t.Logf("rebuilt with: go %s", strings.Join(args, " "))
	}
}
