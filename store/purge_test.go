package store

import (
	"bytes"
	"errors"
	"path/filepath"
	"testing"

	"github.com/cockroachdb/pebble/v2"
)

// TestPurgeValues: the values go, the keys stay, missing keys are skipped,
// a second purge changes nothing, and it all survives a reopen.
func TestPurgeValues(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "db")
	db, err := pebble.Open(dir, &pebble.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	for _, k := range []string{"a", "b", "c"} {
		if err := db.Set([]byte(k), bytes.Repeat([]byte(k), 100), pebble.Sync); err != nil {
			t.Fatal(err)
		}
	}
	n, freed, err := PurgeValues(db, [][]byte{[]byte("a"), []byte("c"), []byte("zz")})
	if err != nil || n != 2 || freed != 200 {
		t.Fatalf("PurgeValues = %d, %d, %v; want 2 keys, 200 bytes", n, freed, err)
	}
	if n, freed, err := PurgeValues(db, [][]byte{[]byte("a"), []byte("c")}); err != nil || n != 0 || freed != 0 {
		t.Errorf("second PurgeValues = %d, %d, %v; want nothing", n, freed, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if db, err = pebble.Open(dir, &pebble.Options{}); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]int{"a": 0, "b": 100, "c": 0} {
		v, closer, err := db.Get([]byte(k))
		if err != nil {
			t.Fatalf("key %s after the purge: %v, want it kept", k, err)
		}
		if len(v) != want || Purged(v) != (want == 0) {
			t.Errorf("key %s: %d bytes (purged %v), want %d", k, len(v), Purged(v), want)
		}
		closer.Close()
	}
	if _, _, err := db.Get([]byte("zz")); !errors.Is(err, pebble.ErrNotFound) {
		t.Errorf("a missing key was created: %v", err)
	}
}
