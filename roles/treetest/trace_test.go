package treetest

// Focused trace end to end, on the real kernel: a real agent (eBPF sensor,
// store, shipper) under a real proxy and center; an operator signs a
// TraceCommand and asks the center's HTTPS API with their certificate; the
// agent verifies it, traces a shell's lineage, and the events reach the
// center on the trace lane with the trace_id, in order.

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/cli"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/roles/agent"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

func needRootEBPF(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and this test needs root (eBPF)")
		}
		t.Skip("needs root: the agent runs the real eBPF sensor")
	}
}

// realAgent is the whole agent role: sensor, store, shipper, tracer.
type realAgent struct {
	tr  *Tree
	Cfg config.Agent
	run *runner
}

func (tr *Tree) newRealAgent(name, parent string) *realAgent {
	c := config.Default().Agent
	c.DataDir = filepath.Join(tr.Dir, name)
	c.ProxyHint = parent
	c.Capture = "ebpf"
	c.Stream.BatchMaxMS = 50
	c.Stream.FsyncIntervalMS = 10
	c.Metrics.Listen = ""
	c.TLS = tr.Issue(pki.RoleAgent, name)
	return &realAgent{tr: tr, Cfg: c}
}

func (a *realAgent) Start() *realAgent {
	a.tr.T.Helper()
	ag, err := agent.New(a.Cfg, a.tr.Log)
	if err != nil {
		a.tr.T.Fatal(err)
	}
	a.run = start(ag.Run)
	select {
	case <-ag.Ready():
	case err := <-a.run.done:
		a.tr.T.Fatalf("agent stopped at start: %v", err)
	case <-time.After(60 * time.Second):
		a.tr.T.Fatal("agent not ready within 60s")
	}
	a.tr.T.Cleanup(a.Stop)
	return a
}

func (a *realAgent) Stop() {
	a.run.stop(a.tr.T, "agent")
	a.run = nil
}

// operator is an operator's certificate and an HTTPS client for the API.
type operator struct {
	name string
	cert *tls.Certificate
	http *http.Client
	base string
}

func (tr *Tree) newOperator(name, apiAddr string) *operator {
	tr.T.Helper()
	certPEM, keyPEM, err := tr.CA.Issue(pki.RoleOperator, name, pki.IssueOptions{})
	if err != nil {
		tr.T.Fatal(err)
	}
	kp, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		tr.T.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(tr.CA.Certificate())
	cl := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{*kp}, MinVersion: tls.VersionTLS13}}}
	tr.T.Cleanup(cl.CloseIdleConnections)
	return &operator{name: name, cert: kp, http: cl, base: "https://" + apiAddr}
}

