package capture

import "net/netip"

// AppendCBOR appends the canonical CBOR of e to b: the bytes a core
// deterministic encoder (RFC 8949 section 4.2.1) makes of the struct tags
// above with strings as byte strings, which are the event's Merkle leaf
// and its stored form. It is written out by hand because events are
// encoded once or more per event on every host; transport/wire's tests
// check it byte for byte against the reflecting encoder, and its fuzz
// target against every event its canonical decoder accepts.
func AppendCBOR(b []byte, e *Event) []byte {
	n := 4 // Time, Kind, Proc, Parent
	for _, set := range [...]bool{e.Seq != 0, e.Comm != "", e.Exec != nil, e.Exit != nil, e.Conn != nil, e.Source != "", e.TraceID != "",
		e.TraceSeq != 0, e.File != nil, e.Sock != nil, e.Hashes != nil, e.Note != nil, e.Mem != nil, e.Alert != nil} {
		if set {
			n++
		}
	}
	b = cborHead(b, 5, uint64(n))
	if e.Seq != 0 {
		b = cborUint(b, 1, e.Seq)
	}
	b = cborInt(b, 2, e.Time)
	b = cborUint(b, 3, uint64(e.Kind))
	b = appendProcKey(append(b, 4), e.Proc)
	b = appendProcKey(append(b, 5), e.Parent)
	b = cborOptStr(b, 6, e.Comm)
	if x := e.Exec; x != nil {
		b = appendExec(append(b, 7), x)
	}
	if x := e.Exit; x != nil {
		n := 1 + count(x.Signal != 0, x.Core)
		b = cborHead(append(b, 8), 5, n)
		b = cborInt(b, 1, int64(x.Code))
		b = cborOptInt(b, 2, int64(x.Signal))
		b = cborOptTrue(b, 3, x.Core)
	}
	if x := e.Conn; x != nil {
		b = cborHead(append(b, 9), 5, 3)
		b = cborUint(b, 1, uint64(x.Proto))
		b = appendAddrPort(append(b, 2), x.Src)
		b = appendAddrPort(append(b, 3), x.Dst)
	}
	b = cborOptStr(b, 10, e.Source)
	b = cborOptStr(b, 11, e.TraceID)
	b = cborOptUint(b, 12, e.TraceSeq)
	if x := e.File; x != nil {
		n := 2 + count(x.Path2 != "", x.Flags != 0, x.Mode != 0, x.Inode != 0, x.Dev != 0, x.PathUnread)
		b = cborHead(append(b, 13), 5, n)
		b = cborStr(b, 1, x.Path)
		b = cborOptStr(b, 2, x.Path2)
		b = cborOptUint(b, 3, x.Flags)
		b = cborOptUint(b, 4, uint64(x.Mode))
		b = cborOptUint(b, 5, x.Inode)
		b = cborOptUint(b, 6, x.Dev)
		b = cborInt(b, 7, x.Result)
		b = cborOptTrue(b, 8, x.PathUnread)
	}
	if x := e.Sock; x != nil {
		n := 3 + count(x.Proto != 0)
		b = cborHead(append(b, 14), 5, n)
		b = cborInt(b, 1, int64(x.Domain))
		b = cborInt(b, 2, int64(x.Type))
		b = cborOptInt(b, 3, int64(x.Proto))
		b = cborInt(b, 4, x.Result)
	}
	if x := e.Hashes; x != nil {
		n := count(x.Blake3 != "", x.SHA256 != "", x.Path != "", x.Size != 0, x.Dev != 0, x.Inode != 0, x.Cached, x.Error != "")
		b = cborHead(append(b, 15), 5, n)
		b = cborOptStr(b, 1, x.Blake3)
		b = cborOptStr(b, 2, x.SHA256)
		b = cborOptStr(b, 3, x.Path)
		b = cborOptInt(b, 4, x.Size)
		b = cborOptUint(b, 5, x.Dev)
		b = cborOptUint(b, 6, x.Inode)
		b = cborOptTrue(b, 7, x.Cached)
		b = cborOptStr(b, 8, x.Error)
	}
	if x := e.Note; x != nil {
		n := 1 + count(x.Reason != "", x.Dropped != 0, x.Events != 0, x.Bytes != 0, x.Depth != 0, x.Pids != 0)
		b = cborHead(append(b, 16), 5, n)
		b = cborStr(b, 1, x.What)
		b = cborOptStr(b, 2, x.Reason)
		b = cborOptUint(b, 3, x.Dropped)
		b = cborOptUint(b, 4, x.Events)
		b = cborOptInt(b, 5, x.Bytes)
		b = cborOptInt(b, 6, int64(x.Depth))
		b = cborOptUint(b, 7, uint64(x.Pids))
	}
	if x := e.Mem; x != nil {
		n := 1 + count(len(x.Data) != 0, x.Error != "")
		b = cborHead(append(b, 17), 5, n)
		b = cborUint(b, 1, x.Addr)
		if len(x.Data) != 0 {
			b = append(cborHead(append(b, 2), 2, uint64(len(x.Data))), x.Data...)
		}
		b = cborOptStr(b, 3, x.Error)
	}
	if x := e.Alert; x != nil {
		n := 1 + count(x.Pack != "", x.Title != "", x.Severity != "", x.Technique != "", x.Context != "")
		b = cborHead(append(b, 18), 5, n)
		b = cborStr(b, 1, x.RuleID)
		b = cborOptStr(b, 2, x.Pack)
		b = cborOptStr(b, 3, x.Title)
		b = cborOptStr(b, 4, x.Severity)
		b = cborOptStr(b, 5, x.Technique)
		b = cborOptStr(b, 6, x.Context)
	}
	return b
}

