// Package privacy decides what an operator sees of a command line. Arguments
// are masked by default everywhere they are shown (the concept's privacy rule);
// revealing them takes an explicit request with a justification, which the
// caller records. Rendering also makes attacker-controlled bytes safe for a
// terminal: no escape sequences, newlines or invalid UTF-8 reach the screen raw.
package privacy

import (
	"errors"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// ErrNoReason is returned when a reveal is asked for without a justification.
var ErrNoReason = errors.New("revealing arguments needs a reason (--reason)")

// Reveal is a request to see arguments unmasked.
type Reveal struct {
	On     bool
	Reason string
}

// Check returns ErrNoReason when the reveal lacks a usable justification.
func (r Reveal) Check() error {
	if r.On && len(strings.TrimSpace(r.Reason)) < 4 {
		return ErrNoReason
	}
	return nil
}

// Argv renders a command line for display with the process's policy
// (Default): unless revealed, what the configured masking shows (by
// default argv[0] and a count of the masked arguments in their place).
func Argv(argv []string, reveal bool) string { return Default().Argv(argv, reveal) }

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// Safe returns s unchanged when it is printable UTF-8 without spaces that
// would make word boundaries ambiguous; otherwise a Go-quoted form, so
// newlines, control characters and invalid bytes are visible as escapes.
func Safe(s string) string {
	if s == "" {
		return `""`
	}
	if !utf8.ValidString(s) {
		return strconv.Quote(s)
	}
	for _, r := range s {
		if !unicode.IsPrint(r) || r == ' ' || r == '"' || r == '\\' {
			return strconv.Quote(s)
		}
	}
	return s
}
