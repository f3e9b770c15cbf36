package wire

import (
	"crypto/ed25519"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// testKey is a fixed key so fuzz seeds stay valid across runs.
var testKey = ed25519.NewKeyFromSeed([]byte("daemoneye-wire-test-key-32-bytes"))

func testPub() ed25519.PublicKey { return testKey.Public().(ed25519.PublicKey) }

// execEvents returns n events shaped like a busy build host's baseline:
// mostly exec of assorted tools with realistic, partly random argv (temp
// names, hashes, ports), with fork, exit and connect mixed in. Seeded, so
// every run sees the same events.
func execEvents(n int) []capture.Event {
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	type tool struct {
		exe  string
		argv func() []string
	}
	hex := func(k int) string {
		b := make([]byte, k)
		for i := range b {
			b[i] = "0123456789abcdef"[rng.IntN(16)]
		}
		return string(b)
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
	t0 := int64(1_760_000_000_000_000_000)
	now := t0
	for i := range evs {
		now += int64(rng.IntN(40_000))
		pid := uint32(20000 + rng.IntN(400000))
		e := capture.Event{
			Seq:    uint64(i + 1),
			Time:   now,
			Proc:   capture.ProcKey{PID: pid, Start: 9_000_000 + uint64(rng.IntN(1e6))},
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

func mustSeal(tb testing.TB, agent string, seq uint64, evs []capture.Event, compress bool) []byte {
	tb.Helper()
	b, err := SealBatch(agent, seq, evs, testKey, compress)
	if err != nil {
		tb.Fatalf("SealBatch: %v", err)
	}
	return b
}
