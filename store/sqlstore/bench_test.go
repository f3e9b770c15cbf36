package sqlstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// fleetGen produces realistic process trees on one host: init, a set of
// services, ssh sessions with shells running commands (some of which fork
// further: make -> cc -> as, sh -c pipelines), cron jobs, and network
// activity (curl/ssh connects, nginx accepts). Pids count up and wrap at
// pid_max, so long runs reuse pids as real hosts do.
type fleetGen struct {
	host     string
	rng      *rand.Rand
	pid      uint32
	tick     uint64 // clock ticks since boot: process start
	now      int64
	seq      uint64
	init     capture.ProcKey
	services []capture.ProcKey
	out      []capture.Event
	sample   []capture.ProcKey // processes to run lineage queries on
	n        int               // processes created
}

const pidMax = 32768

func newFleetGen(host string, seed uint64) *fleetGen {
	g := &fleetGen{host: host, rng: rand.New(rand.NewPCG(seed, 7)), pid: 300, tick: 1000,
		now: time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixNano()}
	g.init = capture.ProcKey{PID: 1, Start: 1}
	g.emit(capture.Event{Kind: capture.KindExec, Proc: g.init, Comm: "systemd", Source: "seed",
		Exec: &capture.Exec{Exe: "/usr/lib/systemd/systemd", Argv: []string{"/sbin/init"}}})
	for _, svc := range []string{"sshd", "cron", "nginx", "postgres", "dockerd", "rsyslogd", "chronyd", "containerd"} {
		g.services = append(g.services, g.spawn(g.init, "/usr/sbin/"+svc, svc, "-D"))
	}
	return g
}

func (g *fleetGen) emit(ev capture.Event) {
	g.now += int64(50_000 + g.rng.IntN(500_000))
	g.seq++
	ev.Time, ev.Seq = g.now, g.seq
	if ev.Source == "" {
		ev.Source = "ebpf"
	}
	g.out = append(g.out, ev)
}

func (g *fleetGen) next() capture.ProcKey {
	g.pid++
	if g.pid >= pidMax {
		g.pid = 300
	}
	g.tick += uint64(1 + g.rng.IntN(5))
	return capture.ProcKey{PID: g.pid, Start: g.tick}
}

// spawn forks a child of parent and execs exe in it.
func (g *fleetGen) spawn(parent capture.ProcKey, exe, comm string, args ...string) capture.ProcKey {
	k := g.next()
	g.n++
	g.emit(capture.Event{Kind: capture.KindFork, Proc: k, Parent: parent})
	argv := append([]string{comm}, args...)
	g.emit(capture.Event{Kind: capture.KindExec, Proc: k, Parent: parent, Comm: comm,
		Exec: &capture.Exec{UID: 1000, GID: 1000, EUID: 1000, EGID: 1000, Exe: exe, Argv: argv, Cwd: "/home/dev",
			TTY: "pts/1", CgroupID: 4242, PidNS: 4026531836, NetNS: 4026531840, MntNS: 4026531841}})
	if g.n%97 == 0 && len(g.sample) < 200 {
		g.sample = append(g.sample, k)
	}
	return k
}

func (g *fleetGen) exit(k capture.ProcKey) {
	g.emit(capture.Event{Kind: capture.KindExit, Proc: k, Exit: &capture.Exit{Code: int32(g.rng.IntN(3) / 2)}})
}

func (g *fleetGen) connect(k capture.ProcKey, kind capture.Kind, port uint16) {
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, byte(g.rng.IntN(8)), byte(1 + g.rng.IntN(250))}), uint16(32768+g.rng.IntN(28000)))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 2, byte(g.rng.IntN(8)), byte(1 + g.rng.IntN(250))}), port)
	g.emit(capture.Event{Kind: kind, Proc: k, Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: src, Dst: dst}})
	g.emit(capture.Event{Kind: capture.KindClose, Proc: k, Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: src, Dst: dst}})
}

var commands = []struct{ exe, comm, arg string }{
	{"/usr/bin/ls", "ls", "-la"}, {"/usr/bin/cat", "cat", "/etc/hosts"}, {"/usr/bin/grep", "grep", "-r TODO ."},
	{"/usr/bin/git", "git", "status"}, {"/usr/bin/ps", "ps", "aux"}, {"/usr/bin/vim", "vim", "main.go"},
	{"/usr/bin/curl", "curl", "-s https://10.2.0.9/health"}, {"/usr/bin/ssh", "ssh", "db-3"},
	{"/usr/bin/python3", "python3", "job.py"}, {"/usr/bin/make", "make", "-j2"},
}

// activity appends one unit of work: an ssh session, a cron job or a web
// request.
func (g *fleetGen) activity() {
	switch r := g.rng.IntN(10); {
	case r < 5: // interactive session
		sshd := g.spawn(g.services[0], "/usr/sbin/sshd", "sshd", "-R")
		sh := g.spawn(sshd, "/bin/bash", "bash", "-l")
		for range 2 + g.rng.IntN(8) {
			c := commands[g.rng.IntN(len(commands))]
			k := g.spawn(sh, c.exe, c.comm, c.arg)
			switch c.comm {
			case "make": // make -> sh -> cc -> as
				s := g.spawn(k, "/bin/sh", "sh", "-c", "cc -c x.c")
				cc := g.spawn(s, "/usr/bin/cc", "cc", "-c", "x.c")
				as := g.spawn(cc, "/usr/bin/as", "as", "-o", "x.o")
				g.exit(as)
				g.exit(cc)
				g.exit(s)
			case "curl":
				g.connect(k, capture.KindConnect, 443)
			case "ssh":
				g.connect(k, capture.KindConnect, 22)
			}
			g.exit(k)
		}
		g.exit(sh)
		g.exit(sshd)
	case r < 8: // cron job: sh -c 'a | b'
		job := g.spawn(g.services[1], "/usr/sbin/cron", "cron", "-f")
		sh := g.spawn(job, "/bin/sh", "sh", "-c", "backup.sh | logger")
		a := g.spawn(sh, "/usr/local/bin/backup.sh", "backup.sh")
		b := g.spawn(sh, "/usr/bin/logger", "logger")
		tar := g.spawn(a, "/usr/bin/tar", "tar", "czf", "/var/backups/x.tgz", "/etc")
		g.exit(tar)
		g.exit(a)
		g.exit(b)
		g.exit(sh)
		g.exit(job)
	default: // web requests on nginx: accepts only
		for range 1 + g.rng.IntN(4) {
			g.connect(g.services[2], capture.KindAccept, 443)
		}
	}
}

