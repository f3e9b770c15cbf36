package center

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// testLog sends a center's warnings and errors to the test's log.
type testLog struct{ t *testing.T }

func (w testLog) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// tlsCenter is a whole center on loopback for the API certificate tests.
type tlsCenter struct {
	ca   *pki.CA
	cfg  config.Center
	c    *Center
	stop func()
}

func newTLSCenterConfig(t *testing.T) (*pki.CA, config.Center) {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "pki"), "Test", 0)
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue(pki.RoleCenter, "center-1", pki.IssueOptions{Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyPair(filepath.Join(dir, "certs"), "center-1", certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), ca.CertPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg := config.Default().Center
	cfg.Listen = "127.0.0.1:0"
	cfg.DataDir = filepath.Join(dir, "center")
	cfg.CADir = ca.Dir()
	cfg.TLS = config.TLS{Cert: filepath.Join(dir, "certs", "center-1.crt"), Key: filepath.Join(dir, "certs", "center-1.key"),
		CA: filepath.Join(dir, "ca.crt"), RenewCheckMS: 60000}
	cfg.Metrics.Listen = ""
	return ca, cfg
}

func startTLSCenter(t *testing.T, ca *pki.CA, cfg config.Center) *tlsCenter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.API.Listen = ln.Addr().String()
	ln.Close()
	c, err := New(cfg, slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		t.Fatalf("center.New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("center: %v", err)
		}
	}
	t.Cleanup(stop)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", cfg.API.Listen, time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("API not listening on %s: %v", cfg.API.Listen, err)
		}
	}
	return &tlsCenter{ca: ca, cfg: cfg, c: c, stop: stop}
}

// whoami asks the API who the client certificate is, trusting only the
// Ed25519 root as the CLI does, and returns the server's leaf.
func (tc *tlsCenter) whoami(t *testing.T, client *tls.Certificate) (*x509.Certificate, map[string]any) {
	t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(tc.ca.Certificate())
	conf := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}
	if client != nil {
		conf.Certificates = []tls.Certificate{*client}
	}
	tr := &http.Transport{TLSClientConfig: conf}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr, Timeout: 10 * time.Second}).Get("https://" + tc.cfg.API.Listen + "/api/v1/whoami")
	if err != nil {
		t.Fatalf("GET whoami: %v", err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	var m map[string]any
	json.Unmarshal(b, &m)
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET whoami: %d %s", res.StatusCode, b)
	}
	return res.TLS.PeerCertificates[0], m
}

func (tc *tlsCenter) operator(t *testing.T, name string, web bool) *tls.Certificate {
	t.Helper()
	if _, err := tc.c.API.Operators().Add(context.Background(), NewOperator{ID: name, Role: RoleAnalyst}, "test", nil); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := tc.ca.Issue(pki.RoleOperator, name, pki.IssueOptions{Web: web})
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.ServerKeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// By default a center holding the CA issues the API an ECDSA certificate
// from the web CA: the CLI's Ed25519 operator certificates and browsers'
// ECDSA ones both log in; a restart keeps the certificate.
func TestAPICertificateIssuedFromWebCA(t *testing.T) {
	ca, cfg := newTLSCenterConfig(t)
	tc := startTLSCenter(t, ca, cfg)
	leaf, m := tc.whoami(t, tc.operator(t, "cli-op", false))
	if _, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok {
		t.Fatalf("the API presents a %T key, want ECDSA (browsers refuse Ed25519)", leaf.PublicKey)
	}
	if role, name, _ := pki.Identity(leaf); role != pki.RoleAPI || name != "center-1" {
		t.Errorf("the API certificate is %s/%s, want api/center-1", role, name)
	}
	if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
		t.Errorf("the API certificate does not name its listen address: %v", err)
	}
	if m["id"] != "cli-op" || m["auth"] != "certificate" {
		t.Errorf("Ed25519 operator certificate: whoami %v, want cli-op by certificate", m)
	}
	if _, m := tc.whoami(t, tc.operator(t, "browser-op", true)); m["id"] != "browser-op" || m["auth"] != "certificate" {
		t.Errorf("web operator certificate: whoami %v, want browser-op by certificate", m)
	}
	serial := leaf.SerialNumber
	tc.stop()
	tc = startTLSCenter(t, ca, cfg)
	if leaf, _ := tc.whoami(t, tc.operator(t, "after-restart", false)); leaf.SerialNumber.Cmp(serial) != 0 {
		t.Errorf("a restart issued a new API certificate")
	}
}

