package ui_test

// The web UI in headless Chromium (Debian's, driven by chromedp) against a
// real center: the demo's chain (apache2 -> bash -> ssh on web-1, the
// followed hop to sshd on db-1) runs first, then a center is started again
// on the demo's store with the two-person rule on and local accounts, and
// two browsers walk through the issue's scenario on the center's own HTTPS
// listener, which presents the API certificate the center issued itself
// from the customer's web CA (ECDSA: Chromium refuses Ed25519). Each
// browser has its own HOME and so its own NSS database, where the test
// installs the web CA as a trusted authority exactly as an operator would
// (certutil): no certificate error is ignored.
//
//   - Browser A, no client certificate: the analyst and the viewer log in
//     with passwords at https://127.0.0.1:PORT.
//   - Browser B: the approver's ECDSA browser certificate (pki issue
//     --browser), imported from its PKCS#12 file with pk12util. Chromium
//     asks the user to pick a client certificate, which headless cannot;
//     the AutoSelectCertificateForUrls policy picks it for
//     https://localhost:PORT. Chromium reads policies only from
//     /etc/chromium/policies/managed (a --policy flag is ignored by this
//     build), so the test writes a file there for the one origin and
//     removes it when it ends.
//
// Batches the test adds later (a watched command line, a live trace's
// events) go through the center's real ingest as the demo's web-1, signed
// with its certificate. Screenshots of each page are kept in
// ui/.test-artifacts/browser (not committed).

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/browser"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/internal/demo"
	"github.com/evilbitlabs/daemoneye/internal/scenario"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/roles/center"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

const (
	analyst, approver, viewer = "ui-analyst", "ui-approver", "ui-viewer"
	password                  = "ui test passphrase 2026"
	p12Password               = "browser import 2026"
)

// skipOrFail skips outside CI and fails under it, where a runner that
// cannot run the test is broken.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format+" (and CI is set)", args...)
	}
	t.Skipf(format, args...)
}

func needBrowser(t *testing.T) string {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "the browser test runs the demo's chain, which needs root")
	}
	for _, tool := range []string{"chromium", "certutil", "pk12util"} {
		if _, err := exec.LookPath(tool); err != nil {
			if out, err := exec.Command("bash", "install-chromium.sh").CombinedOutput(); err != nil {
				skipOrFail(t, "%s missing and not installable here: %v\n%s", tool, err, out)
			}
		}
	}
	p, err := exec.LookPath("chromium")
	if err != nil {
		skipOrFail(t, "chromium: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := scenario.Install(ctx, nil); err != nil {
		skipOrFail(t, "scenario software missing and not installable here: %v", err)
	}
	return p
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// restartCenter starts a center on the store the demo left, with the
// two-person rule on and the test's operators, and returns it and its API
// address.
func restartCenter(t *testing.T, ctx context.Context, res *demo.Result) (*center.Center, string) {
	t.Helper()
	c := config.Default().Center
	c.Listen = "127.0.0.1:0"
	c.DataDir = filepath.Join(res.Dir, "center")
	c.CADir = filepath.Join(res.Dir, "pki")
	c.TLS = config.TLS{Cert: filepath.Join(res.Dir, "certs", "center-1.crt"), Key: filepath.Join(res.Dir, "certs", "center-1.key"),
		CA: res.CACert, RenewCheckMS: 60000}
	c.API.Listen = freeAddr(t)
	c.API.TwoPersonTraces = true
	c.Metrics.Listen = ""
	logf, err := os.Create(filepath.Join(res.Dir, "center-again.log"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		logf.Close()
		if t.Failed() { // the center's warnings and errors say why
			b, _ := os.ReadFile(logf.Name())
			for _, l := range strings.Split(string(b), "\n") {
				if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") || strings.Contains(l, "watch") {
					t.Log("center: " + l)
				}
			}
		}
	})
	cn, err := center.New(c, slog.New(slog.NewTextHandler(logf, nil)))
	if err != nil {
		t.Fatalf("center on the demo's store: %v", err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cn.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("center: %v", err)
		}
	})
	for _, op := range []struct {
		id   string
		role center.Role
		pw   string
	}{{analyst, center.RoleAnalyst, password}, {viewer, center.RoleViewer, password}, {approver, center.RoleApprover, ""}} {
		if _, err := cn.API.Operators().Add(ctx, center.NewOperator{ID: op.id, Role: op.role, Password: op.pw}, "test",
			center.LedgerAuditor{L: cn.Ledger}); err != nil {
			t.Fatalf("add %s: %v", op.id, err)
		}
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		conn, err := net.DialTimeout("tcp", c.API.Listen, time.Second)
		if err == nil {
			conn.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the center's API is not listening on %s: %v", c.API.Listen, err)
		}
	}
	return cn, c.API.Listen
}

// apiClient is a script's view of the API (to cross-check what the
// browser shows), logged in as op, trusting only the customer's Ed25519
// root as the CLI does.
type apiClient struct {
	t     *testing.T
	base  string
	token string
	c     *http.Client
}

func newAPIClient(t *testing.T, base, caCert, op string) *apiClient {
	t.Helper()
	ca, err := pki.LoadCACert(caCert)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	a := &apiClient{t: t, base: base, c: &http.Client{Timeout: 20 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS13}}}}
	var login struct{ Token string }
	a.do("POST", "/api/v1/login", map[string]string{"name": op, "password": password}, &login)
	a.token = login.Token
	t.Cleanup(a.c.CloseIdleConnections)
	return a
}

