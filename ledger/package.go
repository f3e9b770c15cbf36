package ledger

// Forensic packages: one file that proves what a focused trace recorded,
// to someone who holds nothing but the customer CA certificate.
//
// # Shape
//
// The file is canonical CBOR (RFC 8949 core deterministic encoding) of
//
//	{1: format "daemoneye-forensic-package/v1",
//	 2: envelope  (bytes: a DSSE envelope, its standard JSON form),
//	 3: certs     [DER, ...]  the center's certificate, leaf first,
//	 4: members   [{1: name, 2: data}, ...]  sorted by name}
//
// CBOR rather than a tar or zip archive: members are binary (sealed
// batches) and would need base64 in JSON; one decoder with explicit limits
// (size, depth, array length, no duplicate keys, no tags) reads all of it,
// the same library the wire format uses; and a canonical encoding means a
// package has exactly one byte form, so a reordered or re-encoded file is
// refused instead of quietly meaning the same thing. The DSSE envelope is
// kept in its standard JSON form inside, so it can be lifted out and checked
// by any DSSE/in-toto tool given the center's certificate key.
//
// The envelope's payload type is application/vnd.in-toto+json and its
// payload an in-toto Statement v1: one subject per member (name and
// SHA-256), predicate type PredicateType, and a predicate that says what the
// package claims (trace id, center, export time, per host the number of
// events, the trace_seq range and any numbers the center never received,
// the ledger checkpoint, its verifier key). The center signs the DSSE
// pre-authentication encoding with the Ed25519 key of its certificate.
//
// Members:
//
//	trace.json            the trace's metadata as the center holds it (JSON)
//	command.cbor          the signed TraceCommand (wire.SignedTrace), if any
//	events.cbor           every event of the trace: host, batch seq, index,
//	                      trace_seq, the event's canonical CBOR and its Merkle
//	                      proof in the batch's root; ordered by host, trace_seq
//	batches/HOST/SEQ      each sealed batch (COSE_Sign1 by the agent) holding
//	                      an event of the trace, whole, so the agent's
//	                      signature verifies
//	ledger/checkpoint     a signed checkpoint of the center's audit ledger
//	ledger/verifier.vkey  the note verifier key of that checkpoint
//	ledger/entries.cbor   the ledger entries about the trace (operator
//	                      actions: request, approval, stop, export...; and
//	                      the trace.event leaf the center wrote for each
//	                      event it received), each with its payload and
//	                      inclusion proof
//
// # Why the checkpoint key is the center's
//
// The ledger signs checkpoints with a note key of its own, not with the
// certificate key. The binding is the signature: the statement, signed by
// the center's certificate key, names the verifier key, and the key's name
// (the log's origin) must be "daemoneye.center/" + the certificate's name.
//
// # What verification proves, and what it cannot
//
// [VerifyPackage] proves: the center named by a certificate from the CA
// signed the statement; every member is the one it signed; every batch was
// signed by an agent certificate from the CA, valid when its events were
// recorded, naming the agent the batch claims; every listed event is in its
// batch (Merkle proof) and carries the trace id and the trace_seq listed;
// per host the trace_seq numbers run 1..N with no duplicates and no gap the
// center did not declare, and no event of the trace in an included batch is
// left unlisted; every ledger entry is in the signed checkpoint's tree and
// its payload is the one committed; each trace.event entry of the trace
// matches a listed event (place, trace_seq, digest); the export itself is
// one of the entries; the
// signed TraceCommand's signatures. Certificates are judged at the time
// they were used (the batch's events, the statement's export time, the
// command's timestamp), because node certificates live a day and a package
// is read months later; without a CRL, revocation is not checked.
//
// It cannot prove that the center exported every batch it had: a center
// that drops a host's last batches shows as a shorter trace, and one that
// drops batches in the middle must declare the gap. Batches are whole, so a
// package also discloses the host's other events sealed in the same batches.

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
	"golang.org/x/mod/sumdb/note"
	"golang.org/x/mod/sumdb/tlog"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/dsse"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Package format constants.
const (
	PackageFormat     = "daemoneye-forensic-package/v1"
	PayloadTypeInToto = "application/vnd.in-toto+json"
	StatementType     = "https://in-toto.io/Statement/v1"
	PredicateType     = "https://evilbitlabs.io/daemoneye/forensic-package/v1"
	// PackageMediaType is what the API serves a package as.
	PackageMediaType = "application/vnd.daemoneye.forensic-package+cbor"

	// MaxPackageSize bounds what VerifyPackage reads. A package is built
	// and checked in memory.
	MaxPackageSize = 1 << 30
)

// Member names.
const (
	MemberTrace       = "trace.json"
	MemberCommand     = "command.cbor"
	MemberEvents      = "events.cbor"
	MemberCheckpoint  = "ledger/checkpoint"
	MemberVerifierKey = "ledger/verifier.vkey"
	MemberEntries     = "ledger/entries.cbor"
	batchPrefix       = "batches/"
)

// BatchMember is the member name of a sealed batch.
func BatchMember(host string, seq uint64) string {
	return batchPrefix + host + "/" + strconv.FormatUint(seq, 10)
}

// Why a package failed. A *PackageError wraps one of these and ErrTampered.
var (
	ErrPackageMalformed = errors.New("malformed package")
	ErrPackageSignature = errors.New("package signature does not verify")
	ErrPackageSigner    = errors.New("package signer not trusted")
	ErrPackageDigest    = errors.New("member does not match the signed statement")
	ErrBatchSignature   = errors.New("batch signature not trusted")
	ErrEventProof       = errors.New("event not proven by its batch")
	ErrEventSequence    = errors.New("trace events out of sequence")
	ErrLedgerProof      = errors.New("ledger proof does not verify")
	ErrNoExportRecord   = errors.New("export not recorded in the ledger")
	ErrTraceCommand     = errors.New("trace command does not verify")
	ErrPackageClaim     = errors.New("statement claims what the package does not prove")
)

