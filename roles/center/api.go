package center

// The operators' HTTPS API: what the UI and scripts use to look at hosts,
// alerts, processes and traces, to query the store read-only, to start and
// approve traces, to reveal masked command lines and to manage operators.
//
// Authentication. TLS 1.3 only, with the API's own certificate (api_tls.go:
// ECDSA from the customer's web CA, which browsers accept). The server
// requests (does not require) a client certificate: one that is presented
// must come from the customer CA (Ed25519, as the CLI's) or its web CA
// (ECDSA, a browser's), be unrevoked and carry the role operator, or the
// handshake fails. Its name is the operator id. Without a certificate, a local account logs in
// with POST /api/v1/login {name, password} and gets a session token, as an
// HttpOnly, Secure, SameSite=Strict cookie and in the answer (for scripts:
// "Authorization: Bearer TOKEN"). Login and cookie rather than HTTP Basic
// because Basic sends the password with every request: each request would
// pay the slow KDF, and lockout could not tell a guess from a page load.
// Passwords are Argon2id (x/crypto); accounts lock after MaxLoginFailures.
// A certificate wins over a session when a request carries both.
//
// Authorization. Every route declares the lowest role it needs (viewer <
// analyst < approver < admin). The role is read from the operators table on
// every request, so a role change or a disable takes effect at once. An
// authenticated principal with no operators row, or a disabled one, gets
// 403 on everything. Refusals are audited (api.denied).
//
// Audit. See api_audit.go: actions (login, logout, reveal, query, trace
// request and stop, approval decisions, operator changes, refusals) are one
// ledger entry each, written before the action's data leaves or its change
// commits; reads are batched per operator into api.view entries.
//
// CSRF. State-changing routes are POSTs (and DELETEs) that must carry
// Content-Type application/json, which a browser sends cross-site only
// after a CORS preflight that this API never answers, and the session
// cookie is SameSite=Strict.

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// CenterOps is what the API needs from the center to act on traces. The
// API has already recorded the trace (state approved) when it calls
// RequestTrace; the center sends the command and moves the trace on
// (active, failed). An error marks the trace failed.
type CenterOps interface {
	RequestTrace(ctx context.Context, req TraceRequest) error
	// StopTrace stops a trace that was approved or is active; the API has
	// already recorded it stopped with the reason.
	StopTrace(ctx context.Context, traceID, by, reason string) error
	// Follow fans a trace out along a link (a traced connect to another
	// enrolled host) to the process that accepted it.
	Follow(ctx context.Context, linkID int64, by string) error
	// WatchesChanged says the watch rules were added to or deleted (the
	// API has committed the change); the center loads them again.
	WatchesChanged()
}

// TraceFlags say what a focused trace collects (traces.flags).
type TraceFlags uint32

// Trace collection flags, as stored in traces.flags.
const (
	TraceCmdlines TraceFlags = 1 << 0
	TraceNetwork  TraceFlags = 1 << 1
	TraceFiles    TraceFlags = 1 << 2
	TraceMemory   TraceFlags = 1 << 3
)

// TraceCaps bound a trace (traces.caps).
type TraceCaps struct {
	MaxDurationS int64 `json:"max_duration_s"`
	MaxBytes     int64 `json:"max_bytes"`
	MaxEPS       int64 `json:"max_eps"`
}

// TraceRequest is an approved trace for the center to start.
type TraceRequest struct {
	TraceID     string
	Host        string
	PID         uint32
	Start       uint64
	Depth       int
	Flags       TraceFlags
	Caps        TraceCaps
	InitiatedBy string // operator id
	ApprovedBy  string // the second operator under the two-person rule; "" otherwise
	Reason      string
	AlertID     int64 // 0: none
	// Command is the TraceCommand as the operator signed it (wire.SignTrace);
	// nil when the center signs (a rule's trace, a local account's).
	Command []byte
	// FollowOf is the link that fans an existing trace out to Host.
	FollowOf uint64
}

