//go:build linux

package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"golang.org/x/sys/unix"
)

// scopeWait bounds every wait of the scope tests for an event or a process.
const scopeWait = 20 * time.Second

// scopeNeedRoot skips without root, except under CI, where a runner without
// the privilege is broken.
func scopeNeedRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the scope tests need root (namespaces, capture sources) and CI is set")
		}
		t.Skip("the scope tests need root")
	}
}

func nsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

func TestParseScope(t *testing.T) {
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		t.Skip("no /proc/self/ns")
	}
	selfNet := nsIno(t, "/proc/self/ns/net")
	selfPid := nsIno(t, "/proc/self/ns/pid")
	tmp := t.TempDir()
	for _, tc := range []struct {
		setting string
		kind    ScopeKind
		inode   uint64
		err     string // substring of the error; "" for none
	}{
		{setting: "", kind: ScopeMachine},
		{setting: "netns:/proc/self/ns/net", kind: ScopeNetNS, inode: selfNet},
		{setting: "pidns:/proc/self/ns/pid", kind: ScopePidNS, inode: selfPid},
		{setting: "netns:/proc/self/ns/../ns/net", kind: ScopeNetNS, inode: selfNet},
		{setting: "bogus", err: "want netns:PATH"},
		{setting: "net:/proc/self/ns/net", err: "want netns:PATH"},
		{setting: "netns:proc/self/ns/net", err: "must be absolute"},
		{setting: "netns:", err: "must be absolute"},
		{setting: "netns:" + filepath.Join(tmp, "missing"), err: "no such file"},
		{setting: "netns:" + tmp, err: "not a namespace file"},
		{setting: "netns:/proc/self/ns/pid", err: "not netns"},
		{setting: "pidns:/proc/self/ns/net", err: "not pidns"},
		{setting: "cgroup:" + tmp, err: "not in a cgroup v2 filesystem"},
	} {
		sc, err := ParseScope(tc.setting)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errors.Is(err, ErrBadScope) {
				t.Errorf("ParseScope(%q) = %+v, %v; want an ErrBadScope error containing %q", tc.setting, sc, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseScope(%q): %v", tc.setting, err)
			continue
		}
		if sc.Kind != tc.kind || sc.Inode != tc.inode {
			t.Errorf("ParseScope(%q) = kind %d inode %d, want kind %d inode %d", tc.setting, sc.Kind, sc.Inode, tc.kind, tc.inode)
		}
		if tc.setting != "" && sc.String() != scopePrefixes[tc.kind]+filepath.Clean(strings.TrimPrefix(tc.setting, scopePrefixes[tc.kind])) {
			t.Errorf("ParseScope(%q).String() = %q", tc.setting, sc.String())
		}
	}
	if mnt := cgroup2Mount("/proc"); mnt != "" {
		sc, err := ParseScope("cgroup:" + mnt)
		if err != nil {
			t.Fatalf("ParseScope(cgroup:%s): %v", mnt, err)
		}
		if sc.Cgroup != "/" || sc.Inode == 0 {
			t.Errorf("ParseScope(cgroup:%s) = %+v, want the root cgroup \"/\" with its id", mnt, sc)
		}
	}
}

func TestScopeCgroupPath(t *testing.T) {
	for _, tc := range []struct {
		scope, path string
		in          bool
	}{
		{"/", "/", true},
		{"/", "/a/b", true},
		{"/a", "/a", true},
		{"/a", "/a/b", true},
		{"/a", "/ab", false},
		{"/a", "/", false},
		{"/a/b", "/a", false},
	} {
		if got := (Scope{Kind: ScopeCgroup, Cgroup: tc.scope}).containsCgroupPath(tc.path); got != tc.in {
			t.Errorf("cgroup scope %s contains %s = %v, want %v", tc.scope, tc.path, got, tc.in)
		}
	}
}

// scopeCollector runs a Source until the test ends and keeps its events.
type scopeCollector struct {
	mu     sync.Mutex
	events []Event
	wake   chan struct{}
}

func collectScoped(t *testing.T, src Source) *scopeCollector {
	t.Helper()
	c := &scopeCollector{wake: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 1<<16)
	runErr := make(chan error, 1)
	drained := make(chan struct{})
	go func() { runErr <- src.Run(ctx, out) }()
	go func() {
		defer close(drained)
		for {
			select {
			case ev := <-out:
				c.mu.Lock()
				c.events = append(c.events, ev)
				c.mu.Unlock()
				select {
				case c.wake <- struct{}{}:
				default:
				}
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runErr:
			if err != nil {
				t.Errorf("%s: Run returned %v after cancel, want nil", src.Name(), err)
			}
		case <-time.After(scopeWait):
			t.Errorf("%s: Run did not return within %v of cancel", src.Name(), scopeWait)
		}
		<-drained
	})
	return c
}

