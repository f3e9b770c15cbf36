package sink

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// secret is in every record's source and must be in none of what a
// receiver gets.
const secret = "hunter2-s3cr3t"

func secretRecords() []Record {
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC).UnixNano()
	return []Record{
		AlertRecord(Alert{ID: 7, RuleID: "shell-from-web", Severity: "high", Technique: "T1059", Host: "web-1", PID: 42, Start: 99,
			Time: t0, LastTime: t0, Count: 1, State: "open", TraceID: "tr-1",
			Context: `{"cmdline":"curl --password ` + secret + `","nested":[{"ARGV":["a","` + secret + `"]}],"env":"TOKEN=` + secret + `","exe":"/usr/bin/curl"}`}),
		TraceRecord(Trace{TraceID: "tr-1", Host: "web-1", PID: 42, Start: 99, Depth: 6, State: "active", Created: t0, Started: t0,
			InitiatedBy: "alice"}),
		TraceEventRecord(sqlstore.TraceEvent{Host: "web-1", BatchSeq: 3, Idx: 4, TraceID: "tr-1", TraceSeq: 5, Time: t0 + 1,
			Kind: "exec", PID: 43, Start: 100, Exe: "/usr/bin/curl", Argv: []string{"curl", "--password=" + secret, "http://db-1/"},
			Cmdline: "curl --password=" + secret + " http://db-1/", Mem: &capture.MemSnippet{Addr: 4096, Data: []byte(secret)}}),
	}
}

func checkNoSecret(t *testing.T, what string, b []byte) {
	t.Helper()
	if strings.Contains(string(b), secret) || strings.Contains(string(b), "hunter2") {
		t.Errorf("%s carries the unmasked secret:\n%s", what, b)
	}
}

// selfSigned writes a CA-less self-signed server certificate for
// 127.0.0.1 / localhost and returns its paths and a server TLS config.
func selfSigned(t *testing.T) (certPath, keyPath string, conf *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, DNSNames: []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})
	if err := os.WriteFile(certPath, certPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
}

func writeFile(t *testing.T, name, data string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// waitFor polls cond until it holds or 10 s pass (a bound for a hung
// test, not a timing assertion).
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
