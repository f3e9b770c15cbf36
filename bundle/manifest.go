// Package bundle is the air-gap update path: one signed file that carries
// what a node needs from outside the enclave (the daemoneye binary, rule
// packs and their signatures, configuration files, a CRL), checked offline
// with nothing but the bundle and a trusted Ed25519 public key, and applied
// all-or-nothing with rollback.
//
// Place in the data flow: an operator builds a bundle on the connected side
// (`daemoneye bundle create`), carries it across the gap, checks it
// (`bundle verify`) and installs it on a node (`bundle apply`). A bundle
// applied at the center that brings new rule packs reaches the agents
// through the tree: the center reloads its packs and pushes them down.
//
// # Shape
//
// A bundle is a POSIX tar archive, so that `tar tvf` shows what it holds:
//
//	MANIFEST.dsse.json   a DSSE envelope (JSON) whose payload is the
//	                     manifest (JSON, PayloadType), signed with Ed25519
//	files/PATH           each file of the manifest, in manifest order
//
// and nothing else. The manifest says the format version, when and by whom
// the bundle was made, its sequence number (rollback protection), the roles
// it is meant for and, per file, its kind, target path (relative to the
// root it is applied to), size, SHA-256 and mode. The archive's own headers
// are never trusted: names, sizes and order must match the signed manifest,
// modes come from it.
package bundle

import (
	"crypto/ed25519"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/evilbitlabs/daemoneye/internal/dsse"
	"github.com/evilbitlabs/daemoneye/rules"
)

// Format names the manifest format this build reads and writes.
const Format = "daemoneye-bundle/v1"

// PayloadType is the DSSE payload type of a bundle manifest: it keeps a
// bundle signature from ever meaning anything else the key signs.
const PayloadType = "application/vnd.daemoneye.bundle-manifest+json"

// Member names inside the archive.
const (
	ManifestMember = "MANIFEST.dsse.json"
	FilesPrefix    = "files/"
)

// Limits: a bundle is refused, before anything is written, if it passes one.
const (
	MaxManifestBytes = 1 << 20 // the DSSE envelope
	MaxFiles         = 256
	MaxPathBytes     = 1024
	MaxNameBytes     = 255 // one path component
	MaxTotalBytes    = 4 << 30
	MaxSignatures    = 8
	MaxCreatorBytes  = 256
	MaxDescription   = 4096
)

// Kind is what a file is for; it decides its size limit, default mode and
// the check it must pass once applied.
type Kind string

const (
	KindBinary   Kind = "binary"    // the daemoneye executable: must answer --version
	KindRules    Kind = "rules"     // a rule pack: must pass `rules check`
	KindRulesSig Kind = "rules-sig" // PACK.sig of a rules file in the same bundle
	KindConfig   Kind = "config"    // a YAML configuration: must load and validate
	KindCRL      Kind = "crl"       // a certificate revocation list (PEM or DER)
)

// kinds are the known kinds with their size limit and default mode.
var kinds = map[Kind]struct {
	max  int64
	mode fs.FileMode
}{
	KindBinary:   {512 << 20, 0o755},
	KindRules:    {rules.MaxPackBytes, 0o644},
	KindRulesSig: {4096, 0o644},
	KindConfig:   {1 << 20, 0o640},
	KindCRL:      {4 << 20, 0o644}, // what pki.ParseCRL accepts
}

// DefaultMode is the mode a file of kind k gets unless told otherwise.
func DefaultMode(k Kind) fs.FileMode { return kinds[k].mode }

// Roles a bundle may name as its targets.
var Roles = []string{"agent", "proxy", "center"}

// Manifest is what a bundle's signature covers.
type Manifest struct {
	Format string `json:"format"`
	// Created is when the bundle was made (UTC).
	Created time.Time `json:"created"`
	// Sequence orders bundles: a node refuses one whose sequence is not
	// above every bundle it applied before (unless forced). It defaults to
	// Created in Unix seconds.
	Sequence    uint64   `json:"sequence"`
	Creator     string   `json:"creator"`
	Description string   `json:"description,omitempty"`
	Targets     []string `json:"targets"` // roles the bundle is meant for
	Files       []File   `json:"files"`
}

// File is one file of a bundle.
type File struct {
	Kind Kind `json:"kind"`
	// Path is where the file goes, relative to the root the bundle is
	// applied to, slash-separated and clean ("usr/local/bin/daemoneye").
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"` // hex
	Mode   string `json:"mode"`   // octal permission bits, "0644"
}

