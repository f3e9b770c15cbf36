package testnet

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"golang.org/x/sys/unix"
)

// needRoot skips the test without root, except under CI, where a missing
// privilege is a broken runner and fails.
func needRoot(t *testing.T) {
	t.Helper()
	var why string
	if os.Geteuid() != 0 {
		why = "needs root"
	} else if _, err := ipPath(); err != nil {
		why = err.Error()
	}
	if why != "" {
		testenv.Skip(t, "%s", why)
	}
}

func newNet(t *testing.T, name string, hosts ...string) (*Net, []*Host) {
	t.Helper()
	n, err := New(t, name)
	if err != nil {
		t.Fatal(err)
	}
	var hs []*Host
	for _, h := range hosts {
		host, err := n.AddHost(h)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, host)
	}
	return n, hs
}

// serveEcho accepts connections on l and echoes lines back, prefixed by the
// peer's address as the server saw it. It stops when l is closed.
func serveEcho(t *testing.T, l net.Listener) {
	t.Helper()
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				peer := c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "%s %s", peer, line)
				}
			}()
		}
	}()
}

// echo sends msg over c and returns the address the server saw us at.
func echo(t *testing.T, c net.Conn, msg string, timeout time.Duration) netip.Addr {
	t.Helper()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(c, "%s\n", msg); err != nil {
		t.Fatalf("write %q: %v", msg, err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read echo of %q: %v", msg, err)
	}
	peer, got, _ := strings.Cut(strings.TrimSuffix(line, "\n"), " ")
	if got != msg {
		t.Fatalf("echo = %q, want %q", got, msg)
	}
	return netip.MustParseAddr(peer)
}

func dial(t *testing.T, from *Host, to string) net.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	var c net.Conn
	var err error
	if from == nil {
		var d net.Dialer
		c, err = d.DialContext(ctx, "tcp", to)
	} else {
		c, err = from.DialContext(ctx, "tcp", to)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", to, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func listen(t *testing.T, h *Host) string {
	t.Helper()
	l, err := h.Listen("tcp", netip.AddrPortFrom(h.Addr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l)
	return l.Addr().String()
}

func TestHostsReachEachOther(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n, hs := newNet(t, "reach", "web-1", "db-1")
	a, b := hs[0], hs[1]
	if a.Addr == b.Addr || !n.Subnet().Contains(a.Addr) || !n.Subnet().Contains(b.Addr) {
		t.Fatalf("addresses %s and %s: want two distinct addresses in %s", a.Addr, b.Addr, n.Subnet())
	}

	// Each side sees the other's own address: the bytes crossed the bridge.
	aAddr, bAddr := listen(t, a), listen(t, b)
	if got := echo(t, dial(t, b, aAddr), "b to a", 3*time.Second); got != b.Addr {
		t.Errorf("a saw b's connection from %s, want %s", got, b.Addr)
	}
	if got := echo(t, dial(t, a, bAddr), "a to b", 3*time.Second); got != a.Addr {
		t.Errorf("b saw a's connection from %s, want %s", got, a.Addr)
	}

	// The address is only reachable from inside: the root namespace has no
	// route to the subnet.
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	var d net.Dialer
	if c, err := d.DialContext(ctx, "tcp", aAddr); err == nil {
		c.Close()
		t.Errorf("dial %s from the root namespace succeeded without ConnectRoot", aAddr)
	}

	if ping, err := exec.LookPath("ping"); err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if out, err := a.Command(ctx, ping, "-c1", "-W1", b.Addr.String()).CombinedOutput(); err != nil {
			t.Errorf("ping %s from %s: %v\n%s", b.Addr, a.Name, err, out)
		}
	} else {
		t.Log("ping not installed: reachability checked over TCP only")
	}
}

func TestCommandRunsInHost(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n, hs := newNet(t, "cmd", "a")
	h := hs[0]
	ip, _ := ipPath()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	out, err := h.Command(ctx, ip, "-o", "-4", "addr", "show").CombinedOutput()
	if err != nil {
		t.Fatalf("ip addr in host: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), " eth0 ") || !strings.Contains(string(out), " "+h.Addr.String()+"/24 ") {
		t.Errorf("ip addr in host %s = %q, want eth0 with %s/24", h.Name, out, h.Addr)
	}
	out, err = h.Command(ctx, ip, "-4", "route", "show", "default").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "via "+n.Gateway().String()) {
		t.Errorf("default route in host = %q (%v), want via %s", out, err, n.Gateway())
	}
	// Only the network namespace differs: the mount namespace is ours.
	self, _ := os.Readlink("/proc/self/ns/mnt")
	out, err = h.Command(ctx, "readlink", "/proc/self/ns/mnt").Output()
	if err != nil || strings.TrimSpace(string(out)) != self {
		t.Errorf("mount namespace in host = %q (%v), want ours %q", out, err, self)
	}

	// Cancelling the context kills the whole process group.
	cctx, ccancel := context.WithCancel(context.Background())
	cmd := h.Command(cctx, "sh", "-c", "sleep 30 & sleep 30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	ccancel()
	if err := cmd.Wait(); err == nil {
		t.Error("cancelled command exited cleanly, want killed")
	}
	// A functional bound, not a speed target: a killed process group ends
	// at once; one that was not killed would sleep on.
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("cancelled command took %v to end", d)
	}
	var st unix.Stat_t
	if err := unix.Stat(h.NamespacePath(), &st); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		pids, err := pidsInNamespace(st.Dev, st.Ino)
		if err != nil {
			t.Fatal(err)
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("processes %v still in the host after its command was cancelled", pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestConnectRoot(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n, hs := newNet(t, "root", "a")
	a := hs[0]
	rootAddr, err := n.ConnectRoot()
	if err != nil {
		t.Fatal(err)
	}
	if again, err := n.ConnectRoot(); err != nil || again != rootAddr {
		t.Errorf("second ConnectRoot = %s, %v; want %s, nil", again, err, rootAddr)
	}
	if !n.Subnet().Contains(rootAddr) || rootAddr == a.Addr {
		t.Errorf("root address %s: want a free address in %s", rootAddr, n.Subnet())
	}

	// Root to host, with the test process's ordinary sockets.
	if got := echo(t, dial(t, nil, listen(t, a)), "root to a", 3*time.Second); got != rootAddr {
		t.Errorf("a saw the root namespace at %s, want %s", got, rootAddr)
	}
	// Host to root.
	l, err := net.Listen("tcp", netip.AddrPortFrom(rootAddr, 0).String())
	if err != nil {
		t.Fatal(err)
	}
	serveEcho(t, l)
	if got := echo(t, dial(t, a, l.Addr().String()), "a to root", 3*time.Second); got != a.Addr {
		t.Errorf("root saw a at %s, want %s", got, a.Addr)
	}
}

// rootState lists what the root namespace shows: links, named namespaces,
// IPv4 addresses and routes. Entries of other processes' Nets are left out,
// since other test binaries may run at the same time.
func rootState(t *testing.T) []string {
	t.Helper()
	self := os.Getpid()
	foreign := func(s string) bool {
		if m := nsNameRE.FindStringSubmatch(s); m != nil {
			return m[1] != strconv.Itoa(self)
		}
		if m := rootLinkRE.FindStringSubmatch(s); m != nil {
			return m[1] != strconv.FormatInt(int64(self), 16)
		}
		return false
	}
	var state []string
	links, err := ipOutput("-o", "link", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(links, "\n") {
		if f := strings.Fields(line); len(f) > 1 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			if !foreign(name) {
				state = append(state, "link "+name+" "+f[2])
			}
		}
	}
	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !foreign(e.Name()) {
			state = append(state, "netns "+e.Name())
		}
	}
	for _, args := range [][]string{{"-o", "-4", "addr", "show"}, {"-o", "-4", "route", "show", "table", "all"}} {
		// Address lifetimes after the backslash tick down under DHCP.
		out, err := ipOutput(args...)
		if err != nil {
			t.Fatal(err)
		}
	lines:
		for _, line := range strings.Split(out, "\n") {
			for _, f := range strings.Fields(line) {
				if foreign(strings.TrimSuffix(f, ":")) {
					continue lines
				}
			}
			line, _, _ = strings.Cut(line, "\\")
			if line = strings.TrimSpace(line); line != "" {
				state = append(state, line)
			}
		}
	}
	slices.Sort(state)
	return state
}

// Not parallel: it runs alone among this package's tests, so every change it
// sees in the root namespace is its own.
func TestRootNamespaceUnchangedAfterClose(t *testing.T) {
	needRoot(t)
	before := rootState(t)

	n, err := New(nil, "unchanged")
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	var hosts []string
	for _, name := range []string{"web-1", "db-1", "proxy"} {
		h, err := n.AddHost(name)
		if err != nil {
			t.Fatal(err)
		}
		hosts = append(hosts, h.Namespace)
	}
	if _, err := n.ConnectRoot(); err != nil {
		t.Fatal(err)
	}
	during := rootState(t)
	var added []string
	for _, s := range during {
		if !slices.Contains(before, s) {
			added = append(added, s)
		}
	}
	// The namespaces are pinned under /run/netns, and ConnectRoot's veth is
	// the one change to the root namespace's network.
	for _, ns := range append(hosts, n.HubNamespace()) {
		if !slices.Contains(added, "netns "+ns) {
			t.Errorf("namespace %s not listed while the net is up; added: %q", ns, added)
		}
	}
	if !slices.ContainsFunc(added, func(s string) bool { return strings.HasPrefix(s, "link "+rootLinkPrefix) }) {
		t.Errorf("no root link while connected; added: %q", added)
	}

	if err := n.Close(); err != nil {
		t.Fatal(err)
	}
	if err := n.Close(); err != nil {
		t.Errorf("second Close = %v, want nil", err)
	}
	after := rootState(t)
	if !slices.Equal(before, after) {
		t.Errorf("root namespace changed by a closed Net\nbefore: %q\nafter:  %q", before, after)
	}
	if _, err := n.AddHost("late"); !errors.Is(err, ErrClosed) {
		t.Errorf("AddHost after Close = %v, want ErrClosed", err)
	}
}

func TestLinkDownUp(t *testing.T) {
	needRoot(t)
	t.Parallel()
	_, hs := newNet(t, "link", "a", "b")
	a, b := hs[0], hs[1]
	addr := listen(t, a)
	open := dial(t, b, addr)
	echo(t, open, "before", 3*time.Second)

	if err := a.LinkDown(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	c, err := b.DialContext(ctx, "tcp", addr)
	if err == nil {
		c.Close()
		t.Fatal("dial to a host whose link is down succeeded")
	}
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("dial to a host whose link is down: %v, want a timeout", err)
	}
	// An open connection stalls: what b sends now is delivered after LinkUp.
	open.SetDeadline(time.Now().Add(300 * time.Millisecond))
	fmt.Fprintf(open, "during\n")
	if _, err := bufio.NewReader(open).ReadString('\n'); err == nil {
		t.Error("open connection got an answer while the link was down")
	}

	if err := a.LinkUp(); err != nil {
		t.Fatal(err)
	}
	echo(t, dial(t, b, addr), "after", time.Second)
	// The stalled line is delivered once TCP retransmits.
	open.SetDeadline(time.Now().Add(5 * time.Second))
	line, err := bufio.NewReader(open).ReadString('\n')
	if err != nil || !strings.HasSuffix(line, " during\n") {
		t.Errorf("stalled connection after LinkUp read %q, %v; want the echo of %q", line, err, "during")
	}
}

// pinned reports whether a namespace with this name is listed.
func pinned(name string) bool {
	_, err := os.Stat(filepath.Join(netnsDir, name))
	return err == nil
}

// findProcess returns the pid of a live process whose argv is exactly argv.
func findProcess(argv ...string) int {
	want := []byte(strings.Join(argv, "\x00") + "\x00")
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err == nil && bytes.Equal(b, want) {
			return pid
		}
	}
	return 0
}

func TestCleanupAfterFailure(t *testing.T) {
	needRoot(t)
	t.Parallel()
	var (
		namespaces []string
		waited     = make(chan error, 1)
		held       net.Listener
		// An argument no other process has, to find the daemon by.
		marker = fmt.Sprintf("61.%06d", time.Now().UnixNano()%1e6)
	)
	t.Run("fails midway", func(t *testing.T) {
		n, hs := newNet(t, "fail", "a", "b")
		h := hs[0]
		cmd := h.Command(context.Background(), "sleep", "61")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { waited <- cmd.Wait() }()
		// A daemon that left our process group, as apache2 and sshd do.
		// (Its output goes to /dev/null: a pipe would stay open in the daemon.)
		if err := h.Command(context.Background(), "setsid", "-f", "sleep", marker).Run(); err != nil {
			t.Fatalf("start daemon: %v", err)
		}
		// A socket keeps its namespace alive after the name is gone.
		var err error
		if held, err = h.Listen("tcp", ":0"); err != nil {
			t.Fatal(err)
		}
		if _, err := n.ConnectRoot(); err != nil {
			t.Fatal(err)
		}
		namespaces = []string{n.HubNamespace(), hs[0].Namespace, hs[1].Namespace}
		// Leave the way t.Fatal does (runtime.Goexit), without failing the
		// parent: only t.Cleanup stands between this and a leak.
		t.SkipNow()
	})
	if held != nil {
		defer held.Close()
	}
	if len(namespaces) == 0 {
		t.Fatal("subtest ended before creating its network")
	}
	for _, ns := range namespaces {
		if pinned(ns) {
			t.Errorf("namespace %s still listed after cleanup", ns)
		}
	}
	select {
	case err := <-waited:
		if err == nil {
			t.Error("command exited cleanly, want killed")
		}
	case <-time.After(5 * time.Second):
		t.Error("command still running 5s after cleanup")
	}
	if pid := findProcess("sleep", marker); pid != 0 {
		syscall := unix.Kill(pid, unix.SIGKILL)
		t.Errorf("daemon (pid %d) survived cleanup (killed now: %v)", pid, syscall)
	}

	// The same without a testing.TB: a panic unwinds through a deferred Close.
	var nsNames []string
	func() {
		defer func() { recover() }()
		n, err := New(nil, "panic")
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		h, err := n.AddHost("a")
		if err != nil {
			t.Fatal(err)
		}
		nsNames = []string{n.HubNamespace(), h.Namespace}
		panic("boom")
	}()
	for _, ns := range nsNames {
		if pinned(ns) {
			t.Errorf("namespace %s still listed after a panic and Close", ns)
		}
	}
}

func TestAddHostErrors(t *testing.T) {
	needRoot(t)
	t.Parallel()
	n, _ := newNet(t, "errors", "a")
	for _, name := range []string{"a", "hub", "", "Upper", "has_underscore", "-dash", strings.Repeat("x", 33)} {
		if h, err := n.AddHost(name); err == nil {
			t.Errorf("AddHost(%q) = %s, want an error", name, h.Namespace)
		}
	}
	if !pinned(n.ID() + "-a") {
		t.Error("host a disappeared after a duplicate AddHost")
	}
	if got := len(n.Hosts()); got != 1 {
		t.Errorf("%d hosts after failed AddHosts, want 1", got)
	}

	// A host that fails halfway (here the hub lost its bridge) leaves
	// nothing behind, and its name stays free.
	if err := ipRun("-n", n.HubNamespace(), "link", "del", bridgeName); err != nil {
		t.Fatal(err)
	}
	_, err := n.AddHost("b")
	if err == nil || !strings.Contains(err.Error(), "master "+bridgeName) {
		t.Errorf("AddHost without a bridge = %v, want the failing ip command named", err)
	} else {
		t.Logf("as expected: %v", err)
	}
	if pinned(n.ID() + "-b") {
		t.Error("namespace of a failed AddHost left behind")
	}
	if n.Host("b") != nil || len(n.Hosts()) != 1 {
		t.Errorf("failed host recorded: %v", n.Hosts())
	}
}

func TestConcurrentNets(t *testing.T) {
	needRoot(t)
	t.Parallel()
	type seen struct {
		id     string
		subnet netip.Prefix
		root   netip.Addr
	}
	var (
		mu   sync.Mutex
		nets []seen
	)
	t.Run("group", func(t *testing.T) {
		for i := range 4 {
			t.Run(strconv.Itoa(i), func(t *testing.T) {
				t.Parallel()
				n, hs := newNet(t, "conc"+strconv.Itoa(i), "a", "b")
				root, err := n.ConnectRoot()
				if err != nil {
					t.Fatal(err)
				}
				addr := listen(t, hs[0])
				echo(t, dial(t, hs[1], addr), "b to a", 3*time.Second)
				echo(t, dial(t, nil, addr), "root to a", 3*time.Second)
				mu.Lock()
				nets = append(nets, seen{n.ID(), n.Subnet(), root})
				mu.Unlock()
			})
		}
	})
	if len(nets) != 4 {
		t.Fatalf("%d nets came up, want 4", len(nets))
	}
	ids, subnets := map[string]bool{}, map[netip.Prefix]bool{}
	for _, s := range nets {
		if ids[s.id] || subnets[s.subnet] {
			t.Errorf("nets share a name or subnet: %+v", nets)
		}
		ids[s.id], subnets[s.subnet] = true, true
		if pinned(s.id + "-hub") {
			t.Errorf("net %s still there after its test", s.id)
		}
	}
}

func TestNetsAreIsolated(t *testing.T) {
	needRoot(t)
	t.Parallel()
	_, hs1 := newNet(t, "iso1", "a")
	_, hs2 := newNet(t, "iso2", "a")
	addr := listen(t, hs2[0])
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if c, err := hs1[0].DialContext(ctx, "tcp", addr); err == nil {
		c.Close()
		t.Errorf("host of one net reached %s in another", addr)
	}
}

// netnsIno returns the inode of the network namespace at path.
func netnsIno(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// Not parallel: while it checks, no other test may have a thread inside Do.
func TestDoSwitchesOnlyItsThread(t *testing.T) {
	needRoot(t)
	_, hs := newNet(t, "do", "a")
	h := hs[0]
	root := netnsIno(t, "/proc/self/ns/net")
	want := netnsIno(t, h.NamespacePath())

	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			err := h.Do(func() error {
				var st unix.Stat_t
				if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
					return err
				}
				if st.Ino != want {
					return fmt.Errorf("inside Do: namespace %d, want the host's %d", st.Ino, want)
				}
				time.Sleep(time.Millisecond)
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		var st unix.Stat_t
		if unix.Stat("/proc/self/task/"+task.Name()+"/ns/net", &st) != nil {
			continue // the thread just ended
		}
		if st.Ino != root {
			t.Errorf("thread %s left in namespace %d after Do, want the root's %d", task.Name(), st.Ino, root)
		}
	}

	wantErr := errors.New("from fn")
	if err := h.Do(func() error { return wantErr }); !errors.Is(err, wantErr) {
		t.Errorf("Do = %v, want fn's error", err)
	}
	func() {
		defer func() {
			if p := recover(); p != "boom" {
				t.Errorf("recovered %v, want fn's panic", p)
			}
		}()
		h.Do(func() error { panic("boom") })
		t.Error("Do returned after fn panicked")
	}()
}

func TestSweep(t *testing.T) {
	needRoot(t)
	t.Parallel()
	if _, err := Sweep("not-ours-"); err == nil {
		t.Error("Sweep with a foreign prefix succeeded, want refused")
	}
	// A pid that no longer runs: a finished child's.
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	dead := cmd.Process.Pid
	stale := fmt.Sprintf("%s%d-1-web-1", Prefix, dead)
	if err := ipRun("netns", "add", stale); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNamespace(stale) })
	live, _ := newNet(t, "live", "a")

	removed, err := Sweep(fmt.Sprintf("%s%d-", Prefix, dead))
	if err != nil {
		t.Fatal(err)
	}
	if pinned(stale) {
		t.Errorf("Sweep removed %q, want %s gone", removed, stale)
	} else if !slices.Contains(removed, stale) {
		t.Logf("%s was swept by another process first", stale)
	}
	// Everything of live processes stays. (Not Sweep(""): it would race
	// the stale namespaces other tests and test binaries look for.)
	removed, err = Sweep(fmt.Sprintf("%s%d-", Prefix, os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range removed {
		if strings.HasPrefix(name, live.ID()) {
			t.Errorf("Sweep removed %s of a live net", name)
		}
	}
	if !pinned(live.HubNamespace()) {
		t.Error("Sweep removed a live net's hub")
	}
}

// TestCrashHelper is not a test: TestSweepAfterCrash runs the test binary
// with it, and kills it once its network is up, as a crash would.
func TestCrashHelper(t *testing.T) {
	marker := os.Getenv("TESTNET_CRASH_HELPER")
	if marker == "" {
		t.Skip("helper process for TestSweepAfterCrash")
	}
	n, err := New(nil, "crash")
	if err != nil {
		t.Fatal(err)
	}
	h, err := n.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.ConnectRoot(); err != nil {
		t.Fatal(err)
	}
	if err := h.Command(context.Background(), "setsid", "-f", "sleep", marker).Run(); err != nil {
		t.Fatal(err)
	}
	// setsid -f returns before its child has exec'd sleep.
	for deadline := time.Now().Add(2 * time.Second); findProcess("sleep", marker) == 0; {
		if time.Now().After(deadline) {
			t.Fatal("daemon did not start")
		}
		time.Sleep(10 * time.Millisecond)
	}
	fmt.Printf("ready %s %s\n", n.ID(), n.rootLink)
	time.Sleep(time.Minute)
}

// Not parallel: TestSweep's Sweep("") would race it for the crashed run.
func TestSweepAfterCrash(t *testing.T) {
	needRoot(t)
	marker := fmt.Sprintf("62.%06d", time.Now().UnixNano()%1e6)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestCrashHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "TESTNET_CRASH_HELPER="+marker)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	f := strings.Fields(line)
	if err != nil || len(f) != 3 || f[0] != "ready" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("helper said %q, %v; want ready ID LINK", line, err)
	}
	id, link := f[1], f[2]
	cmd.Process.Kill()
	cmd.Wait()

	// The crash left the namespaces, the root link and the daemon behind.
	if !pinned(id+"-hub") || !pinned(id+"-a") {
		t.Fatalf("crashed run's namespaces not found; the test proves nothing")
	}
	if linkGone(link) {
		t.Errorf("crashed run's root link %s not found", link)
	}
	if findProcess("sleep", marker) == 0 {
		t.Errorf("crashed run's daemon not found")
	}

	removed, err := Sweep(id + "-")
	if err != nil {
		t.Fatal(err)
	}
	// The root link dies with the hub, but the kernel tears a namespace down
	// asynchronously, so Sweep may still find it and delete it itself.
	removed = slices.DeleteFunc(removed, func(s string) bool { return s == link })
	slices.Sort(removed)
	if want := []string{id + "-a", id + "-hub"}; !slices.Equal(removed, want) {
		t.Errorf("Sweep removed %q, want %q (and perhaps %s)", removed, want, link)
	}
	if pinned(id+"-hub") || pinned(id+"-a") {
		t.Error("namespaces still there after Sweep")
	}
	if !linkGone(link) {
		t.Errorf("root link %s still there after Sweep", link)
		ipRun("link", "del", link)
	}
	if pid := findProcess("sleep", marker); pid != 0 {
		t.Errorf("daemon (pid %d) survived Sweep", pid)
		unix.Kill(pid, unix.SIGKILL)
	}
}
