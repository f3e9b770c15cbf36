//go:build linux

package capture

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// clockTicks is USER_HZ, the unit of the times in /proc/PID/stat. It is part
// of the Linux ABI (sysconf(_SC_CLK_TCK)) and 100 on every architecture.
const clockTicks = 100

// ErrProcessGone is returned when a process exited (or was reaped) before
// /proc could be read.
var ErrProcessGone = errors.New("process gone")

var errMalformed = errors.New("malformed procfs record")

// statInfo is what DaemonEye uses from /proc/PID/stat.
type statInfo struct {
	PID   int
	Comm  []byte // aliases the parsed buffer
	State byte
	PPID  int
	TTY   uint32 // tty_nr, the encoded controlling terminal device
	Start uint64 // field 22: start time in clock ticks since boot
}

// parseStat parses /proc/PID/stat. The comm field is in parentheses and may
// itself hold ')', spaces or newlines, so it ends at the last ')'.
func parseStat(b []byte) (statInfo, error) {
	var s statInfo
	open := bytes.IndexByte(b, '(')
	end := bytes.LastIndexByte(b, ')')
	if open < 1 || end < open {
		return s, fmt.Errorf("stat: no comm in parentheses: %w", errMalformed)
	}
	pid, ok := parseUint(bytes.TrimSpace(b[:open]))
	if !ok || pid > 1<<31 {
		return s, fmt.Errorf("stat: bad pid: %w", errMalformed)
	}
	s.PID = int(pid)
	s.Comm = b[open+1 : end]
	// Fields after comm, numbered as in proc(5): 3 state, 4 ppid, 7 tty_nr,
	// 22 starttime.
	rest := b[end+1:]
	for field := 3; field <= 22; field++ {
		rest = bytes.TrimLeft(rest, " ")
		end := bytes.IndexByte(rest, ' ')
		if end < 0 {
			end = len(rest)
		}
		tok := bytes.TrimRight(rest[:end], "\n")
		rest = rest[end:]
		if len(tok) == 0 {
			return s, fmt.Errorf("stat: %d fields, want at least 22: %w", field-1, errMalformed)
		}
		switch field {
		case 3:
			s.State = tok[0]
		case 4:
			v, ok := parseUint(tok)
			if !ok || v > 1<<31 {
				return s, fmt.Errorf("stat: bad ppid: %w", errMalformed)
			}
			s.PPID = int(v)
		case 7:
			v, ok := parseInt(tok)
			if !ok {
				return s, fmt.Errorf("stat: bad tty_nr: %w", errMalformed)
			}
			s.TTY = uint32(v)
		case 22:
			v, ok := parseUint(tok)
			if !ok {
				return s, fmt.Errorf("stat: bad starttime: %w", errMalformed)
			}
			s.Start = v
		}
	}
	return s, nil
}

// statusIDs are the real and effective ids from /proc/PID/status.
type statusIDs struct {
	UID, EUID, GID, EGID uint32
}

// parseStatus reads the Uid: and Gid: lines of /proc/PID/status ("Uid:\treal
// \teffective\tsaved\tfs").
func parseStatus(b []byte) (statusIDs, error) {
	var ids statusIDs
	var haveUID, haveGID bool
	for len(b) > 0 && !(haveUID && haveGID) {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		var rid, eid *uint32
		switch {
		case bytes.HasPrefix(line, []byte("Uid:")):
			rid, eid, haveUID = &ids.UID, &ids.EUID, true
		case bytes.HasPrefix(line, []byte("Gid:")):
			rid, eid, haveGID = &ids.GID, &ids.EGID, true
		default:
			continue
		}
		f := bytes.Fields(line[4:])
		if len(f) < 2 {
			return ids, fmt.Errorf("status: short %q line: %w", line[:4], errMalformed)
		}
		r, ok1 := parseUint(f[0])
		e, ok2 := parseUint(f[1])
		if !ok1 || !ok2 || r > 1<<32-1 || e > 1<<32-1 {
			return ids, fmt.Errorf("status: bad %q line: %w", line[:4], errMalformed)
		}
		*rid, *eid = uint32(r), uint32(e)
	}
	if !haveUID || !haveGID {
		return ids, fmt.Errorf("status: no Uid or Gid line: %w", errMalformed)
	}
	return ids, nil
}

