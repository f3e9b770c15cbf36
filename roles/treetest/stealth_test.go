package treetest

// Stealth, seen from both sides: a program inspects itself before and
// while it is traced by a real agent, and the host is inspected for what
// the agent might leave: processes, files outside its data directory,
// mounts.

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"github.com/evilbitlabs/daemoneye/roles/center"
)

// selfView is what the inspected program sees of itself.
type selfView struct {
	TracerPid   string   `json:"tracer_pid"`
	Status      string   `json:"status"` // /proc/self/status without the lines that change on their own
	Mounts      string   `json:"mounts"` // sha256 of /proc/self/mountinfo
	FDs         []string `json:"fds"`
	Env         string   `json:"env"` // sha256 of /proc/self/environ
	Tmp         []string `json:"tmp"` // names in its private tmp dir
	Cwd         []string `json:"cwd"`
	Parents     []string `json:"parents"` // comm of each ancestor up to pid 1
	Procs       []string `json:"procs"`   // pid:comm of its process group's processes
	LoopNS      []int64  `json:"loop_ns"` // rounds of a syscall loop
	AgentInProc bool     `json:"agent_in_proc"`
}

func sum(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:8]) }

func inspectSelf(tmp string) selfView {
	var v selfView
	st, _ := os.ReadFile("/proc/self/status")
	var keep []string
	for _, l := range strings.Split(string(st), "\n") {
		k, _, _ := strings.Cut(l, ":")
		switch k {
		case "TracerPid":
			v.TracerPid = strings.TrimSpace(strings.TrimPrefix(l, "TracerPid:"))
		case "State", "VmPeak", "VmSize", "VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem", "VmData", "VmStk", "VmPTE",
			"Threads", "SigQ", "voluntary_ctxt_switches", "nonvoluntary_ctxt_switches", "VmLck", "VmPin", "VmExe", "VmLib", "VmSwap", "HugetlbPages":
			// change by themselves as the program runs
		default:
			keep = append(keep, l)
		}
	}
	v.Status = strings.Join(keep, "\n")
	mi, _ := os.ReadFile("/proc/self/mountinfo")
	v.Mounts = sum(mi)
	fds, _ := os.ReadDir("/proc/self/fd")
	for _, fd := range fds {
		target, _ := os.Readlink("/proc/self/fd/" + fd.Name())
		if strings.HasPrefix(target, "/proc/") { // the ReadDir's own fd
			continue
		}
		v.FDs = append(v.FDs, fd.Name()+"->"+target)
	}
	env, _ := os.ReadFile("/proc/self/environ")
	v.Env = sum(env)
	for _, d := range []struct {
		dir string
		out *[]string
	}{{tmp, &v.Tmp}, {".", &v.Cwd}} {
		ents, _ := os.ReadDir(d.dir)
		for _, e := range ents {
			*d.out = append(*d.out, e.Name())
		}
	}
	for pid := os.Getppid(); pid > 1; {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			break
		}
		s := string(b)
		comm := s[strings.IndexByte(s, '(')+1 : strings.LastIndexByte(s, ')')]
		v.Parents = append(v.Parents, comm)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		pid, _ = strconv.Atoi(fields[1])
	}
	pgid := syscall.Getpgrp()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if g, err := syscall.Getpgid(pid); err == nil && g == pgid {
			b, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
			v.Procs = append(v.Procs, e.Name()+":"+strings.TrimSpace(string(b)))
		}
	}
	sort.Strings(v.Procs)
	for round := 0; round < 7; round++ {
		t0 := time.Now()
		for i := 0; i < 20000; i++ {
			syscall.Getppid()
		}
		v.LoopNS = append(v.LoopNS, time.Since(t0).Nanoseconds())
	}
	return v
}

// TestStealthHelper is the inspected program (run by TestTraceStealth).
func TestStealthHelper(t *testing.T) {
	tmp := os.Getenv("DAEMONEYE_STEALTH_HELPER")
	if tmp == "" {
		t.Skip("helper process for TestTraceStealth")
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "snap" {
			os.Exit(0)
		}
		b, _ := json.Marshal(inspectSelf(tmp))
		fmt.Println(string(b))
	}
	os.Exit(0)
}

// hostView is what the host shows of the agent's work.
type hostView struct {
	mounts   string
	children []int
	files    map[string][]string
}

// scratchDirs are where a careless tracer would leave files.
var scratchDirs = []string{"/tmp", "/var/tmp", "/dev/shm", "/run", "/sys/fs/bpf"}

func inspectHost(t *testing.T, ignore func(dir, name string) bool) hostView {
	t.Helper()
	mi, err := testnet.HostMounts()
	if err != nil {
		t.Fatal(err)
	}
	v := hostView{mounts: mi, files: map[string][]string{}}
	for _, d := range scratchDirs {
		ents, _ := os.ReadDir(d)
		for _, e := range ents {
			if !ignore(d, e.Name()) {
				v.files[d] = append(v.files[d], e.Name())
			}
		}
	}
	kids, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", os.Getpid(), os.Getpid()))
	for _, f := range strings.Fields(string(kids)) {
		n, _ := strconv.Atoi(f)
		v.children = append(v.children, n)
	}
	// Children of every thread of the test process (the agent runs here).
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", os.Getpid()))
	for _, tk := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", os.Getpid(), tk.Name()))
		for _, f := range strings.Fields(string(b)) {
			n, _ := strconv.Atoi(f)
			if !slices.Contains(v.children, n) {
				v.children = append(v.children, n)
			}
		}
	}
	sort.Ints(v.children)
	return v
}

