package service

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// PlanUninstall works out what removing role from root changes: the unit
// goes (disabled first where it is enabled); with purge, its data
// directories and configuration file too. The system user and the binary
// stay: files elsewhere may still belong to the user, and other roles may
// run the binary.
func PlanUninstall(role, root string, purge bool) (*Plan, error) {
	if err := CheckRole(role); err != nil {
		return nil, err
	}
	root, err := normRoot(root)
	if err != nil {
		return nil, err
	}
	p := &Plan{Role: role, Root: root}
	unit := UnitName(role)
	unitPath := filepath.Join(UnitDir, unit)
	_, uerr := os.Stat(host(root, unitPath))
	switch {
	case uerr == nil:
		// On the live system disable --now also stops a service that runs
		// without being enabled; offline only the links go.
		if live(root) || enabled(root, unit) {
			p.add("disable "+unit+": "+systemctlLine(root, "disable", unit), func(ctx context.Context) error {
				return systemctl(ctx, root, "disable", unit)
			})
		}
		p.UnitChanged = true
		p.add("remove the unit "+unitPath, func(context.Context) error {
			return os.Remove(host(root, unitPath))
		})
	case errors.Is(uerr, fs.ErrNotExist):
		p.Unchanged = append(p.Unchanged, unitPath+" (not installed)")
	default:
		return nil, uerr
	}

	// The configuration says where the data is; read it before it goes.
	cfg, cfgExists, err := LoadRoleConfig(root, role)
	var dirs []string
	if err == nil {
		var spec Spec
		if spec, err = ForRole(role, BinaryPath, cfg); err == nil {
			dirs = spec.DataDirs
		}
	}
	if err != nil {
		if purge {
			return nil, fmt.Errorf("find the data to purge: %w", err)
		}
		p.Notes = append(p.Notes, "cannot read the configuration: "+err.Error())
	}
	for _, d := range dirs {
		if _, err := os.Lstat(host(root, d)); err != nil {
			continue
		}
		if !purge {
			p.Unchanged = append(p.Unchanged, d+" (data kept; --purge deletes it)")
			continue
		}
		if d == "/" || filepath.Dir(d) == "/" {
			return nil, fmt.Errorf("refusing to purge %s: not a data directory", d)
		}
		p.add("delete "+d+" and everything in it", func(context.Context) error {
			return os.RemoveAll(host(root, d))
		})
	}
	cfgPath := ConfigPath(role)
	if cfgExists {
		if purge {
			p.add("delete "+cfgPath, func(context.Context) error { return os.Remove(host(root, cfgPath)) })
		} else {
			p.Unchanged = append(p.Unchanged, cfgPath+" (kept; --purge deletes it)")
		}
	}
	if u := UserName(role); u != "" {
		if acc, err := readAccounts(root); err == nil && hasKey(acc.users, u) {
			del := "userdel " + u
			if root != "/" {
				del = "userdel --prefix " + root + " " + u
			}
			p.Notes = append(p.Notes, fmt.Sprintf("system user %s kept (files may still belong to it): %s removes it", u, del))
		}
	}
	return p, nil
}

// enabled reports whether a wants/ link of the unit exists in root.
func enabled(root, unit string) bool {
	matches, _ := filepath.Glob(host(root, filepath.Join(UnitDir, "*.wants", unit)))
	return len(matches) > 0
}
