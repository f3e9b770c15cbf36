// Package flock takes a single-writer lock on a file: an exclusive flock
// held while the returned file stays open. The kernel drops it when the
// process dies, so a crash leaves no stale lock. The ledger's directory and
// the bundle state directory use it.
package flock

import "errors"

// ErrHeld is returned when another process (or another open file of this
// one) holds the lock.
var ErrHeld = errors.New("held by another process")
