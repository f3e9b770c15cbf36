package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"golang.org/x/sys/unix"
)

// waitTimeout bounds every wait of these tests.
const waitTimeout = 60 * time.Second

// needScenario skips without root, except under CI, where a runner without
// the privilege is broken, and installs the software when it is missing
// (a failed install fails under CI and skips otherwise: no network).
func needScenario(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the scenario tests need root and CI is set")
		}
		t.Skip("the scenario tests need root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := Install(ctx, nil); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("install the scenario software: %v", err)
		}
		t.Skipf("scenario software missing and not installable here: %v", err)
	}
}

func build(t *testing.T, opts Options) *Scenario {
	t.Helper()
	s, err := Build(t, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("scenario logs:\n%s", s.Logs())
		}
	})
	return s
}

func TestScenarioAttack(t *testing.T) {
	needScenario(t)
	s := build(t, Options{ExtraHosts: []string{"proxy-1", "center"}})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	if got := len(s.Hosts()); got != 5 {
		t.Errorf("%d hosts, want 5 (web-1, db-1, attacker, proxy-1, center)", got)
	}
	if s.Extra["proxy-1"] == nil || s.Extra["center"] == nil {
		t.Errorf("extra hosts missing: %v", s.Extra)
	}
	for _, h := range s.Hosts() {
		if sc, err := capture.ParseScope(Scope(h)); err != nil || sc.Kind != capture.ScopeNetNS {
			t.Errorf("Scope(%s) = %q does not parse as a netns scope: %v", h.Name, Scope(h), err)
		}
	}

	// The page's intended use.
	body, err := s.Lookup(ctx, "127.0.0.1")
	if err != nil {
		t.Fatalf("lookup: %v\n%s", err, body)
	}
	if !strings.Contains(body, "lookup: 127.0.0.1") || !strings.Contains(body, "localhost") {
		t.Errorf("lookup of 127.0.0.1 answered %q, want getent's line for it (localhost)", body)
	}

	body, err = s.Attack(ctx, "")
	if err != nil {
		t.Fatalf("attack: %v\n%s", err, body)
	}
	for _, want := range []string{
		"db-host=" + DBHost,
		"db-user=" + DBUser,
		// SSH_CONNECTION: client address and port, server address and port.
		"db-ssh=" + s.Web.Addr.String() + " ",
		" " + s.DB.Addr.String() + " 22",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("attack response lacks %q:\n%s", want, body)
		}
	}

	// The daemons are the real ones, in their hosts.
	procs, err := s.Processes()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pid       int
		host, exe string
	}{{s.ApachePID, WebHost, Apache2Bin}, {s.SSHDPID, DBHost, SSHDBin}} {
		p := find(procs, c.pid)
		if p == nil || p.Host != c.host || p.Exec.Exe != c.exe {
			t.Errorf("pid %d: %+v, want %s on %s", c.pid, p, c.exe, c.host)
		}
	}
}

func find(procs []Process, pid int) *Process {
	for i := range procs {
		if procs[i].Key.PID == uint32(pid) {
			return &procs[i]
		}
	}
	return nil
}

// ancestors reports whether anc is p or one of its ancestors in procs.
func descends(procs []Process, p Process, anc int) bool {
	for range 64 {
		if p.Key.PID == uint32(anc) {
			return true
		}
		q := find(procs, int(p.Parent.PID))
		if q == nil || q.Key != p.Parent {
			return false
		}
		p = *q
	}
	return false
}

