package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"reflect"

	"github.com/fxamacker/cbor/v2"
)

// ProtocolVersion is the frame protocol spoken by this build. Hello carries
// it; the ALPN name of the link says the same.
const ProtocolVersion = 1

// Type identifies a frame's message.
type Type uint8

const (
	TypeHello         Type = 1
	TypeHelloAck      Type = 2
	TypeBatch         Type = 3
	TypeAck           Type = 4
	TypeNack          Type = 5
	TypeCommand       Type = 6
	TypeCommandAck    Type = 7
	TypeCRL           Type = 8
	TypeRenewRequest  Type = 9
	TypeRenewResponse Type = 10
	TypeAnnounce      Type = 11
	TypePing          Type = 12
	TypePong          Type = 13
	TypeHealth        Type = 14
)

var typeNames = [...]string{"", "hello", "hello-ack", "batch", "ack", "nack", "command",
	"command-ack", "crl", "renew-request", "renew-response", "announce", "ping", "pong", "health", "rule-packs"}

func (t Type) String() string {
	if t != 0 && int(t) < len(typeNames) {
		return typeNames[t]
	}
	return fmt.Sprintf("type(%d)", t)
}

// Frame is one message on a link. ReadFrame returns pointers (*Hello,
// *BatchFrame, ...); WriteFrame takes values or pointers.
type Frame interface {
	Type() Type
}

// Role is the role of the node at the other end of a link.
type Role uint8

const (
	RoleAgent  Role = 1
	RoleProxy  Role = 2
	RoleCenter Role = 3
)

func (r Role) String() string {
	switch r {
	case RoleAgent:
		return "agent"
	case RoleProxy:
		return "proxy"
	case RoleCenter:
		return "center"
	}
	return fmt.Sprintf("role(%d)", r)
}

// Lane is the priority class of a batch; each lane has its own stream.
type Lane uint8

const (
	LaneTrace Lane = 1 // focused trace events: strict priority
	LaneAlert Lane = 2 // rule hits and their context
	LaneBulk  Lane = 3 // passive baseline: shed first above the disk high mark
)

func (l Lane) String() string {
	switch l {
	case LaneTrace:
		return "trace"
	case LaneAlert:
		return "alert"
	case LaneBulk:
		return "bulk"
	}
	return fmt.Sprintf("lane(%d)", l)
}

// Valid reports whether l is one of the three lanes.
func (l Lane) Valid() bool { return l >= LaneTrace && l <= LaneBulk }

// Hello opens a link, sent by the child (the connecting node).
type Hello struct {
	NodeID  string `cbor:"1,keyasint"`
	Role    Role   `cbor:"2,keyasint"`
	Version uint16 `cbor:"3,keyasint"`
	// Hops is the path of node ids above which the sender already sits,
	// nearest first. A parent that finds its own id here refuses the link
	// (HelloCycle): the tree has no cycles.
	Hops []string `cbor:"4,keyasint,omitempty"`
	// Agents are the agent ids reachable through the sender (itself, for an
	// agent), for the parent's routing table.
	Agents []string `cbor:"5,keyasint,omitempty"`
}

// HelloCode is the parent's answer to a Hello.
type HelloCode uint8

const (
	HelloOK         HelloCode = 0
	HelloBadVersion HelloCode = 1 // no common protocol version
	HelloCycle      HelloCode = 2 // the parent is in Hops
	HelloRefused    HelloCode = 3 // identity or policy refused
)

// HelloAck answers a Hello. With a non-zero Code the parent closes the link
// after sending it.
type HelloAck struct {
	NodeID  string    `cbor:"1,keyasint"`
	Version uint16    `cbor:"2,keyasint"`
	Code    HelloCode `cbor:"3,keyasint,omitempty"`
	Reason  string    `cbor:"4,keyasint,omitempty"`
}

// BatchFrame carries one sealed batch (SealBatch output) up a lane. Proxies
// forward Sealed byte for byte.
type BatchFrame struct {
	Lane   Lane   `cbor:"1,keyasint"`
	Sealed []byte `cbor:"2,keyasint"`
}

