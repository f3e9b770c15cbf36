//go:build linux

package capture

// The behavioural conformance suite every Source must pass. A Source's own
// test calls runConformance with a function that opens a fresh, not yet
// running Source (and registers its cleanup with t.Cleanup); the suite runs
// it, drives real processes and connections on this host, and checks the
// events it reports by pid. A check that a Source cannot satisfy by design is
// skipped when the Source names the matching Blind* spot, never silently.
//
// Helper processes are this test binary re-executed with helperEnv set (see
// TestConformanceHelperProcess), so the suite needs no tools beyond /bin/sh
// and /bin/true.

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// helperEnv, set in the environment of a re-executed test binary, makes
// TestConformanceHelperProcess act as a helper process in the named mode.
const helperEnv = "DAEMONEYE_CAPTURE_HELPER"

// conformanceWait bounds every wait for an expected event or helper output.
const conformanceWait = 8 * time.Second

// nobody is the uid and gid the exec test runs its child as.
const nobody = 65534

// runConformance runs the suite against Sources made by open. Each subtest
// opens its own Source, so one failing case cannot starve the next.
func runConformance(t *testing.T, open func(t *testing.T) Source) {
	testenv.NeedRoot(t)
	t.Run("ExecExit", func(t *testing.T) { testConfExecExit(t, open) })
	t.Run("KillSignal", func(t *testing.T) { testConfKillSignal(t, open) })
	t.Run("ForkWithoutExec", func(t *testing.T) { testConfForkWithoutExec(t, open) })
	t.Run("ParentChain", func(t *testing.T) { testConfParentChain(t, open) })
	t.Run("PIDReuse", func(t *testing.T) { testConfPIDReuse(t, open) })
	t.Run("ArgvAndComm", func(t *testing.T) { testConfArgvAndComm(t, open) })
	t.Run("TCPv4", func(t *testing.T) { testConfTCP(t, open, "tcp4", "127.0.0.1:0") })
	t.Run("TCPv6", func(t *testing.T) { testConfTCP(t, open, "tcp6", "[::1]:0") })
}

// requireRoot skips a test that needs root, unless CI is set: there a
// missing privilege is a broken runner and must fail loudly.

// TestConformanceHelperProcess is not a test: it is the body of the helper
// processes the suite starts. Without helperEnv it does nothing.
func TestConformanceHelperProcess(t *testing.T) {
	mode := os.Getenv(helperEnv)
	if mode == "" {
		return
	}
	os.Exit(conformanceHelper(mode, flag.Args()))
}

// conformanceHelper runs one helper mode and returns the exit code.
//
//	wait               read stdin to EOF, exit 0
//	listen NET ADDR    listen, print the address, accept one connection,
//	                   print its peer, hold it until stdin ends
//	connect NET ADDR   connect, print the local address, hold until stdin ends
func conformanceHelper(mode string, args []string) int {
	fail := func(err error) int {
		fmt.Fprintf(os.Stderr, "helper %s: %v\n", mode, err)
		return 2
	}
	switch mode {
	case "wait":
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	case "listen":
		if len(args) != 2 {
			return fail(fmt.Errorf("want NET ADDR, got %q", args))
		}
		ln, err := net.Listen(args[0], args[1])
		if err != nil {
			return fail(err)
		}
		defer ln.Close()
		fmt.Println(ln.Addr())
		c, err := ln.Accept()
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		fmt.Println(c.RemoteAddr())
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	case "connect":
		if len(args) != 2 {
			return fail(fmt.Errorf("want NET ADDR, got %q", args))
		}
		c, err := net.Dial(args[0], args[1])
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		fmt.Println(c.LocalAddr())
		_, _ = io.Copy(io.Discard, os.Stdin)
		return 0
	}
	return fail(fmt.Errorf("unknown mode %q", mode))
}

// collector runs a Source and keeps what it reports.
type collector struct {
	src Source

	mu      sync.Mutex
	events  []Event
	dropped int
	runDone bool
	runErr  error
}

