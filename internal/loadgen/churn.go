package loadgen

import (
	"fmt"
	"math/rand/v2"
	"net/netip"

	"github.com/evilbitlabs/daemoneye/capture"
)

// churn is one host's process life: a tree of live processes under a few
// long-lived parents (init, sshd, cron, a shell) that fork, exec, connect
// and exit, as a busy server does. Every process is identified by (pid,
// start) and every fork and exec names its parent, so the center sees real
// lineage.
type churn struct {
	rng     *rand.Rand
	live    []proc
	nextPID uint32
	clock   uint64 // start times: boot-relative nanoseconds, increasing
}

type proc struct {
	key  capture.ProcKey
	comm string
}

// The roots every host starts with; they never exit.
var roots = []proc{
	{capture.ProcKey{PID: 1, Start: 1}, "systemd"},
	{capture.ProcKey{PID: 612, Start: 2}, "sshd"},
	{capture.ProcKey{PID: 640, Start: 3}, "cron"},
	{capture.ProcKey{PID: 901, Start: 4}, "bash"},
}

// Benign programs a server runs all day. None matches a rule of the
// default pack, so alerts come only from the probes: no shell among them,
// since a shell that connects out is the default pack's reverse-shell
// rule (shell-connects-out), and the churn connects from its processes.
var programs = []struct{ exe, comm string }{
	{"/usr/bin/find", "find"}, {"/usr/bin/ls", "ls"}, {"/usr/bin/cat", "cat"}, {"/usr/bin/grep", "grep"},
	{"/usr/bin/sed", "sed"}, {"/usr/bin/date", "date"}, {"/usr/bin/sleep", "sleep"}, {"/usr/bin/awk", "awk"},
	{"/usr/bin/sort", "sort"}, {"/usr/bin/logger", "logger"}, {"/usr/sbin/logrotate", "logrotate"},
	{"/usr/bin/python3", "python3"}, {"/usr/lib/postgresql/15/bin/postgres", "postgres"},
}

const maxLive = 48

func newChurn(seed uint64) *churn {
	return &churn{rng: rand64(seed), live: append([]proc(nil), roots...), nextPID: 1000, clock: 1 << 30}
}

func (c *churn) newProc(comm string) proc {
	c.nextPID++
	if c.nextPID > 4_000_000 {
		c.nextPID = 1000
	}
	c.clock += 1 + uint64(c.rng.IntN(1000))
	return proc{capture.ProcKey{PID: c.nextPID, Start: c.clock}, comm}
}

// step appends the events of one thing happening on the host: a fork and
// exec of a child of a live process, a connect, or an exit.
func (c *churn) step(now int64, out []capture.Event) []capture.Event {
	r := c.rng.Float64()
	spawnable := len(c.live) < maxLive
	switch {
	case spawnable && (r < 0.45 || len(c.live) <= len(roots)):
		parent := c.live[c.rng.IntN(len(c.live))]
		prog := programs[c.rng.IntN(len(programs))]
		child := c.newProc(parent.comm)
		out = append(out, capture.Event{Time: now, Kind: capture.KindFork, Proc: child.key, Parent: parent.key, Comm: parent.comm, Source: "ebpf"})
		child.comm = prog.comm
		out = append(out, capture.Event{Time: now + 1, Kind: capture.KindExec, Proc: child.key, Parent: parent.key, Comm: prog.comm, Source: "ebpf",
			Exec: &capture.Exec{Exe: prog.exe, Argv: []string{prog.comm, fmt.Sprintf("--job=%d", c.rng.IntN(100000))}, Cwd: "/var/lib/app", UID: 1000, GID: 1000}})
		c.live = append(c.live, child)
	case r < 0.6 && len(c.live) > len(roots):
		p := c.live[len(roots)+c.rng.IntN(len(c.live)-len(roots))]
		src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte(c.rng.IntN(256)), byte(1 + c.rng.IntN(254))}), uint16(32768+c.rng.IntN(28000)))
		dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(1 + c.rng.IntN(20))}), []uint16{443, 5432, 53, 8080}[c.rng.IntN(4)])
		out = append(out, capture.Event{Time: now, Kind: capture.KindConnect, Proc: p.key, Comm: p.comm, Source: "ebpf",
			Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: src, Dst: dst}})
	case len(c.live) > len(roots):
		i := len(roots) + c.rng.IntN(len(c.live)-len(roots))
		p := c.live[i]
		c.live[i] = c.live[len(c.live)-1]
		c.live = c.live[:len(c.live)-1]
		out = append(out, capture.Event{Time: now, Kind: capture.KindExit, Proc: p.key, Comm: p.comm, Source: "ebpf", Exit: &capture.Exit{}})
	}
	return out
}

// probe is an exec from /tmp by a child of the host's shell: the
// exec-from-temp-dir rule of the default pack matches it.
func (c *churn) probe(now int64, n int) capture.Event {
	parent := roots[3]
	p := c.newProc("bash")
	return capture.Event{Time: now, Kind: capture.KindExec, Proc: p.key, Parent: parent.key, Comm: "payload", Source: "ebpf",
		Exec: &capture.Exec{Exe: fmt.Sprintf("/tmp/.loadgen/payload-%d", n), Argv: []string{"payload"}, Cwd: "/tmp", UID: 33, GID: 33}}
}

// seedEvents are the exec events (source "seed") a starting agent ships
// for the processes already running (as roles/agent does after its /proc
// scan): here the host's roots, so that the center knows them, and a
// trace can be requested on them, from the start.
func seedEvents(now int64) []capture.Event {
	evs := make([]capture.Event, 0, len(roots))
	for _, r := range roots {
		parent := capture.ProcKey{}
		if r.key.PID != 1 {
			parent = roots[0].key
		}
		evs = append(evs, capture.Event{Time: now, Kind: capture.KindExec, Proc: r.key, Parent: parent, Comm: r.comm, Source: "seed",
			Exec: &capture.Exec{Exe: "/usr/sbin/" + r.comm, Argv: []string{r.comm}, Cwd: "/"}})
	}
	return evs
}

// bigHost is a host with many live processes (the concept's "10k
// processes"): a random recursive tree under the roots, as a busy build or
// container host has, shipped as seed events. deep is a process at the
// tree's greatest depth (for ancestor queries); its depth is counted from
// systemd.
type bigHost struct {
	events []capture.Event
	deep   capture.ProcKey
	depth  int
}

func newBigHost(c *churn, n int, now int64) bigHost {
	type node struct {
		p     proc
		depth int
	}
	nodes := make([]node, 0, n+len(roots))
	for i, r := range roots {
		nodes = append(nodes, node{r, min(i, 1)})
	}
	var h bigHost
	for range n {
		parent := nodes[c.rng.IntN(len(nodes))]
		prog := programs[c.rng.IntN(len(programs))]
		child := c.newProc(prog.comm)
		nd := node{child, parent.depth + 1}
		nodes = append(nodes, nd)
		h.events = append(h.events, capture.Event{Time: now, Kind: capture.KindExec, Proc: child.key, Parent: parent.p.key, Comm: prog.comm, Source: "seed",
			Exec: &capture.Exec{Exe: prog.exe, Argv: []string{prog.comm, fmt.Sprintf("--worker=%d", len(nodes))}, Cwd: "/srv", UID: 1000, GID: 1000}})
		if nd.depth > h.depth {
			h.depth, h.deep = nd.depth, child.key
		}
	}
	return h
}
