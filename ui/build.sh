#!/usr/bin/env bash
# Builds the web UI into dist/ (or $1): installs the npm dependencies from
# web/package-lock.json, bundles web/src/main.js with esbuild (Cytoscape.js
# and cytoscape-dagre included: the UI needs no network), copies the page
# and the style sheet, and writes dist/SOURCES.sha256, the digests of the
# inputs and of the outputs, which ui's test checks against the tree.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:-$here/dist}"
cd "$here/web"
if [[ "${UI_SKIP_INSTALL:-}" == "" ]]; then
	npm ci --no-audit --no-fund --loglevel=error
fi
rm -rf "$out"
mkdir -p "$out"
node_modules/.bin/esbuild src/main.js --bundle --format=iife --minify --target=es2020 \
	--legal-comments=eof --log-level=warning --outfile="$out/app.js"
cp src/index.html src/app.css "$out/"
cd "$here"
{
	echo "# Written by ui/build.sh (make generate); checked by ui's tests. Inputs, then outputs."
	find build.sh web/package.json web/package-lock.json web/src -type f | LC_ALL=C sort | xargs sha256sum
	(cd "$out" && find . -type f ! -name SOURCES.sha256 | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum | sed 's|  |  dist/|')
} > "$out/SOURCES.sha256"
