//go:build linux && amd64

package capture

// The eBPF source's side of focused traces: the kernel maps (traced pids,
// trace slots, the traces_active switch), the walk of a root's existing
// descendants in /proc, and what the reader does with a traced record.
//
// Stealth: all of it is map updates through the bpf(2) syscall and reads of
// /proc by the agent. Nothing attaches to the traced processes (no ptrace:
// TracerPid stays 0), nothing is written, mounted or started, and what
// /proc shows of a traced process does not change.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Mirrors of bpf/sensor.h.
const (
	depthUnlimited = 0xffffffff
	trfFiles       = 1 << 0
	trfNet         = 1 << 1
	trfCmdlines    = 1 << 2
	tracedMax      = 16384
)

var _ Tracer = (*EBPFSource)(nil)

// traceTick is how often the reader's side checks durations, the kernel
// valve's counters and, every fourth tick, which traces have processes
// left.
const traceTick = 250 * time.Millisecond

// SetTracePolicy sets the agent's caps for traces started after the call
// (the agent-wide events/sec cap applies at once).
func (s *EBPFSource) SetTracePolicy(p TracePolicy) {
	s.traces.mu.Lock()
	defer s.traces.mu.Unlock()
	s.traces.setPolicy(p)
}

// StartTrace implements Tracer.
func (s *EBPFSource) StartTrace(spec TraceSpec) error {
	if s.closed.Load() {
		return errors.New("ebpf source: start trace after close")
	}
	if spec.RootPID == 0 || spec.TraceID == "" {
		return fmt.Errorf("trace %q root %d: %w", spec.TraceID, spec.RootPID, ErrTraceSpec)
	}
	rootStart, err := pidStart(spec.RootPID)
	if err != nil {
		return fmt.Errorf("trace %s root %d: %w: %w", spec.TraceID, spec.RootPID, ErrTraceRoot, err)
	}
	if spec.RootStart != 0 && spec.RootStart != rootStart {
		return fmt.Errorf("trace %s root %d started at tick %d, asked for %d: %w", spec.TraceID, spec.RootPID, rootStart, spec.RootStart, ErrTraceRoot)
	}
	t, procs, err := s.startTrace(spec, rootStart)
	if err != nil {
		return err
	}
	if t.spec.HashExecs || t.spec.MemSnippetBytes > 0 {
		s.startArtifacts(t.tag, t.spec, procs)
	}
	return nil
}

// startTrace does the part of StartTrace done under the locks and returns
// the processes the trace took over.
func (s *EBPFSource) startTrace(spec TraceSpec, rootStart uint64) (*traceState, []ProcKey, error) {

	// kmu orders kernel changes; traces.mu is held across them so that
	// the start note is the trace's first event and no record of the
	// trace reaches deliver before the trace exists there. The reader
	// waits on it only for records of traced processes.
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if s.closed.Load() {
		return nil, nil, errors.New("ebpf source: start trace after close")
	}
	s.traces.mu.Lock()
	defer s.traces.mu.Unlock()

	t, err := s.traces.add(spec, ProcKey{PID: spec.RootPID, Start: rootStart})
	if err != nil {
		return nil, nil, err
	}
	eff := t.spec
	cfg := sensorTraceCfg{Tag: t.tag, EnvMax: uint32(eff.EnvMaxBytes), RateMax: kernelValve(eff, s.traces.policy)}
	if eff.CollectFiles {
		cfg.Flags |= trfFiles
	}
	if eff.CollectNetwork {
		cfg.Flags |= trfNet
	}
	if eff.CollectCmdlines {
		cfg.Flags |= trfCmdlines
	}
	slot := t.tag % maxTraces
	if err := s.coll.Maps["trace_cfgs"].Put(slot, cfg); err != nil {
		s.traces.forget(t)
		return nil, nil, fmt.Errorf("trace %s: set kernel slot: %w", spec.TraceID, err)
	}
	s.kactive++
	if err := s.setTracesActive(); err != nil {
		s.kernelUndo(t)
		return nil, nil, err
	}

	depth := uint32(depthUnlimited)
	if spec.Depth >= 0 {
		depth = uint32(min(spec.Depth, depthUnlimited-1))
	}
	if err := s.traceRoot(t, depth); err != nil {
		s.kernelUndo(t)
		return nil, nil, err
	}
	procs := append([]ProcKey{t.root}, s.traceDescendants(t, spec.RootPID, depth)...)
	n := len(procs)
	t.pids = n
	noteDepth := int32(-1)
	if spec.Depth >= 0 {
		noteDepth = int32(min(spec.Depth, 1<<30))
	}
	what := "start"
	if spec.SeqBase > 0 {
		what = "resume"
	}
	s.traces.noteLocked(t, &TraceNote{What: what, Depth: noteDepth, Pids: uint32(n)}, s.traces.now())
	s.log.Info("trace started", "trace_id", spec.TraceID, "root", t.root, "depth", spec.Depth, "pids", n)
	return t, procs, nil
}