// collectorMaxEvents bounds the memory a busy host can make the suite use.
const collectorMaxEvents = 1 << 20

// startCollector opens a Source, runs it until the test ends and waits until
// it demonstrably reports events.
func startCollector(t *testing.T, open func(t *testing.T) Source) *collector {
	t.Helper()
	src := open(t)
	c := &collector{src: src}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 1<<14)
	runDone := make(chan struct{})
	drainDone := make(chan struct{})
	go func() {
		defer close(runDone)
		err := src.Run(ctx, out)
		c.mu.Lock()
		c.runDone, c.runErr = true, err
		c.mu.Unlock()
	}()
	go func() {
		defer close(drainDone)
		for {
			select {
			case ev := <-out:
				c.add(ev)
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-runDone:
		case <-time.After(5 * time.Second):
			t.Errorf("%s source: Run did not return within 5s of its context ending", src.Name())
			return
		}
		<-drainDone
		if c.runErr != nil {
			t.Errorf("%s source: Run returned %v, want nil after cancel", src.Name(), c.runErr)
		}
		if lost := src.Lost(); len(lost) > 0 {
			t.Logf("%s source lost: %v", src.Name(), lost)
		}
	})
	c.waitReady(t)
	return c
}

func (c *collector) add(ev Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.events) >= collectorMaxEvents {
		c.dropped++
		return
	}
	c.events = append(c.events, ev)
}

// waitReady runs /bin/true until the source reports an event for it: a
// source may attach asynchronously after Run starts.
func (c *collector) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(conformanceWait)
	for i := 0; i < 100 && time.Now().Before(deadline); i++ {
		cmd := exec.Command("/bin/true")
		if err := cmd.Run(); err != nil {
			t.Fatalf("run /bin/true: %v", err)
		}
		pid := uint32(cmd.Process.Pid)
		if _, ok := c.find(200*time.Millisecond, func(ev Event) bool { return ev.Proc.PID == pid }); ok {
			return
		}
		c.failIfStopped(t)
	}
	t.Fatalf("%s source reported nothing about /bin/true children within %v", c.src.Name(), conformanceWait)
}

func (c *collector) failIfStopped(t *testing.T) {
	t.Helper()
	c.mu.Lock()
	done, err := c.runDone, c.runErr
	c.mu.Unlock()
	if done {
		t.Fatalf("%s source: Run returned early: %v", c.src.Name(), err)
	}
}

