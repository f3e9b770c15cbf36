package wire

// Rule packs down the tree: the center sends its customer rule packs (the
// exact pack bytes and their detached signatures) to every child; proxies
// keep the newest set and pass it on, also to children that connect later;
// agents verify every pack against their own trusted keys and run the rules
// marked runs_on agent. Nothing here is trusted for a pack's content: the
// signature, checked by the agent, is.

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
)

// TypeRulePacks carries a RulePacks frame.
const TypeRulePacks Type = 15

// Bounds of a RulePacks frame, beyond the frame size (which bounds the
// packs' total).
const (
	MaxRulePacks      = 64   // packs in one set
	MaxRulePackName   = 256  // bytes of a pack's name
	MaxRulePackSigLen = 4096 // bytes of a .sig file (rules reads no more)
)

// RulePacks is the center's whole set of customer rule packs: a pack the
// center no longer has is absent, so it is dropped below too. Seq orders
// sets (a node keeps the highest it has seen); it only grows at the center.
type RulePacks struct {
	Seq   uint64     `cbor:"1,keyasint"`
	Packs []RulePack `cbor:"2,keyasint,omitempty"`
}

// RulePack is one pack file and its signature.
type RulePack struct {
	Name string `cbor:"1,keyasint"` // the pack's name, for messages (the pack says its own)
	Data []byte `cbor:"2,keyasint"` // the pack file, byte for byte
	Sig  []byte `cbor:"3,keyasint,omitempty"`
}

func (RulePacks) Type() Type { return TypeRulePacks }

func (m *RulePacks) validate() error {
	if m.Seq == 0 {
		return malformed("rule-packs: seq 0")
	}
	if len(m.Packs) > MaxRulePacks {
		return malformed("rule-packs: %d packs, at most %d", len(m.Packs), MaxRulePacks)
	}
	seen := make(map[string]bool, len(m.Packs))
	for i, p := range m.Packs {
		switch {
		case p.Name == "" || len(p.Name) > MaxRulePackName:
			return malformed("rule-packs: pack %d: name of %d bytes", i, len(p.Name))
		case len(p.Data) == 0:
			return malformed("rule-packs: pack %q: empty", p.Name)
		case len(p.Sig) > MaxRulePackSigLen:
			return malformed("rule-packs: pack %q: signature of %d bytes, at most %d", p.Name, len(p.Sig), MaxRulePackSigLen)
		case seen[p.Name]:
			return malformed("rule-packs: pack %q twice", p.Name)
		}
		seen[p.Name] = true
	}
	return nil
}

// SaveRulePacks keeps a set in a file (its frame bytes, replaced
// atomically), for a node to have it again after a restart.
func SaveRulePacks(path string, set *RulePacks) error {
	b, err := AppendFrame(nil, set)
	if err != nil {
		return err
	}
	return atomicfile.Write(path, b, 0o600)
}

// LoadRulePacks reads a set SaveRulePacks kept: nil and no error when
// there is none, an error when the file is not one whole RulePacks frame.
func LoadRulePacks(path string) (*RulePacks, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err == nil && len(b) > DefaultMaxFrameSize+4 {
		err = errors.New("larger than a frame")
	}
	var f Frame
	if err == nil {
		f, err = NewReader(bytes.NewReader(b), Limits{}).ReadFrame()
	}
	if err != nil {
		return nil, err
	}
	set, ok := f.(*RulePacks)
	if !ok {
		return nil, fmt.Errorf("a %T frame, not rule packs", f)
	}
	return set, nil
}