func (a *apiClient) do(method, path string, body, out any) {
	a.t.Helper()
	var rd *bytes.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	} else {
		rd = bytes.NewReader(nil)
	}
	req, err := http.NewRequest(method, a.base+path, rd)
	if err != nil {
		a.t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	res, err := a.c.Do(req)
	if err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	if res.StatusCode >= 300 {
		var e struct{ Error string }
		json.NewDecoder(res.Body).Decode(&e)
		a.t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, e.Error)
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		a.t.Fatalf("%s %s: %v", method, path, err)
	}
}

type graphNode struct {
	ID    string `json:"id"`
	Comm  string `json:"comm"`
	Host  string `json:"host"`
	PID   uint32 `json:"pid"`
	Start uint64 `json:"start"`
}

type graphEdge struct {
	S, T, Kind string
}

type graph struct {
	Nodes []graphNode
	Edges []graphEdge
}

const graphJS = `(() => { const cy = window.daemoneye.cy; return {
	nodes: cy.nodes().map(n => ({id: n.id(), comm: n.data('comm') || '', host: n.data('host') || '', pid: n.data('pid') || 0, start: n.data('start') || 0})),
	edges: cy.edges().map(e => ({S: e.source().id(), T: e.target().id(), Kind: e.data('kind')})) }; })()`

// chain finds a path of nodes with these comm@host steps along the edges.
func (g graph) chain(steps ...string) []graphNode {
	byID := map[string]graphNode{}
	for _, n := range g.Nodes {
		byID[n.ID] = n
	}
	match := func(n graphNode, step string) bool { return n.Comm+"@"+n.Host == step }
	var walk func(n graphNode, i int) []graphNode
	walk = func(n graphNode, i int) []graphNode {
		if !match(n, steps[i]) {
			return nil
		}
		if i == len(steps)-1 {
			return []graphNode{n}
		}
		for _, e := range g.Edges {
			if e.S == n.ID {
				if rest := walk(byID[e.T], i+1); rest != nil {
					return append([]graphNode{n}, rest...)
				}
			}
		}
		return nil
	}
	for _, n := range g.Nodes {
		if p := walk(n, 0); p != nil {
			return p
		}
	}
	return nil
}

// nssHome makes a HOME whose NSS database (where Chromium on Linux keeps
// its certificates) trusts the web CA and, given a PKCS#12 file, holds
// that client certificate.
func nssHome(t *testing.T, dir, webCA, p12 string) string {
	t.Helper()
	home := filepath.Join(dir, "home")
	db := filepath.Join(home, ".pki", "nssdb")
	if err := os.MkdirAll(db, 0o700); err != nil {
		t.Fatal(err)
	}
	cmds := [][]string{
		{"certutil", "-N", "-d", "sql:" + db, "--empty-password"},
		{"certutil", "-A", "-d", "sql:" + db, "-n", "DaemonEye web CA", "-t", "C,,", "-i", webCA},
	}
	if p12 != "" {
		cmds = append(cmds, []string{"pk12util", "-i", p12, "-d", "sql:" + db, "-W", p12Password})
	}
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(c, " "), err, out)
		}
	}
	return home
}

// tab is one headless browser with the test's helpers.
type tab struct {
	t        *testing.T
	name     string
	ctx      context.Context
	problems []string
	shots    string
	step     *int
}

func newTab(t *testing.T, ctx context.Context, chromium, name, dir, home, shots string, step *int) *tab {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(chromium), chromedp.NoSandbox,
		chromedp.UserDataDir(filepath.Join(dir, "profile")), chromedp.Env("HOME="+home), chromedp.WindowSize(1400, 1000))
	actx, acancel := chromedp.NewExecAllocator(ctx, opts...)
	t.Cleanup(acancel)
	tb := &tab{t: t, name: name, shots: shots, step: step}
	// This chromedp's protocol tables predate some event fields of Debian's
	// chromium; it logs those events as undecodable, which is noise here.
	bctx, bcancel := chromedp.NewContext(actx, chromedp.WithErrorf(func(format string, args ...any) {
		if msg := fmt.Sprintf(format, args...); !strings.Contains(msg, "could not unmarshal event") {
			t.Log(name + ": " + msg)
		}
	}))
	t.Cleanup(bcancel)
	// The first Run starts the browser and owns the tab: with bctx itself,
	// not a context with a timeout, whose end would close the tab.
	if err := chromedp.Run(bctx); err != nil {
		t.Fatalf("start chromium (%s): %v", name, err)
	}
	tb.ctx = bctx
	chromedp.ListenTarget(bctx, func(ev any) {
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			tb.problems = append(tb.problems, fmt.Sprintf("exception: %s %v", e.ExceptionDetails.Text, e.ExceptionDetails.Exception))
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.APITypeError {
				var b strings.Builder
				for _, a := range e.Args {
					b.Write(a.Value)
					b.WriteString(a.Description)
				}
				tb.problems = append(tb.problems, "console error: "+b.String())
			}
		}
	})
	return tb
}

