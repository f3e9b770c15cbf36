package ui_test

// The trace view with a 1,000-process trace (issue 10): a center in this
// process, an agent (the real store and shipper) directly under it, a
// trace requested through the API on the agent's shell, and 1,000 traced
// processes forked under it (2,000 trace events on the trace lane). The
// benchmark opens the trace in headless Chromium and times, in the page,
// from the route change until the lineage graph has been laid out (the
// view's data-ready) and until the frame after it is painted.
//
//	go test -run '^$' -bench TraceView1000 -benchtime 5x ./ui/

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/roles/treetest"
)

// Names of this file's own (it shares its package with browser_test.go,
// whose helpers it does not lean on).
const (
	benchOperator = "bench-analyst"
	benchPassword = "bench passphrase 2026"
	benchTraced   = 1000 // traced processes under the root
)

// benchSkip skips outside CI and fails under it.
func benchSkip(b *testing.B, format string, args ...any) {
	b.Helper()
	if os.Getenv("CI") != "" {
		b.Fatalf(format+" (and CI is set)", args...)
	}
	b.Skipf(format, args...)
}

func benchFreeAddr(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// benchChromium finds chromium (installing Debian's as root when missing).
func benchChromium(b *testing.B) string {
	b.Helper()
	if _, err := exec.LookPath("chromium"); err != nil {
		if out, err := exec.Command("bash", "install-chromium.sh").CombinedOutput(); err != nil {
			benchSkip(b, "chromium missing and not installable here: %v\n%s", err, out)
		}
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		benchSkip(b, "chromium: %v", err)
	}
	return p
}

// benchAPI is the benchmark's session at the API.
type benchAPI struct {
	b     *testing.B
	base  string
	token string
	c     *http.Client
}

func (a *benchAPI) do(method, path string, body, out any) error {
	var buf bytes.Buffer
	if body != nil {
		if err := json.NewEncoder(&buf).Encode(body); err != nil {
			return err
		}
	}
	req, err := http.NewRequest(method, a.base+path, &buf)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	res, err := a.c.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	if res.StatusCode >= 300 {
		var e struct{ Error string }
		json.NewDecoder(res.Body).Decode(&e)
		return fmt.Errorf("%s %s: HTTP %d: %s", method, path, res.StatusCode, e.Error)
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(res.Body).Decode(out)
}

// benchWait polls f every 50ms for up to within.
func benchWait(b *testing.B, within time.Duration, what string, f func() (bool, error)) {
	b.Helper()
	deadline := time.Now().Add(within)
	for {
		ok, err := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s: not after %s (last error: %v)", what, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// traceWith1000 builds the center and the trace; it returns the UI's base
// URL (a TLS server the browser can speak to), the trace id and the API
// session.
func traceWith1000(b *testing.B) (string, string, *benchAPI) {
	b.Helper()
	tr := treetest.New(b)
	c := tr.NewCenter("center")
	c.Cfg.API.Listen = benchFreeAddr(b)
	c.Cfg.API.TwoPersonTraces = false
	c.Cfg.Metrics.Listen = ""
	c.Start()
	if _, err := c.API.Operators().Add(context.Background(), center.NewOperator{ID: benchOperator, Role: center.RoleAnalyst, Password: benchPassword},
		"bench", center.LedgerAuditor{L: c.Ledger}); err != nil {
		b.Fatal(err)
	}
	// The center's listener presents its Ed25519 node certificate, which
	// Chromium cannot use; the browser reaches the same handler through a
	// TLS server with a certificate it can (as browser_test.go does).
	srv := httptest.NewUnstartedServer(c.API.Handler())
	// Chromium drops spare connections; the server's log of that would
	// split the benchmark's result line.
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.EnableHTTP2 = true
	srv.StartTLS()
	b.Cleanup(srv.Close)
	api := &benchAPI{b: b, base: srv.URL, c: &http.Client{Timeout: time.Minute,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}} // the test's own server
	b.Cleanup(api.c.CloseIdleConnections)
	var login struct{ Token string }
	if err := api.do("POST", "/api/v1/login", map[string]string{"name": benchOperator, "password": benchPassword}, &login); err != nil {
		b.Fatal(err)
	}
	api.token = login.Token

	const host = "build-1"
	ag := tr.NewAgent(host, c.Cfg.Listen).Start()
	now := time.Now().UnixNano()
	root := capture.ProcKey{PID: 4000, Start: 4000}
	init := capture.ProcKey{PID: 1, Start: 1}
	seed := []capture.Event{
		{Time: now, Kind: capture.KindExec, Proc: init, Comm: "systemd", Source: "seed", Exec: &capture.Exec{Exe: "/usr/lib/systemd/systemd", Argv: []string{"/sbin/init"}}},
		{Time: now, Kind: capture.KindExec, Proc: root, Parent: init, Comm: "make", Source: "seed", Exec: &capture.Exec{Exe: "/usr/bin/make", Argv: []string{"make", "-j8"}, Cwd: "/src"}},
	}
	if _, _, err := ag.Store.Append(seed); err != nil {
		b.Fatal(err)
	}
	ag.Ship.Kick()
	path := fmt.Sprintf("/api/v1/processes/%s/%d/%d", host, root.PID, root.Start)
	benchWait(b, time.Minute, "the root process at the center", func() (bool, error) {
		err := api.do("GET", path, nil, nil)
		return err == nil, err
	})
	var started struct {
		Trace struct {
			TraceID string `json:"trace_id"`
		} `json:"trace"`
	}
	if err := api.do("POST", "/api/v1/traces", map[string]any{"host": host, "pid": root.PID, "start": root.Start,
		"reason": "benchmark: the trace view with 1,000 processes"}, &started); err != nil {
		b.Fatal(err)
	}
	id := started.Trace.TraceID

	// The traced build: each new process is a child of the root or of an
	// earlier traced process (a random recursive tree, as make -j spawns
	// shells, compilers and their helpers), forked then exec'd.
	evs := make([]capture.Event, 0, 2*benchTraced)
	procs := []capture.ProcKey{root}
	progs := []string{"sh", "cc1", "as", "ld", "gcc", "make", "sed", "ar"}
	var seq uint64
	for i := range benchTraced {
		parent := procs[(i*7919)%len(procs)]
		p := capture.ProcKey{PID: uint32(5000 + i), Start: uint64(5000 + i)}
		prog := progs[i%len(progs)]
		seq++
		evs = append(evs, capture.Event{Time: now + int64(2*i), Kind: capture.KindFork, Proc: p, Parent: parent, Comm: "make", Source: "ebpf", TraceID: id, TraceSeq: seq})
		seq++
		evs = append(evs, capture.Event{Time: now + int64(2*i+1), Kind: capture.KindExec, Proc: p, Parent: parent, Comm: prog, Source: "ebpf", TraceID: id, TraceSeq: seq,
			Exec: &capture.Exec{Exe: "/usr/bin/" + prog, Argv: []string{prog, fmt.Sprintf("obj/%d.o", i)}, Cwd: "/src"}})
		procs = append(procs, p)
	}
	if _, _, err := ag.Store.Append(evs); err != nil {
		b.Fatal(err)
	}
	ag.Ship.Kick()
	benchWait(b, 2*time.Minute, "the trace's 2,000 events at the center", func() (bool, error) {
		var t struct {
			Events []json.RawMessage `json:"events"`
		}
		err := api.do("GET", "/api/v1/traces/"+id+"?limit=5000", nil, &t)
		return err == nil && len(t.Events) >= 2*benchTraced, err
	})
	return srv.URL, id, api
}

// renderJS opens the trace and resolves, in the page, with the
// milliseconds until the view is ready (graph laid out, timeline filled)
// and until the next frame after it has been painted.
const renderJS = `new Promise((resolve) => {
	const m = document.querySelector('main');
	const t0 = performance.now();
	const obs = new MutationObserver(() => {
		if (m.dataset.view !== 'trace' || m.dataset.ready !== 'true') return;
		obs.disconnect();
		const ready = performance.now() - t0;
		requestAnimationFrame(() => requestAnimationFrame(() => resolve([ready, performance.now() - t0, window.daemoneye.cy.nodes().length])));
	});
	obs.observe(m, { attributes: true });
	location.hash = '#/trace/%s';
})`

func BenchmarkTraceView1000(b *testing.B) {
	chromium := benchChromium(b)
	base, id, _ := traceWith1000(b)

	dir := b.TempDir()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.Flag("ignore-certificate-errors", true), chromedp.UserDataDir(filepath.Join(dir, "chromium")),
		chromedp.WindowSize(1400, 1000))
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(format string, args ...any) {
		if msg := fmt.Sprintf(format, args...); !strings.Contains(msg, "could not unmarshal event") {
			b.Log(msg)
		}
	}))
	defer bcancel()
	if err := chromedp.Run(bctx); err != nil {
		b.Fatalf("start chromium: %v", err)
	}
	run := func(what string, actions ...chromedp.Action) {
		b.Helper()
		ctx, cancel := context.WithTimeout(bctx, 2*time.Minute)
		defer cancel()
		if err := chromedp.Run(ctx, actions...); err != nil {
			b.Fatalf("%s: %v", what, err)
		}
	}
	run("log in", chromedp.Navigate(base+"/"), chromedp.WaitVisible("#login-form", chromedp.ByQuery),
		chromedp.SendKeys("#login-name", benchOperator, chromedp.ByQuery),
		chromedp.SendKeys("#login-password", benchPassword, chromedp.ByQuery),
		chromedp.Click("#login-submit", chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-view="alerts"]`, chromedp.ByQuery))

	var readyMS, paintMS []float64
	var nodes int
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		run("back to the alerts", chromedp.Evaluate(`location.hash = '#/alerts'`, nil),
			chromedp.WaitVisible(`main[data-view="alerts"]`, chromedp.ByQuery))
		b.StartTimer()
		var got []float64
		run("open the trace", chromedp.Evaluate(fmt.Sprintf(renderJS, id), &got, func(p *runtime.EvaluateParams) *runtime.EvaluateParams {
			return p.WithAwaitPromise(true)
		}))
		if len(got) != 3 {
			b.Fatalf("the page answered %v", got)
		}
		readyMS, paintMS, nodes = append(readyMS, got[0]), append(paintMS, got[1]), int(got[2])
	}
	b.StopTimer()
	if nodes < benchTraced+1 {
		b.Fatalf("the graph has %d nodes, want at least %d (the root and its traced processes)", nodes, benchTraced+1)
	}
	b.ReportMetric(median(readyMS), "ms-to-ready")
	b.ReportMetric(median(paintMS), "ms-to-paint")
	b.ReportMetric(float64(nodes), "nodes")
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}