func TestTraceStealth(t *testing.T) {
	needRootEBPF(t)
	tr := New(t)
	c := tr.NewCenter("center").Start()
	ag := tr.newRealAgent("host-s", c.Cfg.Listen).Start()

	tmp := t.TempDir()
	work := t.TempDir()
	helper := exec.Command(os.Args[0], "-test.run=^TestStealthHelper$")
	helper.Dir = work
	helper.Env = append(os.Environ(), "DAEMONEYE_STEALTH_HELPER="+tmp)
	helper.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, _ := helper.StdinPipe()
	stdout, _ := helper.StdoutPipe()
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); helper.Process.Kill(); helper.Wait() }()
	out := bufio.NewScanner(stdout)
	out.Buffer(make([]byte, 1<<20), 1<<20)
	snap := func() selfView {
		t.Helper()
		fmt.Fprintln(stdin, "snap")
		for out.Scan() {
			line := out.Text()
			if !strings.HasPrefix(line, "{") {
				continue
			}
			var v selfView
			if err := json.Unmarshal([]byte(line), &v); err != nil {
				t.Fatal(err)
			}
			return v
		}
		t.Fatalf("helper gave no snapshot: %v", out.Err())
		return selfView{}
	}
	ignore := func(dir, name string) bool {
		// Other tests' and the toolchain's scratch entries, and this
		// test's own temp dirs; the agent's data dir is under tr.Dir.
		for _, p := range []string{"Test", "Fuzz", "Benchmark", "go-build", "go-link", "daemoneye-", "go.", "gopls", "org.chromium.", ".org.chromium.", "chromedp-"} {
			if strings.HasPrefix(name, p) {
				return true
			}
		}
		return dir == "/run" && name == "netns"
	}

	before := snap()
	hostBefore := inspectHost(t, ignore)
	pid := helper.Process.Pid
	start := procStart(t, pid)
	eventually(t, 30*time.Second, "the helper known at the center", func() bool {
		_, ok, _ := c.SQL.Process(context.Background(), "host-s", uint32(pid), start)
		return ok
	})
	if err := c.RequestTrace(context.Background(), center.TraceRequest{TraceID: "tr-stealth", Host: "host-s", PID: uint32(pid), Start: start,
		Depth: 4, Flags: center.TraceCmdlines | center.TraceNetwork | center.TraceFiles, InitiatedBy: "rule:stealth-test",
		Caps: center.TraceCaps{MaxDurationS: 600, MaxBytes: 64 << 20, MaxEPS: 5000}, Reason: "stealth test"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the agent's ack", func() bool {
		a := c.Acks("trace-start-tr-stealth@host-s")
		return len(a) > 0
	})
	if a := c.Acks("trace-start-tr-stealth@host-s"); a[len(a)-1].Detail == "" || !strings.HasPrefix(a[len(a)-1].Detail, "trace started") {
		t.Fatalf("agent answer: %+v", a)
	}
	during := snap()
	hostDuring := inspectHost(t, ignore)
	_ = ag

	for _, f := range []struct {
		name         string
		before, with any
	}{
		{"TracerPid", before.TracerPid, during.TracerPid},
		{"/proc/self/status", before.Status, during.Status},
		{"mounts", before.Mounts, during.Mounts},
		{"open fds", before.FDs, during.FDs},
		{"environment", before.Env, during.Env},
		{"its tmp dir", before.Tmp, during.Tmp},
		{"its working directory", before.Cwd, during.Cwd},
		{"parent chain", before.Parents, during.Parents},
		{"its process group", before.Procs, during.Procs},
	} {
		if fmt.Sprint(f.before) != fmt.Sprint(f.with) {
			t.Errorf("%s differs once traced:\n untraced %v\n traced   %v", f.name, f.before, f.with)
		}
	}
	if during.TracerPid != "0" {
		t.Errorf("TracerPid %s while traced, want 0", during.TracerPid)
	}
	med := func(xs []int64) int64 { s := slices.Clone(xs); slices.Sort(s); return s[len(s)/2] }
	t.Logf("getppid loop (20000 calls), median of 7 rounds: untraced %v, traced %v (ratio %.3f; reported, not asserted: timing is a benchmark's business)",
		time.Duration(med(before.LoopNS)), time.Duration(med(during.LoopNS)), float64(med(during.LoopNS))/float64(med(before.LoopNS)))

	if hostBefore.mounts != hostDuring.mounts {
		t.Error("the host's mount table (pid 1's view) changed during the trace")
	}
	if fmt.Sprint(hostBefore.children) != fmt.Sprint(hostDuring.children) {
		t.Errorf("processes started by the agent's process during the trace: before %v, during %v", hostBefore.children, hostDuring.children)
	}
	for _, d := range scratchDirs {
		if fmt.Sprint(hostBefore.files[d]) != fmt.Sprint(hostDuring.files[d]) {
			t.Errorf("%s changed during the trace: before %v, during %v", d, hostBefore.files[d], hostDuring.files[d])
		}
	}
	if fi, err := os.Stat(filepath.Join(ag.Cfg.DataDir, "wal")); err != nil || !fi.IsDir() {
		t.Errorf("the agent's data dir has no wal: %v", err)
	}
}
