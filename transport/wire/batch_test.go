package wire

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"io"
	"math"
	"net/netip"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/fxamacker/cbor/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/veraison/go-cose"
)

// oddEvents are events whose strings are not UTF-8 and whose addresses
// cover every netip shape.
func oddEvents() []capture.Event {
	return []capture.Event{
		{Seq: 1, Time: 100, Kind: capture.KindExec, Proc: capture.ProcKey{PID: 4242, Start: 77}, Parent: capture.ProcKey{PID: 1, Start: 2},
			Comm: "caf\xe9", Source: "proc",
			Exec: &capture.Exec{UID: 0, Exe: "/tmp/\xff\xfe/bin", Argv: []string{"sh", "-c", "echo \xc3\x28 \xa0\xa1", "", "\x00nul"},
				ArgvTruncated: true, Cwd: "/home/\x80", TTY: "pts/0"}},
		{Time: 90, Kind: capture.KindConnect, Proc: capture.ProcKey{PID: 4242, Start: 77},
			Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: netip.MustParseAddrPort("10.0.0.5:51234"), Dst: netip.MustParseAddrPort("192.0.2.1:22")}},
		{Time: 95, Kind: capture.KindAccept, Proc: capture.ProcKey{PID: 80, Start: 3},
			Conn: &capture.Conn{Proto: capture.ProtoTCP, Src: netip.MustParseAddrPort("[2001:db8::1]:443"), Dst: netip.MustParseAddrPort("[::ffff:198.51.100.7]:60000")}},
		{Time: 96, Kind: capture.KindClose, Proc: capture.ProcKey{PID: 80, Start: 3},
			Conn: &capture.Conn{Proto: capture.ProtoUDP, Src: netip.MustParseAddrPort("[fe80::1%eth0]:5353"), Dst: netip.AddrPortFrom(netip.IPv6Unspecified(), 0)}},
		{Time: 97, Kind: capture.KindClose, Proc: capture.ProcKey{PID: 81, Start: 3},
			Conn: &capture.Conn{Proto: capture.ProtoTCP}}, // zero AddrPorts
		{Time: 120, Kind: capture.KindExit, Proc: capture.ProcKey{PID: 4242, Start: 77}, Exit: &capture.Exit{Code: -1, Signal: 9, Core: true}},
		{Time: 101, Kind: capture.KindFork, Proc: capture.ProcKey{PID: 4243, Start: 78}, Parent: capture.ProcKey{PID: 4242, Start: 77}},
	}
}

func TestSealOpenRoundTrip(t *testing.T) {
	for _, compress := range []bool{true, false} {
		evs := oddEvents()
		sealed := mustSeal(t, "ag-\xffodd", 1<<40, evs, compress)
		b, err := OpenBatch(sealed, testPub(), Limits{})
		if err != nil {
			t.Fatalf("compress=%v: OpenBatch: %v", compress, err)
		}
		if b.AgentID != "ag-\xffodd" || b.Seq != 1<<40 {
			t.Errorf("compress=%v: got agent %q seq %d", compress, b.AgentID, b.Seq)
		}
		if b.TSStart != 90 || b.TSEnd != 120 {
			t.Errorf("compress=%v: ts %d..%d, want 90..120", compress, b.TSStart, b.TSEnd)
		}
		if !reflect.DeepEqual(b.Events, evs) {
			t.Errorf("compress=%v: events differ:\n got %#v\nwant %#v", compress, b.Events, evs)
		}
		for i := range evs {
			// The argv bytes survive exactly.
			if evs[i].Exec != nil {
				for j, a := range evs[i].Exec.Argv {
					if b.Events[i].Exec.Argv[j] != a {
						t.Errorf("argv[%d] = %q, want %q", j, b.Events[i].Exec.Argv[j], a)
					}
				}
			}
			enc, err := EncodeEvent(b.Events[i])
			if err != nil || !bytes.Equal(enc, b.EventCBOR(i)) {
				t.Errorf("event %d: EncodeEvent differs from the signed leaf (%v)", i, err)
			}
		}
		agent, seq, err := PeekBatch(sealed)
		if err != nil || agent != "ag-\xffodd" || seq != 1<<40 {
			t.Errorf("PeekBatch = %q, %d, %v", agent, seq, err)
		}
	}
}

