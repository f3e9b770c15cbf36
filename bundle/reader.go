package bundle

import (
	"archive/tar"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
)

// Reader reads a bundle as a stream: the manifest first, verified before
// anything else is read, then each file, hashed as it is read. Nothing in
// the archive's headers is trusted beyond matching the manifest.
type Reader struct {
	tr   *tar.Reader
	o    *Opened
	next int
	cur  *fileReader
}

// NewReader reads and verifies the manifest at the head of a bundle.
func NewReader(r io.Reader, trusted []ed25519.PublicKey) (*Reader, error) {
	tr := tar.NewReader(r)
	h, err := tr.Next()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, fmt.Errorf("%w: empty file, not a bundle", ErrMalformed)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			return nil, fmt.Errorf("%w: not a bundle: the file ends inside the first tar header", ErrMalformed)
		}
		return nil, fmt.Errorf("%w: not a bundle (a tar archive starting with %s): %v", ErrMalformed, ManifestMember, err)
	}
	if h.Name != ManifestMember || h.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: first member is %q, want the manifest %s", ErrMalformed, h.Name, ManifestMember)
	}
	if h.Size > MaxManifestBytes {
		return nil, fmt.Errorf("%w: manifest of %d bytes, at most %d", ErrTooLarge, h.Size, MaxManifestBytes)
	}
	env, err := io.ReadAll(io.LimitReader(tr, MaxManifestBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: truncated inside the manifest: %v", ErrMalformed, err)
	}
	o, err := openManifest(env, trusted)
	if err != nil {
		return nil, err
	}
	return &Reader{tr: tr, o: o}, nil
}

// Opened is the verified manifest.
func (r *Reader) Opened() *Opened { return r.o }

// Next returns the next file of the manifest and a reader of its content.
// The content reader fails with an error wrapping ErrDigest instead of
// io.EOF if the content is not what the manifest signed, so whoever reads
// it to the end has checked it. A file not read to the end is checked by
// the next call. After the last file Next returns io.EOF, once it has
// made sure the archive holds nothing more.
func (r *Reader) Next() (File, io.Reader, error) {
	if r.cur != nil {
		if _, err := io.Copy(io.Discard, r.cur); err != nil {
			return File{}, nil, err
		}
		r.cur = nil
	}
	files := r.o.Manifest.Files
	if r.next == len(files) {
		h, err := r.tr.Next()
		switch {
		case errors.Is(err, io.EOF):
			return File{}, nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return File{}, nil, fmt.Errorf("%w: truncated after the last file", ErrMalformed)
		case err != nil:
			return File{}, nil, fmt.Errorf("%w: after the last file: %v", ErrMalformed, err)
		}
		return File{}, nil, fmt.Errorf("%w: member %q after the last file of the manifest", ErrMalformed, h.Name)
	}
	f := files[r.next]
	h, err := r.tr.Next()
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return File{}, nil, fmt.Errorf("%w: truncated: the archive ends before %s (file %d of %d)", ErrMalformed, f.Path, r.next+1, len(files))
	case err != nil:
		return File{}, nil, fmt.Errorf("%w: before %s: %v", ErrMalformed, f.Path, err)
	}
	if h.Name != FilesPrefix+f.Path {
		return File{}, nil, fmt.Errorf("%w: member %q where the manifest has %s%s (file %d of %d)", ErrMalformed, h.Name, FilesPrefix, f.Path, r.next+1, len(files))
	}
	if h.Typeflag != tar.TypeReg {
		return File{}, nil, fmt.Errorf("%w: member %q is not a regular file", ErrMalformed, h.Name)
	}
	if h.Size != f.Size {
		return File{}, nil, fmt.Errorf("%w: %s is %d bytes, the manifest says %d", ErrDigest, f.Path, h.Size, f.Size)
	}
	r.next++
	r.cur = &fileReader{r: r.tr, f: f, h: sha256.New()}
	return f, r.cur, nil
}

// fileReader hashes a file's content as it is read and checks it at the end.
type fileReader struct {
	r    io.Reader
	f    File
	h    hash.Hash
	n    int64
	done error
}

func (fr *fileReader) Read(p []byte) (int, error) {
	if fr.done != nil {
		return 0, fr.done
	}
	n, err := fr.r.Read(p)
	fr.h.Write(p[:n])
	fr.n += int64(n)
	if errors.Is(err, io.EOF) {
		fr.done = io.EOF
		if fr.n != fr.f.Size {
			fr.done = fmt.Errorf("%w: truncated inside %s: %d of %d bytes", ErrMalformed, fr.f.Path, fr.n, fr.f.Size)
		} else if got := hex.EncodeToString(fr.h.Sum(nil)); got != fr.f.SHA256 {
			fr.done = fmt.Errorf("%w: %s has sha256 %s, the manifest says %s", ErrDigest, fr.f.Path, got, fr.f.SHA256)
		}
		return n, fr.done
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%w: truncated inside %s: %d of %d bytes", ErrMalformed, fr.f.Path, fr.n, fr.f.Size)
		}
		fr.done = err
	}
	return n, err
}

// Verify reads a whole bundle and checks everything: the signature with the
// trusted keys, the manifest, and every file's size and hash. Nothing is
// written anywhere.
func Verify(r io.Reader, trusted []ed25519.PublicKey, p Progress) (*Opened, error) {
	br, err := NewReader(r, trusted)
	if err != nil {
		return nil, err
	}
	for {
		f, content, err := br.Next()
		if errors.Is(err, io.EOF) {
			return br.Opened(), nil
		}
		if err != nil {
			return nil, err
		}
		if _, err := io.Copy(io.Discard, p.reader("verify", f, content)); err != nil {
			return nil, err
		}
	}
}

// VerifyFile is Verify of the bundle at path.
func VerifyFile(path string, trusted []ed25519.PublicKey, p Progress) (*Opened, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return Verify(f, trusted, p)
}

// Progress is told how far a step ("verify", "stage", "pack") has got
// through a file: done of f.Size bytes, after every read. The caller
// decides what to show (the command line prints a line a second on large
// files). Nil reports nothing.
type Progress func(step string, f File, done int64)

func (p Progress) reader(step string, f File, r io.Reader) io.Reader {
	if p == nil {
		return r
	}
	return &progressReader{r: r, p: p, step: step, f: f}
}

type progressReader struct {
	r    io.Reader
	p    Progress
	step string
	f    File
	n    int64
}

func (pr *progressReader) Read(b []byte) (int, error) {
	n, err := pr.r.Read(b)
	if n > 0 {
		pr.n += int64(n)
		pr.p(pr.step, pr.f, pr.n)
	}
	return n, err
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
