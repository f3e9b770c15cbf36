package wire

// Trace commands: what an operator (or a rule, through the center's policy)
// asks an agent to trace, signed twice before the agent acts on it.
//
//  1. The requester signs the TraceCommand: an operator with the key of
//     their operator certificate (`daemoneye trace start`), or the center
//     with its own key when a rule started the trace (InitiatedBy "rule:ID").
//  2. The center checks RBAC and approvals, records the start in its ledger
//     and stamps the signed command with a TraceApproval signed by its node
//     key: who approved (the second person under the two-person rule), under
//     which policy, and until when the stamp is good.
//
// The agent verifies both signatures against the customer CA (and its CRL),
// that the signer is the operator the command names, that the stamp covers
// this exact command and has not expired, and that the trace_id is new. The
// bytes travel as the Payload of a Command; proxies never look inside.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Why a trace command was refused. VerifyTrace wraps one of these with the
// detail; the agent reports the text in its CommandAck.
var (
	ErrTraceMalformed = errors.New("malformed trace command")
	ErrTraceSigner    = errors.New("unknown or unauthorised signer")
	ErrTraceSignature = errors.New("bad signature")
	ErrTraceApproval  = errors.New("missing or bad approval stamp")
	ErrTraceExpired   = errors.New("expired")
	ErrTraceReplay    = errors.New("trace_id already used") // returned by the agent's own check
)

// TraceAction is what a TraceCommand asks for.
type TraceAction uint8

const (
	TraceStart TraceAction = 1
	TraceStop  TraceAction = 2
)

func (a TraceAction) String() string {
	switch a {
	case TraceStart:
		return "start"
	case TraceStop:
		return "stop"
	}
	return fmt.Sprintf("action(%d)", uint8(a))
}

// MaxTraceDepth bounds TraceCommand.Depth (generations below the root).
const MaxTraceDepth = 64

// maxTraceEnvelope bounds an encoded SignedTrace: a command, two
// certificates and two signatures fit in a few KiB.
const maxTraceEnvelope = 64 << 10

// TraceCommand is the concept's TraceCommand (section 5), with the root's
// start time so a reused pid is never traced by mistake.
type TraceCommand struct {
	TraceID     string      `cbor:"1,keyasint"`
	Action      TraceAction `cbor:"2,keyasint"`
	TargetAgent string      `cbor:"3,keyasint"`
	TargetPID   uint32      `cbor:"4,keyasint,omitempty"`
	// TargetStart is the root's start time in clock ticks since boot
	// (/proc/PID/stat field 22): with the pid, the process's identity.
	TargetStart     uint64 `cbor:"5,keyasint,omitempty"`
	Depth           uint32 `cbor:"6,keyasint,omitempty"`
	CollectCmdlines bool   `cbor:"7,keyasint,omitempty"`
	CollectNetwork  bool   `cbor:"8,keyasint,omitempty"`
	CollectFiles    bool   `cbor:"9,keyasint,omitempty"`
	CollectMemory   bool   `cbor:"10,keyasint,omitempty"`
	MaxDurationSecs uint32 `cbor:"11,keyasint,omitempty"`
	MaxBytes        uint64 `cbor:"12,keyasint,omitempty"`
	MaxEventsPerSec uint32 `cbor:"13,keyasint,omitempty"`
	InitiatedBy     string `cbor:"14,keyasint"` // operator id, or "rule:ID"
	Timestamp       int64  `cbor:"15,keyasint"` // Unix ns when signed
	Reason          string `cbor:"16,keyasint,omitempty"`
	// FollowOf names the link (center's links.id) that brought an existing
	// trace to this host: a fan-out of the same trace_id.
	FollowOf uint64 `cbor:"17,keyasint,omitempty"`
}