// find waits up to d for an event matching match.
func (c *collector) find(d time.Duration, match func(Event) bool) (Event, bool) {
	deadline := time.Now().Add(d)
	for seen := 0; ; {
		c.mu.Lock()
		for ; seen < len(c.events); seen++ {
			if match(c.events[seen]) {
				ev := c.events[seen]
				c.mu.Unlock()
				return ev, true
			}
		}
		c.mu.Unlock()
		if time.Now().After(deadline) {
			return Event{}, false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// all returns the events seen so far that match.
func (c *collector) all(match func(Event) bool) []Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	var evs []Event
	for _, ev := range c.events {
		if match(ev) {
			evs = append(evs, ev)
		}
	}
	return evs
}

// waitFor waits for an event matching match and fails the test, listing the
// events about pids, when none comes in time.
func (c *collector) waitFor(t *testing.T, what string, pids []uint32, match func(Event) bool) Event {
	t.Helper()
	if ev, ok := c.find(conformanceWait, match); ok {
		if testing.Verbose() {
			t.Logf("%s: %s", what, fmtEvent(ev))
		}
		return ev
	}
	c.failIfStopped(t)
	t.Fatalf("%s source: no %s within %v; events about pids %v:\n%s\nlost: %v",
		c.src.Name(), what, conformanceWait, pids, c.dump(pids), c.src.Lost())
	return Event{}
}

// dump formats the events that involve one of pids.
func (c *collector) dump(pids []uint32) string {
	var b strings.Builder
	for _, ev := range c.all(func(ev Event) bool {
		return slices.Contains(pids, ev.Proc.PID) || slices.Contains(pids, ev.Parent.PID)
	}) {
		b.WriteString("  ")
		b.WriteString(fmtEvent(ev))
		b.WriteByte('\n')
	}
	if b.Len() == 0 {
		return "  (none)"
	}
	return b.String()
}

func fmtEvent(ev Event) string {
	s := fmt.Sprintf("%s proc=%s parent=%s comm=%q src=%s", ev.Kind, ev.Proc, ev.Parent, ev.Comm, ev.Source)
	switch {
	case ev.Exec != nil:
		x := ev.Exec
		s += fmt.Sprintf(" uid=%d/%d gid=%d/%d exe=%q argv=%q cwd=%q tty=%q cg=%d ns=%d/%d/%d",
			x.UID, x.EUID, x.GID, x.EGID, x.Exe, x.Argv, x.Cwd, x.TTY, x.CgroupID, x.PidNS, x.NetNS, x.MntNS)
	case ev.Exit != nil:
		s += fmt.Sprintf(" code=%d signal=%d core=%v", ev.Exit.Code, ev.Exit.Signal, ev.Exit.Core)
	case ev.Conn != nil:
		s += fmt.Sprintf(" conn=%s proto=%d", ev.Conn, ev.Conn.Proto)
	}
	return s
}

// skipIfBlind skips the test when src reports any of the blind spots.
func skipIfBlind(t *testing.T, src Source, spots ...string) {
	t.Helper()
	blind := src.Blind()
	for _, s := range spots {
		if slices.Contains(blind, s) {
			t.Skipf("%s source is blind to %q", src.Name(), s)
		}
	}
}

// child is a process the suite started; it is killed and reaped at cleanup.
type child struct {
	cmd   *exec.Cmd
	pid   uint32
	stdin io.WriteCloser
	out   *bufio.Reader // stdout, when asked for

	waitOnce sync.Once
	waitErr  error
}

// startChild starts cmd with a stdin pipe the child can wait on.
func startChild(t *testing.T, cmd *exec.Cmd, wantStdout bool) *child {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("stdin pipe: %v", err)
	}
	ch := &child{cmd: cmd, stdin: stdin}
	if wantStdout {
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatalf("stdout pipe: %v", err)
		}
		ch.out = bufio.NewReader(stdout)
	}
	if cmd.Stderr == nil {
		cmd.Stderr = os.Stderr
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", cmd.Args, err)
	}
	ch.pid = uint32(cmd.Process.Pid)
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = ch.wait()
	})
	return ch
}

func (c *child) wait() error {
	c.waitOnce.Do(func() {
		_ = c.stdin.Close()
		c.waitErr = c.cmd.Wait()
	})
	return c.waitErr
}

// finish closes the child's stdin and waits (bounded) for it to exit.
func (c *child) finish(t *testing.T) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = c.wait()
	}()
	select {
	case <-done:
	case <-time.After(conformanceWait):
		_ = c.cmd.Process.Kill()
		<-done
		t.Fatalf("child %d did not exit within %v of its stdin closing", c.pid, conformanceWait)
	}
}

// line reads one line of the child's stdout, bounded in time.
func (c *child) line(t *testing.T) string {
	t.Helper()
	type result struct {
		s   string
		err error
	}
	ch := make(chan result, 1)
	go func() {
		s, err := c.out.ReadString('\n')
		ch <- result{strings.TrimSuffix(s, "\n"), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("read from helper %d: %v", c.pid, r.err)
		}
		return r.s
	case <-time.After(conformanceWait):
		_ = c.cmd.Process.Kill()
		t.Fatalf("helper %d printed nothing within %v", c.pid, conformanceWait)
		return ""
	}
}

// key reads the child's identity from /proc while it is alive.
func (c *child) key(t *testing.T) ProcKey {
	t.Helper()
	return ProcKey{PID: c.pid, Start: statStart(t, int(c.pid))}
}

