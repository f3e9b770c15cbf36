// Package atomicfile writes files so that readers see the old content or
// the new, never a part, and the new content survives a crash once Write
// returns: keys, certificates, CRLs and forensic packages all go through it.
package atomicfile

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// Write replaces path with data through a synced temporary file in the same
// directory, renamed into place, then syncs the directory so the rename is
// durable too. The file has mode perm from its first byte (a key is never
// readable by others, not even briefly).
func Write(path string, data []byte, perm fs.FileMode) error { return write(path, data, perm, false) }

// WriteNew is Write that fails if path exists (link(2) does not replace).
func WriteNew(path string, data []byte, perm fs.FileMode) error { return write(path, data, perm, true) }

func write(path string, data []byte, perm fs.FileMode, noClobber bool) (err error) {
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
	if _, err = f.Write(data); err != nil {
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
