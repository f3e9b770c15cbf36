package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

const testALPN = "daemoneye/1"

func newCA(t testing.TB) *CA {
	t.Helper()
	ca, err := Init(t.TempDir(), "Acme Enclave", 0)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	return ca
}

// issueAt issues a certificate as if the CA's clock read at.
func issueAt(t testing.TB, ca *CA, at time.Time, role Role, name string, opts IssueOptions) *tls.Certificate {
	t.Helper()
	saved := ca.Now
	ca.Now = func() time.Time { return at }
	defer func() { ca.Now = saved }()
	return issue(t, ca, role, name, opts)
}

func issue(t testing.TB, ca *CA, role Role, name string, opts IssueOptions) *tls.Certificate {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(role, name, opts)
	if err != nil {
		t.Fatalf("Issue(%s, %s): %v", role, name, err)
	}
	c, err := KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("KeyPair(%s/%s): %v", role, name, err)
	}
	return c
}

func verifier(t testing.TB, ca *CA) *Verifier {
	t.Helper()
	v, err := ca.Verifier()
	if err != nil {
		t.Fatalf("Verifier: %v", err)
	}
	return v
}

func fileMode(t *testing.T, path string) fs.FileMode {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Mode().Perm()
}

func TestInitLoadRoundTrip(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "ca")
	ca, err := Init(dir, "Acme Enclave", 5*365*24*time.Hour)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	for file, want := range map[string]fs.FileMode{CAKeyFile: 0o600, CACertFile: 0o644, CRLFile: 0o644,
		WebCAKeyFile: 0o600, WebCACertFile: 0o644, WebCACrossFile: 0o644} {
		if got := fileMode(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s mode = %04o, want %04o", file, got, want)
		}
	}
	if got := fileMode(t, dir); got != 0o700 {
		t.Errorf("ca dir mode = %04o, want 0700", got)
	}
	c := ca.Certificate()
	if !c.IsCA || c.MaxPathLen != 1 || c.KeyUsage != x509.KeyUsageCertSign|x509.KeyUsageCRLSign {
		t.Errorf("ca cert: IsCA=%v MaxPathLen=%d zero=%v KeyUsage=%v, want a path-length-1 CA (the web CA) that signs certs and CRLs",
			c.IsCA, c.MaxPathLen, c.MaxPathLenZero, c.KeyUsage)
	}
	if _, ok := c.PublicKey.(ed25519.PublicKey); !ok {
		t.Errorf("ca key is %T, want ed25519", c.PublicKey)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d < 5*365*24*time.Hour || d > 5*365*24*time.Hour+2*time.Minute {
		t.Errorf("ca validity = %v, want 5 years", d)
	}

	loaded, err := LoadCA(dir)
	if err != nil {
		t.Fatalf("LoadCA: %v", err)
	}
	if !loaded.Certificate().Equal(c) {
		t.Error("LoadCA returned a different certificate")
	}
	if !loaded.key.Equal(ca.key) {
		t.Error("LoadCA returned a different key")
	}
	crl := loaded.CRL()
	if crl.Number.Cmp(big.NewInt(1)) != 0 || len(crl.RevokedCertificateEntries) != 0 {
		t.Errorf("initial crl: number %v with %d entries, want number 1 and none", crl.Number, len(crl.RevokedCertificateEntries))
	}
	// A certificate from the loaded CA verifies against the original.
	agent := issue(t, loaded, RoleAgent, "web-1", IssueOptions{})
	if err := verifier(t, ca).VerifyCertificate(agent.Leaf, RoleAgent); err != nil {
		t.Errorf("certificate issued by the loaded CA: %v", err)
	}
}

func TestInitRefusesOverwrite(t *testing.T) {
	ca := newCA(t)
	before, _ := os.ReadFile(filepath.Join(ca.Dir(), CAKeyFile))
	_, err := Init(ca.Dir(), "Other", 0)
	if !errors.Is(err, ErrCAExists) {
		t.Fatalf("second Init: err = %v, want ErrCAExists", err)
	}
	if !strings.Contains(err.Error(), "refusing to overwrite") {
		t.Errorf("error %q should say it refuses to overwrite", err)
	}
	after, _ := os.ReadFile(filepath.Join(ca.Dir(), CAKeyFile))
	if !bytes.Equal(before, after) {
		t.Error("ca.key changed after a refused Init")
	}
	// A lone leftover file is enough to refuse.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, CRLFile), []byte("x"), 0o644)
	if _, err := Init(dir, "Acme", 0); !errors.Is(err, ErrCAExists) {
		t.Errorf("Init over a leftover crl.pem: err = %v, want ErrCAExists", err)
	}
}

func TestInitBadArguments(t *testing.T) {
	for _, tc := range []struct {
		name, org string
		validity  time.Duration
	}{
		{"empty org", "", 0},
		{"control char", "Acme\n", 0},
		{"too short", "Acme", time.Minute},
	} {
		if _, err := Init(t.TempDir(), tc.org, tc.validity); err == nil {
			t.Errorf("%s: Init succeeded, want an error", tc.name)
		}
	}
}