// Ack says the receiver has durably stored (agent, seq): the sender may
// delete it.
type Ack struct {
	Lane    Lane   `cbor:"1,keyasint"`
	AgentID string `cbor:"2,keyasint"`
	Seq     uint64 `cbor:"3,keyasint"`
}

// NackCode says why a batch was refused.
type NackCode uint8

const (
	NackBadSignature  NackCode = 1 // does not verify against the agent's certificate: drop it
	NackReplay        NackCode = 2 // already stored: the sender may treat it as delivered
	NackOverWatermark NackCode = 3 // receiver's disk above its mark: retry later
	NackMalformed     NackCode = 4 // cannot be decoded: drop it
	NackUnknownAgent  NackCode = 5 // no (valid) certificate for the agent: retry after renewal
)

func (c NackCode) String() string {
	switch c {
	case NackBadSignature:
		return "bad-signature"
	case NackReplay:
		return "replay"
	case NackOverWatermark:
		return "over-watermark"
	case NackMalformed:
		return "malformed"
	case NackUnknownAgent:
		return "unknown-agent"
	}
	return fmt.Sprintf("nack(%d)", c)
}

// Nack refuses (agent, seq).
type Nack struct {
	Lane    Lane     `cbor:"1,keyasint"`
	AgentID string   `cbor:"2,keyasint"`
	Seq     uint64   `cbor:"3,keyasint"`
	Code    NackCode `cbor:"4,keyasint"`
	Reason  string   `cbor:"5,keyasint,omitempty"`
}

// Command travels down the tree to one agent. Payload is opaque to proxies
// (a TraceCommand signed by the operator, checked by the agent).
type Command struct {
	CommandID string `cbor:"1,keyasint"`
	Target    string `cbor:"2,keyasint"` // agent id, routed by the proxies' tables
	// Expires is an absolute deadline in Unix nanoseconds: a relative TTL
	// would stretch with every store-and-forward hop. Zero means none.
	Expires int64  `cbor:"3,keyasint,omitempty"`
	Payload []byte `cbor:"4,keyasint"`
}

// CommandStatus is an agent's (or a proxy's) answer to a Command.
type CommandStatus uint8

const (
	CommandAccepted   CommandStatus = 1
	CommandDone       CommandStatus = 2
	CommandRejected   CommandStatus = 3 // signature or policy check failed
	CommandExpired    CommandStatus = 4 // arrived after Expires
	CommandFailed     CommandStatus = 5
	CommandUnroutable CommandStatus = 6 // a proxy has no route to the target
)

// CommandAck reports progress of a Command back up the tree.
type CommandAck struct {
	CommandID string        `cbor:"1,keyasint"`
	AgentID   string        `cbor:"2,keyasint"`
	Status    CommandStatus `cbor:"3,keyasint"`
	Detail    string        `cbor:"4,keyasint,omitempty"`
}

// CRL pushes the CA's current certificate revocation list down the tree.
type CRL struct {
	DER []byte `cbor:"1,keyasint"`
}

// RenewRequest asks the center, through the tree, for a new certificate.
type RenewRequest struct {
	NodeID string `cbor:"1,keyasint"`
	CSR    []byte `cbor:"2,keyasint"` // DER PKCS#10, signed by the new key
	// Cert is the certificate being renewed and Proof a signature over the
	// CSR by its key (pki.RenewalRequest): proxies relay renewals, so the
	// center must not take the certificate on a proxy's word.
	Cert  []byte `cbor:"3,keyasint,omitempty"`
	Proof []byte `cbor:"4,keyasint,omitempty"`
}

// RenewResponse answers a RenewRequest, routed down to NodeID. Either Cert
// is set or Error says why not.
type RenewResponse struct {
	NodeID string   `cbor:"1,keyasint"`
	Cert   []byte   `cbor:"2,keyasint,omitempty"` // DER leaf
	Chain  [][]byte `cbor:"3,keyasint,omitempty"` // DER intermediates, leaf's issuer first
	Error  string   `cbor:"4,keyasint,omitempty"`
}