// PackageError names the first thing that failed: What is the part
// ("event web-1/seq 12/idx 3", "member trace.json", "signature"), Reason
// one of the sentinels above.
type PackageError struct {
	What   string
	Reason error
	Detail string
}

func (e *PackageError) Error() string {
	if e.What == "" {
		return e.Detail
	}
	return e.What + ": " + e.Detail
}

// Unwrap matches the reason and ErrTampered.
func (e *PackageError) Unwrap() []error { return []error{e.Reason, ErrTampered} }

func pkgErr(reason error, what, format string, args ...any) error {
	return &PackageError{What: what, Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// pkgFile is the container.
type pkgFile struct {
	Format   string      `cbor:"1,keyasint"`
	Envelope []byte      `cbor:"2,keyasint"`
	Certs    [][]byte    `cbor:"3,keyasint"`
	Members  []pkgMember `cbor:"4,keyasint"`
}

type pkgMember struct {
	Name string `cbor:"1,keyasint"`
	Data []byte `cbor:"2,keyasint"`
}

// The DSSE envelope in its JSON form (internal/dsse).
type (
	dsseEnvelope  = dsse.Envelope
	dsseSignature = dsse.Signature
)

// pae is DSSE's pre-authentication encoding, what is signed.
func pae(payloadType string, payload []byte) []byte { return dsse.PAE(payloadType, payload) }

// statement is an in-toto Statement v1.
type statement struct {
	Type          string    `json:"_type"`
	Subject       []subject `json:"subject"`
	PredicateType string    `json:"predicateType"`
	Predicate     predicate `json:"predicate"`
}

type subject struct {
	Name   string            `json:"name"`
	Digest map[string]string `json:"digest"`
}

// predicate is what the center claims the package holds.
type predicate struct {
	TraceID    string      `json:"traceId"`
	Center     string      `json:"center"`
	ExportedAt time.Time   `json:"exportedAt"`
	Hosts      []hostClaim `json:"hosts"`
	Events     int         `json:"events"`
	Batches    int         `json:"batches"`
	Command    bool        `json:"command"`
	Ledger     ledgerClaim `json:"ledger"`
}

type hostClaim struct {
	Host          string     `json:"host"`
	Events        int        `json:"events"`
	Batches       int        `json:"batches"`
	FirstTraceSeq uint64     `json:"firstTraceSeq"`
	LastTraceSeq  uint64     `json:"lastTraceSeq"`
	Missing       []SeqRange `json:"missing,omitempty"`
}

// SeqRange is a run of trace_seq numbers, First..Last inclusive.
type SeqRange struct {
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
}

func (r SeqRange) String() string {
	if r.First == r.Last {
		return strconv.FormatUint(r.First, 10)
	}
	return fmt.Sprintf("%d-%d", r.First, r.Last)
}

type ledgerClaim struct {
	Origin      string `json:"origin"`
	Size        int64  `json:"size"`
	Root        string `json:"root"` // base64, as in the checkpoint
	VerifierKey string `json:"verifierKey"`
	Entries     int    `json:"entries"`
}

// pkgEvent locates and proves one event of the trace.
type pkgEvent struct {
	Host     string   `cbor:"1,keyasint"`
	BatchSeq uint64   `cbor:"2,keyasint"`
	Idx      int      `cbor:"3,keyasint"`
	TraceSeq uint64   `cbor:"4,keyasint"`
	Event    []byte   `cbor:"5,keyasint"` // canonical CBOR, the Merkle leaf data
	Proof    [][]byte `cbor:"6,keyasint"` // hashes, wire.Batch.EventProof
}

func (e pkgEvent) what() string {
	return fmt.Sprintf("event %s/seq %d/idx %d", e.Host, e.BatchSeq, e.Idx)
}

// pkgEntry is one ledger entry with its inclusion proof.
type pkgEntry struct {
	Leaf    []byte   `cbor:"1,keyasint"`
	Payload []byte   `cbor:"2,keyasint,omitempty"`
	Purged  bool     `cbor:"3,keyasint,omitempty"`
	Proof   [][]byte `cbor:"4,keyasint"`
}

var (
	pkgEnc cbor.EncMode
	pkgDec cbor.DecMode
)

func init() {
	var err error
	if pkgEnc, err = cbor.CoreDetEncOptions().EncMode(); err != nil {
		panic(err)
	}
	pkgDec, err = cbor.DecOptions{
		DupMapKey:         cbor.DupMapKeyEnforcedAPF,
		IndefLength:       cbor.IndefLengthForbidden,
		TagsMd:            cbor.TagsForbidden,
		MaxNestedLevels:   8,
		MaxArrayElements:  1 << 24,
		MaxMapPairs:       16,
		ExtraReturnErrors: cbor.ExtraDecErrorUnknownField,
	}.DecMode()
	if err != nil {
		panic(err)
	}
}

// PackageEntry is a ledger record with its proof in the package's checkpoint.
type PackageEntry struct {
	Record Record
	Proof  tlog.RecordProof
}

// PackageInput is what a center puts in a package.
type PackageInput struct {
	TraceID string
	// Metadata is the trace as the center holds it: a JSON object whose
	// "trace_id" is TraceID.
	Metadata []byte
	// Command is the signed TraceCommand (wire.SignedTrace), or nil.
	Command []byte
	// Batches are the sealed batches holding the trace's events.
	Batches [][]byte
	// Checkpoint is a signed checkpoint and VerifierKey its note verifier
	// key; Entries are the ledger records about the trace, with proofs in
	// that checkpoint's tree. One of them must record this export.
	Checkpoint  []byte
	VerifierKey string
	Entries     []PackageEntry
	ExportedAt  time.Time
}

// PackageSigner is the center's identity: its certificate chain (DER,
// leaf first) and the Ed25519 key of the leaf.
type PackageSigner struct {
	Key   ed25519.PrivateKey
	Chain [][]byte
}

// ProveEntries signs a checkpoint of l's current tree and returns it with
// the records at indexes and their inclusion proofs in that tree. It is a
// function over the ledger's read methods rather than a method, so that
// the Ledger's own method set stays the audited one.
func ProveEntries(l *Ledger, indexes []int64) ([]byte, []PackageEntry, error) {
	signed, err := l.Checkpoint()
	if err != nil {
		return nil, nil, err
	}
	cp, err := parseUnverified(signed)
	if err != nil {
		return nil, nil, fmt.Errorf("ledger: prove entries: %w", err)
	}
	out := make([]PackageEntry, 0, len(indexes))
	for _, i := range indexes {
		if i >= cp.Size {
			return nil, nil, fmt.Errorf("ledger: prove entries: entry %d is beyond the checkpoint (size %d)", i, cp.Size)
		}
		rec, err := l.Entry(i)
		if err != nil {
			return nil, nil, err
		}
		p, err := l.InclusionProof(i, cp.Size)
		if err != nil {
			return nil, nil, err
		}
		out = append(out, PackageEntry{Record: rec, Proof: p})
	}
	return signed, out, nil
}

// BuildPackage assembles and signs a package. It takes every event of the
// trace from the batches (opened with the certificate each carries: the
// center verified them against the CA when it stored them) and declares any
// trace_seq the batches lack. It does not check the result against a CA;
// VerifyPackage does.
func BuildPackage(in PackageInput, s PackageSigner) ([]byte, error) {
	if len(s.Chain) == 0 || len(s.Key) != ed25519.PrivateKeySize {
		return nil, errors.New("ledger: build package: no signing key or certificate")
	}
	leaf, err := x509.ParseCertificate(s.Chain[0])
	if err != nil {
		return nil, fmt.Errorf("ledger: build package: certificate: %w", err)
	}
	if pub, ok := leaf.PublicKey.(ed25519.PublicKey); !ok || !pub.Equal(s.Key.Public()) {
		return nil, errors.New("ledger: build package: the key is not the certificate's")
	}
	_, centerName, err := pki.Identity(leaf)
	if err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}
	if err := checkMetadata(in.Metadata, in.TraceID); err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}
	cp, err := parseUnverified(in.Checkpoint)
	if err != nil {
		return nil, fmt.Errorf("ledger: build package: checkpoint: %w", err)
	}

	members := map[string][]byte{MemberTrace: in.Metadata, MemberCheckpoint: in.Checkpoint,
		MemberVerifierKey: []byte(in.VerifierKey + "\n")}
	if in.Command != nil {
		members[MemberCommand] = in.Command
	}

	var events []pkgEvent
	perHost := map[string]*hostClaim{}
	for k, sealed := range in.Batches {
		der, err := wire.PeekCert(sealed)
		if err != nil {
			return nil, fmt.Errorf("ledger: build package: batch %d: %w", k, err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("ledger: build package: batch %d: certificate: %w", k, err)
		}
		pub, ok := cert.PublicKey.(ed25519.PublicKey)
		if !ok {
			return nil, fmt.Errorf("ledger: build package: batch %d: certificate key is not Ed25519", k)
		}
		b, err := wire.OpenBatch(sealed, pub, wire.Limits{})
		if err != nil {
			return nil, fmt.Errorf("ledger: build package: batch %d: %w", k, err)
		}
		name := BatchMember(b.AgentID, b.Seq)
		if _, dup := members[name]; dup {
			return nil, fmt.Errorf("ledger: build package: batch %s/%d given twice", b.AgentID, b.Seq)
		}
		members[name] = sealed
		n := 0
		for i := range b.Events {
			if b.Events[i].TraceID != in.TraceID {
				continue
			}
			proof, err := b.EventProof(i)
			if err != nil {
				return nil, fmt.Errorf("ledger: build package: %w", err)
			}
			ev := pkgEvent{Host: b.AgentID, BatchSeq: b.Seq, Idx: i, TraceSeq: b.Events[i].TraceSeq,
				Event: bytes.Clone(b.EventCBOR(i))}
			for _, h := range proof {
				ev.Proof = append(ev.Proof, bytes.Clone(h[:]))
			}
			events = append(events, ev)
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("ledger: build package: batch %s/%d holds no event of trace %s", b.AgentID, b.Seq, in.TraceID)
		}
		hc := perHost[b.AgentID]
		if hc == nil {
			hc = &hostClaim{Host: b.AgentID}
			perHost[b.AgentID] = hc
		}
		hc.Batches++
	}
	slices.SortFunc(events, func(a, b pkgEvent) int {
		if c := strings.Compare(a.Host, b.Host); c != 0 {
			return c
		}
		return cmpUint(a.TraceSeq, b.TraceSeq)
	})
	for _, ev := range events {
		hc := perHost[ev.Host]
		if hc.Events > 0 && ev.TraceSeq == hc.LastTraceSeq {
			return nil, fmt.Errorf("ledger: build package: %s: trace_seq %d appears twice", ev.what(), ev.TraceSeq)
		}
		if hc.Events == 0 {
			hc.FirstTraceSeq = ev.TraceSeq
		}
		hc.Events++
		hc.LastTraceSeq = ev.TraceSeq
	}
	hosts := make([]hostClaim, 0, len(perHost))
	for _, hc := range perHost {
		hc.Missing = missingSeqs(events, hc.Host)
		hosts = append(hosts, *hc)
	}
	slices.SortFunc(hosts, func(a, b hostClaim) int { return strings.Compare(a.Host, b.Host) })
	if members[MemberEvents], err = pkgEnc.Marshal(events); err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}

	entries := make([]pkgEntry, len(in.Entries))
	for k, e := range in.Entries {
		entries[k] = pkgEntry{Leaf: e.Record.Leaf, Payload: e.Record.Payload, Purged: e.Record.Purged}
		for _, h := range e.Proof {
			entries[k].Proof = append(entries[k].Proof, bytes.Clone(h[:]))
		}
	}
	slices.SortFunc(entries, func(a, b pkgEntry) int { return cmpInt(leafIndex(a.Leaf), leafIndex(b.Leaf)) })
	if members[MemberEntries], err = pkgEnc.Marshal(entries); err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}

	pred := predicate{
		TraceID: in.TraceID, Center: centerName, ExportedAt: in.ExportedAt.UTC(),
		Hosts: hosts, Events: len(events), Batches: len(in.Batches), Command: in.Command != nil,
		Ledger: ledgerClaim{Origin: cp.Origin, Size: cp.Size, Root: base64.StdEncoding.EncodeToString(cp.Root[:]),
			VerifierKey: in.VerifierKey, Entries: len(entries)},
	}
	names := make([]string, 0, len(members))
	for name := range members {
		names = append(names, name)
	}
	slices.Sort(names)
	st := statement{Type: StatementType, PredicateType: PredicateType, Predicate: pred}
	f := pkgFile{Format: PackageFormat, Certs: s.Chain}
	for _, name := range names {
		sum := sha256.Sum256(members[name])
		st.Subject = append(st.Subject, subject{Name: name, Digest: map[string]string{"sha256": hex.EncodeToString(sum[:])}})
		f.Members = append(f.Members, pkgMember{Name: name, Data: members[name]})
	}
	payload, err := json.Marshal(st)
	if err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}
	certSum := sha256.Sum256(s.Chain[0])
	env := dsseEnvelope{PayloadType: PayloadTypeInToto, Payload: payload, Signatures: []dsseSignature{{
		KeyID: hex.EncodeToString(certSum[:]), Sig: ed25519.Sign(s.Key, pae(PayloadTypeInToto, payload))}}}
	if f.Envelope, err = json.Marshal(env); err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}
	out, err := pkgEnc.Marshal(&f)
	if err != nil {
		return nil, fmt.Errorf("ledger: build package: %w", err)
	}
	if len(out) > MaxPackageSize {
		return nil, fmt.Errorf("ledger: build package: %d bytes is over the %d-byte limit", len(out), MaxPackageSize)
	}
	return out, nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func cmpInt(a, b int64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// leafIndex is the index a leaf names, -1 when it does not decode.
func leafIndex(leaf []byte) int64 {
	h, err := decodeHeader(leaf)
	if err != nil {
		return -1
	}
	return h.Index
}

// missingSeqs lists the trace_seq numbers of host below its highest that no
// event carries. events are sorted by host, then trace_seq.
func missingSeqs(events []pkgEvent, host string) []SeqRange {
	var out []SeqRange
	next := uint64(1)
	for _, ev := range events {
		if ev.Host != host {
			continue
		}
		if ev.TraceSeq > next {
			out = append(out, SeqRange{First: next, Last: ev.TraceSeq - 1})
		}
		next = ev.TraceSeq + 1
	}
	return out
}

// checkMetadata insists on a JSON object naming the trace.
func checkMetadata(b []byte, traceID string) error {
	var m struct {
		TraceID string `json:"trace_id"`
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("trace metadata is not a JSON object: %v", err)
	}
	if m.TraceID != traceID {
		return fmt.Errorf("trace metadata is about trace %q, not %q", m.TraceID, traceID)
	}
	return nil
}

// PackageReport is what VerifyPackage proved.
type PackageReport struct {
	TraceID    string
	Center     string    // the signing center's certificate name
	CenterCert string    // its serial
	ExportedAt time.Time // as signed
	Members    int
	Hosts      []HostReport
	Events     int // events proven, all hosts
	Batches    int // agent-signed batches verified
	Artifacts  []Artifact
	Actions    []Action // ledger entries proven in the checkpoint
	// EventsInLedger counts the proven trace.event entries that match an
	// event of the package: the center recorded it when it arrived.
	EventsInLedger int
	Export         Action // the latest export record among them
	Checkpoint     Checkpoint
	Command        *CommandReport // nil when the package holds none
	Metadata       []byte         // trace.json, as signed by the center
}

// HostReport is one host's part of the trace.
type HostReport struct {
	Host          string
	Events        int
	Batches       int
	FirstTraceSeq uint64
	LastTraceSeq  uint64
	Missing       []SeqRange // declared by the center: never received
	Agents        []string   // serials of the agent certificates that signed
}

// Artifact is an executable hash or memory snippet event of the trace.
type Artifact struct {
	Host     string
	TraceSeq uint64
	Kind     capture.Kind
	Path     string
	SHA256   string
	Blake3   string
	MemAddr  uint64
	MemBytes int
}

// Action is a proven ledger entry.
type Action struct {
	Index   int64
	Time    time.Time
	Kind    string
	Actor   string
	Payload []byte // nil when purged
}

// CommandReport is what the signed trace command proves.
type CommandReport struct {
	InitiatedBy string
	Signer      string
	SignerRole  pki.Role
	Center      string // the approving center, "" without a stamp
	Policy      string
	ApprovedBy  string
	Signed      time.Time
	TargetAgent string
	TargetPID   uint32
}

// parsedPackage is a package decoded without any check of signatures.
type parsedPackage struct {
	file    pkgFile
	env     dsseEnvelope
	st      statement
	members map[string][]byte
}

// parsePackage decodes the container, the envelope and the statement, and
// checks their shape: canonical encoding, members sorted and unique.
func parsePackage(b []byte) (*parsedPackage, error) {
	if len(b) > MaxPackageSize {
		return nil, pkgErr(ErrPackageMalformed, "package", "%d bytes is over the %d-byte limit", len(b), MaxPackageSize)
	}
	p := &parsedPackage{members: map[string][]byte{}}
	if err := pkgDec.Unmarshal(b, &p.file); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return nil, pkgErr(ErrPackageMalformed, "package", "truncated: the file ends inside its CBOR (%d bytes)", len(b))
		}
		return nil, pkgErr(ErrPackageMalformed, "package", "not a package: %v", err)
	}
	if p.file.Format != PackageFormat {
		return nil, pkgErr(ErrPackageMalformed, "package", "format %q, want %q", p.file.Format, PackageFormat)
	}
	if again, err := pkgEnc.Marshal(&p.file); err != nil || !bytes.Equal(again, b) {
		return nil, pkgErr(ErrPackageMalformed, "package", "not in canonical CBOR encoding")
	}
	for k, m := range p.file.Members {
		if k > 0 && m.Name <= p.file.Members[k-1].Name {
			return nil, pkgErr(ErrPackageMalformed, "member "+m.Name, "out of order or repeated (after %s): members are sorted by name", p.file.Members[k-1].Name)
		}
		p.members[m.Name] = m.Data
	}
	if err := strictJSON(p.file.Envelope, &p.env); err != nil {
		return nil, pkgErr(ErrPackageMalformed, "envelope", "not a DSSE envelope: %v", err)
	}
	if p.env.PayloadType != PayloadTypeInToto {
		return nil, pkgErr(ErrPackageMalformed, "envelope", "payload type %q, want %q", p.env.PayloadType, PayloadTypeInToto)
	}
	if err := strictJSON(p.env.Payload, &p.st); err != nil {
		return nil, pkgErr(ErrPackageMalformed, "statement", "not an in-toto statement: %v", err)
	}
	if p.st.Type != StatementType || p.st.PredicateType != PredicateType {
		return nil, pkgErr(ErrPackageMalformed, "statement", "type %q with predicate %q, want %q with %q", p.st.Type, p.st.PredicateType, StatementType, PredicateType)
	}
	return p, nil
}

