package cli

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// PKICmd groups the customer-CA verbs.
type PKICmd struct {
	Dir string `type:"path" default:"/var/lib/daemoneye/pki" help:"CA directory (ca.crt, ca.key, crl.pem)." placeholder:"DIR"`

	Init   PKIInitCmd   `cmd:"" help:"Create the customer's root CA (Ed25519) and its web CA (ECDSA P-256, for browsers)."`
	WebCA  PKIWebCACmd  `cmd:"" name:"web-ca" help:"Add the web CA (ECDSA P-256, for browsers) to a CA directory that has none."`
	Issue  PKIIssueCmd  `cmd:"" help:"Issue a certificate for a node, an operator or the center's web API."`
	Revoke PKIRevokeCmd `cmd:"" help:"Revoke a certificate and write the new CRL (pushed down the tree by the center)."`
}

// PKIInitCmd creates a CA.
type PKIInitCmd struct {
	Org      string        `default:"DaemonEye customer" help:"Organization name in the CA certificate."`
	Validity time.Duration `default:"87600h" help:"Lifetime of the root certificate."`
}

// Run creates the CA directory.
func (c *PKIInitCmd) Run(g *Globals, p *PKICmd) error {
	ca, err := pki.Init(p.Dir, c.Org, c.Validity)
	if err != nil {
		return err
	}
	cert := ca.Certificate()
	fmt.Fprintf(g.stdout, "created CA %q in %s (valid until %s)\n  certificate: %s\n  private key: %s (mode 0600: keep it on the center or offline)\n",
		cert.Subject.CommonName, p.Dir, cert.NotAfter.UTC().Format(time.RFC3339),
		filepath.Join(p.Dir, pki.CACertFile), filepath.Join(p.Dir, pki.CAKeyFile))
	printWebCA(g, p.Dir, ca.Web())
	return nil
}

func printWebCA(g *Globals, dir string, w *pki.WebCA) {
	fmt.Fprintf(g.stdout, "web CA %q (ECDSA P-256, certified by the root)\n  for browsers: %s (operators install it as a trusted authority)\n  cross certificate: %s\n  private key: %s (mode 0600)\n",
		w.Certificate().Subject.CommonName, filepath.Join(dir, pki.WebCACertFile), filepath.Join(dir, pki.WebCACrossFile),
		filepath.Join(dir, pki.WebCAKeyFile))
}

// PKIWebCACmd adds a web CA to an existing CA directory.
type PKIWebCACmd struct{}

// Run creates the web CA.
func (c *PKIWebCACmd) Run(g *Globals, p *PKICmd) error {
	ca, err := pki.LoadCA(p.Dir)
	if err != nil {
		return err
	}
	w, err := ca.InitWeb()
	if err != nil {
		return err
	}
	printWebCA(g, p.Dir, w)
	return nil
}

// PKIIssueCmd issues a certificate.
type PKIIssueCmd struct {
	Role     string        `required:"" enum:"agent,proxy,center,operator,api" help:"Role carried by the certificate: agent, proxy, center, operator, or api (the center's HTTPS API for browsers: center.api.tls)."`
	Name     string        `arg:"" help:"Node or operator name (letters, digits, . _ -)."`
	Out      string        `type:"path" help:"Directory for NAME.crt and NAME.key (default: the CA directory)." placeholder:"DIR"`
	TTL      time.Duration `help:"Lifetime (default 24h for nodes, 8h for operators, 90 days for api)."`
	DNS      []string      `help:"DNS names a server is reached by (nodes, api)." placeholder:"NAME"`
	IP       []string      `help:"Addresses a server is reached at (nodes, api)." placeholder:"ADDR"`
	Loopback bool          `help:"Add localhost, 127.0.0.1 and ::1 (single-host demo and tests)."`
	Browser  bool          `help:"Operators: an ECDSA certificate from the web CA for a browser, also written as NAME.p12 (PKCS#12) to import."`

	P12PasswordStdin bool `name:"p12-password-stdin" help:"With --browser: read the NAME.p12 password from the first line of stdin (default: a random one, printed once)."`
}

