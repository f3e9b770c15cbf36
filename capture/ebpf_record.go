package capture

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"sync/atomic"
)

// Ring-buffer record layout written by bpf/sensor.bpf.c (struct ev_* in
// bpf/sensor.h). The offsets are spelled out rather than read through
// unsafe casts so a short or hostile record is an error, never a crash;
// TestEBPFRecordLayout pins them to the bpf2go-generated mirrors.
const (
	evKindFork    = 1
	evKindExec    = 2
	evKindExit    = 3
	evKindConnect = 4
	evKindAccept  = 5
	evKindClose   = 6
	evKindOpen    = 7
	evKindRename  = 8
	evKindUnlink  = 9
	evKindSocket  = 10
	evKindConnRes = 16

	evfArgvTrunc = 1 << 0
	evfExeTrunc  = 1 << 1
	evfCwdTrunc  = 1 << 2
	evfTTYPts    = 1 << 3
	evfArgvFault = 1 << 4
	evfExeGone   = 1 << 5
	evfEnvTrunc  = 1 << 6
	evfEnvFault  = 1 << 7

	// ev_hdr.flags of file records (enum evf_file).
	evfPathFault  = 1 << 0
	evfPath2Fault = 1 << 1
	evfBaseTrunc  = 1 << 2
	evfBase2Trunc = 1 << 3
	evfBaseFault  = 1 << 4
	evfBase2Fault = 1 << 5

	hdrKind     = 0
	hdrFlags    = 1
	hdrPID      = 4
	hdrStart    = 8
	hdrTime     = 16
	hdrPPID     = 24
	hdrTrace    = 28
	hdrPStart   = 32
	hdrComm     = 40
	hdrSize     = 56
	exitCode    = hdrSize
	exitSize    = 64
	connFamily  = hdrSize
	connSport   = hdrSize + 2
	connDport   = hdrSize + 4
	connSaddr   = hdrSize + 8
	connDaddr   = hdrSize + 24
	connSize    = 96
	execUID     = hdrSize
	execGID     = hdrSize + 4
	execEUID    = hdrSize + 8
	execEGID    = hdrSize + 12
	execCgroup  = hdrSize + 16
	execPidNS   = hdrSize + 24
	execNetNS   = hdrSize + 28
	execMntNS   = hdrSize + 32
	execTTYIdx  = hdrSize + 36
	execExeLen  = hdrSize + 40
	execCwdLen  = hdrSize + 42
	execTTYLen  = hdrSize + 44
	execArgvLen = hdrSize + 46
	execEnvLen  = hdrSize + 48
	execExeDev  = hdrSize + 52
	execExeIno  = hdrSize + 56
	execCtime   = hdrSize + 64
	execExeSize = hdrSize + 72
	execData    = hdrSize + 80

	fileResult   = hdrSize
	fileFlags    = hdrSize + 8
	fileIno      = hdrSize + 16
	fileDev      = hdrSize + 24
	fileMode     = hdrSize + 28
	filePathLen  = hdrSize + 32
	filePath2Len = hdrSize + 34
	fileBaseLen  = hdrSize + 36
	fileBase2Len = hdrSize + 38
	fileData     = hdrSize + 40

	sockResult = hdrSize
	sockDomain = hdrSize + 8
	sockType   = hdrSize + 12
	sockProto  = hdrSize + 16
	sockFamily = hdrSize + 20
	sockSport  = hdrSize + 22
	sockDport  = hdrSize + 24
	sockSaddr  = hdrSize + 28
	sockDaddr  = hdrSize + 44
	sockSize   = hdrSize + 64

	afInet  = 2
	afInet6 = 10

	// nsPerTick converts task start_boottime to the clock ticks (USER_HZ,
	// 100 on every Linux ABI) of /proc/PID/stat field 22, exactly as the
	// kernel's nsec_to_clock_t does: a truncating division.
	nsPerTick = 1_000_000_000 / 100
)

var errShortRecord = errors.New("short ebpf record")

// recordOrder is the byte order of the records: every architecture we build the
// sensor for (bpfel) is little-endian.
var recordOrder = binary.LittleEndian