func TestLoadCAErrors(t *testing.T) {
	other := newCA(t)
	rsaLike, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	ecDER, _ := x509.MarshalPKCS8PrivateKey(rsaLike)
	ecPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: ecDER})

	for _, tc := range []struct {
		name   string
		break_ func(dir string)
		is     error
		want   string
	}{
		{"missing dir", func(dir string) { os.RemoveAll(dir) }, fs.ErrNotExist, "ca.crt"},
		{"missing key", func(dir string) { os.Remove(filepath.Join(dir, CAKeyFile)) }, fs.ErrNotExist, "ca.key"},
		{"missing crl", func(dir string) { os.Remove(filepath.Join(dir, CRLFile)) }, fs.ErrNotExist, "crl.pem"},
		{"world-readable key", func(dir string) { os.Chmod(filepath.Join(dir, CAKeyFile), 0o644) }, ErrKeyPermissions, "mode 0644"},
		{"group-readable key", func(dir string) { os.Chmod(filepath.Join(dir, CAKeyFile), 0o640) }, ErrKeyPermissions, "mode 0640"},
		{"key of another ca", func(dir string) {
			b, _ := os.ReadFile(filepath.Join(other.Dir(), CAKeyFile))
			os.WriteFile(filepath.Join(dir, CAKeyFile), b, 0o600)
		}, nil, "does not match"},
		{"ecdsa key", func(dir string) { os.WriteFile(filepath.Join(dir, CAKeyFile), ecPEM, 0o600) }, nil, "key is ecdsa, want ed25519"},
		{"crl of another ca", func(dir string) { os.WriteFile(filepath.Join(dir, CRLFile), other.CRLPEM(), 0o644) }, ErrBadCRL, "not signed by our ca"},
		{"garbage cert", func(dir string) { os.WriteFile(filepath.Join(dir, CACertFile), []byte("hello"), 0o644) }, nil, "no pem data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca := newCA(t)
			tc.break_(ca.Dir())
			_, err := LoadCA(ca.Dir())
			if err == nil {
				t.Fatal("LoadCA succeeded, want an error")
			}
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.is)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %q, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestIssueRoles(t *testing.T) {
	ca := newCA(t)
	for _, tc := range []struct {
		role    Role
		name    string
		opts    IssueOptions
		ttl     time.Duration
		usages  []x509.ExtKeyUsage
		dns     []string
		ips     []string
		wantErr string
	}{
		{role: RoleAgent, name: "web-1", ttl: 24 * time.Hour,
			usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{role: RoleProxy, name: "px.dmz_2", opts: IssueOptions{DNSNames: []string{"px2.enclave.example"}, IPAddresses: []net.IP{net.ParseIP("10.0.0.2")}, Loopback: true},
			ttl: 24 * time.Hour, usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
			dns: []string{"px2.enclave.example", "localhost"}, ips: []string{"10.0.0.2", "127.0.0.1", "::1"}},
		{role: RoleCenter, name: "SC", opts: IssueOptions{TTL: 2 * time.Hour}, ttl: 2 * time.Hour,
			usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}},
		{role: RoleOperator, name: "alice", ttl: 8 * time.Hour, usages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}},
		{role: RoleOperator, name: "bob", opts: IssueOptions{Loopback: true}, wantErr: "client-only"},
		{role: "admin", name: "eve", wantErr: "unknown role"},
		{role: RoleAgent, name: "", wantErr: "empty name"},
		{role: RoleAgent, name: "a/b", wantErr: "not allowed"},
		{role: RoleAgent, name: "..", wantErr: "must not start"},
		{role: RoleAgent, name: "-rf", wantErr: "must not start"},
		{role: RoleAgent, name: strings.Repeat("a", 65), wantErr: "at most 64"},
		{role: RoleAgent, name: "h\u00e9", wantErr: "not allowed"},
		{role: RoleAgent, name: "web-9", opts: IssueOptions{DNSNames: []string{"*.example"}}, wantErr: "invalid dns name"},
		{role: RoleAgent, name: "web-9", opts: IssueOptions{TTL: -time.Hour}, wantErr: "negative ttl"},
	} {
		t.Run(string(tc.role)+"/"+tc.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.Issue(tc.role, tc.name, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Issue: err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Issue: %v", err)
			}
			pair, err := KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			c := pair.Leaf
			role, name, err := Identity(c)
			if err != nil || role != tc.role || name != tc.name {
				t.Errorf("Identity = %s, %q, %v; want %s, %q", role, name, err, tc.role, tc.name)
			}
			if got := c.URIs; len(got) != 1 || got[0].String() != "daemoneye://"+string(tc.role)+"/"+tc.name {
				t.Errorf("URIs = %v, want [daemoneye://%s/%s]", got, tc.role, tc.name)
			}
			if got := c.NotAfter.Sub(c.NotBefore); got != tc.ttl+time.Minute {
				t.Errorf("lifetime = %v, want ttl %v plus 1m backdating", got, tc.ttl)
			}
			if !slices.Equal(c.ExtKeyUsage, tc.usages) {
				t.Errorf("ExtKeyUsage = %v, want %v", c.ExtKeyUsage, tc.usages)
			}
			if c.IsCA || c.KeyUsage != x509.KeyUsageDigitalSignature {
				t.Errorf("IsCA=%v KeyUsage=%v, want a digital-signature end entity", c.IsCA, c.KeyUsage)
			}
			if !slices.Equal(c.DNSNames, tc.dns) {
				t.Errorf("DNSNames = %v, want %v", c.DNSNames, tc.dns)
			}
			var ips []string
			for _, ip := range c.IPAddresses {
				ips = append(ips, ip.String())
			}
			if !slices.Equal(ips, tc.ips) {
				t.Errorf("IPAddresses = %v, want %v", ips, tc.ips)
			}
			if c.SerialNumber.Sign() <= 0 || c.SerialNumber.BitLen() > 128 || c.SerialNumber.BitLen() < 64 {
				t.Errorf("serial %s is not a random positive 128-bit number", FormatSerial(c.SerialNumber))
			}
			if err := c.CheckSignatureFrom(ca.Certificate()); err != nil {
				t.Errorf("not signed by the CA: %v", err)
			}
		})
	}
}