// APIDeps is what the API is built from.
type APIDeps struct {
	SQL      *sqlstore.Store
	Audit    Auditor
	Verifier *pki.Verifier // operator certificates; nil: local accounts only
	Cfg      config.API
	Center   CenterOps
	Log      *slog.Logger
	Now      func() time.Time // nil: time.Now
	Ledger   LedgerDeps       // the ledger view (api_ledger.go); zero: none
}

// API is the operators' HTTPS API. It serves once: Serve closes it.
type API struct {
	sql      *sqlstore.Store
	ops      *Operators
	audit    Auditor
	verifier *pki.Verifier
	cfg      config.API
	center   CenterOps
	log      *slog.Logger
	now      func() time.Time
	sessions *sessions
	limiter  *loginLimiter
	views    *viewLog
	routes   []route
	mux      *http.ServeMux
	hasEnv   bool          // process_events has an env column (reveal returns it)
	queries  chan struct{} // bounds concurrent sandbox queries
	closed   sync.Once
	closeErr error

	ledger    LedgerDeps
	verifyJob verifyJob
	// bg is the context of work the API starts in the background (a
	// ledger verification); Close cancels it and waits.
	bg       context.Context
	bgCancel context.CancelFunc
	bgWG     sync.WaitGroup

	viewEvery  time.Duration // view batch flush interval
	drainEvery time.Duration // outbox drain interval
}

// maxBody bounds every request body.
const maxBody = 1 << 20

// maxQueries sandbox queries run at once; more wait. The read-only pool
// has 8 connections and the API's own reads need some of them.
const maxQueries = 2