// helperCmd re-executes this test binary as a helper in mode.
func helperCmd(t *testing.T, mode string, args ...string) *exec.Cmd {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatalf("test executable: %v", err)
	}
	cmd := exec.Command(exe, append([]string{"-test.run=^TestConformanceHelperProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode)
	return cmd
}

// statStart reads field 22 of /proc/PID/stat, independently of procfs.go so
// that the suite does not check the parser against itself.
func statStart(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("read stat of %d: %v", pid, err)
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		t.Fatalf("stat of %d has no ')': %q", pid, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 20 {
		t.Fatalf("stat of %d has %d fields after comm: %q", pid, len(f), b)
	}
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		t.Fatalf("stat of %d: start time %q: %v", pid, f[19], err)
	}
	return v
}

func selfKey(t *testing.T) ProcKey {
	t.Helper()
	return ProcKey{PID: uint32(os.Getpid()), Start: statStart(t, os.Getpid())}
}

// nsInode reads the inode of one of this process's namespaces.
func nsInode(t *testing.T, kind string) uint32 {
	t.Helper()
	l, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		t.Fatalf("readlink ns/%s: %v", kind, err)
	}
	var ino uint32
	if _, err := fmt.Sscanf(l, kind+":[%d]", &ino); err != nil {
		t.Fatalf("parse ns link %q: %v", l, err)
	}
	return ino
}

// cgroupV2ID returns the inode of pid's cgroup v2 directory, or 0 when this
// host has no cgroup2 mount to look it up in.
func cgroupV2ID(t *testing.T, pid int) uint64 {
	t.Helper()
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return 0
	}
	var mnt string
	for _, l := range strings.Split(string(mi), "\n") {
		f := strings.Fields(l)
		for i, s := range f {
			if s == "-" && i+1 < len(f) && f[i+1] == "cgroup2" && f[3] == "/" {
				mnt = f[4]
			}
		}
	}
	cg, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if mnt == "" || err != nil {
		return 0
	}
	for _, l := range strings.Split(string(cg), "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			var st syscall.Stat_t
			if err := syscall.Stat(filepath.Join(mnt, p), &st); err != nil {
				return 0
			}
			return st.Ino
		}
	}
	return 0
}

// sameFile reports whether two paths name the same file once symlinks are
// resolved: a source may report the path as executed or as resolved.
func sameFile(a, b string) bool {
	ra, err1 := filepath.EvalSymlinks(a)
	rb, err2 := filepath.EvalSymlinks(b)
	return err1 == nil && err2 == nil && ra == rb
}

// checkTime checks that an event's wall time lies within the test's window.
func checkTime(t *testing.T, ev Event, from time.Time) {
	t.Helper()
	got := time.Unix(0, ev.Time)
	if got.Before(from.Add(-time.Second)) || got.After(time.Now().Add(time.Second)) {
		t.Errorf("%s event time %v outside the test window [%v, now]", ev.Kind, got, from)
	}
}

