package wire

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// fuzzLimits keep fuzzing iterations cheap; the limits logic is the same.
var fuzzLimits = Limits{MaxBodySize: 1 << 20, MaxFrameSize: 1 << 20}

func FuzzReadFrame(f *testing.F) {
	for _, fr := range allFrames() {
		b, _ := AppendFrame(nil, fr)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := NewReader(bytes.NewReader(data), fuzzLimits)
		for {
			fr, err := r.ReadFrame()
			if err != nil {
				if fr != nil {
					t.Fatalf("frame %#v returned with error %v", fr, err)
				}
				if err != io.EOF && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTruncated) &&
					!errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrUnknownType) {
					t.Fatalf("error wraps no sentinel: %v", err)
				}
				return
			}
			// Whatever decodes re-encodes to a form that decodes to the
			// same canonical bytes.
			enc, err := AppendFrame(nil, fr)
			if err != nil {
				t.Fatalf("re-encode %T: %v", fr, err)
			}
			fr2, err := DecodeFrame(enc[headerSize:], fuzzLimits)
			if err != nil {
				t.Fatalf("decode of our own encoding of %#v: %v", fr, err)
			}
			enc2, _ := AppendFrame(nil, fr2)
			if !bytes.Equal(enc, enc2) {
				t.Fatalf("encoding not stable for %#v", fr)
			}
		}
	})
}

func FuzzOpenBatch(f *testing.F) {
	f.Add(mustSeal(f, "ag-1", 1, execEvents(3), true))
	f.Add(mustSeal(f, "ag-1", 2, oddEvents(), false))
	f.Fuzz(func(t *testing.T, data []byte) {
		// As received: nearly always a bad signature, but must not panic.
		checkOpen(t, data)
		// As a payload the fixed key signed: exercises decompression and
		// body decoding behind the signature, for both content types.
		for _, ct := range []string{ContentTypeBatch, ContentTypeBatchZstd} {
			checkOpen(t, signRaw(t, "ag-fuzz", 7, ct, data))
		}
	})
}

func checkOpen(t *testing.T, sealed []byte) {
	b, err := OpenBatch(sealed, testPub(), fuzzLimits)
	if err != nil {
		if b != nil {
			t.Fatal("batch returned with error")
		}
		if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrBadSignature) && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("error wraps no sentinel: %v", err)
		}
		return
	}
	agent, seq, err := PeekBatch(sealed)
	if err != nil || agent != b.AgentID || seq != b.Seq {
		t.Fatalf("PeekBatch = %q %d %v, OpenBatch = %q %d", agent, seq, err, b.AgentID, b.Seq)
	}
	for i := range b.Events {
		p, err := b.EventProof(i)
		if err != nil {
			t.Fatal(err)
		}
		if err := VerifyEventProof(b.Root, b.EventCBOR(i), i, len(b.Events), p); err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
	}
}

func FuzzPeekBatch(f *testing.F) {
	f.Add(mustSeal(f, "ag-1", 1, execEvents(1), true))
	f.Fuzz(func(t *testing.T, data []byte) {
		if cert, err := PeekCert(data); err == nil && len(cert) == 0 {
			t.Fatal("PeekCert: empty certificate without error")
		}
		agent, seq, err := PeekBatch(data)
		if err != nil {
			if !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTooLarge) {
				t.Fatalf("error wraps no sentinel: %v", err)
			}
			return
		}
		if agent == "" {
			t.Fatal("empty agent id without error")
		}
		if b, err := OpenBatch(data, testPub(), fuzzLimits); err == nil && (b.AgentID != agent || b.Seq != seq) {
			t.Fatalf("PeekBatch %q/%d, OpenBatch %q/%d", agent, seq, b.AgentID, b.Seq)
		}
	})
}

