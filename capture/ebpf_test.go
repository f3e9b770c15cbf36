//go:build linux && amd64

package capture

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// ebpfWait bounds every wait for an expected event in these tests.
const ebpfWait = 5 * time.Second

// ebpfHelperEnv makes TestEBPFHelperProcess act as a helper process.
const ebpfHelperEnv = "DAEMONEYE_EBPF_HELPER"

func TestEBPFConformance(t *testing.T) {
	runConformance(t, func(t *testing.T) Source { return openEBPF(t, DefaultOptions()) })
}

// openEBPF loads the sensor or ends the test: skipped when not root (unless
// CI is set, where a runner without the privilege is broken), failed when
// root cannot load it.
func openEBPF(t testing.TB, opts Options) *EBPFSource {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the ebpf sensor tests need root and CI is set")
		}
		t.Skip("the ebpf sensor tests need root")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	src, err := NewEBPF(opts, log)
	if err != nil {
		t.Fatalf("NewEBPF as root: %v", err)
	}
	t.Cleanup(func() {
		if err := src.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return src
}

// ebpfRun runs src, collecting every event, until the test ends.
type ebpfRun struct {
	src    *EBPFSource
	mu     sync.Mutex
	events []Event
}

func startEBPF(t testing.TB, opts Options) *ebpfRun {
	t.Helper()
	r := &ebpfRun{src: openEBPF(t, opts)}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 1<<16)
	runErr := make(chan error, 1)
	drained := make(chan struct{})
	go func() { runErr <- r.src.Run(ctx, out) }()
	go func() {
		defer close(drained)
		for {
			select {
			case ev := <-out:
				r.mu.Lock()
				r.events = append(r.events, ev)
				r.mu.Unlock()
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
				t.Errorf("Run returned %v after cancel, want nil", err)
			}
		case <-time.After(ebpfWait):
			t.Errorf("Run did not return within %v of cancel", ebpfWait)
		}
		<-drained
	})
	return r
}

// wait returns the first event matching match, waiting up to ebpfWait.
func (r *ebpfRun) wait(t testing.TB, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(ebpfWait)
	for seen := 0; ; {
		r.mu.Lock()
		for ; seen < len(r.events); seen++ {
			if match(r.events[seen]) {
				ev := r.events[seen]
				r.mu.Unlock()
				return ev
			}
		}
		r.mu.Unlock()
		if time.Now().After(deadline) {
			t.Fatalf("no %s within %v (lost %v)", what, ebpfWait, r.src.Lost())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (r *ebpfRun) all(match func(Event) bool) []Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []Event
	for _, ev := range r.events {
		if match(ev) {
			evs = append(evs, ev)
		}
	}
	return evs
}

// procStart reads field 22 of /proc/PID/stat.
func procStart(t testing.TB, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatalf("read stat of %d: %v", pid, err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		t.Fatalf("stat of %d: %v", pid, err)
	}
	return v
}

func nsOf(t testing.TB, kind string) uint32 {
	t.Helper()
	l, err := os.Readlink("/proc/self/ns/" + kind)
	if err != nil {
		t.Fatal(err)
	}
	var ino uint32
	if _, err := fmt.Sscanf(l, kind+":[%d]", &ino); err != nil {
		t.Fatalf("parse %q: %v", l, err)
	}
	return ino
}

// startBlocked starts cmd with a stdin pipe; the child is killed and reaped
// at cleanup. Closing the returned writer lets a "read x" child go on.
func startBlocked(t testing.TB, cmd *exec.Cmd) io.WriteCloser {
	t.Helper()
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %q: %v", cmd.Args, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return stdin
}

// waitExit waits (bounded) for cmd to end.
func waitExit(t testing.TB, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(ebpfWait):
		_ = cmd.Process.Kill()
		t.Fatalf("child %d did not exit within %v", cmd.Process.Pid, ebpfWait)
	}
}

func TestEBPFExecFields(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	self := ProcKey{PID: uint32(os.Getpid()), Start: procStart(t, os.Getpid())}
	begin := time.Now()

	// Not t.TempDir: its parent is private to root and the child runs as
	// nobody.
	dir, err := os.MkdirTemp("", "daemoneye-ebpf-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cwd, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	// sh -c SCRIPT NAME ARGS...: the extra arguments are only data to sh.
	argv := []string{"/bin/sh", "-c", "read x; exit 7", "with space", "new\nline", "\xff\xfe\x80", "", "tab\there"}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65533}}
	stdin := startBlocked(t, cmd)
	pid := uint32(cmd.Process.Pid)

	ex := r.wait(t, "exec of the child", func(ev Event) bool { return ev.Kind == KindExec && ev.Proc.PID == pid })
	key := ProcKey{PID: pid, Start: procStart(t, int(pid))}
	exeLink, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		t.Fatal(err)
	}
	x := ex.Exec
	checks := []struct {
		what      string
		got, want any
	}{
		{"Proc (pid, /proc/PID/stat start)", ex.Proc, key},
		{"Parent", ex.Parent, self},
		{"Source", ex.Source, "ebpf"},
		{"Comm", ex.Comm, "sh"},
		{"UID", x.UID, uint32(65534)},
		{"EUID", x.EUID, uint32(65534)},
		{"GID", x.GID, uint32(65533)},
		{"EGID", x.EGID, uint32(65533)},
		{"Exe (= /proc/PID/exe)", x.Exe, exeLink},
		{"Argv", fmt.Sprintf("%q", x.Argv), fmt.Sprintf("%q", argv)},
		{"ArgvTruncated", x.ArgvTruncated, false},
		{"Cwd", x.Cwd, cwd},
		{"TTY (none: started without one)", x.TTY, ""},
		{"PidNS", x.PidNS, nsOf(t, "pid")},
		{"NetNS", x.NetNS, nsOf(t, "net")},
		{"MntNS", x.MntNS, nsOf(t, "mnt")},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("exec %s = %v, want %v", c.what, c.got, c.want)
		}
	}
	if !filepath.IsAbs(x.Exe) {
		t.Errorf("exec Exe = %q, want an absolute path", x.Exe)
	}
	if x.CgroupID == 0 {
		t.Error("exec CgroupID = 0, want the cgroup v2 id")
	}
	if got := time.Unix(0, ex.Time); got.Before(begin.Add(-time.Second)) || got.After(time.Now().Add(time.Second)) {
		t.Errorf("exec Time %v outside the test window starting %v", got, begin)
	}
	fk := r.wait(t, "fork of the child", func(ev Event) bool { return ev.Kind == KindFork && ev.Proc.PID == pid })
	if fk.Proc != key || fk.Parent != self {
		t.Errorf("fork Proc/Parent = %s/%s, want %s/%s", fk.Proc, fk.Parent, key, self)
	}

	stdin.Close()
	waitExit(t, cmd)
	xe := r.wait(t, "exit of the child", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == pid })
	if xe.Proc != key || xe.Exit == nil || *xe.Exit != (Exit{Code: 7}) {
		t.Errorf("exit = %s %+v, want %s code 7", xe.Proc, xe.Exit, key)
	}
}