func testConfExecExit(t *testing.T, open func(t *testing.T) Source) {
	c := startCollector(t, open)
	begin := time.Now()
	self := selfKey(t)

	dir, err := os.MkdirTemp("", "daemoneye-conf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the child chdirs as nobody
		t.Fatal(err)
	}
	wantCwd, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}

	argv := []string{"/bin/sh", "-c", "read x; exit 7"}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	ch := startChild(t, cmd, false)
	pids := []uint32{ch.pid}

	ex := c.waitFor(t, "exec of the child", pids, func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == ch.pid && ev.Exec != nil && ev.Exec.EUID == nobody
	})
	key := ch.key(t) // the child blocks in read: /proc is stable
	if ex.Proc != key {
		t.Errorf("exec Proc = %s, want %s (pid and /proc stat start time)", ex.Proc, key)
	}
	if ex.Parent != self {
		t.Errorf("exec Parent = %s, want the test process %s", ex.Parent, self)
	}
	if ex.Source != c.src.Name() {
		t.Errorf("exec Source = %q, want %q", ex.Source, c.src.Name())
	}
	checkTime(t, ex, begin)
	if ex.Comm != "sh" {
		t.Errorf("exec Comm = %q, want %q", ex.Comm, "sh")
	}
	x := ex.Exec
	if x.UID != nobody || x.EUID != nobody || x.GID != nobody || x.EGID != nobody {
		t.Errorf("exec uid/euid/gid/egid = %d/%d/%d/%d, want all %d", x.UID, x.EUID, x.GID, x.EGID, nobody)
	}
	if !filepath.IsAbs(x.Exe) || !sameFile(x.Exe, "/bin/sh") {
		t.Errorf("exec Exe = %q, want an absolute path to the file /bin/sh names", x.Exe)
	}
	if !slices.Equal(x.Argv, argv) || x.ArgvTruncated {
		t.Errorf("exec Argv = %q (truncated %v), want %q", x.Argv, x.ArgvTruncated, argv)
	}
	if x.Cwd != wantCwd {
		t.Errorf("exec Cwd = %q, want %q", x.Cwd, wantCwd)
	}
	for _, ns := range []struct {
		name string
		got  uint32
	}{{"pid", x.PidNS}, {"net", x.NetNS}, {"mnt", x.MntNS}} {
		if want := nsInode(t, ns.name); ns.got != want {
			t.Errorf("exec %s namespace = %d, want %d (same as the test process)", ns.name, ns.got, want)
		}
	}
	if want := cgroupV2ID(t, int(ch.pid)); x.CgroupID == 0 || (want != 0 && x.CgroupID != want) {
		t.Errorf("exec CgroupID = %d, want %d (inode of the cgroup v2 directory; nonzero)", x.CgroupID, want)
	}

	if !slices.Contains(c.src.Blind(), BlindForkWithoutExec) {
		fk := c.waitFor(t, "fork of the child", pids, func(ev Event) bool {
			return ev.Kind == KindFork && ev.Proc.PID == ch.pid
		})
		if fk.Proc != key || fk.Parent != self {
			t.Errorf("fork Proc/Parent = %s/%s, want %s/%s", fk.Proc, fk.Parent, key, self)
		}
	}

	ch.finish(t)
	if code := ch.cmd.ProcessState.ExitCode(); code != 7 {
		t.Fatalf("child exit code = %d, want 7 (test setup)", code)
	}
	xe := c.waitFor(t, "exit of the child", pids, func(ev Event) bool {
		return ev.Kind == KindExit && ev.Proc.PID == ch.pid
	})
	if xe.Proc != key {
		t.Errorf("exit Proc = %s, want %s", xe.Proc, key)
	}
	if xe.Exit == nil || xe.Exit.Code != 7 || xe.Exit.Signal != 0 {
		t.Errorf("exit = %s, want code 7 and no signal", fmtEvent(xe))
	}
	checkTime(t, xe, begin)
}

func testConfKillSignal(t *testing.T, open func(t *testing.T) Source) {
	c := startCollector(t, open)
	skipIfBlind(t, c.src, BlindExitSignal)
	ch := startChild(t, exec.Command("/bin/sh", "-c", "read x"), false)
	pids := []uint32{ch.pid}
	c.waitFor(t, "exec of the child", pids, func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == ch.pid
	})
	key := ch.key(t)
	if err := ch.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ch.finish(t)
	xe := c.waitFor(t, "exit of the killed child", pids, func(ev Event) bool {
		return ev.Kind == KindExit && ev.Proc.PID == ch.pid
	})
	if xe.Proc != key {
		t.Errorf("exit Proc = %s, want %s", xe.Proc, key)
	}
	if xe.Exit == nil || xe.Exit.Signal != int32(syscall.SIGKILL) || xe.Exit.Code != 0 || xe.Exit.Core {
		t.Errorf("exit = %s, want signal 9, code 0, no core", fmtEvent(xe))
	}
}

