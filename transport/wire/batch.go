package wire

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"fmt"
	"io"
	"math"
	"runtime"
	"sync"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/fxamacker/cbor/v2"
	"github.com/klauspost/compress/zstd"
	"github.com/veraison/go-cose"
	"golang.org/x/mod/sumdb/tlog"
)

// Content types of a sealed batch's payload, in the COSE protected header.
const (
	ContentTypeBatch     = "application/vnd.daemoneye.batch+cbor"
	ContentTypeBatchZstd = "application/vnd.daemoneye.batch+cbor+zstd"
)

// HeaderLabelSeq is the COSE header label carrying the batch seq. It is in
// the private-use range (below -65536). The agent id travels as the
// standard kid (label 4): it names the certificate whose key verifies.
const HeaderLabelSeq int64 = -70001

// HeaderLabelX5Chain is COSE's x5chain label (RFC 9360): the signer's
// certificate, DER, in the protected header.
const HeaderLabelX5Chain int64 = 33

// HeaderLabelEvents carries the number of events in the batch, so proxies
// can count events in and out without opening anything.
const HeaderLabelEvents int64 = -70002

// batchBody is the signed payload (the concept's EventBatch; batch_sig is
// the COSE signature around it). Events are kept as the exact CBOR the
// agent hashed into Root.
type batchBody struct {
	AgentID string            `cbor:"1,keyasint"`
	Seq     uint64            `cbor:"2,keyasint"`
	TSStart int64             `cbor:"3,keyasint"`
	TSEnd   int64             `cbor:"4,keyasint"`
	Events  []cbor.RawMessage `cbor:"5,keyasint"`
	Root    []byte            `cbor:"6,keyasint"` // RFC 6962 Merkle tree hash over Events
}

// Batch is an opened, verified batch.
type Batch struct {
	AgentID string
	Seq     uint64
	TSStart int64 // earliest event Time, Unix nanoseconds
	TSEnd   int64 // latest event Time
	Events  []capture.Event
	Root    [32]byte // Merkle tree hash over the events' canonical CBOR

	raw  [][]byte   // canonical CBOR of each event: the Merkle leaves
	tree *proofTree // built on the first EventProof
}

// proofTree is the batch's tree in tlog's stored-hash layout. Opening a
// batch only needs the root; most batches are never asked for a proof.
type proofTree struct {
	once   sync.Once
	hashes hashReader
	err    error
}

// EventCBOR returns the canonical CBOR of event i, the data of its Merkle
// leaf. It equals EncodeEvent(b.Events[i]). The caller must not modify it.
func (b *Batch) EventCBOR(i int) []byte { return b.raw[i] }

// EventProof returns the inclusion proof of event i in b.Root, for
// VerifyEventProof(b.Root, b.EventCBOR(i), i, len(b.Events), proof).
func (b *Batch) EventProof(i int) ([][32]byte, error) {
	n := len(b.raw)
	if i < 0 || i >= n {
		return nil, fmt.Errorf("wire: event proof: index %d out of range [0,%d)", i, n)
	}
	t := b.tree
	if t == nil { // a Batch not made by OpenBatch
		t = new(proofTree)
	}
	t.once.Do(func() { t.hashes, t.err = storedHashes(b.raw) })
	if t.err != nil {
		return nil, fmt.Errorf("wire: event proof: %w", t.err)
	}
	p, err := tlog.ProveRecord(int64(n), int64(i), t.hashes)
	if err != nil {
		return nil, fmt.Errorf("wire: event proof: %w", err)
	}
	out := make([][32]byte, len(p))
	for j, h := range p {
		out[j] = h
	}
	return out, nil
}

// VerifyEventProof checks that eventCBOR is leaf i of the n-leaf Merkle tree
// whose hash is root. Hashing is RFC 6962 (leaf SHA-256(0x00||data), node
// SHA-256(0x01||l||r)), as in golang.org/x/mod/sumdb/tlog.
func VerifyEventProof(root [32]byte, eventCBOR []byte, i, n int, proof [][32]byte) error {
	if n < 1 || i < 0 || i >= n {
		return fmt.Errorf("%w: index %d of %d", ErrBadProof, i, n)
	}
	p := make(tlog.RecordProof, len(proof))
	for j, h := range proof {
		p[j] = h
	}
	if err := tlog.CheckRecord(p, int64(n), root, int64(i), tlog.RecordHash(eventCBOR)); err != nil {
		return fmt.Errorf("%w: %w", ErrBadProof, err)
	}
	return nil
}

