package cli

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/bundle"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// BundleCmd groups the air-gap update verbs.
type BundleCmd struct {
	Create BundleCreateCmd `cmd:"" help:"Build a signed update bundle: the daemoneye binary, rule packs (with their .sig), configuration files, a CRL."`
	Verify BundleVerifyCmd `cmd:"" help:"Check a bundle offline with trusted public key(s): signature, every file's size and SHA-256, paths, limits."`
	Apply  BundleApplyCmd  `cmd:"" help:"Install a bundle on this node, all or nothing: verify, stage, swap in, check, and roll everything back on any failure."`
	Keygen BundleKeygenCmd `cmd:"" help:"Create an Ed25519 key pair for signing bundles (KEY, mode 0600, and KEY.pub)."`
}

// BundleKeygenCmd creates a bundle-signing key pair.
type BundleKeygenCmd struct {
	Out string `required:"" type:"path" help:"Private key file to create; the public key goes to OUT.pub." placeholder:"KEY"`
}

// Run writes the pair (the same key files as rule pack keys).
func (c *BundleKeygenCmd) Run(g *Globals) error {
	pub, err := rules.GenerateKey(c.Out)
	if err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "created bundle signing key %s\n  private: %s (mode 0600: keep it offline)\n  public:  %s (give it to the nodes: bundle apply --trusted)\n",
		bundle.KeyID(pub), c.Out, c.Out+".pub")
	return nil
}

// BundleCreateCmd builds a bundle.
type BundleCreateCmd struct {
	Key         string   `required:"" type:"existingfile" help:"Private signing key (from bundle keygen)." placeholder:"KEY"`
	Out         string   `short:"o" required:"" type:"path" help:"Bundle file to write." placeholder:"FILE"`
	Binary      string   `help:"The daemoneye binary, installed at PATH (default usr/local/bin/daemoneye)." placeholder:"FILE[=PATH]"`
	Rules       []string `help:"A rule pack (repeatable); PACK.sig goes with it when present. Default PATH etc/daemoneye/rules/NAME." placeholder:"PACK[=PATH]"`
	ConfigFile  []string `name:"config-file" help:"A configuration file (repeatable); default PATH etc/daemoneye/daemoneye.yaml." placeholder:"FILE[=PATH]"`
	CRL         string   `name:"crl" help:"A CRL (PEM or DER) and the node's CRL file it replaces." placeholder:"FILE=PATH"`
	Target      []string `help:"Role the bundle is for: agent, proxy or center (repeatable; default all three)." placeholder:"ROLE"`
	Sequence    uint64   `help:"Sequence number; nodes refuse a bundle not above the last they applied (default: the creation time in Unix seconds)."`
	Creator     string   `help:"Who made the bundle (default USER@HOST)."`
	Description string   `help:"A line saying what the bundle is for."`
}

// Run signs and writes the bundle.
func (c *BundleCreateCmd) Run(g *Globals) error {
	key, err := rules.LoadPrivateKey(c.Key)
	if err != nil {
		return err
	}
	for _, r := range c.Target {
		if !slices.Contains(bundle.Roles, r) {
			return fmt.Errorf("--target %q: want agent, proxy or center", r)
		}
	}
	var srcs []bundle.Source
	add := func(kind bundle.Kind, spec, def string) error {
		src, dst, ok := strings.Cut(spec, "=")
		if !ok {
			if def == "" {
				return fmt.Errorf("--%s %s: say where it goes: FILE=PATH (relative to the node's root)", flagOf[kind], spec)
			}
			dst = def
		}
		dst = strings.TrimPrefix(dst, "/")
		if err := bundle.CheckPath(dst); err != nil {
			return fmt.Errorf("--%s %s: %w", flagOf[kind], spec, err)
		}
		srcs = append(srcs, bundle.Source{Kind: kind, Src: src, Path: dst})
		return nil
	}
	if c.Binary != "" {
		if err := add(bundle.KindBinary, c.Binary, "usr/local/bin/daemoneye"); err != nil {
			return err
		}
	}
	for _, spec := range c.Rules {
		src, _, _ := strings.Cut(spec, "=")
		if err := add(bundle.KindRules, spec, "etc/daemoneye/rules/"+filepath.Base(src)); err != nil {
			return err
		}
		if _, err := os.Stat(src + rules.SigSuffix); err == nil {
			srcs = append(srcs, bundle.Source{Kind: bundle.KindRulesSig, Src: src + rules.SigSuffix, Path: srcs[len(srcs)-1].Path + rules.SigSuffix})
		} else {
			fmt.Fprintf(g.stderr, "warning: %s has no signature (%s%s): nodes refuse it unless they allow unsigned packs\n", src, src, rules.SigSuffix)
		}
	}
	for _, spec := range c.ConfigFile {
		if err := add(bundle.KindConfig, spec, "etc/daemoneye/daemoneye.yaml"); err != nil {
			return err
		}
	}
	if c.CRL != "" {
		if err := add(bundle.KindCRL, c.CRL, ""); err != nil {
			return err
		}
	}
	if len(srcs) == 0 {
		return errors.New("nothing to put in the bundle: give --binary, --rules, --config-file or --crl")
	}
	creator := c.Creator
	if creator == "" {
		creator = defaultCreator()
	}
	m, err := bundle.CreateFile(c.Out, bundle.Header{Sequence: c.Sequence, Creator: creator, Description: c.Description, Targets: c.Target},
		srcs, key, fileProgress(g.stderr))
	if err != nil {
		return fmt.Errorf("bundle not written: %w", err)
	}
	fmt.Fprintf(g.stdout, "created %s: sequence %d, for %s, signed with key %s\n", c.Out, m.Sequence, strings.Join(m.Targets, ", "),
		bundle.KeyID(key.Public().(ed25519.PublicKey)))
	printFiles(g.stdout, m.Files, nil)
	return nil
}

