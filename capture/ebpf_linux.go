//go:build linux && amd64

package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// The objects are committed (sensor_x86_bpfel.{go,o}) so `go build` needs no
// clang; `make generate` (bpf/generate.sh) runs this and refreshes
// bpf_sources.sha256, which bpfgen_test.go checks.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -target amd64 -tags linux -cflags "-O2 -g -Wall -I../bpf/include" -type ev_hdr -type ev_exit -type ev_conn -type ev_exec -type ev_file -type ev_sock -type traced_proc -type trace_cfg sensor ../bpf/sensor.bpf.c

const (
	// ringPollInterval is how long records may wait in the ring when the
	// kernel side did not wake the reader (see wake_bytes in
	// bpf/sensor.bpf.c): it bounds the sensor's added latency.
	ringPollInterval = 20 * time.Millisecond

	// argvCap is ARGV_CAP in bpf/sensor.h: the scratch space the kernel side
	// has for argv. Larger Options.ArgvMaxBytes are clamped to it.
	argvCap = 32768

	// envCap is ENV_CAP in bpf/sensor.h: the most environment a traced
	// exec can carry.
	envCap = 16384

	// Indexes of the drops map (enum drop_cause in bpf/sensor.h).
	dropRingExec  = 0
	dropRingSmall = 1
	dropTraceFull = 2
	dropRingTrace = 3
	dropCauses    = 4
)

// LossTraceMapFull counts children of traced processes that did not fit
// the kernel's traced map and so escaped their trace.
const LossTraceMapFull = "trace_map_full"

// LossRecursion counts runs of the sensor's programs the kernel skipped
// because one was already running on that CPU (a record lost).
const LossRecursion = "recursion"

// EBPFSource is the eBPF sensor: tp_btf programs on the scheduler's fork,
// exec and exit tracepoints, on inet_sock_set_state for TCP, and on sys_exit
// (filtered to accept) for the accepting process. Programs are loaded and
// attached by NewEBPF, so a caller can fall back to another Source when that
// fails; Close releases them. It is also the Tracer of focused traces
// (trace_linux.go): the same programs record more for traced processes.
type EBPFSource struct {
	log  *slog.Logger
	coll *ebpf.Collection
	rd   *ringbuf.Reader

	mu          sync.Mutex // guards links, drops and finalDrops
	links       []link.Link
	progs       []string           // attached in this order
	drops       *ebpf.Map          // nil once closed
	finalDrops  [dropCauses]uint64 // drops counted when the map was closed
	finalMisses uint64

	dec recordDecoder

	scope *scopeFilter // nil: the whole machine

	traces  *traceSet
	hasher  *exeHasher
	kmu     sync.Mutex // kernel trace state: trace_cfgs, traces_active, userspace writes to traced
	kactive int        // traces with a kernel slot; under kmu

	running      atomic.Bool
	closed       atomic.Bool
	backpressure atomic.Uint64
	decodeErrs   atomic.Uint64
}

var _ Source = (*EBPFSource)(nil)

