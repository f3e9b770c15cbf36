package testnet

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// netnsDir is where iproute2 pins named network namespaces.
const netnsDir = "/run/netns"

func nsPath(name string) string { return filepath.Join(netnsDir, name) }

var ipPath = sync.OnceValues(func() (string, error) {
	if p, err := exec.LookPath("ip"); err == nil {
		return p, nil
	}
	// Root's PATH usually has sbin, a user's often does not.
	for _, p := range []string{"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"} {
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("testnet: ip command (iproute2) not found")
})

// ipOutput runs ip with args, bounded by cmdTimeout, and returns its standard
// output. The error names the command line and carries its output.
func ipOutput(args ...string) (string, error) {
	ip, err := ipPath()
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, ip, args...)
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	// Run from a fresh goroutine, which is never locked to a thread that
	// Host.Do switched into a host: the child inherits the forking thread's
	// network namespace, and commands without -n must run in the root one.
	done := make(chan error, 1)
	go func() { done <- cmd.Run() }()
	err = <-done
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("timed out after %v: %w", cmdTimeout, err)
		}
		msg := strings.TrimSpace(stderr.String() + stdout.String())
		if msg != "" {
			return "", fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), msg, err)
		}
		return "", fmt.Errorf("ip %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

func ipRun(args ...string) error {
	_, err := ipOutput(args...)
	return err
}

// waitOperUp waits until link in namespace ns ("" for the root namespace)
// reports operational state UP.
func waitOperUp(ns, link string) error {
	args := []string{"-o", "link", "show", "dev", link}
	if ns != "" {
		args = append([]string{"-n", ns}, args...)
	}
	deadline := time.Now().Add(linkUpTimeout)
	for {
		out, err := ipOutput(args...)
		if err != nil {
			return err
		}
		if strings.Contains(out, " state UP ") {
			return nil
		}
		if time.Now().After(deadline) {
			where := ns
			if where == "" {
				where = "the root namespace"
			}
			return fmt.Errorf("link %s in %s not up after %v: %s", link, where, linkUpTimeout, strings.TrimSpace(out))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// linkGone reports whether the root namespace has no link called name.
func linkGone(name string) bool {
	_, err := ipOutput("-o", "link", "show", "dev", name)
	return err != nil && strings.Contains(err.Error(), "does not exist")
}

// deleteNamespace deletes the named network namespace; one that is already
// gone is not an error.
func deleteNamespace(name string) error {
	if _, err := os.Stat(nsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	err := ipRun("netns", "del", name)
	if _, serr := os.Stat(nsPath(name)); err != nil && errors.Is(serr, os.ErrNotExist) {
		return nil // a concurrent Sweep got there first
	}
	return err
}

// killNamespace SIGKILLs every process whose network namespace is the one
// pinned at path, and waits until none is left. Processes are found through
// /proc rather than remembered, so daemons that double-forked into their own
// session are found too. The calling process is never killed.
func killNamespace(path string) error {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil
		}
		return fmt.Errorf("stat %s: %w", path, err)
	}
	deadline := time.Now().Add(killTimeout)
	for {
		pids, err := pidsInNamespace(st.Dev, st.Ino)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still running in %s %v after SIGKILL", pids, path, killTimeout)
		}
		for _, pid := range pids {
			_ = unix.Kill(pid, unix.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pidsInNamespace lists the live processes whose network namespace has
// the given device and inode. Zombies have no namespaces and are not listed.
func pidsInNamespace(dev, ino uint64) ([]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		var st unix.Stat_t
		if unix.Stat("/proc/"+e.Name()+"/ns/net", &st) != nil {
			continue // exited, a zombie, or a kernel thread
		}
		if st.Dev == dev && st.Ino == ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
