//go:build linux

package capture

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

// statLine builds a stat record with the given comm and the fields that
// DaemonEye reads; the others are plausible filler.
func statLine(pid int, comm string, ppid int, tty uint32, start uint64) string {
	return fmt.Sprintf("%d (%s) S %d %d %d %d -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 %d 2445312 200 "+
		"18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
		pid, comm, ppid, pid, pid, tty, start)
}

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		line string
		want statInfo
	}{
		{"plain", statLine(42, "bash", 1, 0x8803, 12345), statInfo{PID: 42, Comm: []byte("bash"), State: 'S', PPID: 1, TTY: 0x8803, Start: 12345}},
		{"paren in comm", statLine(7, "a) (b", 3, 0, 99), statInfo{PID: 7, Comm: []byte("a) (b"), State: 'S', PPID: 3, Start: 99}},
		{"comm is ') '", statLine(7, ") ", 3, 0, 1), statInfo{PID: 7, Comm: []byte(") "), State: 'S', PPID: 3, Start: 1}},
		{"newline in comm", statLine(8, "x\ny) 9 (", 2, 0, 5), statInfo{PID: 8, Comm: []byte("x\ny) 9 ("), State: 'S', PPID: 2, Start: 5}},
		{"non-utf8 comm", statLine(9, "\xff\xfe", 2, 0, 6), statInfo{PID: 9, Comm: []byte("\xff\xfe"), State: 'S', PPID: 2, Start: 6}},
		{"empty comm", statLine(10, "", 0, 0, 0), statInfo{PID: 10, Comm: []byte(""), State: 'S'}},
		{"large start", statLine(11, "k", 2, 0, 1<<60), statInfo{PID: 11, Comm: []byte("k"), State: 'S', PPID: 2, Start: 1 << 60}},
		{"kernel thread", "2 (kthreadd) S 0 0 0 0 -1 2129984 0 0 0 0 0 0 0 0 20 0 1 0 3 0 0 18446744073709551615 0 0 0 0 0 0 0 2147483647 0 0 0 0 17 1 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
			statInfo{PID: 2, Comm: []byte("kthreadd"), State: 'S', Start: 3}},
		{"exactly 22 fields, no newline", "5 (z) R 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77", statInfo{PID: 5, Comm: []byte("z"), State: 'R', PPID: 1, Start: 77}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStat([]byte(tc.line))
			if err != nil {
				t.Fatalf("parseStat(%q): %v", tc.line, err)
			}
			if got.PID != tc.want.PID || string(got.Comm) != string(tc.want.Comm) || got.State != tc.want.State ||
				got.PPID != tc.want.PPID || got.TTY != tc.want.TTY || got.Start != tc.want.Start {
				t.Errorf("parseStat(%q) = %+v, want %+v", tc.line, got, tc.want)
			}
		})
	}

	bad := []string{
		"",
		"42",
		"42 (bash",
		"42 bash) S 1",
		"(bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77",
		"x (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77",
		"42 (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0",    // 21 fields
		"42 (bash) S x 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 77", // bad ppid
		"42 (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -77",
		"42 (bash) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99999999999999999999999",
		"42 (bash) S 1 1 1 zz -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7",
		")(",
	}
	for _, line := range bad {
		if got, err := parseStat([]byte(line)); err == nil {
			t.Errorf("parseStat(%q) = %+v, want an error", line, got)
		}
	}
}