// NewAPI builds the API and opens the operators (creating accounts.db
// beside the SQL store), then moves anything `daemoneye operator` left in
// the audit outbox into the ledger.
func NewAPI(d APIDeps) (*API, error) {
	if d.SQL == nil || d.Audit == nil || d.Center == nil {
		return nil, errors.New("api: SQL store, auditor and center are required")
	}
	if d.Log == nil {
		d.Log = slog.New(slog.DiscardHandler)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	ops, err := OpenOperators(d.SQL.Path())
	if err != nil {
		return nil, fmt.Errorf("api: %w", err)
	}
	ops.now = d.Now
	a := &API{sql: d.SQL, ops: ops, audit: d.Audit, verifier: d.Verifier, cfg: d.Cfg, center: d.Center,
		log: d.Log.With("component", "api"), now: d.Now, sessions: newSessions(d.Now), limiter: newLoginLimiter(d.Now),
		views: newViewLog(), viewEvery: 30 * time.Second, drainEvery: 10 * time.Second, queries: make(chan struct{}, maxQueries),
		ledger: d.Ledger}
	a.bg, a.bgCancel = context.WithCancel(context.Background())
	if err := d.SQL.ReadOnly().QueryRow(`SELECT count(*) > 0 FROM pragma_table_info('process_events') WHERE name = 'env'`).Scan(&a.hasEnv); err != nil {
		ops.Close()
		return nil, fmt.Errorf("api: %w", err)
	}
	if n, err := ops.DrainOutbox(context.Background(), d.Audit); err != nil {
		ops.Close()
		return nil, fmt.Errorf("api: %w", err)
	} else if n > 0 {
		a.log.Info("operator changes from the command line recorded in the ledger", "entries", n)
	}
	a.routes = a.routeTable()
	a.mux = http.NewServeMux()
	for _, rt := range a.routes {
		a.mux.Handle(rt.method+" "+rt.path, a.wrap(rt))
	}
	return a, nil
}

// Operators gives access to the operators (the center's wiring, tests).
func (a *API) Operators() *Operators { return a.ops }

// Close releases the API's connections; views not yet flushed are
// recorded first.
func (a *API) Close() error {
	a.closed.Do(func() {
		a.bgCancel()
		a.bgWG.Wait()
		a.flushViews(context.Background())
		a.closeErr = a.ops.Close()
	})
	return a.closeErr
}

// route is one endpoint: its pattern, the lowest role allowed, and whether
// it is an action (audited by its handler) or a read (a view).
type route struct {
	method, path string
	min          Role // RoleNone: no authentication (login)
	action       bool
	h            func(w http.ResponseWriter, r *http.Request, p *principal) error
}

// Routes lists the endpoints with their minimum roles ("METHOD /path" ->
// role), for documentation and tests.
func (a *API) Routes() map[string]Role {
	m := make(map[string]Role, len(a.routes))
	for _, rt := range a.routes {
		m[rt.method+" "+rt.path] = rt.min
	}
	return m
}

// QueryRole is the role the SQL sandbox needs. The sandbox reads every
// table, argv and command lines included, so it is a way around masking:
// it is for analysts, who may reveal anyway, and each query is in the
// ledger. A viewer could have it once the store can mask argv columns in
// queries (see the report).
const QueryRole = RoleAnalyst

func (a *API) routeTable() []route {
	return []route{
		{"POST", "/api/v1/login", RoleNone, true, a.login},
		{"POST", "/api/v1/logout", RoleViewer, true, a.logout},
		{"GET", "/api/v1/whoami", RoleViewer, false, a.whoami},
		{"GET", "/api/v1/hosts", RoleViewer, false, a.hosts},
		{"GET", "/api/v1/alerts", RoleViewer, false, a.alerts},
		{"GET", "/api/v1/alerts/{id}", RoleViewer, false, a.alert},
		{"GET", "/api/v1/processes/{host}/{pid}/{start}", RoleViewer, false, a.process},
		{"GET", "/api/v1/processes/{host}/{pid}/{start}/lineage", RoleViewer, false, a.lineage},
		{"POST", "/api/v1/reveal", RoleAnalyst, true, a.reveal},
		{"GET", "/api/v1/traces", RoleViewer, false, a.traces},
		{"GET", "/api/v1/traces/{id}", RoleViewer, false, a.trace},
		{"POST", "/api/v1/traces", RoleAnalyst, true, a.requestTrace},
		{"POST", "/api/v1/traces/{id}/stop", RoleAnalyst, true, a.stopTrace},
		{"GET", "/api/v1/traces/{id}/export", RoleAnalyst, true, a.exportTrace},
		{"POST", "/api/v1/links/{id}/follow", RoleAnalyst, true, a.followLink},
		{"GET", "/api/v1/approvals", RoleViewer, false, a.approvals},
		{"POST", "/api/v1/approvals/{id}", RoleApprover, true, a.decide},
		{"POST", "/api/v1/query", QueryRole, true, a.query},
		{"GET", "/api/v1/operators", RoleAdmin, false, a.operators},
		{"POST", "/api/v1/operators", RoleAdmin, true, a.addOperator},
		{"POST", "/api/v1/operators/{id}", RoleAdmin, true, a.updateOperator},
		{"GET", "/api/v1/sinks", RoleAdmin, false, a.listSinks},
		{"POST", "/api/v1/sinks/{name}/enable", RoleAdmin, true, a.enableSink},
		{"GET", "/api/v1/ledger", RoleViewer, false, a.ledgerView},
		{"GET", "/api/v1/ledger/verify", RoleViewer, false, a.ledgerVerifyStatus},
		{"POST", "/api/v1/ledger/verify", RoleViewer, true, a.ledgerVerify},
		{"GET", "/api/v1/watches", RoleViewer, false, a.watches},
		{"POST", "/api/v1/watches", WatchRole, true, a.addWatch},
		{"DELETE", "/api/v1/watches/{id}", WatchRole, true, a.deleteWatch},
	}
}

// principal is who a request is from.
type principal struct {
	ID      string
	Role    Role
	Auth    string // "certificate" or "password"
	Remote  string // client IP
	session [32]byte
}

// apiError is an error with the status and message the client sees.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func errorf(status int, format string, args ...any) error {
	return &apiError{status: status, msg: fmt.Sprintf(format, args...)}
}

