package rules

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
)

// Errors callers branch on.
var (
	// ErrUnsigned: the pack has no signature and unsigned packs are not
	// allowed.
	ErrUnsigned = errors.New("rule pack is not signed")
	// ErrBadSignature: the signature does not verify with any trusted key.
	ErrBadSignature = errors.New("rule pack signature does not verify")
)

// sigDomain is prepended to the pack bytes before signing, so that a rule
// pack signature can never be replayed as (or made from) a signature over
// anything else the same key signs.
const sigDomain = "daemoneye rule pack v1\x00"

// SigSuffix names a pack's detached signature: PACK.sig.
const SigSuffix = ".sig"

// Sign signs the exact bytes of a pack file.
func Sign(pack []byte, key ed25519.PrivateKey) []byte {
	return ed25519.Sign(key, signedMessage(pack))
}

func signedMessage(pack []byte) []byte {
	m := make([]byte, 0, len(sigDomain)+len(pack))
	return append(append(m, sigDomain...), pack...)
}

// EncodeSignature is the .sig file's content: base64 and a newline.
func EncodeSignature(sig []byte) []byte {
	return []byte(base64.StdEncoding.EncodeToString(sig) + "\n")
}

// decodeSignature reads a .sig file: base64 text, or the 64 raw bytes.
// (Base64 of 64 bytes is 88 characters, so the two cannot be confused.)
func decodeSignature(b []byte) ([]byte, error) {
	if sig, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(b))); err == nil {
		if len(sig) != ed25519.SignatureSize {
			return nil, fmt.Errorf("signature is %d bytes, want %d", len(sig), ed25519.SignatureSize)
		}
		return sig, nil
	}
	if len(b) == ed25519.SignatureSize {
		return b, nil
	}
	return nil, fmt.Errorf("signature file is neither base64 nor %d raw bytes", ed25519.SignatureSize)
}

// Verify checks sig (the .sig file's content) over the pack bytes with each
// trusted key and returns the key that verifies it.
func Verify(pack, sig []byte, trusted []ed25519.PublicKey) (ed25519.PublicKey, error) {
	if len(trusted) == 0 {
		return nil, fmt.Errorf("%w: no trusted rule pack keys configured", ErrBadSignature)
	}
	raw, err := decodeSignature(sig)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadSignature, err)
	}
	msg := signedMessage(pack)
	for _, k := range trusted {
		if len(k) == ed25519.PublicKeySize && ed25519.Verify(k, msg, raw) {
			return k, nil
		}
	}
	return nil, fmt.Errorf("%w with any of the %d trusted key(s) (modified after signing, or signed by another key)", ErrBadSignature, len(trusted))
}

// KeyID is a short fingerprint of a public key for messages and audit:
// the first 8 bytes of its SHA-256, hex.
func KeyID(k ed25519.PublicKey) string {
	h := sha256.Sum256(k)
	return hex.EncodeToString(h[:8])
}

// Open verifies and parses a pack given as bytes (the center sending a
// pack down to an agent): sig nil means unsigned. An unsigned or badly
// signed pack is refused unless allowUnsigned; when allowed, the pack's
// SignatureProblem says what was wrong, for the caller to log.
func Open(source string, pack, sig []byte, trusted []ed25519.PublicKey, allowUnsigned bool) (*Pack, error) {
	var signer ed25519.PublicKey
	var problem error
	if sig == nil {
		problem = fmt.Errorf("%w: %s has no signature (%s%s); sign it with `daemoneye rules sign`, or allow unsigned packs in the configuration",
			ErrUnsigned, source, source, SigSuffix)
	} else if k, err := Verify(pack, sig, trusted); err != nil {
		problem = fmt.Errorf("%s: %w", source, err)
	} else {
		signer = k
	}
	if problem != nil && !allowUnsigned {
		return nil, problem
	}
	p, err := Parse(source, pack)
	if err != nil {
		return nil, err
	}
	p.Sig = sig
	if signer != nil {
		p.Signer = signer
	} else {
		p.SignatureProblem = problem.Error()
	}
	return p, nil
}