func TestIssueClampsToCAExpiry(t *testing.T) {
	ca := newCA(t)
	c := issueAt(t, ca, ca.Certificate().NotAfter.Add(-time.Hour), RoleAgent, "web-1", IssueOptions{})
	if !c.Leaf.NotAfter.Equal(ca.Certificate().NotAfter) {
		t.Errorf("NotAfter = %v, want the CA's %v", c.Leaf.NotAfter, ca.Certificate().NotAfter)
	}
	ca.Now = func() time.Time { return ca.Certificate().NotAfter.Add(time.Second) }
	if _, _, err := ca.Issue(RoleAgent, "web-2", IssueOptions{}); err == nil || !strings.Contains(err.Error(), "ca certificate expired") {
		t.Errorf("Issue after CA expiry: err = %v, want ca certificate expired", err)
	}
}

func TestWriteAndLoadKeyPair(t *testing.T) {
	ca := newCA(t)
	certPEM, keyPEM, err := ca.Issue(RoleAgent, "web-1", IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "node")
	if err := WriteKeyPair(dir, "web-1", certPEM, keyPEM); err != nil {
		t.Fatalf("WriteKeyPair: %v", err)
	}
	crt, key := filepath.Join(dir, "web-1.crt"), filepath.Join(dir, "web-1.key")
	if got := fileMode(t, crt); got != 0o644 {
		t.Errorf("web-1.crt mode = %04o, want 0644", got)
	}
	if got := fileMode(t, key); got != 0o600 {
		t.Errorf("web-1.key mode = %04o, want 0600", got)
	}
	pair, err := LoadKeyPair(crt, key)
	if err != nil {
		t.Fatalf("LoadKeyPair: %v", err)
	}
	if pair.Leaf == nil || pair.Leaf.Subject.CommonName != "web-1" {
		t.Errorf("LoadKeyPair leaf = %v, want web-1", pair.Leaf)
	}
	// Overwrite (renewal) keeps the modes and leaves no temporary files.
	certPEM2, keyPEM2, _ := ca.Issue(RoleAgent, "web-1", IssueOptions{})
	if err := WriteKeyPair(dir, "web-1", certPEM2, keyPEM2); err != nil {
		t.Fatalf("WriteKeyPair over the old pair: %v", err)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("dir holds %d files after two writes, want 2 (no temp files left)", len(ents))
	}
	if got := fileMode(t, key); got != 0o600 {
		t.Errorf("rewritten key mode = %04o, want 0600", got)
	}
	if err := WriteKeyPair(dir, "../etc/x", certPEM, keyPEM); err == nil {
		t.Error("WriteKeyPair accepted a name with a slash")
	}
	if err := WriteKeyPair(dir, "web-1", keyPEM, certPEM); err == nil {
		t.Error("WriteKeyPair accepted a key where the certificate goes")
	}

	os.Chmod(key, 0o604)
	if _, err := LoadKeyPair(crt, key); !errors.Is(err, ErrKeyPermissions) || !strings.Contains(err.Error(), "0604") {
		t.Errorf("LoadKeyPair with a world-readable key: err = %v, want ErrKeyPermissions naming 0604", err)
	}
	os.Chmod(key, 0o600)
	os.WriteFile(key, keyPEM, 0o600) // the first key does not match the second certificate
	if _, err := LoadKeyPair(crt, key); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Errorf("LoadKeyPair with a mismatched key: err = %v, want does not match", err)
	}
}

// selfSigned makes a certificate with arbitrary identity fields, for the
// parser tests.
func selfSigned(t testing.TB, cn string, uris ...string) *x509.Certificate {
	t.Helper()
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Unix(1e9, 0), NotAfter: time.Unix(2e9, 0)}
	for _, s := range uris {
		u, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, u)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestIdentityRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		cn   string
		uris []string
		want string
	}{
		{"no uri", "web-1", nil, "no daemoneye:// identity"},
		{"only other uris", "web-1", []string{"spiffe://x/y"}, "no daemoneye:// identity"},
		{"two identities", "web-1", []string{"daemoneye://agent/web-1", "daemoneye://center/web-1"}, "exactly one"},
		{"cn mismatch", "web-2", []string{"daemoneye://agent/web-1"}, "does not match"},
		{"unknown role", "web-1", []string{"daemoneye://root/web-1"}, "unknown role"},
		{"query", "web-1", []string{"daemoneye://agent/web-1?x=1"}, "extra parts"},
		{"user", "web-1", []string{"daemoneye://u@agent/web-1"}, "extra parts"},
		{"nested path", "a/b", []string{"daemoneye://agent/a/b"}, "not allowed"},
		{"escaped path", "web-1", []string{"daemoneye://agent/web%2D1"}, "extra parts"},
		{"port", "web-1", []string{"daemoneye://agent:1/web-1"}, "unknown role"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := Identity(selfSigned(t, tc.cn, tc.uris...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Identity: err = %v, want one containing %q", err, tc.want)
			}
		})
	}
	if role, name, err := Identity(selfSigned(t, "web-1", "spiffe://x/y", "daemoneye://agent/web-1")); err != nil || role != RoleAgent || name != "web-1" {
		t.Errorf("Identity beside a foreign uri = %s, %s, %v; want agent, web-1", role, name, err)
	}
}