// Announce updates the parent's routing table after Hello.
type Announce struct {
	Added   []string `cbor:"1,keyasint,omitempty"`
	Removed []string `cbor:"2,keyasint,omitempty"`
}

// Health is a node's report for the fleet registry, sent up the control
// lane now and then. Proxies relay their children's reports, appending
// their own id to Path, so the center learns the whole proxy path.
type Health struct {
	NodeID    string            `cbor:"1,keyasint"`
	Role      Role              `cbor:"2,keyasint"`
	Version   string            `cbor:"3,keyasint,omitempty"` // build version
	Addresses []string          `cbor:"4,keyasint,omitempty"` // the host's IP addresses (in its scope)
	Time      int64             `cbor:"5,keyasint"`           // sender's clock, Unix ns
	Lost      map[string]uint64 `cbor:"6,keyasint,omitempty"` // lost events by cause
	Figures   map[string]uint64 `cbor:"7,keyasint,omitempty"` // counters worth showing (events stored, queue bytes, ...)
	Path      []string          `cbor:"8,keyasint,omitempty"` // relaying proxies, nearest the sender first
	SiteTag   string            `cbor:"9,keyasint,omitempty"`
}

// Ping asks for a Pong with the same Nonce and Time; the sender computes RTT
// from its own clock, so the peers' clocks need not agree.
type Ping struct {
	Nonce uint64 `cbor:"1,keyasint"`
	Time  int64  `cbor:"2,keyasint"` // sender's clock, Unix nanoseconds
}

// Pong echoes a Ping.
type Pong struct {
	Nonce uint64 `cbor:"1,keyasint"`
	Time  int64  `cbor:"2,keyasint"`
}

func (Hello) Type() Type         { return TypeHello }
func (HelloAck) Type() Type      { return TypeHelloAck }
func (BatchFrame) Type() Type    { return TypeBatch }
func (Ack) Type() Type           { return TypeAck }
func (Nack) Type() Type          { return TypeNack }
func (Command) Type() Type       { return TypeCommand }
func (CommandAck) Type() Type    { return TypeCommandAck }
func (CRL) Type() Type           { return TypeCRL }
func (RenewRequest) Type() Type  { return TypeRenewRequest }
func (RenewResponse) Type() Type { return TypeRenewResponse }
func (Announce) Type() Type      { return TypeAnnounce }
func (Ping) Type() Type          { return TypePing }
func (Pong) Type() Type          { return TypePong }
func (Health) Type() Type        { return TypeHealth }

// newFrame returns a pointer to the zero message of type t.
func newFrame(t Type) Frame {
	switch t {
	case TypeHello:
		return new(Hello)
	case TypeHelloAck:
		return new(HelloAck)
	case TypeBatch:
		return new(BatchFrame)
	case TypeAck:
		return new(Ack)
	case TypeNack:
		return new(Nack)
	case TypeCommand:
		return new(Command)
	case TypeCommandAck:
		return new(CommandAck)
	case TypeCRL:
		return new(CRL)
	case TypeRenewRequest:
		return new(RenewRequest)
	case TypeRenewResponse:
		return new(RenewResponse)
	case TypeAnnounce:
		return new(Announce)
	case TypePing:
		return new(Ping)
	case TypePong:
		return new(Pong)
	case TypeHealth:
		return new(Health)
	case TypeRulePacks:
		return new(RulePacks)
	}
	return nil
}

