package wire

import (
	"net/netip"

	"github.com/fxamacker/cbor/v2"

	"github.com/evilbitlabs/daemoneye/capture"
)

// decodeCanonicalEvent decodes leaf, one event's CBOR, without reflection,
// and reports ok only when leaf is exactly the canonical encoding of the
// event it returns: the bytes EncodeEvent would make of it (shortest
// heads, integer keys in ascending order, strings as byte strings, empty
// optional fields left out, required ones present). Anything else, valid
// CBOR or not, returns ok false and is left to the reflecting decoder,
// which then accepts it only if re-encoding gives the same bytes, or
// explains why not. So the fast path changes no verdict, only its cost:
// FuzzCanonicalEvent checks that whenever it accepts, the reflecting path
// accepts the same bytes as the same event.
//
// The caller has checked that leaf is well-formed CBOR within the decoding
// limits (it is part of a batch body decoded under them).
func decodeCanonicalEvent(leaf []byte) (capture.Event, bool) {
	d := newEvDec(leaf, Limits{}.normalized())
	var e capture.Event
	ok := d.event(&e)
	return e, ok && d.err == nil && len(d.b) == 0
}

// decodeCanonicalBody decodes payload, a batch body, the same way: ok only
// when it is exactly the canonical encoding of the body, events included,
// within lim. Events' strings share one copy of the payload and the leaves
// are slices of it, so a batch costs a few allocations per event instead
// of one per field.
func decodeCanonicalBody(payload []byte, lim Limits) (body batchBody, events []capture.Event, ok bool) {
	// The body nests five deep (body, events, event, exec, argv): a
	// tighter limit is the reflecting decoder's to enforce and explain.
	if lim.MaxNestedLevels < 5 {
		return body, nil, false
	}
	d := newEvDec(payload, lim)
	if n, ok := d.mapN(); !ok || n != 6 {
		return body, nil, false
	}
	var prev uint64
	for want := uint64(1); want <= 6; want++ {
		if k, ok := d.key(prev); !ok || k != want {
			return body, nil, false
		}
		prev = want
		switch want {
		case 1:
			body.AgentID, _ = d.str()
		case 2:
			body.Seq, _ = d.unsigned(u64)
		case 3:
			body.TSStart, _ = d.signed(-1<<63, 1<<63-1)
		case 4:
			body.TSEnd, _ = d.signed(-1<<63, 1<<63-1)
		case 5:
			n, ok := d.head(majorArray)
			// Each event is at least 18 bytes; the count must fit what is left.
			if !ok || n > uint64(lim.MaxArrayElements) || n > uint64(len(d.b)) {
				return body, nil, false
			}
			events = make([]capture.Event, n)
			body.Events = make([]cbor.RawMessage, n)
			for i := range events {
				start := len(payload) - len(d.b)
				if !d.event(&events[i]) {
					return body, nil, false
				}
				end := len(payload) - len(d.b)
				body.Events[i] = payload[start:end:end]
			}
		case 6:
			body.Root, _ = d.bytes()
		}
	}
	return body, events, d.err == nil && len(d.b) == 0
}

// evDec reads canonical CBOR from b, the tail of all; strings are cut from
// s, one copy of all. The first violation sets err (a marker: its text is
// never shown) and every later read fails.
type evDec struct {
	all []byte
	s   string
	b   []byte
	lim Limits
	err error
}

func newEvDec(b []byte, lim Limits) *evDec {
	return &evDec{all: b, s: string(b), b: b, lim: lim}
}

type notCanonical struct{}

func (notCanonical) Error() string { return "not canonical" }

func (d *evDec) fail() bool { d.err = notCanonical{}; return false }

