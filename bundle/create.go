package bundle

import (
	"archive/tar"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
)

// Source is a file to put in a bundle: the local file Src goes to Path
// (relative to the root it is applied to) as a file of kind Kind.
type Source struct {
	Kind Kind
	Src  string
	Path string
	Mode fs.FileMode // 0: the kind's default
}

// Header is what a bundle says about itself besides its files.
type Header struct {
	Created     time.Time // zero: now
	Sequence    uint64    // zero: Created in Unix seconds
	Creator     string
	Description string
	Targets     []string // roles; empty: all three
}

// Create writes a bundle of the sources, signed with key, to w. Each source
// is read twice (hash, then copy); a file that changes in between is an
// error, not a bundle whose content does not match its manifest.
func Create(w io.Writer, h Header, srcs []Source, key ed25519.PrivateKey, p Progress) (*Manifest, error) {
	if h.Created.IsZero() {
		h.Created = time.Now()
	}
	if h.Sequence == 0 {
		h.Sequence = uint64(max(h.Created.Unix(), 1))
	}
	if len(h.Targets) == 0 {
		h.Targets = append([]string(nil), Roles...)
	}
	m := &Manifest{Format: Format, Created: h.Created.UTC(), Sequence: h.Sequence, Creator: h.Creator,
		Description: h.Description, Targets: h.Targets}
	for _, s := range srcs {
		size, sum, err := hashFile(s.Src)
		if err != nil {
			return nil, err
		}
		mode := s.Mode
		if mode == 0 {
			mode = DefaultMode(s.Kind)
		}
		m.Files = append(m.Files, File{Kind: s.Kind, Path: s.Path, Size: size, SHA256: sum, Mode: fmt.Sprintf("%04o", mode.Perm())})
	}
	env, err := signManifest(m, key)
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(w)
	hdr := func(name string, size int64) *tar.Header {
		return &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: m.Created, Format: tar.FormatPAX}
	}
	if err := tw.WriteHeader(hdr(ManifestMember, int64(len(env)))); err != nil {
		return nil, err
	}
	if _, err := tw.Write(env); err != nil {
		return nil, err
	}
	for i, s := range srcs {
		f := m.Files[i]
		if err := tw.WriteHeader(hdr(FilesPrefix+f.Path, f.Size)); err != nil {
			return nil, err
		}
		if err := copyChecked(tw, s.Src, f, p); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return m, nil
}

// CreateFile writes the bundle to path through a temporary file, so a
// failed create leaves nothing half-written.
func CreateFile(path string, h Header, srcs []Source, key ed25519.PrivateKey, p Progress) (*Manifest, error) {
	var m *Manifest
	err := atomicfile.WriteFrom(path, 0o644, func(w io.Writer) error {
		var err error
		m, err = Create(w, h, srcs, key, p)
		return err
	})
	return m, err
}

func hashFile(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return 0, "", err
	}
	if !fi.Mode().IsRegular() {
		return 0, "", fmt.Errorf("%s is not a regular file", path)
	}
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return 0, "", fmt.Errorf("read %s: %w", path, err)
	}
	return n, hex.EncodeToString(h.Sum(nil)), nil
}

// copyChecked copies src into w and fails if it is no longer the file
// that was hashed into f.
func copyChecked(w io.Writer, src string, f File, p Progress) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(w, h), io.LimitReader(p.reader("pack", f, in), f.Size))
	if err != nil {
		return fmt.Errorf("read %s: %w", src, err)
	}
	var extra [1]byte
	if m, _ := in.Read(extra[:]); m > 0 || n != f.Size || hex.EncodeToString(h.Sum(nil)) != f.SHA256 {
		return errors.New(src + " changed while the bundle was being written: try again")
	}
	return nil
}
