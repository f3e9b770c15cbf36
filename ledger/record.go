package ledger

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/evilbitlabs/daemoneye/capture"
	"io"
	"time"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"
	"golang.org/x/mod/sumdb/tlog"
)

// Kinds of entry. Callers may use others of the same shape (lowercase
// letters, digits, '.', '_', '-'; at most 64 bytes); the "ledger." prefix is
// reserved for the ledger's own entries.
const (
	KindLogin        = "operator.login"
	KindTraceStart   = "trace.start"
	KindTraceStop    = "trace.stop"
	KindApproval     = "approval"
	KindReveal       = "reveal" // the payload carries the justification
	KindExport       = "export"
	KindConfigChange = "config.change"
	KindRuleActivate = "rule.activate"
	KindTraceEvent   = "trace.event"

	// KindPurge is written by PurgePayloads: the indexes whose payloads were
	// dropped and why.
	KindPurge = "ledger.purge"
	// KindRecover is written by Open when it cut a torn tail.
	KindRecover = "ledger.recover"

	reservedPrefix = "ledger."
	ledgerActor    = "ledger"
)

// Limits. They bound what a decoder allocates for a record read from disk.
const (
	MaxPayload = 16 << 20 // bytes of one entry's payload
	MaxKind    = 64       // bytes of Entry.Kind
	MaxActor   = 256      // bytes of Entry.Actor

	maxHeader   = 512 // canonical header of the longest kind and actor is ~380 bytes
	bodyFixed   = 3   // flags byte and header length
	maxBody     = bodyFixed + maxHeader + MaxPayload
	lenPrefix   = 4
	flagLive    = 0
	flagPurged  = 1
	hashSize    = tlog.HashSize
	maxBatchLen = 1 << 16  // entries per AppendBatch call
	maxBatchPay = 64 << 20 // payload bytes per AppendBatch call
)

// magic opens the entries file.
const magic = "daemoneye ledger v1\n"

// Entry is what a caller appends.
type Entry struct {
	Kind    string
	Actor   string    // operator, node or component that acted
	Time    time.Time // zero means now
	Payload []byte    // at most MaxPayload bytes; opaque to the ledger
}

// Record is an entry as stored, with what proves it.
type Record struct {
	Index       int64
	Time        time.Time
	Kind        string
	Actor       string
	PayloadHash [32]byte // SHA-256 of the payload, committed by the leaf
	PayloadLen  int64
	Payload     []byte // nil once purged
	Purged      bool
	// Leaf is the canonical header: the record data of the Merkle leaf
	// (tlog.RecordHash(Leaf)). With the payload it is all an offline verifier
	// needs besides a proof and a checkpoint.
	Leaf []byte
}

// LeafHash is the Merkle leaf of the record.
func (r Record) LeafHash() tlog.Hash { return tlog.RecordHash(r.Leaf) }

// header is the committed part of a record, in canonical CBOR.
type header struct {
	Index       int64  `cbor:"1,keyasint"`
	Time        int64  `cbor:"2,keyasint"` // Unix nanoseconds
	Kind        string `cbor:"3,keyasint"`
	Actor       string `cbor:"4,keyasint"`
	PayloadHash []byte `cbor:"5,keyasint"`
	PayloadLen  int64  `cbor:"6,keyasint"`
}

var (
	encMode cbor.EncMode
	decMode cbor.DecMode
)

