package wire

import (
	"crypto/ed25519"
	"fmt"
	"net/netip"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// testKey is a fixed key so fuzz seeds stay valid across runs.
var testKey = ed25519.NewKeyFromSeed([]byte("daemoneye-wire-test-key-32-bytes"))

func testPub() ed25519.PublicKey { return testKey.Public().(ed25519.PublicKey) }

// execEvents returns n events shaped like a busy host's baseline: mostly
// exec with a realistic argv, with fork, exit and connect mixed in.
func execEvents(n int) []capture.Event {
	evs := make([]capture.Event, n)
	t0 := int64(1_760_000_000_000_000_000)
	for i := range evs {
		pid := uint32(20000 + i)
		e := capture.Event{
			Seq:    uint64(i + 1),
			Time:   t0 + int64(i)*13_000,
			Proc:   capture.ProcKey{PID: pid, Start: 9_000_000 + uint64(i)},
			Parent: capture.ProcKey{PID: 1200, Start: 4_000_000},
			Comm:   "bash",
			Source: "ebpf",
		}
		switch i % 8 {
		case 0:
			e.Kind = capture.KindFork
		case 6:
			e.Kind = capture.KindExit
			e.Exit = &capture.Exit{Code: int32(i % 3)}
		case 7:
			e.Kind = capture.KindConnect
			e.Conn = &capture.Conn{
				Proto: capture.ProtoTCP,
				Src:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 2, 3}), uint16(40000+i%20000)),
				Dst:   netip.MustParseAddrPort("[2001:db8::17]:443"),
			}
		default:
			e.Kind = capture.KindExec
			e.Comm = "curl"
			e.Exec = &capture.Exec{
				UID: 1000, GID: 1000, EUID: 1000, EGID: 1000,
				Exe:      "/usr/bin/curl",
				Argv:     []string{"curl", "-fsSL", "--max-time", "10", fmt.Sprintf("https://updates.internal.example/v1/pkg/%d?arch=amd64", i)},
				Cwd:      "/home/ops/deploy",
				TTY:      "pts/3",
				CgroupID: 7321,
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
