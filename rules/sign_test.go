package rules

import (
	"crypto/ed25519"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writePack(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "default.yaml")
	if err := os.WriteFile(path, DefaultPackBytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestSignVerifyLoad(t *testing.T) {
	dir := t.TempDir()
	keyPath := filepath.Join(dir, "keys", "rules.key")
	pub, err := GenerateKey(keyPath)
	if err != nil {
		t.Fatalf("GenerateKey: %v", err)
	}
	if fi, err := os.Stat(keyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("private key mode = %v (%v), want 0600", fi.Mode(), err)
	}
	if _, err := GenerateKey(keyPath); err == nil {
		t.Error("GenerateKey overwrote an existing key")
	}
	priv, err := LoadPrivateKey(keyPath)
	if err != nil {
		t.Fatalf("LoadPrivateKey: %v", err)
	}
	trusted, err := LoadPublicKeys(keyPath + ".pub")
	if err != nil || len(trusted) != 1 || !trusted[0].Equal(pub) {
		t.Fatalf("LoadPublicKeys = %v, %v", trusted, err)
	}

	pack := writePack(t, dir)
	data, _ := os.ReadFile(pack)
	sig := Sign(data, priv)

	// Unsigned: refused, unless allowed.
	if _, err := Load(pack, trusted, false); !errors.Is(err, ErrUnsigned) {
		t.Errorf("unsigned pack: err = %v, want ErrUnsigned", err)
	}
	p, err := Load(pack, trusted, true)
	if err != nil || p.Signer != nil || !strings.Contains(p.SignatureProblem, "not signed") {
		t.Errorf("unsigned pack allowed: %v, signer %v, problem %q", err, p.Signer, p.SignatureProblem)
	}

	// Signed: accepted, with its signer.
	if err := os.WriteFile(pack+SigSuffix, EncodeSignature(sig), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err = Load(pack, trusted, false)
	if err != nil {
		t.Fatalf("signed pack: %v", err)
	}
	if !p.Signer.Equal(pub) || p.SignatureProblem != "" || len(p.Rules) == 0 {
		t.Errorf("signed pack: signer %x problem %q", p.Signer, p.SignatureProblem)
	}
	// A raw 64-byte signature file works too.
	if err := os.WriteFile(pack+SigSuffix, sig, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(pack, trusted, false); err != nil {
		t.Errorf("raw signature: %v", err)
	}

	// Tampered: one byte of the pack changed.
	tampered := append([]byte(nil), data...)
	i := strings.Index(string(tampered), "severity: high")
	copy(tampered[i:], "severity: info")
	if _, err := Open("t.yaml", tampered, EncodeSignature(sig), trusted, false); !errors.Is(err, ErrBadSignature) {
		t.Errorf("tampered pack: err = %v, want ErrBadSignature", err)
	}
	// A bad signature where unsigned packs are allowed: accepted as
	// unsigned, with the problem reported for the log.
	p, err = Open("t.yaml", tampered, EncodeSignature(sig), trusted, true)
	if err != nil || p.Signer != nil || !strings.Contains(p.SignatureProblem, "does not verify") {
		t.Errorf("tampered pack with unsigned allowed: %v, signer %x, problem %q", err, p.Signer, p.SignatureProblem)
	}
	// Signed by a key that is not trusted.
	otherPath := filepath.Join(dir, "other.key")
	if _, err := GenerateKey(otherPath); err != nil {
		t.Fatal(err)
	}
	other, _ := LoadPrivateKey(otherPath)
	if _, err := Open("o.yaml", data, EncodeSignature(Sign(data, other)), trusted, false); !errors.Is(err, ErrBadSignature) {
		t.Errorf("untrusted signer: err = %v, want ErrBadSignature", err)
	}
	// Two trusted keys: either verifies.
	both, err := LoadPublicKeys(otherPath+".pub", keyPath+".pub")
	if err != nil {
		t.Fatal(err)
	}
	if k, err := Verify(data, EncodeSignature(Sign(data, other)), both); err != nil || KeyID(k) != KeyID(both[0]) {
		t.Errorf("second trusted key: %v", err)
	}
	// No trusted keys at all.
	if _, err := Open("n.yaml", data, EncodeSignature(sig), nil, false); !errors.Is(err, ErrBadSignature) {
		t.Errorf("no trusted keys: err = %v", err)
	}
	// Garbage signature file.
	if _, err := Open("g.yaml", data, []byte("not a signature"), trusted, false); !errors.Is(err, ErrBadSignature) {
		t.Errorf("garbage signature: err = %v", err)
	}
	// The domain prefix: a bare Ed25519 signature over the bytes is not a
	// pack signature.
	if _, err := Verify(data, EncodeSignature(ed25519.Sign(priv, data)), trusted); !errors.Is(err, ErrBadSignature) {
		t.Errorf("signature without the domain prefix verified")
	}
}

func TestLoadPrivateKeyRefusesOpenMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "k")
	if _, err := GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPrivateKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("LoadPrivateKey on a 0644 key = %v", err)
	}
	if _, err := LoadPublicKeys(path); err == nil {
		t.Error("a private key file was accepted as a public key")
	}
}
