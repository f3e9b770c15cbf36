package ledger

import (
	"os"

	"golang.org/x/sys/unix"
)

// zeroRange zeroes [off, off+n) by punching a hole, which also gives the
// blocks back to the file system; where that is not supported it writes
// zeros.
func zeroRange(f *os.File, off, n int64) error {
	if n == 0 {
		return nil
	}
	err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
	if err == nil {
		return nil
	}
	return zeroWrite(f, off, n)
}