// Handler is the API as an http.Handler. Without TLS (behind Serve) only
// sessions authenticate.
func (a *API) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api" && !strings.HasPrefix(r.URL.Path, "/api/") {
			a.serveUI(w, r) // ui.go
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json; charset=utf-8")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		h.Set("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Strict-Transport-Security", "max-age=31536000")
		if _, pattern := a.mux.Handler(r); pattern == "" {
			// The mux's own 404 and 405 are text; answer in JSON, keeping
			// the Allow header it computes.
			rec := &statusRecorder{ResponseWriter: discardBody{w}}
			a.mux.ServeHTTP(rec, r)
			status := rec.status
			if status == 0 || status == http.StatusOK {
				status = http.StatusNotFound
			}
			msg := "no such endpoint: " + r.URL.Path
			if status == http.StatusMethodNotAllowed {
				msg = fmt.Sprintf("method %s not allowed on %s (allowed: %s)", r.Method, r.URL.Path, w.Header().Get("Allow"))
			}
			h.Set("Content-Type", "application/json; charset=utf-8")
			a.writeError(w, status, msg)
			return
		}
		a.mux.ServeHTTP(w, r)
	})
}

// discardBody drops what the mux's fallback handlers write, so that the
// JSON error replaces it; headers still go to the real writer.
type discardBody struct{ http.ResponseWriter }

func (d discardBody) Write(b []byte) (int, error) { return len(b), nil }
func (d discardBody) WriteHeader(int)             {}

type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(c int) {
	if s.status == 0 {
		s.status = c
	}
	s.ResponseWriter.WriteHeader(c)
}

func (s *statusRecorder) Write(b []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(b)
}

// wrap authenticates, authorizes, bounds the body and records views.
func (a *API) wrap(rt route) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		}
		if r.Method == http.MethodPost || r.Method == http.MethodDelete {
			if ct, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || ct != "application/json" {
				a.writeError(w, http.StatusUnsupportedMediaType, "request body must be JSON (Content-Type: application/json)")
				return
			}
		}
		p := &principal{Remote: remoteIP(r)}
		if rt.min != RoleNone {
			var err error
			if p, err = a.authenticate(r); err != nil {
				a.fail(w, r, err)
				return
			}
			if !p.Role.Allows(rt.min) {
				a.deny(r, p, fmt.Sprintf("%s needs the %s role; %s is %s", rt.path, rt.min, p.ID, p.Role))
				a.writeError(w, http.StatusForbidden, fmt.Sprintf("%s %s needs the %s role (you are %s)", rt.method, rt.path, rt.min, p.Role))
				return
			}
		}
		rec := &statusRecorder{ResponseWriter: w}
		if err := rt.h(rec, r, p); err != nil {
			a.fail(rec, r, err)
		}
		if !rt.action && p.ID != "" {
			status := rec.status
			if status == 0 {
				status = http.StatusOK
			}
			vr := viewRec{Time: a.now().UTC(), Method: r.Method, Path: r.URL.RequestURI(), Status: status, Auth: p.Auth}
			if full := a.views.add(p.ID, vr); full != nil {
				if err := a.audit.Audit(r.Context(), AuditView, p.ID, viewPayload(full)); err != nil {
					a.log.Error("view records not recorded in the ledger", "operator", p.ID, "views", len(full), "err", err)
				}
			}
		}
	})
}