// TraceApproval is the center's stamp on a signed command.
type TraceApproval struct {
	CommandSHA256 []byte `cbor:"1,keyasint"` // of SignedTrace.Command
	// Policy says why the command may run: "analyst" (the analyst's own
	// request sufficed), "two-person" (ApprovedBy approved it) or "rule"
	// (a rule's action, started by policy).
	Policy     string `cbor:"2,keyasint"`
	ApprovedBy string `cbor:"3,keyasint,omitempty"`
	Time       int64  `cbor:"4,keyasint"`
	Expires    int64  `cbor:"5,keyasint"` // Unix ns; the agent refuses the command after it
}

// SignedTrace is the command as it travels: the command's bytes signed by
// its requester, then the center's stamp.
type SignedTrace struct {
	Command    []byte `cbor:"1,keyasint"`
	SignerCert []byte `cbor:"2,keyasint"` // DER
	Signature  []byte `cbor:"3,keyasint"`
	Approval   []byte `cbor:"4,keyasint,omitempty"`
	CenterCert []byte `cbor:"5,keyasint,omitempty"` // DER
	CenterSig  []byte `cbor:"6,keyasint,omitempty"`
}

// Signature contexts: a signature over a command can never be taken for
// one over an approval, a batch or a checkpoint.
const (
	traceCommandContext  = "daemoneye/trace-command/v1\x00"
	traceApprovalContext = "daemoneye/trace-approval/v1\x00"
)

func signed(context string, msg []byte) []byte {
	return append([]byte(context), msg...)
}

// Validate checks the fields a command must have.
func (c *TraceCommand) Validate() error {
	if err := validTraceID(c.TraceID); err != nil {
		return err
	}
	if c.TargetAgent == "" {
		return fmt.Errorf("%w: no target agent", ErrTraceMalformed)
	}
	if c.InitiatedBy == "" {
		return fmt.Errorf("%w: initiated_by is empty", ErrTraceMalformed)
	}
	if c.Timestamp <= 0 {
		return fmt.Errorf("%w: no timestamp", ErrTraceMalformed)
	}
	switch c.Action {
	case TraceStart:
		if c.TargetPID == 0 {
			return fmt.Errorf("%w: no target pid", ErrTraceMalformed)
		}
		if c.Depth > MaxTraceDepth {
			return fmt.Errorf("%w: depth %d above %d", ErrTraceMalformed, c.Depth, MaxTraceDepth)
		}
	case TraceStop:
	default:
		return fmt.Errorf("%w: unknown action %d", ErrTraceMalformed, c.Action)
	}
	return nil
}

// validTraceID: 1 to 64 of [A-Za-z0-9._:-], so ids are safe in paths, logs
// and SQL text alike.
func validTraceID(id string) error {
	if id == "" || len(id) > 64 {
		return fmt.Errorf("%w: trace_id must be 1 to 64 characters", ErrTraceMalformed)
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("._:-", r)) {
			return fmt.Errorf("%w: trace_id %q has %q", ErrTraceMalformed, id, r)
		}
	}
	return nil
}

// SignTrace encodes and signs cmd with the requester's key; certDER is the
// certificate of that key.
func SignTrace(cmd TraceCommand, key ed25519.PrivateKey, certDER []byte) (*SignedTrace, error) {
	if err := cmd.Validate(); err != nil {
		return nil, err
	}
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("sign trace: not an Ed25519 private key")
	}
	if err := keyMatches(key, certDER); err != nil {
		return nil, fmt.Errorf("sign trace: %w", err)
	}
	b, err := encMode.Marshal(&cmd)
	if err != nil {
		return nil, err
	}
	return &SignedTrace{Command: b, SignerCert: bytes.Clone(certDER), Signature: ed25519.Sign(key, signed(traceCommandContext, b))}, nil
}

// Approve stamps s with the center's approval: key and certDER are the
// center's node identity.
func (s *SignedTrace) Approve(a TraceApproval, key ed25519.PrivateKey, certDER []byte) error {
	if a.Policy == "" || a.Time == 0 || a.Expires <= a.Time {
		return fmt.Errorf("approve trace: policy, time and a later expiry are required")
	}
	if err := keyMatches(key, certDER); err != nil {
		return fmt.Errorf("approve trace: %w", err)
	}
	sum := sha256.Sum256(s.Command)
	a.CommandSHA256 = sum[:]
	b, err := encMode.Marshal(&a)
	if err != nil {
		return err
	}
	s.Approval, s.CenterCert, s.CenterSig = b, bytes.Clone(certDER), ed25519.Sign(key, signed(traceApprovalContext, b))
	return nil
}

