package wire

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned for bad input wraps exactly one of
// these so callers can branch with errors.Is.
var (
	// ErrTooLarge: input exceeds a configured size limit (frame, sealed batch,
	// decompressed body, event count).
	ErrTooLarge = errors.New("wire: too large")
	// ErrFrameTooLarge: a frame's length prefix exceeds MaxFrameSize. It also
	// matches ErrTooLarge.
	ErrFrameTooLarge error = &narrower{"wire: frame too large", ErrTooLarge}
	// ErrTruncated: the stream ended inside a frame.
	ErrTruncated = errors.New("wire: truncated frame")
	// ErrMalformed: the bytes are not a valid message (bad CBOR, a limit on
	// depth or length, duplicate keys, trailing data, missing fields, a Merkle
	// root that does not match the events).
	ErrMalformed = errors.New("wire: malformed")
	// ErrUnknownType: a well-formed frame of a type this version does not know.
	ErrUnknownType = errors.New("wire: unknown message type")
	// ErrBadSignature: the batch signature does not verify with the given key.
	ErrBadSignature = errors.New("wire: bad signature")
	// ErrBadProof: an event inclusion proof does not verify.
	ErrBadProof = errors.New("wire: bad inclusion proof")
)

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, args...)...)
}

// narrower is a sentinel that also matches a broader one.
type narrower struct {
	msg   string
	broad error
}

func (e *narrower) Error() string { return e.msg }
func (e *narrower) Unwrap() error { return e.broad }
