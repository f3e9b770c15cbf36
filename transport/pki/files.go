package pki

import (
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
)

// File names inside a CA directory, and the modes of what we write.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
	CRLFile    = "crl.pem"

	certMode fs.FileMode = 0o644
	keyMode  fs.FileMode = 0o600
	dirMode  fs.FileMode = 0o700
)

// PEM block types.
const (
	pemCertificate = "CERTIFICATE"
	pemPrivateKey  = "PRIVATE KEY"
	pemCRL         = "X509 CRL"
)

// ErrKeyPermissions is returned when a private key file can be read by
// anyone but its owner.
var ErrKeyPermissions = errors.New("private key file permissions too open")

// Identity returns the role and name a certificate was issued for. It
// checks only the certificate's own content; use a Verifier to decide
// whether to trust it.
func Identity(cert *x509.Certificate) (role Role, name string, err error) {
	if cert == nil {
		return "", "", errors.New("no certificate")
	}
	role, name, err = identityFrom(cert.Subject.CommonName, cert.URIs)
	if err != nil {
		return "", "", fmt.Errorf("certificate serial %s: %w", FormatSerial(cert.SerialNumber), err)
	}
	return role, name, nil
}

// WriteKeyPair writes dir/NAME.crt (mode 0644) and dir/NAME.key (mode 0600),
// each atomically (temporary file, fsync, rename, fsync of the directory),
// replacing an older pair: this is how a renewed certificate is installed.
// The key is written first, so a crash between the two leaves the old
// certificate with a new key, which LoadKeyPair refuses loudly rather than
// serving a mismatched pair.
func WriteKeyPair(dir, name string, certPEM, keyPEM []byte) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if _, err := parseCertPEM(certPEM); err != nil {
		return fmt.Errorf("write %s.crt: %w", name, err)
	}
	if _, err := parseAnyKeyPEM(keyPEM); err != nil {
		return fmt.Errorf("write %s.key: %w", name, err)
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return fmt.Errorf("write key pair: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, name+".key"), keyPEM, keyMode, false); err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, name+".crt"), certPEM, certMode, false)
}

// LoadKeyPair reads a certificate and its private key for TLS. The key file
// must not be readable by group or others, and the key must be Ed25519 and
// match the certificate. The returned certificate has Leaf set.
func LoadKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	return loadPair(certFile, keyFile, KeyPair)
}

// loadPair reads a certificate file and a key file private to its owner
// and builds the TLS certificate with parse.
func loadPair(certFile, keyFile string, parse func(certPEM, keyPEM []byte) (*tls.Certificate, error)) (*tls.Certificate, error) {
	if err := checkKeyMode(keyFile); err != nil {
		return nil, err
	}
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("load certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("load key: %w", err)
	}
	c, err := parse(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load %s and %s: %w", certFile, keyFile, err)
	}
	return c, nil
}

// KeyPair builds a TLS certificate from PEM, as returned by Issue.
func KeyPair(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, err
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	if !key.Public().(ed25519.PublicKey).Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("key does not match certificate serial %s", FormatSerial(leaf.SerialNumber))
	}
	return &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// LoadCACert reads a CA certificate (ca.crt) as distributed to nodes.
func LoadCACert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load ca certificate: %w", err)
	}
	c, err := parseCertPEM(b)
	if err != nil {
		return nil, fmt.Errorf("load ca certificate %s: %w", path, err)
	}
	if !c.IsCA || !c.BasicConstraintsValid {
		return nil, fmt.Errorf("load ca certificate %s: %s is not a ca certificate", path, c.Subject)
	}
	return c, nil
}

// ParseCertificatePEM parses one PEM certificate.
func ParseCertificatePEM(b []byte) (*x509.Certificate, error) { return parseCertPEM(b) }

func parseCertPEM(b []byte) (*x509.Certificate, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no pem data")
	}
	if block.Type != pemCertificate {
		return nil, fmt.Errorf("pem block is %q, want %s", block.Type, pemCertificate)
	}
	c, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	return c, nil
}

func parseKeyPEM(b []byte) (ed25519.PrivateKey, error) {
	k, err := parseAnyKeyPEM(b)
	if err != nil {
		return nil, err
	}
	ek, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("key is %s, want ed25519", keyTypeName(k))
	}
	return ek, nil
}

// parseAnyKeyPEM parses a PKCS#8 key: Ed25519 (the root, nodes) or ECDSA
// (the web CA and what it issues).
func parseAnyKeyPEM(b []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, errors.New("no pem data in key")
	}
	if block.Type != pemPrivateKey {
		return nil, fmt.Errorf("key pem block is %q, want %s (pkcs#8)", block.Type, pemPrivateKey)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse key: %w", err)
	}
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k, nil
	case *ecdsa.PrivateKey:
		return k, nil
	}
	return nil, fmt.Errorf("key is %s, want ed25519 or ecdsa", keyTypeName(k))
}

func keyTypeName(k any) string {
	switch k.(type) {
	case *rsa.PrivateKey:
		return "rsa"
	case *ecdsa.PrivateKey:
		return "ecdsa"
	case *ecdh.PrivateKey:
		return "ecdh"
	}
	return fmt.Sprintf("%T", k)
}

func encodeCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: pemCertificate, Bytes: der})
}

// EncodeKey returns key as PKCS#8 PEM.
func EncodeKey(key ed25519.PrivateKey) ([]byte, error) { return encodeAnyKey(key) }

func encodeAnyKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: pemPrivateKey, Bytes: der}), nil
}

// checkKeyMode refuses a key file that group or others can access.
func checkKeyMode(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("key file: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("key file %s is not a regular file", path)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("key file %s has mode %04o, want 0600 (chmod 600 %s): %w", path, perm, path, ErrKeyPermissions)
	}
	return nil
}

// writeFileAtomic writes through internal/atomicfile; with noClobber it
// refuses to replace an existing file.
func writeFileAtomic(path string, data []byte, perm fs.FileMode, noClobber bool) error {
	if noClobber {
		return atomicfile.WriteNew(path, data, perm)
	}
	return atomicfile.Write(path, data, perm)
}