// EncodeEvent returns the canonical CBOR of e: core deterministic encoding
// with strings as byte strings. It is the leaf data of e's Merkle leaf.
func EncodeEvent(e capture.Event) ([]byte, error) {
	return capture.AppendCBOR(nil, &e), nil
}

type hashReader []tlog.Hash

func (h hashReader) ReadHashes(idx []int64) ([]tlog.Hash, error) {
	out := make([]tlog.Hash, len(idx))
	for i, x := range idx {
		if x < 0 || x >= int64(len(h)) {
			return nil, fmt.Errorf("hash index %d out of range", x)
		}
		out[i] = h[x]
	}
	return out, nil
}

// merkleRoot is the RFC 6962 Merkle tree hash over leaves, computed level
// by level: pairs are hashed, an odd last node moves up unchanged, which
// yields the same root as RFC 6962's split at the largest power of two.
func merkleRoot[L ~[]byte](leaves []L) tlog.Hash {
	level := make([]tlog.Hash, len(leaves))
	for i, l := range leaves {
		level[i] = tlog.RecordHash(l)
	}
	for len(level) > 1 {
		next := level[:0]
		for i := 0; i < len(level); i += 2 {
			if i+1 == len(level) {
				next = append(next, level[i])
			} else {
				next = append(next, tlog.NodeHash(level[i], level[i+1]))
			}
		}
		level = next
	}
	if len(level) == 0 {
		return tlog.Hash{}
	}
	return level[0]
}

// storedHashes builds the tree over leaves in tlog's stored-hash layout,
// from which tlog.ProveRecord reads proofs.
func storedHashes(leaves [][]byte) (hashReader, error) {
	hashes := make(hashReader, 0, 2*len(leaves))
	for i, leaf := range leaves {
		hs, err := tlog.StoredHashes(int64(i), leaf, hashes)
		if err != nil {
			return nil, err
		}
		hashes = append(hashes, hs...)
	}
	return hashes, nil
}

var zenc = sync.OnceValues(func() (*zstd.Encoder, error) {
	return zstd.NewWriter(nil,
		// A batch is a few hundred KiB; a larger window buys nothing and
		// would make receivers keep more history.
		zstd.WithWindowSize(1<<20),
		zstd.WithEncoderLevel(zstd.SpeedFastest), // agent CPU matters more than 5% of bytes
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)),
		zstd.WithZeroFrames(true),
	)
})

// SealBatch encodes events as a batch body, optionally zstd-compresses it
// and signs it as a COSE_Sign1 (EdDSA) message with key. The protected
// header carries alg, content type, kid (= agentID) and seq, so receivers
// can pick the certificate and dedup before decoding the payload. Event
// seqs are encoded as given. A sealed batch larger than
// DefaultMaxSealedSize is refused with ErrTooLarge: cut smaller batches.
// seq must stay below 2^63.
func SealBatch(agentID string, seq uint64, events []capture.Event, key ed25519.PrivateKey, compress bool) ([]byte, error) {
	return sealBatch(agentID, seq, events, key, nil, compress)
}

// SealBatchCert is SealBatch with the signer's certificate (DER) in the
// protected header as a COSE x5chain (RFC 9360), so that the center can
// verify a batch from any agent with nothing but the customer CA: the
// certificate says which key must have signed, the CA says whether to trust
// it. Agents seal with this; proxies never look at it.
func SealBatchCert(agentID string, seq uint64, events []capture.Event, key ed25519.PrivateKey, certDER []byte, compress bool) ([]byte, error) {
	if len(certDER) == 0 {
		return nil, errors.New("wire: seal batch: empty certificate")
	}
	return sealBatch(agentID, seq, events, key, certDER, compress)
}

