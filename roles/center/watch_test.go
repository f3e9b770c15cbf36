package center

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// realAPI is a client of a whole center's API with one operator's
// certificate.
type realAPI struct {
	t    *testing.T
	base string
	c    *http.Client
}

func (tc *tlsCenter) client(t *testing.T, name string, role Role) *realAPI {
	t.Helper()
	if _, err := tc.c.API.Operators().Add(context.Background(), NewOperator{ID: name, Role: role}, "test", nil); err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := tc.ca.Issue(pki.RoleOperator, name, pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(tc.ca.Certificate())
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13}}
	t.Cleanup(tr.CloseIdleConnections)
	return &realAPI{t: t, base: "https://" + tc.cfg.API.Listen + "/api/v1", c: &http.Client{Transport: tr, Timeout: 20 * time.Second}}
}

// do sends body as JSON and returns the status and the decoded answer.
func (a *realAPI) do(method, path string, body any) (int, map[string]any) {
	a.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := a.c.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	var m map[string]any
	b, _ := io.ReadAll(res.Body)
	if err := json.Unmarshal(b, &m); err != nil {
		a.t.Fatalf("%s %s: %d, not JSON: %s", method, path, res.StatusCode, b)
	}
	return res.StatusCode, m
}

func (a *realAPI) must(method, path string, body any, want int) map[string]any {
	a.t.Helper()
	st, m := a.do(method, path, body)
	if st != want {
		a.t.Fatalf("%s %s: %d %v, want %d", method, path, st, m, want)
	}
	return m
}

