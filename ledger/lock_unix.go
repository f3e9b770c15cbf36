//go:build unix

package ledger

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lockDir takes the single-writer lock: an exclusive flock on path, held
// while the file stays open. The kernel drops it when the process dies, so
// a crash leaves no stale lock.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ledger: lock: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("ledger: lock %s: %w", path, ErrLocked)
		}
		return nil, fmt.Errorf("ledger: lock %s: %w", path, err)
	}
	return f, nil
}