// kernelValve is the per-second bound the kernel puts on a trace's
// file and socket records: well above what userspace keeps, so it only
// acts when a lineage floods.
func kernelValve(spec TraceSpec, p TracePolicy) uint32 {
	r := int64(spec.MaxEventsPerSec)
	r = minCap(r, int64(p.AgentEventsPerSec))
	if r <= 0 {
		return 0
	}
	return uint32(min(2*r+100, 1<<31))
}

// traceRoot puts the root in the traced map, unless a running trace has it.
// Called with kmu and traces.mu held.
func (s *EBPFSource) traceRoot(t *traceState, depth uint32) error {
	m := s.coll.Maps["traced"]
	pid := t.root.PID
	var cur sensorTracedProc
	if err := m.Lookup(pid, &cur); err == nil && cur.Tag != t.tag {
		if other := s.traces.byTag[cur.Tag]; other != nil && other.active() {
			return fmt.Errorf("trace %s root %d is in trace %s: %w", t.spec.TraceID, pid, other.spec.TraceID, ErrTraceConflict)
		}
	}
	if err := m.Put(pid, sensorTracedProc{Tag: t.tag, Depth: depth}); err != nil {
		return fmt.Errorf("trace %s: add root %d to the traced map: %w", t.spec.TraceID, pid, err)
	}
	// The root may have exited (and its pid been taken) since it was
	// looked up: then the entry would trace a stranger.
	if st, err := pidStart(pid); err != nil || st != t.root.Start {
		_ = m.Delete(pid)
		return fmt.Errorf("trace %s root %d: %w", t.spec.TraceID, pid, ErrProcessGone)
	}
	return nil
}

// traceDescendants adds the live descendants of root, down to the depth,
// and returns them. A fork the walk misses cannot be lost:
// every parent is in the map before its children are listed, so a child
// forked after the listing was added by the kernel. A child already traced
// (by the kernel's fork hook for this trace, or by another trace, which
// keeps it and its subtree) is not added again.
func (s *EBPFSource) traceDescendants(t *traceState, root uint32, depth uint32) []ProcKey {
	m := s.coll.Maps["traced"]
	type item struct{ pid, depth uint32 }
	queue := []item{{root, depth}}
	var added []ProcKey
	var ppidIndex map[uint32][]uint32 // built on first need, when /proc has no children files
	for len(queue) > 0 && len(added) < tracedMax {
		it := queue[0]
		queue = queue[1:]
		if it.depth == 0 {
			continue
		}
		childDepth := it.depth
		if childDepth != depthUnlimited {
			childDepth--
		}
		kids, ok := procChildren(it.pid)
		if !ok {
			if ppidIndex == nil {
				ppidIndex = procPPIDIndex()
			}
			kids = ppidIndex[it.pid]
		}
		for _, c := range kids {
			start, err := pidStart(c)
			if err != nil {
				continue
			}
			err = m.Update(c, sensorTracedProc{Tag: t.tag, Depth: childDepth}, ebpf.UpdateNoExist)
			if errors.Is(err, ebpf.ErrKeyExist) {
				var cur sensorTracedProc
				if m.Lookup(c, &cur) == nil && cur.Tag == t.tag {
					queue = append(queue, item{c, childDepth})
				}
				continue
			}
			if err != nil {
				s.log.Warn("trace: cannot add a descendant", "trace_id", t.spec.TraceID, "pid", c, "err", err)
				continue
			}
			if st, err := pidStart(c); err != nil || st != start {
				_ = m.Delete(c) // exited meanwhile; its pid may be a stranger's now
				continue
			}
			added = append(added, ProcKey{PID: c, Start: start})
			queue = append(queue, item{c, childDepth})
		}
	}
	return added
}

// kernelUndo rolls back a StartTrace that failed after the kernel slot was
// set. Called with kmu and traces.mu held.
func (s *EBPFSource) kernelUndo(t *traceState) {
	slot := t.tag % maxTraces
	// Only entries with our tag go: on a conflict the root's entry is
	// another trace's.
	_ = s.coll.Maps["trace_cfgs"].Put(slot, sensorTraceCfg{})
	s.kactive--
	_ = s.setTracesActive()
	s.sweepTraced(t.tag)
	s.traces.forget(t)
}