// TestEBPFPaths checks exe and cwd against /proc for paths that cross
// mounts, executables that are gone (unlinked, memfd), and a cwd deeper than
// the kernel-side walk, which must not pass for an absolute path.
func TestEBPFPaths(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	sh, err := os.ReadFile("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}

	// run starts cmd blocked in "read x" and returns its exec event.
	run := func(t *testing.T, cmd *exec.Cmd) (Event, int) {
		t.Helper()
		stdin := startBlocked(t, cmd)
		t.Cleanup(func() { stdin.Close() })
		pid := cmd.Process.Pid
		ev := r.wait(t, "exec", func(ev Event) bool { return ev.Kind == KindExec && ev.Proc.PID == uint32(pid) })
		t.Logf("exe %q cwd %q", ev.Exec.Exe, ev.Exec.Cwd)
		return ev, pid
	}
	readlink := func(t *testing.T, pid int, what string) string {
		t.Helper()
		l, err := os.Readlink(fmt.Sprintf("/proc/%d/%s", pid, what))
		if err != nil {
			t.Fatal(err)
		}
		return l
	}

	t.Run("other mount", func(t *testing.T) {
		// /dev/shm is a tmpfs mounted on /dev, itself a mount: two
		// crossings on the way to the root.
		dir, err := os.MkdirTemp("/dev/shm", "daemoneye-ebpf-")
		if err != nil {
			t.Skipf("no /dev/shm: %v", err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if err := os.WriteFile(filepath.Join(dir, "sh"), sh, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(dir, "sh"), "-c", "read x")
		cmd.Dir = dir
		ev, pid := run(t, cmd)
		if err := unix.Access(filepath.Join(dir, "sh"), unix.X_OK); err != nil {
			t.Skipf("/dev/shm is noexec: %v", err)
		}
		if want := readlink(t, pid, "exe"); ev.Exec.Exe != want {
			t.Errorf("Exe = %q, want %q", ev.Exec.Exe, want)
		}
		if want := readlink(t, pid, "cwd"); ev.Exec.Cwd != want {
			t.Errorf("Cwd = %q, want %q", ev.Exec.Cwd, want)
		}
	})

	t.Run("unlinked", func(t *testing.T) {
		dir := t.TempDir()
		path := filepath.Join(dir, "gone-sh")
		if err := os.WriteFile(path, sh, 0o755); err != nil {
			t.Fatal(err)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := os.Remove(path); err != nil {
			t.Fatal(err)
		}
		// fexecve: the child runs the unlinked file through its fd 3.
		cmd := &exec.Cmd{Path: "/proc/self/fd/3", Args: []string{"sh", "-c", "read x"}, ExtraFiles: []*os.File{f}}
		ev, pid := run(t, cmd)
		want := readlink(t, pid, "exe")
		if ev.Exec.Exe != want || !strings.HasSuffix(want, " (deleted)") {
			t.Errorf("Exe = %q, want %q (as /proc says, marked deleted)", ev.Exec.Exe, want)
		}
	})

	t.Run("memfd", func(t *testing.T) {
		fd, err := unix.MemfdCreate("daemoneye-test", 0)
		if err != nil {
			t.Skipf("memfd_create: %v", err)
		}
		f := os.NewFile(uintptr(fd), "memfd")
		defer f.Close()
		if _, err := f.Write(sh); err != nil {
			t.Fatal(err)
		}
		cmd := &exec.Cmd{Path: "/proc/self/fd/3", Args: []string{"sh", "-c", "read x"}, ExtraFiles: []*os.File{f}}
		ev, pid := run(t, cmd)
		if want := readlink(t, pid, "exe"); ev.Exec.Exe != want {
			t.Errorf("Exe = %q, want %q (as /proc says)", ev.Exec.Exe, want)
		}
	})

	t.Run("deep cwd", func(t *testing.T) {
		deep := t.TempDir()
		for i := 0; i < 80; i++ {
			deep = filepath.Join(deep, fmt.Sprintf("d%02d", i))
		}
		if err := os.MkdirAll(deep, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("/bin/sh", "-c", "read x")
		cmd.Dir = deep
		ev, _ := run(t, cmd)
		cwd := ev.Exec.Cwd
		tail, cut := strings.CutPrefix(cwd, "...")
		if !cut || !strings.HasSuffix(deep, tail) || !strings.HasPrefix(tail, "/") {
			t.Errorf("Cwd = %q, want \"...\" and then a tail of %q", cwd, deep)
		}
	})
}

func TestEBPFExitSignal(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	for _, sig := range []syscall.Signal{syscall.SIGKILL, syscall.SIGTERM} {
		cmd := exec.Command("/bin/sh", "-c", "read x")
		startBlocked(t, cmd)
		pid := uint32(cmd.Process.Pid)
		r.wait(t, "exec", func(ev Event) bool { return ev.Kind == KindExec && ev.Proc.PID == pid })
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		waitExit(t, cmd)
		xe := r.wait(t, "exit", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == pid })
		if *xe.Exit != (Exit{Signal: int32(sig)}) {
			t.Errorf("exit after %v = %+v, want signal %d, code 0, no core", sig, *xe.Exit, sig)
		}
	}
}

func TestEBPFTTY(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	ptmx, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pty: %v", err)
	}
	defer ptmx.Close()
	if err := unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlock pty: %v", err)
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("pty number: %v", err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer pts.Close()
	cmd := exec.Command("/bin/true")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	waitExit(t, cmd)
	pid := uint32(cmd.Process.Pid)
	ex := r.wait(t, "exec on a pty", func(ev Event) bool { return ev.Kind == KindExec && ev.Proc.PID == pid })
	if want := fmt.Sprintf("pts/%d", n); ex.Exec.TTY != want {
		t.Errorf("exec TTY = %q, want %q", ex.Exec.TTY, want)
	}
}

func TestEBPFArgvTruncated(t *testing.T) {
	opts := DefaultOptions()
	opts.ArgvMaxBytes = 40
	r := startEBPF(t, opts)
	long := strings.Repeat("x", 100)
	cmd := exec.Command("/bin/sh", "-c", "exit 0", "sh", long)
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)
	ex := r.wait(t, "exec with long argv", func(ev Event) bool { return ev.Kind == KindExec && ev.Proc.PID == pid })
	full := strings.Join(cmd.Args, "\x00")
	if got := strings.Join(ex.Exec.Argv, "\x00"); !ex.Exec.ArgvTruncated || got != full[:40] {
		t.Errorf("argv = %q truncated %v, want the first 40 bytes %q and truncated", ex.Exec.Argv, ex.Exec.ArgvTruncated, full[:40])
	}
}

// TestEBPFHelperProcess is the body of helper processes, not a test.
//
//	threads           start threads, let half of them exit on their own,
//	                  print "ready", exit 5 when stdin ends
//	exec-from-thread  exec sh from a thread other than the leader
func TestEBPFHelperProcess(t *testing.T) {
	switch os.Getenv(ebpfHelperEnv) {
	case "":
		return
	case "threads":
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				// A goroutine that ends locked to its thread makes
				// the runtime end that thread: a lone thread exit.
				runtime.LockOSThread()
				wg.Done()
				if i%2 == 0 {
					return
				}
				select {}
			}()
		}
		wg.Wait()
		time.Sleep(50 * time.Millisecond) // let the lone exits happen
		fmt.Println("ready")
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(5)
	case "exec-from-thread":
		// Exec from a thread that is not the group leader: the kernel
		// kills the other threads and the execing thread takes over the
		// leader's pid and start time.
		done := make(chan error)
		var try func()
		try = func() {
			runtime.LockOSThread()
			if unix.Gettid() == os.Getpid() {
				// Landed on the leader: keep it busy so that the
				// next goroutine cannot, and try again.
				go try()
				select {}
			}
			done <- syscall.Exec("/bin/sh", []string{"sh", "-c", "read x; exit 6"}, os.Environ())
		}
		go try()
		fmt.Fprintln(os.Stderr, <-done)
		os.Exit(2)
	}
}

func TestEBPFThreadGroupExitOnce(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestEBPFHelperProcess$")
	cmd.Env = append(os.Environ(), ebpfHelperEnv+"=threads")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdin := startBlocked(t, cmd)
	pid := uint32(cmd.Process.Pid)
	line := make(chan string, 1)
	go func() { s, _ := bufio.NewReader(stdout).ReadString('\n'); line <- s }()
	select {
	case s := <-line:
		if s != "ready\n" {
			t.Fatalf("helper said %q, want ready", s)
		}
	case <-time.After(ebpfWait):
		t.Fatal("helper not ready in time")
	}
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if len(tasks) < 9 {
		t.Fatalf("helper has %d threads, want at least 9", len(tasks))
	}
	stdin.Close()
	waitExit(t, cmd)
	r.wait(t, "exit of the helper", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == pid })
	// Give a duplicate time to show up.
	time.Sleep(100 * time.Millisecond)
	exits := r.all(func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == pid })
	if len(exits) != 1 || exits[0].Exit.Code != 5 {
		t.Errorf("exit events for the %d-thread helper: %d, want 1 with code 5: %+v", len(tasks), len(exits), exits)
	}
	if forks := r.all(func(ev Event) bool { return ev.Kind == KindFork && ev.Parent.PID == pid }); len(forks) != 0 {
		t.Errorf("new threads reported as %d forks, want none", len(forks))
	}
}

