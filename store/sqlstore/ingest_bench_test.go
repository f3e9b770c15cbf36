package sqlstore

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// randomEvents is the event mix of the center ingest benchmark
// (roles/treetest realisticEvents, copied so that this package's benchmark
// stands alone): 70% execs with realistic argv, 10% forks, 10% exits, 10%
// connects, every event on a random process of a large pid space, so that
// nearly every event is a new process row. That is the hard case for the
// process table: no locality at all.
func randomEvents(seed uint64, n int, t0 int64) []capture.Event {
	rng := rand.New(rand.NewPCG(seed, 42))
	hex := func(k int) string {
		b := make([]byte, k)
		for i := range b {
			b[i] = "0123456789abcdef"[rng.IntN(16)]
		}
		return string(b)
	}
	type tool struct {
		exe  string
		argv func() []string
	}
	tools := []tool{
		{"/usr/bin/git", func() []string {
			return []string{"git", "-C", "/srv/build/" + hex(8), "fetch", "--depth=1", "origin", hex(40)}
		}},
		{"/usr/bin/curl", func() []string {
			return []string{"curl", "-fsSL", "--max-time", "10", fmt.Sprintf("https://updates.internal.example/v1/pkg/%d?arch=amd64&sig=%s", rng.IntN(1e6), hex(24))}
		}},
		{"/usr/lib/gcc/x86_64-linux-gnu/14/cc1", func() []string {
			return []string{"cc1", "-quiet", "-I", "include", "src/" + hex(6) + ".c", "-O2", "-o", "/tmp/cc" + hex(6) + ".s"}
		}},
		{"/usr/bin/python3.13", func() []string {
			return []string{"python3", "-m", "pytest", "-q", "tests/test_" + hex(5) + ".py", "-k", "not slow"}
		}},
		{"/bin/sh", func() []string { return []string{"sh", "-c", "test -f /run/lock/" + hex(10) + " || exit 1"} }},
		{"/usr/bin/ssh", func() []string {
			return []string{"ssh", "-o", "BatchMode=yes", "-p", fmt.Sprint(1024 + rng.IntN(60000)), "deploy@10.20." + fmt.Sprint(rng.IntN(255)) + "." + fmt.Sprint(rng.IntN(255)), "uptime"}
		}},
	}
	comm := func(exe string) string {
		c := exe[strings.LastIndexByte(exe, '/')+1:]
		return c[:min(len(c), 15)]
	}
	evs := make([]capture.Event, n)
	now := t0
	for i := range evs {
		now += int64(rng.IntN(40_000))
		e := capture.Event{
			Seq:    uint64(i + 1),
			Time:   now,
			Proc:   capture.ProcKey{PID: uint32(20000 + rng.IntN(400000)), Start: 9_000_000 + uint64(rng.IntN(1e6))},
			Parent: capture.ProcKey{PID: uint32(1000 + rng.IntN(5000)), Start: 4_000_000 + uint64(rng.IntN(1e5))},
			Comm:   "make",
			Source: "ebpf",
		}
		switch r := rng.IntN(10); {
		case r == 0:
			e.Kind = capture.KindFork
		case r == 1:
			e.Kind = capture.KindExit
			e.Exit = &capture.Exit{Code: int32(rng.IntN(3))}
		case r == 2:
			e.Kind = capture.KindConnect
			e.Conn = &capture.Conn{
				Proto: capture.ProtoTCP,
				Src:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 2, 3}), uint16(32768+rng.IntN(28000))),
				Dst:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 20, byte(rng.IntN(255)), byte(rng.IntN(255))}), 443),
			}
		default:
			tl := tools[rng.IntN(len(tools))]
			e.Kind = capture.KindExec
			e.Comm = comm(tl.exe)
			e.Exec = &capture.Exec{
				UID: 1000, GID: 1000, EUID: 1000, EGID: 1000,
				Exe:      tl.exe,
				Argv:     tl.argv(),
				Cwd:      "/srv/build/" + hex(8),
				CgroupID: 7321 + uint64(rng.IntN(50)),
				PidNS:    4026531836, NetNS: 4026531840, MntNS: 4026531841,
			}
		}
		evs[i] = e
	}
	return evs
}

// BenchmarkIngest ingests SQLSTORE_INGEST_BATCHES (default 100) batches of
// 2000 events into a fresh store, the shape of the center ingest benchmark
// (roles/treetest BenchmarkCenterIngest, SQL side): "random" is its event
// mix; "fleet" is the process-tree generator of BenchmarkStore, one host.
// Run with -benchtime 1x; it reports events/s over the whole run and the
// median batch rate of the first and last tenth (the store grows from
// empty).
func BenchmarkIngest(b *testing.B) {
	nb := envInt("SQLSTORE_INGEST_BATCHES", 100)
	const per = 2000
	mk := map[string]func() []*wire.Batch{
		"random": func() []*wire.Batch {
			all := randomEvents(5, nb*per, time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC).UnixNano())
			out := make([]*wire.Batch, nb)
			for i := range out {
				evs := all[i*per : (i+1)*per]
				out[i] = &wire.Batch{AgentID: "web-1", Seq: uint64(i + 1), TSStart: evs[0].Time, TSEnd: evs[len(evs)-1].Time, Events: evs}
				out[i].Root = sha256.Sum256(binary.BigEndian.AppendUint64(nil, uint64(i)))
			}
			return out
		},
		"fleet": func() []*wire.Batch {
			g := newFleetGen("host-00", 1)
			out := make([]*wire.Batch, nb)
			for i := range out {
				out[i] = g.batch(uint64(i+1), per)
			}
			return out
		},
	}
	for _, name := range []string{"random", "fleet"} {
		b.Run(name, func(b *testing.B) {
			batches := mk[name]()
			ctx := context.Background()
			for b.Loop() {
				b.StopTimer()
				s := openTest(b)
				b.StartTimer()
				var total time.Duration
				cpu0 := cpuTime()
				rates := make([]float64, 0, len(batches))
				events := 0
				for _, bt := range batches {
					t0 := time.Now()
					if err := s.IngestBatch(ctx, bt); err != nil {
						b.Fatal(err)
					}
					d := time.Since(t0)
					total += d
					rates = append(rates, float64(len(bt.Events))/d.Seconds())
					events += len(bt.Events)
				}
				b.ReportMetric(float64(events)/total.Seconds(), "events/s")
				b.ReportMetric(float64((cpuTime()-cpu0).Nanoseconds())/1e3/float64(events), "cpu-µs/event")
				if k := len(rates) / 10; k > 0 {
					b.ReportMetric(medianF(rates[:k]), "first-tenth-events/s")
					b.ReportMetric(medianF(rates[len(rates)-k:]), "last-tenth-events/s")
				}
			}
		})
	}
}

func medianF(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}
