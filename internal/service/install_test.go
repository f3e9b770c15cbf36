package service

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

// stagingRoot makes a root to install into: the host's account files (so
// useradd --prefix has something to add to) and a copy of the host's
// systemd units (so systemd-analyze verify --root can resolve the
// dependencies every service has).
func stagingRoot(t *testing.T) string {
	t.Helper()
	root := filepath.Join(t.TempDir(), "rootfs")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"passwd", "group", "shadow", "gshadow", "login.defs"} {
		b, err := os.ReadFile("/etc/" + f)
		if err != nil {
			if f == "login.defs" || f == "gshadow" {
				continue
			}
			t.Fatal(err)
		}
		mode := fs.FileMode(0o644)
		if strings.Contains(f, "shadow") {
			mode = 0o640
		}
		if err := os.WriteFile(filepath.Join(root, "etc", f), b, mode); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "lib/systemd"), 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", "/lib/systemd/system", filepath.Join(root, "lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy the host's units: %v %s", err, out)
	}
	return root
}

// snapshot records every file of root: type, mode, owner, size, mtime and
// content hash, or a link's target.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		st, err := os.Lstat(p)
		if err != nil {
			return err
		}
		sys := st.Sys().(*syscall.Stat_t)
		v := fmt.Sprintf("%v %d:%d %d %d", st.Mode(), sys.Uid, sys.Gid, st.Size(), st.ModTime().UnixNano())
		switch {
		case st.Mode()&fs.ModeSymlink != 0:
			l, _ := os.Readlink(p)
			v += " -> " + l
		case st.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			v += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[strings.TrimPrefix(p, root)] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func diffSnapshots(a, b map[string]string) []string {
	var d []string
	for _, k := range slices.Sorted(maps.Keys(a)) {
		if b[k] != a[k] {
			d = append(d, fmt.Sprintf("%s: %q -> %q", k, a[k], b[k]))
		}
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			d = append(d, "new "+k)
		}
	}
	return d
}

func install(t *testing.T, opts Options, enable bool) *Plan {
	t.Helper()
	p, err := PlanInstall(opts)
	if err != nil {
		t.Fatalf("plan install %s: %v", opts.Role, err)
	}
	var out bytes.Buffer
	if err := p.Apply(context.Background(), &out); err != nil {
		t.Fatalf("install %s: %v\n%s", opts.Role, err, out.String())
	}
	if _, err := Activate(context.Background(), p, enable); err != nil {
		t.Fatalf("activate %s: %v", opts.Role, err)
	}
	return p
}

func statOwner(t *testing.T, p string) (fs.FileMode, int, int) {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	return st.Mode().Perm(), int(sys.Uid), int(sys.Gid)
}

