package wire

import (
	"bytes"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"
)

// allFrames has one populated message of every type.
func allFrames() []Frame {
	return []Frame{
		&Hello{NodeID: "px-us-east-1a", Role: RoleProxy, Version: ProtocolVersion,
			Hops: []string{"px-region-1", "sc-1"}, Agents: []string{"ag-1", "ag-2", "ag-\xff-raw"}},
		&HelloAck{NodeID: "px-region-1", Version: ProtocolVersion},
		&HelloAck{NodeID: "px-region-1", Version: ProtocolVersion, Code: HelloCycle, Reason: "px-region-1 already in hops"},
		&BatchFrame{Lane: LaneTrace, Sealed: []byte{0xd2, 0x84, 1, 2, 3}},
		&Ack{Lane: LaneAlert, AgentID: "ag-1", Seq: 1<<63 + 5},
		&Nack{Lane: LaneBulk, AgentID: "ag-1", Seq: 7, Code: NackOverWatermark, Reason: "disk 91% > high mark 90%"},
		&Command{CommandID: "T-20251013-001", Target: "ag-2", Expires: 1_760_000_000_000_000_000, Payload: []byte("signed trace command")},
		&CommandAck{CommandID: "T-20251013-001", AgentID: "ag-2", Status: CommandAccepted, Detail: "tracing pid 1234 depth 6"},
		&CRL{DER: []byte{0x30, 0x82, 0x01, 0x0a}},
		&RenewRequest{NodeID: "ag-2", CSR: []byte{0x30, 0x81, 0x9f}},
		&RenewResponse{NodeID: "ag-2", Cert: []byte{0x30, 1}, Chain: [][]byte{{0x30, 2}, {0x30, 3}}},
		&RenewResponse{NodeID: "ag-2", Error: "csr key does not match enrolled key"},
		&Announce{Added: []string{"ag-9"}, Removed: []string{"ag-3", "ag-4"}},
		&Ping{Nonce: 42, Time: -1},
		&Pong{Nonce: 42, Time: 1_760_000_000_123_456_789},
		&Health{NodeID: "web-1", Role: RoleAgent, Version: "daemoneye 1.0", Addresses: []string{"10.0.0.2"}, Time: 1_760_000_000_123_456_789,
			Lost: map[string]uint64{"ring_full": 3}, Figures: map[string]uint64{"events_stored": 9}, Path: []string{"px2", "px1"}},
		&RulePacks{Seq: 1_760_000_000_000_000_001, Packs: []RulePack{
			{Name: "site", Data: []byte("format: 1\npack: site\nversion: \"2\"\nrules: []\n"), Sig: []byte("c2lnbmF0dXJl\n")},
			{Name: "unsigned", Data: []byte("format: 1\npack: unsigned\n")}}},
	}
}

func TestFrameRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	frames := allFrames()
	seen := map[Type]bool{}
	for _, f := range frames {
		if err := WriteFrame(&buf, f); err != nil {
			t.Fatalf("WriteFrame(%T): %v", f, err)
		}
		seen[f.Type()] = true
	}
	for typ := TypeHello; typ <= TypeRulePacks; typ++ {
		if !seen[typ] {
			t.Errorf("allFrames has no %s", typ)
		}
	}
	r := NewReader(&buf, Limits{})
	for i, want := range frames {
		got, err := r.ReadFrame()
		if err != nil {
			t.Fatalf("frame %d (%T): ReadFrame: %v", i, want, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("frame %d: got %#v, want %#v", i, got, want)
		}
	}
	if _, err := r.ReadFrame(); err != io.EOF {
		t.Fatalf("after last frame: got %v, want io.EOF", err)
	}
}

// Values and pointers encode the same.
func TestWriteFrameValue(t *testing.T) {
	a, err := AppendFrame(nil, Ping{Nonce: 1, Time: 2})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := AppendFrame(nil, &Ping{Nonce: 1, Time: 2})
	if !bytes.Equal(a, b) {
		t.Fatalf("value and pointer encode differently: %x vs %x", a, b)
	}
}

