package bundle

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// versionTimeout bounds the new binary's --version.
const versionTimeout = 30 * time.Second

// checker runs the post-apply check of each file, on the file where it now
// lives: what a node would load after a restart.
type checker struct {
	rulesTrusted []ed25519.PublicKey
	ca           *x509.Certificate
}

// check returns a line saying what passed, or an error wrapping ErrCheck.
func (c *checker) check(ctx context.Context, f File, target string) (string, error) {
	fail := func(format string, args ...any) (string, error) {
		return "", fmt.Errorf("%w: %s %s: %s", ErrCheck, f.Kind, f.Path, fmt.Sprintf(format, args...))
	}
	switch f.Kind {
	case KindBinary:
		ctx, cancel := context.WithTimeout(ctx, versionTimeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, target, "--version")
		cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fail("--version: %v: %s", err, firstLine(out.String()))
		}
		v := firstLine(out.String())
		if !strings.HasPrefix(v, "daemoneye ") {
			return fail("--version printed %q, not a daemoneye version", v)
		}
		return fmt.Sprintf("binary %s runs: %s", f.Path, v), nil
	case KindRules:
		data, err := os.ReadFile(target)
		if err != nil {
			return fail("%v", err)
		}
		p, err := rules.Parse(target, data)
		if err != nil {
			return fail("%v", err)
		}
		ddl, err := rules.StoreSchema(ctx)
		if err != nil {
			return fail("%v", err)
		}
		rep, err := rules.Check(ctx, p, ddl)
		if err != nil {
			return fail("%v", err)
		}
		if !rep.OK() {
			return fail("the pack fails `rules check`:\n%s", rep.Format(f.Path))
		}
		signed := "signature not checked (no trusted rule key given)"
		if len(c.rulesTrusted) > 0 {
			sig, err := os.ReadFile(target + rules.SigSuffix)
			if err != nil {
				return fail("signature: %v", err)
			}
			k, err := rules.Verify(data, sig, c.rulesTrusted)
			if err != nil {
				return fail("signature: %v", err)
			}
			signed = "signed by " + rules.KeyID(k)
		}
		return fmt.Sprintf("rule pack %s (%s %s, %d rules) passes its check; %s", f.Path, p.Name, p.Version, len(p.Rules), signed), nil
	case KindRulesSig:
		return "", nil // checked with its pack
	case KindConfig:
		if _, err := config.Load(config.Sources{File: target}); err != nil {
			return fail("%v", err)
		}
		return fmt.Sprintf("configuration %s loads and validates", f.Path), nil
	case KindCRL:
		data, err := os.ReadFile(target)
		if err != nil {
			return fail("%v", err)
		}
		if c.ca != nil {
			crl, err := pki.ParseCRL(data, c.ca)
			if err != nil {
				return fail("%v", err)
			}
			return fmt.Sprintf("CRL %s (number %s, %d revoked) is signed by the CA", f.Path, crl.Number, len(crl.RevokedCertificateEntries)), nil
		}
		der := data
		if b, _ := pem.Decode(data); b != nil {
			der = b.Bytes
		}
		crl, err := x509.ParseRevocationList(der)
		if err != nil {
			return fail("%v", err)
		}
		return fmt.Sprintf("CRL %s (number %s, %d revoked) parses; issuer not checked (no CA given)", f.Path, crl.Number, len(crl.RevokedCertificateEntries)), nil
	}
	return fail("no check for this kind")
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(strings.TrimSpace(s), "\n")
	return s
}
