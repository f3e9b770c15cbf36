package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
)

// CertHolder holds a node's current certificate. TLS configs read it at
// every handshake, so storing a renewed certificate takes effect on the
// next link without restarting the ones that are up.
type CertHolder struct {
	p atomic.Pointer[tls.Certificate]
}

// NewCertHolder returns a holder with c in it (c may be nil).
func NewCertHolder(c *tls.Certificate) *CertHolder {
	h := &CertHolder{}
	if c != nil {
		h.Store(c)
	}
	return h
}

// Load returns the current certificate, or nil.
func (h *CertHolder) Load() *tls.Certificate { return h.p.Load() }

// Store replaces the current certificate. Leaf is filled in if missing.
func (h *CertHolder) Store(c *tls.Certificate) {
	if c != nil && c.Leaf == nil && len(c.Certificate) > 0 {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil {
			cc := *c
			cc.Leaf = leaf
			c = &cc
		}
	}
	h.p.Store(c)
}

// Reload loads certFile and keyFile (LoadKeyPair) and stores them.
func (h *CertHolder) Reload(certFile, keyFile string) error {
	c, err := LoadKeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	h.Store(c)
	return nil
}

func (h *CertHolder) get() (*tls.Certificate, error) {
	if h == nil {
		return nil, errors.New("no certificate holder")
	}
	c := h.Load()
	if c == nil {
		return nil, errors.New("no node certificate loaded")
	}
	return c, nil
}

// TLSConfig returns the TLS 1.3-only configuration for one side of a link,
// for crypto/tls over TCP and for quic-go alike. self presents this node's
// current certificate; server selects the side; alpn names the protocol
// versions (required from the peer when given); allowed are the roles the
// peer may have (none: any role of our CA).
//
// Go's own chain verification is switched off (the server only requests a
// client certificate, the client sets InsecureSkipVerify) because it can
// neither consult our CRL nor check roles; VerifyConnection does the whole
// check instead, on both sides, and refuses a peer without a certificate.
// The server uses RequestClientCert rather than RequireAnyClientCert so that
// this refusal, too, is an ErrNoCertificate that Describe can name: Go calls
// VerifyConnection before it checks the client's CertificateVerify, so a
// certificate whose key the client does not hold still fails after us. VerifyConnection rather than VerifyPeerCertificate because
// it also runs when a session is resumed, and a resumed session must not
// outlive a revocation; the server turns session tickets off anyway (links
// are long-lived, and QUIC 0-RTT data could be replayed).
//
// There is no host name check: a link is authorized by the peer's role in
// our PKI, not by DNS. A caller that expects one particular peer compares
// Identity(state.PeerCertificates[0]) after the handshake.
func (v *Verifier) TLSConfig(self *CertHolder, server bool, alpn []string, allowed ...Role) *tls.Config {
	allowed = slices.Clone(allowed)
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS13,
		MaxVersion: tls.VersionTLS13,
		NextProtos: slices.Clone(alpn),
	}
	usage := x509.ExtKeyUsageServerAuth
	if server {
		usage = x509.ExtKeyUsageClientAuth
		cfg.ClientAuth = tls.RequestClientCert // required by VerifyConnection
		cfg.SessionTicketsDisabled = true
		cfg.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return self.get() }
	} else {
		cfg.InsecureSkipVerify = true // VerifyConnection below does the verification
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return self.get() }
	}
	cfg.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return certErr(ErrNoCertificate, "peer sent no certificate")
		}
		if err := v.verifyLeaf(cs.PeerCertificates[0], usage, allowed); err != nil {
			return err
		}
		if len(alpn) > 0 && !slices.Contains(alpn, cs.NegotiatedProtocol) {
			return fmt.Errorf("peer negotiated no common protocol (offered %q, want one of %q)", cs.NegotiatedProtocol, alpn)
		}
		return nil
	}
	return cfg
}
