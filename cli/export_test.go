package cli

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/roles/treetest"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// The forensic export end to end, through the command line: a real center
// with its API; an agent's batches (sealed with a certificate from the
// test CA) ingested as they arrive from the tree; an operator starts a
// trace with `daemoneye trace start`, exports it with `daemoneye export`
// over mutual TLS; `daemoneye verify` checks the file with only ca.crt;
// changed or cut files fail naming what failed.
func TestExportVerifyEndToEnd(t *testing.T) {
	tr := treetest.New(t)
	c := tr.NewCenter("center")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	apiAddr := l.Addr().String()
	l.Close()
	c.Cfg.API.Listen = apiAddr
	c.Cfg.API.TwoPersonTraces = false
	c.Start()
	ctx := context.Background()
	for id, role := range map[string]center.Role{"ana": center.RoleAnalyst, "vic": center.RoleViewer} {
		if _, err := c.API.Operators().Add(ctx, center.NewOperator{ID: id, Role: role}, "test", center.LedgerAuditor{L: c.Ledger}); err != nil {
			t.Fatal(err)
		}
	}
	dir := t.TempDir()
	creds := func(name string) []string {
		certPEM, keyPEM, err := tr.CA.Issue(pki.RoleOperator, name, pki.IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := pki.WriteKeyPair(dir, name, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		return []string{"--api", "https://" + apiAddr, "--cert", filepath.Join(dir, name+".crt"), "--key", filepath.Join(dir, name+".key"), "--ca", caFile(tr)}
	}
	ana, vic := creds("ana"), creds("vic")
	run := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := Main(ctx, append([]string{"daemoneye"}, args...), Build{Version: "test"}, &out, &errb, nil)
		return code, out.String(), errb.String()
	}

	// web-1's baseline shows the process the trace will follow.
	certPEM, keyPEM, err := tr.CA.Issue(pki.RoleAgent, "web-1", pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kp, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	key, der := kp.PrivateKey.(ed25519.PrivateKey), kp.Certificate[0]
	now := time.Now().UnixNano()
	take := func(lane wire.Lane, seq uint64, evs ...capture.Event) {
		t.Helper()
		sealed, err := wire.SealBatchCert("web-1", seq, evs, key, der, true)
		if err != nil {
			t.Fatal(err)
		}
		if nack := c.Ingest.Take(lane, "web-1", seq, sealed); nack != nil {
			t.Fatalf("batch %d refused: %+v", seq, nack)
		}
	}
	root := capture.ProcKey{PID: 4242, Start: 99}
	take(wire.LaneBulk, 1, capture.Event{Seq: 1, Time: now, Kind: capture.KindExec, Proc: root, Source: "ebpf",
		Exec: &capture.Exec{Exe: "/bin/bash", Argv: []string{"bash", "-i"}}})
	eventually(t, "the root process at the center", func() bool {
		var n int
		c.SQL.ReadOnly().QueryRow(`SELECT count(*) FROM process_events WHERE host = 'web-1' AND pid = 4242`).Scan(&n)
		return n > 0
	})
	const id = "T-export-e2e"
	if code, out, errs := run(append([]string{"trace", "start", "--host", "web-1", "--pid", "4242", "--start", "99", "--id", id,
		"--reason", "apache spawned an interactive shell"}, ana...)...); code != 0 {
		t.Fatalf("trace start: exit %d: %s %s", code, out, errs)
	}

	// The traced lineage: three events in two batches on the trace lane,
	// baseline noise between them.
	traced := func(seq uint64, kind capture.Kind) capture.Event {
		e := capture.Event{Seq: 10 + seq, Time: now + int64(seq), Kind: kind, Proc: root, Source: "ebpf", TraceID: id, TraceSeq: seq}
		switch kind {
		case capture.KindExecHash:
			e.Hashes = &capture.Hashes{Path: "/usr/bin/ssh", SHA256: strings.Repeat("5a", 32)}
		case capture.KindFileOpen:
			e.File = &capture.FileOp{Path: "/root/.ssh/id_ed25519", Result: 3}
		}
		return e
	}
	take(wire.LaneTrace, 2, traced(1, capture.KindFileOpen), capture.Event{Seq: 20, Time: now, Kind: capture.KindFork, Proc: capture.ProcKey{PID: 77, Start: 5}})
	take(wire.LaneTrace, 3, traced(2, capture.KindExecHash), traced(3, capture.KindConnect))
	eventually(t, "the trace events' ledger leaves", func() bool { return traceLeaves(t, c.Ledger, id) == 3 })

	// The center builds no package the ledger has not seen asked for.
	var buf bytes.Buffer
	if err := c.ExportTrace(ctx, id, &buf); !errors.Is(err, center.ErrExportNotRecorded) || buf.Len() != 0 {
		t.Errorf("ExportTrace before any export was recorded = %v (%d bytes), want ErrExportNotRecorded and nothing written", err, buf.Len())
	}
	if err := c.ExportTrace(ctx, "no-such-trace", &buf); !errors.Is(err, center.ErrNoTrace) {
		t.Errorf("ExportTrace of an unknown trace = %v, want ErrNoTrace", err)
	}

	pkg := filepath.Join(dir, id+".dpkg")
	const why = "IR-42: evidence for legal"
	t.Run("a reason is needed", func(t *testing.T) {
		code, _, errs := run(append([]string{"export", "--trace", id, "-o", pkg, "--reason", "short"}, ana...)...)
		if code == 0 || !strings.Contains(errs, "needs a reason of at least") {
			t.Errorf("export with a short reason: exit %d, %q; want refused", code, errs)
		}
		if _, err := os.Stat(pkg); err == nil {
			t.Error("a refused export wrote a file")
		}
	})
	t.Run("viewer may not export", func(t *testing.T) {
		code, _, errs := run(append([]string{"export", "--trace", id, "-o", pkg, "--reason", why}, vic...)...)
		if code == 0 || !strings.Contains(errs, "needs the analyst role") {
			t.Errorf("export as a viewer: exit %d, %q; want refused for the analyst role", code, errs)
		}
		if _, err := os.Stat(pkg); err == nil {
			t.Error("a refused export wrote a file")
		}
	})
	code, out, errs := run(append([]string{"export", "--trace", id, "-o", pkg, "--reason", why}, ana...)...)
	if code != 0 {
		t.Fatalf("export: exit %d: %s %s", code, out, errs)
	}
	if !strings.Contains(out, "3 events from 1 hosts") {
		t.Errorf("export said %q, want 3 events from 1 host", out)
	}
	if code, _, errs := run(append([]string{"export", "--trace", id, "-o", pkg, "--reason", why}, ana...)...); code == 0 || !strings.Contains(errs, "exists") {
		t.Errorf("export over an existing file: exit %d %q, want refused", code, errs)
	}

	code, out, errs = run("verify", pkg, "--ca", caFile(tr))
	if code != 0 {
		t.Fatalf("verify: exit %d: %s %s", code, out, errs)
	}
	t.Logf("daemoneye verify:\n%s", out)
	for _, want := range []string{
		"VERIFIED",
		"trace        " + id,
		"signed by    center center",
		"events       3 proven",
		"3 also recorded in the ledger",
		"web-1: 3 events (trace_seq 1-3) in 2 batches",
		"/usr/bin/ssh sha256 " + strings.Repeat("5a", 32),
		"command      signed by operator ana",
		"stamped by center center (policy analyst)",
		"checkpoint daemoneye.center/center",
		"trace.command_sent 1",
		"api.trace_request by ana",
		"exported by  ana",
		`reason "IR-42: evidence for legal"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verify output lacks %q:\n%s", want, out)
		}
	}

	good, err := os.ReadFile(pkg)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(dir, "bad.dpkg")
	for name, c := range map[string]struct {
		data []byte
		want []string
	}{
		"changed byte": {flip(good, bytes.Index(good, []byte("id_ed25519"))), []string{"FAILED", "member ", "does not match the signed digest"}},
		"truncated":    {good[:len(good)-100], []string{"FAILED", "truncated"}},
	} {
		if err := os.WriteFile(bad, c.data, 0o644); err != nil {
			t.Fatal(err)
		}
		code, _, errs := run("verify", bad, "--ca", caFile(tr))
		if code != 1 {
			t.Errorf("%s: verify exit %d, want 1", name, code)
		}
		for _, w := range c.want {
			if !strings.Contains(errs, w) {
				t.Errorf("%s: verify said %q, want it to say %q", name, errs, w)
			}
		}
	}

	// Against another CA, the center is a stranger.
	other := treetest.New(t)
	if code, _, errs := run("verify", pkg, "--ca", caFile(other)); code != 1 || !strings.Contains(errs, "another CA") {
		t.Errorf("verify against another CA: exit %d %q, want a failure naming another CA", code, errs)
	}
}

func caFile(tr *treetest.Tree) string { return filepath.Join(tr.CA.Dir(), pki.CACertFile) }

func flip(b []byte, i int) []byte {
	out := bytes.Clone(b)
	out[i] ^= 0x20
	return out
}

// traceLeaves counts the ledger's trace.event entries of a trace.
func traceLeaves(t *testing.T, l *ledger.Ledger, traceID string) int {
	n := 0
	for i := int64(0); i < l.Size(); i++ {
		rec, err := l.Entry(i)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Kind == ledger.KindTraceEvent && bytes.Contains(rec.Payload, []byte(`"trace_id":"`+traceID+`"`)) {
			n++
		}
	}
	return n
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 30s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
