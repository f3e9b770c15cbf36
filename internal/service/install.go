package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
)

// Options say what to install and where.
type Options struct {
	Role string
	// Root is the system to install into: "/" for this one, or a staging
	// root (an image being built, a test); paths inside it are the target
	// system's.
	Root string
	// Binary is an installed binary the unit runs (a path on the target,
	// say /usr/bin/daemoneye from a package); empty copies Source to
	// BinaryPath.
	Binary string
	// Source is the binary to copy when Binary is empty (the running one).
	Source string
}

// Step is one change to the system.
type Step struct {
	// What says the change in a sentence, with target paths.
	What  string
	apply func(ctx context.Context) error
}

// Plan is what install or uninstall would change, computed from the
// system as it is: applying it twice changes nothing the second time.
type Plan struct {
	Role string
	Root string
	Spec Spec
	// Unit is the rendered unit (install only).
	Unit string
	// UnitChanged says the unit file is written or removed.
	UnitChanged bool
	Steps       []Step
	// Unchanged lists what is already as it should be.
	Unchanged []string
	// Notes are what the operator should know or do (a certificate the
	// service user cannot read, next steps).
	Notes []string
}

// Changes reports whether applying p changes anything.
func (p *Plan) Changes() bool { return len(p.Steps) > 0 }

// Write prints the plan: the changes, then what stays, then the notes.
func (p *Plan) Write(w io.Writer) {
	where := ""
	if p.Root != "/" {
		where = " in " + p.Root
	}
	if len(p.Steps) == 0 {
		fmt.Fprintf(w, "daemoneye-%s%s: nothing to change\n", p.Role, where)
	} else {
		fmt.Fprintf(w, "daemoneye-%s%s: %d change(s)\n", p.Role, where, len(p.Steps))
		for _, s := range p.Steps {
			fmt.Fprintf(w, "  - %s\n", s.What)
		}
	}
	for _, u := range p.Unchanged {
		fmt.Fprintf(w, "  = %s\n", u)
	}
	for _, n := range p.Notes {
		fmt.Fprintf(w, "  ! %s\n", n)
	}
}

// Apply makes the changes in order and reports each on progress. It stops
// at the first failure and says which step failed; the steps before it
// stay done, and a new plan picks up from there.
func (p *Plan) Apply(ctx context.Context, progress io.Writer) error {
	for i, s := range p.Steps {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.apply(ctx); err != nil {
			return fmt.Errorf("step %d of %d (%s): %w", i+1, len(p.Steps), s.What, err)
		}
		fmt.Fprintf(progress, "  done: %s\n", s.What)
	}
	return nil
}

// normRoot cleans a root option: "" is "/".
func normRoot(root string) (string, error) {
	if root == "" {
		return "/", nil
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return "", err
	}
	st, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("root %s: %w", root, err)
	}
	if !st.IsDir() {
		return "", fmt.Errorf("root %s: not a directory", root)
	}
	return abs, nil
}

// host returns the path of target path p under root.
func host(root, p string) string { return filepath.Join(root, p) }

// LoadRoleConfig reads the role's configuration in root: its file when it
// exists (exists is true), else the default install would write. The
// environment plays no part: the service does not see the installer's.
func LoadRoleConfig(root, role string) (cfg config.Config, exists bool, err error) {
	path := host(root, ConfigPath(role))
	_, serr := os.Stat(path)
	switch {
	case serr == nil:
		exists = true
	case errors.Is(serr, fs.ErrNotExist):
		def, err := DefaultConfig(role)
		if err != nil {
			return config.Config{}, false, err
		}
		tmp, err := os.CreateTemp("", "daemoneye-"+role+"-*.yaml")
		if err != nil {
			return config.Config{}, false, err
		}
		defer os.Remove(tmp.Name())
		_, werr := tmp.Write(def)
		if cerr := tmp.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			return config.Config{}, false, werr
		}
		path = tmp.Name()
	default:
		return config.Config{}, false, serr
	}
	l, err := config.Load(config.Sources{File: path})
	if err != nil {
		if exists {
			return config.Config{}, true, fmt.Errorf("%s: %w", ConfigPath(role), err)
		}
		return config.Config{}, false, fmt.Errorf("the default %s configuration: %w", role, err)
	}
	return l.Config, exists, nil
}