// waitFor polls f every 50 ms for at most 15 s.
func waitFor(t *testing.T, what string, f func() bool) {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !f(); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// agentFeed sends batches as an enrolled agent through the center's real
// ingest (certificate, signature, dedup, SQL, ledger).
type agentFeed struct {
	t    *testing.T
	tc   *tlsCenter
	name string
	key  ed25519.PrivateKey
	der  []byte
	seq  uint64
	pid  uint32
}

func (tc *tlsCenter) agent(t *testing.T, name string) *agentFeed {
	t.Helper()
	certPEM, keyPEM, err := tc.ca.Issue(pki.RoleAgent, name, pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return &agentFeed{t: t, tc: tc, name: name, key: c.PrivateKey.(ed25519.PrivateKey), der: c.Certificate[0], pid: 1000}
}

// exec sends one batch with an exec per argv and returns their keys.
func (f *agentFeed) exec(exe string, argvs ...[]string) []capture.ProcKey {
	f.t.Helper()
	var evs []capture.Event
	var keys []capture.ProcKey
	now := time.Now().UnixNano()
	for _, argv := range argvs {
		f.pid++
		k := capture.ProcKey{PID: f.pid, Start: uint64(now) + uint64(f.pid)}
		keys = append(keys, k)
		evs = append(evs, capture.Event{Time: now, Kind: capture.KindExec, Proc: k, Parent: capture.ProcKey{PID: 1, Start: 1},
			Comm: filepath.Base(exe), Source: "proc", Exec: &capture.Exec{Exe: exe, Argv: argv, Cwd: "/"}})
	}
	f.seq++
	sealed, err := wire.SealBatchCert(f.name, f.seq, evs, f.key, f.der, false)
	if err != nil {
		f.t.Fatal(err)
	}
	if nack := f.tc.c.Ingest.Take(wire.LaneBulk, f.name, f.seq, sealed); nack != nil {
		f.t.Fatalf("batch %d refused: %v", f.seq, nack.Reason)
	}
	last := keys[len(keys)-1]
	waitFor(f.t, "the batch in the SQL store", func() bool {
		_, ok, err := f.tc.c.SQL.Process(context.Background(), f.name, last.PID, last.Start)
		return err == nil && ok
	})
	return keys
}

func alertPIDs(api *realAPI, rule string) map[float64]bool {
	_, m := api.do("GET", "/alerts?limit=1000", nil)
	out := map[float64]bool{}
	for _, a := range m["alerts"].([]any) {
		al := a.(map[string]any)
		if al["rule_id"] == rule {
			out[al["pid"].(float64)] = true
		}
	}
	return out
}

// Watch rules: made from a process by an analyst, they alert on later
// execs of the same command line (or image), optionally request a trace,
// are listed masked, refused to a viewer, and deleted; every change is in
// the ledger, which the ledger view lists and verifies, and a tampered
// entry is named by the verification.
func TestWatchRulesAndLedgerView(t *testing.T) {
	ca, cfg := newTLSCenterConfig(t)
	tc := startTLSCenter(t, ca, cfg)
	ana := tc.client(t, "ana", RoleAnalyst)
	viewer := tc.client(t, "vic", RoleViewer)
	web := tc.agent(t, "web-1")

	nc := web.exec("/usr/bin/nc", []string{"nc", "-l", "4444"})[0]
	id := web.exec("/usr/bin/id", []string{"id"})[0]
	const why = "incident 7: the netcat listener"
	w1 := ana.must("POST", "/watches", map[string]any{"host": "web-1", "pid": nc.PID, "start": nc.Start, "match": "cmdline",
		"reason": why}, http.StatusCreated)["watch"].(map[string]any)
	if w1["rule_id"] != "watch-1" || w1["exe"] != "/usr/bin/nc" || strings.Contains(fmt.Sprint(w1["cmdline"]), "4444") {
		t.Errorf("watch answer %v: want watch-1 on /usr/bin/nc with the command line masked", w1)
	}
	if st, m := ana.do("POST", "/watches", map[string]any{"host": "web-1", "pid": nc.PID, "start": nc.Start, "match": "cmdline",
		"reason": why}); st != http.StatusConflict {
		t.Errorf("the same watch twice: %d %v, want 409", st, m)
	}
	if st, m := viewer.do("POST", "/watches", map[string]any{"host": "web-1", "pid": nc.PID, "start": nc.Start, "reason": why}); st != http.StatusForbidden ||
		!strings.Contains(fmt.Sprint(m["error"]), "analyst") {
		t.Errorf("a viewer's watch: %d %v, want 403 naming the analyst role", st, m)
	}
	if st, m := ana.do("POST", "/watches", map[string]any{"host": "web-1", "pid": nc.PID, "start": nc.Start, "reason": "short"}); st != http.StatusBadRequest {
		t.Errorf("a watch without a real reason: %d %v, want 400", st, m)
	}
	// An exe watch that also requests a trace (policy: approval).
	w2 := ana.must("POST", "/watches", map[string]any{"host": "web-1", "pid": id.PID, "start": id.Start, "match": "exe", "trace": true,
		"severity": "high", "reason": "incident 7: who runs id"}, http.StatusCreated)["watch"].(map[string]any)

	// Later execs: the same command line, another one of nc, and id.
	later := web.exec("/usr/bin/nc", []string{"nc", "-l", "4444"}, []string{"nc", "-h"})
	idLater := web.exec("/usr/bin/id", []string{"id", "-u"})[0]
	waitFor(t, "the watch alerts", func() bool {
		return alertPIDs(ana, "watch-1")[float64(later[0].PID)] && alertPIDs(ana, w2["rule_id"].(string))[float64(idLater.PID)]
	})
	got := alertPIDs(ana, "watch-1")
	if got[float64(nc.PID)] || got[float64(later[1].PID)] {
		t.Errorf("watch-1 alerted on %v: want only the later exec of the same command line (%d)", got, later[0].PID)
	}
	var traced bool
	waitFor(t, "the watch's trace request", func() bool {
		_, m := ana.do("GET", "/approvals?decision=pending", nil)
		for _, a := range m["approvals"].([]any) {
			if strings.Contains(fmt.Sprint(a.(map[string]any)["reason"]), w2["rule_id"].(string)) {
				traced = true
			}
		}
		return traced
	})
	list := viewer.must("GET", "/watches", nil, http.StatusOK)["watches"].([]any)
	if len(list) != 2 || list[0].(map[string]any)["alerts"].(float64) != 1 {
		t.Errorf("watches as the viewer sees them: %v, want 2 with watch-1's one alert", list)
	}

	// Delete watch-1: a later match of it is not alerted (watch-2 alerting
	// on the same batch shows the pass ran).
	if st, _ := viewer.do("DELETE", "/watches/1", map[string]any{"reason": "viewers cannot do this"}); st != http.StatusForbidden {
		t.Errorf("a viewer's delete: %d, want 403", st)
	}
	ana.must("DELETE", "/watches/1", map[string]any{"reason": "incident 7 closed, listener gone"}, http.StatusOK)
	ana.must("DELETE", "/watches/1", map[string]any{"reason": "incident 7 closed, listener gone"}, http.StatusNotFound)
	after := web.exec("/usr/bin/nc", []string{"nc", "-l", "4444"})[0]
	idAfter := web.exec("/usr/bin/id", []string{"id"})[0]
	waitFor(t, "watch-2's alert after the delete", func() bool { return alertPIDs(ana, w2["rule_id"].(string))[float64(idAfter.PID)] })
	if alertPIDs(ana, "watch-1")[float64(after.PID)] {
		t.Error("a deleted watch still alerted")
	}

	// The ledger view: the checkpoint and the watch entries.
	lv := viewer.must("GET", "/ledger?limit=500", nil, http.StatusOK)
	cp := lv["checkpoint"].(map[string]any)
	if cp["size"].(float64) < 1 || !strings.Contains(cp["note"].(string), cp["root_b64"].(string)) {
		t.Errorf("ledger checkpoint %v: want a signed note of the tree", cp)
	}
	var addIndex float64 = -1
	kinds := map[string]bool{}
	for _, e := range lv["entries"].([]any) {
		en := e.(map[string]any)
		kinds[en["kind"].(string)] = true
		if en["kind"] == AuditWatchAdd && strings.Contains(fmt.Sprint(en["payload"]), why) {
			addIndex = en["index"].(float64)
		}
	}
	if !kinds[AuditWatchAdd] || !kinds[AuditWatchDelete] || addIndex < 0 {
		t.Fatalf("ledger entries have kinds %v: want the watch add and delete", kinds)
	}

	verify := func() map[string]any {
		t.Helper()
		viewer.must("POST", "/ledger/verify", map[string]any{"seen": []string{cp["note"].(string)}}, http.StatusAccepted)
		var st map[string]any
		waitFor(t, "the ledger verification", func() bool {
			st, _ = viewer.must("GET", "/ledger/verify", nil, http.StatusOK)["verify"].(map[string]any)
			return st != nil && st["state"] != "running"
		})
		return st
	}
	if st := verify(); st["state"] != "ok" || st["entries"].(float64) < cp["size"].(float64) || st["seen"].(float64) != 1 {
		t.Fatalf("verification of an intact ledger: %v", st)
	}
	// Tamper with the watch's entry on disk: the verification names it.
	path := filepath.Join(cfg.DataDir, "ledger", "entries")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte(why))
	if at < 0 {
		t.Fatalf("the watch's reason is not in %s", path)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte{'X'}, int64(at)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	st := verify()
	if st["state"] != "failed" || st["bad_entry"] != addIndex {
		t.Errorf("verification of a tampered ledger: %v, want failed at entry %v", st, addIndex)
	}
}
