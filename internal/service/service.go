// Package service installs a role as a systemd service: `daemoneye install
// --role ROLE` and `daemoneye uninstall`. It derives from the role's
// configuration what the role touches (its data directories, the ports it
// binds, the capture source and scope of an agent), renders a hardened unit
// that allows exactly that, and lays out the binary, the configuration file,
// the data directories and the dedicated system user on a live system or in
// a staging root (image builds, tests). It sits beside the roles, not in the
// data flow: what it writes is how a role is started and confined.
package service

import (
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/evilbitlabs/daemoneye/config"
)

// Roles that can be installed.
var Roles = []string{"agent", "proxy", "center"}

// Fixed places on the target system.
const (
	// BinaryPath is where install copies the running binary.
	BinaryPath = "/usr/local/bin/daemoneye"
	// ConfigDir holds one configuration file per role.
	ConfigDir = "/etc/daemoneye"
	// UnitDir is the administrator's unit directory.
	UnitDir = "/etc/systemd/system"
)

// ErrRole is wrapped by errors about an unknown role.
var ErrRole = errors.New("unknown role")

// CheckRole reports whether role can be installed.
func CheckRole(role string) error {
	if !slices.Contains(Roles, role) {
		return fmt.Errorf("%w %q (want agent, proxy or center)", ErrRole, role)
	}
	return nil
}

// UnitName is the systemd unit of role.
func UnitName(role string) string { return "daemoneye-" + role + ".service" }

// ConfigPath is the configuration file of role.
func ConfigPath(role string) string { return filepath.Join(ConfigDir, role+".yaml") }

// UserName is the system user a role runs as; "" for the agent, which runs
// as root with a reduced capability set.
func UserName(role string) string {
	if role == "agent" {
		return ""
	}
	return "daemoneye-" + role
}

// Capability is one Linux capability a unit keeps, and why.
type Capability struct {
	Name string // CAP_BPF
	Why  string
}

// The agent's capabilities, each for what the code really does (capture/,
// roles/agent/). Names are systemd's and capabilities(7)'s.
var (
	capBPF = Capability{"CAP_BPF", "load the eBPF sensor: programs, maps and the ring buffer (bpf(2))"}
	// tp_btf programs are tracing programs: the kernel wants CAP_PERFMON
	// to load them and to let them read kernel memory.
	capPerfmon = Capability{"CAP_PERFMON", "load the sensor's tracing programs (tp_btf) that read kernel task data"}
	// /proc/PID/{exe,cwd,ns/*,fd/*} links, /proc/PID/mem (trace memory
	// snippets) of other users' and non-dumpable processes pass the
	// kernel's ptrace access check only with it. Nothing is attached: it
	// is never used to ptrace.
	capPtrace = Capability{"CAP_SYS_PTRACE", "read /proc/PID/exe, cwd, ns and mem of every user's process (no ptrace is done)"}
	// /proc/PID/fd is mode 0500 owned by the process's user; binaries
	// may be unreadable by root's DAC alone (mode 0111).
	capReadSearch = Capability{"CAP_DAC_READ_SEARCH", "list /proc/PID/fd of other users' processes and read binaries to hash them"}
	// O_NOATIME on a file of another owner: hashing a traced binary
	// must not change its atime (stealth).
	capFowner = Capability{"CAP_FOWNER", "open binaries of other owners with O_NOATIME so hashing leaves their atime alone"}
	// Kernels before 6.6 refuse proc connector subscriptions without it;
	// SO_RCVBUFFORCE (16 MiB past net.core.rmem_max) keeps bursts of
	// exec/fork/exit from overrunning the socket on every kernel.
	capNetAdmin = Capability{"CAP_NET_ADMIN", "subscribe to the netlink proc connector (the /proc fallback) and size its buffer past rmem_max"}
	// setns(2) into the scope's network namespace (health addresses,
	// sock_diag of that namespace).
	capSysAdmin = Capability{"CAP_SYS_ADMIN", "enter the network namespace named by agent.scope (setns)"}
	capBind     = Capability{"CAP_NET_BIND_SERVICE", "listen on a port below 1024"}
)

// Spec is what a role's unit allows, derived from its configuration.
type Spec struct {
	Role       string
	Binary     string // the binary ExecStart runs (a path on the target)
	ConfigPath string // the configuration file the role reads
	User       string // "" runs as root

	// DataDirs are the directories the role writes; install creates them
	// (mode 0700, owned by User) and the unit makes them writable.
	DataDirs []string
	// ExtraWritable are directories the role may write that install does
	// not create (where renewed certificates go); they need not exist.
	ExtraWritable []string
	Caps          []Capability
	// Families are the socket address families the role opens.
	Families []string
	// Namespaces the role may enter or create; none when empty.
	Namespaces []string
	// Memlock lifts RLIMIT_MEMLOCK: kernels before 5.11 charge BPF maps to it.
	Memlock bool
	// Reads are files named by the configuration that the role must be
	// able to read (certificates, keys, the CA, sink tokens); install
	// checks them for a service user.
	Reads []string
}