// recordDecoder turns ring-buffer records into Events. It is used by one
// goroutine; only bootToWall is shared.
type recordDecoder struct {
	// bootToWall is added to a CLOCK_BOOTTIME nanosecond stamp to get Unix
	// nanoseconds; refreshed while running so wall-clock steps are followed.
	bootToWall atomic.Int64
	// comms interns task names: a host runs few distinct ones, and fork and
	// exit records would otherwise allocate one string each.
	comms map[[16]byte]string

	// The last decoded record's trace tag (0: not traced) and, for an
	// exec, the kernel's identity and version of the binary (dev in stat
	// encoding).
	tag     uint32
	exe     fileID
	focused bool // the record is trace-only: dropped rather than reported untraced
}

const maxInternedComms = 4096

func (d *recordDecoder) comm(b []byte) string {
	var k [16]byte
	copy(k[:], b)
	if s, ok := d.comms[k]; ok {
		return s
	}
	n := 0
	for n < len(k) && k[n] != 0 {
		n++
	}
	s := string(k[:n])
	if d.comms == nil || len(d.comms) >= maxInternedComms {
		d.comms = make(map[[16]byte]string, 256)
	}
	d.comms[k] = s
	return s
}

// decode fills ev from one record. ev is overwritten entirely.
func (d *recordDecoder) decode(b []byte, ev *Event) error {
	if len(b) < hdrSize {
		return fmt.Errorf("%w: %d bytes", errShortRecord, len(b))
	}
	*ev = Event{
		Time:   int64(recordOrder.Uint64(b[hdrTime:])) + d.bootToWall.Load(),
		Proc:   ProcKey{PID: recordOrder.Uint32(b[hdrPID:]), Start: recordOrder.Uint64(b[hdrStart:]) / nsPerTick},
		Comm:   d.comm(b[hdrComm : hdrComm+16]),
		Source: "ebpf",
	}
	if ppid := recordOrder.Uint32(b[hdrPPID:]); ppid != 0 {
		ev.Parent = ProcKey{PID: ppid, Start: recordOrder.Uint64(b[hdrPStart:]) / nsPerTick}
	}
	d.tag = recordOrder.Uint32(b[hdrTrace:])
	d.focused = false
	flags := b[hdrFlags]
	switch kind := b[hdrKind]; kind {
	case evKindFork:
		ev.Kind = KindFork
	case evKindExit:
		if len(b) < exitSize {
			return fmt.Errorf("%w: exit record of %d bytes", errShortRecord, len(b))
		}
		ev.Kind = KindExit
		ev.Exit = decodeExitStatus(recordOrder.Uint32(b[exitCode:]))
	case evKindConnect, evKindAccept, evKindClose:
		if len(b) < connSize {
			return fmt.Errorf("%w: connection record of %d bytes", errShortRecord, len(b))
		}
		ev.Kind = Kind(kind) // enum ev_kind mirrors Kind
		c, err := decodeConn(b)
		if err != nil {
			return err
		}
		ev.Conn = c
	case evKindExec:
		ev.Kind = KindExec
		x, err := decodeExec(b, flags)
		if err != nil {
			return err
		}
		ev.Exec = x
		d.exe = fileID{
			dev:   kernelDevToStat(recordOrder.Uint32(b[execExeDev:])),
			ino:   recordOrder.Uint64(b[execExeIno:]),
			ctime: int64(recordOrder.Uint64(b[execCtime:])),
			size:  int64(recordOrder.Uint64(b[execExeSize:])),
		}
	case evKindOpen, evKindRename, evKindUnlink:
		ev.Kind = KindFileOpen + Kind(kind-evKindOpen)
		f, err := decodeFile(b, flags)
		if err != nil {
			return err
		}
		ev.File = f
		d.focused = true
	case evKindSocket, evKindConnRes:
		if len(b) < sockSize {
			return fmt.Errorf("%w: socket record of %d bytes", errShortRecord, len(b))
		}
		ev.Sock = &SockOp{
			Domain: int32(recordOrder.Uint32(b[sockDomain:])),
			Type:   int32(recordOrder.Uint32(b[sockType:])) & sockTypeMask,
			Proto:  int32(recordOrder.Uint32(b[sockProto:])),
			Result: int64(recordOrder.Uint64(b[sockResult:])),
		}
		d.focused = true
		if kind == evKindSocket {
			ev.Kind = KindSocket
			break
		}
		ev.Kind = KindConnect
		ev.Conn = decodeSockTuple(b, ev.Sock.Proto)
	default:
		return fmt.Errorf("unknown ebpf record kind %d", kind)
	}
	return nil
}

