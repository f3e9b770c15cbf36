//go:build linux && amd64

package capture

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"lukechampine.com/blake3"

	"github.com/evilbitlabs/daemoneye/internal/testnet"
)

// traceHelperEnv makes TestTraceHelperProcess act as a helper process.
const traceHelperEnv = "DAEMONEYE_TRACE_HELPER"

// TestTraceHelperProcess is the body of helper processes, not a test.
//
//	connect   dial DAEMONEYE_TRACE_ADDR over TCP, write one byte, close
//	refused   dial DAEMONEYE_TRACE_ADDR over TCP, expecting a refusal
//	udp       connect a UDP socket to DAEMONEYE_TRACE_ADDR and send one byte
func TestTraceHelperProcess(t *testing.T) {
	addr := os.Getenv("DAEMONEYE_TRACE_ADDR")
	switch os.Getenv(traceHelperEnv) {
	case "":
		return
	case "connect":
		c, err := net.Dial("tcp4", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		_, _ = c.Write([]byte{1})
		c.Close()
	case "refused":
		if c, err := net.Dial("tcp4", addr); err == nil {
			c.Close()
			os.Exit(3)
		}
	case "udp":
		c, err := net.Dial("udp4", addr)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(3)
		}
		_, _ = c.Write([]byte{1})
		c.Close()
	}
	os.Exit(0)
}

// traceDir makes a directory a traced shell may write to; not t.TempDir, so
// that the paths in the script are short and fixed.
func traceDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "daemoneye-trace-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	dir, err = filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// shell starts /bin/sh -c script blocked on its first "read x" and returns
// it with the writer that releases it (one line per read).
func shell(t *testing.T, script string, env ...string) (*exec.Cmd, io.WriteCloser) {
	t.Helper()
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stderr = os.Stderr
	return cmd, startBlocked(t, cmd)
}

// traceOf returns the events of trace id in the order they were sent.
func (r *ebpfRun) traceOf(id string) []Event {
	return r.all(func(ev Event) bool { return ev.TraceID == id })
}

// checkSeqs fails unless evs are numbered 1..n in order.
func checkSeqs(t *testing.T, evs []Event) {
	t.Helper()
	for i, ev := range evs {
		if ev.TraceSeq != uint64(i+1) {
			t.Fatalf("event %d of the trace (%v of %s) has TraceSeq %d, want %d", i, ev.Kind, ev.Proc, ev.TraceSeq, i+1)
		}
	}
}

// waitNote waits for the trace's note of kind what.
func (r *ebpfRun) waitNote(t *testing.T, id, what string) Event {
	t.Helper()
	return r.wait(t, fmt.Sprintf("%s note of %s", what, id), func(ev Event) bool {
		return ev.TraceID == id && ev.Kind == KindTraceNote && ev.Note.What == what
	})
}

// status returns the status of trace id.
func traceStatus(t *testing.T, src *EBPFSource, id string) TraceStatus {
	t.Helper()
	for _, st := range src.Traces() {
		if st.TraceID == id {
			return st
		}
	}
	t.Fatalf("Traces() has no %s", id)
	return TraceStatus{}
}