func testConfForkWithoutExec(t *testing.T, open func(t *testing.T) Source) {
	c := startCollector(t, open)
	skipIfBlind(t, c.src, BlindForkWithoutExec)
	// dash and bash fork for a subshell that is not the last command and
	// run its builtin without exec.
	ch := startChild(t, exec.Command("/bin/sh", "-c", "read x; (exit 3); exit 0"), false)
	pids := []uint32{ch.pid}
	sh := c.waitFor(t, "exec of sh", pids, func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == ch.pid
	})
	shKey := ch.key(t)
	ch.finish(t)

	fk := c.waitFor(t, "fork of the subshell", pids, func(ev Event) bool {
		return ev.Kind == KindFork && ev.Parent.PID == ch.pid
	})
	pids = append(pids, fk.Proc.PID)
	if fk.Parent != shKey || sh.Proc != shKey {
		t.Errorf("subshell fork Parent = %s, sh exec Proc = %s, want both %s", fk.Parent, sh.Proc, shKey)
	}
	if fk.Proc.PID == ch.pid || fk.Proc.Start < shKey.Start {
		t.Errorf("subshell fork Proc = %s, want a new pid starting no earlier than sh %s", fk.Proc, shKey)
	}
	xe := c.waitFor(t, "exit of the subshell", pids, func(ev Event) bool {
		return ev.Kind == KindExit && ev.Proc == fk.Proc
	})
	if xe.Exit == nil || xe.Exit.Code != 3 || xe.Exit.Signal != 0 {
		t.Errorf("subshell exit = %s, want code 3", fmtEvent(xe))
	}
	shExit := c.waitFor(t, "exit of sh", pids, func(ev Event) bool {
		return ev.Kind == KindExit && ev.Proc.PID == ch.pid
	})
	if shExit.Proc != shKey || shExit.Exit == nil || shExit.Exit.Code != 0 {
		t.Errorf("sh exit = %s, want %s code 0", fmtEvent(shExit), shKey)
	}
	if evs := c.all(func(ev Event) bool { return ev.Kind == KindExec && ev.Proc == fk.Proc }); len(evs) > 0 {
		t.Errorf("subshell %s never execs, but the source reported %s", fk.Proc, fmtEvent(evs[0]))
	}
}

func testConfParentChain(t *testing.T, open func(t *testing.T) Source) {
	c := startCollector(t, open)
	skipIfBlind(t, c.src, BlindParentChain)
	self := selfKey(t)
	// The inner sh is not the outer script's last command, so the outer sh
	// forks for it; the inner sh exits at once.
	ch := startChild(t, exec.Command("/bin/sh", "-c", "read x; /bin/sh -c 'exit 0'; exit 0"), false)
	pids := []uint32{ch.pid}
	c.waitFor(t, "exec of the outer sh", pids, func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == ch.pid
	})
	ch.finish(t)

	// Find the grandchild: a process whose fork or exec names the outer sh.
	gc := c.waitFor(t, "a grandchild of the outer sh", pids, func(ev Event) bool {
		return (ev.Kind == KindFork || ev.Kind == KindExec) && ev.Parent.PID == ch.pid && ev.Proc.PID != ch.pid
	})
	pids = append(pids, gc.Proc.PID)
	c.waitFor(t, "exit of the grandchild", pids, func(ev Event) bool {
		return ev.Kind == KindExit && ev.Proc == gc.Proc
	})

	// From events alone: grandchild -> outer sh -> this test process.
	parentOf := func(k ProcKey) (ProcKey, bool) {
		evs := c.all(func(ev Event) bool {
			return (ev.Kind == KindFork || ev.Kind == KindExec) && ev.Proc == k && !ev.Parent.IsZero()
		})
		if len(evs) == 0 {
			return ProcKey{}, false
		}
		return evs[0].Parent, true
	}
	chain := []ProcKey{gc.Proc}
	for k := gc.Proc; len(chain) < 3; {
		p, ok := parentOf(k)
		if !ok {
			break
		}
		chain = append(chain, p)
		k = p
	}
	if len(chain) != 3 || chain[1].PID != ch.pid || chain[2] != self {
		t.Errorf("parent chain from events = %v, want [%d@… %d@… %s]\nevents:\n%s",
			chain, gc.Proc.PID, ch.pid, self, c.dump(pids))
	}
}

