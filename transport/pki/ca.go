package pki

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// Validity defaults.
const (
	// DefaultCAValidity is the root's lifetime when Init is given 0.
	DefaultCAValidity = 10 * 365 * 24 * time.Hour
	// DefaultNodeTTL is the lifetime of agent, proxy and center certificates:
	// short, because renewal through the tree is routine.
	DefaultNodeTTL = 24 * time.Hour
	// DefaultOperatorTTL is the lifetime of an operator certificate: one shift.
	DefaultOperatorTTL = 8 * time.Hour
	// CRLValidity is how far ahead a CRL's NextUpdate is set. Verifiers do not
	// fail closed on an old CRL (an enclave cut off from the center must keep
	// its links), it tells other tools when to expect a new one.
	CRLValidity = 7 * 24 * time.Hour
	// backdate absorbs clock skew between the center and the nodes.
	backdate = time.Minute
)

// Revocation reasons (RFC 5280 section 5.3.1) accepted by Revoke.
const (
	ReasonUnspecified          = 0
	ReasonKeyCompromise        = 1
	ReasonCACompromise         = 2
	ReasonAffiliationChanged   = 3
	ReasonSuperseded           = 4
	ReasonCessationOfOperation = 5
	ReasonPrivilegeWithdrawn   = 9
)

var (
	// ErrCAExists is returned by Init when the directory already holds a CA.
	ErrCAExists = errors.New("ca already exists")
	// ErrAlreadyRevoked is returned by Revoke for a serial already on the CRL.
	ErrAlreadyRevoked = errors.New("already revoked")
)

// DefaultTTL is the certificate lifetime Issue uses for role when
// IssueOptions.TTL is 0.
func DefaultTTL(role Role) time.Duration {
	if role == RoleOperator {
		return DefaultOperatorTTL
	}
	return DefaultNodeTTL
}

// CA is the customer's root: its certificate, key and current CRL, kept in
// one directory. It is safe for concurrent use; Revoke calls are serialized.
type CA struct {
	// Now is the clock; nil means time.Now. Set it before the CA is shared
	// (tests move it to mint certificates that are already expired).
	Now func() time.Time

	dir     string
	cert    *x509.Certificate
	certPEM []byte
	key     ed25519.PrivateKey
	web     *WebCA // nil: the directory has no web CA (web.go)

	mu     sync.Mutex // guards crl, crlPEM and the crl.pem file
	crl    *x509.RevocationList
	crlPEM []byte
}

func (ca *CA) now() time.Time {
	if ca.Now != nil {
		return ca.Now()
	}
	return time.Now()
}

// Init creates a new root CA in dir: an Ed25519 key (dir/ca.key, PKCS#8,
// mode 0600), a self-signed certificate valid for validity (dir/ca.crt; 0
// means DefaultCAValidity) that may sign end-entity certificates, CRLs and
// one intermediate, the web CA, and an empty CRL number 1 (dir/crl.pem);
// then the web CA (InitWeb). It refuses to touch a directory that already
// holds any of these files: replacing a root silently would cut every node
// off.
func Init(dir, org string, validity time.Duration) (*CA, error) {
	if err := validateOrg(org); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	switch {
	case validity == 0:
		validity = DefaultCAValidity
	case validity < time.Hour:
		return nil, fmt.Errorf("init ca: validity %v is too short", validity)
	}
	if err := os.MkdirAll(dir, dirMode); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	for _, f := range []string{CAKeyFile, CACertFile, CRLFile} {
		p := filepath.Join(dir, f)
		if _, err := os.Lstat(p); err == nil {
			return nil, fmt.Errorf("init ca: %s exists, refusing to overwrite (remove the directory's ca files to start over): %w", p, ErrCAExists)
		} else if !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("init ca: %w", err)
		}
	}

	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: org + " DaemonEye root CA", Organization: []string{org}},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		// One intermediate: the web CA (web.go), whose ECDSA certificates
		// browsers accept. Everything else the root signs directly.
		MaxPathLen: 1,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		return nil, fmt.Errorf("init ca: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	ca := &CA{dir: dir, cert: cert, certPEM: encodeCert(der), key: key}
	crl, crlPEM, err := ca.signCRL(big.NewInt(1), nil, now)
	if err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	// Key first: if we stop half way, the next Init still refuses and the
	// operator sees which file is there.
	if err := writeFileAtomic(filepath.Join(dir, CAKeyFile), keyPEM, keyMode, true); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, CACertFile), ca.certPEM, certMode, true); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, CRLFile), crlPEM, certMode, true); err != nil {
		return nil, fmt.Errorf("init ca: %w", err)
	}
	ca.crl, ca.crlPEM = crl, crlPEM
	if _, err := ca.InitWeb(); err != nil {
		return nil, err
	}
	return ca, nil
}

