package center

// The certificate the API and the web UI present. Browsers refuse the
// center's node certificate (Ed25519), so the API has its own, an ECDSA
// chain from the customer's web CA (transport/pki/web.go), chosen in this
// order:
//
//  1. center.api.tls.cert and .key: files the operator issued (`daemoneye
//     pki issue --role api`), reloaded when they change.
//  2. With center.ca_dir holding a web CA: one the center issues itself,
//     DATA_DIR/api.crt and api.key, for the listen address, the host name
//     and center.api.tls.names, renewed with a third of its life left.
//  3. The node certificate: scripts (the CLI, which trusts the root) work,
//     browsers do not; the center says so in its log.
//
// The chain in 1 and 2 ends with the web CA's cross certificate, so the CLI
// and the demo, which trust only the Ed25519 root, verify the API as
// before. Where the web CA is known (from the chain or ca_dir), the
// center's Verifier accepts operators' browser certificates through it.

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// apiCertName is the base name of the API certificate the center issues
// itself in its data directory.
const apiCertName = "api"

// apiCert holds the API's certificate and keeps it current.
type apiCert struct {
	holder *pki.CertHolder
	source string // "configured", "issued" or "node"
	cfg    config.Center
	name   string // the center's node name: the certificate's name
	ver    *pki.Verifier
	log    *slog.Logger
	mtime  [2]time.Time // configured files, for reloads
}

// newAPICert picks the API's certificate (see the top of the file).
func newAPICert(cfg config.Center, name string, node *pki.CertHolder, ver *pki.Verifier, log *slog.Logger) (*apiCert, error) {
	a := &apiCert{cfg: cfg, name: name, ver: ver, log: log.With("component", "api")}
	var ca *pki.CA
	if cfg.CADir != "" {
		var err error
		if ca, err = pki.LoadCA(cfg.CADir); err != nil {
			return nil, fmt.Errorf("api certificate: %w", err)
		}
		if w := ca.Web(); w != nil {
			if err := ver.SetWebCA(w.Cross()); err != nil {
				return nil, fmt.Errorf("api certificate: %w", err)
			}
		}
	}
	switch t := cfg.API.TLS; {
	case t.Cert != "":
		a.source = "configured"
		c, err := a.loadConfigured()
		if err != nil {
			return nil, err
		}
		a.holder = pki.NewCertHolder(c)
	case ca != nil && ca.Web() != nil:
		a.source = "issued"
		c, err := a.ensureIssued(ca, time.Now())
		if err != nil {
			return nil, err
		}
		a.holder = pki.NewCertHolder(c)
	default:
		a.source = "node"
		a.holder = node
		a.log.Warn("the API presents the node's Ed25519 certificate, which browsers refuse: set center.api.tls.cert and .key " +
			"(daemoneye pki issue --role api NAME --dns ... --ip ...), or center.ca_dir with a web CA (daemoneye pki web-ca)")
	}
	if leaf := a.holder.Load().Leaf; leaf != nil {
		a.log.Info("API certificate", "source", a.source, "serial", pki.FormatSerial(leaf.SerialNumber),
			"names", append(slices.Clone(leaf.DNSNames), ipStrings(leaf.IPAddresses)...), "expires", leaf.NotAfter.UTC())
	}
	return a, nil
}

func ipStrings(ips []net.IP) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

// loadConfigured loads center.api.tls.cert and .key and learns the web CA
// from the chain.
func (a *apiCert) loadConfigured() (*tls.Certificate, error) {
	t := a.cfg.API.TLS
	c, err := pki.LoadServerKeyPair(t.Cert, t.Key)
	if err != nil {
		return nil, fmt.Errorf("center.api.tls: %w", err)
	}
	if c.Leaf.PublicKeyAlgorithm == x509.Ed25519 {
		a.log.Warn("center.api.tls.cert has an Ed25519 key, which browsers refuse", "cert", t.Cert)
	}
	if time.Now().After(c.Leaf.NotAfter) {
		return nil, fmt.Errorf("center.api.tls: %s expired at %s", t.Cert, c.Leaf.NotAfter.UTC().Format(time.RFC3339))
	}
	if w := pki.WebCAOf(c, a.ver.CA()); w != nil {
		if err := a.ver.SetWebCA(w); err != nil {
			return nil, fmt.Errorf("center.api.tls: %w", err)
		}
	}
	for i, f := range []string{t.Cert, t.Key} {
		if st, err := os.Stat(f); err == nil {
			a.mtime[i] = st.ModTime()
		}
	}
	return c, nil
}

