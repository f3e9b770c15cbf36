package store

import (
	"bytes"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// rawCases are events with every optional part, trace fields included.
func rawCases() []capture.Event {
	p := pk(7, 70)
	return []capture.Event{
		execEv(p, pk(1, 1), at(0), "/bin/\xffecho", "echo", "\xff", "caf\xe9", ""),
		connEv(p, at(1), "203.0.113.9:8443"),
		exitEv(p, at(2), -1),
		{Time: -5, Kind: capture.KindFork, Proc: pk(10, 1), Parent: pk(1, 1)},
		{Time: at(3), Kind: capture.KindFileOpen, Proc: p, TraceID: "tr-1", TraceSeq: 1, Source: "ebpf",
			File: &capture.FileOp{Path: "/etc/\xffshadow", Flags: 0o2101, Mode: 0o600, Inode: 1 << 40, Dev: 2049, Result: -13, PathUnread: true}},
		{Time: at(4), Kind: capture.KindSocket, Proc: p, TraceID: "tr-1", TraceSeq: 2, Sock: &capture.SockOp{Domain: 10, Type: 1, Proto: 6, Result: 5}},
		{Time: at(5), Kind: capture.KindExecHash, Proc: p, TraceID: "tr-1", TraceSeq: 3,
			Hashes: &capture.Hashes{Blake3: "ab", SHA256: "cd", Path: "/bin/x", Size: 1 << 33, Dev: 1, Inode: 2, Cached: true}},
		{Time: at(6), Kind: capture.KindTraceNote, Proc: p, TraceID: "tr-1", TraceSeq: 4,
			Note: &capture.TraceNote{What: "stop", Reason: "cap:max_bytes", Dropped: 300, Events: 1 << 20, Bytes: 1 << 30, Depth: -1, Pids: 12}},
		{Time: at(7), Kind: capture.KindExec, Proc: p, TraceID: "tr-2", TraceSeq: 1 << 40, Mem: &capture.MemSnippet{Addr: 0x400000, Data: []byte{0, 0xff, 0x7f}}},
	}
}

// A stored event is byte for byte its canonical encoding (wire.EncodeEvent),
// which the shipper seals as the event's Merkle leaf; stores written before
// the store used core deterministic encoding hold the same bytes.
func TestStoredEventIsCanonical(t *testing.T) {
	l := openTest(t, t.TempDir(), LocalOptions{})
	evs := append(rawCases(), newWorkload(3).batch(2000)...)
	first, _ := mustAppend(t, l, evs...)
	sortNone, err := cbor.EncOptions{String: cbor.StringToByteString, Sort: cbor.SortNone}.EncMode()
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	err = l.RawEventsBySeq(first, func(r RawEvent) bool {
		ev := evs[i]
		ev.Seq = first + uint64(i)
		want, err := wire.EncodeEvent(ev)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(r.CBOR, want) {
			t.Fatalf("event %d: stored %x, canonical %x", i, r.CBOR, want)
		}
		if old, _ := sortNone.Marshal(&ev); !bytes.Equal(old, want) {
			t.Fatalf("event %d: the older SortNone encoding differs from the canonical one", i)
		}
		if r.Seq != ev.Seq || r.Time != ev.Time || r.Kind != ev.Kind || r.TraceID != ev.TraceID {
			t.Fatalf("event %d: read seq %d time %d kind %v trace %q, want %d %d %v %q", i, r.Seq, r.Time, r.Kind, r.TraceID, ev.Seq, ev.Time, ev.Kind, ev.TraceID)
		}
		i++
		return true
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != len(evs) {
		t.Fatalf("read %d raw events, want %d", i, len(evs))
	}
	// From the middle, and stopping early.
	var seqs []uint64
	l.RawEventsBySeq(first+5, func(r RawEvent) bool { seqs = append(seqs, r.Seq); return len(seqs) < 3 })
	if len(seqs) != 3 || seqs[0] != first+5 || seqs[2] != first+7 {
		t.Fatalf("from %d, stopping after 3: got seqs %v", first+5, seqs)
	}
}