// setTracesActive publishes kactive to the kernel. Called with kmu held.
func (s *EBPFSource) setTracesActive() error {
	if err := s.coll.Variables["traces_active"].Set(uint32(max(s.kactive, 0))); err != nil {
		return fmt.Errorf("set traces_active: %w", err)
	}
	return nil
}

// StopTrace implements Tracer.
func (s *EBPFSource) StopTrace(traceID, reason string) error {
	if reason == "" {
		reason = "stopped"
	}
	s.traces.mu.Lock()
	t := s.traces.byID[traceID]
	if t == nil {
		s.traces.mu.Unlock()
		return fmt.Errorf("stop trace %s: %w", traceID, ErrTraceUnknown)
	}
	if !t.active() {
		s.traces.mu.Unlock()
		return nil
	}
	s.traces.stopLocked(t, reason, s.traces.now())
	s.traces.mu.Unlock()
	s.kernelStop(t)
	s.log.Info("trace stopped", "trace_id", traceID, "reason", reason)
	return nil
}

// kernelStop ends a stopped trace in the kernel: its slot first, which
// stops every trace path for it at once (the fork hook adds no more
// children), then its entries in the traced map.
func (s *EBPFSource) kernelStop(t *traceState) {
	s.kmu.Lock()
	defer s.kmu.Unlock()
	if s.coll == nil || s.closed.Load() || t.kernelDone {
		return
	}
	slot := t.tag % maxTraces
	var cfg sensorTraceCfg
	if err := s.coll.Maps["trace_cfgs"].Lookup(slot, &cfg); err == nil && cfg.Tag == t.tag {
		if err := s.coll.Maps["trace_cfgs"].Put(slot, sensorTraceCfg{}); err != nil {
			s.log.Warn("trace: clear kernel slot", "trace_id", t.spec.TraceID, "err", err)
		}
		s.kactive--
		if err := s.setTracesActive(); err != nil {
			s.log.Warn("trace: update traces_active", "err", err)
		}
	}
	// A fork hook that passed the slot test just before it was cleared
	// can still add a child; the second pass removes it.
	for pass := 0; pass < 2; pass++ {
		if s.sweepTraced(t.tag) == 0 && pass > 0 {
			break
		}
	}
	s.traces.kernelReleased(t)
}

// sweepTraced deletes the traced map entries of tag and returns how many.
func (s *EBPFSource) sweepTraced(tag uint32) int {
	m := s.coll.Maps["traced"]
	var (
		pid  uint32
		v    sensorTracedProc
		dead []uint32
	)
	it := m.Iterate()
	for it.Next(&pid, &v) {
		if v.Tag == tag {
			dead = append(dead, pid)
		}
	}
	for _, p := range dead {
		_ = m.Delete(p)
	}
	return len(dead)
}

// Traces implements Tracer.
func (s *EBPFSource) Traces() []TraceStatus { return s.traces.statuses() }

// traceMaintain runs every traceTick while Run runs: durations, the
// kernel valve's drop counters, and every fourth call the count of
// processes each trace still has (a trace with none left is over).
func (s *EBPFSource) traceMaintain(count bool) {
	var perTag map[uint32]int
	var counted time.Time
	s.kmu.Lock()
	if s.closed.Load() {
		s.kmu.Unlock()
		return
	}
	active := s.kactive
	if count && active > 0 {
		counted = s.traces.now()
		perTag = map[uint32]int{}
		var pid uint32
		var v sensorTracedProc
		it := s.coll.Maps["traced"].Iterate()
		for it.Next(&pid, &v) {
			perTag[v.Tag]++
		}
		if err := it.Err(); err != nil {
			// A partial count must not end a trace.
			s.log.Warn("trace: count traced processes", "err", err)
			perTag = nil
		}
	}
	var cfgs [maxTraces]sensorTraceCfg
	if active > 0 {
		for slot := uint32(0); slot < maxTraces; slot++ {
			_ = s.coll.Maps["trace_cfgs"].Lookup(slot, &cfgs[slot])
		}
	}
	s.kmu.Unlock()

	s.traces.mu.Lock()
	stopped := s.traces.expired()
	now := s.traces.now()
	for _, t := range s.traces.byTag {
		if !t.active() {
			continue
		}
		if c := cfgs[t.tag%maxTraces]; c.Tag == t.tag && c.Dropped > t.kernelDropped {
			t.drop(DropKernelValve, c.Dropped-t.kernelDropped)
			t.kernelDropped = c.Dropped
		}
		if perTag != nil && t.started.Before(counted) {
			t.pids = perTag[t.tag]
			if t.pids > 0 {
				t.emptyCounts = 0
			} else if t.emptyCounts++; t.emptyCounts >= 2 {
				s.traces.stopLocked(t, StopLineageExited, now)
				stopped = append(stopped, t)
			}
		}
	}
	s.traces.mu.Unlock()
	for _, t := range stopped {
		s.kernelStop(t)
	}
}