// handshake runs a real TLS handshake over loopback TCP and returns what
// each side saw. The server writes one byte after its handshake so that the
// client, whose TLS 1.3 handshake finishes first, learns about a refusal.
func handshake(t *testing.T, server, client *tls.Config) (srv, cli tls.ConnectionState, srvErr, cliErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	type result struct {
		state tls.ConnectionState
		err   error
	}
	done := make(chan result, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Server(c, server)
		if err := tc.Handshake(); err != nil {
			done <- result{err: err}
			return
		}
		_, err = tc.Write([]byte{1})
		done <- result{state: tc.ConnectionState(), err: err}
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	tc := tls.Client(c, client)
	cliErr = tc.Handshake()
	if cliErr == nil {
		cli = tc.ConnectionState()
		_, cliErr = io.ReadFull(tc, make([]byte, 1))
	}
	tc.Close()
	r := <-done
	return r.state, cli, r.err, cliErr
}

func checkIdentity(t *testing.T, who string, st tls.ConnectionState, role Role, name string) {
	t.Helper()
	if len(st.PeerCertificates) == 0 {
		t.Errorf("%s saw no peer certificate", who)
		return
	}
	r, n, err := Identity(st.PeerCertificates[0])
	if err != nil || r != role || n != name {
		t.Errorf("%s sees peer %s/%s (%v), want %s/%s", who, r, n, err, role, name)
	}
}

func TestHandshakeAgentProxy(t *testing.T) {
	ca := newCA(t)
	v := verifier(t, ca)
	proxy := NewCertHolder(issue(t, ca, RoleProxy, "px-1", IssueOptions{Loopback: true}))
	agent := NewCertHolder(issue(t, ca, RoleAgent, "web-1", IssueOptions{}))
	srvCfg := v.TLSConfig(proxy, true, []string{testALPN}, RoleAgent, RoleProxy)
	cliCfg := v.TLSConfig(agent, false, []string{testALPN}, RoleProxy, RoleCenter)

	srv, cli, srvErr, cliErr := handshake(t, srvCfg, cliCfg)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake: server err %v, client err %v; want both nil", srvErr, cliErr)
	}
	checkIdentity(t, "proxy", srv, RoleAgent, "web-1")
	checkIdentity(t, "agent", cli, RoleProxy, "px-1")
	if cli.Version != tls.VersionTLS13 || cli.NegotiatedProtocol != testALPN {
		t.Errorf("version %x alpn %q, want TLS 1.3 and %q", cli.Version, cli.NegotiatedProtocol, testALPN)
	}
	if srvCfg.MinVersion != tls.VersionTLS13 || cliCfg.MinVersion != tls.VersionTLS13 {
		t.Error("TLSConfig allows versions below TLS 1.3")
	}

	// Renewal: storing a new certificate in the holder changes what the next
	// handshake presents, with the same tls.Config.
	renewed := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	agent.Store(renewed)
	srv, _, srvErr, cliErr = handshake(t, srvCfg, cliCfg)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake after renewal: server err %v, client err %v", srvErr, cliErr)
	}
	if got := srv.PeerCertificates[0].SerialNumber; got.Cmp(renewed.Leaf.SerialNumber) != 0 {
		t.Errorf("after Store the agent presented serial %s, want the renewed %s", FormatSerial(got), FormatSerial(renewed.Leaf.SerialNumber))
	}

	// A TLS 1.2-only peer is refused.
	old := cliCfg.Clone()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if _, _, srvErr, _ := handshake(t, srvCfg, old); srvErr == nil {
		t.Error("a TLS 1.2 client was accepted")
	}
}

