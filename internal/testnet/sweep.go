package testnet

import (
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

var (
	// Prefix + "<pid>-<n>-<host>"
	nsNameRE = regexp.MustCompile(`^` + regexp.QuoteMeta(Prefix) + `([0-9]+)-([0-9]+)-[a-z0-9-]+$`)
	// rootLinkPrefix + "<pid hex>-<n hex>"
	rootLinkRE = regexp.MustCompile(`^` + regexp.QuoteMeta(rootLinkPrefix) + `([0-9a-f]+)-([0-9a-f]+)$`)
)

// Sweep deletes what crashed runs of this package left behind: network
// namespaces named by our scheme (Prefix + "<pid>-<n>-<host>") whose name
// starts with filter and whose creating process no longer runs, after killing
// any process still inside them, and the root-namespace veths ConnectRoot
// made for those Nets (they go with the hub's name). Namespaces of
// live processes, this one included, are never touched, nor is anything not
// named by our scheme. An empty filter means Prefix; a filter that does not
// start with Prefix is refused. It returns the names it deleted.
//
// A pid reused by an unrelated process makes its namespaces look alive; they
// are left for a later Sweep.
func Sweep(filter string) ([]string, error) {
	if filter == "" {
		filter = Prefix
	}
	if !strings.HasPrefix(filter, Prefix) {
		return nil, fmt.Errorf("testnet: sweep %q: filter must start with %q, the prefix of our namespaces", filter, Prefix)
	}
	var removed []string
	var errs []error

	entries, err := os.ReadDir(netnsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("testnet: sweep: %w", err)
	}
	for _, e := range entries {
		name := e.Name()
		m := nsNameRE.FindStringSubmatch(name)
		if m == nil || !strings.HasPrefix(name, filter) {
			continue
		}
		pid, err := strconv.Atoi(m[1])
		if err != nil || processAlive(pid) {
			continue
		}
		if err := killNamespace(nsPath(name)); err != nil {
			errs = append(errs, fmt.Errorf("namespace %s: %w", name, err))
			continue
		}
		if err := deleteNamespace(name); err != nil {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}

	// A root-side veth normally dies with its hub; it survives only if the
	// hub namespace is still held by something.
	out, err := ipOutput("-o", "link", "show", "type", "veth")
	if err != nil {
		errs = append(errs, err)
	}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
		m := rootLinkRE.FindStringSubmatch(name)
		if m == nil {
			continue
		}
		pid, perr := strconv.ParseInt(m[1], 16, 32)
		seq, serr := strconv.ParseUint(m[2], 16, 32)
		if perr != nil || serr != nil || processAlive(int(pid)) {
			continue
		}
		// The link belongs with its Net's hub, and is swept with it.
		if hub := fmt.Sprintf("%s%d-%d-hub", Prefix, pid, seq); !strings.HasPrefix(hub, filter) {
			continue
		}
		if err := ipRun("link", "del", name); err != nil && !linkGone(name) {
			errs = append(errs, err)
			continue
		}
		removed = append(removed, name)
	}
	if len(errs) > 0 {
		return removed, fmt.Errorf("testnet: sweep: %w", errors.Join(errs...))
	}
	return removed, nil
}

// processAlive reports whether a process with this pid exists (a zombie
// counts: its parent still runs).
func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := unix.Kill(pid, 0)
	return err == nil || errors.Is(err, unix.EPERM)
}
