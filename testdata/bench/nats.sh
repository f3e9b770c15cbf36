#!/usr/bin/env bash
# Installs Debian's nats-server for the NATS JetStream comparison of
# BenchmarkPipelineThroughput (roles/treetest) unless it is already there.
# The benchmark starts and kills its own server; nothing runs as a service.
set -euo pipefail
command -v nats-server >/dev/null && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq nats-server >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq nats-server; }
# The package enables a systemd unit; where systemd runs, stop it so that
# only the benchmark's own server is up.
if command -v systemctl >/dev/null && systemctl is-active --quiet nats-server 2>/dev/null; then
  systemctl disable --now nats-server >/dev/null 2>&1 || true
fi
command -v nats-server >/dev/null
