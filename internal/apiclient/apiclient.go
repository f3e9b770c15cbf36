// Package apiclient is an operator on the center's HTTPS API: mutual TLS
// with the operator's certificate from the customer CA, the center's
// certificate checked against the same CA (the web CA's cross-certificate
// links the API's ECDSA certificate to it). The CLI's verbs, the demo and
// the scale tool's analyst use it.
package apiclient

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// MaxJSON bounds a JSON answer.
const MaxJSON = 64 << 20

// Client talks to one center as one operator.
type Client struct {
	base string
	http *http.Client
	cert *tls.Certificate
}

// New loads the operator's key pair and the CA certificate. base is the
// API's https:// URL; timeout bounds each request (0: 60 s).
func New(base, certFile, keyFile, caFile string, timeout time.Duration) (*Client, error) {
	cert, err := pki.LoadKeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	ca, err := pki.LoadCACert(caFile)
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if timeout <= 0 {
		timeout = 60 * time.Second
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13},
		MaxIdleConnsPerHost: 8}
	return &Client{base: strings.TrimRight(base, "/"), http: &http.Client{Transport: tr, Timeout: timeout}, cert: cert}, nil
}

// Certificate is the operator's certificate (Leaf set) and key.
func (c *Client) Certificate() *tls.Certificate { return c.cert }

// Key is the operator's signing key (trace commands).
func (c *Client) Key() ed25519.PrivateKey { return c.cert.PrivateKey.(ed25519.PrivateKey) }

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// Open sends a request with a JSON body (nil: none) and returns the
// response of a 2xx answer for the caller to read and close; any other
// status is an error carrying the API's own message.
func (c *Client) Open(ctx context.Context, method, path string, body any) (*http.Response, error) {
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
	if resp.StatusCode/100 == 2 {
		return resp, nil
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(data, &e) == nil && e.Error != "" {
		return nil, fmt.Errorf("%s %s: %s (HTTP %d)", method, path, e.Error, resp.StatusCode)
	}
	return nil, fmt.Errorf("%s %s: HTTP %d", method, path, resp.StatusCode)
}

// Do is Open reading the whole answer, at most limit bytes.
func (c *Client) Do(ctx context.Context, method, path string, body any, limit int64) ([]byte, error) {
	resp, err := c.Open(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return ReadAll(resp.Body, limit, method, path)
}

// JSON is Do decoding the answer into out (nil: discarded).
func (c *Client) JSON(ctx context.Context, method, path string, body, out any) error {
	data, err := c.Do(ctx, method, path, body, MaxJSON)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	return nil
}

// ReadAll reads an answer of at most limit bytes.
func ReadAll(r io.Reader, limit int64, method, path string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, limit+1))
	if err != nil {
		return nil, fmt.Errorf("api: %s %s: %w", method, path, err)
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("api: %s %s: answer larger than %d bytes", method, path, limit)
	}
	return data, nil
}
