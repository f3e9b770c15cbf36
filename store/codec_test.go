package store

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// FuzzDecodeEvent feeds arbitrary bytes to the decoder of stored events:
// values read back from disk are file input, so a corrupt or crafted value
// must yield an error, never a panic or a runaway allocation. What decodes
// must re-encode to a fixed point.
func FuzzDecodeEvent(f *testing.F) {
	for _, ev := range corpusEvents() {
		b, err := EncodeEvent(&ev)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Add([]byte{0xa0})                   // empty map
	f.Add([]byte{0xa1, 0x03, 0x19, 0x01}) // truncated
	f.Fuzz(func(t *testing.T, data []byte) {
		ev, err := DecodeEvent(data)
		if err != nil {
			return
		}
		b1, err := EncodeEvent(&ev)
		if err != nil {
			t.Fatalf("decoded event does not encode: %v", err)
		}
		ev2, err := DecodeEvent(b1)
		if err != nil {
			t.Fatalf("re-encoded event does not decode: %v\n%x", err, b1)
		}
		b2, err := EncodeEvent(&ev2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(b1, b2) {
			t.Fatalf("encoding is not a fixed point:\n%x\n%x", b1, b2)
		}
	})
}

func corpusEvents() []capture.Event {
	evs := []capture.Event{
		forkEv(pk(300, 30), pk(200, 20), at(1)),
		execEv(pk(7, 70), pk(1, 1), at(0), "/bin/\xffecho", "echo", "\xff", "caf\xe9", ""),
		exitEv(pk(300, 30), at(3), 7),
		connEv(pk(9, 90), at(2), "203.0.113.9:8443"),
		{Time: at(4), Kind: capture.KindAccept, Proc: pk(9, 90), Source: "proc", Conn: &capture.Conn{Proto: capture.ProtoTCP,
			Src: mustAddrPort("[2001:db8::1]:22"), Dst: mustAddrPort("[fe80::1%eth0]:50000")}},
		{Time: at(6), Kind: capture.KindExit, Proc: pk(9, 90), Exit: &capture.Exit{Code: -1, Signal: 9, Core: true}},
	}
	for i := range evs {
		evs[i].Seq = uint64(i + 1)
	}
	return evs
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzDecodeEvent from
// corpusEvents when STORE_WRITE_CORPUS is set.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("STORE_WRITE_CORPUS") == "" {
		t.Skip("set STORE_WRITE_CORPUS=1 to regenerate the committed seed corpus")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeEvent")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, ev := range corpusEvents() {
		b, err := EncodeEvent(&ev)
		if err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n[]byte(" + strconv.Quote(string(b)) + ")\n"
		name := filepath.Join(dir, "seed-"+ev.Kind.String()+"-"+strconv.Itoa(i))
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDecodeLimits(t *testing.T) {
	cases := []struct {
		name string
		data []byte
	}{
		{"truncated map", []byte{0xa2, 0x02}},
		{"kind out of range", []byte{0xa1, 0x03, 0x19, 0x01, 0x00}},
		{"argv too long", hugeArgv(maxArrayElements + 1)},
		{"indefinite length", []byte{0xbf, 0x03, 0x01, 0xff}},
		{"deep nesting", bytes.Repeat([]byte{0x81}, 100)},
		{"bad address bytes", []byte{0xa2, 0x03, 0x04, 0x09, 0xa1, 0x02, 0x43, 1, 2, 3}},
		{"oversized value", make([]byte, maxValueBytes+1)},
	}
	for _, c := range cases {
		if _, err := DecodeEvent(c.data); err == nil {
			t.Errorf("%s: DecodeEvent accepted it, want an error", c.name)
		}
	}
}

// hugeArgv encodes an exec event whose argv has n empty strings.
func hugeArgv(n int) []byte {
	b := []byte{0xa1, 0x07, 0xa1, 0x06, 0x9a}
	b = append(b, byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
	return append(b, bytes.Repeat([]byte{0x40}, n)...)
}

// FuzzParseLiveValue: live index values are file input too (see
// FuzzDecodeEvent). What parses must re-encode to the same value.
func FuzzParseLiveValue(f *testing.F) {
	v := liveValue(pk(7, 70))
	f.Add(v[:])
	for _, x := range []exitRecord{{ExitTime: at(1)}, {ExitTime: -5, Exit: &capture.Exit{Code: -1, Signal: 9, Core: true}}} {
		b, err := encMode.Marshal(&x)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(append([]byte{exitTag}, b...))
	}
	f.Add([]byte{})
	f.Add([]byte{exitTag})
	f.Add([]byte{liveTag, 1, 2})
	f.Fuzz(func(t *testing.T, data []byte) {
		parent, x, live, err := parseLiveValue(data)
		if err != nil {
			return
		}
		var again []byte
		if live {
			v := liveValue(parent)
			again = v[:]
		} else {
			b, err := encMode.Marshal(&x)
			if err != nil {
				t.Fatalf("parsed exit record does not encode: %v", err)
			}
			again = append([]byte{exitTag}, b...)
		}
		p2, x2, live2, err := parseLiveValue(again)
		if err != nil || live2 != live || p2 != parent || !reflect.DeepEqual(x2, x) {
			t.Fatalf("%x parses to %v %+v %v, its re-encoding %x to %v %+v %v (%v)", data, parent, x, live, again, p2, x2, live2, err)
		}
	})
}
