package store

import (
	"errors"
	"fmt"

	"github.com/cockroachdb/pebble/v2"
)

// PurgeValues empties the values of the keys present in db, in one synced
// batch, and returns how many it emptied and the bytes their values held.
// The keys stay: the center's batch store keeps each (agent, seq) it
// stored, so that a replay of a batch whose events retention removed is
// still answered "already stored" instead of being stored again. Keys that
// are missing or already empty are skipped, so a purge interrupted and run
// again ends the same. Pebble reclaims the space at its next compactions.
func PurgeValues(db *pebble.DB, keys [][]byte) (n int, freed int64, err error) {
	b := db.NewBatch()
	defer b.Close()
	for _, k := range keys {
		v, closer, err := db.Get(k)
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return 0, 0, fmt.Errorf("purge values: %w", err)
		}
		size := len(v)
		closer.Close()
		if size == 0 {
			continue
		}
		if err := b.Set(k, nil, nil); err != nil {
			return 0, 0, fmt.Errorf("purge values: %w", err)
		}
		n++
		freed += int64(size)
	}
	if n == 0 {
		return 0, 0, nil
	}
	if err := b.Commit(pebble.Sync); err != nil {
		return 0, 0, fmt.Errorf("purge values: %w", err)
	}
	return n, freed, nil
}

// Purged reports whether a value read from a store PurgeValues works on
// was purged.
func Purged(v []byte) bool { return len(v) == 0 }
