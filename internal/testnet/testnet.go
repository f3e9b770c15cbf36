// Package testnet builds several "hosts" on one Linux machine, each a network
// namespace with its own address, for end-to-end tests and `daemoneye demo`
// (web-1 running apache2, db-1 running sshd, a proxy and the center, each on
// its own host). It sits outside the data flow: it only provides the wires
// that agents, proxies and the center talk over.
//
// # Topology
//
// A Net is one private /24 in 10.0.0.0/8. It owns a hub namespace holding a
// Linux bridge (br0, the gateway .1), and one namespace per host, joined to the
// bridge by a veth pair: the host side is eth0 with the host's address (.2,
// .3, ...) and a default route via .1; the hub side is a bridge port. The hub
// does not forward, so traffic only ever goes between our own namespaces.
//
//	netns deye-<pid>-<n>-web-1   netns deye-<pid>-<n>-db-1
//	eth0 10.a.b.2                eth0 10.a.b.3
//	  |                            |
//	  v1 ------ br0 10.a.b.1 ----- v2 ----- root       netns deye-<pid>-<n>-hub
//	                                         |
//	          deye<pid hex>-<n hex> 10.a.b.254         the test process's netns,
//	                                                   only after ConnectRoot
//
// Namespace names start with Prefix, then the pid of the creating process and
// a per-process counter, so concurrent test binaries never collide and Sweep
// can tell a crashed run's leftovers (dead pid) from a live one's. Interface
// names inside the namespaces are short and fixed (eth0, v1, br0), so the
// 15-byte interface name limit only matters for the one root-side veth.
//
// # The root namespace
//
// Nothing is created in the namespace of the test process (the "root"
// namespace) except by ConnectRoot: it adds one veth end there, addressed
// 10.a.b.254/24 (so also one connected route), so that the test process
// itself, for example a center run in-process, can reach the hosts with plain
// net.Dial and net.Listen. Close deletes it. `ip netns add` itself bind-mounts
// a file per namespace under /run/netns, which is where iproute2 keeps named
// namespaces; Close removes those too.
//
// # Running things on a host
//
// Host.Command returns an *exec.Cmd that runs a program in the host's network
// namespace (only that namespace: mounts, pids and the rest are shared with
// the machine), via nsenter, which execs the program so no extra process
// stays in the tree. Host.Do runs a Go function with the calling OS thread
// switched into the namespace, for net.Listen and net.Dial from the test
// process; Host.Listen, Host.ListenPacket and Host.DialContext wrap it.
//
// # Cleanup
//
// Close kills every process found inside the Net's namespaces (found by
// scanning /proc, so daemons that left their process group, as apache2 and
// sshd do, are found too), deletes the root-side veth and deletes every
// namespace. It is idempotent and, when New was given a testing.TB,
// registered with t.Cleanup, which also runs after t.FailNow and panics.
// Sweep removes what crashed runs left behind.
//
// Everything here needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) and the ip
// command from iproute2; every external command is bounded in time and its
// failure is reported with its command line and output.
package testnet

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Prefix starts the name of every network namespace this package creates.
// Namespaces are named Prefix + "<pid>-<n>-<host>", the hub's host being "hub".
const Prefix = "deye-"

// rootLinkPrefix starts the name of the veth end ConnectRoot puts in the root
// namespace: "deye<pid in hex>-<n in hex>", at most 15 bytes.
const rootLinkPrefix = "deye"

const (
	// cmdTimeout bounds every ip command.
	cmdTimeout = 10 * time.Second
	// linkUpTimeout bounds the wait for a link to become operational.
	linkUpTimeout = 5 * time.Second
	// killTimeout bounds the wait for killed processes to disappear.
	killTimeout = 5 * time.Second

	bridgeName = "br0"
	hostIfName = "eth0"
	hubRootIf  = "root"
	maxHosts   = 252 // .2 through .253; .1 is the hub, .254 the root namespace
)

var (
	// ErrClosed is returned by methods of a Net that has been closed.
	ErrClosed = errors.New("testnet: network closed")
	// ErrSubnetInUse is returned by ConnectRoot when the root namespace
	// already routes part of the Net's subnet.
	ErrSubnetInUse = errors.New("testnet: subnet already routed in the root namespace")
)