func TestFrameDeterministic(t *testing.T) {
	for _, f := range allFrames() {
		a, err := AppendFrame(nil, f)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := AppendFrame(nil, f)
		if !bytes.Equal(a, b) {
			t.Errorf("%s: two encodings differ", f.Type())
		}
		// Decoding and re-encoding is the identity on our own output.
		got, err := DecodeFrame(a[headerSize:], Limits{})
		if err != nil {
			t.Fatalf("%s: %v", f.Type(), err)
		}
		c, _ := AppendFrame(nil, got)
		if !bytes.Equal(a, c) {
			t.Errorf("%s: re-encoding differs", f.Type())
		}
	}

	// The same message with map keys in another order (and text strings
	// instead of byte strings) decodes to the same value, and encodes back
	// to the one canonical form with keys sorted.
	want := &Nack{Lane: LaneBulk, AgentID: "ag-1", Seq: 300, Code: NackReplay, Reason: "seen"}
	shuffled := env(TypeNack, cmap(
		cuint(5), ctext("seen"),
		cuint(3), cuint(300),
		cuint(1), cuint(3),
		cuint(4), cuint(2),
		cuint(2), ctext("ag-1"),
	))
	got, err := DecodeFrame(shuffled, Limits{})
	if err != nil {
		t.Fatalf("shuffled keys: %v", err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("shuffled keys: got %#v, want %#v", got, want)
	}
	canon, _ := AppendFrame(nil, got)
	wantCanon := env(TypeNack, cmap(
		cuint(1), cuint(3),
		cuint(2), cbytes("ag-1"),
		cuint(3), cuint(300),
		cuint(4), cuint(2),
		cuint(5), cbytes("seen"),
	))
	if !bytes.Equal(canon[headerSize:], wantCanon) {
		t.Fatalf("canonical form:\n got %x\nwant %x", canon[headerSize:], wantCanon)
	}
}

func TestReadFrameBadInput(t *testing.T) {
	validHello := env(TypeHello, cmap(cuint(1), cbytes("n"), cuint(2), cuint(1), cuint(3), cuint(1)))
	nested := func(depth int) []byte {
		b := cuint(0)
		for range depth {
			b = carr(b)
		}
		return b
	}
	tests := []struct {
		name  string
		input []byte
		lim   Limits
		want  error
	}{
		{"length prefix 4GiB-1", []byte{0xff, 0xff, 0xff, 0xff}, Limits{}, ErrFrameTooLarge},
		{"length prefix max+1", prefixed(make([]byte, DefaultMaxFrameSize+1)), Limits{}, ErrFrameTooLarge},
		{"length prefix over configured max", prefixed(make([]byte, 1025)), Limits{MaxFrameSize: 1024}, ErrFrameTooLarge},
		{"truncated prefix", []byte{0, 0}, Limits{}, ErrTruncated},
		{"truncated body", prefixed(validHello)[:4:4], Limits{}, ErrTruncated},
		{"truncated body half", cat(prefixed(validHello), validHello[:len(validHello)/2]), Limits{}, ErrTruncated},
		{"zero length", []byte{0, 0, 0, 0}, Limits{}, ErrMalformed},
		{"trailing garbage in frame", framed(cat(validHello, []byte{0x00})), Limits{}, ErrMalformed},
		{"two items in frame", framed(cat(validHello, validHello)), Limits{}, ErrMalformed},
		{"cbor prefix shorter than frame", framed(validHello[:len(validHello)-1]), Limits{}, ErrMalformed},
		{"nesting depth bomb", framed(env(TypeHello, cmap(cuint(1), cbytes("n"), cuint(99), nested(10000)))), Limits{}, ErrMalformed},
		{"nesting just over limit", framed(env(TypeHello, cmap(cuint(1), cbytes("n"), cuint(99), nested(16)))), Limits{}, ErrMalformed},
		{"huge array length claim", framed(env(TypeHello, cmap(cuint(1), cbytes("n"), cuint(5), head(4, 1<<62)))), Limits{}, ErrMalformed},
		{"huge byte string claim", framed(env(TypeCRL, cmap(cuint(1), head(2, 1<<62)))), Limits{}, ErrMalformed},
		{"array over MaxArrayElements", framed(env(TypeAnnounce, cmap(cuint(1), carr(repeat(cbytes("a"), 17)...)))), Limits{MaxArrayElements: 16}, ErrMalformed},
		{"map over MaxMapPairs", framed(env(TypePing, manyPairs(65))), Limits{}, ErrMalformed},
		{"duplicate key in envelope", framed(cmap(cuint(1), cuint(12), cuint(1), cuint(13), cuint(2), cmap())), Limits{}, ErrMalformed},
		{"duplicate key in body", framed(env(TypeAck, cmap(cuint(1), cuint(1), cuint(2), cbytes("a"), cuint(3), cuint(1), cuint(3), cuint(2)))), Limits{}, ErrMalformed},
		{"duplicate unknown key in body", framed(env(TypePing, cmap(cuint(9), cuint(1), cuint(9), cuint(2)))), Limits{}, ErrMalformed},
		{"indefinite-length map", framed(cat([]byte{0xbf}, cuint(1), cuint(12), cuint(2), cmap(), []byte{0xff})), Limits{}, ErrMalformed},
		{"indefinite-length byte string", framed(env(TypeCRL, cmap(cuint(1), []byte{0x5f, 0x41, 0x30, 0xff}))), Limits{}, ErrMalformed},
		{"indefinite-length array", framed(env(TypeAnnounce, cmap(cuint(1), []byte{0x9f, 0x41, 0x61, 0xff}))), Limits{}, ErrMalformed},
		{"tag", framed(env(TypePing, cmap(cuint(1), cat([]byte{0xc1}, cuint(5))))), Limits{}, ErrMalformed},
		{"invalid utf-8 text string", framed(env(TypeHello, cmap(cuint(1), ctext("\xff\xfe"), cuint(2), cuint(1)))), Limits{}, ErrMalformed},
		{"wrong field type", framed(env(TypePing, cmap(cuint(1), ctext("x")))), Limits{}, ErrMalformed},
		{"negative into uint", framed(env(TypePing, cmap(cuint(1), head(1, 0)))), Limits{}, ErrMalformed},
		{"type overflows uint8", framed(cmap(cuint(1), cuint(256), cuint(2), cmap())), Limits{}, ErrMalformed},
		{"envelope not a map", framed(carr(cuint(12), cmap())), Limits{}, ErrMalformed},
		{"body not a map", framed(env(TypePing, carr())), Limits{}, ErrMalformed},
		{"no body", framed(cmap(cuint(1), cuint(12))), Limits{}, ErrMalformed},
		{"unknown envelope key", framed(cmap(cuint(1), cuint(12), cuint(2), cmap(), cuint(3), cuint(0))), Limits{}, ErrMalformed},
		{"invalid lane", framed(env(TypeBatch, cmap(cuint(1), cuint(9), cuint(2), cbytes("x")))), Limits{}, ErrMalformed},
		{"empty hello node id", framed(env(TypeHello, cmap(cuint(2), cuint(1)))), Limits{}, ErrMalformed},
		{"not cbor at all", framed([]byte{0xff, 0xff, 0xff}), Limits{}, ErrMalformed},
		{"reserved additional info", framed([]byte{0x1c}), Limits{}, ErrMalformed},
		{"unknown message type", framed(env(Type(99), cmap())), Limits{}, ErrUnknownType},
		{"type zero", framed(env(Type(0), cmap())), Limits{}, ErrUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(bytes.NewReader(tt.input), tt.lim)
			f, err := r.ReadFrame()
			if !errors.Is(err, tt.want) {
				t.Fatalf("ReadFrame = %#v, %v; want error %v", f, err, tt.want)
			}
			if f != nil {
				t.Fatalf("got frame %#v with error", f)
			}
			t.Logf("%v", err)
			if err.Error() == "" || strings.Contains(err.Error(), "%!") {
				t.Fatalf("unclear error text %q", err)
			}
		})
	}
}

