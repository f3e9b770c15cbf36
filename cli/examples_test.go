package cli

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/alecthomas/kong"
)

// TestEveryCommandHasExamples: each command's --help has examples, and
// every example parses (flags and arguments exist, required ones given).
// Files named in examples need not exist here.
func TestEveryCommandHasExamples(t *testing.T) {
	var c CLI
	parser, err := kong.New(&c, kong.Name("daemoneye"), kong.Exit(func(int) { panic("exit") }), kong.Writers(io.Discard, io.Discard))
	if err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, n := range parser.Model.Leaves(true) {
		if n.Type != kong.CommandNode {
			continue
		}
		p := commandPath(n)
		paths = append(paths, p)
		if len(examples[p]) == 0 {
			t.Errorf("%q has no examples (cli/examples.go)", p)
		}
	}
	for p, ex := range examples {
		if !slices.Contains(paths, p) {
			t.Errorf("examples for %q, which is not a command", p)
		}
		for _, line := range ex {
			if strings.HasPrefix(line, "#") {
				continue
			}
			if i := strings.LastIndex(line, "| daemoneye "); i >= 0 {
				line = line[i+2:]
			}
			args, err := shellWords(line)
			if err != nil || len(args) == 0 || args[0] != "daemoneye" {
				t.Errorf("%q: example %q is not a daemoneye command line (%v)", p, line, err)
				continue
			}
			var c CLI
			parser, _ := kong.New(&c, kong.Name("daemoneye"), kong.Exit(func(int) { panic("exit") }), kong.Writers(io.Discard, io.Discard))
			kctx, err := parser.Parse(RoleArgs(args)[1:])
			if err != nil {
				if m := err.Error(); strings.Contains(m, "no such file or directory") {
					continue // a file of the example's world
				}
				t.Errorf("%q: example %q does not parse: %v", p, line, err)
				continue
			}
			if got := commandPath(kctx.Selected()); got != p {
				t.Errorf("example %q runs %q, listed under %q", line, got, p)
			}
		}
	}
}

// shellWords splits a command line like a POSIX shell for the examples:
// whitespace, '...' and "..." (with \" and \\ inside).
func shellWords(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	in, quote := false, byte(0)
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote == '\'':
			if ch == '\'' {
				quote = 0
			} else {
				cur.WriteByte(ch)
			}
		case quote == '"':
			if ch == '"' {
				quote = 0
			} else if ch == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
				i++
				cur.WriteByte(s[i])
			} else {
				cur.WriteByte(ch)
			}
		case ch == '\'' || ch == '"':
			quote, in = ch, true
		case ch == ' ' || ch == '\t':
			if in {
				out = append(out, cur.String())
				cur.Reset()
				in = false
			}
		default:
			cur.WriteByte(ch)
			in = true
		}
	}
	if quote != 0 {
		return nil, io.ErrUnexpectedEOF
	}
	if in {
		out = append(out, cur.String())
	}
	return out, nil
}