// decodeExitStatus splits a wait status the way WEXITSTATUS, WTERMSIG and
// WCOREDUMP do.
func decodeExitStatus(status uint32) *Exit {
	return &Exit{
		Code:   int32(status>>8) & 0xff,
		Signal: int32(status & 0x7f),
		Core:   status&0x80 != 0,
	}
}

func decodeConn(b []byte) (*Conn, error) {
	var src, dst netip.Addr
	switch fam := recordOrder.Uint16(b[connFamily:]); fam {
	case afInet:
		src = netip.AddrFrom4([4]byte(b[connSaddr : connSaddr+4]))
		dst = netip.AddrFrom4([4]byte(b[connDaddr : connDaddr+4]))
	case afInet6:
		// A v6 socket talking IPv4 holds v4-mapped addresses; the rest of
		// the system (and sock_diag) names those peers as plain IPv4.
		src = netip.AddrFrom16([16]byte(b[connSaddr : connSaddr+16])).Unmap()
		dst = netip.AddrFrom16([16]byte(b[connDaddr : connDaddr+16])).Unmap()
	default:
		return nil, fmt.Errorf("connection record with address family %d", fam)
	}
	return &Conn{
		Proto: ProtoTCP,
		Src:   netip.AddrPortFrom(src, recordOrder.Uint16(b[connSport:])),
		Dst:   netip.AddrPortFrom(dst, recordOrder.Uint16(b[connDport:])),
	}, nil
}

func decodeExec(b []byte, flags byte) (*Exec, error) {
	if len(b) < execData {
		return nil, fmt.Errorf("%w: exec record of %d bytes", errShortRecord, len(b))
	}
	exeLen := int(recordOrder.Uint16(b[execExeLen:]))
	cwdLen := int(recordOrder.Uint16(b[execCwdLen:]))
	ttyLen := int(recordOrder.Uint16(b[execTTYLen:]))
	argvLen := int(recordOrder.Uint16(b[execArgvLen:]))
	envLen := int(recordOrder.Uint16(b[execEnvLen:]))
	total := exeLen + cwdLen + ttyLen + argvLen + envLen
	if len(b) < execData+total {
		return nil, fmt.Errorf("%w: exec record of %d bytes holds %d bytes of strings", errShortRecord, len(b), total)
	}
	// One allocation for all strings of the record; the fields are slices
	// of it. Bytes pass through unchanged (argv may be any bytes but NUL).
	data := string(b[execData : execData+total])
	x := &Exec{
		UID:           recordOrder.Uint32(b[execUID:]),
		GID:           recordOrder.Uint32(b[execGID:]),
		EUID:          recordOrder.Uint32(b[execEUID:]),
		EGID:          recordOrder.Uint32(b[execEGID:]),
		CgroupID:      recordOrder.Uint64(b[execCgroup:]),
		PidNS:         recordOrder.Uint32(b[execPidNS:]),
		NetNS:         recordOrder.Uint32(b[execNetNS:]),
		MntNS:         recordOrder.Uint32(b[execMntNS:]),
		Exe:           data[:exeLen],
		Cwd:           data[exeLen : exeLen+cwdLen],
		TTY:           data[exeLen+cwdLen : exeLen+cwdLen+ttyLen],
		ArgvTruncated: flags&(evfArgvTrunc|evfArgvFault) != 0, // a fault loses all of argv
	}
	// A cut path is only the tail of the real one: it must not pass for
	// an absolute path, so it starts with "..." rather than "/".
	if flags&evfExeTrunc != 0 {
		x.Exe = "..." + x.Exe
	}
	if flags&evfCwdTrunc != 0 {
		x.Cwd = "..." + x.Cwd
	}
	if flags&evfExeGone != 0 {
		x.Exe += " (deleted)" // as /proc/PID/exe and d_path say
	}
	if flags&evfTTYPts != 0 {
		x.TTY = "pts/" + strconv.FormatUint(uint64(recordOrder.Uint32(b[execTTYIdx:])), 10)
	}
	argvOff := exeLen + cwdLen + ttyLen
	x.Argv = splitArgv(data[argvOff : argvOff+argvLen])
	if envLen > 0 {
		x.Env = splitArgv(data[argvOff+argvLen:])
	}
	x.EnvTruncated = flags&(evfEnvTrunc|evfEnvFault) != 0
	return x, nil
}