func TestHandshakeRefusals(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	now := time.Now()

	goodProxy := issue(t, ca, RoleProxy, "px-1", IssueOptions{Loopback: true})
	goodAgent := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	strangerAgent := issue(t, other, RoleAgent, "web-1", IssueOptions{})
	strangerProxy := issue(t, other, RoleProxy, "px-1", IssueOptions{})
	expiredAgent := issueAt(t, ca, now.Add(-48*time.Hour), RoleAgent, "web-old", IssueOptions{TTL: time.Hour})
	futureAgent := issueAt(t, ca, now.Add(2*time.Hour), RoleAgent, "web-future", IssueOptions{})
	revokedAgent := issue(t, ca, RoleAgent, "web-gone", IssueOptions{})
	revokedProxy := issue(t, ca, RoleProxy, "px-gone", IssueOptions{})
	operator := issue(t, ca, RoleOperator, "alice", IssueOptions{})
	agentAsServer := issue(t, ca, RoleAgent, "web-2", IssueOptions{})
	center := issue(t, ca, RoleCenter, "sc", IssueOptions{})

	v := verifier(t, ca) // holds CRL 1, then receives the pushed CRL below
	for _, c := range []*tls.Certificate{revokedAgent, revokedProxy} {
		if err := ca.Revoke(c.Leaf.SerialNumber, ReasonKeyCompromise); err != nil {
			t.Fatal(err)
		}
	}
	pushed, err := ParseCRL(ca.CRLPEM(), ca.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCRL(pushed); err != nil {
		t.Fatalf("SetCRL: %v", err)
	}

	noCert := &tls.Config{MinVersion: tls.VersionTLS13, InsecureSkipVerify: true, NextProtos: []string{testALPN}}
	for _, tc := range []struct {
		name          string
		server        *tls.Certificate
		serverAllowed []Role
		client        *tls.Certificate // nil: a client without a certificate
		clientAllowed []Role
		side          string // which side refuses: "server" or "client"
		is            error
		want          string
	}{
		{"agent from another CA", goodProxy, []Role{RoleAgent}, strangerAgent, []Role{RoleProxy}, "server", ErrUnknownCA, "certificate from another CA: issuer CN=Acme Enclave DaemonEye root CA"},
		{"proxy from another CA", strangerProxy, []Role{RoleAgent}, goodAgent, []Role{RoleProxy}, "client", ErrUnknownCA, "certificate from another CA"},
		{"expired agent", goodProxy, []Role{RoleAgent}, expiredAgent, []Role{RoleProxy}, "server", ErrExpired, "certificate of agent/web-old expired at"},
		{"agent not yet valid", goodProxy, []Role{RoleAgent}, futureAgent, []Role{RoleProxy}, "server", ErrNotYetValid, "agent/web-future not valid before"},
		{"revoked agent", goodProxy, []Role{RoleAgent}, revokedAgent, []Role{RoleProxy}, "server", ErrRevoked,
			"certificate serial " + FormatSerial(revokedAgent.Leaf.SerialNumber) + " of agent/web-gone revoked at"},
		{"revoked proxy", revokedProxy, []Role{RoleAgent}, goodAgent, []Role{RoleProxy}, "client", ErrRevoked, "of proxy/px-gone revoked at"},
		{"operator where a proxy is required", center, []Role{RoleProxy, RoleCenter}, operator, []Role{RoleCenter}, "server", ErrWrongRole, "peer is operator/alice, want one of proxy, center"},
		{"agent serving where a proxy is expected", agentAsServer, []Role{RoleAgent}, goodAgent, []Role{RoleProxy, RoleCenter}, "client", ErrWrongRole, "peer is agent/web-2, want one of proxy, center"},
		{"client without certificate", goodProxy, []Role{RoleAgent}, nil, nil, "server", ErrNoCertificate, "no certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srvCfg := v.TLSConfig(NewCertHolder(tc.server), true, []string{testALPN}, tc.serverAllowed...)
			cliCfg := noCert
			if tc.client != nil {
				cliCfg = v.TLSConfig(NewCertHolder(tc.client), false, []string{testALPN}, tc.clientAllowed...)
			}
			_, _, srvErr, cliErr := handshake(t, srvCfg, cliCfg)
			refuser, refused := srvErr, cliErr
			if tc.side == "client" {
				refuser, refused = cliErr, srvErr
			}
			if !errors.Is(refuser, tc.is) {
				t.Fatalf("%s err = %v, want %v", tc.side, refuser, tc.is)
			}
			if !strings.Contains(refuser.Error(), tc.want) {
				t.Errorf("%s err = %q, want it to contain %q", tc.side, refuser, tc.want)
			}
			if refused == nil {
				t.Errorf("the refused side saw no error")
			}
			if d := Describe(refuser); !strings.HasPrefix(d, tc.is.Error()+": ") || strings.Contains(d, "\n") {
				t.Errorf("Describe = %q, want one line starting with %q", d, tc.is.Error()+": ")
			}
			if d := Describe(refused); tc.side == "server" && !strings.HasPrefix(d, "refused by peer") {
				t.Errorf("Describe on the refused client = %q, want it to start with refused by peer", d)
			}
		})
	}
}

func TestHandshakeALPNMismatch(t *testing.T) {
	ca := newCA(t)
	v := verifier(t, ca)
	srvCfg := v.TLSConfig(NewCertHolder(issue(t, ca, RoleProxy, "px-1", IssueOptions{})), true, []string{"daemoneye/2"})
	cliCfg := v.TLSConfig(NewCertHolder(issue(t, ca, RoleAgent, "web-1", IssueOptions{})), false, []string{testALPN})
	if _, _, srvErr, cliErr := handshake(t, srvCfg, cliCfg); srvErr == nil || cliErr == nil {
		t.Errorf("different protocol versions: server err %v, client err %v; want both to fail", srvErr, cliErr)
	}
}

func TestRevokeLiveLink(t *testing.T) {
	ca := newCA(t)
	v := verifier(t, ca)
	agent := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	srvCfg := v.TLSConfig(NewCertHolder(issue(t, ca, RoleProxy, "px-1", IssueOptions{})), true, nil, RoleAgent)
	cliCfg := v.TLSConfig(NewCertHolder(agent), false, nil, RoleProxy)
	if _, _, srvErr, cliErr := handshake(t, srvCfg, cliCfg); srvErr != nil || cliErr != nil {
		t.Fatalf("before revocation: %v / %v", srvErr, cliErr)
	}
	if err := ca.RevokeCert(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: agent.Leaf.Raw}), ReasonCessationOfOperation); err != nil {
		t.Fatalf("RevokeCert: %v", err)
	}
	if err := v.SetCRL(ca.CRL()); err != nil {
		t.Fatalf("SetCRL: %v", err)
	}
	// Same tls.Config, new CRL: the next handshake is refused.
	_, _, srvErr, _ := handshake(t, srvCfg, cliCfg)
	if !errors.Is(srvErr, ErrRevoked) {
		t.Errorf("after SetCRL: server err = %v, want ErrRevoked", srvErr)
	}
}