// head reads a head of the given major type in its shortest form.
func (d *evDec) head(major byte) (uint64, bool) {
	if d.err != nil || len(d.b) == 0 || d.b[0]>>5 != major {
		return 0, d.fail()
	}
	info := d.b[0] & 0x1f
	var n uint64
	var size int
	switch {
	case info < 24:
		d.b = d.b[1:]
		return uint64(info), true
	case info == 24:
		size = 1
	case info == 25:
		size = 2
	case info == 26:
		size = 4
	case info == 27:
		size = 8
	default:
		return 0, d.fail()
	}
	if len(d.b) < 1+size {
		return 0, d.fail()
	}
	for _, c := range d.b[1 : 1+size] {
		n = n<<8 | uint64(c)
	}
	// Shortest form: the value must need this many bytes.
	var least uint64
	switch size {
	case 1:
		least = 24
	case 2:
		least = 1 << 8
	case 4:
		least = 1 << 16
	case 8:
		least = 1 << 32
	}
	if n < least {
		return 0, d.fail()
	}
	d.b = d.b[1+size:]
	return n, true
}

// key reads the next map key, which must be above prev (ascending, no
// duplicates; keys below 24 are one byte, so numeric order is byte order).
func (d *evDec) key(prev uint64) (uint64, bool) {
	k, ok := d.head(majorUint)
	if !ok || k <= prev {
		return 0, d.fail()
	}
	return k, true
}

// mapN reads a map head and returns its pair count.
func (d *evDec) mapN() (uint64, bool) {
	n, ok := d.head(majorMap)
	if ok && n > uint64(d.lim.MaxMapPairs) {
		return 0, d.fail()
	}
	return n, ok
}

func (d *evDec) unsigned(max uint64) (uint64, bool) {
	v, ok := d.head(majorUint)
	if !ok || v > max {
		return 0, d.fail()
	}
	return v, true
}

// int reads a signed integer within [lo, hi]: major 0 for v >= 0, major 1
// (-1-n) below.
func (d *evDec) signed(lo, hi int64) (int64, bool) {
	if d.err != nil || len(d.b) == 0 {
		return 0, d.fail()
	}
	var v int64
	switch d.b[0] >> 5 {
	case majorUint:
		n, ok := d.head(majorUint)
		if !ok || n > uint64(hi) {
			return 0, d.fail()
		}
		v = int64(n)
	case majorNeg:
		n, ok := d.head(majorNeg)
		if !ok || n > uint64(-(lo+1)) {
			return 0, d.fail()
		}
		v = -1 - int64(n)
	default:
		return 0, d.fail()
	}
	if v < lo || v > hi {
		return 0, d.fail()
	}
	return v, true
}

// bytes reads a byte string (how every string travels).
func (d *evDec) bytes() ([]byte, bool) {
	n, ok := d.head(majorBytes)
	if !ok || n > uint64(len(d.b)) {
		return nil, d.fail()
	}
	s := d.b[:n:n]
	d.b = d.b[n:]
	return s, true
}

func (d *evDec) str() (string, bool) {
	n, ok := d.head(majorBytes)
	if !ok || n > uint64(len(d.b)) {
		return "", d.fail()
	}
	at := len(d.all) - len(d.b)
	d.b = d.b[n:]
	return d.s[at : at+int(n)], true
}

// optStr reads an omitempty string: present means not empty.
func (d *evDec) optStr() (string, bool) {
	s, ok := d.str()
	if ok && s == "" {
		return "", d.fail()
	}
	return s, ok
}

// optTrue reads an omitempty bool: present means true.
func (d *evDec) optTrue() bool {
	if d.err != nil || len(d.b) == 0 || d.b[0] != 0xf5 {
		return d.fail()
	}
	d.b = d.b[1:]
	return true
}

// nonzero fails the read when an omitempty number was written as zero.
func (d *evDec) nonzero(v uint64, ok bool) uint64 {
	if ok && v == 0 {
		d.fail()
	}
	return v
}

func (d *evDec) nonzeroInt(v int64, ok bool) int64 {
	if ok && v == 0 {
		d.fail()
	}
	return v
}

const (
	u32 = 1<<32 - 1
	u64 = 1<<64 - 1
)

// fields walks a map of n pairs with ascending keys, calling field for
// each; field returns false for a key the struct does not have.
func (d *evDec) fields(field func(k uint64) bool) bool {
	n, ok := d.mapN()
	if !ok {
		return false
	}
	var prev uint64
	for range n {
		k, ok := d.key(prev)
		if !ok || !field(k) {
			return d.fail()
		}
		if d.err != nil {
			return false
		}
		prev = k
	}
	return d.err == nil
}

