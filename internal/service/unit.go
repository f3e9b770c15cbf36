package service

import (
	"fmt"
	"strings"
)

// Unit renders the systemd unit of s. The output is deterministic: the same
// spec gives the same bytes, so install can tell whether anything changed.
func Unit(s Spec) (string, error) {
	for _, p := range append(append([]string{s.Binary, s.ConfigPath}, s.DataDirs...), s.ExtraWritable...) {
		if err := checkPath(p); err != nil {
			return "", err
		}
	}
	var b strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }

	w("# DaemonEye %s, written by `daemoneye install --role %s`.", s.Role, s.Role)
	w("# install rewrites this file: put local changes in a drop-in")
	w("# (systemctl edit %s). The settings below follow from", UnitName(s.Role))
	w("# %s; run install again after changing it.", s.ConfigPath)
	w("[Unit]")
	w("Description=DaemonEye %s", describe[s.Role])
	w("Documentation=https://github.com/evilbitlabs/daemoneye")
	w("After=network-online.target")
	w("Wants=network-online.target")
	w("")
	w("[Service]")
	w("Type=exec")
	w("ExecStart=%s %s --config %s", quote(s.Binary), s.Role, quote(s.ConfigPath))
	w("Restart=on-failure")
	w("RestartSec=5s")
	w("SyslogIdentifier=daemoneye-%s", s.Role)
	w("UMask=0077")
	if s.User != "" {
		w("User=%s", s.User)
		w("Group=%s", s.User)
	}
	w("")
	if s.User == "" {
		w("# Root, but only with these capabilities:")
	} else {
		w("# Capabilities (none unless listed):")
	}
	for _, c := range s.Caps {
		w("#   %s: %s", c.Name, c.Why)
	}
	w("CapabilityBoundingSet=%s", strings.Join(s.CapNames(), " "))
	if len(s.Caps) > 0 {
		w("AmbientCapabilities=%s", strings.Join(s.CapNames(), " "))
	}
	w("NoNewPrivileges=yes")
	if s.Memlock {
		w("# Kernels before 5.11 charge eBPF maps to RLIMIT_MEMLOCK.")
		w("LimitMEMLOCK=infinity")
	}
	w("")
	w("# File system: read-only except the role's own directories.")
	w("ProtectSystem=strict")
	for _, d := range s.DataDirs {
		w("ReadWritePaths=%s", quote(d))
	}
	if len(s.ExtraWritable) > 0 {
		w("# Renewed certificates and CRLs are written where the configuration puts them.")
		for _, d := range s.ExtraWritable {
			w("ReadWritePaths=-%s", quote(d))
		}
	}
	if s.Role == "agent" {
		// The agent hashes the binaries of traced processes wherever they
		// run from (/home, /tmp are common for an intruder's tools) and
		// must leave no trace on the host: PrivateTmp would both hide the
		// host's /tmp and create a directory under it.
		w("# The agent reads binaries wherever traced processes run them from, /home and")
		w("# /tmp included, and must leave nothing on the host: no PrivateTmp, read-only")
		w("# /home, and all of /proc.")
		w("ProtectHome=read-only")
	} else {
		w("ProtectHome=yes")
		w("PrivateTmp=yes")
		w("ProtectProc=invisible")
		w("RemoveIPC=yes")
	}
	w("PrivateDevices=yes")
	w("PrivateMounts=yes")
	w("ProtectKernelTunables=yes")
	w("ProtectKernelModules=yes")
	w("ProtectKernelLogs=yes")
	w("ProtectControlGroups=yes")
	w("ProtectClock=yes")
	w("ProtectHostname=yes")
	w("")
	w("# Kernel interfaces.")
	w("RestrictAddressFamilies=%s", strings.Join(s.Families, " "))
	if len(s.Namespaces) > 0 {
		w("RestrictNamespaces=%s", strings.Join(s.Namespaces, " "))
	} else {
		w("RestrictNamespaces=yes")
	}
	w("RestrictRealtime=yes")
	w("RestrictSUIDSGID=yes")
	w("LockPersonality=yes")
	w("MemoryDenyWriteExecute=yes")
	w("SystemCallArchitectures=native")
	w("SystemCallFilter=@system-service")
	w("SystemCallFilter=~@privileged @resources")
	if s.Role == "agent" && hasCap(s.Caps, capBPF.Name) {
		w("SystemCallFilter=bpf")
	}
	w("SystemCallErrorNumber=EPERM")
	w("")
	w("[Install]")
	w("WantedBy=multi-user.target")
	return b.String(), nil
}

var describe = map[string]string{
	"agent":  "agent (host sensor)",
	"proxy":  "proxy (store-and-forward)",
	"center": "Security Center",
}

func hasCap(cs []Capability, name string) bool {
	for _, c := range cs {
		if c.Name == name {
			return true
		}
	}
	return false
}

// checkPath refuses what a unit file cannot carry plainly: a relative path,
// control characters, or characters systemd gives a meaning ($, %, quotes,
// backslash, semicolon).
func checkPath(p string) error {
	if !strings.HasPrefix(p, "/") {
		return fmt.Errorf("%q: not an absolute path", p)
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return fmt.Errorf("%q: control character in a path", p)
		}
	}
	if strings.ContainsAny(p, "$%\"'\\;") {
		return fmt.Errorf("%q: a path in a systemd unit cannot hold $ %% \" ' \\ or ;", p)
	}
	return nil
}

// quote writes a checked path for a unit file: double-quoted when it holds
// a space or a tab.
func quote(p string) string {
	if strings.ContainsAny(p, " \t") {
		return `"` + p + `"`
	}
	return p
}
