package rules

import _ "embed"

//go:embed packs/default.yaml
var defaultPack []byte

// DefaultSource names the built-in pack in messages.
const DefaultSource = "builtin:default.yaml"

// DefaultPackBytes returns the built-in pack's file (testdata/rules/default.yaml
// is the same file).
func DefaultPackBytes() []byte { return append([]byte(nil), defaultPack...) }

// Default parses the built-in pack. It ships inside the binary, whose own
// release signature covers it, so it is not verified again; a center that
// wants only packs signed by the customer's key simply does not load it.
func Default() (*Pack, error) { return Parse(DefaultSource, DefaultPackBytes()) }