// TestInstallIntoRoot installs the three roles into a staging root with
// the real useradd and systemctl, verifies the installed units with
// systemd-analyze against that root, installs again (nothing changes, an
// edited configuration survives), follows a configuration change, hands a
// hand-made data directory over, and uninstalls with and without --purge.
func TestInstallIntoRoot(t *testing.T) {
	testenv.NeedRoot(t)
	sa := testenv.NeedTool(t, "systemd-analyze")
	testenv.NeedTool(t, "systemctl")
	testenv.NeedTool(t, "useradd")
	bin := testenv.Binary(t)
	root := stagingRoot(t)
	hostPasswd, _ := os.ReadFile("/etc/passwd")
	ctx := context.Background()

	for _, role := range Roles {
		install(t, Options{Role: role, Root: root, Source: bin}, true)
	}

	acc, err := readAccounts(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"daemoneye-proxy", "daemoneye-center"} {
		a, ok := acc.users[u]
		if !ok || a.UID >= 1000 || a.Home != "/var/lib/daemoneye/"+strings.TrimPrefix(u, "daemoneye-") || !strings.HasSuffix(a.Shell, "nologin") {
			t.Errorf("user %s in the root = %+v (found %v); want a system user with no login", u, a, ok)
		}
		if g, ok := acc.groups[u]; !ok || g != a.GID {
			t.Errorf("group %s = %d (found %v), want the user's gid %d", u, g, ok, a.GID)
		}
	}
	if now, _ := os.ReadFile("/etc/passwd"); !bytes.Equal(now, hostPasswd) {
		t.Fatal("installing into a root changed the host's /etc/passwd")
	}
	if same, err := sameContent(bin, filepath.Join(root, BinaryPath)); !same || err != nil {
		t.Errorf("installed binary differs from %s: %v", bin, err)
	}
	for _, c := range []struct {
		path string
		mode fs.FileMode
		user string // "" is root
		gid  string
	}{
		{"/usr/local/bin/daemoneye", 0o755, "", ""},
		{"/etc/daemoneye", 0o755, "", ""},
		{"/etc/daemoneye/agent.yaml", 0o600, "", ""},
		{"/etc/daemoneye/proxy.yaml", 0o640, "", "daemoneye-proxy"},
		{"/etc/daemoneye/center.yaml", 0o640, "", "daemoneye-center"},
		{"/var/lib/daemoneye", 0o755, "", ""},
		{"/var/lib/daemoneye/agent", 0o700, "", ""},
		{"/var/lib/daemoneye/proxy", 0o700, "daemoneye-proxy", "daemoneye-proxy"},
		{"/var/lib/daemoneye/center", 0o700, "daemoneye-center", "daemoneye-center"},
		{"/etc/systemd/system/daemoneye-agent.service", 0o644, "", ""},
	} {
		mode, uid, gid := statOwner(t, filepath.Join(root, c.path))
		wantUID, wantGID := 0, 0
		if c.user != "" {
			wantUID = acc.users[c.user].UID
		}
		if c.gid != "" {
			wantGID = acc.groups[c.gid]
		}
		if mode != c.mode || uid != wantUID || gid != wantGID {
			t.Errorf("%s: %04o %d:%d, want %04o %d:%d", c.path, mode, uid, gid, c.mode, wantUID, wantGID)
		}
	}
	for _, role := range Roles {
		unit := UnitName(role)
		out, err := exec.Command(sa, "verify", "--man=no", "--generators=no", "--root="+root, unit).CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify --root %s: %v\n%s", unit, err, out)
		}
		if _, err := os.Lstat(filepath.Join(root, UnitDir, "multi-user.target.wants", unit)); err != nil {
			t.Errorf("%s not enabled in the root: %v", unit, err)
		}
	}

	// An operator edits a configuration; a second install changes nothing
	// and keeps the edit.
	cfg := filepath.Join(root, ConfigPath("center"))
	edited := []byte("# edited by the operator\ncenter:\n  data_dir: /var/lib/daemoneye/center\n  api:\n    listen: 127.0.0.1:9443\n")
	if err := os.WriteFile(cfg, edited, 0o640); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	for _, role := range Roles {
		p := install(t, Options{Role: role, Root: root, Source: bin}, true)
		if p.Changes() {
			var b bytes.Buffer
			p.Write(&b)
			t.Errorf("second install of %s planned changes:\n%s", role, b.String())
		}
	}
	if d := diffSnapshots(before, snapshot(t, root)); len(d) > 0 {
		t.Errorf("second install changed the root:\n%s", strings.Join(d, "\n"))
	}
	if b, _ := os.ReadFile(cfg); !bytes.Equal(b, edited) {
		t.Errorf("install overwrote the edited configuration:\n%s", b)
	}

	// The unit follows the configuration: an eBPF-only agent drops the
	// proc connector's capability, and nothing else changes.
	agentCfg := filepath.Join(root, ConfigPath("agent"))
	b, _ := os.ReadFile(agentCfg)
	os.WriteFile(agentCfg, bytes.Replace(b, []byte("capture: auto"), []byte("capture: ebpf"), 1), 0o600)
	p, err := PlanInstall(Options{Role: "agent", Root: root, Source: bin})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Steps) != 1 || !strings.Contains(p.Steps[0].What, "update the unit") {
		t.Errorf("after capture: ebpf, steps = %+v; want the unit updated only", p.Steps)
	}
	install(t, Options{Role: "agent", Root: root, Source: bin}, false)
	unit, _ := os.ReadFile(filepath.Join(root, UnitDir, UnitName("agent")))
	if bytes.Contains(unit, []byte("CAP_NET_ADMIN")) || !bytes.Contains(unit, []byte("CAP_BPF CAP_PERFMON")) {
		t.Errorf("the unit of an eBPF-only agent:\n%s", unit)
	}

	// A data directory made by hand as root is handed to the service user
	// with what it holds.
	proxyDir := filepath.Join(root, "var/lib/daemoneye/proxy")
	os.MkdirAll(filepath.Join(proxyDir, "wal"), 0o755)
	os.WriteFile(filepath.Join(proxyDir, "wal", "000001.log"), []byte("x"), 0o600)
	os.Chown(proxyDir, 0, 0)
	os.Chmod(proxyDir, 0o755)
	install(t, Options{Role: "proxy", Root: root, Source: bin}, false)
	px := acc.users["daemoneye-proxy"]
	for _, f := range []string{"", "wal", "wal/000001.log"} {
		if _, uid, gid := statOwner(t, filepath.Join(proxyDir, f)); uid != px.UID || gid != px.GID {
			t.Errorf("%s owned by %d:%d after install, want %d:%d", filepath.Join(proxyDir, f), uid, gid, px.UID, px.GID)
		}
	}
	if mode, _, _ := statOwner(t, proxyDir); mode != 0o700 {
		t.Errorf("proxy data directory mode %04o, want 0700", mode)
	}

	// Uninstall keeps the data; --purge deletes it; the user stays.
	up, err := PlanUninstall("proxy", root, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := up.Apply(ctx, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"etc/systemd/system/daemoneye-proxy.service", "etc/systemd/system/multi-user.target.wants/daemoneye-proxy.service"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("%s left after uninstall", gone)
		}
	}
	for _, kept := range []string{"var/lib/daemoneye/proxy/wal/000001.log", "etc/daemoneye/proxy.yaml", "usr/local/bin/daemoneye"} {
		if _, err := os.Stat(filepath.Join(root, kept)); err != nil {
			t.Errorf("uninstall without --purge removed %s", kept)
		}
	}
	if up, _ := PlanUninstall("proxy", root, false); up.Changes() {
		t.Errorf("second uninstall planned %+v", up.Steps)
	}
	pp, err := PlanUninstall("center", root, true)
	if err != nil {
		t.Fatal(err)
	}
	if err := pp.Apply(ctx, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"var/lib/daemoneye/center", "etc/daemoneye/center.yaml", "etc/systemd/system/daemoneye-center.service"} {
		if _, err := os.Lstat(filepath.Join(root, gone)); err == nil {
			t.Errorf("%s left after uninstall --purge", gone)
		}
	}
	if acc, _ := readAccounts(root); !hasKey(acc.users, "daemoneye-center") {
		t.Error("uninstall --purge removed the system user")
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/daemoneye/agent")); err != nil {
		t.Errorf("purging the center touched the agent's data: %v", err)
	}
}