// authenticate finds the operator behind a request: the verified client
// certificate, else a session token (cookie or Bearer).
func (a *API) authenticate(r *http.Request) (*principal, error) {
	p := &principal{Remote: remoteIP(r)}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		leaf := r.TLS.PeerCertificates[0]
		if a.verifier == nil {
			return nil, errorf(http.StatusUnauthorized, "this center accepts no operator certificates")
		}
		// Again per request: a CRL pushed since the handshake applies to a
		// kept-alive connection too.
		if err := a.verifier.VerifyCertificate(leaf, pki.RoleOperator); err != nil {
			return nil, errorf(http.StatusUnauthorized, "client certificate refused: %s", pki.Describe(err))
		}
		_, name, err := pki.Identity(leaf)
		if err != nil {
			return nil, errorf(http.StatusUnauthorized, "client certificate refused: %v", err)
		}
		p.ID, p.Auth = name, "certificate"
	} else if tok := sessionToken(r); tok != "" {
		id, key, ok := a.sessions.lookup(tok)
		if !ok {
			return nil, errorf(http.StatusUnauthorized, "session expired or unknown: log in again (POST /api/v1/login)")
		}
		p.ID, p.Auth, p.session = id, "password", key
	} else {
		return nil, errorf(http.StatusUnauthorized, "authentication required: a client certificate from the customer CA, or a session from POST /api/v1/login")
	}
	op, found, err := a.ops.Get(r.Context(), p.ID)
	if err != nil {
		return nil, err
	}
	switch {
	case !found:
		a.deny(r, p, "no operators row")
		return nil, errorf(http.StatusForbidden, "operator %q is not enrolled on this center (an admin runs: daemoneye operator add %s --role ROLE)", p.ID, p.ID)
	case !op.Active():
		a.sessions.revokeOperator(p.ID)
		a.deny(r, p, "operator disabled")
		return nil, errorf(http.StatusForbidden, "operator %q is disabled", p.ID)
	case op.Role == RoleNone:
		a.deny(r, p, "operator has no valid role")
		return nil, errorf(http.StatusForbidden, "operator %q has no valid role", p.ID)
	}
	p.Role = op.Role
	return p, nil
}

const sessionCookie = "daemoneye_session"

func sessionToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		if tok, ok := strings.CutPrefix(h, "Bearer "); ok {
			return strings.TrimSpace(tok)
		}
	}
	if c, err := r.Cookie(sessionCookie); err == nil {
		return c.Value
	}
	return ""
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

// deny records a refusal of an authenticated principal.
func (a *API) deny(r *http.Request, p *principal, why string) {
	err := a.audit.Audit(r.Context(), AuditDenied, p.ID, map[string]any{
		"method": r.Method, "path": r.URL.RequestURI(), "reason": why, "auth": p.Auth, "remote": p.Remote})
	if err != nil {
		a.log.Error("refusal not recorded in the ledger", "operator", p.ID, "path", r.URL.Path, "err", err)
	}
	a.log.Warn("request refused", "operator", p.ID, "method", r.Method, "path", r.URL.Path, "reason", why)
}

// record writes an action's audit entry; failing that, the action must not
// happen (or its data not leave).
func (a *API) record(ctx context.Context, kind string, p *principal, payload map[string]any) error {
	payload["auth"], payload["remote"] = p.Auth, p.Remote
	if err := a.audit.Audit(ctx, kind, p.ID, payload); err != nil {
		a.log.Error("audit failed; action refused", "kind", kind, "operator", p.ID, "err", err)
		return errorf(http.StatusServiceUnavailable, "the audit ledger could not record this action, so it was not done: %v", err)
	}
	return nil
}

func (a *API) fail(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &ae):
		a.writeError(w, ae.status, ae.msg)
	case errors.As(err, &mbe):
		a.writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", maxBody))
	case errors.Is(err, errAudit):
		a.log.Error("audit failed; change rolled back", "path", r.URL.Path, "err", err)
		a.writeError(w, http.StatusServiceUnavailable, "the audit ledger could not record this action, so it was not done")
	case errors.Is(err, context.Canceled):
		a.writeError(w, 499, "request cancelled")
	default:
		a.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		a.writeError(w, http.StatusInternalServerError, "internal error (see the center's log)")
	}
}