// required reports whether every bit of want is in seen.
func (d *evDec) required(seen, want uint32) bool {
	if seen&want != want {
		return d.fail()
	}
	return true
}

func (d *evDec) procKey(p *capture.ProcKey) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			v, _ := d.unsigned(u32)
			p.PID = uint32(v)
		case 2:
			p.Start, _ = d.unsigned(u64)
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1|1<<2)
}

func (d *evDec) event(e *capture.Event) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			e.Seq = d.nonzero(d.unsigned(u64))
		case 2:
			e.Time, _ = d.signed(-1<<63, 1<<63-1)
		case 3:
			v, _ := d.unsigned(255)
			e.Kind = capture.Kind(v)
		case 4:
			d.procKey(&e.Proc)
		case 5:
			d.procKey(&e.Parent)
		case 6:
			e.Comm, _ = d.optStr()
		case 7:
			e.Exec = new(capture.Exec)
			d.exec(e.Exec)
		case 8:
			e.Exit = new(capture.Exit)
			d.exit(e.Exit)
		case 9:
			e.Conn = new(capture.Conn)
			d.conn(e.Conn)
		case 10:
			e.Source, _ = d.optStr()
		case 11:
			e.TraceID, _ = d.optStr()
		case 12:
			e.TraceSeq = d.nonzero(d.unsigned(u64))
		case 13:
			e.File = new(capture.FileOp)
			d.file(e.File)
		case 14:
			e.Sock = new(capture.SockOp)
			d.sock(e.Sock)
		case 15:
			e.Hashes = new(capture.Hashes)
			d.hashes(e.Hashes)
		case 16:
			e.Note = new(capture.TraceNote)
			d.note(e.Note)
		case 17:
			e.Mem = new(capture.MemSnippet)
			d.mem(e.Mem)
		case 18:
			e.Alert = new(capture.RuleAlert)
			d.alert(e.Alert)
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<2|1<<3|1<<4|1<<5) // Parent too: a zero ProcKey is not empty to the encoder
}

// strs reads an omitempty array of strings: present means not empty.
func (d *evDec) strs() []string {
	n, ok := d.head(majorArray)
	if !ok || n == 0 || n > uint64(len(d.b)) || n > uint64(d.lim.MaxArrayElements) { // each element is at least one byte
		d.fail()
		return nil
	}
	out := make([]string, n)
	for i := range out {
		if out[i], ok = d.str(); !ok {
			return nil
		}
	}
	return out
}

func (d *evDec) exec(x *capture.Exec) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			v, _ := d.unsigned(u32)
			x.UID = uint32(v)
		case 2:
			v, _ := d.unsigned(u32)
			x.GID = uint32(v)
		case 3:
			v, _ := d.unsigned(u32)
			x.EUID = uint32(v)
		case 4:
			v, _ := d.unsigned(u32)
			x.EGID = uint32(v)
		case 5:
			x.Exe, _ = d.str()
		case 6:
			x.Argv = d.strs()
		case 7:
			x.ArgvTruncated = d.optTrue()
		case 8:
			x.Cwd, _ = d.optStr()
		case 9:
			x.TTY, _ = d.optStr()
		case 10:
			x.CgroupID = d.nonzero(d.unsigned(u64))
		case 11:
			x.PidNS = uint32(d.nonzero(d.unsigned(u32)))
		case 12:
			x.NetNS = uint32(d.nonzero(d.unsigned(u32)))
		case 13:
			x.MntNS = uint32(d.nonzero(d.unsigned(u32)))
		case 14:
			x.Env = d.strs()
		case 15:
			x.EnvTruncated = d.optTrue()
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1|1<<2|1<<3|1<<4|1<<5)
}

func (d *evDec) exit(x *capture.Exit) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			v, _ := d.signed(-1<<31, 1<<31-1)
			x.Code = int32(v)
		case 2:
			x.Signal = int32(d.nonzeroInt(d.signed(-1<<31, 1<<31-1)))
		case 3:
			x.Core = d.optTrue()
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1)
}

