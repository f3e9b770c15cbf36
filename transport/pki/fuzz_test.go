package pki

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fixedCA is a CA built from a constant seed and constant times, so seeds
// committed under testdata/fuzz stay signed by the CA the fuzz targets
// trust. Ed25519 signatures are deterministic.
func fixedCA(t testing.TB, seed byte) *CA {
	t.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize))
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(int64(seed)),
		Subject:               pkix.Name{CommonName: fmt.Sprintf("Fuzz %d DaemonEye root CA", seed), Organization: []string{"Fuzz"}},
		NotBefore:             time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		NotAfter:              time.Date(2036, 1, 1, 0, 0, 0, 0, time.UTC),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &CA{cert: cert, key: key, Now: func() time.Time { return tmpl.NotBefore.Add(time.Hour) }}
	ca.crl, ca.crlPEM, err = ca.signCRL(big.NewInt(1), nil, ca.now())
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// fixedLeaf issues a certificate with a key from a constant seed.
func fixedLeaf(t testing.TB, ca *CA, role Role, name string) []byte {
	t.Helper()
	key := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{byte(len(name))}, ed25519.SeedSize))
	certPEM, err := ca.sign(role, name, key.Public().(ed25519.PublicKey), 0, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseCertificatePEM(certPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c.Raw
}

func crlSeeds(t testing.TB) map[string][]byte {
	ca, other := fixedCA(t, 1), fixedCA(t, 2)
	entries := []x509.RevocationListEntry{
		{SerialNumber: big.NewInt(1), RevocationTime: time.Date(2026, 2, 1, 0, 0, 0, 0, time.UTC), ReasonCode: ReasonKeyCompromise},
		{SerialNumber: new(big.Int).Lsh(big.NewInt(1), 127), RevocationTime: time.Date(2026, 2, 2, 0, 0, 0, 0, time.UTC)},
	}
	full, fullPEM, err := ca.signCRL(big.NewInt(7), entries, ca.now())
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"empty-pem":    ca.crlPEM,
		"entries-pem":  fullPEM,
		"entries-der":  full.Raw,
		"other-ca":     other.crlPEM,
		"truncated":    full.Raw[:len(full.Raw)/2],
		"cert-pem":     encodeCert(ca.cert.Raw),
		"bad-pem":      []byte("-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"),
		"broken-armor": []byte("-----BEGIN X509 CRL-----\n"),
		"empty":        {},
	}
}

func identitySeeds(t testing.TB) map[string][]byte {
	ca := fixedCA(t, 1)
	two := selfSigned(t, "web-1", "daemoneye://agent/web-1", "daemoneye://center/web-1")
	csr, err := NewCSR(ed25519.NewKeyFromSeed(make([]byte, 32)), RoleAgent, "web-1")
	if err != nil {
		t.Fatal(err)
	}
	return map[string][]byte{
		"agent":        fixedLeaf(t, ca, RoleAgent, "web-1"),
		"operator":     fixedLeaf(t, ca, RoleOperator, "alice"),
		"two-uris":     two.Raw,
		"csr":          csr,
		"uri":          []byte("daemoneye://proxy/px-1"),
		"uri-extra":    []byte("daemoneye://u@proxy/px-1?x#y"),
		"uri-escaped":  []byte("daemoneye://agent/web%2D1"),
		"uri-bad-role": []byte("daemoneye://root/x"),
	}
}

