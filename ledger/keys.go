package ledger

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// OriginPrefix starts every center's log origin (and key name).
const OriginPrefix = "daemoneye.center/"

// Origin is the origin line and key name of the ledger of the named center.
func Origin(center string) string { return OriginPrefix + center }

// LoadOrCreateSigner loads the center's checkpoint signing key (a note signer
// key, Ed25519) from path, or creates one named name: path is written mode
// 0600 and path+".vkey", the verifier key that auditors and `ledger verify`
// use, 0644. It returns the signer and the verifier key. An existing key of
// another name is refused: the name is the log's origin.
func LoadOrCreateSigner(path, name string) (note.Signer, string, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		skey, _, gerr := note.GenerateKey(rand.Reader, name)
		if gerr != nil {
			return nil, "", fmt.Errorf("ledger: generate key %q: %w", name, gerr)
		}
		if err := createExclusive(path, []byte(skey+"\n")); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, "", fmt.Errorf("ledger: write key: %w", err)
		}
		// Someone else may have won the race: read what is there.
		b, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, "", fmt.Errorf("ledger: read key: %w", err)
	}
	skey := strings.TrimSpace(string(b))
	s, err := note.NewSigner(skey)
	if err != nil {
		return nil, "", fmt.Errorf("ledger: key %s: %w", path, err)
	}
	if s.Name() != name {
		return nil, "", fmt.Errorf("ledger: key %s is named %q, not %q", path, s.Name(), name)
	}
	vkey, err := verifierKeyOf(skey)
	if err != nil {
		return nil, "", fmt.Errorf("ledger: key %s: %w", path, err)
	}
	vpath := path + ".vkey"
	switch have, err := os.ReadFile(vpath); {
	case errors.Is(err, fs.ErrNotExist):
		if err := writeFileAtomic(vpath, []byte(vkey+"\n"), 0o644); err != nil {
			return nil, "", fmt.Errorf("ledger: write verifier key: %w", err)
		}
	case err != nil:
		return nil, "", fmt.Errorf("ledger: read verifier key: %w", err)
	case strings.TrimSpace(string(have)) != vkey:
		return nil, "", fmt.Errorf("ledger: %s is not the verifier key of %s", vpath, path)
	}
	return s, vkey, nil
}

// LoadVerifier reads a verifier key file (NAME+HASH+KEY, as written beside
// the signer key).
func LoadVerifier(path string) (note.Verifier, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ledger: read verifier key: %w", err)
	}
	v, err := note.NewVerifier(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("ledger: verifier key %s: %w", path, err)
	}
	return v, nil
}

// verifierKeyOf derives the verifier key from an Ed25519 signer key, which
// note.NewSigner has already validated.
func verifierKeyOf(skey string) (string, error) {
	parts := strings.SplitN(skey, "+", 5)
	if len(parts) != 5 {
		return "", errors.New("malformed signer key")
	}
	raw, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(raw) != 1+ed25519.SeedSize || raw[0] != 1 {
		return "", errors.New("not an Ed25519 signer key")
	}
	pub := ed25519.NewKeyFromSeed(raw[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// createExclusive writes a new file atomically, failing with fs.ErrExist if
// path exists: a temporary file, synced, then hard-linked into place.
func createExclusive(path string, data []byte) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		return err
	}
	return syncDir(dir)
}
