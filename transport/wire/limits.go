package wire

import (
	"fmt"
	"math"
	"sync"

	"github.com/fxamacker/cbor/v2"
	"github.com/klauspost/compress/zstd"
)

// Default limits. They are sized for the agent's batch_max_events of 2000 with
// room to spare; a peer that needs more is misbehaving.
const (
	DefaultMaxFrameSize     = 4 << 20                     // 4 MiB per frame
	DefaultMaxSealedSize    = DefaultMaxFrameSize - 4<<10 // a sealed batch plus BatchFrame overhead fits one frame
	DefaultMaxBodySize      = 64 << 20                    // decompressed batch body
	DefaultMaxEvents        = 1 << 16                     // events per batch
	DefaultMaxNestedLevels  = 16                          // our deepest message nests 5 levels
	DefaultMaxArrayElements = 1 << 17                     // agents announced by one proxy, argv elements
	DefaultMaxMapPairs      = 64                          // our widest struct has 13 fields
	DefaultMaxWindow        = 8 << 20                     // zstd history window a sender may demand
	maxFrameSizeCeiling     = math.MaxUint32              // what a 4-byte prefix can say
	minWindow               = zstd.MinWindowSize          // zstd refuses smaller windows
	cborMinLevels           = 4                           // fxamacker/cbor lower bounds
	cborMinElems            = 16                          //
	cacheLimit              = 16                          // distinct Limits values whose codecs we keep
)

// Limits bounds what the decoders accept from the network. A zero field takes
// its default; values below the CBOR library's floor (4 levels, 16 elements)
// are raised to it.
type Limits struct {
	MaxFrameSize     int // bytes after the 4-byte length prefix
	MaxSealedSize    int // bytes of a sealed batch (COSE_Sign1)
	MaxBodySize      int // bytes of a batch body after decompression
	MaxEvents        int // events in one batch
	MaxNestedLevels  int // CBOR arrays/maps nested in one item
	MaxArrayElements int // elements of any one CBOR array
	MaxMapPairs      int // pairs of any one CBOR map
}

// DefaultLimits returns the limits used when a field is zero.
func DefaultLimits() Limits {
	return Limits{
		MaxFrameSize:     DefaultMaxFrameSize,
		MaxSealedSize:    DefaultMaxSealedSize,
		MaxBodySize:      DefaultMaxBodySize,
		MaxEvents:        DefaultMaxEvents,
		MaxNestedLevels:  DefaultMaxNestedLevels,
		MaxArrayElements: DefaultMaxArrayElements,
		MaxMapPairs:      DefaultMaxMapPairs,
	}
}

func (l Limits) normalized() Limits {
	d := DefaultLimits()
	pick := func(v, def, lo, hi int) int {
		if v <= 0 {
			v = def
		}
		return min(max(v, lo), hi)
	}
	return Limits{
		MaxFrameSize:     pick(l.MaxFrameSize, d.MaxFrameSize, 1, maxFrameSizeCeiling),
		MaxSealedSize:    pick(l.MaxSealedSize, d.MaxSealedSize, 1, math.MaxInt32),
		MaxBodySize:      pick(l.MaxBodySize, d.MaxBodySize, minWindow, math.MaxInt32),
		MaxEvents:        pick(l.MaxEvents, d.MaxEvents, 1, math.MaxInt32),
		MaxNestedLevels:  pick(l.MaxNestedLevels, d.MaxNestedLevels, cborMinLevels, 65535),
		MaxArrayElements: pick(l.MaxArrayElements, d.MaxArrayElements, cborMinElems, math.MaxInt32),
		MaxMapPairs:      pick(l.MaxMapPairs, d.MaxMapPairs, cborMinElems, math.MaxInt32),
	}
}

// codec is a Limits value compiled into decoders. Building a cbor.DecMode or
// a zstd.Decoder per call would cost more than decoding a small frame, so
// codecs are cached per distinct Limits.
type codec struct {
	lim Limits
	// strict refuses unknown struct fields: used for the envelope and for
	// signed batch bodies, whose bytes must round-trip exactly.
	strict cbor.DecMode
	// lenient ignores unknown fields so a newer peer may add optional fields
	// to control messages; everything else is as strict.
	lenient cbor.DecMode

	zonce   sync.Once
	zdec    *zstd.Decoder
	zerr    error
	zstream sync.Pool // *zstd.Decoder, streaming
}

