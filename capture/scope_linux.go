//go:build linux

package capture

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"
)

// resolveScope opens the file a scope setting names and checks its kind.
func resolveScope(kind ScopeKind, path string) (Scope, error) {
	sc := Scope{Kind: kind, Path: path}
	switch kind {
	case ScopeNetNS, ScopePidNS:
		want := unix.CLONE_NEWNET
		if kind == ScopePidNS {
			want = unix.CLONE_NEWPID
		}
		fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			return Scope{}, fmt.Errorf("open: %w", err)
		}
		defer unix.Close(fd)
		typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE)
		if err != nil {
			return Scope{}, fmt.Errorf("not a namespace file: %w", err)
		}
		if typ != want {
			return Scope{}, fmt.Errorf("namespace of type %#x, not %s", typ, strings.TrimSuffix(scopePrefixes[kind], ":"))
		}
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			return Scope{}, err
		}
		sc.Inode = st.Ino
	case ScopeCgroup:
		var fs unix.Statfs_t
		if err := unix.Statfs(path, &fs); err != nil {
			return Scope{}, err
		}
		if fs.Type != unix.CGROUP2_SUPER_MAGIC {
			return Scope{}, errors.New("not in a cgroup v2 filesystem")
		}
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil {
			return Scope{}, err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			return Scope{}, errors.New("not a cgroup directory")
		}
		mnt := cgroup2Mount("/proc")
		rel, ok := strings.CutPrefix(path, mnt)
		if mnt == "" || !ok || (rel != "" && rel[0] != '/') {
			return Scope{}, fmt.Errorf("not below the cgroup v2 mount %q of this process", mnt)
		}
		if rel == "" {
			rel = "/"
		}
		sc.Inode, sc.Cgroup = st.Ino, rel
	default:
		return Scope{}, fmt.Errorf("unknown scope kind %d", kind)
	}
	return sc, nil
}

// scopeEntry is what a scopeFilter remembers of one live process.
type scopeEntry struct {
	start uint64 // clock ticks, as ProcKey.Start; 0 when not known
	in    bool
}

// maxScopeCgroups bounds the cgroup id cache of a cgroup scope.
const maxScopeCgroups = 4096

// scopeFilter applies a Scope to a stream of events. It keeps the scope
// membership of every live process of the machine (in or out), learned at
// start from /proc and then from the events themselves, so that a fork or
// an exit, which carry no namespace, is placed without reading /proc. It is
// safe for concurrent use.
type scopeFilter struct {
	sc      Scope
	cgMount string

	mu    sync.Mutex
	procs map[uint32]scopeEntry
	r     *procReader     // under mu
	cgIDs map[uint64]bool // cgroup scope: ids known in (true) or out
}

// newScopeFilter returns the filter of sc, or nil for the whole machine.
func newScopeFilter(sc Scope, procRoot string) *scopeFilter {
	if sc.IsMachine() {
		return nil
	}
	if procRoot == "" {
		procRoot = "/proc"
	}
	f := &scopeFilter{
		sc:    sc,
		procs: make(map[uint32]scopeEntry),
		r:     newProcReader(procRoot, 1, "", 0),
	}
	if sc.Kind == ScopeCgroup {
		f.cgMount = cgroup2Mount(procRoot)
		f.cgIDs = map[uint64]bool{sc.Inode: true}
	}
	return f
}

// load learns the membership of every process now running. Processes
// created meanwhile are learned from their events.
func (f *scopeFilter) load() error {
	pids, err := listPids(f.r.root)
	if err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, pid := range pids {
		if st, in, ok := f.probe(uint32(pid), 0); ok {
			if _, known := f.procs[uint32(pid)]; !known {
				f.procs[uint32(pid)] = scopeEntry{start: st, in: in}
			}
		}
	}
	return nil
}

// admit reports whether ev belongs to the scope, and records what ev says
// about membership: a fork places the child, an exec re-places the process
// from its new namespaces, an exit forgets it.
func (f *scopeFilter) admit(ev *Event) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch ev.Kind {
	case KindFork:
		in, known := f.lookup(ev.Parent)
		// A child of an in-scope parent may have been cloned into new
		// namespaces (unshare --fork): ask /proc while it exists. A child
		// of an out-of-scope parent can only enter by setns, and then
		// shows it at its exec.
		if !known || in {
			if _, v, ok := f.probe(ev.Proc.PID, ev.Proc.Start); ok {
				in = v
			}
		}
		f.procs[ev.Proc.PID] = scopeEntry{start: ev.Proc.Start, in: in}
		return in
	case KindExec:
		in, ok := false, false
		if ev.Exec != nil {
			in, ok = f.fromExec(ev.Exec, ev.Proc)
		}
		if !ok {
			in, ok = f.lookup(ev.Proc)
		}
		if !ok {
			_, in, _ = f.probe(ev.Proc.PID, ev.Proc.Start)
		}
		f.procs[ev.Proc.PID] = scopeEntry{start: ev.Proc.Start, in: in}
		return in
	case KindExit:
		in, known := f.lookup(ev.Proc)
		if e, ok := f.procs[ev.Proc.PID]; ok && (ev.Proc.Start == 0 || e.start == 0 || e.start == ev.Proc.Start) {
			delete(f.procs, ev.Proc.PID)
		}
		if !known {
			// Not seen since start: only a process still not reaped
			// can tell (a zombie has no namespaces, so this is rare).
			_, in, _ = f.probe(ev.Proc.PID, ev.Proc.Start)
		}
		return in
	default:
		// Connections, closes and a trace's own kinds belong to the
		// scope of their process.
		if ev.Proc.PID == 0 {
			return false
		}
		in, known := f.lookup(ev.Proc)
		if !known {
			var ok bool
			var st uint64
			if st, in, ok = f.probe(ev.Proc.PID, ev.Proc.Start); ok {
				f.procs[ev.Proc.PID] = scopeEntry{start: st, in: in}
			}
		}
		return in
	}
}

