package capture

import (
	"context"
	"errors"
)

// Source produces Events from the kernel. Run sends events on out until ctx
// ends, then returns nil (or the error that stopped it). A Source never blocks
// the host: when out is full it drops the event and counts it under
// LossBackpressure in Lost.
type Source interface {
	// Name is "ebpf" or "proc".
	Name() string
	// Run captures until ctx ends. It must be called at most once.
	Run(ctx context.Context, out chan<- Event) error
	// Lost returns the number of events lost so far, per cause. Causes are
	// the Loss* constants; a Source may add its own.
	Lost() map[string]uint64
	// Blind lists what this source cannot see (for tests and operators),
	// for example "fork-without-exec-argv" or "accept-pid".
	Blind() []string
}

// Loss causes shared by sources.
const (
	LossRingFull     = "ring_full"    // kernel ring buffer had no room
	LossBackpressure = "backpressure" // consumer channel was full
	LossRateLimit    = "rate_limit"   // over the configured events/sec cap
	LossOverrun      = "overrun"      // netlink socket overrun (ENOBUFS)
	LossRaced        = "raced"        // process gone before /proc could be read
	LossDecode       = "decode"       // malformed record from the kernel
)

// ErrUnsupported is returned by a Source constructor when this host cannot run
// it (no BTF, eBPF refused, not root). The caller may fall back to another.
var ErrUnsupported = errors.New("capture source unsupported on this host")

// Options configure a Source.
type Options struct {
	// ArgvMaxBytes caps the argv captured per exec; longer argv is cut and
	// flagged with Exec.ArgvTruncated.
	ArgvMaxBytes int
	// RingBytes is the eBPF ring buffer size (power of two, page multiple).
	RingBytes int
	// ProcRoot is the procfs mount to read, "/proc" by default.
	ProcRoot string
	// Scope limits the source to one host's processes when the machine
	// runs several (namespaces, containers): "" for the whole machine, or
	// a setting ParseScope reads ("netns:/run/netns/web-1"). Events of
	// processes outside it are never emitted.
	Scope string
}

// DefaultOptions are the options used when the configuration sets none.
func DefaultOptions() Options {
	return Options{ArgvMaxBytes: 4096, RingBytes: 8 << 20, ProcRoot: "/proc"}
}
