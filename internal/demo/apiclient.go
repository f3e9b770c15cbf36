package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// apiClient is the demo's analyst on the center's HTTPS API: mutual TLS
// with the operator's certificate, the center's checked against the CA.
// (The CLI's client is the same thing; the CLI runs this package, so it
// cannot be imported from here.)
type apiClient struct {
	base string
	http *http.Client
}

func newAPIClient(base string, op Operator, caCert string) (*apiClient, error) {
	kp, err := pki.LoadKeyPair(op.Cert, op.Key)
	if err != nil {
		return nil, fmt.Errorf("demo: operator: %w", err)
	}
	ca, err := pki.LoadCACert(caCert)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{*kp}, MinVersion: tls.VersionTLS13}}
	return &apiClient{base: base, http: &http.Client{Transport: tr, Timeout: 60 * time.Second}}, nil
}

func (c *apiClient) close() { c.http.CloseIdleConnections() }

// do sends a request with a JSON body (nil: none) and returns the answer's
// body; a status other than 2xx is an error with the API's message.
func (c *apiClient) do(ctx context.Context, method, path string, body any, limit int64) ([]byte, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("api: %s %s: answer larger than %d bytes", method, path, limit)
	}
	if resp.StatusCode/100 != 2 {
		var e struct {
			Error string `json:"error"`
		}
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("api: %s %s: %s (HTTP %d)", method, path, e.Error, resp.StatusCode)
		}
		return nil, fmt.Errorf("api: %s %s: HTTP %d", method, path, resp.StatusCode)
	}
	return data, nil
}

// stopTrace asks the center to stop a trace on every host it runs on.
func (c *apiClient) stopTrace(ctx context.Context, id, reason string) error {
	_, err := c.do(ctx, http.MethodPost, "/api/v1/traces/"+url.PathEscape(id)+"/stop", map[string]string{"reason": reason}, 1<<20)
	return err
}

// export downloads a trace's forensic package; the center records the
// export in its ledger before it answers.
func (c *apiClient) export(ctx context.Context, id, reason string) ([]byte, error) {
	return c.do(ctx, http.MethodGet, "/api/v1/traces/"+url.PathEscape(id)+"/export?"+url.Values{"reason": {reason}}.Encode(), nil, ledger.MaxPackageSize)
}