// Perm is the file's mode.
func (f File) Perm() fs.FileMode {
	m, _ := strconv.ParseUint(f.Mode, 8, 32)
	return fs.FileMode(m)
}

// Errors callers branch on. Every error about a bundle's content wraps one.
var (
	ErrMalformed = errors.New("bundle is malformed")
	ErrFormat    = errors.New("unknown bundle format version")
	ErrSignature = errors.New("bundle signature does not verify with a trusted key")
	ErrDigest    = errors.New("bundle file does not match its manifest")
	ErrUnsafe    = errors.New("unsafe path in bundle")
	ErrTooLarge  = errors.New("bundle over a limit")
)

// Validate checks a manifest's shape: format, limits, paths, kinds, modes,
// digests and pairing of rule signatures with their packs.
func (m *Manifest) Validate() error {
	if m.Format != Format {
		return fmt.Errorf("%w: %q (this build reads %q)", ErrFormat, m.Format, Format)
	}
	if m.Created.IsZero() {
		return fmt.Errorf("%w: no creation time", ErrMalformed)
	}
	if m.Sequence == 0 {
		return fmt.Errorf("%w: sequence 0", ErrMalformed)
	}
	if len(m.Creator) > MaxCreatorBytes || len(m.Description) > MaxDescription {
		return fmt.Errorf("%w: creator or description too long", ErrTooLarge)
	}
	if len(m.Targets) == 0 {
		return fmt.Errorf("%w: no target roles", ErrMalformed)
	}
	for i, r := range m.Targets {
		if !slices.Contains(Roles, r) {
			return fmt.Errorf("%w: target role %q (want agent, proxy or center)", ErrMalformed, r)
		}
		if slices.Contains(m.Targets[:i], r) {
			return fmt.Errorf("%w: target role %q twice", ErrMalformed, r)
		}
	}
	if len(m.Files) == 0 {
		return fmt.Errorf("%w: no files", ErrMalformed)
	}
	if len(m.Files) > MaxFiles {
		return fmt.Errorf("%w: %d files, at most %d", ErrTooLarge, len(m.Files), MaxFiles)
	}
	var total int64
	seen := map[string]Kind{}
	for _, f := range m.Files {
		if err := CheckPath(f.Path); err != nil {
			return err
		}
		k, ok := kinds[f.Kind]
		if !ok {
			return fmt.Errorf("%w: %s: unknown kind %q", ErrMalformed, f.Path, f.Kind)
		}
		if f.Size < 0 || f.Size > k.max {
			return fmt.Errorf("%w: %s: %d bytes, a %s file may have at most %d", ErrTooLarge, f.Path, f.Size, f.Kind, k.max)
		}
		if total += f.Size; total > MaxTotalBytes {
			return fmt.Errorf("%w: more than %d bytes in all", ErrTooLarge, int64(MaxTotalBytes))
		}
		if b, err := hex.DecodeString(f.SHA256); err != nil || len(b) != 32 || strings.ToLower(f.SHA256) != f.SHA256 {
			return fmt.Errorf("%w: %s: sha256 %q is not 64 lowercase hex digits", ErrMalformed, f.Path, f.SHA256)
		}
		if m, err := strconv.ParseUint(f.Mode, 8, 32); err != nil || len(f.Mode) != 4 || f.Mode[0] != '0' || m&^0o777 != 0 {
			return fmt.Errorf("%w: %s: mode %q (want four octal digits, permission bits only: no setuid, setgid or sticky)", ErrMalformed, f.Path, f.Mode)
		}
		if _, dup := seen[f.Path]; dup {
			return fmt.Errorf("%w: %s appears twice", ErrMalformed, f.Path)
		}
		seen[f.Path] = f.Kind
	}
	// A file may not also be a directory of another ("etc/x" and "etc/x/y").
	for p := range seen {
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			if _, clash := seen[d]; clash {
				return fmt.Errorf("%w: %s is a file and a directory of %s", ErrMalformed, d, p)
			}
		}
	}
	for _, f := range m.Files {
		if f.Kind != KindRulesSig {
			continue
		}
		pack, ok := strings.CutSuffix(f.Path, rules.SigSuffix)
		if !ok || seen[pack] != KindRules {
			return fmt.Errorf("%w: %s: a rules-sig file must be PACK%s of a rules file in the bundle", ErrMalformed, f.Path, rules.SigSuffix)
		}
	}
	return nil
}

