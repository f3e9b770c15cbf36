package pki

import (
	"bytes"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Why a peer certificate was refused. Every rejection from VerifyPeer,
// SignCSR and TLSConfig's handshakes is a *CertError wrapping one of these,
// so callers branch with errors.Is and logs print the detail.
var (
	ErrNoCertificate  = errors.New("no certificate")
	ErrBadCertificate = errors.New("bad certificate")
	ErrUnknownCA      = errors.New("unknown ca")
	ErrExpired        = errors.New("expired")
	ErrNotYetValid    = errors.New("not yet valid")
	ErrRevoked        = errors.New("revoked")
	ErrWrongRole      = errors.New("wrong role")
	ErrWrongIdentity  = errors.New("wrong identity")
)

// CRL errors from ParseCRL and SetCRL.
var (
	ErrBadCRL   = errors.New("bad crl")
	ErrStaleCRL = errors.New("stale crl")
)

// CertError is a refused certificate: Reason is one of the sentinels above,
// Detail the sentence for a log line ("certificate serial 3f.. of
// agent/web-1 revoked at ...").
type CertError struct {
	Reason error
	Detail string
}

func (e *CertError) Error() string { return e.Detail }
func (e *CertError) Unwrap() error { return e.Reason }

func certErr(reason error, format string, args ...any) error {
	return &CertError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// Describe returns the one-line reason behind err, for a log line or a
// status page: "revoked: certificate serial ... of agent/web-1 revoked at
// ...". On the side whose certificate was refused, TLS only carries an
// alert; Describe says so, because the reason is in the other side's log.
func Describe(err error) string {
	if err == nil {
		return ""
	}
	var ce *CertError
	if errors.As(err, &ce) {
		return oneLine(ce.Reason.Error() + ": " + ce.Detail)
	}
	for _, s := range []error{ErrStaleCRL, ErrBadCRL, ErrKeyPermissions, ErrCAExists, ErrAlreadyRevoked} {
		if errors.Is(err, s) {
			return oneLine(s.Error() + ": " + err.Error())
		}
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "remote error" {
		return oneLine("refused by peer: " + op.Err.Error() + " (the peer's log names the reason)")
	}
	return oneLine(err.Error())
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func ident(role Role, name string) string { return string(role) + "/" + name }

func rolesList(roles []Role) string {
	s := make([]string, len(roles))
	for i, r := range roles {
		s[i] = string(r)
	}
	return strings.Join(s, ", ")
}

func ts(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func encodeCRL(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: pemCRL, Bytes: der}) }

// maxCRLSize bounds what ParseCRL accepts from a file or the network:
// 4 MiB is tens of thousands of entries.
const maxCRLSize = 4 << 20

// ParseCRL parses a CRL in PEM (or DER, as it may travel in a frame) and
// checks that ca signed it and that it carries a CRL number.
func ParseCRL(data []byte, ca *x509.Certificate) (*x509.RevocationList, error) {
	if ca == nil {
		return nil, fmt.Errorf("parse crl: no ca certificate: %w", ErrBadCRL)
	}
	if len(data) > maxCRLSize {
		return nil, fmt.Errorf("parse crl: %d bytes, more than %d: %w", len(data), maxCRLSize, ErrBadCRL)
	}
	der := data
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != pemCRL {
			return nil, fmt.Errorf("parse crl: pem block is %q, want %s: %w", block.Type, pemCRL, ErrBadCRL)
		}
		der = block.Bytes
	} else if bytes.HasPrefix(bytes.TrimSpace(data), []byte("-----BEGIN")) {
		return nil, fmt.Errorf("parse crl: malformed pem: %w", ErrBadCRL)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, fmt.Errorf("parse crl: %v: %w", err, ErrBadCRL)
	}
	if err := checkCRL(crl, ca); err != nil {
		return nil, err
	}
	return crl, nil
}

func checkCRL(crl *x509.RevocationList, ca *x509.Certificate) error {
	if err := crl.CheckSignatureFrom(ca); err != nil {
		return fmt.Errorf("crl issued by %s is not signed by our ca %s: %v: %w", crl.Issuer, ca.Subject, err, ErrBadCRL)
	}
	if crl.Number == nil || crl.Number.Sign() < 0 {
		return fmt.Errorf("crl has no crl number: %w", ErrBadCRL)
	}
	return nil
}

// Verifier decides whether to trust a peer: issued by our CA, inside its
// validity window, not on the current CRL, in an allowed role. It is safe
// for concurrent use; SetCRL may run while handshakes are verified.
type Verifier struct {
	// Now is the clock; nil means time.Now. Set it before the Verifier is
	// shared.
	Now func() time.Time

	ca *x509.Certificate

	mu  sync.Mutex // serializes SetCRL's compare-and-swap
	crl atomic.Pointer[x509.RevocationList]
	web atomic.Pointer[x509.Certificate] // the web CA's cross certificate, or nil
}

// SetWebCA makes the verifier accept certificates of the web CA (web.go)
// as well: cross must be the web CA certified by the verifier's root. Only
// operator and api certificates are accepted through it.
func (v *Verifier) SetWebCA(cross *x509.Certificate) error {
	if cross == nil {
		return errors.New("set web ca: no certificate")
	}
	if err := checkWebCA(v.ca, cross); err != nil {
		return fmt.Errorf("set web ca: %w", err)
	}
	v.web.Store(cross)
	return nil
}

// WebCA returns the web CA's cross certificate the verifier accepts, or nil.
func (v *Verifier) WebCA() *x509.Certificate { return v.web.Load() }

// NewVerifier makes a Verifier for certificates issued by ca. crl may be nil
// for a node that has not received one yet (then nothing is revoked and any
// valid CRL is accepted next).
func NewVerifier(ca *x509.Certificate, crl *x509.RevocationList) (*Verifier, error) {
	if ca == nil || !ca.IsCA {
		return nil, errors.New("new verifier: no ca certificate")
	}
	v := &Verifier{ca: ca}
	if crl != nil {
		if err := v.SetCRL(crl); err != nil {
			return nil, fmt.Errorf("new verifier: %w", err)
		}
	}
	return v, nil
}

func (v *Verifier) now() time.Time {
	if v.Now != nil {
		return v.Now()
	}
	return time.Now()
}

// CA returns the root certificate the verifier trusts.
func (v *Verifier) CA() *x509.Certificate { return v.ca }

// CRL returns the current CRL, or nil if none was set.
func (v *Verifier) CRL() *x509.RevocationList { return v.crl.Load() }

// SetCRL replaces the CRL used for new verifications. The CRL must be signed
// by the CA (checked again here, whoever parsed it) and its number must not
// be lower than the current one, so a replayed old CRL cannot un-revoke a
// certificate. Setting the same CRL again is a no-op; a different CRL with
// the same number is refused.
func (v *Verifier) SetCRL(crl *x509.RevocationList) error {
	if crl == nil {
		return fmt.Errorf("set crl: nil crl: %w", ErrBadCRL)
	}
	if err := checkCRL(crl, v.ca); err != nil {
		return fmt.Errorf("set crl: %w", err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if cur := v.crl.Load(); cur != nil {
		switch c := crl.Number.Cmp(cur.Number); {
		case c < 0:
			return fmt.Errorf("set crl: crl number %s is lower than current %s: %w", crl.Number, cur.Number, ErrStaleCRL)
		case c == 0 && bytes.Equal(crl.Raw, cur.Raw):
			return nil
		case c == 0:
			return fmt.Errorf("set crl: a different crl with the current number %s: %w", cur.Number, ErrStaleCRL)
		}
	}
	v.crl.Store(crl)
	return nil
}

// VerifyPeer checks a peer's certificate chain as presented in a TLS
// handshake (the leaf first; anything after it is ignored, our CA signs
// leaves directly) and returns the leaf. With allowed roles given, the
// peer's role must be one of them. It has the shape of
// tls.Config.VerifyPeerCertificate; TLSConfig uses it through
// VerifyConnection, which also runs on resumed sessions.
func (v *Verifier) VerifyPeer(rawCerts [][]byte, allowed ...Role) (*x509.Certificate, error) {
	if len(rawCerts) == 0 || len(rawCerts[0]) == 0 {
		return nil, certErr(ErrNoCertificate, "peer sent no certificate")
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return nil, certErr(ErrBadCertificate, "unparsable peer certificate: %v", err)
	}
	if err := v.verifyLeaf(leaf, x509.ExtKeyUsageAny, allowed); err != nil {
		return nil, err
	}
	return leaf, nil
}

// VerifyCertificate is VerifyPeer for an already parsed certificate.
func (v *Verifier) VerifyCertificate(leaf *x509.Certificate, allowed ...Role) error {
	if leaf == nil {
		return certErr(ErrNoCertificate, "no certificate")
	}
	return v.verifyLeaf(leaf, x509.ExtKeyUsageAny, allowed)
}

func (v *Verifier) verifyLeaf(leaf *x509.Certificate, usage x509.ExtKeyUsage, allowed []Role) error {
	if web := v.web.Load(); web != nil && leaf.CheckSignatureFrom(v.ca) != nil && leaf.CheckSignatureFrom(web) == nil {
		return checkWebLeaf(leaf, web, v.ca, v.crl.Load(), v.now(), usage, allowed)
	}
	return checkLeaf(leaf, v.ca, v.crl.Load(), v.now(), usage, allowed)
}

// checkWebLeaf is checkLeaf for a certificate of the web CA: the web CA
// must be valid and unrevoked, and the leaf an operator's or the API's,
// then the leaf passes the same checks with the whole path validated
// (leaf -> web CA -> root).
func checkWebLeaf(leaf, web, ca *x509.Certificate, crl *x509.RevocationList, now time.Time, usage x509.ExtKeyUsage, allowed []Role) error {
	if e, ok := findRevoked(crl, web.SerialNumber); ok {
		return certErr(ErrRevoked, "web ca %s (serial %s) revoked at %s", web.Subject, FormatSerial(web.SerialNumber), ts(e.RevocationTime))
	}
	if now.After(web.NotAfter) {
		return certErr(ErrExpired, "web ca %s expired at %s (now %s)", web.Subject, ts(web.NotAfter), ts(now))
	}
	role, name, err := Identity(leaf)
	if err != nil {
		return certErr(ErrBadCertificate, "%v", err)
	}
	if role != RoleOperator && role != RoleAPI {
		return certErr(ErrWrongRole, "%s certificate from the web ca: it issues operator and api certificates only", ident(role, name))
	}
	return checkLeafFrom(leaf, web, ca, crl, now, usage, allowed)
}

// checkLeaf is the whole trust decision, shared by the Verifier and by the
// CA when it signs a renewal. The order decides which reason a log names
// when several apply: a stranger is a stranger before anything else, and a
// revoked certificate is reported as revoked even when it also expired.
func checkLeaf(leaf *x509.Certificate, ca *x509.Certificate, crl *x509.RevocationList, now time.Time, usage x509.ExtKeyUsage, allowed []Role) error {
	return checkLeafFrom(leaf, ca, ca, crl, now, usage, allowed)
}

// checkLeafFrom checks a leaf signed by issuer, which is the root ca or
// an intermediate it certified.
func checkLeafFrom(leaf, issuer, ca *x509.Certificate, crl *x509.RevocationList, now time.Time, usage x509.ExtKeyUsage, allowed []Role) error {
	if err := leaf.CheckSignatureFrom(issuer); err != nil {
		return certErr(ErrUnknownCA, "certificate from another CA: issuer %s (we trust %s)", leaf.Issuer, ca.Subject)
	}
	role, name, err := Identity(leaf)
	if err != nil {
		return certErr(ErrBadCertificate, "%v", err)
	}
	who := ident(role, name)
	if e, ok := findRevoked(crl, leaf.SerialNumber); ok {
		return certErr(ErrRevoked, "certificate serial %s of %s revoked at %s (reason %d, crl %s)",
			FormatSerial(leaf.SerialNumber), who, ts(e.RevocationTime), e.ReasonCode, crl.Number)
	}
	if now.After(ca.NotAfter) {
		return certErr(ErrExpired, "ca certificate %s expired at %s (now %s)", ca.Subject, ts(ca.NotAfter), ts(now))
	}
	if now.After(leaf.NotAfter) {
		return certErr(ErrExpired, "certificate of %s expired at %s (now %s)", who, ts(leaf.NotAfter), ts(now))
	}
	if now.Before(leaf.NotBefore) {
		return certErr(ErrNotYetValid, "certificate of %s not valid before %s (now %s)", who, ts(leaf.NotBefore), ts(now))
	}
	if len(allowed) > 0 && !containsRole(allowed, role) {
		return certErr(ErrWrongRole, "peer is %s, want one of %s", who, rolesList(allowed))
	}
	// Last, the standard library's full path validation (key usages,
	// critical extensions, name constraints) as a second opinion.
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	opts := x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: []x509.ExtKeyUsage{usage}}
	if issuer != ca {
		opts.Intermediates = x509.NewCertPool()
		opts.Intermediates.AddCert(issuer)
	}
	if _, err := leaf.Verify(opts); err != nil {
		return certErr(ErrBadCertificate, "certificate of %s: %v", who, err)
	}
	return nil
}

func containsRole(roles []Role, r Role) bool {
	for _, x := range roles {
		if x == r {
			return true
		}
	}
	return false
}

// NeedsRenewal reports whether less than a third of cert's lifetime is left
// at now: a node renews early enough that a center out of reach for a few
// hours does not let it lapse.
func NeedsRenewal(cert *x509.Certificate, now time.Time) bool {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotAfter.Sub(now) < life/3
}

// LoadCRL reads a CRL file as saved by SaveCRL (or the CA's crl.pem) and
// checks it against ca.
func LoadCRL(path string, ca *x509.Certificate) (*x509.RevocationList, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load crl: %w", err)
	}
	crl, err := ParseCRL(b, ca)
	if err != nil {
		return nil, fmt.Errorf("load crl %s: %w", path, err)
	}
	return crl, nil
}

// SaveCRL writes crl to path atomically (PEM, mode 0644). A node saves each
// CRL it accepts with SetCRL, so a restart does not fall back to an older
// list and un-revoke anything until the next push.
func SaveCRL(path string, crl *x509.RevocationList) error {
	if crl == nil || len(crl.Raw) == 0 {
		return errors.New("save crl: empty crl")
	}
	return writeFileAtomic(path, encodeCRL(crl.Raw), certMode, false)
}

// LoadVerifier builds a node's Verifier from its ca.crt and the last CRL it
// saved. A missing CRL file is not an error (a node enrolled before any
// revocation has none yet); an unreadable or foreign one is.
func LoadVerifier(caFile, crlFile string) (*Verifier, error) {
	ca, err := LoadCACert(caFile)
	if err != nil {
		return nil, err
	}
	var crl *x509.RevocationList
	if crlFile != "" {
		crl, err = LoadCRL(crlFile, ca)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
	}
	return NewVerifier(ca, crl)
}
