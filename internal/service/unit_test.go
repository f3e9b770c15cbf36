package service

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/config"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

func TestForRole(t *testing.T) {
	def := config.Default()
	mod := func(f func(c *config.Config)) config.Config {
		c := config.Default()
		f(&c)
		return c
	}
	cases := []struct {
		name     string
		role     string
		cfg      config.Config
		caps     []string
		data     []string
		extra    []string
		ns       []string
		families []string
	}{
		{"agent auto", "agent", def,
			[]string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"},
			[]string{"/var/lib/daemoneye/agent"}, nil, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}},
		{"agent ebpf", "agent", mod(func(c *config.Config) { c.Agent.Capture = "ebpf" }),
			[]string{"CAP_BPF", "CAP_PERFMON", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"},
			[]string{"/var/lib/daemoneye/agent"}, nil, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}},
		{"agent proc in a netns scope", "agent", mod(func(c *config.Config) {
			c.Agent.Capture, c.Agent.Scope = "proc", "netns:/run/netns/web-1"
		}),
			[]string{"CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_SYS_ADMIN"},
			[]string{"/var/lib/daemoneye/agent"}, nil, []string{"net"}, []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}},
		{"agent with the seed's certificates in /etc", "agent", mod(func(c *config.Config) {
			c.Agent.TLS = config.TLS{Cert: "/etc/daemoneye/agent.crt", Key: "/etc/daemoneye/agent.key", CA: "/etc/daemoneye/ca.pem"}
			c.Agent.DataDir = "/srv/de/agent/"
		}),
			[]string{"CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER"},
			[]string{"/srv/de/agent"}, []string{"/etc/daemoneye"}, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}},
		{"proxy", "proxy", def, []string{}, []string{"/var/lib/daemoneye/proxy"}, nil, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6"}},
		{"proxy with certificates in its data directory", "proxy", mod(func(c *config.Config) {
			c.Proxy.TLS = config.TLS{Cert: "/var/lib/daemoneye/proxy/tls/p.crt", Key: "/var/lib/daemoneye/proxy/tls/p.key"}
		}), []string{}, []string{"/var/lib/daemoneye/proxy"}, nil, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6"}},
		{"center", "center", def, []string{}, []string{"/var/lib/daemoneye/center"}, nil, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6"}},
		{"center api on 443", "center", mod(func(c *config.Config) { c.Center.API.Listen = "0.0.0.0:443" }),
			[]string{"CAP_NET_BIND_SERVICE"}, []string{"/var/lib/daemoneye/center"}, nil, nil, []string{"AF_UNIX", "AF_INET", "AF_INET6"}},
	}
	for _, c := range cases {
		s, err := ForRole(c.role, BinaryPath, c.cfg)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got := s.CapNames(); !slices.Equal(got, c.caps) {
			t.Errorf("%s: capabilities %q, want %q", c.name, got, c.caps)
		}
		if !slices.Equal(s.DataDirs, c.data) || !slices.Equal(s.ExtraWritable, c.extra) {
			t.Errorf("%s: writable %q + %q, want %q + %q", c.name, s.DataDirs, s.ExtraWritable, c.data, c.extra)
		}
		if !slices.Equal(s.Namespaces, c.ns) || !slices.Equal(s.Families, c.families) {
			t.Errorf("%s: namespaces %q families %q, want %q %q", c.name, s.Namespaces, s.Families, c.ns, c.families)
		}
		if want := c.role != "agent"; (s.User != "") != want {
			t.Errorf("%s: user %q", c.name, s.User)
		}
	}

	bad := []struct {
		role string
		cfg  config.Config
		want string
	}{
		{"agent", mod(func(c *config.Config) { c.Agent.DataDir = "data" }), "absolute"},
		{"proxy", mod(func(c *config.Config) { c.Proxy.WALPath = "" }), "absolute"},
		{"center", mod(func(c *config.Config) { c.Center.TLS.Key = "center.key" }), "absolute"},
		{"toaster", def, "unknown role"},
	}
	for _, b := range bad {
		if _, err := ForRole(b.role, BinaryPath, b.cfg); err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("ForRole(%s) = %v, want an error with %q", b.role, err, b.want)
		}
	}
	s, _ := ForRole("agent", BinaryPath, def)
	for _, p := range []string{"/var/lib/de$x", "/var/lib/50%", "/var/lib/a\nb", "rel/dir"} {
		s.DataDirs = []string{p}
		if _, err := Unit(s); err == nil {
			t.Errorf("Unit with data dir %q: no error", p)
		}
	}
}