func strictJSON(b []byte, v any) error { return dsse.UnmarshalStrict(b, v) }

// verifierAt is a CA verifier whose clock stands at t: certificates are
// judged at the time they were used.
func verifierAt(ca *x509.Certificate, t time.Time) (*pki.Verifier, error) {
	v, err := pki.NewVerifier(ca, nil)
	if err != nil {
		return nil, err
	}
	v.Now = func() time.Time { return t }
	return v, nil
}

// VerifyPackage checks a package offline against the customer CA
// certificate alone and reports what it proved. The first failure is a
// *PackageError naming what failed; every one matches ErrTampered.
func VerifyPackage(b []byte, ca *x509.Certificate) (PackageReport, error) {
	var rep PackageReport
	if ca == nil || !ca.IsCA {
		return rep, errors.New("ledger: verify package: no CA certificate")
	}
	p, err := parsePackage(b)
	if err != nil {
		return rep, err
	}
	pred := p.st.Predicate
	rep.TraceID, rep.ExportedAt, rep.Members = pred.TraceID, pred.ExportedAt, len(p.file.Members)

	// 1. The center's signature, then its certificate at export time.
	if len(p.file.Certs) == 0 {
		return rep, pkgErr(ErrPackageSigner, "signer", "the package carries no center certificate")
	}
	leaf, err := x509.ParseCertificate(p.file.Certs[0])
	if err != nil {
		return rep, pkgErr(ErrPackageSigner, "signer", "center certificate does not parse: %v", err)
	}
	pub, ok := leaf.PublicKey.(ed25519.PublicKey)
	if !ok {
		return rep, pkgErr(ErrPackageSigner, "signer", "center certificate key is not Ed25519")
	}
	if len(p.env.Signatures) != 1 {
		return rep, pkgErr(ErrPackageSignature, "signature", "the envelope has %d signatures, want 1", len(p.env.Signatures))
	}
	if !ed25519.Verify(pub, pae(p.env.PayloadType, p.env.Payload), p.env.Signatures[0].Sig) {
		return rep, pkgErr(ErrPackageSignature, "signature", "the DSSE signature does not verify with the key of certificate %s (%s)",
			pki.FormatSerial(leaf.SerialNumber), leaf.Subject.CommonName)
	}
	v, err := verifierAt(ca, pred.ExportedAt)
	if err != nil {
		return rep, err
	}
	if err := v.VerifyCertificate(leaf, pki.RoleCenter); err != nil {
		return rep, pkgErr(ErrPackageSigner, "signer", "center certificate at export time %s: %s", pred.ExportedAt.UTC().Format(time.RFC3339), pki.Describe(err))
	}
	_, centerName, _ := pki.Identity(leaf)
	rep.Center, rep.CenterCert = centerName, pki.FormatSerial(leaf.SerialNumber)
	if pred.Center != centerName {
		return rep, pkgErr(ErrPackageClaim, "statement", "names center %q, the signer is %q", pred.Center, centerName)
	}

	// 2. Every member is one the statement signed, and nothing else.
	signed := map[string]string{}
	for _, s := range p.st.Subject {
		if _, dup := signed[s.Name]; dup {
			return rep, pkgErr(ErrPackageMalformed, "statement", "subject %s appears twice", s.Name)
		}
		signed[s.Name] = s.Digest["sha256"]
	}
	for _, m := range p.file.Members {
		want, ok := signed[m.Name]
		if !ok {
			return rep, pkgErr(ErrPackageDigest, "member "+m.Name, "not in the signed statement")
		}
		sum := sha256.Sum256(m.Data)
		if hex.EncodeToString(sum[:]) != want {
			return rep, pkgErr(ErrPackageDigest, "member "+m.Name, "sha256 %x does not match the signed digest %s", sum[:], want)
		}
	}
	for _, s := range p.st.Subject {
		if _, ok := p.members[s.Name]; !ok {
			return rep, pkgErr(ErrPackageDigest, "member "+s.Name, "signed but missing from the package")
		}
	}
	for _, name := range []string{MemberTrace, MemberEvents, MemberCheckpoint, MemberVerifierKey, MemberEntries} {
		if _, ok := p.members[name]; !ok {
			return rep, pkgErr(ErrPackageMalformed, "member "+name, "missing")
		}
	}
	if err := checkMetadata(p.members[MemberTrace], pred.TraceID); err != nil {
		return rep, pkgErr(ErrPackageClaim, "member "+MemberTrace, "%v", err)
	}
	rep.Metadata = p.members[MemberTrace]

	// 3. Batches: agent certificates from the CA, agent signatures.
	batches := map[string]*wire.Batch{}
	agents := map[string][]string{}
	for _, m := range p.file.Members {
		if !strings.HasPrefix(m.Name, batchPrefix) {
			continue
		}
		b, serial, err := verifyBatch(m.Name, m.Data, ca)
		if err != nil {
			return rep, err
		}
		batches[m.Name] = b
		if !slices.Contains(agents[b.AgentID], serial) {
			agents[b.AgentID] = append(agents[b.AgentID], serial)
		}
	}
	rep.Batches = len(batches)

	// 4. Events: in their batches, of this trace, in sequence, complete.
	hosts, proven, err := verifyEvents(p.members[MemberEvents], pred.TraceID, batches, &rep)
	if err != nil {
		return rep, err
	}
	for k := range hosts {
		hosts[k].Agents = agents[hosts[k].Host]
	}
	rep.Hosts = hosts

	// 5. The ledger: checkpoint by the center's key, entries in its tree.
	if err := verifyLedger(p, centerName, proven, &rep); err != nil {
		return rep, err
	}

	// 6. The trace command's signatures, at the time it was signed.
	if cmd, ok := p.members[MemberCommand]; ok {
		cr, err := verifyCommand(cmd, pred.TraceID, ca)
		if err != nil {
			return rep, err
		}
		rep.Command = cr
	}

	// 7. What the statement claims is what was proven.
	if err := checkClaims(pred, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

// verifyBatch opens a batch member with the agent certificate it carries
// and checks that certificate against the CA at the time of the events.
func verifyBatch(name string, sealed []byte, ca *x509.Certificate) (*wire.Batch, string, error) {
	what := "batch " + strings.TrimPrefix(name, batchPrefix)
	der, err := wire.PeekCert(sealed)
	if err != nil {
		return nil, "", pkgErr(ErrBatchSignature, what, "no agent certificate: %v", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, "", pkgErr(ErrBatchSignature, what, "agent certificate does not parse: %v", err)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, "", pkgErr(ErrBatchSignature, what, "agent certificate key is not Ed25519")
	}
	b, err := wire.OpenBatch(sealed, pub, wire.Limits{})
	if err != nil {
		if errors.Is(err, wire.ErrBadSignature) {
			return nil, "", pkgErr(ErrBatchSignature, what, "agent signature does not verify: %v", err)
		}
		return nil, "", pkgErr(ErrBatchSignature, what, "does not open: %v", err)
	}
	if got := BatchMember(b.AgentID, b.Seq); got != name {
		return nil, "", pkgErr(ErrBatchSignature, what, "the signed batch is %s/%d", b.AgentID, b.Seq)
	}
	at := time.Unix(0, b.TSEnd)
	v, err := verifierAt(ca, at)
	if err != nil {
		return nil, "", err
	}
	if err := v.VerifyCertificate(cert, pki.RoleAgent); err != nil {
		return nil, "", pkgErr(ErrBatchSignature, what, "agent certificate at %s: %s", at.UTC().Format(time.RFC3339), pki.Describe(err))
	}
	if _, agent, _ := pki.Identity(cert); agent != b.AgentID {
		return nil, "", pkgErr(ErrBatchSignature, what, "signed with the certificate of %s", agent)
	}
	return b, pki.FormatSerial(cert.SerialNumber), nil
}

// verifyEvents checks the event list against the verified batches.
func verifyEvents(raw []byte, traceID string, batches map[string]*wire.Batch, rep *PackageReport) ([]HostReport, map[string]provenEvent, error) {
	var events []pkgEvent
	if err := pkgDec.Unmarshal(raw, &events); err != nil {
		return nil, nil, pkgErr(ErrPackageMalformed, "member "+MemberEvents, "%v", err)
	}
	proven := map[string]provenEvent{}
	type pos struct {
		batch string
		idx   int
	}
	listed := map[pos]bool{}
	byHost := map[string]*HostReport{}
	var order []string
	for k, ev := range events {
		what := ev.what()
		if k > 0 {
			prev := events[k-1]
			if ev.Host < prev.Host || ev.Host == prev.Host && ev.TraceSeq <= prev.TraceSeq {
				return nil, nil, pkgErr(ErrEventSequence, what, "trace_seq %d of %s is listed after %s trace_seq %d: events are in trace_seq order per host, each once",
					ev.TraceSeq, ev.Host, prev.Host, prev.TraceSeq)
			}
		}
		name := BatchMember(ev.Host, ev.BatchSeq)
		b, ok := batches[name]
		if !ok {
			return nil, nil, pkgErr(ErrEventProof, what, "its batch is not in the package")
		}
		if ev.Idx < 0 || ev.Idx >= len(b.Events) {
			return nil, nil, pkgErr(ErrEventProof, what, "the batch has %d events", len(b.Events))
		}
		proof := make([][32]byte, len(ev.Proof))
		for j, h := range ev.Proof {
			if len(h) != 32 {
				return nil, nil, pkgErr(ErrEventProof, what, "proof hash %d is %d bytes", j, len(h))
			}
			proof[j] = [32]byte(h)
		}
		if err := wire.VerifyEventProof(b.Root, ev.Event, ev.Idx, len(b.Events), proof); err != nil {
			return nil, nil, pkgErr(ErrEventProof, what, "merkle proof does not match batch root")
		}
		e := b.Events[ev.Idx] // the leaf is proven, so it is this event's encoding
		if e.TraceID != traceID {
			return nil, nil, pkgErr(ErrEventSequence, what, "belongs to trace %q, not %q", e.TraceID, traceID)
		}
		if e.TraceSeq != ev.TraceSeq {
			return nil, nil, pkgErr(ErrEventSequence, what, "its signed trace_seq is %d, the package lists it as %d", e.TraceSeq, ev.TraceSeq)
		}
		listed[pos{name, ev.Idx}] = true
		proven[ev.what()] = provenEvent{traceSeq: ev.TraceSeq, sha256: sha256.Sum256(ev.Event)}
		h := byHost[ev.Host]
		if h == nil {
			h = &HostReport{Host: ev.Host, FirstTraceSeq: ev.TraceSeq}
			byHost[ev.Host] = h
			order = append(order, ev.Host)
		}
		h.Events++
		h.LastTraceSeq = ev.TraceSeq
		rep.Events++
		if e.Kind == capture.KindExecHash || e.Mem != nil {
			a := Artifact{Host: ev.Host, TraceSeq: ev.TraceSeq, Kind: e.Kind}
			if e.Hashes != nil {
				a.Path, a.SHA256, a.Blake3 = e.Hashes.Path, e.Hashes.SHA256, e.Hashes.Blake3
			}
			if e.Mem != nil {
				a.MemAddr, a.MemBytes = e.Mem.Addr, len(e.Mem.Data)
			}
			rep.Artifacts = append(rep.Artifacts, a)
		}
	}
	// Every event of the trace in an included batch is listed, and every
	// batch is there for an event.
	names := make([]string, 0, len(batches))
	for name := range batches {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b := batches[name]
		used := false
		for i := range b.Events {
			if listed[pos{name, i}] {
				used = true
				continue
			}
			if b.Events[i].TraceID == traceID {
				return nil, nil, pkgErr(ErrEventSequence, fmt.Sprintf("event %s/seq %d/idx %d", b.AgentID, b.Seq, i),
					"trace_seq %d of the trace is in a batch of the package but not listed", b.Events[i].TraceSeq)
			}
		}
		if !used {
			return nil, nil, pkgErr(ErrEventSequence, "batch "+strings.TrimPrefix(name, batchPrefix), "holds no listed event of the trace")
		}
		byHost[b.AgentID].Batches++
	}
	out := make([]HostReport, 0, len(order))
	for _, host := range order {
		out = append(out, *byHost[host])
	}
	// Gaps: below each host's highest trace_seq, every number is listed or
	// declared missing by the center.
	for k := range out {
		out[k].Missing = missingSeqs(events, out[k].Host)
	}
	return out, proven, nil
}

// provenEvent is what the ledger's trace.event entries are checked against.
type provenEvent struct {
	traceSeq uint64
	sha256   [32]byte
}

// traceEventLeaf is the payload the center writes for each trace event it
// ingests (roles/center: one ledger leaf per event).
type traceEventLeaf struct {
	TraceID     string `json:"trace_id"`
	TraceSeq    uint64 `json:"trace_seq"`
	Host        string `json:"host"`
	BatchSeq    uint64 `json:"batch_seq"`
	Idx         int    `json:"idx"`
	EventSHA256 string `json:"event_sha256"`
}

// checkEventLeaf checks a proven trace.event entry of the trace against the
// events the batches proved: the ledger recorded each event when the
// center received it, so one the package lacks, or holds otherwise, is
// named.
func checkEventLeaf(what string, payload []byte, traceID string, proven map[string]provenEvent) (bool, error) {
	var l traceEventLeaf
	if err := json.Unmarshal(payload, &l); err != nil || l.TraceID != traceID {
		return false, nil // not an event of this trace
	}
	ev := fmt.Sprintf("event %s/seq %d/idx %d", l.Host, l.BatchSeq, l.Idx)
	got, ok := proven[ev]
	if !ok {
		return false, pkgErr(ErrEventSequence, what, "records %s (trace_seq %d) of the trace, which the package lacks", ev, l.TraceSeq)
	}
	if got.traceSeq != l.TraceSeq || hex.EncodeToString(got.sha256[:]) != l.EventSHA256 {
		return false, pkgErr(ErrEventProof, what, "records %s as trace_seq %d with sha256 %s; the package proves trace_seq %d with sha256 %x",
			ev, l.TraceSeq, l.EventSHA256, got.traceSeq, got.sha256[:])
	}
	return true, nil
}

// verifyLedger checks the checkpoint and the entries.
func verifyLedger(p *parsedPackage, centerName string, proven map[string]provenEvent, rep *PackageReport) error {
	vkey := strings.TrimSuffix(string(p.members[MemberVerifierKey]), "\n")
	nv, err := note.NewVerifier(vkey)
	if err != nil {
		return pkgErr(ErrLedgerProof, "member "+MemberVerifierKey, "not a note verifier key: %v", err)
	}
	if want := Origin(centerName); nv.Name() != want {
		return pkgErr(ErrLedgerProof, "member "+MemberVerifierKey, "key of %q, but the signing center's log is %q", nv.Name(), want)
	}
	cp, err := openCheckpoint(p.members[MemberCheckpoint], nv)
	if err != nil {
		return pkgErr(ErrLedgerProof, "checkpoint", "%v", err)
	}
	rep.Checkpoint = cp
	var entries []pkgEntry
	if err := pkgDec.Unmarshal(p.members[MemberEntries], &entries); err != nil {
		return pkgErr(ErrPackageMalformed, "member "+MemberEntries, "%v", err)
	}
	exported := false
	for k, e := range entries {
		proof := make(tlog.RecordProof, len(e.Proof))
		for j, h := range e.Proof {
			if len(h) != tlog.HashSize {
				return pkgErr(ErrLedgerProof, fmt.Sprintf("ledger entry #%d", k), "proof hash %d is %d bytes", j, len(h))
			}
			proof[j] = tlog.Hash(h)
		}
		rec, err := DecodeLeaf(e.Leaf)
		if err != nil {
			return pkgErr(ErrLedgerProof, fmt.Sprintf("ledger entry #%d", k), "leaf does not decode")
		}
		what := fmt.Sprintf("ledger entry %d", rec.Index)
		if k > 0 && rec.Index <= rep.Actions[k-1].Index {
			return pkgErr(ErrLedgerProof, what, "listed after entry %d: entries are in index order, each once", rep.Actions[k-1].Index)
		}
		if _, err := cp.CheckInclusion(e.Leaf, proof); err != nil {
			return pkgErr(ErrLedgerProof, what, "not in the checkpoint's tree of size %d", cp.Size)
		}
		a := Action{Index: rec.Index, Time: rec.Time, Kind: rec.Kind, Actor: rec.Actor}
		if !e.Purged {
			if err := CheckPayload(e.Leaf, e.Payload); err != nil {
				return pkgErr(ErrLedgerProof, what, "payload does not match its leaf")
			}
			a.Payload = e.Payload
			if a.Payload == nil {
				a.Payload = []byte{}
			}
		} else if len(e.Payload) != 0 {
			return pkgErr(ErrPackageMalformed, what, "purged entry carries a payload")
		}
		rep.Actions = append(rep.Actions, a)
		if a.Kind == KindTraceEvent && a.Payload != nil {
			ok, err := checkEventLeaf(what, a.Payload, p.st.Predicate.TraceID, proven)
			if err != nil {
				return err
			}
			if ok {
				rep.EventsInLedger++
			}
		}
		if a.Kind == KindExport && payloadTraceID(a.Payload) == p.st.Predicate.TraceID {
			exported = true
			rep.Export = a
		}
	}
	if !exported {
		return pkgErr(ErrNoExportRecord, "ledger", "no %q entry for trace %s among the proven entries", KindExport, p.st.Predicate.TraceID)
	}
	return nil
}

// payloadTraceID reads "trace_id" from a JSON payload.
func payloadTraceID(b []byte) string {
	var m struct {
		TraceID string `json:"trace_id"`
	}
	if json.Unmarshal(b, &m) != nil {
		return ""
	}
	return m.TraceID
}

// verifyCommand checks the signed trace command at the time it was signed.
func verifyCommand(b []byte, traceID string, ca *x509.Certificate) (*CommandReport, error) {
	const what = "member " + MemberCommand
	_, cmd, err := wire.DecodeSignedTrace(b)
	if err != nil {
		return nil, pkgErr(ErrTraceCommand, what, "%v", err)
	}
	if cmd.TraceID != traceID {
		return nil, pkgErr(ErrTraceCommand, what, "is for trace %q", cmd.TraceID)
	}
	at := time.Unix(0, cmd.Timestamp)
	v, err := verifierAt(ca, at)
	if err != nil {
		return nil, err
	}
	vt, err := wire.VerifyTrace(b, v, wire.TraceCheck{Now: at, CenterSignedForOperator: true})
	if err != nil {
		return nil, pkgErr(ErrTraceCommand, what, "%v", err)
	}
	return &CommandReport{InitiatedBy: cmd.InitiatedBy, Signer: vt.Signer, SignerRole: vt.SignerRole, Center: vt.Center,
		Policy: vt.Approval.Policy, ApprovedBy: vt.Approval.ApprovedBy, Signed: at, TargetAgent: cmd.TargetAgent, TargetPID: cmd.TargetPID}, nil
}

// checkClaims compares the predicate with what was proven.
func checkClaims(pred predicate, rep *PackageReport) error {
	claim := func(format string, args ...any) error {
		return pkgErr(ErrPackageClaim, "statement", format, args...)
	}
	if pred.Events != rep.Events || pred.Batches != rep.Batches {
		return claim("claims %d events in %d batches, the package proves %d in %d", pred.Events, pred.Batches, rep.Events, rep.Batches)
	}
	if pred.Command != (rep.Command != nil) {
		return claim("claims command %v, the package holds one: %v", pred.Command, rep.Command != nil)
	}
	if len(pred.Hosts) != len(rep.Hosts) {
		return claim("claims %d hosts, the package proves events of %d", len(pred.Hosts), len(rep.Hosts))
	}
	for k, h := range pred.Hosts {
		got := rep.Hosts[k]
		if h.Host != got.Host || h.Events != got.Events || h.Batches != got.Batches ||
			h.FirstTraceSeq != got.FirstTraceSeq || h.LastTraceSeq != got.LastTraceSeq {
			return claim("host %s: claims %d events (trace_seq %d..%d) in %d batches, the package proves %s: %d events (trace_seq %d..%d) in %d batches",
				h.Host, h.Events, h.FirstTraceSeq, h.LastTraceSeq, h.Batches, got.Host, got.Events, got.FirstTraceSeq, got.LastTraceSeq, got.Batches)
		}
		if r, ok := firstNotIn(got.Missing, h.Missing); ok {
			return pkgErr(ErrEventSequence, "host "+h.Host, "trace_seq %s missing from the package (the center declared missing: %s)",
				r, rangesString(h.Missing))
		}
		if r, ok := firstNotIn(h.Missing, got.Missing); ok {
			return claim("host %s: declares trace_seq %s missing, the package proves otherwise (missing: %s)", h.Host, r, rangesString(got.Missing))
		}
	}
	cp := rep.Checkpoint
	if pred.Ledger.Origin != cp.Origin || pred.Ledger.Size != cp.Size || pred.Ledger.Root != base64.StdEncoding.EncodeToString(cp.Root[:]) ||
		pred.Ledger.Entries != len(rep.Actions) {
		return claim("claims checkpoint %s at size %d with %d entries, the package proves %s at size %d with %d",
			pred.Ledger.Origin, pred.Ledger.Size, pred.Ledger.Entries, cp.Origin, cp.Size, len(rep.Actions))
	}
	return nil
}

// firstNotIn returns the first range of a that b lacks.
func firstNotIn(a, b []SeqRange) (SeqRange, bool) {
	for _, r := range a {
		if !slices.Contains(b, r) {
			return r, true
		}
	}
	return SeqRange{}, false
}

func rangesString(rs []SeqRange) string {
	if len(rs) == 0 {
		return "none"
	}
	s := make([]string, len(rs))
	for k, r := range rs {
		s[k] = r.String()
	}
	return strings.Join(s, ", ")
}