// PlanInstall works out what installing opts.Role in opts.Root changes.
func PlanInstall(opts Options) (*Plan, error) {
	if err := CheckRole(opts.Role); err != nil {
		return nil, err
	}
	root, err := normRoot(opts.Root)
	if err != nil {
		return nil, err
	}
	binary := BinaryPath
	if opts.Binary != "" {
		if !filepath.IsAbs(opts.Binary) {
			return nil, fmt.Errorf("--binary %q: give the absolute path the service runs", opts.Binary)
		}
		binary = filepath.Clean(opts.Binary)
	}
	cfg, cfgExists, err := LoadRoleConfig(root, opts.Role)
	if err != nil {
		return nil, err
	}
	spec, err := ForRole(opts.Role, binary, cfg)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ConfigPath(opts.Role), err)
	}
	unit, err := Unit(spec)
	if err != nil {
		return nil, err
	}
	p := &Plan{Role: opts.Role, Root: root, Spec: spec, Unit: unit}
	acc, err := readAccounts(root)
	if err != nil {
		return nil, err
	}

	// The user first: every owner below is it.
	user := spec.User
	if user != "" {
		if a, ok := acc.users[user]; ok {
			p.Unchanged = append(p.Unchanged, fmt.Sprintf("system user %s (uid %d)", user, a.UID))
		} else {
			args := useraddArgs(root, user, spec.DataDirs[0], hasKey(acc.groups, user))
			p.add(fmt.Sprintf("create the system user %s: useradd %s", user, shellJoin(args)),
				func(ctx context.Context) error { return runUseradd(ctx, args) })
		}
	}
	owner := func() (uid, gid int, err error) {
		if user == "" {
			return 0, 0, nil
		}
		acc, err := readAccounts(root)
		if err != nil {
			return 0, 0, err
		}
		a, ok := acc.users[user]
		if !ok {
			return 0, 0, fmt.Errorf("user %s is not in %s", user, host(root, "/etc/passwd"))
		}
		return a.UID, a.GID, nil
	}
	ownerName := "root"
	if user != "" {
		ownerName = user
	}

	if err := p.planBinary(opts, binary); err != nil {
		return nil, err
	}

	// The configuration: written once, never overwritten.
	p.planDir(ConfigDir, 0o755)
	cfgPath := ConfigPath(opts.Role)
	if cfgExists {
		p.Unchanged = append(p.Unchanged, fmt.Sprintf("%s (exists: install never overwrites it)", cfgPath))
		if user != "" {
			p.checkReadable(acc, user, cfgPath)
		}
	} else {
		def, _ := DefaultConfig(opts.Role)
		mode := fs.FileMode(0o600)
		desc := "0600 root"
		if user != "" {
			// Readable by the service's group, writable by root only.
			mode, desc = 0o640, "0640 root:"+user
		}
		p.add(fmt.Sprintf("write the default configuration %s (%s)", cfgPath, desc), func(context.Context) error {
			hp := host(root, cfgPath)
			if err := atomicfile.WriteNew(hp, def, mode); err != nil {
				if errors.Is(err, fs.ErrExist) {
					return fmt.Errorf("%s appeared meanwhile; left as it is", cfgPath)
				}
				return err
			}
			if user == "" {
				return nil
			}
			_, gid, err := owner()
			if err != nil {
				return err
			}
			return os.Chown(hp, 0, gid)
		})
	}

	// Data directories: the role's own, mode 0700.
	for _, d := range spec.DataDirs {
		p.planDir(filepath.Dir(d), 0o755)
		p.planDataDir(d, ownerName, owner)
	}
	if user != "" {
		for _, d := range spec.ExtraWritable {
			p.checkWritable(acc, user, d)
		}
		for _, f := range spec.Reads {
			p.checkReadable(acc, user, f)
		}
	}

	// The unit last: it refers to everything above.
	unitPath := filepath.Join(UnitDir, UnitName(opts.Role))
	old, err := os.ReadFile(host(root, unitPath))
	switch {
	case err == nil && string(old) == unit:
		p.Unchanged = append(p.Unchanged, unitPath)
	case err == nil || errors.Is(err, fs.ErrNotExist):
		verb := "write"
		if err == nil {
			verb = "update"
		}
		p.planDir(UnitDir, 0o755)
		p.UnitChanged = true
		p.add(fmt.Sprintf("%s the unit %s (0644)", verb, unitPath), func(context.Context) error {
			return atomicfile.Write(host(root, unitPath), []byte(unit), 0o644)
		})
	default:
		return nil, err
	}
	if !cfgExists {
		p.Notes = append(p.Notes, fmt.Sprintf("then edit %s (%s) and start the service", cfgPath, toFill[opts.Role]))
	}
	return p, nil
}