// flagOf names the flag that adds a file of each kind, for messages.
var flagOf = map[bundle.Kind]string{bundle.KindBinary: "binary", bundle.KindRules: "rules", bundle.KindConfig: "config-file", bundle.KindCRL: "crl"}

func defaultCreator() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	host, _ := os.Hostname()
	return name + "@" + host
}

// BundleVerifyCmd checks a bundle offline.
type BundleVerifyCmd struct {
	Bundle  string   `arg:"" type:"existingfile" help:"The bundle file." placeholder:"FILE"`
	Trusted []string `required:"" type:"existingfile" help:"Trusted bundle public key (PEM, from bundle keygen); repeatable." placeholder:"KEY.pub"`
}

// Run verifies and prints what the bundle holds.
func (c *BundleVerifyCmd) Run(g *Globals) error {
	keys, err := rules.LoadPublicKeys(c.Trusted...)
	if err != nil {
		return err
	}
	op, err := bundle.VerifyFile(c.Bundle, keys, fileProgress(g.stderr))
	if err != nil {
		return fmt.Errorf("bundle %s FAILED: %w", c.Bundle, err)
	}
	fmt.Fprintf(g.stdout, "bundle %s VERIFIED\n", c.Bundle)
	printManifest(g.stdout, op)
	printFiles(g.stdout, op.Manifest.Files, nil)
	return nil
}

func printManifest(w io.Writer, op *bundle.Opened) {
	m := op.Manifest
	fmt.Fprintf(w, "  format       %s\n", m.Format)
	fmt.Fprintf(w, "  signed by    key %s\n", bundle.KeyID(op.Signer))
	fmt.Fprintf(w, "  digest       %s\n", op.Digest)
	fmt.Fprintf(w, "  sequence     %d, created %s by %s\n", m.Sequence, m.Created.Format(time.RFC3339), m.Creator)
	fmt.Fprintf(w, "  for          %s\n", strings.Join(m.Targets, ", "))
	if m.Description != "" {
		fmt.Fprintf(w, "  description  %s\n", m.Description)
	}
}

// printFiles lists files; with exists, whether each replaces or creates.
func printFiles(w io.Writer, files []bundle.File, exists []bool) {
	for i, f := range files {
		verb := ""
		if exists != nil {
			verb = "create  "
			if exists[i] {
				verb = "replace "
			}
		}
		fmt.Fprintf(w, "  %s%-9s %s  %s  %s  sha256:%s\n", verb, f.Kind, f.Mode, size(f.Size), f.Path, f.SHA256)
	}
}

func size(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%7.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%7.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%9d B", n)
}

// fileProgress reports the bundle's large files on w through the one
// progress helper: a line a second once a file takes more than a second.
func fileProgress(w io.Writer) bundle.Progress {
	bars := map[string]*progress{}
	return func(step string, f bundle.File, done int64) {
		k := step + " " + f.Path
		p := bars[k]
		if p == nil {
			p = newProgress(w, k, f.Size, true)
			bars[k] = p
		}
		p.set(done, f.Size)
		if done == f.Size {
			delete(bars, k)
		}
	}
}