func validateOrg(org string) error {
	if strings.TrimSpace(org) == "" {
		return errors.New("empty organization name")
	}
	if len(org) > 64 { // X.520 ub-organization-name
		return fmt.Errorf("organization name is %d characters long, at most 64 allowed", len(org))
	}
	for _, r := range org {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("organization name %q has a control character", org)
		}
	}
	return nil
}

// LoadCA opens the CA in dir, as made by Init. It refuses a key file that
// group or others may read (ErrKeyPermissions, naming the mode), a key that
// is not Ed25519 or does not match ca.crt, and a CRL not signed by the CA.
func LoadCA(dir string) (*CA, error) {
	certPath := filepath.Join(dir, CACertFile)
	keyPath := filepath.Join(dir, CAKeyFile)
	crlPath := filepath.Join(dir, CRLFile)

	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, fmt.Errorf("load ca from %s (initialized with pki init?): %w", dir, err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load ca: %s: %w", certPath, err)
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("load ca: %s (%s) is not a ca certificate", certPath, cert.Subject)
	}
	if err := checkKeyMode(keyPath); err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load ca: %s: %w", keyPath, err)
	}
	if !key.Public().(ed25519.PublicKey).Equal(cert.PublicKey) {
		return nil, fmt.Errorf("load ca: key %s does not match certificate %s", keyPath, certPath)
	}
	crlPEM, err := os.ReadFile(crlPath)
	if err != nil {
		// A missing CRL is not replaced by an empty one: that would quietly
		// un-revoke every certificate.
		return nil, fmt.Errorf("load ca: %w", err)
	}
	crl, err := ParseCRL(crlPEM, cert)
	if err != nil {
		return nil, fmt.Errorf("load ca: %s: %w", crlPath, err)
	}
	web, err := loadWeb(dir, cert)
	if err != nil {
		return nil, fmt.Errorf("load ca: %w", err)
	}
	return &CA{dir: dir, cert: cert, certPEM: certPEM, key: key, web: web, crl: crl, crlPEM: crlPEM}, nil
}

// Certificate returns the root certificate.
func (ca *CA) Certificate() *x509.Certificate { return ca.cert }

// CertPEM returns the root certificate in PEM, as distributed to nodes.
func (ca *CA) CertPEM() []byte { return slices.Clone(ca.certPEM) }

// Dir returns the directory the CA lives in.
func (ca *CA) Dir() string { return ca.dir }

// IssueOptions are the optional parts of a certificate.
type IssueOptions struct {
	// TTL is the lifetime; 0 means DefaultTTL(role). It is cut short at the
	// root's own expiry.
	TTL time.Duration
	// DNSNames and IPAddresses are added as SANs: for a server, the names
	// and addresses it listens on. Nodes only.
	DNSNames    []string
	IPAddresses []net.IP
	// Loopback adds localhost, 127.0.0.1 and ::1 (demo and tests on one
	// host). Nodes and api only.
	Loopback bool
	// Web issues from the web CA with an ECDSA P-256 key: an operator's
	// certificate for a browser. Role api is always from the web CA.
	Web bool
}

// Issue makes a certificate and a new key for name in role, signed by the
// CA: Ed25519 from the root, or ECDSA P-256 from the web CA for role api
// and for opts.Web (web.go; the certificate PEM is then followed by the
// web CA's cross certificate). Both are returned in PEM (the key as
// PKCS#8); WriteKeyPair stores them.
func (ca *CA) Issue(role Role, name string, opts IssueOptions) (certPEM, keyPEM []byte, err error) {
	dns := slices.Clone(opts.DNSNames)
	ips := slices.Clone(opts.IPAddresses)
	if opts.Loopback {
		dns = append(dns, "localhost")
		ips = append(ips, net.IPv4(127, 0, 0, 1), net.IPv6loopback)
	}
	if role == RoleAPI || opts.Web {
		ttl := opts.TTL
		if ttl == 0 && role == RoleAPI {
			ttl = DefaultAPITTL
		}
		return ca.issueWeb(role, name, ttl, dns, ips)
	}
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
	}
	certPEM, err = ca.sign(role, name, pub, opts.TTL, dns, ips)
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err = EncodeKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
	}
	return certPEM, keyPEM, nil
}

