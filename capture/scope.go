package capture

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// ScopeKind says what a Scope selects processes by.
type ScopeKind uint8

const (
	// ScopeMachine is every process of the machine: no scope.
	ScopeMachine ScopeKind = iota
	// ScopeNetNS is the processes of one network namespace.
	ScopeNetNS
	// ScopePidNS is the processes of one pid namespace (not of pid
	// namespaces nested in it).
	ScopePidNS
	// ScopeCgroup is the processes of one cgroup v2 and its descendants.
	ScopeCgroup
)

var scopePrefixes = [...]string{ScopeNetNS: "netns:", ScopePidNS: "pidns:", ScopeCgroup: "cgroup:"}

// ErrBadScope is wrapped by errors about a scope setting that cannot be
// used: bad syntax, a missing file, a file that is not what the prefix says.
var ErrBadScope = errors.New("bad capture scope")

// Scope limits a Source (and the seed) to the processes of one "host" on a
// machine that runs several: a network namespace (the hosts of
// internal/testnet, a netns per service), a pid namespace or a cgroup (a
// container). The agent's setting agent.scope names it by a file:
//
//	netns:/run/netns/web-1        a network namespace (ip netns, /proc/PID/ns/net)
//	pidns:/proc/1234/ns/pid       a pid namespace
//	cgroup:/sys/fs/cgroup/a/b     a cgroup v2 directory, with its descendants
//
// Membership is decided in user space, before events are emitted, from what
// the kernel reports at exec (the namespaces and cgroup of the new image) and
// otherwise inherited from the parent at fork; exits, connections and
// closes belong to the scope of their process. A process that leaves or
// enters the scope without exec (setns, a cgroup move) is counted where it
// was until its next exec. The empty Scope (ScopeMachine) selects
// everything and costs nothing.
type Scope struct {
	Kind ScopeKind
	// Path is the file the setting named, cleaned.
	Path string
	// Inode identifies the scope: the namespace's inode number (what
	// Exec.NetNS and Exec.PidNS carry), or the cgroup's id (the inode of
	// its directory, what Exec.CgroupID carries).
	Inode uint64
	// Cgroup is the cgroup's path below the cgroup v2 mount, as
	// /proc/PID/cgroup shows it ("/system.slice/x.service"); "/" for the
	// root cgroup. Empty for the other kinds.
	Cgroup string
}

// ParseScope reads a scope setting ("" for the whole machine, else
// "netns:PATH", "pidns:PATH" or "cgroup:PATH" with an absolute PATH) and
// resolves the file it names, which must exist and be of the named kind.
// Errors wrap ErrBadScope.
func ParseScope(setting string) (Scope, error) {
	kind, path, err := splitScope(setting)
	if err != nil || kind == ScopeMachine {
		return Scope{}, err
	}
	sc, err := resolveScope(kind, path)
	if err != nil {
		return Scope{}, fmt.Errorf("%w: %s: %w", ErrBadScope, setting, err)
	}
	return sc, nil
}

// splitScope checks the syntax of a scope setting.
func splitScope(setting string) (ScopeKind, string, error) {
	if setting == "" {
		return ScopeMachine, "", nil
	}
	for k, p := range scopePrefixes {
		if p == "" {
			continue
		}
		if path, ok := strings.CutPrefix(setting, p); ok {
			if !filepath.IsAbs(path) {
				return 0, "", fmt.Errorf("%w: %q: the path after %q must be absolute", ErrBadScope, setting, p)
			}
			return ScopeKind(k), filepath.Clean(path), nil
		}
	}
	return 0, "", fmt.Errorf("%w: %q: want netns:PATH, pidns:PATH or cgroup:PATH", ErrBadScope, setting)
}

// IsMachine reports whether the scope is the whole machine.
func (s Scope) IsMachine() bool { return s.Kind == ScopeMachine }

// String returns the setting the scope was parsed from ("" for the machine).
func (s Scope) String() string {
	if s.Kind == ScopeMachine || int(s.Kind) >= len(scopePrefixes) {
		return ""
	}
	return scopePrefixes[s.Kind] + s.Path
}

// containsExec reports whether an exec with these namespaces and cgroup is
// in the scope; ok is false when x does not carry what the scope looks at
// (an exec whose details were lost), or, for a cgroup scope, when the
// cgroup id is not known (use the cgroup path then).
func (s Scope) containsExec(x *Exec) (in, ok bool) {
	switch s.Kind {
	case ScopeMachine:
		return true, true
	case ScopeNetNS:
		return uint64(x.NetNS) == s.Inode, x.NetNS != 0
	case ScopePidNS:
		return uint64(x.PidNS) == s.Inode, x.PidNS != 0
	}
	return false, false
}

// containsCgroupPath reports whether a cgroup path (as in /proc/PID/cgroup)
// is the scope's cgroup or below it.
func (s Scope) containsCgroupPath(p string) bool {
	if s.Cgroup == "/" {
		return strings.HasPrefix(p, "/")
	}
	return p == s.Cgroup || strings.HasPrefix(p, s.Cgroup+"/")
}
