package cli

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"software.sslmate.com/src/go-pkcs12"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

func TestPKIWebVerbs(t *testing.T) {
	dir := t.TempDir() + "/pki"
	code, out, errs := run(t, nil, "pki", "--dir", dir, "init", "--org", "ACME")
	if code != 0 || !strings.Contains(out, "web CA") || !strings.Contains(out, pki.WebCACertFile) {
		t.Fatalf("pki init: %d %s %s; want the web CA reported", code, out, errs)
	}
	if code, _, errs := run(t, nil, "pki", "--dir", dir, "web-ca"); code == 0 || !strings.Contains(errs, "exists") {
		t.Errorf("pki web-ca over an existing web CA: code %d, %s; want a refusal", code, errs)
	}
	code, out, errs = run(t, nil, "pki", "--dir", dir, "issue", "--role", "api", "center-1", "--dns", "soc.example", "--ip", "10.0.0.7")
	if code != 0 || !strings.Contains(out, "issued api/center-1") || !strings.Contains(out, "center.api.tls") {
		t.Fatalf("pki issue --role api: %d %s %s", code, out, errs)
	}
	c, err := pki.LoadServerKeyPair(dir+"/center-1.crt", dir+"/center-1.key")
	if err != nil {
		t.Fatalf("the api pair does not load: %v", err)
	}
	if len(c.Certificate) != 2 || c.Leaf.DNSNames[0] != "soc.example" || !c.Leaf.IPAddresses[0].Equal([]byte{10, 0, 0, 7}) {
		t.Errorf("api certificate: chain %d, names %v %v; want leaf and cross certificate for soc.example and 10.0.0.7",
			len(c.Certificate), c.Leaf.DNSNames, c.Leaf.IPAddresses)
	}
	if code, _, errs := run(t, nil, "pki", "--dir", dir, "issue", "--role", "api", "center-2"); code == 0 || !strings.Contains(errs, "--dns") {
		t.Errorf("api certificate without names: code %d %s; want a refusal naming --dns", code, errs)
	}
	if code, _, errs := run(t, nil, "pki", "--dir", dir, "issue", "--role", "agent", "a", "--browser"); code == 0 || !strings.Contains(errs, "operator") {
		t.Errorf("--browser for an agent: code %d %s; want a refusal", code, errs)
	}

	code, out, errs = run(t, nil, "pki", "--dir", dir, "issue", "--role", "operator", "alice", "--browser")
	if code != 0 {
		t.Fatalf("pki issue --browser: %d %s %s", code, out, errs)
	}
	m := regexp.MustCompile(`with the password (\S+) \(shown once\)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no password in the output:\n%s", out)
	}
	st, err := os.Stat(dir + "/alice.p12")
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("alice.p12: %v %v, want mode 0600", st, err)
	}
	b, _ := os.ReadFile(dir + "/alice.p12")
	_, cert, _, err := pkcs12.DecodeChain(b, m[1])
	if err != nil {
		t.Fatalf("alice.p12 with the printed password: %v", err)
	}
	if role, name, _ := pki.Identity(cert); role != pki.RoleOperator || name != "alice" {
		t.Errorf("alice.p12 holds %s/%s", role, name)
	}
	// The browser certificate revokes like any other.
	code, out, errs = run(t, nil, "pki", "--dir", dir, "revoke", "--cert", dir+"/alice.crt", "--yes")
	if code != 0 || !strings.Contains(out, "lists 1 certificate") {
		t.Errorf("revoke a browser certificate: %d %s %s", code, out, errs)
	}
}