// TestDefaultConfig checks that each default file loads, names only keys
// that exist, and describes the same service as the built-in defaults.
func TestDefaultConfig(t *testing.T) {
	for _, role := range Roles {
		b, err := DefaultConfig(role)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), role+".yaml")
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := config.Load(config.Sources{File: f})
		if err != nil {
			t.Fatalf("the default %s configuration does not load: %v\n%s", role, err, b)
		}
		fromFile, err := ForRole(role, BinaryPath, l.Config)
		if err != nil {
			t.Fatal(err)
		}
		builtin, _ := ForRole(role, BinaryPath, config.Default())
		if !reflect.DeepEqual(fromFile, builtin) {
			t.Errorf("%s: the default file gives %+v, the built-in defaults %+v", role, fromFile, builtin)
		}
		// Every commented key must be a real key once uncommented.
		var un strings.Builder
		for line := range strings.Lines(string(b)) {
			if m := regexp.MustCompile(`^(\s*)# ([a-z_]+:.*)$`).FindStringSubmatch(line); m != nil {
				line = m[1] + m[2] + "\n"
			}
			un.WriteString(line)
		}
		f2 := filepath.Join(t.TempDir(), role+"-uncommented.yaml")
		os.WriteFile(f2, []byte(un.String()), 0o600)
		if _, err := config.Load(config.Sources{File: f2}); err != nil && !strings.Contains(err.Error(), "scope") {
			t.Errorf("%s: a key in the comments is not a configuration key: %v\n%s", role, err, un.String())
		}
	}
}

// unitVariants are the units the verification runs over: every role with
// its defaults, and the agent in every capture mode and with a netns scope.
func unitVariants(t *testing.T, bin string) map[string]Spec {
	t.Helper()
	out := map[string]Spec{}
	add := func(name, role string, f func(c *config.Config)) {
		c := config.Default()
		if f != nil {
			f(&c)
		}
		s, err := ForRole(role, bin, c)
		if err != nil {
			t.Fatal(err)
		}
		out[name] = s
	}
	add("agent", "agent", nil)
	add("agent-ebpf", "agent", func(c *config.Config) { c.Agent.Capture = "ebpf" })
	add("agent-proc-netns", "agent", func(c *config.Config) { c.Agent.Capture, c.Agent.Scope = "proc", "netns:/run/netns/web-1" })
	add("proxy", "proxy", func(c *config.Config) { c.Proxy.TLS.Cert = "/etc/daemoneye/proxy tls/p.crt" })
	add("center", "center", func(c *config.Config) { c.Center.Listen = "[::]:443" })
	return out
}

// TestUnitsVerify runs systemd's own checks over the rendered units:
// systemd-analyze verify must say nothing at all (it only warns about an
// unknown key or a bad value, and exits 0), every capability must be one
// systemd knows, and the exposure score of systemd-analyze security must
// stay low.
func TestUnitsVerify(t *testing.T) {
	sa := testenv.NeedTool(t, "systemd-analyze")
	bin := testenv.Binary(t)
	dir := t.TempDir()
	// The most exposed a unit may be, in tenths of systemd-analyze
	// security's 0 to 10 scale: the agent keeps kernel-facing
	// capabilities by design.
	threshold := map[string]string{"agent": "35", "proxy": "20", "center": "20"}
	for name, s := range unitVariants(t, bin) {
		text, err := Unit(s)
		if err != nil {
			t.Fatal(err)
		}
		sub := filepath.Join(dir, name)
		os.Mkdir(sub, 0o755)
		f := filepath.Join(sub, UnitName(s.Role))
		if err := os.WriteFile(f, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sa, "verify", "--man=no", "--generators=no", f).CombinedOutput()
		if err != nil || len(strings.TrimSpace(string(out))) > 0 {
			t.Errorf("%s: systemd-analyze verify: %v\n%s\n--- unit:\n%s", name, err, out, text)
		}
		if len(s.Caps) > 0 {
			args := append([]string{"capability"}, s.CapNames()...)
			if out, err := exec.Command(sa, args...).CombinedOutput(); err != nil {
				t.Errorf("%s: systemd does not know a capability: %v\n%s", name, err, out)
			}
		}
		out, err = exec.Command(sa, "security", "--offline=yes", "--threshold="+threshold[s.Role], f).CombinedOutput()
		score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
		if err != nil || score == nil {
			t.Errorf("%s: systemd-analyze security above %s: %v\n%s", name, threshold[s.Role], err, out)
		} else {
			t.Logf("%s: exposure %s of 10 (limit %s tenths)", name, score[1], threshold[s.Role])
		}
	}

	// The check itself must be able to fail: a unit with a typo and one
	// whose binary does not exist.
	s := unitVariants(t, bin)["proxy"]
	text, _ := Unit(s)
	bad := filepath.Join(dir, "bad", UnitName("proxy"))
	os.MkdirAll(filepath.Dir(bad), 0o755)
	os.WriteFile(bad, []byte(strings.Replace(text, "ProtectHome=yes", "ProtectHome=maybe", 1)), 0o644)
	if out, _ := exec.Command(sa, "verify", "--man=no", "--generators=no", bad).CombinedOutput(); !strings.Contains(string(out), "maybe") {
		t.Errorf("verify said nothing of ProtectHome=maybe: %s", out)
	}
	s.Binary = filepath.Join(dir, "no-such-binary")
	text, _ = Unit(s)
	os.WriteFile(bad, []byte(text), 0o644)
	if out, err := exec.Command(sa, "verify", "--man=no", "--generators=no", bad).CombinedOutput(); err == nil {
		t.Errorf("verify accepted a missing binary: %s", out)
	}
}
