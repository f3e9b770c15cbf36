// Package capture is the agent's sensor layer: it turns kernel activity into
// Events (process fork/exec/exit and TCP connect/accept/close) and keeps the
// in-memory process table. Two Sources implement it: the eBPF sensor on tp_btf
// hooks and the /proc + netlink proc connector + sock_diag fallback. Events flow
// from a Source to the agent, which stores them (store/) and ships them upstream.
//
// The eBPF sensor is also a Tracer: a focused trace follows one process
// lineage in the kernel and adds, for it alone, file and socket activity,
// environment snapshots and executable hashes, as events carrying the trace's
// id and its own sequence numbers, under caps on rate, bytes and duration.
package capture

import (
	"fmt"
	"net/netip"
)

// Kind says what an Event records.
type Kind uint8

const (
	KindFork    Kind = 1 // a new process (thread group) was created; Proc is the child
	KindExec    Kind = 2 // Proc replaced its image; Exec is set
	KindExit    Kind = 3 // the whole thread group is gone; Exit is set
	KindConnect Kind = 4 // Proc initiated a TCP connection; Conn is set
	KindAccept  Kind = 5 // Proc accepted a TCP connection; Conn is set
	KindClose   Kind = 6 // a TCP connection owned by Proc closed; Conn is set

	// Focused trace only (TraceID is set). A traced process's fork, exec,
	// exit, connect, accept and close are the kinds above with TraceID set.
	KindFileOpen   Kind = 7  // Proc opened or created a file; File is set
	KindFileRename Kind = 8  // Proc renamed File.Path to File.Path2
	KindFileUnlink Kind = 9  // Proc unlinked File.Path
	KindSocket     Kind = 10 // Proc called socket(2); Sock is set
	KindExecHash   Kind = 11 // hashes of the binary of Proc's last exec; Hashes is set
	KindTraceNote  Kind = 12 // the trace started, was sampled or stopped; Note is set

	// KindAlert is a rule that ran at the agent and matched Proc; Alert is
	// set. It travels on the alert lane.
	KindAlert Kind = 13
)

var kindNames = [...]string{"", "fork", "exec", "exit", "connect", "accept", "close",
	"file_open", "file_rename", "file_unlink", "socket", "exec_hash", "trace_note", "alert"}