// manyPairs is a map with n distinct integer keys.
func manyPairs(n int) []byte {
	kv := make([][]byte, 0, 2*n)
	for i := range n {
		kv = append(kv, cuint(uint64(100+i)), cuint(0))
	}
	return cmap(kv...)
}

func repeat(b []byte, n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = b
	}
	return out
}

// An oversized length prefix must be refused before the body is read or
// allocated, and a lying prefix costs only what the peer actually sends.
func TestReadFrameAllocation(t *testing.T) {
	t.Run("oversized prefix reads nothing more", func(t *testing.T) {
		src := &countingReader{r: bytes.NewReader(append([]byte{0x7f, 0xff, 0xff, 0xff}, make([]byte, 1<<20)...))}
		_, err := NewReader(src, Limits{}).ReadFrame()
		if !errors.Is(err, ErrFrameTooLarge) {
			t.Fatalf("got %v, want ErrFrameTooLarge", err)
		}
		if src.n != headerSize {
			t.Fatalf("read %d bytes, want only the %d-byte prefix", src.n, headerSize)
		}
	})
	t.Run("lying prefix", func(t *testing.T) {
		in := append([]byte{0x00, 0x3f, 0xff, 0xff}, make([]byte, 100)...) // claims ~4 MiB, sends 100 bytes
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err := NewReader(bytes.NewReader(in), Limits{}).ReadFrame()
		runtime.ReadMemStats(&after)
		if !errors.Is(err, ErrTruncated) {
			t.Fatalf("got %v, want ErrTruncated", err)
		}
		if d := after.TotalAlloc - before.TotalAlloc; d > 1<<20 {
			t.Fatalf("allocated %d bytes for a 100-byte frame", d)
		}
	})
}