// CheckPath refuses a target path that could leave the root or that means
// something other than it says: absolute, "..", ".", empty or repeated
// separators, backslashes, control characters, invalid UTF-8, over-long.
func CheckPath(p string) error {
	bad := func(why string) error { return fmt.Errorf("%w: %q: %s", ErrUnsafe, p, why) }
	switch {
	case p == "":
		return bad("empty")
	case len(p) > MaxPathBytes:
		return bad(fmt.Sprintf("longer than %d bytes", MaxPathBytes))
	case !utf8.ValidString(p):
		return bad("not UTF-8")
	case strings.HasPrefix(p, "/"):
		return bad("absolute (paths are relative to the root the bundle is applied to)")
	case strings.ContainsRune(p, '\\'):
		return bad("backslash")
	case path.Clean(p) != p:
		return bad("not a clean path")
	}
	for _, r := range p {
		if r < 0x20 || r == 0x7f {
			return bad("control character")
		}
	}
	for _, c := range strings.Split(p, "/") {
		if c == ".." || c == "." {
			return bad("'..' or '.' component")
		}
		if len(c) > MaxNameBytes {
			return bad(fmt.Sprintf("a component longer than %d bytes", MaxNameBytes))
		}
	}
	return nil
}

// KeyID names a signing key in envelopes and messages (as rules.KeyID).
func KeyID(k ed25519.PublicKey) string { return rules.KeyID(k) }

// signManifest validates m and returns its signed envelope (JSON).
func signManifest(m *Manifest, key ed25519.PrivateKey) ([]byte, error) {
	if err := m.Validate(); err != nil {
		return nil, err
	}
	payload, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	env := dsse.Sign(PayloadType, payload, KeyID(key.Public().(ed25519.PublicKey)), key)
	return json.Marshal(env)
}

// Opened is a manifest whose envelope verified.
type Opened struct {
	Manifest Manifest
	// Digest is the SHA-256 of the signed manifest (the DSSE payload),
	// hex: the bundle's identity in the applied-bundles log.
	Digest string
	// Signer is the trusted key that verified it.
	Signer ed25519.PublicKey
}

// openManifest checks a DSSE envelope against the trusted keys, then
// decodes and validates the manifest it signs. The signature is checked
// before the manifest is read at all.
func openManifest(envJSON []byte, trusted []ed25519.PublicKey) (*Opened, error) {
	if len(trusted) == 0 {
		return nil, fmt.Errorf("%w: no trusted bundle key given", ErrSignature)
	}
	if len(envJSON) > MaxManifestBytes {
		return nil, fmt.Errorf("%w: manifest envelope of %d bytes, at most %d", ErrTooLarge, len(envJSON), MaxManifestBytes)
	}
	var env dsse.Envelope
	if err := dsse.UnmarshalStrict(envJSON, &env); err != nil {
		return nil, fmt.Errorf("%w: manifest envelope is not DSSE JSON: %v", ErrMalformed, err)
	}
	if env.PayloadType != PayloadType {
		return nil, fmt.Errorf("%w: payload type %q, want %q", ErrMalformed, env.PayloadType, PayloadType)
	}
	if n := len(env.Signatures); n == 0 || n > MaxSignatures {
		return nil, fmt.Errorf("%w: %d signatures (want 1 to %d)", ErrMalformed, n, MaxSignatures)
	}
	var signer ed25519.PublicKey
	var ids []string
	for _, s := range env.Signatures {
		ids = append(ids, s.KeyID)
		for _, k := range trusted {
			if env.Verifies(s, k) {
				signer = k
				break
			}
		}
		if signer != nil {
			break
		}
	}
	if signer == nil {
		return nil, fmt.Errorf("%w: signed by key %s, trusted: %s (modified after signing, or signed by another key)",
			ErrSignature, strings.Join(ids, ", "), keyList(trusted))
	}
	o := &Opened{Signer: signer, Digest: sha256Hex(env.Payload)}
	// The format first: a newer format may have fields this build does not
	// know, and "unknown format" is the message that helps.
	var probe struct {
		Format string `json:"format"`
	}
	if err := json.Unmarshal(env.Payload, &probe); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	if probe.Format != Format {
		return nil, fmt.Errorf("%w: %q (this build reads %q)", ErrFormat, probe.Format, Format)
	}
	if err := dsse.UnmarshalStrict(env.Payload, &o.Manifest); err != nil {
		return nil, fmt.Errorf("%w: manifest: %v", ErrMalformed, err)
	}
	if err := o.Manifest.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

func keyList(keys []ed25519.PublicKey) string {
	var s []string
	for _, k := range keys {
		s = append(s, KeyID(k))
	}
	return strings.Join(s, ", ")
}
