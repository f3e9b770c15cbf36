//go:build unix

package bundle

import (
	"errors"
	"fmt"
	"os"
	"syscall"
)

// lock takes the state directory's lock: an exclusive flock, dropped by
// the kernel if the process dies, so two applies never interleave and a
// crash leaves no stale lock. (The ledger has its own for its directory;
// this one reports in bundle terms.)
func lock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: lock: %v", ErrState, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: another bundle apply holds %s", ErrState, path)
		}
		return nil, fmt.Errorf("%w: lock %s: %v", ErrState, path, err)
	}
	return f, nil
}