// TestInstallRefusals: what cannot be installed is refused before anything
// changes, with a message that says why.
func TestInstallRefusals(t *testing.T) {
	bin := testenv.Binary(t)
	empty := t.TempDir()
	cases := []struct {
		name string
		opts Options
		want string
	}{
		{"no root", Options{Role: "agent", Root: filepath.Join(empty, "nope"), Source: bin}, "no such file"},
		{"a root with no accounts", Options{Role: "proxy", Root: empty, Source: bin}, "read the users of"},
		{"a role that does not exist", Options{Role: "toaster", Root: empty, Source: bin}, "unknown role"},
		{"a relative --binary", Options{Role: "agent", Root: empty, Binary: "bin/daemoneye"}, "absolute path"},
	}
	for _, c := range cases {
		before := snapshot(t, empty)
		_, err := PlanInstall(c.opts)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", c.name, err, c.want)
		}
		if d := diffSnapshots(before, snapshot(t, empty)); len(d) > 0 {
			t.Errorf("%s: a refused plan changed files: %v", c.name, d)
		}
	}

	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "etc/daemoneye"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/passwd"), []byte("root:x:0:0:root:/root:/bin/sh\n"), 0o644)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\n"), 0o644)
	if _, err := PlanInstall(Options{Role: "agent", Root: root, Binary: "/usr/bin/no-such-daemoneye"}); err == nil || !strings.Contains(err.Error(), "no-such-daemoneye") {
		t.Errorf("a missing --binary: %v", err)
	}
	os.WriteFile(filepath.Join(root, "etc/daemoneye/agent.yaml"), []byte("agent:\n  data_dir: relative/dir\n"), 0o600)
	if _, err := PlanInstall(Options{Role: "agent", Root: root, Source: bin}); err == nil || !strings.Contains(err.Error(), "agent.data_dir") {
		t.Errorf("a relative data_dir: %v", err)
	}
	os.WriteFile(filepath.Join(root, "etc/daemoneye/agent.yaml"), []byte("agent:\n  data_dri: /x\n"), 0o600)
	if _, err := PlanInstall(Options{Role: "agent", Root: root, Source: bin}); err == nil || !strings.Contains(err.Error(), "data_dri") {
		t.Errorf("a misspelt key: %v", err)
	}
}

