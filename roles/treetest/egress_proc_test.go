package treetest

import (
	"bufio"
	"context"
	"crypto/tls"
	"database/sql"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// TestCenterProcessNoEgress runs `daemoneye center` as its own process,
// with a syslog sink configured but not approved (so off), under strace, while two
// agents stream to it, rules run and an operator's client talks to its API.
// Every socket the process creates and every connect(2) it makes is
// logged by the kernel's syscall tracing (strace -f): the center connects
// nowhere, and its only sockets are its listeners and what they accept.
func TestCenterProcessNoEgress(t *testing.T) {
	testenv.NeedRoot(t) // strace of a child
	straceBin := testenv.NeedTool(t, "strace")
	tr := New(t)
	dir := filepath.Join(tr.Dir, "center")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	tc := tr.Issue(pki.RoleCenter, "center")
	listen, api := FreeAddr(t), freeTCP(t)
	cfg := filepath.Join(dir, "daemoneye.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`center:
  listen: %s
  data_dir: %s
  ca_dir: %s
  api:
    listen: %s
  metrics:
    listen: ""
  sinks:
    - name: soc-syslog
      type: syslog
      address: %s
  tls:
    cert: %s
    key: %s
    ca: %s
`, listen, filepath.Join(dir, "data"), tr.CA.Dir(), api, freeTCP(t), tc.Cert, tc.Key, tc.CA)), 0o600); err != nil {
		t.Fatal(err)
	}
	traceLog, out := filepath.Join(dir, "strace.log"), filepath.Join(dir, "center.log")
	logf, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(straceBin, "-f", "-qq", "-e", "trace=socket,connect,bind,sendto,sendmsg,sendmmsg", "-e", "signal=none",
		"-o", traceLog, testenv.Binary(t), "center", "-c", cfg)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			// Signals go to the center only: strace writes out its log
			// when its tracee ends (a killed strace loses what it buffered).
			sp := cmd.Process.Pid
			center := -sp // the group, should the child not be found
			if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", sp, sp)); err == nil && len(strings.Fields(string(b))) > 0 {
				fmt.Sscan(strings.Fields(string(b))[0], &center)
			}
			done := make(chan struct{})
			go func() { cmd.Wait(); close(done) }()
			for _, step := range []struct {
				pid  int
				sig  syscall.Signal
				wait time.Duration
			}{{center, syscall.SIGTERM, 30 * time.Second}, {center, syscall.SIGKILL, 10 * time.Second}, {-sp, syscall.SIGKILL, time.Minute}} {
				syscall.Kill(step.pid, step.sig)
				select {
				case <-done:
					return
				case <-time.After(step.wait):
					t.Logf("the center did not end %s after signal %v", step.wait, step.sig)
				}
			}
		}
	}
	t.Cleanup(stop)

	// Work for the center: batches from two agents (with their rules run on
	// ingest) and API requests.
	a1, a2 := tr.NewAgent("web-1", listen).Start(), tr.NewAgent("db-1", listen).Start()
	for range 5 {
		a1.Emit(200)
		a2.Emit(200)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "data", "center.db")+"?mode=ro&_pragma=busy_timeout(5000)")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} // only to cause inbound traffic
	var events int
	apiAnswered := false
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if cmd.ProcessState != nil {
			break
		}
		if r, err := client.Get("https://" + api + "/api/v1/whoami"); err == nil {
			r.Body.Close()
			apiAnswered = true
		}
		db.QueryRowContext(context.Background(), `SELECT count(*) FROM process_events WHERE host IN ('web-1', 'db-1')`).Scan(&events)
		if events >= 2000 && apiAnswered {
			break
		}
	}
	stop()
	logb, _ := os.ReadFile(out)
	if events < 2000 || !apiAnswered {
		t.Fatalf("the center process stored %d of 2000 events, API answered %v\ncenter log:\n%s", events, apiAnswered, tail(string(logb), 30))
	}

	// What the kernel saw the process do.
	_, lport, _ := strings.Cut(listen, ":")
	_, aport, _ := strings.Cut(api, ":")
	rep := readStrace(t, traceLog, lport, aport)
	for _, v := range rep.violations {
		t.Error(v)
	}
	if !rep.listeners[lport] || !rep.listeners[aport] || rep.sends == 0 {
		t.Errorf("listeners bound: %v (want %s and %s), addressed sends %d: the trace did not see the center work", rep.listeners, lport, aport, rep.sends)
	}
	t.Logf("center process: %d network sockets (listeners on %s and %s, the rest Go's IPv6 probe); no connect; %d addressed sends, all answers through the QUIC listener; %d events stored",
		rep.sockets, lport, aport, rep.sends, events)

	// The same reading catches a process that does connect out: the CLI
	// asking this (stopped) center's API.
	cliLog := filepath.Join(dir, "strace-cli.log")
	certPEM, keyPEM, err := tr.CA.Issue(pki.RoleOperator, "ana", pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := pki.WriteKeyPair(dir, "ana", certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	exec.Command(straceBin, "-f", "-qq", "-e", "trace=socket,connect,bind,sendto,sendmsg,sendmmsg", "-e", "signal=none", "-o", cliLog,
		testenv.Binary(t), "trace", "list", "--api", "https://"+api, "--ca", tc.CA, "--cert", filepath.Join(dir, "ana.crt"), "--key", filepath.Join(dir, "ana.key")).Run()
	if v := readStrace(t, cliLog, lport, aport).violations; len(v) == 0 || !strings.Contains(strings.Join(v, "\n"), "connected out") {
		t.Errorf("a client dialling the API was not caught: %q", v)
	}
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

type straceReport struct {
	violations     []string
	listeners      map[string]bool
	sockets, sends int
}

// readStrace reads an strace log (-e trace=socket,connect,bind,send*) of a
// process that may only listen on lport and aport: any connect to a
// network address, bind to another port, or addressed send that does not
// leave through the lport socket is a violation.
func readStrace(t *testing.T, path, lport, aport string) straceReport {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Per line: "PID syscall(FD, ...) = RET", the PID padded to five
	// columns (a fresh machine's 3-digit PIDs are followed by 3 spaces). Sockets are followed by
	// descriptor: what each is bound to, so that every addressed send can
	// be checked to leave through a listener (an answer to a peer).
	sockRE := regexp.MustCompile(`^\d+\s+socket\((AF_INET6?), .* = (\d+)$`)
	bindRE := regexp.MustCompile(`^\d+\s+bind\((\d+), \{sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)`)
	sendRE := regexp.MustCompile(`^\d+\s+send(?:msg|to|mmsg)\((\d+), .*sa_family=AF_INET6?, sin6?_port=htons\((\d+)\)`)
	inet := regexp.MustCompile(`sa_family=AF_INET6?\b`)
	bound := map[string]string{} // fd -> port, of the network sockets open now
	rep := straceReport{listeners: map[string]bool{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	pending := map[string]string{} // thread -> the first half of a call strace split
	for sc.Scan() {
		l := sc.Text()
		// strace -f splits a call another thread interrupts: "PID call(args
		// <unfinished ...>" then "PID <... call resumed>rest) = RET".
		// strace pads the thread id to five columns: "123   bind(...".
		tid, _, _ := strings.Cut(l, " ")
		if head, ok := strings.CutSuffix(l, " <unfinished ...>"); ok {
			pending[tid] = head
			continue
		}
		if i := strings.Index(l, " resumed>"); i >= 0 && strings.Contains(l[:i], "<... ") {
			l = pending[tid] + l[i+len(" resumed>"):]
			delete(pending, tid)
		}
		if m := sockRE.FindStringSubmatch(l); m != nil {
			rep.sockets++
			bound[m[2]] = "" // a new socket on this descriptor
			continue
		}
		if m := bindRE.FindStringSubmatch(l); m != nil {
			bound[m[1]] = m[2]
			switch m[2] {
			case lport, aport:
				rep.listeners[m[2]] = true
			case "0":
				// Go's net package probes IPv6 support at start
				// (ipStackCapabilities): a socket bound to a loopback
				// address, port 0, then closed. Allowed while unused.
			default:
				rep.violations = append(rep.violations, fmt.Sprintf("the center bound a network socket to port %s, neither its listener (%s) nor its API (%s): %s", m[2], lport, aport, l))
			}
			continue
		}
		if m := sendRE.FindStringSubmatch(l); m != nil {
			rep.sends++
			if port := bound[m[1]]; port != lport {
				rep.violations = append(rep.violations, fmt.Sprintf("an addressed send from a socket bound to %q, not the center's listener %s: %s", port, lport, trunc(l)))
			}
			continue
		}
		if strings.Contains(l, " connect(") {
			if inet.MatchString(l) {
				rep.violations = append(rep.violations, fmt.Sprintf("the center connected out: %s", l))
			} else {
				t.Logf("local connect (not a network address): %s", l)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return rep
}
