#!/usr/bin/env bash
# Installs Debian's chromium for the UI's browser tests (ui/browser_test.go
# drives it headless with chromedp). Idempotent; needs root to install.
set -euo pipefail
if command -v chromium >/dev/null; then
	echo "ui: chromium already installed ($(chromium --version 2>/dev/null || echo unknown version))"
	exit 0
fi
if ((EUID != 0)); then
	echo "ui: installing chromium needs root" >&2
	exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