// waitFor waits until an event matches, and returns it.
func (c *scopeCollector) waitFor(t *testing.T, what string, match func(*Event) bool) Event {
	t.Helper()
	deadline := time.After(scopeWait)
	for {
		c.mu.Lock()
		for i := range c.events {
			if match(&c.events[i]) {
				ev := c.events[i]
				c.mu.Unlock()
				return ev
			}
		}
		c.mu.Unlock()
		select {
		case <-c.wake:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			evs := c.snapshot()
			var b strings.Builder
			for _, ev := range evs[max(0, len(evs)-40):] {
				fmt.Fprintf(&b, "\n  %s %s parent %s %q conn %v", ev.Kind, ev.Proc, ev.Parent, ev.Comm, ev.Conn)
			}
			t.Fatalf("no %s within %v; last of %d events:%s", what, scopeWait, len(evs), b.String())
		}
	}
}

func (c *scopeCollector) snapshot() []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.events)
}

func hasArg(ev *Event, marker string) bool {
	if ev.Exec == nil {
		return false
	}
	for _, a := range ev.Exec.Argv {
		if strings.Contains(a, marker) {
			return true
		}
	}
	return false
}

// runIn runs a bash script to its end: in host h, or in the test's own
// namespaces when h is nil. It returns the script's pid.
func runIn(t *testing.T, h *testnet.Host, script string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scopeWait)
	defer cancel()
	var cmd *exec.Cmd
	if h != nil {
		cmd = h.Command(ctx, "/bin/bash", "-c", script)
	} else {
		cmd = exec.CommandContext(ctx, "/bin/bash", "-c", script)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s: %v: %s", script, err, out)
	}
	return cmd.Process.Pid
}

// TestScopeNetNS runs the same work in two hosts (network namespaces) and
// in the test's own namespace, with each source scoped to the first host:
// only that host's processes and connections come out.
func TestScopeNetNS(t *testing.T) {
	scopeNeedRoot(t)
	for _, name := range []string{"ebpf", "proc"} {
		t.Run(name, func(t *testing.T) {
			n, err := testnet.New(t, "scope-"+name)
			if err != nil {
				t.Fatal(err)
			}
			a, err := n.AddHost("a")
			if err != nil {
				t.Fatal(err)
			}
			b, err := n.AddHost("b")
			if err != nil {
				t.Fatal(err)
			}
			opts := DefaultOptions()
			opts.Scope = "netns:" + a.NamespacePath()
			var src Source
			switch name {
			case "ebpf":
				src = openEBPF(t, opts)
			case "proc":
				p, err := NewProc(opts, slog.New(slog.DiscardHandler))
				if err != nil {
					t.Fatalf("NewProc as root: %v", err)
				}
				p.PollInterval = 50 * time.Millisecond
				t.Cleanup(func() { p.Close() })
				src = p
			}
			c := collectScoped(t, src)

			// Listeners are the test process's (outside the scope): one
			// in each host, for the scripts to connect to.
			la, err := a.Listen("tcp", a.Addr.String()+":0")
			if err != nil {
				t.Fatal(err)
			}
			defer la.Close()
			lb, err := b.Listen("tcp", b.Addr.String()+":0")
			if err != nil {
				t.Fatal(err)
			}
			defer lb.Close()
			for _, l := range []net.Listener{la, lb} {
				go func() {
					for {
						conn, err := l.Accept()
						if err != nil {
							return
						}
						go func() { defer conn.Close(); _, _ = conn.Read(make([]byte, 1)) }()
					}
				}()
			}
			// Each script forks a child (sleep, which does not inherit
			// the socket, so that its owner is the script alone), holds a connection
			// long enough for the proc source's socket polls, and exits.
			script := func(marker string, to net.Addr) string {
				return fmt.Sprintf("true %s; exec 3<>/dev/tcp/%s/%d; sleep 0.4 3>&-; exec 3>&-; true %s-end",
					marker, to.(*net.TCPAddr).IP, to.(*net.TCPAddr).Port, marker)
			}
			mark := fmt.Sprintf("scope-%d-%s", os.Getpid(), name)
			// Out of scope first: host b, and the test's own namespace.
			pidB := runIn(t, b, script(mark+"-b", lb.Addr()))
			pidRoot := runIn(t, nil, fmt.Sprintf("true %s-root; sleep 0.1", mark))
			pidA := runIn(t, a, script(mark+"-a", la.Addr()))

			// In scope: the exec, the fork of sleep, the connect and the
			// exit of host a's script.
			c.waitFor(t, "exec of the script in host a", func(ev *Event) bool {
				return ev.Kind == KindExec && ev.Proc.PID == uint32(pidA) && hasArg(ev, mark+"-a")
			})
			c.waitFor(t, "fork by the script in host a", func(ev *Event) bool {
				return ev.Kind == KindFork && ev.Parent.PID == uint32(pidA)
			})
			c.waitFor(t, "connect by the script in host a", func(ev *Event) bool {
				return ev.Kind == KindConnect && ev.Proc.PID == uint32(pidA) && ev.Conn != nil &&
					ev.Conn.Dst.Port() == uint16(la.Addr().(*net.TCPAddr).Port)
			})
			c.waitFor(t, "exit of the script in host a", func(ev *Event) bool {
				return ev.Kind == KindExit && ev.Proc.PID == uint32(pidA)
			})

			ino := nsIno(t, a.NamespacePath())
			self := uint32(os.Getpid())
			inA := map[uint32]bool{uint32(pidA): true}
			for _, ev := range c.snapshot() {
				if ev.Kind == KindFork && inA[ev.Parent.PID] {
					inA[ev.Proc.PID] = true
				}
			}
			for _, ev := range c.snapshot() {
				switch {
				case ev.Proc.PID == uint32(pidB) || ev.Proc.PID == uint32(pidRoot) || ev.Proc.PID == self:
					t.Errorf("event of a process outside the scope: %+v", ev)
				case hasArg(&ev, mark+"-b") || hasArg(&ev, mark+"-root"):
					t.Errorf("exec outside the scope: %+v %q", ev, ev.Exec.Argv)
				case ev.Kind == KindExec && ev.Exec.NetNS != 0 && uint64(ev.Exec.NetNS) != ino:
					t.Errorf("exec in network namespace %d, the scope is %d: %+v", ev.Exec.NetNS, ino, ev)
				case ev.Conn != nil && !inA[ev.Proc.PID]:
					t.Errorf("connection event of pid %d, not one of host a's script (%v): %+v %v", ev.Proc.PID, inA, ev, ev.Conn)
				}
			}
		})
	}
}