// parseCmdline splits /proc/PID/cmdline into argv. b holds what was read,
// up to max+1 bytes: more than max means the argv was cut. Arguments are
// NUL-terminated, but a process that rewrote its argv (setproctitle) may
// leave the last one unterminated; kernel threads and zombies have none.
// Arguments keep their raw bytes, valid UTF-8 or not.
func parseCmdline(b []byte, max int) (argv []string, truncated bool) {
	if max > 0 && len(b) > max {
		b, truncated = b[:max], true
	}
	if len(b) == 0 {
		return nil, truncated
	}
	if b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	n := bytes.Count(b, []byte{0}) + 1
	argv = make([]string, 0, n)
	// One string for the whole argv, sliced: one allocation, not one per arg.
	all := string(b)
	for range n - 1 {
		i := strings.IndexByte(all, 0)
		argv = append(argv, all[:i])
		all = all[i+1:]
	}
	return append(argv, all), truncated
}

// parseNSLink parses a namespace link target such as "pid:[4026531836]".
func parseNSLink(b []byte) (kind []byte, inode uint64, ok bool) {
	i := bytes.Index(b, []byte(":["))
	if i <= 0 || len(b) < i+4 || b[len(b)-1] != ']' {
		return nil, 0, false
	}
	ino, ok := parseUint(b[i+2 : len(b)-1])
	if !ok {
		return nil, 0, false
	}
	return b[:i], ino, true
}

// parseCgroupV2 finds the cgroup v2 path in /proc/PID/cgroup: the line
// "0::PATH". Lines are "hierarchy-ID:controllers:path" and the path may
// itself contain ':'.
func parseCgroupV2(b []byte) (path []byte, ok bool) {
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if p, found := bytes.CutPrefix(line, []byte("0::")); found && len(p) > 0 && p[0] == '/' {
			return p, true
		}
	}
	return nil, false
}

// ttyName names the device encoded in a stat tty_nr: "pts/3", "tty1",
// "ttyS0", "console", or "dev(major,minor)"; "" for no terminal.
func ttyName(nr uint32) string {
	if nr == 0 {
		return ""
	}
	major := (nr >> 8) & 0xfff
	minor := (nr & 0xff) | ((nr >> 12) & 0xfff00)
	switch {
	case major >= 136 && major <= 143:
		return "pts/" + strconv.FormatUint(uint64((major-136)<<8|minor), 10)
	case major == 4 && minor < 64:
		return "tty" + strconv.FormatUint(uint64(minor), 10)
	case major == 4:
		return "ttyS" + strconv.FormatUint(uint64(minor-64), 10)
	case major == 5 && minor == 1:
		return "console"
	}
	return fmt.Sprintf("dev(%d,%d)", major, minor)
}

func parseUint(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

func parseInt(b []byte) (int64, bool) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	v, ok := parseUint(b)
	if !ok || v > 1<<63 || (!neg && v == 1<<63) {
		return 0, false
	}
	if neg {
		return -int64(v), true
	}
	return int64(v), true
}

// bootWallNs is the wall clock time of boot in Unix nanoseconds, the origin
// of the start times in /proc/PID/stat (CLOCK_BOOTTIME counts suspend, like
// the kernel's start_boottime).
func bootWallNs() int64 {
	var rt, bt unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &rt)
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &bt)
	return rt.Nano() - bt.Nano()
}

// ticksToWall converts a start time in clock ticks since boot to Unix ns.
func ticksToWall(boot int64, ticks uint64) int64 {
	return boot + int64(ticks)*(1e9/clockTicks)
}

// procReader reads processes from one procfs mount. It reuses its buffers,
// so one reader serves one goroutine at a time.
type procReader struct {
	root     string
	argvMax  int
	boot     int64  // wall clock ns at boot
	cgMount  string // cgroup v2 mount point, "" when none
	buf      []byte // stat, status, cgroup
	cmd      []byte // cmdline: argvMax+1
	link     []byte // readlink target
	cgroupID map[string]uint64
}

func newProcReader(root string, argvMax int, cgMount string, boot int64) *procReader {
	if root == "" {
		root = "/proc"
	}
	if argvMax <= 0 {
		argvMax = DefaultOptions().ArgvMaxBytes
	}
	return &procReader{
		root:     root,
		argvMax:  argvMax,
		boot:     boot,
		cgMount:  cgMount,
		buf:      make([]byte, 8192),
		cmd:      make([]byte, argvMax+1),
		link:     make([]byte, unix.PathMax),
		cgroupID: make(map[string]uint64),
	}
}

