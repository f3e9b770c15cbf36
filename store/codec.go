package store

import (
	"encoding/binary"
	"fmt"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/fxamacker/cbor/v2"
)

// Values are CBOR. Strings are written as byte strings because argv, exe
// paths and comm are raw kernel bytes that need not be UTF-8, and a CBOR text
// string must be. Decoding accepts both so that a value written as text by
// some other tool still reads.
var (
	encMode cbor.UserBufferEncMode
	decMode cbor.DecMode
)

// Decoding limits. What is read back from disk is treated as untrusted file
// input: a corrupt or crafted value must produce an error, never a panic or
// an unbounded allocation. An event has a handful of fields and argv is capped
// by the sensor well below these. Duplicate map keys are not rejected here
// (unlike frames from the network): a value in the agent's own store is not
// an authenticated statement, and the check costs on every replay.
const (
	maxArrayElements = 1 << 16
	maxMapPairs      = 64
	maxNestedLevels  = 8
	maxValueBytes    = 16 << 20
)

func init() {
	var err error
	// Core deterministic encoding, as transport/wire encodes events: a
	// stored event is then byte for byte its Merkle leaf (wire.EncodeEvent),
	// and the shipper seals stored bytes without decoding and encoding them
	// again. Our values are structs with integer keys in ascending order, so
	// this costs nothing over SortNone (the sorted field order is cached per
	// type) and writes the same bytes the older SortNone mode did.
	eo := cbor.CoreDetEncOptions()
	eo.String = cbor.StringToByteString
	encMode, err = eo.UserBufferEncMode()
	if err != nil {
		panic(fmt.Sprintf("store: cbor enc mode: %v", err)) // static options; cannot fail at run time
	}
	decMode, err = cbor.DecOptions{
		ByteStringToString: cbor.ByteStringToStringAllowed,
		UTF8:               cbor.UTF8DecodeInvalid,
		MaxArrayElements:   maxArrayElements,
		MaxMapPairs:        maxMapPairs,
		MaxNestedLevels:    maxNestedLevels,
		IndefLength:        cbor.IndefLengthForbidden,
	}.DecMode()
	if err != nil {
		panic(fmt.Sprintf("store: cbor dec mode: %v", err))
	}
}

// EncodeEvent returns the stored encoding of ev.
func EncodeEvent(ev *capture.Event) ([]byte, error) {
	return capture.AppendCBOR(nil, ev), nil
}

// DecodeEvent parses a stored event encoding.
func DecodeEvent(b []byte) (capture.Event, error) {
	var ev capture.Event
	if len(b) > maxValueBytes {
		return ev, fmt.Errorf("decode event: value of %d bytes exceeds %d", len(b), maxValueBytes)
	}
	if err := decMode.Unmarshal(b, &ev); err != nil {
		return capture.Event{}, fmt.Errorf("decode event: %w", err)
	}
	return ev, nil
}

func decodeProcess(b []byte) (capture.Process, error) {
	var p capture.Process
	if len(b) > maxValueBytes {
		return p, fmt.Errorf("decode process: value of %d bytes exceeds %d", len(b), maxValueBytes)
	}
	if err := decMode.Unmarshal(b, &p); err != nil {
		return capture.Process{}, fmt.Errorf("decode process: %w", err)
	}
	return p, nil
}

// Live index values. A live process's key holds its parent, so that its
// exit needs no read of the entry (the exited index wants the parent); a
// process whose entry was stored before it exited keeps its key with the
// exit record instead of a rewrite of the entry (see tableTx.stage). The
// first byte tells the two apart.
const (
	liveTag = 'l' // + parent procKey
	exitTag = 'x' // + CBOR exitRecord
)

type exitRecord struct {
	ExitTime int64         `cbor:"1,keyasint"`
	Exit     *capture.Exit `cbor:"2,keyasint,omitempty"`
}

func liveValue(parent capture.ProcKey) [1 + procKeyLen]byte {
	var v [1 + procKeyLen]byte
	v[0] = liveTag
	putProcKey(v[1:], parent)
	return v
}

// isLive reports whether a live index value says live.
func isLive(v []byte) bool { return len(v) > 0 && v[0] == liveTag }

// parseLiveValue reads a live index value: the parent if live, else the
// exit record.
func parseLiveValue(v []byte) (parent capture.ProcKey, x exitRecord, live bool, err error) {
	switch {
	case len(v) == 1+procKeyLen && v[0] == liveTag:
		return getProcKey(v[1:]), x, true, nil
	case len(v) > 1 && v[0] == exitTag:
		x, err = decodeExitRecord(v[1:])
		return parent, x, false, err
	}
	return parent, x, false, fmt.Errorf("live index value of %d bytes, tag %q: neither live nor an exit record", len(v), v[:min(len(v), 1)])
}

func decodeExitRecord(b []byte) (exitRecord, error) {
	var x exitRecord
	if len(b) > maxValueBytes {
		return x, fmt.Errorf("decode exit record: value of %d bytes exceeds %d", len(b), maxValueBytes)
	}
	if err := decMode.Unmarshal(b, &x); err != nil {
		return exitRecord{}, fmt.Errorf("decode exit record: %w", err)
	}
	if x.ExitTime == 0 {
		return exitRecord{}, fmt.Errorf("decode exit record: no exit time")
	}
	return x, nil
}