// TestScenarioProcessChain holds the attack open on db-1 until the test has
// seen, in /proc, the chains an agent on each host must record:
// apache2 -> bash -> ssh on web-1 and sshd -> bash on db-1.
func TestScenarioProcessChain(t *testing.T) {
	needScenario(t)
	s := build(t, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()

	release := filepath.Join(s.Dir, "release")
	remote := fmt.Sprintf(`echo "db-host=$(uname -n)"; for i in $(seq 600); do [ -e %s ] && break; sleep 0.1; done; echo released`, release)
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		body, err := s.Attack(ctx, remote)
		done <- result{body, err}
	}()

	var web, db []Process
	var procs []Process
	for web == nil || db == nil {
		select {
		case r := <-done:
			t.Fatalf("the attack ended before the chains were seen: %v\n%s", r.err, r.body)
		case <-ctx.Done():
			t.Fatalf("chains not seen within %v: web-1 %v, db-1 %v", waitTimeout, web, db)
		case <-time.After(50 * time.Millisecond):
		}
		var err error
		if procs, err = s.Processes(); err != nil {
			t.Fatal(err)
		}
		web = FindChain(procs, WebHost, "apache2", "bash", "ssh")
		db = FindChain(procs, DBHost, "sshd", "bash")
	}
	if err := os.WriteFile(release, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	// web-1: the worker is a child of the main apache2; the shell it
	// spawned runs as the worker's account and runs the injected ssh.
	if !descends(procs, web[0], s.ApachePID) {
		t.Errorf("web-1 chain %v does not descend from apache2 (pid %d)", web, s.ApachePID)
	}
	www, err := lookupUser(WebUser)
	if err != nil {
		t.Fatal(err)
	}
	bash, ssh := web[1], web[2]
	if bash.Exec.UID != uint32(www.uid) || bash.Exec.Exe != "/usr/bin/bash" {
		t.Errorf("web-1 shell: uid %d exe %s, want uid %d (%s) and /usr/bin/bash", bash.Exec.UID, bash.Exec.Exe, www.uid, WebUser)
	}
	if args := strings.Join(ssh.Exec.Argv, " "); !strings.Contains(args, s.KeyPath) || !strings.Contains(args, DBUser+"@"+s.DB.Addr.String()) {
		t.Errorf("web-1 ssh argv %q, want the prepared key and %s@%s", ssh.Exec.Argv, DBUser, s.DB.Addr)
	}
	// db-1: the shell runs under the scenario's sshd.
	if !descends(procs, db[0], s.SSHDPID) {
		t.Errorf("db-1 chain %v does not descend from sshd (pid %d)", db, s.SSHDPID)
	}
	if db[1].Exec.UID != 0 {
		t.Errorf("db-1 shell runs as uid %d, want 0 (%s)", db[1].Exec.UID, DBUser)
	}

	r := <-done
	if r.err != nil {
		t.Fatalf("attack: %v\n%s", r.err, r.body)
	}
	if !strings.Contains(r.body, "db-host="+DBHost) || !strings.Contains(r.body, "released") {
		t.Errorf("attack response %q, want db-host=%s and released", r.body, DBHost)
	}
}

// state is what a scenario leaves on the machine while it runs.
type state struct {
	Namespaces []string // pinned namespace files
	Inodes     []uint64 // their inodes
	Dir        string
	Pids       []int
}

func stateOf(t *testing.T, s *Scenario) state {
	t.Helper()
	st := state{Dir: s.Dir, Pids: []int{s.ApachePID, s.SSHDPID}}
	for _, h := range s.Hosts() {
		var fi unix.Stat_t
		if err := unix.Stat(h.NamespacePath(), &fi); err != nil {
			t.Fatal(err)
		}
		st.Namespaces = append(st.Namespaces, h.NamespacePath())
		st.Inodes = append(st.Inodes, fi.Ino)
	}
	return st
}

// checkGone fails unless nothing of st is left: no namespace file, no
// process in those namespaces, no daemon, no directory.
func checkGone(t *testing.T, st state) {
	t.Helper()
	for _, ns := range st.Namespaces {
		if _, err := os.Stat(ns); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("namespace %s still pinned (%v)", ns, err)
		}
	}
	inodes := map[uint64]bool{}
	for _, ino := range st.Inodes {
		inodes[ino] = true
	}
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		var fi unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &fi) == nil && inodes[fi.Ino] {
			comm, _ := os.ReadFile("/proc/" + e.Name() + "/comm")
			t.Errorf("process %s (%s) still runs in a scenario namespace", e.Name(), strings.TrimSpace(string(comm)))
		}
	}
	for _, pid := range st.Pids {
		if processAlive(pid) {
			if stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil && !strings.Contains(string(stat), ") Z ") {
				t.Errorf("daemon pid %d still runs", pid)
			}
		}
	}
	if _, err := os.Stat(st.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("directory %s still exists (%v)", st.Dir, err)
	}
}