func keyMatches(key ed25519.PrivateKey, certDER []byte) error {
	cert, err := x509.ParseCertificate(certDER)
	if err != nil {
		return fmt.Errorf("certificate: %w", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok || !pub.Equal(key.Public()) {
		return errors.New("the key is not the certificate's")
	}
	return nil
}

// Encode returns the canonical CBOR of s.
func (s *SignedTrace) Encode() ([]byte, error) { return encMode.Marshal(s) }

// DecodeSignedTrace parses an envelope and the command inside it, without
// checking any signature (VerifyTrace does).
func DecodeSignedTrace(b []byte) (*SignedTrace, TraceCommand, error) {
	var (
		s   SignedTrace
		cmd TraceCommand
	)
	if len(b) > maxTraceEnvelope {
		return nil, cmd, fmt.Errorf("%w: %d bytes, limit %d", ErrTraceMalformed, len(b), maxTraceEnvelope)
	}
	c, err := codecFor(Limits{})
	if err != nil {
		return nil, cmd, err
	}
	if err := c.strict.Unmarshal(b, &s); err != nil {
		return nil, cmd, fmt.Errorf("%w: %w", ErrTraceMalformed, err)
	}
	if len(s.Command) == 0 || len(s.SignerCert) == 0 || len(s.Signature) != ed25519.SignatureSize {
		return nil, cmd, fmt.Errorf("%w: command, signer certificate and signature are required", ErrTraceMalformed)
	}
	if err := c.strict.Unmarshal(s.Command, &cmd); err != nil {
		return nil, cmd, fmt.Errorf("%w: command: %w", ErrTraceMalformed, err)
	}
	// Signatures cover the command's bytes; a non-canonical encoding would
	// let two byte strings mean one command, so only the canonical one is
	// accepted.
	if canon, err := encMode.Marshal(&cmd); err != nil || !bytes.Equal(canon, s.Command) {
		return nil, cmd, fmt.Errorf("%w: command is not canonical CBOR", ErrTraceMalformed)
	}
	if err := cmd.Validate(); err != nil {
		return nil, cmd, err
	}
	return &s, cmd, nil
}

// CertChecker verifies a certificate against the customer CA and its CRL
// (a *pki.Verifier).
type CertChecker interface {
	VerifyCertificate(leaf *x509.Certificate, allowed ...pki.Role) error
}

// TraceCheck is how strict VerifyTrace is.
type TraceCheck struct {
	Now time.Time
	// MaxAge is how old a command's timestamp may be (an approval may
	// take a while under the two-person rule); zero means 24 h.
	MaxAge time.Duration
	// Skew is the clock difference tolerated for timestamps from the
	// future; zero means 2 min.
	Skew time.Duration
	// RequireApproval refuses a command without a valid center stamp
	// (agents always set it; the center checks an operator's request
	// before stamping it).
	RequireApproval bool
	// CenterSignedForOperator accepts a start the center signed on behalf
	// of an operator (a local account without an operator key). Off by
	// default: the operator's own signature is what proves who asked.
	CenterSignedForOperator bool
}

// Verified is a command that passed VerifyTrace.
type Verified struct {
	Command    TraceCommand
	Approval   TraceApproval // zero without a stamp
	Signer     string        // the signer certificate's name
	SignerRole pki.Role
	Center     string // the stamping center's name, "" without a stamp
}

// VerifyTrace decodes b and checks the requester's signature and, when
// present or required, the center's stamp.
func VerifyTrace(b []byte, v CertChecker, chk TraceCheck) (Verified, error) {
	var out Verified
	s, cmd, err := DecodeSignedTrace(b)
	if err != nil {
		return out, err
	}
	out.Command = cmd
	if chk.Now.IsZero() {
		chk.Now = time.Now()
	}
	if chk.MaxAge <= 0 {
		chk.MaxAge = 24 * time.Hour
	}
	if chk.Skew <= 0 {
		chk.Skew = 2 * time.Minute
	}
	ts := time.Unix(0, cmd.Timestamp)
	if age := chk.Now.Sub(ts); age > chk.MaxAge {
		return out, fmt.Errorf("%w: command signed %s ago, limit %s", ErrTraceExpired, age.Round(time.Second), chk.MaxAge)
	}
	if ts.Sub(chk.Now) > chk.Skew {
		return out, fmt.Errorf("%w: command timestamp %s is in the future", ErrTraceMalformed, ts.UTC().Format(time.RFC3339))
	}

	signer, err := x509.ParseCertificate(s.SignerCert)
	if err != nil {
		return out, fmt.Errorf("%w: signer certificate: %w", ErrTraceSigner, err)
	}
	if err := v.VerifyCertificate(signer, pki.RoleOperator, pki.RoleCenter); err != nil {
		return out, fmt.Errorf("%w: %w", ErrTraceSigner, err)
	}
	role, name, err := pki.Identity(signer)
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrTraceSigner, err)
	}
	out.Signer, out.SignerRole = name, role
	switch {
	case role == pki.RoleOperator && name == cmd.InitiatedBy:
	case role == pki.RoleOperator:
		return out, fmt.Errorf("%w: signed by operator %q but initiated_by says %q", ErrTraceSigner, name, cmd.InitiatedBy)
	case role == pki.RoleCenter && (strings.HasPrefix(cmd.InitiatedBy, "rule:") || cmd.Action == TraceStop || cmd.FollowOf != 0):
		// A center signs what policy started: a rule's trace, a stop
		// (caps and operators' stops alike), a fan-out of a trace that
		// was itself signed and approved.
	case role == pki.RoleCenter && chk.CenterSignedForOperator:
	default:
		return out, fmt.Errorf("%w: the center signed a %s for operator %q, and this agent requires the operator's own signature",
			ErrTraceSigner, cmd.Action, cmd.InitiatedBy)
	}
	if !ed25519.Verify(signer.PublicKey.(ed25519.PublicKey), signed(traceCommandContext, s.Command), s.Signature) {
		return out, fmt.Errorf("%w: the command's signature does not verify with %s's certificate", ErrTraceSignature, name)
	}

	if len(s.Approval) == 0 {
		if chk.RequireApproval {
			return out, fmt.Errorf("%w: the command has no center approval stamp", ErrTraceApproval)
		}
		return out, nil
	}
	center, err := x509.ParseCertificate(s.CenterCert)
	if err != nil {
		return out, fmt.Errorf("%w: center certificate: %w", ErrTraceApproval, err)
	}
	if err := v.VerifyCertificate(center, pki.RoleCenter); err != nil {
		return out, fmt.Errorf("%w: %w", ErrTraceApproval, err)
	}
	_, out.Center, _ = pki.Identity(center)
	if !ed25519.Verify(center.PublicKey.(ed25519.PublicKey), signed(traceApprovalContext, s.Approval), s.CenterSig) {
		return out, fmt.Errorf("%w: the stamp's signature does not verify with center %s's certificate", ErrTraceApproval, out.Center)
	}
	c, err := codecFor(Limits{})
	if err != nil {
		return out, err
	}
	var a TraceApproval
	if err := c.strict.Unmarshal(s.Approval, &a); err != nil {
		return out, fmt.Errorf("%w: %w", ErrTraceApproval, err)
	}
	sum := sha256.Sum256(s.Command)
	if !bytes.Equal(a.CommandSHA256, sum[:]) {
		return out, fmt.Errorf("%w: the stamp is for another command", ErrTraceApproval)
	}
	if exp := time.Unix(0, a.Expires); chk.Now.After(exp) {
		return out, fmt.Errorf("%w: the center's approval expired at %s", ErrTraceExpired, exp.UTC().Format(time.RFC3339))
	}
	out.Approval = a
	return out, nil
}
