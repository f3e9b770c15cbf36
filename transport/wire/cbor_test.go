package wire

import "encoding/binary"

// Hand-built CBOR for inputs our encoder would never produce.

// head encodes a CBOR major type and argument in the shortest form.
func head(major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return []byte{m | byte(n)}
	case n <= 0xff:
		return []byte{m | 24, byte(n)}
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16([]byte{m | 25}, uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32([]byte{m | 26}, uint32(n))
	}
	return binary.BigEndian.AppendUint64([]byte{m | 27}, n)
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func cuint(n uint64) []byte  { return head(0, n) }
func cbytes(b string) []byte { return cat(head(2, uint64(len(b))), []byte(b)) }
func ctext(s string) []byte  { return cat(head(3, uint64(len(s))), []byte(s)) }
func carr(items ...[]byte) []byte {
	return cat(append([][]byte{head(4, uint64(len(items)))}, items...)...)
}

// cmap builds a map from key, value, key, value... in the order given.
func cmap(kv ...[]byte) []byte {
	return cat(append([][]byte{head(5, uint64(len(kv)/2))}, kv...)...)
}

// env wraps a body as a frame envelope {1: type, 2: body}.
func env(t Type, body []byte) []byte { return cmap(cuint(1), cuint(uint64(t)), cuint(2), body) }

// prefixed adds the 4-byte length prefix.
func prefixed(b []byte) []byte { return binary.BigEndian.AppendUint32(nil, uint32(len(b))) }

func framed(b []byte) []byte { return cat(prefixed(b), b) }