func init() {
	var err error
	if encMode, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	decMode, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   4,
		MaxArrayElements:  maxPurgeIndexes,
		MaxMapPairs:       16,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// validKind reports whether s is a well-formed kind.
func validKind(s string) bool {
	if s == "" || len(s) > MaxKind || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func validActor(s string) bool {
	if len(s) > MaxActor || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// checkEntry validates what a caller appends.
func checkEntry(e Entry, reservedOK bool) error {
	if !validKind(e.Kind) {
		return fmt.Errorf("ledger: kind %q: want lowercase letters, digits, '.', '_' or '-', at most %d bytes", e.Kind, MaxKind)
	}
	if !reservedOK && len(e.Kind) >= len(reservedPrefix) && e.Kind[:len(reservedPrefix)] == reservedPrefix {
		return fmt.Errorf("ledger: kind %q: the %q prefix is the ledger's own", e.Kind, reservedPrefix)
	}
	if !validActor(e.Actor) {
		return fmt.Errorf("ledger: actor %q: want printable UTF-8, at most %d bytes", e.Actor, MaxActor)
	}
	if len(e.Payload) > MaxPayload {
		return fmt.Errorf("ledger: payload of %d bytes is over the %d-byte limit", len(e.Payload), MaxPayload)
	}
	if !e.Time.IsZero() {
		if y := e.Time.Year(); y < 1678 || y > 2261 {
			return fmt.Errorf("ledger: time %s is out of range", e.Time)
		}
	}
	return nil
}

// appendRecord encodes entry e at index i onto dst. It returns the new dst and
// the header bytes (the leaf data), which alias dst.
func appendRecord(dst []byte, i int64, e Entry) ([]byte, []byte, error) {
	sum := sha256.Sum256(e.Payload)
	var scratch [maxHeader]byte
	hb := appendHeader(scratch[:0], header{
		Index:       i,
		Time:        e.Time.UnixNano(),
		Kind:        e.Kind,
		Actor:       e.Actor,
		PayloadHash: sum[:],
		PayloadLen:  int64(len(e.Payload)),
	})
	if len(hb) > maxHeader {
		return dst, nil, fmt.Errorf("ledger: header of %d bytes is over the %d-byte limit", len(hb), maxHeader)
	}
	body := bodyFixed + len(hb) + len(e.Payload)
	dst = binary.BigEndian.AppendUint32(dst, uint32(body))
	dst = append(dst, flagLive)
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(hb)))
	start := len(dst)
	dst = append(dst, hb...)
	leaf := dst[start:len(dst):len(dst)]
	dst = append(dst, e.Payload...)
	return dst, leaf, nil
}

// appendHeader appends the canonical CBOR of h (RFC 8949 section 4.2.1:
// shortest integer forms, definite lengths, map keys in order 1..6). It
// is the encoding fxamacker/cbor's core deterministic mode gives the header
// struct (TestHeaderEncodingMatchesCBOR), written out because appends are
// hot.
func appendHeader(dst []byte, h header) []byte {
	dst = append(dst, 0xa6) // map of 6 pairs
	dst = append(dst, 0x01)
	dst = appendInt(dst, h.Index)
	dst = append(dst, 0x02)
	dst = appendInt(dst, h.Time)
	dst = append(dst, 0x03)
	dst = appendHead(dst, 3, uint64(len(h.Kind)))
	dst = append(dst, h.Kind...)
	dst = append(dst, 0x04)
	dst = appendHead(dst, 3, uint64(len(h.Actor)))
	dst = append(dst, h.Actor...)
	dst = append(dst, 0x05)
	dst = appendHead(dst, 2, uint64(len(h.PayloadHash)))
	dst = append(dst, h.PayloadHash...)
	dst = append(dst, 0x06)
	return appendInt(dst, h.PayloadLen)
}

// appendHead and appendInt write canonical CBOR heads and integers.
var (
	appendHead = capture.AppendCBORHead
	appendInt  = capture.AppendCBORInt
)

// rawRecord is one framed record, not yet checked. Its slices alias the
// reader's buffer.
type rawRecord struct {
	flags   byte
	header  []byte
	payload []byte // the payload area: the payload, or zeros once purged
	size    int64  // bytes on disk, length prefix included
}

// recordError says what is wrong with one record.
type recordError struct {
	reason string
	// torn: the record runs past the end of the file.
	torn bool
}

func (e *recordError) Error() string { return e.reason }

func badRecord(format string, args ...any) *recordError {
	return &recordError{reason: fmt.Sprintf(format, args...)}
}

// parseBody splits a record body (after the length prefix).
func parseBody(body []byte) (rawRecord, error) {
	if len(body) < bodyFixed {
		return rawRecord{}, badRecord("record length %d is too short", len(body))
	}
	flags := body[0]
	if flags != flagLive && flags != flagPurged {
		return rawRecord{}, badRecord("unknown flags 0x%02x", flags)
	}
	h := int(binary.BigEndian.Uint16(body[1:3]))
	if h == 0 || h > maxHeader || bodyFixed+h > len(body) {
		return rawRecord{}, badRecord("header length %d is out of range", h)
	}
	return rawRecord{
		flags:   flags,
		header:  body[bodyFixed : bodyFixed+h],
		payload: body[bodyFixed+h:],
		size:    int64(lenPrefix + len(body)),
	}, nil
}

// decodeHeader decodes and validates a header: canonical CBOR with every
// field, a well-formed kind and actor.
func decodeHeader(b []byte) (header, error) {
	var h header
	if len(b) > maxHeader {
		return h, badRecord("header of %d bytes is too long", len(b))
	}
	if err := decMode.Unmarshal(b, &h); err != nil {
		return h, badRecord("header is malformed: %v", err)
	}
	var scratch [maxHeader]byte
	if again := appendHeader(scratch[:0], h); !bytes.Equal(again, b) {
		return h, badRecord("header is not canonical CBOR")
	}
	switch {
	case h.Index < 0:
		return h, badRecord("header has negative index %d", h.Index)
	case !validKind(h.Kind):
		return h, badRecord("header has malformed kind %q", h.Kind)
	case !validActor(h.Actor):
		return h, badRecord("header has malformed actor %q", h.Actor)
	case len(h.PayloadHash) != sha256.Size:
		return h, badRecord("header has a %d-byte payload hash", len(h.PayloadHash))
	case h.PayloadLen < 0 || h.PayloadLen > MaxPayload:
		return h, badRecord("header has payload length %d out of range", h.PayloadLen)
	}
	return h, nil
}

// check validates a framed record at position want: header, index, payload
// against its hash, or the zeroed area of a purged payload.
func (r rawRecord) check(want int64) (header, error) {
	h, err := decodeHeader(r.header)
	if err != nil {
		return h, err
	}
	if h.Index != want {
		return h, badRecord("header says index %d", h.Index)
	}
	if int64(len(r.payload)) != h.PayloadLen {
		return h, badRecord("payload length %d does not match its header (%d)", len(r.payload), h.PayloadLen)
	}
	if r.flags == flagPurged {
		if !allZero(r.payload) {
			return h, badRecord("purged payload area is not zeroed")
		}
		return h, nil
	}
	if sum := sha256.Sum256(r.payload); !bytes.Equal(sum[:], h.PayloadHash) {
		return h, badRecord("payload hash does not match its leaf")
	}
	return h, nil
}

// record builds the exported view; it copies what it keeps.
func (r rawRecord) record(h header) Record {
	rec := Record{
		Index:      h.Index,
		Time:       time.Unix(0, h.Time).UTC(),
		Kind:       h.Kind,
		Actor:      h.Actor,
		PayloadLen: h.PayloadLen,
		Purged:     r.flags == flagPurged,
		Leaf:       bytes.Clone(r.header),
	}
	copy(rec.PayloadHash[:], h.PayloadHash)
	if !rec.Purged {
		rec.Payload = bytes.Clone(r.payload)
		if rec.Payload == nil {
			rec.Payload = []byte{}
		}
	}
	return rec
}

func allZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// recordReader reads framed records sequentially from an entries file.
type recordReader struct {
	r   *bufio.Reader
	off int64 // offset of the next record
	end int64 // records must end by here (the file size when it was opened)
	buf []byte
}

func newRecordReader(r io.Reader, off, end int64) *recordReader {
	size := int(min(max(end-off, 4096), 1<<20))
	return &recordReader{r: bufio.NewReaderSize(r, size), off: off, end: end}
}

// next returns the next framed record and its offset, io.EOF at a clean end,
// or a *recordError. After an error the reader is not usable.
func (rr *recordReader) next() (rawRecord, int64, error) {
	off := rr.off
	left := rr.end - off
	if left == 0 {
		return rawRecord{}, off, io.EOF
	}
	if left < lenPrefix {
		return rawRecord{}, off, &recordError{reason: "record truncated", torn: true}
	}
	var p [lenPrefix]byte
	if _, err := io.ReadFull(rr.r, p[:]); err != nil {
		return rawRecord{}, off, readErr(err)
	}
	n := int64(binary.BigEndian.Uint32(p[:]))
	if n < bodyFixed+1 || n > maxBody {
		return rawRecord{}, off, badRecord("record length %d is out of range", n)
	}
	if n > left-lenPrefix {
		return rawRecord{}, off, &recordError{reason: "record truncated", torn: true}
	}
	if int64(cap(rr.buf)) < n {
		rr.buf = make([]byte, n)
	}
	body := rr.buf[:n]
	if _, err := io.ReadFull(rr.r, body); err != nil {
		return rawRecord{}, off, readErr(err)
	}
	rr.off += lenPrefix + n
	raw, err := parseBody(body)
	return raw, off, err
}

// readErr turns a short read of bytes the size said were there into a
// truncation (the file shrank under us); other errors pass through.
func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &recordError{reason: "record truncated", torn: true}
	}
	return fmt.Errorf("ledger: read entries: %w", err)
}