func TestScenarioClose(t *testing.T) {
	needScenario(t)
	s, err := Build(nil, Options{ExtraHosts: []string{"center"}, ConnectRoot: true})
	if err != nil {
		t.Fatal(err)
	}
	st := stateOf(t, s)
	// An attack leaves sessions and workers that left the daemons'
	// process groups.
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if body, err := s.Attack(ctx, "sleep 0.1; uname -n"); err != nil {
		t.Errorf("attack: %v\n%s", err, body)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	checkGone(t, st)
}

// TestScenarioHelper is run by TestScenarioCleanupOnFailure as a child
// process: it builds a scenario, reports its state on stdout, and then
// fails (t.Cleanup must remove everything) or waits to be killed (Sweep
// must).
func TestScenarioHelper(t *testing.T) {
	mode := os.Getenv("DAEMONEYE_SCENARIO_HELPER")
	if mode == "" {
		t.Skip("run by TestScenarioCleanupOnFailure")
	}
	s, err := Build(t, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := json.NewEncoder(os.Stdout).Encode(stateOf(t, s)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if body, err := s.Attack(ctx, "uname -n"); err != nil {
		t.Errorf("attack: %v\n%s", err, body)
	}
	if mode == "crash" {
		fmt.Println("ready")
		time.Sleep(waitTimeout) // killed by the parent
	}
	t.Fatal("failing on purpose: t.Cleanup must still remove the scenario")
}

func runHelper(t *testing.T, mode string) (state, *exec.Cmd, func() string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	t.Cleanup(cancel)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestScenarioHelper$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "DAEMONEYE_SCENARIO_HELPER="+mode)
	var out strings.Builder
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = pw, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pw.Close()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		buf := make([]byte, 64<<10)
		var acc string
		for {
			n, err := pr.Read(buf)
			acc += string(buf[:n])
			for {
				i := strings.IndexByte(acc, '\n')
				if i < 0 {
					break
				}
				lines <- acc[:i]
				acc = acc[i+1:]
			}
			if err != nil {
				return
			}
		}
	}()
	var st state
	var all []string
	next := func() string {
		for l := range lines {
			all = append(all, l)
			if strings.HasPrefix(l, "{") || l == "ready" {
				return l
			}
		}
		return ""
	}
	l := next()
	if err := json.Unmarshal([]byte(l), &st); err != nil || st.Dir == "" {
		cmd.Wait()
		t.Fatalf("helper gave no state (%v); output:\n%s\n%s", err, strings.Join(all, "\n"), out.String())
	}
	return st, cmd, func() string {
		next()
		return strings.Join(all, "\n") + "\n" + out.String()
	}
}

// TestScenarioCleanupOnFailure: a test that fails still removes its
// scenario (t.Cleanup), and one that is killed leaves what Sweep removes.
func TestScenarioCleanupOnFailure(t *testing.T) {
	needScenario(t)
	t.Run("fail", func(t *testing.T) {
		st, cmd, rest := runHelper(t, "fail")
		err := cmd.Wait()
		out := rest()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || !strings.Contains(out, "failing on purpose") {
			t.Fatalf("helper: %v, want it to fail on purpose; output:\n%s", err, out)
		}
		checkGone(t, st)
	})
	t.Run("crash", func(t *testing.T) {
		st, cmd, rest := runHelper(t, "crash")
		if l := rest(); !strings.Contains(l, "ready") {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("helper not ready; output:\n%s", l)
		}
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		// What the killed run left: its namespaces and directory.
		for _, ns := range st.Namespaces {
			if _, err := os.Stat(ns); err != nil {
				t.Errorf("namespace %s gone before Sweep (%v): the crash left nothing to sweep", ns, err)
			}
		}
		removed, err := Sweep()
		if err != nil {
			t.Errorf("Sweep: %v", err)
		}
		for _, want := range append([]string{st.Dir}, st.Namespaces...) {
			found := false
			for _, r := range removed {
				found = found || r == want || filepath.Join("/run/netns", r) == want
			}
			if !found {
				t.Errorf("Sweep removed %v, not %s", removed, want)
			}
		}
		checkGone(t, st)
	})
}

// BeforeDaemons runs with the hosts made and no daemon started yet; an
// error from it fails Build, which removes what it made.
func TestScenarioBeforeDaemons(t *testing.T) {
	needScenario(t)
	var seen struct {
		web, db  string
		apache   int
		nsExists bool
	}
	s := build(t, Options{BeforeDaemons: func(s *Scenario) error {
		seen.web, seen.db, seen.apache = s.Web.Name, s.DB.Name, s.ApachePID+s.SSHDPID
		_, err := os.Stat(s.Web.NamespacePath())
		seen.nsExists = err == nil
		return nil
	}})
	if seen.web != WebHost || seen.db != DBHost || !seen.nsExists || seen.apache != 0 {
		t.Errorf("BeforeDaemons saw hosts %q %q (namespace there: %v), daemon pids sum %d; want %s %s, the namespace, no daemons",
			seen.web, seen.db, seen.nsExists, seen.apache, WebHost, DBHost)
	}
	if s.ApachePID == 0 || s.SSHDPID == 0 {
		t.Error("the daemons did not start after BeforeDaemons")
	}

	var ns, dir string
	_, err := Build(nil, Options{BeforeDaemons: func(s *Scenario) error {
		ns, dir = s.Web.NamespacePath(), s.Dir
		return errors.New("refused on purpose")
	}})
	if err == nil || !strings.Contains(err.Error(), "refused on purpose") {
		t.Fatalf("Build with a failing BeforeDaemons = %v, want its error", err)
	}
	for _, p := range []string{ns, dir} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s left after a failed Build (%v)", p, err)
		}
	}
}