func (o *operator) sign(t *testing.T, cmd wire.TraceCommand) []byte {
	t.Helper()
	s, err := wire.SignTrace(cmd, o.cert.PrivateKey.(ed25519.PrivateKey), o.cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (o *operator) do(t *testing.T, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, o.base+path, rd)
	req.Header.Set("Content-Type", "application/json")
	resp, err := o.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	var out map[string]any
	json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

// eventually polls cond every 100 ms for at most d.
func eventually(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(100 * time.Millisecond) {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
	}
}

// centerEvents returns every event the center stored from agent.
func centerEvents(t *testing.T, c *Center, agentID string) []capture.Event {
	t.Helper()
	stored, err := c.Ingest.Stored()
	if err != nil {
		t.Fatal(err)
	}
	var out []capture.Event
	for _, seq := range stored[agentID] {
		sealed, ok, err := c.Ingest.Batch(agentID, seq)
		if err != nil || !ok {
			t.Fatalf("batch %d: %v", seq, err)
		}
		b, nack := c.Ingest.Verify(0, agentID, seq, sealed)
		if nack != nil {
			t.Fatalf("stored batch %d does not verify: %s", seq, nack.Reason)
		}
		out = append(out, b.Events...)
	}
	return out
}

func traceEvents(evs []capture.Event, id string) []capture.Event {
	var out []capture.Event
	for _, e := range evs {
		if e.TraceID == id {
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b capture.Event) int { return int(a.TraceSeq) - int(b.TraceSeq) })
	return out
}

func procStart(t testing.TB, pid int) uint64 {
	t.Helper()
	p, err := capture.ReadProcess("/proc", pid)
	if err != nil {
		t.Fatal(err)
	}
	return p.Key.Start
}

func freeTCP(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// addOperator registers an operator with the running center, as
// `daemoneye operator add` does.
func addOperator(t *testing.T, c *Center, id string, role center.Role) {
	t.Helper()
	ops, err := center.OpenOperators(c.SQL.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer ops.Close()
	if _, err := ops.Add(context.Background(), center.NewOperator{ID: id, Role: role}, "test", center.LedgerAuditor{L: c.Ledger}); err != nil {
		t.Fatal(err)
	}
}

func centerPair(t *testing.T, c *Center) *tls.Certificate {
	t.Helper()
	kp, err := pki.LoadKeyPair(c.Cfg.TLS.Cert, c.Cfg.TLS.Key)
	if err != nil {
		t.Fatal(err)
	}
	return kp
}

func centerKey(t *testing.T, c *Center) ed25519.PrivateKey {
	return centerPair(t, c).PrivateKey.(ed25519.PrivateKey)
}

func centerCert(t *testing.T, c *Center) []byte { return centerPair(t, c).Certificate[0] }

func TestTraceEndToEnd(t *testing.T) {
	needRootEBPF(t)
	tr := New(t)
	c := tr.NewCenter("center")
	apiAddr := freeTCP(t)
	c.Cfg.API.Listen = apiAddr
	c.Cfg.API.TwoPersonTraces = false
	c.Start()
	addOperator(t, c, "alice", center.RoleAnalyst)
	px := tr.NewProxy("px1", c.Cfg.Listen).Start()
	ag := tr.newRealAgent("host-a", px.Cfg.Listen).Start()
	alice := tr.newOperator("alice", apiAddr)

	// The lineage to trace: a bash that waits for a line, then runs a
	// script with a fork, an exec, file writes, a rename, an unlink and a
	// loopback connect. Another shell outside the lineage does the same
	// kind of things at the same time.
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).Port
	script := fmt.Sprintf(`read go
echo one > %[1]s/a
mv %[1]s/a %[1]s/b
rm %[1]s/b
( /bin/echo child > %[1]s/c )
exec 3<>/dev/tcp/127.0.0.1/%[2]d
exec 3>&-
read done
`, dir, port)
	root := exec.Command("/bin/bash", "-c", script)
	stdin, _ := root.StdinPipe()
	if err := root.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); root.Process.Kill(); root.Wait() }()
	pid := root.Process.Pid
	start := procStart(t, pid)

	// The center must know the process before a trace can be asked for.
	eventually(t, 30*time.Second, "the shell's exec at the center", func() bool {
		code, _ := alice.do(t, "GET", fmt.Sprintf("/api/v1/processes/host-a/%d/%d", pid, start), nil)
		return code == http.StatusOK
	})

	cmd := wire.TraceCommand{TraceID: "tr-e2e-1", Action: wire.TraceStart, TargetAgent: "host-a", TargetPID: uint32(pid),
		TargetStart: start, Depth: 4, CollectFiles: true, CollectNetwork: true, CollectCmdlines: true,
		MaxDurationSecs: 600, MaxBytes: 64 << 20, MaxEventsPerSec: 5000, InitiatedBy: "alice",
		Timestamp: time.Now().UnixNano(), Reason: "test: shell lineage"}
	code, resp := alice.do(t, "POST", "/api/v1/traces", map[string]any{"command": alice.sign(t, cmd)})
	if code != http.StatusCreated {
		t.Fatalf("POST /traces = %d %v", code, resp)
	}
	traceState := func() string {
		_, r := alice.do(t, "GET", "/api/v1/traces/tr-e2e-1", nil)
		tr, _ := r["trace"].(map[string]any)
		s, _ := tr["state"].(string)
		return s
	}
	eventually(t, 30*time.Second, "the agent's ack (trace active)", func() bool { return traceState() == "active" })

	outside := exec.Command("/bin/bash", "-c", fmt.Sprintf("echo x > %[1]s/outside; rm %[1]s/outside; exec 3<>/dev/tcp/127.0.0.1/%[2]d", dir, port))
	if err := outside.Run(); err != nil {
		t.Fatal(err)
	}
	io.WriteString(stdin, "go\n")

	// Wait for the connect, the last thing the script does.
	var evs []capture.Event
	eventually(t, 30*time.Second, "the traced connect at the center", func() bool {
		evs = traceEvents(centerEvents(t, c, "host-a"), "tr-e2e-1")
		for _, e := range evs {
			if e.Kind == capture.KindConnect && e.Conn != nil && e.Conn.Dst.Port() == uint16(port) {
				return true
			}
		}
		return false
	})

	t.Logf("%d trace events at the center", len(evs))
	// In order, numbered without gaps, first a start note.
	for i, e := range evs {
		if e.TraceSeq != uint64(i+1) {
			t.Fatalf("event %d has trace_seq %d: numbering has a gap or a duplicate", i, e.TraceSeq)
		}
	}
	if evs[0].Kind != capture.KindTraceNote || evs[0].Note.What != "start" {
		t.Errorf("first trace event %v %+v, want the start note", evs[0].Kind, evs[0].Note)
	}
	// Lineage: every traced process is the root or descends from it.
	inLineage := map[capture.ProcKey]bool{{PID: uint32(pid), Start: start}: true}
	for _, e := range evs {
		if e.Kind == capture.KindFork || (e.Kind == capture.KindExec && !e.Parent.IsZero()) {
			if inLineage[e.Parent] {
				inLineage[e.Proc] = true
			}
		}
	}
	var saw []string
	for _, e := range evs {
		if !inLineage[e.Proc] {
			t.Errorf("trace event %v of %v: not in the traced lineage", e.Kind, e.Proc)
		}
		switch {
		case e.Kind == capture.KindFileOpen && e.File.Path == dir+"/a":
			saw = append(saw, "create a")
		case e.Kind == capture.KindFileRename && e.File.Path == dir+"/a" && e.File.Path2 == dir+"/b":
			saw = append(saw, "rename a b")
		case e.Kind == capture.KindFileUnlink && strings.HasSuffix(e.File.Path, "/b"):
			saw = append(saw, "unlink b")
		case e.Kind == capture.KindFork && e.Parent.PID == uint32(pid):
			saw = append(saw, "fork")
		case e.Kind == capture.KindExec && e.Exec.Exe == "/usr/bin/echo":
			saw = append(saw, "exec echo")
		case e.Kind == capture.KindConnect && e.Conn.Dst.Port() == uint16(port):
			saw = append(saw, "connect")
		}
		if e.File != nil && strings.Contains(e.File.Path, "outside") {
			t.Errorf("the shell outside the lineage produced a focused event: %+v", e.File)
		}
	}
	for _, want := range []string{"create a", "rename a b", "unlink b", "fork", "exec echo", "connect"} {
		if !slices.Contains(saw, want) {
			t.Errorf("no %q among the trace events at the center (saw %v)", want, saw)
		}
	}
	// And nothing of the outside shell carries the trace.
	all := centerEvents(t, c, "host-a")
	outsideKey := capture.ProcKey{PID: uint32(outside.Process.Pid)}
	for _, e := range all {
		if e.Proc.PID == outsideKey.PID && e.TraceID != "" {
			t.Errorf("outside process %d has a trace event %v", outsideKey.PID, e.Kind)
		}
	}

	// Each trace event is a ledger leaf.
	eventually(t, 20*time.Second, "a ledger leaf per trace event", func() bool {
		n := 0
		for i := int64(0); i < c.Ledger.Size(); i++ {
			r, err := c.Ledger.Entry(i)
			if err != nil {
				t.Fatal(err)
			}
			if r.Kind == ledger.KindTraceEvent && strings.Contains(string(r.Payload), `"trace_id":"tr-e2e-1"`) {
				n++
			}
		}
		return n >= len(evs)
	})

	t.Run("refused commands", func(t *testing.T) {
		other := New(t)
		eve := other.newOperator("alice", apiAddr) // alice of another CA
		good := func(id string) wire.TraceCommand {
			c := cmd
			c.TraceID, c.Timestamp = id, time.Now().UnixNano()
			return c
		}
		stampSend := func(cmdID string, signed []byte) {
			st, _, err := wire.DecodeSignedTrace(signed)
			if err != nil {
				t.Fatal(err)
			}
			now := time.Now()
			if err := st.Approve(wire.TraceApproval{Policy: "analyst", Time: now.UnixNano(), Expires: now.Add(time.Minute).UnixNano()},
				centerKey(t, c), centerCert(t, c)); err != nil {
				t.Fatal(err)
			}
			b, _ := st.Encode()
			if err := c.SendCommand(context.Background(), wire.Command{CommandID: cmdID, Target: "host-a", Payload: b}); err != nil {
				t.Fatal(err)
			}
		}
		cases := []struct {
			name, want string
			send       func(id string)
		}{
			{"bad signature", "bad signature", func(id string) {
				b := alice.sign(t, good(id))
				st, _, _ := wire.DecodeSignedTrace(b)
				st.Signature[0] ^= 1
				b, _ = st.Encode()
				stampSend(id, b)
			}},
			{"unknown operator", "unknown or unauthorised signer", func(id string) { stampSend(id, eve.sign(t, good(id))) }},
			{"expired", "expired", func(id string) {
				c := good(id)
				c.Timestamp = time.Now().Add(-48 * time.Hour).UnixNano()
				stampSend(id, alice.sign(t, c))
			}},
			{"replayed trace_id", "already used", func(id string) { stampSend(id, alice.sign(t, good("tr-e2e-1"))) }},
			{"no stamp", "approval", func(id string) {
				if err := c.SendCommand(context.Background(), wire.Command{CommandID: id, Target: "host-a", Payload: alice.sign(t, good(id))}); err != nil {
					t.Fatal(err)
				}
			}},
		}
		for i, tc := range cases {
			id := "bad-" + strconv.Itoa(i)
			tc.send(id)
			var ack wire.CommandAck
			eventually(t, 20*time.Second, "the agent's answer to "+tc.name, func() bool {
				a := c.Acks(id)
				if len(a) == 0 {
					return false
				}
				ack = a[len(a)-1]
				return true
			})
			if ack.Status == wire.CommandDone || !strings.Contains(ack.Detail, tc.want) {
				t.Errorf("%s: ack %v %q, want a refusal naming %q", tc.name, ack.Status, ack.Detail, tc.want)
			}
		}
	})

	t.Run("cli", func(t *testing.T) {
		certDir := filepath.Join(tr.Dir, "alice")
		certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: alice.cert.Certificate[0]})
		keyPEM, err := pki.EncodeKey(alice.cert.PrivateKey.(ed25519.PrivateKey))
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteKeyPair(certDir, "alice", certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		run := func(args ...string) string {
			t.Helper()
			var out, errb bytes.Buffer
			args = append(append([]string{"daemoneye"}, args...), "--api", "https://"+apiAddr, "--cert", filepath.Join(certDir, "alice.crt"),
				"--key", filepath.Join(certDir, "alice.key"), "--ca", filepath.Join(tr.CA.Dir(), pki.CACertFile))
			if code := cli.Main(context.Background(), args, cli.Build{}, &out, &errb, nil); code != 0 {
				t.Fatalf("%s: exit %d: %s", strings.Join(args[:3], " "), code, errb.String())
			}
			return out.String()
		}
		if out := run("trace", "list"); !strings.Contains(out, "tr-e2e-1") || !strings.Contains(out, "active") {
			t.Errorf("trace list:\n%s", out)
		}
		// show reads the center's SQL store: wait until the rename is there.
		var out string
		eventually(t, 20*time.Second, "trace show with the rename", func() bool {
			out = run("trace", "show", "tr-e2e-1")
			return strings.Contains(out, dir+"/a -> ")
		})
		for _, want := range []string{"trace tr-e2e-1  state active", "lineage (", "/usr/bin/echo", "timeline (", "127.0.0.1"} {
			if !strings.Contains(out, want) {
				t.Errorf("trace show lacks %q:\n%s", want, out)
			}
		}

		// A second trace, signed by the CLI with alice's key file.
		sh := exec.Command("/bin/sleep", "30")
		if err := sh.Start(); err != nil {
			t.Fatal(err)
		}
		defer func() { sh.Process.Kill(); sh.Wait() }()
		eventually(t, 30*time.Second, "the sleep at the center", func() bool {
			code, _ := alice.do(t, "GET", fmt.Sprintf("/api/v1/processes/host-a/%d/%d", sh.Process.Pid, procStart(t, sh.Process.Pid)), nil)
			return code == http.StatusOK
		})
		out = run("trace", "start", "--host", "host-a", "--pid", strconv.Itoa(sh.Process.Pid), "--id", "tr-cli-1", "--reason", "the cli starts a trace")
		if !strings.Contains(out, "trace tr-cli-1: approved") {
			t.Errorf("trace start: %s", out)
		}
		eventually(t, 20*time.Second, "tr-cli-1 active", func() bool {
			_, r := alice.do(t, "GET", "/api/v1/traces/tr-cli-1", nil)
			tr, _ := r["trace"].(map[string]any)
			return tr["state"] == "active"
		})
		if out := run("trace", "stop", "tr-cli-1", "--reason", "the cli stops it again", "--yes"); !strings.Contains(out, "stopped") {
			t.Errorf("trace stop: %s", out)
		}
		eventually(t, 20*time.Second, "the agent's answer to the stop", func() bool {
			a := c.Acks("trace-stop-tr-cli-1@host-a")
			return len(a) > 0 && a[len(a)-1].Status == wire.CommandDone
		})
	})

	t.Run("agent restart resumes the trace", func(t *testing.T) {
		before := len(traceEvents(centerEvents(t, c, "host-a"), "tr-e2e-1"))
		ag.Stop()
		ag.Start()
		io.WriteString(stdin, "done\n") // the shell exits: its exit is traced
		var evs []capture.Event
		eventually(t, 30*time.Second, "the resumed trace's events", func() bool {
			evs = traceEvents(centerEvents(t, c, "host-a"), "tr-e2e-1")
			for _, e := range evs[before:] {
				if e.Kind == capture.KindExit && e.Proc.PID == uint32(pid) {
					return true
				}
			}
			return false
		})
		for i, e := range evs {
			if e.TraceSeq != uint64(i+1) {
				t.Fatalf("after the restart, event %d has trace_seq %d: gap or duplicate", i, e.TraceSeq)
			}
		}
		if e := evs[before]; e.Kind != capture.KindTraceNote || e.Note.What != "resume" {
			t.Errorf("first event after the restart %v %+v, want the resume note", e.Kind, e.Note)
		}
	})

	t.Run("lineage exited", func(t *testing.T) {
		// The shell exited after the restart: the agent ended the trace
		// (its last process is gone) and the center recorded why.
		eventually(t, 20*time.Second, "the trace stopped", func() bool { return traceState() == "stopped" })
		_, r := alice.do(t, "GET", "/api/v1/traces/tr-e2e-1", nil)
		tr, _ := r["trace"].(map[string]any)
		if why, _ := tr["stop_reason"].(string); !strings.Contains(why, capture.StopLineageExited) {
			t.Errorf("stop reason %q, want %s", why, capture.StopLineageExited)
		}
		if code, _ := alice.do(t, "POST", "/api/v1/traces/tr-e2e-1/stop", map[string]any{"reason": "the test is over now"}); code != http.StatusConflict {
			t.Errorf("stopping an ended trace: HTTP %d, want 409", code)
		}
	})
}
