package ledger

import (
	"bytes"
	"testing"
	"time"
)

// FuzzReadRecords feeds the record decoder what it reads from an entries
// file (after the first line). It must not panic or allocate beyond its
// limits, and every record it accepts must be the one encoding of itself.
// Seeds: testdata/fuzz/FuzzReadRecords (real files: live, purged, torn).
func FuzzReadRecords(f *testing.F) {
	one, _, _ := appendRecord(nil, 0, Entry{Kind: KindLogin, Actor: "alice", Time: time.Unix(1, 2), Payload: []byte("hello")})
	f.Add(one)
	f.Add(one[:len(one)-1])
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0, 3, 0, 0, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := newRecordReader(bytes.NewReader(data), 0, int64(len(data)))
		for i := int64(0); ; i++ {
			raw, off, err := rr.next()
			if err != nil {
				return
			}
			h, err := raw.check(i)
			if err != nil {
				return
			}
			rec := raw.record(h)
			if rec.LeafHash() != (Record{Leaf: raw.header}).LeafHash() {
				t.Fatal("leaf copy differs")
			}
			if raw.flags != flagLive {
				continue
			}
			enc, _, err := appendRecord(nil, i, Entry{Kind: rec.Kind, Actor: rec.Actor, Time: rec.Time, Payload: rec.Payload})
			if err != nil {
				t.Fatalf("record %d decodes but does not encode: %v", i, err)
			}
			if !bytes.Equal(enc, data[off:off+raw.size]) {
				t.Fatalf("record %d: decoded record re-encodes differently:\n got %x\nwant %x", i, enc, data[off:off+raw.size])
			}
		}
	})
}

// FuzzCheckpoints feeds the checkpoints file parser and the checkpoint
// note parser.
func FuzzCheckpoints(f *testing.F) {
	f.Add([]byte("daemoneye.center/x\n3\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\n— daemoneye.center/x abc=\n"))
	f.Add([]byte{0, 0, 0, 1, 'x'})
	f.Fuzz(func(t *testing.T, data []byte) {
		notes, good, _ := parseCheckpointsFile(data)
		if good < 0 || good > int64(len(data)) {
			t.Fatalf("good prefix %d of %d bytes", good, len(data))
		}
		for _, n := range notes {
			parseUnverified(n)
		}
		if cp, err := parseUnverified(data); err == nil {
			if cp.Size < 0 || cp.Origin == "" {
				t.Fatalf("accepted %+v", cp)
			}
		}
	})
}