func TestEBPFExecFromThread(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestEBPFHelperProcess$")
	cmd.Env = append(os.Environ(), ebpfHelperEnv+"=exec-from-thread")
	cmd.Stderr = os.Stderr
	stdin := startBlocked(t, cmd)
	pid := uint32(cmd.Process.Pid)
	sh := r.wait(t, "exec of sh from a thread", func(ev Event) bool {
		return ev.Kind == KindExec && ev.Proc.PID == pid && ev.Comm == "sh"
	})
	key := ProcKey{PID: pid, Start: procStart(t, int(pid))}
	if sh.Proc != key {
		t.Errorf("exec Proc = %s, want %s (the leader's pid and start)", sh.Proc, key)
	}
	stdin.Close()
	waitExit(t, cmd)
	r.wait(t, "exit", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == pid })
	time.Sleep(100 * time.Millisecond)
	exits := r.all(func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == pid })
	if len(exits) != 1 || exits[0].Proc != key || *exits[0].Exit != (Exit{Code: 6}) {
		t.Errorf("exit events = %+v, want one for %s with code 6 (threads killed by the exec are not exits)", exits, key)
	}
}

func TestEBPFTCP(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	self := ProcKey{PID: uint32(os.Getpid()), Start: procStart(t, os.Getpid())}
	for _, tc := range []struct{ name, lnNet, lnAddr, dialNet, dialHost string }{
		{"v4", "tcp4", "127.0.0.1:0", "tcp4", "127.0.0.1"},
		{"v6", "tcp6", "[::1]:0", "tcp6", "::1"},
		// A dual-stack listener accepts IPv4 on an AF_INET6 socket with
		// v4-mapped addresses: reported as plain IPv4.
		{"v4 on dual-stack", "tcp", "[::]:0", "tcp4", "127.0.0.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen(tc.lnNet, tc.lnAddr)
			if err != nil {
				t.Skipf("listen %s: %v", tc.lnAddr, err)
			}
			defer ln.Close()
			port := ln.Addr().(*net.TCPAddr).Port
			cli, err := net.Dial(tc.dialNet, net.JoinHostPort(tc.dialHost, strconv.Itoa(port)))
			if err != nil {
				t.Fatal(err)
			}
			srv, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			local := netip.MustParseAddrPort(cli.LocalAddr().String())
			remote := netip.AddrPortFrom(netip.MustParseAddr(tc.dialHost), uint16(port))
			out := Conn{Proto: ProtoTCP, Src: local, Dst: remote}
			in := Conn{Proto: ProtoTCP, Src: remote, Dst: local}
			match := func(k Kind, c Conn) func(Event) bool {
				return func(ev Event) bool { return ev.Kind == k && ev.Conn != nil && *ev.Conn == c }
			}
			for _, want := range []struct {
				kind Kind
				conn Conn
			}{{KindConnect, out}, {KindAccept, in}} {
				ev := r.wait(t, fmt.Sprintf("%s %s", want.kind, want.conn), match(want.kind, want.conn))
				if ev.Proc != self {
					t.Errorf("%s Proc = %s, want this process %s", want.kind, ev.Proc, self)
				}
			}
			cli.Close()
			srv.Close()
			for _, c := range []Conn{out, in} {
				ev := r.wait(t, "close "+c.String(), match(KindClose, c))
				if ev.Proc != self {
					t.Errorf("close Proc = %s, want %s", ev.Proc, self)
				}
			}
			for _, k := range []Kind{KindConnect, KindAccept, KindClose} {
				if n := len(r.all(func(ev Event) bool {
					return ev.Kind == k && ev.Conn != nil && (*ev.Conn == out || *ev.Conn == in)
				})); (k == KindClose && n != 2) || (k != KindClose && n != 1) {
					t.Errorf("%d %s events for the connection", n, k)
				}
			}
		})
	}
}

