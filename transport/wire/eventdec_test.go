package wire

import (
	"bytes"
	"math"
	"net/netip"
	"reflect"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// fullEvents set every field of every struct an event holds, at the edges
// of their ranges, so the fast decoder is checked against the encoder on
// all of them.
func fullEvents() []capture.Event {
	p := capture.ProcKey{PID: math.MaxUint32, Start: math.MaxUint64}
	return []capture.Event{
		{Seq: math.MaxUint64, Time: math.MinInt64, Kind: 255, Proc: p, Parent: capture.ProcKey{PID: 1, Start: 24}, Comm: "c", Source: "ebpf", TraceID: "t-1", TraceSeq: 1 << 32,
			Exec: &capture.Exec{UID: math.MaxUint32, GID: 23, EUID: 24, EGID: 256, Exe: "/x", Argv: []string{"", "a"}, ArgvTruncated: true, Cwd: "/", TTY: "pts/1",
				CgroupID: math.MaxUint64, PidNS: 1, NetNS: 2, MntNS: math.MaxUint32, Env: []string{"A=1"}, EnvTruncated: true},
			Exit:   &capture.Exit{Code: math.MinInt32, Signal: math.MaxInt32, Core: true},
			Conn:   &capture.Conn{Proto: 17, Src: netip.MustParseAddrPort("[fe80::1%eth0]:1"), Dst: netip.MustParseAddrPort("1.2.3.4:65535")},
			File:   &capture.FileOp{Path: "/a", Path2: "/b", Flags: 1, Mode: 0o755, Inode: 9, Dev: 8, Result: math.MinInt64, PathUnread: true},
			Sock:   &capture.SockOp{Domain: -1, Type: math.MaxInt32, Proto: -25, Result: math.MaxInt64},
			Hashes: &capture.Hashes{Blake3: "b3", SHA256: "s2", Path: "/p", Size: -1, Dev: 1, Inode: 2, Cached: true, Error: "e"},
			Note:   &capture.TraceNote{What: "stop", Reason: "r", Dropped: 1, Events: 2, Bytes: -3, Depth: -1, Pids: 4},
			Mem:    &capture.MemSnippet{Addr: math.MaxUint64, Data: []byte{0, 1}, Error: "e"},
			Alert:  &capture.RuleAlert{RuleID: "r", Pack: "p", Title: "t", Severity: "high", Technique: "T1059", Context: "c"}},
		// Required fields only, pointers to empty structs.
		{Kind: 1, Exec: &capture.Exec{}, Exit: &capture.Exit{}, Conn: &capture.Conn{}, File: &capture.FileOp{}, Sock: &capture.SockOp{},
			Hashes: &capture.Hashes{}, Note: &capture.TraceNote{}, Mem: &capture.MemSnippet{}, Alert: &capture.RuleAlert{}},
		{},
	}
}

// TestCanonicalEventFastPath: every event the encoder makes is decoded by
// the fast path, to the same event; any change to one byte of it is either
// refused by the fast path or is another canonical event the reflecting
// decoder agrees on.
func TestCanonicalEventFastPath(t *testing.T) {
	evs := append(append(fullEvents(), oddEvents()...), execEvents(20)...)
	for i, e := range evs {
		leaf, err := reflectEncode(e)
		if err != nil {
			t.Fatal(err)
		}
		if fast := capture.AppendCBOR(nil, &e); !bytes.Equal(fast, leaf) {
			t.Fatalf("event %d: capture.AppendCBOR wrote %x, the reflecting encoder %x", i, fast, leaf)
		}
		got, ok := decodeCanonicalEvent(leaf)
		if !ok {
			t.Fatalf("event %d: canonical encoding %x refused by the fast path", i, leaf)
		}
		checkAgrees(t, leaf, got)
		for j := range leaf {
			for _, flip := range []byte{0x01, 0x20, 0x80, 0xff} {
				bad := bytes.Clone(leaf)
				bad[j] ^= flip
				if got, ok := decodeCanonicalEvent(bad); ok {
					checkAgrees(t, bad, got)
				}
			}
		}
		if _, ok := decodeCanonicalEvent(append(bytes.Clone(leaf), 0)); ok {
			t.Fatalf("event %d: trailing byte accepted", i)
		}
		if _, ok := decodeCanonicalEvent(leaf[:len(leaf)-1]); ok {
			t.Fatalf("event %d: truncated leaf accepted", i)
		}
	}
}

// TestCanonicalEventRefusals names the encodings the reflecting decoder
// takes but the encoder would never make: each must leave the fast path.
func TestCanonicalEventRefusals(t *testing.T) {
	for name, leaf := range map[string][]byte{
		"long integer head":  {0xa4, 0x02, 0x18, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00},
		"keys out of order":  {0xa4, 0x03, 0x01, 0x02, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00},
		"duplicate key":      {0xa5, 0x02, 0x01, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00},
		"text string comm":   {0xa5, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x06, 0x61, 'x'},
		"empty comm present": {0xa5, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x06, 0x40},
		"zero seq present":   {0xa5, 0x01, 0x00, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00},
		"no parent":          {0xa3, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00},
		"unknown key":        {0xa5, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x13, 0x00},
		"false bool":         {0xa5, 0x02, 0x01, 0x03, 0x01, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x08, 0xa2, 0x01, 0x00, 0x03, 0xf4},
		"indefinite map":     {0xbf, 0x02, 0x01, 0xff},
		"kind over 255":      {0xa4, 0x02, 0x01, 0x03, 0x19, 0x01, 0x00, 0x04, 0xa2, 0x01, 0x00, 0x02, 0x00, 0x05, 0xa2, 0x01, 0x00, 0x02, 0x00},
	} {
		if _, ok := decodeCanonicalEvent(leaf); ok {
			t.Errorf("%s: accepted by the fast path", name)
		}
		var e capture.Event
		c, _ := codecFor(Limits{})
		if c.strict.Unmarshal(leaf, &e) == nil {
			if again, _ := reflectEncode(e); bytes.Equal(again, leaf) {
				t.Errorf("%s: the test's leaf is canonical after all", name)
			}
		}
	}
}

// checkAgrees fails unless the reflecting decoder accepts leaf as the
// canonical encoding of want.
func checkAgrees(t *testing.T, leaf []byte, want capture.Event) {
	t.Helper()
	c, err := codecFor(Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var e capture.Event
	if err := c.strict.Unmarshal(leaf, &e); err != nil {
		t.Fatalf("fast path accepted %x, the reflecting decoder refuses it: %v", leaf, err)
	}
	again, err := reflectEncode(e)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, leaf) {
		t.Fatalf("fast path accepted %x, which is not canonical (%x)", leaf, again)
	}
	if !reflect.DeepEqual(e, want) {
		t.Fatalf("fast path decoded %x as %+v, the reflecting decoder as %+v", leaf, want, e)
	}
	if fast := capture.AppendCBOR(nil, &want); !bytes.Equal(fast, leaf) {
		t.Fatalf("capture.AppendCBOR wrote %x for canonical %x", fast, leaf)
	}
	if tm, kind, trace, ok := capture.PeekCBOR(leaf); !ok || tm != want.Time || kind != want.Kind || trace != want.TraceID {
		t.Fatalf("capture.PeekCBOR(%x) = %d, %v, %q, %t; want %d, %v, %q", leaf, tm, kind, trace, ok, want.Time, want.Kind, want.TraceID)
	}
}

// FuzzCanonicalEvent: whatever the fast path accepts, the reflecting
// decoder accepts as the same, canonical event; and whatever is canonical
// to the reflecting decoder, the fast path takes (else it costs the slow
// path for nothing).
func FuzzCanonicalEvent(f *testing.F) {
	for _, e := range append(append(fullEvents(), oddEvents()...), execEvents(3)...) {
		leaf, err := reflectEncode(e)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(leaf)
	}
	c, err := codecFor(Limits{})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		capture.PeekCBOR(data) // must not panic on anything
		if got, ok := decodeCanonicalEvent(data); ok {
			checkAgrees(t, data, got)
			return
		}
		var e capture.Event
		if c.strict.Unmarshal(data, &e) != nil {
			return
		}
		if again, err := reflectEncode(e); err == nil && bytes.Equal(again, data) {
			t.Fatalf("canonical event %x left to the slow path", data)
		}
	})
}

// reflectEncode is the reflecting encoder's canonical CBOR of e, the
// reference capture.AppendCBOR (behind EncodeEvent) is checked against.
func reflectEncode(e capture.Event) ([]byte, error) { return encMode.Marshal(e) }