// waitChildren waits until pid has at least n children.
func waitChildren(t *testing.T, pid int, n int) []uint32 {
	t.Helper()
	deadline := time.Now().Add(ebpfWait)
	for {
		kids, _ := procChildren(uint32(pid))
		if len(kids) >= n {
			return kids
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d has %d children after %v, want %d", pid, len(kids), ebpfWait, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The full script: the traced shell and a twin outside the lineage do the
// same things in parallel; only the traced one may produce trace events.
func TestTraceLineage(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.Copy(io.Discard, c)
			c.Close()
		}
	}()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The shell creates a file, renames it through a relative path from
	// its cwd (a child mv), creates and unlinks another (a child rm), and
	// starts a helper that connects to our listener.
	script := `read x
echo hello > "$D/a.txt"
cd "$D" && mv a.txt b.txt
: > "$D/c.txt"
rm "$D/c.txt"
"$SELF" -test.run='^TestTraceHelperProcess$'
exit 0`
	env := func(dir string) []string {
		return []string{"D=" + dir, "SELF=" + self, traceHelperEnv + "=connect", "DAEMONEYE_TRACE_ADDR=" + ln.Addr().String()}
	}
	dir, twinDir := traceDir(t), traceDir(t)
	cmd, stdin := shell(t, script, env(dir)...)
	twin, twinIn := shell(t, script, env(twinDir)...)
	root := uint32(cmd.Process.Pid)

	spec := TraceSpec{TraceID: "T-lineage", RootPID: root, Depth: -1,
		CollectFiles: true, CollectNetwork: true, CollectCmdlines: true}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	twinIn.Close()
	waitExit(t, cmd)
	waitExit(t, twin)
	r.wait(t, "traced exit of the root", func(ev Event) bool {
		return ev.TraceID == spec.TraceID && ev.Kind == KindExit && ev.Proc.PID == root
	})
	// The trace ends by itself once its lineage is gone.
	r.waitNote(t, spec.TraceID, "stop")
	evs := r.traceOf(spec.TraceID)
	checkSeqs(t, evs)
	if st := traceStatus(t, r.src, spec.TraceID); st.StopReason != StopLineageExited || st.Events != uint64(len(evs)) {
		t.Errorf("status %+v, want stopped for %s with %d events", st, StopLineageExited, len(evs))
	}

	// Lineage: every traced process is the root or was forked, in the
	// trace, by a traced process.
	traced := map[uint32]bool{root: true}
	for _, ev := range evs {
		if ev.Kind == KindFork {
			if !traced[ev.Parent.PID] {
				t.Errorf("traced fork of %s by %s, which is not in the trace", ev.Proc, ev.Parent)
			}
			traced[ev.Proc.PID] = true
		}
	}
	for _, ev := range evs {
		if ev.Kind != KindTraceNote && !traced[ev.Proc.PID] {
			t.Errorf("trace event %v of %s, a process outside the lineage", ev.Kind, ev.Proc)
		}
	}
	if evs[0].Kind != KindTraceNote || evs[0].Note.What != "start" || evs[0].Proc.PID != root {
		t.Errorf("first event %+v, want the start note of root %d", evs[0], root)
	}

	find := func(what string, match func(Event) bool) Event {
		t.Helper()
		for _, ev := range evs {
			if match(ev) {
				return ev
			}
		}
		t.Fatalf("trace has no %s; it has:\n%s", what, dumpEvents(evs))
		return Event{}
	}
	st, err := os.Stat(filepath.Join(dir, "b.txt"))
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	open := find("open of a.txt", func(ev Event) bool {
		return ev.Kind == KindFileOpen && ev.File.Path == dir+"/a.txt"
	})
	if f := open.File; f.Result < 0 || f.Flags&unix.O_CREAT == 0 || f.Inode != sys.Ino || f.Dev != sys.Dev || open.Proc.PID != root {
		t.Errorf("open = %+v by %s, want a created fd of inode %d dev %d by the root %d", *f, open.Proc, sys.Ino, sys.Dev, root)
	}
	mv := find("rename", func(ev Event) bool { return ev.Kind == KindFileRename })
	if f := mv.File; f.Path != dir+"/a.txt" || f.Path2 != dir+"/b.txt" || f.Result != 0 || mv.Proc.PID == root {
		t.Errorf("rename = %+v by %s, want %s/a.txt -> %s/b.txt (relative to the cwd) by the child mv", *f, mv.Proc, dir, dir)
	}
	rm := find("unlink", func(ev Event) bool { return ev.Kind == KindFileUnlink })
	if f := rm.File; f.Path != dir+"/c.txt" || f.Result != 0 {
		t.Errorf("unlink = %+v, want %s/c.txt with result 0", *f, dir)
	}
	helperExec := find("exec of the helper", func(ev Event) bool { return ev.Kind == KindExec && ev.Exec.Exe == self })
	helper := helperExec.Proc
	if helperExec.Parent.PID != root || !traced[helper.PID] {
		t.Errorf("helper exec %s parent %s, want a traced child of %d", helper, helperExec.Parent, root)
	}
	if !containsPrefix(helperExec.Exec.Env, "D="+dir) {
		t.Errorf("helper exec Env = %q, want D=%s in it", helperExec.Exec.Env, dir)
	}
	sock := find("socket of the helper", func(ev Event) bool {
		return ev.Kind == KindSocket && ev.Proc == helper && ev.Sock.Domain == unix.AF_INET
	})
	if sock.Sock.Type != unix.SOCK_STREAM || sock.Sock.Result < 0 {
		t.Errorf("socket = %+v, want a SOCK_STREAM fd", *sock.Sock)
	}
	lnAddr := netip.MustParseAddrPort(ln.Addr().String())
	conn := find("connect of the helper", func(ev Event) bool {
		return ev.Kind == KindConnect && ev.Proc == helper && ev.Conn.Dst == lnAddr
	})
	if conn.Sock != nil {
		t.Errorf("established TCP connect carries a connect result %+v, want it from the state machine alone", *conn.Sock)
	}
	find("close of the helper's connection", func(ev Event) bool {
		return ev.Kind == KindClose && ev.Proc == helper && *ev.Conn == *conn.Conn
	})
	find("exit of the helper", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc == helper })
	for _, ev := range evs {
		if ev.Kind == KindConnect && ev.Sock == nil && ev.Conn.Dst == lnAddr && ev.Proc != helper {
			t.Errorf("second traced connect to the listener: %+v", ev)
		}
	}

	// The twin: no trace event, no focused record at all.
	twinPids := map[uint32]bool{uint32(twin.Process.Pid): true}
	for _, ev := range r.all(func(Event) bool { return true }) {
		if ev.Kind == KindFork && twinPids[ev.Parent.PID] {
			twinPids[ev.Proc.PID] = true
		}
	}
	for _, ev := range r.all(func(ev Event) bool { return twinPids[ev.Proc.PID] }) {
		if ev.TraceID != "" || ev.File != nil || ev.Sock != nil || ev.Kind == KindExecHash || (ev.Exec != nil && ev.Exec.Env != nil) {
			t.Errorf("the untraced twin produced a trace event: %+v", ev)
		}
	}
	if len(twinPids) < 4 {
		t.Errorf("twin lineage has %d processes in the baseline, want at least 4 (sh, mv, rm, helper)", len(twinPids))
	}
}

