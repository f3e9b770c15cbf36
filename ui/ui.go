// Package ui is the analysts' web UI: a small vanilla-JS front end over the
// center's HTTPS API (roles/center serves it at / on the API listener). It
// holds no data and no logic the API does not enforce: every view reads the
// API as the logged-in operator, so RBAC, masking and the audit ledger apply
// to the browser exactly as to a script.
//
// The sources are in web/ (web/src, and web/package.json with its lock for
// the build-time npm dependencies: Cytoscape.js and cytoscape-dagre, bundled
// by esbuild). build.sh (`make generate`) writes dist/, which is committed
// and embedded, so `go build` needs no node; dist/SOURCES.sha256 records the
// digests of the sources it was built from, and the package's test fails
// when a source changed without a rebuild.
package ui

import (
	"embed"
	"io/fs"
)

//go:embed dist
var dist embed.FS

// Files returns the built assets, index.html at the root.
func Files() fs.FS {
	sub, err := fs.Sub(dist, "dist")
	if err != nil {
		panic(err) // "dist" is a valid path and embedded: cannot happen
	}
	return sub
}
