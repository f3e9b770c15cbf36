package service

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// account is one line of /etc/passwd.
type account struct {
	Name  string
	UID   int
	GID   int
	Home  string
	Shell string
}

// parsePasswd reads /etc/passwd lines (name:pw:uid:gid:gecos:home:shell).
// Lines that are not of that shape (comments, NIS "+" entries, damage) are
// skipped: install only looks for its own users, which useradd wrote.
func parsePasswd(data []byte) map[string]account {
	out := map[string]account{}
	for line := range bytes.Lines(data) {
		f := strings.Split(strings.TrimRight(string(line), "\r\n"), ":")
		if len(f) != 7 || f[0] == "" || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], "+") || strings.HasPrefix(f[0], "-") {
			continue
		}
		uid, err1 := strconv.ParseUint(f[2], 10, 31)
		gid, err2 := strconv.ParseUint(f[3], 10, 31)
		if err1 != nil || err2 != nil {
			continue
		}
		if _, dup := out[f[0]]; dup {
			continue // the first entry is the one getpwnam returns
		}
		out[f[0]] = account{Name: f[0], UID: int(uid), GID: int(gid), Home: f[5], Shell: f[6]}
	}
	return out
}

// parseGroup reads /etc/group lines (name:pw:gid:members) into name -> gid.
func parseGroup(data []byte) map[string]int {
	out := map[string]int{}
	for line := range bytes.Lines(data) {
		f := strings.Split(strings.TrimRight(string(line), "\r\n"), ":")
		if len(f) != 4 || f[0] == "" || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], "+") || strings.HasPrefix(f[0], "-") {
			continue
		}
		gid, err := strconv.ParseUint(f[2], 10, 31)
		if err != nil {
			continue
		}
		if _, dup := out[f[0]]; !dup {
			out[f[0]] = int(gid)
		}
	}
	return out
}

// accounts are the users and groups of a system root.
type accounts struct {
	users  map[string]account
	groups map[string]int
}

// readAccounts reads root's /etc/passwd and /etc/group. Install adds its
// users with useradd, which writes these files, so they are the truth for
// the users install made, on the live system and in a staging root alike.
func readAccounts(root string) (accounts, error) {
	p, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		return accounts{}, fmt.Errorf("read the users of %s: %w", root, err)
	}
	g, err := os.ReadFile(filepath.Join(root, "etc/group"))
	if err != nil {
		return accounts{}, fmt.Errorf("read the groups of %s: %w", root, err)
	}
	return accounts{users: parsePasswd(p), groups: parseGroup(g)}, nil
}

// nologin is the first of the usual no-login shells root has.
func nologin(root string) string {
	for _, s := range []string{"/usr/sbin/nologin", "/sbin/nologin", "/bin/false"} {
		if st, err := os.Stat(filepath.Join(root, s)); err == nil && st.Mode().IsRegular() {
			return s
		}
	}
	return "/usr/sbin/nologin"
}

// useraddArgs is the useradd command line that makes the system user of a
// role: no login, no home directory made (its home is the data directory
// install creates), and a group of the same name.
func useraddArgs(root, name, home string, groupExists bool) []string {
	args := []string{"--system", "--no-create-home", "--home-dir", home, "--shell", nologin(root),
		"--comment", "DaemonEye " + strings.TrimPrefix(name, "daemoneye-")}
	if groupExists {
		args = append(args, "--gid", name)
	} else {
		args = append(args, "--user-group")
	}
	if root != "/" {
		// --prefix edits root's /etc files without a chroot: a staging
		// root need not hold a runnable system.
		args = append(args, "--prefix", root)
	}
	return append(args, name)
}

// ErrNoUseradd is wrapped when useradd cannot be found.
var ErrNoUseradd = errors.New("useradd not found (install the passwd package, or create the user yourself and run install again)")

func runUseradd(ctx context.Context, args []string) error {
	bin, err := exec.LookPath("useradd")
	if err != nil {
		for _, p := range []string{"/usr/sbin/useradd", "/sbin/useradd"} {
			if _, serr := os.Stat(p); serr == nil {
				bin, err = p, nil
				break
			}
		}
	}
	if err != nil {
		return ErrNoUseradd
	}
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("useradd %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}