var (
	codecMu    sync.Mutex
	codecCache = map[Limits]*codec{}
)

func codecFor(l Limits) (*codec, error) {
	l = l.normalized()
	codecMu.Lock()
	c, ok := codecCache[l]
	codecMu.Unlock()
	if ok {
		return c, nil
	}
	c, err := newCodec(l)
	if err != nil {
		return nil, err
	}
	codecMu.Lock()
	if old, ok := codecCache[l]; ok {
		c = old
	} else if len(codecCache) < cacheLimit {
		codecCache[l] = c
	}
	codecMu.Unlock()
	return c, nil
}

func decOptions(l Limits) cbor.DecOptions {
	return cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		IndefLength:      cbor.IndefLengthForbidden,
		TagsMd:           cbor.TagsForbidden, // nothing we carry is tagged; netip uses plain byte strings
		MaxNestedLevels:  l.MaxNestedLevels,
		MaxArrayElements: l.MaxArrayElements,
		MaxMapPairs:      l.MaxMapPairs,
		// Strings travel as byte strings (raw argv bytes); text strings are
		// still accepted but must be valid UTF-8.
		ByteStringToString: cbor.ByteStringToStringAllowed,
		UTF8:               cbor.UTF8RejectInvalid,
	}
}

func newCodec(l Limits) (*codec, error) {
	o := decOptions(l)
	lenient, err := o.DecMode()
	if err != nil {
		return nil, fmt.Errorf("wire: limits: %w", err)
	}
	o.ExtraReturnErrors = cbor.ExtraDecErrorUnknownField
	strict, err := o.DecMode()
	if err != nil {
		return nil, fmt.Errorf("wire: limits: %w", err)
	}
	return &codec{lim: l, strict: strict, lenient: lenient}, nil
}

// zstdDecoder returns the shared DecodeAll decoder. It never writes past
// the capacity of the dst it is given (WithDecodeAllCapLimit) nor produces
// more than MaxBodySize, and refuses history windows above maxWindow.
func (c *codec) zstdDecoder() (*zstd.Decoder, error) {
	c.zonce.Do(func() {
		c.zdec, c.zerr = zstd.NewReader(nil,
			zstd.WithDecoderMaxMemory(uint64(c.lim.MaxBodySize)),
			zstd.WithDecoderMaxWindow(uint64(c.maxWindow())),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderConcurrency(0), // one per CPU for concurrent DecodeAll
		)
	})
	return c.zdec, c.zerr
}

// maxWindow is the largest zstd history window a sender may ask for. Our
// encoder uses 1 MiB; the window is memory the decoder must hold.
func (c *codec) maxWindow() int { return max(minWindow, min(c.lim.MaxBodySize, DefaultMaxWindow)) }

// streamDecoder returns a pooled single-goroutine streaming decoder with the
// same caps, for payloads that do not declare their size.
func (c *codec) streamDecoder() (*zstd.Decoder, error) {
	if d, ok := c.zstream.Get().(*zstd.Decoder); ok {
		return d, nil
	}
	return zstd.NewReader(nil,
		zstd.WithDecoderMaxMemory(uint64(c.lim.MaxBodySize)),
		zstd.WithDecoderMaxWindow(uint64(c.maxWindow())),
		zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true),
	)
}

// encMode is core deterministic encoding (RFC 8949 section 4.2.1: shortest
// integers, sorted map keys, definite lengths) with Go strings as byte
// strings. Everything we sign or hash is encoded with it, and frames too, so
// one message always has one encoding.
var encMode = func() cbor.EncMode {
	o := cbor.CoreDetEncOptions()
	o.String = cbor.StringToByteString
	m, err := o.EncMode()
	if err != nil {
		panic(err) // static options; cannot fail at run time
	}
	return m
}()

// decodeErr wraps a CBOR decoding error, limit violations included, as
// ErrMalformed.
func decodeErr(what string, err error) error {
	return malformed("%s: %w", what, err)
}