// Every Go string in an event is a CBOR byte string, never a text string.
func TestEventStringsAreByteStrings(t *testing.T) {
	enc, err := EncodeEvent(oddEvents()[0])
	if err != nil {
		t.Fatal(err)
	}
	var generic map[uint64]any
	if err := cbor.Unmarshal(enc, &generic); err != nil {
		t.Fatalf("generic decode: %v", err)
	}
	if _, ok := generic[6].([]byte); !ok {
		t.Errorf("comm is %T, want []byte", generic[6])
	}
	exec := generic[7].(map[any]any)
	for i, a := range exec[uint64(6)].([]any) {
		if _, ok := a.([]byte); !ok {
			t.Errorf("argv[%d] is %T, want []byte", i, a)
		}
	}
	// No major type 3 (text) head anywhere the encoder wrote a string:
	// decoding with text strings forbidden from Go strings would fail.
	strict, _ := cbor.DecOptions{UTF8: cbor.UTF8RejectInvalid}.DecMode()
	var e capture.Event
	if err := strict.Unmarshal(enc, &e); err == nil {
		t.Fatal("a decoder without ByteStringToString accepted the event: strings were text")
	}
}

// A proxy decodes the frame, peeks at the header and forwards the sealed
// bytes; the center opens exactly those bytes.
func TestForwardUnchanged(t *testing.T) {
	sealed := mustSeal(t, "ag-7", 99, execEvents(50), true)
	var agentToProxy, proxyToCenter bytes.Buffer
	if err := WriteFrame(&agentToProxy, &BatchFrame{Lane: LaneTrace, Sealed: sealed}); err != nil {
		t.Fatal(err)
	}
	// proxy
	f, err := NewReader(&agentToProxy, Limits{}).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	in := f.(*BatchFrame)
	if agent, seq, err := PeekBatch(in.Sealed); err != nil || agent != "ag-7" || seq != 99 {
		t.Fatalf("proxy PeekBatch = %q %d %v", agent, seq, err)
	}
	if err := WriteFrame(&proxyToCenter, &BatchFrame{Lane: in.Lane, Sealed: in.Sealed}); err != nil {
		t.Fatal(err)
	}
	// center
	f, err = NewReader(&proxyToCenter, Limits{}).ReadFrame()
	if err != nil {
		t.Fatal(err)
	}
	out := f.(*BatchFrame)
	if !bytes.Equal(out.Sealed, sealed) {
		t.Fatal("forwarded bytes differ from the agent's")
	}
	b, err := OpenBatch(out.Sealed, testPub(), Limits{})
	if err != nil {
		t.Fatalf("OpenBatch on forwarded bytes: %v", err)
	}
	if b.Seq != 99 || len(b.Events) != 50 {
		t.Fatalf("got seq %d, %d events", b.Seq, len(b.Events))
	}
}

// sign1Parts locates the payload and signature inside sealed.
func sign1Parts(t *testing.T, sealed []byte) (payloadAt, sigAt int) {
	t.Helper()
	var m cose.Sign1Message
	if err := m.UnmarshalCBOR(sealed); err != nil {
		t.Fatal(err)
	}
	payloadAt = bytes.Index(sealed, m.Payload)
	sigAt = bytes.LastIndex(sealed, m.Signature)
	if payloadAt < 0 || sigAt < 0 {
		t.Fatal("cannot find payload or signature")
	}
	return payloadAt, sigAt
}

