package pki

// The web CA. Browsers take neither Ed25519 server certificates nor
// Ed25519 signatures anywhere in a chain (Chromium has no Ed25519 in its
// TLS stack or its certificate verifier), so the center's HTTPS API and the
// operators' browser certificates cannot come from the Ed25519 root. The
// web CA is a second, ECDSA P-256 CA in the same directory, held by the
// same customer:
//
//   - web-ca.crt: self-signed. Operators install it in their browsers as a
//     trusted authority; it is what a browser's path ends at.
//   - web-ca-cross.crt: the same subject and key, certified by the Ed25519
//     root. The API sends it after its own certificate, so our tools, which
//     trust only the root (the CLI, `daemoneye trace`, the demo), verify the
//     server as leaf -> web CA -> root with nothing new to distribute; and
//     the center's Verifier accepts operator certificates signed by the web
//     CA through it.
//   - web-ca.key: its ECDSA key, PKCS#8, mode 0600, beside ca.key.
//
// The web CA issues two kinds of certificate, both ECDSA P-256: the API's
// server certificate (role api: ServerAuth, the names and addresses the API
// is reached by) and operators' browser certificates (role operator:
// ClientAuth, exported as PKCS#12 for import). Nodes keep Ed25519 from the
// root: their certificate key signs their batches.
//
// Revocation. The root's CRL is the one list: it names serials, and every
// serial this CA directory issues, from either CA, is a random 128-bit
// number, so the Verifier checks a web-issued certificate's serial (and the
// cross certificate's) against it. RevokeCert accepts certificates of
// either CA. (Browsers do not consult this CRL: a revoked operator
// certificate is refused by the center's TLS handshake, as on the CLI path.)

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha1" //nolint:gosec // RFC 5280 section 4.2.1.2 method 1 key identifier, not a signature
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

// Files of the web CA, in the CA directory.
const (
	WebCACertFile  = "web-ca.crt"
	WebCACrossFile = "web-ca-cross.crt"
	WebCAKeyFile   = "web-ca.key"
)

// DefaultAPITTL is the lifetime of an API server certificate.
const DefaultAPITTL = 90 * 24 * time.Hour

// ErrNoWebCA is returned when a web certificate is asked of a CA
// directory without a web CA.
var ErrNoWebCA = errors.New("no web ca")

// WebCA is the ECDSA P-256 CA for browsers (see the top of this file).
type WebCA struct {
	cert     *x509.Certificate // self-signed: the browsers' anchor
	cross    *x509.Certificate // issued by the root
	key      *ecdsa.PrivateKey
	certPEM  []byte
	crossPEM []byte
}

// Certificate is the self-signed web CA certificate (web-ca.crt).
func (w *WebCA) Certificate() *x509.Certificate { return w.cert }

// CertPEM is web-ca.crt, what operators install in their browsers.
func (w *WebCA) CertPEM() []byte { return slices.Clone(w.certPEM) }

// Cross is the web CA certified by the root (web-ca-cross.crt).
func (w *WebCA) Cross() *x509.Certificate { return w.cross }

// CrossPEM is web-ca-cross.crt.
func (w *WebCA) CrossPEM() []byte { return slices.Clone(w.crossPEM) }

// Web returns the CA's web CA, or nil when the directory has none.
func (ca *CA) Web() *WebCA { return ca.web }

