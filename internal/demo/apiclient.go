package demo

import (
	"context"
	"fmt"
	"net/http"
	"net/url"

	"github.com/evilbitlabs/daemoneye/internal/apiclient"
	"github.com/evilbitlabs/daemoneye/ledger"
)

// apiClient is the demo's analyst on the center's HTTPS API.
type apiClient struct{ *apiclient.Client }

func newAPIClient(base string, op Operator, caCert string) (*apiClient, error) {
	cl, err := apiclient.New(base, op.Cert, op.Key, caCert, 0)
	if err != nil {
		return nil, fmt.Errorf("demo: operator: %w", err)
	}
	return &apiClient{cl}, nil
}

func (c *apiClient) close() { c.Close() }

// stopTrace asks the center to stop a trace on every host it runs on.
func (c *apiClient) stopTrace(ctx context.Context, id, reason string) error {
	return c.JSON(ctx, http.MethodPost, "/api/v1/traces/"+url.PathEscape(id)+"/stop", map[string]string{"reason": reason}, nil)
}

// export downloads a trace's forensic package; the center records the
// export in its ledger before it answers.
func (c *apiClient) export(ctx context.Context, id, reason string) ([]byte, error) {
	return c.Do(ctx, http.MethodGet, "/api/v1/traces/"+url.PathEscape(id)+"/export?"+url.Values{"reason": {reason}}.Encode(), nil, ledger.MaxPackageSize)
}
