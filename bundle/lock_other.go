//go:build !unix

package bundle

import (
	"fmt"
	"os"
)

// lock opens the lock file; without flock, concurrent applies are not
// excluded on this platform.
func lock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("%w: lock: %v", ErrState, err)
	}
	return f, nil
}
