//go:build !unix

package flock

import "os"

// TryLock only creates the lock file where flock does not exist: the
// roles that write run on Linux; elsewhere DaemonEye only verifies.
func TryLock(path string) (*os.File, error) {
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
}