func testConfPIDReuse(t *testing.T, open func(t *testing.T) Source) {
	c := startCollector(t, open)
	skipIfBlind(t, c.src, BlindPIDReuse)
	self := selfKey(t)
	// Sources report pids of the initial pid namespace, so the reuse must
	// happen there: a fresh pid namespace would hand out equal pids that are
	// different pids on the host. ns_last_pid steers the next pid; other
	// processes may take it first, hence the bounded retries.
	const lastPid = "/proc/sys/kernel/ns_last_pid"
	first := startChild(t, exec.Command("/bin/sh", "-c", "read x"), false)
	pid := first.pid
	pids := []uint32{pid}
	c.waitFor(t, "exec of the first process", pids, func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == pid
	})
	key1 := first.key(t)
	first.finish(t)
	// Start times are in 10 ms ticks: let one pass so the keys must differ.
	time.Sleep(30 * time.Millisecond)

	var second *child
	deadline := time.Now().Add(conformanceWait)
	for attempt := 0; attempt < 200 && time.Now().Before(deadline); attempt++ {
		if err := os.WriteFile(lastPid, []byte(strconv.Itoa(int(pid)-1)), 0); err != nil {
			t.Skipf("cannot steer pid allocation through %s: %v", lastPid, err)
		}
		ch := startChild(t, exec.Command("/bin/sh", "-c", "read x"), false)
		if ch.pid == pid {
			second = ch
			break
		}
		_ = ch.cmd.Process.Kill()
		_ = ch.wait()
	}
	if second == nil {
		t.Skipf("could not get pid %d again within %v: the host allocates pids too fast", pid, conformanceWait)
	}
	c.waitFor(t, "exec of the second process", pids, func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == pid && ev.Proc.Start != key1.Start
	})
	key2 := second.key(t)
	second.finish(t)
	if key1.PID != key2.PID || key1.Start == key2.Start {
		t.Fatalf("test setup: keys %s and %s should share the pid only", key1, key2)
	}
	for _, k := range []ProcKey{key1, key2} {
		c.waitFor(t, "exec of "+k.String(), pids, func(ev Event) bool { return ev.Kind == KindExec && ev.Proc == k })
		c.waitFor(t, "exit of "+k.String(), pids, func(ev Event) bool { return ev.Kind == KindExit && ev.Proc == k })
	}
	if evs := c.all(func(ev Event) bool {
		// Only this test's children: another host process may have held
		// the pid in between.
		return ev.Proc.PID == pid && ev.Proc != key1 && ev.Proc != key2 &&
			ev.Kind == KindExec && ev.Parent == self
	}); len(evs) > 0 {
		t.Errorf("pid %d reported with a start time that is neither %d nor %d: %s",
			pid, key1.Start, key2.Start, fmtEvent(evs[0]))
	}
}