// TestInstallNotes: files the configuration names that the service user
// cannot read, or a certificate directory it cannot write, are pointed out
// with the command that fixes them, and the notes go once fixed.
func TestInstallNotes(t *testing.T) {
	testenv.NeedRoot(t)
	testenv.NeedTool(t, "useradd")
	bin := testenv.Binary(t)
	root := stagingRoot(t)
	tlsDir := filepath.Join(root, "etc/daemoneye/tls")
	if err := os.MkdirAll(tlsDir, 0o700); err != nil { // and /etc/daemoneye 0700
		t.Fatal(err)
	}
	for _, f := range []string{"c.crt", "c.key", "ca.crt"} {
		os.WriteFile(filepath.Join(tlsDir, f), []byte("x"), 0o600)
	}
	cfg := "center:\n  data_dir: /var/lib/daemoneye/center\n  tls:\n    cert: /etc/daemoneye/tls/c.crt\n    key: /etc/daemoneye/tls/c.key\n    ca: /etc/daemoneye/tls/ca.crt\n  ca_dir: /srv/pki\n"
	os.WriteFile(filepath.Join(root, ConfigPath("center")), []byte(cfg), 0o600)

	p := install(t, Options{Role: "center", Root: root, Source: bin}, false)
	notes := strings.Join(p.Notes, "\n")
	for _, want := range []string{
		"daemoneye-center cannot read /etc/daemoneye/center.yaml",
		"daemoneye-center cannot read /etc/daemoneye/tls/c.key",
		"daemoneye-center cannot write /etc/daemoneye/tls, where certificates are renewed: chown -R daemoneye-center: /etc/daemoneye/tls",
		"/srv/pki/ca.key does not exist yet",
	} {
		if !strings.Contains(notes, want) {
			t.Errorf("notes lack %q:\n%s", want, notes)
		}
	}
	unit, _ := os.ReadFile(filepath.Join(root, UnitDir, UnitName("center")))
	if !bytes.Contains(unit, []byte("ReadWritePaths=-/etc/daemoneye/tls")) {
		t.Errorf("the unit does not let the center renew its certificate in /etc/daemoneye/tls:\n%s", unit)
	}

	acc, _ := readAccounts(root)
	c := acc.users["daemoneye-center"]
	filepath.WalkDir(tlsDir, func(p string, _ fs.DirEntry, _ error) error { return os.Chown(p, c.UID, c.GID) })
	os.Chmod(filepath.Join(root, "etc/daemoneye"), 0o755)
	os.Chown(filepath.Join(root, ConfigPath("center")), 0, c.GID)
	os.Chmod(filepath.Join(root, ConfigPath("center")), 0o640)
	os.Mkdir(filepath.Join(root, "srv"), 0o755)
	os.Mkdir(filepath.Join(root, "srv/pki"), 0o750)
	os.Chown(filepath.Join(root, "srv/pki"), c.UID, c.GID)
	os.WriteFile(filepath.Join(root, "srv/pki/ca.crt"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(root, "srv/pki/ca.key"), []byte("x"), 0o600)
	os.Chown(filepath.Join(root, "srv/pki/ca.key"), c.UID, c.GID)
	p, err := PlanInstall(Options{Role: "center", Root: root, Source: bin})
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Notes) > 0 || p.Changes() {
		t.Errorf("after the fixes: notes %q, steps %+v", p.Notes, p.Steps)
	}
}
