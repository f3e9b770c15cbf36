package transport

import (
	"context"
	"crypto/tls"
	"testing"

	"github.com/quic-go/quic-go"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// testCA makes a customer CA in a temp dir.
func testCA(t *testing.T) *pki.CA {
	t.Helper()
	ca, err := pki.Init(t.TempDir(), "test", 0)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func nodeTLS(t *testing.T, ca *pki.CA, role pki.Role, name string, server bool, allowed ...pki.Role) *tls.Config {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(role, name, pki.IssueOptions{Loopback: role != pki.RoleOperator})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	v, err := ca.Verifier()
	if err != nil {
		t.Fatal(err)
	}
	return v.TLSConfig(pki.NewCertHolder(cert), server, []string{ALPN}, allowed...)
}

// testTLS returns an agent ("client") and a proxy ("server") configuration
// from one CA.
func testTLS(t *testing.T) (client, server *tls.Config) {
	ca := testCA(t)
	return nodeTLS(t, ca, pki.RoleAgent, "client", false, pki.RoleProxy), nodeTLS(t, ca, pki.RoleProxy, "server", true, pki.RoleAgent)
}

func dialRaw(ctx context.Context, addr string, c *tls.Config) (*quic.Conn, error) {
	return quic.DialAddr(ctx, addr, c, QUICConfig())
}