// batch returns the next batch of about n events.
func (g *fleetGen) batch(seq uint64, n int) *wire.Batch {
	for len(g.out) < n {
		g.activity()
	}
	evs := slices.Clone(g.out[:n])
	g.out = append(g.out[:0], g.out[n:]...)
	b := &wire.Batch{AgentID: g.host, Seq: seq, TSStart: evs[0].Time, TSEnd: evs[len(evs)-1].Time, Events: evs}
	b.Root = sha256.Sum256(binary.BigEndian.AppendUint64([]byte(g.host), seq)) // stands in for the Merkle root
	return b
}

func percentile(d []time.Duration, p float64) time.Duration {
	slices.Sort(d)
	return d[min(len(d)-1, int(float64(len(d))*p))]
}

// cpuTime is the process's user+system CPU time: on a shared 2-core
// machine a steadier figure than wall time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// BenchmarkStore ingests ~10^6 events (SQLSTORE_BENCH_EVENTS) from 50
// hosts in 2000-event batches, round robin as the center sees them, then
// runs lineage queries on the result. Run it with -benchtime 1x.
func BenchmarkStore(b *testing.B) {
	total := envInt("SQLSTORE_BENCH_EVENTS", 1_000_000)
	const hosts, perBatch = 50, 2000
	ctx := context.Background()
	for b.Loop() {
		s := openTest(b)
		gens := make([]*fleetGen, hosts)
		for i := range gens {
			gens[i] = newFleetGen(fmt.Sprintf("host-%02d", i), uint64(i))
		}
		cpu0 := cpuTime()
		var (
			ingestTime time.Duration
			batchLat   []time.Duration
			events     int
		)
		for seq := uint64(1); events < total; seq++ {
			for _, g := range gens {
				bt := g.batch(seq, perBatch)
				t0 := time.Now()
				if err := s.IngestBatch(ctx, bt); err != nil {
					b.Fatal(err)
				}
				d := time.Since(t0)
				ingestTime += d
				batchLat = append(batchLat, d)
				events += len(bt.Events)
			}
		}
		b.ReportMetric(float64(events)/ingestTime.Seconds(), "events/s")
		b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(events), "cpu-µs/event")
		b.ReportMetric(float64(events), "events")
		b.ReportMetric(float64(percentile(batchLat, 0.99).Microseconds())/1000, "batch-p99-ms")

		var anc, desc []time.Duration
		var ancRows, descRows int
		for _, g := range gens {
			for _, k := range g.sample {
				if _, ok, err := s.Process(ctx, g.host, k.PID, k.Start); err != nil || !ok {
					continue // its fork is in the generator's unsent remainder
				}
				t0 := time.Now()
				a, err := s.Ancestors(ctx, g.host, k.PID, k.Start)
				anc = append(anc, time.Since(t0))
				if err != nil || len(a) == 0 {
					b.Fatalf("ancestors of %s/%s: %d, %v", g.host, k, len(a), err)
				}
				ancRows += len(a)
				t0 = time.Now()
				d, err := s.Descendants(ctx, g.host, k.PID, k.Start, 0)
				desc = append(desc, time.Since(t0))
				if err != nil {
					b.Fatal(err)
				}
				descRows += len(d)
			}
		}
		// Whole session trees: everything under a host's sshd.
		var tree []time.Duration
		var treeRows int
		for _, g := range gens[:10] {
			t0 := time.Now()
			d, err := s.Descendants(ctx, g.host, g.services[0].PID, g.services[0].Start, 0)
			tree = append(tree, time.Since(t0))
			if err != nil {
				b.Fatal(err)
			}
			treeRows += len(d)
		}
		us := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }
		b.ReportMetric(us(percentile(anc, 0.5)), "anc-p50-µs")
		b.ReportMetric(us(percentile(anc, 0.99)), "anc-p99-µs")
		b.ReportMetric(float64(ancRows)/float64(len(anc)), "anc-rows")
		b.ReportMetric(us(percentile(desc, 0.5)), "desc-p50-µs")
		b.ReportMetric(us(percentile(desc, 0.99)), "desc-p99-µs")
		b.ReportMetric(float64(descRows)/float64(len(desc)), "desc-rows")
		b.ReportMetric(us(percentile(tree, 0.5))/1000, "sshd-tree-p50-ms")
		b.ReportMetric(float64(treeRows)/float64(len(tree)), "sshd-tree-rows")
		var procs int
		if err := s.ro.QueryRow("SELECT count(*) FROM processes").Scan(&procs); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(procs), "processes")
		if fi, err := os.Stat(s.Path()); err == nil {
			b.ReportMetric(float64(fi.Size())/float64(events), "B/event")
		}
		b.Logf("%d events from %d hosts in %v of ingest; %d lineage samples", events, hosts, ingestTime, len(anc))
	}
}