func sealBatch(agentID string, seq uint64, events []capture.Event, key ed25519.PrivateKey, certDER []byte, compress bool) ([]byte, error) {
	if agentID == "" {
		return nil, errors.New("wire: seal batch: empty agent id")
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("wire: seal batch: private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	if len(events) == 0 {
		return nil, errors.New("wire: seal batch: no events")
	}
	if seq > math.MaxInt64 {
		// go-cose decodes header integers as int64; no agent gets near.
		return nil, fmt.Errorf("wire: seal batch: seq %d above 2^63-1", seq)
	}
	if len(events) > DefaultMaxEvents {
		return nil, fmt.Errorf("wire: seal batch: %d events > %d: %w", len(events), DefaultMaxEvents, ErrTooLarge)
	}

	tsStart, tsEnd := events[0].Time, events[0].Time
	for i := range events {
		tsStart = min(tsStart, events[i].Time)
		tsEnd = max(tsEnd, events[i].Time)
	}
	leaves, err := encodeEvents(events, 160*len(events))
	if err != nil {
		return nil, fmt.Errorf("wire: seal batch: %w", err)
	}
	return sealLeaves(agentID, seq, leaves, tsStart, tsEnd, key, certDER, compress)
}

// SealBatchCertRaw is SealBatchCert for events already in their canonical
// encoding: leaves[i] must be EncodeEvent's bytes for event i (the agent's
// store keeps exactly those, so its shipper seals without decoding and
// encoding every event again), and tsStart and tsEnd the least and the
// greatest event Time. The result is byte for byte what SealBatchCert makes
// of the decoded events. Leaves are not checked here: the center refuses a
// batch whose leaves are not canonical events.
func SealBatchCertRaw(agentID string, seq uint64, leaves [][]byte, tsStart, tsEnd int64, key ed25519.PrivateKey, certDER []byte, compress bool) ([]byte, error) {
	if len(certDER) == 0 {
		return nil, errors.New("wire: seal batch: empty certificate")
	}
	if agentID == "" {
		return nil, errors.New("wire: seal batch: empty agent id")
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("wire: seal batch: private key is %d bytes, want %d", len(key), ed25519.PrivateKeySize)
	}
	if len(leaves) == 0 {
		return nil, errors.New("wire: seal batch: no events")
	}
	if seq > math.MaxInt64 {
		return nil, fmt.Errorf("wire: seal batch: seq %d above 2^63-1", seq)
	}
	if len(leaves) > DefaultMaxEvents {
		return nil, fmt.Errorf("wire: seal batch: %d events > %d: %w", len(leaves), DefaultMaxEvents, ErrTooLarge)
	}
	if tsStart > tsEnd {
		return nil, errors.New("wire: seal batch: ts_start after ts_end")
	}
	return sealLeaves(agentID, seq, leaves, tsStart, tsEnd, key, certDER, compress)
}

// sealLeaves builds the canonical batch body around the leaves (piece by
// piece, as isCanonicalBody reads it back: the same bytes as encMode would
// make of batchBody, without copying every leaf through the encoder), then
// compresses and signs it.
func sealLeaves[L ~[]byte](agentID string, seq uint64, leaves []L, tsStart, tsEnd int64, key ed25519.PrivateKey, certDER []byte, compress bool) ([]byte, error) {
	root := merkleRoot(leaves)
	size := 64 + len(agentID)
	for _, l := range leaves {
		size += len(l)
	}
	payload := make([]byte, 0, size)
	payload = appendHead(payload, majorMap, 6)
	payload = appendHead(payload, majorUint, 1)
	payload = append(appendHead(payload, majorBytes, uint64(len(agentID))), agentID...)
	payload = appendHead(payload, majorUint, 2)
	payload = appendHead(payload, majorUint, seq)
	payload = appendHead(payload, majorUint, 3)
	payload = appendInt(payload, tsStart)
	payload = appendHead(payload, majorUint, 4)
	payload = appendInt(payload, tsEnd)
	payload = appendHead(payload, majorUint, 5)
	payload = appendHead(payload, majorArray, uint64(len(leaves)))
	for _, l := range leaves {
		payload = append(payload, l...)
	}
	payload = appendHead(payload, majorUint, 6)
	payload = append(appendHead(payload, majorBytes, uint64(len(root))), root[:]...)
	n := len(leaves)

	ct := ContentTypeBatch
	if compress {
		z, err := zenc()
		if err != nil {
			return nil, fmt.Errorf("wire: seal batch: zstd: %w", err)
		}
		payload = z.EncodeAll(payload, make([]byte, 0, len(payload)/4))
		ct = ContentTypeBatchZstd
	}

	msg := cose.Sign1Message{
		Headers: cose.Headers{
			Protected: cose.ProtectedHeader{
				cose.HeaderLabelAlgorithm:   cose.AlgorithmEdDSA,
				cose.HeaderLabelContentType: ct,
				cose.HeaderLabelKeyID:       []byte(agentID),
				HeaderLabelSeq:              seq,
			},
			Unprotected: cose.UnprotectedHeader{},
		},
		Payload: payload,
	}
	if certDER != nil {
		msg.Headers.Protected[HeaderLabelX5Chain] = certDER
	}
	msg.Headers.Protected[HeaderLabelEvents] = uint64(n)
	signer, err := cose.NewSigner(cose.AlgorithmEdDSA, key)
	if err != nil {
		return nil, fmt.Errorf("wire: seal batch: %w", err)
	}
	if err := msg.Sign(nil, nil, signer); err != nil { // Ed25519 needs no randomness
		return nil, fmt.Errorf("wire: seal batch: sign: %w", err)
	}
	sealed, err := msg.MarshalCBOR()
	if err != nil {
		return nil, fmt.Errorf("wire: seal batch: %w", err)
	}
	if len(sealed) > DefaultMaxSealedSize {
		return nil, fmt.Errorf("wire: seal batch: %d bytes > %d: %w", len(sealed), DefaultMaxSealedSize, ErrTooLarge)
	}
	return sealed, nil
}

// protected is what we read from a batch's protected header. Other labels
// are ignored.
type protected struct {
	Alg         int64   `cbor:"1,keyasint"`
	ContentType string  `cbor:"3,keyasint"`
	KeyID       []byte  `cbor:"4,keyasint"`
	X5Chain     []byte  `cbor:"33,keyasint"`
	Seq         *uint64 `cbor:"-70001,keyasint"`
	Events      uint64  `cbor:"-70002,keyasint"`
}

type header struct {
	agentID     string
	seq         uint64
	contentType string
	certDER     []byte
	events      uint64
}

// parseProtected reads our fields from the serialized protected header.
// PeekBatch and OpenBatch both use it, so a proxy and the center can never
// disagree about which (agent, seq) a batch is.
func (c *codec) parseProtected(raw []byte) (header, error) {
	var bstr []byte
	if err := c.strict.Unmarshal(raw, &bstr); err != nil {
		return header{}, decodeErr("batch protected header", err)
	}
	var p protected
	if err := c.lenient.Unmarshal(bstr, &p); err != nil {
		return header{}, decodeErr("batch protected header", err)
	}
	switch {
	case p.Alg != int64(cose.AlgorithmEdDSA):
		return header{}, malformed("batch: algorithm %d, want EdDSA", p.Alg)
	case len(p.KeyID) == 0:
		return header{}, malformed("batch: no kid (agent id)")
	case p.Seq == nil:
		return header{}, malformed("batch: no seq header")
	}
	return header{agentID: string(p.KeyID), seq: *p.Seq, contentType: p.ContentType, certDER: p.X5Chain, events: p.Events}, nil
}

// decodeSign1 parses the COSE_Sign1 envelope after a size check.
func (c *codec) decodeSign1(sealed []byte) (*cose.Sign1Message, header, error) {
	if len(sealed) > c.lim.MaxSealedSize {
		return nil, header{}, fmt.Errorf("%w: sealed batch %d bytes > %d", ErrTooLarge, len(sealed), c.lim.MaxSealedSize)
	}
	// go-cose's own decoder refuses duplicate keys and indefinite lengths
	// and applies the CBOR library's default depth and length limits; the
	// size check above bounds the rest.
	var msg cose.Sign1Message
	if err := msg.UnmarshalCBOR(sealed); err != nil {
		return nil, header{}, malformed("batch: cose: %w", err)
	}
	if msg.Payload == nil {
		return nil, header{}, malformed("batch: detached payload")
	}
	h, err := c.parseProtected(msg.Headers.RawProtected)
	if err != nil {
		return nil, header{}, err
	}
	return &msg, h, nil
}

// PeekBatch returns the agent id and seq from a sealed batch's protected
// header WITHOUT verifying the signature: for proxies keying their WAL and
// for dedup before the expensive work. The values are only as trustworthy
// as the link until OpenBatch verifies them. Input above
// DefaultMaxSealedSize is refused.
func PeekBatch(sealed []byte) (agentID string, seq uint64, err error) {
	info, err := PeekInfo(sealed)
	return info.AgentID, info.Seq, err
}

// Info is what a sealed batch's protected header says, unverified.
type Info struct {
	AgentID string
	Seq     uint64
	Events  int // 0 for batches sealed before the count was added
}

// PeekInfo reads a batch's header without verifying it (see PeekBatch).
func PeekInfo(sealed []byte) (Info, error) {
	c, err := codecFor(Limits{})
	if err != nil {
		return Info{}, err
	}
	_, h, err := c.decodeSign1(sealed)
	if err != nil {
		return Info{}, err
	}
	if h.events > uint64(c.lim.MaxEvents) {
		return Info{}, malformed("batch: header claims %d events", h.events)
	}
	return Info{AgentID: h.agentID, Seq: h.seq, Events: int(h.events)}, nil
}

// PeekCert returns the signer's certificate (DER) from a batch sealed with
// SealBatchCert, unverified: the caller checks it against the CA and then
// verifies the batch with its key. ErrMalformed when there is none.
func PeekCert(sealed []byte) ([]byte, error) {
	c, err := codecFor(Limits{})
	if err != nil {
		return nil, err
	}
	_, h, err := c.decodeSign1(sealed)
	if err != nil {
		return nil, err
	}
	if len(h.certDER) == 0 {
		return nil, malformed("batch: no x5chain certificate")
	}
	return h.certDER, nil
}

// OpenBatch verifies and decodes a sealed batch. Order matters: the
// signature is checked first (ErrBadSignature), before any decompression or
// payload decoding; then the payload is decompressed under
// lim.MaxBodySize (ErrTooLarge), decoded under lim (ErrMalformed), checked
// against the signed header, each event is checked to be in canonical
// encoding, and the Merkle root is recomputed and compared.
func OpenBatch(sealed []byte, pub ed25519.PublicKey, lim Limits) (*Batch, error) {
	c, err := codecFor(lim)
	if err != nil {
		return nil, err
	}
	if len(pub) != ed25519.PublicKeySize {
		return nil, fmt.Errorf("wire: open batch: public key is %d bytes, want %d", len(pub), ed25519.PublicKeySize)
	}
	msg, h, err := c.decodeSign1(sealed)
	if err != nil {
		return nil, err
	}
	verifier, err := cose.NewVerifier(cose.AlgorithmEdDSA, pub)
	if err != nil {
		return nil, fmt.Errorf("wire: open batch: %w", err)
	}
	if err := msg.Verify(nil, verifier); err != nil {
		return nil, fmt.Errorf("%w: agent %q seq %d: %w", ErrBadSignature, h.agentID, h.seq, err)
	}

	payload := msg.Payload
	switch h.contentType {
	case ContentTypeBatch:
		if len(payload) > c.lim.MaxBodySize {
			return nil, fmt.Errorf("%w: batch body %d bytes > %d", ErrTooLarge, len(payload), c.lim.MaxBodySize)
		}
	case ContentTypeBatchZstd:
		if payload, err = c.decompress(payload); err != nil {
			return nil, err
		}
	default:
		return nil, malformed("batch: content type %q", h.contentType)
	}

	// The body is decoded without reflection when it is canonical, which
	// it is unless its sender is broken or hostile; otherwise the general
	// decoder takes it, explains what is wrong, or finds that only this
	// fast path cannot take it.
	body, events, fast := decodeCanonicalBody(payload, c.lim)
	if !fast {
		body, events = batchBody{}, nil
		if err := c.strict.Unmarshal(payload, &body); err != nil {
			return nil, decodeErr("batch body", err)
		}
	}
	switch {
	case body.AgentID != h.agentID || body.Seq != h.seq:
		return nil, malformed("batch: header says %q/%d, body says %q/%d", h.agentID, h.seq, body.AgentID, body.Seq)
	case h.events != 0 && h.events != uint64(len(body.Events)):
		return nil, malformed("batch: header counts %d events, body has %d", h.events, len(body.Events))
	case len(body.Events) == 0:
		return nil, malformed("batch: no events")
	case len(body.Events) > c.lim.MaxEvents:
		return nil, fmt.Errorf("%w: %d events > %d", ErrTooLarge, len(body.Events), c.lim.MaxEvents)
	case len(body.Root) != 32:
		return nil, malformed("batch: root is %d bytes", len(body.Root))
	case body.TSStart > body.TSEnd:
		return nil, malformed("batch: ts_start after ts_end")
	}
	// Every event must be in canonical encoding, and the body around them
	// too: the Merkle leaves are then exactly what the agent hashed, anyone
	// holding a decoded event can rebuild its leaf (EncodeEvent), and no
	// second encoding of the same batch (duplicate keys, long integer
	// forms, text strings, unknown fields) is accepted.
	if !fast {
		if events, err = slowEvents(c, body.Events); err != nil {
			return nil, err
		}
	}
	for i := range events {
		if t := events[i].Time; t < body.TSStart || t > body.TSEnd {
			return nil, malformed("batch: event %d time %d outside [ts_start, ts_end]", i, t)
		}
	}
	if !fast && !isCanonicalBody(payload, &body) {
		return nil, malformed("batch: body is not in canonical encoding")
	}
	b := &Batch{
		AgentID: body.AgentID,
		Seq:     body.Seq,
		TSStart: body.TSStart,
		TSEnd:   body.TSEnd,
		Events:  events,
		raw:     make([][]byte, len(body.Events)),
		tree:    new(proofTree),
	}
	for i, l := range body.Events {
		b.raw[i] = l
	}
	copy(b.Root[:], body.Root)
	if merkleRoot(b.raw) != b.Root {
		return nil, malformed("batch: merkle root does not match events")
	}
	return b, nil
}

// slowEvents decodes each leaf with the reflecting decoder and insists it
// re-encodes to the same bytes.
func slowEvents(c *codec, leaves []cbor.RawMessage) ([]capture.Event, error) {
	events := make([]capture.Event, len(leaves))
	for i, leaf := range leaves {
		var ok bool
		if events[i], ok = decodeCanonicalEvent(leaf); ok {
			continue
		}
		if err := c.strict.Unmarshal(leaf, &events[i]); err != nil {
			return nil, decodeErr(fmt.Sprintf("batch body: event %d", i), err)
		}
		again, err := EncodeEvent(events[i])
		if err != nil {
			return nil, malformed("batch: re-encode event %d: %w", i, err)
		}
		if !bytes.Equal(again, leaf) {
			return nil, malformed("batch: body is not in canonical encoding (event %d)", i)
		}
	}
	return events, nil
}

// isCanonicalBody reports whether payload is exactly the canonical encoding
// of body, whose events are checked to be canonical already. It compares
// piece by piece instead of encoding the whole body again.
func isCanonicalBody(payload []byte, body *batchBody) bool {
	var scratch [64]byte
	expect := func(b []byte) bool {
		if !bytes.HasPrefix(payload, b) {
			return false
		}
		payload = payload[len(b):]
		return true
	}
	ok := expect(appendHead(scratch[:0], majorMap, 6)) &&
		expect(appendHead(scratch[:0], majorUint, 1)) && expect(appendHead(scratch[:0], majorBytes, uint64(len(body.AgentID)))) && expect([]byte(body.AgentID)) &&
		expect(appendHead(scratch[:0], majorUint, 2)) && expect(appendHead(scratch[:0], majorUint, body.Seq)) &&
		expect(appendHead(scratch[:0], majorUint, 3)) && expect(appendInt(scratch[:0], body.TSStart)) &&
		expect(appendHead(scratch[:0], majorUint, 4)) && expect(appendInt(scratch[:0], body.TSEnd)) &&
		expect(appendHead(scratch[:0], majorUint, 5)) && expect(appendHead(scratch[:0], majorArray, uint64(len(body.Events))))
	for _, l := range body.Events {
		ok = ok && expect(l)
	}
	ok = ok && expect(appendHead(scratch[:0], majorUint, 6)) && expect(appendHead(scratch[:0], majorBytes, uint64(len(body.Root)))) && expect(body.Root)
	return ok && len(payload) == 0
}

const (
	majorUint  = 0
	majorNeg   = 1
	majorBytes = 2
	majorArray = 4
	majorMap   = 5
)

// appendHead and appendInt write canonical CBOR heads and integers.
var (
	appendHead = capture.AppendCBORHead
	appendInt  = capture.AppendCBORInt
)

// encodeEvents encodes events canonically into one buffer and returns each
// event's slice of it.
func encodeEvents(events []capture.Event, sizeHint int) ([]cbor.RawMessage, error) {
	all := make([]byte, 0, sizeHint)
	ends := make([]int, len(events))
	for i := range events {
		all = capture.AppendCBOR(all, &events[i])
		ends[i] = len(all)
	}
	out := make([]cbor.RawMessage, len(events))
	start := 0
	for i, end := range ends {
		out[i] = all[start:end:end]
		start = end
	}
	return out, nil
}

// decompress inflates a zstd payload without ever holding more than
// MaxBodySize of output. SealBatch writes one frame that declares its size,
// so the common path allocates exactly that once. A payload without a
// declared size (another encoder, or an attacker) is streamed into chunks
// and refused as soon as it passes the cap; growing one slice instead would
// allocate several times the cap, and DecodeAll over many small frames
// reallocates its output per frame.
func (c *codec) decompress(payload []byte) ([]byte, error) {
	tooLarge := func(err error) error {
		return fmt.Errorf("%w: batch body over %d bytes (or over its declared size): %w", ErrTooLarge, c.lim.MaxBodySize, err)
	}
	var h zstd.Header
	if err := h.Decode(payload); err != nil {
		return nil, malformed("batch: zstd header: %w", err)
	}
	if h.HasFCS && !h.Skippable {
		if h.FrameContentSize > uint64(c.lim.MaxBodySize) {
			return nil, tooLarge(fmt.Errorf("frame declares %d bytes", h.FrameContentSize))
		}
		zd, err := c.zstdDecoder()
		if err != nil {
			return nil, fmt.Errorf("wire: open batch: zstd: %w", err)
		}
		out, err := zd.DecodeAll(payload, make([]byte, 0, h.FrameContentSize))
		if err != nil {
			if isZstdLimit(err) {
				return nil, tooLarge(err)
			}
			return nil, malformed("batch: zstd: %w", err)
		}
		return out, nil
	}

	zd, err := c.streamDecoder()
	if err != nil {
		return nil, fmt.Errorf("wire: open batch: zstd: %w", err)
	}
	if err := zd.Reset(bytes.NewReader(payload)); err != nil {
		return nil, malformed("batch: zstd: %w", err)
	}
	defer func() {
		_ = zd.Reset(nil) // drop the reference to payload before pooling
		c.zstream.Put(zd)
	}()
	const chunk = 256 << 10
	var (
		chunks [][]byte
		total  int
	)
	for {
		b := make([]byte, chunk)
		n, err := io.ReadFull(zd, b)
		total += n
		if total > c.lim.MaxBodySize {
			return nil, tooLarge(fmt.Errorf("stream passed the cap"))
		}
		chunks = append(chunks, b[:n])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			if isZstdLimit(err) {
				return nil, tooLarge(err)
			}
			return nil, malformed("batch: zstd: %w", err)
		}
	}
	if len(chunks) == 1 {
		return chunks[0], nil
	}
	out := make([]byte, 0, total)
	for _, b := range chunks {
		out = append(out, b...)
	}
	return out, nil
}

func isZstdLimit(err error) bool {
	return errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) ||
		errors.Is(err, zstd.ErrFrameSizeExceeded)
}