type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// Large frames, read in chunks across many small reads, arrive intact.
func TestReadFrameLarge(t *testing.T) {
	big := &BatchFrame{Lane: LaneBulk, Sealed: bytes.Repeat([]byte{0xa5, 0x5a, 0x01}, 1<<20)}
	var buf bytes.Buffer
	if err := WriteFrame(&buf, big); err != nil {
		t.Fatal(err)
	}
	if err := WriteFrame(&buf, &Ping{Nonce: 1}); err != nil {
		t.Fatal(err)
	}
	r := NewReader(&oneByteAtATime{r: &buf, max: 4093}, Limits{})
	got, err := r.ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, big) {
		t.Fatal("large frame differs after round trip")
	}
	if got, err := r.ReadFrame(); err != nil || got.(*Ping).Nonce != 1 {
		t.Fatalf("frame after a large one: %v, %v", got, err)
	}
}

type oneByteAtATime struct {
	r   io.Reader
	max int
}

func (o *oneByteAtATime) Read(p []byte) (int, error) {
	return o.r.Read(p[:min(len(p), o.max)])
}

func TestWriteFrameTooLarge(t *testing.T) {
	err := WriteFrame(io.Discard, &BatchFrame{Lane: LaneBulk, Sealed: make([]byte, DefaultMaxFrameSize)})
	if !errors.Is(err, ErrFrameTooLarge) || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge (and ErrTooLarge)", err)
	}
	if err := WriteFrame(io.Discard, nil); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("nil frame: got %v, want ErrUnknownType", err)
	}
	if err := WriteFrame(io.Discard, (*Hello)(nil)); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("nil *Hello: got %v, want ErrUnknownType", err)
	}
}

// A read error from the stream is reported as itself, not as bad input.
func TestReadFrameIOError(t *testing.T) {
	boom := errors.New("connection reset")
	_, err := NewReader(io.MultiReader(bytes.NewReader([]byte{0, 0, 0, 9, 1}), errReader{boom}), Limits{}).ReadFrame()
	if !errors.Is(err, boom) || errors.Is(err, ErrMalformed) || errors.Is(err, ErrTruncated) {
		t.Fatalf("got %v, want the stream's own error", err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// An unknown or malformed frame is consumed whole: the next one reads.
func TestReadFrameSkipsBadFrame(t *testing.T) {
	next, _ := AppendFrame(nil, &Ping{Nonce: 9})
	in := cat(framed(env(Type(200), cmap(cuint(1), cuint(1)))), framed([]byte{0xff}), next)
	r := NewReader(bytes.NewReader(in), Limits{})
	if _, err := r.ReadFrame(); !errors.Is(err, ErrUnknownType) {
		t.Fatalf("first: %v, want ErrUnknownType", err)
	}
	if _, err := r.ReadFrame(); !errors.Is(err, ErrMalformed) {
		t.Fatalf("second: %v, want ErrMalformed", err)
	}
	f, err := r.ReadFrame()
	if err != nil || f.(*Ping).Nonce != 9 {
		t.Fatalf("third: %v, %v; want the ping", f, err)
	}
}
