package center

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/config"
)

// The UI's files come from the API's listener without a login, with a
// CSP that allows only the page's own origin; /api/ stays the API's.
func TestUIServedBesideAPI(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	c := e.bare()
	get := func(method, path string, hdr ...string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, e.base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i+1 < len(hdr); i += 2 {
			req.Header.Set(hdr[i], hdr[i+1])
		}
		res, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}

	res, body := get("GET", "/")
	if res.StatusCode != http.StatusOK || !strings.HasPrefix(res.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET /: status %d, type %q; want 200 text/html", res.StatusCode, res.Header.Get("Content-Type"))
	}
	if !strings.Contains(body, `src="/app.js"`) {
		t.Errorf("GET /: the page does not load /app.js:\n%s", body)
	}
	csp := res.Header.Get("Content-Security-Policy")
	for _, want := range []string{"default-src 'none'", "script-src 'self'", "connect-src 'self'", "frame-ancestors 'none'"} {
		if !strings.Contains(csp, want) {
			t.Errorf("GET /: CSP %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("GET /: CSP %q allows unsafe sources", csp)
	}

	res, body = get("GET", "/app.js")
	if res.StatusCode != http.StatusOK || !strings.Contains(res.Header.Get("Content-Type"), "javascript") || len(body) < 1000 {
		t.Fatalf("GET /app.js: status %d, type %q, %d bytes", res.StatusCode, res.Header.Get("Content-Type"), len(body))
	}
	etag := res.Header.Get("ETag")
	if res, _ = get("GET", "/app.js", "If-None-Match", etag); res.StatusCode != http.StatusNotModified {
		t.Errorf("GET /app.js with If-None-Match %s: status %d, want 304", etag, res.StatusCode)
	}
	if res, _ = get("GET", "/app.css"); !strings.HasPrefix(res.Header.Get("Content-Type"), "text/css") {
		t.Errorf("GET /app.css: type %q, want text/css", res.Header.Get("Content-Type"))
	}
	for _, p := range []string{"/nope", "/SOURCES.sha256", "/dist/app.js"} {
		if res, _ = get("GET", p); res.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s: status %d, want 404", p, res.StatusCode)
		}
	}
	if res, _ = get("POST", "/"); res.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /: status %d, want 405", res.StatusCode)
	}
	// The API is unchanged: JSON errors, authentication required.
	if r := e.do(c, "GET", "/api/v1/nope", nil); r.status != http.StatusNotFound || !strings.Contains(r.err(), "no such endpoint") {
		t.Errorf("GET /api/v1/nope: %d %q, want the API's JSON 404", r.status, r.raw)
	}
	if r := e.do(c, "GET", "/api/v1/hosts", nil); r.status != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/hosts without a login: %d, want 401", r.status)
	}
}