// sign makes an end-entity certificate signed by the root.
func (ca *CA) sign(role Role, name string, pub ed25519.PublicKey, ttl time.Duration, dns []string, ips []net.IP) ([]byte, error) {
	if role == RoleAPI {
		return nil, fmt.Errorf("issue %s/%s: api certificates come from the web ca", role, name)
	}
	return ca.signWith(ca.cert, ca.key, role, name, pub, ttl, dns, ips)
}

// signWith is the one place that makes end-entity certificates: issuer
// and key are the root's or the web CA's.
func (ca *CA) signWith(issuer *x509.Certificate, issuerKey crypto.Signer, role Role, name string, pub crypto.PublicKey, ttl time.Duration, dns []string, ips []net.IP) ([]byte, error) {
	if !role.Valid() {
		return nil, fmt.Errorf("issue: unknown role %q", role)
	}
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("issue %s: %w", role, err)
	}
	if ttl == 0 {
		ttl = DefaultTTL(role)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("issue %s/%s: negative ttl %v", role, name, ttl)
	}
	if role == RoleOperator && (len(dns) > 0 || len(ips) > 0) {
		return nil, fmt.Errorf("issue %s/%s: operator certificates are client-only and carry no host names or addresses", role, name)
	}
	if role == RoleAPI && len(dns) == 0 && len(ips) == 0 {
		return nil, fmt.Errorf("issue %s/%s: an api certificate needs the names or addresses browsers reach it by (--dns, --ip)", role, name)
	}
	for _, d := range dns {
		if err := validateDNSName(d); err != nil {
			return nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
		}
	}
	for _, ip := range ips {
		if len(ip) != net.IPv4len && len(ip) != net.IPv6len {
			return nil, fmt.Errorf("issue %s/%s: invalid ip address %v", role, name, ip)
		}
	}
	now := ca.now()
	if !now.Before(issuer.NotAfter) {
		return nil, fmt.Errorf("issue %s/%s: ca certificate expired at %s", role, name, issuer.NotAfter.UTC().Format(time.RFC3339))
	}
	notAfter := now.Add(ttl)
	if notAfter.After(issuer.NotAfter) {
		notAfter = issuer.NotAfter
	}
	serial, err := randomSerial()
	if err != nil {
		return nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
	}
	usage := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	switch {
	case role.IsNode():
		usage = append(usage, x509.ExtKeyUsageServerAuth)
	case role == RoleAPI:
		usage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: ca.cert.Subject.Organization},
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           usage,
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{IdentityURI(role, name)},
		DNSNames:              dns,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, pub, issuerKey)
	if err != nil {
		return nil, fmt.Errorf("issue %s/%s: %w", role, name, err)
	}
	return encodeCert(der), nil
}

func validateDNSName(d string) error {
	if d == "" || len(d) > 253 {
		return fmt.Errorf("invalid dns name %q", d)
	}
	for _, label := range strings.Split(strings.TrimSuffix(d, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("invalid dns name %q", d)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("invalid dns name %q (wildcards and other characters are not issued)", d)
			}
		}
	}
	return nil
}