// NewEBPF loads and attaches the sensor. An error that wraps ErrUnsupported
// means this host cannot run it (no BTF, not privileged, verifier refusal,
// missing hook) and says why.
func NewEBPF(opts Options, log *slog.Logger) (*EBPFSource, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "capture.ebpf")

	sc, err := ParseScope(opts.Scope)
	if err != nil {
		return nil, fmt.Errorf("ebpf sensor: %w", err)
	}
	if _, err := os.Stat("/sys/kernel/btf/vmlinux"); err != nil {
		return nil, fmt.Errorf("ebpf sensor needs kernel BTF (/sys/kernel/btf/vmlinux): %w: %w", err, ErrUnsupported)
	}

	spec, err := loadSensor()
	if err != nil {
		// The embedded object is ours; failing to parse it is a build bug.
		return nil, fmt.Errorf("parse embedded ebpf sensor: %w", err)
	}

	// Zero values mean the defaults, as for every Options user; a negative
	// ArgvMaxBytes turns argv capture off.
	def := DefaultOptions()
	if opts.RingBytes <= 0 {
		opts.RingBytes = def.RingBytes
	}
	if opts.ArgvMaxBytes == 0 {
		opts.ArgvMaxBytes = def.ArgvMaxBytes
	}
	ring := ringSize(opts.RingBytes)
	if ring != opts.RingBytes {
		log.Info("ring buffer size adjusted", "requested", opts.RingBytes, "bytes", ring)
	}
	spec.Maps["events"].MaxEntries = uint32(ring)
	cpus, err := ebpf.PossibleCPU()
	if err != nil {
		return nil, fmt.Errorf("count possible cpus: %w: %w", err, ErrUnsupported)
	}
	spec.Maps["scratch"].MaxEntries = uint32(cpus)

	argvMax := opts.ArgvMaxBytes
	if argvMax < 0 {
		argvMax = 0
	}
	if argvMax > argvCap {
		log.Info("argv cap clamped to the sensor's maximum", "requested", argvMax, "bytes", argvCap)
		argvMax = argvCap
	}
	if err := spec.Variables["argv_max"].Set(uint32(argvMax)); err != nil {
		return nil, fmt.Errorf("set argv_max: %w", err)
	}
	// A burst that fills an eighth of the ring wakes the reader early;
	// below that the reader's poll (ringPollInterval) collects records.
	if err := spec.Variables["wake_bytes"].Set(uint64(ring / 8)); err != nil {
		return nil, fmt.Errorf("set wake_bytes: %w", err)
	}

	// One exit program is loaded: the group_dead argument that recent
	// kernels pass to sched_process_exit is exact; the signal->live test
	// is racy when threads exit together, so it is only the fallback.
	exitProg := "handle_exit"
	if !exitTracepointHasGroupDead() {
		exitProg = "handle_exit_legacy"
		log.Info("sched_process_exit has no group_dead argument; using signal->live")
	}
	for name := range spec.Programs {
		if (name == "handle_exit" || name == "handle_exit_legacy") && name != exitProg {
			delete(spec.Programs, name)
		}
	}

	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			// The full log is long; operators need it to report a kernel
			// that refuses us, so it goes to the log, not the error.
			log.Warn("ebpf verifier refused the sensor", "log", verifierTail(ve, 60))
		}
		if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
			return nil, fmt.Errorf("load ebpf sensor: %s: %w: %w", privilegeHint(), err, ErrUnsupported)
		}
		return nil, fmt.Errorf("load ebpf sensor: %w: %w", err, ErrUnsupported)
	}

	s := &EBPFSource{log: log, coll: coll, drops: coll.Maps["drops"], traces: newTraceSet(nil),
		scope: newScopeFilter(sc, opts.ProcRoot)}
	s.hasher = newExeHasher(s.deliverAux)
	s.dec.bootToWall.Store(bootToWallOffset())

	s.progs = []string{"handle_fork", "handle_exec", exitProg, "handle_set_state", "handle_sys_exit"}
	if err := s.attach(); err != nil {
		s.Close()
		return nil, fmt.Errorf("%w: %w", err, ErrUnsupported)
	}

	rd, err := ringbuf.NewReader(coll.Maps["events"])
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("open ebpf ring buffer: %w: %w", err, ErrUnsupported)
	}
	s.rd = rd
	log.Info("ebpf sensor attached", "ring_bytes", ring, "argv_max", argvMax, "exit_program", exitProg)
	return s, nil
}

// privilegeHint says why the kernel refused to load the sensor: the
// capabilities it needs that this process lacks (a service unit that drops
// one, say), or, when it has them all, what else refuses eBPF.
func privilegeHint() string {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData // version 3 fills two
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return "it needs root or CAP_BPF and CAP_PERFMON"
	}
	has := func(c int) bool { return data[c/32].Effective&(1<<(uint(c)%32)) != 0 }
	if has(unix.CAP_SYS_ADMIN) || (has(unix.CAP_BPF) && has(unix.CAP_PERFMON)) {
		return "refused although this process has CAP_BPF and CAP_PERFMON: kernel lockdown, a seccomp filter or a security module?"
	}
	var missing []string
	for _, c := range []struct {
		n    int
		name string
	}{{unix.CAP_BPF, "CAP_BPF"}, {unix.CAP_PERFMON, "CAP_PERFMON"}} {
		if !has(c.n) {
			missing = append(missing, c.name)
		}
	}
	return "missing " + strings.Join(missing, " and ") + " (the sensor needs CAP_BPF and CAP_PERFMON, or root)"
}

// verifierTail returns the last n lines of a verifier log: where it gave up
// and why. The whole log can be megabytes.
func verifierTail(ve *ebpf.VerifierError, n int) string {
	lines := ve.Log
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("%v\n%s", ve.Cause, strings.Join(lines, "\n"))
}

// attach links every program to its tracepoint. Order matters little, but
// sys_exit goes last: on failure, the window in which every syscall on the
// host pays for us stays as short as possible.
func (s *EBPFSource) attach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.links) > 0 {
		return nil
	}
	for _, name := range s.progs {
		l, err := link.AttachTracing(link.TracingOptions{Program: s.coll.Programs[name]})
		if err != nil {
			for _, l := range s.links {
				l.Close()
			}
			s.links = nil
			return fmt.Errorf("attach %s: %w", name, err)
		}
		s.links = append(s.links, l)
	}
	return nil
}