// TestSeedScope seeds the process table with a scope: only the processes
// of the scoped host are listed.
func TestSeedScope(t *testing.T) {
	scopeNeedRoot(t)
	n, err := testnet.New(t, "seed-scope")
	if err != nil {
		t.Fatal(err)
	}
	a, err := n.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	b, err := n.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pids []int
	for _, h := range []*testnet.Host{a, b} {
		cmd := h.Command(ctx, "sleep", "60")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cancel(); _ = cmd.Wait() })
		pids = append(pids, cmd.Process.Pid)
	}
	// The program is started by nsenter, which execs it: wait for the exec.
	for _, pid := range pids {
		deadline := time.Now().Add(scopeWait)
		for {
			exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
			if strings.HasSuffix(exe, "/sleep") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pid %d did not exec sleep within %v", pid, scopeWait)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	opts := DefaultOptions()
	opts.Scope = "netns:" + a.NamespacePath()
	procs, err := SeedOptions(opts)
	if err != nil {
		t.Fatal(err)
	}
	ino := nsIno(t, a.NamespacePath())
	found := false
	for _, p := range procs {
		if uint64(p.Exec.NetNS) != ino {
			t.Errorf("seeded %d (%s) of network namespace %d, the scope is %d", p.Key.PID, p.Comm, p.Exec.NetNS, ino)
		}
		if p.Key.PID == uint32(pids[1]) || p.Key.PID == uint32(os.Getpid()) {
			t.Errorf("seeded %d (%s), outside the scope", p.Key.PID, p.Comm)
		}
		found = found || p.Key.PID == uint32(pids[0])
	}
	if !found {
		t.Errorf("host a's sleep (pid %d) not seeded; got %d processes", pids[0], len(procs))
	}

	all, err := SeedOptions(DefaultOptions())
	if err != nil {
		t.Fatal(err)
	}
	if len(all) <= len(procs) {
		t.Errorf("seed of the machine has %d processes, the scoped one %d: want more", len(all), len(procs))
	}
	opts.Scope = "netns:/nonexistent"
	if _, err := SeedOptions(opts); !errors.Is(err, ErrBadScope) {
		t.Errorf("SeedOptions with a missing namespace file: %v, want ErrBadScope", err)
	}
}

// TestScopePidNSAndCgroup scopes each source to a pid namespace and to a
// cgroup (with a child cgroup made after the source started): work inside
// comes out, the same work outside does not.
func TestScopePidNSAndCgroup(t *testing.T) {
	scopeNeedRoot(t)
	for _, kind := range []string{"pidns", "cgroup"} {
		for _, name := range []string{"ebpf", "proc"} {
			t.Run(kind+"/"+name, func(t *testing.T) {
				mark := fmt.Sprintf("scope-%d-%s-%s", os.Getpid(), kind, name)
				var setting string
				var inside []string // argv prefix that runs a program inside
				switch kind {
				case "pidns":
					initPid := startPidNS(t)
					setting = fmt.Sprintf("pidns:/proc/%d/ns/pid", initPid)
					inside = []string{"nsenter", "-t", fmt.Sprint(initPid), "-p", "--"}
				case "cgroup":
					dir := makeCgroup(t)
					setting = "cgroup:" + dir
					// A child cgroup the source learns of only from an
					// exec in it.
					sub := filepath.Join(dir, "sub")
					t.Cleanup(func() { _ = os.Remove(sub) })
					inside = []string{"/bin/bash", "-c", fmt.Sprintf(`mkdir %[1]s && echo $$ >%[1]s/cgroup.procs && exec "$@"`, sub), "move"}
				}
				opts := DefaultOptions()
				opts.Scope = setting
				var src Source
				if name == "ebpf" {
					src = openEBPF(t, opts)
				} else {
					p, err := NewProc(opts, slog.New(slog.DiscardHandler))
					if err != nil {
						t.Fatalf("NewProc as root: %v", err)
					}
					t.Cleanup(func() { p.Close() })
					src = p
				}
				c := collectScoped(t, src)

				script := func(m string) []string {
					return []string{"/bin/bash", "-c", fmt.Sprintf("true %s; sleep 0.1; true %s-end", m, m)}
				}
				pidOut := runArgv(t, script(mark+"-out")...)
				runArgv(t, append(inside, script(mark+"-in")...)...)

				ex := c.waitFor(t, "exec inside the scope", func(ev *Event) bool {
					return ev.Kind == KindExec && hasArg(ev, mark+"-in")
				})
				c.waitFor(t, "fork inside the scope", func(ev *Event) bool {
					return ev.Kind == KindFork && ev.Parent.PID == ex.Proc.PID
				})
				c.waitFor(t, "exit inside the scope", func(ev *Event) bool {
					return ev.Kind == KindExit && ev.Proc.PID == ex.Proc.PID
				})
				sc, err := ParseScope(setting)
				if err != nil {
					t.Fatal(err)
				}
				if kind == "pidns" && uint64(ex.Exec.PidNS) != sc.Inode {
					t.Errorf("exec inside: pid namespace %d, want %d", ex.Exec.PidNS, sc.Inode)
				}
				for _, ev := range c.snapshot() {
					if ev.Proc.PID == uint32(pidOut) || ev.Parent.PID == uint32(pidOut) || hasArg(&ev, mark+"-out") {
						t.Errorf("event of the process outside the scope: %s %s %q", ev.Kind, ev.Proc, ev.Comm)
					}
				}
			})
		}
	}
}

// runArgv runs argv to its end in the test's namespaces and returns its pid.
func runArgv(t *testing.T, argv ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), scopeWait)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%q: %v: %s", argv, err, out)
	}
	return cmd.Process.Pid
}

