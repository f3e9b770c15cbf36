package center

// The web UI (package ui) is served by the API's listener, on the same TLS
// as the API, at every path outside /api/. Its files are static and hold
// no data: the page logs in and reads everything through the API, so
// authentication, roles, masking and the audit ledger are the API's. The
// files are therefore served to anyone who reaches the listener (the login
// page must load before a login).

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/ui"
)

// uiCSP allows the page its own script, styles and API, and nothing else:
// no inline script, no other origin (the UI works offline), no framing.
const uiCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
	"form-action 'self'; base-uri 'none'; frame-ancestors 'none'"

type uiFile struct {
	body  []byte
	ctype string
	etag  string
}

var (
	uiOnce  sync.Once
	uiFiles map[string]uiFile
	uiErr   error
)

// loadUI reads the embedded files once.
func loadUI() (map[string]uiFile, error) {
	uiOnce.Do(func() {
		files := map[string]uiFile{}
		uiErr = fs.WalkDir(ui.Files(), ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || p == "SOURCES.sha256" {
				return err
			}
			b, err := fs.ReadFile(ui.Files(), p)
			if err != nil {
				return err
			}
			ct := mime.TypeByExtension(path.Ext(p))
			if ct == "" {
				ct = "application/octet-stream"
			}
			sum := sha256.Sum256(b)
			files["/"+p] = uiFile{body: b, ctype: ct, etag: `"` + hex.EncodeToString(sum[:12]) + `"`}
			return nil
		})
		uiFiles = files
	})
	return uiFiles, uiErr
}

// serveUI answers a request outside /api/: / is the page, other paths
// the assets it loads; anything else is a 404.
func (a *API) serveUI(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Strict-Transport-Security", "max-age=31536000")
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Frame-Options", "DENY")
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	files, err := loadUI()
	if err != nil {
		a.log.Error("web UI assets unreadable", "err", err)
		http.Error(w, "web UI unavailable (see the center's log)", http.StatusInternalServerError)
		return
	}
	p := r.URL.Path
	if p == "/" || p == "/index.html" {
		p = "/index.html"
	}
	f, ok := files[p]
	if !ok || strings.HasSuffix(p, "/") {
		http.NotFound(w, r)
		return
	}
	h.Set("Content-Type", f.ctype)
	h.Set("ETag", f.etag)
	// Revalidate every time: the ETag makes that a 304, and a new center
	// build is picked up at once.
	h.Set("Cache-Control", "no-cache")
	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(f.body))
}