// cgroup2Mount finds where the cgroup v2 hierarchy is mounted, from
// ROOT/self/mountinfo ("" when it is not).
func cgroup2Mount(root string) string {
	b, err := os.ReadFile(root + "/self/mountinfo")
	if err != nil {
		return ""
	}
	for len(b) > 0 {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		// id parent maj:min root mountpoint opts [optional...] - fstype src opts
		sep := bytes.Index(line, []byte(" - "))
		if sep < 0 {
			continue
		}
		post := bytes.Fields(line[sep+3:])
		pre := bytes.Fields(line[:sep])
		if len(post) < 1 || string(post[0]) != "cgroup2" || len(pre) < 5 || string(pre[3]) != "/" {
			continue
		}
		return unescapeMountinfo(pre[4])
	}
	return ""
}

// unescapeMountinfo undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMountinfo(b []byte) string {
	out := make([]byte, 0, len(b))
	for i := 0; i < len(b); i++ {
		if b[i] == '\\' && i+3 < len(b) {
			if v, err := strconv.ParseUint(string(b[i+1:i+4]), 8, 8); err == nil {
				out = append(out, byte(v))
				i += 3
				continue
			}
		}
		out = append(out, b[i])
	}
	return string(out)
}

// openPid opens ROOT/PID as a directory handle. Reading through one handle
// keeps every file of one process: if the pid is reused meanwhile, reads
// through the old handle fail instead of mixing two processes.
func (r *procReader) openPid(pid int) (int, error) {
	fd, err := unix.Open(r.root+"/"+strconv.Itoa(pid), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, goneOr(err)
	}
	return fd, nil
}

// goneOr maps the errors of a vanished process to ErrProcessGone.
func goneOr(err error) error {
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) {
		return ErrProcessGone
	}
	return err
}

// readAt reads a whole /proc file below dirfd into buf (at most len(buf)
// bytes).
func readAt(dirfd int, name string, buf []byte) ([]byte, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		n += m
		// Files in /proc are generated whole: a read that did not fill the
		// buffer reached the end, and asking again would only cost a
		// syscall per file.
		if m == 0 || n < len(buf) {
			break
		}
	}
	return buf[:n], nil
}

// readlinkAt returns the target of a symlink below dirfd ("" on error).
func (r *procReader) readlinkAt(dirfd int, name string) []byte {
	n, err := unix.Readlinkat(dirfd, name, r.link)
	if err != nil || n <= 0 {
		return nil
	}
	return r.link[:n]
}

// nsInode reads a namespace link (e.g. "ns/pid") and returns its inode.
func (r *procReader) nsInode(dirfd int, name string) uint32 {
	_, ino, ok := parseNSLink(r.readlinkAt(dirfd, name))
	if !ok || ino > 1<<32-1 {
		return 0
	}
	return uint32(ino)
}

// readStat reads only /proc/PID/stat.
func (r *procReader) readStat(pid int) (statInfo, error) {
	b, err := readAt(unix.AT_FDCWD, r.root+"/"+strconv.Itoa(pid)+"/stat", r.buf)
	if err != nil {
		return statInfo{}, goneOr(err)
	}
	return parseStat(b)
}

// read reads everything DaemonEye records about pid. Parent.Start is left 0:
// the caller resolves it (from a scan, a cache or readStat of the parent).
// Only a missing stat is an error; fields the kernel refuses (exe of a
// kernel thread, links of a zombie) stay empty.
func (r *procReader) read(pid int) (Process, error) {
	var p Process
	dirfd, err := r.openPid(pid)
	if err != nil {
		return p, err
	}
	defer unix.Close(dirfd)

	b, err := readAt(dirfd, "stat", r.buf)
	if err != nil {
		return p, goneOr(err)
	}
	st, err := parseStat(b)
	if err != nil {
		return p, fmt.Errorf("pid %d: %w", pid, err)
	}
	p.Key = ProcKey{PID: uint32(pid), Start: st.Start}
	p.Parent.PID = uint32(st.PPID)
	p.Comm = string(st.Comm)
	p.StartTime = ticksToWall(r.boot, st.Start)
	p.Exec.TTY = ttyName(st.TTY)

	if b, err := readAt(dirfd, "status", r.buf); err == nil {
		if ids, err := parseStatus(b); err == nil {
			p.Exec.UID, p.Exec.EUID, p.Exec.GID, p.Exec.EGID = ids.UID, ids.EUID, ids.GID, ids.EGID
		}
	} else if goneOr(err) == ErrProcessGone {
		return p, ErrProcessGone
	}
	if b, err := readAt(dirfd, "cmdline", r.cmd); err == nil {
		p.Exec.Argv, p.Exec.ArgvTruncated = parseCmdline(b, r.argvMax)
		p.Execed = len(p.Exec.Argv) > 0
	}
	if l := r.readlinkAt(dirfd, "exe"); l != nil {
		p.Exec.Exe = string(l)
	}
	if l := r.readlinkAt(dirfd, "cwd"); l != nil {
		p.Exec.Cwd = string(l)
	}
	p.Exec.PidNS = r.nsInode(dirfd, "ns/pid")
	p.Exec.NetNS = r.nsInode(dirfd, "ns/net")
	p.Exec.MntNS = r.nsInode(dirfd, "ns/mnt")
	if r.cgMount != "" {
		if b, err := readAt(dirfd, "cgroup", r.buf); err == nil {
			if path, ok := parseCgroupV2(b); ok {
				p.Exec.CgroupID = r.cgroupIDOf(path)
			}
		}
	}
	return p, nil
}