// TestWriteFuzzCorpus regenerates the committed seed corpora under
// testdata/fuzz when WIRE_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("WIRE_WRITE_CORPUS") != "1" {
		t.Skip("set WIRE_WRITE_CORPUS=1 to regenerate testdata/fuzz")
	}
	write := func(target, name string, data []byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	var all []byte
	for i, fr := range allFrames() {
		b, _ := AppendFrame(nil, fr)
		write("FuzzReadFrame", fmt.Sprintf("valid-%02d-%s", i, fr.Type()), b)
		all = append(all, b...)
	}
	write("FuzzReadFrame", "valid-stream", all)
	batchFrame, _ := AppendFrame(nil, &BatchFrame{Lane: LaneBulk, Sealed: mustSeal(t, "ag-1", 3, execEvents(5), true)})
	write("FuzzReadFrame", "valid-real-batch", batchFrame)
	bad := map[string][]byte{
		"oversized-prefix":   {0xff, 0xff, 0xff, 0xff},
		"truncated":          cat(prefixed(make([]byte, 40)), env(TypePing, cmap())),
		"trailing":           framed(cat(env(TypePing, cmap(cuint(1), cuint(1))), []byte{0})),
		"nesting":            framed(env(TypeHello, cmap(cuint(1), cbytes("n"), cuint(99), cat(bytes.Repeat([]byte{0x81}, 40), cuint(0))))),
		"huge-array":         framed(env(TypeHello, cmap(cuint(1), cbytes("n"), cuint(5), head(4, 1<<62)))),
		"dup-key":            framed(env(TypeAck, cmap(cuint(1), cuint(1), cuint(2), cbytes("a"), cuint(3), cuint(1), cuint(3), cuint(2)))),
		"indefinite":         framed(cat([]byte{0xbf}, cuint(1), cuint(12), cuint(2), cmap(), []byte{0xff})),
		"unknown-type":       framed(env(Type(99), cmap())),
		"tag":                framed(env(TypePing, cmap(cuint(1), cat([]byte{0xc1}, cuint(5))))),
		"text-not-utf8":      framed(env(TypeHello, cmap(cuint(1), ctext("\xff\xfe"), cuint(2), cuint(1)))),
		"shuffled-keys-nack": framed(env(TypeNack, cmap(cuint(5), ctext("seen"), cuint(3), cuint(300), cuint(1), cuint(3), cuint(4), cuint(2), cuint(2), ctext("ag-1")))),
	}
	for name, b := range bad {
		write("FuzzReadFrame", name, b)
	}

	sealedZ := mustSeal(t, "ag-1", 1, execEvents(3), true)
	sealedP := mustSeal(t, "ag-1", 2, oddEvents(), false)
	one := mustSeal(t, "ag-1", 3, execEvents(1), true)
	withCert, err := SealBatchCert("ag-1", 4, execEvents(2), testKey, []byte("certificate DER bytes"), true)
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"sealed-zstd": sealedZ, "sealed-plain": sealedP, "sealed-one": one, "sealed-cert": withCert} {
		write("FuzzOpenBatch", name, b)
		write("FuzzPeekBatch", name, b)
	}
	// Payload seeds for the signed path.
	good := bodyOf(t, mustSeal(t, "ag-fuzz", 7, execEvents(2), false))
	write("FuzzOpenBatch", "body-plain", encBody(t, good))
	zpayload, err := sign1Payload(mustSeal(t, "ag-fuzz", 7, execEvents(2), true))
	if err != nil {
		t.Fatal(err)
	}
	write("FuzzOpenBatch", "body-zstd", zpayload)
	write("FuzzOpenBatch", "zstd-huge-window", []byte{0x28, 0xb5, 0x2f, 0xfd, 0x00, 20 << 3, 0x09, 0x00, 0x00, 'A'})
	write("FuzzOpenBatch", "empty", nil)
	write("FuzzPeekBatch", "not-cose", []byte{0xd2, 0x84, 0x40, 0xa0, 0x40, 0x40})
	write("FuzzPeekBatch", "empty", nil)
}
