package service

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/roles/agent"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
)

// unitCaps reads the capability lines of a rendered unit, the way systemd
// would apply them: the bounding set, the ambient set, and whether
// no_new_privs is set.
func unitCaps(t *testing.T, unit string) (bounding, ambient []string, nnp bool) {
	t.Helper()
	field := func(key string) []string {
		m := regexp.MustCompile(`(?m)^` + key + `=(.*)$`).FindStringSubmatch(unit)
		if m == nil {
			return nil
		}
		return strings.Fields(m[1])
	}
	if field("CapabilityBoundingSet") == nil {
		t.Fatalf("the unit has no CapabilityBoundingSet:\n%s", unit)
	}
	return field("CapabilityBoundingSet"), field("AmbientCapabilities"), slices.Equal(field("NoNewPrivileges"), []string{"yes"})
}

// setprivArgs confines a command as systemd would with these sets, on a
// process started as root: only these capabilities survive the exec.
func setprivArgs(bounding, ambient []string, nnp bool) []string {
	list := func(cs []string) string {
		s := "-all"
		for _, c := range cs {
			s += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
		}
		return s
	}
	args := []string{"--bounding-set=" + list(bounding), "--inh-caps=" + list(ambient), "--ambient-caps=" + list(ambient)}
	if nnp {
		args = append(args, "--no-new-privs")
	}
	return append(args, "--")
}

// victim runs a copy of sleep under a name of its own as the unprivileged
// user nobody: another user's process, which the agent may only inspect
// with its capabilities.
func victim(t *testing.T, dir, name string) (pid uint32, exe string) {
	t.Helper()
	exe = filepath.Join(dir, name)
	b, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "120")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return uint32(cmd.Process.Pid), exe
}

// runningAgent is the real binary run as `daemoneye agent` under setpriv.
type runningAgent struct {
	cmd  *exec.Cmd
	log  agentLog
	data string
	done chan struct{}
}

// agentLog is the agent's output file, read while the agent writes it.
type agentLog string

func (l agentLog) String() string {
	b, _ := os.ReadFile(string(l))
	return string(b)
}

