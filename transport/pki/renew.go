package pki

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net/url"
	"time"
)

// NewCSR makes a certificate signing request for a renewal: key is the
// node's new key, role and name its current identity.
func NewCSR(key ed25519.PrivateKey, role Role, name string) ([]byte, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("new csr: invalid ed25519 key")
	}
	if !role.Valid() {
		return nil, fmt.Errorf("new csr: unknown role %q", role)
	}
	if err := ValidateName(name); err != nil {
		return nil, fmt.Errorf("new csr: %w", err)
	}
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: name},
		URIs:    []*url.URL{IdentityURI(role, name)},
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		return nil, fmt.Errorf("new csr: %w", err)
	}
	return der, nil
}

// maxCSRSize bounds a CSR taken from the network; ours are about 300 bytes.
const maxCSRSize = 16 << 10

// SignCSR signs a renewal. peer is the certificate of the node asking, as
// verified in its TLS handshake with the center (so the node proved it holds
// peer's key). The CA signs only when peer is its own, currently valid and
// not revoked, the CSR's signature verifies and the CSR names exactly
// peer's role and name: a node can renew only itself. The new certificate
// keeps peer's DNS and IP SANs (what the CA approved before), never ones
// the CSR asks for. ttl 0 means DefaultTTL(role).
//
// When the request crossed proxies, the center did not see the node's
// handshake: use SignRenewal, which checks a proof of possession instead.
func (ca *CA) SignCSR(csrDER []byte, peer *x509.Certificate, ttl time.Duration) (certPEM []byte, err error) {
	if peer == nil {
		return nil, certErr(ErrNoCertificate, "renewal without a peer certificate")
	}
	ca.mu.Lock()
	crl := ca.crl
	ca.mu.Unlock()
	if err := checkLeaf(peer, ca.cert, crl, ca.now(), x509.ExtKeyUsageAny, nil); err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	role, name, err := Identity(peer)
	if err != nil { // checkLeaf already parsed it; kept for clarity
		return nil, fmt.Errorf("renew: %w", err)
	}
	if len(csrDER) > maxCSRSize {
		return nil, certErr(ErrBadCertificate, "renewal of %s: csr is %d bytes", ident(role, name), len(csrDER))
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, certErr(ErrBadCertificate, "renewal of %s: unparsable csr: %v", ident(role, name), err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, certErr(ErrBadCertificate, "renewal of %s: csr signature: %v", ident(role, name), err)
	}
	pub, ok := csr.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, certErr(ErrBadCertificate, "renewal of %s: csr key is %s, want ed25519", ident(role, name), csr.PublicKeyAlgorithm)
	}
	crole, cname, err := identityFrom(csr.Subject.CommonName, csr.URIs)
	if err != nil {
		return nil, certErr(ErrBadCertificate, "renewal of %s: csr: %v", ident(role, name), err)
	}
	if crole != role || cname != name {
		return nil, certErr(ErrWrongIdentity, "%s asked to renew %s; a node may renew only itself", ident(role, name), ident(crole, cname))
	}
	return ca.sign(role, name, pub, ttl, peer.DNSNames, peer.IPAddresses)
}

// renewalContext separates the proof-of-possession signature from any other
// use of a node key (the same key signs event batches).
const renewalContext = "daemoneye renewal v1\x00"

// RenewalRequest is a renewal that can travel through proxies: the CSR for
// the new key, the certificate being renewed, and Proof, a signature by the
// current key over the CSR. The proof is what stops a proxy, which sees
// its children's certificates, from pairing a child's certificate with a
// key of its own. The fields are plain bytes so a frame can carry them.
type RenewalRequest struct {
	CSR   []byte // DER, signed by the new key
	Cert  []byte // DER of the current certificate
	Proof []byte // ed25519 signature by the current key over renewalContext || CSR
}

// NewRenewalRequest prepares the renewal of cert (whose key is key) to
// newKey.
func NewRenewalRequest(cert *x509.Certificate, key, newKey ed25519.PrivateKey) (RenewalRequest, error) {
	if cert == nil || len(key) != ed25519.PrivateKeySize {
		return RenewalRequest{}, errors.New("renewal request: no current certificate and key")
	}
	if !key.Public().(ed25519.PublicKey).Equal(cert.PublicKey) {
		return RenewalRequest{}, errors.New("renewal request: key does not match the current certificate")
	}
	role, name, err := Identity(cert)
	if err != nil {
		return RenewalRequest{}, fmt.Errorf("renewal request: %w", err)
	}
	csr, err := NewCSR(newKey, role, name)
	if err != nil {
		return RenewalRequest{}, fmt.Errorf("renewal request: %w", err)
	}
	proof := ed25519.Sign(key, append([]byte(renewalContext), csr...))
	return RenewalRequest{CSR: csr, Cert: cert.Raw, Proof: proof}, nil
}

// SignRenewal signs a RenewalRequest that may have crossed proxies: Proof
// must verify with the current certificate's key, then it is SignCSR with
// that certificate as the peer.
func (ca *CA) SignRenewal(req RenewalRequest, ttl time.Duration) (certPEM []byte, err error) {
	if len(req.Cert) == 0 {
		return nil, certErr(ErrNoCertificate, "renewal request without a certificate")
	}
	cert, err := x509.ParseCertificate(req.Cert)
	if err != nil {
		return nil, certErr(ErrBadCertificate, "renewal request: unparsable certificate: %v", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || len(req.CSR) > maxCSRSize || !ed25519.Verify(pub, append([]byte(renewalContext), req.CSR...), req.Proof) {
		return nil, certErr(ErrBadCertificate, "renewal request for certificate serial %s: proof of possession does not verify", FormatSerial(cert.SerialNumber))
	}
	return ca.SignCSR(req.CSR, cert, ttl)
}