// onTraced handles a decoded record that carries a trace tag.
func (s *EBPFSource) onTraced(ev *Event, size int, send func(Event) bool) {
	tag := s.dec.tag
	s.traces.mu.Lock()
	v, stopped := s.traces.deliver(tag, ev, int64(size), s.dec.focused)
	var spec TraceSpec
	if v == verdictTrace && ev.Kind == KindExec {
		spec = s.traces.byTag[tag].spec
	}
	s.traces.mu.Unlock()
	if v == verdictBaseline {
		send(*ev)
	}
	if stopped != nil {
		s.kernelStop(stopped)
	}
	if spec.HashExecs || spec.MemSnippetBytes > 0 {
		s.execArtifacts(tag, spec, ev, s.dec.exe)
	}
}

// deliverAux delivers an event made by the source itself (a hash event)
// to the trace with tag.
func (s *EBPFSource) deliverAux(tag uint32, ev Event) {
	s.traces.mu.Lock()
	_, stopped := s.traces.deliver(tag, &ev, hashEventBytes(&ev), true)
	s.traces.mu.Unlock()
	if stopped != nil {
		s.kernelStop(stopped)
	}
}

// execArtifacts starts the KindExecHash event of a traced exec, whose
// binary the kernel identified as exe.
func (s *EBPFSource) execArtifacts(tag uint32, spec TraceSpec, ex *Event, exe fileID) {
	tmpl := Event{Time: ex.Time, Kind: KindExecHash, Proc: ex.Proc, Comm: ex.Comm, Source: "ebpf",
		Hashes: &Hashes{Path: ex.Exec.Exe, Dev: exe.dev, Inode: exe.ino, Size: exe.size}}
	if spec.MemSnippetBytes > 0 {
		tmpl.Mem = readMemSnippet(ex.Proc.PID, exe.ino, spec.MemSnippetBytes)
	}
	if !spec.HashExecs {
		tmpl.Hashes.Error = "not hashed: the trace does not hash executables"
		s.deliverAux(tag, tmpl)
		return
	}
	open := func() (*os.File, error) {
		f, _, err := openExe(ex.Proc.PID, ex.Exec.Exe, exe)
		return f, err
	}
	if done := s.hasher.request(tag, tmpl, exe, open); done != nil {
		s.deliverAux(tag, *done)
	}
}

// startArtifacts hashes the binaries of the processes a trace takes over
// at start: they executed before the trace, so no exec brings their
// hashes. Their identity is what /proc/PID/exe is now.
func (s *EBPFSource) startArtifacts(tag uint32, spec TraceSpec, procs []ProcKey) {
	for _, p := range procs {
		f, id, err := openExe(p.PID, "", fileID{})
		tmpl := Event{Time: time.Now().UnixNano(), Kind: KindExecHash, Proc: p, Source: "ebpf", Hashes: &Hashes{}}
		if err != nil {
			tmpl.Hashes.Error = "not hashed: " + err.Error()
			s.deliverAux(tag, tmpl)
			continue
		}
		if l, err := os.Readlink(f.Name()); err == nil {
			tmpl.Hashes.Path = l
		}
		tmpl.Hashes.Dev, tmpl.Hashes.Inode, tmpl.Hashes.Size = id.dev, id.ino, id.size
		if spec.MemSnippetBytes > 0 {
			tmpl.Mem = readMemSnippet(p.PID, id.ino, spec.MemSnippetBytes)
		}
		used := false
		done := s.hasher.request(tag, tmpl, id, func() (*os.File, error) { used = true; return f, nil })
		if !used {
			f.Close()
		}
		if done != nil {
			s.deliverAux(tag, *done)
		}
	}
}

var errExeReplaced = errors.New("the process runs another binary, is gone, or its binary was written since")