func appendExec(b []byte, x *Exec) []byte {
	n := 5 + count(len(x.Argv) != 0, x.ArgvTruncated, x.Cwd != "", x.TTY != "", x.CgroupID != 0, x.PidNS != 0, x.NetNS != 0, x.MntNS != 0,
		len(x.Env) != 0, x.EnvTruncated)
	b = cborHead(b, 5, n)
	b = cborUint(b, 1, uint64(x.UID))
	b = cborUint(b, 2, uint64(x.GID))
	b = cborUint(b, 3, uint64(x.EUID))
	b = cborUint(b, 4, uint64(x.EGID))
	b = cborStr(b, 5, x.Exe)
	b = cborOptStrs(b, 6, x.Argv)
	b = cborOptTrue(b, 7, x.ArgvTruncated)
	b = cborOptStr(b, 8, x.Cwd)
	b = cborOptStr(b, 9, x.TTY)
	b = cborOptUint(b, 10, x.CgroupID)
	b = cborOptUint(b, 11, uint64(x.PidNS))
	b = cborOptUint(b, 12, uint64(x.NetNS))
	b = cborOptUint(b, 13, uint64(x.MntNS))
	b = cborOptStrs(b, 14, x.Env)
	return cborOptTrue(b, 15, x.EnvTruncated)
}

func appendProcKey(b []byte, k ProcKey) []byte {
	b = cborHead(b, 5, 2)
	b = cborUint(b, 1, uint64(k.PID))
	return cborUint(b, 2, k.Start)
}

// appendAddrPort writes an address as its MarshalBinary bytes (how the
// reflecting encoder writes a BinaryMarshaler), without the allocation.
func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	raw, _ := ap.MarshalBinary() // never fails
	return append(cborHead(b, 2, uint64(len(raw))), raw...)
}

func count(set ...bool) uint64 {
	var n uint64
	for _, s := range set {
		if s {
			n++
		}
	}
	return n
}