// Run issues and writes the key pair.
func (c *PKIIssueCmd) Run(g *Globals, p *PKICmd) error {
	ca, err := pki.LoadCA(p.Dir)
	if err != nil {
		return err
	}
	role, err := pki.ParseRole(c.Role)
	if err != nil {
		return err
	}
	if c.Browser && role != pki.RoleOperator {
		return fmt.Errorf("--browser is for operator certificates (role api is always from the web CA)")
	}
	if c.P12PasswordStdin && !c.Browser {
		return fmt.Errorf("--p12-password-stdin needs --browser")
	}
	opts := pki.IssueOptions{TTL: c.TTL, DNSNames: c.DNS, Loopback: c.Loopback, Web: c.Browser}
	for _, s := range c.IP {
		ip := net.ParseIP(s)
		if ip == nil {
			return fmt.Errorf("--ip %q: not an IP address", s)
		}
		opts.IPAddresses = append(opts.IPAddresses, ip)
	}
	certPEM, keyPEM, err := ca.Issue(role, c.Name, opts)
	if err != nil {
		return err
	}
	out := c.Out
	if out == "" {
		out = p.Dir
	}
	if err := pki.WriteKeyPair(out, c.Name, certPEM, keyPEM); err != nil {
		return err
	}
	cert, err := pki.ParseCertificatePEM(certPEM)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "issued %s/%s serial %s, valid until %s\n  %s\n  %s (mode 0600)\n",
		role, c.Name, pki.FormatSerial(cert.SerialNumber), cert.NotAfter.UTC().Format(time.RFC3339),
		filepath.Join(out, c.Name+".crt"), filepath.Join(out, c.Name+".key"))
	if !c.Browser {
		if role == pki.RoleAPI {
			fmt.Fprintf(g.stdout, "  set center.api.tls.cert and center.api.tls.key to these; browsers trust it once %s is installed\n",
				filepath.Join(p.Dir, pki.WebCACertFile))
		}
		return nil
	}
	return c.writeP12(g, ca, out, certPEM, keyPEM)
}

// writeP12 writes NAME.p12 for the browser's import.
func (c *PKIIssueCmd) writeP12(g *Globals, ca *pki.CA, out string, certPEM, keyPEM []byte) error {
	var pw string
	if c.P12PasswordStdin {
		line, err := bufio.NewReader(g.stdin).ReadString('\n')
		if err != nil && line == "" {
			return errors.New("--p12-password-stdin: no password on stdin")
		}
		if pw = strings.TrimRight(line, "\r\n"); pw == "" {
			return errors.New("--p12-password-stdin: empty password")
		}
	} else {
		b := make([]byte, 15)
		if _, err := rand.Read(b); err != nil {
			return err
		}
		pw = base64.RawURLEncoding.EncodeToString(b)
	}
	p12, err := ca.Web().PKCS12(certPEM, keyPEM, pw)
	if err != nil {
		return err
	}
	path := filepath.Join(out, c.Name+".p12")
	if err := atomicfile.Write(path, p12, 0o600); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "  %s (mode 0600): import it in the operator's browser", path)
	if !c.P12PasswordStdin {
		fmt.Fprintf(g.stdout, " with the password %s (shown once)", pw)
	}
	fmt.Fprintf(g.stdout, ", with %s as a trusted authority\n", filepath.Join(ca.Dir(), pki.WebCACertFile))
	return nil
}

// PKIRevokeCmd revokes a certificate.
type PKIRevokeCmd struct {
	Serial string `help:"Serial number to revoke (hex, as printed by issue)." xor:"what"`
	Cert   string `type:"existingfile" help:"Certificate file to revoke." xor:"what"`
	Reason int    `default:"0" help:"RFC 5280 reason code (1 key compromise, 4 superseded, 5 cessation of operation)."`
	Yes    bool   `help:"Do not ask for confirmation."`
}

// Run revokes and rewrites the CRL.
func (c *PKIRevokeCmd) Run(g *Globals, p *PKICmd) error {
	if c.Serial == "" && c.Cert == "" {
		return errors.New("say what to revoke: --serial SERIAL or --cert FILE")
	}
	ca, err := pki.LoadCA(p.Dir)
	if err != nil {
		return err
	}
	what := "serial " + c.Serial
	if c.Cert != "" {
		what = c.Cert
	}
	if !c.Yes && !confirm(g, fmt.Sprintf("revoke %s? Links using it will be refused once the CRL reaches them [y/N] ", what)) {
		return errors.New("not revoked (answer y, or pass --yes)")
	}
	if c.Cert != "" {
		b, err := os.ReadFile(c.Cert)
		if err != nil {
			return err
		}
		err = ca.RevokeCert(b, c.Reason)
	} else {
		serial, perr := pki.ParseSerial(c.Serial)
		if perr != nil {
			return perr
		}
		err = ca.Revoke(serial, c.Reason)
	}
	if err != nil {
		return err
	}
	crl := ca.CRL()
	fmt.Fprintf(g.stdout, "revoked %s; CRL number %s now lists %d certificate(s): %s\n",
		what, crl.Number, len(crl.RevokedCertificateEntries), filepath.Join(p.Dir, "crl.pem"))
	return nil
}

// confirm asks on stdin; anything but y/yes is no, and so is no terminal.
func confirm(g *Globals, prompt string) bool {
	fmt.Fprint(g.stderr, prompt)
	line, err := bufio.NewReader(g.stdin).ReadString('\n')
	if err != nil && line == "" {
		return false
	}
	a := strings.ToLower(strings.TrimSpace(line))
	return a == "y" || a == "yes"
}