// addrPort reads a netip.AddrPort, which travels as its MarshalBinary
// bytes; canonical when they marshal back the same.
func (d *evDec) addrPort(ap *netip.AddrPort) {
	b, ok := d.bytes()
	if !ok {
		return
	}
	if err := ap.UnmarshalBinary(b); err != nil {
		d.fail()
		return
	}
	if again, err := ap.MarshalBinary(); err != nil || string(again) != string(b) {
		d.fail()
	}
}

func (d *evDec) conn(x *capture.Conn) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			v, _ := d.unsigned(255)
			x.Proto = capture.Proto(v)
		case 2:
			d.addrPort(&x.Src)
		case 3:
			d.addrPort(&x.Dst)
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1|1<<2|1<<3)
}

func (d *evDec) file(x *capture.FileOp) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			x.Path, _ = d.str()
		case 2:
			x.Path2, _ = d.optStr()
		case 3:
			x.Flags = d.nonzero(d.unsigned(u64))
		case 4:
			x.Mode = uint32(d.nonzero(d.unsigned(u32)))
		case 5:
			x.Inode = d.nonzero(d.unsigned(u64))
		case 6:
			x.Dev = d.nonzero(d.unsigned(u64))
		case 7:
			x.Result, _ = d.signed(-1<<63, 1<<63-1)
		case 8:
			x.PathUnread = d.optTrue()
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1|1<<7)
}

func (d *evDec) sock(x *capture.SockOp) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			v, _ := d.signed(-1<<31, 1<<31-1)
			x.Domain = int32(v)
		case 2:
			v, _ := d.signed(-1<<31, 1<<31-1)
			x.Type = int32(v)
		case 3:
			x.Proto = int32(d.nonzeroInt(d.signed(-1<<31, 1<<31-1)))
		case 4:
			x.Result, _ = d.signed(-1<<63, 1<<63-1)
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1|1<<2|1<<4)
}

func (d *evDec) hashes(x *capture.Hashes) bool {
	return d.fields(func(k uint64) bool {
		switch k {
		case 1:
			x.Blake3, _ = d.optStr()
		case 2:
			x.SHA256, _ = d.optStr()
		case 3:
			x.Path, _ = d.optStr()
		case 4:
			x.Size = d.nonzeroInt(d.signed(-1<<63, 1<<63-1))
		case 5:
			x.Dev = d.nonzero(d.unsigned(u64))
		case 6:
			x.Inode = d.nonzero(d.unsigned(u64))
		case 7:
			x.Cached = d.optTrue()
		case 8:
			x.Error, _ = d.optStr()
		default:
			return false
		}
		return true
	})
}

func (d *evDec) note(x *capture.TraceNote) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			x.What, _ = d.str()
		case 2:
			x.Reason, _ = d.optStr()
		case 3:
			x.Dropped = d.nonzero(d.unsigned(u64))
		case 4:
			x.Events = d.nonzero(d.unsigned(u64))
		case 5:
			x.Bytes = d.nonzeroInt(d.signed(-1<<63, 1<<63-1))
		case 6:
			x.Depth = int32(d.nonzeroInt(d.signed(-1<<31, 1<<31-1)))
		case 7:
			x.Pids = uint32(d.nonzero(d.unsigned(u32)))
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1)
}

func (d *evDec) mem(x *capture.MemSnippet) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			x.Addr, _ = d.unsigned(u64)
		case 2:
			b, ok := d.bytes()
			if ok && len(b) == 0 {
				d.fail()
			}
			x.Data = append([]byte(nil), b...)
		case 3:
			x.Error, _ = d.optStr()
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1)
}

func (d *evDec) alert(x *capture.RuleAlert) bool {
	var seen uint32
	return d.fields(func(k uint64) bool {
		seen |= 1 << k
		switch k {
		case 1:
			x.RuleID, _ = d.str()
		case 2:
			x.Pack, _ = d.optStr()
		case 3:
			x.Title, _ = d.optStr()
		case 4:
			x.Severity, _ = d.optStr()
		case 5:
			x.Technique, _ = d.optStr()
		case 6:
			x.Context, _ = d.optStr()
		default:
			return false
		}
		return true
	}) && d.required(seen, 1<<1)
}