// Load reads the pack at path and its signature at path.sig, verifies and
// parses it (see Open).
func Load(path string, trusted []ed25519.PublicKey, allowUnsigned bool) (*Pack, error) {
	pack, err := atomicfile.ReadLimited(path, MaxPackBytes)
	if err != nil {
		return nil, fmt.Errorf("rules: load: %w", err)
	}
	sig, err := atomicfile.ReadLimited(path+SigSuffix, 4096)
	if errors.Is(err, fs.ErrNotExist) {
		sig = nil
	} else if err != nil {
		return nil, fmt.Errorf("rules: load: %w", err)
	}
	return Open(path, pack, sig, trusted, allowUnsigned)
}

// PEM block types of the key files: PKCS#8 and PKIX, as openssl writes
// them (`openssl pkey -in KEY -pubout` gives the .pub).
const (
	pemPrivate = "PRIVATE KEY"
	pemPublic  = "PUBLIC KEY"
)

// GenerateKey writes a new Ed25519 key pair: path (PKCS#8 PEM, mode 0600)
// and path.pub (PKIX PEM, 0644). Neither file may exist.
func GenerateKey(path string) (ed25519.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	pder, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	for _, p := range []string{path, path + ".pub"} {
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("%s exists: not overwriting a key", p)
		}
	}
	if err := writeNew(path, pem.EncodeToMemory(&pem.Block{Type: pemPrivate, Bytes: der}), 0o600); err != nil {
		return nil, err
	}
	if err := writeNew(path+".pub", pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: pder}), 0o644); err != nil {
		os.Remove(path)
		return nil, err
	}
	return pub, nil
}

// writeNew creates path (failing if it exists), writes and syncs it.
func writeNew(path string, data []byte, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

// LoadPrivateKey reads a PKCS#8 PEM Ed25519 key, refusing a file that
// group or others can read.
func LoadPrivateKey(path string) (ed25519.PrivateKey, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("signing key %s has mode %#o: others can read it (chmod 600)", path, fi.Mode().Perm())
	}
	b, err := atomicfile.ReadLimited(path, 64<<10)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemPrivate {
		return nil, fmt.Errorf("signing key %s: want a PEM %q block (PKCS#8)", path, pemPrivate)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s is %T, want ed25519", path, k)
	}
	return ek, nil
}

// LoadPublicKeys reads trusted keys: each file holds one or more PEM
// "PUBLIC KEY" blocks (PKIX Ed25519).
func LoadPublicKeys(paths ...string) ([]ed25519.PublicKey, error) {
	var out []ed25519.PublicKey
	for _, path := range paths {
		b, err := atomicfile.ReadLimited(path, 1<<20)
		if err != nil {
			return nil, fmt.Errorf("trusted key: %w", err)
		}
		n := 0
		for {
			var block *pem.Block
			block, b = pem.Decode(b)
			if block == nil {
				break
			}
			if block.Type != pemPublic {
				continue
			}
			k, err := x509.ParsePKIXPublicKey(block.Bytes)
			if err != nil {
				return nil, fmt.Errorf("trusted key %s: %w", path, err)
			}
			ek, ok := k.(ed25519.PublicKey)
			if !ok {
				return nil, fmt.Errorf("trusted key %s is %T, want ed25519", path, k)
			}
			out = append(out, ek)
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("trusted key %s: no PEM %q block", path, pemPublic)
		}
	}
	return out, nil
}

// LoadSet reads the packs a node runs: the built-in default pack when
// useDefault, then each pack file, checked against the trusted keys (key
// files from `rules keygen`). An unsigned or badly signed pack is refused
// unless allowUnsigned; nothing is activated unless every pack loads.
func LoadSet(useDefault bool, paths, trustedKeyFiles []string, allowUnsigned bool) ([]*Pack, error) {
	var packs []*Pack
	if useDefault {
		p, err := Default()
		if err != nil {
			return nil, err
		}
		packs = append(packs, p)
	}
	trusted, err := LoadPublicKeys(trustedKeyFiles...)
	if err != nil && len(trustedKeyFiles) > 0 {
		return nil, fmt.Errorf("rules: trusted keys: %w", err)
	}
	for _, path := range paths {
		p, err := Load(path, trusted, allowUnsigned)
		if err != nil {
			return nil, fmt.Errorf("rules: %s: %w", path, err)
		}
		packs = append(packs, p)
	}
	return packs, nil
}
