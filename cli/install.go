package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/evilbitlabs/daemoneye/internal/service"
)

// InstallCmd is `daemoneye install`: a role as a hardened systemd service.
type InstallCmd struct {
	Role   string `required:"" enum:"agent,proxy,center" help:"Role to install: agent, proxy or center." placeholder:"ROLE"`
	Root   string `type:"path" default:"/" help:"Install into this directory as the root of the target system (an image being built) instead of this system." placeholder:"DIR"`
	Binary string `help:"Run this already installed binary (its path on the target, e.g. /usr/bin/daemoneye) instead of copying this one to /usr/local/bin/daemoneye." placeholder:"PATH"`
	DryRun bool   `help:"Print the changes and the unit; change nothing."`
	Yes    bool   `help:"Do not ask for confirmation."`
	Enable bool   `help:"Enable and start the service (systemctl enable --now); with --root, enable it in that root."`
}

// Help is the long help; the examples are in examples.go.
func (c *InstallCmd) Help() string {
	return `Installs a role as the systemd service daemoneye-ROLE: the binary (this one,
copied to /usr/local/bin/daemoneye), a commented configuration file
/etc/daemoneye/ROLE.yaml when there is none (an existing one is never
overwritten), the data directories (mode 0700), a system user
daemoneye-proxy or daemoneye-center, and a hardened unit in
/etc/systemd/system: a read-only system but for the role's directories,
and only the capabilities the role needs (the agent runs as root with
CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and a few more, each explained in the
unit; proxy and center run with none). The unit follows the configuration:
run install again after changing data directories, ports, agent.capture
or agent.scope. A second run changes nothing that is already right.

Without --yes it asks before changing anything, and refuses when there is
no terminal to ask on.`
}

// Run plans, confirms and applies the install, then hands over to systemd.
func (c *InstallCmd) Run(ctx context.Context, g *Globals) error {
	src := ""
	if c.Binary == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find this binary to install it: %w (give --binary)", err)
		}
		if src, err = filepath.EvalSymlinks(exe); err != nil {
			return fmt.Errorf("find this binary to install it: %w (give --binary)", err)
		}
	}
	plan, err := service.PlanInstall(service.Options{Role: c.Role, Root: c.Root, Binary: c.Binary, Source: src})
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	plan.Write(g.stdout)
	if c.DryRun {
		fmt.Fprintf(g.stdout, "\n%s:\n%s", filepath.Join(service.UnitDir, service.UnitName(c.Role)), plan.Unit)
		fmt.Fprintln(g.stdout, "\n(dry run: nothing was changed)")
		return nil
	}
	if plan.Changes() {
		if err := approve(g, c.Yes, fmt.Sprintf("make these %d change(s)? [y/N] ", len(plan.Steps))); err != nil {
			return fmt.Errorf("not installed: %w", err)
		}
		if err := needRoot(); err != nil {
			return fmt.Errorf("not installed: %w", err)
		}
		if err := plan.Apply(ctx, g.stdout); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	did, err := service.Activate(ctx, plan, c.Enable)
	for _, d := range did {
		fmt.Fprintf(g.stdout, "  %s\n", d)
	}
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	return nil
}

// UninstallCmd is `daemoneye uninstall`.
type UninstallCmd struct {
	Role   string `required:"" enum:"agent,proxy,center" help:"Role to remove: agent, proxy or center." placeholder:"ROLE"`
	Root   string `type:"path" default:"/" help:"Remove from this directory as the root of the target system instead of this system." placeholder:"DIR"`
	Purge  bool   `help:"Also delete the role's data directories and its configuration file (asks first; cannot be undone)."`
	DryRun bool   `help:"Print the changes; change nothing."`
	Yes    bool   `help:"Do not ask for confirmation."`
}

// Help is the long help; the examples are in examples.go.
func (c *UninstallCmd) Help() string {
	return `Stops and disables the service daemoneye-ROLE and removes its unit. The data
directories and /etc/daemoneye/ROLE.yaml are kept unless --purge; the
binary and the system user are always kept (other roles may use the binary;
files may still belong to the user).`
}

// Run plans, confirms and applies the removal.
func (c *UninstallCmd) Run(ctx context.Context, g *Globals) error {
	plan, err := service.PlanUninstall(c.Role, c.Root, c.Purge)
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	plan.Write(g.stdout)
	if c.DryRun {
		fmt.Fprintln(g.stdout, "(dry run: nothing was changed)")
		return nil
	}
	if !plan.Changes() {
		return nil
	}
	prompt := fmt.Sprintf("make these %d change(s)? [y/N] ", len(plan.Steps))
	if c.Purge {
		prompt = fmt.Sprintf("make these %d change(s)? The data deleted cannot be recovered [y/N] ", len(plan.Steps))
	}
	if err := approve(g, c.Yes, prompt); err != nil {
		return fmt.Errorf("not uninstalled: %w", err)
	}
	if err := needRoot(); err != nil {
		return fmt.Errorf("not uninstalled: %w", err)
	}
	if err := plan.Apply(ctx, g.stdout); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	did, err := service.Reload(ctx, plan)
	if did != "" {
		fmt.Fprintf(g.stdout, "  %s\n", did)
	}
	return err
}

// errNoTerminal is returned when a change needs confirmation and there is
// no one to ask.
var errNoTerminal = errors.New("stdin is not a terminal to confirm on: pass --yes to go ahead (or --dry-run to look first)")

// approve asks on the terminal unless yes; without a terminal it refuses.
func approve(g *Globals, yes bool, prompt string) error {
	if yes {
		return nil
	}
	if !isTerminal(g.stdin) {
		return errNoTerminal
	}
	if !confirm(g, prompt) {
		return errors.New("not confirmed (answer y, or pass --yes)")
	}
	return nil
}

func isTerminal(r any) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// needRoot refuses early, before a half-done install, when the changes
// (owners, users, system directories) cannot be made.
func needRoot() error {
	if os.Geteuid() != 0 {
		return errors.New("it changes system files, owners and users: run it as root (sudo daemoneye ...)")
	}
	return nil
}
