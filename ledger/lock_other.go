//go:build !unix

package ledger

import (
	"fmt"
	"os"
)

// lockDir only creates the lock file where flock does not exist: the
// center runs on Linux; other systems use the ledger for verification,
// which takes no lock.
func lockDir(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ledger: lock: %w", err)
	}
	return f, nil
}