func startAgent(t *testing.T, bin, setpriv string, caps []string, ambient []string, nnp bool, capture string) *runningAgent {
	t.Helper()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	cfg := filepath.Join(dir, "agent.yaml")
	// The file install writes, with the test's data directory.
	def, err := DefaultConfig("agent")
	if err != nil {
		t.Fatal(err)
	}
	y := strings.Replace(string(def), "data_dir: /var/lib/daemoneye/agent", "data_dir: "+data, 1)
	y = strings.Replace(y, "capture: auto", "capture: "+capture+"\n  standalone: true\n  metrics:\n    listen: \"\"", 1)
	if err := os.WriteFile(cfg, []byte(y), 0o600); err != nil {
		t.Fatal(err)
	}
	args := append(setprivArgs(caps, ambient, nnp), bin, "agent", "--config", cfg)
	logf, err := os.Create(filepath.Join(dir, "agent.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	a := &runningAgent{cmd: exec.Command(setpriv, args...), log: agentLog(logf.Name()), data: data, done: make(chan struct{})}
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	a.cmd.Env = []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { a.cmd.Wait(); close(a.done) }()
	t.Cleanup(func() {
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.done:
		case <-time.After(15 * time.Second):
			a.cmd.Process.Kill()
			<-a.done
		}
	})
	return a
}

// ready waits for the inspection socket; false when the agent exited first.
func (a *runningAgent) ready(t *testing.T) bool {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			return false
		default:
		}
		if _, err := os.Stat(filepath.Join(a.data, agent.SocketName)); err == nil {
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("the agent did not open its socket in 30s:\n%s", a.log)
	return false
}

// exitMessage waits for the agent to exit and returns its output.
func (a *runningAgent) exitMessage(t *testing.T) string {
	t.Helper()
	select {
	case <-a.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("the agent kept running:\n%s", a.log)
	}
	return a.log.String()
}

// lineageExe asks the running agent for pid's executable until it knows
// it (or 10 s pass) and returns the last answer.
func (a *runningAgent) lineageExe(t *testing.T, pid uint32) (exe string, uid uint32) {
	t.Helper()
	in, err := agent.OpenInspector(a.data, "/proc", 4096)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	if in.Origin != "agent" {
		t.Fatalf("inspector origin %q, want the running agent", in.Origin)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := in.Lineage(pid, privacy.Reveal{})
		if err == nil {
			exe, uid = l.Target.Exec.Exe, l.Target.Exec.UID
			if exe != "" {
				return exe, uid
			}
		}
		if time.Now().After(deadline) {
			return exe, uid
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestAgentWithUnitCapabilities runs the real binary as the agent with
// exactly the capabilities its unit keeps (and no_new_privs, as the unit
// sets), with the eBPF sensor: it must read another user's running process
// at start (/proc/PID/exe of uid 65534) and record that user's exec from
// the kernel. With CAP_BPF or CAP_PERFMON taken away it must stop and say
// which one is missing; without CAP_SYS_PTRACE it no longer sees another
// user's executable, which is why the unit keeps it.
func TestAgentWithUnitCapabilities(t *testing.T) {
	testenv.NeedRoot(t)
	setpriv := testenv.NeedTool(t, "setpriv")
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set but the kernel has no BTF")
		}
		t.Skip("needs kernel BTF for the eBPF sensor")
	}
	bin := testenv.Binary(t)

	unitOf := func(capture string) (bounding, ambient []string, nnp bool) {
		c := config.Default()
		c.Agent.Capture = capture
		spec, err := ForRole("agent", bin, c)
		if err != nil {
			t.Fatal(err)
		}
		unit, err := Unit(spec)
		if err != nil {
			t.Fatal(err)
		}
		bounding, ambient, nnp = unitCaps(t, unit)
		if !nnp || !slices.Equal(bounding, ambient) {
			t.Fatalf("agent unit: bounding %q ambient %q no_new_privs %v", bounding, ambient, nnp)
		}
		t.Logf("with capture: %s the agent's unit keeps %s", capture, strings.Join(bounding, " "))
		return bounding, ambient, nnp
	}

	// A directory user nobody can run binaries from.
	vdir, err := os.MkdirTemp("", "daemoneye-caps-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(vdir) })
	os.Chmod(vdir, 0o755)

	// Both sources, the eBPF sensor and the /proc fallback (proc
	// connector) that hosts without eBPF run, and auto, the default,
	// which must still pick eBPF with its unit's set.
	for _, capture := range []string{"ebpf", "proc", "auto"} {
		t.Run(capture+" with the unit's set", func(t *testing.T) {
			bounding, ambient, nnp := unitOf(capture)
			seededPID, seededExe := victim(t, vdir, "de-seeded-"+capture)
			a := startAgent(t, bin, setpriv, bounding, ambient, nnp, capture)
			if !a.ready(t) {
				t.Fatalf("the agent exited with its unit's capabilities:\n%s", a.log)
			}
			if got := capLine(t, a.cmd.Process.Pid); got != capMask(t, bounding) {
				t.Errorf("the agent runs with CapEff %s, want %s (%s)", got, capMask(t, bounding), bounding)
			}
			if exe, uid := a.lineageExe(t, seededPID); exe != seededExe || uid != 65534 {
				t.Errorf("seeded process of uid 65534: exe %q uid %d, want %q 65534\n%s", exe, uid, seededExe, a.log)
			}
			execPID, execExe := victim(t, vdir, "de-exec-"+capture)
			if exe, uid := a.lineageExe(t, execPID); exe != execExe || uid != 65534 {
				t.Errorf("exec by uid 65534: exe %q uid %d, want %q 65534\n%s", exe, uid, execExe, a.log)
			}
			if want := map[string]string{"ebpf": "ebpf sensor attached", "proc": "source=proc", "auto": "source=ebpf"}[capture]; !strings.Contains(a.log.String(), want) {
				t.Errorf("the log does not say %q:\n%s", want, a.log)
			}
		})
	}

	bounding, _, nnp := unitOf("ebpf")
	for _, drop := range []string{"CAP_PERFMON", "CAP_BPF"} {
		t.Run("without "+drop, func(t *testing.T) {
			less := slices.DeleteFunc(slices.Clone(bounding), func(c string) bool { return c == drop })
			a := startAgent(t, bin, setpriv, less, less, nnp, "ebpf")
			if a.ready(t) {
				t.Fatalf("the agent started without %s", drop)
			}
			msg := a.exitMessage(t)
			if want := "missing " + drop; !strings.Contains(msg, want) || a.cmd.ProcessState.ExitCode() == 0 {
				t.Errorf("without %s: exit %d, output %q; want a failure that says %q", drop, a.cmd.ProcessState.ExitCode(), msg, want)
			}
		})
	}

	t.Run("without CAP_SYS_PTRACE", func(t *testing.T) {
		seededPID, _ := victim(t, vdir, "de-seeded2-sleep")
		less := slices.DeleteFunc(slices.Clone(bounding), func(c string) bool { return c == "CAP_SYS_PTRACE" })
		a := startAgent(t, bin, setpriv, less, less, nnp, "ebpf")
		if !a.ready(t) {
			t.Fatalf("the agent exited:\n%s", a.log)
		}
		// The process is in the table (from /proc/PID/stat and cmdline),
		// but the kernel hides another user's executable.
		in, err := agent.OpenInspector(a.data, "/proc", 4096)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		l, err := in.Lineage(seededPID, privacy.Reveal{})
		if err != nil {
			t.Fatalf("seeded process not in the table: %v", err)
		}
		if l.Target.Exec.Exe != "" {
			t.Errorf("without CAP_SYS_PTRACE the agent still read %q: the capability would not be needed", l.Target.Exec.Exe)
		}
	})
}

// capLine returns the CapEff line of pid's status.
func capLine(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^CapEff:\s*([0-9a-f]+)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no CapEff in %s", b)
	}
	return string(m[1])
}

// capMask is the CapEff mask of a list of capability names.
func capMask(t *testing.T, caps []string) string {
	t.Helper()
	var mask uint64
	for _, c := range caps {
		n, ok := capNumbers[c]
		if !ok {
			t.Fatalf("capability %s has no number here", c)
		}
		mask |= 1 << n
	}
	return fmt.Sprintf("%016x", mask)
}

// capNumbers are the numbers of the capabilities the units use.
var capNumbers = map[string]int{
	"CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH, "CAP_FOWNER": unix.CAP_FOWNER,
	"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_NET_ADMIN": unix.CAP_NET_ADMIN,
	"CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE, "CAP_SYS_ADMIN": unix.CAP_SYS_ADMIN,
	"CAP_PERFMON": unix.CAP_PERFMON, "CAP_BPF": unix.CAP_BPF,
}