// TestEBPFRefusedConnect: a connect that never establishes is not reported
// (tcp-connect-failed in Blind) and leaves no owner entry behind to
// mislabel a later socket at the same address.
func TestEBPFRefusedConnect(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if c, err := net.Dial("tcp4", addr); err == nil {
		c.Close()
		t.Skip("port was taken again")
	}
	// A later connection is still reported (the sensor is alive).
	ln2, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	c, err := net.Dial("tcp4", ln2.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r.wait(t, "connect after a refused one", func(ev Event) bool {
		return ev.Kind == KindConnect && ev.Conn.Dst.String() == ln2.Addr().String()
	})
	dst := netip.MustParseAddrPort(addr)
	if evs := r.all(func(ev Event) bool { return ev.Conn != nil && ev.Conn.Dst == dst }); len(evs) != 0 {
		t.Errorf("refused connect reported: %+v", evs[0])
	}
}

// TestEBPFExecStorm: 2000 execs of /bin/true on two workers, every one seen
// (fork, exec, exit) and nothing lost in the ring.
func TestEBPFExecStorm(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	const total, workers = 2000, 2
	pids := make(chan uint32, total)
	deadline := time.Now().Add(30 * time.Second)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < total/workers && time.Now().Before(deadline); i++ {
				cmd := exec.Command("/bin/true")
				if err := cmd.Run(); err != nil {
					t.Errorf("run /bin/true: %v", err)
					return
				}
				pids <- uint32(cmd.Process.Pid)
			}
		}()
	}
	wg.Wait()
	close(pids)
	spawned := map[uint32]int{}
	for pid := range pids {
		spawned[pid] = 0
	}
	if len(spawned) != total {
		t.Fatalf("spawned %d distinct processes, want %d", len(spawned), total)
	}
	const need = 1<<KindFork | 1<<KindExec | 1<<KindExit
	end := time.Now().Add(ebpfWait)
	missing := len(spawned)
	for seen := 0; missing > 0 && time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		r.mu.Lock()
		for ; seen < len(r.events); seen++ {
			ev := r.events[seen]
			if have, ok := spawned[ev.Proc.PID]; ok && have != need {
				if ev.Kind == KindExec && ev.Exec.Exe != "/usr/bin/true" && ev.Exec.Exe != "/bin/true" {
					continue
				}
				spawned[ev.Proc.PID] = have | 1<<ev.Kind
				if spawned[ev.Proc.PID] == need {
					missing--
				}
			}
		}
		r.mu.Unlock()
	}
	lost := r.src.Lost()
	t.Logf("storm of %d: %d incomplete, lost %v", total, missing, lost)
	if missing != 0 {
		t.Errorf("%d of %d processes lack a fork, exec or exit event", missing, total)
	}
	for cause, n := range lost {
		if n != 0 {
			t.Errorf("lost %d events to %s, want none", n, cause)
		}
	}
}