func TestAPICertificateConfiguredAndFallback(t *testing.T) {
	ca, cfg := newTLSCenterConfig(t)
	certPEM, keyPEM, err := ca.Issue(pki.RoleAPI, "soc", pki.IssueOptions{Loopback: true, DNSNames: []string{"soc.example"}})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "api")
	if err := pki.WriteKeyPair(dir, "soc", certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	cfg.API.TLS = config.APITLS{Cert: filepath.Join(dir, "soc.crt"), Key: filepath.Join(dir, "soc.key")}
	cfg.CADir = "" // the chain alone tells the center the web CA
	tc := startTLSCenter(t, ca, cfg)
	leaf, m := tc.whoami(t, tc.operator(t, "browser-op", true))
	if _, name, _ := pki.Identity(leaf); name != "soc" || m["id"] != "browser-op" {
		t.Errorf("configured certificate: the API presents %s and says %v; want soc and browser-op", name, m)
	}
	tc.stop()

	// A bad configuration is a clear error at start.
	bad := cfg
	bad.API.TLS.Key = cfg.TLS.Key // the node's key: does not match
	if _, err := New(bad, slog.New(slog.DiscardHandler)); err == nil {
		t.Error("center.New with a mismatched center.api.tls.key succeeded")
	}

	// Without either, the node certificate (scripts still work).
	cfg.API.TLS = config.APITLS{}
	for _, f := range []string{pki.WebCACertFile, pki.WebCACrossFile, pki.WebCAKeyFile} {
		os.Remove(filepath.Join(ca.Dir(), f))
	}
	cfg.CADir = ca.Dir()
	tc = startTLSCenter(t, ca, cfg)
	if leaf, _ := tc.whoami(t, tc.operator(t, "cli-op", false)); leaf.PublicKeyAlgorithm != x509.Ed25519 {
		t.Errorf("without a web CA the API presents %v, want the node's Ed25519 certificate", leaf.PublicKeyAlgorithm)
	}
}

// A configured certificate rewritten on disk is picked up without a
// restart; an issued one is renewed with a third of its life left.
func TestAPICertificateReloadAndRenew(t *testing.T) {
	ca, cfg := newTLSCenterConfig(t)
	dir := t.TempDir()
	write := func(name string) {
		certPEM, keyPEM, err := ca.Issue(pki.RoleAPI, name, pki.IssueOptions{Loopback: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteKeyPair(dir, "api", certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
	}
	write("first")
	cfg.API.Listen = "127.0.0.1:8443"
	cfg.API.TLS = config.APITLS{Cert: filepath.Join(dir, "api.crt"), Key: filepath.Join(dir, "api.key")}
	v, err := ca.Verifier()
	if err != nil {
		t.Fatal(err)
	}
	a, err := newAPICert(cfg, "center-1", nil, v, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.maintain(ctx, 10*time.Millisecond) }()
	time.Sleep(20 * time.Millisecond) // mtimes must differ from the first write's
	write("second")
	future := time.Now().Add(time.Hour)
	os.Chtimes(filepath.Join(dir, "api.crt"), future, future)
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, name, _ := pki.Identity(a.holder.Load().Leaf); name == "second" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the rewritten center.api.tls certificate was not reloaded")
		}
	}
	cancel()
	<-done

	// Issued: due for renewal at a third of its life.
	cfg.API.TLS = config.APITLS{}
	b, err := newAPICert(cfg, "center-1", nil, v, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	first := b.holder.Load().Leaf
	again, err := b.ensureIssued(ca, time.Now())
	if err != nil || again.Leaf.SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Errorf("a fresh issued certificate was replaced (%v)", err)
	}
	late := first.NotAfter.Add(-apiIssuedTTL / 4)
	renewed, err := b.ensureIssued(ca, late)
	if err != nil || renewed.Leaf.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Errorf("a certificate with a quarter of its life left was not renewed (%v)", err)
	}
	// New names (center.api.tls.names) mean a new certificate.
	cfg.API.TLS.Names = []string{"soc.example", "10.1.2.3"}
	b.cfg = cfg
	named, err := b.ensureIssued(ca, time.Now())
	if err != nil || named.Leaf.VerifyHostname("soc.example") != nil || named.Leaf.VerifyHostname("10.1.2.3") != nil {
		t.Errorf("center.api.tls.names not in the issued certificate (%v)", err)
	}
}