func testConfArgvAndComm(t *testing.T, open func(t *testing.T) Source) {
	c := startCollector(t, open)
	skipIfBlind(t, c.src, BlindArgv)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	for _, name := range []string{"a) (b", "q)\n(p) x"} {
		// The kernel names a task after the basename of the path it
		// executes, so a symlink with an awkward name gives an awkward comm.
		link := filepath.Join(dir, name)
		if err := os.Symlink(exe, link); err != nil {
			t.Fatal(err)
		}
		argv := []string{name, "-test.run=^TestConformanceHelperProcess$", "--",
			"with space", "new\nline", "\xff\xfe", "", "(paren))", "tail"}
		cmd := &exec.Cmd{Path: link, Args: argv, Env: append(os.Environ(), helperEnv+"=wait")}
		ch := startChild(t, cmd, false)
		pids := []uint32{ch.pid}
		ex := c.waitFor(t, fmt.Sprintf("exec of %q", name), pids, func(ev Event) bool {
			return ev.Kind == KindExec && ev.Proc.PID == ch.pid
		})
		if ex.Comm != name {
			t.Errorf("exec Comm = %q, want %q", ex.Comm, name)
		}
		if ex.Exec == nil || !slices.Equal(ex.Exec.Argv, argv) {
			t.Errorf("exec = %s, want argv %q", fmtEvent(ex), argv)
		}
		if k := ch.key(t); ex.Proc != k {
			t.Errorf("exec Proc = %s, want %s", ex.Proc, k)
		}
		ch.finish(t)
	}
}

func testConfTCP(t *testing.T, open func(t *testing.T) Source, network, listenAddr string) {
	if network == "tcp6" {
		ln, err := net.Listen(network, listenAddr)
		if err != nil {
			t.Skipf("no IPv6 loopback on this host: %v", err)
		}
		ln.Close()
	}
	c := startCollector(t, open)
	skipIfBlind(t, c.src, BlindTCPConnect)
	if network == "tcp6" {
		skipIfBlind(t, c.src, BlindIPv6)
	}
	acc := startChild(t, helperCmd(t, "listen", network, listenAddr), true)
	lnAP := netip.MustParseAddrPort(acc.line(t))
	con := startChild(t, helperCmd(t, "connect", network, lnAP.String()), true)
	localAP := netip.MustParseAddrPort(con.line(t))
	if peer := netip.MustParseAddrPort(acc.line(t)); peer != localAP {
		t.Fatalf("test setup: acceptor saw peer %s, connector says %s", peer, localAP)
	}
	accKey, conKey := acc.key(t), con.key(t)
	pids := []uint32{acc.pid, con.pid}
	want := Conn{Proto: ProtoTCP, Src: localAP, Dst: lnAP}
	mirror := Conn{Proto: ProtoTCP, Src: lnAP, Dst: localAP}

	// The helpers hold the connection until their stdin closes, so a
	// polling source has as long as it needs to notice it.
	cev := c.waitFor(t, "connect "+want.String(), pids, func(ev Event) bool {
		return ev.Kind == KindConnect && ev.Conn != nil && *ev.Conn == want
	})
	if cev.Proc != conKey {
		t.Errorf("connect Proc = %s, want the connector %s", cev.Proc, conKey)
	}
	checkAccept := !slices.Contains(c.src.Blind(), BlindTCPAccept)
	if checkAccept {
		aev := c.waitFor(t, "accept "+mirror.String(), pids, func(ev Event) bool {
			return ev.Kind == KindAccept && ev.Conn != nil && *ev.Conn == mirror
		})
		if aev.Proc != accKey {
			t.Errorf("accept Proc = %s, want the acceptor %s", aev.Proc, accKey)
		}
	}
	con.finish(t)
	acc.finish(t)
	if slices.Contains(c.src.Blind(), BlindTCPClose) {
		t.Skipf("%s source is blind to %q", c.src.Name(), BlindTCPClose)
	}
	xev := c.waitFor(t, "close "+want.String(), pids, func(ev Event) bool {
		return ev.Kind == KindClose && ev.Conn != nil && *ev.Conn == want
	})
	if xev.Proc != conKey {
		t.Errorf("close Proc = %s, want the connector %s", xev.Proc, conKey)
	}
	if checkAccept {
		xev := c.waitFor(t, "close "+mirror.String(), pids, func(ev Event) bool {
			return ev.Kind == KindClose && ev.Conn != nil && *ev.Conn == mirror
		})
		if xev.Proc != accKey {
			t.Errorf("close Proc = %s, want the acceptor %s", xev.Proc, accKey)
		}
	}
}