// readRecordAt reads the record at off from f (random access).
func readRecordAt(f io.ReaderAt, off, end int64) (rawRecord, error) {
	if end-off < lenPrefix {
		return rawRecord{}, &recordError{reason: "record truncated", torn: true}
	}
	var p [lenPrefix]byte
	if _, err := f.ReadAt(p[:], off); err != nil {
		return rawRecord{}, readErr(err)
	}
	n := int64(binary.BigEndian.Uint32(p[:]))
	if n < bodyFixed+1 || n > maxBody {
		return rawRecord{}, badRecord("record length %d is out of range", n)
	}
	if n > end-off-lenPrefix {
		return rawRecord{}, &recordError{reason: "record truncated", torn: true}
	}
	body := make([]byte, n)
	if _, err := f.ReadAt(body, off+lenPrefix); err != nil {
		return rawRecord{}, readErr(err)
	}
	return parseBody(body)
}

// DecodeLeaf decodes a leaf's record data (Record.Leaf) for a verifier that
// holds it without the ledger. The payload fields are left empty.
func DecodeLeaf(leaf []byte) (Record, error) {
	h, err := decodeHeader(leaf)
	if err != nil {
		return Record{}, fmt.Errorf("ledger: leaf: %v: %w", err, ErrTampered)
	}
	rec := rawRecord{flags: flagPurged, header: leaf}.record(h)
	rec.Purged = false
	return rec, nil
}

// CheckPayload reports whether payload is the one the leaf commits to.
func CheckPayload(leaf, payload []byte) error {
	h, err := decodeHeader(leaf)
	if err != nil {
		return fmt.Errorf("ledger: leaf: %v: %w", err, ErrTampered)
	}
	if sum := sha256.Sum256(payload); int64(len(payload)) != h.PayloadLen || !bytes.Equal(sum[:], h.PayloadHash) {
		return fmt.Errorf("ledger: entry %d: payload hash does not match its leaf: %w", h.Index, ErrTampered)
	}
	return nil
}