// TestEBPFLegacyExitProgramLoads: the signal->live exit program, used on
// kernels whose sched_process_exit has no group_dead argument, must pass the
// verifier too, though this kernel does not need it.
func TestEBPFLegacyExitProgramLoads(t *testing.T) {
	openEBPF(t, DefaultOptions()) // root check
	spec, err := loadSensor()
	if err != nil {
		t.Fatal(err)
	}
	for name := range spec.Programs {
		if name != "handle_exit_legacy" {
			delete(spec.Programs, name)
		}
	}
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	spec.Maps["scratch"].MaxEntries = uint32(cpus)
	coll, err := ebpf.NewCollection(spec)
	if err != nil {
		t.Fatalf("load handle_exit_legacy: %v", err)
	}
	defer coll.Close()
	l, err := link.AttachTracing(link.TracingOptions{Program: coll.Programs["handle_exit_legacy"]})
	if err != nil {
		t.Fatalf("attach handle_exit_legacy: %v", err)
	}
	l.Close()
}

// TestEBPFRingFullCounted: with a one-page ring and nobody reading, the
// kernel side must count what it could not reserve, and Lost must still say
// so after Close.
func TestEBPFRingFullCounted(t *testing.T) {
	opts := DefaultOptions()
	opts.RingBytes = os.Getpagesize()
	src := openEBPF(t, opts)
	for i := 0; i < 50; i++ {
		_ = exec.Command("/bin/true").Run()
	}
	n := src.Lost()[LossRingFull]
	if n == 0 {
		t.Fatal("50 execs into an unread one-page ring lost nothing, want ring_full > 0")
	}
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	if after := src.Lost()[LossRingFull]; after < n {
		t.Errorf("ring_full after Close = %d, want at least %d", after, n)
	}
}

