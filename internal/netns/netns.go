//go:build linux

// Package netns runs a function inside a network namespace: the agent reads
// its scope's addresses there, and the test hosts of internal/testnet run
// their listeners and dials there.
package netns

import (
	"errors"
	"fmt"
	"runtime"

	"golang.org/x/sys/unix"
)

// Do runs fn on a fresh goroutine whose thread is moved into the network
// namespace at path (a /run/netns/NAME or /proc/PID/ns/net file), then
// moved back. Sockets fn opens belong to that namespace; goroutines fn
// starts do not. The caller's thread is never switched, and a thread that
// cannot switch back stays locked, so the runtime ends it with the
// goroutine instead of running others in the wrong namespace. A panic in fn
// is re-raised in the caller.
func Do(path string, fn func() error) error {
	type result struct {
		err      error
		panicked bool
		panicVal any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current network namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		target, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open network namespace: %w", err)}
			return
		}
		err = unix.Setns(target, unix.CLONE_NEWNET)
		unix.Close(target)
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter network namespace %s: %w", path, err)}
			return
		}
		var r result
		func() {
			defer func() {
				if p := recover(); p != nil {
					r.panicked, r.panicVal = true, p
				}
			}()
			r.err = fn()
		}()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			r.err = errors.Join(r.err, fmt.Errorf("leave network namespace %s (thread discarded): %w", path, err))
			done <- r
			return // still locked: the runtime ends the thread
		}
		runtime.UnlockOSThread()
		done <- r
	}()
	r := <-done
	if r.panicked {
		panic(r.panicVal)
	}
	return r.err
}
