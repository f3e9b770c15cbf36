package sqlstore

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"
)

// EncodeArgv returns argv as the JSON array stored in the argv columns, or
// "" for an empty argv (stored as NULL).
//
// argv comes from the kernel as raw bytes and may be any byte string. JSON
// (and SQLite's JSON functions) can only carry valid UTF-8, so the encoding
// is: an argument that is valid UTF-8 is a JSON string; any other argument
// is an object {"b64": "<standard base64 of its bytes>"}. That is reversible
// for every []string (DecodeArgv), keeps the common case readable, and lets
// analysts use json_each(argv) in SQL: the odd argument shows up with
// type 'object' rather than silently mangled.
func EncodeArgv(argv []string) (string, error) {
	if len(argv) == 0 {
		return "", nil
	}
	var b bytes.Buffer
	b.Grow(16 * len(argv))
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	b.WriteByte('[')
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(',')
		}
		var v any = a
		if !utf8.ValidString(a) {
			v = rawArg{B64: base64.StdEncoding.EncodeToString([]byte(a))}
		}
		if err := enc.Encode(v); err != nil {
			return "", fmt.Errorf("encode argv: %w", err)
		}
		b.Truncate(b.Len() - 1) // Encode's newline
	}
	b.WriteByte(']')
	return b.String(), nil
}

type rawArg struct {
	B64 string `json:"b64"`
}

// DecodeArgv reverses EncodeArgv. "" decodes to nil.
func DecodeArgv(s string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	var raw []json.RawMessage
	if err := json.Unmarshal([]byte(s), &raw); err != nil {
		return nil, fmt.Errorf("decode argv: %w", err)
	}
	out := make([]string, len(raw))
	for i, r := range raw {
		switch {
		case len(r) > 0 && r[0] == '"':
			if err := json.Unmarshal(r, &out[i]); err != nil {
				return nil, fmt.Errorf("decode argv %d: %w", i, err)
			}
		case len(r) > 0 && r[0] == '{':
			var ra rawArg
			if err := json.Unmarshal(r, &ra); err != nil {
				return nil, fmt.Errorf("decode argv %d: %w", i, err)
			}
			b, err := base64.StdEncoding.DecodeString(ra.B64)
			if err != nil {
				return nil, fmt.Errorf("decode argv %d: %w", i, err)
			}
			out[i] = string(b)
		default:
			return nil, fmt.Errorf("decode argv %d: %w", i, errors.New("neither a string nor a b64 object"))
		}
	}
	return out, nil
}

// Cmdline renders argv for display and for LIKE / GLOB in rules: the
// arguments joined by single spaces, as valid UTF-8 with nothing a terminal
// or a browser would interpret. Bytes that are not UTF-8, control
// characters (C0, DEL, C1) and bidirectional-text controls (the "Trojan
// Source" characters) are written as \xHH (bytes) or \u{HHHH} (code points).
// It is lossy (a literal "\x41" in an argument reads the same as an escaped
// byte, and spaces inside arguments are not quoted); argv is the exact
// record. Rule authors match on the visible text, which is what an attacker
// can least disguise.
func Cmdline(argv []string) string {
	var b strings.Builder
	n := len(argv)
	for _, a := range argv {
		n += len(a)
	}
	b.Grow(n)
	for i, a := range argv {
		if i > 0 {
			b.WriteByte(' ')
		}
		for j := 0; j < len(a); {
			r, size := utf8.DecodeRuneInString(a[j:])
			switch {
			case r == utf8.RuneError && size <= 1:
				fmt.Fprintf(&b, `\x%02x`, a[j])
			case unsafeRune(r):
				if r < 0x100 {
					fmt.Fprintf(&b, `\x%02x`, r)
				} else {
					fmt.Fprintf(&b, `\u{%04x}`, r)
				}
			default:
				b.WriteString(a[j : j+size])
			}
			j += size
		}
	}
	return b.String()
}

// unsafeRune reports whether r must not appear raw in a rendered command
// line: controls, and the explicit bidi embeddings, overrides and isolates
// plus the implicit marks that reorder or hide text.
func unsafeRune(r rune) bool {
	switch {
	case r < 0x20, r == 0x7f, r >= 0x80 && r < 0xa0:
		return true
	case r >= 0x202a && r <= 0x202e, r >= 0x2066 && r <= 0x2069, r == 0x200e, r == 0x200f, r == 0x061c:
		return true
	case r == 0xfeff: // zero-width no-break space, a byte order mark mid-string
		return true
	}
	return unicode.Is(unicode.Cf, r) && r != 0x200d // format characters, except ZWJ (emoji sequences)
}