// startPidNS starts a process as the init of a new pid namespace and
// returns its pid (in ours); it is killed when the test ends.
func startPidNS(t *testing.T) int {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--kill-child", "sleep", "600")
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); _ = cmd.Wait() })
	children := fmt.Sprintf("/proc/%d/task/%d/children", cmd.Process.Pid, cmd.Process.Pid)
	deadline := time.Now().Add(scopeWait)
	for {
		b, _ := os.ReadFile(children)
		if f := strings.Fields(string(b)); len(f) > 0 {
			var pid int
			if _, err := fmt.Sscan(f[0], &pid); err == nil {
				if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasSuffix(exe, "/sleep") {
					return pid
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("unshare made no init in %v", scopeWait)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// makeCgroup makes a cgroup v2 directory for the test and removes it (and
// its children) when the test ends; it skips where there is no cgroup v2.
func makeCgroup(t *testing.T) string {
	t.Helper()
	mnt := cgroup2Mount("/proc")
	if mnt == "" {
		t.Skip("no cgroup v2 hierarchy mounted")
	}
	dir := filepath.Join(mnt, fmt.Sprintf("daemoneye-scope-test-%d-%d", os.Getpid(), time.Now().UnixNano()))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("make a cgroup: %v", err)
	}
	t.Cleanup(func() {
		// A cgroup is removed once its processes have exited.
		deadline := time.Now().Add(scopeWait)
		for os.Remove(dir) != nil && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if _, err := os.Stat(dir); err == nil {
			t.Errorf("cgroup %s not removed", dir)
		}
	})
	return dir
}