func TestBadSignature(t *testing.T) {
	for _, compress := range []bool{true, false} {
		sealed := mustSeal(t, "agent-tamper", 0x1234, execEvents(20), compress)
		payloadAt, sigAt := sign1Parts(t, sealed)
		kidAt := bytes.Index(sealed, []byte("agent-tamper"))
		seqAt := bytes.Index(sealed, []byte{0x3a, 0x00, 0x01, 0x11, 0x70, 0x19, 0x12, 0x34}) // -70001: 0x1234
		if kidAt < 0 || kidAt > payloadAt || seqAt < 0 || seqAt > payloadAt {
			t.Fatalf("cannot find kid (%d) or seq (%d) in the protected header", kidAt, seqAt)
		}
		flip := func(i int) []byte {
			b := bytes.Clone(sealed)
			b[i] ^= 0x01
			return b
		}
		other := ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, 32)).Public().(ed25519.PublicKey)
		cases := []struct {
			name   string
			sealed []byte
			pub    ed25519.PublicKey
		}{
			{"signature first byte", flip(sigAt), testPub()},
			{"signature last byte", flip(len(sealed) - 1), testPub()},
			{"payload first byte", flip(payloadAt), testPub()},
			{"payload middle byte", flip(payloadAt + (sigAt-payloadAt)/2), testPub()},
			{"header kid", flip(kidAt + 3), testPub()},
			{"header seq", flip(seqAt + 7), testPub()},
			{"another key", sealed, other},
		}
		for _, c := range cases {
			_, err := OpenBatch(c.sealed, c.pub, Limits{})
			if !errors.Is(err, ErrBadSignature) {
				t.Errorf("compress=%v %s: got %v, want ErrBadSignature", compress, c.name, err)
			}
		}
	}
}

