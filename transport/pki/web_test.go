package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"software.sslmate.com/src/go-pkcs12"
)

func webPair(t *testing.T, ca *CA, role Role, name string, opts IssueOptions) *tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(role, name, opts)
	if err != nil {
		t.Fatalf("Issue(%s, %s): %v", role, name, err)
	}
	c, err := ServerKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("ServerKeyPair(%s/%s): %v", role, name, err)
	}
	return c
}

func TestWebCA(t *testing.T) {
	ca := newCA(t)
	w := ca.Web()
	if w == nil {
		t.Fatal("Init made no web CA")
	}
	self, cross := w.Certificate(), w.Cross()
	if pub, ok := self.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Fatalf("web CA key is %T, want ECDSA P-256", self.PublicKey)
	}
	if err := self.CheckSignatureFrom(self); err != nil {
		t.Errorf("web-ca.crt is not self-signed: %v", err)
	}
	if err := cross.CheckSignatureFrom(ca.Certificate()); err != nil {
		t.Errorf("web-ca-cross.crt is not signed by the root: %v", err)
	}
	if !self.IsCA || self.MaxPathLen != 0 || !self.MaxPathLenZero || string(self.SubjectKeyId) != string(cross.SubjectKeyId) {
		t.Errorf("web CA: IsCA=%v pathlen %d/%v, key ids %x %x: want a leaf-only CA, one key id in both certificates",
			self.IsCA, self.MaxPathLen, self.MaxPathLenZero, self.SubjectKeyId, cross.SubjectKeyId)
	}

	loaded, err := LoadCA(ca.Dir())
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if loaded.Web() == nil || !loaded.Web().Certificate().Equal(self) {
		t.Fatal("LoadCA did not load the web CA")
	}
	if _, err := loaded.InitWeb(); !errors.Is(err, ErrCAExists) {
		t.Errorf("InitWeb over an existing web CA: %v, want ErrCAExists", err)
	}

	// The API's certificate: ECDSA, ServerAuth only, with the names asked
	// for, and the cross certificate after it.
	api := webPair(t, loaded, RoleAPI, "center-1", IssueOptions{DNSNames: []string{"soc.example"}, Loopback: true})
	leaf := api.Leaf
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Errorf("api key is %T, want ECDSA", leaf.PublicKey)
	}
	if len(api.Certificate) != 2 {
		t.Fatalf("api chain has %d certificates, want the leaf and the cross certificate", len(api.Certificate))
	}
	if len(leaf.ExtKeyUsage) != 1 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("api ext key usage %v, want server auth only", leaf.ExtKeyUsage)
	}
	if d := leaf.NotAfter.Sub(leaf.NotBefore); d < DefaultAPITTL {
		t.Errorf("api certificate lives %v, want %v", d, DefaultAPITTL)
	}
	if got := WebCAOf(api, ca.Certificate()); got == nil || !got.Equal(cross) {
		t.Errorf("WebCAOf(api chain) = %v, want the cross certificate", got)
	}
	// A client trusting only the root verifies it by name (Go's verifier:
	// the CLI and the demo), through the cross certificate.
	roots := x509.NewCertPool()
	roots.AddCert(ca.Certificate())
	inter := x509.NewCertPool()
	x, _ := x509.ParseCertificate(api.Certificate[1])
	inter.AddCert(x)
	for _, name := range []string{"soc.example", "127.0.0.1", "localhost"} {
		if _, err := leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("the api certificate does not verify as %s against the Ed25519 root: %v", name, err)
		}
	}
	// A browser trusting only web-ca.crt verifies it too.
	anchors := x509.NewCertPool()
	anchors.AddCert(self)
	if _, err := leaf.Verify(x509.VerifyOptions{DNSName: "soc.example", Roots: anchors}); err != nil {
		t.Errorf("the api certificate does not verify against web-ca.crt: %v", err)
	}

	// An operator's browser certificate is accepted by the root's
	// Verifier through the web CA; an api certificate is not an operator.
	op := webPair(t, loaded, RoleOperator, "alice", IssueOptions{Web: true})
	v := verifier(t, loaded)
	if err := v.VerifyCertificate(op.Leaf, RoleOperator); err != nil {
		t.Errorf("web operator certificate refused: %v", err)
	}
	if err := v.VerifyCertificate(leaf, RoleOperator); !errors.Is(err, ErrWrongRole) {
		t.Errorf("api certificate as an operator: %v, want ErrWrongRole", err)
	}
	// Without the web CA a verifier does not know it.
	bare, err := NewVerifier(ca.Certificate(), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := bare.VerifyCertificate(op.Leaf, RoleOperator); !errors.Is(err, ErrUnknownCA) {
		t.Errorf("web operator certificate without SetWebCA: %v, want ErrUnknownCA", err)
	}
	// Revocation through the root's CRL: the leaf, and the web CA itself.
	opPEM := encodeCert(op.Leaf.Raw)
	if err := loaded.RevokeCert(opPEM, ReasonKeyCompromise); err != nil {
		t.Fatalf("RevokeCert(web operator): %v", err)
	}
	if err := verifier(t, loaded).VerifyCertificate(op.Leaf, RoleOperator); !errors.Is(err, ErrRevoked) {
		t.Errorf("revoked web operator certificate: %v, want ErrRevoked", err)
	}
	bob := webPair(t, loaded, RoleOperator, "bob", IssueOptions{Web: true})
	if err := loaded.Revoke(cross.SerialNumber, ReasonCACompromise); err != nil {
		t.Fatal(err)
	}
	if err := verifier(t, loaded).VerifyCertificate(bob.Leaf, RoleOperator); !errors.Is(err, ErrRevoked) {
		t.Errorf("operator certificate under a revoked web CA: %v, want ErrRevoked", err)
	}
}