// AppendCBORHead appends a CBOR head of major type major and argument n in
// its shortest (canonical) form.
func AppendCBORHead(b []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(b, m|byte(n))
	case n <= 0xff:
		return append(b, m|24, byte(n))
	case n <= 0xffff:
		return append(b, m|25, byte(n>>8), byte(n))
	case n <= 0xffffffff:
		return append(b, m|26, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	}
	return append(b, m|27, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// AppendCBORInt appends v as a canonical CBOR integer (major 0 or 1).
func AppendCBORInt(b []byte, v int64) []byte {
	if v < 0 {
		return AppendCBORHead(b, 1, uint64(-(v + 1)))
	}
	return AppendCBORHead(b, 0, uint64(v))
}

func cborHead(b []byte, major byte, n uint64) []byte { return AppendCBORHead(b, major, n) }

// Keys are below 24: one byte each.

func cborUint(b []byte, key byte, v uint64) []byte { return cborHead(append(b, key), 0, v) }

func cborInt(b []byte, key byte, v int64) []byte { return AppendCBORInt(append(b, key), v) }

func cborStr(b []byte, key byte, s string) []byte {
	return append(cborHead(append(b, key), 2, uint64(len(s))), s...)
}

func cborOptUint(b []byte, key byte, v uint64) []byte {
	if v == 0 {
		return b
	}
	return cborUint(b, key, v)
}

func cborOptInt(b []byte, key byte, v int64) []byte {
	if v == 0 {
		return b
	}
	return cborInt(b, key, v)
}

func cborOptStr(b []byte, key byte, s string) []byte {
	if s == "" {
		return b
	}
	return cborStr(b, key, s)
}

func cborOptTrue(b []byte, key byte, v bool) []byte {
	if !v {
		return b
	}
	return append(b, key, 0xf5)
}

func cborOptStrs(b []byte, key byte, ss []string) []byte {
	if len(ss) == 0 {
		return b
	}
	b = cborHead(append(b, key), 4, uint64(len(ss)))
	for _, s := range ss {
		b = append(cborHead(b, 2, uint64(len(s))), s...)
	}
	return b
}

// PeekCBOR reads an event's time, kind and trace id from its canonical
// CBOR (AppendCBOR's bytes) without decoding the rest. ok is false for
// anything it cannot read that way; callers then decode it in full, which
// also explains what is wrong.
func PeekCBOR(b []byte) (t int64, kind Kind, traceID string, ok bool) {
	p := peeker{b: b}
	n, ok := p.head(5)
	if !ok {
		return 0, 0, "", false
	}
	var seen uint8
	for range n {
		k, ok := p.head(0)
		if !ok || k > 0xff {
			return 0, 0, "", false
		}
		switch k {
		case 2:
			if len(p.b) == 0 {
				return 0, 0, "", false
			}
			neg := p.b[0]>>5 == 1
			v, ok := p.head(p.b[0] >> 5)
			if !ok || v > 1<<63-1 {
				return 0, 0, "", false
			}
			t = int64(v)
			if neg {
				t = -1 - t
			}
			seen |= 1
		case 3:
			v, ok := p.head(0)
			if !ok || v > 0xff {
				return 0, 0, "", false
			}
			kind, seen = Kind(v), seen|2
		case 11:
			n, ok := p.head(2)
			if !ok || n > uint64(len(p.b)) {
				return 0, 0, "", false
			}
			traceID, p.b = string(p.b[:n]), p.b[n:]
		default:
			if !p.skip(0) {
				return 0, 0, "", false
			}
		}
	}
	return t, kind, traceID, seen == 3 && len(p.b) == 0
}

// peeker reads definite-length CBOR.
type peeker struct{ b []byte }

// head reads a head of major type major; ok false on any other.
func (p *peeker) head(major byte) (uint64, bool) {
	if len(p.b) == 0 || p.b[0]>>5 != major {
		return 0, false
	}
	info := p.b[0] & 0x1f
	if info < 24 {
		p.b = p.b[1:]
		return uint64(info), true
	}
	if info > 27 {
		return 0, false
	}
	size := 1 << (info - 24)
	if len(p.b) < 1+size {
		return 0, false
	}
	var n uint64
	for _, c := range p.b[1 : 1+size] {
		n = n<<8 | uint64(c)
	}
	p.b = p.b[1+size:]
	return n, true
}

// skip steps over one data item, at most 8 levels deep.
func (p *peeker) skip(depth int) bool {
	if len(p.b) == 0 || depth > 8 {
		return false
	}
	major := p.b[0] >> 5
	if major == 7 { // simple values and floats
		switch info := p.b[0] & 0x1f; {
		case info < 24:
			p.b = p.b[1:]
			return true
		case info <= 27:
			size := 1 << (info - 24)
			if len(p.b) < 1+size {
				return false
			}
			p.b = p.b[1+size:]
			return true
		}
		return false
	}
	n, ok := p.head(major)
	if !ok {
		return false
	}
	switch major {
	case 0, 1:
		return true
	case 2, 3:
		if n > uint64(len(p.b)) {
			return false
		}
		p.b = p.b[n:]
		return true
	case 4, 5:
		items := n
		if major == 5 {
			items = 2 * n
		}
		if items > uint64(len(p.b)) { // each item is at least a byte
			return false
		}
		for range items {
			if !p.skip(depth + 1) {
				return false
			}
		}
		return true
	case 6:
		return p.skip(depth + 1)
	}
	return false
}