// keep reports whether a process read from /proc (the seed) is in the
// scope.
func (f *scopeFilter) keep(p *Process) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if in, ok := f.fromExec(&p.Exec, p.Key); ok {
		return in
	}
	_, in, _ := f.probe(p.Key.PID, p.Key.Start)
	return in
}

// lookup returns the remembered membership of k; known is false when the
// pid is not remembered or is remembered for another process.
func (f *scopeFilter) lookup(k ProcKey) (in, known bool) {
	e, ok := f.procs[k.PID]
	if !ok || (k.Start != 0 && e.start != 0 && e.start != k.Start) {
		return false, false
	}
	return e.in, true
}

// fromExec places an exec by the namespaces or cgroup it carries.
func (f *scopeFilter) fromExec(x *Exec, k ProcKey) (in, ok bool) {
	if f.sc.Kind != ScopeCgroup {
		return f.sc.containsExec(x)
	}
	if x.CgroupID == 0 {
		return false, false
	}
	if v, ok := f.cgIDs[x.CgroupID]; ok {
		return v, true
	}
	// An id not seen yet: the process's cgroup path says, and if that path
	// is the cgroup with this id (the process did not move since), the
	// answer holds for every later exec in it: a cgroup never moves in the
	// hierarchy and its id is not reused.
	path, ok := f.cgroupPath(k.PID)
	if !ok {
		return false, false
	}
	in = f.sc.containsCgroupPath(path)
	var st unix.Stat_t
	if f.cgMount != "" && unix.Stat(f.cgMount+path, &st) == nil && st.Ino == x.CgroupID {
		if len(f.cgIDs) >= maxScopeCgroups {
			clear(f.cgIDs)
			f.cgIDs[f.sc.Inode] = true
		}
		f.cgIDs[x.CgroupID] = in
	}
	return in, true
}

// probe reads pid's membership from /proc. start, when not 0, must match
// the process's start time (else the pid now names another process). It
// returns the start time read; ok is false when the process is gone, is a
// zombie, or is another one.
func (f *scopeFilter) probe(pid uint32, start uint64) (st uint64, in, ok bool) {
	if pid == 0 {
		return 0, false, false
	}
	dirfd, err := f.r.openPid(int(pid))
	if err != nil {
		return 0, false, false
	}
	defer unix.Close(dirfd)
	b, err := readAt(dirfd, "stat", f.r.buf)
	if err != nil {
		return 0, false, false
	}
	s, err := parseStat(b)
	if err != nil || (start != 0 && s.Start != start) {
		return 0, false, false
	}
	switch f.sc.Kind {
	case ScopeNetNS, ScopePidNS:
		name := "ns/net"
		if f.sc.Kind == ScopePidNS {
			name = "ns/pid"
		}
		ino := f.r.nsInode(dirfd, name)
		if ino == 0 {
			return 0, false, false
		}
		return s.Start, uint64(ino) == f.sc.Inode, true
	case ScopeCgroup:
		b, err := readAt(dirfd, "cgroup", f.r.buf)
		if err != nil {
			return 0, false, false
		}
		p, ok := parseCgroupV2(b)
		if !ok {
			return 0, false, false
		}
		return s.Start, f.sc.containsCgroupPath(string(p)), true
	}
	return s.Start, true, true
}

// cgroupPath returns pid's cgroup v2 path.
func (f *scopeFilter) cgroupPath(pid uint32) (string, bool) {
	b, err := readAt(unix.AT_FDCWD, f.r.root+"/"+strconv.FormatUint(uint64(pid), 10)+"/cgroup", f.r.buf)
	if err != nil {
		return "", false
	}
	p, ok := parseCgroupV2(b)
	return string(p), ok
}

// scopeProcesses keeps the processes of procs that are in sc.
func scopeProcesses(sc Scope, procRoot string, procs []Process) []Process {
	f := newScopeFilter(sc, procRoot)
	if f == nil {
		return procs
	}
	out := procs[:0]
	for i := range procs {
		if f.keep(&procs[i]) {
			out = append(out, procs[i])
		}
	}
	return out
}