// detach unlinks the programs but keeps them and the maps loaded, so that
// attach can resume; the benchmark uses it to time the host with and
// without the sensor in alternation.
func (s *EBPFSource) detach() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, l := range s.links {
		errs = append(errs, l.Close())
	}
	s.links = nil
	return errors.Join(errs...)
}

// ringSize returns the smallest power of two that is at least n and at
// least one page, as BPF_MAP_TYPE_RINGBUF requires.
func ringSize(n int) int {
	size := os.Getpagesize()
	for size < n && size < 1<<30 {
		size <<= 1
	}
	return size
}

// exitTracepointHasGroupDead reports whether the kernel's sched_process_exit
// tracepoint passes group_dead (btf_trace_sched_process_exit has three
// parameters: the hidden context, the task, group_dead).
func exitTracepointHasGroupDead() bool {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return false
	}
	var td *btf.Typedef
	if err := spec.TypeByName("btf_trace_sched_process_exit", &td); err != nil {
		return false
	}
	ptr, ok := td.Type.(*btf.Pointer)
	if !ok {
		return false
	}
	proto, ok := ptr.Target.(*btf.FuncProto)
	return ok && len(proto.Params) >= 3
}

// bootToWallOffset returns CLOCK_REALTIME - CLOCK_BOOTTIME in nanoseconds.
// The kernel stamps records with bpf_ktime_get_boot_ns, which keeps counting
// through suspend like start_boottime does; adding this gives Unix time.
// The boot clock is read between two wall-clock reads to halve the error.
func bootToWallOffset() int64 {
	var rt0, bt, rt1 unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &rt0)
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &bt)
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &rt1)
	return rt0.Nano() + (rt1.Nano()-rt0.Nano())/2 - bt.Nano()
}

// Name implements Source.
func (s *EBPFSource) Name() string { return "ebpf" }

// Run implements Source: it decodes ring-buffer records and sends them on out
// until ctx ends. When ctx ends it delivers what is already in the ring and
// returns nil.
func (s *EBPFSource) Run(ctx context.Context, out chan<- Event) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("ebpf source: run called twice")
	}
	if s.closed.Load() {
		return errors.New("ebpf source: run after close")
	}

	// Flush makes a blocked read return what is pending, then ErrFlushed:
	// a clean end without waiting for the next event.
	stop := context.AfterFunc(ctx, func() { _ = s.rd.Flush() })
	defer stop()

	send := func(ev Event) bool {
		select {
		case out <- ev:
			return true
		default:
			// Never wait for the consumer: the ring would fill and the
			// kernel side would drop instead, blind to what was lost.
			s.backpressure.Add(1)
			return false
		}
	}
	// Trace events are numbered and sent under the trace lock, by this
	// goroutine and the hash workers alike.
	s.traces.running(send)
	defer s.traces.running(nil)

	// Background work ends before Run returns: the wall-clock follower,
	// the trace maintenance and the hash workers.
	bg, bgStop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { bgStop(); wg.Wait() }()
	wg.Add(2)
	go func() {
		defer wg.Done()
		s.hasher.run(bg)
	}()
	go func() {
		defer wg.Done()
		clock := time.NewTicker(time.Second)
		defer clock.Stop()
		tick := time.NewTicker(traceTick)
		defer tick.Stop()
		for n := 0; ; n++ {
			select {
			case <-bg.Done():
				return
			case <-clock.C:
				// Follow wall-clock steps (NTP, operator) for event times.
				s.dec.bootToWall.Store(bootToWallOffset())
			case <-tick.C:
				s.traceMaintain(n%4 == 0)
			}
		}
	}()

	if s.scope != nil {
		// The programs are attached: a process is either placed here or
		// seen forking (its record waits in the ring).
		if err := s.scope.load(); err != nil {
			return fmt.Errorf("ebpf source: scope %s: %w", s.scope.sc, err)
		}
	}
	// A traced process outside the scope (a lineage that left it) stays in
	// its trace, which the operator placed; only its baseline is withheld.
	noBaseline := func(Event) bool { return false }

	var rec ringbuf.Record
	var ev Event
	s.rd.SetDeadline(time.Now().Add(ringPollInterval))
	for {
		if err := s.rd.ReadInto(&rec); err != nil {
			switch {
			case errors.Is(err, os.ErrDeadlineExceeded):
				// The ring is drained; sleep until the next poll or an
				// early wakeup from the kernel side.
				s.rd.SetDeadline(time.Now().Add(ringPollInterval))
				continue
			case errors.Is(err, ringbuf.ErrFlushed), errors.Is(err, os.ErrClosed), errors.Is(err, ringbuf.ErrClosed):
				return nil
			}
			return fmt.Errorf("read ebpf ring buffer: %w", err)
		}
		if err := s.dec.decode(rec.RawSample, &ev); err != nil {
			if s.decodeErrs.Add(1) == 1 {
				s.log.Warn("undecodable ebpf record", "err", err, "bytes", len(rec.RawSample))
			}
			continue
		}
		in := s.scope == nil || s.scope.admit(&ev)
		if s.dec.tag != 0 || s.dec.focused {
			if in {
				s.onTraced(&ev, len(rec.RawSample), send)
			} else {
				s.onTraced(&ev, len(rec.RawSample), noBaseline)
			}
			continue
		}
		if in {
			send(ev)
		}
	}
}