// names lists the DNS names and addresses the API is reached by: the
// listen address (every interface's when it is unspecified, with the host
// name), loopback for a loopback listener, and center.api.tls.names.
func (a *apiCert) names() (dns []string, ips []net.IP, loopback bool, err error) {
	host, _, err := net.SplitHostPort(a.cfg.API.Listen)
	if err != nil {
		return nil, nil, false, fmt.Errorf("center.api.listen %q: %w", a.cfg.API.Listen, err)
	}
	add := func(s string) {
		if ip := net.ParseIP(s); ip != nil {
			if ip.IsLoopback() {
				loopback = true
			}
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
		} else if s != "" && !slices.Contains(dns, strings.ToLower(s)) {
			dns = append(dns, strings.ToLower(s))
		}
	}
	switch ip := net.ParseIP(host); {
	case host == "" || ip != nil && ip.IsUnspecified():
		if h, err := os.Hostname(); err == nil {
			add(h)
		}
		if addrs, err := net.InterfaceAddrs(); err == nil {
			for _, ad := range addrs {
				if n, ok := ad.(*net.IPNet); ok && !n.IP.IsLinkLocalUnicast() {
					add(n.IP.String())
				}
			}
		}
		loopback = true
	default:
		add(host)
	}
	for _, n := range a.cfg.API.TLS.Names {
		add(strings.TrimSpace(n))
	}
	if loopback { // Issue adds them
		dns = slices.DeleteFunc(dns, func(s string) bool { return s == "localhost" })
		ips = slices.DeleteFunc(ips, func(ip net.IP) bool { return ip.IsLoopback() })
	}
	return dns, ips, loopback, nil
}

// ensureIssued returns the certificate the center issued itself when it
// is still good (from this web CA, the same names, not due for renewal),
// else issues and stores a new one.
func (a *apiCert) ensureIssued(ca *pki.CA, now time.Time) (*tls.Certificate, error) {
	dns, ips, loopback, err := a.names()
	if err != nil {
		return nil, err
	}
	certFile := filepath.Join(a.cfg.DataDir, apiCertName+".crt")
	keyFile := filepath.Join(a.cfg.DataDir, apiCertName+".key")
	if c, err := pki.LoadServerKeyPair(certFile, keyFile); err == nil {
		leaf := c.Leaf
		want := pki.IssueOptions{DNSNames: dns, IPAddresses: ips, Loopback: loopback}
		if leaf.CheckSignatureFrom(ca.Web().Certificate()) == nil && !pki.NeedsRenewal(leaf, now) && sameNames(leaf, want) {
			return c, nil
		}
	}
	certPEM, keyPEM, err := ca.Issue(pki.RoleAPI, a.name, pki.IssueOptions{DNSNames: dns, IPAddresses: ips, Loopback: loopback, TTL: apiIssuedTTL})
	if err != nil {
		return nil, fmt.Errorf("api certificate: %w", err)
	}
	if err := pki.WriteKeyPair(a.cfg.DataDir, apiCertName, certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("api certificate: %w", err)
	}
	c, err := pki.ServerKeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("api certificate: %w", err)
	}
	a.log.Info("issued the API's certificate from the web CA", "cert", certFile, "serial", pki.FormatSerial(c.Leaf.SerialNumber),
		"expires", c.Leaf.NotAfter.UTC())
	return c, nil
}

// apiIssuedTTL is the life of the certificate the center issues itself:
// renewed by itself, so shorter than an operator-managed one.
const apiIssuedTTL = 30 * 24 * time.Hour

// sameNames reports whether leaf names exactly what opts asks for.
func sameNames(leaf *x509.Certificate, opts pki.IssueOptions) bool {
	dns := slices.Clone(opts.DNSNames)
	ips := ipStrings(opts.IPAddresses)
	if opts.Loopback {
		dns = append(dns, "localhost")
		ips = append(ips, "127.0.0.1", "::1")
	}
	have := ipStrings(leaf.IPAddresses)
	slices.Sort(dns)
	slices.Sort(ips)
	slices.Sort(have)
	hd := slices.Clone(leaf.DNSNames)
	slices.Sort(hd)
	return slices.Equal(dns, hd) && slices.Equal(ips, have)
}

// tlsConfig is the server side's certificate source for API.Serve.
func (a *apiCert) tlsConfig() *tls.Config {
	return &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		if c := a.holder.Load(); c != nil {
			return c, nil
		}
		return nil, fmt.Errorf("no API certificate loaded")
	}}
}

// maintain renews the issued certificate and reloads configured files
// when they change, until ctx ends. (The node certificate renews itself.)
func (a *apiCert) maintain(ctx context.Context, every time.Duration) error {
	if a.source == "node" {
		return nil
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		switch a.source {
		case "configured":
			changed := false
			for i, f := range []string{a.cfg.API.TLS.Cert, a.cfg.API.TLS.Key} {
				if st, err := os.Stat(f); err == nil && !st.ModTime().Equal(a.mtime[i]) {
					changed = true
				}
			}
			if !changed {
				continue
			}
			c, err := a.loadConfigured()
			if err != nil {
				a.log.Error("center.api.tls changed but does not load; keeping the certificate in use", "err", err)
				continue
			}
			a.holder.Store(c)
			a.log.Info("reloaded the API certificate", "serial", pki.FormatSerial(c.Leaf.SerialNumber), "expires", c.Leaf.NotAfter.UTC())
		case "issued":
			if leaf := a.holder.Load().Leaf; leaf != nil && !pki.NeedsRenewal(leaf, time.Now()) {
				continue
			}
			ca, err := pki.LoadCA(a.cfg.CADir)
			if err != nil || ca.Web() == nil {
				a.log.Error("the API certificate is due for renewal but the web CA is unavailable", "ca_dir", a.cfg.CADir, "err", err)
				continue
			}
			c, err := a.ensureIssued(ca, time.Now())
			if err != nil {
				a.log.Error("renew the API certificate", "err", err)
				continue
			}
			a.holder.Store(c)
		}
	}
}
