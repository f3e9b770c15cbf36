package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// APIFlags say how an operator verb reaches the center's HTTPS API: with
// the operator's certificate from the customer CA (mutual TLS), the
// center's certificate checked against the same CA.
type APIFlags struct {
	API  string `name:"api" env:"DAEMONEYE_API" default:"https://127.0.0.1:8443" help:"Center API base URL (center.api.listen)." placeholder:"URL"`
	Cert string `name:"cert" env:"DAEMONEYE_OPERATOR_CERT" type:"path" help:"Operator certificate (daemoneye pki issue --role operator NAME)." placeholder:"FILE"`
	Key  string `name:"key" env:"DAEMONEYE_OPERATOR_KEY" type:"path" help:"Operator private key." placeholder:"FILE"`
	CA   string `name:"ca" env:"DAEMONEYE_CA" type:"path" help:"Customer CA certificate (ca.crt)." placeholder:"FILE"`
}

// apiClient talks to the center's API as one operator.
type apiClient struct {
	base string
	http *http.Client
	cert *tls.Certificate
	name string // the operator's name in the certificate
}

func (f APIFlags) client() (*apiClient, error) {
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return nil, errors.New("api: --cert, --key and --ca are required (or DAEMONEYE_OPERATOR_CERT, DAEMONEYE_OPERATOR_KEY, DAEMONEYE_CA)")
	}
	u, err := url.Parse(f.API)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("api: %q is not an https:// URL", f.API)
	}
	cert, err := pki.LoadKeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("api: %s: %w", f.Cert, err)
	}
	role, name, err := pki.Identity(leaf)
	if err != nil {
		return nil, fmt.Errorf("api: %s: %w", f.Cert, err)
	}
	if role != pki.RoleOperator {
		return nil, fmt.Errorf("api: %s is a %s certificate, not an operator's", f.Cert, role)
	}
	ca, err := pki.LoadCACert(f.CA)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13}}
	return &apiClient{base: strings.TrimRight(f.API, "/"), http: &http.Client{Transport: tr, Timeout: 60 * time.Second}, cert: cert, name: name}, nil
}

// key is the operator's signing key.
func (c *apiClient) key() ed25519.PrivateKey { return c.cert.PrivateKey.(ed25519.PrivateKey) }

func (c *apiClient) close() { c.http.CloseIdleConnections() }

// do sends body (JSON) and decodes the answer into out. An error status
// becomes an error carrying the API's own message.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("api: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s %s: %s (HTTP %d)", method, path, e.Error, resp.StatusCode)
		}
		return fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	return nil
}