// Lost implements Source. Kernel-side reservation failures (the ring was
// full) are read from the per-CPU drops map.
func (s *EBPFSource) Lost() map[string]uint64 {
	drops := s.kernelDrops()
	lost := map[string]uint64{
		LossRingFull:     drops[dropRingExec] + drops[dropRingSmall] + drops[dropRingTrace],
		LossBackpressure: s.backpressure.Load(),
		LossDecode:       s.decodeErrs.Load(),
		LossTraceMapFull: drops[dropTraceFull],
		LossRecursion:    s.recursionMisses(),
	}
	return lost
}

func (s *EBPFSource) kernelDrops() [dropCauses]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drops == nil {
		return s.finalDrops
	}
	return s.readDrops()
}

func (s *EBPFSource) readDrops() [dropCauses]uint64 {
	var total [dropCauses]uint64
	for cause := uint32(0); cause < dropCauses; cause++ {
		var perCPU []uint64
		if err := s.drops.Lookup(cause, &perCPU); err != nil {
			continue
		}
		for _, n := range perCPU {
			total[cause] += n
		}
	}
	return total
}

// recursionMisses sums the runs the kernel skipped because the program was
// already running on that CPU: sys_exit may run preemptible on recent
// kernels, so another task's syscall exit on the same CPU can find it busy.
func (s *EBPFSource) recursionMisses() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.drops == nil {
		return s.finalMisses
	}
	var n uint64
	for _, name := range s.progs {
		if p := s.coll.Programs[name]; p != nil {
			if st, err := p.Stats(); err == nil {
				n += st.RecursionMisses
			}
		}
	}
	return n
}

// Blind implements Source: what this sensor does not report.
func (s *EBPFSource) Blind() []string {
	return []string{
		BlindUDP,
		BlindConnectionsOpenAtStart,
		// Only established connections are reported: a connect that fails
		// (refused, timed out) leaves no event.
		"tcp-connect-failed",
		// accept through io_uring or the 32-bit compat syscalls does not
		// return through the hooked sys_exit numbers.
		"tcp-accept-io-uring-and-compat",
		// A failed execve replaces no image and is not reported.
		"exec-failed",
		// Paths are resolved to the root of the process's mount namespace
		// (not its chroot); a path deeper than 64 components or longer than
		// PATH_MAX is cut at the root end.
		"path-mntns-relative",

		// Focused traces. File and socket records come from the syscalls
		// below; the same work done another way is not seen: io_uring,
		// 32-bit compat syscalls, and other file syscalls (mkdir,
		// link/symlink, truncate, chmod/chown, open_by_handle_at).
		"trace-io-uring-and-compat",
		"trace-other-file-syscalls",
		// Connects of AF_UNIX sockets and closes of UDP sockets; TCP close
		// comes from the state machine.
		"trace-unix-connect-udp-close",
		// A binary replaced or written between the exec and the agent's
		// read is not hashed (Hashes.Error says so).
		"trace-hash-after-rewrite",
	}
}

// Close detaches the programs and frees the maps and the ring buffer. It is
// safe to call more than once and while Run is running (Run then returns).
func (s *EBPFSource) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return nil
	}
	errs := []error{s.detach()}
	s.closeTraces()
	// The counters die with the map; keep their last value for Lost.
	misses := s.recursionMisses()
	s.mu.Lock()
	if s.drops != nil {
		s.finalDrops = s.readDrops()
		s.finalMisses = misses
		s.drops = nil
	}
	s.mu.Unlock()
	// Kernel trace operations check closed under kmu; wait for one in
	// flight before the maps go.
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if s.rd != nil {
		errs = append(errs, s.rd.Close())
	}
	if s.coll != nil {
		s.coll.Close()
	}
	return errors.Join(errs...)
}