// randomSerial returns a positive 128-bit serial number.
func randomSerial() (*big.Int, error) {
	limit := new(big.Int).Lsh(big.NewInt(1), 128)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial number: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

// FormatSerial formats a serial number as the CLI and logs show it:
// lowercase hex.
func FormatSerial(n *big.Int) string {
	if n == nil {
		return "<none>"
	}
	return n.Text(16)
}

// ParseSerial parses a serial number as printed by FormatSerial (an
// optional 0x prefix and colons, as openssl prints them, are accepted).
func ParseSerial(s string) (*big.Int, error) {
	t := strings.ReplaceAll(strings.TrimPrefix(strings.ToLower(strings.TrimSpace(s)), "0x"), ":", "")
	n, ok := new(big.Int).SetString(t, 16)
	if !ok || n.Sign() <= 0 || n.BitLen() > 160 {
		return nil, fmt.Errorf("invalid serial number %q (want hex)", s)
	}
	return n, nil
}

// CRL returns the current revocation list.
func (ca *CA) CRL() *x509.RevocationList {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.crl
}

// CRLPEM returns the current revocation list in PEM, as pushed down the tree.
func (ca *CA) CRLPEM() []byte {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return slices.Clone(ca.crlPEM)
}

// Verifier returns a verifier for this CA holding its current CRL.
func (ca *CA) Verifier() (*Verifier, error) {
	v, err := NewVerifier(ca.cert, ca.CRL())
	if err != nil {
		return nil, err
	}
	if ca.web != nil {
		if err := v.SetWebCA(ca.web.cross); err != nil {
			return nil, err
		}
	}
	v.Now = ca.Now
	return v, nil
}

// Revoke adds serial to the CRL with an RFC 5280 reason code and publishes a
// new CRL (number incremented, NextUpdate now + CRLValidity) to dir/crl.pem.
// The caller then pushes CRLPEM down the tree.
func (ca *CA) Revoke(serial *big.Int, reason int) error {
	if serial == nil || serial.Sign() <= 0 {
		return errors.New("revoke: invalid serial number")
	}
	switch reason {
	case ReasonUnspecified, ReasonKeyCompromise, ReasonCACompromise, ReasonAffiliationChanged,
		ReasonSuperseded, ReasonCessationOfOperation, ReasonPrivilegeWithdrawn:
	default:
		// certificateHold (6) and removeFromCRL (8) imply un-revoking, which
		// this CA never does; 7 is unassigned.
		return fmt.Errorf("revoke %s: unsupported reason code %d", FormatSerial(serial), reason)
	}
	ca.mu.Lock()
	defer ca.mu.Unlock()
	for _, e := range ca.crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(serial) == 0 {
			return fmt.Errorf("revoke %s: revoked at %s: %w", FormatSerial(serial), e.RevocationTime.UTC().Format(time.RFC3339), ErrAlreadyRevoked)
		}
	}
	now := ca.now()
	entries := append(slices.Clone(ca.crl.RevokedCertificateEntries), x509.RevocationListEntry{
		SerialNumber:   serial,
		RevocationTime: now.UTC().Truncate(time.Second),
		ReasonCode:     reason,
	})
	return ca.publishLocked(entries, now)
}

// RevokeCert revokes a certificate given in PEM; it must have been issued by
// this CA or its web CA.
func (ca *CA) RevokeCert(certPEM []byte, reason int) error {
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return fmt.Errorf("revoke: %w", err)
	}
	if ca.web != nil && cert.CheckSignatureFrom(ca.web.cert) == nil {
		return ca.Revoke(cert.SerialNumber, reason)
	}
	if err := cert.CheckSignatureFrom(ca.cert); err != nil {
		return fmt.Errorf("revoke: certificate from another CA: issuer %s: %w", cert.Issuer, ErrUnknownCA)
	}
	return ca.Revoke(cert.SerialNumber, reason)
}

// RefreshCRL republishes the CRL with the same entries and a new number and
// NextUpdate; the center calls it periodically so the pushed CRL stays fresh.
func (ca *CA) RefreshCRL() error {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return ca.publishLocked(ca.crl.RevokedCertificateEntries, ca.now())
}

// IsRevoked reports whether serial is on the CA's current CRL.
func (ca *CA) IsRevoked(serial *big.Int) (x509.RevocationListEntry, bool) {
	ca.mu.Lock()
	defer ca.mu.Unlock()
	return findRevoked(ca.crl, serial)
}

func findRevoked(crl *x509.RevocationList, serial *big.Int) (x509.RevocationListEntry, bool) {
	if crl == nil || serial == nil {
		return x509.RevocationListEntry{}, false
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber != nil && e.SerialNumber.Cmp(serial) == 0 {
			return e, true
		}
	}
	return x509.RevocationListEntry{}, false
}

func (ca *CA) publishLocked(entries []x509.RevocationListEntry, now time.Time) error {
	number := new(big.Int).Add(ca.crl.Number, big.NewInt(1))
	crl, crlPEM, err := ca.signCRL(number, entries, now)
	if err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(ca.dir, CRLFile), crlPEM, certMode, false); err != nil {
		return fmt.Errorf("publish crl: %w", err)
	}
	ca.crl, ca.crlPEM = crl, crlPEM
	return nil
}

func (ca *CA) signCRL(number *big.Int, entries []x509.RevocationListEntry, now time.Time) (*x509.RevocationList, []byte, error) {
	tmpl := &x509.RevocationList{
		Number:                    number,
		ThisUpdate:                now.Add(-backdate),
		NextUpdate:                now.Add(CRLValidity),
		RevokedCertificateEntries: entries,
	}
	der, err := x509.CreateRevocationList(rand.Reader, tmpl, ca.cert, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign crl: %w", err)
	}
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return nil, nil, fmt.Errorf("sign crl: %w", err)
	}
	return crl, encodeCRL(der), nil
}