// cgroupIDOf returns the cgroup v2 id of a cgroup path: the inode of its
// directory, which is what bpf_get_current_cgroup_id reports too.
func (r *procReader) cgroupIDOf(path []byte) uint64 {
	if id, ok := r.cgroupID[string(path)]; ok {
		return id
	}
	var st unix.Stat_t
	var id uint64
	if err := unix.Stat(r.cgMount+string(path), &st); err == nil {
		id = st.Ino
	}
	if len(r.cgroupID) > 4096 { // cgroups come and go; keep the cache bounded
		clear(r.cgroupID)
	}
	r.cgroupID[string(path)] = id
	return id
}

// ReadProcess reads one process from procRoot (e.g. "/proc"), with its
// parent's start time, and argv capped at the default ArgvMaxBytes.
func ReadProcess(procRoot string, pid int) (Process, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	r := newProcReader(procRoot, 0, cgroup2Mount(procRoot), bootWallNs())
	p, err := r.read(pid)
	if err != nil {
		return p, fmt.Errorf("read process %d: %w", pid, err)
	}
	if p.Parent.PID != 0 {
		if ps, err := r.readStat(int(p.Parent.PID)); err == nil {
			p.Parent.Start = ps.Start
		}
	}
	return p, nil
}

// ScanProcesses reads every process in procRoot with the default argv cap;
// see scanProcesses.
func ScanProcesses(procRoot string) ([]Process, error) {
	return scanProcesses(procRoot, 0)
}

// scanProcesses reads every process in procRoot, marks them Seeded and
// resolves each Parent.Start from the scanned set. Processes that vanish
// during the scan are left out. The work is spread over GOMAXPROCS readers,
// each with its own buffers.
func scanProcesses(procRoot string, argvMax int) ([]Process, error) {
	if procRoot == "" {
		procRoot = "/proc"
	}
	pids, err := listPids(procRoot)
	if err != nil {
		return nil, err
	}
	boot, cg := bootWallNs(), cgroup2Mount(procRoot)
	procs := make([]Process, len(pids))
	ok := make([]bool, len(pids))
	workers := min(runtime.GOMAXPROCS(0), max(1, len(pids)/64))
	const chunk = 32
	var next atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			r := newProcReader(procRoot, argvMax, cg, boot)
			for {
				lo := int(next.Add(chunk)) - chunk
				if lo >= len(pids) {
					return
				}
				for i := lo; i < min(lo+chunk, len(pids)); i++ {
					p, err := r.read(pids[i])
					if err != nil {
						continue // vanished, or not a process we can read
					}
					p.Seeded = true
					procs[i], ok[i] = p, true
				}
			}
		})
	}
	wg.Wait()

	out := procs[:0]
	for i := range procs {
		if ok[i] {
			out = append(out, procs[i])
		}
	}
	start := make(map[uint32]uint64, len(out))
	for i := range out {
		start[out[i].Key.PID] = out[i].Key.Start
	}
	var r *procReader
	for i := range out {
		pp := out[i].Parent.PID
		if pp == 0 {
			continue
		}
		if s, found := start[pp]; found {
			out[i].Parent.Start = s
			continue
		}
		// The parent was not listed (it appeared after the listing): ask.
		if r == nil {
			r = newProcReader(procRoot, argvMax, cg, boot)
		}
		if ps, err := r.readStat(int(pp)); err == nil {
			out[i].Parent.Start = ps.Start
		}
	}
	return out, nil
}

// listPids returns the numeric entries of procRoot: the thread group ids.
func listPids(procRoot string) ([]int, error) {
	d, err := os.Open(procRoot)
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("list processes in %s: %w", procRoot, err)
	}
	pids := make([]int, 0, len(names))
	for _, n := range names {
		if v, ok := parseUint([]byte(n)); ok && v > 0 && v < 1<<31 {
			pids = append(pids, int(v))
		}
	}
	return pids, nil
}