// signRaw signs an arbitrary payload the way SealBatch does, for inputs a
// well-behaved agent would never produce but a compromised one could.
func signRaw(t testing.TB, agent string, seq uint64, ct string, payload []byte) []byte {
	t.Helper()
	m := cose.Sign1Message{
		Headers: cose.Headers{Protected: cose.ProtectedHeader{
			cose.HeaderLabelAlgorithm:   cose.AlgorithmEdDSA,
			cose.HeaderLabelContentType: ct,
			cose.HeaderLabelKeyID:       []byte(agent),
			HeaderLabelSeq:              seq,
		}},
		Payload: payload,
	}
	s, err := cose.NewSigner(cose.AlgorithmEdDSA, testKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Sign(nil, nil, s); err != nil {
		t.Fatal(err)
	}
	b, err := m.MarshalCBOR()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// bodyOf returns the (uncompressed) body of a sealed batch.
func bodyOf(t *testing.T, sealed []byte) batchBody {
	t.Helper()
	var m cose.Sign1Message
	if err := m.UnmarshalCBOR(sealed); err != nil {
		t.Fatal(err)
	}
	c, _ := codecFor(Limits{})
	var body batchBody
	if err := c.strict.Unmarshal(m.Payload, &body); err != nil {
		t.Fatal(err)
	}
	return body
}

func encBody(t *testing.T, body batchBody) []byte {
	t.Helper()
	b, err := encMode.Marshal(&body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Validly signed but inconsistent batches are refused after verification.
func TestOpenBatchSignedGarbage(t *testing.T) {
	good := bodyOf(t, mustSeal(t, "ag-1", 5, execEvents(4), false))

	wrongRoot := good
	wrongRoot.Root = bytes.Repeat([]byte{1}, 32)

	changedEvent := good
	changedEvent.Events = append([]cbor.RawMessage(nil), good.Events...)
	ev := execEvents(4)[1]
	ev.Comm = "evil"
	changedEvent.Events[1], _ = EncodeEvent(ev)

	// The same event, encoded with a text string instead of a byte string:
	// decodes fine but is not canonical, so its leaf could not be rebuilt.
	textComm := good
	textComm.Events = []cbor.RawMessage{cat(head(5, 4), cuint(2), cuint(100), cuint(3), cuint(1), cuint(4), cmap(cuint(1), cuint(1), cuint(2), cuint(1)), cuint(6), ctext("sh"))}
	textComm.TSStart, textComm.TSEnd = 100, 100
	root := merkleRoot([][]byte{textComm.Events[0]})
	textComm.Root = root[:]

	// Non-shortest integer encoding.
	longInt := textComm
	longInt.Events = []cbor.RawMessage{cat(head(5, 3), cuint(2), []byte{0x19, 0x00, 0x64}, cuint(3), cuint(1), cuint(4), cmap(cuint(1), cuint(1), cuint(2), cuint(1)))}
	root = merkleRoot([][]byte{longInt.Events[0]})
	longInt.Root = root[:]

	unknownField := textComm
	unknownField.Events = []cbor.RawMessage{cat(head(5, 4), cuint(2), cuint(100), cuint(3), cuint(1), cuint(4), cmap(cuint(1), cuint(1), cuint(2), cuint(1)), cuint(77), cuint(1))}
	root = merkleRoot([][]byte{unknownField.Events[0]})
	unknownField.Root = root[:]

	noEvents := good
	noEvents.Events = nil
	noEvents.Root = make([]byte, 32)

	backwardsTime := good
	backwardsTime.TSStart, backwardsTime.TSEnd = 10, 5

	narrowTime := good
	narrowTime.TSStart = good.TSEnd

	zcompress := func(b []byte) []byte {
		z, _ := zstd.NewWriter(nil)
		return z.EncodeAll(b, nil)
	}

	cases := []struct {
		name   string
		sealed []byte
		want   error
	}{
		{"header agent differs from body", signRaw(t, "ag-2", 5, ContentTypeBatch, encBody(t, good)), ErrMalformed},
		{"header seq differs from body", signRaw(t, "ag-1", 6, ContentTypeBatch, encBody(t, good)), ErrMalformed},
		{"wrong merkle root", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, wrongRoot)), ErrMalformed},
		{"event changed after hashing", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, changedEvent)), ErrMalformed},
		{"text string in event", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, textComm)), ErrMalformed},
		{"non-shortest integer in event", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, longInt)), ErrMalformed},
		{"unknown event field", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, unknownField)), ErrMalformed},
		{"no events", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, noEvents)), ErrMalformed},
		{"ts_start after ts_end", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, backwardsTime)), ErrMalformed},
		{"event outside ts range", signRaw(t, "ag-1", 5, ContentTypeBatch, encBody(t, narrowTime)), ErrMalformed},
		{"unknown content type", signRaw(t, "ag-1", 5, "application/json", encBody(t, good)), ErrMalformed},
		{"zstd content type, plain payload", signRaw(t, "ag-1", 5, ContentTypeBatchZstd, encBody(t, good)), ErrMalformed},
		{"plain content type, zstd payload", signRaw(t, "ag-1", 5, ContentTypeBatch, zcompress(encBody(t, good))), ErrMalformed},
		{"body with trailing data", signRaw(t, "ag-1", 5, ContentTypeBatch, append(encBody(t, good), 0)), ErrMalformed},
		{"body not cbor", signRaw(t, "ag-1", 5, ContentTypeBatch, []byte("hello")), ErrMalformed},
		{"nesting bomb in body", signRaw(t, "ag-1", 5, ContentTypeBatchZstd, zcompress(cat(head(5, 1), cuint(9), bytes.Repeat([]byte{0x81}, 100000), cuint(0)))), ErrMalformed},
		{"empty sealed", nil, ErrMalformed},
		{"not cose", []byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40}, ErrMalformed},
	}
	for _, c := range cases {
		_, err := OpenBatch(c.sealed, testPub(), Limits{})
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
			continue
		}
		t.Logf("%s: %v", c.name, err)
	}
}

