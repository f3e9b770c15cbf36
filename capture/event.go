// Package capture is the agent's sensor layer: it turns kernel activity into
// Events (process fork/exec/exit and TCP connect/accept/close) and keeps the
// in-memory process table. Two Sources implement it: the eBPF sensor on tp_btf
// hooks and the /proc + netlink proc connector + sock_diag fallback. Events flow
// from a Source to the agent, which stores them (store/) and ships them upstream.
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
)

var kindNames = [...]string{"", "fork", "exec", "exit", "connect", "accept", "close"}

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

// Event is one observation. Exactly one of Exec, Exit, Conn is set, according
// to Kind (none for KindFork).
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
