package cli

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/evilbitlabs/daemoneye/rules"
)

// RulesCmd groups the rule pack verbs.
type RulesCmd struct {
	Check  RulesCheckCmd  `cmd:"" help:"Validate a rule pack (SQL, read-only, columns) and run each rule's fixtures."`
	Sign   RulesSignCmd   `cmd:"" help:"Sign a rule pack with an offline Ed25519 key: writes PACK.sig."`
	Keygen RulesKeygenCmd `cmd:"" help:"Create an Ed25519 key pair for signing rule packs (KEY and KEY.pub)."`
}

// RulesCheckCmd validates a pack.
type RulesCheckCmd struct {
	Pack    string   `arg:"" type:"existingfile" help:"Rule pack (YAML)."`
	Sig     string   `type:"path" help:"Signature to verify (default PACK.sig); needs --trusted." placeholder:"FILE"`
	Trusted []string `type:"existingfile" help:"Trusted public key (PEM); repeatable. With it, the signature must verify too." placeholder:"KEY.pub"`
}

// checkFailed makes `rules check` exit 1 after printing its report.
type checkFailed struct{ msg string }

func (e checkFailed) Error() string { return e.msg }
func (checkFailed) ExitCode() int   { return 1 }

// Run prints PASS or FAIL for each rule, with reasons, and fails if any
// rule (or the signature, when checked) fails.
func (c *RulesCheckCmd) Run(ctx context.Context, g *Globals) error {
	data, err := os.ReadFile(c.Pack)
	if err != nil {
		return err
	}
	sigOK := true
	switch {
	case len(c.Trusted) > 0:
		keys, err := rules.LoadPublicKeys(c.Trusted...)
		if err != nil {
			return err
		}
		sigPath := c.Sig
		if sigPath == "" {
			sigPath = c.Pack + rules.SigSuffix
		}
		sig, err := os.ReadFile(sigPath)
		if err != nil {
			fmt.Fprintf(g.stdout, "FAIL signature: %v\n", err)
			sigOK = false
		} else if k, err := rules.Verify(data, sig, keys); err != nil {
			fmt.Fprintf(g.stdout, "FAIL signature %s: %v\n", sigPath, err)
			sigOK = false
		} else {
			fmt.Fprintf(g.stdout, "PASS signature %s (key %s)\n", sigPath, rules.KeyID(k))
		}
	case c.Sig != "":
		return errors.New("--sig needs --trusted KEY.pub to verify against")
	default:
		fmt.Fprintln(g.stdout, "signature not checked (no --trusted key given)")
	}
	p, err := rules.Parse(c.Pack, data)
	if err != nil {
		fmt.Fprintln(g.stdout, err)
		return checkFailed{"rule pack does not parse"}
	}
	ddl, err := rules.StoreSchema(ctx)
	if err != nil {
		return err
	}
	rep, err := rules.Check(ctx, p, ddl)
	if err != nil {
		return err
	}
	fmt.Fprint(g.stdout, rep.Format(c.Pack))
	if !rep.OK() || !sigOK {
		return checkFailed{fmt.Sprintf("rule pack %s failed its check", c.Pack)}
	}
	return nil
}

// RulesSignCmd signs a pack.
type RulesSignCmd struct {
	Pack  string `arg:"" type:"existingfile" help:"Rule pack (YAML) to sign, byte for byte."`
	Key   string `required:"" type:"existingfile" help:"Private signing key (PKCS#8 PEM, mode 0600), from rules keygen." placeholder:"KEY"`
	Out   string `type:"path" help:"Signature file (default PACK.sig)." placeholder:"FILE"`
	Force bool   `help:"Sign even when the pack fails its check."`
}

// Run checks the pack, then writes its signature.
func (c *RulesSignCmd) Run(ctx context.Context, g *Globals) error {
	key, err := rules.LoadPrivateKey(c.Key)
	if err != nil {
		return err
	}
	data, err := os.ReadFile(c.Pack)
	if err != nil {
		return err
	}
	p, err := rules.Parse(c.Pack, data)
	if err != nil {
		return err
	}
	ddl, err := rules.StoreSchema(ctx)
	if err != nil {
		return err
	}
	rep, err := rules.Check(ctx, p, ddl)
	if err != nil {
		return err
	}
	if !rep.OK() {
		fmt.Fprint(g.stderr, rep.Format(c.Pack))
		if !c.Force {
			return errors.New("not signed: the pack fails its check (fix it, or pass --force)")
		}
	}
	out := c.Out
	if out == "" {
		out = c.Pack + rules.SigSuffix
	}
	if err := writeRulesFile(out, rules.EncodeSignature(rules.Sign(data, key)), 0o644); err != nil {
		return fmt.Errorf("write signature: %w", err)
	}
	fmt.Fprintf(g.stdout, "signed %s (pack %s %s, %d rules) with key %s\n  %s\n",
		c.Pack, p.Name, p.Version, len(p.Rules), rules.KeyID(key.Public().(ed25519.PublicKey)), out)
	return nil
}

// RulesKeygenCmd creates a signing key pair.
type RulesKeygenCmd struct {
	Out string `required:"" type:"path" help:"Private key file to create; the public key goes to OUT.pub." placeholder:"KEY"`
}

// Run writes the pair.
func (c *RulesKeygenCmd) Run(g *Globals) error {
	pub, err := rules.GenerateKey(c.Out)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "created rule signing key %s\n  private: %s (mode 0600: keep it offline)\n  public:  %s (give it to centers and agents as a trusted key)\n",
		rules.KeyID(pub), c.Out, c.Out+".pub")
	return nil
}

// writeRulesFile writes path through a temporary file in the same directory.
func writeRulesFile(path string, data []byte, mode os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
