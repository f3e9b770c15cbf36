package testnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"syscall"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/netns"
)

// Host is one network namespace of a Net. Its fields are set by AddHost and
// must not be changed.
type Host struct {
	// Name is the name given to AddHost.
	Name string
	// Addr is the host's address on its eth0.
	Addr netip.Addr
	// Namespace is the name of the host's network namespace, as `ip netns`
	// knows it.
	Namespace string

	net  *Net
	port string // the hub side of the host's veth
}

// NamespacePath returns the file that pins the host's network namespace, for
// nsenter --net or setns(2).
func (h *Host) NamespacePath() string { return nsPath(h.Namespace) }

// Net returns the network the host belongs to.
func (h *Host) Net() *Net { return h.net }

// Command returns a command that runs program name inside the host's network
// namespace, and only that namespace. The process gets its own process group
// and is killed with its whole group when ctx ends, or when the thread that
// started it exits (Pdeathsig); Net.Close kills whatever is still running in
// the namespace, daemons included. ctx must not be nil.
//
// The program is started by nsenter, which execs it: cmd.Process is the
// program itself. Where nsenter is missing, `ip netns exec` is used, which also
// gives the program a private mount namespace with the host's /sys.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if nsenter, err := exec.LookPath("nsenter"); err == nil {
		cmd = exec.CommandContext(ctx, nsenter, append([]string{"--net=" + h.NamespacePath(), "--", name}, args...)...)
	} else {
		ip, err := ipPath()
		if err != nil {
			ip = "ip"
		}
		cmd = exec.CommandContext(ctx, ip, append([]string{"netns", "exec", h.Namespace, name}, args...)...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error {
		err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	cmd.WaitDelay = 2 * time.Second
	return cmd
}

// Do runs fn on an OS thread switched into the host's network namespace, and
// switches the thread back afterwards. Sockets fn creates belong to the host's
// namespace for their whole life, whichever goroutine uses them later; that
// is what Listen and DialContext rely on. Goroutines fn starts run in the
// root namespace, and so does name resolution (use addresses, not names). A
// panic in fn is re-raised in the caller. fn must not call methods of Net.
//
// If the thread cannot be switched back it is left locked, so the Go runtime
// ends it instead of running other goroutines in the wrong namespace.
func (h *Host) Do(fn func() error) error {
	return netns.Do(h.NamespacePath(), fn)
}

// Listen is net.Listen inside the host's network namespace.
func (h *Host) Listen(network, address string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() error {
		var err error
		l, err = net.Listen(network, address)
		return err
	})
	return l, err
}

// ListenPacket is net.ListenPacket inside the host's network namespace.
func (h *Host) ListenPacket(network, address string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, address)
		return err
	})
	return c, err
}

// DialContext dials from inside the host's network namespace. address
// should hold an IP address, not a name (see Do).
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var d net.Dialer
		var err error
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// LinkDown cuts the host off the network, like pulling its cable: the hub
// side of its veth goes down, the host's eth0 loses carrier but keeps its
// address and routes. Packets to and from the host are dropped silently, so
// connection attempts time out and open connections stall until LinkUp.
func (h *Host) LinkDown() error {
	if err := h.net.checkOpen(); err != nil {
		return fmt.Errorf("testnet: host %s: link down: %w", h.Name, err)
	}
	if err := ipRun("-n", h.net.hubNS, "link", "set", h.port, "down"); err != nil {
		return fmt.Errorf("testnet: host %s: link down: %w", h.Name, err)
	}
	return nil
}

// LinkUp restores the link LinkDown cut and returns once traffic flows again.
func (h *Host) LinkUp() error {
	if err := h.net.checkOpen(); err != nil {
		return fmt.Errorf("testnet: host %s: link up: %w", h.Name, err)
	}
	if err := ipRun("-n", h.net.hubNS, "link", "set", h.port, "up"); err != nil {
		return fmt.Errorf("testnet: host %s: link up: %w", h.Name, err)
	}
	if err := h.waitUp(); err != nil {
		return fmt.Errorf("testnet: host %s: link up: %w", h.Name, err)
	}
	return nil
}

// waitUp waits until both ends of the host's veth are operational: carrier
// changes are applied asynchronously by the kernel's linkwatch, up to a
// second late, and until then the host's eth0 drops what it sends.
func (h *Host) waitUp() error {
	if err := waitOperUp(h.net.hubNS, h.port); err != nil {
		return err
	}
	return waitOperUp(h.Namespace, hostIfName)
}

func (n *Net) checkOpen() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return ErrClosed
	}
	return nil
}
