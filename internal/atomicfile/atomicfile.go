// Package atomicfile writes files so that readers see the old content or
// the new, never a part, and the new content survives a crash once Write
// returns: keys, certificates, CRLs and forensic packages all go through it.
package atomicfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data through a synced temporary file in the same
// directory, renamed into place, then syncs the directory so the rename is
// durable too. The file has mode perm from its first byte (a key is never
// readable by others, not even briefly).
func Write(path string, data []byte, perm fs.FileMode) error {
	return write(path, perm, false, func(w io.Writer) error { _, err := w.Write(data); return err })
}

// WriteNew is Write that fails if path exists (link(2) does not replace).
func WriteNew(path string, data []byte, perm fs.FileMode) error {
	return write(path, perm, true, func(w io.Writer) error { _, err := w.Write(data); return err })
}

// WriteFrom is Write for content too large to hold in memory (an update
// bundle): fill writes it. If fill fails, path is left as it was.
func WriteFrom(path string, perm fs.FileMode, fill func(io.Writer) error) error {
	return write(path, perm, false, fill)
}

func write(path string, perm fs.FileMode, noClobber bool, fill func(io.Writer) error) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = fill(f); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if noClobber {
		if err = os.Link(tmp, path); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
		os.Remove(tmp)
	} else if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return SyncDir(dir)
}

// SyncDir makes the entries of dir (a rename, a new file) durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// ReadLimited reads a regular file of at most max bytes: a larger one, or
// one that is not a regular file (a FIFO, a device), is an error naming it.
// A missing file's error matches fs.ErrNotExist.
func ReadLimited(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is %d bytes, more than %d", path, fi.Size(), max)
	}
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}