func TestParseStatus(t *testing.T) {
	good := "Name:\tsh\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t5\nPid:\t5\nPPid:\t1\n" +
		"Uid:\t1000\t1001\t1002\t1003\nGid:\t2000\t2001\t2002\t2003\nGroups:\t\n"
	got, err := parseStatus([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if want := (statusIDs{UID: 1000, EUID: 1001, GID: 2000, EGID: 2001}); got != want {
		t.Errorf("parseStatus = %+v, want %+v", got, want)
	}
	max := "Uid:\t4294967295\t0\t0\t0\nGid:\t0\t4294967295\t0\t0"
	if got, err := parseStatus([]byte(max)); err != nil || got.UID != 1<<32-1 || got.EGID != 1<<32-1 {
		t.Errorf("parseStatus(%q) = %+v, %v; want the largest ids", max, got, err)
	}
	for _, bad := range []string{"", "Name:\tsh\n", "Uid:\t1\t2\t3\t4\n", "Uid:\t1\nGid:\t1\t1\n",
		"Uid:\t4294967296\t0\nGid:\t0\t0\n", "Uid:\tx\ty\nGid:\t0\t0\n"} {
		if got, err := parseStatus([]byte(bad)); err == nil {
			t.Errorf("parseStatus(%q) = %+v, want an error", bad, got)
		}
	}
}

func TestParseCmdline(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		max   int
		want  []string
		trunc bool
	}{
		{"normal", "/bin/sh\x00-c\x00exit 7\x00", 100, []string{"/bin/sh", "-c", "exit 7"}, false},
		{"no trailing NUL", "nginx: worker process", 100, []string{"nginx: worker process"}, false},
		{"rewritten with NUL inside", "a b\x00c", 100, []string{"a b", "c"}, false},
		{"kernel thread", "", 100, nil, false},
		{"empty args", "x\x00\x00\x00y\x00", 100, []string{"x", "", "", "y"}, false},
		{"only empty arg", "\x00", 100, []string{""}, false},
		{"non-utf8 and newline", "\xff\xfe\x00new\nline\x00", 100, []string{"\xff\xfe", "new\nline"}, false},
		{"exactly the cap", "abc\x00", 4, []string{"abc"}, false},
		{"over the cap", "abcd\x00efgh\x00", 7, []string{"abcd", "ef"}, true},
		{"cut on NUL", "abcd\x00efgh\x00", 5, []string{"abcd"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b := []byte(tc.in)
			if len(b) > tc.max+1 { // the reader reads at most max+1 bytes
				b = b[:tc.max+1]
			}
			got, trunc := parseCmdline(b, tc.max)
			if !slices.Equal(got, tc.want) || trunc != tc.trunc || (got == nil) != (tc.want == nil) {
				t.Errorf("parseCmdline(%q, %d) = %q, %v; want %q, %v", tc.in, tc.max, got, trunc, tc.want, tc.trunc)
			}
		})
	}
}

func TestParseNSLink(t *testing.T) {
	kind, ino, ok := parseNSLink([]byte("pid:[4026531836]"))
	if !ok || string(kind) != "pid" || ino != 4026531836 {
		t.Errorf("parseNSLink = %q %d %v, want pid 4026531836 true", kind, ino, ok)
	}
	for _, bad := range []string{"", "pid", "pid:[]", "pid:[12", ":[12]", "pid:[1x]", "pid:12]", "net:[-1]"} {
		if _, _, ok := parseNSLink([]byte(bad)); ok {
			t.Errorf("parseNSLink(%q) ok, want not ok", bad)
		}
	}
}

func TestParseCgroupV2(t *testing.T) {
	tests := []struct{ in, want string }{
		{"0::/\n", "/"},
		{"12:pids:/user.slice\n1:name=systemd:/x\n0::/user.slice/a:b.scope\n", "/user.slice/a:b.scope"},
		{"0::/gone (deleted)", "/gone (deleted)"},
		{"4:memory:/process_api/x\n", ""},
		{"", ""},
		{"0::", ""},
		{"10::/not-v2\n", ""},
	}
	for _, tc := range tests {
		got, ok := parseCgroupV2([]byte(tc.in))
		if string(got) != tc.want || ok != (tc.want != "") {
			t.Errorf("parseCgroupV2(%q) = %q %v, want %q", tc.in, got, ok, tc.want)
		}
	}
}

func TestTTYName(t *testing.T) {
	mk := func(major, minor uint32) uint32 {
		return (minor & 0xff) | (major&0xfff)<<8 | (minor&^0xff)<<12
	}
	tests := []struct {
		nr   uint32
		want string
	}{
		{0, ""},
		{mk(136, 3), "pts/3"},
		{mk(136, 300), "pts/300"},
		{mk(137, 0), "pts/256"},
		{mk(4, 1), "tty1"},
		{mk(4, 64), "ttyS0"},
		{mk(4, 65), "ttyS1"},
		{mk(5, 1), "console"},
		{mk(8, 1), "dev(8,1)"},
	}
	for _, tc := range tests {
		if got := ttyName(tc.nr); got != tc.want {
			t.Errorf("ttyName(%#x) = %q, want %q", tc.nr, got, tc.want)
		}
	}
}

// TestReadProcessLive reads a child whose properties the test chose.
func TestReadProcessLive(t *testing.T) {
	testenv.NeedRoot(t)
	dir, err := os.MkdirTemp("", "daemoneye-procfs-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	wantCwd, _ := filepath.EvalSymlinks(dir)
	long := strings.Repeat("y", 300)
	argv := []string{"/bin/sh", "-c", "read x", "a b", "\xff\xfe", "", long}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65533}}
	begin := time.Now()
	ch := startChild(t, cmd, false)
	self := selfKey(t)
	waitExeced(t, int(ch.pid), "/bin/sh")

	p, err := ReadProcess("/proc", int(ch.pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := ch.key(t); p.Key != want {
		t.Errorf("Key = %s, want %s", p.Key, want)
	}
	if p.Parent != self {
		t.Errorf("Parent = %s, want %s", p.Parent, self)
	}
	if p.Comm != "sh" || !p.Execed || p.Seeded {
		t.Errorf("Comm, Execed, Seeded = %q %v %v; want sh true false", p.Comm, p.Execed, p.Seeded)
	}
	x := p.Exec
	if x.UID != 65534 || x.EUID != 65534 || x.GID != 65533 || x.EGID != 65533 {
		t.Errorf("ids = %d/%d/%d/%d, want 65534/65534/65533/65533", x.UID, x.EUID, x.GID, x.EGID)
	}
	if !slices.Equal(x.Argv, argv) || x.ArgvTruncated {
		t.Errorf("Argv = %q (truncated %v), want %q", x.Argv, x.ArgvTruncated, argv)
	}
	if want, _ := filepath.EvalSymlinks("/bin/sh"); x.Exe != want {
		t.Errorf("Exe = %q, want %q", x.Exe, want)
	}
	if x.Cwd != wantCwd {
		t.Errorf("Cwd = %q, want %q", x.Cwd, wantCwd)
	}
	if x.PidNS != nsInode(t, "pid") || x.NetNS != nsInode(t, "net") || x.MntNS != nsInode(t, "mnt") {
		t.Errorf("namespaces = %d/%d/%d, want %d/%d/%d", x.PidNS, x.NetNS, x.MntNS,
			nsInode(t, "pid"), nsInode(t, "net"), nsInode(t, "mnt"))
	}
	if want := cgroupV2ID(t, int(ch.pid)); x.CgroupID != want {
		t.Errorf("CgroupID = %d, want %d", x.CgroupID, want)
	}
	self0, _ := os.ReadFile("/proc/self/stat")
	if st, err := parseStat(self0); err != nil || x.TTY != ttyName(st.TTY) {
		t.Errorf("TTY = %q, want %q (the test's own terminal)", x.TTY, ttyName(st.TTY))
	}
	// Start times have 10 ms ticks; allow that and some clock reading slack.
	if st := time.Unix(0, p.StartTime); st.Before(begin.Add(-30*time.Millisecond)) || st.After(time.Now()) {
		t.Errorf("StartTime = %v, want between %v (spawn) and now", st, begin)
	}

	// The argv cap cuts and flags.
	r := newProcReader("/proc", 20, "", bootWallNs())
	q, err := r.read(int(ch.pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/bin/sh", "-c", "read x", "a "}; !slices.Equal(q.Exec.Argv, want) || !q.Exec.ArgvTruncated {
		t.Errorf("capped Argv = %q (truncated %v), want %q truncated", q.Exec.Argv, q.Exec.ArgvTruncated, want)
	}

	ch.finish(t)
	if _, err := ReadProcess("/proc", int(ch.pid)); !errors.Is(err, ErrProcessGone) {
		t.Errorf("ReadProcess of a reaped child: %v, want ErrProcessGone", err)
	}
}

// waitExeced waits (bounded) until pid runs the image at path.
func waitExeced(t *testing.T, pid int, path string) {
	t.Helper()
	want, _ := filepath.EvalSymlinks(path)
	for i := 0; i < 500; i++ {
		if exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err == nil && exe == want {
			if cl, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); err == nil && len(cl) > 0 {
				return
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("pid %d did not exec %s within 2.5s", pid, path)
}

func TestReadProcessKernelThread(t *testing.T) {
	testenv.NeedRoot(t)
	// pid 2 is kthreadd on every Linux since 2.6.
	p, err := ReadProcess("/proc", 2)
	if err != nil {
		t.Fatal(err)
	}
	if p.Comm != "kthreadd" || p.Execed || p.Exec.Argv != nil || p.Exec.Exe != "" || p.Parent.PID != 0 {
		t.Errorf("kthreadd = %+v, want comm kthreadd, no argv, no exe, no parent", p)
	}
}

func TestScanProcesses(t *testing.T) {
	testenv.NeedRoot(t)
	ch := startChild(t, exec.Command("/bin/sh", "-c", "read x"), false)
	waitExeced(t, int(ch.pid), "/bin/sh")
	self := selfKey(t)
	procs, err := ScanProcesses("/proc")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[uint32]bool)
	var gotChild, gotSelf bool
	for _, p := range procs {
		if seen[p.Key.PID] {
			t.Errorf("pid %d scanned twice", p.Key.PID)
		}
		seen[p.Key.PID] = true
		if !p.Seeded {
			t.Errorf("%s not marked Seeded", p.Key)
		}
		switch p.Key.PID {
		case ch.pid:
			gotChild = true
			if want := ch.key(t); p.Key != want || p.Parent != self || !slices.Equal(p.Exec.Argv, []string{"/bin/sh", "-c", "read x"}) {
				t.Errorf("child = %s parent %s argv %q, want %s parent %s", p.Key, p.Parent, p.Exec.Argv, want, self)
			}
		case self.PID:
			gotSelf = true
			if p.Key != self {
				t.Errorf("self = %s, want %s", p.Key, self)
			}
		}
	}
	if !gotChild || !gotSelf {
		t.Errorf("scan of %d processes lacks the child (%v) or the test (%v)", len(procs), gotChild, gotSelf)
	}
	// Seed is the same scan with a cap.
	seeded, err := Seed("", 8)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range seeded {
		if p.Key.PID == ch.pid && (!p.Exec.ArgvTruncated || !slices.Equal(p.Exec.Argv, []string{"/bin/sh"})) {
			t.Errorf("Seed with cap 8: child argv %q truncated %v, want [/bin/sh] truncated", p.Exec.Argv, p.Exec.ArgvTruncated)
		}
	}
}

func TestScanProcessesMissingRoot(t *testing.T) {
	if _, err := ScanProcesses(filepath.Join(t.TempDir(), "nope")); err == nil {
		t.Error("ScanProcesses of a missing directory succeeded, want an error")
	}
	// A directory with a stale pid entry: skipped, no error.
	root := t.TempDir()
	if err := os.Mkdir(filepath.Join(root, "123"), 0o755); err != nil {
		t.Fatal(err)
	}
	procs, err := ScanProcesses(root)
	if err != nil || len(procs) != 0 {
		t.Errorf("ScanProcesses(%s) = %d processes, %v; want none, no error", root, len(procs), err)
	}
}

func BenchmarkReadProcess(b *testing.B) {
	r := newProcReader("/proc", 4096, cgroup2Mount("/proc"), bootWallNs())
	pid := os.Getpid()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.read(pid); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSeed10k measures a full scan of a host with 10,000 extra live
// processes: one sh forks them as subshells blocked reading a pipe that the
// benchmark holds; closing it lets them all exit and the sh reap them.
func BenchmarkSeed10k(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root to create 10,000 processes without tripping limits")
	}
	const n = 10000
	checkProcLimits(b, n)

	r, w, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	script := `i=0; while [ $i -lt ` + strconv.Itoa(n) + ` ]; do (read x <&3) & i=$((i+1)); done; echo ready; wait`
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.ExtraFiles = []*os.File{r}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	r.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = cmd.Wait()
	}()
	b.Cleanup(func() {
		w.Close() // EOF for every subshell; sh reaps them and exits
		select {
		case <-done:
		case <-time.After(60 * time.Second):
			// Last resort: the whole process group.
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})

	ready := make(chan error, 1)
	go func() {
		buf := make([]byte, 6)
		_, err := out.Read(buf)
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			b.Fatalf("spawner: %v", err)
		}
	case <-time.After(120 * time.Second):
		b.Fatal("spawning 10,000 processes took over 120s")
	}

	// CPU time as well as wall time: on a shared host the wall time of a
	// scan says as much about the neighbours as about the scan.
	var ru0, ru1 unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru0)
	var procs []Process
	start := time.Now()
	for b.Loop() {
		procs, err = Seed("/proc", 4096)
		if err != nil {
			b.Fatal(err)
		}
	}
	el := time.Since(start)
	b.StopTimer()
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru1)
	cpu := time.Duration(ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano())
	b.ReportMetric(float64(cpu.Milliseconds())/float64(b.N), "cpu-ms/scan")
	if len(procs) < n {
		b.Fatalf("scan saw %d processes, want at least %d", len(procs), n)
	}
	b.ReportMetric(float64(el.Milliseconds())/float64(b.N), "ms/scan")
	b.ReportMetric(float64(len(procs)), "procs")
	b.ReportMetric(float64(runtime.GOMAXPROCS(0)), "workers")
}

// checkProcLimits skips unless the host can hold n more processes; it
// raises this process's soft RLIMIT_NPROC (inherited by the spawner) if the
// hard limit allows.
func checkProcLimits(b *testing.B, n int) {
	b.Helper()
	readInt := func(path string) int {
		v, err := os.ReadFile(path)
		if err != nil {
			return 0
		}
		i, _ := strconv.Atoi(strings.TrimSpace(string(v)))
		return i
	}
	procs, _ := os.ReadDir("/proc")
	if pm := readInt("/proc/sys/kernel/pid_max"); pm < len(procs)+n+1000 {
		b.Skipf("pid_max %d is too small for %d more processes", pm, n)
	}
	if tm := readInt("/proc/sys/kernel/threads-max"); tm < len(procs)+n+1000 {
		b.Skipf("threads-max %d is too small for %d more processes", tm, n)
	}
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NPROC, &lim); err == nil && lim.Cur < uint64(2*n) {
		lim.Cur = min(lim.Max, uint64(4*n))
		_ = unix.Setrlimit(unix.RLIMIT_NPROC, &lim)
		// root with CAP_SYS_ADMIN or CAP_SYS_RESOURCE is not bound by it anyway.
	}
}