// InitWeb creates the web CA in the CA's directory: a new P-256 key, the
// self-signed certificate and the root's cross certificate, valid as long
// as the root. It refuses when one exists (replacing it would cut off
// every browser that trusts it), and when the root was made with a path
// length of 0 (before web CAs: no verifier would accept an intermediate
// under it; start a new CA directory).
func (ca *CA) InitWeb() (*WebCA, error) {
	if ca.web != nil {
		return nil, fmt.Errorf("init web ca: %s exists: %w", filepath.Join(ca.dir, WebCACertFile), ErrCAExists)
	}
	if ca.cert.MaxPathLen == 0 && ca.cert.MaxPathLenZero {
		return nil, fmt.Errorf("init web ca: the root %s allows no intermediate (path length 0; it predates web CAs): "+
			"create a new CA directory with `daemoneye pki init`", ca.cert.Subject.CommonName)
	}
	for _, f := range []string{WebCAKeyFile, WebCACertFile, WebCACrossFile} {
		p := filepath.Join(ca.dir, f)
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("init web ca: %s exists, refusing to overwrite: %w", p, ErrCAExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("init web ca: %w", err)
		}
	}
	now := ca.now()
	if !now.Before(ca.cert.NotAfter) {
		return nil, fmt.Errorf("init web ca: root expired at %s", ts(ca.cert.NotAfter))
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	ski, err := keyID(key.Public())
	if err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	org := ca.cert.Subject.Organization
	name := "DaemonEye web CA"
	if len(org) > 0 {
		name = org[0] + " DaemonEye web CA"
	}
	tmpl := func() (*x509.Certificate, error) {
		serial, err := randomSerial()
		if err != nil {
			return nil, err
		}
		return &x509.Certificate{
			SerialNumber:          serial,
			Subject:               pkix.Name{CommonName: name, Organization: org},
			NotBefore:             now.Add(-backdate),
			NotAfter:              ca.cert.NotAfter,
			KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
			MaxPathLenZero:        true, // it signs leaves only
			SubjectKeyId:          ski,
		}, nil
	}
	self, err := tmpl()
	if err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	selfDER, err := x509.CreateCertificate(rand.Reader, self, self, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("init web ca: self-signed certificate: %w", err)
	}
	cross, err := tmpl()
	if err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	crossDER, err := x509.CreateCertificate(rand.Reader, cross, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("init web ca: cross certificate: %w", err)
	}
	keyPEM, err := encodeAnyKey(key)
	if err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	w, err := newWebCA(ca.cert, encodeCert(selfDER), encodeCert(crossDER), key)
	if err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(ca.dir, WebCAKeyFile), keyPEM, keyMode, true); err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(ca.dir, WebCACertFile), w.certPEM, certMode, true); err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(ca.dir, WebCACrossFile), w.crossPEM, certMode, true); err != nil {
		return nil, fmt.Errorf("init web ca: %w", err)
	}
	ca.web = w
	return w, nil
}

// keyID is the RFC 5280 method-1 subject key identifier: SHA-1 of the
// subjectPublicKey bit string. The self-signed and the cross certificate
// carry the same one, so either is found as the issuer of a web leaf.
func keyID(pub crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	var spki struct {
		Algorithm pkix.AlgorithmIdentifier
		PublicKey asn1.BitString
	}
	if _, err := asn1.Unmarshal(der, &spki); err != nil {
		return nil, err
	}
	sum := sha1.Sum(spki.PublicKey.Bytes) //nolint:gosec // see above
	return sum[:], nil
}

// newWebCA checks a web CA's parts against each other and the root.
func newWebCA(root *x509.Certificate, certPEM, crossPEM []byte, key *ecdsa.PrivateKey) (*WebCA, error) {
	self, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", WebCACertFile, err)
	}
	cross, err := parseCertPEM(crossPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", WebCACrossFile, err)
	}
	if err := checkWebCA(root, cross); err != nil {
		return nil, err
	}
	if err := self.CheckSignatureFrom(self); err != nil {
		return nil, fmt.Errorf("%s is not self-signed: %w", WebCACertFile, err)
	}
	pub, ok := self.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(cross.PublicKey) || !slices.Equal(self.RawSubject, cross.RawSubject) {
		return nil, fmt.Errorf("%s and %s do not name the same key and subject", WebCACertFile, WebCACrossFile)
	}
	if key != nil && !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("%s does not match %s", WebCAKeyFile, WebCACertFile)
	}
	return &WebCA{cert: self, cross: cross, key: key, certPEM: certPEM, crossPEM: crossPEM}, nil
}

// checkWebCA checks that cross is a web CA certified by root.
func checkWebCA(root, cross *x509.Certificate) error {
	if err := cross.CheckSignatureFrom(root); err != nil {
		return fmt.Errorf("web ca %s is not certified by the root %s: %w", cross.Subject, root.Subject, err)
	}
	if !cross.IsCA || !cross.BasicConstraintsValid || cross.KeyUsage&x509.KeyUsageCertSign == 0 {
		return fmt.Errorf("web ca %s is not a ca certificate", cross.Subject)
	}
	if pub, ok := cross.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		return fmt.Errorf("web ca %s: key is not ECDSA P-256", cross.Subject)
	}
	return nil
}

// loadWeb loads the web CA of dir, or nil when it has none.
func loadWeb(dir string, root *x509.Certificate) (*WebCA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, WebCACertFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	crossPEM, err := os.ReadFile(filepath.Join(dir, WebCACrossFile))
	if err != nil {
		return nil, fmt.Errorf("web ca: %w", err)
	}
	keyPath := filepath.Join(dir, WebCAKeyFile)
	if err := checkKeyMode(keyPath); err != nil {
		return nil, fmt.Errorf("web ca: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("web ca: %w", err)
	}
	k, err := parseAnyKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("web ca: %s: %w", keyPath, err)
	}
	key, ok := k.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("web ca: %s is %s, want ecdsa", keyPath, keyTypeName(k))
	}
	w, err := newWebCA(root, certPEM, crossPEM, key)
	if err != nil {
		return nil, fmt.Errorf("web ca in %s: %w", dir, err)
	}
	return w, nil
}

