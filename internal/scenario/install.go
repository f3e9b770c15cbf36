package scenario

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// What the scenario runs, and the Debian package of each.
const (
	Apache2Bin = "/usr/sbin/apache2"
	SSHDBin    = "/usr/sbin/sshd"
	SSHBin     = "/usr/bin/ssh"
	KeygenBin  = "/usr/bin/ssh-keygen"
	// ModulesDir holds Debian's apache2 modules; the scenario loads
	// mod_mpm_prefork, mod_authz_core, mod_alias and mod_cgi from it.
	ModulesDir = "/usr/lib/apache2/modules"
)

var required = []struct{ path, pkg string }{
	{Apache2Bin, "apache2"},
	{ModulesDir + "/mod_cgi.so", "apache2"},
	{ModulesDir + "/mod_mpm_prefork.so", "apache2"},
	{SSHDBin, "openssh-server"},
	{SSHBin, "openssh-client"},
	{KeygenBin, "openssh-client"},
}

// ErrMissing is wrapped by errors about software the scenario needs and
// this machine lacks; Install (or testdata/scenario/install.sh) adds it.
var ErrMissing = errors.New("scenario software missing")

// policyRCD is what invoke-rc.d asks before a package's maintainer script
// starts its service; exit status 101 means "no".
const policyRCD = "/usr/sbin/policy-rc.d"

// aptTimeout bounds each apt-get run, lock wait included.
const aptTimeout = 10 * time.Minute

// Missing returns the Debian packages whose files the scenario needs and
// does not find, without duplicates, in a fixed order.
func Missing() []string {
	var pkgs []string
	for _, r := range required {
		if _, err := os.Stat(r.path); err != nil && !slices.Contains(pkgs, r.pkg) {
			pkgs = append(pkgs, r.pkg)
		}
	}
	return pkgs
}

// Install installs the missing packages of Missing with apt-get, and does
// nothing when none is missing, so it can be called before every run. It
// keeps the packages' system services from starting (a policy-rc.d that
// says no, unless the machine already has a policy): the scenario runs its
// own apache2 and sshd, in their hosts' namespaces, from its own
// configuration, and never uses or touches the system instances. It needs
// root. log may be nil.
func Install(ctx context.Context, log *slog.Logger) error {
	pkgs := Missing()
	if len(pkgs) == 0 {
		return nil
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "scenario")
	if os.Geteuid() != 0 {
		return fmt.Errorf("scenario: install %s: needs root: %w", strings.Join(pkgs, " "), ErrMissing)
	}
	if _, err := os.Lstat(policyRCD); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(policyRCD, []byte("#!/bin/sh\n# daemoneye scenario install: start no services\nexit 101\n"), 0o755); err != nil {
			return fmt.Errorf("scenario: install: write %s: %w", policyRCD, err)
		}
		defer os.Remove(policyRCD)
	}
	log.Info("installing scenario software", "packages", pkgs)
	install := append([]string{"install", "-y", "-q", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=300"}, pkgs...)
	if _, err := apt(ctx, install...); err != nil {
		// The package lists may be missing or stale (a fresh container).
		log.Info("apt-get install failed; updating the package lists and trying again", "err", err)
		if _, uerr := apt(ctx, "update", "-q", "-o", "DPkg::Lock::Timeout=300"); uerr != nil {
			return fmt.Errorf("scenario: install %s: %w (then apt-get update: %w)", strings.Join(pkgs, " "), err, uerr)
		}
		if _, err := apt(ctx, install...); err != nil {
			return fmt.Errorf("scenario: install %s: %w", strings.Join(pkgs, " "), err)
		}
	}
	if still := Missing(); len(still) > 0 {
		return fmt.Errorf("scenario: %s still missing after apt-get install: %w", strings.Join(still, " "), ErrMissing)
	}
	log.Info("scenario software installed", "packages", pkgs)
	return nil
}

// apt runs apt-get non-interactively and returns its output; the error
// carries the end of it.
func apt(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, aptTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	cmd.WaitDelay = 5 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("apt-get %s: %w: %s", strings.Join(args, " "), err, tail(out.String(), 2000))
	}
	return out.String(), nil
}

// tail returns the last n bytes of s, trimmed.
func tail(s string, n int) string {
	s = strings.TrimSpace(s)
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}
