package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/apiclient"
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

// apiClient is the operator's client (internal/apiclient) and the name
// in their certificate.
type apiClient struct {
	*apiclient.Client
	name string
}

func (f APIFlags) client() (*apiClient, error) {
	if f.Cert == "" || f.Key == "" || f.CA == "" {
		return nil, errors.New("api: --cert, --key and --ca are required (or DAEMONEYE_OPERATOR_CERT, DAEMONEYE_OPERATOR_KEY, DAEMONEYE_CA)")
	}
	u, err := url.Parse(f.API)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("api: %q is not an https:// URL", f.API)
	}
	cl, err := apiclient.New(f.API, f.Cert, f.Key, f.CA, 60*time.Second)
	if err != nil {
		return nil, err
	}
	leaf, err := x509.ParseCertificate(cl.Certificate().Certificate[0])
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
	return &apiClient{Client: cl, name: name}, nil
}

// key is the operator's signing key.
func (c *apiClient) key() ed25519.PrivateKey { return c.Key() }

func (c *apiClient) close() { c.Close() }

// do sends body (JSON) and decodes the answer into out. An error status
// becomes an error carrying the API's own message.
func (c *apiClient) do(ctx context.Context, method, path string, body, out any) error {
	return c.JSON(ctx, method, path, body, out)
}