// toFill is what an operator sets in a role's new configuration file.
var toFill = map[string]string{
	"agent":  "proxy_hint and tls, or standalone",
	"proxy":  "upstream and tls",
	"center": "tls and ca_dir",
}

// shellJoin writes a command line for a person to read or paste.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = a
		if a == "" || strings.ContainsAny(a, " \t'\"$\\") {
			out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(out, " ")
}

func hasKey[V any](m map[string]V, k string) bool {
	_, ok := m[k]
	return ok
}

func (p *Plan) add(what string, apply func(context.Context) error) {
	p.Steps = append(p.Steps, Step{What: what, apply: apply})
}

// planBinary checks the binary the unit runs, or plans the copy of the
// running one.
func (p *Plan) planBinary(opts Options, binary string) error {
	hp := host(p.Root, binary)
	if opts.Binary != "" {
		st, err := os.Stat(hp)
		if err != nil {
			return fmt.Errorf("--binary %s: %w", binary, err)
		}
		if !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return fmt.Errorf("--binary %s: not an executable file", binary)
		}
		p.Unchanged = append(p.Unchanged, fmt.Sprintf("binary %s (given with --binary)", binary))
		return nil
	}
	if opts.Source == "" {
		return errors.New("no binary to install: give --binary PATH")
	}
	same, err := sameContent(opts.Source, hp)
	if err != nil {
		return err
	}
	st, serr := os.Stat(hp)
	if same && serr == nil && st.Mode().Perm() == 0o755 {
		p.Unchanged = append(p.Unchanged, "binary "+binary)
		return nil
	}
	p.planDir(filepath.Dir(binary), 0o755)
	p.add(fmt.Sprintf("install %s as %s (0755)", opts.Source, binary), func(context.Context) error {
		data, err := os.ReadFile(opts.Source)
		if err != nil {
			return err
		}
		return atomicfile.Write(hp, data, 0o755)
	})
	return nil
}

// sameContent reports whether files a and b have the same bytes; a missing
// b is not the same.
func sameContent(a, b string) (bool, error) {
	sb, err := os.Stat(b)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	sa, err := os.Stat(a)
	if err != nil {
		return false, fmt.Errorf("binary to install: %w", err)
	}
	if sa.Size() != sb.Size() {
		return false, nil
	}
	ha, err := fileHash(a)
	if err != nil {
		return false, err
	}
	hb, err := fileHash(b)
	if err != nil {
		return false, err
	}
	return bytes.Equal(ha, hb), nil
}

func fileHash(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return h.Sum(nil), nil
}

// planDir plans the creation of a root-owned directory and its missing
// parents; an existing one is left as it is.
func (p *Plan) planDir(dir string, mode fs.FileMode) {
	hp := host(p.Root, dir)
	if _, err := os.Stat(hp); err == nil {
		return
	}
	for _, s := range p.Steps {
		if s.What == "create "+dir {
			return
		}
	}
	p.planDir(filepath.Dir(dir), 0o755)
	p.add("create "+dir, func(context.Context) error {
		if err := os.Mkdir(hp, mode); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
		return nil
	})
}

