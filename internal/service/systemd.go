package service

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Booted reports whether systemd runs this system (as sd_booted(3) decides:
// /run/systemd/system exists), and names PID 1 for messages.
func Booted() (bool, string) {
	comm, _ := os.ReadFile("/proc/1/comm")
	name := strings.TrimSpace(string(comm))
	if name == "" {
		name = "unknown"
	}
	st, err := os.Stat("/run/systemd/system")
	return err == nil && st.IsDir(), name
}

// live reports whether root is this running system managed by systemd:
// then systemctl talks to PID 1; otherwise it edits root's files offline.
func live(root string) bool {
	if root != "/" {
		return false
	}
	b, _ := Booted()
	return b
}

// systemctlArgs is the systemctl command for verb on unit: with --now on
// the live system (start or stop too), with --root offline.
func systemctlArgs(root, verb, unit string) []string {
	if live(root) {
		if verb == "enable" || verb == "disable" {
			return []string{verb, "--now", unit}
		}
		return []string{verb, unit}
	}
	return []string{"--root=" + root, verb, unit}
}

func systemctlLine(root, verb, unit string) string {
	return "systemctl " + strings.Join(systemctlArgs(root, verb, unit), " ")
}

func systemctl(ctx context.Context, root, verb, unit string) error {
	args := systemctlArgs(root, verb, unit)
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// Activate tells systemd about a changed unit and, with enable, enables
// (and on the live system starts) it. It returns what it did, or what the
// operator should run where systemd is not PID 1.
func Activate(ctx context.Context, p *Plan, enable bool) ([]string, error) {
	unit := UnitName(p.Role)
	var did []string
	if p.Root == "/" {
		booted, pid1 := Booted()
		if !booted {
			msg := fmt.Sprintf("systemd is not running here (PID 1 is %s): nothing was started", pid1)
			if enable || p.UnitChanged {
				msg += fmt.Sprintf("; where systemd runs: systemctl daemon-reload && systemctl enable --now %s", unit)
			}
			return []string{msg}, nil
		}
		if p.UnitChanged {
			if err := reload(ctx); err != nil {
				return did, err
			}
			did = append(did, "systemctl daemon-reload")
		}
	}
	if !enable {
		if p.Root == "/" && p.UnitChanged {
			did = append(did, fmt.Sprintf("start it with: systemctl enable --now %s (or restart it if it runs)", unit))
		}
		return did, nil
	}
	if !live(p.Root) && enabled(p.Root, unit) {
		return append(did, unit+" is enabled"), nil
	}
	if err := systemctl(ctx, p.Root, "enable", unit); err != nil {
		return did, err
	}
	return append(did, systemctlLine(p.Root, "enable", unit)), nil
}

// Reload makes a live systemd read the unit files again after an uninstall
// removed one; it says what it did, or nothing offline.
func Reload(ctx context.Context, p *Plan) (string, error) {
	if !p.UnitChanged || !live(p.Root) {
		return "", nil
	}
	if err := reload(ctx); err != nil {
		return "", err
	}
	return "systemctl daemon-reload", nil
}

func reload(ctx context.Context) error {
	if out, err := exec.CommandContext(ctx, "systemctl", "daemon-reload").CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl daemon-reload: %w: %s", err, bytes.TrimSpace(out))
	}
	return nil
}
