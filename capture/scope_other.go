//go:build !linux

package capture

import (
	"fmt"
	"runtime"
)

// resolveScope refuses every scope: namespaces and cgroups are Linux's.
func resolveScope(kind ScopeKind, path string) (Scope, error) {
	return Scope{}, fmt.Errorf("scopes need Linux, not %s: %w", runtime.GOOS, ErrUnsupported)
}

// scopeProcesses keeps every process: no scope resolves here.
func scopeProcesses(sc Scope, procRoot string, procs []Process) []Process { return procs }