func TestEBPFRunTwiceAndClose(t *testing.T) {
	src := openEBPF(t, DefaultOptions())
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan Event, 16) // tiny: backpressure must not block
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, out) }()
	time.Sleep(20 * time.Millisecond)
	if err := src.Run(ctx, out); err == nil {
		t.Error("second Run returned nil, want an error")
	}
	for i := 0; i < 50; i++ {
		_ = exec.Command("/bin/true").Run()
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v after cancel, want nil", err)
		}
	case <-time.After(ebpfWait):
		t.Fatal("Run did not return after cancel")
	}
	if src.Lost()[LossBackpressure] == 0 {
		t.Error("a 16-slot channel nobody reads took 150 events without backpressure loss")
	}
	if err := src.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestEBPFUnsupportedWhenUnprivileged loads the sensor from a thread that
// has dropped to nobody: the caller must get ErrUnsupported (so "auto" falls
// back), not a crash or a half-attached sensor.
func TestEBPFUnsupportedWhenUnprivileged(t *testing.T) {
	type result struct {
		src *EBPFSource
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Credentials are per thread in the kernel; the thread is never
		// unlocked, so the runtime discards it when this goroutine ends
		// and no other goroutine ever runs as nobody.
		runtime.LockOSThread()
		if os.Geteuid() == 0 {
			if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
				done <- result{err: fmt.Errorf("setresuid: %w", e)}
				return
			}
		}
		src, err := NewEBPF(DefaultOptions(), nil)
		done <- result{src, err}
	}()
	r := <-done
	if r.src != nil {
		r.src.Close()
		t.Fatal("NewEBPF as nobody succeeded, want ErrUnsupported")
	}
	if !errors.Is(r.err, ErrUnsupported) {
		t.Fatalf("NewEBPF as nobody = %v, want an error wrapping ErrUnsupported", r.err)
	}
	t.Logf("as nobody: %v", r.err)
}

// TestEBPFRecordLayout pins the decoder's offsets to the bpf2go mirrors of
// bpf/sensor.h, so a layout change there fails here.
func TestEBPFRecordLayout(t *testing.T) {
	var h sensorEvHdr
	var x sensorEvExit
	var c sensorEvConn
	var e sensorEvExec
	var fl sensorEvFile
	var so sensorEvSock
	for _, f := range []struct {
		name      string
		got, want uintptr
	}{
		{"hdr.flags", hdrFlags, unsafe.Offsetof(h.Flags)},
		{"hdr.pid", hdrPID, unsafe.Offsetof(h.Pid)},
		{"hdr.start_ns", hdrStart, unsafe.Offsetof(h.StartNs)},
		{"hdr.time_ns", hdrTime, unsafe.Offsetof(h.TimeNs)},
		{"hdr.ppid", hdrPPID, unsafe.Offsetof(h.Ppid)},
		{"hdr.trace", hdrTrace, unsafe.Offsetof(h.Trace)},
		{"hdr.pstart_ns", hdrPStart, unsafe.Offsetof(h.PstartNs)},
		{"hdr.comm", hdrComm, unsafe.Offsetof(h.Comm)},
		{"sizeof hdr", hdrSize, unsafe.Sizeof(h)},
		{"exit.code", exitCode, unsafe.Offsetof(x.Code)},
		{"sizeof exit", exitSize, unsafe.Sizeof(x)},
		{"conn.family", connFamily, unsafe.Offsetof(c.Family)},
		{"conn.sport", connSport, unsafe.Offsetof(c.Sport)},
		{"conn.dport", connDport, unsafe.Offsetof(c.Dport)},
		{"conn.saddr", connSaddr, unsafe.Offsetof(c.Saddr)},
		{"conn.daddr", connDaddr, unsafe.Offsetof(c.Daddr)},
		{"sizeof conn", connSize, unsafe.Sizeof(c)},
		{"exec.uid", execUID, unsafe.Offsetof(e.Uid)},
		{"exec.gid", execGID, unsafe.Offsetof(e.Gid)},
		{"exec.euid", execEUID, unsafe.Offsetof(e.Euid)},
		{"exec.egid", execEGID, unsafe.Offsetof(e.Egid)},
		{"exec.cgroup_id", execCgroup, unsafe.Offsetof(e.CgroupId)},
		{"exec.pidns", execPidNS, unsafe.Offsetof(e.Pidns)},
		{"exec.netns", execNetNS, unsafe.Offsetof(e.Netns)},
		{"exec.mntns", execMntNS, unsafe.Offsetof(e.Mntns)},
		{"exec.tty_index", execTTYIdx, unsafe.Offsetof(e.TtyIndex)},
		{"exec.exe_len", execExeLen, unsafe.Offsetof(e.ExeLen)},
		{"exec.cwd_len", execCwdLen, unsafe.Offsetof(e.CwdLen)},
		{"exec.tty_len", execTTYLen, unsafe.Offsetof(e.TtyLen)},
		{"exec.argv_len", execArgvLen, unsafe.Offsetof(e.ArgvLen)},
		{"exec.env_len", execEnvLen, unsafe.Offsetof(e.EnvLen)},
		{"exec.exe_dev", execExeDev, unsafe.Offsetof(e.ExeDev)},
		{"exec.exe_ino", execExeIno, unsafe.Offsetof(e.ExeIno)},
		{"exec.exe_ctime_ns", execCtime, unsafe.Offsetof(e.ExeCtimeNs)},
		{"exec.exe_size", execExeSize, unsafe.Offsetof(e.ExeSize)},
		{"exec.data", execData, unsafe.Offsetof(e.Data)},
		{"ARGV_CAP", argvCap, unsafe.Sizeof(e.Data) - 16384 - envCap},
		{"file.result", fileResult, unsafe.Offsetof(fl.Result)},
		{"file.flags", fileFlags, unsafe.Offsetof(fl.Flags)},
		{"file.ino", fileIno, unsafe.Offsetof(fl.Ino)},
		{"file.dev", fileDev, unsafe.Offsetof(fl.Dev)},
		{"file.mode", fileMode, unsafe.Offsetof(fl.Mode)},
		{"file.path_len", filePathLen, unsafe.Offsetof(fl.PathLen)},
		{"file.path2_len", filePath2Len, unsafe.Offsetof(fl.Path2Len)},
		{"file.base_len", fileBaseLen, unsafe.Offsetof(fl.BaseLen)},
		{"file.base2_len", fileBase2Len, unsafe.Offsetof(fl.Base2Len)},
		{"file.data", fileData, unsafe.Offsetof(fl.Data)},
		{"sock.result", sockResult, unsafe.Offsetof(so.Result)},
		{"sock.domain", sockDomain, unsafe.Offsetof(so.Domain)},
		{"sock.type", sockType, unsafe.Offsetof(so.Type)},
		{"sock.proto", sockProto, unsafe.Offsetof(so.Proto)},
		{"sock.family", sockFamily, unsafe.Offsetof(so.Family)},
		{"sock.sport", sockSport, unsafe.Offsetof(so.Sport)},
		{"sock.dport", sockDport, unsafe.Offsetof(so.Dport)},
		{"sock.saddr", sockSaddr, unsafe.Offsetof(so.Saddr)},
		{"sock.daddr", sockDaddr, unsafe.Offsetof(so.Daddr)},
		{"sizeof sock", sockSize, unsafe.Sizeof(so)},
	} {
		if f.got != f.want {
			t.Errorf("%s: decoder uses %d, sensor.h has %d", f.name, f.got, f.want)
		}
	}
}