// Key spaces. Every key starts with one byte naming its space; integers are
// big-endian so that byte order is numeric order.
//
//	e seq                      -> event encoding            events by seq (primary)
//	t time seq                 -> uvarint(len(event value)) time index
//	p pid start                -> process encoding          process table
//	l pid start                -> 'l' parent procKey        live processes
//	                              or 'x' exit record        exits of entries stored while alive
//	c ppid pstart pid start    -> empty                     children of a process
//	x exittime pid start       -> parent procKey (12 bytes) exited processes by exit time
//	m name                     -> value                     counters and format version
//
// The time index carries the event's value size so that retention can keep
// the byte counter exact without reading the events it deletes. The exited
// index carries the parent so that retention can unlink a process from its
// parent's children without reading the process. A process whose entry was
// stored while it was alive keeps its live index key when it exits, with
// the exit as value, instead of a rewrite of the entry: an entry with no exit
// time is live exactly when its live index value is tagged live.
const (
	spaceEvent    byte = 'e'
	spaceTime     byte = 't'
	spaceProc     byte = 'p'
	spaceLive     byte = 'l'
	spaceChildren byte = 'c'
	spaceExited   byte = 'x'
	spaceMeta     byte = 'm'
)

const procKeyLen = 12 // pid (4) + start (8)

var (
	metaVersion = []byte("mversion")
	metaLastSeq = []byte("mlastseq")
	metaEvents  = []byte("mevents")
	metaBytes   = []byte("mbytes")
)

// formatVersion is the layout above. Bump it when a key or value changes.
// 2: exit records in the live index.
const formatVersion = 2

func eventKey(seq uint64) []byte {
	k := make([]byte, 9)
	k[0] = spaceEvent
	binary.BigEndian.PutUint64(k[1:], seq)
	return k
}

func seqOfEventKey(k []byte) (uint64, bool) {
	if len(k) != 9 || k[0] != spaceEvent {
		return 0, false
	}
	return binary.BigEndian.Uint64(k[1:]), true
}

// orderedTime maps a signed Unix-nanosecond time onto an unsigned number with
// the same order, so that times before 1970 sort before later ones.
func orderedTime(t int64) uint64 { return uint64(t) ^ (1 << 63) }

func timeKey(t int64, seq uint64) []byte {
	k := make([]byte, 17)
	k[0] = spaceTime
	binary.BigEndian.PutUint64(k[1:], orderedTime(t))
	binary.BigEndian.PutUint64(k[9:], seq)
	return k
}

// timePrefix is the first time-index key at or after t.
func timePrefix(t int64) []byte {
	k := make([]byte, 9)
	k[0] = spaceTime
	binary.BigEndian.PutUint64(k[1:], orderedTime(t))
	return k
}

func parseTimeKey(k []byte) (t int64, seq uint64, ok bool) {
	if len(k) != 17 || k[0] != spaceTime {
		return 0, 0, false
	}
	return int64(binary.BigEndian.Uint64(k[1:]) ^ (1 << 63)), binary.BigEndian.Uint64(k[9:]), true
}

func putProcKey(b []byte, k capture.ProcKey) {
	binary.BigEndian.PutUint32(b, k.PID)
	binary.BigEndian.PutUint64(b[4:], k.Start)
}

func getProcKey(b []byte) capture.ProcKey {
	return capture.ProcKey{PID: binary.BigEndian.Uint32(b), Start: binary.BigEndian.Uint64(b[4:])}
}

// procSpaceKey is space + pid + start: the key of the process table and of
// the live index.
func procSpaceKey(space byte, k capture.ProcKey) []byte {
	b := make([]byte, 1+procKeyLen)
	b[0] = space
	putProcKey(b[1:], k)
	return b
}

// pidPrefix is space + pid: every incarnation of pid in that space.
func pidPrefix(space byte, pid uint32) []byte {
	b := make([]byte, 5)
	b[0] = space
	binary.BigEndian.PutUint32(b[1:], pid)
	return b
}

func childKey(parent, child capture.ProcKey) []byte {
	b := make([]byte, 1+2*procKeyLen)
	b[0] = spaceChildren
	putProcKey(b[1:], parent)
	putProcKey(b[1+procKeyLen:], child)
	return b
}

func exitedPrefix(exitTime int64) []byte {
	b := make([]byte, 9)
	b[0] = spaceExited
	binary.BigEndian.PutUint64(b[1:], orderedTime(exitTime))
	return b
}

// prefixEnd returns the smallest key greater than every key with prefix p.
func prefixEnd(p []byte) []byte {
	end := append([]byte(nil), p...)
	for i := len(end) - 1; i >= 0; i-- {
		end[i]++
		if end[i] != 0 {
			return end[:i+1]
		}
	}
	return nil // p is all 0xff: no upper bound
}

func putUint64(v uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, v)
	return b
}

func readUint64(b []byte) (uint64, error) {
	if len(b) != 8 {
		return 0, fmt.Errorf("counter of %d bytes, want 8", len(b))
	}
	return binary.BigEndian.Uint64(b), nil
}