// sockTypeMask keeps the socket type of a socket(2) type argument, without
// SOCK_NONBLOCK and SOCK_CLOEXEC.
const sockTypeMask = 0xf

func decodeFile(b []byte, flags byte) (*FileOp, error) {
	if len(b) < fileData {
		return nil, fmt.Errorf("%w: file record of %d bytes", errShortRecord, len(b))
	}
	pathLen := int(recordOrder.Uint16(b[filePathLen:]))
	path2Len := int(recordOrder.Uint16(b[filePath2Len:]))
	baseLen := int(recordOrder.Uint16(b[fileBaseLen:]))
	base2Len := int(recordOrder.Uint16(b[fileBase2Len:]))
	total := pathLen + path2Len + baseLen + base2Len
	if len(b) < fileData+total {
		return nil, fmt.Errorf("%w: file record of %d bytes holds %d bytes of strings", errShortRecord, len(b), total)
	}
	data := string(b[fileData : fileData+total])
	path, data := data[:pathLen], data[pathLen:]
	path2, data := data[:path2Len], data[path2Len:]
	base, base2 := data[:baseLen], data[baseLen:]
	f := &FileOp{
		Path:       joinBase(base, flags&evfBaseTrunc != 0, path),
		Path2:      joinBase(base2, flags&evfBase2Trunc != 0, path2),
		Flags:      recordOrder.Uint64(b[fileFlags:]),
		Mode:       recordOrder.Uint32(b[fileMode:]),
		Result:     int64(recordOrder.Uint64(b[fileResult:])),
		PathUnread: flags&(evfPathFault|evfPath2Fault) != 0,
	}
	if ino := recordOrder.Uint64(b[fileIno:]); ino != 0 {
		f.Inode = ino
		f.Dev = kernelDevToStat(recordOrder.Uint32(b[fileDev:]))
	}
	return f, nil
}

// joinBase joins a relative path to the directory it was resolved from;
// an absolute path (no base) passes unchanged. A base cut at the root end
// starts with "..." as Exec.Cwd does.
func joinBase(base string, cut bool, path string) string {
	if base == "" {
		return path
	}
	if cut {
		base = "..." + base
	}
	if strings.HasSuffix(base, "/") {
		return base + path
	}
	return base + "/" + path
}

// decodeSockTuple reads the tuple of a socket record; the address family is
// the tuple's own (0 when the socket had none).
func decodeSockTuple(b []byte, proto int32) *Conn {
	c := &Conn{Proto: Proto(proto)}
	var src, dst netip.Addr
	switch recordOrder.Uint16(b[sockFamily:]) {
	case afInet:
		src = netip.AddrFrom4([4]byte(b[sockSaddr : sockSaddr+4]))
		dst = netip.AddrFrom4([4]byte(b[sockDaddr : sockDaddr+4]))
	case afInet6:
		src = netip.AddrFrom16([16]byte(b[sockSaddr : sockSaddr+16])).Unmap()
		dst = netip.AddrFrom16([16]byte(b[sockDaddr : sockDaddr+16])).Unmap()
	default:
		return c
	}
	c.Src = netip.AddrPortFrom(src, recordOrder.Uint16(b[sockSport:]))
	c.Dst = netip.AddrPortFrom(dst, recordOrder.Uint16(b[sockDport:]))
	return c
}

// kernelDevToStat turns a kernel dev_t (major << 20 | minor) into the
// encoding stat(2) reports in st_dev (glibc's makedev).
func kernelDevToStat(dev uint32) uint64 {
	major := uint64(dev >> 20)
	minor := uint64(dev & 0xfffff)
	return (major&0xfffff000)<<32 | (major&0xfff)<<8 | (minor&0xffffff00)<<12 | minor&0xff
}

// splitArgv splits the argv area of a process (NUL-terminated strings back
// to back). The terminator of the last string is dropped; when the area was
// cut the last element is the partial string.
func splitArgv(s string) []string {
	if s == "" {
		return nil
	}
	if s[len(s)-1] == 0 {
		s = s[:len(s)-1]
	}
	argv := make([]string, 0, strings.Count(s, "\x00")+1)
	for {
		i := strings.IndexByte(s, 0)
		if i < 0 {
			return append(argv, s)
		}
		argv = append(argv, s[:i])
		s = s[i+1:]
	}
}