func TestOpenBatchLimits(t *testing.T) {
	sealed := mustSeal(t, "ag-1", 1, execEvents(100), false)
	plainBody := len(bodyOf(t, sealed).Events) // sanity
	if plainBody != 100 {
		t.Fatal(plainBody)
	}
	cases := []struct {
		name string
		lim  Limits
		want error
	}{
		{"events over MaxEvents", Limits{MaxEvents: 99}, ErrTooLarge},
		{"sealed over MaxSealedSize", Limits{MaxSealedSize: len(sealed) - 1}, ErrTooLarge},
		{"body over MaxBodySize", Limits{MaxBodySize: 4096}, ErrTooLarge},
		{"events over MaxArrayElements", Limits{MaxArrayElements: 50}, ErrMalformed},
		{"all at defaults", Limits{}, nil},
	}
	for _, c := range cases {
		_, err := OpenBatch(sealed, testPub(), c.lim)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		}
	}
	zs := mustSeal(t, "ag-1", 1, execEvents(100), true)
	if _, err := OpenBatch(zs, testPub(), Limits{MaxBodySize: 4096}); !errors.Is(err, ErrTooLarge) {
		t.Errorf("compressed body over MaxBodySize: got %v, want ErrTooLarge", err)
	}
	if _, _, err := PeekBatch(make([]byte, DefaultMaxSealedSize+1)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("PeekBatch oversized: got %v, want ErrTooLarge", err)
	}
	if _, err := OpenBatch(sealed, testPub()[:31], Limits{}); err == nil {
		t.Error("OpenBatch accepted a 31-byte public key")
	}
}

func TestSealBatchErrors(t *testing.T) {
	evs := execEvents(2)
	if _, err := SealBatch("", 1, evs, testKey, true); err == nil {
		t.Error("empty agent id accepted")
	}
	if _, err := SealBatch("a", 1, nil, testKey, true); err == nil {
		t.Error("empty batch accepted")
	}
	if _, err := SealBatch("a", 1<<63, evs, testKey, true); err == nil {
		t.Error("seq 2^63 accepted")
	}
	if _, err := SealBatch("a", 1, evs, testKey[:10], true); err == nil {
		t.Error("short key accepted")
	}
	if _, err := SealBatch("a", 1, make([]capture.Event, DefaultMaxEvents+1), testKey, true); !errors.Is(err, ErrTooLarge) {
		t.Errorf("too many events: got %v, want ErrTooLarge", err)
	}
	huge := []capture.Event{{Kind: capture.KindExec, Exec: &capture.Exec{Argv: []string{string(randomBytes(DefaultMaxSealedSize))}}}}
	if _, err := SealBatch("a", 1, huge, testKey, true); !errors.Is(err, ErrTooLarge) {
		t.Errorf("batch over the sealed size: got %v, want ErrTooLarge", err)
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	var h [32]byte
	for i := 0; i < n; i += 32 {
		h = sha256.Sum256(h[:])
		copy(b[i:], h[:])
	}
	return b
}

// The bomb: 1 GiB of zeros, zstd-compressed to a few tens of KiB and
// validly signed. Opening it must fail with ErrTooLarge, quickly, without
// allocating anywhere near a gibibyte.
var bombs = sync.OnceValues(func() (declared, undeclared []byte) {
	// Compress once for all subtests: about a second for 2 GiB.
	const size = 1 << 30
	mk := func(declare bool) []byte {
		var buf bytes.Buffer
		z, _ := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if declare {
			z.ResetContentSize(&buf, size) // frame header claims 1 GiB
		} else {
			z.Reset(&buf) // streaming: no content size, the decoder must count
		}
		if _, err := io.Copy(z, io.LimitReader(zeros{}, size)); err != nil {
			panic(err)
		}
		if err := z.Close(); err != nil {
			panic(err)
		}
		return buf.Bytes()
	}
	return mk(true), mk(false)
})

type zeros struct{}

func (zeros) Read(p []byte) (int, error) { clear(p); return len(p), nil }

func TestZstdBomb(t *testing.T) {
	if testing.Short() {
		t.Skip("compresses 2 GiB")
	}
	declared, undeclared := bombs()
	// 2048 frames of 64 KiB zeros each, each declaring its size: 128 MiB in
	// all. Naive DecodeAll reallocates its output for every frame.
	z, _ := zstd.NewWriter(nil)
	one := z.EncodeAll(make([]byte, 64<<10), nil)
	manyFrames := bytes.Repeat(one, 2048)
	// A frame header asking for a 1 GiB history window (then one raw byte).
	hugeWindow := []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x09, 0x00, 0x00, 'A'}
	for _, c := range []struct {
		name    string
		payload []byte
		lim     Limits
	}{
		{"declared size, default limits", declared, Limits{}},
		{"undeclared size, default limits", undeclared, Limits{}},
		{"undeclared size, 8 MiB cap", undeclared, Limits{MaxBodySize: 8 << 20}},
		{"many frames", manyFrames, Limits{}},
		{"huge window", hugeWindow, Limits{}},
	} {
		t.Run(c.name, func(t *testing.T) {
			sealed := signRaw(t, "ag-bomb", 1, ContentTypeBatchZstd, c.payload)
			lim := c.lim.normalized()
			runtime.GC()
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			start := time.Now()
			_, err := OpenBatch(sealed, testPub(), c.lim)
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if !errors.Is(err, ErrTooLarge) {
				t.Fatalf("got %v, want ErrTooLarge", err)
			}
			alloc := after.TotalAlloc - before.TotalAlloc
			t.Logf("%d-byte bomb refused in %v, %d MiB allocated (cap %d MiB): %v",
				len(sealed), took, alloc>>20, lim.MaxBodySize>>20, err)
			// Loosely: the cap, plus a chunk, plus slack for the decoder.
			if alloc > uint64(lim.MaxBodySize)*5/4+16<<20 {
				t.Errorf("allocated %d MiB, cap is %d MiB", alloc>>20, lim.MaxBodySize>>20)
			}
			if took > 5*time.Second {
				t.Errorf("took %v", took)
			}
		})
	}
}