func (k Kind) String() string {
	if int(k) < len(kindNames) && k != 0 {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", k)
}

// ProcKey identifies a process on one host. PIDs are reused, so a process is
// (pid, start time). Start is the process start time in clock ticks since boot
// (USER_HZ, field 22 of /proc/PID/stat); the eBPF sensor derives the same
// number from task->start_boottime so both sources agree on identity.
type ProcKey struct {
	PID   uint32 `cbor:"1,keyasint"`
	Start uint64 `cbor:"2,keyasint"`
}

func (k ProcKey) String() string { return fmt.Sprintf("%d@%d", k.PID, k.Start) }

// IsZero reports whether k names no process.
func (k ProcKey) IsZero() bool { return k.PID == 0 && k.Start == 0 }

// Event is one observation. The payload pointers are set according to Kind
// (none for KindFork). A traced connect the TCP state machine does not report
// (UDP, a failed TCP connect) is a KindConnect with both Conn and Sock.
type Event struct {
	Seq    uint64  `cbor:"1,keyasint,omitempty"` // per-agent sequence, assigned when stored
	Time   int64   `cbor:"2,keyasint"`           // wall clock, Unix nanoseconds
	Kind   Kind    `cbor:"3,keyasint"`
	Proc   ProcKey `cbor:"4,keyasint"`
	Parent ProcKey `cbor:"5,keyasint,omitempty"` // parent process (fork and exec)
	Comm   string  `cbor:"6,keyasint,omitempty"` // task comm at the time of the event

	Exec *Exec `cbor:"7,keyasint,omitempty"`
	Exit *Exit `cbor:"8,keyasint,omitempty"`
	Conn *Conn `cbor:"9,keyasint,omitempty"`

	// Source names what produced the event: "ebpf", "proc" or "seed".
	Source string `cbor:"10,keyasint,omitempty"`

	// TraceID names the focused trace the event belongs to; empty for
	// baseline events. TraceSeq numbers a trace's events 1, 2, 3... in the
	// order they were emitted, without gaps: an event the trace's caps
	// dropped gets no number, and a KindTraceNote says how many were
	// dropped and why.
	TraceID  string `cbor:"11,keyasint,omitempty"`
	TraceSeq uint64 `cbor:"12,keyasint,omitempty"`

	File   *FileOp     `cbor:"13,keyasint,omitempty"`
	Sock   *SockOp     `cbor:"14,keyasint,omitempty"`
	Hashes *Hashes     `cbor:"15,keyasint,omitempty"`
	Note   *TraceNote  `cbor:"16,keyasint,omitempty"`
	Mem    *MemSnippet `cbor:"17,keyasint,omitempty"`
	Alert  *RuleAlert  `cbor:"18,keyasint,omitempty"`
}

// RuleAlert is a match of a rule the agent ran over its own events.
type RuleAlert struct {
	RuleID    string `cbor:"1,keyasint"`
	Pack      string `cbor:"2,keyasint,omitempty"`
	Title     string `cbor:"3,keyasint,omitempty"`
	Severity  string `cbor:"4,keyasint,omitempty"`
	Technique string `cbor:"5,keyasint,omitempty"`
	// Context is the rule's other result columns as a JSON object.
	Context string `cbor:"6,keyasint,omitempty"`
}

// Exec describes the new image of a process after execve.
type Exec struct {
	UID  uint32 `cbor:"1,keyasint"`
	GID  uint32 `cbor:"2,keyasint"`
	EUID uint32 `cbor:"3,keyasint"`
	EGID uint32 `cbor:"4,keyasint"`

	Exe           string   `cbor:"5,keyasint"`           // absolute path of the executable
	Argv          []string `cbor:"6,keyasint,omitempty"` // raw bytes; may be non-UTF-8
	ArgvTruncated bool     `cbor:"7,keyasint,omitempty"` // argv exceeded the configured cap
	Cwd           string   `cbor:"8,keyasint,omitempty"`
	TTY           string   `cbor:"9,keyasint,omitempty"` // e.g. "pts/3"; empty when none

	CgroupID uint64 `cbor:"10,keyasint,omitempty"`
	PidNS    uint32 `cbor:"11,keyasint,omitempty"` // namespace inode numbers
	NetNS    uint32 `cbor:"12,keyasint,omitempty"`
	MntNS    uint32 `cbor:"13,keyasint,omitempty"`

	// Env is the environment at exec of a traced process whose trace
	// collects command lines; raw bytes as the process holds them, to be
	// masked on display by default. EnvTruncated: it exceeded the trace's
	// cap (or could not be read) and is cut.
	Env          []string `cbor:"14,keyasint,omitempty"`
	EnvTruncated bool     `cbor:"15,keyasint,omitempty"`
}

// Exit describes how a process ended. Code is the exit status when it exited
// normally; Signal is the terminating signal (0 when none).
type Exit struct {
	Code   int32 `cbor:"1,keyasint"`
	Signal int32 `cbor:"2,keyasint,omitempty"`
	Core   bool  `cbor:"3,keyasint,omitempty"`
}

// Proto is a transport protocol.
type Proto uint8

const (
	ProtoTCP Proto = 6
	ProtoUDP Proto = 17
)

// Conn is a connection tuple. Src is the local end for the owning process.
type Conn struct {
	Proto Proto          `cbor:"1,keyasint"`
	Src   netip.AddrPort `cbor:"2,keyasint"`
	Dst   netip.AddrPort `cbor:"3,keyasint"`
}

func (c Conn) String() string { return fmt.Sprintf("%s->%s", c.Src, c.Dst) }

// FileOp is a traced process's file syscall, reported when it returned.
type FileOp struct {
	// Path is the file as the process named it. A relative name is joined
	// to the directory it was resolved from (the cwd or the dirfd's path,
	// named like Exec.Cwd) without cleaning, so ".." stays as written.
	Path  string `cbor:"1,keyasint"`
	Path2 string `cbor:"2,keyasint,omitempty"` // rename target, joined the same way
	// Flags are the open(2) flags, renameat2(2) flags or unlinkat(2)
	// flags; Mode is the open mode argument.
	Flags uint64 `cbor:"3,keyasint,omitempty"`
	Mode  uint32 `cbor:"4,keyasint,omitempty"`
	// Inode and Dev (as stat(2) reports st_dev) of the file an open
	// returned; zero otherwise.
	Inode uint64 `cbor:"5,keyasint,omitempty"`
	Dev   uint64 `cbor:"6,keyasint,omitempty"`
	// Result is the syscall's return value: an fd, 0, or -errno.
	Result int64 `cbor:"7,keyasint"`
	// PathUnread: a path could not be read from the process's memory.
	PathUnread bool `cbor:"8,keyasint,omitempty"`
}

// SockOp is a traced process's socket(2), or the outcome of a connect the
// TCP state machine does not report.
type SockOp struct {
	Domain int32 `cbor:"1,keyasint"` // AF_INET, AF_INET6, AF_UNIX, ...
	Type   int32 `cbor:"2,keyasint"` // SOCK_STREAM, ... without SOCK_NONBLOCK and SOCK_CLOEXEC
	Proto  int32 `cbor:"3,keyasint,omitempty"`
	// Result: the new fd for socket(2), 0 or -errno for connect.
	Result int64 `cbor:"4,keyasint"`
}

// Hashes identify the binary a traced process executed. Path, Dev and
// Inode name the file hashed; Error says why there are no digests.
type Hashes struct {
	Blake3 string `cbor:"1,keyasint,omitempty"` // hex, 32 bytes
	SHA256 string `cbor:"2,keyasint,omitempty"` // hex
	Path   string `cbor:"3,keyasint,omitempty"`
	Size   int64  `cbor:"4,keyasint,omitempty"`
	Dev    uint64 `cbor:"5,keyasint,omitempty"`
	Inode  uint64 `cbor:"6,keyasint,omitempty"`
	// Cached: the digests came from the cache, keyed by (dev, inode,
	// ctime), without reading the file again.
	Cached bool   `cbor:"7,keyasint,omitempty"`
	Error  string `cbor:"8,keyasint,omitempty"`
}

// MemSnippet is a small region of a traced process's memory, taken when
// policy allows: the start of its executable's first mapping, for triage
// of a binary that differs in memory from its file.
type MemSnippet struct {
	Addr  uint64 `cbor:"1,keyasint"`
	Data  []byte `cbor:"2,keyasint,omitempty"`
	Error string `cbor:"3,keyasint,omitempty"`
}

// TraceNote marks a point in a trace's life.
type TraceNote struct {
	// What is "start", "resume" (the agent restarted and took the trace
	// up again), "sampled" (events were dropped just before this note) or
	// "stop".
	What string `cbor:"1,keyasint"`
	// Reason: for "sampled" the cap that dropped ("cap:max_events_per_sec",
	// "cap:agent_events_per_sec", "cap:kernel_valve", "backpressure"); for
	// "stop" why it stopped ("cap:max_bytes", "cap:max_duration",
	// "lineage_exited", or the reason StopTrace was given).
	Reason  string `cbor:"2,keyasint,omitempty"`
	Dropped uint64 `cbor:"3,keyasint,omitempty"` // sampled: since the last note; stop: in all
	Events  uint64 `cbor:"4,keyasint,omitempty"` // stop: events emitted, this note included
	Bytes   int64  `cbor:"5,keyasint,omitempty"` // stop: bytes counted against MaxBytes
	Depth   int32  `cbor:"6,keyasint,omitempty"` // start: the depth, -1 for no limit
	Pids    uint32 `cbor:"7,keyasint,omitempty"` // start: processes traced at start
}