func TestRevokeAndCRL(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	a := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	b := issue(t, ca, RoleAgent, "web-2", IssueOptions{})

	crl1 := ca.CRL()
	if err := ca.Revoke(a.Leaf.SerialNumber, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	crl2 := ca.CRL()
	if err := ca.Revoke(b.Leaf.SerialNumber, ReasonSuperseded); err != nil {
		t.Fatal(err)
	}
	crl3 := ca.CRL()
	if crl2.Number.Int64() != 2 || crl3.Number.Int64() != 3 {
		t.Errorf("crl numbers %v, %v after two revocations, want 2, 3", crl2.Number, crl3.Number)
	}
	if d := crl3.NextUpdate.Sub(crl3.ThisUpdate); d < CRLValidity || d > CRLValidity+2*time.Minute {
		t.Errorf("crl NextUpdate - ThisUpdate = %v, want about %v", d, CRLValidity)
	}
	if err := ca.Revoke(a.Leaf.SerialNumber, ReasonKeyCompromise); !errors.Is(err, ErrAlreadyRevoked) {
		t.Errorf("revoking twice: err = %v, want ErrAlreadyRevoked", err)
	}
	if err := ca.Revoke(big.NewInt(5), 8); err == nil {
		t.Error("Revoke accepted removeFromCRL")
	}
	if err := ca.RevokeCert(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: issue(t, other, RoleAgent, "x", IssueOptions{}).Leaf.Raw}), 0); !errors.Is(err, ErrUnknownCA) {
		t.Errorf("RevokeCert of a foreign certificate: err = %v, want ErrUnknownCA", err)
	}

	// Persisted: a reloaded CA has both entries and number 3.
	loaded, err := LoadCA(ca.Dir())
	if err != nil {
		t.Fatal(err)
	}
	if got := loaded.CRL(); got.Number.Int64() != 3 || len(got.RevokedCertificateEntries) != 2 {
		t.Errorf("reloaded crl: number %v with %d entries, want 3 with 2", got.Number, len(got.RevokedCertificateEntries))
	}
	if e, ok := loaded.IsRevoked(a.Leaf.SerialNumber); !ok || e.ReasonCode != ReasonKeyCompromise {
		t.Errorf("reloaded IsRevoked(web-1) = %v, %v; want key compromise", e.ReasonCode, ok)
	}

	v := verifier(t, ca) // starts at crl3
	for _, tc := range []struct {
		name string
		crl  *x509.RevocationList
		is   error
	}{
		{"lower number", crl1, ErrStaleCRL},
		{"lower number 2", crl2, ErrStaleCRL},
		{"same crl again", crl3, nil},
		{"another CA's crl", other.CRL(), ErrBadCRL},
	} {
		if err := v.SetCRL(tc.crl); !errors.Is(err, tc.is) || (tc.is == nil) != (err == nil) {
			t.Errorf("SetCRL(%s): err = %v, want %v", tc.name, err, tc.is)
		}
	}
	if v.CRL().Number.Int64() != 3 {
		t.Errorf("verifier crl number = %v after refused updates, want 3", v.CRL().Number)
	}
	// Same number, different content (two copies of the CA directory that
	// diverged, say).
	if err := loaded.Revoke(big.NewInt(100), 0); err != nil {
		t.Fatal(err)
	}
	if err := ca.Revoke(big.NewInt(200), 0); err != nil {
		t.Fatal(err)
	}
	if err := v.SetCRL(loaded.CRL()); err != nil {
		t.Fatalf("SetCRL(number 4): %v", err)
	}
	if err := v.SetCRL(ca.CRL()); !errors.Is(err, ErrStaleCRL) {
		t.Errorf("SetCRL of a different crl number 4: err = %v, want ErrStaleCRL", err)
	}
	if err := ca.RefreshCRL(); err != nil {
		t.Fatal(err)
	}
	if got := ca.CRL(); got.Number.Int64() != 5 || len(got.RevokedCertificateEntries) != 3 {
		t.Errorf("after RefreshCRL: number %v with %d entries, want 5 with 3", got.Number, len(got.RevokedCertificateEntries))
	}

	// ParseCRL: signature checked against our CA; PEM and DER both accepted.
	if _, err := ParseCRL(other.CRLPEM(), ca.Certificate()); !errors.Is(err, ErrBadCRL) || !strings.Contains(err.Error(), "not signed by our ca") {
		t.Errorf("ParseCRL of another CA's crl: err = %v, want ErrBadCRL not signed by our ca", err)
	}
	if _, err := ParseCRL(ca.CRL().Raw, ca.Certificate()); err != nil {
		t.Errorf("ParseCRL(DER): %v", err)
	}
	tampered := slices.Clone(ca.CRL().Raw)
	tampered[len(tampered)-1] ^= 1
	if _, err := ParseCRL(tampered, ca.Certificate()); !errors.Is(err, ErrBadCRL) {
		t.Errorf("ParseCRL of a tampered crl: err = %v, want ErrBadCRL", err)
	}
	if _, err := ParseCRL(ca.CertPEM(), ca.Certificate()); !errors.Is(err, ErrBadCRL) {
		t.Errorf("ParseCRL of a certificate: err = %v, want ErrBadCRL", err)
	}
}

func TestSetCRLConcurrent(t *testing.T) {
	ca := newCA(t)
	v := verifier(t, ca)
	agent := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	var crls []*x509.RevocationList
	for i := 0; i < 20; i++ {
		if err := ca.Revoke(big.NewInt(int64(i+1)), 0); err != nil {
			t.Fatal(err)
		}
		crls = append(crls, ca.CRL())
	}
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Go(func() {
			for _, c := range crls {
				if err := v.SetCRL(c); err != nil && !errors.Is(err, ErrStaleCRL) {
					t.Errorf("SetCRL: %v", err)
				}
				if err := v.VerifyCertificate(agent.Leaf, RoleAgent); err != nil {
					t.Errorf("VerifyCertificate during CRL updates: %v", err)
				}
			}
		})
	}
	wg.Wait()
	if v.CRL().Number.Int64() != 21 {
		t.Errorf("final crl number = %v, want 21 (the highest)", v.CRL().Number)
	}
}