func (b *tab) run(what string, actions ...chromedp.Action) {
	b.t.Helper()
	sctx, cancel := context.WithTimeout(b.ctx, 45*time.Second)
	defer cancel()
	if err := chromedp.Run(sctx, actions...); err != nil {
		var html string
		hctx, hcancel := context.WithTimeout(b.ctx, 5*time.Second)
		defer hcancel()
		chromedp.Run(hctx, chromedp.OuterHTML("body", &html, chromedp.ByQuery))
		b.t.Fatalf("%s: %s: %v\npage:\n%s", b.name, what, err, html)
	}
}

func (b *tab) shot(name string) {
	b.t.Helper()
	var png []byte
	*b.step++
	b.run("screenshot "+name, chromedp.FullScreenshot(&png, 100))
	if err := os.WriteFile(filepath.Join(b.shots, fmt.Sprintf("%02d-%s.png", *b.step, name)), png, 0o644); err != nil {
		b.t.Fatal(err)
	}
}

func (b *tab) text(sel string) string {
	b.t.Helper()
	var s string
	b.run("read "+sel, chromedp.Text(sel, &s, chromedp.ByQuery))
	return s
}

func (b *tab) has(sel string) bool {
	b.t.Helper()
	var ok bool
	b.run("look for "+sel, chromedp.Evaluate(fmt.Sprintf(`!!document.querySelector(%q)`, sel), &ok))
	return ok
}

