#!/usr/bin/env bash
# Installs the real software of the web-1 -> db-1 scenario (issue 7): Debian's
# apache2 (with mod_cgi), the OpenSSH server and client. Idempotent: it only
# calls apt-get when a binary is missing, and it keeps the system services of
# these packages from being started (the scenario runs its own instances,
# inside network namespaces, from temporary configurations). Needs root.
#
# Used by `make demo`; internal/scenario.Install does the same from Go.
set -euo pipefail

need=()
[[ -x /usr/sbin/apache2 && -e /usr/lib/apache2/modules/mod_cgi.so && -e /usr/lib/apache2/modules/mod_mpm_prefork.so ]] || need+=(apache2)
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
[[ -x /usr/bin/ssh && -x /usr/bin/ssh-keygen ]] || need+=(openssh-client)

if ((${#need[@]} == 0)); then
	echo "scenario: apache2, sshd, ssh and ssh-keygen already installed"
	exit 0
fi
if ((EUID != 0)); then
	echo "scenario: installing ${need[*]} needs root" >&2
	exit 1
fi

# invoke-rc.d asks policy-rc.d whether a package's postinst may start its
# service; 101 means no. An existing policy (a container's) is left alone.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\n# daemoneye scenario install: start no services\nexit 101\n' >"$policy"
	chmod 0755 "$policy"
	trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
echo "scenario: apt-get install ${need[*]}"
if ! apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${need[@]}"; then
	# The package lists may be missing or stale (a fresh container).
	apt-get update -q -o DPkg::Lock::Timeout=300
	apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 "${need[@]}"
fi

for bin in /usr/sbin/apache2 /usr/lib/apache2/modules/mod_cgi.so /usr/sbin/sshd /usr/bin/ssh /usr/bin/ssh-keygen; do
	[[ -e $bin ]] || { echo "scenario: $bin still missing after apt-get install" >&2; exit 1; }
done
echo "scenario: installed ${need[*]}"
