package transport

import (
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Identity is what a node needs for its links: its certificate (renewable
// in place), the verifier of its peers with the current CRL, and its name.
type Identity struct {
	Holder   *pki.CertHolder
	Verifier *pki.Verifier
	Role     pki.Role
	Name     string
	CRLPath  string // where each accepted CRL is saved
}

// LoadIdentity reads a node's certificate, key and CA, and the last CRL it
// saved at crlPath (if any).
func LoadIdentity(certFile, keyFile, caFile, crlPath string) (*Identity, error) {
	if certFile == "" || keyFile == "" || caFile == "" {
		return nil, errors.New("tls: cert, key and ca must all be set")
	}
	cert, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, err
	}
	v, err := pki.LoadVerifier(caFile, crlPath)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("tls: %w", err)
	}
	role, name, err := pki.Identity(leaf)
	if err != nil {
		return nil, fmt.Errorf("tls: %s: %w", certFile, err)
	}
	if err := v.VerifyCertificate(leaf); err != nil {
		return nil, fmt.Errorf("tls: our own certificate %s does not verify: %w", certFile, err)
	}
	return &Identity{Holder: pki.NewCertHolder(cert), Verifier: v, Role: role, Name: name, CRLPath: crlPath}, nil
}

// Key is the node's private key: it also signs the node's batches.
func (id *Identity) Key() ed25519.PrivateKey {
	return id.Holder.Load().PrivateKey.(ed25519.PrivateKey)
}

// CertDER is the node's current certificate.
func (id *Identity) CertDER() []byte { return id.Holder.Load().Certificate[0] }

// ClientTLS is the configuration for dialing a parent of one of allowed roles.
func (id *Identity) ClientTLS(allowed ...pki.Role) *tls.Config {
	return id.Verifier.TLSConfig(id.Holder, false, []string{ALPN}, allowed...)
}

// ServerTLS is the configuration for accepting children of allowed roles.
func (id *Identity) ServerTLS(allowed ...pki.Role) *tls.Config {
	return id.Verifier.TLSConfig(id.Holder, true, []string{ALPN}, allowed...)
}

// ApplyCRL checks a CRL pushed down the tree, makes it current and saves it.
// It returns false (and no error) when the CRL is the one already in force.
func (id *Identity) ApplyCRL(der []byte) (bool, error) {
	crl, err := pki.ParseCRL(der, id.Verifier.CA())
	if err != nil {
		return false, err
	}
	if cur := id.Verifier.CRL(); cur != nil && cur.Number.Cmp(crl.Number) == 0 {
		return false, nil
	}
	if err := id.Verifier.SetCRL(crl); err != nil {
		return false, err
	}
	if id.CRLPath != "" {
		if err := pki.SaveCRL(id.CRLPath, crl); err != nil {
			return true, err
		}
	}
	return true, nil
}