func (b *tab) login(op string) {
	b.t.Helper()
	b.run("log in as "+op,
		chromedp.WaitVisible("#login-form", chromedp.ByQuery),
		chromedp.SendKeys("#login-name", op, chromedp.ByQuery),
		chromedp.SendKeys("#login-password", password, chromedp.ByQuery),
		chromedp.Click("#login-submit", chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-view="alerts"]`, chromedp.ByQuery))
}

func (b *tab) open(hash, view string) {
	b.t.Helper()
	b.run("open "+hash, chromedp.Evaluate(fmt.Sprintf(`location.hash = %q`, hash), nil),
		chromedp.WaitVisible(fmt.Sprintf(`main[data-view=%q]`, view), chromedp.ByQuery))
}

func (b *tab) tap(node string, waitFor string) {
	b.t.Helper()
	b.run("tap "+node, chromedp.Evaluate(fmt.Sprintf(`void window.daemoneye.cy.getElementById(%q).emit('tap')`, node), nil),
		chromedp.WaitVisible(waitFor, chromedp.ByQuery))
}

// web1 sends batches as the demo's web-1 through the center's real ingest
// (its certificate and key from the demo's certs).
type web1 struct {
	t    *testing.T
	cn   *center.Center
	key  ed25519.PrivateKey
	cert []byte
	seq  uint64
}

func newWeb1(t *testing.T, cn *center.Center, res *demo.Result) *web1 {
	t.Helper()
	kp, err := pki.LoadKeyPair(filepath.Join(res.Dir, "certs", demo.WebHost+".crt"), filepath.Join(res.Dir, "certs", demo.WebHost+".key"))
	if err != nil {
		t.Fatal(err)
	}
	// Above any seq the demo's agent used.
	return &web1{t: t, cn: cn, key: kp.PrivateKey.(ed25519.PrivateKey), cert: kp.Certificate[0], seq: 1 << 40}
}

func (w *web1) send(lane wire.Lane, evs ...capture.Event) {
	w.t.Helper()
	w.seq++
	sealed, err := wire.SealBatchCert(demo.WebHost, w.seq, evs, w.key, w.cert, false)
	if err != nil {
		w.t.Fatal(err)
	}
	if nack := w.cn.Ingest.Take(lane, demo.WebHost, w.seq, sealed); nack != nil {
		w.t.Fatalf("batch %d refused: %s", w.seq, nack.Reason)
	}
}

func TestBrowserScenario(t *testing.T) {
	chromium := needBrowser(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	dir := t.TempDir()
	var out bytes.Buffer
	res, err := demo.Run(ctx, demo.Options{Dir: dir, Out: &out, APIListen: "127.0.0.1:0", Version: "test"})
	if err != nil {
		t.Logf("demo output:\n%s", out.String())
		t.Fatalf("demo: %v", err)
	}
	cn, addr := restartCenter(t, ctx, res)
	_, port, _ := net.SplitHostPort(addr)
	base := "https://" + addr               // browser A: passwords
	certBase := "https://localhost:" + port // browser B: the approver's certificate

	ca, err := pki.LoadCA(filepath.Join(res.Dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	if ca.Web() == nil {
		t.Fatal("the demo's CA has no web CA")
	}
	webCA := filepath.Join(ca.Dir(), pki.WebCACertFile)
	// The approver's browser certificate, as `pki issue --role operator
	// --browser` makes it.
	certPEM, keyPEM, err := ca.Issue(pki.RoleOperator, approver, pki.IssueOptions{Web: true})
	if err != nil {
		t.Fatal(err)
	}
	p12, err := ca.Web().PKCS12(certPEM, keyPEM, p12Password)
	if err != nil {
		t.Fatal(err)
	}
	p12File := filepath.Join(dir, approver+".p12")
	if err := os.WriteFile(p12File, p12, 0o600); err != nil {
		t.Fatal(err)
	}
	policy := filepath.Join("/etc/chromium/policies/managed", fmt.Sprintf("daemoneye-uitest-%d.json", os.Getpid()))
	rule, _ := json.Marshal(map[string]any{"pattern": certBase, "filter": map[string]any{"ISSUER": map[string]string{"CN": ca.Web().Certificate().Subject.CommonName}}})
	pol, _ := json.Marshal(map[string]any{"AutoSelectCertificateForUrls": []string{string(rule)}})
	if err := os.MkdirAll(filepath.Dir(policy), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policy, pol, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := os.Remove(policy); err != nil {
			t.Errorf("remove the test's Chromium policy: %v", err)
		}
	})

	shots, err := filepath.Abs(filepath.Join(".test-artifacts", "browser"))
	if err != nil {
		t.Fatal(err)
	}
	os.RemoveAll(shots)
	downloads := filepath.Join(dir, "downloads")
	for _, d := range []string{shots, downloads} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	step := 0
	a := newTab(t, ctx, chromium, "browser A", filepath.Join(dir, "a"), nssHome(t, filepath.Join(dir, "a"), webCA, ""), shots, &step)
	b := newTab(t, ctx, chromium, "browser B", filepath.Join(dir, "b"), nssHome(t, filepath.Join(dir, "b"), webCA, p12File), shots, &step)
	downloaded := make(chan string, 1)
	chromedp.ListenTarget(a.ctx, func(ev any) {
		if e, ok := ev.(*browser.EventDownloadProgress); ok && e.State == browser.DownloadProgressStateCompleted {
			select {
			case downloaded <- e.GUID:
			default:
			}
		}
	})

	// The center's own listener, its certificate trusted through the web
	// CA in the browser's NSS database; a local account logs in.
	a.run("open the UI", chromedp.Navigate(base+"/"), chromedp.WaitVisible("#login-form", chromedp.ByQuery))
	var proto string
	a.run("page origin", chromedp.Evaluate(`location.protocol + '//' + location.host`, &proto))
	if proto != base {
		t.Fatalf("browser A is at %s, want the center's listener %s", proto, base)
	}
	a.shot("login")
	a.login(analyst)
	if got := a.text("#who"); !strings.Contains(got, analyst) || !strings.Contains(got, "analyst") || !strings.Contains(got, "password") {
		t.Errorf("header says %q, want the operator %s, the role analyst, by password", got, analyst)
	}
	a.shot("alerts")

	// The alert, one click from the list, with its process's lineage.
	var clicked bool
	a.run("click the alert", chromedp.Evaluate(fmt.Sprintf(`(() => { const r = [...document.querySelectorAll('tbody tr.click')]
		.find(r => r.cells[0].textContent === '%d'); if (r) r.click(); return !!r; })()`, res.AlertID), &clicked))
	if !clicked {
		t.Fatalf("alert #%d is not in the alerts list", res.AlertID)
	}
	a.run("alert page", chromedp.WaitVisible(`#lineage[data-ready="true"]`, chromedp.ByQuery))
	if got := a.text("#alert h1"); !strings.Contains(got, demo.RuleID) {
		t.Errorf("alert page title %q, want the rule %s", got, demo.RuleID)
	}
	a.shot("alert")

	// The trace: the graph shows apache2 -> bash -> ssh on web-1 and the
	// hop to sshd on db-1.
	a.run("open the trace", chromedp.Click("#open-trace", chromedp.ByQuery),
		chromedp.WaitVisible(`main[data-view="trace"][data-ready="true"]`, chromedp.ByQuery))
	var g graph
	a.run("read the graph", chromedp.Evaluate(graphJS, &g))
	path := g.chain("apache2@"+demo.WebHost, "bash@"+demo.WebHost, "ssh@"+demo.WebHost, "sshd@"+demo.DBHost)
	if path == nil {
		t.Fatalf("the trace's graph has no path apache2 -> bash -> ssh on %s -> sshd on %s; nodes %v, edges %v", demo.WebHost, demo.DBHost, g.Nodes, g.Edges)
	}
	for _, e := range g.Edges {
		if e.S == path[2].ID && e.T == path[3].ID && e.Kind != "hop" {
			t.Errorf("ssh -> sshd edge is a %q edge, want a network hop", e.Kind)
		}
	}
	a.shot("trace")

	// The timeline plays to the end, the graph following the current event.
	// The trace's length depends on the host (the root shell on db-1 reads
	// the machine's own profile), so the wait is one of steps, not seconds.
	var steps int
	a.run("count the events", chromedp.Evaluate(`Number(document.getElementById('timeline-pos').textContent.split(' / ')[1])`, &steps))
	a.run("play the timeline", chromedp.SetValue("#timeline-speed", "10", chromedp.ByQuery),
		chromedp.Click("#timeline-play", chromedp.ByQuery),
		chromedp.Poll(`(() => { const [a, b] = document.getElementById('timeline-pos').textContent.split(' / ').map(Number);
			return b > 0 && a === b && document.getElementById('timeline-play').textContent.includes('Play'); })()`, nil,
			chromedp.WithPollingTimeout(30*time.Second+time.Duration(steps)*50*time.Millisecond)))
	var current []string
	a.run("current event", chromedp.Evaluate(`[document.querySelector('main').dataset.current,
		window.daemoneye.cy.nodes('.current').map(n => n.id()).join(',')]`, &current))
	if len(current) != 2 || current[0] == "" || current[0] != current[1] {
		t.Errorf("after playing, the current event's process is %v: want the graph to highlight that process", current)
	}
	pos := a.text("#timeline-pos")
	a.shot("timeline-end")
	a.run("first, then jump to connect", chromedp.Click("#timeline-first", chromedp.ByQuery),
		chromedp.Evaluate(`(() => { const s = document.getElementById('timeline-jump'); s.value = 'connect';
			s.dispatchEvent(new Event('change')); })()`, nil))
	if got := a.text("#timeline tr.current"); !strings.Contains(got, "connect") || !strings.Contains(got, ":22") {
		t.Errorf("jump to the next connect: current row %q, want ssh's connect to port 22", got)
	}
	a.run("filter", chromedp.SendKeys("#timeline-filter", "sshd", chromedp.ByQuery))
	if got := a.text("#timeline-pos"); got == pos {
		t.Errorf("filtering on sshd left the timeline at %q (unfiltered %q)", got, pos)
	}

	// Click bash: its snapshot is masked; reveal asks for a reason first.
	bash := path[1]
	a.tap(bash.ID, "#reveal")
	masked := a.text("#snap-cmdline")
	a.run("reveal without a reason", chromedp.Click("#reveal", chromedp.ByQuery), chromedp.WaitVisible("#reason", chromedp.ByQuery))
	a.shot("reveal-asks-reason")
	a.run("refuse a short reason", chromedp.SendKeys("#reason", "because", chromedp.ByQuery), chromedp.Click("#reason-ok", chromedp.ByQuery),
		chromedp.WaitVisible("#snapshot .error", chromedp.ByQuery))
	if got := a.text("#snapshot .error"); !strings.Contains(got, "reason") {
		t.Errorf("reveal with a 7-character reason: error %q, want one about the reason", got)
	}
	a.run("reveal with a reason", chromedp.Click("#reveal", chromedp.ByQuery), chromedp.WaitVisible("#reason", chromedp.ByQuery),
		chromedp.SendKeys("#reason", "incident 42: what did the injected shell run", chromedp.ByQuery),
		chromedp.Click("#reason-ok", chromedp.ByQuery), chromedp.WaitVisible("#snap-revealed ol", chromedp.ByQuery))
	if revealed := a.text("#snap-cmdline"); revealed == masked || !strings.Contains(revealed, "ssh") {
		t.Errorf("command line after reveal %q (masked %q): want the unmasked bash -c ... ssh command", revealed, masked)
	}
	a.shot("revealed")

	// Mark & Watch, rule: bash's exact command line (the injected shell)
	// becomes a watch rule; the same command run again later alerts.
	a.run("watch rule dialog", chromedp.Click("#watch-rule", chromedp.ByQuery), chromedp.WaitVisible("#watch-match-cmdline", chromedp.ByQuery),
		chromedp.Click("#watch-match-cmdline", chromedp.ByQuery),
		chromedp.SendKeys("#reason", "incident 42: alert if the injected command runs again", chromedp.ByQuery))
	a.shot("watch-rule-dialog")
	a.run("create the watch rule", chromedp.Click("#reason-ok", chromedp.ByQuery), chromedp.WaitVisible("#watch-rule-result", chromedp.ByQuery))
	if got := a.text("#watch-rule-result"); !strings.Contains(got, "watch-") || strings.Contains(got, "ssh -") {
		t.Errorf("watch rule result %q: want the rule id, the command line masked", got)
	}

	// Export asks a reason (the package holds the command lines), then
	// downloads the signed package, which verifies offline.
	a.run("allow downloads", browser.SetDownloadBehavior(browser.SetDownloadBehaviorBehaviorAllowAndName).
		WithDownloadPath(downloads).WithEventsEnabled(true), chromedp.Click("#export", chromedp.ByQuery),
		chromedp.WaitVisible("#reason", chromedp.ByQuery),
		chromedp.SendKeys("#reason", "incident 42: evidence for the legal team", chromedp.ByQuery),
		chromedp.Click("#reason-ok", chromedp.ByQuery))
	var guid string
	select {
	case guid = <-downloaded:
	case <-time.After(30 * time.Second):
		t.Fatal("the export did not download")
	}
	pkg, err := os.ReadFile(filepath.Join(downloads, guid))
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ledger.VerifyPackage(pkg, ca.Certificate())
	if err != nil {
		t.Fatalf("the downloaded package does not verify: %v", err)
	}
	if rep.TraceID != res.TraceID {
		t.Errorf("the downloaded package is of trace %s, want %s", rep.TraceID, res.TraceID)
	}

	// web-1 runs the watched command line again (a new bash with the same
	// argv, through the real ingest; under ssh, so that no web-shell rule
	// asks for a trace of it too): the watch rule's alert appears.
	bashProc, ok, err := cn.SQL.Process(ctx, bash.Host, bash.PID, bash.Start)
	if err != nil || !ok || bashProc.Exec.Exe == "" {
		t.Fatalf("bash in the store: %v %v", ok, err)
	}
	w1 := newWeb1(t, cn, res)
	again := capture.ProcKey{PID: 4_000_001, Start: 90_000_001} // a start in clock ticks, as the agents report (and JS numbers hold)
	w1.send(wire.LaneBulk, capture.Event{Time: time.Now().UnixNano(), Kind: capture.KindExec, Proc: again,
		Parent: capture.ProcKey{PID: path[2].PID, Start: path[2].Start}, Comm: "bash", Source: "ebpf",
		Exec: &capture.Exec{Exe: bashProc.Exec.Exe, Argv: bashProc.Exec.Argv, Cwd: "/"}})
	a.open("#/alerts", "alerts")
	rowJS := fmt.Sprintf(`[...document.querySelectorAll('tbody tr')].find(r => r.cells[3].textContent.startsWith('watch-') && r.cells[6].textContent.startsWith('%d@'))`, again.PID)
	a.run("the watch rule's alert", chromedp.Poll(fmt.Sprintf(`(async () => { document.getElementById('alerts-refresh').click(); await new Promise(r => setTimeout(r, 300));
		return !!%s; })()`, rowJS), nil, chromedp.WithPollingTimeout(30*time.Second), chromedp.WithPollingInterval(time.Second)))
	a.shot("watch-rule-alert")

	// Mark & Watch, trace, on that process, which is running (the demo's
	// own processes may all have exited by the store): from the alert's
	// lineage graph; the trace waits for a second operator.
	a.run("open the watch alert", chromedp.Evaluate(rowJS+`.click()`, nil), chromedp.WaitVisible(`#lineage[data-ready="true"]`, chromedp.ByQuery))
	target := graphNode{ID: fmt.Sprintf("%s/%d/%d", demo.WebHost, again.PID, again.Start), Comm: "bash", Host: demo.WebHost, PID: again.PID, Start: again.Start}
	a.tap(target.ID, "#watch")
	a.run("mark & watch", chromedp.Click("#watch", chromedp.ByQuery),
		chromedp.WaitVisible("#reason", chromedp.ByQuery),
		chromedp.SendKeys("#reason", "incident 42: watch the web server's workers", chromedp.ByQuery),
		chromedp.Click("#reason-ok", chromedp.ByQuery), chromedp.WaitVisible("#watch-result", chromedp.ByQuery))
	if got := a.text("#watch-result"); !strings.Contains(got, "awaiting approval") {
		t.Fatalf("Mark & Watch: %q, want a trace awaiting approval", got)
	}
	var watchTrace string
	a.run("the requested trace", chromedp.Evaluate(`document.querySelector('#watch-result a').getAttribute('href').split('/').pop()`, &watchTrace))
	a.shot("watch-requested")
	api := newAPIClient(t, base, res.CACert, analyst)

	a.open("#/watches", "watches")
	if got := a.text("main"); !strings.Contains(got, "cmdline") || !strings.Contains(got, bashProc.Exec.Exe) || strings.Contains(got, "ssh -") {
		t.Errorf("watches page %q: want the cmdline watch on %s, masked", got, bashProc.Exec.Exe)
	}
	a.shot("watches")

	// The SQL sandbox: a query returns rows, a write is refused.
	a.open("#/sql", "sql")
	a.run("sql", chromedp.SetValue("#sql-editor", "SELECT host, comm, kind FROM process_events WHERE trace_id IS NOT NULL LIMIT 20", chromedp.ByQuery),
		chromedp.Click("#sql-run", chromedp.ByQuery), chromedp.WaitVisible("#sql-table tbody tr", chromedp.ByQuery))
	if got := a.text("#sql-status"); !strings.Contains(got, "limits:") {
		t.Errorf("sql status %q, want the limits shown", got)
	}
	a.run("save the query", chromedp.SendKeys("#sql-name", "traced execs", chromedp.ByQuery), chromedp.Click("#sql-save", chromedp.ByQuery))
	if got := a.text("#saved-queries"); !strings.Contains(got, "traced execs") {
		t.Errorf("saved queries %q, want the one just saved", got)
	}
	a.shot("sql-rows")
	// Command lines read as NULL in the sandbox, and the page says so.
	a.run("sql argv", chromedp.SetValue("#sql-editor", "SELECT comm, argv FROM process_events WHERE kind = 'exec' AND trace_id IS NOT NULL LIMIT 5", chromedp.ByQuery),
		chromedp.Click("#sql-run", chromedp.ByQuery), chromedp.WaitVisible("#sql-masked", chromedp.ByQuery))
	if got := a.text("#sql-masked"); !strings.Contains(got, "process_events.argv") {
		t.Errorf("sandbox note %q, want process_events.argv named as masked", got)
	}
	if got := a.text("#sql-table"); strings.Contains(got, "ssh") && strings.Contains(got, "@") {
		t.Errorf("the sandbox shows command lines: %q", got)
	}
	a.run("a write", chromedp.SetValue("#sql-editor", "DELETE FROM alerts", chromedp.ByQuery),
		chromedp.Click("#sql-run", chromedp.ByQuery), chromedp.WaitVisible("#sql-result .error", chromedp.ByQuery))
	if got := a.text("#sql-result .error"); !strings.Contains(got, "read-only") {
		t.Errorf("DELETE in the sandbox: %q, want a read-only refusal", got)
	}
	a.shot("sql-write-refused")

	// The fleet.
	a.open("#/fleet", "fleet")
	if got := a.text("main"); !strings.Contains(got, demo.WebHost) || !strings.Contains(got, demo.DBHost) {
		t.Errorf("fleet page lacks %s or %s:\n%s", demo.WebHost, demo.DBHost, got)
	}
	a.shot("fleet")

	// The ledger: the current checkpoint, and Verify runs the center's
	// whole check.
	a.open("#/ledger", "ledger")
	if note := a.text("#cp-note"); !strings.Contains(note, cn.Ledger.Origin()) {
		t.Errorf("ledger checkpoint note %q, want one of %s", note, cn.Ledger.Origin())
	}
	a.run("verify the ledger", chromedp.Click("#ledger-verify", chromedp.ByQuery),
		chromedp.WaitVisible(`#verify-result[data-state="ok"]`, chromedp.ByQuery))
	if got := a.text("#verify-result"); !strings.Contains(got, "OK") {
		t.Errorf("ledger verification shows %q, want OK", got)
	}
	a.shot("ledger-verified")

	// RBAC: a viewer sees no reveal, watch, export, stop or approve
	// actions, and what the API refuses is shown as such.
	a.run("log out", chromedp.Click("#logout", chromedp.ByQuery), chromedp.WaitVisible("#login-form", chromedp.ByQuery))
	a.login(viewer)
	a.open("#/trace/"+res.TraceID, "trace")
	a.run("trace as viewer", chromedp.WaitVisible(`main[data-ready="true"]`, chromedp.ByQuery))
	a.tap(bash.ID, "#snap-title")
	for _, sel := range []string{"#reveal", "#watch", "#watch-rule", "#export", "#stop-trace"} {
		if a.has(sel) {
			t.Errorf("the viewer is offered %s", sel)
		}
	}
	if a.text("#snap-cmdline") != masked {
		t.Errorf("the viewer sees bash's command line %q, want it masked (%q)", a.text("#snap-cmdline"), masked)
	}
	a.shot("viewer-trace")
	a.open("#/approvals", "approvals")
	if a.has("button.approve") || !strings.Contains(a.text("main"), "needs the approver role") {
		t.Errorf("the viewer's approvals page offers a decision: %q", a.text("main"))
	}
	a.open("#/watches", "watches")
	if a.has("button.delete-watch") {
		t.Error("the viewer is offered to delete a watch rule")
	}
	var sqlLink bool
	a.run("nav", chromedp.Evaluate(`!document.querySelector('#nav a[href="#/sql"]').hidden`, &sqlLink))
	if sqlLink {
		t.Error("the viewer's navigation shows the SQL sandbox")
	}
	a.open("#/sql", "sql")
	a.run("a viewer's query", chromedp.Click("#sql-run", chromedp.ByQuery), chromedp.WaitVisible("#sql-result .error", chromedp.ByQuery))
	if got := a.text("#sql-result .error"); !strings.Contains(got, "needs the analyst role") || !strings.Contains(got, "viewer") {
		t.Errorf("a viewer's query: %q, want the API's 403 (needs the analyst role, you are viewer)", got)
	}
	a.shot("viewer-refused")

	// Browser B: the approver's client certificate logs in without a
	// password, and approves the analyst's trace.
	b.run("open the UI with a certificate", chromedp.Navigate(certBase+"/"), chromedp.WaitVisible(`main[data-view="alerts"]`, chromedp.ByQuery))
	if got := b.text("#who"); !strings.Contains(got, approver) || !strings.Contains(got, "client certificate") || b.has("#login-form") {
		t.Errorf("browser B's header %q: want %s logged in by client certificate", got, approver)
	}
	b.shot("certificate-login")
	b.open("#/approvals", "approvals")
	b.run("pending", chromedp.WaitVisible("button.approve", chromedp.ByQuery))
	b.shot("approvals")
	// (The queue may hold rules' requests too: the approver decides the
	// analyst's.)
	var found bool
	b.run("approve", chromedp.Evaluate(fmt.Sprintf(`(() => { const r = [...document.querySelectorAll('tbody tr')].find(r => r.textContent.includes(%q) && r.querySelector('button.approve'));
		if (r) r.querySelector('button.approve').click(); return !!r; })()`, watchTrace), &found))
	if !found {
		t.Fatalf("the analyst's request for %s is not pending in the approver's queue", watchTrace)
	}
	b.run("approve with a reason", chromedp.WaitVisible("#reason", chromedp.ByQuery),
		chromedp.SendKeys("#reason", "approved for incident 42 by the duty approver", chromedp.ByQuery),
		chromedp.Click("#reason-ok", chromedp.ByQuery),
		chromedp.Poll(fmt.Sprintf(`[...document.querySelectorAll('tbody tr')].some(r => r.textContent.includes(%q) && r.querySelector('.decision'))`, watchTrace),
			nil, chromedp.WithPollingTimeout(20*time.Second)))
	var aps struct {
		Approvals []struct {
			Decision  string  `json:"decision"`
			DecidedBy *string `json:"decided_by"`
			Requested string  `json:"requested_by"`
			Subject   string  `json:"subject_id"`
		}
	}
	api.do("GET", "/api/v1/approvals?decision=all&kind=trace", nil, &aps)
	approved := false
	for _, ap := range aps.Approvals {
		if ap.Subject == watchTrace {
			approved = ap.Decision == "approved" && ap.DecidedBy != nil && *ap.DecidedBy == approver && ap.Requested == analyst
		}
	}
	if !approved {
		t.Errorf("approvals after the browser's approval: %+v, want the analyst's request for %s approved by %s", aps.Approvals, watchTrace, approver)
	}
	b.shot("approved")

	// Live: the approved trace's page follows new events without moving
	// the user's view. The approver zooms, pans and selects apache2, steps
	// to the first event; web-1's trace events then arrive.
	b.open("#/trace/"+watchTrace, "trace")
	b.run("live trace", chromedp.WaitVisible(`main[data-ready="true"][data-live="true"]`, chromedp.ByQuery))
	b.tap(target.ID, "#snap-title")
	type view struct {
		Zoom    float64
		PanX    float64
		PanY    float64
		Nodes   int
		Pos     string
		Snap    string
		Updates string
	}
	const viewJS = `(() => { const cy = window.daemoneye.cy; return {Zoom: cy.zoom(), PanX: cy.pan().x, PanY: cy.pan().y, Nodes: cy.nodes().length,
		Pos: document.getElementById('timeline-pos').textContent, Snap: document.getElementById('snap-title').textContent,
		Updates: document.querySelector('main').dataset.updates || '0'}; })()`
	b.run("set the view", chromedp.Evaluate(`(() => { const cy = window.daemoneye.cy; cy.zoom(1.37); cy.pan({x: 41, y: 23}); })()`, nil))
	var before view
	b.run("read the view", chromedp.Evaluate(viewJS, &before))
	now := time.Now().UnixNano()
	child := capture.ProcKey{PID: 4_000_002, Start: 90_000_002}
	parent := capture.ProcKey{PID: target.PID, Start: target.Start}
	w1.send(wire.LaneTrace,
		capture.Event{Time: now, Kind: capture.KindFork, Proc: child, Parent: parent, Source: "ebpf", TraceID: watchTrace, TraceSeq: 1},
		capture.Event{Time: now + 1, Kind: capture.KindExec, Proc: child, Parent: parent, Comm: "sh", Source: "ebpf", TraceID: watchTrace, TraceSeq: 2,
			Exec: &capture.Exec{Exe: "/usr/bin/dash", Argv: []string{"sh", "-c", "id"}, Cwd: "/var/www"}})
	b.run("first live update", chromedp.WaitVisible(`main[data-updates="1"]`, chromedp.ByQuery),
		chromedp.Click("#timeline-step", chromedp.ByQuery))
	var mid view
	b.run("read the view", chromedp.Evaluate(viewJS, &mid))
	w1.send(wire.LaneTrace,
		capture.Event{Time: now + 2, Kind: capture.KindExit, Proc: child, Source: "ebpf", TraceID: watchTrace, TraceSeq: 3,
			Exit: &capture.Exit{}})
	b.run("second live update", chromedp.WaitVisible(`main[data-updates="2"]`, chromedp.ByQuery))
	var after view
	b.run("read the view", chromedp.Evaluate(viewJS, &after))
	if after.Zoom != before.Zoom || after.PanX != before.PanX || after.PanY != before.PanY || after.Snap != before.Snap {
		t.Errorf("the live updates moved the view: before %+v, after %+v", before, after)
	}
	if mid.Nodes <= before.Nodes || !strings.HasPrefix(mid.Pos, "1 / 2") || !strings.HasPrefix(after.Pos, "1 / 3") {
		t.Errorf("live updates: nodes %d -> %d, timeline %q then %q; want the new process in the graph and the timeline "+
			"grown under the current event (1 / 2, then 1 / 3)", before.Nodes, mid.Nodes, mid.Pos, after.Pos)
	}
	var g2 graph
	b.run("read the live graph", chromedp.Evaluate(graphJS, &g2))
	if g2.chain(target.Comm+"@"+demo.WebHost, "sh@"+demo.WebHost) == nil {
		t.Errorf("the live graph has no %s -> sh edge: %v", target.Comm, g2.Edges)
	}
	b.shot("live-trace")

	// A tampered ledger: a byte of the analyst's Mark & Watch reason is
	// changed on disk; Verify names that entry. (The byte is put back.)
	entries := filepath.Join(res.Dir, "center", "ledger", "entries")
	data, err := os.ReadFile(entries)
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(data, []byte("watch the web server's workers"))
	if at < 0 {
		t.Fatal("the Mark & Watch reason is not in the ledger's entries file")
	}
	flip := func(c byte) {
		f, err := os.OpenFile(entries, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if _, err := f.WriteAt([]byte{c}, int64(at)); err != nil {
			t.Fatal(err)
		}
	}
	flip('W')
	t.Cleanup(func() { flip(data[at]) })
	b.open("#/ledger", "ledger")
	b.run("verify the tampered ledger", chromedp.Click("#ledger-verify", chromedp.ByQuery),
		chromedp.WaitVisible(`#verify-result[data-state="failed"]`, chromedp.ByQuery))
	if got := b.text("#verify-result"); !strings.Contains(got, "FAILED") || !strings.Contains(got, "first bad entry") {
		t.Errorf("verification of the tampered ledger shows %q, want FAILED and the first bad entry", got)
	}
	var bad string
	b.run("the bad entry", chromedp.Evaluate(`document.getElementById('bad-entry').textContent`, &bad))
	b.run("open the bad entry", chromedp.Click("#bad-entry", chromedp.ByQuery),
		chromedp.Poll(fmt.Sprintf(`(() => { const r = document.querySelector('#ledger-entries tbody tr');
			return !!r && '#' + r.cells[0].textContent === %q; })()`, bad), nil, chromedp.WithPollingTimeout(10*time.Second)))
	if got := b.text("#ledger-entries tbody tr"); !strings.Contains(got, "tampered") {
		t.Errorf("the first listed entry after following the bad entry %s is %q, want it shown as tampered", bad, got)
	}
	b.shot("ledger-tampered")
	flip(data[at])

	for _, tb := range []*tab{a, b} {
		if len(tb.problems) > 0 {
			t.Errorf("%s: the page reported errors:\n%s", tb.name, strings.Join(tb.problems, "\n"))
		}
	}
	t.Logf("screenshots in %s", shots)
}