func TestVerifyPeer(t *testing.T) {
	ca := newCA(t)
	v := verifier(t, ca)
	agent := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	leaf, err := v.VerifyPeer([][]byte{agent.Leaf.Raw}, RoleAgent)
	if err != nil || leaf.SerialNumber.Cmp(agent.Leaf.SerialNumber) != 0 {
		t.Errorf("VerifyPeer = %v, want the agent certificate", err)
	}
	if _, err := v.VerifyPeer(nil); !errors.Is(err, ErrNoCertificate) {
		t.Errorf("VerifyPeer(nil): err = %v, want ErrNoCertificate", err)
	}
	if _, err := v.VerifyPeer([][]byte{{0x30, 0x01}}); !errors.Is(err, ErrBadCertificate) {
		t.Errorf("VerifyPeer(garbage): err = %v, want ErrBadCertificate", err)
	}
	// A self-signed certificate that copies our CA's subject is still a stranger.
	fake := selfSigned(t, "web-1", "daemoneye://agent/web-1")
	if _, err := v.VerifyPeer([][]byte{fake.Raw}); !errors.Is(err, ErrUnknownCA) {
		t.Errorf("VerifyPeer(self-signed): err = %v, want ErrUnknownCA", err)
	}
	// Server-side usage: an operator certificate has no ServerAuth.
	op := issue(t, ca, RoleOperator, "alice", IssueOptions{})
	if err := v.verifyLeaf(op.Leaf, x509.ExtKeyUsageServerAuth, nil); !errors.Is(err, ErrBadCertificate) {
		t.Errorf("operator certificate as a server: err = %v, want ErrBadCertificate", err)
	}
	// The verifier's clock decides expiry.
	v.Now = func() time.Time { return agent.Leaf.NotAfter.Add(time.Second) }
	if err := v.VerifyCertificate(agent.Leaf); !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "(now ") {
		t.Errorf("after NotAfter: err = %v, want ErrExpired naming now", err)
	}
}