// sign1Payload returns the payload of a sealed batch.
func sign1Payload(sealed []byte) ([]byte, error) {
	var m cose.Sign1Message
	if err := m.UnmarshalCBOR(sealed); err != nil {
		return nil, err
	}
	return m.Payload, nil
}

// isCanonicalBody must agree with the real encoder on every head size.
func TestIsCanonicalBody(t *testing.T) {
	ints := []uint64{0, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, math.MaxUint64}
	sints := []int64{0, -1, -24, -25, -256, -257, math.MinInt64, math.MaxInt64, 1_760_000_000_000_000_000}
	agents := []string{"a", strings.Repeat("x", 23), strings.Repeat("y", 24), strings.Repeat("z", 300), strings.Repeat("w", 70000)}
	evs := execEvents(30)
	for _, seq := range ints {
		for j, ts := range sints {
			agent := agents[j%len(agents)]
			n := 1 + int(seq%29)
			leaves, err := encodeEvents(evs[:n], 0)
			if err != nil {
				t.Fatal(err)
			}
			root := bytes.Repeat([]byte{byte(seq)}, 32)
			body := batchBody{AgentID: agent, Seq: seq, TSStart: ts, TSEnd: sints[(j+1)%len(sints)], Events: leaves, Root: root}
			payload, err := encMode.Marshal(&body)
			if err != nil {
				t.Fatal(err)
			}
			if !isCanonicalBody(payload, &body) {
				t.Fatalf("seq %d ts %d agent len %d: canonical payload refused", seq, ts, len(agent))
			}
			if isCanonicalBody(payload[:len(payload)-1], &body) || isCanonicalBody(append(payload, 0), &body) {
				t.Fatalf("seq %d ts %d: truncated or extended payload accepted", seq, ts)
			}
			body.Seq ^= 1
			if isCanonicalBody(payload, &body) {
				t.Fatalf("seq %d: payload accepted for another seq", seq)
			}
		}
	}
}