// ForRole derives the spec of role from its effective configuration.
func ForRole(role, binary string, c config.Config) (Spec, error) {
	if err := CheckRole(role); err != nil {
		return Spec{}, err
	}
	s := Spec{Role: role, Binary: binary, ConfigPath: ConfigPath(role), User: UserName(role)}
	var listens []string
	var tls config.TLS
	var err error
	switch role {
	case "agent":
		a := c.Agent
		s.DataDirs, err = absDirs("agent.data_dir", a.DataDir)
		tls, listens = a.TLS, []string{a.Metrics.Listen}
		// AF_NETLINK: sock_diag, the proc connector, and the interface
		// addresses the agent reports (NETLINK_ROUTE).
		s.Families = []string{"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
		switch a.Capture {
		case "ebpf":
			s.Caps = append(s.Caps, capBPF, capPerfmon)
			s.Memlock = true
		case "proc":
			s.Caps = append(s.Caps, capNetAdmin)
		default: // auto: eBPF, and the fallback where it is refused
			s.Caps = append(s.Caps, capBPF, capPerfmon, capNetAdmin)
			s.Memlock = true
		}
		s.Caps = append(s.Caps, capPtrace, capReadSearch, capFowner)
		if strings.HasPrefix(a.Scope, "netns:") {
			s.Caps = append(s.Caps, capSysAdmin)
			s.Namespaces = []string{"net"}
		}
	case "proxy":
		p := c.Proxy
		if p.WALPath == "" || !filepath.IsAbs(p.WALPath) {
			return Spec{}, fmt.Errorf("proxy.wal_path %q: a service needs an absolute path", p.WALPath)
		}
		// The directory above the WAL holds crl.pem beside it.
		s.DataDirs = []string{filepath.Dir(filepath.Clean(p.WALPath))}
		tls, listens = p.TLS, []string{p.Listen, p.Metrics.Listen}
		s.Families = []string{"AF_UNIX", "AF_INET", "AF_INET6"}
	case "center":
		cn := c.Center
		s.DataDirs, err = absDirs("center.data_dir", cn.DataDir)
		tls, listens = cn.TLS, []string{cn.Listen, cn.API.Listen, cn.Metrics.Listen}
		s.Families = []string{"AF_UNIX", "AF_INET", "AF_INET6"}
		if cn.CADir != "" {
			// The center signs renewals with the CA key and reads its CRL.
			s.reads(filepath.Join(cn.CADir, "ca.crt"), filepath.Join(cn.CADir, "ca.key"))
		}
		for _, k := range cn.Sinks {
			s.reads(k.TokenFile, k.TLS.CA, k.TLS.Cert, k.TLS.Key)
		}
	}
	if err != nil {
		return Spec{}, err
	}
	for _, l := range listens {
		if p := port(l); p > 0 && p < 1024 {
			s.Caps = append(s.Caps, capBind)
			break
		}
	}
	s.reads(tls.Cert, tls.Key, tls.CA)
	// The renewer rewrites the certificate and key in place (a temporary
	// file and a rename in their directory); the CRL is saved likewise.
	for _, f := range []string{tls.Cert, tls.Key, tls.CRL} {
		if f == "" {
			continue
		}
		if !filepath.IsAbs(f) {
			return Spec{}, fmt.Errorf("%s.tls: %q: a service needs absolute paths", role, f)
		}
		d := filepath.Dir(filepath.Clean(f))
		if !s.writable(d) {
			s.ExtraWritable = append(s.ExtraWritable, d)
		}
	}
	return s, nil
}

// reads adds the files that are set to s.Reads.
func (s *Spec) reads(files ...string) {
	for _, f := range files {
		if f != "" {
			s.Reads = append(s.Reads, f)
		}
	}
}

func absDirs(key, dir string) ([]string, error) {
	if dir == "" || !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%s %q: a service needs an absolute path", key, dir)
	}
	return []string{filepath.Clean(dir)}, nil
}

// writable reports whether dir is inside a directory the unit already
// makes writable.
func (s *Spec) writable(dir string) bool {
	for _, d := range append(slices.Clone(s.DataDirs), s.ExtraWritable...) {
		if dir == d || strings.HasPrefix(dir, d+"/") {
			return true
		}
	}
	return false
}

// port returns the port of a HOST:PORT listen address, 0 when there is none.
func port(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		return 0
	}
	return n
}

// CapNames returns the capability names of s, in order.
func (s *Spec) CapNames() []string {
	out := make([]string, len(s.Caps))
	for i, c := range s.Caps {
		out[i] = c.Name
	}
	return out
}