// validate checks what the CBOR types cannot: required fields and enums
// that steer routing.
func validate(f Frame) error {
	switch m := f.(type) {
	case *Hello:
		if m.NodeID == "" {
			return malformed("hello: empty node id")
		}
	case *HelloAck:
		if m.NodeID == "" {
			return malformed("hello-ack: empty node id")
		}
	case *BatchFrame:
		if !m.Lane.Valid() {
			return malformed("batch: invalid lane %d", m.Lane)
		}
		if len(m.Sealed) == 0 {
			return malformed("batch: empty sealed batch")
		}
	case *Ack:
		if !m.Lane.Valid() {
			return malformed("ack: invalid lane %d", m.Lane)
		}
		if m.AgentID == "" {
			return malformed("ack: empty agent id")
		}
	case *Nack:
		if !m.Lane.Valid() {
			return malformed("nack: invalid lane %d", m.Lane)
		}
		if m.AgentID == "" {
			return malformed("nack: empty agent id")
		}
	case *Command:
		if m.CommandID == "" || m.Target == "" {
			return malformed("command: empty id or target")
		}
	case *CommandAck:
		if m.CommandID == "" {
			return malformed("command-ack: empty command id")
		}
	case *Health:
		if m.NodeID == "" {
			return malformed("health: empty node id")
		}
	case *CRL:
		if len(m.DER) == 0 {
			return malformed("crl: empty")
		}
	case *RenewRequest:
		if m.NodeID == "" || len(m.CSR) == 0 {
			return malformed("renew-request: empty node id or csr")
		}
	case *RenewResponse:
		if m.NodeID == "" {
			return malformed("renew-response: empty node id")
		}
	case *RulePacks:
		return m.validate()
	}
	return nil
}

// envelope is the frame body: {1: type, 2: message}. The message is a
// nested CBOR map, not a byte string, so a frame is one plain CBOR item.
type envelope struct {
	Type Type            `cbor:"1,keyasint"`
	Body cbor.RawMessage `cbor:"2,keyasint"`
}

// isNilPointer reports whether f is a typed nil pointer, on which the
// value-receiver Type method would panic.
func isNilPointer(f Frame) bool {
	v := reflect.ValueOf(f)
	return v.Kind() == reflect.Pointer && v.IsNil()
}

// headerSize is the length prefix.
const headerSize = 4

// AppendFrame appends msg as one frame (length prefix and CBOR) to dst. It
// checks only that the length fits the prefix; WriteFrame also enforces
// DefaultMaxFrameSize.
func AppendFrame(dst []byte, msg Frame) ([]byte, error) {
	if msg == nil || isNilPointer(msg) || newFrame(msg.Type()) == nil {
		return dst, fmt.Errorf("wire: encode frame: %w", ErrUnknownType)
	}
	body, err := encMode.Marshal(msg)
	if err != nil {
		return dst, fmt.Errorf("wire: encode %s: %w", msg.Type(), err)
	}
	env, err := encMode.Marshal(envelope{Type: msg.Type(), Body: body})
	if err != nil {
		return dst, fmt.Errorf("wire: encode %s: %w", msg.Type(), err)
	}
	if len(env) > maxFrameSizeCeiling {
		return dst, fmt.Errorf("wire: encode %s: %d bytes: %w", msg.Type(), len(env), ErrFrameTooLarge)
	}
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(env)))
	return append(dst, env...), nil
}

// WriteFrame writes msg as one frame in a single Write call (so concurrent
// writers on a locked stream never interleave a frame). A frame larger than
// DefaultMaxFrameSize is refused with ErrFrameTooLarge: the peer would
// refuse it anyway.
func WriteFrame(w io.Writer, msg Frame) error {
	b, err := AppendFrame(nil, msg)
	if err != nil {
		return err
	}
	if len(b)-headerSize > DefaultMaxFrameSize {
		return fmt.Errorf("wire: write %s: %d bytes: %w", msg.Type(), len(b)-headerSize, ErrFrameTooLarge)
	}
	if _, err := w.Write(b); err != nil {
		return fmt.Errorf("wire: write %s: %w", msg.Type(), err)
	}
	return nil
}

// retainBuf is the largest read buffer a Reader keeps between frames; a
// rare large frame should not pin megabytes per idle link.
const retainBuf = 256 << 10

// Reader reads frames from one stream. It is not safe for concurrent use.
type Reader struct {
	r   io.Reader
	c   *codec
	hdr [headerSize]byte
	buf []byte
}

