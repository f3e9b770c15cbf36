package ledger

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestWriteFuzzSeeds rebuilds testdata/fuzz from real ledger files when
// LEDGER_WRITE_FUZZ_SEEDS=1; otherwise it only checks the seeds are there.
func TestWriteFuzzSeeds(t *testing.T) {
	root := filepath.Join("testdata", "fuzz")
	if os.Getenv("LEDGER_WRITE_FUZZ_SEEDS") != "1" {
		for _, target := range []string{"FuzzReadRecords", "FuzzCheckpoints"} {
			ents, err := os.ReadDir(filepath.Join(root, target))
			if err != nil || len(ents) == 0 {
				t.Fatalf("no committed seeds for %s (run with LEDGER_WRITE_FUZZ_SEEDS=1): %v", target, err)
			}
		}
		return
	}
	dir := t.TempDir()
	k := newKeys(t, testOrigin)
	l := open(t, dir, k, Options{CheckpointEvery: 3})
	fill(t, l, 0, 6)
	if _, err := l.PurgePayloads([]int64{2}, "retention", "seed"); err != nil {
		t.Fatal(err)
	}
	l.Close()
	// A torn tail makes Open write a recover entry.
	entries := filepath.Join(dir, entriesFile)
	st, _ := os.Stat(entries)
	os.Truncate(entries, st.Size()-5)
	l = open(t, dir, k, Options{})
	l.Append(Entry{Kind: KindReveal, Actor: "analyst-1", Time: t0, Payload: []byte("justification: incident 7")})
	l.Close()

	body, _ := os.ReadFile(entries)
	body = body[len(magic):]
	offs := offsets(t, dir)
	rel := func(i int) int { return int(offs[i]) - len(magic) }
	recs := map[string][]byte{
		"file":      body,
		"one-live":  body[rel(0):rel(1)],
		"purged":    body[rel(2):rel(3)],
		"torn":      body[:len(body)-3],
		"recover":   body[rel(6):rel(7)],
		"purge-rec": body[rel(5):rel(6)],
	}
	cpts, _ := os.ReadFile(filepath.Join(dir, checkpointsFile))
	cp, _ := os.ReadFile(filepath.Join(dir, checkpointFile))
	write := func(target, name string, b []byte) {
		d := filepath.Join(root, target)
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for name, b := range recs {
		write("FuzzReadRecords", name, b)
	}
	write("FuzzCheckpoints", "file", cpts)
	write("FuzzCheckpoints", "note", cp)
}