// issueWeb makes an ECDSA P-256 key and a certificate for it signed by the
// web CA. The certificate PEM is the leaf followed by the cross
// certificate: the chain a server sends, so that a client trusting only
// the root verifies it.
func (ca *CA) issueWeb(role Role, name string, ttl time.Duration, dns []string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	if ca.web == nil {
		return nil, nil, fmt.Errorf("issue %s/%s: %s has no web ca (daemoneye pki web-ca creates one): %w", role, name, ca.dir, ErrNoWebCA)
	}
	if role != RoleOperator && role != RoleAPI {
		return nil, nil, fmt.Errorf("issue %s/%s: the web ca issues api and operator certificates only (nodes sign with Ed25519 keys from the root)", role, name)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
	}
	leaf, err := ca.signWith(ca.web.cert, ca.web.key, role, name, key.Public(), ttl, dns, ips)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = encodeAnyKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
	}
	return append(leaf, ca.web.crossPEM...), keyPEM, nil
}

// PKCS12 packs an operator's web certificate and key (as Issue returned
// them) into a PKCS#12 file for a browser's import, protected by password
// (PBES2 AES-256 and PBKDF2 with SHA-256, which browsers and NSS read). It
// carries the self-signed web CA as the chain.
func (w *WebCA) PKCS12(certPEM, keyPEM []byte, password string) ([]byte, error) {
	leaf, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("pkcs12: %w", err)
	}
	key, err := parseAnyKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("pkcs12: %w", err)
	}
	if err := leaf.CheckSignatureFrom(w.cert); err != nil {
		return nil, fmt.Errorf("pkcs12: certificate serial %s is not from this web ca", FormatSerial(leaf.SerialNumber))
	}
	if !publicKeyOf(key).Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("pkcs12: key does not match certificate serial %s", FormatSerial(leaf.SerialNumber))
	}
	b, err := pkcs12.Modern2023.Encode(key, leaf, []*x509.Certificate{w.cert}, password)
	if err != nil {
		return nil, fmt.Errorf("pkcs12: %w", err)
	}
	return b, nil
}

func publicKeyOf(k crypto.PrivateKey) interface{ Equal(crypto.PublicKey) bool } {
	switch k := k.(type) {
	case ed25519.PrivateKey:
		return k.Public().(ed25519.PublicKey)
	case *ecdsa.PrivateKey:
		return &k.PublicKey
	}
	return noKey{}
}

type noKey struct{}

func (noKey) Equal(crypto.PublicKey) bool { return false }

// LoadServerKeyPair loads a server's certificate chain (the leaf first, then
// the certificates a client may need, as issueWeb writes them) and its key,
// Ed25519 or ECDSA, for the API's TLS. The key file must be private to its
// owner and match the leaf.
func LoadServerKeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	return loadPair(certFile, keyFile, ServerKeyPair)
}

// ServerKeyPair is LoadServerKeyPair on PEM bytes.
func ServerKeyPair(certPEM, keyPEM []byte) (*tls.Certificate, error) {
	var chain [][]byte
	rest := certPEM
	for len(chain) < 8 {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != pemCertificate {
			return nil, fmt.Errorf("pem block is %q, want %s", block.Type, pemCertificate)
		}
		chain = append(chain, block.Bytes)
	}
	if len(chain) == 0 {
		return nil, errors.New("no certificate in pem data")
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("parse certificate: %w", err)
	}
	key, err := parseAnyKeyPEM(keyPEM)
	if err != nil {
		return nil, err
	}
	if !publicKeyOf(key).Equal(leaf.PublicKey) {
		return nil, fmt.Errorf("key does not match certificate serial %s", FormatSerial(leaf.SerialNumber))
	}
	return &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// WebCAOf returns the web CA certificate in a server chain loaded by
// LoadServerKeyPair (the certificate after the leaf that root certified),
// or nil.
func WebCAOf(c *tls.Certificate, root *x509.Certificate) *x509.Certificate {
	if c == nil {
		return nil
	}
	for _, der := range c.Certificate[min(1, len(c.Certificate)):] {
		if x, err := x509.ParseCertificate(der); err == nil && checkWebCA(root, x) == nil {
			return x
		}
	}
	return nil
}