func containsPrefix(list []string, s string) bool {
	for _, v := range list {
		if strings.HasPrefix(v, s) {
			return true
		}
	}
	return false
}

func dumpEvents(evs []Event) string {
	var b strings.Builder
	for _, ev := range evs {
		fmt.Fprintf(&b, "  %d %v %s", ev.TraceSeq, ev.Kind, ev.Proc)
		switch {
		case ev.File != nil:
			fmt.Fprintf(&b, " %+v", *ev.File)
		case ev.Sock != nil:
			fmt.Fprintf(&b, " %+v %v", *ev.Sock, ev.Conn)
		case ev.Conn != nil:
			fmt.Fprintf(&b, " %v", *ev.Conn)
		case ev.Exec != nil:
			fmt.Fprintf(&b, " %s %q", ev.Exec.Exe, ev.Exec.Argv)
		case ev.Note != nil:
			fmt.Fprintf(&b, " %+v", *ev.Note)
		case ev.Hashes != nil:
			fmt.Fprintf(&b, " %+v", *ev.Hashes)
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// Descendants that exist when the trace starts are traced too.
func TestTraceExistingDescendants(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	dir := traceDir(t)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// The child blocks on the fifo before the trace starts.
	cmd, stdin := shell(t, `sh -c 'read y < "$F"; echo pre > "$D/pre.txt"; exit 0' & read x; wait`, "D="+dir, "F="+fifo)
	root := cmd.Process.Pid
	kids := waitChildren(t, root, 1)

	spec := TraceSpec{TraceID: "T-existing", RootPID: uint32(root), Depth: 2, CollectFiles: true}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	start := r.waitNote(t, spec.TraceID, "start")
	if start.Note.Pids < 2 || start.Note.Depth != 2 {
		t.Errorf("start note %+v, want at least 2 pids (the root and its child) and depth 2", *start.Note)
	}
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(w, "go")
	w.Close()
	stdin.Close()
	waitExit(t, cmd)
	ev := r.wait(t, "traced open of pre.txt", func(ev Event) bool {
		return ev.Kind == KindFileOpen && ev.File.Path == dir+"/pre.txt"
	})
	if ev.TraceID != spec.TraceID || ev.Proc.PID != kids[0] {
		t.Errorf("open of pre.txt by %s in trace %q, want by the existing child %d in %s", ev.Proc, ev.TraceID, kids[0], spec.TraceID)
	}
	r.waitNote(t, spec.TraceID, "stop")
	checkSeqs(t, r.traceOf(spec.TraceID))
}

// Depth 0 traces the root alone, depth 1 its children but not theirs.
func TestTraceDepth(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	// root > child > grandchild, each opening a file of its own. The
	// trailing "exit 0" keeps dash from exec'ing the last command in place.
	script := `read x
: > "$D/root.txt"
sh -c ': > "$D/child.txt"; sh -c ": > \"$D/grand.txt\"; exit 0"; exit 0'
exit 0`
	for depth, want := range map[int][]string{0: {"root.txt"}, 1: {"root.txt", "child.txt"}, 2: {"root.txt", "child.txt", "grand.txt"}} {
		t.Run(strconv.Itoa(depth), func(t *testing.T) {
			dir := traceDir(t)
			cmd, stdin := shell(t, script, "D="+dir)
			id := fmt.Sprintf("T-depth-%d", depth)
			if err := r.src.StartTrace(TraceSpec{TraceID: id, RootPID: uint32(cmd.Process.Pid), Depth: depth, CollectFiles: true}); err != nil {
				t.Fatal(err)
			}
			stdin.Close()
			waitExit(t, cmd)
			r.waitNote(t, id, "stop")
			evs := r.traceOf(id)
			checkSeqs(t, evs)
			var got []string
			procs := map[uint32]bool{}
			for _, ev := range evs {
				if ev.Kind == KindFileOpen && strings.HasPrefix(ev.File.Path, dir+"/") {
					got = append(got, strings.TrimPrefix(ev.File.Path, dir+"/"))
				}
				if ev.Kind == KindExec {
					procs[ev.Proc.PID] = true
				}
			}
			if strings.Join(got, " ") != strings.Join(want, " ") {
				t.Errorf("depth %d: traced opens %q, want %q", depth, got, want)
			}
			if len(procs) != depth {
				t.Errorf("depth %d: %d traced execs, want %d (one per traced generation below the root)", depth, len(procs), depth)
			}
			// What the trace does not cover is still in the baseline,
			// without trace fields and without focused records.
			for _, ev := range r.all(func(ev Event) bool { return ev.TraceID == "" && ev.File != nil }) {
				if strings.HasPrefix(ev.File.Path, dir) {
					t.Errorf("untraced file record %+v", *ev.File)
				}
			}
		})
	}
}

// loopScript opens $D/f n times without forking, then sleeps in a child.
func loopScript(n int) string {
	return fmt.Sprintf(`read x
i=0
while [ $i -lt %d ]; do : > "$D/f"; i=$((i+1)); done
sleep 0.3
exit 0`, n)
}

func TestTraceCapEventsPerSec(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	dir := traceDir(t)
	cmd, stdin := shell(t, loopScript(400), "D="+dir)
	spec := TraceSpec{TraceID: "T-rate", RootPID: uint32(cmd.Process.Pid), Depth: -1, CollectFiles: true, MaxEventsPerSec: 40}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	waitExit(t, cmd)
	stop := r.waitNote(t, spec.TraceID, "stop")
	evs := r.traceOf(spec.TraceID)
	checkSeqs(t, evs)
	st := traceStatus(t, r.src, spec.TraceID)
	dropped := st.Dropped[DropMaxEventsPerSec]
	opens := 0
	var sampled []TraceNote
	for _, ev := range evs {
		switch {
		case ev.Kind == KindFileOpen && ev.File.Path == dir+"/f":
			opens++
		case ev.Kind == KindTraceNote && ev.Note.What == "sampled":
			sampled = append(sampled, *ev.Note)
		}
	}
	t.Logf("kept %d of 400 opens, dropped %d, notes %+v, status %+v", opens, dropped, sampled, st)
	if opens >= 400 || opens < 20 || dropped == 0 {
		t.Errorf("kept %d of 400 opens and dropped %d at 40/s, want a sample of them and the rest counted", opens, dropped)
	}
	// Userspace samples at the cap; the kernel's valve, at a multiple of
	// it, may have refused part of the flood first. Every note names its
	// cause and counts no more than was dropped for it.
	if len(sampled) == 0 {
		t.Errorf("no sampled note, want one per cause before the next kept event")
	}
	noted := map[string]uint64{}
	for _, n := range sampled {
		noted[n.Reason] += n.Dropped
		if n.Dropped == 0 || (n.Reason != DropMaxEventsPerSec && n.Reason != DropKernelValve) {
			t.Errorf("sampled note %+v, want a count and the cause %s or %s", n, DropMaxEventsPerSec, DropKernelValve)
		}
	}
	var total uint64
	for cause, n := range st.Dropped {
		total += n
		if noted[cause] > n {
			t.Errorf("notes count %d dropped for %s, status %d", noted[cause], cause, n)
		}
	}
	if stop.Note.Dropped != total {
		t.Errorf("stop note says %d dropped, status %d", stop.Note.Dropped, total)
	}
}

func TestTraceCapBytes(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	dir := traceDir(t)
	cmd, stdin := shell(t, loopScript(400), "D="+dir)
	root := uint32(cmd.Process.Pid)
	spec := TraceSpec{TraceID: "T-bytes", RootPID: root, Depth: -1, CollectFiles: true, MaxBytes: 8192}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	stop := r.waitNote(t, spec.TraceID, "stop")
	waitExit(t, cmd)
	if stop.Note.Reason != StopMaxBytes || stop.Note.Bytes > spec.MaxBytes || stop.Note.Bytes == 0 {
		t.Errorf("stop note %+v, want %s with at most %d bytes counted", *stop.Note, StopMaxBytes, spec.MaxBytes)
	}
	st := traceStatus(t, r.src, spec.TraceID)
	if st.Running() || st.StopReason != StopMaxBytes || st.Bytes > spec.MaxBytes {
		t.Errorf("status %+v, want stopped for %s", st, StopMaxBytes)
	}
	// The root's exit comes after the stop: reported, but as baseline.
	exit := r.wait(t, "exit of the root", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == root })
	if exit.TraceID != "" {
		t.Errorf("exit after the trace stopped carries TraceID %q", exit.TraceID)
	}
	evs := r.traceOf(spec.TraceID)
	checkSeqs(t, evs)
	if last := evs[len(evs)-1]; last.Kind != KindTraceNote || last.Note.What != "stop" {
		t.Errorf("last event of the trace is %v, want the stop note", last.Kind)
	}
	assertKernelForgot(t, r.src, spec.TraceID)
}

// assertKernelForgot checks that the kernel holds no trace state for id.
func assertKernelForgot(t *testing.T, src *EBPFSource, id string) {
	t.Helper()
	src.traces.mu.Lock()
	tag := src.traces.byID[id].tag
	src.traces.mu.Unlock()
	deadline := time.Now().Add(ebpfWait)
	for {
		var cfg sensorTraceCfg
		_ = src.coll.Maps["trace_cfgs"].Lookup(tag%maxTraces, &cfg)
		n := 0
		var pid uint32
		var v sensorTracedProc
		it := src.coll.Maps["traced"].Iterate()
		for it.Next(&pid, &v) {
			if v.Tag == tag {
				n++
			}
		}
		if cfg.Tag != tag && n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s stopped but the kernel still has its slot (%v) or %d of its pids", id, cfg.Tag == tag, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTraceCapDuration(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	cmd, stdin := shell(t, "read x; exit 0")
	spec := TraceSpec{TraceID: "T-duration", RootPID: uint32(cmd.Process.Pid), MaxDuration: 300 * time.Millisecond}
	begin := time.Now()
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stop := r.waitNote(t, spec.TraceID, "stop")
	took := time.Since(begin)
	if stop.Note.Reason != StopMaxDuration || took < spec.MaxDuration || took > spec.MaxDuration+2*time.Second {
		t.Errorf("stop note %+v after %v, want %s after %v", *stop.Note, took, StopMaxDuration, spec.MaxDuration)
	}
	if st := traceStatus(t, r.src, spec.TraceID); st.StopReason != StopMaxDuration {
		t.Errorf("status reason %q, want %s", st.StopReason, StopMaxDuration)
	}
	stdin.Close()
	waitExit(t, cmd)
	assertKernelForgot(t, r.src, spec.TraceID)
}

func TestTraceStop(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	dir := traceDir(t)
	cmd := exec.Command("/bin/sh", "-c", `read x; : > "$D/one"; read y; : > "$D/two"; /bin/true; exit 0`)
	cmd.Env = append(os.Environ(), "D="+dir)
	stdin := startBlocked(t, cmd)
	root := uint32(cmd.Process.Pid)
	spec := TraceSpec{TraceID: "T-stop", RootPID: root, Depth: -1, CollectFiles: true}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	if err := r.src.StartTrace(spec); !errors.Is(err, ErrTraceExists) {
		t.Errorf("second StartTrace of %s = %v, want ErrTraceExists", spec.TraceID, err)
	}
	other := spec
	other.TraceID = "T-stop-other"
	if err := r.src.StartTrace(other); !errors.Is(err, ErrTraceConflict) {
		t.Errorf("StartTrace of another trace on the same root = %v, want ErrTraceConflict", err)
	}
	fmt.Fprintln(stdin, "one")
	r.wait(t, "traced open of one", func(ev Event) bool {
		return ev.TraceID == spec.TraceID && ev.Kind == KindFileOpen && ev.File.Path == dir+"/one"
	})
	if err := r.src.StopTrace(spec.TraceID, "operator"); err != nil {
		t.Fatal(err)
	}
	stop := r.waitNote(t, spec.TraceID, "stop")
	if stop.Note.Reason != "operator" {
		t.Errorf("stop reason %q, want operator", stop.Note.Reason)
	}
	if err := r.src.StopTrace(spec.TraceID, "again"); err != nil {
		t.Errorf("StopTrace of a stopped trace = %v, want nil", err)
	}
	if err := r.src.StopTrace("T-none", "x"); !errors.Is(err, ErrTraceUnknown) {
		t.Errorf("StopTrace of an unknown trace = %v, want ErrTraceUnknown", err)
	}
	assertKernelForgot(t, r.src, spec.TraceID)
	fmt.Fprintln(stdin, "two")
	stdin.Close()
	waitExit(t, cmd)
	r.wait(t, "exit of the root", func(ev Event) bool { return ev.Kind == KindExit && ev.Proc.PID == root })
	for _, ev := range r.all(func(ev Event) bool { return ev.File != nil && ev.File.Path == dir+"/two" }) {
		t.Errorf("file record after StopTrace: %+v", ev)
	}
	evs := r.traceOf(spec.TraceID)
	checkSeqs(t, evs)
	if last := evs[len(evs)-1]; last.Kind != KindTraceNote || last.Note.What != "stop" {
		t.Errorf("the trace went on after its stop note: last event %v", last.Kind)
	}
	st := traceStatus(t, r.src, spec.TraceID)
	if st.Running() || st.StopReason != "operator" || st.Events != uint64(len(evs)) {
		t.Errorf("status %+v, want stopped by the operator after %d events", st, len(evs))
	}
	// The id may be used again once stopped.
	cmd2, stdin2 := shell(t, "read x; exit 0")
	spec.RootPID = uint32(cmd2.Process.Pid)
	if err := r.src.StartTrace(spec); err != nil {
		t.Errorf("StartTrace of a stopped trace's id: %v", err)
	}
	stdin2.Close()
}

func TestTraceExecHashes(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	truePath, err := filepath.EvalSymlinks("/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(truePath)
	if err != nil {
		t.Fatal(err)
	}
	wantSHA := sha256.Sum256(b)
	wantB3 := blake3.Sum256(b)
	var st unix.Stat_t
	if err := unix.Stat(truePath, &st); err != nil {
		t.Fatal(err)
	}

	cmd, stdin := shell(t, "read x; /bin/true; /bin/true; exit 0")
	spec := TraceSpec{TraceID: "T-hash", RootPID: uint32(cmd.Process.Pid), Depth: 1, HashExecs: true}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	waitExit(t, cmd)
	r.waitNote(t, spec.TraceID, "stop")
	evs := r.traceOf(spec.TraceID)
	checkSeqs(t, evs)
	// The root executed before the trace: its binary is hashed at start.
	sh, err := filepath.EvalSymlinks("/bin/sh")
	if err != nil {
		t.Fatal(err)
	}
	if h := evs[1].Hashes; evs[1].Kind != KindExecHash || evs[1].Proc.PID != spec.RootPID || h.Path != sh || h.SHA256 == "" {
		t.Errorf("second event %v %+v, want the hash of the root's %s", evs[1].Kind, h, sh)
	}
	var hashes []Event
	execs := map[ProcKey]bool{}
	for _, ev := range evs[2:] {
		switch ev.Kind {
		case KindExec:
			execs[ev.Proc] = true
		case KindExecHash:
			if !execs[ev.Proc] {
				t.Errorf("hash event of %s before its exec", ev.Proc)
			}
			hashes = append(hashes, ev)
		}
	}
	if len(hashes) != 2 {
		t.Fatalf("%d hash events, want 2 (one per /bin/true):\n%s", len(hashes), dumpEvents(evs))
	}
	for i, ev := range hashes {
		h := ev.Hashes
		if h.Error != "" || h.SHA256 != hex.EncodeToString(wantSHA[:]) || h.Blake3 != hex.EncodeToString(wantB3[:]) {
			t.Errorf("hash %d = %+v, want sha256 %x blake3 %x", i, *h, wantSHA, wantB3)
		}
		if h.Path != truePath || h.Inode != st.Ino || h.Dev != st.Dev || h.Size != st.Size {
			t.Errorf("hash %d names %s inode %d dev %d size %d, want %s %d %d %d", i, h.Path, h.Inode, h.Dev, h.Size, truePath, st.Ino, st.Dev, st.Size)
		}
		if want := i > 0; h.Cached != want {
			t.Errorf("hash %d Cached = %v, want %v (the second exec of the same binary hits the cache)", i, h.Cached, want)
		}
	}
	// One for the root's sh, one for true: the second true opens nothing.
	if h := r.src.hasher; h.misses.Load() != 2 || h.opens.Load() != 2 {
		t.Errorf("%d hashes computed and %d opens for sh and two execs of true, want 2 and 2", h.misses.Load(), h.opens.Load())
	}
}

func TestTraceEnvSnapshot(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	const capBytes = 512
	big := "BIG=" + strings.Repeat("x", 2000)
	cmd := exec.Command("/bin/sh", "-c", "read x; /bin/true; exit 0")
	cmd.Env = []string{"DAEMONEYE_MARK=1", "PATH=/usr/bin:/bin", big}
	stdin := startBlocked(t, cmd)
	spec := TraceSpec{TraceID: "T-env", RootPID: uint32(cmd.Process.Pid), Depth: 1, CollectCmdlines: true, EnvMaxBytes: capBytes}
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	waitExit(t, cmd)
	ex := r.wait(t, "traced exec of true", func(ev Event) bool { return ev.TraceID == spec.TraceID && ev.Kind == KindExec })
	env := ex.Exec.Env
	n := 0
	for _, e := range env {
		n += len(e) + 1
	}
	if len(env) < 2 || env[0] != "DAEMONEYE_MARK=1" || !ex.Exec.EnvTruncated || n > capBytes+1 {
		t.Errorf("env = %d entries (%d bytes) truncated %v, first %q; want the marker first, at most %d bytes, cut", len(env), n, ex.Exec.EnvTruncated, env[:min(len(env), 2)], capBytes)
	}
	if last := env[len(env)-1]; !strings.HasPrefix(last, "BIG=xxx") || len(last) >= len(big) {
		t.Errorf("last env entry %.20q... (%d bytes), want the cut start of BIG", last, len(last))
	}
	// A trace that does not collect command lines gets no environment.
	cmd2 := exec.Command("/bin/sh", "-c", "read x; /bin/true; exit 0")
	stdin2 := startBlocked(t, cmd2)
	spec2 := TraceSpec{TraceID: "T-noenv", RootPID: uint32(cmd2.Process.Pid), Depth: 1}
	if err := r.src.StartTrace(spec2); err != nil {
		t.Fatal(err)
	}
	stdin2.Close()
	waitExit(t, cmd2)
	ex2 := r.wait(t, "traced exec of true", func(ev Event) bool { return ev.TraceID == spec2.TraceID && ev.Kind == KindExec })
	if ex2.Exec.Env != nil {
		t.Errorf("env collected by a trace without CollectCmdlines: %q", ex2.Exec.Env)
	}
}

func TestTraceMemSnippet(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	cmd, stdin := shell(t, "read x; exec /bin/sleep 0.3")
	spec := TraceSpec{TraceID: "T-mem", RootPID: uint32(cmd.Process.Pid), MemSnippetBytes: 64}
	// Off by default: the policy must allow it.
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	if got := traceStatus(t, r.src, spec.TraceID).Spec.MemSnippetBytes; got != 0 {
		t.Errorf("default policy let a trace take %d bytes of memory, want 0", got)
	}
	if err := r.src.StopTrace(spec.TraceID, "test"); err != nil {
		t.Fatal(err)
	}
	p := DefaultTracePolicy()
	p.MemSnippets = true
	r.src.SetTracePolicy(p)
	if err := r.src.StartTrace(spec); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	ev := r.wait(t, "exec artifacts of sleep", func(ev Event) bool { return ev.TraceID == spec.TraceID && ev.Kind == KindExecHash })
	if ev.Mem == nil || ev.Mem.Error != "" || len(ev.Mem.Data) != 64 || string(ev.Mem.Data[:4]) != "\x7fELF" {
		t.Errorf("snippet %+v, want the 64 first bytes of the ELF image", ev.Mem)
	}
	waitExit(t, cmd)
}

// Traced connects the TCP state machine does not report: a refused one and
// a UDP one, each reported once with its result.
func TestTraceConnectOutcomes(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close()
	udp, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	for _, tc := range []struct {
		mode, addr string
		proto      Proto
		result     int64
	}{
		{"refused", closed, ProtoTCP, -int64(unix.ECONNREFUSED)},
		{"udp", udp.LocalAddr().String(), ProtoUDP, 0},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			cmd, stdin := shell(t, `read x; "$SELF" -test.run='^TestTraceHelperProcess$'; exit 0`,
				"SELF="+self, traceHelperEnv+"="+tc.mode, "DAEMONEYE_TRACE_ADDR="+tc.addr)
			id := "T-connect-" + tc.mode
			if err := r.src.StartTrace(TraceSpec{TraceID: id, RootPID: uint32(cmd.Process.Pid), Depth: 1, CollectNetwork: true}); err != nil {
				t.Fatal(err)
			}
			stdin.Close()
			waitExit(t, cmd)
			if cmd.ProcessState.ExitCode() != 0 {
				t.Fatalf("helper %s failed", tc.mode)
			}
			r.waitNote(t, id, "stop")
			dst := netip.MustParseAddrPort(tc.addr)
			var got []Event
			for _, ev := range r.traceOf(id) {
				if ev.Kind == KindConnect && ev.Conn.Dst == dst {
					got = append(got, ev)
				}
			}
			if len(got) != 1 || got[0].Sock == nil || got[0].Sock.Result != tc.result || got[0].Conn.Proto != tc.proto {
				t.Fatalf("connects to %s: %s, want one %v with result %d", dst, dumpEvents(got), tc.proto, tc.result)
			}
		})
	}
}

// The traced process can see nothing: no tracer in its status, no new
// mount, no new file in bpffs, no process of ours.
func TestTraceStealth(t *testing.T) {
	r := startEBPF(t, DefaultOptions())
	cmd, stdin := shell(t, "read x; exit 0")
	pid := cmd.Process.Pid
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	statusLine := func(key string) string {
		sc := bufio.NewScanner(strings.NewReader(read(fmt.Sprintf("/proc/%d/status", pid))))
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), key+":") {
				return sc.Text()
			}
		}
		return ""
	}
	// The snapshot is taken once the shell is waiting in its read: just
	// after Start it may still be the Go child before exec, with other fds.
	fdCount := func() int { fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); return len(fds) }
	for i, last := 0, -1; ; i++ {
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		n := fdCount()
		if s := string(st); strings.HasSuffix(exe, "/dash") && strings.Contains(s[strings.LastIndexByte(s, ')'):], ") S ") && n == last {
			break
		}
		if i == 200 {
			t.Fatalf("the shell did not settle in its read within 10s (exe %s)", exe)
		}
		last = n
		time.Sleep(50 * time.Millisecond)
	}
	hostMounts := func() string {
		m, err := testnet.HostMounts()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	mounts := hostMounts()
	bpffs, _ := os.ReadDir("/sys/fs/bpf")
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	kids, _ := procChildren(uint32(os.Getpid()))

	if err := r.src.StartTrace(TraceSpec{TraceID: "T-stealth", RootPID: uint32(pid), Depth: -1,
		CollectFiles: true, CollectNetwork: true, CollectCmdlines: true, HashExecs: true}); err != nil {
		t.Fatal(err)
	}
	if got := statusLine("TracerPid"); got != "TracerPid:\t0" {
		t.Errorf("traced process status %q, want TracerPid 0", got)
	}
	if got := hostMounts(); got != mounts {
		t.Error("the host mount table changed when the trace started")
	}
	if now, _ := os.ReadDir("/sys/fs/bpf"); len(now) != len(bpffs) {
		t.Errorf("bpffs holds %d entries, %d before the trace", len(now), len(bpffs))
	}
	if now, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); len(now) != len(fds) {
		t.Errorf("traced process has %d fds, %d before the trace", len(now), len(fds))
	}
	if now, _ := procChildren(uint32(os.Getpid())); len(now) != len(kids) {
		t.Errorf("the test process has %d children, %d before the trace: the sensor started a process", len(now), len(kids))
	}
	stdin.Close()
	waitExit(t, cmd)
}
