//go:build !linux

package ledger

import "os"

// zeroRange writes zeros over [off, off+n); only Linux punches holes.
func zeroRange(f *os.File, off, n int64) error {
	return zeroWrite(f, off, n)
}