// planDataDir plans a role's data directory: mode 0700, owned by the
// service user. A directory owned by someone else (a role once run by hand
// as root) is handed over with all it holds, as systemd does for
// StateDirectory.
func (p *Plan) planDataDir(dir, ownerName string, owner func() (int, int, error)) {
	hp := host(p.Root, dir)
	st, err := os.Lstat(hp)
	if err != nil {
		p.add(fmt.Sprintf("create %s (0700 %s)", dir, ownerName), func(context.Context) error {
			uid, gid, err := owner()
			if err != nil {
				return err
			}
			if err := os.Mkdir(hp, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
				return err
			}
			if err := os.Chmod(hp, 0o700); err != nil {
				return err
			}
			return os.Lchown(hp, uid, gid)
		})
		return
	}
	if !st.IsDir() {
		p.add(fmt.Sprintf("use %s as a data directory", dir), func(context.Context) error {
			return fmt.Errorf("%s exists and is not a directory", dir)
		})
		return
	}
	uid, gid, err := owner()
	known := err == nil // else the user is made by an earlier step
	sys := st.Sys().(*syscall.Stat_t)
	if !known || int(sys.Uid) != uid || int(sys.Gid) != gid {
		p.add(fmt.Sprintf("hand %s and what it holds to %s (now uid %d gid %d)", dir, ownerName, sys.Uid, sys.Gid), func(context.Context) error {
			uid, gid, err := owner()
			if err != nil {
				return err
			}
			return filepath.WalkDir(hp, func(path string, _ fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				return os.Lchown(path, uid, gid)
			})
		})
	}
	if st.Mode().Perm() != 0o700 {
		p.add(fmt.Sprintf("set the mode of %s to 0700 (now %04o)", dir, st.Mode().Perm()), func(context.Context) error {
			return os.Chmod(hp, 0o700)
		})
	}
	if known && int(sys.Uid) == uid && int(sys.Gid) == gid && st.Mode().Perm() == 0o700 {
		p.Unchanged = append(p.Unchanged, fmt.Sprintf("%s (0700 %s)", dir, ownerName))
	}
}

// checkReadable notes a file the service user cannot read.
func (p *Plan) checkReadable(acc accounts, user, path string) {
	hp := host(p.Root, path)
	if _, err := os.Stat(hp); err != nil {
		p.Notes = append(p.Notes, fmt.Sprintf("%s does not exist yet (%s reads it)", path, user))
		return
	}
	if !reachable(acc, user, p.Root, filepath.Dir(path)) || !accessible(acc, user, hp, 4) {
		p.Notes = append(p.Notes, fmt.Sprintf("%s cannot read %s: chgrp %s it (and its directories) and make it group-readable, or chown it to %s", user, path, user, user))
	}
}

// checkWritable notes a directory of certificates the service user cannot
// write, where renewal would fail.
func (p *Plan) checkWritable(acc accounts, user, dir string) {
	hp := host(p.Root, dir)
	if _, err := os.Stat(hp); err != nil {
		p.Notes = append(p.Notes, fmt.Sprintf("%s does not exist yet: create it for the certificates, owned by %s", dir, user))
		return
	}
	if !reachable(acc, user, p.Root, filepath.Dir(dir)) || !accessible(acc, user, hp, 2|1) {
		p.Notes = append(p.Notes, fmt.Sprintf("%s cannot write %s, where certificates are renewed: chown -R %s: %s", user, dir, user, dir))
	}
}

// reachable reports whether user may search every directory from / down
// to dir (a target path).
func reachable(acc accounts, user, root, dir string) bool {
	for d := dir; ; d = filepath.Dir(d) {
		if !accessible(acc, user, host(root, d), 1) {
			return false
		}
		if d == "/" {
			return true
		}
	}
}

// accessible reports whether user may access path for want (4 read, 2
// write, 1 search) by its mode bits and owners.
func accessible(acc accounts, user, path string, want fs.FileMode) bool {
	st, err := os.Stat(path)
	if err != nil {
		return false
	}
	a, ok := acc.users[user]
	if !ok {
		// Not made yet: it owns nothing.
		a = account{UID: -1, GID: -1}
	}
	sys := st.Sys().(*syscall.Stat_t)
	perm := st.Mode().Perm()
	switch {
	case int(sys.Uid) == a.UID:
		return (perm>>6)&want == want
	case int(sys.Gid) == a.GID:
		return (perm>>3)&want == want
	}
	return perm&want == want
}
