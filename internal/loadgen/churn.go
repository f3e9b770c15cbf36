package loadgen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"

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

// Benign programs a server runs all day (none of them matches a rule of
// the default pack, so alerts come only from the probes).
var programs = []struct{ exe, comm string }{
	{"/usr/bin/bash", "bash"}, {"/usr/bin/ls", "ls"}, {"/usr/bin/cat", "cat"}, {"/usr/bin/grep", "grep"},
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

// injected is an event the generator has an agent store out of band (an
// exec from /tmp, a trace event): the agent's own goroutine builds and
// stores it, kicks the shipper, then reports it through stored.
type injected struct {
	make   func(c *churn, now int64) capture.Event
	stored func(ev capture.Event)
}

// emit stores churn at rate events per second until ctx ends, one store
// append every 100ms (the real agent appends what its sensor read in
// batches too), plus whatever the generator injects. The shipper cuts
// batches on its own timer (agent.stream.batch_max_ms), as in a real
// agent; injected events that must travel at once kick it.
func (a *simAgent) emit(ctx context.Context, rate float64, phase time.Duration) {
	select {
	case <-ctx.Done():
		return
	case <-time.After(phase):
	}
	const period = 100 * time.Millisecond
	t := time.NewTicker(period)
	defer t.Stop()
	var budget float64
	var buf []capture.Event
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-a.inject:
			// Built here: the churn belongs to this goroutine.
			ev := in.make(a.churn, time.Now().UnixNano())
			if a.append([]capture.Event{ev}) {
				in.stored(ev)
				a.ship.Kick()
			}
		case <-t.C:
			budget += rate * period.Seconds()
			now := time.Now().UnixNano()
			buf = buf[:0]
			for float64(len(buf)) < budget {
				buf = a.churn.step(now+int64(len(buf)), buf)
			}
			budget -= float64(len(buf))
			a.append(buf)
		}
	}
}

func (a *simAgent) append(evs []capture.Event) bool {
	if len(evs) == 0 {
		return false
	}
	if _, _, err := a.st.Append(evs); err != nil {
		a.errs.Add(1)
		return false
	}
	a.emitted.Add(uint64(len(evs)))
	return true
}