func TestSealOpenNegativeTimes(t *testing.T) {
	evs := execEvents(3)
	evs[0].Time, evs[1].Time, evs[2].Time = -5, math.MinInt64, 0
	b, err := OpenBatch(mustSeal(t, "ag", math.MaxInt64, evs, true), testPub(), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if b.TSStart != math.MinInt64 || b.TSEnd != 0 || b.Seq != math.MaxInt64 {
		t.Fatalf("got ts %d..%d seq %d", b.TSStart, b.TSEnd, b.Seq)
	}
}

// A payload compressed by a streaming encoder (no declared size) opens
// through the pooled streaming decoders, which start no goroutines.
func TestOpenBatchStreamedPayload(t *testing.T) {
	body := encBody(t, bodyOf(t, mustSeal(t, "ag-s", 3, execEvents(2000), false)))
	var buf bytes.Buffer
	z, _ := zstd.NewWriter(&buf, zstd.WithEncoderConcurrency(1))
	for len(body) > 0 { // past the first block before Close: no size in the header
		n := min(len(body), 4096)
		if _, err := z.Write(body[:n]); err != nil {
			t.Fatal(err)
		}
		body = body[n:]
	}
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	var h zstd.Header
	if err := h.Decode(buf.Bytes()); err != nil || h.HasFCS {
		t.Fatalf("want a frame without content size (err %v, HasFCS %v)", err, h.HasFCS)
	}
	sealed := signRaw(t, "ag-s", 3, ContentTypeBatchZstd, buf.Bytes())
	before := runtime.NumGoroutine()
	for range 20 {
		b, err := OpenBatch(sealed, testPub(), Limits{})
		if err != nil {
			t.Fatal(err)
		}
		if len(b.Events) != 2000 {
			t.Fatalf("%d events", len(b.Events))
		}
	}
	if after := runtime.NumGoroutine(); after > before {
		t.Fatalf("goroutines %d -> %d", before, after)
	}
}

// Sealing from the events' encodings (what the agent's store keeps) makes
// the same bytes as sealing the events, compressed or not, and opens to
// the same events; the body built piece by piece is what the encoder
// makes of batchBody.
func TestSealBatchCertRaw(t *testing.T) {
	cert := []byte("not parsed here: only carried in the header")
	for _, evs := range [][]capture.Event{oddEvents(), execEvents(300)} {
		for _, compress := range []bool{false, true} {
			leaves := make([][]byte, len(evs))
			lo, hi := evs[0].Time, evs[0].Time
			for i, e := range evs {
				l, err := EncodeEvent(e)
				if err != nil {
					t.Fatal(err)
				}
				leaves[i] = l
				lo, hi = min(lo, e.Time), max(hi, e.Time)
			}
			want, err := SealBatchCert("ag", 7, evs, testKey, cert, compress)
			if err != nil {
				t.Fatal(err)
			}
			got, err := SealBatchCertRaw("ag", 7, leaves, lo, hi, testKey, cert, compress)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("compress=%v: raw seal differs from the seal of the decoded events", compress)
			}
			b, err := OpenBatch(got, testPub(), Limits{})
			if err != nil {
				t.Fatal(err)
			}
			if len(b.Events) != len(evs) {
				t.Fatalf("opened %d events, want %d", len(b.Events), len(evs))
			}
			if compress {
				continue // bodyOf reads uncompressed payloads
			}
			body := bodyOf(t, got)
			payload, err := sign1Payload(got)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(payload, encBody(t, body)) {
				t.Fatal("the body built piece by piece is not the encoder's")
			}
		}
	}
	if _, err := SealBatchCertRaw("ag", 1, [][]byte{{0xa0}}, 2, 1, testKey, cert, true); err == nil {
		t.Error("ts_start after ts_end was sealed")
	}
	if _, err := SealBatchCertRaw("ag", 1, nil, 1, 1, testKey, cert, true); err == nil {
		t.Error("an empty batch was sealed")
	}
}