// execRecord builds an exec record the way the kernel side lays it out.
func execRecord(flags byte, exe, cwd, tty string, argv []byte) []byte {
	b := make([]byte, execData, execData+len(exe)+len(cwd)+len(tty)+len(argv))
	b[hdrKind] = evKindExec
	b[hdrFlags] = flags
	recordOrder.PutUint32(b[hdrPID:], 42)
	recordOrder.PutUint64(b[hdrStart:], 123_456_789_000)
	recordOrder.PutUint32(b[hdrPPID:], 1)
	copy(b[hdrComm:], "comm")
	recordOrder.PutUint16(b[execExeLen:], uint16(len(exe)))
	recordOrder.PutUint16(b[execCwdLen:], uint16(len(cwd)))
	recordOrder.PutUint16(b[execTTYLen:], uint16(len(tty)))
	recordOrder.PutUint16(b[execArgvLen:], uint16(len(argv)))
	b = append(b, exe...)
	b = append(b, cwd...)
	b = append(b, tty...)
	return append(b, argv...)
}

func TestEBPFDecodeExec(t *testing.T) {
	var d recordDecoder
	for _, tc := range []struct {
		name  string
		flags byte
		argv  string
		want  []string
	}{
		{"plain", 0, "ls\x00-l\x00", []string{"ls", "-l"}},
		{"empty element", 0, "a\x00\x00b\x00", []string{"a", "", "b"}},
		{"only empty", 0, "\x00", []string{""}},
		{"none", 0, "", nil},
		{"bytes", 0, "\xff\n \x00", []string{"\xff\n "}},
		{"cut mid element", evfArgvTrunc, "abc\x00de", []string{"abc", "de"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ev Event
			if err := d.decode(execRecord(tc.flags, "/bin/x", "/", "", []byte(tc.argv)), &ev); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ev.Exec.Argv, tc.want) || ev.Exec.ArgvTruncated != (tc.flags&evfArgvTrunc != 0) {
				t.Errorf("argv = %q trunc %v, want %q", ev.Exec.Argv, ev.Exec.ArgvTruncated, tc.want)
			}
			if ev.Exec.Exe != "/bin/x" || ev.Exec.Cwd != "/" || ev.Proc != (ProcKey{42, 12345}) || ev.Comm != "comm" {
				t.Errorf("decoded %+v %+v", ev, *ev.Exec)
			}
		})
	}
	var ev Event
	if err := d.decode(execRecord(evfTTYPts, "/x", "/", "", nil), &ev); err != nil || ev.Exec.TTY != "pts/0" {
		t.Errorf("pts tty = %q, %v; want pts/0", ev.Exec.TTY, err)
	}
	if err := d.decode(execRecord(0, "/x", "/", "ttyS0", nil), &ev); err != nil || ev.Exec.TTY != "ttyS0" {
		t.Errorf("tty = %q, %v; want ttyS0", ev.Exec.TTY, err)
	}
}