// NewReader returns a Reader that enforces lim (zero fields: defaults).
func NewReader(r io.Reader, lim Limits) *Reader {
	c, err := codecFor(lim)
	if err != nil {
		// normalized limits are always valid DecOptions; keep a usable
		// reader rather than a nil one.
		c, _ = codecFor(Limits{})
	}
	return &Reader{r: r, c: c}
}

// ReadFrame reads and decodes the next frame. At a clean end of stream
// (between frames) it returns io.EOF. Bad input yields an error wrapping
// ErrFrameTooLarge, ErrTruncated, ErrMalformed or ErrUnknownType. After
// ErrMalformed or ErrUnknownType the whole frame has been consumed and the
// next one can be read (a newer peer may send types this build lacks);
// after ErrFrameTooLarge or ErrTruncated the stream is out of step and
// must be closed.
func (r *Reader) ReadFrame() (Frame, error) {
	if _, err := io.ReadFull(r.r, r.hdr[:]); err != nil {
		switch {
		case errors.Is(err, io.EOF):
			return nil, io.EOF
		case errors.Is(err, io.ErrUnexpectedEOF):
			return nil, fmt.Errorf("%w: inside length prefix", ErrTruncated)
		}
		return nil, fmt.Errorf("wire: read frame: %w", err)
	}
	n := binary.BigEndian.Uint32(r.hdr[:])
	if uint64(n) > uint64(r.c.lim.MaxFrameSize) {
		return nil, fmt.Errorf("%w: length prefix %d > %d", ErrFrameTooLarge, n, r.c.lim.MaxFrameSize)
	}
	if n == 0 {
		return nil, malformed("empty frame")
	}
	b, err := r.readBody(int(n))
	if err != nil {
		return nil, err
	}
	return r.c.decodeFrame(b)
}

// readBody reads n bytes, growing the buffer only as bytes arrive so that a
// peer announcing a large frame and sending little costs little.
func (r *Reader) readBody(n int) ([]byte, error) {
	const chunk = 64 << 10
	b := r.buf[:0]
	for len(b) < n {
		step := min(n-len(b), max(chunk, len(b)))
		if cap(b)-len(b) < step {
			nb := make([]byte, len(b), len(b)+step)
			copy(nb, b)
			b = nb
		}
		m, err := io.ReadFull(r.r, b[len(b):len(b)+step])
		b = b[:len(b)+m]
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return nil, fmt.Errorf("%w: got %d of %d bytes", ErrTruncated, len(b), n)
			}
			return nil, fmt.Errorf("wire: read frame: %w", err)
		}
	}
	if cap(b) <= retainBuf {
		r.buf = b
	} else {
		r.buf = nil
	}
	return b, nil
}

// DecodeFrame decodes one frame body (without its length prefix) under lim.
// Decoded messages never alias b.
func DecodeFrame(b []byte, lim Limits) (Frame, error) {
	c, err := codecFor(lim)
	if err != nil {
		return nil, err
	}
	if len(b) > c.lim.MaxFrameSize {
		return nil, fmt.Errorf("%w: %d > %d", ErrFrameTooLarge, len(b), c.lim.MaxFrameSize)
	}
	return c.decodeFrame(b)
}

func (c *codec) decodeFrame(b []byte) (Frame, error) {
	var env envelope
	// Unmarshal checks well-formedness and every limit over the whole item
	// before it decodes anything, and refuses trailing bytes.
	if err := c.strict.Unmarshal(b, &env); err != nil {
		return nil, decodeErr("frame", err)
	}
	if env.Body == nil {
		return nil, malformed("frame: no body")
	}
	f := newFrame(env.Type)
	if f == nil {
		return nil, fmt.Errorf("%w: %d", ErrUnknownType, env.Type)
	}
	if len(env.Body) == 0 || env.Body[0]>>5 != 5 { // major type 5: map
		return nil, malformed("%s: body is not a map", env.Type)
	}
	if err := c.lenient.Unmarshal(env.Body, f); err != nil {
		return nil, decodeErr(env.Type.String(), err)
	}
	if err := validate(f); err != nil {
		return nil, err
	}
	return f, nil
}