func TestWebIssueRefusals(t *testing.T) {
	ca := newCA(t)
	for _, c := range []struct {
		role Role
		opts IssueOptions
		want string
	}{
		{RoleAgent, IssueOptions{Web: true}, "api and operator certificates only"},
		{RoleCenter, IssueOptions{Web: true, Loopback: true}, "api and operator certificates only"},
		{RoleAPI, IssueOptions{}, "needs the names or addresses"},
		{RoleOperator, IssueOptions{Web: true, DNSNames: []string{"x"}}, "client-only"},
	} {
		if _, _, err := ca.Issue(c.role, "n", c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Issue(%s, %+v): %v, want an error with %q", c.role, c.opts, err, c.want)
		}
	}
	// A CA directory without a web CA (as older ones are).
	for _, f := range []string{WebCACertFile, WebCACrossFile, WebCAKeyFile} {
		if err := os.Remove(filepath.Join(ca.Dir(), f)); err != nil {
			t.Fatal(err)
		}
	}
	old, err := LoadCA(ca.Dir())
	if err != nil {
		t.Fatalf("LoadCA without a web CA: %v", err)
	}
	if _, _, err := old.Issue(RoleAPI, "c", IssueOptions{Loopback: true}); !errors.Is(err, ErrNoWebCA) {
		t.Errorf("api certificate without a web CA: %v, want ErrNoWebCA", err)
	}
	if _, err := old.InitWeb(); err != nil {
		t.Fatalf("InitWeb on a CA without one: %v", err)
	}
	if _, _, err := old.Issue(RoleAPI, "c", IssueOptions{IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}}); err != nil {
		t.Errorf("api certificate after InitWeb: %v", err)
	}
	// A mismatched key file is refused at load.
	other := newCA(t)
	b, _ := os.ReadFile(filepath.Join(other.Dir(), WebCAKeyFile))
	if err := os.WriteFile(filepath.Join(ca.Dir(), WebCAKeyFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(ca.Dir()); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("LoadCA with another web CA's key: %v, want a mismatch error", err)
	}
}

func TestWebPKCS12(t *testing.T) {
	ca := newCA(t)
	certPEM, keyPEM, err := ca.Issue(RoleOperator, "alice", IssueOptions{Web: true, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	p12, err := ca.Web().PKCS12(certPEM, keyPEM, "correct horse")
	if err != nil {
		t.Fatalf("PKCS12: %v", err)
	}
	key, cert, chain, err := pkcs12.DecodeChain(p12, "correct horse")
	if err != nil {
		t.Fatalf("decode the PKCS#12 file: %v", err)
	}
	if _, n, _ := Identity(cert); n != "alice" {
		t.Errorf("PKCS#12 certificate is %v, want alice's", cert.Subject)
	}
	if !key.(*ecdsa.PrivateKey).PublicKey.Equal(cert.PublicKey) {
		t.Error("PKCS#12 key does not match its certificate")
	}
	if len(chain) != 1 || !chain[0].Equal(ca.Web().Certificate()) {
		t.Errorf("PKCS#12 chain %d certificates, want web-ca.crt", len(chain))
	}
	if _, _, _, err := pkcs12.DecodeChain(p12, "wrong"); err == nil {
		t.Error("PKCS#12 decoded with a wrong password")
	}
	// An Ed25519 node pair is not a browser's.
	nodeCert, nodeKey, err := ca.Issue(RoleAgent, "web-1", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Web().PKCS12(nodeCert, nodeKey, "x"); err == nil {
		t.Error("PKCS12 of a root-issued node certificate succeeded")
	}
	// LoadKeyPair (nodes) stays Ed25519-only.
	if _, err := KeyPair(certPEM, keyPEM); err == nil || !strings.Contains(err.Error(), "ed25519") {
		t.Errorf("KeyPair of an ECDSA pair: %v, want an ed25519 refusal", err)
	}
}