func TestEBPFDecodeConnAndExit(t *testing.T) {
	var d recordDecoder
	b := make([]byte, connSize)
	b[hdrKind] = evKindAccept
	recordOrder.PutUint16(b[connFamily:], afInet6)
	recordOrder.PutUint16(b[connSport:], 80)
	recordOrder.PutUint16(b[connDport:], 5555)
	mapped := netip.MustParseAddr("::ffff:10.1.2.3").As16()
	copy(b[connSaddr:], mapped[:])
	v6 := netip.MustParseAddr("2001:db8::1").As16()
	copy(b[connDaddr:], v6[:])
	var ev Event
	if err := d.decode(b, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != KindAccept || ev.Conn.Src.String() != "10.1.2.3:80" || ev.Conn.Dst.String() != "[2001:db8::1]:5555" {
		t.Errorf("conn = %v %v, want accept 10.1.2.3:80->[2001:db8::1]:5555", ev.Kind, ev.Conn)
	}
	for status, want := range map[uint32]Exit{7 << 8: {Code: 7}, 9: {Signal: 9}, 0x80 | 11: {Signal: 11, Core: true}} {
		if got := *decodeExitStatus(status); got != want {
			t.Errorf("status %#x = %+v, want %+v", status, got, want)
		}
	}
}

func TestEBPFRingSize(t *testing.T) {
	page := os.Getpagesize()
	for in, want := range map[int]int{0: page, 1: page, page + 1: 2 * page, 8 << 20: 8 << 20, 3 << 20: 4 << 20} {
		if got := ringSize(in); got != want {
			t.Errorf("ringSize(%d) = %d, want %d", in, got, want)
		}
	}
}

// FuzzEBPFDecode: no record, however malformed, may crash the decoder or
// yield strings beyond the record.
func FuzzEBPFDecode(f *testing.F) {
	f.Add(execRecord(0, "/bin/true", "/tmp", "", []byte("true\x00")))
	f.Add(execRecord(evfArgvTrunc|evfTTYPts, "/a", "/b", "tty1", []byte("x\x00y")))
	f.Add(make([]byte, connSize))
	f.Add(make([]byte, exitSize))
	file := make([]byte, fileData, fileData+8)
	file[hdrKind] = evKindRename
	recordOrder.PutUint16(file[filePathLen:], 1)
	recordOrder.PutUint16(file[filePath2Len:], 1)
	recordOrder.PutUint16(file[fileBaseLen:], 3)
	f.Add(append(file, "abcde"...))
	sock := make([]byte, sockSize)
	sock[hdrKind] = evKindConnRes
	recordOrder.PutUint16(sock[sockFamily:], afInet6)
	f.Add(sock)
	f.Fuzz(func(t *testing.T, b []byte) {
		var d recordDecoder
		var ev Event
		if err := d.decode(b, &ev); err != nil {
			return
		}
		if ev.Exec != nil {
			n := len(ev.Exec.Exe) + len(ev.Exec.Cwd)
			for _, a := range ev.Exec.Argv {
				n += len(a)
			}
			for _, e := range ev.Exec.Env {
				n += len(e)
			}
			if n > len(b) {
				t.Errorf("decoded %d bytes of strings from a %d-byte record", n, len(b))
			}
		}
		// Joining a base adds a "/" and a cut base "...": 8 bytes at most.
		if ev.File != nil && len(ev.File.Path)+len(ev.File.Path2) > len(b)+8 {
			t.Errorf("decoded %d bytes of paths from a %d-byte record", len(ev.File.Path)+len(ev.File.Path2), len(b))
		}
	})
}

// TestEBPFVerifierStats logs what the verifier went through for each
// program and fails when one comes near the kernel's limit of one million
// processed instructions: a change that makes a program that expensive to
// verify will soon not load on some kernel.
func TestEBPFVerifierStats(t *testing.T) {
	src := openEBPF(t, DefaultOptions())
	for _, name := range src.progs {
		p := src.coll.Programs[name]
		info, err := p.Info()
		if err != nil {
			t.Fatal(err)
		}
		verified, ok := info.VerifiedInstructions()
		if !ok {
			t.Skip("kernel does not report verified instructions")
		}
		insns, err := info.Instructions()
		if err != nil {
			t.Fatal(err)
		}
		jited, _ := info.JitedSize()
		t.Logf("%-18s %5d insns, %6d verified, %6d bytes jited", name, len(insns), verified, jited)
		if verified > 500_000 {
			t.Errorf("%s: %d instructions verified, half the kernel's limit", name, verified)
		}
	}
}