func TestSignCSR(t *testing.T) {
	ca := newCA(t)
	other := newCA(t)
	now := time.Now()
	agent := issue(t, ca, RoleAgent, "web-1", IssueOptions{DNSNames: []string{"web-1.enclave"}, IPAddresses: []net.IP{net.ParseIP("10.1.2.3")}})
	revoked := issue(t, ca, RoleAgent, "web-gone", IssueOptions{})
	if err := ca.Revoke(revoked.Leaf.SerialNumber, ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	expired := issueAt(t, ca, now.Add(-48*time.Hour), RoleAgent, "web-old", IssueOptions{TTL: time.Hour})
	stranger := issue(t, other, RoleAgent, "web-1", IssueOptions{})
	_, newKey, _ := ed25519.GenerateKey(rand.Reader)

	csr := func(role Role, name string) []byte {
		der, err := NewCSR(newKey, role, name)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	badSig := csr(RoleAgent, "web-1")
	badSig[len(badSig)-1] ^= 1

	for _, tc := range []struct {
		name string
		csr  []byte
		peer *x509.Certificate
		is   error
		want string
	}{
		{"agent renews itself", csr(RoleAgent, "web-1"), agent.Leaf, nil, ""},
		{"agent claims another name", csr(RoleAgent, "web-2"), agent.Leaf, ErrWrongIdentity, "agent/web-1 asked to renew agent/web-2"},
		{"agent claims the center role", csr(RoleCenter, "web-1"), agent.Leaf, ErrWrongIdentity, "asked to renew center/web-1"},
		{"revoked peer", csr(RoleAgent, "web-gone"), revoked.Leaf, ErrRevoked, "revoked at"},
		{"expired peer", csr(RoleAgent, "web-old"), expired.Leaf, ErrExpired, "expired at"},
		{"peer from another CA", csr(RoleAgent, "web-1"), stranger.Leaf, ErrUnknownCA, "another CA"},
		{"csr signature broken", badSig, agent.Leaf, ErrBadCertificate, "signature"},
		{"not a csr", []byte("hello"), agent.Leaf, ErrBadCertificate, "unparsable csr"},
		{"no peer", csr(RoleAgent, "web-1"), nil, ErrNoCertificate, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			certPEM, err := ca.SignCSR(tc.csr, tc.peer, 0)
			if tc.is != nil {
				if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("SignCSR: err = %v, want %v containing %q", err, tc.is, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatalf("SignCSR: %v", err)
			}
			c, err := ParseCertificatePEM(certPEM)
			if err != nil {
				t.Fatal(err)
			}
			if role, name, _ := Identity(c); role != RoleAgent || name != "web-1" {
				t.Errorf("renewed identity %s/%s, want agent/web-1", role, name)
			}
			if !newKey.Public().(ed25519.PublicKey).Equal(c.PublicKey) {
				t.Error("renewed certificate does not carry the CSR's key")
			}
			if !slices.Equal(c.DNSNames, []string{"web-1.enclave"}) || len(c.IPAddresses) != 1 || !c.IPAddresses[0].Equal(net.ParseIP("10.1.2.3")) {
				t.Errorf("renewed SANs %v %v, want the old certificate's", c.DNSNames, c.IPAddresses)
			}
			if c.SerialNumber.Cmp(agent.Leaf.SerialNumber) == 0 {
				t.Error("renewed certificate reuses the old serial")
			}
			if err := verifier(t, ca).VerifyCertificate(c, RoleAgent); err != nil {
				t.Errorf("renewed certificate does not verify: %v", err)
			}
		})
	}
}

func TestRenewalRequest(t *testing.T) {
	ca := newCA(t)
	agent := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	agentKey := agent.PrivateKey.(ed25519.PrivateKey)
	_, newKey, _ := ed25519.GenerateKey(rand.Reader)

	req, err := NewRenewalRequest(agent.Leaf, agentKey, newKey)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ca.SignRenewal(req, time.Hour); err != nil {
		t.Errorf("SignRenewal of a genuine request: %v", err)
	}

	// A proxy sees the agent's certificate but not its key: pairing the
	// certificate with a CSR and a proof of its own is refused.
	proxy := issue(t, ca, RoleProxy, "px-1", IssueOptions{})
	proxyKey := proxy.PrivateKey.(ed25519.PrivateKey)
	forgedCSR, _ := NewCSR(proxyKey, RoleAgent, "web-1")
	forged := RenewalRequest{CSR: forgedCSR, Cert: agent.Leaf.Raw,
		Proof: ed25519.Sign(proxyKey, append([]byte(renewalContext), forgedCSR...))}
	if _, err := ca.SignRenewal(forged, 0); !errors.Is(err, ErrBadCertificate) || !strings.Contains(err.Error(), "proof of possession") {
		t.Errorf("SignRenewal of a forged request: err = %v, want proof of possession failure", err)
	}
	// Replaying the genuine proof with a swapped CSR fails too.
	swapped := req
	swapped.CSR = forgedCSR
	if _, err := ca.SignRenewal(swapped, 0); !errors.Is(err, ErrBadCertificate) {
		t.Errorf("SignRenewal with a swapped CSR: err = %v, want ErrBadCertificate", err)
	}
	if _, err := NewRenewalRequest(agent.Leaf, proxyKey, newKey); err == nil {
		t.Error("NewRenewalRequest accepted a key that does not match the certificate")
	}
}

func TestNeedsRenewal(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: start, NotAfter: start.Add(24 * time.Hour)} // a third is 8h
	for _, tc := range []struct {
		at   time.Duration // after NotBefore
		want bool
	}{
		{0, false},
		{12 * time.Hour, false},
		{16 * time.Hour, false}, // exactly a third left
		{16*time.Hour + time.Nanosecond, true},
		{23 * time.Hour, true},
		{25 * time.Hour, true}, // expired
	} {
		if got := NeedsRenewal(cert, start.Add(tc.at)); got != tc.want {
			t.Errorf("NeedsRenewal at +%v = %v, want %v", tc.at, got, tc.want)
		}
	}
}

func TestSerialFormat(t *testing.T) {
	n, _ := new(big.Int).SetString("3f00a1", 16)
	for _, s := range []string{"3f00a1", "0x3F00A1", "3f:00:a1", " 3f00a1\n"} {
		got, err := ParseSerial(s)
		if err != nil || got.Cmp(n) != 0 {
			t.Errorf("ParseSerial(%q) = %v, %v; want %s", s, got, err, FormatSerial(n))
		}
	}
	for _, s := range []string{"", "xyz", "-1", "0"} {
		if _, err := ParseSerial(s); err == nil {
			t.Errorf("ParseSerial(%q) succeeded", s)
		}
	}
}

func TestDescribe(t *testing.T) {
	if Describe(nil) != "" {
		t.Error("Describe(nil) is not empty")
	}
	err := &CertError{Reason: ErrRevoked, Detail: "certificate serial 1 of agent/a revoked at x"}
	wrapped := errors.Join(errors.New("accept link"), err)
	if got, want := Describe(wrapped), "revoked: certificate serial 1 of agent/a revoked at x"; got != want {
		t.Errorf("Describe = %q, want %q", got, want)
	}
	if got := Describe(errors.New("a\nb")); got != "a b" {
		t.Errorf("Describe of a multi-line error = %q, want one line", got)
	}
}

func TestLoadVerifierAndSaveCRL(t *testing.T) {
	ca := newCA(t)
	node := t.TempDir()
	caFile, crlFile := filepath.Join(node, "ca.crt"), filepath.Join(node, "crl.pem")
	os.WriteFile(caFile, ca.CertPEM(), 0o644)

	v, err := LoadVerifier(caFile, crlFile) // no CRL received yet
	if err != nil || v.CRL() != nil {
		t.Fatalf("LoadVerifier without a crl file = %v, %v; want an empty verifier", v, err)
	}
	agent := issue(t, ca, RoleAgent, "web-1", IssueOptions{})
	ca.Revoke(agent.Leaf.SerialNumber, ReasonKeyCompromise)
	pushed, err := ParseCRL(ca.CRLPEM(), ca.Certificate())
	if err != nil {
		t.Fatal(err)
	}
	if err := v.SetCRL(pushed); err != nil {
		t.Fatal(err)
	}
	if err := SaveCRL(crlFile, pushed); err != nil {
		t.Fatalf("SaveCRL: %v", err)
	}
	// After a restart the node still refuses the revoked agent.
	v2, err := LoadVerifier(caFile, crlFile)
	if err != nil {
		t.Fatalf("LoadVerifier: %v", err)
	}
	if err := v2.VerifyCertificate(agent.Leaf); !errors.Is(err, ErrRevoked) {
		t.Errorf("after reload: err = %v, want ErrRevoked", err)
	}
	os.WriteFile(crlFile, newCA(t).CRLPEM(), 0o644)
	if _, err := LoadVerifier(caFile, crlFile); !errors.Is(err, ErrBadCRL) {
		t.Errorf("LoadVerifier with a foreign crl: err = %v, want ErrBadCRL", err)
	}
	if _, err := LoadVerifier(filepath.Join(node, "nope.crt"), crlFile); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("LoadVerifier without ca.crt: err = %v, want not exist", err)
	}
	// An empty holder makes the handshake fail on our side, not send nothing.
	cfg := v.TLSConfig(NewCertHolder(nil), false, nil)
	if _, err := cfg.GetClientCertificate(nil); err == nil {
		t.Error("GetClientCertificate with an empty holder succeeded")
	}
}
