// Package pki is DaemonEye's customer-owned public key infrastructure: the root
// of trust for every link in the tree (agent -> proxy -> ... -> center) and for
// every operator. Nothing here talks to a public CA; the customer runs
// `daemoneye pki init` once, keeps the root key on the center (or offline), and
// the center issues and renews short-lived node certificates. Revocations are
// published as a CRL that the center pushes down the tree with the other
// control traffic; every node swaps it into its Verifier while links stay up.
//
// Identity. A certificate names exactly one principal: its Subject CommonName
// is the node (or operator) name and one URI SAN daemoneye://ROLE/NAME carries
// the role. Identity parses it back. Nodes (agent, proxy, center) get both
// ClientAuth and ServerAuth because a proxy is a server to its children and a
// client of its parent; operators get ClientAuth only.
//
// The pieces:
//
//   - CA (Init, LoadCA): the root key and certificate in a directory
//     (ca.crt, ca.key mode 0600, crl.pem). Issue makes a node or operator
//     certificate; Revoke/RevokeCert append to the CRL; CRLPEM is what the
//     center pushes down.
//   - Renewal: a node makes a new key and a CSR (NewCSR); the CA signs it with
//     SignCSR only for the identity of the valid, unrevoked certificate that
//     asks, so a node can renew only itself. Across proxies, where the center
//     does not see the node's TLS handshake, RenewalRequest adds a signature
//     by the current key (proof of possession) and SignRenewal checks it.
//     NeedsRenewal says when to start (less than a third of the life left).
//   - Verifier: the CA certificate plus the current CRL, swapped atomically
//     with SetCRL (never to a lower CRL number). VerifyPeer checks a peer
//     chain: our CA, validity window, not revoked, allowed role. TLSConfig
//     builds a TLS 1.3-only config for either side of a link (TCP or QUIC)
//     that runs these checks and takes its own certificate from a CertHolder,
//     so a renewed certificate is used by the next handshake without
//     restarting anything. The checks run in VerifyConnection, which Go also
//     calls on resumed sessions (VerifyPeerCertificate is not). A node keeps
//     ca.crt and the last accepted CRL on disk (LoadVerifier, SaveCRL).
//   - Errors: rejections are *CertError values that wrap one of the sentinels
//     (ErrUnknownCA, ErrExpired, ErrNotYetValid, ErrRevoked, ErrWrongRole,
//     ErrNoCertificate, ErrBadCertificate, and ErrWrongIdentity for a
//     renewal naming someone else); Describe turns any error from a
//     handshake into the one-line reason for a log line.
//   - The web CA (web.go): an ECDSA P-256 CA beside the root, certified by
//     it, for what browsers must accept: the API's server certificate (role
//     api) and operators' browser certificates (PKCS#12).
//
// The root and every node key are Ed25519; a node's certificate key is also
// the key that signs its batches. Only the web CA's certificates are ECDSA.
package pki

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Role is what a certificate's holder is allowed to be on a link.
type Role string

const (
	RoleAgent    Role = "agent"
	RoleProxy    Role = "proxy"
	RoleCenter   Role = "center"
	RoleOperator Role = "operator"
	// RoleAPI is the center's HTTPS API as browsers see it: a server
	// certificate from the web CA (web.go).
	RoleAPI Role = "api"
)

// Roles lists every role, in tree order.
var Roles = []Role{RoleAgent, RoleProxy, RoleCenter, RoleOperator, RoleAPI}

// Valid reports whether r is one of the known roles.
func (r Role) Valid() bool {
	switch r {
	case RoleAgent, RoleProxy, RoleCenter, RoleOperator, RoleAPI:
		return true
	}
	return false
}

// IsNode reports whether r is a node of the tree (serves and dials links),
// as opposed to a human operator.
func (r Role) IsNode() bool { return r == RoleAgent || r == RoleProxy || r == RoleCenter }

// ParseRole parses a role name as given on a command line or in a config file.
func ParseRole(s string) (Role, error) {
	r := Role(s)
	if !r.Valid() {
		return "", fmt.Errorf("unknown role %q (want agent, proxy, center, operator or api)", s)
	}
	return r, nil
}

// URIScheme is the scheme of the identity URI SAN.
const URIScheme = "daemoneye"

// MaxNameLen is the longest node or operator name.
const MaxNameLen = 64

// ValidateName checks a node or operator name: 1..64 characters of
// [A-Za-z0-9._-]. Names become file names (NAME.crt, NAME.key) and URI path
// segments, so a leading '.' (hidden file, "..") or '-' (read as a flag by
// command lines) is refused too.
func ValidateName(name string) error {
	if name == "" {
		return errors.New("empty name")
	}
	if len(name) > MaxNameLen {
		return fmt.Errorf("name %.16q... is %d characters long, at most %d allowed", name, len(name), MaxNameLen)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '_':
		case c == '.' || c == '-':
			if i == 0 {
				return fmt.Errorf("name %q must not start with %q", name, c)
			}
		default:
			return fmt.Errorf("name %q: character %q not allowed (use A-Z a-z 0-9 . _ -)", name, c)
		}
	}
	return nil
}

// IdentityURI is the URI SAN that names role and name in a certificate.
func IdentityURI(role Role, name string) *url.URL {
	return &url.URL{Scheme: URIScheme, Host: string(role), Path: "/" + name}
}

// parseIdentityURI parses daemoneye://ROLE/NAME strictly: nothing else may
// be in the URI, so two different URIs never name the same principal.
func parseIdentityURI(u *url.URL) (Role, string, error) {
	if u.Scheme != URIScheme {
		return "", "", fmt.Errorf("uri %q: scheme is not %s", u.Redacted(), URIScheme)
	}
	if u.Opaque != "" || u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || u.RawPath != "" {
		return "", "", fmt.Errorf("identity uri %q has extra parts", u.Redacted())
	}
	role := Role(u.Host)
	if !role.Valid() {
		return "", "", fmt.Errorf("identity uri %q: unknown role %q", u.Redacted(), u.Host)
	}
	name, ok := strings.CutPrefix(u.Path, "/")
	if !ok {
		return "", "", fmt.Errorf("identity uri %q: no name", u.Redacted())
	}
	if err := ValidateName(name); err != nil {
		return "", "", fmt.Errorf("identity uri %q: %w", u.Redacted(), err)
	}
	return role, name, nil
}

// identityFrom finds the single identity URI among uris and checks that it
// agrees with the subject common name.
func identityFrom(commonName string, uris []*url.URL) (Role, string, error) {
	var (
		role  Role
		name  string
		found int
	)
	for _, u := range uris {
		if u == nil || u.Scheme != URIScheme {
			continue
		}
		found++
		r, n, err := parseIdentityURI(u)
		if err != nil {
			return "", "", err
		}
		role, name = r, n
	}
	switch {
	case found == 0:
		return "", "", fmt.Errorf("no %s:// identity uri", URIScheme)
	case found > 1:
		return "", "", fmt.Errorf("%d %s:// identity uris, want exactly one", found, URIScheme)
	}
	if commonName != name {
		return "", "", fmt.Errorf("common name %q does not match identity %s/%s", commonName, role, name)
	}
	return role, name, nil
}