// BundleApplyCmd installs a bundle.
type BundleApplyCmd struct {
	Bundle   string   `arg:"" type:"existingfile" help:"The bundle file." placeholder:"FILE"`
	Trusted  []string `required:"" type:"existingfile" help:"Trusted bundle public key (PEM); repeatable." placeholder:"KEY.pub"`
	To       string   `default:"/" type:"path" help:"Root the bundle's paths are relative to." placeholder:"ROOT"`
	State    string   `type:"path" help:"Bundle state directory: applied-bundles log, journal, backups (default ROOT/var/lib/daemoneye/bundles)." placeholder:"DIR"`
	Role     string   `help:"This node's role (agent, proxy, center); the bundle must be meant for it." enum:"agent,proxy,center," default:"" placeholder:"ROLE"`
	RulesKey []string `type:"existingfile" help:"Trusted rule pack key (PEM); with it, every pack the bundle brings must carry a signature that verifies." placeholder:"KEY.pub"`
	CA       string   `name:"ca" type:"existingfile" help:"CA certificate; with it, a CRL the bundle brings must be signed by it." placeholder:"FILE"`
	Force    bool     `help:"Apply even a bundle not newer than the last one applied here (or the same one again)."`
	Yes      bool     `help:"Do not ask for confirmation (needed when stdin is not a terminal)."`
}

// stdinIsTerminal says whether confirmation can be asked on stdin (a
// variable so tests can answer).
var stdinIsTerminal = func(g *Globals) bool { return isTerminal(g.stdin) }

// Run applies the bundle and prints what it did.
func (c *BundleApplyCmd) Run(ctx context.Context, g *Globals) error {
	if !c.Yes && !stdinIsTerminal(g) {
		return errors.New("not applied: stdin is not a terminal, so there is no one to confirm; pass --yes to apply without asking")
	}
	keys, err := rules.LoadPublicKeys(c.Trusted...)
	if err != nil {
		return err
	}
	o := bundle.ApplyOptions{Root: c.To, StateDir: c.State, Trusted: keys, Role: c.Role, Force: c.Force,
		Progress: fileProgress(g.stderr), Out: g.stderr}
	if len(c.RulesKey) > 0 {
		if o.RulesTrusted, err = rules.LoadPublicKeys(c.RulesKey...); err != nil {
			return err
		}
	}
	if c.CA != "" {
		var ca *x509.Certificate
		if ca, err = pki.LoadCACert(c.CA); err != nil {
			return err
		}
		o.CA = ca
	}
	if !c.Yes {
		o.Confirm = func(p *bundle.Plan) bool {
			w := g.stderr
			fmt.Fprintf(w, "bundle %s VERIFIED\n", c.Bundle)
			printManifest(w, p.Opened)
			var exists []bool
			var files []bundle.File
			for _, f := range p.Files {
				exists, files = append(exists, f.Exists), append(files, f.File)
			}
			printFiles(w, files, exists)
			if p.Previous != nil {
				fmt.Fprintf(w, "  last applied here: sequence %d (bundle %s) on %s\n", p.Previous.Sequence, p.Previous.Digest[:min(12, len(p.Previous.Digest))],
					p.Previous.Time.Format(time.RFC3339))
			}
			return confirm(g, fmt.Sprintf("apply these %d file(s) under %s? [y/N] ", len(p.Files), p.Root))
		}
	}
	res, err := bundle.Apply(ctx, c.Bundle, o)
	if errors.Is(err, bundle.ErrDeclined) {
		return errors.New("not applied (answer y, or pass --yes)")
	}
	if err != nil {
		return fmt.Errorf("bundle %s NOT applied: %w", c.Bundle, err)
	}
	m := res.Opened.Manifest
	fmt.Fprintf(g.stdout, "applied bundle %s (sequence %d) under %s: %d file(s)\n", res.Opened.Digest[:12], m.Sequence, c.To, len(res.Files))
	for _, l := range res.Checks {
		fmt.Fprintf(g.stdout, "  checked: %s\n", l)
	}
	if res.Backup != "" {
		fmt.Fprintf(g.stdout, "  the files it replaced are kept in %s\n", res.Backup)
	}
	for _, f := range m.Files {
		switch f.Kind {
		case bundle.KindBinary:
			fmt.Fprintf(g.stdout, "  restart daemoneye to run the new binary (%s)\n", f.Path)
		case bundle.KindConfig:
			fmt.Fprintf(g.stdout, "  restart daemoneye to use the new configuration (%s)\n", f.Path)
		case bundle.KindRules:
			fmt.Fprintf(g.stdout, "  a center running with %s among its packs reloads it within seconds and pushes it to the agents\n", f.Path)
		case bundle.KindCRL:
			fmt.Fprintf(g.stdout, "  the node reads its CRL (%s) at start; a running tree gets the CA's CRL from the center\n", f.Path)
		}
	}
	return nil
}
