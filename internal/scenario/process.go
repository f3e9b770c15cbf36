package scenario

import (
	"fmt"

	"github.com/evilbitlabs/daemoneye/capture"
	"golang.org/x/sys/unix"
)

// Process is a process of the machine, with the scenario host it runs on.
type Process struct {
	// Host is the name of the host whose network namespace the process
	// is in; "" for a process outside the scenario.
	Host string
	capture.Process
}

// Processes reads the machine's process table from /proc and places each
// process on its host. It is the ground truth an agent's view is held
// against.
func (s *Scenario) Processes() ([]Process, error) {
	hosts := map[uint32]string{}
	for _, h := range s.Hosts() {
		var st unix.Stat_t
		if err := unix.Stat(h.NamespacePath(), &st); err != nil {
			return nil, fmt.Errorf("scenario: host %s: %w", h.Name, err)
		}
		hosts[uint32(st.Ino)] = h.Name
	}
	procs, err := capture.ScanProcesses("/proc")
	if err != nil {
		return nil, fmt.Errorf("scenario: %w", err)
	}
	out := make([]Process, len(procs))
	for i, p := range procs {
		out[i] = Process{Host: hosts[p.Exec.NetNS], Process: p}
	}
	return out, nil
}

// FindChain looks in procs for a line of descent on host whose processes
// have the given comms, each the parent of the next, and returns it from
// the eldest; nil when there is none. With several, it returns the one
// whose youngest member has the highest pid.
func FindChain(procs []Process, host string, comms ...string) []Process {
	if len(comms) == 0 {
		return nil
	}
	byKey := make(map[capture.ProcKey]*Process, len(procs))
	for i := range procs {
		byKey[procs[i].Key] = &procs[i]
	}
	var best []Process
	for i := range procs {
		p := &procs[i]
		if p.Host != host || p.Comm != comms[len(comms)-1] {
			continue
		}
		chain := []Process{*p}
		for j := len(comms) - 2; j >= 0; j-- {
			parent := byKey[p.Parent]
			if parent == nil || parent.Host != host || parent.Comm != comms[j] {
				chain = nil
				break
			}
			chain = append([]Process{*parent}, chain...)
			p = parent
		}
		if chain != nil && (best == nil || chain[len(chain)-1].Key.PID > best[len(best)-1].Key.PID) {
			best = chain
		}
	}
	return best
}