var (
	netSeq atomic.Uint32

	// subnets in use by Nets of this process, so two never share one even
	// when the hash below collides.
	subnetsMu sync.Mutex
	subnets   = map[netip.Prefix]bool{}

	validName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,31}$`)
)

// Net is one private network of hosts. Its methods are safe for concurrent
// use, except that none may be called from inside Host.Do.
type Net struct {
	name   string
	id     string // Prefix + "<pid>-<n>"
	pid    int
	seq    uint32
	subnet netip.Prefix
	hubNS  string

	mu       sync.Mutex
	hosts    []*Host
	byName   map[string]*Host
	hubMade  bool
	rootLink string // name of the root-side veth; "" until ConnectRoot
	rootAddr netip.Addr
	closed   bool
	closeErr error
}

// New creates a network with an empty hub. name labels the network in errors
// and logs only; it need not be unique. When t is not nil, Close is
// registered with t.Cleanup and a failing Close fails the test.
func New(t testing.TB, name string) (*Net, error) {
	if t != nil {
		t.Helper()
	}
	if _, err := ipPath(); err != nil {
		return nil, err
	}
	pid := os.Getpid()
	seq := netSeq.Add(1)
	subnet, err := pickSubnet(pid, seq)
	if err != nil {
		return nil, fmt.Errorf("testnet %s: %w", name, err)
	}
	id := fmt.Sprintf("%s%d-%d", Prefix, pid, seq)
	n := &Net{
		name:   name,
		id:     id,
		pid:    pid,
		seq:    seq,
		subnet: subnet,
		hubNS:  id + "-hub",
		byName: map[string]*Host{},
	}
	if err := n.makeHub(); err != nil {
		err = errors.Join(err, n.Close())
		return nil, fmt.Errorf("testnet %s: %w", name, err)
	}
	if t != nil {
		t.Cleanup(func() {
			if err := n.Close(); err != nil {
				t.Errorf("testnet %s: close: %v", name, err)
			}
		})
	}
	return n, nil
}

// Name returns the label given to New.
func (n *Net) Name() string { return n.name }

// ID returns the prefix shared by the names of all the Net's namespaces.
func (n *Net) ID() string { return n.id }

// Subnet returns the network's /24.
func (n *Net) Subnet() netip.Prefix { return n.subnet }

// Gateway returns the hub's address, every host's default route.
func (n *Net) Gateway() netip.Addr { return n.hostAddr(1) }

// HubNamespace returns the name of the hub's network namespace.
func (n *Net) HubNamespace() string { return n.hubNS }

// Hosts returns the hosts in the order they were added.
func (n *Net) Hosts() []*Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]*Host(nil), n.hosts...)
}

// Host returns the host called name, or nil.
func (n *Net) Host(name string) *Host {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.byName[name]
}

func (n *Net) hostAddr(last byte) netip.Addr {
	a := n.subnet.Addr().As4()
	a[3] = last
	return netip.AddrFrom4(a)
}

func (n *Net) makeHub() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if err := ipRun("netns", "add", n.hubNS); err != nil {
		return fmt.Errorf("create hub: %w", err)
	}
	n.hubMade = true
	gw := netip.PrefixFrom(n.Gateway(), n.subnet.Bits()).String()
	steps := [][]string{
		{"-n", n.hubNS, "link", "set", "lo", "up"},
		// The bridge runs without STP, so ports forward as soon as they are up.
		{"-n", n.hubNS, "link", "add", bridgeName, "type", "bridge"},
		{"-n", n.hubNS, "addr", "add", gw, "dev", bridgeName},
		{"-n", n.hubNS, "link", "set", bridgeName, "up"},
	}
	for _, s := range steps {
		if err := ipRun(s...); err != nil {
			return fmt.Errorf("set up hub: %w", err)
		}
	}
	return nil
}

// AddHost creates the host called name: network namespace
// ID()+"-"+name, eth0 joined to the hub, the next free address, lo and eth0
// up and a default route via the hub. It returns once the link is
// operational, so the host is reachable at once. name is lowercase letters,
// digits and dashes, at most 32 bytes, and not "hub".
func (n *Net) AddHost(name string) (*Host, error) {
	if !validName.MatchString(name) || name == "hub" {
		return nil, fmt.Errorf("testnet %s: add host %q: invalid name (want [a-z0-9][a-z0-9-]*, at most 32 bytes, not \"hub\")", n.name, name)
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return nil, fmt.Errorf("testnet %s: add host %s: %w", n.name, name, ErrClosed)
	}
	if n.byName[name] != nil {
		return nil, fmt.Errorf("testnet %s: add host %s: already exists", n.name, name)
	}
	if len(n.hosts) >= maxHosts {
		return nil, fmt.Errorf("testnet %s: add host %s: network full (%d hosts)", n.name, name, maxHosts)
	}
	idx := len(n.hosts) + 1
	h := &Host{
		Name:      name,
		Addr:      n.hostAddr(byte(idx + 1)),
		Namespace: n.id + "-" + name,
		net:       n,
		port:      "v" + strconv.Itoa(idx),
	}
	if err := ipRun("netns", "add", h.Namespace); err != nil {
		return nil, fmt.Errorf("testnet %s: add host %s: %w", n.name, name, err)
	}
	if err := n.setUpHost(h); err != nil {
		// Deleting the namespace also deletes both ends of its veth.
		if derr := deleteNamespace(h.Namespace); derr != nil {
			err = errors.Join(err, derr)
		}
		return nil, fmt.Errorf("testnet %s: add host %s: %w", n.name, name, err)
	}
	n.hosts = append(n.hosts, h)
	n.byName[name] = h
	return h, nil
}

func (n *Net) setUpHost(h *Host) error {
	addr := netip.PrefixFrom(h.Addr, n.subnet.Bits()).String()
	steps := [][]string{
		// Both ends are created directly in their namespaces: nothing
		// appears in the root namespace, not even for a moment.
		{"-n", h.Namespace, "link", "add", hostIfName, "type", "veth", "peer", "name", h.port, "netns", n.hubNS},
		{"-n", n.hubNS, "link", "set", h.port, "master", bridgeName},
		{"-n", n.hubNS, "link", "set", h.port, "up"},
		{"-n", h.Namespace, "link", "set", "lo", "up"},
		{"-n", h.Namespace, "addr", "add", addr, "dev", hostIfName},
		{"-n", h.Namespace, "link", "set", hostIfName, "up"},
		// A default route makes the host look like one on a real LAN to
		// programs that ask "which address would I use to go out".
		{"-n", h.Namespace, "route", "add", "default", "via", n.Gateway().String()},
	}
	for _, s := range steps {
		if err := ipRun(s...); err != nil {
			return err
		}
	}
	return h.waitUp()
}

// ConnectRoot joins the namespace of the calling process (the "root"
// namespace) to the hub, so that the test process itself can reach every
// host, and returns its address in the subnet (.254). This is the only change
// this package makes to the root namespace: one veth end named
// "deye<pid hex>-<n hex>" with that address and its connected route; Close
// removes it. Calling it again returns the same address.
func (n *Net) ConnectRoot() (netip.Addr, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return netip.Addr{}, fmt.Errorf("testnet %s: connect root: %w", n.name, ErrClosed)
	}
	if n.rootLink != "" {
		return n.rootAddr, nil
	}
	if err := n.connectRoot(); err != nil {
		return netip.Addr{}, fmt.Errorf("testnet %s: connect root: %w", n.name, err)
	}
	return n.rootAddr, nil
}

func (n *Net) connectRoot() error {
	link := fmt.Sprintf("%s%x-%x", rootLinkPrefix, n.pid, n.seq)
	if len(link) > unix.IFNAMSIZ-1 {
		return fmt.Errorf("interface name %s longer than %d bytes", link, unix.IFNAMSIZ-1)
	}
	addr := n.hostAddr(254)

	// Two processes must not both route one subnet from the root namespace:
	// check and claim under a lock every user of this package shares.
	unlock, err := lockNetnsDir()
	if err != nil {
		return err
	}
	defer unlock()
	routes, err := rootRoutes()
	if err != nil {
		return err
	}
	for _, r := range routes {
		if r.Overlaps(n.subnet) {
			return fmt.Errorf("%s overlaps route %s: %w", n.subnet, r, ErrSubnetInUse)
		}
	}
	if err := ipRun("link", "add", link, "type", "veth", "peer", "name", hubRootIf, "netns", n.hubNS); err != nil {
		return err
	}
	n.rootLink = link
	steps := [][]string{
		// No IPv6 link-local address: the root side stays as quiet as it can.
		{"link", "set", "dev", link, "addrgenmode", "none"},
		{"addr", "add", netip.PrefixFrom(addr, n.subnet.Bits()).String(), "dev", link},
		{"-n", n.hubNS, "link", "set", hubRootIf, "master", bridgeName},
		{"-n", n.hubNS, "link", "set", hubRootIf, "up"},
		{"link", "set", link, "up"},
	}
	for _, s := range steps {
		if err := ipRun(s...); err != nil {
			return err
		}
	}
	if err := waitOperUp("", link); err != nil {
		return err
	}
	n.rootAddr = addr
	return nil
}

// RootAddr returns the root namespace's address from ConnectRoot, or the
// zero Addr before it.
func (n *Net) RootAddr() netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.rootAddr
}

// Close kills every process in the Net's namespaces, deletes the root-side
// veth if any and deletes every namespace. It keeps going past failures and
// returns them all. Only the first call does anything; later ones return its
// result.
//
// A socket made by Host.Do and still open keeps its namespace alive (without
// a name, and invisible from the root namespace) until it is closed.
func (n *Net) Close() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return n.closeErr
	}
	n.closed = true
	var errs []error
	// Kill first: a process must not outlive its namespace's name, where
	// nothing could find it any more.
	for _, h := range n.hosts {
		if err := killNamespace(h.NamespacePath()); err != nil {
			errs = append(errs, fmt.Errorf("host %s: %w", h.Name, err))
		}
	}
	if n.hubMade {
		if err := killNamespace(nsPath(n.hubNS)); err != nil {
			errs = append(errs, fmt.Errorf("hub: %w", err))
		}
	}
	if n.rootLink != "" {
		if err := ipRun("link", "del", n.rootLink); err != nil && !linkGone(n.rootLink) {
			errs = append(errs, err)
		}
	}
	for i := len(n.hosts) - 1; i >= 0; i-- {
		if err := deleteNamespace(n.hosts[i].Namespace); err != nil {
			errs = append(errs, err)
		}
	}
	if n.hubMade {
		if err := deleteNamespace(n.hubNS); err != nil {
			errs = append(errs, err)
		}
	}
	subnetsMu.Lock()
	delete(subnets, n.subnet)
	subnetsMu.Unlock()
	if len(errs) > 0 {
		n.closeErr = fmt.Errorf("testnet %s: close: %w", n.name, errors.Join(errs...))
	}
	return n.closeErr
}

// pickSubnet chooses a /24 in 10.0.0.0/8 from the pid and counter, skipping
// any this process uses and any the root namespace routes.
func pickSubnet(pid int, seq uint32) (netip.Prefix, error) {
	routes, err := rootRoutes()
	if err != nil {
		return netip.Prefix{}, err
	}
	h := fnv.New32a()
	fmt.Fprintf(h, "%d-%d", pid, seq)
	start := h.Sum32()
	subnetsMu.Lock()
	defer subnetsMu.Unlock()
next:
	for i := uint32(0); i < 1<<16; i++ {
		idx := (start + i) & 0xffff
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(idx >> 8), byte(idx), 0}), 24)
		if subnets[p] {
			continue
		}
		for _, r := range routes {
			if r.Overlaps(p) {
				continue next
			}
		}
		subnets[p] = true
		return p, nil
	}
	return netip.Prefix{}, errors.New("no free /24 in 10.0.0.0/8")
}

// rootRoutes returns the IPv4 destinations routed in the root namespace, in
// all tables, except default routes.
func rootRoutes() ([]netip.Prefix, error) {
	out, err := ipOutput("-4", "-o", "route", "show", "table", "all")
	if err != nil {
		return nil, err
	}
	var routes []netip.Prefix
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		dst := f[0]
		switch dst {
		case "unicast", "local", "broadcast", "multicast", "throw", "unreachable",
			"prohibit", "blackhole", "nat", "anycast":
			if len(f) < 2 {
				continue
			}
			dst = f[1]
		}
		if dst == "default" {
			continue
		}
		p, err := netip.ParsePrefix(dst)
		if err != nil {
			a, aerr := netip.ParseAddr(dst)
			if aerr != nil {
				continue
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		routes = append(routes, p)
	}
	return routes, nil
}

// lockNetnsDir takes an exclusive flock on /run/netns, which `ip netns add`
// has created by now, rather than on a file of our own: a file there would
// show up in `ip netns list`.
func lockNetnsDir() (func(), error) {
	fd, err := unix.Open(netnsDir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", netnsDir, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	for {
		err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(fd, unix.LOCK_UN)
				_ = unix.Close(fd)
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = unix.Close(fd)
			return nil, fmt.Errorf("lock %s: %w", netnsDir, err)
		}
		select {
		case <-ctx.Done():
			_ = unix.Close(fd)
			return nil, fmt.Errorf("lock %s: held by another process for %v", netnsDir, cmdTimeout)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