func FuzzParseCRL(f *testing.F) {
	for _, s := range crlSeeds(f) {
		f.Add(s)
	}
	ca := fixedCA(f, 1)
	f.Fuzz(func(t *testing.T, data []byte) {
		crl, err := ParseCRL(data, ca.cert)
		if err != nil {
			return
		}
		if crl.Number == nil || crl.CheckSignatureFrom(ca.cert) != nil {
			t.Fatalf("ParseCRL accepted a crl without a number or a valid signature")
		}
		v, err := NewVerifier(ca.cert, crl)
		if err != nil {
			t.Fatalf("NewVerifier refused a crl ParseCRL accepted: %v", err)
		}
		if err := v.SetCRL(crl); err != nil {
			t.Fatalf("SetCRL of the same crl: %v", err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			findRevoked(crl, e.SerialNumber)
		}
	})
}

func FuzzIdentity(f *testing.F) {
	for _, s := range identitySeeds(f) {
		f.Add(s)
	}
	ca := fixedCA(f, 1)
	v, err := NewVerifier(ca.cert, ca.crl)
	if err != nil {
		f.Fatal(err)
	}
	v.Now = ca.Now
	check := func(t *testing.T, role Role, name string) {
		if !role.Valid() || ValidateName(name) != nil {
			t.Fatalf("accepted identity %q/%q", role, name)
		}
		r, n, err := parseIdentityURI(IdentityURI(role, name))
		if err != nil || r != role || n != name {
			t.Fatalf("identity %s/%s does not round-trip: %s/%s, %v", role, name, r, n, err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if c, err := x509.ParseCertificate(data); err == nil {
			if role, name, err := Identity(c); err == nil {
				check(t, role, name)
				if c.Subject.CommonName != name {
					t.Fatalf("identity %s/%s with common name %q", role, name, c.Subject.CommonName)
				}
			}
			v.VerifyPeer([][]byte{data}, RoleAgent)
		}
		if u, err := url.Parse(string(data)); err == nil {
			if role, name, err := parseIdentityURI(u); err == nil {
				check(t, role, name)
			}
		}
		if csr, err := x509.ParseCertificateRequest(data); err == nil {
			if role, name, err := identityFrom(csr.Subject.CommonName, csr.URIs); err == nil {
				check(t, role, name)
			}
		}
	})
}

// TestWriteFuzzSeeds regenerates the committed seed corpus:
// PKI_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds ./transport/pki
func TestWriteFuzzSeeds(t *testing.T) {
	if os.Getenv("PKI_WRITE_FUZZ_SEEDS") == "" {
		t.Skip("set PKI_WRITE_FUZZ_SEEDS=1 to rewrite testdata/fuzz")
	}
	for target, seeds := range map[string]map[string][]byte{"FuzzParseCRL": crlSeeds(t), "FuzzIdentity": identitySeeds(t)} {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, data := range seeds {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestFuzzSeedsValid checks that the committed seeds that should pass
// still do: the corpus is only useful if it reaches past the signature
// check into the accepting paths.
func TestFuzzSeedsValid(t *testing.T) {
	ca := fixedCA(t, 1)
	v, err := NewVerifier(ca.cert, ca.crl)
	if err != nil {
		t.Fatal(err)
	}
	v.Now = ca.Now
	read := func(target, name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "fuzz", target, name))
		if err != nil {
			t.Fatalf("seed %s/%s (PKI_WRITE_FUZZ_SEEDS=1 go test -run TestWriteFuzzSeeds): %v", target, name, err)
		}
		body, ok := strings.CutPrefix(strings.TrimSpace(string(b)), "go test fuzz v1\n[]byte(")
		body, ok2 := strings.CutSuffix(body, ")")
		data, err := strconv.Unquote(body)
		if !ok || !ok2 || err != nil {
			t.Fatalf("seed %s/%s is not a []byte corpus entry", target, name)
		}
		return []byte(data)
	}
	for _, name := range []string{"empty-pem", "entries-pem", "entries-der"} {
		if _, err := ParseCRL(read("FuzzParseCRL", name), ca.cert); err != nil {
			t.Errorf("seed FuzzParseCRL/%s: %v", name, err)
		}
	}
	for _, name := range []string{"agent", "operator"} {
		if _, err := v.VerifyPeer([][]byte{read("FuzzIdentity", name)}); err != nil {
			t.Errorf("seed FuzzIdentity/%s: %v", name, err)
		}
	}
}

// FuzzServerKeyPair: the API's certificate chain and key files
// (center.api.tls). Accepted input is a parsable leaf and a key that
// matches it; WebCAOf reads any accepted chain.
func FuzzServerKeyPair(f *testing.F) {
	ca, err := Init(f.TempDir(), "Fuzz", 0)
	if err != nil {
		f.Fatal(err)
	}
	apiCert, apiKey, err := ca.Issue(RoleAPI, "center-1", IssueOptions{Loopback: true})
	if err != nil {
		f.Fatal(err)
	}
	nodeCert, nodeKey, err := ca.Issue(RoleAgent, "web-1", IssueOptions{})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(apiCert, apiKey)
	f.Add(nodeCert, nodeKey)
	f.Add(apiCert, nodeKey)
	f.Add(ca.CertPEM(), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, certPEM, keyPEM []byte) {
		c, err := ServerKeyPair(certPEM, keyPEM)
		if err != nil {
			return
		}
		if c.Leaf == nil || len(c.Certificate) == 0 || !publicKeyOf(c.PrivateKey).Equal(c.Leaf.PublicKey) {
			t.Fatalf("ServerKeyPair accepted a pair whose key does not match its leaf")
		}
		if w := WebCAOf(c, ca.Certificate()); w != nil && checkWebCA(ca.Certificate(), w) != nil {
			t.Fatalf("WebCAOf returned a certificate the root did not certify")
		}
	})
}