func (a *API) writeError(w http.ResponseWriter, status int, msg string) {
	a.reply(w, status, map[string]string{"error": msg})
}

func (a *API) reply(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		a.log.Error("encode response", "err", err)
		status, b = http.StatusInternalServerError, []byte(`{"error":"internal error: response not encodable"}`)
	}
	w.WriteHeader(status)
	w.Write(append(b, '\n')) //nolint:errcheck // the client went away
}

// decode reads a JSON body strictly: one object, no unknown fields, no
// trailing data.
func decode(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		if errors.Is(err, io.EOF) {
			return errorf(http.StatusBadRequest, "empty request body")
		}
		return errorf(http.StatusBadRequest, "bad request body: %v", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return err
		}
		return errorf(http.StatusBadRequest, "bad request body: data after the JSON object")
	}
	return nil
}

// Serve serves the API on ln over TLS until ctx ends, then closes the API.
// tlsConf supplies the server certificate (Certificates or
// GetCertificate); Serve sets the rest: TLS 1.3 only, a client certificate
// requested and, when one is sent, verified against the Verifier with role
// operator (another CA, a revoked or a node certificate fail the
// handshake), no session tickets (a resumed session would skip nothing,
// but revocation is simpler to reason about without them).
func (a *API) Serve(ctx context.Context, ln net.Listener, tlsConf *tls.Config) error {
	defer a.Close()
	if tlsConf == nil || (len(tlsConf.Certificates) == 0 && tlsConf.GetCertificate == nil) {
		return errors.New("api: serve: no server certificate in the TLS configuration")
	}
	conf := tlsConf.Clone()
	conf.MinVersion, conf.MaxVersion = tls.VersionTLS13, tls.VersionTLS13
	conf.ClientAuth = tls.RequestClientCert
	conf.SessionTicketsDisabled = true
	conf.VerifyPeerCertificate = nil
	conf.VerifyConnection = func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil // a local account, or nobody: the handler decides
		}
		if a.verifier == nil {
			return errors.New("this center accepts no operator certificates")
		}
		return a.verifier.VerifyCertificate(cs.PeerCertificates[0], pki.RoleOperator)
	}
	conf.NextProtos = []string{"h2", "http/1.1"}
	timeout := time.Duration(a.cfg.QueryTimeoutMS) * time.Millisecond
	srv := &http.Server{
		Handler:           a.Handler(),
		TLSConfig:         conf,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      max(time.Minute, 2*timeout+10*time.Second),
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(a.log.Handler(), slog.LevelInfo), // TLS handshake refusals, mostly: who tried with what
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	a.log.Info("API listening", "addr", ln.Addr().String())
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := srv.ServeTLS(ln, "", ""); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("api: serve: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			srv.Close()
		}
		return nil
	})
	g.Go(func() error { a.housekeeping(gctx); return nil })
	return g.Wait()
}

// housekeeping flushes view batches, drains the outbox of command-line
// changes and forgets expired sessions and login failures.
func (a *API) housekeeping(ctx context.Context) {
	views := time.NewTicker(a.viewEvery)
	defer views.Stop()
	drain := time.NewTicker(a.drainEvery)
	defer drain.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-views.C:
			a.flushViews(ctx)
			a.sessions.sweep()
			a.limiter.sweep()
		case <-drain.C:
			if _, err := a.ops.DrainOutbox(ctx, a.audit); err != nil && ctx.Err() == nil {
				a.log.Warn("audit outbox", "err", err)
			}
		}
	}
}

func (a *API) flushViews(ctx context.Context) {
	for actor, recs := range a.views.take() {
		if err := a.audit.Audit(context.WithoutCancel(ctx), AuditView, actor, viewPayload(recs)); err != nil {
			a.log.Error("view records not recorded in the ledger", "operator", actor, "views", len(recs), "err", err)
		}
	}
}