// openExe opens the binary process pid executed, the version the kernel
// recorded as want: through /proc/PID/exe, else by path. The device is not
// compared: on overlayfs stat can report another device than the kernel's
// superblock. A zero want takes whatever /proc/PID/exe is. O_NOATIME:
// reading the file must not change what stat shows of it.
func openExe(pid uint32, path string, want fileID) (*os.File, fileID, error) {
	try := func(name string) (*os.File, fileID, bool) {
		fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOATIME, 0)
		if errors.Is(err, unix.EPERM) {
			fd, err = unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return nil, fileID{}, false
		}
		var st unix.Stat_t
		if unix.Fstat(fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
			unix.Close(fd)
			return nil, fileID{}, false
		}
		id := fileID{dev: st.Dev, ino: st.Ino, ctime: st.Ctim.Nano(), size: st.Size}
		if want != (fileID{}) && (id.ino != want.ino || id.ctime != want.ctime || id.size != want.size) {
			unix.Close(fd)
			return nil, fileID{}, false
		}
		return os.NewFile(uintptr(fd), name), id, true
	}
	proc := "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/exe"
	if f, id, ok := try(proc); ok {
		return f, id, nil
	}
	if strings.HasPrefix(path, "/") && !strings.HasSuffix(path, " (deleted)") {
		if f, id, ok := try(path); ok {
			return f, id, nil
		}
	}
	return nil, fileID{}, errExeReplaced
}

// readMemSnippet reads the first n bytes of the first mapping of the
// executable (inode ino) of process pid, through /proc/PID/mem: a read by
// the agent, not an attach, so the process's TracerPid stays 0.
func readMemSnippet(pid uint32, ino uint64, n int) *MemSnippet {
	dir := "/proc/" + strconv.FormatUint(uint64(pid), 10)
	maps, err := os.ReadFile(dir + "/maps")
	if err != nil {
		return &MemSnippet{Error: "maps: " + err.Error()}
	}
	var addr uint64
	found := false
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 {
			continue
		}
		if i, err := strconv.ParseUint(f[4], 10, 64); err != nil || i != ino {
			continue
		}
		start, _, _ := strings.Cut(f[0], "-")
		if addr, err = strconv.ParseUint(start, 16, 64); err == nil {
			found = true
			break
		}
	}
	if !found {
		return &MemSnippet{Error: "no mapping of the executable"}
	}
	mem, err := os.Open(dir + "/mem")
	if err != nil {
		return &MemSnippet{Addr: addr, Error: "mem: " + err.Error()}
	}
	defer mem.Close()
	buf := make([]byte, n)
	m, err := mem.ReadAt(buf, int64(addr))
	if m == 0 && err != nil {
		return &MemSnippet{Addr: addr, Error: "mem: " + err.Error()}
	}
	return &MemSnippet{Addr: addr, Data: buf[:m]}
}

// pidStart reads a process's start time (clock ticks, field 22 of stat).
func pidStart(pid uint32) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.FormatUint(uint64(pid), 10) + "/stat")
	if err != nil {
		return 0, goneOr(err)
	}
	st, err := parseStat(b)
	if err != nil {
		return 0, err
	}
	return st.Start, nil
}

// procChildren lists the children of every thread of pid. ok is false when
// this kernel has no children files (CONFIG_PROC_CHILDREN).
func procChildren(pid uint32) (kids []uint32, ok bool) {
	dir := "/proc/" + strconv.FormatUint(uint64(pid), 10) + "/task"
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return nil, true // gone: no children to add
	}
	for _, task := range tasks {
		b, err := os.ReadFile(dir + "/" + task.Name() + "/children")
		if errors.Is(err, os.ErrNotExist) {
			if _, serr := os.Stat(dir + "/" + task.Name()); serr == nil {
				return nil, false
			}
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.ParseUint(f, 10, 32); err == nil {
				kids = append(kids, uint32(c))
			}
		}
	}
	return kids, true
}

// procPPIDIndex maps every process to its children from a scan of /proc.
func procPPIDIndex() map[uint32][]uint32 {
	idx := map[uint32][]uint32{}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return idx
	}
	for _, e := range ents {
		pid, err := strconv.ParseUint(e.Name(), 10, 32)
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		if st, err := parseStat(b); err == nil {
			idx[uint32(st.PPID)] = append(idx[uint32(st.PPID)], uint32(pid))
		}
	}
	return idx
}

// closeTraces stops every running trace when the source closes; the kernel
// side goes with the collection.
func (s *EBPFSource) closeTraces() {
	s.traces.mu.Lock()
	defer s.traces.mu.Unlock()
	now := s.traces.now()
	for _, t := range s.traces.byTag {
		if t.active() {
			s.traces.stopLocked(t, StopSourceClosed, now)
		}
		t.kernelDone = true
	}
}
