#!/usr/bin/env bash
# Installs what the UI's browser tests use (ui/browser_test.go): Debian's
# chromium, driven headless with chromedp, and libnss3-tools (certutil,
# pk12util), with which the test gives each browser its own NSS database:
# the customer's web CA as a trusted authority, an operator's client
# certificate. Idempotent; needs root to install.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
{ command -v certutil >/dev/null && command -v pk12util >/dev/null; } || missing+=(libnss3-tools)
if ((${#missing[@]} == 0)); then
	echo "ui: chromium and libnss3-tools already installed ($(chromium --version 2>/dev/null || echo unknown version))"
	exit 0
fi
if ((EUID != 0)); then
	echo "ui: installing ${missing[*]} needs root" >&2
	exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
